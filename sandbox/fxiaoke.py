"""Fxiaoke (纷享销客) open API fake: CRM accounts, sales orders with their lines, invoice
applications, products; sales orders created through the API.

What it reproduces (source-apis.md, "Fxiaoke"):
- token: POST /oauth2.0/token ``{appId, appSecret, permanentCode, grantType: "app_secret"}`` ->
  HTTP 200 ``{"errorCode": 0, "corpAccessToken", "expiresIn": 7200}``; at most 10 token calls a
  minute (more -> errorCode 30001);
- every /cgi/ call carries ``Authorization: Bearer <token>``, ``x-fs-ea``, ``x-fs-userid`` and
  ``?thirdTraceId=<uuid>``; a missing trace id or identity header is an errorCode error, an
  unknown or expired token is errorCode 20016;
- POST /cgi/crm/v2/data/query ``{dataObjectApiName, search_query_info: {limit (1..100),
  offset (0..max_offset, 10000), filters: [{field_name, operator, field_values}],
  orders: [{fieldName, isAsc}]}}`` -> ``{"errorCode": 0, "errorMessage": "OK",
  "data": {"dataList": [...], "total": n}}``; past the offset limit one pages by ``_id GT last``;
- POST /cgi/crm/v2/data/create ``{dataObjectApiName, object_data, details, triggerApprovalFlow,
  triggerWorkFlow}`` -> ``{"errorCode": 0, "dataId"}``; unless ``triggerApprovalFlow`` is false
  the new record waits for approval (``life_status`` "under_review"), unless ``triggerWorkFlow``
  is false a workflow run is counted;
- every error is HTTP 200 with ``errorCode != 0`` and ``errorMessage``; 100 calls per 20 s per
  endpoint (errorCode 30002; ``fast=True`` relaxes it) and an optional daily quota (30003).

Choices marked (unverified) in connectors/fxiaoke.py: the token field name, the error codes other
than 20016/30002/30003, operator names beyond GT/GTE/EQ, field api names (custom ones end in
``__c``), numbers and money rendered as strings, dates as epoch milliseconds (a date field is
midnight Asia/Shanghai), the default order (last_modified_time descending) and the body shape
of create (``details`` beside ``object_data``).

Data: ``dataset.customers`` -> AccountObj, ``dataset.products`` -> ProductObj,
``dataset.orders["fxiaoke"]`` -> SalesOrderObj plus one SalesOrderProductObj row per line,
``invoices`` (constructor argument, or ``dataset.invoices``) -> InvoiceApplicationObj. A neutral
value that cannot be rendered (a unit_price "N/A", an unreadable date) is kept as it is, as a
text field holding it would.

Switches for tests: ``expire_tokens()``, ``deny_objects`` (a query answers "no permission"),
``daily_quota``, ``calls_per_window``/``window_s``, ``max_offset``, ``fail_after_create`` (the next
N creates are stored but answered with HTTP 502, as a gateway timing out after the write).
Counters: ``creates`` ((operation, bill_no) -> n), ``token_calls``, ``workflow_runs``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from collections import deque
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.server import FakeApp, Request, Response

APP_ID = "FSAID_orderhub01"
APP_SECRET = "fx-sandbox-app-secret"
PERMANENT_CODE = "fx-sandbox-permanent-code"
EA = "fsea_orderhub"            # the enterprise account (x-fs-ea)
USER_ID = "FSUID_ORDERHUB01"    # the open user id calls run as (x-fs-userid)

TOKEN_PATH = "/oauth2.0/token"
QUERY_PATH = "/cgi/crm/v2/data/query"
CREATE_PATH = "/cgi/crm/v2/data/create"

TOKEN_TTL_S = 7200
TOKEN_CALLS_PER_MINUTE = 10
CALLS_PER_WINDOW = 100          # per endpoint ...
WINDOW_S = 20.0                 # ... per 20 seconds
FAST_CALLS_PER_WINDOW = 100_000
MAX_LIMIT = 100
MAX_OFFSET = 10_000

# error codes; 20016, 30002 and 30003 are documented, the others are (unverified) stand-ins
ERR_PARAM = 10001
ERR_NO_OBJECT = 10002
ERR_OFFSET = 10003
ERR_NO_PERMISSION = 10004
ERR_VALIDATION = 10005
ERR_APP = 20001                 # appId / appSecret / permanentCode wrong
ERR_IDENTITY = 20002            # x-fs-ea / x-fs-userid missing or not this enterprise's
ERR_TOKEN = 20016               # token expired or unknown
ERR_TOKEN_RATE = 30001          # more than 10 token calls a minute
ERR_RATE = 30002
ERR_QUOTA = 30003

CST = timezone(timedelta(hours=8))  # date fields are midnight in China Standard Time
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BILL_NO_FIELD = "bill_no__c"    # the external number orderhub writes on the orders it creates
OPERATORS = frozenset({"EQ", "N", "GT", "GTE", "LT", "LTE", "IN", "NIN", "IS", "ISN", "LIKE"})
_HEX24 = re.compile(r"[0-9a-f]{24}")
ACCOUNTS, PRODUCTS, ORDERS, LINES, INVOICES = (
    "AccountObj", "ProductObj", "SalesOrderObj", "SalesOrderProductObj", "InvoiceApplicationObj")


class FxError(Exception):
    """A request the API refuses: HTTP 200 with ``{"errorCode", "errorMessage"}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# -- rendering -------------------------------------------------------------------------------

