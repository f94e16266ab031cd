"""Kingdee K/3 Cloud (金蝶云星空) WebAPI fake: the ERP's masters, receipts, orders, receivables.

What it reproduces (source-apis.md, "Kingdee K/3 Cloud"):
- login ``AuthService.LoginByAppSecret`` -> ``LoginResultType`` 1 with ``KDSVCSessionId`` and the
  ``kdservice-sessionid`` cookie; a wrong secret answers HTTP 200 with ``LoginResultType`` 0;
- ``DynamicFormService.{Op}`` for ExecuteBillQuery, View, Save, BatchSave, Submit, Audit, UnAudit,
  Delete, all under ``/k3cloud/``; every answer is HTTP 200, errors live in the body;
- ExecuteBillQuery returns an array of arrays in FieldKeys order (no names), offset paging by
  StartRow/Limit (Limit <= 10000, 0 = all), FilterString clauses ``Field op 'value'`` and
  ``Field IN (...)`` joined by AND, OrderString ``Field ASC|DESC, ...``;
- a query error is ``[[{"Result": {"ResponseStatus": {...}}}]]``, a write error
  ``{"Result": {"ResponseStatus": {"IsSuccess": false, "Errors": [...]}}}``; a call without a
  live session gets the "会话信息已丢失，请重新登录" error with MsgCode 1;
- the permission trap: a form in ``deny_query_forms`` answers every query with ``[]``.

Forms: SAL_PriceList (one row per sku x currency), STK_Inventory, AR_RECEIVEBILL (dataset
payments), SAL_SaleOrder (dataset.orders["kingdee"], one row per order line, plus the bills
orderhub saves) and AR_receivable (the bills orderhub saves). Bill status moves A (saved) ->
B (submitted) -> C (audited); UnAudit puts C back to D. Dates are Kingdee-style strings without
a zone ("YYYY-MM-DDTHH:MM:SS", UTC here); numbers are JSON numbers.

Tests read ``documents`` ({(form_id, bill_no): Bill}), ``creates`` (Counter of
(operation, bill_no), operation "sales_order", "invoice" or "credit_note" — a red AR_receivable,
negative FALLAMOUNTFOR), and may call ``expire_sessions()``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http.cookies import SimpleCookie
from typing import Any

from sandbox.server import FakeApp, Request, Response

ACCT_ID = "orderhub-sandbox"
USERNAME = "orderhub"
APP_ID = "orderhub-app"
APP_SECRET = "kd-sandbox-secret"
BASE_PATH = "/k3cloud"
LOGIN_OP = "Kingdee.BOS.WebApi.ServicesStub.AuthService.LoginByAppSecret.common.kdsvc"
FORM_OP = "Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.{op}.common.kdsvc"
SESSION_COOKIE = "kdservice-sessionid"
SESSION_LOST = "会话信息已丢失，请重新登录"
MAX_LIMIT = 10000

# forms orderhub writes, and the create-counter operation each one counts under
WRITE_FORMS = {"SAL_SaleOrder": "sales_order", "AR_receivable": "invoice"}
_FIRST_ID = {"SAL_SaleOrder": 800001, "AR_receivable": 900001}  # after the dataset's FIDs
_DATE_FIELDS = frozenset({"FDate", "FModifyDate", "FCreateDate", "FApproveDate"})


def kd_time(value: Any) -> str | None:
    """Kingdee's datetime form: no zone, seconds ("2026-11-01T10:00:00"); UTC in this sandbox."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _kd_time_or_raw(value: Any) -> Any:
    try:
        return kd_time(value)
    except (TypeError, ValueError):
        return value  # an unparseable neutral value is rendered as it is


