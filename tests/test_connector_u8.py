"""U8Connector against the U8Fake over real HTTP: the token (cached, refreshed before expiry and
once on a token error), page_index paging and the exact query sent, errcode 20002 (zero rows, or
EmptyResultError on a full master read), errors inside HTTP 200, and exactly-once sales orders
through tradeids, the lookup by code and verify."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.base import Cursor, MappingError, Page
from connectors.http import (
    AuthError,
    EmptyResultError,
    PaginationError,
    reset_rate_limits,
)
from connectors.registry import build_connector
from connectors.u8 import ORDER_ADD_PATH, U8Connector, U8Error
from sandbox import start_sandbox
from sandbox.server import FakeServer
from sandbox.u8 import ERR_ACCOUNT, U8Fake

T0 = datetime(2026, 10, 1, tzinfo=UTC)
TIE = T0 + timedelta(hours=4)
SKUS = [f"SKU-{i:05d}" for i in range(1, 4)]
LIST = "/api/saleorderlist/batch_get"


class Clock:
    """A monotonic clock the test moves: shared by the fake and the connector's token."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _dataset() -> SimpleNamespace:
    orders = [{
        "external_id": str(100001 + i), "order_no": f"U8SO{i + 1:06d}",
        "customer_code": "C00001", "customer_email": None,
        "ordered_at": T0 + timedelta(hours=i), "updated_at": TIE if i >= 4 else T0 + timedelta(
            hours=i), "currency": "USD" if i == 1 else "CNY", "ship_region": "east",
        "lines": [{"line_no": n, "sku": SKUS[n - 1], "qty": Decimal(n),
                   "unit_price": "N/A" if (i, n) == (2, 2) else Decimal("19.90") * n}
                  for n in (1, 2)],
        "total": Decimal("99.50"),
    } for i in range(7)]
    customers = [{"code": f"C{i:05d}", "name": f"Customer {i}", "email": f"c{i}@example.com",
                  "region": "east", "group": "vip", "credit_limit": Decimal("8000.00"),
                  "currency": "CNY", "updated_at": T0 + timedelta(minutes=i)} for i in (1, 2)]
    stock = [{"external_id": str(400001 + i), "sku": SKUS[i], "warehouse": "WH-WEST",
              "qty": 50 + i, "updated_at": T0} for i in range(3)]
    receivables = [{"external_id": "700001", "invoice_no": "AR0001", "order_ref": "U8SO000001",
                    "customer_code": "C00001", "currency": "CNY", "amount": Decimal("59.70"),
                    "open_amount": Decimal("20.05"), "issued_at": T0 + timedelta(days=1),
                    "due_date": date(2026, 10, 31), "updated_at": T0 + timedelta(days=1)},
                   {"external_id": "700002", "invoice_no": "AR0002", "order_ref": None,
                    "customer_code": "C00002", "currency": "CNY", "amount": Decimal("10.00"),
                    "open_amount": Decimal("0.00"), "issued_at": T0 - timedelta(days=40),
                    "due_date": None, "updated_at": T0 + timedelta(days=1)}]
    return SimpleNamespace(customers=customers, products=[{"sku": s} for s in SKUS],
                           warehouses=[{"code": "WH-WEST", "region": "west"}], stock=stock,
                           orders={"u8": orders}, receivables=receivables)


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield
    reset_rate_limits()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(clock: Clock) -> U8Fake:
    fake = U8Fake(_dataset())
    fake.clock = clock
    return fake


@pytest.fixture
def server(app: U8Fake) -> Iterator[FakeServer]:
    with FakeServer(app) as s:
        yield s


def connector(server: FakeServer, app: U8Fake, clock: Clock | None = None,
              options: dict | None = None, **over: Any) -> U8Connector:
    cfg: dict[str, Any] = {
        "system": "u8", "base_url": server.url, "auth": app.credentials(),
        "options": {**app.options(), "rows_per_page": 3, **(options or {})}, "rate_limit": 0,
        "retry": {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005},
    }
    cfg.update(over)
    conn = U8Connector("erp_u8", cfg)
    if clock is not None:
        conn.token_auth.clock = clock
    return conn