def fx_id(kind: str, key: Any) -> str:
    """A deterministic 24-hex ``_id``; a neutral id that already is one (the generator's
    fxiaoke orders) is kept, so the seeded truth's keys are the ids the API answers with."""
    text = str(key)
    if _HEX24.fullmatch(text):
        return text
    h = hashlib.sha1(f"{kind}:{text}".encode()).hexdigest()[:24]
    return "f" + h[1:] if h.isdigit() else h


def to_ms(value: Any) -> int | None:
    """datetime / ISO-8601 text / epoch ms -> epoch milliseconds (naive means UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(milliseconds=1)


def _ms_or_raw(value: Any) -> Any:
    try:
        return to_ms(value)
    except (TypeError, ValueError):
        return value  # an unreadable neutral value stays what it was


def _date_ms(value: Any) -> Any:
    """A date field: epoch ms of midnight Asia/Shanghai."""
    if value is None or value == "":
        return None
    try:
        day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    except ValueError:
        return value
    if isinstance(day, datetime):
        day = day.date()
    return to_ms(datetime(day.year, day.month, day.day, tzinfo=CST))


def money(value: Any) -> Any:
    """Numbers go out as decimal strings (unverified), anything else as it is."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(Decimal(str(value)), "f")
    return value


def _system(api: str, rid: str, name: Any, created: Any, updated: Any) -> dict[str, Any]:
    return {
        "_id": rid,
        "name": name,
        "object_describe_api_name": api,
        "record_type": "default__c",
        "life_status": "normal",
        "is_deleted": False,
        "owner": [USER_ID],
        "created_by": [USER_ID],
        "last_modified_by": [USER_ID],
        "create_time": _ms_or_raw(created if created not in (None, "") else updated),
        "last_modified_time": _ms_or_raw(updated),
    }


def render_account(c: dict) -> dict[str, Any]:
    code = c.get("code")
    rec = _system(ACCOUNTS, fx_id(ACCOUNTS, c.get("external_id") or code), c.get("name"),
                  c.get("created_at"), c.get("updated_at"))
    rec.update({
        "account_no": code,
        "email": c.get("email"),
        "region__c": c.get("region"),
        "customer_group__c": c.get("group", c.get("customer_group")),
        "credit_limit__c": money(c.get("credit_limit")),
        "mc_currency": c.get("currency"),
    })
    return rec


def render_product(p: dict) -> dict[str, Any]:
    sku = p.get("sku")
    rec = _system(PRODUCTS, fx_id(PRODUCTS, sku), p.get("name"), p.get("created_at"),
                  p.get("updated_at"))
    rec["product_code"] = sku
    return rec


