"""Yonyou U8+ OpenAPI (用友U8) connector: ERP sales orders, customers, stock and receivables in;
sales orders out.

cfg: ``base_url`` (default https://api.yonyouup.com), ``auth: {from_account, to_account, app_key,
app_secret}``, ``rate_limit`` (none documented: default off), ``lookback_seconds``, ``options``:

- ``ds_sequence`` (1): the data source (account set) every call names;
- ``rows_per_page`` (or ``page_size``; 100): the page size sent as ``rows_per_page``;
- ``<stream>_since_param``: the modification-time filter of each stream — ``orders``, ``stock``,
  ``receivables``: ``modifytime_begin``; ``customers``: ``ModifyDate_begin``. "" sends none (every
  read is then a full read, still correct as loads upsert);
- ``since_format`` ("%Y-%m-%d %H:%M:%S"): how the filter value is written; "%Y-%m-%d" for a
  filter that takes dates (flooring to the day only widens the window);
- ``<stream>_params`` ({}): static query parameters of a stream, e.g. ``receivables_params:
  {"date_begin": "2026-01-01"}`` (the documented bill-date window of oughtreceivelist);
- ``master_streams`` (["customers", "stock"]): streams that are never legitimately empty;
- ``ref_field`` ("define11"): the custom header item that carries orderhub's order number on the
  sales orders it pushes; orders carrying it are left out of the ``orders`` stream (they are
  ours, not the ERP's own orders). "" turns both off;
- ``token_error_codes`` (["30001"]), ``duplicate_error_codes`` (["40003"]),
  ``verified_error_codes`` (["40005"]): errcodes meaning "token invalid/expired", "order code
  exists", "already verified"; errmsg hints (token / 重复 / 已审核 ...) are recognised as well;
- ``token_refresh_seconds`` (300): refresh the token this long before it expires (at most a
  tenth of its life);
- ``currency_names`` ({}): extra U8 currency names -> ISO codes (人民币, 美元, 欧元, 港币, 日元
  are known).

Token: ``GET /system/token?from_account=&app_key=&app_secret=`` -> ``token.id`` with
``expiresIn`` (7200 s). Fetched on first use, cached with its expiry, fetched again shortly before
it expires, and once more when a call answers a token error (then that call is retried once).
A refused token call is an AuthError naming the source; app_secret and the token are redacted.
Every call carries from_account, to_account, app_key, token and ds_sequence as query parameters.

Results are HTTP 200 with ``errcode``: "0" OK; "20002" no data -> zero rows (logged), NOT an
error — except that a full (cursor-less) read of a master stream that finds no row at all raises
EmptyResultError: U8 answers 20002 just the same when the API user lacks permission on the data
or the data source is wrong, and a silent empty master would wipe nothing but hide everything.
Any other errcode is an ApiError carrying errcode and errmsg.

Reading: ``/api/{saleorderlist,customer,inventory,oughtreceivelist}/batch_get`` paged by
``page_index`` (from 1) / ``rows_per_page`` until ``page_count``; a page that echoes another
page_index, or repeats the previous page's rows, raises PaginationError. Incremental reads send
``<since_param>=<cursor - lookback>`` on every page. The documented list APIs say nothing of
their order, and the sandbox returns id order, so the cursor is NOT advanced mid-stream: only
the last page carries it (a crash mid-read rereads the window — safe, as loads upsert).
Datetimes carry no zone: read and written as UTC (set U8's server clock to UTC or extend this
connector with a site time zone, as for Kingdee).

Push ``sales_order`` (bill_no becomes the U8 order ``code``): one ``GET /system/tradeid`` per
document, ``POST /api/saleorder/add?tradeid=`` with ``{"saleorder": {..., "entry": [...]}}``,
then ``POST /api/saleorder/verify``. Retries of the add (5xx, timeouts) resend the same tradeid,
which U8 documents as the guard against double submission. With ``recover`` the order is first
looked up by code (``GET /api/saleorder/get?id=<code>``) and created only when missing; a
"duplicate code" answer on add (a resend after a crash) is also resolved by that lookup. An
order found by code must carry our reference in ``ref_field`` (else it is an ERP order that only
shares the number, and the document fails). An order found unverified is verified. The remote
id is the order code.

(unverified) — shapes the public doc does not give, chosen as plausible and configurable: the
modification filters above, the error codes above, ``saleorder/get?id=`` taking the order code,
``verify`` taking ``{"saleorder": {"code"}}``, record fields ``modifytime``, ``cuscode``,
``currency_name``, ``define10`` (ship region), ``verifier``, entry ``inventorycode``,
``quantity``, ``originaltaxedprice``; customers ``domain_code``/``sort_code``/``credit_line``;
stock ``warehousecode``/``wh_region``; receivables ``originalamount``/``originalbalance``/
``duedate``/``socode``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from connectors.base import (
    Connector,
    Cursor,
    MappingError,
    Page,
    Request,
    StreamSpec,
    dig,
    parse_datetime,
    parse_decimal,
    parse_text,
)
from connectors.http import (
    ApiError,
    Auth,
    AuthError,
    EmptyResultError,
    HttpClient,
    HttpResponse,
    PaginationError,
)
from connectors.paging import Paginator
from warehouse.money import MoneyError, quantize

log = logging.getLogger("orderhub.connectors.u8")

TOKEN_PATH = "/system/token"
TRADEID_PATH = "/system/tradeid"
ORDER_GET_PATH = "/api/saleorder/get"
ORDER_ADD_PATH = "/api/saleorder/add"
ORDER_VERIFY_PATH = "/api/saleorder/verify"

OK = "0"
NO_DATA = "20002"
DEFAULT_TOKEN_LIFE = 7200  # seconds, as documented, when an answer omits expiresIn
SHIP_REGION_FIELD = "define10"  # (unverified) custom header item holding the ship region
CURRENCY_CODES = {"人民币": "CNY", "美元": "USD", "欧元": "EUR", "港币": "HKD", "日元": "JPY"}
TOKEN_HINTS = ("token",)
DUPLICATE_HINTS = ("重复", "已存在", "已经存在", "duplicate", "already exist")
VERIFIED_HINTS = ("已审核", "already verified", "already approved")


class U8Error(ApiError):
    """An errcode other than "0"/"20002" inside an HTTP 200 answer."""

    errcode: str | None = None


# -- mapping (pure) ----------------------------------------------------------------------------


def _updated(rec: dict) -> datetime:
    updated_at = parse_datetime(rec.get("modifytime"), "modifytime")  # zone-less: UTC
    if updated_at is None:
        raise MappingError("modifytime: missing")
    return updated_at


def _required_decimal(rec: dict, key: str) -> Decimal:
    value = parse_decimal(rec.get(key), key)
    if value is None:
        raise MappingError(f"{key}: missing")
    return value


def currency_code(name: Any, currencies: Mapping[str, str] = CURRENCY_CODES) -> str | None:
    """U8 keeps a currency by its name (人民币); an unknown name is passed on as it is."""
    text = parse_text(name)
    return currencies.get(text, text) if text else None


def _date(value: Any, field: str) -> Any:
    dt = parse_datetime(value, field)
    return dt.date() if dt else None


def map_order(rec: dict, currencies: Mapping[str, str] = CURRENCY_CODES) -> dict:
    """A saleorderlist record (header + ``entry`` lines) -> canonical ``orders``."""
    entry = rec.get("entry") or []
    if not isinstance(entry, list):
        raise MappingError(f"entry: expected a list of lines, got {type(entry).__name__}")
    lines = [
        {
            "line_no": n,
            "sku": parse_text(ln.get("inventorycode")),
            "qty": parse_decimal(ln.get("quantity"), f"entry[{n}].quantity"),
            "unit_price": parse_decimal(ln.get("originaltaxedprice"),
                                        f"entry[{n}].originaltaxedprice"),
        }
        for n, ln in enumerate(entry, start=1)
    ]
    return {
        "external_id": str(rec["id"]),
        "order_no": parse_text(rec.get("code")),
        "customer_code": parse_text(rec.get("cuscode")),
        "customer_email": None,  # ERP orders name the customer by code
        "ordered_at": parse_datetime(rec.get("date"), "date"),  # a voucher date: midnight UTC
        "updated_at": _updated(rec),
        "currency": currency_code(rec.get("currency_name"), currencies),
        "total": parse_decimal(rec.get("sum"), "sum"),
        "ship_region": parse_text(rec.get(SHIP_REGION_FIELD)),
        "lines": lines,
    }


def map_customer(rec: dict, currencies: Mapping[str, str] = CURRENCY_CODES) -> dict:
    """A customer archive record -> canonical ``customers`` (the code is the key)."""
    code = parse_text(rec.get("code"))
    if code is None:
        raise MappingError("code: missing")
    return {
        "external_id": code,
        "code": code,
        "name": parse_text(rec.get("name")),
        "email": parse_text(rec.get("email")),
        "region": parse_text(rec.get("domain_code")),
        "customer_group": parse_text(rec.get("sort_code")),
        "credit_limit": parse_decimal(rec.get("credit_line"), "credit_line"),
        "currency": currency_code(rec.get("currency_name"), currencies),
        "updated_at": _updated(rec),
    }


def map_stock(rec: dict, currencies: Mapping[str, str] = CURRENCY_CODES) -> dict:
    """An inventory (current stock) row -> canonical ``stock``."""
    return {
        "external_id": str(rec["id"]),
        "sku": parse_text(rec.get("inventorycode")),
        "warehouse": parse_text(rec.get("warehousecode")),
        "region": parse_text(rec.get("wh_region")),
        "qty": _required_decimal(rec, "quantity"),
        "updated_at": _updated(rec),
    }


def map_receivable(rec: dict, currencies: Mapping[str, str] = CURRENCY_CODES) -> dict:
    """An oughtreceivelist record (应收单) -> canonical ``receivables``."""
    return {
        "external_id": str(rec["id"]),
        "invoice_no": parse_text(rec.get("code")),
        "order_ref": parse_text(rec.get("socode")),
        "customer_code": parse_text(rec.get("cuscode")),
        "currency": currency_code(rec.get("currency_name"), currencies),
        "amount": _required_decimal(rec, "originalamount"),
        "open_amount": parse_decimal(rec.get("originalbalance"), "originalbalance"),
        "issued_at": parse_datetime(rec.get("date"), "date"),
        "due_date": _date(rec.get("duedate"), "duedate"),
        "updated_at": _updated(rec),
    }


# -- push documents -> U8 bodies (pure) --------------------------------------------------------

def sales_order_body(doc: dict, ref_field: str | None = "define11",
                     currencies: Mapping[str, str] = CURRENCY_CODES) -> dict:
    """outbox ``sales_order`` doc -> the ``saleorder`` object of saleorder/add."""
    code = parse_text(doc.get("bill_no"))
    if not code:
        raise MappingError("bill_no: missing")
    lines = doc.get("lines") or []
    if not lines:
        raise MappingError("lines: a sales order needs at least one line")
    currency = parse_text(doc.get("currency"))
    names = {iso: name for name, iso in currencies.items()}
    entry = []
    for n, ln in enumerate(lines, start=1):
        qty = parse_decimal(ln.get("qty"), f"lines[{n}].qty")
        price = parse_decimal(ln.get("unit_price"), f"lines[{n}].unit_price")
        if qty is None or price is None:
            raise MappingError(f"lines[{n}]: qty and unit_price are required")
        entry.append({"rowno": n, "inventorycode": parse_text(ln.get("sku")), "quantity": qty,
                      "originaltaxedprice": price,
                      "originalsum": _line_sum(qty * price, currency)})
    ordered = parse_datetime(doc.get("ordered_at"), "ordered_at")
    body: dict[str, Any] = {
        "code": code,
        "date": ordered.date().isoformat() if ordered else None,
        "cuscode": parse_text(doc.get("customer_code")),
        "currency_name": names.get(currency, currency) if currency else None,
        "sum": parse_decimal(doc.get("total"), "total"),
        "memo": f"orderhub {doc.get('source') or ''} {doc.get('order_no') or ''}".strip(),
        "entry": entry,
    }
    if ref_field:
        body[ref_field] = parse_text(doc.get("order_no"))  # marks it ours: kept out of `orders`
    return body


def _line_sum(amount: Decimal, currency: str | None) -> Decimal:
    """Round a line total at the edge, in the currency's own decimals (when it is ISO)."""
    try:
        return quantize(amount, currency or "")
    except MoneyError:
        return amount


