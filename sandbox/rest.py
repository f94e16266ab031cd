"""A generic "partner marketplace" JSON API: the fake behind the declared REST source ("rest").

There is no real product behind it: it is the kind of small JSON API a partner hands over, and
``PARTNER_OPTIONS`` is its declaration (the same as examples/rest-source.yaml), so the demo and
the tests read it with no Python written for it.

- ``GET /v1/orders`` answers ``{"data": {"items": [...]}, "meta": {"next_cursor", "total",
  "page", "total_pages"}}``; ``limit`` 1..100 (default 20); ``updated_since`` (ISO-8601 or unix
  seconds, inclusive) filters by ``updated_at``.
- Paging, chosen per request by the query option ``paging`` so one fake covers every paginator
  of the declared connector (a stream declares it under ``params``):
  ``cursor`` (default) — opaque ``meta.next_cursor``, sent back as ``cursor``;
  ``offset`` — ``offset`` = rows to skip; ``page`` — ``page`` from 1, totals in
  ``X-Total-Pages`` and ``meta.total_pages``; ``link`` — a ``Link: <...page_token=...>;
  rel="next"`` header; ``keyset`` — ``after`` = the last id, records ordered by id.
  Every mode but keyset orders by (updated_at, id).
- Auth: any one of ``Authorization: Bearer <token>``, HTTP Basic, an ``X-Api-Key`` header or an
  ``api_key`` query parameter (see ``credentials_for``); else 401.
- Errors: ``{"error": {"code", "message"}}`` (401 unauthorized, 400 invalid_request /
  invalid_cursor, 429 rate_limited with ``Retry-After``). ``fast=False``: 10 requests/s.
- Orders: ``id`` (text), ``number``, ``status``, ``buyer {code, email}``, ``created_at``,
  ``updated_at`` (ISO-8601 UTC) and ``updated_ts`` (unix seconds), ``currency``, ``total`` (a
  JSON number), ``ship_to {region, country}``, ``items [{sku, quantity, unit_price}]`` with
  ``unit_price`` as a money string ("9.50").

Data: ``dataset.orders.get("rest", [])`` (or a plain list of neutral orders).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from sandbox.server import FakeApp, Request, Response

TOKEN = "pm_sandbox_token_5c2e8f1a9b"
USERNAME = "orderhub"
PASSWORD = "pm_sandbox_password_41d7"
API_KEY = "pm_sandbox_key_3d7a1c08"
BASE_PATH = "/v1"
ORDERS_PATH = f"{BASE_PATH}/orders"
MAX_LIMIT = 100
MODES = ("cursor", "offset", "page", "link", "keyset")
RATE_PER_S, FAST_RATE_PER_S = 10, 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The declaration of this API (orderhub.yaml `options`), as examples/rest-source.yaml has it.
PARTNER_OPTIONS: dict[str, Any] = {
    "auth": {"type": "bearer"},
    "streams": {
        "orders": {
            "path": "/orders",
            "records": "data.items",
            "id": "id",
            "updated": "updated_at",
            "since_param": "updated_since",
            "sorted_by_updated": True,
            "paginator": {"type": "cursor", "cursor_path": "meta.next_cursor", "param": "cursor"},
            "page_size": 50,
            "mapping": {
                "order_no": "number",
                "customer_code": "buyer.code",
                "customer_email": "buyer.email",
                "ordered_at": "created_at",
                "currency": "currency",
                "total": "total",
                "ship_region": "ship_to.region",
            },
            "lines": {"path": "items",
                      "mapping": {"sku": "sku", "qty": "quantity", "unit_price": "unit_price"}},
        },
    },
}


def partner_error(status: int, code: str, message: str,
                  headers: dict[str, str] | None = None) -> Response:
    """The partner API's error shape."""
    return Response(status, {"error": {"code": code, "message": message}},
                    headers=dict(headers or {}))


# -- rendering ---------------------------------------------------------------------------------


