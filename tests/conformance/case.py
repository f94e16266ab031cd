"""The conformance contract: what each connector's test case must provide.

A case lives in ``tests/conformance/case_<system>.py`` and exposes ``CASE``; the suite in
``test_conformance.py`` finds every such module and runs the same tests over each. A case knows
its own API's shapes (how the "since" filter is sent, how the API reports errors); the suite
knows what every connector must do with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.server import FakeApp


@dataclass
class Made:
    """What ``Case.make`` returns: a fake app (not yet served) and a cfg builder."""

    app: FakeApp
    cfg: Callable[[str], dict]  # base_url -> connector cfg (small pages, tiny backoff, lookback)
    base_path: str = ""          # appended to the server URL to form base_url
    # A case with http=False: its fake is a started local fake (start()/stop(), e.g. a folder of
    # files) and this is the base_url cfg() gets instead of a server URL.
    base_url: str | None = None


@dataclass
class Case:
    system: str
    stream: str                                   # an incremental, paged stream
    page_size: int                                # what cfg() sets: the suite makes n > 2 pages
    lookback_seconds: int                         # what cfg() sets
    # make(n, ties): a fake holding n records of `stream`, the last `ties` of them sharing one
    # updated_at (and ordered by id among themselves); fast=False means documented limits.
    make: Callable[[int, int], Made]
    # The "updated since" value the connector sent in its first data request, as ISO-8601 UTC
    # ("2026-11-01T10:00:00Z"), read from the recorded requests; None when none was sent.
    since_sent: Callable[[list], str | None]
    # Which recorded requests are data requests (not login/token calls).
    is_data_request: Callable[[Any], bool]
    # cfg -> cfg with a wrong secret, and the secret value that must never appear in errors.
    break_auth: Callable[[dict], tuple[dict, str]]
    # Arrange the API's own error shape for the next data request (e.g. HTTP 200 with an error
    # body); returns a substring the connector's error message must contain.
    api_error: Callable[[FakeApp], str]
    # Arrange a silent empty answer where data is expected (Kingdee permission trap, U8 20002);
    # None when the API has no such trap.
    silent_empty: Callable[[FakeApp], None] | None = None
    http: bool = True                             # False: not an HTTP API (file drops)
    notes: dict[str, str] = field(default_factory=dict)  # why a test does not apply
