"""Kingdee K/3 Cloud (金蝶云星空) WebAPI connector: prices, stock, receipts and ERP orders in;
sales orders and receivables (invoices) out.

cfg: ``base_url`` (the site root, e.g. https://erp.example.com/k3cloud), ``auth: {acct_id,
username, app_id, app_secret}`` (LoginByAppSecret), ``options: {page_size: 2000 (max 10000),
batch_size: 200, lcid: 2052, org: "100", sales_order_type: "XSDD01_SYS", invoice_type:
"YSD01_SYS", orders_filter: "F_OrderRef=''"}``, ``rate_limit`` (none documented), ``lookback_seconds``.

Session: LoginByAppSecret answers HTTP 200 either way; ``LoginResultType`` 1 carries
``KDSVCSessionId`` (also set as the ``kdservice-sessionid`` cookie, which we send as cookie and
header). Anything else is an AuthError. A call whose session was lost ("会话信息已丢失", MsgCode 1)
logs in again once and is retried.

Reading: ``ExecuteBillQuery`` with ``{"data": {FormId, FieldKeys, FilterString, OrderString,
TopRowCount, StartRow, Limit}}`` returns arrays in FieldKeys order; we zip them into dicts.
Offset paging by StartRow/Limit. Incremental reads add ``FModifyDate>='<cursor - lookback>'`` and
order by ``FModifyDate ASC, <id> ASC``, so every page may carry a cursor. Kingdee datetimes carry
no zone: this connector reads and writes them as UTC (set the K/3 Cloud site to UTC, or extend
this connector with a site time zone).

Order lines: SAL_SaleOrder answers one row per entry line. Rows are grouped by FID into one
record per order, and the trailing group of a page is held back until the next page (or the end)
so an order is never split; the cursor moves only at a complete order. ``orders_filter`` keeps
out the sales orders orderhub itself saved (they carry ``F_OrderRef``); set it to "" on a site
without that custom field.

Price rules: the ``price_rules`` stream reads SAL_PriceList again with the customer group
(FCustTypeId), the validity (FEffectiveDate, FExpiryDate) and the site's custom discount field
F_DiscountRate; ``prices_filter`` / ``price_rules_filter`` split one form between the two
streams where a site needs it (both empty by default: every row is both).

The permission trap: a user without query permission on a form gets ``[]``, not an error. A full
(cursor-less) read of a master stream (prices, stock) that returns no row at all raises
EmptyResultError instead of reporting "0 rows, success".

Errors inside HTTP 200: a query error is ``[[{"Result": {"ResponseStatus": ...}}]]`` (ApiError);
a write reports ``Result.ResponseStatus`` with per-document ``Errors[].DIndex``.

Push (``sales_order`` -> SAL_SaleOrder, ``invoice`` -> AR_receivable, ``credit_note`` -> a red
AR_receivable: negative quantities and amount, ``F_SrcInvoiceNo`` naming the invoice it
reverses; invoice lines with a ``tax_rate`` send ``FEntryTaxRate`` (%) and the unit price as
``FTaxPrice`` when prices include tax, else as ``FPrice``): BatchSave in chunks of
``batch_size``, then one Submit and one Audit call for the saved numbers; results per document by
DIndex. FBillNo is our deterministic ``bill_no``, so: with ``recover`` the existing bills are
looked up first (``FBillNo IN (...)``) and only the missing ones are saved; a "duplicate number"
error on save means the bill exists, so it is looked up and reported ok with its Id. Bills found
unsubmitted or unaudited are moved on to audited. A document is ok only once its bill is audited.

Compensation (``orderhub rollback``, both operations): the bills are looked up by FBillNo, the
audited ones (C) UnAudited, then every saved or unaudited one (A, D) Deleted, by number, in one
call each per ``batch_size``. A bill the query does not find is confirmed gone with View (so
the permission trap's ``[]`` never passes for "deleted") and then counts as done: a rerun after
a crash. A submitted bill (B) is refused: its submission must be withdrawn in Kingdee.
Kingdee refuses to UnAudit a bill with downstream documents (a delivery, a write-off): that
error comes back as the document's failure, nothing is forced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache, partial
from typing import Any

from connectors.base import (
    Connector,
    Cursor,
    MappingError,
    Page,
    PushResult,
    RawRecord,
    Request,
    StreamSpec,
    later,
    parse_datetime,
    parse_decimal,
    to_iso,
)
from connectors.http import (
    ApiError,
    Auth,
    AuthError,
    EmptyResultError,
    HttpClient,
    HttpResponse,
    SessionLogin,
    SourceError,
)
from connectors.paging import OffsetPaginator, Paginator

LOGIN_PATH = "Kingdee.BOS.WebApi.ServicesStub.AuthService.LoginByAppSecret.common.kdsvc"
SESSION_HEADER = "kdservice-sessionid"
MAX_LIMIT = 10000
LOOKUP_CHUNK = 100  # bill numbers per "FBillNo IN (...)" query
MASTER_STREAMS = frozenset({"prices", "stock"})  # never legitimately empty on a full read
DUPLICATE_HINTS = ("重复", "已经存在", "已存在", "duplicate", "already exist")
GONE_HINTS = ("不存在", "已被删除", "not exist", "deleted")  # View of a bill that is no more
SESSION_LOST_HINTS = ("会话信息已丢失", "重新登录", "session lost", "not logged in")


def form_path(op: str) -> str:
    return f"Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.{op}.common.kdsvc"


QUERY_PATH = form_path("ExecuteBillQuery")


# -- mapping (pure) ----------------------------------------------------------------------------

def _text(value: Any) -> str | None:
    """Kingdee returns "" (or spaces) for an empty text or base-data field."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _updated(row: dict) -> datetime:
    updated_at = parse_datetime(row.get("FModifyDate"), "FModifyDate")  # zone-less: UTC
    if updated_at is None:
        raise MappingError("FModifyDate: missing")
    return updated_at


