"""SAP S/4HANA connector (OData V2): sales orders and billing documents in; sales orders out.

cfg: ``base_url`` (the OData service root, e.g. https://s4.example.com/sap/opu/odata/sap),
``auth: {username, password}`` (HTTP basic; a communication user), ``options`` (below),
``rate_limit`` (SAP documents none: default off), ``lookback_seconds``, ``timeout``, ``retry``.

options (defaults):
  ``sales_order_service: API_SALES_ORDER_SRV``, ``billing_service: API_BILLING_DOCUMENT_SRV``;
  ``sap_client: None`` (adds ``sap-client=`` to every call when set);
  ``region_field: SalesDistrict`` (unverified: the header field holding the ship-to region; SAP
  keeps the real one on the ship-to partner's address);
  ``price_condition: PR00`` (the item pricing element whose ConditionRateValue / ConditionQuantity
  is the unit price, read and written);
  ``orders_filter: ""`` (an extra $filter clause for the orders stream, e.g.
  ``not startswith(PurchaseOrderByCustomer,'SO-')`` to keep out the orders orderhub pushed);
  ``sales_order_type: OR``, ``sales_organization: 1010``, ``distribution_channel: 10``,
  ``division: 00``, ``quantity_unit: None`` (SAP derives the sales unit from the material);
  ``duplicate_hints: ["V4/115", "already exists"]`` (unverified: how a create refused for a known
  PurchaseOrderByCustomer reads, when the order type checks purchase order numbers).

Reading (streams ``orders`` <- A_SalesOrder with ``$expand=to_Item,to_Item/to_PricingElement``,
``receivables`` <- A_BillingDocument with ``$expand=to_Item``): ``$filter=LastChangeDateTime ge
datetimeoffset'<cursor - lookback>'`` and ``$orderby=LastChangeDateTime asc,<key> asc``, so every
page carries a cursor. Paging is server-driven: the next page is the URL in ``d.__next`` (offset
``$skiptoken``), rebuilt on our base_url from the service name on (gateways behind a proxy often
put their internal host and path there); a repeated URL raises PaginationError. The page size is the
server's: ``options.page_size`` has no effect. Query options go out %20-encoded, as SAP tools send
them. Dates come as ``/Date(ms)/`` (Edm.DateTime, a UTC-midnight date) or ``/Date(ms+0000)/``
(Edm.DateTimeOffset: ms is the UTC instant); ISO strings are read too. Amounts and quantities are
Edm.Decimal strings -> Decimal.

Mapping choices: ``order_no`` is the SalesOrder number (SAP's one document number);
``ordered_at`` is SalesOrderDate (else CreationDate), a date; line numbers are 1..n in SalesOrderItem
order. A billing document's ``amount`` is TotalNetAmount + TotalTaxAmount (what is owed),
``order_ref`` the SalesDocument of its first item that names one, ``customer_code`` the SoldToParty,
``open_amount`` 0 when cancelled else None (clearing lives in FI, not here), ``due_date`` None.

Errors: 4xx/5xx carry ``{"error": {"code", "message": {"value"}}}``; an error object inside a 2xx
body is an ApiError too, and so is an Atom/XML answer (JSON was not honoured).

Push ``sales_order`` (doc shape: internals.md): the deterministic ``bill_no`` is written to
PurchaseOrderByCustomer (<= 35 characters) so a lookup finds it. Per push batch one CSRF token is
fetched (GET service root with ``X-CSRF-Token: Fetch``; the session cookie stays on the client) and
sent on every write; a 403 "CSRF token validation failed" refetches it once. With ``recover``, or
when the create is refused as a duplicate, or when it fails in transit (retries are off for the
create: SAP cannot deduplicate it), the order is looked up by PurchaseOrderByCustomer first. A found
order whose SoldToParty, currency, order date, quantities or PR00 rates differ from the document is
patched entity by entity with ``If-Match: <ETag>`` from ``__metadata``; a 412 (changed meanwhile)
re-reads it and retries once. Different item counts or materials are reported, not patched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import quote, urljoin, urlsplit

from connectors.base import (
    Connector,
    MappingError,
    PushResult,
    RawRecord,
    Request,
    StreamSpec,
    dig,
    parse_datetime,
    parse_decimal,
    parse_text,
    to_iso,
)
from connectors.http import (
    ApiError,
    Auth,
    AuthError,
    BasicAuth,
    HttpResponse,
    RateLimitError,
    TransientError,
)
from connectors.paging import Paginator

log = logging.getLogger("orderhub.connectors.sap")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PO_MAX = 35  # PurchaseOrderByCustomer is CHAR 35: a longer bill_no could never be found again
ORDER_EXPAND = "to_Item,to_Item/to_PricingElement"
HEADER_COMPARED = ("SoldToParty", "TransactionCurrency", "SalesOrderDate")
_DATE_RE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


# -- OData values (pure) -------------------------------------------------------------------------

def parse_odata_datetime(value: Any, field: str) -> datetime | None:
    """``/Date(ms)/``, ``/Date(ms+0000)/`` or ISO-8601 -> aware UTC datetime; "" or None -> None.

    The milliseconds are the UTC instant; the optional ``+hhmm`` only names the original zone.
    """
    if isinstance(value, str):
        m = _DATE_RE.match(value.strip())
        if m:
            return EPOCH + timedelta(milliseconds=int(m.group(1)))
    return parse_datetime(value, field)


def odata_date(dt: datetime) -> str:
    """An Edm.DateTime date for a request body: ``/Date(<UTC midnight in ms>)/``."""
    day = datetime(dt.year, dt.month, dt.day, tzinfo=UTC)
    return f"/Date({(day - EPOCH) // timedelta(milliseconds=1)})/"


def odata_literal(text: str) -> str:
    """A $filter string literal: single quotes doubled."""
    return "'" + text.replace("'", "''") + "'"


def odata_query(params: dict[str, str]) -> str:
    """Query options as SAP tools encode them: spaces as %20 (never '+'), ``$ ' , ( ) : /`` kept."""
    safe = "$',():/"
    return "&".join(f"{quote(k, safe=safe)}={quote(v, safe=safe)}" for k, v in params.items())


