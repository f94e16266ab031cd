"""WooCommerce REST (wc/v3) connector: orders in, fulfilments (status "completed") out.

cfg: ``base_url`` (the WordPress site, https://shop.example.com), ``auth: {consumer_key,
consumer_secret}`` (a REST API key pair, sent as HTTP Basic — WooCommerce requires HTTPS for
that), ``options: {page_size: 100}`` (1..100), ``rate_limit`` (req/s; WooCommerce core has no
limit, hosts may), ``lookback_seconds``.

Reading: ``GET /wp-json/wc/v3/orders?orderby=modified&order=asc&dates_are_gmt=true
&modified_after=<cursor - lookback>&per_page=&page=``, paged by page number up to
``X-WP-TotalPages`` (a page that repeats an earlier one raises PaginationError). Ordered by
modified time, so every page carries a cursor. ``modified_after`` is a WordPress date_query
``after`` — exclusive, second precision, naive = site time unless ``dates_are_gmt`` (hence we
send it, with a naive UTC value) — so the lookback is at least one second. Needs WooCommerce
>= 5.8 (``modified_after`` and ``dates_are_gmt``).

Mapping: ``date_modified_gmt``/``date_created_gmt`` (the non-``_gmt`` twins are site-local
with no offset), ``meta_data`` key ``customer_code``, ``billing.email``, ``shipping.state`` as
the ship region, money strings and the line ``price`` number read as Decimal.

Fulfilment push: ``PUT /wp-json/wc/v3/orders/{id} {"status": "completed"}`` — naturally
idempotent, so a resend after a crash is harmless. The order is read first: already completed
-> nothing is sent; cancelled/refunded/failed/trashed -> refused (completing it would revive it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

from connectors.base import (
    Connector,
    MappingError,
    StreamSpec,
    parse_datetime,
    parse_decimal,
    parse_text,
)
from connectors.http import ApiError, Auth, BasicAuth
from connectors.paging import PageNumberPaginator

ORDERS_PATH = "/wp-json/wc/v3/orders"
MAX_PER_PAGE = 100  # wc/v3 refuses per_page > 100
# Statuses a fulfilment must not overwrite: completing them would revive a dead order.
DEAD_STATUSES = frozenset({"cancelled", "refunded", "failed", "trash"})


# -- mapping (pure) ----------------------------------------------------------------------------



def _meta(order: dict, key: str) -> Any:
    for item in order.get("meta_data") or []:
        if isinstance(item, dict) and item.get("key") == key:
            return item.get("value")
    return None


def map_order(o: dict) -> dict:
    """A wc/v3 order -> canonical ``orders`` record (docs/internals.md)."""
    if o.get("id") in (None, ""):
        raise MappingError("id: missing")
    # *_gmt are UTC without an offset; parse_datetime reads naive values as UTC.
    updated_at = parse_datetime(o.get("date_modified_gmt"), "date_modified_gmt")
    if updated_at is None:
        raise MappingError("date_modified_gmt: missing")
    billing = o.get("billing") or {}
    shipping = o.get("shipping") or {}
    lines = []
    for n, li in enumerate(o.get("line_items") or [], start=1):
        price = li.get("price")
        if price is None:  # older stores: derive it from the line subtotal
            price = _unit_from_subtotal(li, n)
        lines.append({
            "line_no": n,
            "sku": parse_text(li.get("sku")),
            "qty": parse_decimal(li.get("quantity"), f"line_items[{n}].quantity"),
            "unit_price": parse_decimal(price, f"line_items[{n}].price"),
        })
    return {
        "external_id": str(o["id"]),
        "order_no": parse_text(o.get("number")) or str(o["id"]),
        "customer_code": parse_text(_meta(o, "customer_code")),
        "customer_email": parse_text(billing.get("email")),
        "ordered_at": parse_datetime(o.get("date_created_gmt"), "date_created_gmt"),
        "updated_at": updated_at,
        "currency": parse_text(o.get("currency")),
        "total": parse_decimal(o.get("total"), "total"),
        "ship_region": parse_text(shipping.get("state")),
        "lines": lines,
    }


def _unit_from_subtotal(li: dict, n: int) -> Any:
    subtotal = parse_decimal(li.get("subtotal"), f"line_items[{n}].subtotal")
    qty = parse_decimal(li.get("quantity"), f"line_items[{n}].quantity")
    if subtotal is None or not qty:
        return None
    return subtotal / qty


# -- the connector -----------------------------------------------------------------------------


class WooCommerceConnector(Connector):
    system = "woocommerce"
    operations = {"fulfilment"}

    streams = {
        "orders": StreamSpec(
            kind="orders",
            path=ORDERS_PATH,
            records_path=(),  # the body is the list
            id_field="id",
            updated_field="date_modified_gmt",
            params={"orderby": "modified", "order": "asc", "dates_are_gmt": "true"},
            since_param="modified_after",
            paginator=partial(PageNumberPaginator, param="page", start=1,
                              total_pages_header="X-WP-TotalPages", id_field="id"),
            page_size=MAX_PER_PAGE,
            page_size_param="per_page",
            cursor_per_page=True,  # ordered by modified: a crash resumes from the last page
            mapper=map_order,
        ),
    }

    def __init__(self, name: str, cfg: dict) -> None:
        super().__init__(name, cfg)
        # modified_after is exclusive: a zero overlap would skip rows sharing the cursor second.
        self.lookback = max(self.lookback, timedelta(seconds=1))

    def make_auth(self, auth_cfg: dict) -> Auth:
        key, secret = auth_cfg.get("consumer_key"), auth_cfg.get("consumer_secret")
        if not key or not secret:
            raise ValueError(f"source {self.name!r}: auth.consumer_key and auth.consumer_secret "
                             "are required for woocommerce")
        return BasicAuth(str(key), str(secret))

    def page_size(self, spec: StreamSpec) -> int:
        return max(1, min(MAX_PER_PAGE, super().page_size(spec)))

    def since_filter(self, spec: StreamSpec, since: datetime) -> dict[str, Any]:
        # WordPress dates: naive, whole seconds; UTC because we send dates_are_gmt=true.
        # Flooring microseconds widens the window, never narrows it.
        naive = since.replace(microsecond=0, tzinfo=None)
        return {"modified_after": naive.isoformat(timespec="seconds")}

    # -- push: fulfilment ----------------------------------------------------------------------

    def push_fulfilment(self, doc: dict, recover: bool) -> str:
        order_id = str(doc["order_external_id"])
        if not order_id.isdigit():
            raise ApiError(self.name, f"order {order_id!r} is not a WooCommerce order id")
        path = f"{ORDERS_PATH}/{order_id}"
        # Always look first (one cheap GET): it makes reruns send nothing and guards dead orders.
        status = (self.http.get(path).data or {}).get("status")
        if status == "completed":
            return order_id
        if status in DEAD_STATUSES:
            raise ApiError(self.name, f"order {order_id} is {status} in WooCommerce; "
                           "not marking it completed")
        resp = self.http.request("PUT", path, json={"status": "completed"})
        data = resp.data if isinstance(resp.data, dict) else {}
        if data.get("status") != "completed":
            raise ApiError(self.name, f"order {order_id} is still {data.get('status')!r} "
                           "after the update (a plugin refused the status change?)")
        return str(data.get("id", order_id))
