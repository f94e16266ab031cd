"""A fake Shopify Admin REST API (orders + fulfilment), rendering a Dataset's shopify orders.

What it reproduces (docs: Shopify Admin REST 2024-10, see shared/reference/source-apis.md):

- ``GET /admin/api/{version}/orders.json`` with ``status``, ``limit`` (1..250, default 50),
  ``updated_at_min``/``updated_at_max``, ``created_at_min``/``created_at_max``, ``fields``,
  ``order`` (``updated_at asc`` etc.; default ``created_at desc``), ordered by (key, id).
- Cursor paging: a ``Link`` header with opaque ``page_info`` tokens, ``rel="next"`` and
  ``rel="previous"``. A request with ``page_info`` may carry only ``limit`` and ``fields``;
  any other parameter is a 400 ``{"errors": {"page_info": [...]}}``, like Shopify.
- Auth: header ``X-Shopify-Access-Token``; a wrong/missing token is a 401
  ``{"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}``.
- Leaky-bucket rate limit with ``X-Shopify-Shop-Api-Call-Limit: n/size``; over the limit -> 429
  with ``Retry-After`` and Shopify's message. ``fast=False``: the documented standard plan,
  bucket 40, leak 2/s, ``Retry-After: 2.0`` (what Shopify sends). ``fast=True`` (demo, e2e):
  bucket 400, leak 400/s, Retry-After = the time until one call fits.
- Fulfilment: ``GET orders/{id}/fulfillment_orders.json`` (one fulfillment order per order,
  all line items, "open" until fulfilled), ``POST fulfillments.json`` with
  ``line_items_by_fulfillment_order`` -> 201, closes the fulfillment orders; posting for a
  closed one -> 422 ``{"errors": [...]}``; ``GET orders/{id}/fulfillments.json`` lists them.
  Every create counts in ``app.creates[("fulfilment", str(order_id))]``.
- Fulfilment cancel: ``POST fulfillments/{id}/cancel.json`` -> 200, the fulfilment's status
  becomes "cancelled" and its order's fulfillment orders open again; cancelling a cancelled
  one -> 422. Every cancel counts in ``app.cancels[("fulfilment", str(order_id))]``.

Deliberate simplifications: all orders are "open" (status=any/open return them, closed/cancelled
return none); a fulfilment does not change the order's ``updated_at`` or payload (real Shopify
would bump both) so reruns over the sandbox stay deterministic; fulfilment is all-or-nothing per
fulfillment order (``fulfillment_order_line_items`` is accepted and ignored).

Times are rendered in the shop's time zone (+08:00), as Shopify does, so connectors must
convert offsets to UTC.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import math
import time
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sandbox.server import FakeApp, Request, Response

API_VERSION = "2024-10"
DEFAULT_TOKEN = "shpat_sandbox_4f1c2e9a7b3d"
SHOP_TZ = timezone(timedelta(hours=8))
INVALID_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"
THROTTLED = "Exceeded 2 calls per second for api client. Reduce request rates to resume " \
    "uninterrupted service."
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SORTS = {"updated_at", "created_at", "id"}
_PAGE_INFO_ALLOWED = {"page_info", "limit", "fields"}


def _dt(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _shop_time(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(SHOP_TZ).isoformat(timespec="seconds")


def _money(value: Any) -> Any:
    """Shopify sends money as strings ("12.50"); unparseable neutral values pass through."""
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        return str(value)
    return value


def _qty(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _int_id(value: Any) -> Any:
    text = str(value)
    return int(text) if text.isdigit() else value


def _neutral_orders(dataset: Any) -> list[dict]:
    if isinstance(dataset, list):
        return dataset
    orders = dataset["orders"] if isinstance(dataset, dict) else dataset.orders
    return list(orders.get("shopify", [])) if isinstance(orders, dict) else list(orders)


def render_order(o: dict) -> dict:
    """One neutral order (internals.md "Generator") as a Shopify Admin REST order."""
    oid = _int_id(o["external_id"])
    email = o.get("customer_email")
    lines = []
    for li in o.get("lines") or []:
        line_no = li.get("line_no") or len(lines) + 1
        lines.append({
            "id": oid * 1000 + int(line_no) if isinstance(oid, int) else f"{oid}-{line_no}",
            "sku": li.get("sku"),
            "quantity": _qty(li.get("qty")),
            "price": _money(li.get("unit_price")),
            "fulfillable_quantity": _qty(li.get("qty")),
        })
    out: dict[str, Any] = {
        "id": oid,
        "name": o.get("order_no"),
        "email": email,
        "created_at": _shop_time(_dt(o.get("ordered_at"))),
        "updated_at": _shop_time(_dt(o.get("updated_at"))),
        "currency": o.get("currency"),
        "total_price": _money(o.get("total")),
        "financial_status": "pending",
        "fulfillment_status": None,
        "line_items": lines,
    }
    if email:
        out["customer"] = {"id": zlib.crc32(email.encode()) + 6_000_000_000, "email": email}
    ship: dict[str, Any] = {"country_code": "CN"}
    if o.get("ship_region") is not None:
        ship["province_code"] = o["ship_region"]
    out["shipping_address"] = ship
    return out


class ShopifyFake(FakeApp):
    def __init__(
        self,
        dataset: Any,
        fast: bool = True,
        token: str = DEFAULT_TOKEN,
        api_version: str = API_VERSION,
    ) -> None:
        super().__init__()
        self.token = token
        self.api_version = api_version
        self.fast = fast
        # Leaky bucket (see module docstring).
        self.bucket_size, self.leak_rate = (400, 400.0) if fast else (40, 2.0)
        self._level = 0.0
        self._leaked_at = time.monotonic()

        self.orders: dict[Any, dict] = {}
        self._keys: dict[Any, dict[str, datetime]] = {}
        self.load(_neutral_orders(dataset))
        self.fulfillment_orders: dict[int, dict] = {}   # fo id -> fulfillment order
        self._fo_by_order: dict[Any, list[int]] = {}
        self.fulfillments: dict[Any, list[dict]] = {}   # order id -> fulfilments
        self._next_fo_id = 9_100_000_001
        self._next_fulfillment_id = 7_100_000_001
        self.cancels: collections.Counter[tuple[str, str]] = collections.Counter()

        v = r"/admin/api/(?P<version>\d{4}-\d{2})"
        self.route("GET", v + r"/orders\.json", self.list_orders)
        self.route("GET", v + r"/orders/(?P<id>\d+)\.json", self.get_order)
        self.route("GET", v + r"/orders/(?P<id>\d+)/fulfillment_orders\.json",
                   self.list_fulfillment_orders)
        self.route("GET", v + r"/orders/(?P<id>\d+)/fulfillments\.json", self.list_fulfillments)
        self.route("POST", v + r"/fulfillments\.json", self.create_fulfillment)
        self.route("POST", v + r"/fulfillments/(?P<id>\d+)/cancel\.json", self.cancel_fulfillment)

    # -- sandbox wiring --------------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        """The connector's ``auth`` config for this fake (sandbox.Sandbox.sources())."""
        return {"token": self.token}

    def options(self) -> dict[str, str]:
        """The connector's ``options`` config for this fake."""
        return {"api_version": self.api_version}

    def load(self, neutral_orders: Iterable[dict]) -> None:
        """Add or replace orders (tests use this to simulate updates between reads)."""
        with self.lock:
            for o in neutral_orders:
                rendered = render_order(o)
                self.orders[rendered["id"]] = rendered
                self._keys[rendered["id"]] = {
                    "updated_at": _dt(o.get("updated_at")) or _EPOCH,
                    "created_at": _dt(o.get("ordered_at")) or _EPOCH,
                }

    # -- cross-cutting: auth and the leaky bucket ----------------------------------------------

    def before_request(self, req: Request) -> Response | None:
        if not req.path.startswith("/admin/"):
            return None
        if req.header("X-Shopify-Access-Token") != self.token:
            return Response(401, {"errors": INVALID_TOKEN})
        now = time.monotonic()
        self._level = max(0.0, self._level - (now - self._leaked_at) * self.leak_rate)
        self._leaked_at = now
        if self._level + 1 > self.bucket_size:
            wait = 2.0 if not self.fast else (self._level + 1 - self.bucket_size) / self.leak_rate
            return Response(429, {"errors": THROTTLED}, headers={"Retry-After": f"{wait:.1f}"})
        self._level += 1
        return None

    def after_request(self, req: Request, resp: Response) -> Response:
        if req.path.startswith("/admin/") and resp.status != 401:
            level = min(self.bucket_size, math.ceil(self._level))
            resp.headers["X-Shopify-Shop-Api-Call-Limit"] = f"{level}/{self.bucket_size}"
        return resp

    # -- orders ------------------------------------------------------------------------------

    def list_orders(self, req: Request) -> Response:
        q = req.query
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 250:
            return Response(400, {"errors": {"limit": ["must be between 1 and 250"]}})

        if "page_info" in q:
            extra = sorted(set(q) - _PAGE_INFO_ALLOWED)
            if extra:
                return Response(400, {"errors": {"page_info": [
                    "page_info cannot be combined with other parameters except limit and "
                    f"fields (got: {', '.join(extra)})"
                ]}})
            state = _decode_token(q["page_info"])
            if state is None:
                return Response(400, {"errors": {"page_info": ["Invalid value."]}})
        else:
            state = {"f": {k: q[k] for k in ("status", "order", "updated_at_min",
                                             "updated_at_max", "created_at_min",
                                             "created_at_max") if k in q},
                     "d": "next", "p": None}

        filters = state["f"]
        order = (filters.get("order") or "created_at desc").split()
        field, direction = order[0], (order[1].lower() if len(order) > 1 else "asc")
        if field not in _SORTS or direction not in ("asc", "desc"):
            return Response(400, {"errors": {"order": ["is invalid"]}})
        try:
            bounds = {k: _dt(v) for k, v in filters.items() if k.endswith(("_min", "_max"))}
        except ValueError:
            return Response(400, {"errors": {"updated_at_min": ["is invalid"]}})
        status = filters.get("status", "open")
        if status not in ("any", "open", "closed", "cancelled"):
            return Response(400, {"errors": {"status": ["is invalid"]}})

        def key(oid: Any) -> tuple:
            k = self._keys[oid]
            return (k[field] if field != "id" else 0, oid)

        rows = []
        for oid in self.orders:
            k = self._keys[oid]
            if status in ("closed", "cancelled"):
                continue  # every sandbox order is open
            if any(
                (b is not None and (
                    (name.endswith("_min") and k[name[:-4]] < b)
                    or (name.endswith("_max") and k[name[:-4]] > b)
                ))
                for name, b in bounds.items()
            ):
                continue
            rows.append(oid)
        rows.sort(key=key, reverse=(direction == "desc"))

        pos = _decode_pos(state["p"]) if state["p"] else None
        if pos is None:
            window, has_prev = rows, False
        elif state["d"] == "next":
            window = [r for r in rows if _after(key(r), pos, direction)]
            has_prev = True
        else:
            before = [r for r in rows if _after(pos, key(r), direction)]
            window = before[-limit:]
            has_prev = len(before) > limit
        page = window[:limit]
        has_next = len(window) > limit or (state["d"] == "prev" and pos is not None)

        links = []
        path = f"/admin/api/{req.path_params['version']}/orders.json"
        if has_prev and page:
            tok = _encode_token(filters, "prev", key(page[0]))
            links.append(f'<{req.base_url}{path}?limit={limit}&page_info={tok}>; rel="previous"')
        if has_next and page:
            tok = _encode_token(filters, "next", key(page[-1]))
            links.append(f'<{req.base_url}{path}?limit={limit}&page_info={tok}>; rel="next"')
        headers = {"Link": ", ".join(links)} if links else {}
        return Response(200, {"orders": [self._fields(self.orders[r], q) for r in page]},
                        headers=headers)

    def get_order(self, req: Request) -> Response:
        order = self.orders.get(int(req.path_params["id"]))
        if order is None:
            return Response(404, {"errors": "Not Found"})
        return Response(200, {"order": self._fields(order, req.query)})

    @staticmethod
    def _fields(order: dict, q: dict[str, str]) -> dict:
        if not q.get("fields"):
            return order
        wanted = {f.strip() for f in q["fields"].split(",")}
        return {k: v for k, v in order.items() if k in wanted}

    # -- fulfilment ----------------------------------------------------------------------------

    def _fos(self, order_id: int) -> list[dict]:
        """The order's fulfillment orders, created on first sight (one per order)."""
        if order_id not in self._fo_by_order:
            order = self.orders[order_id]
            fo_id = self._next_fo_id
            self._next_fo_id += 1
            self.fulfillment_orders[fo_id] = {
                "id": fo_id,
                "order_id": order_id,
                "status": "open",
                "line_items": [
                    {"id": fo_id * 100 + i, "line_item_id": li["id"],
                     "quantity": li["quantity"], "fulfillable_quantity": li["quantity"]}
                    for i, li in enumerate(order["line_items"], start=1)
                ],
            }
            self._fo_by_order[order_id] = [fo_id]
        return [self.fulfillment_orders[i] for i in self._fo_by_order[order_id]]

    def list_fulfillment_orders(self, req: Request) -> Response:
        order_id = int(req.path_params["id"])
        if order_id not in self.orders:
            return Response(404, {"errors": "Not Found"})
        return Response(200, {"fulfillment_orders": self._fos(order_id)})

    def list_fulfillments(self, req: Request) -> Response:
        order_id = int(req.path_params["id"])
        if order_id not in self.orders:
            return Response(404, {"errors": "Not Found"})
        return Response(200, {"fulfillments": list(self.fulfillments.get(order_id, []))})

    def create_fulfillment(self, req: Request) -> Response:
        body = req.json if isinstance(req.json, dict) else {}
        spec = body.get("fulfillment")
        groups = spec.get("line_items_by_fulfillment_order") if isinstance(spec, dict) else None
        if not isinstance(groups, list) or not groups or not all(
            isinstance(g, dict) and g.get("fulfillment_order_id") is not None for g in groups
        ):
            return Response(400, {"errors": {"fulfillment": "Required parameter missing or invalid"}})
        fos = []
        for g in groups:
            fo = self.fulfillment_orders.get(_int_id(g["fulfillment_order_id"]))
            if fo is None:
                return Response(404, {"errors": "Not Found"})
            if fo["status"] != "open":
                return Response(422, {"errors": [
                    f"Fulfillment order {fo['id']} has an unfulfillable status= {fo['status']}."
                ]})
            fos.append(fo)
        order_ids = {fo["order_id"] for fo in fos}
        if len(order_ids) != 1:
            return Response(422, {"errors": ["All fulfillment orders must belong to one order."]})
        order_id = order_ids.pop()
        existing = self.fulfillments.setdefault(order_id, [])
        fid = self._next_fulfillment_id
        self._next_fulfillment_id += 1
        fulfillment = {
            "id": fid,
            "order_id": order_id,
            "status": "success",
            "name": f"{self.orders[order_id]['name']}.{len(existing) + 1}",
            "created_at": _shop_time(datetime.now(UTC)),
            "line_items": [
                {"id": li["line_item_id"], "quantity": li["quantity"]}
                for fo in fos for li in fo["line_items"]
            ],
        }
        existing.append(fulfillment)
        for fo in fos:
            fo["status"] = "closed"
        self.creates[("fulfilment", str(order_id))] += 1
        return Response(201, {"fulfillment": fulfillment})

    def cancel_fulfillment(self, req: Request) -> Response:
        fid = int(req.path_params["id"])
        found = next((f for fs in self.fulfillments.values() for f in fs if f["id"] == fid), None)
        if found is None:
            return Response(404, {"errors": "Not Found"})
        if found["status"] == "cancelled":
            return Response(422, {"errors": [f"Fulfillment {fid} is already cancelled."]})
        found["status"] = "cancelled"
        for fo in self._fos(found["order_id"]):
            fo["status"] = "open"  # the goods can be fulfilled again
        self.cancels[("fulfilment", str(found["order_id"]))] += 1
        return Response(200, {"fulfillment": found})


# -- page_info tokens: opaque base64 of the filters, direction and position ---------------------


def _after(a: tuple, b: tuple, direction: str) -> bool:
    return a > b if direction == "asc" else a < b


def _encode_token(filters: dict, direction: str, pos: tuple) -> str:
    k, oid = pos
    raw = {"f": filters, "d": direction,
           "p": [k.isoformat() if isinstance(k, datetime) else k, oid]}
    data = json.dumps(raw, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode_token(token: str) -> dict | None:
    try:
        data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        state = json.loads(data)
    except (binascii.Error, ValueError):
        return None
    if not (isinstance(state, dict) and isinstance(state.get("f"), dict)
            and state.get("d") in ("next", "prev") and isinstance(state.get("p"), list)):
        return None
    return state


def _decode_pos(p: list) -> tuple | None:
    try:
        k, oid = p
        return (datetime.fromisoformat(k) if isinstance(k, str) else k, oid)
    except (TypeError, ValueError):
        return None