def _required_decimal(row: dict, key: str) -> Any:
    value = parse_decimal(row.get(key), key)
    if value is None:
        raise MappingError(f"{key}: missing")
    return value


def map_price(row: dict) -> dict:
    """SAL_PriceList entry (one per sku x currency) -> canonical ``prices``."""
    return {
        "external_id": str(row["FEntryID"]),
        "sku": _text(row.get("FMaterialId.FNumber")),
        "name": _text(row.get("FMaterialId.FName")),
        "currency": _text(row.get("FCurrencyId.FNumber")),
        "price": _required_decimal(row, "FPrice"),
        "updated_at": _updated(row),
    }



def _day(row: dict, key: str) -> Any:
    moment = parse_datetime(row.get(key), key)  # zone-less: UTC, like every Kingdee date
    return moment.date() if moment else None


def map_price_rule(row: dict) -> dict:
    """SAL_PriceList entry -> canonical ``price_rules``: the price for a customer group
    (FCustTypeId, empty: every customer) from FEffectiveDate to FExpiryDate (inclusive), less
    the site's custom discount field F_DiscountRate (percent off)."""
    valid_from, valid_to = _day(row, "FEffectiveDate"), _day(row, "FExpiryDate")
    if valid_from and valid_to and valid_to < valid_from:
        raise MappingError(f"FExpiryDate: {valid_to} is before FEffectiveDate {valid_from}")
    discount = parse_decimal(row.get("F_DiscountRate"), "F_DiscountRate")
    if discount is not None and not 0 <= discount <= 100:
        raise MappingError(f"F_DiscountRate: {discount} is not a percentage from 0 to 100")
    return {
        "external_id": str(row["FEntryID"]),
        "sku": _text(row.get("FMaterialId.FNumber")),
        "currency": _text(row.get("FCurrencyId.FNumber")),
        "customer_group": _text(row.get("FCustTypeId.FNumber")),
        "valid_from": valid_from,
        "valid_to": valid_to,
        "price": parse_decimal(row.get("FPrice"), "FPrice"),
        "discount_pct": discount,
        "updated_at": _updated(row),
    }


def map_stock(row: dict) -> dict:
    """STK_Inventory row -> canonical ``stock`` (the warehouse's region is a custom field)."""
    return {
        "external_id": str(row["FID"]),
        "sku": _text(row.get("FMaterialId.FNumber")),
        "warehouse": _text(row.get("FStockId.FNumber")),
        "region": _text(row.get("FStockId.F_Region")),
        "qty": _required_decimal(row, "FBaseQty"),
        "updated_at": _updated(row),
    }


def map_payment(row: dict) -> dict:
    """AR_RECEIVEBILL (receipt) -> canonical ``payments``; FREMARK holds the payer's reference."""
    received_at = parse_datetime(row.get("FDate"), "FDate")
    if received_at is None:
        raise MappingError("FDate: missing")
    return {
        "external_id": str(row["FID"]),
        "reference": _text(row.get("FREMARK")),
        "customer_code": _text(row.get("FPAYUNIT.FNumber")),
        "currency": _text(row.get("FCURRENCYID.FNumber")),
        "amount": _required_decimal(row, "FRECEIVEAMOUNTFOR"),
        "received_at": received_at,
        "updated_at": _updated(row),
    }


