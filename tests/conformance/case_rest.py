"""Conformance case: the declared REST source over the partner marketplace fake (cursor paging).

The connector is configured only by the fake's declaration (sandbox.rest.PARTNER_OPTIONS, the
same as examples/rest-source.yaml), plus ``error_path`` for errors inside HTTP 200.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sandbox.rest import BASE_PATH, ORDERS_PATH, RestFake
from sandbox.server import FakeApp, Request
from tests.conformance.case import Case, Made

PAGE_SIZE = 4
LOOKBACK = 300
T0 = datetime(2026, 10, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)  # wider than the lookback, so an incremental read is a real subset
RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


def _order(i: int, updated_at: datetime) -> dict[str, Any]:
    return {
        "external_id": f"PO-{i + 1:06d}",
        "order_no": f"PM{i + 1:06d}",
        "customer_code": "C00002",
        "customer_email": f"buyer{i}@example.com",
        "ordered_at": T0 + i * STEP - timedelta(minutes=1),
        "updated_at": updated_at,
        "currency": "CNY",
        "ship_region": "west",
        "lines": [{"line_no": 1, "sku": "SKU-00003", "qty": Decimal(1),
                   "unit_price": Decimal("120.00")}],
        "total": Decimal("120.00"),
    }


def make(n: int, ties: int) -> Made:
    tie_at = T0 + (n - ties) * STEP
    orders = [_order(i, tie_at if i >= n - ties else T0 + i * STEP) for i in range(n)]
    app = RestFake(orders, fast=True)

    def cfg(base_url: str) -> dict[str, Any]:
        options = {**app.options(), "page_size": PAGE_SIZE, "error_path": "error"}
        return {"system": "rest", "base_url": base_url, "auth": app.credentials(),
                "options": options, "rate_limit": 0, "lookback_seconds": LOOKBACK,
                "retry": dict(RETRY)}

    return Made(app=app, cfg=cfg, base_path=BASE_PATH)


def is_data_request(req: Request) -> bool:
    return req.method == "GET" and req.path == ORDERS_PATH


def since_sent(requests: list[Request]) -> str | None:
    first = next((r for r in requests if is_data_request(r)), None)
    return first.query.get("updated_since") if first else None


def break_auth(cfg: dict) -> tuple[dict, str]:
    wrong = "pm_wrong_token_00000000"
    return {**cfg, "auth": {"token": wrong}}, wrong


def api_error(app: FakeApp) -> str:
    # The partner's error shape, inside an HTTP 200 (declared with options.error_path).
    app.faults.add(200, body={"error": {"code": "upstream_unavailable",
                                        "message": "order index is rebuilding"}},
                   path=ORDERS_PATH + "$")
    return "order index is rebuilding (upstream_unavailable)"


CASE = Case(
    system="rest",
    stream="orders",
    page_size=PAGE_SIZE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=None,
    notes={"empty": "a declared API has no known silent-empty trap"},
)