def read_all(conn: U8Connector, stream: str, cursor: Cursor | None = None) -> list[Page]:
    return list(conn.read(stream, cursor))


def calls(app: U8Fake, path: str) -> list:
    return [r for r in app.requests if r.path == path]


def token_calls(app: U8Fake) -> int:
    return len(calls(app, "/system/token"))


# ------------------------------------------------------------------------------------- reading


def test_full_read_pages_by_page_index_and_every_call_carries_the_auth_params(
    server: FakeServer, app: U8Fake, clock: Clock
) -> None:
    conn = connector(server, app, clock)
    pages = read_all(conn, "orders")

    assert [len(p.records) for p in pages] == [3, 3, 1]
    data = calls(app, LIST)
    assert [r.query["page_index"] for r in data] == ["1", "2", "3"]
    token = conn.token_auth.token
    for r in data:
        assert r.query == {"page_index": r.query["page_index"], "rows_per_page": "3",
                           "from_account": "orderhub_dev", "to_account": "orderhub_ent",
                           "app_key": app.credentials()["app_key"], "token": token,
                           "ds_sequence": "1"}  # no modification filter on a full read
    # listed in id order, not by modifytime: only the last page moves the cursor
    assert [p.cursor for p in pages] == [None, None, Cursor("2026-10-01T04:00:00Z", "100007")]

    read_all(conn, "customers")
    assert token_calls(app) == 1 and conn.token_auth.fetches == 1  # cached across streams


def test_orders_map_to_decimals_and_iso_currencies(server: FakeServer, app: U8Fake) -> None:
    conn = connector(server, app)
    rows = {r.external_id: r.payload for p in read_all(conn, "orders") for r in p.records}

    assert rows["100002"]["currency_name"] == "美元"
    assert rows["100002"]["entry"][1]["originaltaxedprice"] == "39.80"  # U8 sends strings
    assert conn.map("orders", rows["100002"]) == {
        "external_id": "100002", "order_no": "U8SO000002", "customer_code": "C00001",
        "customer_email": None, "ordered_at": T0, "updated_at": T0 + timedelta(hours=1),
        "currency": "USD", "total": Decimal("99.50"), "ship_region": "east",
        "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(1),
                   "unit_price": Decimal("19.90")},
                  {"line_no": 2, "sku": "SKU-00002", "qty": Decimal(2),
                   "unit_price": Decimal("39.80")}]}
    with pytest.raises(MappingError, match=r"entry\[2\].originaltaxedprice"):
        conn.map("orders", rows["100003"])  # "N/A"


def test_incremental_read_sends_the_configured_filter_on_every_page(
    server: FakeServer, app: U8Fake
) -> None:
    conn = connector(server, app, lookback_seconds=600)
    pages = read_all(conn, "orders", Cursor("2026-10-01T03:00:00Z", "100004"))

    assert {r.query["modifytime_begin"] for r in calls(app, LIST)} == {"2026-10-01 02:50:00"}
    assert [r.external_id for p in pages for r in p.records] == [
        "100004", "100005", "100006", "100007"]  # >= 02:50, the tie at 04:00 included
    assert pages[-1].cursor == Cursor("2026-10-01T04:00:00Z", "100007")

    # the real parameter is unverified: a site names its own
    app.since_params["saleorderlist"] = "ts_begin"
    app.reset_log()
    renamed = connector(server, app, options={"orders_since_param": "ts_begin"})
    again = read_all(renamed, "orders", Cursor("2026-10-01T03:00:00Z", "100004"))
    query = calls(app, LIST)[0].query
    assert query["ts_begin"] == "2026-10-01 02:50:00" and "modifytime_begin" not in query
    assert sum(len(p.records) for p in again) == 4


