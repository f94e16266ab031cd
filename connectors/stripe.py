"""Stripe connector: charges in (as ``payments``), invoices out.

cfg: ``base_url`` (default https://api.stripe.com), ``auth: {api_key}`` (a secret ``sk_...`` or
restricted ``rk_...`` key, sent as ``Authorization: Bearer``), ``options: {api_version:
"2024-06-20" (sent as Stripe-Version, so an account's default version cannot change shapes under
us), page_size: 100 (Stripe's maximum), follow_refunds: true, lookup_first: true,
create_customers: true, days_until_due: 30, finalize: true}``, ``rate_limit`` (req/s; None picks
Stripe's documented limit from the key: 100/s live, 25/s test mode, we stay a little under),
``lookback_seconds``, ``retry``.

Reading ``payments``: ``GET /v1/charges?limit=100&created[gte]=<cursor - lookback, unix s>``,
paged with ``starting_after=<last id of the page>`` while ``has_more`` (filters go on every page:
Stripe keeps them with ``starting_after``, and without them later pages would run into history).
Stripe lists are NEWEST FIRST, so a page boundary says nothing about what is still unread
above it: the cursor is only emitted on the last page of a read, carrying the max
(created, id) of everything read (``cursor_per_page=False``).

Refunds: a charge's canonical ``amount`` is the cash kept, ``amount_captured - amount_refunded``,
and 0 unless ``status == "succeeded"`` (a failed or still-pending charge has received nothing).
A charge has no "updated" field and list filters only know ``created``, so a refund made days
later would never be seen by an incremental read of charges. With ``follow_refunds`` (default)
an incremental read therefore ends with ``GET /v1/refunds?created[gte]=<same since>&expand[]=
data.charge`` and re-emits each refunded charge in its current state (the warehouse upserts by
content hash, so an unchanged charge writes nothing). A full read (no cursor) skips this: every
charge is read in its current state anyway.

Money: Stripe amounts are integers in minor units. ``warehouse.money`` (ISO 4217) converts them,
except for the two currencies where Stripe's documented wire exponent differs from ISO: ISK stays
two-decimal in the API (100 = 1 kr) and MGA is zero-decimal (see ``STRIPE_EXPONENT``). On push,
an amount with more decimals than its currency allows is refused (never rounded), and a
three-decimal currency (KWD, BHD, ...) must end in 0 in minor units, as Stripe requires.

Push ``invoice`` (docs/internals.md): Stripe invoices need a customer, so the doc's
``customer_code`` is looked up with the Search API (``metadata['customer_code']``) and created when
missing (``create_customers``). Then ``POST /v1/invoices`` (draft, ``collection_method=
send_invoice``, ``auto_advance=false``, ``pending_invoice_items_behavior=exclude``, metadata
invoice_no/order_ref/customer_code), one ``POST /v1/invoiceitems`` per line (minor units; an
"adjustment" item makes the total equal the doc's ``amount`` when the lines do not add up), and
``POST /v1/invoices/{id}/finalize``. Every POST carries an ``Idempotency-Key`` derived from the
outbox key: the invoice uses the key itself, its items ``<key>:line:<n>``, finalize
``<key>:finalize`` (hashed if longer than 255 characters). Stripe replays the first answer of a key
for 24 h, so a resend (a retry, ``recover=True``, a failed row going back to pending) returns the
same invoice and creates nothing; the same key with different parameters is a 400
``idempotency_error``, reported as such. Keys may be pruned after 24 h, so before creating we
look the invoice up by ``metadata['invoice_no']`` (always with ``recover``; also without it while
``lookup_first`` is on, because a failed row is resent with ``recover=False``). Search is not
read-after-write consistent (about a minute), which is exactly the window the keys cover. An
invoice found as a draft is completed: its missing items (by ``metadata.line_no``) are added and
it is finalized.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from connectors.base import (
    Connector,
    Cursor,
    MappingError,
    Page,
    RawRecord,
    StreamSpec,
    parse_datetime,
    parse_text,
)
from connectors.http import ApiError, Auth, BearerAuth, HttpResponse, PaginationError
from connectors.paging import Paginator
from warehouse.money import MoneyError, decimals, from_minor, parse_money, quantize, to_minor

API_VERSION = "2024-06-20"
MAX_LIMIT = 100                 # Stripe list endpoints: limit 1..100
MAX_IDEMPOTENCY_KEY = 255       # documented maximum length of an Idempotency-Key
CHARGES_PATH = "/v1/charges"
REFUNDS_PATH = "/v1/refunds"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)

# Stripe's wire exponent where it differs from ISO 4217 (warehouse.money holds all the others).
# ISK: "ISK will remain a two-decimal currency in the Stripe API" (amounts in multiples of 100);
# MGA: listed by Stripe as zero-decimal, ISO says 2.
STRIPE_EXPONENT: dict[str, int] = {"ISK": 2, "MGA": 0}


# -- money (pure) ------------------------------------------------------------------------------


def _money_error(field: str, err: Exception) -> MappingError:
    # MoneyError texts start with their own field name ("amount: ..."); name ours instead.
    text = str(err).removeprefix("amount: ")
    return MappingError(f"{field}: {text}")


def stripe_decimals(currency: str) -> int:
    """Decimals of ``currency``'s minor unit as Stripe's API counts them."""
    cur = currency.strip().upper()
    return STRIPE_EXPONENT.get(cur, decimals(cur))


def amount_from_minor(minor: Any, currency: str, field: str = "amount") -> Decimal:
    """Stripe minor units -> Decimal amount (1234 usd -> 12.34, 1234 jpy -> 1234)."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise MappingError(f"{field}: expected integer minor units, got {minor!r}")
    try:
        cur = currency.strip().upper()
        if cur not in STRIPE_EXPONENT:
            return from_minor(minor, cur)
        value = Decimal(minor).scaleb(-STRIPE_EXPONENT[cur])
        exact = quantize(value, cur)
    except MoneyError as err:
        raise _money_error(field, err) from None
    # A pre-2023 fractional ISK charge keeps its fraction rather than being rounded away.
    return exact if exact == value else value


