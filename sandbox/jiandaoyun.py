"""Jiandaoyun (简道云) open API v5 fake: the CRM's customer master and its sales-order entry.

What it reproduces (source-apis.md, "Jiandaoyun"):
- POST /api/v5/app/entry/data/list, ``Authorization: Bearer <key>``, body
  ``{app_id, entry_id, fields, filter: {rel, cond: [{field, method, value}]}, limit, data_id}``;
- keyset paging: ``data_id`` is the last ``_id`` of the previous page, results always ascend by
  ``_id`` (never by updateTime), ``limit`` 1..100 (default 10);
- filter methods eq, ne, in, nin, range (inclusive, either end may be null), empty, not_empty;
- records carry ``_id`` (24 hex), createTime, updateTime, creator, updater and the widget fields;
- errors: bad key -> 401 ``{"code": 8303, "msg"}``, bad request -> 400 ``{"code", "msg"}``,
  over 5 list calls/s per key -> 429 ``{"code": 8304, "msg"}`` with ``Retry-After: 1``.

Data: ``dataset.customers`` as entry "customers", ``dataset.orders["jiandaoyun"]`` as entry
"sales_orders", both in app "orderhub". Unparseable neutral values (a unit_price "N/A") are
rendered as they are, as a real form with a text widget would hold them.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sandbox.server import FakeApp, Request, Response

API_KEY = "jdy-sandbox-key"
APP_ID = "orderhub"
CUSTOMERS_ENTRY = "customers"
ORDERS_ENTRY = "sales_orders"
LIST_PATH = "/api/v5/app/entry/data/list"

LIST_RATE_PER_S = 5          # documented limit for list calls
FAST_LIST_RATE_PER_S = 200   # fast=True: demos and end-to-end runs

ERR_BAD_KEY = 8303
ERR_RATE = 8304
ERR_PARAM = 4000             # invalid request parameter
ERR_NO_ENTRY = 4001          # app/entry does not exist

_HEX24 = re.compile(r"^[0-9a-f]{24}$")
_SANDBOX_USER = {"name": "orderhub sandbox", "username": "sandbox", "status": 1, "type": 0}


class JdyError(Exception):
    """A request the API refuses; becomes ``status`` + ``{"code", "msg"}``."""

    def __init__(self, status: int, code: int, msg: str):
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


# -- rendering -------------------------------------------------------------------------------

def jdy_time(value: Any) -> str | None:
    """Jiandaoyun's datetime form: ISO-8601 UTC with milliseconds and ``Z``."""
    dt = _as_datetime(value)
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):  # epoch milliseconds, as the API also accepts
        return datetime.fromtimestamp(value / 1000, UTC)
    text = str(value).strip()
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _number(value: Any) -> Any:
    """Numbers stay numbers (Decimal renders as a JSON number); anything else as it is."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | Decimal):
        return value
    if isinstance(value, float):
        return Decimal(str(value))
    return value


def record_id(entry_id: str, key: Any) -> str:
    """A deterministic 24-hex ``_id``; a neutral id that already is one is kept as it is."""
    text = str(key)
    if _HEX24.match(text):
        return text
    return hashlib.sha1(f"{entry_id}:{text}".encode()).hexdigest()[:24]


def _system(entry_id: str, rid: str, created: Any, updated: Any) -> dict[str, Any]:
    return {
        "_id": rid,
        "appId": APP_ID,
        "entryId": entry_id,
        "creator": dict(_SANDBOX_USER),
        "updater": dict(_SANDBOX_USER),
        "createTime": jdy_time(created or updated),
        "updateTime": jdy_time(updated),
    }


def render_customer(c: dict) -> dict[str, Any]:
    rec = _system(CUSTOMERS_ENTRY, record_id(CUSTOMERS_ENTRY, c.get("external_id") or c["code"]),
                  c.get("created_at"), c.get("updated_at"))
    rec.update({
        "customer_code": c.get("code"),
        "customer_name": c.get("name"),
        "email": c.get("email"),
        "region": c.get("region"),
        "customer_group": c.get("group", c.get("customer_group")),
        "credit_limit": _number(c.get("credit_limit")),
        "currency": c.get("currency"),
    })
    return rec


def render_order(o: dict) -> dict[str, Any]:
    rec = _system(ORDERS_ENTRY, record_id(ORDERS_ENTRY, o["external_id"]),
                  o.get("ordered_at"), o.get("updated_at"))
    ordered = o.get("ordered_at")
    rec.update({
        "order_no": o.get("order_no"),
        "customer_code": o.get("customer_code"),
        # a datetime widget; an unparseable neutral value is kept as the text it is
        "order_date": jdy_time(ordered) if _is_time(ordered) else ordered,
        "currency": o.get("currency"),
        "ship_region": o.get("ship_region"),
        "total": _number(o.get("total")),
        "items": [
            {"sku": ln.get("sku"), "qty": _number(ln.get("qty")),
             "unit_price": _number(ln.get("unit_price"))}
            for ln in sorted(o.get("lines") or [], key=lambda ln: ln.get("line_no") or 0)
        ],
    })
    return rec


def _is_time(value: Any) -> bool:
    try:
        return _as_datetime(value) is not None
    except (TypeError, ValueError):
        return False


# -- filtering -------------------------------------------------------------------------------

def _comparable(field: str, value: Any) -> Any:
    if field in ("createTime", "updateTime") and value is not None:
        try:
            return _as_datetime(value)
        except (TypeError, ValueError) as exc:
            raise JdyError(400, ERR_PARAM, f"filter value for {field} is not a time: {value!r}") \
                from exc
    return value


def _matches(rec: dict, cond: dict) -> bool:
    field, method, value = cond.get("field"), cond.get("method"), cond.get("value")
    have = _comparable(field, rec.get(field))
    if method == "empty":
        return have in (None, "", [])
    if method == "not_empty":
        return have not in (None, "", [])
    values = value if isinstance(value, list) else [value]
    if method in ("eq", "ne"):
        hit = have == _comparable(field, values[0] if values else None)
        return hit if method == "eq" else not hit
    if method in ("in", "nin"):
        hit = have in [_comparable(field, v) for v in values]
        return hit if method == "in" else not hit
    if method == "range":
        if len(values) != 2:
            raise JdyError(400, ERR_PARAM, "range takes value [from, to]")
        lo, hi = (_comparable(field, v) for v in values)
        if have is None:
            return False
        try:
            return (lo is None or have >= lo) and (hi is None or have <= hi)
        except TypeError:
            return False
    if method == "like":
        return isinstance(have, str) and str(values[0]) in have
    raise JdyError(400, ERR_PARAM, f"unsupported filter method {method!r}")


def _check_filter(flt: Any) -> tuple[str, list[dict]]:
    if flt in (None, {}):
        return "and", []
    if not isinstance(flt, dict):
        raise JdyError(400, ERR_PARAM, "filter must be an object")
    rel = flt.get("rel", "and")
    cond = flt.get("cond", [])
    if rel not in ("and", "or") or not isinstance(cond, list):
        raise JdyError(400, ERR_PARAM, "filter needs rel and/or and a cond list")
    for c in cond:
        if not isinstance(c, dict) or not c.get("field") or not c.get("method"):
            raise JdyError(400, ERR_PARAM, "each filter cond needs field and method")
    return rel, cond


# -- the fake --------------------------------------------------------------------------------

class JiandaoyunFake(FakeApp):
    """The CRM's open API over the dataset. ``fast=False`` applies the documented 5 list calls/s."""

    def __init__(self, dataset: Any, fast: bool = True, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.rate_per_s = FAST_LIST_RATE_PER_S if fast else LIST_RATE_PER_S
        self.entries: dict[tuple[str, str], list[dict]] = {
            (APP_ID, CUSTOMERS_ENTRY): sorted(
                (render_customer(c) for c in getattr(dataset, "customers", None) or []),
                key=lambda r: r["_id"]),
            (APP_ID, ORDERS_ENTRY): sorted(
                (render_order(o) for o in (getattr(dataset, "orders", None) or {})
                 .get("jiandaoyun", [])),
                key=lambda r: r["_id"]),
        }
        self._calls: deque[float] = deque()
        self.route("POST", re.escape(LIST_PATH), self.list_data)

    # what sandbox.Sandbox.sources() hands the connector
    def credentials(self) -> dict[str, Any]:
        return {"api_key": self.api_key}

    def options(self) -> dict[str, Any]:
        return {"app_id": APP_ID}

    def before_request(self, req: Request) -> Response | None:
        if req.header("authorization") != f"Bearer {self.api_key}":
            return _error(401, ERR_BAD_KEY, "API key is invalid (apikey 无效)")
        return None

    def _throttle(self) -> Response | None:
        """A one-second sliding window, like the documented 5 list calls/s per key."""
        now = time.monotonic()
        while self._calls and now - self._calls[0] >= 1.0:
            self._calls.popleft()
        if len(self._calls) >= self.rate_per_s:
            return _error(429, ERR_RATE, "request rate limit exceeded (接口调用频率超出限制)",
                          {"Retry-After": "1"})
        self._calls.append(now)
        return None

    def list_data(self, req: Request) -> Response:
        limited = self._throttle()
        if limited is not None:
            return limited
        try:
            return Response(200, {"data": self._select(req.json)})
        except JdyError as err:
            return _error(err.status, err.code, err.msg)

    def _select(self, body: Any) -> list[dict]:
        if not isinstance(body, dict):
            raise JdyError(400, ERR_PARAM, "request body must be a JSON object")
        rows = self.entries.get((body.get("app_id"), body.get("entry_id")))
        if rows is None:
            raise JdyError(400, ERR_NO_ENTRY,
                           f"app {body.get('app_id')!r} / entry {body.get('entry_id')!r} not found")
        limit = body.get("limit", 10)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise JdyError(400, ERR_PARAM, f"limit must be an integer 1..100, got {limit!r}")
        data_id = body.get("data_id")
        if data_id is not None and not (isinstance(data_id, str) and _HEX24.match(data_id)):
            raise JdyError(400, ERR_PARAM, f"data_id is not a record id: {data_id!r}")
        fields = body.get("fields")
        if fields is not None and not (isinstance(fields, list)
                                       and all(isinstance(f, str) for f in fields)):
            raise JdyError(400, ERR_PARAM, "fields must be a list of field names")
        rel, cond = _check_filter(body.get("filter"))
        combine = all if rel == "and" else any

        out: list[dict] = []
        for rec in rows:  # already ascending by _id
            if data_id is not None and rec["_id"] <= data_id:
                continue
            if cond and not combine(_matches(rec, c) for c in cond):
                continue
            # _id always comes back; a field the entry does not have comes back as null
            out.append(rec if not fields else
                       {k: rec.get(k) for k in dict.fromkeys(("_id", *fields))})
            if len(out) == limit:
                break
        return out


def _error(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"code": code, "msg": msg}, headers=dict(headers or {}))