def test_stock_and_receivables_map_with_static_params(server: FakeServer, app: U8Fake) -> None:
    conn = connector(server, app, options={"receivables_params": {"date_begin": "2026-09-01"}})
    rec = [r for p in read_all(conn, "receivables") for r in p.records]
    assert calls(app, "/api/oughtreceivelist/batch_get")[0].query["date_begin"] == "2026-09-01"
    assert [r.external_id for r in rec] == ["700001"]  # AR0002 was issued before date_begin
    assert conn.map("receivables", rec[0].payload) == {
        "external_id": "700001", "invoice_no": "AR0001", "order_ref": "U8SO000001",
        "customer_code": "C00001", "currency": "CNY", "amount": Decimal("59.70"),
        "open_amount": Decimal("20.05"), "issued_at": T0 + timedelta(days=1),
        "due_date": date(2026, 10, 31), "updated_at": T0 + timedelta(days=1)}

    stock = [r for p in read_all(conn, "stock") for r in p.records]
    assert conn.map("stock", stock[2].payload) == {
        "external_id": "400003", "sku": "SKU-00003", "warehouse": "WH-WEST", "region": "west",
        "qty": Decimal(52), "updated_at": T0}
    customer = [r for p in read_all(conn, "customers") for r in p.records][0]
    assert conn.map("customers", customer.payload)["credit_limit"] == Decimal("8000.00")


# ---------------------------------------------------------------------------------------- token


def test_token_is_cached_and_refreshed_before_it_expires(
    server: FakeServer, app: U8Fake, clock: Clock
) -> None:
    conn = connector(server, app, clock)
    read_all(conn, "stock")
    clock.now += 6000          # 7200 s life, refreshed 300 s early: still good
    read_all(conn, "stock")
    assert token_calls(app) == 1
    clock.now += 950           # 6950 s: inside the refresh margin, not yet expired
    read_all(conn, "stock")
    assert token_calls(app) == 2 and conn.token_auth.fetches == 2
    assert [r.query["token"] for r in calls(app, "/api/inventory/batch_get")][-1] == \
        conn.token_auth.token


def test_a_token_error_fetches_a_new_token_once_and_retries(
    server: FakeServer, app: U8Fake, clock: Clock
) -> None:
    conn = connector(server, app, clock)
    read_all(conn, "stock")
    app.expire_tokens()        # server restart: the cached token is unknown now
    assert sum(len(p.records) for p in read_all(conn, "stock")) == 3
    assert token_calls(app) == 2

    app.token_ttl = 0          # every token is dead on arrival: one refresh, then give up
    with pytest.raises(AuthError, match=r"erp_u8: token error: errcode 30001"):
        read_all(connector(server, app, clock), "stock")
    assert token_calls(app) == 4


def test_wrong_secret_fails_the_token_call_without_showing_it(
    server: FakeServer, app: U8Fake
) -> None:
    auth = {**app.credentials(), "app_secret": "wrong-secret-31337"}
    with pytest.raises(AuthError) as info:
        read_all(connector(server, app, auth=auth), "orders")
    text = str(info.value)
    assert text.startswith("erp_u8: token refused: errcode 30002")
    assert "wrong-secret-31337" not in text and "app_secret=***" in text
    assert token_calls(app) == 1 and not calls(app, LIST)


# ------------------------------------------------------------------------------ errcode answers


def test_no_data_on_an_incremental_read_is_zero_rows_not_an_error(
    server: FakeServer, app: U8Fake, caplog: pytest.LogCaptureFixture
) -> None:
    conn = connector(server, app)
    app.no_data.update({"saleorderlist", "customer"})
    with caplog.at_level(logging.INFO, logger="orderhub.connectors.u8"):
        pages = read_all(conn, "customers", Cursor("2026-10-01T00:00:00Z", "C00001"))
    assert [p.records for p in pages] == [[]]
    assert "errcode 20002" in caplog.text
    # a full read of a transactional stream may be empty; of a master stream it may not
    assert [p.records for p in read_all(conn, "orders")] == [[]]
    with pytest.raises(EmptyResultError, match="erp_u8: customers: a full read"):
        read_all(conn, "customers")


def test_an_errcode_inside_http_200_is_an_api_error(server: FakeServer, app: U8Fake) -> None:
    conn = connector(server, app, options={"ds_sequence": 9})  # a data source that is not there
    with pytest.raises(U8Error) as info:
        read_all(conn, "orders")
    assert info.value.errcode == ERR_ACCOUNT and info.value.status == 200
    assert f"erp_u8: errcode {ERR_ACCOUNT}: 数据源 ds_sequence '9' 不存在" in str(info.value)