def amount_to_minor(amount: Any, currency: str, field: str = "amount") -> int:
    """Decimal amount -> Stripe minor units. Refuses (never rounds) what Stripe cannot take."""
    try:
        cur = currency.strip().upper()
        value = parse_money(amount)
        if quantize(value, cur) != value:
            raise MappingError(f"{field}: {amount} has more decimals than {cur} allows")
        if cur in STRIPE_EXPONENT:
            scaled = value.scaleb(STRIPE_EXPONENT[cur])
            if scaled != scaled.to_integral_value():
                raise MappingError(f"{field}: Stripe takes {cur} in whole units, got {amount}")
            minor = int(scaled)
        else:
            minor = to_minor(value, cur)
    except (MoneyError, AttributeError) as err:
        raise _money_error(field, err) from None
    if decimals(cur) == 3 and minor % 10:
        # Stripe: three-decimal amounts must end in 0; which way to round is the biller's call.
        raise MappingError(f"{field}: Stripe needs {cur} amounts in multiples of 0.010, got {amount}")
    return minor


# -- mapping (pure) ----------------------------------------------------------------------------


def unix_to_datetime(value: Any, field: str) -> datetime:
    """Stripe timestamps are integer unix seconds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MappingError(f"{field}: expected unix seconds, got {value!r}")
    return _EPOCH + value * _SECOND


def datetime_to_unix(dt: datetime) -> int:
    """Aware datetime -> unix seconds, rounded down (a filter must never skip a row)."""
    return (dt - _EPOCH) // _SECOND



def map_charge(c: dict) -> dict:
    """A Stripe charge -> canonical ``payments`` record: the cash kept on it (see module doc)."""
    if not c.get("id"):
        raise MappingError("id: missing")
    currency = c.get("currency")
    if not isinstance(currency, str) or not currency.strip():
        raise MappingError("currency: missing")
    cur = currency.strip().upper()
    created = unix_to_datetime(c.get("created"), "created")
    captured = c.get("amount_captured")
    if captured is None:  # API versions before amount_captured existed
        captured = c.get("amount") if c.get("captured") else 0
    refunded = c.get("amount_refunded") or 0
    for field, value in (("amount_captured", captured), ("amount_refunded", refunded)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MappingError(f"{field}: expected integer minor units, got {value!r}")
    if c.get("status") != "succeeded":
        net = 0  # failed: nothing captured; pending (ACH, SEPA): not received yet
    else:
        net = captured - refunded
        if net < 0:
            raise MappingError(f"amount_refunded: {refunded} exceeds amount_captured {captured}")
    metadata = c.get("metadata") or {}
    intent = c.get("payment_intent")
    if isinstance(intent, Mapping):  # expanded: the order number may live on the intent only
        metadata = {**(intent.get("metadata") or {}), **metadata}
    return {
        "external_id": str(c["id"]),
        "reference": parse_text(metadata.get("order_no")) or parse_text(c.get("description")),
        "customer_code": parse_text(metadata.get("customer_code")),
        "currency": cur,
        "amount": amount_from_minor(net, cur),
        "received_at": created,
        "updated_at": created,  # charges have no update time; refunds are found separately
    }


# -- paging ------------------------------------------------------------------------------------


class StripeListPaginator(Paginator):
    """Stripe list objects: next ``starting_after`` = the page's last id while ``has_more``.

    (A generic "has_more + last id" paginator; it belongs in connectors/paging.py.)
    """

    def __init__(self, page_size: int, *, param: str = "starting_after", **kw: Any) -> None:
        super().__init__(page_size, **kw)
        self.param = param

    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        has_more = body.get("has_more") if isinstance(body, Mapping) else None
        if not isinstance(has_more, bool):
            raise PaginationError(self.source, "list response has no boolean 'has_more'")
        if not has_more:
            return None
        last = records[-1] if records else None
        token = last.get("id") if isinstance(last, Mapping) else None
        if not token:
            raise PaginationError(self.source, "has_more is true but the page has no last id")
        return token


# -- the connector -----------------------------------------------------------------------------


def form_pairs(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding: ``{"metadata": {"a": 1}}`` -> ``[("metadata[a]", "1")]``.

    None is left out (Stripe reads "" as "unset"); booleans are ``true``/``false``; a float is
    refused like everywhere else in orderhub.
    """
    out: list[tuple[str, str]] = []
    for k, v in params.items():
        name = f"{prefix}[{k}]" if prefix else str(k)
        if v is None:
            continue
        if isinstance(v, Mapping):
            out += form_pairs(v, name)
        elif isinstance(v, list | tuple):
            for i, item in enumerate(v):
                out += form_pairs({str(i): item}, name)
        elif isinstance(v, bool):
            out.append((name, "true" if v else "false"))
        elif isinstance(v, float):
            raise TypeError(f"{name}: float {v!r} refused (use int minor units)")
        else:
            out.append((name, str(v)))
    return out