def map_order(payload: dict) -> dict:
    """A grouped SAL_SaleOrder (``{"FID", "rows": [one row per entry line]}``) -> ``orders``."""
    rows = payload.get("rows") or []
    if not rows:
        raise MappingError("rows: an order without rows")
    head = rows[0]
    entries = sorted((r for r in rows if r.get("FEntryID") is not None),
                     key=lambda r: r["FEntryID"])
    lines = [
        {
            "line_no": n,
            "sku": _text(r.get("FMaterialId.FNumber")),
            "qty": parse_decimal(r.get("FQty"), f"lines[{n}].FQty"),
            "unit_price": parse_decimal(r.get("FTaxPrice"), f"lines[{n}].FTaxPrice"),
        }
        for n, r in enumerate(entries, start=1)
    ]
    return {
        "external_id": str(head["FID"]),
        "order_no": _text(head.get("FBillNo")),
        "customer_code": _text(head.get("FCustId.FNumber")),
        "customer_email": None,  # ERP orders name the customer by code
        "ordered_at": parse_datetime(head.get("FDate"), "FDate"),
        "updated_at": _updated(head),
        "currency": _text(head.get("FSettleCurrId.FNumber")),
        "total": parse_decimal(head.get("FBillAllAmount"), "FBillAllAmount"),
        "ship_region": _text(head.get("F_ShipRegion")),
        "lines": lines,
    }


def group_order_rows(pages: Iterator[Page], cursor: Cursor | None) -> Iterator[Page]:
    """Line rows (sorted by FModifyDate, FID, FEntryID) -> one record per order, never split
    across pages: a page's trailing group waits for the next page, or the end of the read."""
    held: list[RawRecord] = []
    newest = cursor
    for page in pages:
        groups = _consecutive(held + page.records)
        held = groups.pop() if groups else []
        orders = [_order_record(g) for g in groups]
        newest = _newest(newest, orders)
        if orders:
            yield Page(orders, newest)
    orders = [_order_record(held)] if held else []
    yield Page(orders, _newest(newest, orders))


def _consecutive(rows: list[RawRecord]) -> list[list[RawRecord]]:
    groups: list[list[RawRecord]] = []
    for row in rows:
        if groups and groups[-1][0].external_id == row.external_id:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _order_record(rows: list[RawRecord]) -> RawRecord:
    first = rows[0]
    return RawRecord(first.external_id, first.updated_at,
                     {"FID": first.payload.get("FID"), "rows": [r.payload for r in rows]})


def _newest(cursor: Cursor | None, records: list[RawRecord]) -> Cursor | None:
    for rec in records:
        if rec.updated_at is not None:
            cursor = later(cursor, Cursor(to_iso(rec.updated_at), rec.external_id))
    return cursor


# -- push documents -> K/3 Cloud models (pure) -------------------------------------------------

def kd_datetime(value: Any, name: str) -> str | None:
    """Aware/ISO value -> Kingdee's zone-less "YYYY-MM-DDTHH:MM:SS" in UTC."""
    dt = parse_datetime(value, name)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") if dt else None


def _issued(value: Any) -> str | None:
    """kd_datetime of a receivable's ``issued_at``: one instant for all the documents a run
    issued, so its text is converted once."""
    return _issued_text(value) if value.__class__ is str else kd_datetime(value, "issued_at")


@lru_cache(maxsize=64)
def _issued_text(value: str) -> str | None:
    return kd_datetime(value, "issued_at")  # a MappingError is raised, never remembered


def _exact(text: str) -> Decimal | None:
    """A finite decimal text as the Decimal parse_decimal gives for it; None otherwise."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _decimal(value: Any, name: str) -> Decimal | None:
    """parse_decimal for a value of our own documents, which are exact decimal texts
    ("12.50"): those cost one Decimal(); anything else, every error included, is
    parse_decimal's (``name`` is then the field it names)."""
    if value.__class__ is str and (number := _exact(value)) is not None:
        return number
    return parse_decimal(value, name)


WHOLE_DIGITS = 18  # a whole number of at most this many digits goes out as an int


def _line_number(value: Any, n: int, key: str) -> int | Decimal | None:
    """A line's number for the wire, from our own document's text: a whole number ("2") as
    that int, any other finite decimal text as its Decimal — either way the same JSON text
    parse_decimal's Decimal would give, but an int needs no Decimal fallback in the encoder
    (most quantities are whole). Anything else, every error included, is parse_decimal's,
    with the field named ``lines[n].key`` (spelled only then)."""
    if value.__class__ is str:
        if value.isdigit() and value.isascii() and len(value) <= WHOLE_DIGITS:
            return int(value)
        if (number := _exact(value)) is not None:
            return number
    return parse_decimal(value, f"lines[{n}].{key}")


