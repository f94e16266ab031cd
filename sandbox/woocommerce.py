"""A fake WooCommerce REST API (wc/v3 orders + status update), rendering a Dataset's orders.

What it reproduces (WooCommerce REST API v3, see shared/reference/source-apis.md):

- ``GET /wp-json/wc/v3/orders`` with ``page`` (>= 1, default 1), ``per_page`` (1..100, default
  10), ``modified_after``/``modified_before``/``after``/``before``, ``dates_are_gmt``,
  ``orderby`` (``date`` default, ``id``, ``modified``), ``order`` (``desc`` default, ``asc``),
  ``status`` (``any`` default). Answers a JSON list with ``X-WP-Total``, ``X-WP-TotalPages``
  and a ``Link`` header (``rel="next"``/``"prev"``); a page beyond the last answers ``[]``.
- Date filters are WordPress ``date_query`` ``after``/``before``: exclusive, read in the site's
  time zone (+08:00 here) unless ``dates_are_gmt=true``. Ties on the sort key go by id (real
  MySQL leaves them unordered).
- Orders as WooCommerce renders them: ``id`` int, ``number``, ``status``, ``currency``,
  ``date_created``/``date_modified`` (site-local, no offset) and their ``*_gmt`` twins, money
  as strings (``total``, line ``subtotal``/``total``), line ``price`` as a JSON number,
  ``billing {email, state}``, ``shipping {state}`` (the ship region), ``customer_id``,
  ``meta_data [{id, key: "customer_code", value}]``, ``line_items [{id, sku, quantity, ...}]``.
- Auth: HTTP Basic with consumer key/secret (or ``consumer_key``/``consumer_secret`` query
  parameters, which WooCommerce also accepts over HTTPS). Anything else -> 401
  ``{"code": "woocommerce_rest_cannot_view", "message", "data": {"status": 401}}``; every error
  has that ``{code, message, data: {status}}`` shape.
- ``GET``/``PUT``/``POST``/``PATCH /wp-json/wc/v3/orders/{id}``: read / update an order. Setting
  ``{"status": "completed"}`` is the fulfilment; it is naturally idempotent and counts in
  ``app.creates[("fulfilment", str(id))]`` only when the status really changes.

Deliberate simplifications: no rate limit (WooCommerce core has none on wc/v3; hosts may add
one — ``fast`` is accepted for the sandbox contract and ignored); a status update does not bump
``date_modified`` (real WooCommerce would), so reruns over the sandbox stay deterministic;
``ignore_page = True`` makes it answer page 1 whatever ``page`` says (a broken caching plugin),
for the connector's repeated-page guard.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from sandbox.server import FakeApp, Request, Response

CONSUMER_KEY = "ck_sandbox_7e1d0c5b9a3f4e2d"
CONSUMER_SECRET = "cs_sandbox_2b8f6a4c1e9d7053"
SITE_TZ = timezone(timedelta(hours=8))
API = "/wp-json/wc/v3"
ORDERS_PATH = f"{API}/orders"
MAX_PER_PAGE = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ORDERBY = {"date": "created", "modified": "modified", "id": "id"}
STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed",
            "trash")


def wc_error(status: int, code: str, message: str, **data: Any) -> Response:
    """WooCommerce's (WP REST) error shape."""
    return Response(status, {"code": code, "message": message, "data": {"status": status, **data}})


# -- rendering ---------------------------------------------------------------------------------


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


def _wp_time(dt: datetime | None, tz: timezone) -> str | None:
    """WordPress's REST date form: no offset, seconds precision, in ``tz``."""
    if dt is None:
        return None
    return dt.astimezone(tz).replace(tzinfo=None).isoformat(timespec="seconds")


def _money(value: Any) -> Any:
    """Store money as WooCommerce does ("23.25"); an unparseable neutral value passes through."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | Decimal):
        return f"{Decimal(value):.2f}"
    return value


def _number(value: Any) -> Any:
    """A line ``price`` is a JSON number in WooCommerce (PHP float); Decimal keeps it exact."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | Decimal):
        return value
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return value  # "N/A": an unparseable record the connector must reject


