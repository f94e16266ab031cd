"""SAP S/4HANA OData V2 fake: API_SALES_ORDER_SRV and API_BILLING_DOCUMENT_SRV.

What it reproduces (shared/reference/source-apis.md, "SAP S/4HANA"):

- Service root ``/sap/opu/odata/sap`` (``base_path``), services ``API_SALES_ORDER_SRV``
  (A_SalesOrder -> to_Item: A_SalesOrderItem -> to_PricingElement: A_SalesOrderItemPrElement)
  and ``API_BILLING_DOCUMENT_SRV`` (A_BillingDocument -> to_Item: A_BillingDocumentItem).
- OData V2 JSON ("verbose"): ``{"d": {"results": [...], "__next": "<url>"}}`` for collections,
  ``{"d": {...}}`` for one entity; every entity has ``__metadata`` (id, uri, type, etag);
  navigation properties are ``{"__deferred": {"uri": ...}}`` unless ``$expand``-ed, then
  ``{"results": [...]}``. Edm.Decimal travels as a string ("52.65"), Edm.DateTime as
  ``"\\/Date(ms)\\/"`` (a date at UTC midnight) and Edm.DateTimeOffset as
  ``"\\/Date(ms+0000)\\/"`` (milliseconds; the server keeps microseconds, so a filter compares
  finer than the JSON shows), with the ``\\/`` escapes SAP writes. Empty text is ``""``, not null.
- Query options: ``$filter`` (eq ne gt ge lt le, and/or/not, parentheses, ``startswith``,
  ``endswith``, ``substringof``; literals 'text', datetimeoffset'...', datetime'...', numbers,
  true/false/null), ``$orderby`` (``LastChangeDateTime asc,SalesOrder asc``), ``$top``, ``$skip``,
  ``$skiptoken``, ``$expand`` (``to_Item,to_Item/to_PricingElement``), ``$select`` (top level),
  ``$inlinecount=allpages`` and ``$format=json``. Without ``$format=json`` or a JSON ``Accept``
  the answer is Atom XML, as from a real gateway.
- Server-driven paging: ``page_size`` entities per answer; ``d.__next`` is the request URL with
  every query option kept and ``$skiptoken=<offset>`` set (an offset, as SAP's generic paging).
- Auth: HTTP basic on every call (``credentials()``), optional ``sap-client`` must match; a
  wrong one is a 401 with ``WWW-Authenticate`` and an OData error body
  ``{"error": {"code", "message": {"lang", "value"}, "innererror": {...}}}``.
- CSRF: a GET with ``X-CSRF-Token: Fetch`` answers the token in ``x-csrf-token`` and sets the
  ``SAP_SESSIONID_<SID>_<client>`` cookie; POST/PATCH/PUT/DELETE need both the token and that
  cookie, else 403 ``CSRF token validation failed`` (text/plain) with ``x-csrf-token: Required``.
  ``expire_sessions()`` forgets every session (idle timeout, server restart); ``touch(id)`` is
  a change by someone else (new LastChangeDateTime and ETag); ``clock`` sets "now" for changes.
- Deep insert: POST A_SalesOrder with header fields and ``to_Item: {"results": [...]}`` (items
  may carry ``to_PricingElement: {"results": [...]}``) -> 201 with the created entity (items
  and pricing expanded), ``ETag`` and ``Location``. Required: SalesOrderType, SalesOrganization,
  DistributionChannel, OrganizationDivision, SoldToParty; each item's Material and
  RequestedQuantity. Edm.Decimal values must be JSON strings. Every create counts in
  ``creates[("sales_order", PurchaseOrderByCustomer)]``.
- Optimistic locking: one ETag per sales order, ``W/"datetimeoffset'<LastChangeDateTime>'"``
  (URL-encoded, 7 fractional digits, as SAP renders it), shared by its items and pricing
  elements. PATCH of A_SalesOrder('id'), A_SalesOrderItem(SalesOrder=..,SalesOrderItem=..) or
  A_SalesOrderItemPrElement(...) needs ``If-Match``: 428 without, 412 on a stale ETag, else 204
  with the new ``ETag``. A change bumps LastChangeDateTime and recomputes NetAmount and
  TotalNetAmount (quantity x PR00 rate).

(unverified) choices, each configurable where a real system may differ:
- the ship-to region is rendered in the header field ``region_field`` (default SalesDistrict);
- the unit price is the item's pricing element of type ``price_condition`` (default PR00),
  ConditionRateValue per ConditionQuantity;
- ``check_po_number`` (default True): a second create with the same PurchaseOrderByCustomer is
  refused with 400, code ``V4/115`` (a sales document type set to "check purchase order number"
  with an error); False creates a second order, like an unconfigured SAP;
- error codes other than V4/115 are placeholders in SAP's ``CLASS/NUMBER`` form;
- the ETag of items and pricing elements is the order's (SAP may version them separately);
- billing documents name the sales order on their items (``SalesDocument``).

Data: ``dataset.orders.get("sap", [])`` (neutral orders, internals.md "Generator") become sales
orders: SalesOrder is the neutral ``external_id`` when it is numeric (<= 10 digits), else a number
by position; the neutral ``order_no`` goes into PurchaseOrderByCustomer. Billing documents come from
``billing_documents`` (neutral dicts: ``external_id``, ``sales_order``, ``customer_code``,
``currency``, ``amount`` (net), ``tax``, ``issued_at``, ``updated_at``, ``cancelled``, optional
``lines`` [{sku, qty, amount}]) or, when not given, one per dataset sap order with a readable total,
issued a day after the order. ``fast`` is accepted for symmetry: SAP documents no rate limit.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote, unquote

from sandbox.server import FakeApp, Request, Response, json_dumps

BASE_PATH = "/sap/opu/odata/sap"
SO_SRV = "API_SALES_ORDER_SRV"
BILL_SRV = "API_BILLING_DOCUMENT_SRV"
USERNAME = "ORDERHUB_COMM_USER"
PASSWORD = "s4-Sandbox-pw-73c1e9"
SAP_CLIENT = "100"
SESSION_COOKIE = f"SAP_SESSIONID_S4H_{SAP_CLIENT}"
PO_MAX = 35  # PurchaseOrderByCustomer is CHAR 35
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "MERGE", "DELETE"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CENT = Decimal("0.01")
MILLI = Decimal("0.001")

# Edm kinds
STR, DEC, DATE, DTO, BOOL = "Edm.String", "Edm.Decimal", "Edm.DateTime", "Edm.DateTimeOffset", \
    "Edm.Boolean"


# -- entity model ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EntityType:
    name: str
    service: str
    keys: tuple[str, ...]
    props: Mapping[str, str]                      # property -> Edm kind
    navs: Mapping[str, str | None] = field(default_factory=dict)  # nav -> child type (None: empty)
    updatable: frozenset[str] = frozenset()


@dataclass
class Entity:
    type: EntityType
    values: dict[str, Any]                        # typed: str, Decimal, aware datetime, bool
    children: dict[str, list[Entity]] = field(default_factory=dict)


SALES_ORDER = EntityType(
    "A_SalesOrder", SO_SRV, ("SalesOrder",),
    {"SalesOrder": STR, "SalesOrderType": STR, "SalesOrganization": STR,
     "DistributionChannel": STR, "OrganizationDivision": STR, "SalesGroup": STR,
     "SalesOffice": STR, "SalesDistrict": STR, "SoldToParty": STR, "CreationDate": DATE,
     "CreatedByUser": STR, "LastChangeDate": DATE, "LastChangeDateTime": DTO,
     "PurchaseOrderByCustomer": STR, "CustomerPurchaseOrderDate": DATE, "SalesOrderDate": DATE,
     "TotalNetAmount": DEC, "TransactionCurrency": STR, "OverallSDProcessStatus": STR,
     "OverallDeliveryStatus": STR, "RequestedDeliveryDate": DATE},
    {"to_Item": "A_SalesOrderItem", "to_Partner": None, "to_PricingElement": None, "to_Text": None},
    frozenset({"SalesOrderDate", "SoldToParty", "TransactionCurrency", "PurchaseOrderByCustomer",
               "SalesDistrict", "RequestedDeliveryDate", "CustomerPurchaseOrderDate"}),
)
SALES_ORDER_ITEM = EntityType(
    "A_SalesOrderItem", SO_SRV, ("SalesOrder", "SalesOrderItem"),
    {"SalesOrder": STR, "SalesOrderItem": STR, "HigherLevelItem": STR,
     "SalesOrderItemCategory": STR, "SalesOrderItemText": STR, "PurchaseOrderByCustomer": STR,
     "Material": STR, "RequestedQuantity": DEC, "RequestedQuantityUnit": STR, "NetAmount": DEC,
     "TransactionCurrency": STR, "SDProcessStatus": STR},
    {"to_PricingElement": "A_SalesOrderItemPrElement", "to_ScheduleLine": None, "to_Partner": None},
    frozenset({"RequestedQuantity", "RequestedQuantityUnit", "SalesOrderItemText"}),
)
SALES_ORDER_PRICE = EntityType(
    "A_SalesOrderItemPrElement", SO_SRV,
    ("SalesOrder", "SalesOrderItem", "PricingProcedureStep", "PricingProcedureCounter"),
    {"SalesOrder": STR, "SalesOrderItem": STR, "PricingProcedureStep": STR,
     "PricingProcedureCounter": STR, "ConditionType": STR, "ConditionRateValue": DEC,
     "ConditionCurrency": STR, "ConditionQuantity": DEC, "ConditionQuantityUnit": STR,
     "ConditionAmount": DEC, "TransactionCurrency": STR},
    {},
    frozenset({"ConditionRateValue", "ConditionCurrency", "ConditionQuantity"}),
)
BILLING_DOCUMENT = EntityType(
    "A_BillingDocument", BILL_SRV, ("BillingDocument",),
    {"BillingDocument": STR, "BillingDocumentType": STR, "SDDocumentCategory": STR,
     "BillingDocumentCategory": STR, "SalesOrganization": STR, "DistributionChannel": STR,
     "Division": STR, "BillingDocumentDate": DATE, "CreationDate": DATE, "LastChangeDate": DATE,
     "LastChangeDateTime": DTO, "BillingDocumentIsCancelled": BOOL,
     "CancelledBillingDocument": STR, "SoldToParty": STR, "PayerParty": STR,
     "TransactionCurrency": STR, "TotalNetAmount": DEC, "TotalTaxAmount": DEC,
     "CustomerPaymentTerms": STR, "AccountingPostingStatus": STR, "OverallBillingStatus": STR},
    {"to_Item": "A_BillingDocumentItem", "to_Partner": None, "to_PricingElement": None},
)
BILLING_ITEM = EntityType(
    "A_BillingDocumentItem", BILL_SRV, ("BillingDocument", "BillingDocumentItem"),
    {"BillingDocument": STR, "BillingDocumentItem": STR, "SalesDocument": STR,
     "SalesDocumentItem": STR, "ReferenceSDDocument": STR, "ReferenceSDDocumentItem": STR,
     "Material": STR, "BillingQuantity": DEC, "BillingQuantityUnit": STR, "NetAmount": DEC,
     "TaxAmount": DEC, "TransactionCurrency": STR},
    {"to_Partner": None, "to_PricingElement": None},
)
TYPES = {t.name: t for t in (SALES_ORDER, SALES_ORDER_ITEM, SALES_ORDER_PRICE, BILLING_DOCUMENT,
                             BILLING_ITEM)}


# -- errors and value formats ------------------------------------------------------------------

class ODataError(Exception):
    """An answer in SAP Gateway's OData V2 error shape."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def response(self) -> Response:
        return odata_response(self.status, odata_error_body(self.code, self.message),
                              headers=self.headers)


