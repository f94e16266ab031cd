"""Conformance case: Shopify Admin REST orders (Link-header ``page_info`` paging)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sandbox.server import FakeApp, Request
from sandbox.shopify import ShopifyFake
from tests.conformance.case import Case, Made

PAGE_SIZE = 4
LOOKBACK = 300
T0 = datetime(2026, 10, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)  # wider than the lookback, so an incremental read is a real subset
RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


def _order(i: int, updated_at: datetime) -> dict[str, Any]:
    """A neutral order (sandbox/generator.py shape); ids of one width sort like numbers."""
    return {
        "external_id": str(5_000_000_001 + i),
        "order_no": f"#{1001 + i}",
        "customer_code": None,
        "customer_email": f"buyer{i}@example.com",
        "ordered_at": T0 + i * STEP - timedelta(minutes=1),
        "updated_at": updated_at,
        "currency": "USD",
        "ship_region": "east",
        "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2),
                   "unit_price": Decimal("9.50")}],
        "total": Decimal("19.00"),
    }


def make(n: int, ties: int) -> Made:
    tie_at = T0 + (n - ties) * STEP
    orders = [_order(i, tie_at if i >= n - ties else T0 + i * STEP) for i in range(n)]
    app = ShopifyFake(orders, fast=True)

    def cfg(base_url: str) -> dict[str, Any]:
        return {"system": "shopify", "base_url": base_url, "auth": app.credentials(),
                "options": {**app.options(), "page_size": PAGE_SIZE}, "rate_limit": 0,
                "lookback_seconds": LOOKBACK, "retry": dict(RETRY)}

    return Made(app=app, cfg=cfg)


def is_data_request(req: Request) -> bool:
    return req.method == "GET" and req.path.endswith("/orders.json")


def since_sent(requests: list[Request]) -> str | None:
    # Shopify allows filters on the first request only: page_info requests carry none.
    first = next((r for r in requests if "page_info" not in r.query), None)
    return first.query.get("updated_at_min") if first else None


def break_auth(cfg: dict) -> tuple[dict, str]:
    wrong = "shpat_wrong_token_0000"
    return {**cfg, "auth": {"token": wrong}}, wrong


def api_error(app: FakeApp) -> str:
    # Shopify's own 4xx shape: {"errors": {field: [messages]}}.
    app.faults.add(400, body={"errors": {"updated_at_min": ["is not a valid date"]}},
                   path=r"/orders\.json$")
    return "is not a valid date"


CASE = Case(
    system="shopify",
    stream="orders",
    page_size=PAGE_SIZE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=None,
    notes={"empty": "Shopify answers an empty list only when there are no orders; "
                    "a missing scope is a 403, not a silent empty answer"},
)