def line_id(order_id: str, n: int) -> str:
    """Line ids ascend with the line number, as ObjectIds ascend with creation."""
    return f"{order_id[:20]}{n:04x}"


def render_order(o: dict, accounts: dict[str, dict],
                 products: dict[str, dict]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rid = fx_id(ORDERS, o["external_id"])
    code = o.get("customer_code")
    account = accounts.get(code) if code else None
    rec = _system(ORDERS, rid, o.get("order_no"), o.get("ordered_at"), o.get("updated_at"))
    rec.update({
        "account_id": account["_id"] if account else None,
        "account_id__r": account["name"] if account else None,
        "customer_code__c": code,
        "order_time": _ms_or_raw(o.get("ordered_at")),
        "mc_currency": o.get("currency"),
        "order_amount": money(o.get("total")),
        "ship_region__c": o.get("ship_region"),
        BILL_NO_FIELD: None,
        "remark": None,
    })
    lines = []
    for n, ln in enumerate(sorted(o.get("lines") or [], key=lambda x: x.get("line_no") or 0), 1):
        sku = ln.get("sku")
        product = products.get(sku) if sku else None
        qty, price = ln.get("qty"), ln.get("unit_price")
        row = _system(LINES, line_id(rid, n), f"{o.get('order_no')}-{n}", o.get("ordered_at"),
                      o.get("updated_at"))
        row.update({
            "order_id": rid,
            "order_id__r": o.get("order_no"),
            "product_id": product["_id"] if product else None,
            "product_id__r": product["name"] if product else None,
            "product_code__c": sku,
            "quantity": money(qty),
            "sales_price": money(price),
            "subtotal": money(qty * price) if _both_numbers(qty, price) else None,
        })
        lines.append(row)
    return rec, lines


def _both_numbers(*values: Any) -> bool:
    return all(isinstance(v, int | Decimal) and not isinstance(v, bool) for v in values)


def render_invoice(inv: dict, accounts: dict[str, dict],
                   orders_by_no: dict[str, dict]) -> dict[str, Any]:
    code = inv.get("customer_code")
    account = accounts.get(code) if code else None
    order = orders_by_no.get(inv.get("order_ref") or "")
    rec = _system(INVOICES, fx_id(INVOICES, inv["external_id"]), inv.get("invoice_no"),
                  inv.get("issued_at"), inv.get("updated_at"))
    rec.update({
        "account_id": account["_id"] if account else None,
        "customer_code__c": code,
        "order_id": order["_id"] if order else None,
        "order_id__r": inv.get("order_ref"),
        "invoice_applied_amount": money(inv.get("amount")),
        "open_amount__c": money(inv.get("open_amount")),
        "invoice_date": _ms_or_raw(inv.get("issued_at")),
        "due_date__c": _date_ms(inv.get("due_date")),
        "mc_currency": inv.get("currency"),
    })
    return rec


# -- querying --------------------------------------------------------------------------------

def _coerce(have: Any, value: Any, field: str) -> Any:
    """A filter value compared like the stored one: numbers as numbers, the rest as text."""
    if isinstance(have, int) and not isinstance(have, bool):
        try:
            return int(Decimal(str(value)))
        except (InvalidOperation, ValueError):
            raise FxError(ERR_PARAM, f"filter value {value!r} for {field} is not a number") \
                from None
    return str(value)


def _matches(rec: dict, flt: dict) -> bool:
    field, op, values = flt["field_name"], flt["operator"], flt["field_values"]
    have = rec.get(field)
    if op == "IS":
        return have in (None, "", [])
    if op == "ISN":
        return have not in (None, "", [])
    if have is None or isinstance(have, list | dict):
        return False
    want = [_coerce(have, v, field) for v in values]
    if op == "IN":
        return have in want
    if op == "NIN":
        return have not in want
    if op == "LIKE":
        return isinstance(have, str) and str(values[0]) in have
    first = want[0]
    return {"EQ": have == first, "N": have != first, "GT": have > first, "GTE": have >= first,
            "LT": have < first, "LTE": have <= first}[op]


def _check_filters(filters: Any) -> list[dict]:
    if filters is None:
        return []
    if not isinstance(filters, list):
        raise FxError(ERR_PARAM, "search_query_info.filters must be a list")
    for f in filters:
        if not isinstance(f, dict) or not isinstance(f.get("field_name"), str):
            raise FxError(ERR_PARAM, "each filter needs field_name, operator, field_values")
        if f.get("operator") not in OPERATORS:
            raise FxError(ERR_PARAM, f"unsupported filter operator {f.get('operator')!r}")
        values = f.get("field_values")
        if not isinstance(values, list) or (not values and f["operator"] not in ("IS", "ISN")):
            raise FxError(ERR_PARAM, f"filter on {f['field_name']} needs a field_values list")
    return filters


def _sort(rows: list[dict], orders: Any) -> list[dict]:
    if orders is None or orders == []:
        orders = [{"fieldName": "last_modified_time", "isAsc": False}]  # (unverified) default
    if not isinstance(orders, list) or not all(
            isinstance(o, dict) and isinstance(o.get("fieldName"), str) for o in orders):
        raise FxError(ERR_PARAM, "search_query_info.orders must be a list of {fieldName, isAsc}")
    out = list(rows)
    for o in reversed(orders):  # stable sorts, last key first
        name = o["fieldName"]
        out.sort(key=lambda r, n=name: (r.get(n) is not None, r.get(n) if r.get(n) is not None
                                        else 0), reverse=o.get("isAsc") is False)
    return out


def _int(info: dict, key: str, default: int) -> int:
    value = info.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FxError(ERR_PARAM, f"search_query_info.{key} must be an integer, got {value!r}")
    return value


# -- the fake --------------------------------------------------------------------------------

class FxiaokeFake(FakeApp):
    """The CRM's open API over the dataset. ``fast=False`` applies the documented call limits."""

    def __init__(self, dataset: Any, fast: bool = True, invoices: list[dict] | None = None,
                 max_offset: int = MAX_OFFSET) -> None:
        super().__init__()
        self.fast = fast
        self.max_offset = max_offset
        self.calls_per_window = FAST_CALLS_PER_WINDOW if fast else CALLS_PER_WINDOW
        self.window_s = WINDOW_S
        self.token_calls_per_minute = TOKEN_CALLS_PER_MINUTE
        self.token_ttl = TOKEN_TTL_S
        self.daily_quota: int | None = None
        self.calls_today = 0
        self.deny_objects: set[str] = set()
        self.fail_after_create = 0
        self.token_calls = 0
        self.workflow_runs = 0
        self.tokens: dict[str, float] = {}       # token -> expiry (time.monotonic)
        self._token_times: deque[float] = deque()
        self._calls: dict[str, deque[float]] = {}
        self._created = 0

        accounts = [render_account(c) for c in getattr(dataset, "customers", None) or []]
        products = [render_product(p) for p in getattr(dataset, "products", None) or []]
        by_code = {a["account_no"]: a for a in accounts if a.get("account_no")}
        by_sku = {p["product_code"]: p for p in products if p.get("product_code")}
        orders: list[dict] = []
        lines: list[dict] = []
        for o in (getattr(dataset, "orders", None) or {}).get("fxiaoke", []):
            rec, rows = render_order(o, by_code, by_sku)
            orders.append(rec)
            lines.extend(rows)
        by_no = {o["name"]: o for o in orders if o.get("name")}
        if invoices is None:
            invoices = getattr(dataset, "invoices", None) or []
        self.objects: dict[str, list[dict]] = {
            ACCOUNTS: accounts,
            PRODUCTS: products,
            ORDERS: orders,
            LINES: lines,
            INVOICES: [render_invoice(i, by_code, by_no) for i in invoices],
        }
        self.route("POST", re.escape(TOKEN_PATH), self.token)
        self.route("POST", re.escape(QUERY_PATH), self.query)
        self.route("POST", re.escape(CREATE_PATH), self.create)

    # what sandbox.Sandbox.sources() hands the connector
    def credentials(self) -> dict[str, Any]:
        return {"app_id": APP_ID, "app_secret": APP_SECRET, "permanent_code": PERMANENT_CODE,
                "ea": EA, "user_id": USER_ID}

    def options(self) -> dict[str, Any]:
        return {"max_offset": self.max_offset}

    def expire_tokens(self) -> None:
        """Every issued token expires now (the next call answers 20016)."""
        with self.lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    def record(self, api: str, rid: str) -> dict | None:
        return next((r for r in self.objects.get(api, []) if r["_id"] == rid), None)

    # -- token ---------------------------------------------------------------------------------
    def token(self, req: Request) -> Response:
        now = time.monotonic()
        self.token_calls += 1
        while self._token_times and now - self._token_times[0] >= 60.0:
            self._token_times.popleft()
        if len(self._token_times) >= self.token_calls_per_minute:
            return _error(ERR_TOKEN_RATE, "token requested more than "
                          f"{self.token_calls_per_minute} times a minute; reuse the token")
        self._token_times.append(now)
        body = req.json if isinstance(req.json, dict) else {}
        if body.get("grantType") != "app_secret":
            return _error(ERR_PARAM, "grantType must be app_secret")
        if (body.get("appId"), body.get("appSecret"), body.get("permanentCode")) != (
                APP_ID, APP_SECRET, PERMANENT_CODE):
            return _error(ERR_APP, "appId, appSecret or permanentCode is wrong")  # never echoed
        tok = secrets.token_hex(16)
        self.tokens[tok] = now + self.token_ttl
        return Response(200, {"errorCode": 0, "errorMessage": "OK", "corpAccessToken": tok,
                              "expiresIn": self.token_ttl})

    # -- every /cgi/ call ----------------------------------------------------------------------
    def before_request(self, req: Request) -> Response | None:
        if not req.path.startswith("/cgi/"):
            return None
        trace = req.query.get("thirdTraceId")
        try:
            uuid.UUID(trace or "")
        except ValueError:
            return _error(ERR_PARAM, "thirdTraceId is required and must be a UUID")
        auth = req.header("authorization") or ""
        tok = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        expiry = self.tokens.get(tok)
        if expiry is None or expiry <= time.monotonic():
            return _error(ERR_TOKEN, "corpAccessToken is invalid or expired")
        if req.header("x-fs-ea") != EA or req.header("x-fs-userid") != USER_ID:
            return _error(ERR_IDENTITY, "x-fs-ea / x-fs-userid missing or not of this enterprise")
        now = time.monotonic()
        window = self._calls.setdefault(req.path, deque())
        while window and now - window[0] >= self.window_s:
            window.popleft()
        if len(window) >= self.calls_per_window:
            return _error(ERR_RATE, f"over {self.calls_per_window} calls per "
                          f"{self.window_s:g} s on {req.path}")
        window.append(now)
        self.calls_today += 1
        if self.daily_quota is not None and self.calls_today > self.daily_quota:
            return _error(ERR_QUOTA, "the enterprise's daily API quota is used up")
        return None

    # -- data/query ----------------------------------------------------------------------------
    def query(self, req: Request) -> Response:
        try:
            data = self._select(req.json)
        except FxError as err:
            return _error(err.code, err.message)
        return Response(200, {"errorCode": 0, "errorMessage": "OK", "data": data})

    def _select(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise FxError(ERR_PARAM, "request body must be a JSON object")
        api = body.get("dataObjectApiName")
        if api not in self.objects:
            raise FxError(ERR_NO_OBJECT, f"object {api!r} does not exist")
        if api in self.deny_objects:
            raise FxError(ERR_NO_PERMISSION, f"no permission to query {api}")
        info = body.get("search_query_info")
        if not isinstance(info, dict):
            raise FxError(ERR_PARAM, "search_query_info is required")
        limit = _int(info, "limit", 20)
        offset = _int(info, "offset", 0)
        if not 1 <= limit <= MAX_LIMIT:
            raise FxError(ERR_PARAM, f"limit must be 1..{MAX_LIMIT}, got {limit}")
        if not 0 <= offset <= self.max_offset:
            raise FxError(ERR_OFFSET, f"offset must be 0..{self.max_offset}, got {offset}; "
                          "page past it with _id GT the last _id")
        filters = _check_filters(info.get("filters"))
        rows = [r for r in self.objects[api] if all(_matches(r, f) for f in filters)]
        rows = _sort(rows, info.get("orders"))
        return {"dataList": rows[offset:offset + limit], "total": len(rows)}

    # -- data/create ---------------------------------------------------------------------------
    def create(self, req: Request) -> Response:
        try:
            rid, key = self._create(req.json)
        except FxError as err:
            return _error(err.code, err.message)
        self.creates[("sales_order", key)] += 1
        if self.fail_after_create > 0:
            self.fail_after_create -= 1
            return Response(502, body="Bad Gateway")  # stored, but the answer is lost
        return Response(200, {"errorCode": 0, "errorMessage": "OK", "dataId": rid})

    def _create(self, body: Any) -> tuple[str, str]:
        if not isinstance(body, dict):
            raise FxError(ERR_PARAM, "request body must be a JSON object")
        if body.get("dataObjectApiName") != ORDERS:
            raise FxError(ERR_NO_OBJECT, f"creating {body.get('dataObjectApiName')!r} is not "
                          "supported by this sandbox")
        data = body.get("object_data")
        if not isinstance(data, dict):
            raise FxError(ERR_PARAM, "object_data is required")
        account = self.record(ACCOUNTS, str(data.get("account_id")))
        if account is None:
            raise FxError(ERR_VALIDATION, f"account_id {data.get('account_id')!r} does not exist")
        details = body.get("details") or {}
        rows = details.get(LINES) if isinstance(details, dict) else None
        if not isinstance(rows, list) or not rows:
            raise FxError(ERR_VALIDATION, f"a sales order needs {LINES} details")
        for row in rows:
            if not isinstance(row, dict) or self.record(PRODUCTS, str(row.get("product_id"))) \
                    is None:
                raise FxError(ERR_VALIDATION, "a detail row's product_id does not exist")
            try:
                if Decimal(str(row.get("quantity"))) <= 0:
                    raise FxError(ERR_VALIDATION, "quantity must be positive")
                Decimal(str(row.get("sales_price")))
            except InvalidOperation:
                raise FxError(ERR_VALIDATION, "quantity and sales_price must be numbers") \
                    from None
        self._created += 1
        rid = fx_id("created", self._created)
        now = to_ms(datetime.now(UTC))
        approval = body.get("triggerApprovalFlow", True) is not False
        if body.get("triggerWorkFlow", True) is not False:
            self.workflow_runs += 1
        rec = _system(ORDERS, rid, data.get("name") or f"SO{self._created:06d}", now, now)
        rec.update({k: money(v) if isinstance(v, Decimal) else v for k, v in data.items()})
        rec.update({"_id": rid, "account_id__r": account["name"],
                    "life_status": "under_review" if approval else "normal"})
        rec.setdefault(BILL_NO_FIELD, None)
        self.objects[ORDERS].append(rec)
        for n, row in enumerate(rows, 1):
            line = _system(LINES, line_id(rid, n), f"{rec['name']}-{n}", now, now)
            line.update({k: money(v) if isinstance(v, Decimal) else v for k, v in row.items()})
            line.update({"order_id": rid, "order_id__r": rec["name"]})
            self.objects[LINES].append(line)
        return rid, str(data.get(BILL_NO_FIELD) or rec["name"])


def _error(code: int, message: str) -> Response:
    return Response(200, {"errorCode": code, "errorMessage": message})