# -- paging ------------------------------------------------------------------------------------

class PageIndexPaginator(Paginator):
    """``page_index`` from 1 up to the answer's ``page_count`` (or while pages are full).

    Page numbers never repeat by construction, so the loop guard here is about the *answer*: a
    page that echoes another page_index, or the same rows as the page before, means the API
    ignores page_index and would otherwise be read forever (or double-counted).
    """

    def __init__(self, page_size: int, *, param: str = "page_index", id_field: str = "id",
                 start: int = 1, **kw: Any) -> None:
        super().__init__(page_size, start=start, **kw)
        self.param = param
        self.id_field = id_field
        self._previous: tuple[str, ...] = ()

    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        current = int(self.token)
        info = body if isinstance(body, Mapping) else {}
        echoed = _int_or_none(info.get("page_index"))
        if echoed is not None and echoed != current:
            raise PaginationError(self.source, f"asked for page_index {current}, the answer is "
                                  f"page {echoed}; stopping instead of looping")
        ids = tuple(str(r.get(self.id_field)) for r in records if isinstance(r, Mapping))
        if ids and ids == self._previous:
            raise PaginationError(self.source, f"page_index {current} repeated the rows of the "
                                  "page before; the API ignores page_index")
        self._previous = ids
        page_count = _int_or_none(info.get("page_count"))
        if page_count is not None:
            return current + 1 if current < page_count else None
        return current + 1 if len(records) >= self.page_size else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