def odata_error_text(data: Any) -> str:
    """``{"error": {"code", "message": {"value"}}}`` -> "code: value"."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "unknown OData error"
    message = error.get("message")
    text = message.get("value") if isinstance(message, dict) else message
    return f"{error.get('code') or 'error'}: {text or 'no message'}"



def _num(value: Decimal) -> str:
    """Edm.Decimal goes out as a JSON string (OData V2), never a float."""
    return format(value, "f")


def expanded(entity: dict, nav: str, where: str) -> list[dict]:
    """An expanded navigation's entities (``{"results": [...]}``); deferred -> MappingError."""
    value = entity.get(nav)
    if isinstance(value, dict) and isinstance(value.get("results"), list):
        return value["results"]
    if isinstance(value, list):
        return value
    raise MappingError(f"{where}.{nav}: not expanded (got {type(value).__name__})")


def _item_order(item: dict) -> tuple[int, Any]:
    number = str(item.get("SalesOrderItem") or "")
    return (0, int(number)) if number.isdigit() else (1, number)


def _updated(entity: dict) -> datetime:
    updated_at = parse_odata_datetime(entity.get("LastChangeDateTime"), "LastChangeDateTime")
    if updated_at is None:
        raise MappingError("LastChangeDateTime: missing")
    return updated_at


def price_element(item: dict, condition: str, where: str) -> dict | None:
    """The item's active pricing element of type ``condition`` (e.g. PR00), if any."""
    for cond in expanded(item, "to_PricingElement", where):
        if cond.get("ConditionType") == condition and not parse_text(cond.get("ConditionInactiveReason")):
            return cond
    return None


def unit_price(item: dict, condition: str, where: str) -> Decimal | None:
    """ConditionRateValue per ConditionQuantity (a rate may be quoted per 100 pieces)."""
    cond = price_element(item, condition, where)
    if cond is None:
        return None
    rate = parse_decimal(cond.get("ConditionRateValue"), f"{where}.ConditionRateValue")
    per = parse_decimal(cond.get("ConditionQuantity"), f"{where}.ConditionQuantity")
    if rate is None or per is None or per in (0, 1):
        return rate
    return rate / per


