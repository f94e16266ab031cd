"""Fxiaoke (纷享销客) CRM open API connector: accounts, sales orders and invoice applications in;
sales orders out.

cfg: ``base_url`` (default https://open.fxiaoke.com), ``auth: {app_id, app_secret,
permanent_code, ea, user_id}``, ``options: {page_size: 100 (max 100), max_offset: 10000,
exclude_pushed_orders: true}``, ``rate_limit`` (req/s; default 5 = the documented 100 calls per
20 s, as 0.2 s spacing; 0 turns the client-side limit off), ``lookback_seconds``, ``retry``.

Streams: ``customers`` (AccountObj), ``orders`` (SalesOrderObj, each with its
SalesOrderProductObj lines), ``receivables`` (InvoiceApplicationObj). Push: ``sales_order``.

Token: POST /oauth2.0/token ``{appId, appSecret, permanentCode, grantType: "app_secret"}``. Token
calls are limited to 10 a minute, and flows build a connector per stream, so the token is cached
per process (keyed by base_url and credentials, see ``reset_token_cache``), reused until shortly
before ``expiresIn`` runs out, and dropped when a call answers errorCode 20016 — that call is then
retried once with a fresh token (the HttpClient's AuthError -> ``on_auth_failure`` hook). Every
call carries ``Authorization: Bearer``, ``x-fs-ea``, ``x-fs-userid`` and a fresh
``?thirdTraceId=<uuid4>`` (per HTTP attempt: a retry is a new trace).

Errors: every answer is HTTP 200 with ``errorCode``/``errorMessage``. ``check_body`` maps 20016 to
AuthError (refresh + retry once), 30001/30002 (too many calls) to RateLimitError (retried with
backoff like a 429), 30003 (daily quota) and everything else to ApiError "errorCode N: message".

Reading: POST /cgi/crm/v2/data/query ``{dataObjectApiName, search_query_info: {limit, offset,
filters, orders}}``; records at ``data.dataList``; times are epoch milliseconds. An incremental
read filters ``last_modified_time GTE <cursor - lookback>`` (floored to the millisecond) and
orders by ``last_modified_time, _id`` ascending.

Paging past the offset limit — how the cursor stays correct. Offsets only reach ``max_offset``
(10000); after that the API wants keyset paging on ``_id GT last``. But ``_id`` order is not the
(last_modified_time, _id) order we read in, so ``_id GT <last id read>`` alone would skip every
unread row with a smaller id and reread every read row with a larger one. Filters are AND-only,
so the composite keyset "(time, id) > (t, id)" is sent as two steps when a window of offsets is
used up at row (t, id):

1. the tie group: ``last_modified_time EQ t`` and ``_id GT id``, ordered by ``_id`` — keyset on
   ``_id``, repeated with the new last ``_id`` while pages are full, so any number of rows
   sharing one millisecond is read without an offset;
2. then ``last_modified_time GT t`` ordered by (time, _id) with offsets from 0 again, i.e. a new
   window of up to ``max_offset`` rows, and so on.

Rows therefore arrive in strict (last_modified_time, _id) order across every switch, none read
twice, none skipped, and every page carries the composite cursor of its last row. The connector
never asks for a row past position ``max_offset`` (``offset + limit <= max_offset``), which holds
under either reading of the documented limit. ``max_offset: 0`` gives pure keyset paging (one
extra call per page when no ties), immune to the offset hazard below.

Known hazard of offset paging (any offset API): a record edited *during* a read moves to the end
of the (time, _id) order, shifting not-yet-read rows one position down, so one row can be skipped
in that read; the lookback window does not cover it if the row is older. Reads are short and the
next edit of the row brings it back, but for a tenant with heavy concurrent editing set
``max_offset`` to 0.

Order lines: the query API returns a master record without its details, so after each page of
orders one more query (``order_id IN [page ids]``, keyset on ``_id``) fetches their
SalesOrderProductObj rows, attached to the payload under ``"SalesOrderProductObj"`` in ``_id``
(creation) order. ``exclude_pushed_orders`` adds ``bill_no__c IS`` (empty), so the sales orders
orderhub itself created are not read back in as new orders.

Push ``sales_order``: POST /cgi/crm/v2/data/create ``{dataObjectApiName: "SalesOrderObj",
object_data, details: {SalesOrderProductObj: [...]}, triggerApprovalFlow: false, triggerWorkFlow:
false}`` (orderhub's orders are already validated; an approval flow would leave them pending).
Before creating, one query per 100 docs resolves customer codes (AccountObj.account_no) and skus
(ProductObj.product_code) to record ids, and looks for orders already carrying the doc's
``bill_no`` in ``bill_no__c`` (always, not only with ``recover``: it is one query per 100 docs).
A create is sent without blind retries: a refusal (30002/429) is waited out and resent; an
ambiguous failure (5xx, timeout) is followed by a lookup of the bill_no, and resent only when the
order is not there. So a doc is created at most once.

(unverified) — plausible shapes, kept in the constants below: the token answer field
(``corpAccessToken``; ``accessToken`` is accepted too) and ``expiresIn``; auth by headers (the
classic v2 API puts corpAccessToken/corpId/currentOpenUserId in the body and wraps it in
``data``); error codes other than 20016/30002/30003; operators ``IN``/``IS``; field values sent as
numbers for times; numbers and money arriving as decimal strings; the field api names: AccountObj
``account_no``, ``email``, ``mc_currency`` and custom ``region__c``, ``customer_group__c``,
``credit_limit__c``; SalesOrderObj ``name`` (order number), ``order_time``, ``order_amount``,
``mc_currency``, custom ``customer_code__c`` (a text or quote field holding the account's code),
``ship_region__c``, ``bill_no__c``; SalesOrderProductObj ``order_id``, ``product_id``,
``quantity``, ``sales_price``, custom ``product_code__c``; InvoiceApplicationObj ``name``,
``order_id__r`` (the order's number), ``invoice_applied_amount``, ``invoice_date``, custom
``customer_code__c``, ``open_amount__c`` and ``due_date__c`` (a date: ms of midnight China time);
the create body's ``details`` beside ``object_data``.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
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
    parse_datetime,
    parse_decimal,
    parse_text,
)
from connectors.http import (
    ApiError,
    Auth,
    AuthError,
    HttpClient,
    HttpResponse,
    PaginationError,
    RateLimitError,
    SourceError,
    TransientError,
)
from connectors.paging import KeysetPaginator, Paginator

TOKEN_PATH = "/oauth2.0/token"
QUERY_PATH = "/cgi/crm/v2/data/query"
CREATE_PATH = "/cgi/crm/v2/data/create"
MAX_LIMIT = 100
MAX_OFFSET = 10_000
DEFAULT_TOKEN_TTL = 7200

ERR_TOKEN_EXPIRED = 20016
RATE_CODES = frozenset({30001, 30002})  # token calls / calls per 20 s: wait and resend
ERR_DAILY_QUOTA = 30003

TIME = "last_modified_time"
ID = "_id"
ACCOUNTS, PRODUCTS, ORDERS, LINES, INVOICES = (
    "AccountObj", "ProductObj", "SalesOrderObj", "SalesOrderProductObj", "InvoiceApplicationObj")
LINE_ORDER = "order_id"
BILL_NO = "bill_no__c"
ACCOUNT_CODE = "account_no"
PRODUCT_CODE = "product_code"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CST = timezone(timedelta(hours=8))  # date fields hold midnight China Standard Time
_MS_TEXT = re.compile(r"-?\d+")

_now: Callable[[], float] = time.monotonic  # the token clock (tests move it)


# -- time and filters -------------------------------------------------------------------------

def to_ms(dt: datetime) -> int:
    """Aware datetime -> epoch milliseconds, floored (a since filter only ever widens)."""
    return (dt - EPOCH) // timedelta(milliseconds=1)


def parse_ms(value: Any, field: str) -> datetime | None:
    """Epoch milliseconds (int, digit text, integral Decimal) -> aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MappingError(f"{field}: expected epoch milliseconds, got {value!r}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        ms = int(value)
    elif isinstance(value, str) and _MS_TEXT.fullmatch(value.strip()):
        ms = int(value.strip())
    else:
        raise MappingError(f"{field}: not epoch milliseconds: {value!r}")
    try:
        return EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise MappingError(f"{field}: epoch milliseconds out of range: {value!r}") from None


def parse_day(value: Any, field: str) -> date | None:
    """A date field (ms of midnight China time) -> date."""
    when = parse_ms(value, field)
    return when.astimezone(CST).date() if when else None


def flt(field: str, operator: str, *values: Any) -> dict[str, Any]:
    return {"field_name": field, "operator": operator, "field_values": list(values)}


def asc(*fields: str) -> list[dict[str, Any]]:
    return [{"fieldName": f, "isAsc": True} for f in fields]


# -- mapping (pure) ----------------------------------------------------------------------------


def _header(rec: dict) -> tuple[str, datetime]:
    if not rec.get(ID):
        raise MappingError("_id: missing")
    updated_at = parse_ms(rec.get(TIME), TIME)
    if updated_at is None:
        raise MappingError(f"{TIME}: missing")
    return str(rec[ID]), updated_at


def map_customer(rec: dict) -> dict:
    """AccountObj -> canonical ``customers``."""
    external_id, updated_at = _header(rec)
    return {
        "external_id": external_id,
        "code": parse_text(rec.get(ACCOUNT_CODE)),
        "name": parse_text(rec.get("name")),
        "email": parse_text(rec.get("email")),
        "region": parse_text(rec.get("region__c")),
        "customer_group": parse_text(rec.get("customer_group__c")),
        "credit_limit": parse_decimal(rec.get("credit_limit__c"), "credit_limit__c"),
        "currency": parse_text(rec.get("mc_currency")),
        "updated_at": updated_at,
    }


def map_order(rec: dict) -> dict:
    """SalesOrderObj with its attached SalesOrderProductObj rows -> canonical ``orders``."""
    external_id, updated_at = _header(rec)
    if LINES not in rec:  # never read as "an order without lines"
        raise MappingError(f"{LINES}: the order's lines were not read with it")
    rows = rec[LINES]
    if not isinstance(rows, list):
        raise MappingError(f"{LINES}: expected a list, got {type(rows).__name__}")
    lines = [
        {
            "line_no": n,
            "sku": parse_text(row.get("product_code__c")),
            "qty": parse_decimal(row.get("quantity"), f"{LINES}[{n}].quantity"),
            "unit_price": parse_decimal(row.get("sales_price"), f"{LINES}[{n}].sales_price"),
        }
        for n, row in enumerate(rows, start=1)
    ]
    return {
        "external_id": external_id,
        "order_no": parse_text(rec.get("name")),
        "customer_code": parse_text(rec.get("customer_code__c")),
        "customer_email": None,  # CRM orders name the customer by code
        "ordered_at": parse_ms(rec.get("order_time"), "order_time"),
        "updated_at": updated_at,
        "currency": parse_text(rec.get("mc_currency")),
        "total": parse_decimal(rec.get("order_amount"), "order_amount"),
        "ship_region": parse_text(rec.get("ship_region__c")),
        "lines": lines,
    }


def map_receivable(rec: dict) -> dict:
    """InvoiceApplicationObj -> canonical ``receivables``."""
    external_id, updated_at = _header(rec)
    amount = parse_decimal(rec.get("invoice_applied_amount"), "invoice_applied_amount")
    if amount is None:
        raise MappingError("invoice_applied_amount: missing")
    return {
        "external_id": external_id,
        "invoice_no": parse_text(rec.get("name")),
        "order_ref": parse_text(rec.get("order_id__r")),
        "customer_code": parse_text(rec.get("customer_code__c")),
        "currency": parse_text(rec.get("mc_currency")),
        "amount": amount,
        "open_amount": parse_decimal(rec.get("open_amount__c"), "open_amount__c"),
        "issued_at": parse_ms(rec.get("invoice_date"), "invoice_date"),
        "due_date": parse_day(rec.get("due_date__c"), "due_date__c"),
        "updated_at": updated_at,
    }


# -- paging past the offset limit ----------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """Where the next page starts (see the module docstring, "Paging past the offset limit")."""

    offset: int = 0
    after_ms: int | None = None  # None: the read's own since filter; else time GT after_ms
    tie_id: str | None = None    # set: the tie group, time EQ after_ms and _id GT tie_id


class WindowPaginator(Paginator):
    """Offsets up to ``max_offset``, then the composite keyset on (last_modified_time, _id)."""

    param = "search_query_info"

    def __init__(self, page_size: int, *, max_offset: int = MAX_OFFSET, **kw: Any) -> None:
        super().__init__(page_size, start=Window(), **kw)
        self.max_offset = max_offset

    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        w: Window = self.token
        full = len(records) >= self.page_size
        if w.tie_id is not None:
            if full:  # more rows may share this millisecond
                return replace(w, tie_id=self._last(records)[1])
            return Window(after_ms=w.after_ms)  # ties done: later times, offsets from 0
        if not full:
            return None
        if w.offset + 2 * self.page_size <= self.max_offset:  # the next page stays in bounds
            return replace(w, offset=w.offset + self.page_size)
        after_ms, tie_id = self._last(records)
        return Window(after_ms=after_ms, tie_id=tie_id)

    def _last(self, records: list[Any]) -> tuple[int, str]:
        last = records[-1]
        when = parse_ms(last.get(TIME), TIME) if isinstance(last, Mapping) else None
        if when is None or not last.get(ID):
            raise PaginationError(self.source, f"last record has no {TIME}/{ID} to page on")
        return to_ms(when), str(last[ID])


# -- token ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # _now() value after which a new token is fetched


_TOKENS: dict[str, _Token] = {}
_TOKEN_LOCKS: dict[str, threading.Lock] = {}
_TOKENS_LOCK = threading.Lock()


def reset_token_cache() -> None:
    """Forget every cached token (tests)."""
    with _TOKENS_LOCK:
        _TOKENS.clear()


class TokenAuth(Auth):
    """The app token, shared per process by every connector of one tenant (token calls are
    limited to 10 a minute), plus the identity headers and a fresh thirdTraceId per call."""

    def __init__(self, key: str, fetch: Callable[[HttpClient], tuple[str, float]],
                 ea: str, user_id: str, secrets: Iterable[str]) -> None:
        self._key = key
        self._fetch = fetch
        self._ea, self._user_id = ea, user_id
        self._secrets = [s for s in secrets if s]
        self._token: str | None = None
        with _TOKENS_LOCK:
            self._lock = _TOKEN_LOCKS.setdefault(key, threading.Lock())

    def secrets(self) -> list[str]:
        return self._secrets + ([self._token] if self._token else [])

    def prepare(self, client: HttpClient) -> None:
        with self._lock:  # one fetch per tenant at a time; others wait and reuse it
            cached = _TOKENS.get(self._key)
            if cached is None or _now() >= cached.refresh_at:
                value, ttl = self._fetch(client)
                # refresh a little early: a token that expires in flight costs a retry
                cached = _Token(value, _now() + ttl - min(300.0, ttl * 0.1))
                _TOKENS[self._key] = cached
        if cached.value != self._token:
            client.redact.add([cached.value])
            self._token = cached.value

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers["Authorization"] = f"Bearer {self._token}"
        headers["x-fs-ea"] = self._ea
        headers["x-fs-userid"] = self._user_id
        params["thirdTraceId"] = str(uuid.uuid4())

    def on_auth_failure(self, client: HttpClient) -> bool:
        with self._lock:  # drop it unless another connector already replaced it
            cached = _TOKENS.get(self._key)
            if cached is not None and cached.value == self._token:
                del _TOKENS[self._key]
        return True


def _error_code(data: Any) -> int | None:
    """``errorCode`` as an int; None when the body has none (not the API's JSON)."""
    code = data.get("errorCode") if isinstance(data, dict) else None
    try:
        return int(code) if code is not None and not isinstance(code, bool) else None
    except (TypeError, ValueError):
        return None


def _describe(data: dict, code: int) -> str:
    message = " ".join(str(data.get("errorMessage") or "").split())
    return f"errorCode {code}" + (f": {message}" if message else "")


def check_token(resp: HttpResponse) -> None:
    """The token answer: 0 with a token, a rate refusal (retried), or credentials refused."""
    data = resp.data
    code = _error_code(data)
    if code is None:
        raise resp.error("token answer is not the API's JSON", AuthError)
    if code in RATE_CODES:
        raise resp.error(f"token calls rate limited ({_describe(data, code)})", RateLimitError)
    if code != 0:
        raise resp.error(f"token refused ({_describe(data, code)})", AuthError)
    if not (data.get("corpAccessToken") or data.get("accessToken")):
        raise resp.error("token answer carries no corpAccessToken", AuthError)


# -- the connector -----------------------------------------------------------------------------

def _object_stream(kind: str, api: str, mapper: Callable[[dict], dict]) -> StreamSpec:
    return StreamSpec(
        kind=kind,
        method="POST",
        path=QUERY_PATH,
        records_path=("data", "dataList"),
        id_field=ID,
        updated_field=TIME,
        params={"dataObjectApiName": api},
        paginator=partial(WindowPaginator, max_offset=MAX_OFFSET),
        page_size=MAX_LIMIT,
        page_size_param=None,      # build_request writes search_query_info itself
        cursor_per_page=True,      # (time, _id) order holds across every window switch
        mapper=mapper,
    )


@dataclass
class _Lookups:
    """What one push batch resolved up front: code -> AccountObj id, sku -> ProductObj id,
    bill_no -> existing SalesOrderObj id."""

    accounts: dict[str, str]
    products: dict[str, str]
    existing: dict[str, str]


class FxiaokeConnector(Connector):
    system = "fxiaoke"
    default_base_url = "https://open.fxiaoke.com"
    default_rate_limit = 5.0  # documented: 100 calls per 20 s per endpoint -> 0.2 s spacing
    operations = {"sales_order"}
    default_options = {"max_offset": MAX_OFFSET, "exclude_pushed_orders": True}

    streams = {
        "customers": _object_stream("customers", ACCOUNTS, map_customer),
        "orders": _object_stream("orders", ORDERS, map_order),
        "receivables": _object_stream("receivables", INVOICES, map_receivable),
    }

    def __init__(self, name: str, cfg: dict) -> None:
        super().__init__(name, cfg)
        max_offset = int(self.options["max_offset"])
        if max_offset != MAX_OFFSET:  # per-instance declarations with this tenant's limit
            self.streams = {k: replace(s, paginator=partial(WindowPaginator,
                                                            max_offset=max_offset))
                            for k, s in type(self).streams.items()}
        retry = cfg.get("retry") or {}
        self._sleep: Callable[[float], None] = retry.get("sleep", time.sleep)

    # -- auth and errors ----------------------------------------------------------------------

    def make_auth(self, auth_cfg: dict) -> Auth:
        keys = ("app_id", "app_secret", "permanent_code", "ea", "user_id")
        missing = [k for k in keys if not auth_cfg.get(k)]
        if missing:
            raise ValueError(f"source {self.name!r}: auth needs {', '.join(missing)} for fxiaoke")
        app_id, secret, code, ea, user_id = (str(auth_cfg[k]) for k in keys)
        self._user_id = user_id
        body = {"appId": app_id, "appSecret": secret, "permanentCode": code,
                "grantType": "app_secret"}

        def fetch(http: HttpClient) -> tuple[str, float]:
            resp = http.post(TOKEN_PATH, json=body, params={"thirdTraceId": str(uuid.uuid4())},
                             authenticate=False, check_body=check_token)
            token = resp.data.get("corpAccessToken") or resp.data.get("accessToken")
            ttl = parse_decimal(resp.data.get("expiresIn"), "expiresIn") or DEFAULT_TOKEN_TTL
            return str(token), float(ttl)

        base_url = self.cfg.get("base_url") or self.default_base_url
        # a digest, so the cache never holds the secret in its keys
        key = hashlib.sha256("\0".join((str(base_url).rstrip("/"), app_id, secret, code))
                             .encode()).hexdigest()
        return TokenAuth(key, fetch, ea, user_id, secrets=[secret, code])

    def check_body(self, resp: HttpResponse) -> None:
        data = resp.data
        code = _error_code(data)
        if code is None:
            raise resp.error("answer is not the API's JSON (no errorCode)")
        if code == 0:
            return
        text = _describe(data, code)
        if code == ERR_TOKEN_EXPIRED:
            raise resp.error(f"token expired ({text})", AuthError)  # refresh, retry once
        if code in RATE_CODES:
            raise resp.error(f"rate limited ({text})", RateLimitError)  # backoff like a 429
        if code == ERR_DAILY_QUOTA:
            raise resp.error(f"daily API quota used up ({text}); retrying today will not help")
        raise resp.error(text)

    # -- reading -------------------------------------------------------------------------------

    def page_size(self, spec: StreamSpec) -> int:
        return max(1, min(MAX_LIMIT, super().page_size(spec)))

    def build_request(self, spec: StreamSpec, since: datetime | None,
                      paginator: Paginator) -> Request:
        w: Window = paginator.token
        filters = self._static_filters(spec)
        if w.tie_id is not None:
            filters += [flt(TIME, "EQ", w.after_ms), flt(ID, "GT", w.tie_id)]
            orders = asc(ID)
        else:
            if w.after_ms is not None:
                filters.append(flt(TIME, "GT", w.after_ms))
            elif since is not None:
                filters.append(flt(TIME, "GTE", to_ms(since)))
            orders = asc(TIME, ID)
        info = {"limit": paginator.page_size, "offset": w.offset, "filters": filters,
                "orders": orders}
        return Request("POST", spec.path, json={
            "dataObjectApiName": spec.params["dataObjectApiName"], "search_query_info": info})

    def _static_filters(self, spec: StreamSpec) -> list[dict[str, Any]]:
        if spec.kind == "orders" and self.options.get("exclude_pushed_orders"):
            return [flt(BILL_NO, "IS")]  # orders orderhub created carry our bill_no
        return []

    def raw_record(self, spec: StreamSpec, record: dict) -> RawRecord:
        rid = record.get(ID)
        if rid is None or rid == "":
            raise ApiError(self.name, f"a {spec.kind} record has no {ID!r}")
        try:
            updated = parse_ms(record.get(TIME), TIME)
        except MappingError:
            updated = None  # the mapper rejects it; reading goes on
        return RawRecord(external_id=str(rid), updated_at=updated, payload=record)

    def read(self, stream: str, cursor: Cursor | None) -> Iterator[Page]:
        pages = super().read(stream, cursor)
        return self._with_lines(pages) if stream == "orders" else pages

    def _with_lines(self, pages: Iterator[Page]) -> Iterator[Page]:
        """Attach each order's SalesOrderProductObj rows (one query per page of orders)."""
        for page in pages:
            found = self.order_lines([r.external_id for r in page.records])
            for rec in page.records:
                rec.payload[LINES] = found.get(rec.external_id, [])
            yield page

    def order_lines(self, order_ids: list[str]) -> dict[str, list[dict]]:
        """order _id -> its line rows in _id order."""
        out: dict[str, list[dict]] = {}
        for row in self._select(LINES, LINE_ORDER, order_ids):
            out.setdefault(str(row.get(LINE_ORDER)), []).append(row)
        return out

    def _select(self, api: str, field: str, values: list[str]) -> Iterator[dict]:
        """Every record whose ``field`` is IN ``values``: chunks of 100, keyset on _id."""
        unique = list(dict.fromkeys(v for v in values if v))
        for start in range(0, len(unique), MAX_LIMIT):
            chunk = unique[start:start + MAX_LIMIT]
            pager = KeysetPaginator(MAX_LIMIT, id_field=ID, param=ID, source=self.name)
            while not pager.finished:
                filters = [flt(field, "IN", *chunk)]
                if pager.token is not None:
                    filters.append(flt(ID, "GT", pager.token))
                info = {"limit": MAX_LIMIT, "offset": 0, "filters": filters, "orders": asc(ID)}
                resp = self.http.post(QUERY_PATH, json={"dataObjectApiName": api,
                                                        "search_query_info": info})
                rows = (resp.data.get("data") or {}).get("dataList")
                if not isinstance(rows, list):
                    raise resp.error(f"{api} query answered no data.dataList")
                pager.advance(rows)
                yield from rows

    # -- push ------------------------------------------------------------------------------------

    def push(self, operation: str, docs: list[dict], recover: bool = False) -> list[PushResult]:
        if operation not in self.operations:
            return super().push(operation, docs, recover)  # ValueError naming what we support
        results: list[PushResult] = []
        for start in range(0, len(docs), MAX_LIMIT):
            batch = docs[start:start + MAX_LIMIT]
            try:
                found = self._lookups(batch)
            except AuthError:
                raise  # every doc would fail the same way
            except SourceError as err:  # this batch fails; the outbox tries again later
                results += [PushResult(str(d.get("key")), False, error=str(err)) for d in batch]
                continue
            for doc in batch:
                key = str(doc.get("key"))
                try:
                    results.append(PushResult(key, True, remote_id=self._push_order(doc, found)))
                except AuthError:
                    raise
                except (SourceError, MappingError) as err:
                    results.append(PushResult(key, False, error=f"{self.name}: {err}"
                                              if isinstance(err, MappingError) else str(err)))
        return results

    def _lookups(self, docs: list[dict]) -> _Lookups:
        codes = [str(d.get("customer_code") or "") for d in docs]
        skus = [str(ln.get("sku") or "") for d in docs for ln in d.get("lines") or []]
        bills = [str(d.get("bill_no") or "") for d in docs]
        # first match by _id wins: a duplicate code/bill_no is the CRM's own data problem
        return _Lookups(
            accounts=self._first_ids(ACCOUNTS, ACCOUNT_CODE, codes),
            products=self._first_ids(PRODUCTS, PRODUCT_CODE, skus),
            existing=self._first_ids(ORDERS, BILL_NO, bills),
        )

    def _first_ids(self, api: str, field: str, values: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for row in self._select(api, field, values):
            out.setdefault(str(row.get(field)), str(row[ID]))
        return out

    def _push_order(self, doc: dict, found: _Lookups) -> str:
        bill_no = parse_text(doc.get("bill_no"))
        if not bill_no:
            raise MappingError("bill_no: missing")
        if bill_no in found.existing:
            return found.existing[bill_no]  # created before (a rerun, or a crash after send)
        body = sales_order_body(doc, found, owner=self._user_id)
        return self._create(body, bill_no)

    def _create(self, body: dict, bill_no: str) -> str:
        """Create once: never resend blindly after an answer that may hide a stored order."""
        attempts = self.http.max_retries + 1
        for attempt in range(attempts):
            try:
                resp = self.http.post(CREATE_PATH, json=body, retries=0)
            except RateLimitError as err:  # refused before it was processed: safe to resend
                if attempt + 1 >= attempts:
                    raise
                self._sleep(self._backoff(attempt, err.retry_after))
                continue
            except TransientError as err:  # 5xx/timeout: it may have been stored
                existing = self._first_ids(ORDERS, BILL_NO, [bill_no]).get(bill_no)
                if existing:
                    return existing
                if attempt + 1 >= attempts:
                    raise
                self._sleep(self._backoff(attempt, err.retry_after))
                continue
            data_id = resp.data.get("dataId")
            if not data_id:
                raise resp.error(f"create of {bill_no} answered no dataId")
            return str(data_id)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.http.retry_after_max)
        return random.uniform(0, min(self.http.backoff_max, self.http.backoff_base * 2**attempt))


def sales_order_body(doc: dict, found: _Lookups, owner: str | None = None) -> dict[str, Any]:
    """A ``sales_order`` push doc -> the data/create body (MappingError when unresolvable)."""
    code = parse_text(doc.get("customer_code"))
    if not code or code not in found.accounts:
        raise MappingError(f"customer_code: {code!r} is no AccountObj.{ACCOUNT_CODE}")
    ordered_at = parse_datetime(doc.get("ordered_at"), "ordered_at")
    details = []
    for n, line in enumerate(doc.get("lines") or [], start=1):
        sku = parse_text(line.get("sku"))
        if not sku or sku not in found.products:
            raise MappingError(f"lines[{n}].sku: {sku!r} is no ProductObj.{PRODUCT_CODE}")
        qty = parse_decimal(line.get("qty"), f"lines[{n}].qty")
        price = parse_decimal(line.get("unit_price"), f"lines[{n}].unit_price")
        if qty is None or price is None:
            raise MappingError(f"lines[{n}]: qty and unit_price are required")
        details.append({"product_id": found.products[sku], "product_code__c": sku,
                        "quantity": qty, "sales_price": price, "subtotal": qty * price})
    if not details:
        raise MappingError("lines: a sales order needs at least one line")
    object_data: dict[str, Any] = {
        BILL_NO: parse_text(doc.get("bill_no")),
        "account_id": found.accounts[code],
        "customer_code__c": code,
        "order_time": to_ms(ordered_at) if ordered_at else None,
        "mc_currency": parse_text(doc.get("currency")),
        "order_amount": parse_decimal(doc.get("total"), "total"),
        "remark": f"orderhub {doc.get('source') or ''} {doc.get('order_no') or ''}".strip(),
    }
    if owner:
        object_data["owner"] = [owner]  # the API user owns what it creates
    return {"dataObjectApiName": ORDERS, "object_data": object_data,
            "details": {LINES: details},
            # already validated upstream: no approval or workflow may hold or alter them
            "triggerApprovalFlow": False, "triggerWorkFlow": False}
