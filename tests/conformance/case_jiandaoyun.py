"""Conformance case: Jiandaoyun open API v5 sales orders (keyset paging on ``data_id``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sandbox.jiandaoyun import LIST_PATH, ORDERS_ENTRY, JiandaoyunFake
from sandbox.server import FakeApp, Request
from tests.conformance.case import Case, Made

PAGE_SIZE = 4
LOOKBACK = 300
T0 = datetime(2026, 10, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)  # wider than the lookback, so an incremental read is a real subset
RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


def _order(i: int, updated_at: datetime) -> dict[str, Any]:
    """A neutral order; its 24-hex id ascends with i, the order the API pages in."""
    return {
        "external_id": f"{0x65a000000000000000000000 + i:024x}",
        "order_no": f"JDY-{i + 1:06d}",
        "customer_code": "C00001",
        "customer_email": None,
        "ordered_at": T0 + i * STEP - timedelta(minutes=1),
        "updated_at": updated_at,
        "currency": "CNY",
        "ship_region": "north",
        "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(3),
                   "unit_price": Decimal("66.00")}],
        "total": Decimal("198.00"),
    }


def make(n: int, ties: int) -> Made:
    tie_at = T0 + (n - ties) * STEP
    orders = [_order(i, tie_at if i >= n - ties else T0 + i * STEP) for i in range(n)]
    app = JiandaoyunFake(SimpleNamespace(customers=[], orders={"jiandaoyun": orders}), fast=True)

    def cfg(base_url: str) -> dict[str, Any]:
        return {"system": "jiandaoyun", "base_url": base_url, "auth": app.credentials(),
                "options": {**app.options(), "page_size": PAGE_SIZE}, "rate_limit": 0,
                "lookback_seconds": LOOKBACK, "retry": dict(RETRY)}

    return Made(app=app, cfg=cfg)


def is_data_request(req: Request) -> bool:
    return req.method == "POST" and req.path == LIST_PATH


def since_sent(requests: list[Request]) -> str | None:
    # {"filter": {"rel": "and", "cond": [{"field": "updateTime", "method": "range",
    #                                     "value": [since, null]}]}}
    for req in requests:
        if not is_data_request(req) or not isinstance(req.json, dict):
            continue
        for cond in (req.json.get("filter") or {}).get("cond") or []:
            if cond.get("field") == "updateTime" and cond.get("method") == "range":
                return cond["value"][0]
    return None


def break_auth(cfg: dict) -> tuple[dict, str]:
    wrong = "jdy-wrong-key-0000"
    return {**cfg, "auth": {"api_key": wrong}}, wrong


def api_error(app: FakeApp) -> str:
    # The fake's own 400 {"code": 4001, "msg": "... not found"} for an entry it does not hold.
    app.entries.pop(("orderhub", ORDERS_ENTRY))  # type: ignore[attr-defined]
    return "not found"


CASE = Case(
    system="jiandaoyun",
    stream="orders",
    page_size=PAGE_SIZE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=None,
    notes={"empty": "Jiandaoyun reports a missing permission as an error code, "
                    "never as an empty list"},
)
