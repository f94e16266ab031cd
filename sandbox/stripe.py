"""A fake Stripe API: charges, payment intents and refunds from a Dataset; customers and invoices.

What it reproduces (shared/reference/source-apis.md "Stripe", Stripe API reference):

- Auth: ``Authorization: Bearer <secret key>`` (or Basic with the key as user name). No key ->
  401 "You did not provide an API key..."; a wrong one -> 401 ``{"error": {"type":
  "invalid_request_error", "message": "Invalid API Key provided: sk_test_****abcd"}}`` — Stripe
  masks the key it quotes.
- Errors are always ``{"error": {"type", "code", "message", "param"}}`` with HTTP 400 (bad or
  unknown parameter, ``resource_missing``), 402 (``card_error``), 404 (unknown object or URL).
- Lists ``GET /v1/charges``, ``/v1/payment_intents``, ``/v1/refunds``, ``/v1/invoiceitems`` and
  ``/v1/customers``: ``limit`` 1..100 (default 10), ``starting_after`` / ``ending_before`` (object
  ids; not both), ``created`` / ``created[gt|gte|lt|lte]`` (unix seconds), ``expand[]=data.<field>``
  -> ``{"object": "list", "data": [...], "has_more": bool, "url": ...}``, NEWEST FIRST (created
  desc, then id desc). Unknown parameters are a 400 ``parameter_unknown``, like Stripe.
- Search ``GET /v1/customers/search`` and ``/v1/invoices/search`` with ``query`` clauses
  ``metadata['k']:'v'`` or ``field:'v'`` joined by ``AND`` -> ``{"object": "search_result", ...}``.
  (Real search lags writes by up to a minute; this one is immediately consistent.)
- Writes take form-encoded bodies (``metadata[k]=v``; a JSON body is a 400): ``POST /v1/refunds``,
  ``/v1/customers``, ``/v1/invoices``, ``/v1/invoiceitems``, ``/v1/invoices/{id}/finalize``.
- ``Idempotency-Key`` (<= 255 chars) on POST, with Stripe's replay semantics: the first answer for
  a key — even an error — is saved and replayed for the same key and parameters, with header
  ``Idempotent-Replayed: true``; the same key with other parameters or on another endpoint is a
  400 ``idempotency_error``. Parameter validation failures are not saved (Stripe saves results only
  once an endpoint started executing), nor are injected faults. ``prune_idempotency_keys()``
  forgets them, as Stripe does after 24 h.
- Rate limit: ``fast=False`` is test mode's documented 25 requests/s (a token bucket); over it ->
  429 ``{"error": {"code": "rate_limit", ...}}``. Stripe sends no Retry-After; tests add one with
  ``faults.add(429, retry_after=...)``. ``fast=True`` allows 1000/s.

Data: ``dataset.payments`` entries whose ``system`` is "stripe" (neutral payments: external_id,
reference, customer_code, amount Decimal, currency, received_at, optional refunded / status /
email / description), plus an optional ``dataset.charges`` list (or ``dataset["charges"]``) of
Stripe-shaped charge dicts, completed with defaults; a plain list is taken as neutral payments.
Amounts are minor units with Stripe's exponents: warehouse.money's ISO table, except ISK
(two-decimal in Stripe's API) and MGA (zero-decimal). Every charge gets a payment intent.

Counters: ``creates[("invoice", metadata invoice_no or key)]``, ``[("refund", key or id)]``,
``[("customer", metadata customer_code or key or id)]``. ``now`` is a fake clock (unix seconds,
one second later per created object), starting an hour after the newest charge; tests may set it.

Simplifications: one account, test mode only; ``expand[]`` takes one value (the request parser
keeps the first); invoices support only ``amount`` items (no prices, taxes, discounts); finalize
opens the invoice (a zero total is marked paid), nothing is ever emailed or charged.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from sandbox.server import FakeApp, Request, Response
from warehouse.money import MoneyError, decimals, parse_money, quantize

DEFAULT_KEY = "sk_test_51OrderhubSandboxKey4f1c2e9a7b3d"
ACCOUNT = "acct_1OrderhubSandbox"
API_VERSION = "2024-06-20"
MAX_LIMIT = 100
MAX_KEY = 255
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BASE = 1_793_491_200  # 2026-11-01T00:00:00Z, the generator's base date: the clock's default start
_STRIPE_EXPONENT = {"ISK": 2, "MGA": 0}  # where Stripe's wire exponent differs from ISO 4217
_LIST_PARAMS = {"limit", "starting_after", "ending_before", "created", "created[gt]",
                "created[gte]", "created[lt]", "created[lte]", "expand[]", "expand[0]"}
_CREATED_OPS: dict[str, Callable[[int, int], bool]] = {
    "created": lambda v, b: v == b,
    "created[gt]": lambda v, b: v > b,
    "created[gte]": lambda v, b: v >= b,
    "created[lt]": lambda v, b: v < b,
    "created[lte]": lambda v, b: v <= b,
}
_CLAUSE = re.compile(r"\s*(?:metadata\['(?P<mk>[^']+)'\]|(?P<f>[a-z_]+))\s*:\s*"
                     r"'(?P<v>(?:[^'\\]|\\.)*)'\s*")
NO_KEY = ("You did not provide an API key. You need to provide your API key in the Authorization "
          "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
RATE_LIMITED = ("Too many requests hit the API too quickly. We recommend an exponential backoff "
                "of your requests.")


class StripeError(Exception):
    """An answer in Stripe's error shape. ``saved``: whether an idempotent request keeps it."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, saved: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.saved = code, param, saved

    def response(self) -> Response:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            err["code"] = self.code
        if self.param:
            err["param"] = self.param
        return Response(self.status, {"error": err})


