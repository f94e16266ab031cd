"""Conformance case for the file-drop connector: no HTTP, so the network tests do not apply.

Orders are spread over three files (two CSV, one Parquet) whose mtimes are their latest
``updated_at``; two lines per order and an odd ``batch_rows`` make orders straddle batch
boundaries. Ties: the last ``ties`` orders share one updated_at, so several files share one
mtime (ordered by name) and the tie spans a page boundary. The API's own error shape, for a
folder: the inbox is not a folder -> SourceError naming the source and the path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sandbox.files import FileDropFake
from tests.conformance.case import Case, Made

PAGE = 4  # orders per page: batch_rows = 2 * PAGE - 1 rows of two-line orders
LOOKBACK = 60
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def _orders(n: int, ties: int) -> list[dict]:
    tie_at = T0 + timedelta(hours=n)
    out = []
    for i in range(n):
        updated = tie_at if i >= n - ties else T0 + timedelta(hours=i)
        out.append({
            "external_id": f"FD-{i + 1:06d}", "order_no": f"FD-{i + 1:06d}",
            "customer_code": "C00001", "customer_email": None,
            "ordered_at": updated - timedelta(minutes=30), "updated_at": updated,
            "currency": "CNY", "ship_region": "east",
            "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2),
                       "unit_price": Decimal("19.90")},
                      {"line_no": 2, "sku": "SKU-00002", "qty": Decimal(1),
                       "unit_price": Decimal("5.05")}],
            "total": Decimal("44.85"),
        })
    return out


def _make(n: int, ties: int) -> Made:
    fake = FileDropFake(_orders(n, ties))
    base_url = fake.start()

    def cfg(url: str) -> dict:
        return {"system": "files", "base_url": url, "auth": {}, "lookback_seconds": LOOKBACK,
                "options": {"batch_rows": 2 * PAGE - 1}}

    return Made(app=fake, cfg=cfg, base_url=base_url)  # type: ignore[arg-type]


def _no_auth(cfg: dict) -> tuple[dict, str]:
    return cfg, "<no secret>"  # never called: http=False skips the auth test


def _no_since(requests: list[Any]) -> str | None:
    return None  # no requests: files before cursor - lookback are simply not opened


CASE = Case(
    system="files",
    stream="orders",
    page_size=PAGE,
    lookback_seconds=LOOKBACK,
    make=_make,
    since_sent=_no_since,
    is_data_request=lambda req: True,
    break_auth=_no_auth,
    api_error=lambda fake: fake.break_inbox(),
    silent_empty=None,
    http=False,
    notes={
        "auth": "a local folder has no credentials (file permissions are the OS's)",
        "429": "no rate limit: files are read from a local folder",
        "5xx": "no server: an unreadable folder or file is a SourceError / quarantine",
        "empty": "an empty inbox is a normal answer for a file drop",
    },
)