def _number(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    return value


def _fid(external_id: Any, index: int, first: int) -> int:
    """FIDs are integers; a neutral id that already is one is kept, else one by position."""
    text = str(external_id)
    return int(text) if text.isdigit() else first + index


# -- errors ----------------------------------------------------------------------------------

class KdError(Exception):
    """One or more errors in Kingdee's ResponseStatus shape."""

    def __init__(self, message: str, field_name: str | None = None, msg_code: int = 0):
        super().__init__(message)
        self.errors = [{"FieldName": field_name, "Message": message, "DIndex": 0}]
        self.msg_code = msg_code


def response_status(errors: list[dict], successes: list[dict] | None = None,
                    msg_code: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {
        "IsSuccess": not errors,
        "Errors": errors,
        "SuccessEntitys": successes or [],
        "SuccessMessages": [],
        "MsgCode": msg_code,
    }
    if errors:
        status["ErrorCode"] = 500
    return status


def query_error(exc: KdError) -> list:
    return [[{"Result": {"ResponseStatus": response_status(exc.errors, msg_code=exc.msg_code)}}]]


def write_error(exc: KdError) -> dict:
    return {"Result": {"ResponseStatus": response_status(exc.errors, msg_code=exc.msg_code)}}


# -- FilterString / OrderString --------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^']|'')*')
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<op>>=|<=|<>|!=|=|>|<)
  | (?P<punct>[(),])
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
)""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise KdError(f"FilterString 语法错误 near {text[pos:pos + 20]!r}", "FilterString")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _literal(kind: str, text: str) -> Any:
    return text[1:-1].replace("''", "'") if kind == "str" else Decimal(text)


@dataclass(frozen=True)
class Clause:
    field: str
    op: str           # = <> > >= < <= IN
    values: tuple


def parse_filter(text: str | None, known: Iterable[str]) -> list[Clause]:
    """``Field op 'v' [AND Field IN ('a', 'b') ...]`` — the subset orderhub's connector sends."""
    if not text or not text.strip():
        return []
    known = set(known)
    toks, i, clauses = _tokens(text), 0, []

    def need(kinds: tuple[str, ...]) -> tuple[str, str]:
        nonlocal i
        if i >= len(toks) or toks[i][0] not in kinds:
            raise KdError(f"FilterString 语法错误: {text!r}", "FilterString")
        i += 1
        return toks[i - 1]

    while True:
        _, name = need(("word",))
        if name not in known:
            raise KdError(f"元数据中标识为{name}的字段不存在", name)
        if i < len(toks) and toks[i][0] == "word" and toks[i][1].upper() == "IN":
            i += 1
            need(("punct",))
            values = [_literal(*need(("str", "num")))]
            while i < len(toks) and toks[i] == ("punct", ","):
                i += 1
                values.append(_literal(*need(("str", "num"))))
            if need(("punct",))[1] != ")":
                raise KdError(f"FilterString 语法错误: {text!r}", "FilterString")
            clauses.append(Clause(name, "IN", tuple(values)))
        else:
            op = need(("op",))[1]
            value = _literal(*need(("str", "num")))
            clauses.append(Clause(name, "<>" if op == "!=" else op, (value,)))
        if i == len(toks):
            return clauses
        if need(("word",))[1].upper() != "AND":
            raise KdError(f"FilterString 语法错误 (only AND is supported here): {text!r}",
                          "FilterString")


def _coerce(field_name: str, have: Any, want: Any) -> tuple[Any, Any]:
    if field_name in _DATE_FIELDS and have is not None:
        try:
            return (datetime.fromisoformat(str(have).replace("T", " ")),
                    datetime.fromisoformat(str(want).replace("T", " ")))
        except ValueError as exc:
            raise KdError(f"日期格式不正确: {want!r}", field_name) from exc
    if isinstance(want, Decimal):
        try:
            return Decimal(str(have)), want
        except (InvalidOperation, ValueError):
            return str(have), str(want)
    return ("" if have is None else str(have)), want


def _row_matches(row: dict, clause: Clause) -> bool:
    have = row.get(clause.field)
    if clause.op == "IN":
        return any(_compare(clause.field, have, "=", v) for v in clause.values)
    return _compare(clause.field, have, clause.op, clause.values[0])


def _compare(field_name: str, have: Any, op: str, want: Any) -> bool:
    if have is None and field_name in _DATE_FIELDS:
        return False
    a, b = _coerce(field_name, have, want)
    try:
        return {"=": a == b, "<>": a != b, ">": a > b, ">=": a >= b,
                "<": a < b, "<=": a <= b}[op]
    except TypeError:
        return False


def parse_order(text: str | None, known: Iterable[str]) -> list[tuple[str, bool]]:
    known = set(known)
    out = []
    for part in (text or "").split(","):
        words = part.split()
        if not words:
            continue
        if words[0] not in known or len(words) > 2 or (
                len(words) == 2 and words[1].upper() not in ("ASC", "DESC")):
            raise KdError(f"OrderString 不正确: {part.strip()!r}", "OrderString")
        out.append((words[0], len(words) == 2 and words[1].upper() == "DESC"))
    return out