# -- mapping (pure) ------------------------------------------------------------------------------

def map_order(o: dict, region_field: str = "SalesDistrict", price_condition: str = "PR00") -> dict:
    """A_SalesOrder with to_Item (and their to_PricingElement) expanded -> canonical ``orders``."""
    number = parse_text(o.get("SalesOrder"))
    if number is None:
        raise MappingError("SalesOrder: missing")
    items = sorted(expanded(o, "to_Item", "A_SalesOrder"), key=_item_order)
    lines = []
    for n, item in enumerate(items, start=1):
        where = f"to_Item[{n}]"
        lines.append({
            "line_no": n,
            "sku": parse_text(item.get("Material")),
            "qty": parse_decimal(item.get("RequestedQuantity"), f"{where}.RequestedQuantity"),
            "unit_price": unit_price(item, price_condition, where),
        })
    ordered = o.get("SalesOrderDate") or o.get("CreationDate")
    return {
        "external_id": number,
        "order_no": number,
        "customer_code": parse_text(o.get("SoldToParty")),
        "customer_email": None,  # SAP names the customer by its business partner number
        "ordered_at": parse_odata_datetime(ordered, "SalesOrderDate"),
        "updated_at": _updated(o),
        "currency": parse_text(o.get("TransactionCurrency")),
        "total": parse_decimal(o.get("TotalNetAmount"), "TotalNetAmount"),
        "ship_region": parse_text(o.get(region_field)),
        "lines": lines,
    }


def map_receivable(b: dict) -> dict:
    """A_BillingDocument with to_Item expanded -> canonical ``receivables``."""
    number = parse_text(b.get("BillingDocument"))
    if number is None:
        raise MappingError("BillingDocument: missing")
    net = parse_decimal(b.get("TotalNetAmount"), "TotalNetAmount")
    if net is None:
        raise MappingError("TotalNetAmount: missing")
    tax = parse_decimal(b.get("TotalTaxAmount"), "TotalTaxAmount") or Decimal(0)
    items = sorted(expanded(b, "to_Item", "A_BillingDocument"),
                   key=lambda i: (str(i.get("BillingDocumentItem") or "").zfill(6)))
    refs = (parse_text(i.get("SalesDocument")) for i in items)
    order_ref = next((r for r in refs if r), None)
    cancelled = b.get("BillingDocumentIsCancelled") is True
    return {
        "external_id": number,
        "invoice_no": number,
        "order_ref": order_ref,
        "customer_code": parse_text(b.get("SoldToParty")),
        "currency": parse_text(b.get("TransactionCurrency")),
        "amount": net + tax,
        "open_amount": Decimal(0) if cancelled else None,  # a cancelled invoice is owed nothing
        "issued_at": parse_odata_datetime(b.get("BillingDocumentDate"), "BillingDocumentDate"),
        "due_date": None,  # due dates live on the FI open item, not the billing document
        "updated_at": _updated(b),
    }


# -- push documents -> A_SalesOrder deep insert (pure) -------------------------------------------