def error_body(message: str, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    """Stripe's error shape, for tests arranging faults."""
    return StripeError(400, message, type=type, code=code, param=param).response().json


def mask_key(key: str) -> str:
    """How Stripe quotes a key in an error: ``sk_test_****abcd``."""
    prefix = re.match(r"^[a-z]+_(?:test_|live_)?", key)
    head = prefix.group(0) if prefix else ""
    return f"{head}****{key[-4:]}" if len(key) > len(head) + 4 else "****"


def to_stripe_minor(amount: Any, currency: str) -> int:
    """Neutral Decimal amount -> Stripe minor units (ISO decimals; ISK and MGA as Stripe)."""
    cur = currency.upper()
    value = quantize(parse_money(amount), cur)
    return int(value.scaleb(_STRIPE_EXPONENT.get(cur, decimals(cur))).to_integral_value())


def _unix(value: Any) -> int:
    """int (already unix seconds), datetime or ISO-8601 text -> unix seconds (UTC if naive)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(seconds=1)


def _suffix(text: str) -> str:
    """A Stripe-looking id body from any external id: deterministic, not ordered like it."""
    clean = re.sub(r"[^A-Za-z0-9]", "", text)
    return clean if clean and len(clean) >= 6 else hashlib.sha1(text.encode()).hexdigest()[:24]


def _get(dataset: Any, name: str) -> Any:
    if isinstance(dataset, dict):
        return dataset.get(name)
    return getattr(dataset, name, None)


def _unflatten(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``metadata[a]=1`` -> ``{"metadata": {"a": "1"}}``; ``lines[0][x]`` -> lists."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", name)
        if not parts:
            continue
        node = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "[]":
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise StripeError(400, f"Invalid object: {name}", param=name)
    return _lists(out)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


@dataclass
class _Saved:
    endpoint: tuple[str, str]
    fingerprint: tuple[tuple[str, str], ...]
    response: Response
    request_id: str


class StripeFake(FakeApp):
    def __init__(self, dataset: Any, fast: bool = True, api_key: str = DEFAULT_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.fast = fast
        self.rate, self.burst = (1000.0, 1000.0) if fast else (25.0, 25.0)  # test-mode limit
        self._tokens, self._filled_at = self.burst, time.monotonic()
        self.charges: dict[str, dict] = {}
        self.payment_intents: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}
        self.customers: dict[str, dict] = {}
        self.invoices: dict[str, dict] = {}
        self.invoiceitems: dict[str, dict] = {}
        self.idempotency: dict[str, _Saved] = {}
        self._seq = 0
        self._invoice_numbers = 0
        self.now = _BASE

        if isinstance(dataset, list):  # a bare list: neutral payments, all Stripe's
            payments, charges = dataset, []
        else:
            payments = [p for p in _get(dataset, "payments") or [] if p.get("system") == "stripe"]
            charges = list(_get(dataset, "charges") or [])
        for p in payments:
            self.add_payment(p)
        for c in charges:
            self.add_charge(**c)
        self.now = max((c["created"] for c in self.charges.values()), default=_BASE) + 3600

        lists = {"charges": self.charges, "payment_intents": self.payment_intents,
                 "refunds": self.refunds, "invoiceitems": self.invoiceitems,
                 "customers": self.customers, "invoices": self.invoices}
        for name, store in lists.items():
            self.route("GET", rf"/v1/{name}", self._lister(name, store))
            self.route("GET", rf"/v1/{name}/(?P<id>(?!search$)[A-Za-z0-9_]+)",
                       self._getter(store))
        self.route("GET", r"/v1/customers/search", self._searcher("customers", self.customers))
        self.route("GET", r"/v1/invoices/search", self._searcher("invoices", self.invoices))
        self.route("POST", r"/v1/refunds", self._idempotent(self.create_refund))
        self.route("POST", r"/v1/customers", self._idempotent(self.create_customer))
        self.route("POST", r"/v1/invoices", self._idempotent(self.create_invoice))
        self.route("POST", r"/v1/invoiceitems", self._idempotent(self.create_invoiceitem))
        self.route("POST", r"/v1/invoices/(?P<id>in_[A-Za-z0-9]+)/finalize",
                   self._idempotent(self.finalize_invoice))

    # -- sandbox wiring --------------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        return {"api_key": self.api_key}

    def options(self) -> dict[str, Any]:
        return {"api_version": API_VERSION}

    def tick(self) -> int:
        """The fake clock: one second later per object created."""
        self.now += 1
        return self.now

    def _id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}_{hashlib.sha1(f'{prefix}{self._seq}'.encode()).hexdigest()[:24]}"

    def prune_idempotency_keys(self) -> None:
        """Forget every saved key, as Stripe does after 24 h."""
        with self.lock:
            self.idempotency.clear()

    # -- data --------------------------------------------------------------------------------------

    def add_payment(self, p: dict) -> dict:
        """A neutral payment (sandbox/generator.py shape) as a succeeded charge."""
        currency = str(p["currency"])
        ext = str(p["external_id"])
        minor = to_stripe_minor(p["amount"], currency)
        refunded = to_stripe_minor(p.get("refunded") or 0, currency)
        metadata = {k: v for k, v in (("order_no", p.get("reference")),
                                      ("customer_code", p.get("customer_code"))) if v}
        return self.add_charge(
            id=ext if ext.startswith("ch_") else f"ch_{_suffix(ext)}",
            amount=minor, amount_refunded=refunded, currency=currency,
            created=_unix(p["received_at"]), status=p.get("status") or "succeeded",
            description=p.get("description"), metadata=metadata, email=p.get("email"),
        )

    def add_charge(self, **fields: Any) -> dict:
        """A Stripe charge from ``fields`` (any charge attribute), completed with defaults."""
        with self.lock:
            cid = str(fields.pop("id", None) or self._id("ch"))
            amount = int(fields.pop("amount", 1000))
            status = fields.pop("status", "succeeded")
            captured = fields.pop("captured", status != "failed")
            amount_captured = fields.pop("amount_captured", amount if captured and status
                                         != "failed" else 0)
            refunded = int(fields.pop("amount_refunded", 0))
            created = fields.pop("created", None)
            created = _unix(created) if created is not None else self.tick()
            email = fields.pop("email", None)
            body = cid.split("_", 1)[-1]
            charge = {
                "id": cid,
                "object": "charge",
                "amount": amount,
                "amount_captured": amount_captured,
                "amount_refunded": refunded,
                "balance_transaction": f"txn_{body}" if captured else None,
                "billing_details": {"address": None, "email": email, "name": None, "phone": None},
                "captured": captured,
                "created": created,
                "currency": str(fields.pop("currency", "usd")).lower(),
                "customer": None,
                "description": fields.pop("description", None),
                "failure_code": "card_declined" if status == "failed" else None,
                "livemode": False,
                "metadata": dict(fields.pop("metadata", None) or {}),
                "paid": status == "succeeded",
                "payment_intent": f"pi_{body}",
                "refunded": refunded > 0 and refunded >= amount_captured,
                "status": status,
            }
            charge.update(fields)
            self.charges[cid] = charge
            self.payment_intents[charge["payment_intent"]] = {
                "id": charge["payment_intent"], "object": "payment_intent",
                "amount": amount, "amount_received": amount_captured if charge["paid"] else 0,
                "currency": charge["currency"], "created": created, "customer": None,
                "description": charge["description"], "latest_charge": cid,
                "livemode": False, "metadata": dict(charge["metadata"]),
                "status": {"succeeded": "succeeded", "pending": "processing"}.get(
                    status, "requires_payment_method"),
            }
            return charge

    # -- cross-cutting: auth, rate limit, request ids ---------------------------------------------

    def before_request(self, req: Request) -> Response | None:
        if not req.path.startswith("/v1/"):
            return None
        key = self._key_of(req)
        if not key:
            return StripeError(401, NO_KEY).response()
        if key != self.api_key:
            return StripeError(401, f"Invalid API Key provided: {mask_key(key)}").response()
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        if self._tokens < 1:
            return StripeError(429, RATE_LIMITED, code="rate_limit").response()
        self._tokens -= 1
        return None

    @staticmethod
    def _key_of(req: Request) -> str | None:
        auth = req.header("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip() or None
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(value).decode().split(":", 1)[0] or None
            except (binascii.Error, UnicodeDecodeError):
                return None
        return None

    def after_request(self, req: Request, resp: Response) -> Response:
        if resp.status in (404, 405) and isinstance(resp.json, dict) and "errors" in resp.json:
            resp = StripeError(resp.status, f"Unrecognized request URL ({req.method}: "
                               f"{req.path}). Please see https://stripe.com/docs or we can help "
                               "at https://support.stripe.com/.").response()
        resp.headers.setdefault("Request-Id", f"req_{len(self.requests):014d}")
        resp.headers["Stripe-Version"] = req.header("Stripe-Version") or API_VERSION
        return resp

    # -- reading ------------------------------------------------------------------------------------

    def _lister(self, name: str, store: dict[str, dict]) -> Callable[[Request], Response]:
        filters = {"charges": ("customer", "payment_intent"), "payment_intents": ("customer",),
                   "refunds": ("charge", "payment_intent"),
                   "invoiceitems": ("customer", "invoice"), "customers": ("email",),
                   "invoices": ("customer", "status")}[name]

        def handler(req: Request) -> Response:
            try:
                return self._list(req, name, store, filters)
            except StripeError as err:
                return err.response()

        return handler

    def _list(self, req: Request, name: str, store: dict[str, dict],
              filters: tuple[str, ...]) -> Response:
        q = req.query
        for param in q:
            if param not in _LIST_PARAMS and param not in filters:
                raise StripeError(400, f"Received unknown parameter: {param}",
                                  code="parameter_unknown", param=param)
        limit = _int_param(q, "limit", 10)
        if not 1 <= limit <= MAX_LIMIT:
            raise StripeError(400, "This value must be greater than or equal to 1 and less than "
                              "or equal to 100.", code="parameter_invalid_integer", param="limit")
        if "starting_after" in q and "ending_before" in q:
            raise StripeError(400, "You may only specify one of these parameters: "
                              "ending_before, starting_after.", param="starting_after")
        bounds = [(op, _int_param(q, p, 0)) for p, op in _CREATED_OPS.items() if p in q]
        rows = [o for o in store.values()
                if all(op(o["created"], b) for op, b in bounds)
                and all(str(o.get(f)) == q[f] for f in filters if f in q)]

        def key(o: dict) -> tuple[int, str]:
            return (o["created"], o["id"])

        rows.sort(key=key, reverse=True)  # newest first, id desc among equals
        if "starting_after" in q:
            pos = key(self._anchor(store, name, q["starting_after"], "starting_after"))
            window = [o for o in rows if key(o) < pos]
            page, has_more = window[:limit], len(window) > limit
        elif "ending_before" in q:
            pos = key(self._anchor(store, name, q["ending_before"], "ending_before"))
            window = [o for o in rows if key(o) > pos]
            page, has_more = window[-limit:], len(window) > limit
        else:
            page, has_more = rows[:limit], len(rows) > limit
        expand = q.get("expand[]") or q.get("expand[0]")
        data = [self._expand(o, expand) for o in page]
        return Response(200, {"object": "list", "data": data, "has_more": has_more,
                              "url": f"/v1/{name}"})

    def _anchor(self, store: dict[str, dict], name: str, oid: str, param: str) -> dict:
        obj = store.get(oid)
        if obj is None:
            raise StripeError(400, f"No such {name.rstrip('s')}: '{oid}'",
                              code="resource_missing", param=param)
        return obj

    def _expand(self, obj: dict, expand: str | None) -> dict:
        if not expand:
            return obj
        field = expand.removeprefix("data.")
        stores = {"charge": self.charges, "latest_charge": self.charges,
                  "payment_intent": self.payment_intents, "customer": self.customers,
                  "invoice": self.invoices}
        if field not in stores:
            raise StripeError(400, f"This property cannot be expanded ({expand}).",
                              param="expand")
        ref = obj.get(field)
        return {**obj, field: stores[field].get(ref, ref)} if isinstance(ref, str) else obj

    def _getter(self, store: dict[str, dict]) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            obj = store.get(req.path_params["id"])
            if obj is None:
                kind = req.path.split("/")[2].rstrip("s")
                return StripeError(404, f"No such {kind}: '{req.path_params['id']}'",
                                   code="resource_missing", param="id").response()
            return Response(200, obj)

        return handler

    def _searcher(self, name: str, store: dict[str, dict]) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            try:
                clauses = _parse_query(req.query.get("query"))
                limit = _int_param(req.query, "limit", 10)
                if not 1 <= limit <= MAX_LIMIT:
                    raise StripeError(400, "Invalid limit", param="limit")
                offset = _int_param(req.query, "page", 0)
            except StripeError as err:
                return err.response()
            hits = sorted(
                (o for o in store.values() if all(_matches(o, c) for c in clauses)),
                key=lambda o: (o["created"], o["id"]), reverse=True,
            )
            page = hits[offset:offset + limit]
            more = len(hits) > offset + limit
            return Response(200, {"object": "search_result", "data": page, "has_more": more,
                                  "next_page": str(offset + limit) if more else None,
                                  "url": f"/v1/{name}/search"})

        return handler

    # -- writes: form bodies and idempotency --------------------------------------------------------

    def _idempotent(self, handler: Callable[[Request, dict], Response]) -> Callable[[Request], Response]:
        def wrapped(req: Request) -> Response:
            try:
                pairs = _form_pairs(req)
            except StripeError as err:
                return err.response()
            key = req.header("Idempotency-Key")
            if key is not None and len(key) > MAX_KEY:
                return StripeError(400, f"Idempotency-Key must be at most {MAX_KEY} characters "
                                   "long.", code="parameter_invalid_string_too_long").response()
            endpoint = (req.method, req.path)
            fingerprint = tuple(sorted(pairs))
            if key is not None and key in self.idempotency:
                saved = self.idempotency[key]
                if saved.endpoint != endpoint:
                    return StripeError(
                        400, "Keys for idempotent requests can only be used for the same endpoint "
                        f"they were first used for ('{' '.join(saved.endpoint)}' vs "
                        f"'{' '.join(endpoint)}'). Try using a key other than '{key}' if you "
                        "meant to execute a different request.", type="idempotency_error",
                    ).response()
                if saved.fingerprint != fingerprint:
                    return StripeError(
                        400, "Keys for idempotent requests can only be used with the same "
                        f"parameters they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                        type="idempotency_error",
                    ).response()
                replay = saved.response
                return Response(replay.status, replay.json, headers={
                    "Idempotent-Replayed": "true", "Idempotency-Key": key,
                    "Original-Request": saved.request_id,
                })
            request_id = f"req_{len(self.requests):014d}"
            try:
                resp = handler(req, _unflatten(pairs))
                save = True
            except StripeError as err:
                resp, save = err.response(), err.saved
            resp.headers["Request-Id"] = request_id
            if key is not None:
                resp.headers["Idempotency-Key"] = key
                if save:  # a snapshot: the object itself changes later (a draft gets finalized)
                    snapshot = Response(resp.status, copy.deepcopy(resp.json))
                    self.idempotency[key] = _Saved(endpoint, fingerprint, snapshot, request_id)
            return resp

        return wrapped

    def create_refund(self, req: Request, p: dict) -> Response:
        _only(p, {"charge", "payment_intent", "amount", "reason", "metadata"})
        charge = self._charge_for_refund(p)
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        amount = _int_value(p, "amount", remaining)
        if remaining <= 0:
            raise StripeError(400, f"Charge {charge['id']} has already been refunded.",
                              code="charge_already_refunded", saved=True)
        if not 1 <= amount <= remaining:
            raise StripeError(400, f"Refund amount ({amount}) is greater than unrefunded amount "
                              f"on charge ({remaining})", code="amount_too_large",
                              param="amount", saved=True)
        rid = self._id("re")
        refund = {
            "id": rid, "object": "refund", "amount": amount, "charge": charge["id"],
            "created": self.tick(), "currency": charge["currency"],
            "metadata": p.get("metadata") or {}, "payment_intent": charge["payment_intent"],
            "reason": p.get("reason"), "status": "succeeded",
        }
        self.refunds[rid] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        self.creates[("refund", req.header("Idempotency-Key") or rid)] += 1
        return Response(200, refund)

    def _charge_for_refund(self, p: dict) -> dict:
        if p.get("charge"):
            charge = self.charges.get(p["charge"])
            if charge is None:
                raise StripeError(400, f"No such charge: '{p['charge']}'",
                                  code="resource_missing", param="charge", saved=True)
            return charge
        if p.get("payment_intent"):
            intent = self.payment_intents.get(p["payment_intent"])
            if intent is None:
                raise StripeError(400, f"No such payment_intent: '{p['payment_intent']}'",
                                  code="resource_missing", param="payment_intent", saved=True)
            return self.charges[intent["latest_charge"]]
        raise StripeError(400, "One of the following params should be provided for this request: "
                          "payment_intent or charge.", code="parameter_missing", param="charge")

    def create_customer(self, req: Request, p: dict) -> Response:
        _only(p, {"name", "email", "description", "metadata"})
        metadata = _metadata(p)
        cid = self._id("cus")
        customer = {"id": cid, "object": "customer", "created": self.tick(),
                    "name": p.get("name"), "email": p.get("email"),
                    "description": p.get("description"), "metadata": metadata,
                    "livemode": False}
        self.customers[cid] = customer
        self.creates[("customer", metadata.get("customer_code")
                      or req.header("Idempotency-Key") or cid)] += 1
        return Response(200, customer)

    def create_invoice(self, req: Request, p: dict) -> Response:
        _only(p, {"customer", "currency", "collection_method", "days_until_due", "auto_advance",
                  "pending_invoice_items_behavior", "description", "metadata"})
        if not p.get("customer"):
            raise StripeError(400, "Missing required param: customer.",
                              code="parameter_missing", param="customer")
        method = p.get("collection_method", "charge_automatically")
        if method not in ("charge_automatically", "send_invoice"):
            raise StripeError(400, f"Invalid collection_method: {method}",
                              code="parameter_invalid_string", param="collection_method")
        days = _int_value(p, "days_until_due", None) if "days_until_due" in p else None
        if method == "send_invoice" and days is None:
            raise StripeError(400, "Invoices with collection_method=send_invoice must have "
                              "either due_date or days_until_due set.",
                              code="parameter_missing", param="days_until_due")
        behaviour = p.get("pending_invoice_items_behavior", "exclude")
        if behaviour not in ("exclude", "include"):
            raise StripeError(400, f"Invalid pending_invoice_items_behavior: {behaviour}",
                              param="pending_invoice_items_behavior")
        metadata = _metadata(p)
        customer = self.customers.get(p["customer"])
        if customer is None:
            raise StripeError(400, f"No such customer: '{p['customer']}'",
                              code="resource_missing", param="customer", saved=True)
        currency = str(p.get("currency") or "usd").lower()
        iid = self._id("in")
        invoice = {
            "id": iid, "object": "invoice", "customer": customer["id"], "currency": currency,
            "collection_method": method, "days_until_due": days,
            "auto_advance": _bool(p.get("auto_advance"), False),
            "created": self.tick(), "description": p.get("description"),
            "metadata": metadata, "number": None, "status": "draft",
            "subtotal": 0, "total": 0, "amount_due": 0, "amount_paid": 0,
            "amount_remaining": 0, "livemode": False,
            "lines": {"object": "list", "data": [], "has_more": False,
                      "url": f"/v1/invoices/{iid}/lines"},
            "status_transitions": {"finalized_at": None, "paid_at": None},
        }
        self.invoices[iid] = invoice
        if behaviour == "include":
            for item in self.invoiceitems.values():
                if item["customer"] == customer["id"] and item["invoice"] is None \
                        and item["currency"] == currency:
                    self._attach(invoice, item)
        self.creates[("invoice", metadata.get("invoice_no")
                      or req.header("Idempotency-Key") or iid)] += 1
        return Response(200, invoice)

    def create_invoiceitem(self, req: Request, p: dict) -> Response:
        _only(p, {"customer", "invoice", "currency", "amount", "description", "metadata"})
        for required in ("customer", "amount", "currency"):
            if p.get(required) in (None, ""):
                raise StripeError(400, f"Missing required param: {required}.",
                                  code="parameter_missing", param=required)
        amount = _int_value(p, "amount", 0)
        currency = str(p["currency"]).lower()
        _check_amount_step(amount, currency, "amount")
        metadata = _metadata(p)
        customer = self.customers.get(p["customer"])
        if customer is None:
            raise StripeError(400, f"No such customer: '{p['customer']}'",
                              code="resource_missing", param="customer", saved=True)
        invoice = None
        if p.get("invoice"):
            invoice = self.invoices.get(p["invoice"])
            if invoice is None:
                raise StripeError(400, f"No such invoice: '{p['invoice']}'",
                                  code="resource_missing", param="invoice", saved=True)
            if invoice["customer"] != customer["id"]:
                raise StripeError(400, "The invoice belongs to a different customer.",
                                  param="invoice", saved=True)
            if invoice["status"] != "draft":
                raise StripeError(400, "You can only add invoice items to draft invoices.",
                                  code="invoice_not_editable", param="invoice", saved=True)
            if invoice["currency"] != currency:
                raise StripeError(400, f"The currency of this invoice item ({currency}) must "
                                  f"match the invoice currency ({invoice['currency']}).",
                                  param="currency", saved=True)
        iid = self._id("ii")
        item = {"id": iid, "object": "invoiceitem", "amount": amount, "currency": currency,
                "customer": customer["id"], "date": self.tick(), "created": self.now,
                "description": p.get("description"), "invoice": None,
                "metadata": metadata, "livemode": False}
        self.invoiceitems[iid] = item
        if invoice is not None:
            self._attach(invoice, item)
        return Response(200, item)

    def _attach(self, invoice: dict, item: dict) -> None:
        item["invoice"] = invoice["id"]
        invoice["lines"]["data"].append({
            "id": f"il_{item['id'][3:]}", "object": "line_item", "amount": item["amount"],
            "currency": item["currency"], "description": item["description"],
            "invoice_item": item["id"], "metadata": item["metadata"],
        })
        total = sum(line["amount"] for line in invoice["lines"]["data"])
        invoice.update(subtotal=total, total=total, amount_due=total, amount_remaining=total)

    def finalize_invoice(self, req: Request, p: dict) -> Response:
        _only(p, {"auto_advance"})
        invoice = self.invoices.get(req.path_params["id"])
        if invoice is None:
            raise StripeError(404, f"No such invoice: '{req.path_params['id']}'",
                              code="resource_missing", param="id", saved=True)
        if invoice["status"] != "draft":
            raise StripeError(400, "This invoice is already finalized, you can't re-finalize a "
                              "non-draft invoice.", code="invoice_not_editable", saved=True)
        self._invoice_numbers += 1
        now = self.tick()
        invoice["number"] = f"ORDH-{self._invoice_numbers:04d}"
        invoice["status_transitions"]["finalized_at"] = now
        if "auto_advance" in p:
            invoice["auto_advance"] = _bool(p["auto_advance"], False)
        if invoice["total"] == 0:  # Stripe marks a zero invoice paid on finalization
            invoice.update(status="paid", amount_due=0, amount_remaining=0)
            invoice["status_transitions"]["paid_at"] = now
        else:
            invoice["status"] = "open"
        return Response(200, invoice)


# -- parameter helpers ---------------------------------------------------------------------------


def _form_pairs(req: Request) -> list[tuple[str, str]]:
    ctype = (req.header("Content-Type") or "").split(";")[0].strip().lower()
    if req.body and ctype != "application/x-www-form-urlencoded":
        raise StripeError(400, f"Invalid request: unsupported Content-Type {ctype or 'none'}. "
                          "Stripe's API takes application/x-www-form-urlencoded bodies.")
    try:
        return parse_qsl(req.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise StripeError(400, "Invalid request body: not UTF-8.") from None


def _only(p: dict, allowed: set[str]) -> None:
    for name in p:
        if name not in allowed and name not in ("expand",):
            raise StripeError(400, f"Received unknown parameter: {name}",
                              code="parameter_unknown", param=name)


def _int_param(q: dict[str, str], name: str, default: int) -> int:
    if name not in q:
        return default
    try:
        return int(q[name])
    except ValueError:
        raise StripeError(400, f"Invalid integer: {q[name]}", code="parameter_invalid_integer",
                          param=name) from None


def _int_value(p: dict, name: str, default: Any) -> Any:
    if name not in p:
        return default
    value = p[name]
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise StripeError(400, f"Invalid integer: {value}", code="parameter_invalid_integer",
                          param=name)
    return int(value)


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if value in ("true", "false"):
        return value == "true"
    raise StripeError(400, f"Invalid boolean: {value}", param="auto_advance")


def _metadata(p: dict) -> dict[str, str]:
    md = p.get("metadata") or {}
    if not isinstance(md, dict):
        raise StripeError(400, "Invalid hash", code="parameter_invalid_string", param="metadata")
    if len(md) > 50:
        raise StripeError(400, "Metadata can have at most 50 keys.", param="metadata")
    for k, v in md.items():
        if len(k) > 40 or not isinstance(v, str) or len(v) > 500:
            raise StripeError(400, "Metadata keys are at most 40 and values at most 500 "
                              "characters.", param=f"metadata[{k}]")
    return {k: v for k, v in md.items() if v != ""}  # "" unsets a key


def _check_amount_step(amount: int, currency: str, param: str) -> None:
    cur = currency.upper()
    try:
        places = decimals(cur)
    except MoneyError:
        raise StripeError(400, f"Invalid currency: {currency}.", param="currency") from None
    if cur == "ISK" and amount % 100:
        raise StripeError(400, "Invalid amount. Currency ISK has become effectively zero-decimal "
                          "and charged amounts must be evenly divisible by 100.",
                          code="invalid_charge_amount_no_decimal_compatible", param=param)
    if places == 3 and amount % 10:
        raise StripeError(400, f"Invalid amount. Amounts in {cur} must have 0 as the last "
                          "digit (three-decimal currency).", code="amount_invalid", param=param)


def _parse_query(query: str | None) -> list[tuple[str, bool, str]]:
    if not query or not query.strip():
        raise StripeError(400, "Missing required param: query.", code="parameter_missing",
                          param="query")
    clauses = []
    for part in re.split(r"\s+AND\s+", query.strip(), flags=re.IGNORECASE):
        m = _CLAUSE.fullmatch(part)
        if not m:
            raise StripeError(400, f"Invalid search query: {query}", param="query")
        value = re.sub(r"\\(.)", r"\1", m.group("v"))
        clauses.append((m.group("mk") or m.group("f"), bool(m.group("mk")), value))
    return clauses


def _matches(obj: dict, clause: tuple[str, bool, str]) -> bool:
    name, is_meta, value = clause
    got = (obj.get("metadata") or {}).get(name) if is_meta else obj.get(name)
    return got is not None and str(got) == value


def minor_to_decimal(minor: int, currency: str) -> Decimal:
    """For tests: Stripe minor units back to a Decimal, with Stripe's exponents."""
    cur = currency.upper()
    return Decimal(minor).scaleb(-_STRIPE_EXPONENT.get(cur, decimals(cur)))