def _sort_rows(rows: list[dict], order: list[tuple[str, bool]]) -> list[dict]:
    for name, desc in reversed(order):  # stable sorts, last key first
        rows.sort(key=lambda r, n=name: (r.get(n) is not None, _sort_value(r.get(n))),
                  reverse=desc)
    return rows


def _sort_value(v: Any) -> Any:
    if isinstance(v, int | Decimal) and not isinstance(v, bool):
        return (0, v, "")
    return (1, 0, "" if v is None else str(v))


# -- documents orderhub saves ----------------------------------------------------------------

@dataclass
class Bill:
    form_id: str
    fid: int
    bill_no: str
    model: dict
    status: str = "A"
    modified: str = field(default_factory=lambda: kd_time(datetime.now(UTC)) or "")


def _create_op(form: str, model: dict) -> str:
    """The create counter's operation: a red receivable (negative amount) is a credit note."""
    try:
        red = Decimal(str(model.get("FALLAMOUNTFOR"))) < 0
    except (InvalidOperation, ValueError):
        red = False
    return "credit_note" if form == "AR_receivable" and red else WRITE_FORMS[form]


def _ref_number(value: Any) -> Any:
    return value.get("FNumber") if isinstance(value, dict) else value


def _bill_rows(bill: Bill) -> list[dict]:
    m = bill.model
    head = {"FID": bill.fid, "FBillNo": bill.bill_no, "FDocumentStatus": bill.status,
            "FDate": _kd_time_or_raw(m.get("FDate") or m.get("FDATE")),
            "FModifyDate": bill.modified,
            "F_OrderRef": m.get("F_OrderRef") or ""}
    if bill.form_id == "SAL_SaleOrder":
        head.update({
            "FCustId.FNumber": _ref_number(m.get("FCustId")),
            "FSettleCurrId.FNumber": _ref_number(
                (m.get("FSaleOrderFinance") or {}).get("FSettleCurrId")),
            "F_ShipRegion": m.get("F_ShipRegion"),
            "FBillAllAmount": (m.get("FSaleOrderFinance") or {}).get("FBillAllAmount"),
        })
        lines = [{"FEntryID": bill.fid * 1000 + n, "FMaterialId.FNumber":
                  _ref_number(e.get("FMaterialId")), "FQty": e.get("FQty"),
                  "FTaxPrice": e.get("FTaxPrice")}
                 for n, e in enumerate(m.get("FSaleOrderEntry") or [], start=1)]
    else:
        head.update({
            "FCUSTOMERID.FNumber": _ref_number(m.get("FCUSTOMERID")),
            "FCURRENCYID.FNumber": _ref_number(m.get("FCURRENCYID")),
            "FALLAMOUNTFOR": m.get("FALLAMOUNTFOR"),
            "F_InvoiceNo": m.get("F_InvoiceNo"),
        })
        lines = [{"FEntryID": bill.fid * 1000 + n, "FMATERIALID.FNumber":
                  _ref_number(e.get("FMATERIALID")), "FPriceQty": e.get("FPriceQty"),
                  "FTaxPrice": e.get("FTaxPrice")}
                 for n, e in enumerate(m.get("FEntityDetail") or [], start=1)]
    return [{**head, **ln} for ln in lines] or [head]


# -- the fake --------------------------------------------------------------------------------

