"""Yonyou U8+ OpenAPI (用友U8) fake: sales orders, customers, stock and receivables of the ERP.

What it reproduces (source-apis.md, "Yonyou U8+ OpenAPI"):
- ``GET /system/token?from_account=&app_key=&app_secret=`` ->
  ``{"errcode": "0", "token": {"id", "expiresIn": 7200}}``; ``token_ttl`` shortens the life and
  ``clock`` (default ``time.monotonic``) lets a test move time without sleeping;
- every other call carries ``from_account, to_account, app_key, token, ds_sequence`` as query
  parameters (``/system/tradeid`` needs only from_account, app_key, token, as its doc says);
- every answer is HTTP 200 with ``errcode``: "0" OK, "20002" no data (not an error), anything
  else an error with ``errmsg``; bodies are JSON sent as ``text/html; charset=utf-8``, as the
  doc's examples show;
- list APIs ``/api/{saleorderlist,customer,inventory,oughtreceivelist}/batch_get`` page by
  ``page_index`` (from 1) / ``rows_per_page`` (default 20) and answer ``page_index,
  rows_per_page, row_count, page_count`` as strings next to the record list; a page past the end
  answers 20002; results come in id order (NOT by modification time);
- writes: ``GET /system/tradeid`` -> ``{"trade": {"id"}}``; ``POST /api/saleorder/add?tradeid=``
  with ``{"saleorder": {..., "entry": [...]}}``; ``POST /api/saleorder/verify``;
  ``GET /api/saleorder/get?id=<order code>``.

Choices where the doc is silent — all (unverified), the connector makes each one configurable:
- error codes: ``ERR_TOKEN`` 30001 (token missing/unknown/expired), ``ERR_APP`` 30002
  (from_account/app_key/app_secret wrong), ``ERR_ACCOUNT`` 30003 (to_account/ds_sequence not
  authorised), ``ERR_PARAM`` 40001, ``ERR_TRADEID`` 40002 (tradeid never issued),
  ``ERR_DUPLICATE`` 40003 (order code exists), ``ERR_INVALID`` 40004 (unknown customer,
  inventory or order), ``ERR_VERIFIED`` 40005 (order already verified);
- the modification-time filter: ``modifytime_begin`` on orders, stock and receivables,
  ``ModifyDate_begin`` on customers (the customer/batch_get doc lists it), compared ``>=``
  against the record's ``modifytime``; value ``YYYY-MM-DD HH:MM:SS`` or ``YYYY-MM-DD``, zone-less
  (UTC in this sandbox). ``since_params`` renames them; unknown parameters are ignored, as a
  real API does. Receivables also take the documented ``date_begin``/``date_end`` (bill date);
- a reused tradeid REPLAYS the first answer (success or error) without doing anything — the
  public tradeid doc says resubmissions must reuse the same tradeid so nothing is created twice;
  a tradeid never issued is refused (ERR_TRADEID);
- ``saleorder/get?id=`` takes the order code; a missing order answers 20002; ``add`` answers
  ``{"id": <code>, "tradeid"}``; ``verify`` takes ``{"saleorder": {"code"}}`` and sets
  ``verifier``/``verifydate``;
- record fields: orders ``id`` (internal), ``code``, ``date``, ``cuscode``, ``currency_name``
  (人民币/美元/... as U8 stores the currency by name), ``define10`` (ship region, a custom header
  item), ``define11`` (the reference orderhub writes on the orders it pushes), ``sum``,
  ``modifytime``, ``verifier`` and ``entry: [{rowno, inventorycode, quantity (number),
  originaltaxedprice, originalsum (strings)}]``; customers ``code, name, abbrname, email,
  domain_code (region), sort_code (group), credit_line, currency_name, modifytime``; stock
  ``id, inventorycode, warehousecode, wh_region, quantity, modifytime``; receivables ``id,
  code, date, cuscode, currency_name, originalamount, originalbalance, duedate, socode,
  modifytime``.

Switches for tests: ``no_data`` (set of list names — "saleorderlist", "customer", ... — that
answer 20002: the permission/no-data trap), ``lose_add_responses`` (the next N adds are done but
answered 502, as if the answer was lost), ``stuck_paging`` (every page answers page 1's rows),
``expire_tokens()``. ``creates[("sales_order", code)]`` counts orders created.

Data: ``dataset.orders.get("u8", [])``, ``dataset.customers``, ``dataset.stock`` (+ warehouses
for the region), ``dataset.products`` (known inventory codes) and an optional
``dataset.receivables`` list of neutral receivables (external_id, invoice_no, order_ref,
customer_code, currency, amount, open_amount, issued_at, due_date, updated_at).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.server import FakeApp, Request, Response

FROM_ACCOUNT = "orderhub_dev"
TO_ACCOUNT = "orderhub_ent"
APP_KEY = "opa0rderhub5andbox"
APP_SECRET = "u8-sandbox-secret-0001"
DS_SEQUENCE = 1
TOKEN_TTL = 7200  # seconds, as documented

OK = "0"
NO_DATA = "20002"
ERR_TOKEN = "30001"       # (unverified)
ERR_APP = "30002"         # (unverified)
ERR_ACCOUNT = "30003"     # (unverified)
ERR_PARAM = "40001"       # (unverified)
ERR_TRADEID = "40002"     # (unverified)
ERR_DUPLICATE = "40003"   # (unverified)
ERR_INVALID = "40004"     # (unverified)
ERR_VERIFIED = "40005"    # (unverified)

DEFAULT_ROWS_PER_PAGE = 20
SHIP_REGION_FIELD = "define10"
REF_FIELD = "define11"
# list API -> the key its records come under
LISTS = {"saleorderlist": "saleorderlist", "customer": "customer", "inventory": "inventory",
         "oughtreceivelist": "oughtreceivelist"}
DEFAULT_SINCE_PARAMS = {"saleorderlist": "modifytime_begin", "customer": "ModifyDate_begin",
                        "inventory": "modifytime_begin", "oughtreceivelist": "modifytime_begin"}
CURRENCY_NAMES = {"CNY": "人民币", "USD": "美元", "EUR": "欧元", "HKD": "港币", "JPY": "日元"}
_CODES_BY_NAME = {v: k for k, v in CURRENCY_NAMES.items()}
_U8_TIME = "%Y-%m-%d %H:%M:%S"
_HTML_JSON = {"Content-Type": "text/html; charset=utf-8"}  # what the doc's examples show


class U8Error(Exception):
    """A refused call; answered as HTTP 200 ``{"errcode", "errmsg"}``."""

    def __init__(self, errcode: str, errmsg: str) -> None:
        super().__init__(errmsg)
        self.errcode, self.errmsg = errcode, errmsg


# -- rendering -------------------------------------------------------------------------------

def u8_time(value: Any) -> str | None:
    """U8's datetime form: zone-less "YYYY-MM-DD HH:MM:SS" (UTC in this sandbox)."""
    dt = _as_datetime(value)
    return dt.astimezone(UTC).strftime(_U8_TIME) if dt else None