def sales_order_body(doc: dict, options: dict) -> dict:
    """Outbox ``sales_order`` doc -> A_SalesOrder deep-insert body (header + to_Item)."""
    ref = parse_text(doc.get("bill_no"))
    if ref is None:
        raise MappingError("bill_no: missing")
    if len(ref) > PO_MAX:
        raise MappingError(f"bill_no: {ref!r} is longer than PurchaseOrderByCustomer's {PO_MAX} "
                           "characters")
    customer = parse_text(doc.get("customer_code"))
    if customer is None:
        raise MappingError("customer_code: missing (SAP needs a SoldToParty)")
    currency = parse_text(doc.get("currency"))
    lines = doc.get("lines") or []
    if not lines:
        raise MappingError("lines: a sales order needs at least one line")
    items = []
    for n, ln in enumerate(lines, start=1):
        sku = parse_text(ln.get("sku"))
        if sku is None:
            raise MappingError(f"lines[{n}].sku: missing")
        qty = parse_decimal(ln.get("qty"), f"lines[{n}].qty")
        if qty is None:
            raise MappingError(f"lines[{n}].qty: missing")
        item: dict[str, Any] = {"SalesOrderItem": str(10 * n), "Material": sku,
                                "RequestedQuantity": _num(qty)}
        if options.get("quantity_unit"):
            item["RequestedQuantityUnit"] = options["quantity_unit"]
        price = parse_decimal(ln.get("unit_price"), f"lines[{n}].unit_price")
        if price is not None:  # a manual price condition; without one SAP prices it itself
            cond = {"ConditionType": options["price_condition"], "ConditionRateValue": _num(price)}
            if currency:
                cond["ConditionCurrency"] = currency
            item["to_PricingElement"] = {"results": [cond]}
        items.append(item)
    body: dict[str, Any] = {
        "SalesOrderType": options["sales_order_type"],
        "SalesOrganization": options["sales_organization"],
        "DistributionChannel": options["distribution_channel"],
        "OrganizationDivision": options["division"],
        "SoldToParty": customer,
        "PurchaseOrderByCustomer": ref,
    }
    if currency:
        body["TransactionCurrency"] = currency
    ordered = parse_datetime(doc.get("ordered_at"), "ordered_at")
    if ordered is not None:
        body["SalesOrderDate"] = odata_date(ordered)
    body["to_Item"] = {"results": items}
    return body


@dataclass(frozen=True)
class Patch:
    uri: str           # the entity's __metadata.uri
    etag: str          # for If-Match
    fields: dict[str, Any]


class OrderMismatch(ValueError):
    """A found order differs from the document in a way a PATCH cannot fix."""


def order_patches(order: dict, body: dict, condition: str) -> list[Patch]:
    """What to PATCH so the found ``order`` says what ``body`` (a deep-insert body) says.

    Header fields and item quantities/rates are patched per entity; a different number of
    items or a different material raises OrderMismatch (a human decides).
    """
    order_etag = str(dig(order, ("__metadata", "etag")) or "")
    patches: list[Patch] = []

    def add(entity: dict, fields: dict[str, Any]) -> None:
        uri = dig(entity, ("__metadata", "uri"))
        if not uri:
            raise OrderMismatch("an entity without __metadata.uri cannot be patched")
        patches.append(Patch(str(uri), str(dig(entity, ("__metadata", "etag")) or order_etag),
                             fields))

    header: dict[str, Any] = {}
    for name in HEADER_COMPARED:
        want = body.get(name)
        if want is None:
            continue
        have = order.get(name)
        same = (parse_odata_datetime(have, name) == parse_odata_datetime(want, name)
                if name.endswith("Date") else parse_text(have) == parse_text(want))
        if not same:
            header[name] = want
    if header:
        add(order, header)

    have_items = sorted(expanded(order, "to_Item", "A_SalesOrder"), key=_item_order)
    want_items = body["to_Item"]["results"]
    if len(have_items) != len(want_items):
        raise OrderMismatch(f"it has {len(have_items)} items, the document {len(want_items)}")
    for n, (have, want) in enumerate(zip(have_items, want_items, strict=True), start=1):
        where = f"to_Item[{n}]"
        if parse_text(have.get("Material")) != want["Material"]:
            raise OrderMismatch(f"item {have.get('SalesOrderItem')} is material "
                                f"{have.get('Material')}, the document's line {n} {want['Material']}")
        have_qty = parse_decimal(have.get("RequestedQuantity"), f"{where}.RequestedQuantity")
        if have_qty != Decimal(want["RequestedQuantity"]):
            add(have, {"RequestedQuantity": want["RequestedQuantity"]})
        conds = dig(want, ("to_PricingElement", "results")) or []
        if not conds:
            continue
        want_rate = Decimal(conds[0]["ConditionRateValue"])
        cond = price_element(have, condition, where)
        if cond is None:
            raise OrderMismatch(f"item {have.get('SalesOrderItem')} has no {condition} condition")
        if unit_price(have, condition, where) != want_rate:
            fields: dict[str, Any] = {"ConditionRateValue": conds[0]["ConditionRateValue"]}
            per = parse_decimal(cond.get("ConditionQuantity"), f"{where}.ConditionQuantity")
            if per not in (None, 1):
                fields["ConditionQuantity"] = "1"
            add(cond, fields)
    return patches