def _qty(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _customer_id(code: str | None) -> int:
    digits = re.sub(r"\D", "", code or "")
    return int(digits) if digits else 0  # 0 = guest checkout


def render_order(o: dict, wc_id: int) -> dict[str, Any]:
    """A neutral order (sandbox/generator.py) -> a wc/v3 order."""
    created = _dt(o.get("ordered_at")) if _is_time(o.get("ordered_at")) else None
    modified = _dt(o.get("updated_at")) or created or _EPOCH
    code = o.get("customer_code")
    lines = []
    for n, ln in enumerate(sorted(o.get("lines") or [], key=lambda x: x.get("line_no") or 0),
                           start=1):
        qty, price = _qty(ln.get("qty")), _number(ln.get("unit_price"))
        subtotal: Any = price
        if isinstance(price, Decimal | int) and isinstance(qty, int | Decimal):
            subtotal = _money(Decimal(price) * Decimal(qty))
        lines.append({
            "id": wc_id * 100 + n,
            "name": ln.get("sku") or "item",
            "product_id": _customer_id(ln.get("sku")),
            "variation_id": 0,
            "quantity": qty,
            "tax_class": "",
            "subtotal": subtotal,
            "subtotal_tax": "0.00",
            "total": subtotal,
            "total_tax": "0.00",
            "taxes": [],
            "meta_data": [],
            "sku": ln.get("sku") or "",
            "price": price,
        })
    meta = [{"id": wc_id * 10 + 1, "key": "customer_code", "value": code}] if code else []
    return {
        "id": wc_id,
        "parent_id": 0,
        "number": str(o.get("order_no") or wc_id),
        "order_key": "wc_order_" + hashlib.sha1(str(wc_id).encode()).hexdigest()[:13],
        "created_via": "checkout",
        "version": "9.3.3",
        "status": "processing",
        "currency": o.get("currency"),
        "date_created": _wp_time(created, SITE_TZ),
        "date_created_gmt": _wp_time(created, UTC),
        "date_modified": _wp_time(modified, SITE_TZ),
        "date_modified_gmt": _wp_time(modified, UTC),
        "discount_total": "0.00",
        "discount_tax": "0.00",
        "shipping_total": "0.00",
        "shipping_tax": "0.00",
        "cart_tax": "0.00",
        "total": _money(o.get("total")),
        "total_tax": "0.00",
        "prices_include_tax": False,
        "customer_id": _customer_id(code),
        "customer_note": "",
        "billing": {"first_name": "", "last_name": "", "company": "", "address_1": "",
                    "city": "", "state": "", "postcode": "", "country": "CN",
                    "email": o.get("customer_email") or "", "phone": ""},
        "shipping": {"first_name": "", "last_name": "", "company": "", "address_1": "",
                     "city": "", "state": o.get("ship_region") or "", "postcode": "",
                     "country": "CN"},
        "payment_method": "bacs",
        "payment_method_title": "Direct bank transfer",
        "transaction_id": "",
        "date_paid": None,
        "date_paid_gmt": None,
        "date_completed": None,
        "date_completed_gmt": None,
        "meta_data": meta,
        "line_items": lines,
        "shipping_lines": [],
        "fee_lines": [],
        "coupon_lines": [],
        "refunds": [],
    }


def _is_time(value: Any) -> bool:
    try:
        return _dt(value) is not None
    except (TypeError, ValueError):
        return False


def _neutral_orders(dataset: Any) -> list[dict]:
    if isinstance(dataset, list):
        return dataset
    orders = dataset["orders"] if isinstance(dataset, dict) else getattr(dataset, "orders", {})
    return list(orders.get("woocommerce", [])) if isinstance(orders, dict) else list(orders)


# -- the fake ----------------------------------------------------------------------------------


class WooCommerceFake(FakeApp):
    """wc/v3 orders over the dataset's ``orders["woocommerce"]`` (or a plain list of orders)."""

    def __init__(
        self,
        dataset: Any,
        fast: bool = True,
        consumer_key: str = CONSUMER_KEY,
        consumer_secret: str = CONSUMER_SECRET,
    ) -> None:
        super().__init__()
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.fast = fast  # no rate limit to relax: see the module docstring
        self.ignore_page = False
        self.orders: dict[int, dict] = {}
        self._keys: dict[int, dict[str, datetime]] = {}
        self._ids: dict[str, int] = {}  # neutral external_id -> WooCommerce id
        self.load(_neutral_orders(dataset))
        self.route("GET", re.escape(ORDERS_PATH), self.list_orders)
        one = re.escape(ORDERS_PATH) + r"/(?P<id>\d+)"
        self.route("GET", one, self.get_order)
        for method in ("PUT", "POST", "PATCH"):
            self.route(method, one, self.update_order)

    # -- sandbox wiring ----------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        """The connector's ``auth`` config for this fake (sandbox.Sandbox.sources())."""
        return {"consumer_key": self.consumer_key, "consumer_secret": self.consumer_secret}

    def options(self) -> dict[str, Any]:
        return {}

    def load(self, neutral_orders: Iterable[dict]) -> None:
        """Add or replace orders (tests use this to simulate updates between reads)."""
        with self.lock:
            for o in neutral_orders:
                wc_id = self._wc_id(str(o["external_id"]))
                rendered = render_order(o, wc_id)
                if wc_id in self.orders:  # keep what the API changed (a completed status)
                    rendered["status"] = self.orders[wc_id]["status"]
                self.orders[wc_id] = rendered
                self._keys[wc_id] = {
                    "modified": _dt(rendered["date_modified_gmt"]) or _EPOCH,
                    "created": _dt(rendered["date_created_gmt"]) or _EPOCH,
                }

    def _wc_id(self, external_id: str) -> int:
        if external_id not in self._ids:
            # Numeric ids are kept (so tests can predict them); others get the next free one.
            wanted = int(external_id) if external_id.isdigit() else None
            taken = set(self._ids.values())
            if wanted is None or wanted in taken:
                wanted = max(taken | {1000}) + 1
            self._ids[external_id] = wanted
        return self._ids[external_id]

    # -- auth ------------------------------------------------------------------------------

    def before_request(self, req: Request) -> Response | None:
        if not req.path.startswith("/wp-json/wc/"):
            return None
        key, secret = req.query.get("consumer_key"), req.query.get("consumer_secret")
        header = req.header("authorization") or ""
        if header.lower().startswith("basic "):
            try:
                key, _, secret = base64.b64decode(header[6:]).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                key = secret = None
        if key == self.consumer_key and secret == self.consumer_secret:
            return None
        if req.method == "GET" and req.path == ORDERS_PATH:
            return wc_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        if req.method == "GET":
            return wc_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot view this resource.")
        return wc_error(401, "woocommerce_rest_cannot_edit",
                        "Sorry, you are not allowed to edit this resource.")

    # -- orders ------------------------------------------------------------------------------

    def list_orders(self, req: Request) -> Response:
        q = req.query
        bad = {}
        page = _int(q.get("page", "1"))
        if page is None or page < 1:
            bad["page"] = "page must be greater than or equal to 1"
        per_page = _int(q.get("per_page", "10"))
        if per_page is None or not 1 <= per_page <= MAX_PER_PAGE:
            bad["per_page"] = f"per_page must be between 1 (inclusive) and {MAX_PER_PAGE} (inclusive)"
        orderby = q.get("orderby", "date")
        if orderby not in _ORDERBY:
            bad["orderby"] = f"orderby is not one of {', '.join(_ORDERBY)}."
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            bad["order"] = "order is not one of asc, desc."
        status = q.get("status", "any")
        if status != "any" and any(s not in STATUSES for s in status.split(",")):
            bad["status"] = f"status is not one of any, {', '.join(STATUSES)}."
        gmt = q.get("dates_are_gmt", "false").lower() in ("1", "true")
        bounds: dict[str, datetime] = {}
        for name in ("after", "before", "modified_after", "modified_before"):
            if q.get(name):
                when = _wp_param_time(q[name], gmt)
                if when is None:
                    bad[name] = "Invalid date."
                else:
                    bounds[name] = when
        if bad:
            return wc_error(400, "rest_invalid_param",
                            f"Invalid parameter(s): {', '.join(bad)}", params=bad)
        assert page is not None and per_page is not None

        rows = []
        for wc_id, k in self._keys.items():
            if status != "any" and self.orders[wc_id]["status"] not in status.split(","):
                continue
            # WordPress date_query after/before are exclusive.
            if "after" in bounds and not k["created"] > bounds["after"]:
                continue
            if "before" in bounds and not k["created"] < bounds["before"]:
                continue
            if "modified_after" in bounds and not k["modified"] > bounds["modified_after"]:
                continue
            if "modified_before" in bounds and not k["modified"] < bounds["modified_before"]:
                continue
            rows.append(wc_id)
        sort = _ORDERBY[orderby]
        rows.sort(key=lambda i: (self._keys[i][sort] if sort != "id" else 0, i),
                  reverse=(order == "desc"))
        total = len(rows)
        pages = math.ceil(total / per_page) if total else 0
        shown = 1 if self.ignore_page else page
        chunk = rows[(shown - 1) * per_page: shown * per_page]
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        links = []
        base = {k: v for k, v in q.items() if k not in ("consumer_key", "consumer_secret")}
        if page > 1 and pages:
            links.append(f'<{req.base_url}{ORDERS_PATH}?{urlencode({**base, "page": page - 1})}>'
                         '; rel="prev"')
        if page < pages:
            links.append(f'<{req.base_url}{ORDERS_PATH}?{urlencode({**base, "page": page + 1})}>'
                         '; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        return Response(200, [self.orders[i] for i in chunk], headers=headers)

    def _order(self, req: Request) -> dict | None:
        return self.orders.get(int(req.path_params["id"]))

    def get_order(self, req: Request) -> Response:
        order = self._order(req)
        if order is None:
            return wc_error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        return Response(200, order)

    def update_order(self, req: Request) -> Response:
        order = self._order(req)
        if order is None:
            return wc_error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        body = req.json if isinstance(req.json, dict) else {}
        status = body.get("status")
        if status is not None:
            if status not in STATUSES:
                return wc_error(400, "rest_invalid_param", "Invalid parameter(s): status",
                                params={"status": f"status is not one of {', '.join(STATUSES)}."})
            if status != order["status"]:
                order["status"] = status
                if status == "completed":
                    now = datetime.now(UTC)
                    order["date_completed"] = _wp_time(now, SITE_TZ)
                    order["date_completed_gmt"] = _wp_time(now, UTC)
                    self.creates[("fulfilment", str(order["id"]))] += 1
        return Response(200, order)


def _int(value: str | None) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _wp_param_time(value: str, gmt: bool) -> datetime | None:
    """A date filter as WordPress reads it: naive values are site-local unless dates_are_gmt."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC if gmt else SITE_TZ)
    return dt.astimezone(UTC)