def u8_date(value: Any) -> str | None:
    """A voucher date: "YYYY-MM-DD"; an unparseable neutral value is rendered as it is."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    try:
        dt = _as_datetime(value)
    except (TypeError, ValueError):
        return value
    return dt.astimezone(UTC).date().isoformat() if dt else None


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _time_or_raw(value: Any) -> Any:
    try:
        return u8_time(value)
    except (TypeError, ValueError):
        return value


def _text_number(value: Any) -> Any:
    """U8 answers most amounts as numeric strings; anything unreadable stays as it is."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        value = Decimal(str(value))
    if isinstance(value, int | Decimal):
        return format(value, "f")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    return value


def _currency_name(code: Any) -> Any:
    return CURRENCY_NAMES.get(code, code) if isinstance(code, str) else code


def _internal_id(external_id: Any, index: int, first: int) -> str:
    text = str(external_id) if external_id is not None else ""
    return text if text.isdigit() else str(first + index)


def render_order(o: dict, index: int) -> dict:
    lines = sorted(o.get("lines") or [], key=lambda ln: ln.get("line_no") or 0)
    entry = []
    for n, ln in enumerate(lines, start=1):
        qty, price = _number(ln.get("qty")), _number(ln.get("unit_price"))
        line_sum = qty * price if isinstance(qty, int | Decimal) and isinstance(
            price, int | Decimal) else None
        entry.append({"rowno": ln.get("line_no") or n, "inventorycode": ln.get("sku"),
                      "quantity": qty, "originaltaxedprice": _text_number(price),
                      "originalsum": _text_number(line_sum)})
    return {
        "id": _internal_id(o.get("external_id"), index, 100001),
        "code": o.get("order_no"),
        "date": u8_date(o.get("ordered_at")),
        "cuscode": o.get("customer_code"),
        "currency_name": _currency_name(o.get("currency")),
        SHIP_REGION_FIELD: o.get("ship_region"),
        REF_FIELD: None,
        "sum": _text_number(o.get("total")),
        "modifytime": _time_or_raw(o.get("updated_at")),
        "verifier": "demo",
        "verifydate": u8_date(o.get("ordered_at")),
        "entry": entry,
    }