class KingdeeFake(FakeApp):
    """The ERP's WebAPI over the dataset. ``fast`` is accepted for symmetry: Kingdee documents
    no request rate limit, so there is nothing to relax."""

    def __init__(self, dataset: Any, fast: bool = True) -> None:
        super().__init__()
        self.fast = fast
        self._login_fields = {"acctid": ACCT_ID, "username": USERNAME, "appid": APP_ID,
                              "appsecret": APP_SECRET}
        self.sessions: set[str] = set()
        self.deny_query_forms: set[str] = set()
        self.documents: dict[tuple[str, str], Bill] = {}
        self._next_id = dict(_FIRST_ID)
        self._customers = {c.get("code") for c in getattr(dataset, "customers", None) or []}
        self._skus = {p.get("sku") for p in getattr(dataset, "products", None) or []}
        self.static_rows: dict[str, list[dict]] = {
            # rule rows only when the dataset has them: the default data is unchanged
            "SAL_PriceList": _price_rows(getattr(dataset, "products", None) or [])
            + _price_rule_rows(getattr(dataset, "price_rules", None) or []),
            "STK_Inventory": _stock_rows(getattr(dataset, "stock", None) or [],
                                         getattr(dataset, "warehouses", None) or []),
            # only receipts: with Stripe listed, card payments live in the Stripe fake
            "AR_RECEIVEBILL": _receipt_rows([p for p in getattr(dataset, "payments", None) or []
                                             if p.get("system", "kingdee") == "kingdee"]),
            "SAL_SaleOrder": _order_rows((getattr(dataset, "orders", None) or {})
                                         .get("kingdee", [])),
            "AR_receivable": [],
        }
        # the field keys each form answers to (a query naming another one is an error)
        self.form_fields: dict[str, frozenset[str]] = {
            "SAL_PriceList": frozenset({"FID", "FNumber", "FEntryID", "FMaterialId.FNumber",
                                        "FMaterialId.FName", "FCurrencyId.FNumber", "FPrice",
                                        "FModifyDate", "FCustTypeId.FNumber", "FEffectiveDate",
                                        "FExpiryDate", "F_DiscountRate"}),
            "STK_Inventory": frozenset({"FID", "FMaterialId.FNumber", "FStockId.FNumber",
                                        "FStockId.F_Region", "FBaseQty", "FModifyDate"}),
            "AR_RECEIVEBILL": frozenset({"FID", "FBillNo", "FDocumentStatus", "FDate",
                                         "FPAYUNIT.FNumber", "FCURRENCYID.FNumber",
                                         "FRECEIVEAMOUNTFOR", "FREMARK", "FModifyDate"}),
            "SAL_SaleOrder": frozenset({"FID", "FBillNo", "FDocumentStatus", "FDate",
                                        "FCustId.FNumber", "FSettleCurrId.FNumber",
                                        "F_ShipRegion", "FBillAllAmount", "F_OrderRef",
                                        "FModifyDate", "FEntryID", "FMaterialId.FNumber", "FQty",
                                        "FTaxPrice"}),
            "AR_receivable": frozenset({"FID", "FBillNo", "FDocumentStatus", "FDate",
                                        "FModifyDate", "F_OrderRef", "F_InvoiceNo",
                                        "FCUSTOMERID.FNumber", "FCURRENCYID.FNumber",
                                        "FALLAMOUNTFOR", "FEntryID", "FMATERIALID.FNumber",
                                        "FPriceQty", "FTaxPrice"}),
        }
        self._taken = {("SAL_SaleOrder", r["FBillNo"]) for r in self.static_rows["SAL_SaleOrder"]}
        self.route("POST", re.escape(f"{BASE_PATH}/{LOGIN_OP}"), self.login)
        self.route("POST", re.escape(f"{BASE_PATH}/") + FORM_OP.replace(".", r"\.").format(
            op=r"(?P<op>\w+)"), self.form_op)

    # what sandbox.Sandbox.sources() hands the connector: base_url = server URL + base_path
    base_path = BASE_PATH

    def credentials(self) -> dict[str, Any]:
        return {"acct_id": ACCT_ID, "username": USERNAME, "app_id": APP_ID,
                "app_secret": APP_SECRET}

    def options(self) -> dict[str, Any]:
        return {}

    # -- auth --------------------------------------------------------------------------------
    def login(self, req: Request) -> Response:
        body = req.json
        if isinstance(body, dict) and isinstance(body.get("parameters"), list):
            body = dict(zip(("acctid", "username", "appid", "appsecret", "lcid"),
                            body["parameters"], strict=False))
        body = body if isinstance(body, dict) else {}
        if any(body.get(k) != v for k, v in self._login_fields.items()):
            return Response(200, {
                "Message": "登录失败：应用ID或应用密钥错误 (app id or secret is wrong)",
                "MessageCode": "CheckPasswordPolicy", "LoginResultType": 0, "Context": None,
                "KDSVCSessionId": None, "IsSuccessByAPI": False})
        sid = secrets.token_hex(16)
        self.sessions.add(sid)
        return Response(200, {
            "Message": None, "MessageCode": "CheckPasswordPolicy", "LoginResultType": 1,
            "Context": {"UserName": USERNAME, "DataCenterName": ACCT_ID, "LCID": 2052},
            "KDSVCSessionId": sid, "IsSuccessByAPI": True},
            headers={"Set-Cookie": f"{SESSION_COOKIE}={sid}; Path=/; HttpOnly"})

    def expire_sessions(self) -> None:
        """Forget every session, as a server restart or the idle timeout does."""
        with self.lock:
            self.sessions.clear()

    def _session(self, req: Request) -> str | None:
        """The session id from the cookie, or from the header of the same name (SDK style)."""
        jar = SimpleCookie(req.header("cookie") or "")
        if SESSION_COOKIE in jar:
            return jar[SESSION_COOKIE].value
        return req.header(SESSION_COOKIE)

    # -- DynamicFormService ------------------------------------------------------------------
    def form_op(self, req: Request) -> Response:
        op = req.path_params["op"]
        handler = {"ExecuteBillQuery": self.execute_bill_query,
                   "Save": lambda body: self.save(body, batch=False),
                   "BatchSave": lambda body: self.save(body, batch=True),
                   "View": self.view,
                   **{name: (lambda body, name=name: self.set_status(body, name))
                      for name in ("Submit", "Audit", "UnAudit", "Delete")}}.get(op)
        shape = query_error if op == "ExecuteBillQuery" else write_error
        try:
            if handler is None:
                raise KdError(f"不支持的操作 {op}")
            if self._session(req) not in self.sessions:
                raise KdError(SESSION_LOST, msg_code=1)
            return Response(200, handler(req.json))
        except KdError as err:
            return Response(200, shape(err))  # Kingdee answers HTTP 200 either way

    def execute_bill_query(self, body: Any) -> list:
        data = _data(body)
        form = data.get("FormId")
        if form not in self.static_rows:
            raise KdError(f"业务对象{form!r}不存在", "FormId")
        if form in self.deny_query_forms:
            return []  # the trap: no permission looks exactly like no data
        keys = [k.strip() for k in str(data.get("FieldKeys") or "").split(",") if k.strip()]
        if not keys:
            raise KdError("FieldKeys 不能为空", "FieldKeys")
        known = self.form_fields[form]
        for k in keys:
            if k not in known:
                raise KdError(f"元数据中标识为{k}的字段不存在", k)
        clauses = parse_filter(data.get("FilterString"), known)
        order = parse_order(data.get("OrderString"), known)
        start, limit, top = (_int(data, "StartRow", 0), _int(data, "Limit", 0),
                             _int(data, "TopRowCount", 0))
        if limit > MAX_LIMIT:
            raise KdError(f"Limit 不能超过 {MAX_LIMIT}", "Limit")
        rows = [r for r in self._rows(form) if all(_row_matches(r, c) for c in clauses)]
        rows = _sort_rows(rows, order or [("FID", False), ("FEntryID", False)])
        if top:
            rows = rows[:top]
        rows = rows[start:start + limit] if limit else rows[start:]
        return [[r.get(k) for k in keys] for r in rows]

    def _rows(self, form: str) -> list[dict]:
        saved = [row for (f, _), bill in self.documents.items() if f == form
                 for row in _bill_rows(bill)]
        return [*self.static_rows[form], *saved]

    # -- writes ------------------------------------------------------------------------------
    def save(self, body: Any, batch: bool) -> dict:
        form = _form_id(body)
        model = _data(body).get("Model")
        models = model if batch else [model]
        if not isinstance(models, list) or not models or not all(isinstance(m, dict)
                                                                 for m in models):
            raise KdError("Model 格式不正确" + (" (BatchSave takes a list)" if batch else ""),
                          "Model")
        errors, successes = [], []
        for index, m in enumerate(models):  # not transactional: each model stands alone
            problem = self._validate(form, m)
            if problem:
                errors.append({"FieldName": problem[0], "Message": problem[1], "DIndex": index})
                continue
            bill = Bill(form, self._next_id[form], m["FBillNo"], m)
            self._next_id[form] += 1
            self.documents[(form, bill.bill_no)] = bill
            self._taken.add((form, bill.bill_no))
            self.creates[(_create_op(form, m), bill.bill_no)] += 1
            successes.append({"Id": bill.fid, "Number": bill.bill_no, "DIndex": index})
        one = successes[0] if (not batch and successes) else None
        return {"Result": {"ResponseStatus": response_status(errors, successes),
                           "Id": one["Id"] if one else "", "Number": one["Number"] if one else "",
                           "NeedReturnData": [{} for _ in successes]}}

    def _validate(self, form: str, m: dict) -> tuple[str, str] | None:
        bill_no = m.get("FBillNo")
        if not bill_no or not isinstance(bill_no, str):
            return "FBillNo", "单据编号不能为空"
        if (form, bill_no) in self._taken:
            return "FBillNo", f"单据编号重复：单据编号为“{bill_no}”的单据已经存在"
        if form == "SAL_SaleOrder":
            customer, lines, material = m.get("FCustId"), m.get("FSaleOrderEntry"), "FMaterialId"
        else:
            customer, lines, material = m.get("FCUSTOMERID"), m.get("FEntityDetail"), "FMATERIALID"
        code = _ref_number(customer)
        if not code:
            return "FCustId", "客户 是必填项"
        if self._customers and code not in self._customers:
            return "FCustId", f"客户“{code}”在基础资料中不存在"
        if form == "SAL_SaleOrder" and not lines:
            return "FSaleOrderEntry", "订单明细 至少需要一行"
        for line in lines or []:
            sku = _ref_number(line.get(material))
            if self._skus and sku not in self._skus:
                return material, f"物料“{sku}”在基础资料中不存在"
        return None

    def set_status(self, body: Any, op: str) -> dict:
        """Submit (A/D -> B), Audit (B -> C), UnAudit (C -> D), Delete (A/D -> gone)."""
        form, data = _form_id(body), _data(body)
        numbers = [str(n) for n in data.get("Numbers") or []]
        if not numbers and data.get("Ids"):
            by_id = {str(b.fid): b.bill_no for (f, _), b in self.documents.items() if f == form}
            numbers = [by_id.get(i.strip(), f"Id {i.strip()}")
                       for i in str(data["Ids"]).split(",")]
        if not numbers:
            raise KdError("Numbers 或 Ids 不能为空", "Numbers")
        allowed, to = {"Submit": ({"A", "D"}, "B"), "Audit": ({"B"}, "C"),
                       "UnAudit": ({"C"}, "D"), "Delete": ({"A", "D"}, None)}[op]
        errors, successes = [], []
        now = kd_time(datetime.now(UTC)) or ""  # one request, one time (not one per bill)
        for index, number in enumerate(numbers):
            bill = self.documents.get((form, number))
            if bill is None:
                errors.append({"FieldName": None, "DIndex": index,
                               "Message": f"单据“{number}”不存在"})
            elif bill.status not in allowed:
                errors.append({"FieldName": None, "DIndex": index,
                               "Message": f"单据“{number}”状态为{bill.status}，不能{op}"})
            else:
                if to is None:
                    del self.documents[(form, number)]
                    self._taken.discard((form, number))
                else:
                    bill.status, bill.modified = to, now
                successes.append({"Id": bill.fid, "Number": number, "DIndex": index})
        return {"Result": {"ResponseStatus": response_status(errors, successes)}}

    def view(self, body: Any) -> dict:
        form, data = _form_id(body), _data(body)
        bill = self.documents.get((form, str(data.get("Number"))))
        if bill is None and data.get("Id") not in (None, ""):
            bill = next((b for (f, _), b in self.documents.items()
                         if f == form and str(b.fid) == str(data["Id"])), None)
        if bill is None:
            raise KdError("单据不存在或已被删除", "Number")
        return {"Result": {"ResponseStatus": response_status([]),
                           "Result": {"Id": bill.fid, "BillNo": bill.bill_no,
                                      "DocumentStatus": bill.status,
                                      "ModifyDate": bill.modified, **bill.model}}}


