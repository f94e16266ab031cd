"""Shopify Admin REST connector: orders in, fulfilments out.

cfg: ``base_url`` (https://<shop>.myshopify.com), ``auth: {token}`` (Admin API access token,
sent as ``X-Shopify-Access-Token``), ``options: {api_version: "2024-10", page_size: 250}``,
``rate_limit`` (req/s; Shopify's standard plan leaks 2/s from a 40-call bucket — leave None to
burst and rely on 429 + Retry-After, or set 2.0 to never hit the limit), ``lookback_seconds``.

Reading: ``orders.json?status=any&order=updated_at asc&updated_at_min=<cursor - lookback>``;
paging by the ``Link`` header's ``page_info``, which Shopify allows only with ``limit``/``fields``
(so filters go on the first request only). Ordered by updated_at, so every page carries a cursor.

Fulfilment push: fulfil the order's open fulfillment orders in full. Shopify has no idempotency
key for fulfilments, so exactly-once rests on the lookup: with ``recover`` (or when nothing is
open any more, or on a 422 race) the order's existing fulfilment is returned instead of creating.

Fulfilment compensation (``orderhub rollback``): ``POST fulfillments/{id}/cancel.json``, which
reopens the fulfillment orders. The order's fulfilments are read first, so a fulfilment already
cancelled counts as done (a rerun after a crash) and is not cancelled twice.
"""

from __future__ import annotations

from connectors.base import (
    Connector,
    MappingError,
    StreamSpec,
    parse_datetime,
    parse_decimal,
)
from connectors.http import ApiError, Auth, HeaderAuth
from connectors.paging import LinkHeaderPaginator


def map_order(o: dict) -> dict:
    """A Shopify order -> canonical ``orders`` record (docs/internals.md)."""
    if o.get("id") is None:
        raise MappingError("id: missing")
    updated_at = parse_datetime(o.get("updated_at"), "updated_at")
    if updated_at is None:
        raise MappingError("updated_at: missing")
    customer = o.get("customer") or {}
    ship = o.get("shipping_address") or {}
    lines = [
        {
            "line_no": n,
            "sku": li.get("sku") or None,
            "qty": parse_decimal(li.get("quantity"), f"line_items[{n}].quantity"),
            "unit_price": parse_decimal(li.get("price"), f"line_items[{n}].price"),
        }
        for n, li in enumerate(o.get("line_items") or [], start=1)
    ]
    return {
        "external_id": str(o["id"]),
        "order_no": o.get("name"),
        "customer_code": None,  # Shopify customers are matched by email
        "customer_email": o.get("email") or customer.get("email") or None,
        "ordered_at": parse_datetime(o.get("created_at"), "created_at"),
        "updated_at": updated_at,
        "currency": o.get("currency"),
        "total": parse_decimal(o.get("total_price"), "total_price"),
        "ship_region": ship.get("province_code") or None,
        "lines": lines,
        # optional canonical key (on_shipment invoicing): Shopify's null means nothing shipped
        "fulfilment_status": str(o.get("fulfillment_status") or "unfulfilled").lower(),
    }


class ShopifyConnector(Connector):
    system = "shopify"
    operations = {"fulfilment"}
    default_options = {"api_version": "2024-10"}

    streams = {
        "orders": StreamSpec(
            kind="orders",
            path="/admin/api/{api_version}/orders.json",
            records_path=("orders",),
            paginator=LinkHeaderPaginator,
            params={"status": "any", "order": "updated_at asc"},
            since_param="updated_at_min",
            page_size=250,
            filters_on_later_pages=False,  # page_info + any filter is a 400
            cursor_per_page=True,
            mapper=map_order,
        ),
    }

    def make_auth(self, auth_cfg: dict) -> Auth:
        token = auth_cfg.get("token")
        if not token:
            raise ValueError(f"source {self.name!r}: auth.token is required for shopify")
        return HeaderAuth("X-Shopify-Access-Token", token)

    # -- push: fulfilment ----------------------------------------------------------------------

    def _api(self, path: str) -> str:
        return f"/admin/api/{self.options['api_version']}/{path}"

    def existing_fulfilment(self, order_id: str) -> str | None:
        """The id of the order's successful fulfilment, if one exists (recovery lookup)."""
        data = self.http.get(self._api(f"orders/{order_id}/fulfillments.json")).data or {}
        for f in data.get("fulfillments") or []:
            if f.get("status") in ("success", "pending", "open"):
                return str(f["id"])
        return None

    def push_fulfilment(self, doc: dict, recover: bool) -> str:
        order_id = str(doc["order_external_id"])
        if recover:
            found = self.existing_fulfilment(order_id)
            if found:
                return found
        data = self.http.get(self._api(f"orders/{order_id}/fulfillment_orders.json")).data or {}
        open_fos = [
            fo for fo in data.get("fulfillment_orders") or []
            if fo.get("status") in ("open", "in_progress")
        ]
        if not open_fos:
            # Already fulfilled (by us before a crash, or by hand): report that one.
            found = self.existing_fulfilment(order_id)
            if found:
                return found
            raise ApiError(self.name, f"order {order_id} has no open fulfillment order")
        body = {
            "fulfillment": {
                "line_items_by_fulfillment_order": [
                    {"fulfillment_order_id": fo["id"]} for fo in open_fos
                ],
                "notify_customer": False,
            }
        }
        try:
            resp = self.http.post(self._api("fulfillments.json"), json=body)
        except ApiError as err:
            # 422: closed between our GET and POST (a concurrent sender) -> theirs counts.
            found = self.existing_fulfilment(order_id) if err.status == 422 else None
            if found:
                return found
            raise
        return str(resp.data["fulfillment"]["id"])

    # -- compensation: cancel the fulfilment -------------------------------------------------

    def _fulfilment(self, order_id: str, fulfilment_id: object) -> dict:
        data = self.http.get(self._api(f"orders/{order_id}/fulfillments.json")).data or {}
        for f in data.get("fulfillments") or []:
            if str(f.get("id")) == str(fulfilment_id):
                return f
        raise ApiError(self.name, f"order {order_id} has no fulfilment {fulfilment_id} to cancel")

    def compensate_fulfilment(self, doc: dict) -> str:
        order_id = str(doc["order_external_id"])
        found = self._fulfilment(order_id, doc.get("remote_id"))
        fid = str(found["id"])
        if found.get("status") == "cancelled":
            return fid  # undone already (a rerun after a crash)
        try:
            self.http.post(self._api(f"fulfillments/{fid}/cancel.json"), json={})
        except ApiError as err:
            # 422 after a retry: our first attempt cancelled it and its answer was lost
            if err.status != 422 or self._fulfilment(order_id, fid).get("status") != "cancelled":
                raise
        return fid