def odata_error_body(code: str, message: str) -> dict:
    """``{"error": {"code", "message": {"lang", "value"}, "innererror"}}`` as SAP Gateway sends."""
    return {"error": {
        "code": code,
        "message": {"lang": "en", "value": message},
        "innererror": {
            "application": {"component_id": "SD-SLS-API", "service_namespace": "/SAP/",
                            "service_id": SO_SRV, "service_version": "0001"},
            "transactionid": secrets.token_hex(16).upper(),
            "timestamp": datetime.now(UTC).strftime("%Y%m%d%H%M%S.%f")[:-3],
            "Error_Resolution": {"SAP_Transaction": "Run transaction /IWFND/ERROR_LOG",
                                 "SAP_Note": "See SAP Note 1797736"},
            "errordetails": [{"code": code, "message": message, "propertyref": "",
                              "severity": "error", "target": ""}],
        },
    }}


def odata_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """JSON with SAP's ``\\/Date(...)\\/`` escapes (json.dumps would write plain slashes)."""
    text = json_dumps(payload).replace('"/Date(', '"\\/Date(').replace(')/"', ')\\/"')
    return Response(status, body=text,
                    headers={"Content-Type": "application/json; charset=utf-8",
                             "DataServiceVersion": "2.0", **(headers or {})})