# -- auth --------------------------------------------------------------------------------------

class U8Token(Auth):
    """The U8 token: fetched once, cached with its expiry, refreshed before it runs out, and
    forgotten on a token error (the client then fetches a new one and retries once)."""

    def __init__(self, auth: Mapping[str, Any], ds_sequence: Any, refresh_seconds: float,
                 check: Callable[[HttpResponse], None]) -> None:
        self.from_account = str(auth["from_account"])
        self.to_account = str(auth["to_account"])
        self.app_key = str(auth["app_key"])
        self.app_secret = str(auth["app_secret"])
        self.ds_sequence = str(ds_sequence)
        self.refresh_seconds = refresh_seconds
        self.check = check
        self.clock: Callable[[], float] = time.monotonic  # tests move time with their own
        self.token: str | None = None
        self.expires_at = 0.0
        self.refresh_at = 0.0
        self.fetches = 0
        self._lock = threading.Lock()

    def secrets(self) -> list[str]:
        return [self.app_secret] + ([self.token] if self.token else [])

    def prepare(self, client: HttpClient) -> None:
        with self._lock:
            if self.token is None or self.clock() >= self.refresh_at:
                self._fetch(client)

    def _fetch(self, client: HttpClient) -> None:
        params = {"from_account": self.from_account, "app_key": self.app_key,
                  "app_secret": self.app_secret}
        resp = client.get(TOKEN_PATH, params=params, authenticate=False, check_body=self.check)
        token = dig(resp.data, ("token", "id"))
        if not token:
            raise resp.error("token answer has no token.id", AuthError)
        life = _int_or_none(dig(resp.data, ("token", "expiresIn"))) or DEFAULT_TOKEN_LIFE
        now = self.clock()
        self.token = str(token)
        client.redact.add([self.token])
        self.expires_at = now + life
        # refresh early, but never more than a tenth of the life early (short test tokens)
        self.refresh_at = self.expires_at - min(self.refresh_seconds, life / 10)
        self.fetches += 1
        log.debug("%s: U8 token fetched, valid %ss", client.source, life)

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        params.update({"from_account": self.from_account, "to_account": self.to_account,
                       "app_key": self.app_key, "token": self.token or "",
                       "ds_sequence": self.ds_sequence})

    def on_auth_failure(self, client: HttpClient) -> bool:
        with self._lock:
            self.token = None
        return True


