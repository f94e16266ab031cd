"""SapConnector against SapFake over real HTTP: OData V2 paging by d.__next and the exact query
sent, /Date()/ values and Edm.Decimal strings, billing documents, and exactly-once sales orders
(CSRF token + cookie, deep insert, lookup by PurchaseOrderByCustomer, ETag-guarded PATCH)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from connectors.base import Cursor, MappingError, Page
from connectors.http import ApiError, AuthError, PaginationError, reset_rate_limits
from connectors.registry import build_connector
from connectors.sap import SapConnector, map_order, map_receivable, parse_odata_datetime
from sandbox import start_sandbox
from sandbox.sap import PASSWORD, USERNAME, SapFake
from sandbox.server import FakeServer, Request, Response

T0 = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)  # the fake's clock: creates and changes happen "now"
SKUS = ["SKU-00001", "SKU-00002", "SKU-00003"]
SO_PATH = "/sap/opu/odata/sap/API_SALES_ORDER_SRV/A_SalesOrder"


def neutral(i: int, **over: Any) -> dict:
    o = {"external_id": str(5_000_001 + i), "order_no": f"PO-{i:04d}",
         "customer_code": "C00001", "customer_email": None,
         "ordered_at": T0 + timedelta(hours=i, minutes=30),
         "updated_at": T0 + timedelta(hours=1 + i), "currency": "CNY", "ship_region": "east",
         "lines": [{"line_no": 1, "sku": SKUS[0], "qty": Decimal(2), "unit_price": Decimal("10.50")},
                   {"line_no": 2, "sku": SKUS[1], "qty": Decimal(1), "unit_price": Decimal("4.25")}],
         "total": Decimal("25.25")}
    o.update(over)
    return o


def dataset(n: int = 5) -> SimpleNamespace:
    return SimpleNamespace(orders={"sap": [neutral(i) for i in range(n)]},
                           customers=[{"code": "C00001"}, {"code": "C00002"}],
                           products=[{"sku": s} for s in SKUS])


BILLS = [
    {"external_id": "90000001", "sales_order": "5000001", "customer_code": "C00001",
     "currency": "CNY", "amount": Decimal("25.25"), "tax": Decimal("3.28"),
     "issued_at": T0 + timedelta(days=1), "updated_at": T0 + timedelta(days=1, hours=2)},
    {"external_id": "90000002", "sales_order": "5000002", "customer_code": "C00002",
     "currency": "CNY", "amount": Decimal("100.00"), "issued_at": T0 + timedelta(days=2),
     "updated_at": T0 + timedelta(days=2, hours=2), "cancelled": True},
]


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield
    reset_rate_limits()


@pytest.fixture
def app() -> SapFake:
    return SapFake(dataset(), page_size=2, billing_documents=BILLS, clock=lambda: NOW)


@pytest.fixture
def server(app: SapFake) -> Iterator[FakeServer]:
    with FakeServer(app) as s:
        yield s


def connector(server: FakeServer, app: SapFake, **over: Any) -> SapConnector:
    cfg: dict[str, Any] = {
        "system": "sap", "base_url": server.url + app.base_path, "auth": app.credentials(),
        "options": app.options(), "rate_limit": 0, "lookback_seconds": 600,
        "retry": {"max_retries": 2, "backoff_base": 0.001, "backoff_max": 0.005},
    }
    cfg.update(over)
    return SapConnector("s4", cfg)


def read_all(conn: SapConnector, stream: str, cursor: Cursor | None = None) -> list[Page]:
    return list(conn.read(stream, cursor))


def ids(pages: list[Page]) -> list[str]:
    return [r.external_id for p in pages for r in p.records]


def sent(app: SapFake, method: str, path_end: str) -> list[Request]:
    return [r for r in app.requests if r.method == method and r.path.endswith(path_end)]


def fetches(app: SapFake) -> list[Request]:
    return [r for r in app.requests if r.header("x-csrf-token") == "Fetch"]


# ------------------------------------------------------------------------------------- reading


def test_full_read_follows_next_and_sends_the_documented_query(
    server: FakeServer, app: SapFake
) -> None:
    conn = connector(server, app)
    pages = read_all(conn, "orders")

    assert [len(p.records) for p in pages] == [2, 2, 1]
    assert ids(pages) == [str(5_000_001 + i) for i in range(5)]
    data = sent(app, "GET", "/A_SalesOrder")
    assert [r.query for r in data[:1]] == [{
        "$orderby": "LastChangeDateTime asc,SalesOrder asc",
        "$expand": "to_Item,to_Item/to_PricingElement", "$format": "json", "sap-client": "100"}]
    assert [r.query.get("$skiptoken") for r in data] == [None, "2", "4"]
    # ordered by (LastChangeDateTime, SalesOrder): every page carries the newest position
    assert [p.cursor for p in pages] == [Cursor("2026-10-01T02:00:00Z", "5000002"),
                                         Cursor("2026-10-01T04:00:00Z", "5000004"),
                                         Cursor("2026-10-01T05:00:00Z", "5000005")]
    assert not fetches(app)  # reads need no CSRF token


def test_incremental_read_sends_the_exact_filter_percent_encoded(
    server: FakeServer, app: SapFake
) -> None:
    conn = connector(server, app, lookback_seconds=1800)
    pages = read_all(conn, "orders", Cursor("2026-10-01T03:10:00Z", "5000003"))

    assert ids(pages) == ["5000003", "5000004", "5000005"]  # >= 02:40:00
    first = sent(app, "GET", "/A_SalesOrder")[0]
    assert first.query["$filter"] == "LastChangeDateTime ge datetimeoffset'2026-10-01T02:40:00Z'"
    spec = conn.streams["orders"]
    req = conn.build_request(spec, datetime(2026, 10, 1, 2, 40, tzinfo=UTC),
                             spec.paginator(1000))
    assert "$filter=LastChangeDateTime%20ge%20datetimeoffset'2026-10-01T02:40:00Z'" in req.path
    assert "+" not in req.path
    assert pages[-1].cursor == Cursor("2026-10-01T05:00:00Z", "5000005")


def test_orders_filter_keeps_out_orders_orderhub_pushed(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app, options={
        **app.options(), "orders_filter": "not startswith(PurchaseOrderByCustomer,'SO-')"})
    [pushed] = conn.push("sales_order", [so_doc(1)])
    assert pushed.ok and pushed.remote_id in app.sales_orders
    assert ids(read_all(conn, "orders")) == [str(5_000_001 + i) for i in range(5)]
    assert sent(app, "GET", "/A_SalesOrder")[-1].query["$filter"] == (
        "not startswith(PurchaseOrderByCustomer,'SO-')")
    pages = read_all(conn, "orders", Cursor("2026-10-01T05:00:00Z", "5000005"))
    assert ids(pages) == ["5000005"]  # the pushed order, changed at NOW, stays out
    assert sent(app, "GET", "/A_SalesOrder")[-1].query["$filter"] == (
        "(not startswith(PurchaseOrderByCustomer,'SO-')) and "
        "(LastChangeDateTime ge datetimeoffset'2026-10-01T04:50:00Z')")
    unfiltered = connector(server, app)
    assert pushed.remote_id in ids(read_all(unfiltered, "orders", Cursor(
        "2026-10-01T05:00:00Z", "5000005")))


def test_server_urls_naming_an_internal_host_are_used_on_ours(
    server: FakeServer, app: SapFake
) -> None:
    original = app.after_request
    internal = "https://s4-internal.corp:44300/gw/sap/opu/odata/sap"

    def behind_a_proxy(req: Request, resp: Response) -> Response:
        resp = original(req, resp)
        if isinstance(resp.body, str):  # the gateway names its own host and path
            resp.body = resp.body.replace(req.base_url + app.base_path, internal)
        return resp

    app.after_request = behind_a_proxy  # type: ignore[method-assign]
    conn = connector(server, app)
    assert len(ids(read_all(conn, "orders"))) == 5  # __next followed on our host
    conn.push("sales_order", [so_doc(1, lines=[{"sku": SKUS[0], "qty": "1", "unit_price": "10.50"}])])
    changed = so_doc(1, lines=[{"sku": SKUS[0], "qty": "7", "unit_price": "10.50"}])
    [result] = conn.push("sales_order", [changed], recover=True)
    assert result.ok  # the PATCH went to __metadata.uri's entity, on our host
    assert [p.path.rsplit("/", 1)[-1] for p in sent(app, "PATCH", ")")] == [
        f"A_SalesOrderItem(SalesOrder='{result.remote_id}',SalesOrderItem='10')"]


def test_a_repeated_next_url_raises_instead_of_looping(server: FakeServer, app: SapFake) -> None:
    original = app.after_request

    def stuck(req: Request, resp: Response) -> Response:
        resp = original(req, resp)
        if isinstance(resp.body, str):
            resp.body = resp.body.replace("$skiptoken=4", "$skiptoken=2")
        return resp

    app.after_request = stuck  # type: ignore[method-assign]
    with pytest.raises(PaginationError, match="s4: page token .* repeated"):
        read_all(connector(server, app), "orders")


def test_orders_map_dates_and_money_as_decimal_from_the_wire(
    server: FakeServer, app: SapFake
) -> None:
    conn = connector(server, app)
    raw = read_all(conn, "orders")[0].records[0]
    assert raw.payload["LastChangeDateTime"] == "/Date(1790816400000+0000)/"  # \/ unescaped
    assert raw.payload["TotalNetAmount"] == "25.25"
    assert conn.map("orders", raw.payload) == {
        "external_id": "5000001", "order_no": "5000001", "customer_code": "C00001",
        "customer_email": None, "ordered_at": T0, "updated_at": T0 + timedelta(hours=1),
        "currency": "CNY", "total": Decimal("25.25"), "ship_region": "east",
        "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal("2.000"),
                   "unit_price": Decimal("10.50")},
                  {"line_no": 2, "sku": "SKU-00002", "qty": Decimal("1.000"),
                   "unit_price": Decimal("4.25")}]}


def test_map_order_edge_cases() -> None:
    assert parse_odata_datetime("/Date(1700000000000)/", "x") == datetime(
        2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert parse_odata_datetime("/Date(1700000000123+0000)/", "x") == datetime(
        2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert parse_odata_datetime("2026-10-01T08:00:00+08:00", "x") == T0
    assert parse_odata_datetime("", "x") is None
    with pytest.raises(MappingError, match="LastChangeDateTime"):
        parse_odata_datetime("/Date(soon)/", "LastChangeDateTime")

    def item(no: str, qty: str, rate: str, per: str = "1") -> dict:
        return {"SalesOrderItem": no, "Material": f"M-{no}", "RequestedQuantity": qty,
                "to_PricingElement": {"results": [
                    {"ConditionType": "K007", "ConditionRateValue": "-5.00",
                     "ConditionQuantity": "1"},
                    {"ConditionType": "PR00", "ConditionRateValue": rate,
                     "ConditionQuantity": per}]}}

    order = {"SalesOrder": "42", "SoldToParty": "", "SalesDistrict": "", "TransactionCurrency": "EUR",
             "TotalNetAmount": "1250.000", "CreationDate": "/Date(1790812800000)/",
             "LastChangeDateTime": "/Date(1790812800000+0000)/", "ShipRegionZ": "north",
             "to_Item": {"results": [item("100", "3", "1500.00", per="100"), item("20", "0", "7")]}}
    mapped = map_order(order, region_field="ShipRegionZ")
    assert mapped["customer_code"] is None and mapped["ship_region"] == "north"
    assert mapped["ordered_at"] == T0 and mapped["total"] == Decimal("1250.000")
    # items in SalesOrderItem order (20 before 100); a rate per 100 pieces is per piece here
    assert [(ln["sku"], ln["qty"], ln["unit_price"]) for ln in mapped["lines"]] == [
        ("M-20", Decimal(0), Decimal(7)), ("M-100", Decimal(3), Decimal("15.00"))]
    with pytest.raises(MappingError, match="to_Item: not expanded"):
        map_order({**order, "to_Item": {"__deferred": {"uri": "..."}}})
    bad = {**order, "to_Item": {"results": [item("10", "1", "N/A")]}}
    with pytest.raises(MappingError, match=r"to_Item\[1\].ConditionRateValue"):
        map_order(bad)


def test_unparseable_price_from_the_fake_is_rejected(server: FakeServer) -> None:
    broken = neutral(0, lines=[{"line_no": 1, "sku": SKUS[0], "qty": 1, "unit_price": "N/A"}])
    app = SapFake(SimpleNamespace(orders={"sap": [broken]}))
    with FakeServer(app) as s:
        conn = connector(s, app)
        raw = read_all(conn, "orders")[0].records[0]
        with pytest.raises(MappingError, match="ConditionRateValue: not a number"):
            conn.map("orders", raw.payload)


def test_a_cursor_truncated_to_milliseconds_never_skips_the_row(server: FakeServer) -> None:
    # the server keeps microseconds, /Date()/ shows milliseconds: the cursor lies just before
    # the row's true LastChangeDateTime, and "ge" must still return it
    app = SapFake(dataset(0), clock=lambda: datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC))
    with FakeServer(app) as s:
        conn = connector(s, app, lookback_seconds=0)
        [pushed] = conn.push("sales_order", [so_doc(1)])
        [page] = read_all(conn, "orders")
        assert page.cursor == Cursor("2026-11-01T12:00:00.123000Z", pushed.remote_id)
        assert ids(read_all(conn, "orders", page.cursor)) == [pushed.remote_id]


def test_billing_documents_map_to_receivables(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app)
    pages = read_all(conn, "receivables", Cursor("2026-10-02T02:00:00Z", "90000001"))
    assert ids(pages) == ["90000001", "90000002"]
    q = sent(app, "GET", "/API_BILLING_DOCUMENT_SRV/A_BillingDocument")[0].query
    assert q["$filter"] == "LastChangeDateTime ge datetimeoffset'2026-10-02T01:50:00Z'"
    assert q["$orderby"] == "LastChangeDateTime asc,BillingDocument asc"
    rows = [conn.map("receivables", r.payload) for p in pages for r in p.records]
    assert rows[0] == {
        "external_id": "90000001", "invoice_no": "90000001", "order_ref": "5000001",
        "customer_code": "C00001", "currency": "CNY", "amount": Decimal("28.53"),
        "open_amount": None, "issued_at": T0 + timedelta(days=1), "due_date": None,
        "updated_at": T0 + timedelta(days=1, hours=2)}
    assert rows[1]["open_amount"] == Decimal(0) and rows[1]["amount"] == Decimal("100.00")
    with pytest.raises(MappingError, match="TotalNetAmount: missing"):
        map_receivable({**pages[0].records[0].payload, "TotalNetAmount": None})


def test_wrong_password_is_an_auth_error_naming_the_source(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app, auth={"username": USERNAME, "password": "nope-nope-123"})
    with pytest.raises(AuthError) as info:
        read_all(conn, "orders")
    text = str(info.value)
    assert text.startswith("s4: credentials refused, HTTP 401") and "Logon failed" in text
    assert "nope-nope-123" not in text


def test_an_api_error_answers_in_odata_shape(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app, options={**app.options(), "orders_filter": "NoSuchField eq 'x'"})
    with pytest.raises(ApiError) as info:
        read_all(conn, "orders")
    assert info.value.status == 400
    assert "Property 'NoSuchField' not found in type 'A_SalesOrderType'" in str(info.value)


# ---------------------------------------------------------------------------------------- push


def so_doc(n: int, customer: str = "C00001", **over: Any) -> dict:
    doc = {"key": f"s4:sales_order:SO-shopify-{1000 + n}", "bill_no": f"SO-shopify-{1000 + n}",
           "order_no": f"#{1000 + n}", "source": "shopify", "customer_code": customer,
           "currency": "CNY", "ordered_at": "2026-10-02T08:00:00Z", "total": "25.25",
           "lines": [{"sku": SKUS[0], "qty": "2", "unit_price": "10.50"},
                     {"sku": SKUS[1], "qty": "1", "unit_price": "4.25"}]}
    doc.update(over)
    return doc


def test_push_fetches_a_csrf_token_and_deep_inserts_once(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app)
    results = conn.push("sales_order", [so_doc(1), so_doc(2), so_doc(3)])

    assert [r.ok for r in results] == [True, True, True]
    assert app.creates == {("sales_order", f"SO-shopify-{1000 + n}"): 1 for n in (1, 2, 3)}
    [fetch] = fetches(app)  # once per push batch
    assert fetch.method == "GET" and fetch.path.endswith("/API_SALES_ORDER_SRV/")
    posts = sent(app, "POST", "/A_SalesOrder")
    token = next(iter(app.sessions.values()))
    assert {p.header("x-csrf-token") for p in posts} == {token}
    assert all("SAP_SESSIONID_S4H_100=" in (p.header("cookie") or "") for p in posts)
    assert posts[0].query == {"sap-client": "100"}
    assert posts[0].json == {
        "SalesOrderType": "OR", "SalesOrganization": "1010", "DistributionChannel": "10",
        "OrganizationDivision": "00", "SoldToParty": "C00001",
        "PurchaseOrderByCustomer": "SO-shopify-1001", "TransactionCurrency": "CNY",
        "SalesOrderDate": "/Date(1790899200000)/",
        "to_Item": {"results": [
            {"SalesOrderItem": "10", "Material": "SKU-00001", "RequestedQuantity": "2",
             "to_PricingElement": {"results": [{"ConditionType": "PR00",
                                                "ConditionRateValue": "10.50",
                                                "ConditionCurrency": "CNY"}]}},
            {"SalesOrderItem": "20", "Material": "SKU-00002", "RequestedQuantity": "1",
             "to_PricingElement": {"results": [{"ConditionType": "PR00",
                                                "ConditionRateValue": "4.25",
                                                "ConditionCurrency": "CNY"}]}}]}}
    created = app.sales_orders[results[0].remote_id]
    assert created.values["TotalNetAmount"] == Decimal("25.25")
    assert created.values["PurchaseOrderByCustomer"] == "SO-shopify-1001"


def test_a_stale_token_is_refetched_once(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app)
    original, expired = app.before_request, []

    def expire_before_first_post(req: Request) -> Response | None:
        if req.method == "POST" and not expired:
            expired.append(req)
            app.expire_sessions()  # the session timed out between fetch and POST
        return original(req)

    app.before_request = expire_before_first_post  # type: ignore[method-assign]
    [result] = conn.push("sales_order", [so_doc(1)])

    assert result.ok and app.creates[("sales_order", "SO-shopify-1001")] == 1
    assert len(fetches(app)) == 2 and len(sent(app, "POST", "/A_SalesOrder")) == 2
    # a token refused twice is an auth problem for the whole batch
    app.faults.add(403, times=2, body="CSRF token validation failed",
                   headers={"x-csrf-token": "Required"}, path="A_SalesOrder$")
    with pytest.raises(AuthError, match="s4: credentials refused, HTTP 403: CSRF token"):
        conn.push("sales_order", [so_doc(2)])
    assert ("sales_order", "SO-shopify-1002") not in app.creates


def test_the_fake_refuses_writes_without_token_and_cookie(server: FakeServer, app: SapFake) -> None:
    url, auth = server.url + SO_PATH, (USERNAME, PASSWORD)
    resp = requests.post(url, json={}, auth=auth, timeout=5)
    assert resp.status_code == 403 and resp.text == "CSRF token validation failed"
    assert resp.headers["x-csrf-token"] == "Required"
    with requests.Session() as s:
        token = s.get(server.url + "/sap/opu/odata/sap/API_SALES_ORDER_SRV/", auth=auth,
                      headers={"X-CSRF-Token": "Fetch"}, timeout=5).headers["x-csrf-token"]
        bare = requests.post(url, json={}, auth=auth, headers={"X-CSRF-Token": token}, timeout=5)
        assert bare.status_code == 403  # the token belongs to the session cookie
        ok = s.post(url + "?$format=json", auth=auth, headers={"X-CSRF-Token": token},
                    json={"SalesOrderType": "OR"}, timeout=5)
        assert ok.status_code == 400 and ok.json()["error"]["code"] == "V1/320"


def test_rerun_with_recover_looks_up_and_creates_nothing(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app)
    first = conn.push("sales_order", [so_doc(1), so_doc(2)])
    app.reset_log()
    again = conn.push("sales_order", [so_doc(1), so_doc(2), so_doc(3)], recover=True)

    assert [r.ok for r in again] == [True, True, True]
    assert [r.remote_id for r in again[:2]] == [r.remote_id for r in first]
    assert sum(app.creates.values()) == 3 and max(app.creates.values()) == 1
    lookup = sent(app, "GET", "/A_SalesOrder")[0].query
    assert lookup["$filter"] == "PurchaseOrderByCustomer eq 'SO-shopify-1001'"
    assert len(sent(app, "POST", "/A_SalesOrder")) == 1  # only SO-shopify-1003
    assert not sent(app, "PATCH", ")")  # identical orders are left alone


def test_a_duplicate_refusal_means_it_exists(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app)
    first = conn.push("sales_order", [so_doc(1)])
    again = conn.push("sales_order", [so_doc(1)])  # a crash before marking: resent, no recover
    assert again[0].ok and again[0].remote_id == first[0].remote_id
    assert app.creates[("sales_order", "SO-shopify-1001")] == 1
    assert len(sent(app, "POST", "/A_SalesOrder")) == 2  # the second was refused (V4/115)


def test_an_answer_lost_after_the_create_is_recovered_by_lookup(
    server: FakeServer, app: SapFake
) -> None:
    original, lost = app.after_request, []

    def drop_first_create_answer(req: Request, resp: Response) -> Response:
        resp = original(req, resp)
        if req.method == "POST" and resp.status == 201 and not lost:
            lost.append(resp)
            return Response(504, body="Gateway Timeout")  # created, but we never hear it
        return resp

    app.after_request = drop_first_create_answer  # type: ignore[method-assign]
    [result] = connector(server, app).push("sales_order", [so_doc(1)])
    assert result.ok and result.remote_id in app.sales_orders
    assert app.creates[("sales_order", "SO-shopify-1001")] == 1
    assert len(sent(app, "POST", "/A_SalesOrder")) == 1  # no blind resend of a create


def test_a_found_order_that_differs_is_patched_with_if_match(
    server: FakeServer, app: SapFake
) -> None:
    conn = connector(server, app)
    [created] = conn.push("sales_order", [so_doc(1)])
    number = created.remote_id
    etag = app.sales_orders[number].values["LastChangeDateTime"]
    changed = so_doc(1, ordered_at="2026-10-03T09:00:00Z",
                     lines=[{"sku": SKUS[0], "qty": "3", "unit_price": "10.50"},
                            {"sku": SKUS[1], "qty": "1", "unit_price": "4.00"}])
    app.reset_log()
    [result] = conn.push("sales_order", [changed], recover=True)

    assert result.ok and result.remote_id == number
    patches = sent(app, "PATCH", ")")
    assert [p.path.rsplit("/", 1)[-1] for p in patches] == [
        f"A_SalesOrder('{number}')",
        f"A_SalesOrderItem(SalesOrder='{number}',SalesOrderItem='10')",
        f"A_SalesOrderItemPrElement(SalesOrder='{number}',SalesOrderItem='20',"
        "PricingProcedureStep='10',PricingProcedureCounter='1')"]
    assert [p.json for p in patches] == [{"SalesOrderDate": "/Date(1790985600000)/"},
                                         {"RequestedQuantity": "3"},
                                         {"ConditionRateValue": "4.00"}]
    assert patches[0].header("if-match").startswith("W/\"datetimeoffset'")
    assert len({p.header("if-match") for p in patches}) == 3  # each PATCH moved the ETag
    assert all(p.header("x-csrf-token") for p in patches)
    order = app.sales_orders[number]
    assert order.values["TotalNetAmount"] == Decimal("35.50")
    assert order.values["LastChangeDateTime"] > etag
    assert app.creates[("sales_order", "SO-shopify-1001")] == 1


def test_a_412_rereads_the_order_and_retries_once(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app)
    [created] = conn.push("sales_order", [so_doc(1)])
    original, touched = app.before_request, []

    def someone_else_changes_it(req: Request) -> Response | None:
        if req.method == "PATCH" and len(touched) < want_touches:
            touched.append(req)
            app.touch(created.remote_id)  # between our read and our PATCH
        return original(req)

    app.before_request = someone_else_changes_it  # type: ignore[method-assign]
    more = so_doc(1, lines=[{"sku": SKUS[0], "qty": "5", "unit_price": "10.50"},
                            {"sku": SKUS[1], "qty": "1", "unit_price": "4.25"}])
    want_touches = 1
    [result] = conn.push("sales_order", [more], recover=True)
    assert result.ok
    assert len(sent(app, "PATCH", ")")) == 2  # 412, then the retry with the fresh ETag
    qty = app.sales_orders[created.remote_id].children["to_Item"][0].values["RequestedQuantity"]
    assert qty == Decimal(5)

    want_touches, app.requests[:] = 3, []
    [result] = conn.push("sales_order", [so_doc(1, lines=[
        {"sku": SKUS[0], "qty": "6", "unit_price": "10.50"},
        {"sku": SKUS[1], "qty": "1", "unit_price": "4.25"}])], recover=True)
    assert not result.ok and "HTTP 412" in (result.error or "")
    assert result.error.startswith("s4:") and len(sent(app, "PATCH", ")")) == 2


def test_the_fake_wants_if_match_on_patch(server: FakeServer, app: SapFake) -> None:
    auth = (USERNAME, PASSWORD)
    with requests.Session() as s:
        token = s.get(server.url + "/sap/opu/odata/sap/API_SALES_ORDER_SRV/", auth=auth,
                      headers={"X-CSRF-Token": "Fetch"}, timeout=5).headers["x-csrf-token"]
        url = f"{server.url}{SO_PATH}('5000001')"
        headers = {"X-CSRF-Token": token, "Accept": "application/json"}
        missing = s.patch(url, json={"SoldToParty": "C00002"}, auth=auth, headers=headers,
                          timeout=5)
        assert missing.status_code == 428 and "If-Match" in missing.json()["error"]["message"][
            "value"]
        stale = s.patch(url, json={"SoldToParty": "C00002"}, auth=auth, timeout=5,
                        headers={**headers, "If-Match": 'W/"datetimeoffset\'2000\'"'})
        assert stale.status_code == 412
        etag = s.get(url + "?$format=json", auth=auth, timeout=5).headers["ETag"]
        ok = s.patch(url, json={"SoldToParty": "C00002"}, auth=auth, timeout=5,
                     headers={**headers, "If-Match": etag})
        assert ok.status_code == 204 and ok.headers["ETag"] != etag


def test_different_materials_are_reported_not_patched(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app)
    conn.push("sales_order", [so_doc(1)])
    other = so_doc(1, lines=[{"sku": SKUS[2], "qty": "2", "unit_price": "10.50"},
                             {"sku": SKUS[1], "qty": "1", "unit_price": "4.25"}])
    [result] = conn.push("sales_order", [other], recover=True)
    assert not result.ok and "not changed automatically" in (result.error or "")
    assert "material SKU-00001" in (result.error or "") and not sent(app, "PATCH", ")")


def test_a_bad_document_fails_alone(server: FakeServer, app: SapFake) -> None:
    conn = connector(server, app)
    unknown = so_doc(2, customer="C99999")
    too_long = so_doc(3, bill_no="SO-woocommerce-" + "9" * 30)
    results = conn.push("sales_order", [so_doc(1), unknown, too_long, so_doc(4)])

    assert [r.ok for r in results] == [True, False, False, True]
    assert "C99999" in (results[1].error or "") and results[1].error.startswith("s4:")
    assert "PurchaseOrderByCustomer" in (results[2].error or "")
    assert set(app.creates) == {("sales_order", "SO-shopify-1001"),
                                ("sales_order", "SO-shopify-1004")}


def test_without_a_po_number_check_only_recover_prevents_a_second_order(server: FakeServer) -> None:
    app = SapFake(dataset(), check_po_number=False)
    with FakeServer(app) as s:
        conn = connector(s, app)
        first = conn.push("sales_order", [so_doc(1)])
        again = conn.push("sales_order", [so_doc(1)], recover=True)  # the outbox's crash path
        assert again[0].remote_id == first[0].remote_id
        assert app.creates[("sales_order", "SO-shopify-1001")] == 1


def test_registry_and_sandbox_config() -> None:
    ds = SimpleNamespace(orders={"sap": [neutral(0)]}, customers=[], products=[])
    with start_sandbox(ds, systems=("sap",)) as sb:
        src = sb.sources()["sap"]
        conn = build_connector("erp", {"system": "sap", **src})
        assert isinstance(conn, SapConnector)
        assert set(conn.streams) == {"orders", "receivables"}
        assert ids(list(conn.read("orders", None))) == ["5000001"]
        assert ids(list(conn.read("receivables", None))) == ["90000001"]  # billed from the order
        basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        assert sb.apps["sap"].requests[0].header("authorization") == f"Basic {basic}"