def render_customer(c: dict) -> dict:
    return {
        "code": c.get("code"),
        "name": c.get("name"),
        "abbrname": c.get("name"),
        "email": c.get("email"),
        "domain_code": c.get("region"),
        "sort_code": c.get("group", c.get("customer_group")),
        "credit_line": _text_number(c.get("credit_limit")),
        "currency_name": _currency_name(c.get("currency")),
        "modifytime": _time_or_raw(c.get("updated_at")),
    }


def render_stock(s: dict, index: int, regions: dict[Any, Any]) -> dict:
    return {
        "id": _internal_id(s.get("external_id"), index, 400001),
        "inventorycode": s.get("sku"),
        "warehousecode": s.get("warehouse"),
        "wh_region": regions.get(s.get("warehouse")),
        "quantity": _number(s.get("qty")),
        "modifytime": _time_or_raw(s.get("updated_at")),
    }


def render_receivable(r: dict, index: int) -> dict:
    return {
        "id": _internal_id(r.get("external_id"), index, 700001),
        "code": r.get("invoice_no"),
        "date": u8_date(r.get("issued_at")),
        "cuscode": r.get("customer_code"),
        "currency_name": _currency_name(r.get("currency")),
        "originalamount": _text_number(r.get("amount")),
        "originalbalance": _text_number(r.get("open_amount")),
        "duedate": u8_date(r.get("due_date")),
        "socode": r.get("order_ref"),
        "modifytime": _time_or_raw(r.get("updated_at")),
    }


def _id_key(rec: dict) -> tuple[int, Any]:
    rid = str(rec.get("id") if rec.get("id") is not None else rec.get("code"))
    return (0, int(rid)) if rid.isdigit() else (1, rid)


