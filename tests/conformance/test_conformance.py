"""One suite, every connector: each must pass these against its own sandbox fake.

Cases are the ``CASE`` objects of ``tests/conformance/case_*.py``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from datetime import timedelta
from pathlib import Path

import pytest

# Plain `pytest` (unlike `python -m pytest`) puts tests/ on sys.path, not the project root, so
# `tests.conformance` (and the cases' own `from tests.conformance.case import ...`) would not
# import. Put the root there before importing the cases.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.conformance as pkg  # noqa: E402
from connectors.base import Cursor, parse_datetime, to_iso  # noqa: E402
from connectors.http import AuthError, EmptyResultError, SourceError, reset_rate_limits  # noqa: E402
from connectors.registry import build_connector  # noqa: E402
from sandbox.server import FakeServer  # noqa: E402
from tests.conformance.case import Case  # noqa: E402

CASES: list[Case] = [
    importlib.import_module(f"{pkg.__name__}.{m.name}").CASE
    for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("case_")
]


def _ids(case: Case) -> str:
    return case.system


@pytest.fixture(params=CASES, ids=_ids)
def case(request) -> Case:
    return request.param


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    # Client-side rate buckets are per host:port and process-wide; a later test whose fake
    # reuses a port would inherit an earlier case's (slower) bucket.
    reset_rate_limits()
    yield
    reset_rate_limits()


class Served:
    def __init__(self, case: Case, n: int, ties: int = 0):
        made = case.make(n, ties)
        self.app = made.app
        self.server: FakeServer | None = None
        if case.http:
            self.server = FakeServer(made.app)
            self.server.start()
            self.cfg = made.cfg(self.server.url + made.base_path)
        else:  # a local fake (file drop): make() prepared it, nothing to serve
            self.cfg = made.cfg(made.base_url or "")
        self.case = case

    def connector(self, cfg: dict | None = None):
        return build_connector(f"conf_{self.case.system}", cfg or self.cfg)

    def read(self, cursor: Cursor | None = None, cfg: dict | None = None):
        pages = list(self.connector(cfg).read(self.case.stream, cursor))
        return pages, [r for p in pages for r in p.records]

    def data_requests(self) -> list:
        return [r for r in self.app.requests if self.case.is_data_request(r)]

    def close(self):
        if self.server is not None:
            self.server.stop()
        else:
            self.app.stop()


@pytest.fixture
def served():
    opened: list[Served] = []

    def make(case: Case, n: int, ties: int = 0) -> Served:
        s = Served(case, n, ties)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def _last_cursor(pages) -> Cursor:
    cursors = [p.cursor for p in pages if p.cursor]
    assert cursors, "a full read must end with a cursor"
    return cursors[-1]


def test_several_pages(case, served):
    n = case.page_size * 3 + 2
    s = served(case, n)
    pages, records = s.read()
    assert len({r.external_id for r in records}) == n
    if case.http:
        assert len(s.data_requests()) >= 4, "expected one request per page"


def test_incremental_from_prior_cursor_sends_the_exact_filter(case, served):
    s = served(case, case.page_size * 2 + 3)
    _, everything = s.read()
    pivot = sorted(everything, key=lambda r: (r.updated_at, r.external_id))[len(everything) // 2]
    cursor = Cursor(to_iso(pivot.updated_at), pivot.external_id)
    s.app.requests.clear()
    _, again = s.read(cursor)
    since = pivot.updated_at - timedelta(seconds=case.lookback_seconds)
    if case.http:
        sent = case.since_sent(s.data_requests())
        assert sent is not None, "an incremental read must send its 'since' filter"
        assert parse_datetime(sent, "since") == since
    expected = {r.external_id for r in everything if r.updated_at >= since}
    assert {r.external_id for r in again} >= expected
    assert len(again) < len(everything) or since <= min(r.updated_at for r in everything)


def test_rows_sharing_one_cursor_value_across_a_page_boundary(case, served):
    ties = case.page_size + 3
    s = served(case, case.page_size + ties, ties=ties)
    pages, everything = s.read()
    tied = sorted((r for r in everything if r.updated_at == max(x.updated_at for x in everything)),
                  key=lambda r: r.external_id)
    assert len(tied) == ties, "the case must seed `ties` rows sharing the last updated_at"
    # Resume from the middle of the tie: none of the tied rows may be lost.
    cursor = Cursor(to_iso(tied[1].updated_at), tied[1].external_id)
    _, again = s.read(cursor)
    assert {r.external_id for r in tied} <= {r.external_id for r in again}
    final = _last_cursor(pages)
    assert parse_datetime(final.updated_at, "cursor") == tied[-1].updated_at


def test_auth_failure_names_the_source_never_the_secret(case, served):
    if not case.http:
        pytest.skip(case.notes.get("auth", "not an HTTP API"))
    s = served(case, 3)
    bad_cfg, secret = case.break_auth(dict(s.cfg))
    with pytest.raises(AuthError) as err:
        s.read(cfg=bad_cfg)
    text = str(err.value)
    assert f"conf_{case.system}" in text
    assert secret not in text and "\n" not in text


def test_the_apis_own_error_shape(case, served):
    s = served(case, 3)
    expected = case.api_error(s.app)
    with pytest.raises(SourceError) as err:
        s.read()
    assert expected in str(err.value)
    assert f"conf_{case.system}" in str(err.value)


def test_429_with_retry_after_is_waited_out(case, served):
    if not case.http:
        pytest.skip(case.notes.get("429", "not an HTTP API"))
    s = served(case, case.page_size + 1)
    s.app.faults.add(429, times=1, retry_after=1)
    _, records = s.read()
    assert len(records) == case.page_size + 1
    assert s.app.faults.pending == 0, "the 429 was answered and waited out"


def test_5xx_then_success(case, served):
    if not case.http:
        pytest.skip(case.notes.get("5xx", "not an HTTP API"))
    s = served(case, case.page_size + 1)
    s.app.faults.add(503, times=2)
    _, records = s.read()
    assert len(records) == case.page_size + 1
    assert s.app.faults.pending == 0


def test_silent_empty_answer_is_flagged(case, served):
    if case.silent_empty is None:
        pytest.skip(case.notes.get("empty", "this API has no silent-empty trap"))
    s = served(case, 3)
    case.silent_empty(s.app)
    with pytest.raises(EmptyResultError):
        s.read()