# -- paging --------------------------------------------------------------------------------------

class NextLinkPaginator(Paginator):
    """Server-driven paging: the next page is the URL in the body (OData V2 ``d.__next``,
    V4 ``@odata.nextLink``). The URL carries every option, so ``params()`` adds nothing."""

    param = "$skiptoken"

    def __init__(self, page_size: int, *,
                 paths: tuple[tuple[str, ...], ...] = (("d", "__next"), ("@odata.nextLink",)),
                 **kw: Any) -> None:
        super().__init__(page_size, **kw)
        self.paths = paths

    def params(self) -> dict[str, Any]:
        return {}

    def next_token(self, records: list[Any], headers: Any, body: Any) -> Any:
        for path in self.paths:
            url = dig(body, path)
            if url:
                return str(url)
        return None


def _odata_stream(kind: str, path: str, key: str, mapper: Any, expand: str) -> StreamSpec:
    return StreamSpec(
        kind=kind,
        path=path,
        records_path=("d", "results"),
        id_field=key,
        updated_field="LastChangeDateTime",
        params={"$orderby": f"LastChangeDateTime asc,{key} asc", "$expand": expand,
                "$format": "json"},
        paginator=NextLinkPaginator,
        page_size=1000,        # the server's choice; only sizes the paginator
        page_size_param=None,  # OData V2 has no page-size request; $top would truncate the read
        cursor_per_page=True,  # ordered by (LastChangeDateTime, key)
        mapper=mapper,
    )


# -- the connector -------------------------------------------------------------------------------

