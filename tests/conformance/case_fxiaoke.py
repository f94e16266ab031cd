"""Conformance case: Fxiaoke sales orders (data/query; offsets, then the (time, _id) keyset).

The fake runs with its documented limits (``fast=False``: 100 calls per 20 s, 10 token calls a
minute); these reads stay far below both. ``max_offset`` is small, so the several-pages and ties
tests also cross the offset -> keyset switch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from connectors.base import to_iso
from connectors.fxiaoke import EPOCH, QUERY_PATH
from sandbox.fxiaoke import ERR_NO_PERMISSION, ORDERS, FxiaokeFake
from sandbox.server import FakeApp, Request
from tests.conformance.case import Case, Made

PAGE_SIZE = 4
MAX_OFFSET = 8   # offsets 0, 4; then keyset
LOOKBACK = 300
T0 = datetime(2026, 10, 1, tzinfo=UTC)
STEP = timedelta(minutes=10, milliseconds=7)  # wider than the lookback; ms precision on the wire
RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


def _order(i: int, updated_at: datetime) -> dict[str, Any]:
    return {
        "external_id": f"fx-order-{i:04d}",
        "order_no": f"FX-{i + 1:06d}",
        "customer_code": "C00001",
        "customer_email": None,
        "ordered_at": T0 + i * STEP - timedelta(minutes=1),
        "updated_at": updated_at,
        "currency": "CNY",
        "ship_region": "south",
        "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2),
                   "unit_price": Decimal("12.50")}],
        "total": Decimal("25.00"),
    }


def make(n: int, ties: int) -> Made:
    tie_at = T0 + (n - ties) * STEP
    orders = [_order(i, tie_at if i >= n - ties else T0 + i * STEP) for i in range(n)]
    dataset = SimpleNamespace(customers=[], products=[], orders={"fxiaoke": orders})
    app = FxiaokeFake(dataset, fast=False, max_offset=MAX_OFFSET)

    def cfg(base_url: str) -> dict[str, Any]:
        return {"system": "fxiaoke", "base_url": base_url, "auth": app.credentials(),
                "options": {**app.options(), "page_size": PAGE_SIZE}, "rate_limit": 0,
                "lookback_seconds": LOOKBACK, "retry": dict(RETRY)}

    return Made(app=app, cfg=cfg)


def is_data_request(req: Request) -> bool:
    # order queries only: the per-page line queries (SalesOrderProductObj) are not pages
    return (req.method == "POST" and req.path == QUERY_PATH and isinstance(req.json, dict)
            and req.json.get("dataObjectApiName") == ORDERS)


def since_sent(requests: list[Request]) -> str | None:
    # search_query_info.filters: [{"field_name": "last_modified_time", "operator": "GTE",
    #                              "field_values": [<epoch ms>]}]
    for req in requests:
        if not is_data_request(req):
            continue
        for f in (req.json.get("search_query_info") or {}).get("filters") or []:
            if f.get("field_name") == "last_modified_time" and f.get("operator") == "GTE":
                return to_iso(EPOCH + timedelta(milliseconds=int(f["field_values"][0])))
        return None  # only the first data request counts
    return None


def break_auth(cfg: dict) -> tuple[dict, str]:
    wrong = "fx-wrong-app-secret-0000"
    return {**cfg, "auth": {**cfg["auth"], "app_secret": wrong}}, wrong


def api_error(app: FakeApp) -> str:
    # HTTP 200 {"errorCode": 10004, "errorMessage": "no permission to query SalesOrderObj"}
    app.deny_objects.add(ORDERS)  # type: ignore[attr-defined]
    return f"errorCode {ERR_NO_PERMISSION}"


CASE = Case(
    system="fxiaoke",
    stream="orders",
    page_size=PAGE_SIZE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=None,
    notes={"empty": "not modelled: Fxiaoke scopes query results by the calling user's data "
                    "permissions (x-fs-userid), so a user with narrow rights sees fewer rows, "
                    "not an error; the run-level 'far fewer rows than the trailing baseline' "
                    "flag is the guard, and the API user should be a CRM administrator"},
)