# -- request helpers -------------------------------------------------------------------------

def _data(body: Any) -> dict:
    """``data`` may come as an object or, as Kingdee's own SDKs send it, a JSON string."""
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, str):
        try:
            data = json.loads(data, parse_float=Decimal)
        except ValueError as exc:
            raise KdError("data 不是有效的 JSON", "data") from exc
    if not isinstance(data, dict):
        raise KdError("缺少参数 data", "data")
    return data


def _form_id(body: Any) -> str:
    form = (body.get("formid") or body.get("FormId")) if isinstance(body, dict) else None
    if form not in WRITE_FORMS:
        raise KdError(f"业务对象{form!r}不存在或不支持此操作", "formid")
    return form


def _int(data: dict, key: str, default: int) -> int:
    value = data.get(key, default)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise KdError(f"{key} 必须是整数", key) from exc
    if number < 0:
        raise KdError(f"{key} 不能为负数", key)
    return number


def _keys(rows: list[dict]) -> set[str]:
    return {k for r in rows for k in r}


# -- rendering the dataset -------------------------------------------------------------------

def _price_rows(products: list[dict]) -> list[dict]:
    rows, entry = [], 0
    currencies = sorted({c for p in products for c in (p.get("prices") or {})})
    for list_no, currency in enumerate(currencies, start=1):
        for p in products:
            if currency not in (p.get("prices") or {}):
                continue
            entry += 1
            rows.append({"FID": list_no, "FNumber": f"XSJMB-{currency}", "FEntryID": entry,
                         "FMaterialId.FNumber": p.get("sku"), "FMaterialId.FName": p.get("name"),
                         "FCurrencyId.FNumber": currency,
                         "FPrice": _number(p["prices"][currency]),
                         "FModifyDate": _kd_time_or_raw(p.get("updated_at"))})
    return rows