# -- the connector -----------------------------------------------------------------------------

def _list_stream(kind: str, api: str, id_field: str, mapper: Any) -> StreamSpec:
    return StreamSpec(
        kind=kind,
        path=f"/api/{api}/batch_get",
        records_path=(api,),
        id_field=id_field,
        updated_field="modifytime",
        paginator=partial(PageIndexPaginator, id_field=id_field),
        page_size=100,
        page_size_param="rows_per_page",
        cursor_per_page=False,  # no documented order by modification time: advance at the end
        mapper=mapper,
    )


class U8Connector(Connector):
    system = "u8"
    default_base_url = "https://api.yonyouup.com"
    operations = {"sales_order"}
    default_options = {
        "ds_sequence": 1,
        "since_format": "%Y-%m-%d %H:%M:%S",
        "orders_since_param": "modifytime_begin",
        "customers_since_param": "ModifyDate_begin",
        "stock_since_param": "modifytime_begin",
        "receivables_since_param": "modifytime_begin",
        "master_streams": ["customers", "stock"],
        "ref_field": "define11",
        "token_error_codes": ["30001"],
        "duplicate_error_codes": ["40003"],
        "verified_error_codes": ["40005"],
        "token_refresh_seconds": 300,
        "currency_names": {},
    }

    streams = {
        "orders": _list_stream("orders", "saleorderlist", "id", map_order),
        "customers": _list_stream("customers", "customer", "code", map_customer),
        "stock": _list_stream("stock", "inventory", "id", map_stock),
        "receivables": _list_stream("receivables", "oughtreceivelist", "id", map_receivable),
    }

    def __init__(self, name: str, cfg: dict) -> None:
        super().__init__(name, cfg)
        self.currencies = {**CURRENCY_CODES, **(self.options.get("currency_names") or {})}

    # -- auth and errors -------------------------------------------------------------------------

    def make_auth(self, auth_cfg: dict) -> Auth:
        missing = [k for k in ("from_account", "to_account", "app_key", "app_secret")
                   if not auth_cfg.get(k)]
        if missing:
            raise ValueError(f"source {self.name!r}: auth needs {', '.join(missing)} for u8")
        self.token_auth = U8Token(auth_cfg, self.options["ds_sequence"],
                                  float(self.options["token_refresh_seconds"]), self.check_token)
        return self.token_auth

    def check_token(self, resp: HttpResponse) -> None:
        """The token call: any errcode but "0" means the credentials were refused."""
        code, message = _errcode(resp.data)
        if code != OK:
            raise resp.error(f"token refused: errcode {code}: {message}", AuthError)

    def check_body(self, resp: HttpResponse) -> None:
        code, message = _errcode(resp.data)
        if code in (None, OK, NO_DATA):
            return  # None: not an errcode answer; extract_records says what is wrong with it
        if code in self._codes("token_error_codes") or _hinted(message, TOKEN_HINTS):
            raise resp.error(f"token error: errcode {code}: {message}", AuthError)  # retry once
        err = resp.error(f"errcode {code}: {message}", U8Error)
        err.errcode = code  # type: ignore[attr-defined]
        raise err

    def _codes(self, option: str) -> set[str]:
        return {str(c) for c in self.options.get(option) or []}

    # -- reading -------------------------------------------------------------------------------

    def page_size(self, spec: StreamSpec) -> int:
        return max(1, int(self.options.get("rows_per_page") or self.options.get("page_size")
                          or spec.page_size))

    def since_filter(self, spec: StreamSpec, since: datetime) -> dict[str, Any]:
        param = self.options.get(f"{spec.kind}_since_param")
        if not param:
            return {}  # no server-side filter configured: a full read, upserted
        # strftime drops sub-second digits: a floor, which only widens the window
        return {param: since.astimezone(UTC).strftime(self.options["since_format"])}

    def build_request(self, spec: StreamSpec, since: datetime | None,
                      paginator: Paginator) -> Request:
        req = super().build_request(spec, since, paginator)
        extra = self.options.get(f"{spec.kind}_params") or {}
        return Request(req.method, req.path, params={**extra, **(req.params or {})})

    def extract_records(self, spec: StreamSpec, resp: HttpResponse) -> list[dict]:
        code, message = _errcode(resp.data)
        if code is None:
            raise resp.error("answer is not a U8 result (no errcode)")
        if code == NO_DATA:
            log.info("%s: %s answered errcode 20002 (%s): read as zero rows", self.name,
                     spec.path, message or "no data")
            return []
        return super().extract_records(spec, resp)

    def map(self, stream: str, payload: dict) -> dict:
        spec = self._spec(stream)
        assert spec.mapper is not None
        return spec.mapper(payload, self.currencies)  # type: ignore[call-arg]

    def read(self, stream: str, cursor: Cursor | None) -> Iterator[Page]:
        pages = super().read(stream, cursor)
        if cursor is None and stream in set(self.options.get("master_streams") or ()):
            pages = self._not_empty(stream, pages)
        ref_field = self.options.get("ref_field")
        if stream == "orders" and ref_field:
            pages = _without_own_orders(pages, ref_field)
        return pages

    def _not_empty(self, stream: str, pages: Iterator[Page]) -> Iterator[Page]:
        first = next(pages)
        if not first.records:
            path = self.streams[stream].path
            raise EmptyResultError(
                self.name, f"{stream}: a full read of {path} found no rows (errcode 20002 or an "
                "empty list); U8 answers so when the API user lacks permission on the data or "
                "ds_sequence names the wrong data source, so this is an error, not an empty "
                "master")
        yield first
        yield from pages

    # -- push ------------------------------------------------------------------------------------

    def push_sales_order(self, doc: dict, recover: bool) -> str:
        body = sales_order_body(doc, self.options.get("ref_field"), self.currencies)
        code = body["code"]
        found = self.find_sales_order(code) if recover else None
        if found is None:
            found = self._add_sales_order(code, body)
        self._check_ours(found, body)
        if not parse_text(found.get("verifier")):
            self._verify_sales_order(code)
        return code

    def _add_sales_order(self, code: str, body: dict) -> dict:
        tradeid = self.new_tradeid()
        try:
            # retries (5xx, timeouts) resend this same tradeid: U8's own double-submit guard
            self.http.post(ORDER_ADD_PATH, params={"tradeid": tradeid}, json={"saleorder": body})
        except U8Error as err:
            if not self._is_duplicate(err):
                raise
            # it exists: a resend after a crash between add and mark_done, or a rerun
            log.info("%s: sales order %s exists already; looking it up", self.name, code)
            found = self.find_sales_order(code)
            if found is None:
                raise ApiError(self.name, f"sales order {code}: add says the code exists, but "
                               "saleorder/get finds none (permission on sales orders?)") from None
            return found
        return {"code": code, "verifier": None}  # just created (ours): not verified yet

    def _check_ours(self, found: dict, body: dict) -> None:
        """An order found by code must carry our reference: a U8 order that merely shares the
        number is someone else's, and reporting it as ours would lose this document."""
        ref_field = self.options.get("ref_field")
        if not ref_field or ref_field not in found:
            return  # no marker configured (or not returned): the code alone has to do
        if parse_text(found.get(ref_field)) != parse_text(body.get(ref_field)):
            raise ApiError(self.name, f"sales order {body['code']} exists in U8 but belongs to "
                           f"another order ({ref_field}={found.get(ref_field)!r}, expected "
                           f"{body.get(ref_field)!r}); not reported as pushed")

    def _verify_sales_order(self, code: str) -> None:
        try:
            self.http.post(ORDER_VERIFY_PATH, json={"saleorder": {"code": code}})
        except U8Error as err:
            if err.errcode in self._codes("verified_error_codes") or _hinted(
                    err.message, VERIFIED_HINTS):
                return  # verified meanwhile: the goal is reached
            failed = U8Error(self.name, f"sales order {code} was added but not verified: "
                             f"{err.message}", url=err.url, method=err.method, status=err.status)
            failed.errcode = err.errcode
            raise failed from None

    def _is_duplicate(self, err: U8Error) -> bool:
        return err.errcode in self._codes("duplicate_error_codes") or _hinted(
            err.message, DUPLICATE_HINTS)

    def new_tradeid(self) -> str:
        """A one-shot id from /system/tradeid: U8's guard against double submission."""
        resp = self.http.get(TRADEID_PATH)
        trade = dig(resp.data, ("trade", "id"))
        if not trade:
            raise resp.error("tradeid answer has no trade.id")
        return str(trade)

    def find_sales_order(self, code: str) -> dict | None:
        """The existing order by code, or None (20002): the recovery lookup."""
        resp = self.http.get(ORDER_GET_PATH, params={"id": code})
        code_, _ = _errcode(resp.data)
        if code_ == NO_DATA:
            return None
        found = dig(resp.data, ("saleorder",))
        if not isinstance(found, dict) or parse_text(found.get("code")) != code:
            raise resp.error(f"saleorder/get for {code} did not answer that order")
        return found


def _errcode(data: Any) -> tuple[str | None, str]:
    if not isinstance(data, Mapping) or "errcode" not in data:
        return None, ""
    return str(data.get("errcode")).strip(), " ".join(str(data.get("errmsg") or "").split())


def _hinted(message: str, hints: tuple[str, ...]) -> bool:
    text = (message or "").lower()
    return any(h in text for h in hints)


def _without_own_orders(pages: Iterator[Page], ref_field: str) -> Iterator[Page]:
    """Drop the sales orders orderhub pushed itself; cursors stay (they are stream positions)."""
    for page in pages:
        yield Page([r for r in page.records if not parse_text(r.payload.get(ref_field))], page.cursor)