def test_an_api_ignoring_page_index_raises_instead_of_reading_forever(
    server: FakeServer, app: U8Fake
) -> None:
    app.stuck_paging = True
    with pytest.raises(PaginationError, match="page_index 2 repeated the rows"):
        read_all(connector(server, app), "orders")


def test_429_and_5xx_are_retried(server: FakeServer, app: U8Fake) -> None:
    slept: list[float] = []
    conn = connector(server, app, retry={"max_retries": 3, "backoff_base": 0.001,
                                         "backoff_max": 0.005, "sleep": slept.append})
    app.faults.add(429, retry_after=2, path=LIST)
    app.faults.add(503, times=2, path=LIST)
    assert sum(len(p.records) for p in read_all(conn, "orders")) == 7
    assert slept[0] == 2.0 and len(slept) == 3


# ---------------------------------------------------------------------------------------- push


def so_doc(n: int, customer: str = "C00001", **over: Any) -> dict:
    return {"key": f"erp_u8:sales_order:OH-{n:06d}", "bill_no": f"OH-{n:06d}",
            "order_no": f"#{1000 + n}", "source": "shopify", "customer_code": customer,
            "currency": "USD", "ordered_at": "2026-10-02T08:00:00Z", "total": "29.40",
            "lines": [{"sku": "SKU-00001", "qty": "2", "unit_price": "1.40"},
                      {"sku": "SKU-00002", "qty": "1", "unit_price": "26.60"}], **over}


def test_push_takes_a_tradeid_adds_and_verifies(server: FakeServer, app: U8Fake) -> None:
    results = connector(server, app).push("sales_order", [so_doc(1)])

    assert [(r.ok, r.remote_id) for r in results] == [(True, "OH-000001")]
    assert app.creates == {("sales_order", "OH-000001"): 1}
    assert [r.path for r in app.requests] == [
        "/system/token", "/system/tradeid", ORDER_ADD_PATH, "/api/saleorder/verify"]
    add = calls(app, ORDER_ADD_PATH)[0]
    assert add.query["tradeid"] in app.tradeids
    assert add.json == {"saleorder": {
        "code": "OH-000001", "date": "2026-10-02", "cuscode": "C00001", "currency_name": "美元",
        "sum": Decimal("29.40"), "memo": "orderhub shopify #1001", "define11": "#1001",
        "entry": [{"rowno": 1, "inventorycode": "SKU-00001", "quantity": Decimal(2),
                   "originaltaxedprice": Decimal("1.40"), "originalsum": Decimal("2.80")},
                  {"rowno": 2, "inventorycode": "SKU-00002", "quantity": Decimal(1),
                   "originaltaxedprice": Decimal("26.60"), "originalsum": Decimal("26.60")}]}}
    assert calls(app, "/api/saleorder/verify")[0].json == {"saleorder": {"code": "OH-000001"}}
    assert app.order("OH-000001")["verifier"] == "orderhub"


def test_rerun_with_recover_and_a_crash_like_resend_create_exactly_once(
    server: FakeServer, app: U8Fake
) -> None:
    conn = connector(server, app)
    first = conn.push("sales_order", [so_doc(1)])

    app.reset_log()
    rerun = conn.push("sales_order", [so_doc(1), so_doc(2)], recover=True)
    assert [r.ok for r in rerun] == [True, True]
    assert rerun[0].remote_id == first[0].remote_id
    assert [r.query["id"] for r in calls(app, "/api/saleorder/get")] == ["OH-000001", "OH-000002"]
    assert len(calls(app, ORDER_ADD_PATH)) == 1  # only OH-000002

    # a crash between add and mark_done: the outbox resends without recover
    app.reset_log()
    resent = conn.push("sales_order", [so_doc(1)])
    assert resent[0].ok and resent[0].remote_id == "OH-000001"
    assert [r.path for r in app.requests] == [
        "/system/tradeid", ORDER_ADD_PATH, "/api/saleorder/get"]  # refused as duplicate, found
    assert app.creates == {("sales_order", "OH-000001"): 1, ("sales_order", "OH-000002"): 1}
    assert not [o for o in read_all(conn, "orders") for o in o.records
                if o.payload["code"].startswith("OH-")]  # ours stay out of `orders`