def _price_rule_rows(rules: list[dict]) -> list[dict]:
    """Neutral price rules ({external_id?, sku, currency, customer_group, valid_from, valid_to,
    price, discount_pct, updated_at}) as SAL_PriceList rows of their own price lists: a
    customer type (FCustTypeId, "" for every customer), validity dates and the site's custom
    discount field F_DiscountRate. Entry ids start after the list-price entries'."""
    return [{"FID": 9001 + i, "FNumber": f"XSJMB-R{i + 1:03d}",
             "FEntryID": _fid(r.get("external_id"), i, 500001),
             "FMaterialId.FNumber": r.get("sku"), "FMaterialId.FName": None,
             "FCurrencyId.FNumber": r.get("currency"),
             "FCustTypeId.FNumber": r.get("customer_group") or "",
             "FEffectiveDate": _kd_time_or_raw(r.get("valid_from")),
             "FExpiryDate": _kd_time_or_raw(r.get("valid_to")),
             "FPrice": _number(r.get("price")), "F_DiscountRate": _number(r.get("discount_pct")),
             "FModifyDate": _kd_time_or_raw(r.get("updated_at"))}
            for i, r in enumerate(rules)]


def _stock_rows(stock: list[dict], warehouses: list[dict]) -> list[dict]:
    region = {w.get("code"): w.get("region") for w in warehouses}
    return [{"FID": _fid(s.get("external_id"), i, 400001),
             "FMaterialId.FNumber": s.get("sku"), "FStockId.FNumber": s.get("warehouse"),
             "FStockId.F_Region": region.get(s.get("warehouse")),
             "FBaseQty": _number(s.get("qty")),
             "FModifyDate": _kd_time_or_raw(s.get("updated_at"))}
            for i, s in enumerate(stock)]