@lru_cache(maxsize=256)
def _percent(rate: str) -> int | Decimal | None:
    """A rate text ("0.13") as Kingdee's FEntryTaxRate percentage (13.00): a few distinct rates
    for all lines. A whole percentage without decimals ("0" -> 0) is an int, the same JSON
    text. None when the text is no finite number (parse_decimal then says why)."""
    value = _exact(rate)
    if value is None:
        return None
    percent = value * 100
    if percent.as_tuple().exponent == 0 and not (percent.is_zero() and percent.is_signed()):
        return int(percent)
    return percent


def _bill_no(doc: dict) -> str:
    bill_no = _text(doc.get("bill_no"))
    if not bill_no:
        raise MappingError("bill_no: missing")
    return bill_no


def _number(code: Any) -> dict:
    return {"FNumber": _text(code)}


def sales_order_model(doc: dict, options: dict) -> dict:
    """outbox ``sales_order`` doc -> SAL_SaleOrder Model."""
    return {
        "FBillTypeID": _number(options["sales_order_type"]),
        "FBillNo": _bill_no(doc),
        "FDate": kd_datetime(doc.get("ordered_at"), "ordered_at"),
        "FSaleOrgId": _number(options["org"]),
        "FCustId": _number(doc.get("customer_code")),
        "F_OrderRef": _text(doc.get("order_no")),  # our reference; keeps it out of `orders`
        "FSaleOrderFinance": {
            "FSettleCurrId": _number(doc.get("currency")),
            "FBillAllAmount": parse_decimal(doc.get("total"), "total"),
        },
        "FSaleOrderEntry": [
            {
                "FMaterialId": _number(ln.get("sku")),
                "FQty": parse_decimal(ln.get("qty"), f"lines[{n}].qty"),
                "FTaxPrice": parse_decimal(ln.get("unit_price"), f"lines[{n}].unit_price"),
            }
            for n, ln in enumerate(doc.get("lines") or [], start=1)
        ],
    }


def _receivable_entry(ln: dict, n: int, include_tax: Any) -> dict:
    sku = ln.get("sku")
    material = {"FNumber": sku.strip() or None} if sku.__class__ is str else _number(sku)
    qty = _line_number(ln.get("qty"), n, "qty")
    price = _line_number(ln.get("unit_price"), n, "unit_price")
    text = ln.get("tax_rate")
    rate = _percent(text) if text.__class__ is str else None
    if rate is None:
        rate = parse_decimal(text, f"lines[{n}].tax_rate")  # None, an error, or not a text
        if rate is not None:
            rate = rate * 100
    if rate is None:
        return {"FMATERIALID": material, "FPriceQty": qty, "FTaxPrice": price}
    # a taxed line (0005c): Kingdee derives the other price from the rate (FEntryTaxRate, %)
    if include_tax:
        return {"FMATERIALID": material, "FPriceQty": qty, "FTaxPrice": price,
                "FEntryTaxRate": rate}
    return {"FMATERIALID": material, "FPriceQty": qty, "FPrice": price, "FEntryTaxRate": rate}


def invoice_model(doc: dict, options: dict) -> dict:
    """outbox ``invoice`` doc -> AR_receivable Model."""
    include_tax = doc.get("prices_include_tax")
    return {
        "FBillTypeID": _number(options["invoice_type"]),
        "FBillNo": _bill_no(doc),
        "FDATE": _issued(doc.get("issued_at")),
        "FSETTLEORGID": _number(options["org"]),
        "FCUSTOMERID": _number(doc.get("customer_code")),
        "FCURRENCYID": _number(doc.get("currency")),
        "F_OrderRef": _text(doc.get("order_ref")),
        "F_InvoiceNo": _text(doc.get("invoice_no")),
        "FALLAMOUNTFOR": _decimal(doc.get("amount"), "amount"),
        "FEntityDetail": [_receivable_entry(ln, n, include_tax)
                          for n, ln in enumerate(doc.get("lines") or [], start=1)],
    }


def credit_note_model(doc: dict, options: dict) -> dict:
    """outbox ``credit_note`` doc -> a red AR_receivable Model (negative qty and amount)."""
    amount = parse_decimal(doc.get("amount"), "amount")
    if amount is None or amount >= 0:
        raise MappingError(f"amount: a credit note is negative, got {doc.get('amount')!r}")
    original = _text(doc.get("invoice_no"))
    if not original:
        raise MappingError("invoice_no: the invoice a credit note reverses is missing")
    model = invoice_model({**doc, "invoice_no": doc.get("credit_note_no")}, options)
    model["F_SrcInvoiceNo"] = original
    return model


@dataclass(frozen=True)
class WriteTarget:
    form: str
    model: Callable[[dict, dict], dict]