class SapConnector(Connector):
    system = "sap"
    operations = {"sales_order"}
    default_options = {
        "sales_order_service": "API_SALES_ORDER_SRV",
        "billing_service": "API_BILLING_DOCUMENT_SRV",
        "sap_client": None,
        "region_field": "SalesDistrict",
        "price_condition": "PR00",
        "orders_filter": "",
        "sales_order_type": "OR",
        "sales_organization": "1010",
        "distribution_channel": "10",
        "division": "00",
        "quantity_unit": None,
        "duplicate_hints": ["V4/115", "already exists"],
    }

    streams = {
        "orders": _odata_stream("orders", "{sales_order_service}/A_SalesOrder", "SalesOrder",
                                map_order, ORDER_EXPAND),
        "receivables": _odata_stream("receivables", "{billing_service}/A_BillingDocument",
                                     "BillingDocument", map_receivable, "to_Item"),
    }
    # stream -> the option holding an extra $filter clause, ANDed with the incremental one
    static_filters: ClassVar[dict[str, str]] = {"orders": "orders_filter"}

    def __init__(self, name: str, cfg: dict) -> None:
        super().__init__(name, cfg)
        self._csrf: str | None = None

    def make_auth(self, auth_cfg: dict) -> Auth:
        missing = [k for k in ("username", "password") if not auth_cfg.get(k)]
        if missing:
            raise ValueError(f"source {self.name!r}: auth needs {', '.join(missing)} for sap")
        return BasicAuth(str(auth_cfg["username"]), str(auth_cfg["password"]))

    def check_body(self, resp: HttpResponse) -> None:
        if isinstance(resp.data, dict) and isinstance(resp.data.get("error"), dict):
            raise resp.error(odata_error_text(resp.data))
        if resp.data is None and resp.text.lstrip().startswith("<"):
            raise resp.error("answered XML, not JSON ($format=json not honoured?)")

    # -- reading -------------------------------------------------------------------------------

    def since_filter(self, spec: StreamSpec, since: datetime) -> dict[str, Any]:
        # ge, not gt: rows sharing the cursor's timestamp must come again (composite cursor)
        return {"$filter": f"{spec.updated_field} ge datetimeoffset'{to_iso(since)}'"}

    def build_request(self, spec: StreamSpec, since: datetime | None,
                      paginator: Paginator) -> Request:
        if not paginator.first:
            path = self.path_for(spec)
            return Request("GET", self._ours(str(paginator.token), path.split("/")[0], path))
        params = {k: str(v) for k, v in spec.params.items()}
        option = self.static_filters.get(self._stream_name(spec))
        clauses = [self.options.get(option) if option else None,
                   self.since_filter(spec, since)["$filter"] if since is not None else None]
        clauses = [c.strip() for c in clauses if c and c.strip()]
        if clauses:
            params["$filter"] = clauses[0] if len(clauses) == 1 else \
                " and ".join(f"({c})" for c in clauses)
        return Request("GET", self._url(f"{self.path_for(spec)}?{odata_query(params)}"))

    def extract_records(self, spec: StreamSpec, resp: HttpResponse) -> list[dict]:
        d = dig(resp.data, ("d",))
        records = d if isinstance(d, list) else dig(d, ("results",))  # V1 bodies: d is the list
        if not isinstance(records, list):
            raise resp.error("response has no record list at 'd.results'")
        return records

    def raw_record(self, spec: StreamSpec, record: dict) -> RawRecord:
        rid = parse_text(record.get(spec.id_field))
        if rid is None:
            raise ApiError(self.name, f"a {spec.kind} record has no {spec.id_field!r}")
        try:
            updated = parse_odata_datetime(record.get(spec.updated_field or ""), "updated")
        except MappingError:
            updated = None  # the mapper rejects it; reading must go on
        return RawRecord(external_id=rid, updated_at=updated, payload=record)

    def map(self, stream: str, payload: dict) -> dict:
        if stream == "orders":
            return map_order(payload, self.options["region_field"],
                             self.options["price_condition"])
        return super().map(stream, payload)

    def _stream_name(self, spec: StreamSpec) -> str:
        return next(name for name, s in self.streams.items() if s is spec)

    def _ours(self, url: str, service: str, relative_to: str | None = None) -> str:
        """A server-made URL (``__next``, ``__metadata.uri``) rebuilt on our base_url: only the
        part from the service name on is kept, since a gateway behind a proxy often names its
        internal host and path there."""
        absolute = urljoin(self.http.url_for(relative_to), url) if relative_to else url
        parts = urlsplit(absolute)
        at = parts.path.find(f"/{service}/")
        if at < 0:
            raise ApiError(self.name, f"server URL {url[:100]!r} is not under {service}")
        return self._url(parts.path[at + 1:] + (f"?{parts.query}" if parts.query else ""))

    def _url(self, path: str) -> str:
        """``path`` plus ``sap-client`` when configured and not already there."""
        client = self.options.get("sap_client")
        if not client or "sap-client=" in path:
            return path
        return f"{path}{'&' if '?' in path else '?'}sap-client={quote(str(client))}"

    # -- push: sales orders ----------------------------------------------------------------------

    def push(self, operation: str, docs: list[dict], recover: bool = False) -> list[PushResult]:
        self._csrf = None  # one CSRF token (and session) per push batch
        return super().push(operation, docs, recover)

    def push_sales_order(self, doc: dict, recover: bool) -> str:
        body = sales_order_body(doc, self.options)
        ref = body["PurchaseOrderByCustomer"]
        if recover:
            found = self.find_sales_order(ref)
            if found is not None:
                return self._bring_in_line(found, body)
        path = f"{self.options['sales_order_service']}/A_SalesOrder"
        try:
            # no automatic retry: SAP cannot deduplicate a create, a lookup can
            resp = self._write("POST", path, json=body, retries=0)
        except ApiError as err:
            if not self._is_duplicate(err):
                raise
            found = self.find_sales_order(ref)
            if found is None:
                raise ApiError(self.name, f"SAP refused purchase order {ref} as a duplicate, but "
                               "a lookup by PurchaseOrderByCustomer finds none (read "
                               "authorization?)", status=err.status) from None
            return self._bring_in_line(found, body)
        except (TransientError, RateLimitError):
            found = self.find_sales_order(ref)  # did it land before the line dropped?
            if found is None:
                raise
            return self._bring_in_line(found, body)
        number = parse_text(dig(resp.data, ("d", "SalesOrder")))
        if number is None:
            raise resp.error(f"created purchase order {ref}, but the answer names no SalesOrder")
        return number

    def find_sales_order(self, ref: str) -> dict | None:
        """The sales order whose PurchaseOrderByCustomer is ``ref`` (the recovery lookup)."""
        params = {"$filter": f"PurchaseOrderByCustomer eq {odata_literal(ref)}",
                  "$orderby": "SalesOrder asc", "$expand": ORDER_EXPAND, "$format": "json"}
        path = f"{self.options['sales_order_service']}/A_SalesOrder?{odata_query(params)}"
        resp = self.http.get(self._url(path))
        rows = self.extract_records(self.streams["orders"], resp)
        if len(rows) > 1:
            log.warning("%s: %d sales orders carry purchase order %s; using the first (%s)",
                        self.name, len(rows), ref, rows[0].get("SalesOrder"))
        return rows[0] if rows else None

    def get_sales_order(self, number: str) -> dict:
        params = {"$expand": ORDER_EXPAND, "$format": "json"}
        path = (f"{self.options['sales_order_service']}/A_SalesOrder({odata_literal(number)})"
                f"?{odata_query(params)}")
        resp = self.http.get(self._url(path))
        order = dig(resp.data, ("d",))
        if not isinstance(order, dict):
            raise resp.error(f"sales order {number}: the answer has no entity at 'd'")
        return order

    def _bring_in_line(self, order: dict, body: dict) -> str:
        """PATCH the found order, one entity at a time, until it says what the document says.

        Each round re-reads the order (fresh ETags); a 412 (changed meanwhile) is retried once.
        """
        number = str(order.get("SalesOrder"))
        patches = self._patches(order, body)
        retried = False
        for _ in range(len(patches) + 1):  # one write per patch, plus the 412 retry
            if not patches:
                return number
            patch = patches[0]
            try:
                service = self.options["sales_order_service"]
                self._write("PATCH", self._ours(patch.uri, service), json=patch.fields,
                            headers={"If-Match": patch.etag})
            except ApiError as err:
                if err.status != 412 or retried:
                    raise
                retried = True
            order = self.get_sales_order(number)
            patches = self._patches(order, body)
        if not patches:
            return number
        raise ApiError(self.name, f"sales order {number} still differs after patching: "
                       f"{patches[0].fields}")

    def _patches(self, order: dict, body: dict) -> list[Patch]:
        try:
            return order_patches(order, body, self.options["price_condition"])
        except OrderMismatch as err:
            raise ApiError(self.name, f"sales order {order.get('SalesOrder')} (purchase order "
                           f"{body['PurchaseOrderByCustomer']}) exists but {err}; not changed "
                           "automatically") from None

    def _write(self, method: str, path: str, *, json: Any = None,
               headers: dict[str, str] | None = None, retries: int | None = None) -> HttpResponse:
        """A modifying call with the batch's CSRF token; a refused token is refetched once."""
        for attempt in (1, 2):
            sent = {**(headers or {}), "X-CSRF-Token": self._csrf_token()}
            try:
                return self.http.request(method, self._url(path), json=json, headers=sent,
                                         retries=retries)
            except AuthError as err:
                if attempt == 2 or not _csrf_refused(err):
                    raise
                log.info("%s: CSRF token refused (session expired?); fetching a new one",
                         self.name)
                self._csrf = None
        raise AssertionError("unreachable")

    def _csrf_token(self) -> str:
        if self._csrf is None:
            resp = self.http.get(self._url(f"{self.options['sales_order_service']}/"),
                                 headers={"X-CSRF-Token": "Fetch"})
            token = resp.headers.get("x-csrf-token")
            if not token or token.lower() == "required":
                raise resp.error("no CSRF token in the answer to 'X-CSRF-Token: Fetch'")
            self.http.redact.add([token])
            self._csrf = token
        return self._csrf

    def _is_duplicate(self, err: ApiError) -> bool:
        text = err.message.lower()
        return any(str(h).lower() in text for h in self.options.get("duplicate_hints") or [])


def _csrf_refused(err: AuthError) -> bool:
    """SAP answers a missing/stale token with 403 and "CSRF token validation failed"."""
    return err.status == 403 and "csrf" in err.message.lower()