def _receipt_rows(payments: list[dict]) -> list[dict]:
    return [{"FID": _fid(p.get("external_id"), i, 300001), "FBillNo": p.get("bill_no"),
             "FDocumentStatus": "C", "FDate": _kd_time_or_raw(p.get("received_at")),
             "FPAYUNIT.FNumber": p.get("customer_code"),
             "FCURRENCYID.FNumber": p.get("currency"),
             "FRECEIVEAMOUNTFOR": _number(p.get("amount")), "FREMARK": p.get("reference"),
             "FModifyDate": _kd_time_or_raw(p.get("updated_at"))}
            for i, p in enumerate(payments)]


def _order_rows(orders: list[dict]) -> list[dict]:
    rows = []
    for i, o in enumerate(orders):
        fid = _fid(o.get("external_id"), i, 100001)
        head = {"FID": fid, "FBillNo": o.get("order_no"), "FDocumentStatus": "C",
                "FDate": _kd_time_or_raw(o.get("ordered_at")),
                "FCustId.FNumber": o.get("customer_code"),
                "FSettleCurrId.FNumber": o.get("currency"), "F_ShipRegion": o.get("ship_region"),
                "FBillAllAmount": _number(o.get("total")), "F_OrderRef": "",
                "FModifyDate": _kd_time_or_raw(o.get("updated_at"))}
        lines = sorted(o.get("lines") or [], key=lambda ln: ln.get("line_no") or 0)
        # one row per entry line, like a query mixing header and entry fields
        rows.extend({**head, "FEntryID": fid * 1000 + (ln.get("line_no") or n),
                     "FMaterialId.FNumber": ln.get("sku"), "FQty": _number(ln.get("qty")),
                     "FTaxPrice": _number(ln.get("unit_price"))}
                    for n, ln in enumerate(lines, start=1))
        if not lines:
            rows.append({**head, "FEntryID": None, "FMaterialId.FNumber": None, "FQty": None,
                         "FTaxPrice": None})
    return rows