def _parse_filter_time(name: str, value: str) -> datetime:
    text = value.strip()
    for fmt in (_U8_TIME, "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise U8Error(ERR_PARAM, f"参数 {name} 格式不正确: {value!r} (expected YYYY-MM-DD HH:MM:SS)")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | Decimal):
        return True
    if isinstance(value, str):
        try:
            return Decimal(value).is_finite()
        except InvalidOperation:
            return False
    return False


# -- the fake --------------------------------------------------------------------------------

class U8Fake(FakeApp):
    """U8+ OpenAPI over the dataset. ``fast`` is accepted for symmetry: no limit is documented."""

    def __init__(self, dataset: Any, fast: bool = True) -> None:
        super().__init__()
        self.fast = fast
        self.token_ttl = TOKEN_TTL
        self.clock: Callable[[], float] = time.monotonic
        self.tokens: dict[str, float] = {}                 # token id -> expires at (clock)
        self.tradeids: dict[str, dict | None] = {}          # issued -> first answer (None: unused)
        self.since_params = dict(DEFAULT_SINCE_PARAMS)
        self.no_data: set[str] = set()
        self.lose_add_responses = 0
        self.stuck_paging = False
        self._customers = {c.get("code") for c in getattr(dataset, "customers", None) or []}
        self._skus = {p.get("sku") for p in getattr(dataset, "products", None) or []}
        regions = {w.get("code"): w.get("region") for w in getattr(dataset, "warehouses", None) or []}
        orders = (getattr(dataset, "orders", None) or {}).get("u8", [])
        self.orders: list[dict] = [render_order(o, i) for i, o in enumerate(orders)]
        self.rows: dict[str, list[dict]] = {
            "saleorderlist": self.orders,  # the same list: pushed orders show up in it too
            "customer": [render_customer(c) for c in getattr(dataset, "customers", None) or []],
            "inventory": [render_stock(s, i, regions)
                          for i, s in enumerate(getattr(dataset, "stock", None) or [])],
            "oughtreceivelist": [render_receivable(r, i) for i, r in
                                 enumerate(getattr(dataset, "receivables", None) or [])],
        }
        self._next_order_id = 900001
        self.route("GET", r"/system/token", self._wrap(self.token))
        self.route("GET", r"/system/tradeid", self._wrap(self.tradeid))
        self.route("GET", r"/api/(?P<list>\w+)/batch_get", self._wrap(self.batch_get))
        self.route("GET", r"/api/saleorder/get", self._wrap(self.get_order))
        self.route("POST", r"/api/saleorder/add", self.add_order)  # may lose its answer
        self.route("POST", r"/api/saleorder/verify", self._wrap(self.verify_order))

    # what sandbox.Sandbox.sources() hands the connector
    def credentials(self) -> dict[str, Any]:
        return {"from_account": FROM_ACCOUNT, "to_account": TO_ACCOUNT, "app_key": APP_KEY,
                "app_secret": APP_SECRET}

    def options(self) -> dict[str, Any]:
        return {"ds_sequence": DS_SEQUENCE}

    def expire_tokens(self) -> None:
        """Forget every token, as a server restart or the 2-hour expiry does."""
        with self.lock:
            self.tokens.clear()

    def order(self, code: str) -> dict | None:
        return next((o for o in self.orders if o.get("code") == code), None)

    # -- plumbing ----------------------------------------------------------------------------
    def _wrap(self, handler: Callable[[Request], dict]) -> Callable[[Request], Response]:
        def run(req: Request) -> Response:
            try:
                return _answer(handler(req))
            except U8Error as err:
                return _answer({"errcode": err.errcode, "errmsg": err.errmsg})
        return run

    def before_request(self, req: Request) -> Response | None:
        if req.path == "/system/token":
            return None
        try:
            self._check_auth(req)
        except U8Error as err:
            return _answer({"errcode": err.errcode, "errmsg": err.errmsg})
        return None

    def _check_auth(self, req: Request) -> None:
        q = req.query
        if q.get("from_account") != FROM_ACCOUNT or q.get("app_key") != APP_KEY:
            raise U8Error(ERR_APP, "from_account 或 app_key 不正确")
        token = q.get("token")
        if not token:
            raise U8Error(ERR_TOKEN, "缺少参数 token")
        expires = self.tokens.get(token)
        if expires is None or self.clock() >= expires:
            self.tokens.pop(token, None)
            raise U8Error(ERR_TOKEN, "token 无效或已过期 (token invalid or expired)")
        if req.path.startswith("/api/"):
            if q.get("to_account") != TO_ACCOUNT:
                raise U8Error(ERR_ACCOUNT, f"提供方 to_account {q.get('to_account')!r} 未授权")
            if q.get("ds_sequence") != str(DS_SEQUENCE):
                raise U8Error(ERR_ACCOUNT, f"数据源 ds_sequence {q.get('ds_sequence')!r} 不存在")

    # -- system ------------------------------------------------------------------------------
    def token(self, req: Request) -> dict:
        q = req.query
        if (q.get("from_account"), q.get("app_key"), q.get("app_secret")) != (
                FROM_ACCOUNT, APP_KEY, APP_SECRET):
            raise U8Error(ERR_APP, "from_account、app_key 或 app_secret 不正确")
        token = secrets.token_hex(16)
        self.tokens[token] = self.clock() + self.token_ttl
        return {"errcode": OK, "errmsg": "成功", "token": {"id": token, "expiresIn": self.token_ttl}}

    def tradeid(self, req: Request) -> dict:
        trade = secrets.token_hex(16)
        self.tradeids[trade] = None
        return {"errcode": OK, "errmsg": "成功", "trade": {"id": trade}}

    # -- lists -------------------------------------------------------------------------------
    def batch_get(self, req: Request) -> dict:
        name = req.path_params["list"]
        if name not in LISTS:
            raise U8Error(ERR_PARAM, f"接口 {name}/batch_get 不存在")
        q = req.query
        page_index = _positive_int(q, "page_index", 1)
        rows_per_page = _positive_int(q, "rows_per_page", DEFAULT_ROWS_PER_PAGE)
        rows = sorted(self.rows[name], key=_id_key)
        since_param = self.since_params.get(name)
        if since_param and q.get(since_param):
            since = _parse_filter_time(since_param, q[since_param])
            rows = [r for r in rows if _at_or_after(r.get("modifytime"), since)]
        if name == "oughtreceivelist":
            rows = _bill_date_window(rows, q)
        if name in self.no_data or not rows:
            raise _no_data()
        page_count = -(-len(rows) // rows_per_page)
        if page_index > page_count:
            raise _no_data()
        start = 0 if self.stuck_paging else (page_index - 1) * rows_per_page
        return {"errcode": OK, "errmsg": "", "page_index": str(page_index),
                "rows_per_page": str(rows_per_page), "row_count": str(len(rows)),
                "page_count": str(page_count), LISTS[name]: rows[start:start + rows_per_page]}

    # -- sales orders ------------------------------------------------------------------------
    def get_order(self, req: Request) -> dict:
        code = req.query.get("id")
        if not code:
            raise U8Error(ERR_PARAM, "缺少参数 id")
        found = self.order(code)
        if found is None:
            raise _no_data()
        return {"errcode": OK, "errmsg": "", "saleorder": found}

    def add_order(self, req: Request) -> Response:
        trade = req.query.get("tradeid")
        try:
            if not trade:
                raise U8Error(ERR_PARAM, "缺少参数 tradeid")
            if trade not in self.tradeids:
                raise U8Error(ERR_TRADEID, f"交易号 {trade} 无效")
        except U8Error as err:
            return _answer({"errcode": err.errcode, "errmsg": err.errmsg})
        first = self.tradeids[trade]
        if first is not None:
            return _answer(first)  # a resubmission: the first answer, nothing done again
        try:
            answer = self._create(req.json, trade)
        except U8Error as err:
            answer = {"errcode": err.errcode, "errmsg": err.errmsg, "tradeid": trade}
        self.tradeids[trade] = answer
        if self.lose_add_responses > 0 and answer["errcode"] == OK:
            self.lose_add_responses -= 1
            return Response(502, body="502 Bad Gateway")  # done, but the answer never arrives
        return _answer(answer)

    def _create(self, body: Any, trade: str) -> dict:
        so = body.get("saleorder") if isinstance(body, dict) else None
        if not isinstance(so, dict):
            raise U8Error(ERR_PARAM, "请求体缺少 saleorder")
        code = so.get("code")
        if not code or not isinstance(code, str):
            raise U8Error(ERR_PARAM, "saleorder.code 不能为空")
        if self.order(code) is not None:
            raise U8Error(ERR_DUPLICATE, f"单据编号重复：销售订单“{code}”已存在")
        customer = so.get("cuscode")
        if not customer:
            raise U8Error(ERR_PARAM, "saleorder.cuscode 不能为空")
        if self._customers and customer not in self._customers:
            raise U8Error(ERR_INVALID, f"客户“{customer}”不存在")
        entry = so.get("entry")
        if not isinstance(entry, list) or not entry:
            raise U8Error(ERR_PARAM, "saleorder.entry 至少需要一行")
        for n, line in enumerate(entry, start=1):
            sku = line.get("inventorycode") if isinstance(line, dict) else None
            if not sku or (self._skus and sku not in self._skus):
                raise U8Error(ERR_INVALID, f"第{n}行 存货“{sku}”不存在")
            for key in ("quantity", "originaltaxedprice"):
                if not _is_number(line.get(key)):
                    raise U8Error(ERR_PARAM, f"第{n}行 {key} 不是数字: {line.get(key)!r}")
        now = datetime.now(UTC)
        stored = {**{k: v for k, v in so.items() if k != "entry"},
                  "id": str(self._next_order_id), "code": code,
                  "currency_name": so.get("currency_name") or "人民币",
                  "modifytime": now.strftime(_U8_TIME), "verifier": None, "verifydate": None,
                  "entry": [{"rowno": n, **line} for n, line in enumerate(entry, start=1)]}
        self._next_order_id += 1
        self.orders.append(stored)
        self.creates[("sales_order", code)] += 1
        return {"errcode": OK, "errmsg": "", "id": code, "tradeid": trade}

    def verify_order(self, req: Request) -> dict:
        so = req.json.get("saleorder") if isinstance(req.json, dict) else None
        code = so.get("code") if isinstance(so, dict) else None
        if not code:
            raise U8Error(ERR_PARAM, "请求体缺少 saleorder.code")
        found = self.order(code)
        if found is None:
            raise U8Error(ERR_INVALID, f"销售订单“{code}”不存在")
        if found.get("verifier"):
            raise U8Error(ERR_VERIFIED, f"销售订单“{code}”已审核")
        now = datetime.now(UTC)
        found.update({"verifier": "orderhub", "verifydate": now.date().isoformat(),
                      "modifytime": now.strftime(_U8_TIME)})
        return {"errcode": OK, "errmsg": "", "id": code}


def _answer(body: dict) -> Response:
    return Response(200, body, headers=dict(_HTML_JSON))


def _no_data() -> U8Error:
    return U8Error(NO_DATA, "没有符合条件的数据 (no data)")


def _positive_int(q: dict[str, str], name: str, default: int) -> int:
    raw = q.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise U8Error(ERR_PARAM, f"参数 {name} 必须是整数: {raw!r}") from None
    if value < 1:
        raise U8Error(ERR_PARAM, f"参数 {name} 必须大于 0")
    return value


def _at_or_after(value: Any, since: datetime) -> bool:
    try:
        when = _parse_filter_time("modifytime", str(value)) if value else None
    except U8Error:
        return True  # an unreadable time is not filtered out: the reader decides
    return when is None or when >= since


def _bill_date_window(rows: list[dict], q: dict[str, str]) -> list[dict]:
    begin = _parse_filter_time("date_begin", q["date_begin"]) if q.get("date_begin") else None
    end = _parse_filter_time("date_end", q["date_end"]) if q.get("date_end") else None

    def inside(r: dict) -> bool:
        try:
            when = _parse_filter_time("date", str(r.get("date") or ""))
        except U8Error:
            return True
        return (begin is None or when >= begin) and (end is None or when <= end)

    return [r for r in rows if inside(r)] if begin or end else rows