WRITE_TARGETS = {
    "sales_order": WriteTarget("SAL_SaleOrder", sales_order_model),
    "invoice": WriteTarget("AR_receivable", invoice_model),
    "credit_note": WriteTarget("AR_receivable", credit_note_model),
}


# -- error shapes --------------------------------------------------------------------------------

def response_status(data: Any) -> dict | None:
    """``ResponseStatus`` of a write (``{"Result": ...}``) or a query error (``[[{...}]]``)."""
    if isinstance(data, list):
        first = data[0][0] if data and isinstance(data[0], list) and data[0] else None
        data = first if isinstance(first, dict) and "Result" in first else None
    result = data.get("Result") if isinstance(data, dict) else None
    status = result.get("ResponseStatus") if isinstance(result, dict) else None
    return status if isinstance(status, dict) else None


def error_text(errors: Any) -> str:
    parts = []
    for e in errors if isinstance(errors, list) else []:
        if isinstance(e, dict):
            where = f"{e['FieldName']}: " if e.get("FieldName") else ""
            parts.append(f"{where}{e.get('Message')}")
    return "; ".join(parts) or "no error message"


def _is_duplicate(error: dict) -> bool:
    message = str(error.get("Message") or "").lower()
    return any(hint in message for hint in DUPLICATE_HINTS)


def _dindex(entity: Any, size: int) -> int | None:
    """The document index a success/error entity refers to, if it is a valid one."""
    index = entity.get("DIndex") if isinstance(entity, dict) else None
    return index if isinstance(index, int) and 0 <= index < size else None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# -- the connector -----------------------------------------------------------------------------

def _query_stream(kind: str, form: str, fields: list[str], order: str, mapper: Any, *,
                  id_field: str = "FID", filter_option: str | None = None) -> StreamSpec:
    return StreamSpec(
        kind=kind,
        method="POST",
        path=QUERY_PATH,
        id_field=id_field,
        updated_field="FModifyDate",
        # FilterOption names the option holding a static filter; build_request merges it
        # into FilterString (and drops the key) on every page
        params={"FormId": form, "FieldKeys": ",".join(fields), "OrderString": order,
                "TopRowCount": 0, "FilterOption": filter_option},
        paginator=partial(OffsetPaginator, param="StartRow"),
        page_size=2000,
        page_size_param="Limit",
        cursor_per_page=True,  # ordered by FModifyDate, id
        mapper=mapper,
    )