def idempotency_key(base: str, suffix: str = "") -> str:
    """``base + suffix``, or a deterministic hash of ``base`` when that exceeds 255 characters."""
    key = base + suffix
    if len(key) <= MAX_IDEMPOTENCY_KEY:
        return key
    return f"orderhub:{hashlib.sha256(base.encode('utf-8')).hexdigest()}{suffix}"


def search_literal(value: str) -> str:
    """A value as a Stripe Search query string literal: single quotes, backslash escapes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class StripeConnector(Connector):
    system = "stripe"
    default_base_url = "https://api.stripe.com"
    operations = {"invoice"}
    default_options = {
        "api_version": API_VERSION,
        "follow_refunds": True,
        "lookup_first": True,
        "create_customers": True,
        "days_until_due": 30,
        "finalize": True,
    }

    streams = {
        "payments": StreamSpec(
            kind="payments",
            path=CHARGES_PATH,
            records_path=("data",),
            id_field="id",
            updated_field="created",           # the only filterable time (unix seconds)
            paginator=StripeListPaginator,
            page_size=MAX_LIMIT,
            page_size_param="limit",
            filters_on_later_pages=True,       # created[gte] must stay with starting_after
            cursor_per_page=False,             # newest first: only the end of a read is safe
            mapper=map_charge,
        ),
    }

    def __init__(self, name: str, cfg: dict) -> None:
        key = str((cfg.get("auth") or {}).get("api_key") or "")
        # Documented: 100 read req/s live, 25 in test mode; keep a margin for other clients.
        self.default_rate_limit = 90.0 if "_live_" in key else 20.0
        super().__init__(name, cfg)
        version = self.options.get("api_version")
        if version:  # pin the response shapes; the account default may move
            self.http.session.headers["Stripe-Version"] = str(version)
        self._customers: dict[str, str] = {}

    # -- hooks ---------------------------------------------------------------------------------

    def make_auth(self, auth_cfg: dict) -> Auth:
        key = auth_cfg.get("api_key")
        if not key:
            raise ValueError(f"source {self.name!r}: auth.api_key is required for stripe")
        return BearerAuth(str(key))

    def page_size(self, spec: StreamSpec) -> int:
        return max(1, min(MAX_LIMIT, super().page_size(spec)))  # more than 100 is a 400

    def since_filter(self, spec: StreamSpec, since: datetime) -> dict[str, Any]:
        return {"created[gte]": datetime_to_unix(since)}

    def raw_record(self, spec: StreamSpec, record: dict) -> RawRecord:
        rid = record.get(spec.id_field)
        if not rid:
            raise ApiError(self.name, f"a {spec.kind} record has no {spec.id_field!r}")
        try:
            updated: datetime | None = unix_to_datetime(record.get("created"), "created")
        except MappingError:
            updated = None  # the mapper rejects it; reading goes on
        return RawRecord(external_id=str(rid), updated_at=updated, payload=record)

    def _flag(self, name: str) -> bool:
        value = self.options.get(name)
        if isinstance(value, str):  # from YAML/env as text
            return value.strip().lower() not in ("", "0", "false", "no", "off")
        return bool(value)

    # -- reading -------------------------------------------------------------------------------

    def read(self, stream: str, cursor: Cursor | None) -> Iterator[Page]:
        pages = super().read(stream, cursor)
        if stream != "payments" or cursor is None or not self._flag("follow_refunds"):
            yield from pages
            return
        final: Cursor | None = cursor
        for page in pages:
            final = page.cursor or final  # only the last charges page carries one
            yield Page(page.records, None)
        since = parse_datetime(cursor.updated_at, "cursor.updated_at")
        assert since is not None
        yield from self._refunded_charges(since - self.lookback, final)

    def _refunded_charges(self, since: datetime, final: Cursor | None) -> Iterator[Page]:
        """Charges refunded since ``since``, in their current state; the last page ends the read."""
        spec = self.streams["payments"]
        paginator = StripeListPaginator(self.page_size(spec))
        paginator.source = self.name
        while True:
            params: dict[str, Any] = {
                "created[gte]": datetime_to_unix(since),
                "limit": paginator.page_size,
                "expand[]": "data.charge",
                **paginator.params(),
            }
            resp = self.http.get(REFUNDS_PATH, params=params)
            refunds = self.extract_records(spec, resp)
            paginator.advance(refunds, resp.headers, resp.data)
            charges: dict[str, dict] = {}
            for refund in refunds:
                charge = refund.get("charge") if isinstance(refund, Mapping) else None
                if isinstance(charge, str):  # expand not honoured: fetch it
                    charge = self.http.get(f"{CHARGES_PATH}/{charge}").data
                if isinstance(charge, Mapping) and charge.get("id"):
                    charges[str(charge["id"])] = dict(charge)
            raws = [self.raw_record(spec, c) for c in charges.values()]
            # These are older charges: they never move the cursor; the read's cursor rides on
            # the last page so it is saved only once everything before it has landed.
            yield Page(raws, final if paginator.finished else None)
            if paginator.finished:
                return

    # -- push: invoice -------------------------------------------------------------------------

    def push_invoice(self, doc: dict, recover: bool) -> str:
        plan = InvoicePlan(doc, self.options)
        if recover or self._flag("lookup_first"):
            found = self.find_invoice(plan.invoice_no)
            if found is not None:
                return self._complete(found, plan, fresh=True)
        customer = self.customer_id(plan.customer_code)
        invoice = self._post("/v1/invoices", plan.invoice_params(customer), plan.key)
        return self._complete(invoice, plan, fresh=False)

    def find_invoice(self, invoice_no: str) -> dict | None:
        """The (non-void) Stripe invoice carrying ``metadata.invoice_no``, oldest first."""
        query = f"metadata['invoice_no']:{search_literal(invoice_no)}"
        data = self.http.get("/v1/invoices/search", params={"query": query, "limit": 10}).data
        hits = [i for i in (data or {}).get("data") or [] if i.get("status") != "void"]
        hits.sort(key=lambda i: (i.get("created") or 0, str(i.get("id"))))
        return hits[0] if hits else None

    def customer_id(self, code: str) -> str:
        """The Stripe customer of ``customer_code`` (metadata), created when missing."""
        if code in self._customers:
            return self._customers[code]
        query = f"metadata['customer_code']:{search_literal(code)}"
        data = self.http.get("/v1/customers/search", params={"query": query, "limit": 1}).data
        hits = (data or {}).get("data") or []
        if hits:
            cid = str(hits[0]["id"])
        elif not self._flag("create_customers"):
            raise ApiError(self.name, f"no Stripe customer has metadata customer_code={code!r}")
        else:
            params = {"name": code, "metadata": {"customer_code": code}}
            cid = str(self._post("/v1/customers", params, idempotency_key(f"orderhub:customer:{code}"))["id"])
        self._customers[code] = cid
        return cid

    def _complete(self, invoice: dict, plan: InvoicePlan, fresh: bool) -> str:
        """Add the items and finalize a draft; ``fresh``: its state is current (not a replay)."""
        inv_id = str(invoice["id"])
        if invoice.get("status") != "draft":
            return inv_id
        have: set[str] = set()
        if fresh:  # found by search, possibly after its keys were pruned: add only what is missing
            items = self.http.get("/v1/invoiceitems",
                                  params={"invoice": inv_id, "limit": MAX_LIMIT}).data or {}
            if items.get("has_more"):
                raise ApiError(self.name, f"invoice {inv_id} has more than {MAX_LIMIT} items")
            have = {str((i.get("metadata") or {}).get("line_no")) for i in items.get("data") or []}
        customer = str(invoice.get("customer"))
        for item in plan.items:
            if str(item["line_no"]) not in have:
                self._post("/v1/invoiceitems", plan.item_params(item, customer, inv_id),
                           idempotency_key(plan.key, f":line:{item['line_no']}"))
        if not self._flag("finalize"):
            return inv_id
        final = self._post(f"/v1/invoices/{inv_id}/finalize", {"auto_advance": False},
                           idempotency_key(plan.key, ":finalize"))
        total = final.get("total")
        if isinstance(total, int) and total != plan.total_minor:
            raise ApiError(self.name, f"invoice {inv_id} ({plan.invoice_no}) total {total} "
                                      f"differs from the expected {plan.total_minor} minor units")
        return inv_id

    def _post(self, path: str, params: Mapping[str, Any], key: str) -> dict:
        try:
            resp: HttpResponse = self.http.post(
                path, data=form_pairs(params), headers={"Idempotency-Key": key}
            )
        except ApiError as err:
            if "idempotency_error" in err.message:
                raise ApiError(
                    self.name,
                    f"Idempotency-Key {key!r} was first used with different parameters; Stripe "
                    f"refuses to reuse it (the document changed after it was sent): {err.message}",
                    url=err.url, method=err.method, status=err.status,
                ) from None
            raise
        if not isinstance(resp.data, dict) or not resp.data.get("id"):
            raise resp.error(f"{path}: answer has no object id")
        return resp.data


class InvoicePlan:
    """An outbox ``invoice`` doc checked and converted to Stripe parameters (minor units)."""

    def __init__(self, doc: dict, options: Mapping[str, Any]) -> None:
        self.key = idempotency_key(_required(doc, "key"))
        self.invoice_no = _required(doc, "invoice_no")
        self.customer_code = _required(doc, "customer_code")
        self.currency = _required(doc, "currency").upper()
        self.total_minor = amount_to_minor(_required(doc, "amount"), self.currency, "amount")
        self.doc = doc
        self.days_until_due = int(options.get("days_until_due") or 30)
        self.items = self._items(doc.get("lines") or [])

    def _items(self, lines: list[dict]) -> list[dict]:
        items: list[dict] = []
        for n, line in enumerate(lines, start=1):
            sku, qty, price = line.get("sku"), line.get("qty"), line.get("unit_price")
            amount = line.get("amount")
            if amount is None and qty is not None and price is not None:
                try:  # an edge: rounding to the currency is allowed here (adjusted below)
                    amount = quantize(parse_money(qty) * parse_money(price), self.currency)
                except MoneyError as err:
                    raise MappingError(f"lines[{n}]: {err}") from None
            if amount is None:
                raise MappingError(f"lines[{n}].amount: missing")
            desc = f"{sku or 'item'} x {qty}" + (f" @ {price}" if price is not None else "")
            items.append({"line_no": n, "sku": sku,
                          "minor": amount_to_minor(amount, self.currency, f"lines[{n}].amount"),
                          "description": desc})
        rest = self.total_minor - sum(i["minor"] for i in items)
        if not items:
            items.append({"line_no": 1, "sku": None, "minor": self.total_minor,
                          "description": f"Invoice {self.invoice_no}"})
        elif rest:
            # Discounts/rounding: the Stripe total must equal the amount reconciliation expects.
            items.append({"line_no": len(items) + 1, "sku": None, "minor": rest,
                          "description": "Adjustment to invoice total"})
        return items

    def invoice_params(self, customer: str) -> dict[str, Any]:
        doc = self.doc
        return {
            "customer": customer,
            "currency": self.currency.lower(),
            "collection_method": "send_invoice",
            "days_until_due": self.days_until_due,
            "auto_advance": False,                       # we finalize; Stripe must not on its own
            "pending_invoice_items_behavior": "exclude",  # never sweep in stray pending items
            "description": f"Order {doc['order_ref']}" if doc.get("order_ref") else None,
            "metadata": {
                "invoice_no": self.invoice_no,
                "order_ref": doc.get("order_ref"),
                "customer_code": self.customer_code,
                "issued_at": doc.get("issued_at"),
            },
        }

    def item_params(self, item: dict, customer: str, invoice_id: str) -> dict[str, Any]:
        return {
            "customer": customer,
            "invoice": invoice_id,
            "currency": self.currency.lower(),
            "amount": item["minor"],
            "description": item["description"],
            "metadata": {"invoice_no": self.invoice_no, "line_no": item["line_no"],
                         "sku": item["sku"]},
        }


def _required(doc: dict, field: str) -> str:
    value = parse_text(doc.get(field))
    if value is None:
        raise MappingError(f"{field}: missing")
    return value