def sap_date(dt: datetime | None, offset: bool) -> str | None:
    """Edm.DateTime ``/Date(ms)/`` or Edm.DateTimeOffset ``/Date(ms+0000)/`` (ms truncated)."""
    if dt is None:
        return None
    delta = dt.astimezone(UTC) - _EPOCH
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return f"/Date({ms}+0000)/" if offset else f"/Date({ms})/"


_DATE_RE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$")


def parse_sap_date(value: Any) -> datetime | None:
    """``/Date(ms[+hhmm])/`` or ISO-8601 -> aware UTC datetime (ms is the UTC instant)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    m = _DATE_RE.match(text)
    if m:
        return _EPOCH + timedelta(milliseconds=int(m.group(1)))
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def etag_of(changed: datetime) -> str:
    """``W/"datetimeoffset'2026-11-01T10%3A00%3A00.1234560Z'"`` (SAP: 7 digits, ':' encoded)."""
    utc = changed.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{utc.microsecond:06d}0Z"
    return "W/\"datetimeoffset'" + quote(text, safe="") + "'\""


def _midnight(value: Any) -> datetime | None:
    dt = _neutral_time(value)
    return None if dt is None else datetime(dt.year, dt.month, dt.day, tzinfo=UTC)


def _neutral_time(value: Any) -> datetime | None:
    try:
        return parse_sap_date(value)
    except (TypeError, ValueError):
        return None


def _dec(value: Any, places: Decimal | None = None) -> Any:
    """A neutral number as Decimal (quantized); an unreadable value is kept as it is."""
    if value is None or isinstance(value, bool):
        return value
    try:
        number = Decimal(str(value)) if isinstance(value, int | float | str) else value
    except InvalidOperation:
        return value
    if isinstance(number, Decimal) and number.is_finite() and places is not None:
        return number.quantize(places)
    return number


def _render_value(value: Any, kind: str) -> Any:
    if kind == STR:
        return "" if value is None else str(value)
    if kind == DEC:
        return format(value, "f") if isinstance(value, Decimal) else value
    if kind in (DATE, DTO):
        return sap_date(value, kind == DTO) if isinstance(value, datetime) else value
    return value


def _from_json(prop: str, kind: str, value: Any) -> Any:
    """A request body value -> typed; 400 for a wrong format (Edm.Decimal must be a string)."""
    if value is None:
        return None
    try:
        if kind == STR:
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == DEC:
            if not isinstance(value, str):
                raise ValueError
            number = Decimal(value)
            if not number.is_finite():
                raise ValueError
            return number
        if kind in (DATE, DTO):
            return parse_sap_date(value)
        if kind == BOOL:
            if not isinstance(value, bool):
                raise ValueError
            return value
    except (ValueError, InvalidOperation, TypeError):
        pass
    raise ODataError(400, "/IWBEP/CM_MGW_RT/021",
                     f"Invalid value {value!r} for property '{prop}' of type {kind}")


def _digits(text: str) -> bool:
    return text.isdigit() and len(text) <= 10


# -- $filter / $orderby / $expand --------------------------------------------------------------

_TOKEN_RE = re.compile(r"""\s*(?:
    (?P<typed>(?:datetimeoffset|datetime|guid|time)'[^']*')
  | (?P<str>'(?:[^']|'')*')
  | (?P<num>-?\d+(?:\.\d+)?[mMdDfFlL]?)
  | (?P<punct>[(),])
  | (?P<word>[A-Za-z_][A-Za-z0-9_/]*)
)""", re.VERBOSE)
_CMP = {"eq", "ne", "gt", "ge", "lt", "le"}
_FUNCS = {"startswith", "endswith", "substringof"}
Getter = Callable[[dict], Any]


def _bad_filter(text: str, why: str) -> ODataError:
    return ODataError(400, "/IWBEP/CM_MGW_RT/022", f"Invalid filter expression '{text}': {why}")


class FilterParser:
    """The $filter subset above, compiled to a predicate over an entity's typed values."""

    def __init__(self, text: str, etype: EntityType) -> None:
        self.text, self.etype = text, etype
        self.tokens: list[tuple[str, str]] = []
        pos, stripped = 0, text.strip()
        while pos < len(stripped):
            m = _TOKEN_RE.match(stripped, pos)
            if not m or m.end() == pos:
                raise _bad_filter(text, f"unexpected {stripped[pos:pos + 15]!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def compile(self) -> Callable[[dict], bool]:
        pred = self._or()
        if self.i != len(self.tokens):
            raise _bad_filter(self.text, f"unexpected {self.tokens[self.i][1]!r}")
        return lambda values: pred(values) is True

    # grammar: or := and ("or" and)*; and := unary ("and" unary)*; unary := "not" unary | cmp
    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self, value: str | None = None) -> tuple[str, str]:
        tok = self._peek()
        if tok is None or (value is not None and tok[1].lower() != value):
            raise _bad_filter(self.text, f"expected {value or 'more'}")
        self.i += 1
        return tok

    def _is_word(self, *words: str) -> bool:
        tok = self._peek()
        return tok is not None and tok[0] == "word" and tok[1].lower() in words

    def _or(self) -> Getter:
        parts = [self._and()]
        while self._is_word("or"):
            self._take()
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda v: any(p(v) is True for p in parts))

    def _and(self) -> Getter:
        parts = [self._unary()]
        while self._is_word("and"):
            self._take()
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else (lambda v: all(p(v) is True for p in parts))

    def _unary(self) -> Getter:
        if self._is_word("not"):
            self._take()
            inner = self._unary()
            return lambda v: inner(v) is not True
        left = self._operand()
        if self._is_word(*_CMP):
            op = self._take()[1].lower()
            right = self._operand()
            return lambda v: _compare(left(v), op, right(v))
        return left

    def _operand(self) -> Getter:
        kind, text = self._take()
        if kind == "punct" and text == "(":
            inner = self._or()
            self._take(")")
            return inner
        if kind in ("typed", "str", "num"):
            value = self._literal(kind, text)
            return lambda v: value
        if kind == "word":
            low = text.lower()
            if low in ("true", "false"):
                return (lambda v: True) if low == "true" else (lambda v: False)
            if low == "null":
                return lambda v: None
            if low in _FUNCS:
                return self._function(low)
            if text not in self.etype.props:
                raise ODataError(400, "/IWBEP/CM_MGW_RT/022",
                                 f"Property '{text}' not found in type '{self.etype.name}Type'")
            return lambda v: v.get(text)
        raise _bad_filter(self.text, f"unexpected {text!r}")

    def _function(self, name: str) -> Getter:
        self._take("(")
        first = self._operand()
        self._take(",")
        second = self._operand()
        self._take(")")
        if name == "substringof":  # substringof('needle', Field)
            return lambda v: _text_test(second(v), first(v), lambda h, n: n in h)
        test = str.startswith if name == "startswith" else str.endswith
        return lambda v: _text_test(first(v), second(v), test)

    def _literal(self, kind: str, text: str) -> Any:
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return Decimal(text.rstrip("mMdDfFlL"))
        prefix, _, rest = text.partition("'")
        raw = rest[:-1]
        if prefix in ("datetimeoffset", "datetime"):
            try:
                return parse_sap_date(raw)
            except ValueError:
                raise _bad_filter(self.text, f"bad {prefix} literal {raw!r}") from None
        return raw