def _dt(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _number(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _money_text(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | Decimal):
        return f"{Decimal(value):.2f}"
    return value  # "N/A": an unparseable record the connector must reject


def render_order(o: dict) -> dict[str, Any]:
    """A neutral order -> the partner's order JSON."""
    ordered = o.get("ordered_at")
    updated = _dt(o.get("updated_at")) or _EPOCH
    return {
        "id": str(o["external_id"]),
        "number": o.get("order_no"),
        "status": "open",
        "buyer": {"code": o.get("customer_code"), "email": o.get("customer_email")},
        # an unparseable neutral value is sent as the text it is, for the mapper to reject
        "created_at": _iso(_dt(ordered)) if _dt(ordered) else ordered,
        "updated_at": _iso(updated),
        "updated_ts": int(updated.timestamp()),
        "currency": o.get("currency"),
        "total": o.get("total"),  # a JSON number (Decimal renders exactly, "19.00")
        "ship_to": {"region": o.get("ship_region"), "country": "CN"},
        "items": [
            {"sku": ln.get("sku"), "quantity": _number(ln.get("qty")),
             "unit_price": _money_text(ln.get("unit_price"))}
            for ln in sorted(o.get("lines") or [], key=lambda x: x.get("line_no") or 0)
        ],
    }


def _id_key(value: str) -> tuple[int, int, str]:
    """Ids sort numerically when they are numbers ("9" < "10"), else as text."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _neutral_orders(dataset: Any) -> list[dict]:
    if isinstance(dataset, list):
        return dataset
    orders = dataset["orders"] if isinstance(dataset, dict) else getattr(dataset, "orders", {})
    return list(orders.get("rest", [])) if isinstance(orders, dict) else list(orders)


# -- the fake ----------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class RestFake(FakeApp):
    """The partner marketplace API over ``dataset.orders["rest"]``."""

    base_path = BASE_PATH  # Sandbox.sources() appends it to the server URL

    def __init__(self, dataset: Any, fast: bool = True) -> None:
        super().__init__()
        self.fast = fast
        self.rate_per_s = FAST_RATE_PER_S if fast else RATE_PER_S
        self._calls: deque[float] = deque()
        self.orders: dict[str, dict] = {}
        self.load(_neutral_orders(dataset))
        self.route("GET", ORDERS_PATH, self.list_orders)

    # -- sandbox wiring ----------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        """The source's ``auth`` for PARTNER_OPTIONS (bearer)."""
        return self.credentials_for("bearer")

    @staticmethod
    def credentials_for(auth_type: str) -> dict[str, str]:
        """The ``auth`` secrets this fake accepts for a declared ``options.auth.type``."""
        return {"bearer": {"token": TOKEN},
                "basic": {"username": USERNAME, "password": PASSWORD},
                "api_key": {"api_key": API_KEY},
                "none": {}}[auth_type]

    def options(self) -> dict[str, Any]:
        return copy.deepcopy(PARTNER_OPTIONS)

    def load(self, neutral_orders: Iterable[dict]) -> None:
        """Add or replace orders (tests use this to simulate updates between reads)."""
        with self.lock:
            for o in neutral_orders:
                rendered = render_order(o)
                self.orders[rendered["id"]] = rendered

    # -- cross-cutting ---------------------------------------------------------------------------

    def before_request(self, req: Request) -> Response | None:
        if not self._authorized(req):
            return partner_error(401, "unauthorized", "missing or invalid credentials")
        now = time.monotonic()
        while self._calls and now - self._calls[0] >= 1.0:
            self._calls.popleft()
        if len(self._calls) >= self.rate_per_s:
            return partner_error(429, "rate_limited",
                                 f"more than {self.rate_per_s} requests per second",
                                 {"Retry-After": "1"})
        self._calls.append(now)
        return None

    def _authorized(self, req: Request) -> bool:
        header = req.header("authorization") or ""
        if header == f"Bearer {TOKEN}":
            return True
        if header.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(header[6:]).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return (user, pw) == (USERNAME, PASSWORD)
        return API_KEY in (req.header("x-api-key"), req.query.get("api_key"))

    # -- orders ------------------------------------------------------------------------------

    def list_orders(self, req: Request) -> Response:
        try:
            return self._list(req)
        except _BadRequest as err:
            return partner_error(400, err.code, err.message)

    def _list(self, req: Request) -> Response:
        q = req.query
        mode = q.get("paging", "cursor")
        if mode not in MODES:
            raise _BadRequest("invalid_request", f"paging must be one of {', '.join(MODES)}")
        limit = _int(q.get("limit", "20"), "limit")
        if not 1 <= limit <= MAX_LIMIT:
            raise _BadRequest("invalid_request", f"limit must be between 1 and {MAX_LIMIT}")
        token: dict[str, Any] | None = None
        if mode in ("cursor", "link"):
            raw = q.get("cursor" if mode == "cursor" else "page_token")
            token = _decode(raw) if raw else None
            if raw and token is None:
                raise _BadRequest("invalid_cursor", "cursor is not valid")
        since_text = q.get("updated_since") or (token or {}).get("since")
        since = _since(since_text) if since_text else None

        rows = [o for o in self.orders.values()
                if since is None or (_dt(o["updated_at"]) or _EPOCH) >= since]
        if mode == "keyset":
            rows.sort(key=lambda o: _id_key(o["id"]))
        else:
            rows.sort(key=lambda o: (_dt(o["updated_at"]) or _EPOCH, _id_key(o["id"])))
        total = len(rows)
        meta: dict[str, Any] = {"total": total, "next_cursor": None}
        headers: dict[str, str] = {"X-Total-Count": str(total)}

        if mode in ("cursor", "link"):
            if token is not None:
                pos = (_dt(token["at"]) or _EPOCH, _id_key(token["id"]))
                rows = [o for o in rows
                        if (_dt(o["updated_at"]) or _EPOCH, _id_key(o["id"])) > pos]
            page, more = rows[:limit], len(rows) > limit
            if more:
                nxt = _encode({"at": page[-1]["updated_at"], "id": page[-1]["id"],
                               "since": since_text})
                if mode == "cursor":
                    meta["next_cursor"] = nxt
                else:
                    keep = {k: v for k, v in q.items() if k not in ("page_token", "api_key")}
                    url = f"{req.base_url}{ORDERS_PATH}?{urlencode({**keep, 'page_token': nxt})}"
                    headers["Link"] = f'<{url}>; rel="next"'
        elif mode == "offset":
            offset = _int(q.get("offset", "0"), "offset")
            if offset < 0:
                raise _BadRequest("invalid_request", "offset must be >= 0")
            page = rows[offset:offset + limit]
        elif mode == "page":
            number = _int(q.get("page", "1"), "page")
            if number < 1:
                raise _BadRequest("invalid_request", "page must be >= 1")
            pages = -(-total // limit)
            page = rows[(number - 1) * limit: number * limit]
            meta.update(page=number, total_pages=pages)
            headers["X-Total-Pages"] = str(pages)
        else:  # keyset
            after = q.get("after")
            if after:
                rows = [o for o in rows if _id_key(o["id"]) > _id_key(after)]
            page = rows[:limit]
        return Response(200, {"data": {"items": page}, "meta": meta}, headers=headers)


def _int(value: str | None, name: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise _BadRequest("invalid_request", f"{name} must be a whole number") from None


def _since(text: str) -> datetime:
    if text.strip().isdigit():
        return datetime.fromtimestamp(int(text.strip()), UTC)
    when = _dt(text)
    if when is None:
        raise _BadRequest("invalid_request", "updated_since must be ISO-8601 or unix seconds")
    return when


def _encode(state: dict[str, Any]) -> str:
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> dict[str, Any] | None:
    try:
        state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, InvalidOperation):
        return None
    if not (isinstance(state, dict) and isinstance(state.get("at"), str)
            and isinstance(state.get("id"), str)):
        return None
    return state


def main(argv: list[str] | None = None) -> int:
    """``python -m sandbox.rest --port 8765``: serve the partner API on its own, with generated
    orders, for trying a declared source by hand (docs/declared-rest.md)."""
    import argparse

    from sandbox.generator import generate
    from sandbox.server import FakeServer

    parser = argparse.ArgumentParser(prog="python -m sandbox.rest", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--orders", type=int, default=200, help="orders to generate (>= 50)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    dataset = generate(seed=args.seed, orders=args.orders)
    # The generator has no "rest" channel: serve its CRM orders as the partner's.
    app = RestFake({"orders": {"rest": dataset.orders["jiandaoyun"]}})
    server = FakeServer(app, port=args.port).start()
    print(f"partner API on {server.url}{BASE_PATH} with {len(app.orders)} orders")
    print(f"  export PARTNER_TOKEN={TOKEN}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
