"""KingdeeConnector against the KingdeeFake over real HTTP: session login and re-login, offset
pages and the exact query sent, ties, order lines straddling pages, errors inside HTTP 200, the
permission trap, and exactly-once pushes of sales orders and receivables."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.base import Cursor, MappingError, Page
from connectors.http import (
    ApiError,
    AuthError,
    EmptyResultError,
    RateLimitError,
    reset_rate_limits,
)
from connectors.kingdee import QUERY_PATH, KingdeeConnector, form_path
from connectors.registry import build_connector
from sandbox.kingdee import KingdeeFake
from sandbox.server import FakeServer

T0 = datetime(2026, 10, 1, tzinfo=UTC)
TIE = T0 + timedelta(hours=3)
SKUS = [f"SKU-{i:05d}" for i in range(1, 5)]
LOGIN = "Kingdee.BOS.WebApi.ServicesStub.AuthService.LoginByAppSecret.common.kdsvc"


def _dataset() -> SimpleNamespace:
    products = [{"sku": sku, "name": f"Item {n}", "updated_at": T0 + timedelta(minutes=n // 2),
                 "prices": {"CNY": Decimal("10.00") * n, "USD": Decimal("1.40") * n}}
                for n, sku in enumerate(SKUS, start=1)]
    warehouses = [{"code": "WH-EAST", "region": "east"}, {"code": "WH-WEST", "region": "west"}]
    # seven of eight stock rows share one FModifyDate: ties across every page boundary
    stock = [{"external_id": str(300001 + i), "sku": SKUS[i // 2],
              "warehouse": ("WH-EAST", "WH-WEST")[i % 2], "qty": 100 + i,
              "updated_at": T0 if i == 0 else TIE} for i in range(8)]
    orders = [{
        "external_id": str(100001 + i), "order_no": f"XSDD{i + 1:06d}",
        "customer_code": "C00001", "customer_email": None,
        "ordered_at": T0 + timedelta(hours=i), "updated_at": TIE if i < 3 else T0 + timedelta(
            hours=5 + i), "currency": "CNY", "ship_region": "east",
        "lines": [{"line_no": n, "sku": SKUS[n - 1], "qty": Decimal(n),
                   "unit_price": "N/A" if (i, n) == (4, 2) else Decimal("10.00") * n}
                  for n in range(1, 4 - i % 2)],  # 3, 2, 3, 2, 3 lines
        "total": Decimal("140.00"),
    } for i in range(5)]
    payments = [{"external_id": str(500001 + i), "bill_no": f"SKD{i + 1:06d}",
                 "reference": f"XSDD{i + 1:06d}", "customer_code": "C00001",
                 "amount": Decimal("70.05"), "currency": "CNY",
                 "received_at": T0 + timedelta(days=1), "updated_at": T0 + timedelta(days=1, minutes=i)}
                for i in range(3)]
    customers = [{"code": "C00001"}, {"code": "C00002"}]
    return SimpleNamespace(customers=customers, products=products, warehouses=warehouses,
                           stock=stock, orders={"kingdee": orders}, payments=payments)


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield
    reset_rate_limits()


@pytest.fixture
def app() -> KingdeeFake:
    return KingdeeFake(_dataset())


@pytest.fixture
def server(app: KingdeeFake) -> Iterator[FakeServer]:
    with FakeServer(app) as s:
        yield s


def connector(server: FakeServer, app: KingdeeFake, **over: Any) -> KingdeeConnector:
    cfg: dict[str, Any] = {
        "system": "kingdee", "base_url": server.url + app.base_path, "auth": app.credentials(),
        "options": {"page_size": 3, "batch_size": 2}, "rate_limit": 0,
        "retry": {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005},
    }
    cfg.update(over)
    return KingdeeConnector("erp", cfg)


def read_all(conn: KingdeeConnector, stream: str, cursor: Cursor | None = None) -> list[Page]:
    return list(conn.read(stream, cursor))


def sent(app: KingdeeFake, op: str) -> list[dict]:
    return [r.json for r in app.requests if r.path.endswith(form_path(op))]


def logins(app: KingdeeFake) -> int:
    return sum(r.path.endswith(LOGIN) for r in app.requests)


# ------------------------------------------------------------------------------------- reading


def test_full_read_logs_in_once_pages_by_startrow_and_sends_the_documented_query(
    server: FakeServer, app: KingdeeFake
) -> None:
    conn = connector(server, app)
    pages = read_all(conn, "prices")

    assert [len(p.records) for p in pages] == [3, 3, 2]  # 4 skus x 2 currencies
    assert logins(app) == 1
    assert app.requests[0].json["appsecret"] == app.credentials()["app_secret"]
    assert sent(app, "ExecuteBillQuery") == [{"data": {
        "FormId": "SAL_PriceList",
        "FieldKeys": "FEntryID,FMaterialId.FNumber,FMaterialId.FName,FCurrencyId.FNumber,"
                     "FPrice,FModifyDate",
        "OrderString": "FModifyDate ASC, FEntryID ASC", "TopRowCount": 0,
        "FilterString": "", "Limit": 3, "StartRow": start}} for start in (0, 3, 6)]
    # ordered by (FModifyDate, FEntryID): every page carries the newest position so far
    assert [p.cursor for p in pages] == [Cursor("2026-10-01T00:01:00Z", "2"),
                                         Cursor("2026-10-01T00:01:00Z", "7"),
                                         Cursor("2026-10-01T00:02:00Z", "8")]
    price = conn.map("prices", pages[0].records[0].payload)
    assert price == {"external_id": "1", "sku": "SKU-00001", "name": "Item 1",
                     "currency": "CNY", "price": Decimal("10.00"), "updated_at": T0}


def test_incremental_read_filters_on_fmodifydate_from_cursor_minus_lookback(
    server: FakeServer, app: KingdeeFake
) -> None:
    conn = connector(server, app, lookback_seconds=600)
    pages = read_all(conn, "stock", Cursor("2026-10-01T03:10:00Z", "300005"))

    queries = sent(app, "ExecuteBillQuery")
    assert {q["data"]["FilterString"] for q in queries} == {"FModifyDate>='2026-10-01 03:00:00'"}
    assert queries[0]["data"]["OrderString"] == "FModifyDate ASC, FID ASC"
    rows = [r for p in pages for r in p.records]
    assert [r.external_id for r in rows] == [str(300002 + i) for i in range(7)]
    assert conn.map("stock", rows[0].payload) == {
        "external_id": "300002", "sku": "SKU-00001", "warehouse": "WH-WEST", "region": "west",
        "qty": Decimal(101), "updated_at": TIE}
    assert pages[-1].cursor == Cursor("2026-10-01T03:10:00Z", "300005")  # never moves back


def test_rows_sharing_one_fmodifydate_across_page_boundaries_are_all_read(
    server: FakeServer, app: KingdeeFake
) -> None:
    conn = connector(server, app, lookback_seconds=0, options={"page_size": 2})
    # a prior run stopped in the middle of the tie (at 300004): the rest must still come
    pages = read_all(conn, "stock", Cursor("2026-10-01T03:00:00Z", "300004"))
    assert sorted(r.external_id for p in pages for r in p.records) == [
        str(300002 + i) for i in range(7)]


def test_order_lines_straddling_pages_arrive_as_whole_orders(
    server: FakeServer, app: KingdeeFake
) -> None:
    conn = connector(server, app, options={"page_size": 2})
    pages = read_all(conn, "orders")

    orders = [r for p in pages for r in p.records]
    assert [o.external_id for o in orders] == [str(100001 + i) for i in range(5)]
    assert [len(o.payload["rows"]) for o in orders] == [3, 2, 3, 2, 3]
    for page in pages:  # the cursor sits at a complete order
        if page.records:
            last = page.records[-1]
            assert page.cursor == Cursor(last.payload["rows"][0]["FModifyDate"] + "Z",
                                         last.external_id)
    assert all("F_OrderRef=''" == q["data"]["FilterString"]
               for q in sent(app, "ExecuteBillQuery"))
    first = conn.map("orders", orders[0].payload)
    assert first["order_no"] == "XSDD000001" and first["customer_code"] == "C00001"
    assert first["total"] == Decimal("140.00") and first["ordered_at"] == T0
    assert first["lines"] == [
        {"line_no": n, "sku": SKUS[n - 1], "qty": Decimal(n), "unit_price": Decimal("10.00") * n}
        for n in (1, 2, 3)]
    with pytest.raises(MappingError, match="FTaxPrice"):
        conn.map("orders", orders[4].payload)


def test_incremental_orders_and_pushed_sales_orders_stay_out(
    server: FakeServer, app: KingdeeFake
) -> None:
    conn = connector(server, app, lookback_seconds=0)
    assert all(r.ok for r in conn.push("sales_order", [so_doc(1)]))
    pages = read_all(conn, "orders", Cursor("2026-10-01T03:00:00Z", "100003"))
    assert [r.external_id for p in pages for r in p.records] == [
        "100001", "100002", "100003", "100004", "100005"]  # >= the tie, and not SO-000001
    assert sent(app, "ExecuteBillQuery")[-1]["data"]["FilterString"] == (
        "F_OrderRef='' AND FModifyDate>='2026-10-01 03:00:00'")


def test_payments_map_the_remark_as_reference(server: FakeServer, app: KingdeeFake) -> None:
    conn = connector(server, app)
    rows = [r for p in read_all(conn, "payments") for r in p.records]
    assert conn.map("payments", rows[1].payload) == {
        "external_id": "500002", "reference": "XSDD000002", "customer_code": "C00001",
        "currency": "CNY", "amount": Decimal("70.05"), "received_at": T0 + timedelta(days=1),
        "updated_at": T0 + timedelta(days=1, minutes=1)}


# -------------------------------------------------------------------------------------- errors


def test_wrong_secret_is_an_auth_error_without_the_secret(
    server: FakeServer, app: KingdeeFake
) -> None:
    auth = {**app.credentials(), "app_secret": "not-the-secret-987"}
    with pytest.raises(AuthError) as info:
        read_all(connector(server, app, auth=auth), "prices")
    text = str(info.value)
    assert text.startswith("erp: login refused") and "not-the-secret-987" not in text
    assert logins(app) == 1  # a refused login is not retried


def test_query_error_inside_http_200_is_an_api_error(server: FakeServer, app: KingdeeFake) -> None:
    conn = connector(server, app, options={"orders_filter": "FNoSuchField='x'"})
    with pytest.raises(ApiError) as info:
        read_all(conn, "orders")
    assert info.value.status == 200 and "FNoSuchField" in str(info.value)


def test_lost_session_logs_in_again_and_retries(server: FakeServer, app: KingdeeFake) -> None:
    conn = connector(server, app)
    read_all(conn, "payments")
    app.expire_sessions()  # server restart / idle timeout
    pages = read_all(conn, "payments")
    assert sum(len(p.records) for p in pages) == 3
    assert logins(app) == 2


def test_429_waits_for_retry_after(server: FakeServer, app: KingdeeFake) -> None:
    slept: list[float] = []
    conn = connector(server, app, retry={"max_retries": 2, "backoff_base": 0.001,
                                         "backoff_max": 0.005, "sleep": slept.append})
    app.faults.add(429, retry_after=2, path="ExecuteBillQuery")
    assert sum(len(p.records) for p in read_all(conn, "payments")) == 3
    assert slept == [2.0]
    app.faults.add(429, times=5, retry_after=1, path="ExecuteBillQuery")
    with pytest.raises(RateLimitError, match="erp: HTTP 429"):
        read_all(conn, "payments")


def test_5xx_then_success(server: FakeServer, app: KingdeeFake) -> None:
    app.faults.add(502, times=2, path="ExecuteBillQuery")
    assert sum(len(p.records) for p in read_all(connector(server, app), "payments")) == 3


def test_permission_trap_full_master_read_raises_empty_result(
    server: FakeServer, app: KingdeeFake
) -> None:
    app.deny_query_forms.add("SAL_PriceList")
    conn = connector(server, app)
    with pytest.raises(EmptyResultError, match="SAL_PriceList.*permission"):
        read_all(conn, "prices")
    # an incremental read may legitimately find nothing new
    assert [p.records for p in read_all(conn, "prices", Cursor("2026-10-01T00:00:00Z", "1"))] \
        == [[]]


# ---------------------------------------------------------------------------------------- push


def so_doc(n: int, customer: str = "C00001") -> dict:
    return {"key": f"erp:sales_order:SO-{n:06d}", "bill_no": f"SO-{n:06d}",
            "order_no": f"#{1000 + n}", "source": "shopify", "customer_code": customer,
            "currency": "USD", "ordered_at": "2026-10-02T08:00:00Z", "total": "29.40",
            "lines": [{"sku": "SKU-00001", "qty": "2", "unit_price": "1.40"},
                      {"sku": "SKU-00002", "qty": "1", "unit_price": "26.60"}]}


def invoice_doc(n: int) -> dict:
    return {"key": f"erp:invoice:INV-{n:06d}", "bill_no": f"INV-{n:06d}",
            "invoice_no": f"INV-{n:06d}", "order_ref": f"#{1000 + n}",
            "customer_code": "C00002", "currency": "CNY", "issued_at": "2026-10-03T00:00:00Z",
            "amount": "20.00", "lines": [{"sku": "SKU-00001", "qty": "2", "unit_price": "10.00",
                                         "amount": "20.00"}]}


TAXED_DOC = {
    "key": "erp:invoice:INV-kingdee-K1", "bill_no": "CN-INV-000001",
    "invoice_no": "CN-INV-000001", "order_ref": "#1001", "customer_code": "C00001",
    "currency": "CNY", "issued_at": "2026-11-01T10:00:00.123456Z", "amount": "144.87",
    "prices_include_tax": False,
    "lines": [
        {"sku": "SKU-1", "qty": "3", "unit_price": "33.3300", "amount": "112.99",
         "net_amount": "99.99", "tax_rate": "0.13", "tax_amount": "13.00"},
        {"sku": " SKU-2 ", "qty": "2.500", "unit_price": "1.1500", "amount": "2.88",
         "net_amount": "2.88", "tax_rate": "0", "tax_amount": "0.00"},
        {"sku": "SKU-3", "qty": "007", "unit_price": "4.25", "amount": "29.75"},  # untaxed
    ],
}


@pytest.mark.parametrize("include", [False, True])
def test_receivable_models_send_the_documents_numbers_exactly(include: bool) -> None:
    """The JSON sent for a receivable: every number exactly as the document spells it (a
    whole quantity goes as an int, the same text), the rate as a percentage."""
    from connectors.http import dumps_json
    from connectors.kingdee import credit_note_model, invoice_model

    options = {"invoice_type": "YSD01_SYS", "org": "100"}
    price = "FTaxPrice" if include else "FPrice"
    head = ('{"FBillTypeID":{"FNumber":"YSD01_SYS"},"FBillNo":"%s",'
            '"FDATE":"2026-11-01T10:00:00","FSETTLEORGID":{"FNumber":"100"},'
            '"FCUSTOMERID":{"FNumber":"C00001"},"FCURRENCYID":{"FNumber":"CNY"},'
            '"F_OrderRef":"#1001","F_InvoiceNo":"%s","FALLAMOUNTFOR":%s,')
    lines = ('"FEntityDetail":[{"FMATERIALID":{"FNumber":"SKU-1"},"FPriceQty":%s3,'
             '"PRICE":33.3300,"FEntryTaxRate":13.00},{"FMATERIALID":{"FNumber":"SKU-2"},'
             '"FPriceQty":%s2.500,"PRICE":1.1500,"FEntryTaxRate":0},'
             '{"FMATERIALID":{"FNumber":"SKU-3"},"FPriceQty":%s7,"FTaxPrice":4.25}]'
             ).replace("PRICE", price)
    doc = {**TAXED_DOC, "prices_include_tax": include}
    model = invoice_model(doc, options)
    assert dumps_json(model) == (head % ("CN-INV-000001", "CN-INV-000001", "144.87")
                                 + lines % ("", "", "") + "}")
    assert model["FEntityDetail"][1] == {"FMATERIALID": {"FNumber": "SKU-2"},
                                         "FPriceQty": Decimal("2.500"),
                                         price: Decimal("1.1500"), "FEntryTaxRate": 0}
    red = {**doc, "bill_no": "CN-CRN-000001", "credit_note_no": "CN-CRN-000001",
           "amount": "-144.87",
           "lines": [{**ln, "qty": "-" + ln["qty"]} for ln in doc["lines"]]}
    assert dumps_json(credit_note_model(red, options)) == (
        head % ("CN-CRN-000001", "CN-CRN-000001", "-144.87") + lines % ("-", "-", "-")
        + ',"F_SrcInvoiceNo":"CN-INV-000001"}')


@pytest.mark.parametrize("line,message", [
    ({"qty": "lots"}, "lines[2].qty: not a number: 'lots'"),
    ({"unit_price": "NaN"}, "lines[2].unit_price: not a finite number: 'NaN'"),
    ({"tax_rate": "x"}, "lines[2].tax_rate: not a number: 'x'"),
    ({"tax_rate": "Infinity"}, "lines[2].tax_rate: not a finite number: 'Infinity'"),
    ({"qty": True}, "lines[2].qty: expected a number, got True"),
])
def test_a_receivable_line_that_is_no_number_names_its_field(line: dict, message: str) -> None:
    from connectors.kingdee import invoice_model

    doc = {**TAXED_DOC, "lines": [TAXED_DOC["lines"][0], {**TAXED_DOC["lines"][1], **line}]}
    with pytest.raises(MappingError) as err:
        invoice_model(doc, {"invoice_type": "YSD01_SYS", "org": "100"})
    assert str(err.value) == message


def test_sales_orders_are_saved_submitted_and_audited_once_in_batches(
    server: FakeServer, app: KingdeeFake
) -> None:
    conn = connector(server, app)
    docs = [so_doc(n) for n in (1, 2, 3)]
    results = conn.push("sales_order", docs)

    assert [(r.key, r.ok) for r in results] == [(d["key"], True) for d in docs]
    assert app.creates == {("sales_order", d["bill_no"]): 1 for d in docs}
    bills = {no: app.documents[("SAL_SaleOrder", no)] for no in ("SO-000001", "SO-000003")}
    assert {b.status for b in bills.values()} == {"C"}
    assert results[0].remote_id == str(bills["SO-000001"].fid)
    assert [len(b["data"]["Model"]) for b in sent(app, "BatchSave")] == [2, 1]  # batch_size 2
    assert [s["data"]["Numbers"] for s in sent(app, "Submit")] == [
        ["SO-000001", "SO-000002"], ["SO-000003"]]
    assert len(sent(app, "Audit")) == 2
    model = sent(app, "BatchSave")[0]["data"]["Model"][0]
    assert model["FCustId"] == {"FNumber": "C00001"} and model["F_OrderRef"] == "#1001"
    assert model["FDate"] == "2026-10-02T08:00:00"
    assert model["FSaleOrderEntry"][1] == {"FMaterialId": {"FNumber": "SKU-00002"},
                                           "FQty": Decimal(1), "FTaxPrice": Decimal("26.60")}


def test_rerun_with_recover_looks_up_and_creates_nothing(
    server: FakeServer, app: KingdeeFake
) -> None:
    conn = connector(server, app)
    first = conn.push("sales_order", [so_doc(1), so_doc(2)])
    app.reset_log()
    again = conn.push("sales_order", [so_doc(1), so_doc(2), so_doc(3)], recover=True)

    assert [r.ok for r in again] == [True, True, True]
    assert [r.remote_id for r in again[:2]] == [r.remote_id for r in first]
    assert sum(app.creates.values()) == 3 and max(app.creates.values()) == 1
    lookup = sent(app, "ExecuteBillQuery")[0]["data"]
    assert lookup["FormId"] == "SAL_SaleOrder"
    assert lookup["FilterString"] == "FBillNo IN ('SO-000001','SO-000002')"
    assert [len(b["data"]["Model"]) for b in sent(app, "BatchSave")] == [1]  # only SO-000003


def test_duplicate_number_on_save_means_it_exists(server: FakeServer, app: KingdeeFake) -> None:
    conn = connector(server, app)
    first = conn.push("sales_order", [so_doc(1)])
    # a crash between send and mark: the outbox resends without recover
    again = conn.push("sales_order", [so_doc(1)])
    assert again[0].ok and again[0].remote_id == first[0].remote_id
    assert app.creates[("sales_order", "SO-000001")] == 1
    assert len(sent(app, "BatchSave")) == 2  # the second save was refused as a duplicate


def test_crash_after_save_before_audit_is_finished_by_recover(
    server: FakeServer, app: KingdeeFake
) -> None:
    conn = connector(server, app)
    app.faults.add(500, times=4, path="Submit")  # Submit keeps failing past the retries
    failed = conn.push("sales_order", [so_doc(1)])
    assert not failed[0].ok and "HTTP 500" in (failed[0].error or "")
    assert app.documents[("SAL_SaleOrder", "SO-000001")].status == "A"

    done = conn.push("sales_order", [so_doc(1)], recover=True)
    assert done[0].ok and app.documents[("SAL_SaleOrder", "SO-000001")].status == "C"
    assert app.creates[("sales_order", "SO-000001")] == 1


def test_invoices_push_once_and_a_bad_doc_fails_alone(server: FakeServer, app: KingdeeFake) -> None:
    conn = connector(server, app, options={"batch_size": 10})
    unknown = {**invoice_doc(2), "customer_code": "C99999"}
    garbage = {**invoice_doc(3), "amount": "lots"}
    results = conn.push("invoice", [invoice_doc(1), unknown, garbage, invoice_doc(4)])

    assert [r.ok for r in results] == [True, False, False, True]
    assert "C99999" in (results[1].error or "") and results[1].error.startswith("erp:")
    assert "amount" in (results[2].error or "")
    assert app.creates == {("invoice", "INV-000001"): 1, ("invoice", "INV-000004"): 1}
    model = app.documents[("AR_receivable", "INV-000001")].model
    assert model["FALLAMOUNTFOR"] == Decimal("20.00") and model["F_OrderRef"] == "#1001"

    again = conn.push("invoice", [invoice_doc(1), invoice_doc(4)], recover=True)
    assert [r.remote_id for r in again] == [results[0].remote_id, results[3].remote_id]
    assert sum(app.creates.values()) == 2


def test_push_survives_a_lost_session(server: FakeServer, app: KingdeeFake) -> None:
    conn = connector(server, app)
    conn.push("sales_order", [so_doc(1)])
    app.expire_sessions()
    assert conn.push("sales_order", [so_doc(2)])[0].ok
    assert logins(app) == 2 and sum(app.creates.values()) == 2


def test_unknown_operation_is_refused(server: FakeServer, app: KingdeeFake) -> None:
    with pytest.raises(ValueError, match="invoice, sales_order"):
        connector(server, app).push("fulfilment", [so_doc(1)])


def test_registry_and_sandbox_config(server: FakeServer, app: KingdeeFake) -> None:
    conn = build_connector("erp", {"system": "kingdee", "base_url": server.url + app.base_path,
                                   "auth": app.credentials(), "options": app.options()})
    assert isinstance(conn, KingdeeConnector)
    assert set(conn.streams) == {"prices", "price_rules", "stock", "payments", "orders"}
    assert conn.http.url_for(QUERY_PATH).startswith(server.url + "/k3cloud/Kingdee.BOS.")
