"""Jiandaoyun (简道云) open API v5 connector: the CRM's customers, and its sales-order entry.

cfg: ``base_url`` (default https://api.jiandaoyun.com), ``auth: {api_key}`` (sent as
``Authorization: Bearer``), ``options: {app_id: "orderhub", customers_entry: "customers",
orders_entry: "sales_orders", page_size: 100}``, ``rate_limit`` (req/s; default 5, the documented
limit of list calls; 0 turns the client-side limit off), ``lookback_seconds``.

Reading: POST /api/v5/app/entry/data/list with ``{app_id, entry_id, fields, filter, limit,
data_id}``, keyset paging on ``data_id`` = the last ``_id`` of the previous page. Incremental
reads send ``filter.cond: [{field: "updateTime", method: "range", value: [since, null]}]`` on
every page (the filter using ``range`` on updateTime is inferred from the docs, not verified).

Results come ordered by ``_id``, never by updateTime, so a cursor cannot advance mid-stream:
every page but the last carries ``cursor=None`` and the last carries the newest
(updateTime, _id) seen. A crash mid-read therefore rereads the whole window — safe, as loads
upsert.

Errors: 401 ``{"code": 8303}`` (bad key) -> AuthError; 400 ``{"code", "msg"}`` -> ApiError with
the msg; 429 ``{"code": 8304}`` + ``Retry-After`` is retried by the HTTP client.
No push operations yet (Jiandaoyun is not a write target in this issue).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from connectors.base import (
    Connector,
    MappingError,
    Request,
    StreamSpec,
    parse_datetime,
    parse_decimal,
    parse_text,
    to_iso,
)
from connectors.http import Auth, BearerAuth
from connectors.paging import KeysetPaginator, Paginator

LIST_PATH = "/api/v5/app/entry/data/list"
MAX_LIMIT = 100  # the API's limit range is 1..100

CUSTOMER_FIELDS = ["customer_code", "customer_name", "email", "region", "customer_group",
                   "credit_limit", "currency", "createTime", "updateTime"]
ORDER_FIELDS = ["order_no", "customer_code", "order_date", "currency", "ship_region", "total",
                "items", "createTime", "updateTime"]


# -- mapping (pure) ----------------------------------------------------------------------------


def _header(rec: dict) -> tuple[str, Any]:
    if not rec.get("_id"):
        raise MappingError("_id: missing")
    updated_at = parse_datetime(rec.get("updateTime"), "updateTime")
    if updated_at is None:
        raise MappingError("updateTime: missing")
    return str(rec["_id"]), updated_at


def map_customer(rec: dict) -> dict:
    """A record of the customers entry -> canonical ``customers`` record."""
    external_id, updated_at = _header(rec)
    return {
        "external_id": external_id,
        "code": parse_text(rec.get("customer_code")),
        "name": parse_text(rec.get("customer_name")),
        "email": parse_text(rec.get("email")),
        "region": parse_text(rec.get("region")),
        "customer_group": parse_text(rec.get("customer_group")),
        "credit_limit": parse_decimal(rec.get("credit_limit"), "credit_limit"),
        "currency": parse_text(rec.get("currency")),
        "updated_at": updated_at,
    }


def map_order(rec: dict) -> dict:
    """A record of the sales_orders entry (items = subform rows) -> canonical ``orders``."""
    external_id, updated_at = _header(rec)
    items = rec.get("items") or []
    if not isinstance(items, list):
        raise MappingError(f"items: expected a subform list, got {type(items).__name__}")
    lines = [
        {
            "line_no": n,
            "sku": parse_text(item.get("sku")),
            "qty": parse_decimal(item.get("qty"), f"items[{n}].qty"),
            "unit_price": parse_decimal(item.get("unit_price"), f"items[{n}].unit_price"),
        }
        for n, item in enumerate(items, start=1)
    ]
    return {
        "external_id": external_id,
        "order_no": parse_text(rec.get("order_no")),
        "customer_code": parse_text(rec.get("customer_code")),
        "customer_email": None,  # CRM orders name the customer by code
        "ordered_at": parse_datetime(rec.get("order_date"), "order_date"),
        "updated_at": updated_at,
        "currency": parse_text(rec.get("currency")),
        "total": parse_decimal(rec.get("total"), "total"),
        "ship_region": parse_text(rec.get("ship_region")),
        "lines": lines,
    }


# -- the connector -----------------------------------------------------------------------------

def _entry_stream(kind: str, entry: str, fields: list[str], mapper: Any) -> StreamSpec:
    return StreamSpec(
        kind=kind,
        method="POST",
        path=LIST_PATH,
        records_path=("data",),
        id_field="_id",
        updated_field="updateTime",
        params={"entry_id": entry, "fields": fields},
        paginator=partial(KeysetPaginator, id_field="_id", param="data_id"),
        page_size=MAX_LIMIT,
        page_size_param="limit",
        cursor_per_page=False,  # ordered by _id, not updateTime: the cursor moves at the end
        mapper=mapper,
    )


class JiandaoyunConnector(Connector):
    system = "jiandaoyun"
    default_base_url = "https://api.jiandaoyun.com"
    default_rate_limit = 5.0  # documented: list calls 5 requests/s
    operations: set[str] = set()
    default_options = {"app_id": "orderhub", "customers_entry": "customers",
                       "orders_entry": "sales_orders"}

    streams = {
        "customers": _entry_stream("customers", "customers", CUSTOMER_FIELDS, map_customer),
        "orders": _entry_stream("orders", "sales_orders", ORDER_FIELDS, map_order),
    }

    def make_auth(self, auth_cfg: dict) -> Auth:
        key = auth_cfg.get("api_key")
        if not key:
            raise ValueError(f"source {self.name!r}: auth.api_key is required for jiandaoyun")
        return BearerAuth(str(key))

    def page_size(self, spec: StreamSpec) -> int:
        return max(1, min(MAX_LIMIT, super().page_size(spec)))

    def since_filter(self, spec: StreamSpec, since: datetime) -> dict[str, Any]:
        # range is inclusive; null leaves the upper end open
        cond = [{"field": "updateTime", "method": "range", "value": [to_iso(since), None]}]
        return {"filter": {"rel": "and", "cond": cond}}

    def build_request(self, spec: StreamSpec, since: datetime | None,
                      paginator: Paginator) -> Request:
        req = super().build_request(spec, since, paginator)
        body = dict(req.json)
        body["app_id"] = self.options["app_id"]
        body["entry_id"] = self.options.get(f"{spec.kind}_entry") or body["entry_id"]
        return Request(req.method, req.path, json=body)