class KingdeeConnector(Connector):
    system = "kingdee"
    operations = {"sales_order", "invoice", "credit_note"}
    default_options = {"page_size": 2000, "batch_size": 200, "lcid": 2052, "org": "100",
                       "sales_order_type": "XSDD01_SYS", "invoice_type": "YSD01_SYS",
                       "orders_filter": "F_OrderRef=''",
                       # a site whose SAL_PriceList also holds group or promotion rows keeps
                       # them out of the plain list price, e.g. "FCustTypeId.FNumber=''"
                       "prices_filter": "", "price_rules_filter": ""}

    streams = {
        "prices": _query_stream(
            "prices", "SAL_PriceList",
            ["FEntryID", "FMaterialId.FNumber", "FMaterialId.FName", "FCurrencyId.FNumber",
             "FPrice", "FModifyDate"],
            "FModifyDate ASC, FEntryID ASC", map_price, id_field="FEntryID",
            filter_option="prices_filter"),
        "price_rules": _query_stream(
            "price_rules", "SAL_PriceList",
            ["FEntryID", "FMaterialId.FNumber", "FCurrencyId.FNumber", "FCustTypeId.FNumber",
             "FEffectiveDate", "FExpiryDate", "FPrice", "F_DiscountRate", "FModifyDate"],
            "FModifyDate ASC, FEntryID ASC", map_price_rule, id_field="FEntryID",
            filter_option="price_rules_filter"),
        "stock": _query_stream(
            "stock", "STK_Inventory",
            ["FID", "FMaterialId.FNumber", "FStockId.FNumber", "FStockId.F_Region", "FBaseQty",
             "FModifyDate"],
            "FModifyDate ASC, FID ASC", map_stock),
        "payments": _query_stream(
            "payments", "AR_RECEIVEBILL",
            ["FID", "FBillNo", "FDate", "FPAYUNIT.FNumber", "FCURRENCYID.FNumber",
             "FRECEIVEAMOUNTFOR", "FREMARK", "FModifyDate"],
            "FModifyDate ASC, FID ASC", map_payment),
        "orders": _query_stream(
            "orders", "SAL_SaleOrder",
            ["FID", "FBillNo", "FDate", "FCustId.FNumber", "FSettleCurrId.FNumber",
             "F_ShipRegion", "FBillAllAmount", "FModifyDate", "FEntryID",
             "FMaterialId.FNumber", "FQty", "FTaxPrice"],
            "FModifyDate ASC, FID ASC, FEntryID ASC", map_order,
            filter_option="orders_filter"),
    }

    # -- session -------------------------------------------------------------------------------

    def make_auth(self, auth_cfg: dict) -> Auth:
        missing = [k for k in ("acct_id", "username", "app_id", "app_secret")
                   if not auth_cfg.get(k)]
        if missing:
            raise ValueError(f"source {self.name!r}: auth needs {', '.join(missing)} for kingdee")
        body = {"acctid": auth_cfg["acct_id"], "username": auth_cfg["username"],
                "appid": auth_cfg["app_id"], "appsecret": auth_cfg["app_secret"],
                "lcid": int(self.options["lcid"])}

        def login(http: HttpClient) -> dict[str, str]:
            resp = http.post(LOGIN_PATH, json=body, authenticate=False, check_body=check_login)
            # the cookie persists on the session; the header covers cookie-less proxies
            return {SESSION_HEADER: str(resp.data["KDSVCSessionId"])}

        return SessionLogin(login, secrets=[str(auth_cfg["app_secret"])])

    def check_body(self, resp: HttpResponse) -> None:
        status = response_status(resp.data)
        if status is None or status.get("IsSuccess", True):
            return
        message = error_text(status.get("Errors"))
        if status.get("MsgCode") == 1 or any(h in message.lower() for h in SESSION_LOST_HINTS):
            raise resp.error(f"session lost: {message}", AuthError)  # re-login, retry once
        if isinstance(resp.data, list):
            raise resp.error(f"query failed: {message}")
        # a write's per-document errors are read by push()

    # -- reading -------------------------------------------------------------------------------

    def page_size(self, spec: StreamSpec) -> int:
        return max(1, min(MAX_LIMIT, super().page_size(spec)))

    def since_filter(self, spec: StreamSpec, since: datetime) -> dict[str, Any]:
        modified = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")  # floor: only widens
        return {"FilterString": f"FModifyDate>='{modified}'"}

    def build_request(self, spec: StreamSpec, since: datetime | None,
                      paginator: Paginator) -> Request:
        req = super().build_request(spec, since, paginator)
        data = dict(req.json)
        option = data.pop("FilterOption", None)
        clauses = [self.options.get(option) if option else None, data.get("FilterString")]
        data["FilterString"] = " AND ".join(c for c in clauses if c)
        return Request("POST", spec.path, json={"data": data})

    def extract_records(self, spec: StreamSpec, resp: HttpResponse) -> list[dict]:
        keys = spec.params["FieldKeys"].split(",")
        rows = resp.data
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == len(keys)
                                                 for r in rows):
            raise resp.error(f"ExecuteBillQuery on {spec.params['FormId']} did not answer "
                             f"rows of {len(keys)} values")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def read(self, stream: str, cursor: Cursor | None) -> Iterator[Page]:
        pages = super().read(stream, cursor)
        if stream == "orders":
            return group_order_rows(pages, cursor)
        if stream in MASTER_STREAMS and cursor is None:
            return self._not_empty(stream, pages)
        return pages

    def _not_empty(self, stream: str, pages: Iterator[Page]) -> Iterator[Page]:
        first = next(pages)
        if not first.records:
            form = self.streams[stream].params["FormId"]
            raise EmptyResultError(
                self.name, f"{stream}: a full read of {form} returned no rows; Kingdee answers "
                f"[] when the API user lacks query permission on {form}, so this is treated as "
                "an error, not as an empty master")
        yield first
        yield from pages

    # -- push ------------------------------------------------------------------------------------

    def push(self, operation: str, docs: list[dict], recover: bool = False) -> list[PushResult]:
        target = WRITE_TARGETS.get(operation)
        if target is None:
            return super().push(operation, docs, recover)  # ValueError naming what we support
        size = max(1, int(self.options["batch_size"]))
        results: list[PushResult] = []
        for start in range(0, len(docs), size):
            results += self._push_batch(target, docs[start:start + size], recover)
        return results

    def _push_batch(self, target: WriteTarget, docs: list[dict],
                    recover: bool) -> list[PushResult]:
        keys = [str(doc.get("key")) for doc in docs]
        failed: dict[int, str] = {}
        models: dict[int, dict] = {}
        for i, doc in enumerate(docs):
            try:
                models[i] = target.model(doc, self.options)
            except MappingError as err:
                failed[i] = f"{self.name}: {err}"
        bills: dict[str, tuple[str, str]] = {}  # bill_no -> (FID, FDocumentStatus)
        problems: dict[str, str] = {}           # bill_no -> why it is not done
        try:
            self._save_and_audit(target, models, recover, bills, problems, failed)
        except AuthError:
            raise  # every following batch would fail the same way
        except SourceError as err:  # this batch's documents fail; the next batch may pass
            for i in models:
                failed.setdefault(i, str(err))
        results = []
        for i, key in enumerate(keys):
            number = models[i]["FBillNo"] if i in models else None
            if i in failed:
                results.append(PushResult(key, False, error=failed[i]))
            elif number in problems:
                results.append(PushResult(key, False, error=problems[number]))
            elif number in bills and bills[number][1] == "C":
                results.append(PushResult(key, True, remote_id=bills[number][0]))
            else:
                results.append(PushResult(key, False, error=f"{self.name}: bill {number} "
                                          "has no confirmed result"))
        return results

    def _save_and_audit(self, target: WriteTarget, models: dict[int, dict], recover: bool,
                        bills: dict[str, tuple[str, str]], problems: dict[str, str],
                        failed: dict[int, str]) -> None:
        form = target.form
        if recover:
            bills.update(self.find_bills(form, [m["FBillNo"] for m in models.values()]))
        to_save = [i for i, m in models.items() if m["FBillNo"] not in bills]
        duplicates: list[str] = []
        if to_save:
            status = self._write("BatchSave", form, {"Model": [models[i] for i in to_save]})
            for ok in status.get("SuccessEntitys") or []:
                index = _dindex(ok, len(to_save))
                if index is not None:
                    bills[models[to_save[index]]["FBillNo"]] = (str(ok.get("Id")), "A")
            for err in status.get("Errors") or []:
                index = _dindex(err, len(to_save))
                if index is None:
                    continue  # not about one document: reported below as "no result"
                number = models[to_save[index]]["FBillNo"]
                if _is_duplicate(err):
                    duplicates.append(number)  # it exists: a crash after send, or a rerun
                elif number not in bills:
                    failed[to_save[index]] = (f"{self.name}: {form} save of {number} failed: "
                                              f"{error_text([err])}")
            for i in to_save:
                number = models[i]["FBillNo"]
                if i not in failed and number not in bills and number not in duplicates:
                    failed[i] = (f"{self.name}: {form} save of {number} got no result: "
                                 f"{error_text(status.get('Errors'))}")
        if duplicates:
            bills.update(self.find_bills(form, duplicates))
            for number in duplicates:
                if number not in bills:
                    problems[number] = (f"{self.name}: {form} says bill {number} exists, but a "
                                        "query cannot find it (query permission on the form?)")
        for op, from_states, to_state in (("Submit", ("A", "D"), "B"), ("Audit", ("B",), "C")):
            numbers = [n for n, (_, st) in bills.items() if st in from_states
                       and n not in problems]
            if not numbers:
                continue
            status = self._write(op, form, {"Numbers": numbers})
            for ok in status.get("SuccessEntitys") or []:
                index = _dindex(ok, len(numbers))
                if index is not None:
                    bills[numbers[index]] = (bills[numbers[index]][0], to_state)
            for err in status.get("Errors") or []:
                index = _dindex(err, len(numbers))
                if index is not None:
                    number = numbers[index]
                    problems[number] = (f"{self.name}: {form} {number} saved as Id "
                                        f"{bills[number][0]} but {op} failed: {error_text([err])}")

    def _write(self, op: str, form: str, data: dict) -> dict:
        resp = self.http.post(form_path(op), json={"formid": form, "data": data})
        status = response_status(resp.data)
        if status is None:
            raise resp.error(f"{op} on {form}: answer has no Result.ResponseStatus")
        return status

    def find_bills(self, form: str, numbers: list[str]) -> dict[str, tuple[str, str]]:
        """Existing bills by FBillNo -> (FID, FDocumentStatus); the recovery lookup."""
        found: dict[str, tuple[str, str]] = {}
        unique = list(dict.fromkeys(numbers))
        for start in range(0, len(unique), LOOKUP_CHUNK):
            chunk = unique[start:start + LOOKUP_CHUNK]
            data = {"FormId": form, "FieldKeys": "FID,FBillNo,FDocumentStatus",
                    "FilterString": f"FBillNo IN ({','.join(_quote(n) for n in chunk)})",
                    "OrderString": "FID ASC", "TopRowCount": 0, "StartRow": 0,
                    "Limit": MAX_LIMIT}
            rows = self.http.post(QUERY_PATH, json={"data": data}).data
            if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 3
                                                     for r in rows):
                raise ApiError(self.name, f"lookup on {form} did not answer rows of 3 values")
            for fid, number, status in rows:  # one row per entry line: same bill repeated
                found[str(number)] = (str(fid), str(status))
        return found


    # -- compensation (rollback): UnAudit, then Delete -----------------------------------------

    def compensate(self, operation: str, docs: list[dict]) -> list[PushResult]:
        target = WRITE_TARGETS.get(operation)
        if target is None:
            return super().compensate(operation, docs)  # "cannot compensate", nothing sent
        size = max(1, int(self.options["batch_size"]))
        results: list[PushResult] = []
        for start in range(0, len(docs), size):
            results += self._undo_batch(target.form, docs[start:start + size])
        return results

    def _undo_batch(self, form: str, docs: list[dict]) -> list[PushResult]:
        keys = [str(doc.get("key")) for doc in docs]
        numbers: dict[int, str] = {}
        failed: dict[int, str] = {}
        for i, doc in enumerate(docs):
            try:
                numbers[i] = _bill_no(doc)
            except MappingError as err:
                failed[i] = f"{self.name}: {err}"
        unique = list(dict.fromkeys(numbers.values()))
        try:
            found = self.find_bills(form, unique)  # bill_no -> (FID, FDocumentStatus)
            problems = {n: (f"{self.name}: {form} {n} is in status {found[n][1]} (submitted, "
                            "not audited): withdraw the submission in Kingdee first")
                        for n in unique if n in found and found[n][1] not in ("A", "C", "D")}
            problems |= self._set_status("UnAudit", form,
                                         [n for n in unique if n in found and found[n][1] == "C"])
            deletable = [n for n in unique if n in found and n not in problems]
            problems |= self._set_status("Delete", form, deletable)
            # bill_no -> FID, for every bill gone now (or already gone: a rerun after a crash)
            undone: dict[str, str | None] = {n: found[n][0] for n in deletable
                                             if n not in problems}
            for n in unique:
                if n in found:
                    continue
                # The permission trap: a query answers [] without query permission, which must
                # not pass for "deleted already". View tells a missing bill from a hidden one.
                if self._gone(form, n):
                    undone[n] = None
                else:
                    problems[n] = (f"{self.name}: {form} {n} exists but a query cannot see it "
                                   "(query permission on the form?); nothing was undone")
        except AuthError:
            raise
        except SourceError as err:  # this batch fails; what it did is found undone next time
            return [PushResult(key, False, error=str(err)) for key in keys]
        results = []
        for i, key in enumerate(keys):
            number = numbers.get(i)
            if i in failed:
                results.append(PushResult(key, False, error=failed[i]))
            elif number in undone:
                remote = undone[number] or docs[i].get("remote_id")
                results.append(PushResult(key, True, remote_id=None if remote is None else str(remote)))
            else:
                error = problems.get(number) or f"{self.name}: {form} {number} was not undone"
                results.append(PushResult(key, False, error=error))
        return results

    def _gone(self, form: str, number: str) -> bool:
        """True when View says the bill does not exist; False when it exists."""
        status = self._write("View", form, {"Number": number})
        if status.get("IsSuccess", True):
            return False
        message = error_text(status.get("Errors"))
        if any(hint in message.lower() for hint in GONE_HINTS):
            return True
        raise ApiError(self.name, f"View of {form} {number} failed: {message}")

    def _set_status(self, op: str, form: str, numbers: list[str]) -> dict[str, str]:
        """UnAudit or Delete these bills; -> bill_no: why it failed (only the failures)."""
        if not numbers:
            return {}
        status = self._write(op, form, {"Numbers": numbers})
        done = {numbers[i] for ok in status.get("SuccessEntitys") or []
                if (i := _dindex(ok, len(numbers))) is not None}
        problems: dict[str, str] = {}
        for err in status.get("Errors") or []:
            index = _dindex(err, len(numbers))
            if index is not None:
                problems[numbers[index]] = (f"{self.name}: {form} {numbers[index]}: {op} failed: "
                                            f"{error_text([err])}")
        for n in numbers:
            if n not in done and n not in problems:
                problems[n] = (f"{self.name}: {form} {n}: {op} got no result: "
                               f"{error_text(status.get('Errors'))}")
        return problems


def check_login(resp: HttpResponse) -> None:
    """LoginByAppSecret answers HTTP 200 either way; only LoginResultType 1 is a session."""
    data = resp.data if isinstance(resp.data, dict) else {}
    if data.get("LoginResultType") != 1 or not data.get("KDSVCSessionId"):
        reason = _text(data.get("Message")) or f"LoginResultType {data.get('LoginResultType')}"
        raise resp.error(f"login refused: {reason}", AuthError)