def _text_test(hay: Any, needle: Any, test: Callable[[str, str], bool]) -> bool:
    return isinstance(hay, str) and isinstance(needle, str) and test(hay, needle)


def _compare(a: Any, op: str, b: Any) -> bool:
    if a is None or b is None:
        return (a is b) if op == "eq" else (a is not b) if op == "ne" else False
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        try:
            a, b = Decimal(str(a)), Decimal(str(b))
        except InvalidOperation:
            return False
    try:
        return {"eq": a == b, "ne": a != b, "gt": a > b, "ge": a >= b, "lt": a < b,
                "le": a <= b}[op]
    except TypeError:
        return False


def parse_orderby(text: str | None, etype: EntityType) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for part in (text or "").split(","):
        words = part.split()
        if not words:
            continue
        if words[0] not in etype.props or len(words) > 2 or (
                len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise ODataError(400, "/IWBEP/CM_MGW_RT/023", f"Invalid $orderby '{part.strip()}'")
        out.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    return out


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (0, "")
    if isinstance(value, str):
        # document numbers sort like SAP's ALPHA-converted (zero-padded) keys
        return (1, value.zfill(10) if _digits(value) else value)
    return (1, value)


def parse_expand(text: str | None, etype: EntityType) -> dict[str, dict]:
    """``to_Item,to_Item/to_PricingElement`` -> {"to_Item": {"to_PricingElement": {}}}."""
    tree: dict[str, dict] = {}
    for path in (text or "").split(","):
        path = path.strip()
        if not path:
            continue
        node, current = tree, etype
        for nav in path.split("/"):
            if current is None or nav not in current.navs:
                where = current.name if current else "an empty navigation"
                raise ODataError(400, "/IWBEP/CM_MGW_RT/024",
                                 f"Navigation property '{nav}' not found in '{where}Type'")
            node = node.setdefault(nav, {})
            child = current.navs[nav]
            current = TYPES[child] if child else None
    return tree


def odata_query(params: Mapping[str, str]) -> str:
    """Query options encoded as SAP tools write them: spaces as %20, ``$ ' , ( ) : /`` kept."""
    safe = "$',():/"
    return "&".join(f"{quote(k, safe=safe)}={quote(v, safe=safe)}" for k, v in params.items())


# -- rendering the dataset ---------------------------------------------------------------------

def _neutral_orders(dataset: Any) -> list[dict]:
    orders = dataset.get("orders") if isinstance(dataset, dict) else getattr(dataset, "orders", None)
    return list((orders or {}).get("sap", []))


def _codes(dataset: Any, attr: str, key: str) -> set[str]:
    rows = dataset.get(attr) if isinstance(dataset, dict) else getattr(dataset, attr, None)
    return {str(r.get(key)) for r in rows or [] if r.get(key)}


# -- the fake ----------------------------------------------------------------------------------

class SapFake(FakeApp):
    """S/4HANA's sales order and billing document OData V2 services over a dataset."""

    base_path = BASE_PATH  # sandbox.Sandbox.sources(): base_url = server URL + base_path

    def __init__(
        self,
        dataset: Any,
        fast: bool = True,
        *,
        page_size: int = 100,
        billing_documents: list[dict] | None = None,
        region_field: str = "SalesDistrict",
        price_condition: str = "PR00",
        check_po_number: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        if region_field not in SALES_ORDER.props:
            raise ValueError(f"region_field {region_field!r} is not an A_SalesOrder property")
        self.fast = fast
        self.page_size = page_size
        self.region_field = region_field
        self.price_condition = price_condition
        self.check_po_number = check_po_number
        self._clock = clock or (lambda: datetime.now(UTC))
        self._last_tick = _EPOCH
        self.sessions: dict[str, str] = {}          # session cookie -> CSRF token
        self.customers = _codes(dataset, "customers", "code")
        self.materials = _codes(dataset, "products", "sku")
        self.sales_orders: dict[str, Entity] = {}
        self.billing_docs: dict[str, Entity] = {}
        self._next_order = 7_000_001
        loaded: list[tuple[str, dict]] = []  # (SalesOrder, neutral order)
        for i, o in enumerate(_neutral_orders(dataset)):
            order = self._order_from_neutral(o, i)
            self._add_order(order)
            loaded.append((order.values["SalesOrder"], o))
        docs = billing_documents if billing_documents is not None else \
            _billing_from_orders(loaded)
        for i, b in enumerate(docs):
            bill = self._billing_from_neutral(b, i)
            self.billing_docs[bill.values["BillingDocument"]] = bill

        so = re.escape(f"{BASE_PATH}/{SO_SRV}")
        bd = re.escape(f"{BASE_PATH}/{BILL_SRV}")
        q = r"'(?P<{}>[^']*)'"
        for method in ("GET", "HEAD"):  # clients fetch the CSRF token with either
            self.route(method, so + r"/?", lambda r: self.service_document(r, SO_SRV))
            self.route(method, bd + r"/?", lambda r: self.service_document(r, BILL_SRV))
        self.route("GET", so + r"/A_SalesOrder", self.list_sales_orders)
        self.route("POST", so + r"/A_SalesOrder", self.create_sales_order)
        order_path = so + r"/A_SalesOrder\(" + q.format("so") + r"\)"
        self.route("GET", order_path, self.get_sales_order)
        self.route("PATCH", order_path, self.patch_sales_order)
        item_path = (so + r"/A_SalesOrderItem\(SalesOrder=" + q.format("so")
                     + r",SalesOrderItem=" + q.format("item") + r"\)")
        self.route("GET", item_path, self.get_item)
        self.route("PATCH", item_path, self.patch_item)
        self.route("PATCH", so + r"/A_SalesOrderItemPrElement\(SalesOrder=" + q.format("so")
                   + r",SalesOrderItem=" + q.format("item") + r",PricingProcedureStep="
                   + q.format("step") + r",PricingProcedureCounter=" + q.format("counter")
                   + r"\)", self.patch_price)
        self.route("GET", bd + r"/A_BillingDocument", self.list_billing_documents)
        self.route("GET", bd + r"/A_BillingDocument\(" + q.format("bd") + r"\)",
                   self.get_billing_document)

    # -- sandbox wiring --------------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        return {"username": USERNAME, "password": PASSWORD}

    def options(self) -> dict[str, Any]:
        return {"sap_client": SAP_CLIENT, "region_field": self.region_field,
                "price_condition": self.price_condition}

    def expire_sessions(self) -> None:
        """Forget every session and its CSRF token (idle timeout, server restart)."""
        with self.lock:
            self.sessions.clear()

    def touch(self, sales_order: str) -> None:
        """A change by someone else: bumps the order's LastChangeDateTime (and its ETag)."""
        with self.lock:
            self._changed(self.sales_orders[sales_order])

    # -- cross-cutting: auth, CSRF, JSON only ------------------------------------------------------

    def _dispatch(self, req: Request) -> Response:
        req.path = unquote(req.path)  # keys arrive as A_SalesOrder(%27..%27) from some clients
        return super()._dispatch(req)

    def before_request(self, req: Request) -> Response | None:
        if not req.path.startswith(BASE_PATH + "/"):
            return None
        client = req.query.get("sap-client")
        if not self._basic_ok(req.header("authorization")) or client not in (None, SAP_CLIENT):
            return ODataError(401, "/IWFND/CM_CONSUMER/401", "Logon failed: user or password "
                              "incorrect, or no access to client",
                              headers={"WWW-Authenticate": 'Basic realm="SAP NetWeaver '
                                       'Application Server [S4H/100]"'}).response()
        if req.method in WRITE_METHODS:
            sid = self._session_id(req)
            token = req.header("x-csrf-token")
            if sid is None or sid not in self.sessions or not token or \
                    token != self.sessions[sid]:
                return Response(403, body="CSRF token validation failed",
                                headers={"x-csrf-token": "Required"})
        return None

    def after_request(self, req: Request, resp: Response) -> Response:
        fetch = (req.header("x-csrf-token") or "").lower() == "fetch"
        if req.method in ("GET", "HEAD") and fetch and resp.status < 400:
            sid = self._session_id(req)
            if sid not in self.sessions:  # same session, same token (as SAP)
                sid = secrets.token_urlsafe(24)
                self.sessions[sid] = secrets.token_urlsafe(18)
            resp.headers["x-csrf-token"] = self.sessions[sid]
            resp.headers["Set-Cookie"] = f"{SESSION_COOKIE}={sid}; path=/; HttpOnly"
        return resp

    @staticmethod
    def _basic_ok(header: str | None) -> bool:
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == USERNAME and password == PASSWORD

    @staticmethod
    def _session_id(req: Request) -> str | None:
        for part in (req.header("cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE:
                return value
        return None

    @staticmethod
    def _wants_json(req: Request) -> bool:
        fmt = req.query.get("$format")
        return fmt == "json" or (fmt is None and "json" in (req.header("accept") or ""))

    @staticmethod
    def _odata(fn: Callable[[], Response]) -> Response:
        try:
            return fn()
        except ODataError as err:
            return err.response()

    # -- reading -------------------------------------------------------------------------------

    def service_document(self, req: Request, service: str) -> Response:
        sets = [t.name for t in TYPES.values() if t.service == service]
        return odata_response(200, {"d": {"EntitySets": sets}})

    def list_sales_orders(self, req: Request) -> Response:
        return self._odata(lambda: self._collection(req, SALES_ORDER,
                                                          list(self.sales_orders.values())))

    def list_billing_documents(self, req: Request) -> Response:
        return self._odata(lambda: self._collection(req, BILLING_DOCUMENT,
                                                          list(self.billing_docs.values())))

    def get_sales_order(self, req: Request) -> Response:
        return self._odata(lambda: self._single(req, self._order(req.path_params["so"])))

    def get_billing_document(self, req: Request) -> Response:
        def one() -> Response:
            bill = self.billing_docs.get(req.path_params["bd"])
            if bill is None:
                raise ODataError(404, "/IWBEP/CM_MGW_RT/020", "Resource not found for segment "
                                 "'A_BillingDocumentType'")
            return self._single(req, bill)
        return self._odata(one)

    def get_item(self, req: Request) -> Response:
        def one() -> Response:
            order = self._order(req.path_params["so"])
            return self._single(req, self._item(order, req.path_params["item"]), root=order)
        return self._odata(one)

    def _collection(self, req: Request, etype: EntityType, entities: list[Entity]) -> Response:
        if not self._wants_json(req):
            return _atom()
        q = req.query
        pred = FilterParser(q["$filter"], etype).compile() if q.get("$filter") else None
        order = parse_orderby(q.get("$orderby"), etype) or [(k, False) for k in etype.keys]
        expand = parse_expand(q.get("$expand"), etype)
        top, skip = _int_option(q, "$top"), _int_option(q, "$skip") or 0
        offset = _int_option(q, "$skiptoken") or 0
        rows = [e for e in entities if pred is None or pred(e.values)]
        for name, desc in reversed(order):  # stable sorts, last key first
            rows.sort(key=lambda e, n=name: _sort_key(e.values.get(n)), reverse=desc)
        rows = rows[skip:] if top is None else rows[skip:skip + top]
        page = rows[offset:offset + self.page_size]
        body: dict[str, Any] = {"results": [self._render(req, e, expand) for e in page]}
        if q.get("$inlinecount") == "allpages":
            body["__count"] = str(len(rows))
        if offset + self.page_size < len(rows):
            nxt = {k: v for k, v in q.items() if k != "$skiptoken"}
            nxt["$skiptoken"] = str(offset + self.page_size)
            body["__next"] = f"{req.base_url}{req.path}?{odata_query(nxt)}"
        return odata_response(200, {"d": body})

    def _single(self, req: Request, entity: Entity, root: Entity | None = None) -> Response:
        if not self._wants_json(req):
            return _atom()
        expand = parse_expand(req.query.get("$expand"), entity.type)
        data = self._render(req, entity, expand, root=root)
        etag = data["__metadata"].get("etag")
        return odata_response(200, {"d": data}, headers={"ETag": etag} if etag else None)

    def _render(self, req: Request, entity: Entity, expand: dict[str, dict],
                root: Entity | None = None) -> dict:
        root = root or entity
        t = entity.type
        uri = self._uri(req.base_url, entity)
        meta = {"id": uri, "uri": uri, "type": f"{t.service}.{t.name}Type"}
        changed = root.values.get("LastChangeDateTime")
        if isinstance(changed, datetime):
            meta["etag"] = etag_of(changed)
        out: dict[str, Any] = {"__metadata": meta}
        selected = [s.strip() for s in (req.query.get("$select") or "").split(",") if s.strip()]
        for prop, kind in t.props.items():
            if not selected or prop in selected or root is not entity:
                out[prop] = _render_value(entity.values.get(prop), kind)
        for nav in t.navs:
            if nav in expand:
                out[nav] = {"results": [self._render(req, c, expand[nav], root=root)
                                        for c in entity.children.get(nav, [])]}
            elif not selected:
                out[nav] = {"__deferred": {"uri": f"{uri}/{nav}"}}
        return out

    @staticmethod
    def _uri(base_url: str, entity: Entity) -> str:
        t = entity.type
        if len(t.keys) == 1:
            key = f"'{entity.values[t.keys[0]]}'"
        else:
            key = ",".join(f"{k}='{entity.values[k]}'" for k in t.keys)
        return f"{base_url}{BASE_PATH}/{t.service}/{t.name}({key})"

    # -- writing -------------------------------------------------------------------------------

    def create_sales_order(self, req: Request) -> Response:
        return self._odata(lambda: self._create(req))

    def _create(self, req: Request) -> Response:
        body = req.json
        if not isinstance(body, dict):
            raise ODataError(400, "/IWBEP/CM_MGW_RT/004", "Malformed request body: a JSON object "
                             "is expected")
        header = self._typed(SALES_ORDER, body, nav_ok=("to_Item",))
        missing = [p for p in ("SalesOrderType", "SalesOrganization", "DistributionChannel",
                               "OrganizationDivision", "SoldToParty") if not header.get(p)]
        if missing:
            raise ODataError(400, "V1/320", f"Enter {', '.join(missing)}")
        customer = header["SoldToParty"]
        if self.customers and customer not in self.customers:
            raise ODataError(400, "VP/112", f"Sold-to party {customer} is not defined for sales "
                             f"area {header['SalesOrganization']}/{header['DistributionChannel']}/"
                             f"{header['OrganizationDivision']}")
        ref = header.get("PurchaseOrderByCustomer") or ""
        if len(ref) > PO_MAX:
            raise ODataError(400, "/IWBEP/CM_MGW_RT/021", f"PurchaseOrderByCustomer longer than "
                             f"{PO_MAX} characters")
        if ref and self.check_po_number:
            clash = next((o for o in self.sales_orders.values()
                          if o.values.get("PurchaseOrderByCustomer") == ref), None)
            if clash is not None:
                raise ODataError(400, "V4/115", f"The purchase order no. {ref} already exists in "
                                 f"sales order {clash.values['SalesOrder']}")
        number = self._new_number(header.get("SalesOrder"))
        now = self._tick()
        header.update({"SalesOrder": number, "CreationDate": _midnight(now),
                       "CreatedByUser": USERNAME, "OverallSDProcessStatus": "A",
                       "OverallDeliveryStatus": "A", "PurchaseOrderByCustomer": ref})
        header.setdefault("SalesOrderDate", _midnight(now))
        order = Entity(SALES_ORDER, header, {"to_Item": []})
        order.children["to_Item"] = self._new_items(order, _nav_results(body, "to_Item"))
        self._recompute(order)
        self._changed(order, now)
        self._add_order(order)
        self.creates[("sales_order", ref)] += 1
        data = self._render(req, order, {"to_Item": {"to_PricingElement": {}}})
        return odata_response(201, {"d": data}, headers={
            "ETag": data["__metadata"]["etag"], "Location": data["__metadata"]["uri"]})

    def _new_items(self, order: Entity, rows: list[Any]) -> list[Entity]:
        items: list[Entity] = []
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise ODataError(400, "/IWBEP/CM_MGW_RT/004", "to_Item: objects expected")
            values = self._typed(SALES_ORDER_ITEM, row, nav_ok=("to_PricingElement",))
            material = values.get("Material")
            if not material:
                raise ODataError(400, "V1/385", f"Item {n}: enter a material")
            if self.materials and material not in self.materials:
                raise ODataError(400, "V1/392", f"Material {material} is not defined for sales "
                                 f"org. {order.values['SalesOrganization']}")
            if values.get("RequestedQuantity") is None:
                raise ODataError(400, "V1/389", f"Item {n}: enter a quantity")
            item_no = values.get("SalesOrderItem") or str(10 * n)
            values.update({"SalesOrder": order.values["SalesOrder"], "SalesOrderItem": item_no,
                           "SalesOrderItemCategory": "TAN",
                           "TransactionCurrency": order.values.get("TransactionCurrency"),
                           "PurchaseOrderByCustomer": order.values.get("PurchaseOrderByCustomer")})
            item = Entity(SALES_ORDER_ITEM, values, {"to_PricingElement": []})
            for k, cond in enumerate(_nav_results(row, "to_PricingElement"), start=1):
                if not isinstance(cond, dict):
                    raise ODataError(400, "/IWBEP/CM_MGW_RT/004", "to_PricingElement: objects "
                                     "expected")
                cv = self._typed(SALES_ORDER_PRICE, cond)
                if not cv.get("ConditionType"):
                    raise ODataError(400, "V1/801", "Enter a condition type")
                cv.update({"SalesOrder": values["SalesOrder"], "SalesOrderItem": item_no,
                           "PricingProcedureStep": cv.get("PricingProcedureStep") or str(10 * k),
                           "PricingProcedureCounter": cv.get("PricingProcedureCounter") or "1",
                           "TransactionCurrency": values.get("TransactionCurrency")})
                cv.setdefault("ConditionQuantity", Decimal(1))
                cv["ConditionCurrency"] = cv.get("ConditionCurrency") or \
                    values.get("TransactionCurrency")
                item.children["to_PricingElement"].append(Entity(SALES_ORDER_PRICE, cv))
            items.append(item)
        return items

    def patch_sales_order(self, req: Request) -> Response:
        def run() -> Response:
            order = self._order(req.path_params["so"])
            return self._patch(req, order, order)
        return self._odata(run)

    def patch_item(self, req: Request) -> Response:
        def run() -> Response:
            order = self._order(req.path_params["so"])
            return self._patch(req, order, self._item(order, req.path_params["item"]))
        return self._odata(run)

    def patch_price(self, req: Request) -> Response:
        def run() -> Response:
            order = self._order(req.path_params["so"])
            item = self._item(order, req.path_params["item"])
            p = req.path_params
            cond = next((c for c in item.children.get("to_PricingElement", [])
                         if c.values["PricingProcedureStep"] == p["step"]
                         and c.values["PricingProcedureCounter"] == p["counter"]), None)
            if cond is None:
                raise ODataError(404, "/IWBEP/CM_MGW_RT/020", "Resource not found for segment "
                                 "'A_SalesOrderItemPrElementType'")
            return self._patch(req, order, cond)
        return self._odata(run)

    def _patch(self, req: Request, order: Entity, target: Entity) -> Response:
        if_match = req.header("if-match")
        if not if_match:
            raise ODataError(428, "/IWBEP/CM_MGW_RT/025", "Precondition required: send the "
                             "entity's ETag in an If-Match header")
        current = etag_of(order.values["LastChangeDateTime"])
        if if_match != "*" and if_match != current:
            raise ODataError(412, "/IWBEP/CM_MGW_RT/026", "Precondition failed: the entity was "
                             "changed by another user (ETag mismatch)")
        body = req.json
        if not isinstance(body, dict):
            raise ODataError(400, "/IWBEP/CM_MGW_RT/004", "Malformed request body")
        changes = self._typed(target.type, body)
        locked = sorted(set(changes) - target.type.updatable)
        if locked:
            raise ODataError(400, "/IWBEP/CM_MGW_RT/027", f"Property '{locked[0]}' of "
                             f"'{target.type.name}Type' cannot be changed")
        target.values.update(changes)
        self._recompute(order)
        self._changed(order)
        return Response(204, headers={"ETag": etag_of(order.values["LastChangeDateTime"]),
                                      "DataServiceVersion": "2.0"})

    def _typed(self, etype: EntityType, body: dict, nav_ok: tuple[str, ...] = ()) -> dict:
        out: dict[str, Any] = {}
        for key, value in body.items():
            if key == "__metadata" or key in nav_ok:
                continue
            kind = etype.props.get(key)
            if kind is None:
                raise ODataError(400, "/IWBEP/CM_MGW_RT/021",
                                 f"Property '{key}' is invalid for '{etype.name}Type'")
            out[key] = _from_json(key, kind, value)
        return out

    # -- state helpers -------------------------------------------------------------------------

    def _order(self, number: str) -> Entity:
        order = self.sales_orders.get(number)
        if order is None:
            raise ODataError(404, "/IWBEP/CM_MGW_RT/020", f"Resource not found for segment "
                             f"'A_SalesOrderType' (SalesOrder='{number}')")
        return order

    @staticmethod
    def _item(order: Entity, item_no: str) -> Entity:
        item = next((i for i in order.children.get("to_Item", [])
                     if i.values["SalesOrderItem"] == item_no), None)
        if item is None:
            raise ODataError(404, "/IWBEP/CM_MGW_RT/020", "Resource not found for segment "
                             "'A_SalesOrderItemType'")
        return item

    def _add_order(self, order: Entity) -> None:
        number = order.values["SalesOrder"]
        self.sales_orders[number] = order
        if _digits(number):
            self._next_order = max(self._next_order, int(number) + 1)

    def _new_number(self, wanted: Any) -> str:
        if isinstance(wanted, str) and wanted:  # external numbering
            if wanted in self.sales_orders:
                raise ODataError(400, "V1/046", f"Sales document {wanted} already exists")
            return wanted
        number = str(self._next_order)
        self._next_order += 1
        return number

    def _tick(self) -> datetime:
        """Now, strictly after the previous change, so every change gets a new ETag."""
        now = max(self._clock(), self._last_tick + timedelta(microseconds=1))
        self._last_tick = now
        return now

    def _changed(self, order: Entity, when: datetime | None = None) -> None:
        when = when or self._tick()
        order.values["LastChangeDateTime"] = when
        order.values["LastChangeDate"] = _midnight(when)

    def _recompute(self, order: Entity) -> None:
        """NetAmount = quantity x price condition rate / condition quantity; header sums items."""
        total: Decimal | None = Decimal(0)
        for item in order.children.get("to_Item", []):
            qty = item.values.get("RequestedQuantity")
            cond = next((c for c in item.children.get("to_PricingElement", [])
                         if c.values.get("ConditionType") == self.price_condition), None)
            rate = cond.values.get("ConditionRateValue") if cond else None
            per = (cond.values.get("ConditionQuantity") or Decimal(1)) if cond else Decimal(1)
            if isinstance(qty, Decimal) and isinstance(rate, Decimal) and isinstance(per, Decimal) \
                    and per:
                net = (qty * rate / per).quantize(CENT)
                item.values["NetAmount"] = net
                if cond is not None:
                    cond.values["ConditionAmount"] = net
            net_value = item.values.get("NetAmount")
            total = total + net_value if isinstance(net_value, Decimal) and total is not None \
                else None
        if order.children.get("to_Item"):
            order.values["TotalNetAmount"] = total

    # -- the dataset -----------------------------------------------------------------------------

    def _order_from_neutral(self, o: dict, index: int) -> Entity:
        ext = str(o.get("external_id") or "")
        number = ext if _digits(ext) and ext not in self.sales_orders else \
            str(5_000_001 + index)
        currency = o.get("currency")
        header = {
            "SalesOrder": number, "SalesOrderType": "OR", "SalesOrganization": "1010",
            "DistributionChannel": "10", "OrganizationDivision": "00",
            "SoldToParty": o.get("customer_code"),
            # the customer's reference; a neutral order_no that is the SAP number itself is none
            "PurchaseOrderByCustomer": "" if str(o.get("order_no") or "") == number else
            str(o.get("order_no") or "")[:PO_MAX],
            "CreationDate": _midnight(o.get("ordered_at")),
            "SalesOrderDate": _midnight(o.get("ordered_at")), "CreatedByUser": "CB9980000123",
            "TotalNetAmount": _dec(o.get("total")), "TransactionCurrency": currency,
            "OverallSDProcessStatus": "A", "OverallDeliveryStatus": "A",
            self.region_field: o.get("ship_region"),
        }
        order = Entity(SALES_ORDER, header, {"to_Item": []})
        lines = sorted(o.get("lines") or [], key=lambda ln: ln.get("line_no") or 0)
        for n, ln in enumerate(lines, start=1):
            item_no = str(10 * (ln.get("line_no") or n))
            qty, price = _dec(ln.get("qty"), MILLI), _dec(ln.get("unit_price"))
            net = (qty * price).quantize(CENT) if isinstance(qty, Decimal) and \
                isinstance(price, Decimal) else None
            item = Entity(SALES_ORDER_ITEM, {
                "SalesOrder": number, "SalesOrderItem": item_no, "SalesOrderItemCategory": "TAN",
                "Material": ln.get("sku"), "RequestedQuantity": qty,
                "RequestedQuantityUnit": "PC", "NetAmount": net, "TransactionCurrency": currency,
                "PurchaseOrderByCustomer": header["PurchaseOrderByCustomer"],
            }, {"to_PricingElement": []})
            item.children["to_PricingElement"].append(Entity(SALES_ORDER_PRICE, {
                "SalesOrder": number, "SalesOrderItem": item_no, "PricingProcedureStep": "10",
                "PricingProcedureCounter": "1", "ConditionType": self.price_condition,
                "ConditionRateValue": price, "ConditionCurrency": currency,
                "ConditionQuantity": Decimal(1), "ConditionQuantityUnit": "PC",
                "ConditionAmount": net, "TransactionCurrency": currency}))
            order.children["to_Item"].append(item)
        updated = _neutral_time(o.get("updated_at")) or _EPOCH
        self._changed(order, updated)
        return order

    def _billing_from_neutral(self, b: dict, index: int) -> Entity:
        number = str(b.get("external_id") or 90_000_001 + index)
        currency = b.get("currency")
        issued = _midnight(b.get("issued_at"))
        header = {
            "BillingDocument": number, "BillingDocumentType": "F2", "SDDocumentCategory": "M",
            "BillingDocumentCategory": "L", "SalesOrganization": "1010",
            "DistributionChannel": "10", "Division": "00", "BillingDocumentDate": issued,
            "CreationDate": issued, "BillingDocumentIsCancelled": bool(b.get("cancelled")),
            "CancelledBillingDocument": "", "SoldToParty": b.get("customer_code"),
            "PayerParty": b.get("customer_code"), "TransactionCurrency": currency,
            "TotalNetAmount": _dec(b.get("amount")), "TotalTaxAmount": _dec(b.get("tax") or 0),
            "CustomerPaymentTerms": "0001", "AccountingPostingStatus": "C",
            "OverallBillingStatus": "C",
        }
        bill = Entity(BILLING_DOCUMENT, header, {"to_Item": []})
        lines = b.get("lines") or [{"sku": None, "qty": 1, "amount": b.get("amount")}]
        for n, ln in enumerate(lines, start=1):
            bill.children["to_Item"].append(Entity(BILLING_ITEM, {
                "BillingDocument": number, "BillingDocumentItem": str(10 * n),
                "SalesDocument": b.get("sales_order"), "SalesDocumentItem": str(10 * n),
                "ReferenceSDDocument": b.get("sales_order"), "ReferenceSDDocumentItem": str(10 * n),
                "Material": ln.get("sku"), "BillingQuantity": _dec(ln.get("qty"), MILLI),
                "BillingQuantityUnit": "PC", "NetAmount": _dec(ln.get("amount")),
                "TaxAmount": Decimal("0.00"), "TransactionCurrency": currency}))
        updated = _neutral_time(b.get("updated_at")) or issued or _EPOCH
        header["LastChangeDateTime"] = updated
        header["LastChangeDate"] = _midnight(updated)
        return bill


def _billing_from_orders(loaded: list[tuple[str, dict]]) -> list[dict]:
    """One billing document per sales order with a readable total, issued a day later."""
    docs = []
    for number, o in loaded:
        total = _dec(o.get("total"))
        if not isinstance(total, Decimal) or not o.get("customer_code"):
            continue
        issued = _neutral_time(o.get("ordered_at")) or _EPOCH
        updated = _neutral_time(o.get("updated_at")) or issued
        docs.append({"external_id": str(90_000_001 + len(docs)), "sales_order": number,
                     "customer_code": o.get("customer_code"), "currency": o.get("currency"),
                     "amount": total, "tax": Decimal("0.00"),
                     "issued_at": issued + timedelta(days=1),
                     "updated_at": updated + timedelta(days=1), "cancelled": False})
    return docs


def _nav_results(body: dict, nav: str) -> list[Any]:
    """Deep-insert navigation: ``{"results": [...]}`` (or a bare list, which SAP also takes)."""
    value = body.get(nav)
    if value is None:
        return []
    if isinstance(value, dict) and isinstance(value.get("results"), list):
        return value["results"]
    if isinstance(value, list):
        return value
    raise ODataError(400, "/IWBEP/CM_MGW_RT/004", f"{nav}: expected {{\"results\": [...]}}")


def _int_option(q: Mapping[str, str], name: str) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ODataError(400, "/IWBEP/CM_MGW_RT/028", f"Invalid value '{raw}' for {name}")
    return int(raw)


def _atom() -> Response:
    return Response(200, body='<?xml version="1.0" encoding="utf-8"?><feed '
                    'xmlns="http://www.w3.org/2005/Atom"/>',
                    headers={"Content-Type": "application/atom+xml;type=feed; charset=utf-8"})
