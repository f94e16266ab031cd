"""Conformance case: Kingdee K/3 Cloud stock (ExecuteBillQuery, StartRow offset paging).

Why ``stock`` and not ``orders``: Kingdee's permission trap (a query without permission answers
``[]``) can only be told from "no data" where data is certain to exist, i.e. a full read of a
master (prices, stock). An empty orders read is legitimate, so the connector flags the trap on
master streams only, and this case exercises it on the stream it runs everything else on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from connectors.kingdee import QUERY_PATH
from sandbox.kingdee import KingdeeFake
from sandbox.server import FakeApp, Request
from tests.conformance.case import Case, Made

PAGE_SIZE = 4
LOOKBACK = 300
T0 = datetime(2026, 10, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)  # whole seconds: Kingdee dates carry no fraction
RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}
FORM = "STK_Inventory"
_SINCE = re.compile(r"FModifyDate>='([^']+)'")


def make(n: int, ties: int) -> Made:
    tie_at = T0 + (n - ties) * STEP
    stock = [{"external_id": str(300001 + i), "sku": f"SKU-{i + 1:05d}", "warehouse": "WH-EAST",
              "qty": 100 + i, "updated_at": tie_at if i >= n - ties else T0 + i * STEP}
             for i in range(n)]
    dataset = SimpleNamespace(customers=[], products=[], stock=stock, orders={}, payments=[],
                              warehouses=[{"code": "WH-EAST", "region": "east"}])
    app = KingdeeFake(dataset, fast=True)

    def cfg(base_url: str) -> dict[str, Any]:
        return {"system": "kingdee", "base_url": base_url, "auth": app.credentials(),
                "options": {**app.options(), "page_size": PAGE_SIZE}, "rate_limit": 0,
                "lookback_seconds": LOOKBACK, "retry": dict(RETRY)}

    return Made(app=app, cfg=cfg, base_path=app.base_path)


def is_data_request(req: Request) -> bool:
    return req.method == "POST" and req.path.endswith(QUERY_PATH)


def since_sent(requests: list[Request]) -> str | None:
    # FilterString "FModifyDate>='2026-10-01 03:00:00'": zone-less, UTC in this sandbox
    for req in requests:
        if not is_data_request(req):
            continue
        data = req.json.get("data") if isinstance(req.json, dict) else None
        found = _SINCE.search(str((data or {}).get("FilterString") or ""))
        if found:
            return found.group(1).replace(" ", "T") + "Z"
    return None


def break_auth(cfg: dict) -> tuple[dict, str]:
    wrong = "kd-wrong-secret-0000"
    return {**cfg, "auth": {**cfg["auth"], "app_secret": wrong}}, wrong


def api_error(app: FakeApp) -> str:
    # The form no longer knows a field the connector asks for: the fake answers HTTP 200 with
    # [[{"Result": {"ResponseStatus": {"IsSuccess": false, "Errors": [...]}}}]].
    fields = app.form_fields  # type: ignore[attr-defined]
    fields[FORM] = fields[FORM] - {"FStockId.F_Region"}
    return "FStockId.F_Region"


def silent_empty(app: FakeApp) -> None:
    app.deny_query_forms.add(FORM)  # type: ignore[attr-defined]


CASE = Case(
    system="kingdee",
    stream="stock",
    page_size=PAGE_SIZE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=silent_empty,
)
