"""Conformance case: WooCommerce wc/v3 orders (page numbers up to ``X-WP-TotalPages``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sandbox.server import FakeApp, Request
from sandbox.woocommerce import ORDERS_PATH, WooCommerceFake
from tests.conformance.case import Case, Made

PAGE_SIZE = 4
LOOKBACK = 300
T0 = datetime(2026, 10, 1, tzinfo=UTC)
# Wider than the lookback (an incremental read is a real subset), and the lookback is not a
# multiple of it, so no record sits exactly on the exclusive modified_after boundary.
STEP = timedelta(minutes=10)
RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


def _order(i: int, updated_at: datetime) -> dict[str, Any]:
    """A neutral order; numeric ids of one width (WooCommerce ids are integers)."""
    return {
        "external_id": str(2001 + i),
        "order_no": f"WC-{2001 + i}",
        "customer_code": "C00001",
        "customer_email": f"buyer{i}@example.com",
        "ordered_at": T0 + i * STEP - timedelta(minutes=1),
        "updated_at": updated_at,
        "currency": "CNY",
        "ship_region": "south",
        "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2),
                   "unit_price": Decimal("9.50")}],
        "total": Decimal("19.00"),
    }


def make(n: int, ties: int) -> Made:
    tie_at = T0 + (n - ties) * STEP
    orders = [_order(i, tie_at if i >= n - ties else T0 + i * STEP) for i in range(n)]
    app = WooCommerceFake(orders, fast=True)

    def cfg(base_url: str) -> dict[str, Any]:
        return {"system": "woocommerce", "base_url": base_url, "auth": app.credentials(),
                "options": {**app.options(), "page_size": PAGE_SIZE}, "rate_limit": 0,
                "lookback_seconds": LOOKBACK, "retry": dict(RETRY)}

    return Made(app=app, cfg=cfg)


def is_data_request(req: Request) -> bool:
    return req.method == "GET" and req.path == ORDERS_PATH


def since_sent(requests: list[Request]) -> str | None:
    # modified_after is naive; the connector also sends dates_are_gmt=true, so it is UTC.
    first = next((r for r in requests if is_data_request(r)), None)
    if first is None or "modified_after" not in first.query:
        return None
    assert first.query.get("dates_are_gmt") == "true", "a naive modified_after must be GMT"
    return first.query["modified_after"] + "Z"


def break_auth(cfg: dict) -> tuple[dict, str]:
    wrong = "cs_wrong_secret_00000000"
    return {**cfg, "auth": {**cfg["auth"], "consumer_secret": wrong}}, wrong


def api_error(app: FakeApp) -> str:
    # WooCommerce's (WP REST) error shape: {"code", "message", "data": {"status"}}.
    app.faults.add(400, body={"code": "rest_invalid_param",
                              "message": "Invalid parameter(s): modified_after",
                              "data": {"status": 400, "params": {
                                  "modified_after": "Invalid date."}}},
                   path=ORDERS_PATH + "$")
    return "Invalid parameter(s): modified_after"


CASE = Case(
    system="woocommerce",
    stream="orders",
    page_size=PAGE_SIZE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=None,
    notes={"empty": "a key without read permission is a 401 woocommerce_rest_cannot_view, "
                    "not a silent empty list"},
)