def test_a_lost_add_answer_is_retried_with_the_same_tradeid(
    server: FakeServer, app: U8Fake
) -> None:
    app.lose_add_responses = 1  # U8 added it, the 502 hides that
    results = connector(server, app).push("sales_order", [so_doc(3)])

    assert results[0].ok
    adds = calls(app, ORDER_ADD_PATH)
    assert len(adds) == 2 and adds[0].query["tradeid"] == adds[1].query["tradeid"]
    assert len(calls(app, "/system/tradeid")) == 1
    assert app.creates == {("sales_order", "OH-000003"): 1}  # the replay created nothing


def test_a_crash_between_add_and_verify_is_finished_by_recover(
    server: FakeServer, app: U8Fake
) -> None:
    conn = connector(server, app)
    app.faults.add(500, times=4, path="/api/saleorder/verify")  # past the 3 retries
    failed = conn.push("sales_order", [so_doc(4)])
    assert not failed[0].ok and "HTTP 500" in (failed[0].error or "")
    assert app.order("OH-000004")["verifier"] is None

    done = conn.push("sales_order", [so_doc(4)], recover=True)
    assert done[0].ok and app.order("OH-000004")["verifier"] == "orderhub"
    assert app.creates == {("sales_order", "OH-000004"): 1}


def test_a_bad_doc_fails_alone(server: FakeServer, app: U8Fake) -> None:
    docs = [so_doc(5), so_doc(6, customer="C99999"),
            so_doc(7, lines=[{"sku": "SKU-00001", "qty": "lots", "unit_price": "1"}]), so_doc(8)]
    results = connector(server, app).push("sales_order", docs)

    assert [r.ok for r in results] == [True, False, False, True]
    assert (results[1].error or "").startswith("erp_u8: errcode 40004: 客户“C99999”不存在")
    assert "lines[1].qty" in (results[2].error or "")
    assert app.creates == {("sales_order", "OH-000005"): 1, ("sales_order", "OH-000008"): 1}


def test_an_erp_order_that_only_shares_the_code_is_not_taken_for_ours(
    server: FakeServer, app: U8Fake
) -> None:
    clash = so_doc(10, bill_no="U8SO000001")  # the number of one of the ERP's own orders
    conn = connector(server, app)
    for recover in (False, True):
        result = conn.push("sales_order", [clash], recover=recover)[0]
        assert not result.ok and "belongs to another order" in (result.error or "")
    assert not app.creates and not calls(app, "/api/saleorder/verify")


def test_the_fake_replays_the_first_answer_for_a_reused_tradeid(
    server: FakeServer, app: U8Fake
) -> None:
    conn = connector(server, app)
    trade = conn.new_tradeid()
    body = {"saleorder": {"code": "OH-000009", "cuscode": "C00001",
                          "entry": [{"inventorycode": "SKU-00001", "quantity": 1,
                                     "originaltaxedprice": "1.00"}]}}
    first = conn.http.post(ORDER_ADD_PATH, params={"tradeid": trade}, json=body).data
    again = conn.http.post(ORDER_ADD_PATH, params={"tradeid": trade}, json=body).data
    assert first == again == {"errcode": "0", "errmsg": "", "id": "OH-000009", "tradeid": trade}
    assert app.creates == {("sales_order", "OH-000009"): 1}
    with pytest.raises(U8Error, match="errcode 40002"):
        conn.http.post(ORDER_ADD_PATH, params={"tradeid": "never-issued"}, json=body)


def test_registry_and_sandbox_config() -> None:
    with start_sandbox(_dataset(), systems=("u8",)) as sb:
        conn = build_connector("erp_u8", {"system": "u8", **sb.sources()["u8"]})
        assert isinstance(conn, U8Connector)
        assert set(conn.streams) == {"orders", "customers", "stock", "receivables"}
        assert conn.operations == {"sales_order"}
        assert sum(len(p.records) for p in conn.read("orders", None)) == 7
