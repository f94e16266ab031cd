"""Conformance case: SapConnector (OData V2 A_SalesOrder) against SapFake."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sandbox.sap import SapFake, odata_error_body
from sandbox.server import FakeApp
from tests.conformance.case import Case, Made

PAGE = 4
LOOKBACK = 120
T0 = datetime(2026, 10, 1, tzinfo=UTC)
_SINCE = re.compile(r"LastChangeDateTime ge datetimeoffset'([^']+)'")


def _order(i: int, updated: datetime) -> dict:
    return {"external_id": str(5_000_001 + i), "order_no": f"PO-{i:04d}",
            "customer_code": "C00001", "customer_email": None, "ordered_at": T0,
            "updated_at": updated, "currency": "CNY", "ship_region": "east",
            "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2),
                       "unit_price": Decimal("10.50")}],
            "total": Decimal("21.00")}


def make(n: int, ties: int) -> Made:
    tie_at = T0 + timedelta(minutes=n)
    orders = [_order(i, tie_at if i >= n - ties else T0 + timedelta(minutes=i)) for i in range(n)]
    dataset = SimpleNamespace(orders={"sap": orders}, customers=[{"code": "C00001"}],
                              products=[{"sku": "SKU-00001"}])
    app = SapFake(dataset, fast=False, page_size=PAGE)

    def cfg(base_url: str) -> dict:
        return {"system": "sap", "base_url": base_url, "auth": app.credentials(),
                "options": app.options(), "rate_limit": 0, "lookback_seconds": LOOKBACK,
                "retry": {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}}

    return Made(app=app, cfg=cfg, base_path=app.base_path)


def since_sent(requests: list) -> str | None:
    for r in requests:
        m = _SINCE.search(r.query.get("$filter") or "")
        if m:
            return m.group(1)
    return None


def is_data_request(r: Any) -> bool:
    return r.method == "GET" and r.path.endswith("/A_SalesOrder")


def break_auth(cfg: dict) -> tuple[dict, str]:
    wrong = "not-the-password-4711"
    return {**cfg, "auth": {**cfg["auth"], "password": wrong}}, wrong


def api_error(app: FakeApp) -> str:
    message = "Property 'LastChangeDateTime' is not filterable in this system"
    app.faults.add(400, body=odata_error_body("/IWBEP/CM_MGW_RT/022", message),
                   path=r"/A_SalesOrder$")
    return message


CASE = Case(
    system="sap",
    stream="orders",
    page_size=PAGE,
    lookback_seconds=LOOKBACK,
    make=make,
    since_sent=since_sent,
    is_data_request=is_data_request,
    break_auth=break_auth,
    api_error=api_error,
    silent_empty=None,
    notes={"empty": "SAP answers a missing authorization with 401/403; CDS access control may "
                    "also filter rows silently, but an empty sales order list is a legitimate "
                    "answer, so the connector cannot tell them apart (the ingest baseline check "
                    "flags a drop)"},
)
