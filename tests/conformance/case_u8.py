"""Conformance case: Yonyou U8+ OpenAPI (connectors.u8 against sandbox.u8).

Stream ``customers``: a master stream, paged by page_index/rows_per_page, filtered by
``ModifyDate_begin`` (zone-less, UTC). Errors come inside HTTP 200 as ``errcode``/``errmsg``;
the silent-empty trap is errcode 20002 ("no data") on a full read of a master stream.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sandbox.server import FakeApp
from sandbox.u8 import ERR_PARAM, U8Fake
from tests.conformance.case import Case, Made

PAGE_SIZE = 4
LOOKBACK = 120
T0 = datetime(2026, 10, 1, tzinfo=UTC)
LIST_PATH = "/api/customer/batch_get"
SINCE_PARAM = "ModifyDate_begin"


def make(n: int, ties: int) -> Made:
    tie_at = T0 + timedelta(minutes=n)
    customers = [{"code": f"C{i + 1:05d}", "name": f"Customer {i + 1}",
                  "email": f"c{i + 1}@example.com", "region": "east", "group": "retail",
                  "credit_limit": "5000.00", "currency": "CNY",
                  # one minute apart, the last `ties` sharing one time (ordered by code)
                  "updated_at": tie_at if i >= n - ties else T0 + timedelta(minutes=i)}
                 for i in range(n)]
    app = U8Fake(SimpleNamespace(customers=customers, orders={}, stock=[], products=[],
                                 warehouses=[]))

    def cfg(base_url: str) -> dict[str, Any]:
        return {"system": "u8", "base_url": base_url, "auth": app.credentials(),
                "options": {**app.options(), "rows_per_page": PAGE_SIZE},
                "rate_limit": 0, "lookback_seconds": LOOKBACK,
                "retry": {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}}

    return Made(app=app, cfg=cfg)


def is_data_request(req: Any) -> bool:
    return req.path == LIST_PATH


def since_sent(requests: list) -> str | None:
    data = [r for r in requests if is_data_request(r)]
    return data[0].query.get(SINCE_PARAM) if data else None


def break_auth(cfg: dict) -> tuple[dict, str]:
    secret = "not-the-u8-secret-4711"
    return {**cfg, "auth": {**cfg["auth"], "app_secret": secret}}, secret


def api_error(app: FakeApp) -> str:
    # U8's own error shape: HTTP 200 with an errcode other than "0"/"20002"
    app.faults.add(200, body={"errcode": ERR_PARAM, "errmsg": "参数 rows_per_page 不正确"},
                   path=LIST_PATH)
    return f"errcode {ERR_PARAM}: 参数 rows_per_page 不正确"


def silent_empty(app: FakeApp) -> None:
    assert isinstance(app, U8Fake)
    app.no_data.add("customer")  # errcode 20002 where the customer master must have rows


CASE = Case(
    system="u8",
    stream="customers",
    page_size=PAGE_SIZE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=silent_empty,
)
