"""JiandaoyunConnector against the JiandaoyunFake over real HTTP: keyset pages, the incremental
filter it sends, ties on updateTime, the API's error shapes, 429 + Retry-After, 5xx, mapping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.base import Cursor, MappingError, Page
from connectors.http import ApiError, AuthError, reset_rate_limits
from connectors.jiandaoyun import JiandaoyunConnector
from connectors.registry import build_connector
from sandbox.jiandaoyun import LIST_PATH, JiandaoyunFake, record_id
from sandbox.server import FakeServer

T0 = datetime(2026, 10, 1, tzinfo=UTC)
TIE = T0 + timedelta(hours=5)  # seven customers share this updateTime


def _customers() -> list[dict]:
    out = []
    for i in range(12):
        updated = TIE if 3 <= i < 10 else T0 + timedelta(minutes=i)
        out.append({"code": f"C{i + 1:05d}", "name": f"Customer {i + 1}",
                    "email": f"c{i + 1}@example.com", "region": ("east", "west")[i % 2],
                    "group": "retail", "credit_limit": Decimal("5000.00") + i,
                    "currency": "CNY", "updated_at": updated})
    return out


def _orders() -> list[dict]:
    out = []
    for i in range(4):
        out.append({
            "external_id": f"ord-{i}", "order_no": f"JDY-{i + 1:06d}", "customer_code": "C00001",
            "customer_email": None, "ordered_at": T0 + timedelta(hours=i),
            "updated_at": T0 + timedelta(hours=i, minutes=5), "currency": "CNY",
            "ship_region": "east" if i != 2 else None,
            "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2),
                       "unit_price": Decimal("19.90")},
                      {"line_no": 2, "sku": "SKU-00002", "qty": Decimal(1),
                       "unit_price": "N/A" if i == 3 else Decimal("5.05")}],
            "total": Decimal("44.85"),
        })
    return out


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield
    reset_rate_limits()


@pytest.fixture
def app() -> JiandaoyunFake:
    return JiandaoyunFake(SimpleNamespace(customers=_customers(),
                                          orders={"jiandaoyun": _orders()}))


@pytest.fixture
def server(app: JiandaoyunFake) -> Iterator[FakeServer]:
    with FakeServer(app) as s:
        yield s


def connector(server: FakeServer, app: JiandaoyunFake, **over: Any) -> JiandaoyunConnector:
    cfg: dict[str, Any] = {
        "system": "jiandaoyun", "base_url": server.url, "auth": app.credentials(),
        "options": {**app.options(), "page_size": 5},
        "rate_limit": 0,  # no client-side limit: the fake's own limit is under test
        "retry": {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005},
    }
    cfg.update(over)
    return JiandaoyunConnector("crm", cfg)


def read_all(conn: JiandaoyunConnector, stream: str, cursor: Cursor | None = None) -> list[Page]:
    return list(conn.read(stream, cursor))


def bodies(app: JiandaoyunFake) -> list[dict]:
    return [r.json for r in app.requests if r.path == LIST_PATH]


# ------------------------------------------------------------------------------------- reading


def test_full_read_pages_by_data_id_and_moves_the_cursor_only_at_the_end(
    server: FakeServer, app: JiandaoyunFake
) -> None:
    pages = read_all(connector(server, app), "customers")

    ids = [r.external_id for p in pages for r in p.records]
    assert len(ids) == 12 and ids == sorted(ids)  # ascending _id, nothing twice
    assert [len(p.records) for p in pages] == [5, 5, 2]
    assert [p.cursor for p in pages[:-1]] == [None, None]  # ordered by _id, not updateTime
    newest = max((r.updated_at, r.external_id) for p in pages for r in p.records)
    assert pages[-1].cursor == Cursor("2026-10-01T05:00:00Z", newest[1])

    sent = bodies(app)
    assert [b.get("data_id") for b in sent] == [None, ids[4], ids[9]]
    assert all(b["app_id"] == "orderhub" and b["entry_id"] == "customers" and b["limit"] == 5
               and "filter" not in b for b in sent)
    assert "customer_code" in sent[0]["fields"] and "updateTime" in sent[0]["fields"]


def test_customers_map_to_canonical_records(server: FakeServer, app: JiandaoyunFake) -> None:
    conn = connector(server, app)
    rec = next(r for p in read_all(conn, "customers") for r in p.records
               if r.payload["customer_code"] == "C00002")
    assert conn.map("customers", rec.payload) == {
        "external_id": record_id("customers", "C00002"), "code": "C00002",
        "name": "Customer 2", "email": "c2@example.com", "region": "west",
        "customer_group": "retail", "credit_limit": Decimal("5001.00"), "currency": "CNY",
        "updated_at": T0 + timedelta(minutes=1),
    }
    assert isinstance(rec.payload["credit_limit"], Decimal)  # parse_float=Decimal on the wire


def test_incremental_read_sends_range_on_updatetime_from_cursor_minus_lookback(
    server: FakeServer, app: JiandaoyunFake
) -> None:
    conn = connector(server, app, lookback_seconds=600)
    prior = Cursor("2026-10-01T05:10:00Z", "ffffffffffffffffffffffff")
    pages = read_all(conn, "customers", prior)

    sent = bodies(app)
    assert sent[0]["filter"] == {"rel": "and", "cond": [
        {"field": "updateTime", "method": "range", "value": ["2026-10-01T05:00:00Z", None]}]}
    assert all(b["filter"] == sent[0]["filter"] for b in sent)  # on every keyset page
    got = [r for p in pages for r in p.records]
    assert len(got) == 7 and {r.updated_at for r in got} == {TIE}
    assert pages[-1].cursor == prior  # nothing newer: never moves backwards


def test_rows_sharing_one_updatetime_across_pages_are_all_read(
    server: FakeServer, app: JiandaoyunFake
) -> None:
    conn = connector(server, app, lookback_seconds=0, options={"page_size": 3})
    pages = read_all(conn, "customers", Cursor("2026-10-01T05:00:00Z", "0" * 24))
    got = [r.payload["customer_code"] for p in pages for r in p.records]
    assert len(pages) >= 3  # the seven tied rows span page boundaries
    assert sorted(got) == [f"C{i + 1:05d}" for i in range(3, 10)]


def test_orders_map_lines_and_unparseable_values_raise_mapping_error(
    server: FakeServer, app: JiandaoyunFake
) -> None:
    conn = connector(server, app)
    records = {r.payload["order_no"]: r for p in read_all(conn, "orders") for r in p.records}
    assert len(records) == 4

    order = conn.map("orders", records["JDY-000001"].payload)
    assert order["external_id"] == record_id("sales_orders", "ord-0")
    assert order["customer_code"] == "C00001" and order["customer_email"] is None
    assert order["ordered_at"] == T0 and order["updated_at"] == T0 + timedelta(minutes=5)
    assert order["total"] == Decimal("44.85") and order["currency"] == "CNY"
    assert order["lines"] == [
        {"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2), "unit_price": Decimal("19.90")},
        {"line_no": 2, "sku": "SKU-00002", "qty": Decimal(1), "unit_price": Decimal("5.05")},
    ]
    assert conn.map("orders", records["JDY-000003"].payload)["ship_region"] is None
    with pytest.raises(MappingError, match=r"items\[2\].unit_price"):
        conn.map("orders", records["JDY-000004"].payload)


# -------------------------------------------------------------------------------------- errors


def test_bad_key_is_an_auth_error_naming_the_source_not_the_key(
    server: FakeServer, app: JiandaoyunFake
) -> None:
    conn = connector(server, app, auth={"api_key": "wrong-key-123456"})
    with pytest.raises(AuthError) as info:
        read_all(conn, "customers")
    text = str(info.value)
    assert text.startswith("crm:") and "401" in text and "invalid" in text
    assert "wrong-key-123456" not in text and "\n" not in text


def test_bad_request_surfaces_the_apis_msg(server: FakeServer, app: JiandaoyunFake) -> None:
    conn = connector(server, app, options={"customers_entry": "no_such_entry"})
    with pytest.raises(ApiError) as info:
        read_all(conn, "customers")
    assert info.value.status == 400
    assert "no_such_entry" in str(info.value) and "not found" in str(info.value)


def test_429_waits_for_retry_after_then_continues(server: FakeServer, app: JiandaoyunFake) -> None:
    slept: list[float] = []
    conn = connector(server, app, retry={"max_retries": 3, "backoff_base": 0.001,
                                         "backoff_max": 0.005, "sleep": slept.append})
    app.faults.add(429, retry_after=1, body={"code": 8304, "msg": "rate limit"})
    pages = read_all(conn, "customers")
    assert sum(len(p.records) for p in pages) == 12
    assert slept == [1.0]


def test_documented_rate_limit_answers_429_and_the_read_still_completes() -> None:
    strict = JiandaoyunFake(SimpleNamespace(customers=_customers(), orders={}), fast=False)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    with FakeServer(strict) as srv:
        conn = connector(srv, strict, options={"page_size": 2},
                         retry={"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005,
                                "sleep": sleep})
        pages = read_all(conn, "customers")  # 7 calls at full speed against 5/s
    assert sum(len(p.records) for p in pages) == 12
    assert len(strict.requests) > 7 and slept == [1.0]  # one 429, waited out per Retry-After


def test_5xx_is_retried_then_succeeds(server: FakeServer, app: JiandaoyunFake) -> None:
    app.faults.add(503, times=2)
    pages = read_all(connector(server, app), "customers")
    assert sum(len(p.records) for p in pages) == 12
    assert len(app.requests) == 3 + 2


def test_registry_builds_it_from_sandbox_style_config(
    server: FakeServer, app: JiandaoyunFake
) -> None:
    conn = build_connector("crm", {"system": "jiandaoyun", "base_url": server.url,
                                   "auth": app.credentials(), "options": app.options()})
    assert isinstance(conn, JiandaoyunConnector)
    assert set(conn.streams) == {"customers", "orders"} and conn.operations == set()
