"""FxiaokeConnector against the FxiaokeFake over real HTTP: the cached token and its refresh,
identity headers and trace ids, offsets then the (time, _id) keyset, errorCode errors inside
HTTP 200 (20016, 30002, 30003), mapping, and sales orders created exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

import connectors.fxiaoke as fx
from connectors.base import Cursor, MappingError, Page, to_iso
from connectors.fxiaoke import FxiaokeConnector, reset_token_cache
from connectors.http import ApiError, AuthError, reset_rate_limits
from connectors.registry import build_connector
from sandbox.fxiaoke import (
    ACCOUNTS,
    CREATE_PATH,
    EA,
    INVOICES,
    LINES,
    ORDERS,
    QUERY_PATH,
    TOKEN_PATH,
    USER_ID,
    FxiaokeFake,
    fx_id,
    to_ms,
)
from sandbox.server import FakeServer, Request

T0 = datetime(2026, 10, 1, tzinfo=UTC)
TIE = T0 + timedelta(minutes=10, milliseconds=250)  # orders 5..11 share this millisecond
MAX_OFFSET = 8                                   # with page_size 4: offsets 0 and 4 per window


def _customers() -> list[dict]:
    return [{"code": f"C{i:05d}", "name": f"Customer {i}", "email": f"c{i}@example.com",
             "region": ("east", "west")[i % 2], "group": "retail",
             "credit_limit": Decimal("8000.00") + i, "currency": "CNY",
             "updated_at": T0 + timedelta(minutes=i)} for i in range(1, 7)]


def _products() -> list[dict]:
    return [{"sku": f"SKU-{i:05d}", "name": f"Product {i}", "updated_at": T0}
            for i in range(1, 4)]


def _orders(n: int = 30) -> list[dict]:
    out = []
    for i in range(n):
        updated = TIE if 5 <= i < 12 else T0 + timedelta(minutes=2 * i, milliseconds=i)
        out.append({
            "external_id": f"fx-{i:03d}", "order_no": f"FX-{i + 1:06d}",
            "customer_code": "C00001", "customer_email": None,
            "ordered_at": T0 + timedelta(minutes=2 * i) - timedelta(hours=1),
            "updated_at": updated, "currency": "CNY",
            "ship_region": "east" if i != 2 else None,
            "lines": [{"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2),
                       "unit_price": Decimal("19.90")},
                      {"line_no": 2, "sku": "SKU-00002", "qty": Decimal(1),
                       "unit_price": "N/A" if i == 3 else Decimal("5.05")}],
            "total": Decimal("44.85"),
        })
    return out


def _invoices() -> list[dict]:
    return [{"external_id": f"inv-{i}", "invoice_no": f"INV-{i:05d}",
             "order_ref": f"FX-{i:06d}", "customer_code": "C00001", "currency": "CNY",
             "amount": Decimal("44.85"), "open_amount": Decimal("4.85") if i == 1 else None,
             "issued_at": T0 + timedelta(days=i), "due_date": date(2026, 10, 31),
             "updated_at": T0 + timedelta(days=i, hours=1)} for i in range(1, 4)]


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    reset_rate_limits()
    reset_token_cache()  # the token cache is per process, keyed by base_url (ports get reused)
    yield
    reset_rate_limits()
    reset_token_cache()


def make_app(n: int = 30, **kw: Any) -> FxiaokeFake:
    dataset = SimpleNamespace(customers=_customers(), products=_products(),
                              orders={"fxiaoke": _orders(n)})
    return FxiaokeFake(dataset, invoices=_invoices(), max_offset=MAX_OFFSET, **kw)


@pytest.fixture
def app() -> FxiaokeFake:
    return make_app()


@pytest.fixture
def server(app: FxiaokeFake) -> Iterator[FakeServer]:
    with FakeServer(app) as s:
        yield s


def connector(server: FakeServer, app: FxiaokeFake, sleep: Any = None,
              **over: Any) -> FxiaokeConnector:
    retry: dict[str, Any] = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}
    if sleep is not None:
        retry["sleep"] = sleep
    cfg: dict[str, Any] = {
        "system": "fxiaoke", "base_url": server.url, "auth": app.credentials(),
        "options": {**app.options(), "page_size": 4}, "rate_limit": 0, "retry": retry,
    }
    cfg.update(over)
    return FxiaokeConnector("crm", cfg)


def read_all(conn: FxiaokeConnector, stream: str, cursor: Cursor | None = None) -> list[Page]:
    return list(conn.read(stream, cursor))


def records(pages: list[Page]) -> list:
    return [r for p in pages for r in p.records]


def queries(app: FxiaokeFake, api: str = ORDERS) -> list[dict]:
    """search_query_info of every query on ``api``, in the order sent."""
    return [r.json["search_query_info"] for r in app.requests
            if r.path == QUERY_PATH and r.json.get("dataObjectApiName") == api]


def fault_body(code: int, message: str = "") -> dict:
    return {"errorCode": code, "errorMessage": message or f"error {code}"}


# ------------------------------------------------------------------------------------ token


def test_token_is_fetched_once_and_shared_by_every_stream_and_connector(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = connector(server, app)
    for stream in ("customers", "orders", "receivables"):
        assert records(read_all(conn, stream))
    # flows build a connector per stream: a second one reuses the cached token
    assert records(read_all(connector(server, app), "customers"))
    assert app.token_calls == 1
    token_req = next(r for r in app.requests if r.path == TOKEN_PATH)
    assert token_req.json == {"appId": app.credentials()["app_id"],
                              "appSecret": app.credentials()["app_secret"],
                              "permanentCode": app.credentials()["permanent_code"],
                              "grantType": "app_secret"}


def test_token_is_refreshed_shortly_before_it_expires(
    server: FakeServer, app: FxiaokeFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(fx, "_now", lambda: clock[0])
    conn = connector(server, app)

    def bearer_of_a_read() -> str:
        read_all(conn, "customers")
        return app.requests[-1].header("authorization") or ""

    first = bearer_of_a_read()
    clock[0] += 7200 - 301  # more than the 5-minute margin still left
    assert bearer_of_a_read() == first and app.token_calls == 1
    clock[0] += 2           # inside the margin: a new token before the old one runs out
    assert bearer_of_a_read() != first and app.token_calls == 2
    assert app.calls_today == len([r for r in app.requests if r.path == QUERY_PATH])  # no 20016


def test_errorcode_20016_refreshes_the_token_and_retries_the_call_once(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = connector(server, app)
    read_all(conn, "customers")
    app.expire_tokens()
    app.reset_log()

    pages = read_all(conn, "customers")

    assert len(records(pages)) == 6 and app.token_calls == 2
    paths = [r.path for r in app.requests]
    assert paths[:3] == [QUERY_PATH, TOKEN_PATH, QUERY_PATH]  # refused, new token, the retry
    first, retry = app.requests[0], app.requests[2]
    assert first.json == retry.json
    assert first.header("authorization") != retry.header("authorization")


def test_a_token_refused_twice_is_an_auth_error(server: FakeServer, app: FxiaokeFake) -> None:
    app.faults.add(200, times=2, body=fault_body(20016, "token expired"), path="^/cgi/")
    with pytest.raises(AuthError) as info:
        read_all(connector(server, app), "customers")
    assert str(info.value).startswith("crm:") and "errorCode 20016" in str(info.value)
    assert app.token_calls == 2  # one refresh, not a loop


def test_bad_app_secret_is_an_auth_error_naming_the_source_not_the_secret(
    server: FakeServer, app: FxiaokeFake
) -> None:
    auth = {**app.credentials(), "app_secret": "wrong-fx-secret-99"}
    with pytest.raises(AuthError) as info:
        read_all(connector(server, app, auth=auth), "orders")
    text = str(info.value)
    assert text.startswith("crm:") and "token refused" in text and "errorCode 20001" in text
    assert "wrong-fx-secret-99" not in text and "\n" not in text
    assert [r.path for r in app.requests] == [TOKEN_PATH]  # no data call without a token


def test_every_call_carries_bearer_identity_headers_and_a_fresh_trace_id(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = connector(server, app)
    read_all(conn, "orders")
    conn.push("sales_order", [so_doc(1)])

    calls = [r for r in app.requests if r.path.startswith("/cgi/")]
    assert {r.path for r in calls} == {QUERY_PATH, CREATE_PATH}
    token = app.requests[0]
    assert token.path == TOKEN_PATH
    for r in calls:
        assert r.header("authorization") == f"Bearer {next(iter(app.tokens))}"
        assert r.header("x-fs-ea") == EA and r.header("x-fs-userid") == USER_ID
        assert uuid.UUID(r.query["thirdTraceId"]).version == 4
    traces = [r.query["thirdTraceId"] for r in app.requests]
    assert len(set(traces)) == len(traces)  # one per call, the token call included


def test_a_call_without_trace_id_or_identity_is_refused_by_the_fake(app: FxiaokeFake) -> None:
    token = app.token(Request("POST", TOKEN_PATH, {}, {}, json={
        "appId": app.credentials()["app_id"], "appSecret": app.credentials()["app_secret"],
        "permanentCode": app.credentials()["permanent_code"], "grantType": "app_secret"}))
    bearer = f"Bearer {token.json['corpAccessToken']}"
    body = {"dataObjectApiName": ACCOUNTS, "search_query_info": {"limit": 10, "offset": 0}}
    no_trace = app.handle(Request("POST", QUERY_PATH, {}, {"authorization": bearer}, json=body))
    assert no_trace.status == 200 and no_trace.json["errorCode"] == 10001
    no_ea = app.handle(Request("POST", QUERY_PATH, {"thirdTraceId": str(uuid.uuid4())},
                               {"authorization": bearer}, json=body))
    assert no_ea.json["errorCode"] == 20002


def test_the_fake_refuses_more_than_ten_token_calls_a_minute(app: FxiaokeFake) -> None:
    body = {"appId": "x", "appSecret": "y", "permanentCode": "z", "grantType": "app_secret"}
    answers = [app.token(Request("POST", TOKEN_PATH, {}, {}, json=body)).json["errorCode"]
               for _ in range(11)]
    assert answers == [20001] * 10 + [30001]


# ------------------------------------------------------------------------------------ paging


def test_offsets_then_keyset_read_every_row_once_in_time_id_order(
    server: FakeServer, app: FxiaokeFake
) -> None:
    pages = read_all(connector(server, app), "orders")

    got = records(pages)
    keys = [(r.updated_at, r.external_id) for r in got]
    assert len(got) == 30 and len({r.external_id for r in got}) == 30
    assert keys == sorted(keys) and len(set(keys)) == 30  # strictly ascending, none twice
    for page in pages:  # every page carries the composite cursor of its last row
        if page.records:
            last = page.records[-1]
            assert page.cursor == Cursor(to_iso(last.updated_at), last.external_id)

    sent = queries(app)
    assert max(q["offset"] for q in sent) + 4 <= MAX_OFFSET  # never past the limit
    # window 1: offsets 0, 4 -> the 8th row (inside the tie at TIE) anchors the keyset
    assert [q["offset"] for q in sent[:2]] == [0, 4]
    tie_ms = to_ms(TIE)
    assert sent[2]["filters"][1:] == [
        {"field_name": "last_modified_time", "operator": "EQ", "field_values": [tie_ms]},
        {"field_name": "_id", "operator": "GT", "field_values": [got[7].external_id]}]
    assert sent[2]["orders"] == [{"fieldName": "_id", "isAsc": True}]
    # the 4 remaining tied rows fill a page, so the keyset asks once more (and gets none) ...
    assert sent[3]["filters"][2]["field_values"] == [got[11].external_id]
    # ... then later times, with offsets from 0 again
    assert sent[4]["filters"][1:] == [
        {"field_name": "last_modified_time", "operator": "GT", "field_values": [tie_ms]}]
    assert sent[4]["offset"] == 0 and sent[5]["offset"] == 4
    assert sent[4]["orders"] == [{"fieldName": "last_modified_time", "isAsc": True},
                                 {"fieldName": "_id", "isAsc": True}]


def test_a_tie_group_longer_than_a_page_is_read_by_id_keyset() -> None:
    app = make_app()
    with FakeServer(app) as srv:
        conn = connector(srv, app, options={"page_size": 2, "max_offset": 2})
        got = records(read_all(conn, "orders"))
    assert len({r.external_id for r in got}) == len(got) == 30
    tie_queries = [q for q in queries(app) if any(f["operator"] == "EQ" for f in q["filters"])]
    assert len(tie_queries) >= 3  # seven tied rows, two per page: keyset on _id several times


def test_max_offset_zero_pages_by_keyset_only(server: FakeServer, app: FxiaokeFake) -> None:
    conn = connector(server, app, options={"page_size": 4, "max_offset": 0})
    got = records(read_all(conn, "orders"))
    assert len({r.external_id for r in got}) == 30
    assert {q["offset"] for q in queries(app)} == {0}


def test_the_fake_refuses_an_offset_past_its_limit(server: FakeServer, app: FxiaokeFake) -> None:
    conn = connector(server, app, options={"page_size": 4, "max_offset": 100})  # misconfigured
    with pytest.raises(ApiError) as info:
        read_all(conn, "orders")
    assert "errorCode 10003" in str(info.value) and "offset" in str(info.value)


def test_incremental_read_sends_gte_on_last_modified_time_from_cursor_minus_lookback(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = connector(server, app, lookback_seconds=60)
    prior = Cursor(to_iso(T0 + timedelta(minutes=40, milliseconds=20)), "fx-zzz")
    got = records(read_all(conn, "orders", prior))

    since = T0 + timedelta(minutes=39, milliseconds=20)
    first = queries(app)[0]
    assert first["filters"] == [
        {"field_name": "bill_no__c", "operator": "IS", "field_values": []},
        {"field_name": "last_modified_time", "operator": "GTE", "field_values": [to_ms(since)]}]
    assert {r.payload["name"] for r in got} == {f"FX-{i + 1:06d}" for i in range(20, 30)}
    assert all(r.updated_at >= since for r in got)


# ------------------------------------------------------------------------------------ errors


def test_errorcode_30002_is_backed_off_and_retried(server: FakeServer, app: FxiaokeFake) -> None:
    slept: list[float] = []
    app.faults.add(200, times=2, body=fault_body(30002, "too many calls"), path=QUERY_PATH)
    got = records(read_all(connector(server, app, sleep=slept.append), "customers"))
    assert len(got) == 6 and len(slept) == 2 and app.faults.pending == 0


def test_the_documented_call_limit_is_waited_out() -> None:
    strict = make_app(fast=False)
    strict.calls_per_window, strict.window_s = 5, 0.2  # 100 per 20 s, scaled down
    with FakeServer(strict) as srv:
        conn = connector(srv, strict, retry={"max_retries": 8, "backoff_base": 0.05,
                                             "backoff_max": 0.2, "sleep": time.sleep})
        got = records(read_all(conn, "orders"))
    assert len({r.external_id for r in got}) == 30
    answered = strict.calls_today  # calls let through the limit
    assert len([r for r in strict.requests if r.path == QUERY_PATH]) > answered  # 30002 seen


def test_the_client_rate_limit_defaults_to_the_documented_five_per_second(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = connector(server, app, rate_limit=None)
    assert conn.http.bucket is not None and conn.http.bucket.rate == 5.0


def test_daily_quota_30003_is_an_api_error_and_not_retried(
    server: FakeServer, app: FxiaokeFake
) -> None:
    app.daily_quota = 0
    with pytest.raises(ApiError) as info:
        read_all(connector(server, app), "customers")
    assert "errorCode 30003" in str(info.value)
    assert len([r for r in app.requests if r.path == QUERY_PATH]) == 1


def test_permission_error_in_http_200_names_source_and_code(
    server: FakeServer, app: FxiaokeFake
) -> None:
    app.deny_objects.add(INVOICES)
    with pytest.raises(ApiError) as info:
        read_all(connector(server, app), "receivables")
    assert str(info.value).startswith("crm: errorCode 10004: no permission to query")
    assert info.value.status == 200


# ----------------------------------------------------------------------------------- mapping


def test_orders_map_with_their_lines_and_unparseable_values_are_rejected(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = connector(server, app)
    got = {r.payload["name"]: r for r in records(read_all(conn, "orders"))}

    order = conn.map("orders", got["FX-000001"].payload)
    assert order == {
        "external_id": fx_id(ORDERS, "fx-000"), "order_no": "FX-000001",
        "customer_code": "C00001", "customer_email": None,
        "ordered_at": T0 - timedelta(hours=1), "updated_at": T0, "currency": "CNY",
        "total": Decimal("44.85"), "ship_region": "east",
        "lines": [
            {"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2), "unit_price": Decimal("19.90")},
            {"line_no": 2, "sku": "SKU-00002", "qty": Decimal(1), "unit_price": Decimal("5.05")},
        ],
    }
    assert conn.map("orders", got["FX-000003"].payload)["ship_region"] is None
    with pytest.raises(MappingError, match=r"SalesOrderProductObj\[2\].sales_price"):
        conn.map("orders", got["FX-000004"].payload)
    with pytest.raises(MappingError, match="lines were not read"):
        conn.map("orders", {k: v for k, v in got["FX-000001"].payload.items() if k != LINES})
    # one line query per non-empty page of orders
    assert len(queries(app, LINES)) == len([p for p in read_all(conn, "orders") if p.records])


def test_customers_and_receivables_map_to_canonical_records(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = connector(server, app)
    customer = next(r for r in records(read_all(conn, "customers"))
                    if r.payload["account_no"] == "C00002")
    assert conn.map("customers", customer.payload) == {
        "external_id": fx_id(ACCOUNTS, "C00002"), "code": "C00002", "name": "Customer 2",
        "email": "c2@example.com", "region": "east", "customer_group": "retail",
        "credit_limit": Decimal("8002.00"), "currency": "CNY",
        "updated_at": T0 + timedelta(minutes=2),
    }
    invoices = {r.payload["name"]: conn.map("receivables", r.payload)
                for r in records(read_all(conn, "receivables"))}
    assert invoices["INV-00001"] == {
        "external_id": fx_id(INVOICES, "inv-1"), "invoice_no": "INV-00001",
        "order_ref": "FX-000001", "customer_code": "C00001", "currency": "CNY",
        "amount": Decimal("44.85"), "open_amount": Decimal("4.85"),
        "issued_at": T0 + timedelta(days=1), "due_date": date(2026, 10, 31),
        "updated_at": T0 + timedelta(days=1, hours=1),
    }
    assert invoices["INV-00002"]["open_amount"] is None


# -------------------------------------------------------------------------------------- push


def so_doc(i: int, customer: str = "C00002", sku: str = "SKU-00003") -> dict:
    return {"key": f"fxiaoke:sales_order:SO-{i}", "bill_no": f"OH-SO-{i:06d}",
            "order_no": f"#10{i:02d}", "source": "shopify", "customer_code": customer,
            "currency": "CNY", "ordered_at": "2026-10-05T08:30:00Z",
            "lines": [{"sku": sku, "qty": "3", "unit_price": "12.34"}], "total": "37.02"}


def creates_sent(app: FxiaokeFake) -> list[dict]:
    return [r.json for r in app.requests if r.path == CREATE_PATH]


def test_sales_orders_are_created_once_without_approval_and_reruns_create_nothing(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = connector(server, app)
    done = conn.push("sales_order", [so_doc(1), so_doc(2)])
    assert [r.ok for r in done] == [True, True]
    assert app.creates == {("sales_order", "OH-SO-000001"): 1, ("sales_order", "OH-SO-000002"): 1}

    body = creates_sent(app)[0]
    assert body["triggerApprovalFlow"] is False and body["triggerWorkFlow"] is False
    assert body["dataObjectApiName"] == ORDERS
    assert body["object_data"]["account_id"] == fx_id(ACCOUNTS, "C00002")
    assert body["object_data"]["order_amount"] == Decimal("37.02")  # exact, never a float
    assert body["object_data"]["order_time"] == to_ms(datetime(2026, 10, 5, 8, 30, tzinfo=UTC))
    assert body["details"][LINES] == [{
        "product_id": fx_id("ProductObj", "SKU-00003"), "product_code__c": "SKU-00003",
        "quantity": Decimal(3), "sales_price": Decimal("12.34"), "subtotal": Decimal("37.02")}]
    stored = app.record(ORDERS, done[0].remote_id or "")
    assert stored is not None and stored["life_status"] == "normal"  # not held for approval
    assert app.workflow_runs == 0

    again = conn.push("sales_order", [so_doc(1), so_doc(2), so_doc(3)], recover=True)
    assert [r.remote_id for r in again[:2]] == [r.remote_id for r in done]
    assert all(r.ok for r in again) and len(creates_sent(app)) == 3  # only SO-3 was new
    # a resend without recover (a crash between send and mark) still finds it
    assert conn.push("sales_order", [so_doc(3)])[0].remote_id == again[2].remote_id
    assert set(app.creates.values()) == {1}


def test_the_fake_holds_a_create_that_does_not_switch_approval_off(app: FxiaokeFake) -> None:
    token = app.token(Request("POST", TOKEN_PATH, {}, {}, json={
        "appId": app.credentials()["app_id"], "appSecret": app.credentials()["app_secret"],
        "permanentCode": app.credentials()["permanent_code"], "grantType": "app_secret"}))
    headers = {"authorization": f"Bearer {token.json['corpAccessToken']}", "x-fs-ea": EA,
               "x-fs-userid": USER_ID}
    body = {"dataObjectApiName": ORDERS,
            "object_data": {"account_id": fx_id(ACCOUNTS, "C00001"), "bill_no__c": "B-1"},
            "details": {LINES: [{"product_id": fx_id("ProductObj", "SKU-00001"),
                                 "quantity": 1, "sales_price": 2}]}}
    resp = app.handle(Request("POST", CREATE_PATH, {"thirdTraceId": str(uuid.uuid4())},
                              headers, json=body))
    assert resp.json["errorCode"] == 0
    assert app.record(ORDERS, resp.json["dataId"])["life_status"] == "under_review"
    assert app.workflow_runs == 1


def test_a_create_whose_answer_is_lost_is_found_by_bill_no_not_sent_again(
    server: FakeServer, app: FxiaokeFake
) -> None:
    app.fail_after_create = 1  # stored, answered 502
    result = connector(server, app).push("sales_order", [so_doc(7)])[0]
    assert result.ok and result.remote_id
    assert app.creates[("sales_order", "OH-SO-000007")] == 1 and len(creates_sent(app)) == 1


def test_a_create_refused_by_the_rate_limit_is_sent_again(
    server: FakeServer, app: FxiaokeFake
) -> None:
    slept: list[float] = []
    app.faults.add(200, body=fault_body(30002, "too many calls"), path=CREATE_PATH)
    result = connector(server, app, sleep=slept.append).push("sales_order", [so_doc(8)])[0]
    assert result.ok and len(creates_sent(app)) == 2 and len(slept) == 1
    assert app.creates[("sales_order", "OH-SO-000008")] == 1


def test_an_unknown_customer_or_sku_fails_that_doc_only(
    server: FakeServer, app: FxiaokeFake
) -> None:
    results = connector(server, app).push("sales_order", [
        so_doc(1, customer="C99999"), so_doc(2), so_doc(3, sku="SKU-99999")])
    assert [r.ok for r in results] == [False, True, False]
    assert "C99999" in (results[0].error or "") and "AccountObj" in (results[0].error or "")
    assert "SKU-99999" in (results[2].error or "")
    assert len(creates_sent(app)) == 1


def test_orders_orderhub_created_are_not_read_back(server: FakeServer, app: FxiaokeFake) -> None:
    conn = connector(server, app)
    conn.push("sales_order", [so_doc(1), so_doc(2)])
    got = records(read_all(conn, "orders"))
    assert len(got) == 30 and not any(r.payload.get("bill_no__c") for r in got)


def test_registry_builds_it_from_sandbox_style_config(
    server: FakeServer, app: FxiaokeFake
) -> None:
    conn = build_connector("crm", {"system": "fxiaoke", "base_url": server.url,
                                   "auth": app.credentials(), "options": app.options()})
    assert isinstance(conn, FxiaokeConnector)
    assert set(conn.streams) == {"customers", "orders", "receivables"}
    assert conn.operations == {"sales_order"}
    with pytest.raises(ValueError, match="auth needs permanent_code"):
        build_connector("crm", {"system": "fxiaoke", "base_url": server.url,
                                "auth": {**app.credentials(), "permanent_code": ""}})
