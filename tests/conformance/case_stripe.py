"""Conformance case: Stripe charges (``payments``) against StripeFake.

Stripe lists newest first, filters on ``created[gte]`` (unix seconds) and pages with
``starting_after``; the API's own error shape is ``{"error": {"type", "code", "message",
"param"}}`` with a 4xx status.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.base import to_iso
from sandbox.server import FakeApp
from sandbox.stripe import StripeFake, error_body
from tests.conformance.case import Case, Made

BASE = 1_793_491_200  # 2026-11-01T00:00:00Z
PAGE_SIZE = 4
LOOKBACK = 120


def _charge(i: int, created: int) -> dict[str, Any]:
    # Hashed ids: not in creation order, so the (created, id) tie-break is really exercised.
    return {
        "id": "ch_" + hashlib.sha1(f"conf{i}".encode()).hexdigest()[:24],
        "amount": 1000 + i,
        "currency": "usd",
        "created": created,
        "metadata": {"order_no": f"#{1001 + i}", "customer_code": f"C{i:05d}"},
    }


def make(n: int, ties: int) -> Made:
    tied_at = BASE + (n - ties) * 60 + 600  # after every untied charge
    charges = [_charge(i, BASE + i * 60 if i < n - ties else tied_at) for i in range(n)]
    app = StripeFake({"payments": [], "charges": charges})

    def cfg(base_url: str) -> dict:
        return {
            "system": "stripe",
            "base_url": base_url,
            "auth": app.credentials(),
            "options": {**app.options(), "page_size": PAGE_SIZE},
            "rate_limit": 0,
            "lookback_seconds": LOOKBACK,
            "retry": {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005},
        }

    return Made(app=app, cfg=cfg)


def is_data_request(r: Any) -> bool:
    return r.method == "GET" and r.path == "/v1/charges"


def since_sent(requests: list) -> str | None:
    for r in requests:
        if is_data_request(r) and "created[gte]" in r.query:
            when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=int(r.query["created[gte]"]))
            return to_iso(when)
    return None


def break_auth(cfg: dict) -> tuple[dict, str]:
    # Ends in "abcd": Stripe's own message quotes it masked ("sk_test_****abcd"); ours must not
    # contain the key itself.
    wrong = "sk_test_51WrongKeyForConformance9z8y7xabcd"
    return {**cfg, "auth": {"api_key": wrong}}, wrong


def api_error(app: FakeApp) -> str:
    message = "Invalid integer: abc"
    app.faults.add(400, body=error_body(message, code="parameter_invalid_integer",
                                        param="created[gte]"), path=r"^/v1/charges$")
    return message


CASE = Case(
    system="stripe",
    stream="payments",
    page_size=PAGE_SIZE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=None,
    notes={
        "empty": "Stripe has no silent-empty trap: a restricted key without read permission on "
                 "charges is refused with HTTP 403 (raised as AuthError), and an empty list "
                 "means no charge was created in the window.",
    },
)
