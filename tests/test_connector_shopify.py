"""ShopifyConnector against ShopifyFake over real HTTP, plus the shared parsing helpers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from connectors.base import (
    Connector,
    Cursor,
    MappingError,
    parse_datetime,
    parse_decimal,
    to_iso,
)
from connectors.http import ApiError, AuthError, RateLimitError, reset_rate_limits
from connectors.registry import build_connector
from connectors.shopify import ShopifyConnector, map_order
from sandbox.server import FakeServer
from sandbox.shopify import ShopifyFake

BASE = datetime(2026, 11, 1, tzinfo=UTC)
FAST_RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


# ------------------------------------------------------------------------------ test data


def neutral_order(i: int, updated: datetime | None = None, **over: Any) -> dict:
    """A neutral order as sandbox/generator.py makes them (internals.md "Generator")."""
    o = {
        "external_id": str(5_000_000_000 + i),
        "order_no": f"#{1001 + i}",
        "customer_code": None,
        "customer_email": f"buyer{i}@example.com",
        "ordered_at": BASE + timedelta(minutes=i),
        "updated_at": updated or BASE + timedelta(minutes=i, seconds=30),
        "currency": "USD",
        "ship_region": "east",
        "lines": [
            {"line_no": 1, "sku": "SKU-00001", "qty": 2, "unit_price": Decimal("9.50")},
            {"line_no": 2, "sku": "SKU-00002", "qty": 1, "unit_price": Decimal("4.25")},
        ],
        "total": Decimal("23.25"),
    }
    o.update(over)
    return o


def make_orders(n: int, **over: Any) -> list[dict]:
    return [neutral_order(i, **over) for i in range(n)]


def ids(pages: list) -> list[str]:
    return [r.external_id for p in pages for r in p.records]


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield


def start(orders: list[dict], fast: bool = True) -> tuple[ShopifyFake, FakeServer]:
    app = ShopifyFake(orders, fast=fast)
    return app, FakeServer(app).start()


def connector(server: FakeServer, app: ShopifyFake, page_size: int = 3, **cfg: Any) -> Connector:
    base = {
        "system": "shopify",
        "base_url": server.url,
        "auth": app.credentials(),
        "options": {**app.options(), "page_size": page_size},
        "retry": FAST_RETRY,
    }
    base.update(cfg)
    return build_connector("shop_cn", base)


@pytest.fixture
def shop() -> Iterator[tuple[ShopifyFake, FakeServer]]:
    app, server = start(make_orders(7))
    yield app, server
    server.stop()


# ------------------------------------------------------------------------------ reading


def test_registry_builds_shopify_and_rejects_unknown_systems() -> None:
    c = build_connector("s", {"system": "shopify", "base_url": "http://x", "auth": {"token": "t"}})
    assert isinstance(c, ShopifyConnector)
    with pytest.raises(ValueError) as exc:
        build_connector("s", {"system": "magento"})
    assert "magento" in str(exc.value) and "shopify" in str(exc.value) and "kingdee" in str(
        exc.value
    )


def test_full_read_pages_through_link_headers(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    pages = list(connector(server, app).read("orders", None))
    assert [len(p.records) for p in pages] == [3, 3, 1]
    assert ids(pages) == [str(5_000_000_000 + i) for i in range(7)]
    # Every page carries the cursor of its last record (API ordered by updated_at, id).
    assert pages[0].cursor == Cursor("2026-11-01T00:02:30Z", "5000000002")
    assert pages[-1].cursor == Cursor("2026-11-01T00:06:30Z", "5000000006")
    first, *later = app.requests
    assert first.query == {"status": "any", "order": "updated_at asc", "limit": "3"}
    assert all(set(r.query) == {"limit", "page_info"} for r in later)
    assert first.headers["x-shopify-access-token"] == app.token
    # Raw payload is the API's record as sent; its updated_at is read to UTC.
    assert pages[0].records[0].payload["updated_at"] == "2026-11-01T08:00:30+08:00"
    assert pages[0].records[0].updated_at == BASE + timedelta(seconds=30)


def test_incremental_read_sends_lookback_filter_on_first_request_only() -> None:
    app, server = start(make_orders(10))
    try:
        c = connector(server, app, page_size=2, lookback_seconds=60)
        prior = Cursor("2026-11-01T00:05:30Z", "5000000005")
        pages = list(c.read("orders", prior))
        # cursor - 60 s = 00:04:30: order 4 (overlap, re-read harmlessly) and 5..9.
        assert ids(pages) == [str(5_000_000_000 + i) for i in range(4, 10)]
        assert app.requests[0].query == {
            "status": "any",
            "order": "updated_at asc",
            "updated_at_min": "2026-11-01T00:04:30Z",
            "limit": "2",
        }
        assert len(app.requests) == 3
        for r in app.requests[1:]:
            assert set(r.query) == {"limit", "page_info"} and r.query["limit"] == "2"
        assert pages[-1].cursor == Cursor("2026-11-01T00:09:30Z", "5000000009")
    finally:
        server.stop()


def test_cursor_never_moves_back_within_the_overlap_window() -> None:
    app, server = start(make_orders(4))
    try:
        prior = Cursor("2026-11-01T00:03:30Z", "5000000003")  # already at the newest row
        pages = list(connector(server, app, page_size=2).read("orders", prior))
        assert ids(pages) == [str(5_000_000_000 + i) for i in range(4)]  # default lookback 600 s
        assert [p.cursor for p in pages] == [prior, prior]
    finally:
        server.stop()


def test_rows_sharing_one_updated_at_across_page_boundaries_are_not_lost() -> None:
    same = BASE + timedelta(hours=1)
    orders = make_orders(2) + [neutral_order(i, updated=same) for i in range(2, 9)]
    app, server = start(orders)
    try:
        c = connector(server, app, page_size=2, lookback_seconds=0)
        pages = list(c.read("orders", None))
        assert sorted(ids(pages)) == sorted(o["external_id"] for o in orders)
        assert len(ids(pages)) == 9  # none lost, none repeated
        assert pages[-1].cursor == Cursor("2026-11-01T01:00:00Z", "5000000008")
        # A second run from a mid-tie cursor (crash after page 2) re-reads the whole tie.
        app.reset_log()
        mid = pages[1].cursor
        assert mid is not None and mid.updated_at == "2026-11-01T01:00:00Z"
        again = ids(list(c.read("orders", mid)))
        assert set(again) == {str(5_000_000_000 + i) for i in range(2, 9)}
    finally:
        server.stop()


def test_empty_result_yields_one_empty_page_keeping_the_cursor() -> None:
    app, server = start(make_orders(2))
    try:
        prior = Cursor("2026-12-01T00:00:00Z", "1")
        pages = list(connector(server, app).read("orders", prior))
        assert len(pages) == 1 and pages[0].records == [] and pages[0].cursor == prior
    finally:
        server.stop()


def test_unknown_stream_is_a_clear_error(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    with pytest.raises(ValueError, match="no stream 'stock'.*has: orders"):
        list(connector(server, app).read("stock", None))


# ------------------------------------------------------------------------------ errors


def test_auth_failure_names_source_and_url_not_the_token(
    shop: tuple[ShopifyFake, FakeServer],
) -> None:
    app, server = shop
    c = connector(server, app, auth={"token": "shpat_wrong_token_123"})
    with pytest.raises(AuthError) as exc:
        list(c.read("orders", None))
    text = str(exc.value)
    assert text.startswith("shop_cn: credentials refused, HTTP 401")
    assert "Invalid API key or access token" in text
    assert f"{server.url}/admin/api/2024-10/orders.json" in text
    assert "shpat_wrong_token_123" not in text and "\n" not in text
    assert len(app.requests) == 1  # auth errors are not retried


def test_api_error_shape_page_info_with_filters(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    c = connector(server, app)
    list(c.read("orders", None))
    token = app.requests[1].query["page_info"]
    with pytest.raises(ApiError) as exc:
        c.http.get("/admin/api/2024-10/orders.json",
                   params={"page_info": token, "limit": 3, "updated_at_min": "2026-01-01"})
    assert exc.value.status == 400
    assert "page_info" in str(exc.value) and "updated_at_min" in str(exc.value)
    with pytest.raises(ApiError, match="Invalid value"):
        c.http.get("/admin/api/2024-10/orders.json", params={"page_info": "garbage!", "limit": 3})


def test_429_from_the_leaky_bucket_is_waited_out() -> None:
    # fast=False: the documented 40-call bucket leaking 2/s; 42 pages of one order overflow it.
    app, server = start(make_orders(42), fast=False)
    try:
        c = connector(server, app, page_size=1)
        pages = list(c.read("orders", None))
        assert len(ids(pages)) == 42
        assert len(app.requests) > 42  # some answers were 429 and were retried after Retry-After
    finally:
        server.stop()


def test_429_fault_with_retry_after_then_success(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    app.faults.add(429, times=2, retry_after="0.1", body={"errors": "Exceeded 2 calls per second"})
    assert len(ids(list(connector(server, app).read("orders", None)))) == 7
    assert len(app.requests) == 5


def test_429_without_retry_after_uses_backoff_and_gives_up(
    shop: tuple[ShopifyFake, FakeServer],
) -> None:
    app, server = shop
    app.faults.add(429, times=20)
    with pytest.raises(RateLimitError) as exc:
        list(connector(server, app).read("orders", None))
    assert "shop_cn" in str(exc.value) and len(app.requests) == 4


def test_5xx_then_success_mid_stream(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    c = connector(server, app)
    pages = c.read("orders", None)
    first = next(pages)
    app.faults.add(502, times=2)
    rest = list(pages)
    assert len(first.records) + sum(len(p.records) for p in rest) == 7
    assert len(app.requests) == 5


def test_call_limit_header_is_sent(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    resp = connector(server, app).http.get("/admin/api/2024-10/orders.json",
                                           params={"limit": 1})
    assert resp.headers["X-Shopify-Shop-Api-Call-Limit"].endswith("/400")


# ------------------------------------------------------------------------------ mapping


def test_map_order_to_canonical(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    c = connector(server, app)
    page = next(iter(c.read("orders", None)))
    rec = c.map("orders", page.records[0].payload)
    assert rec == {
        "external_id": "5000000000",
        "order_no": "#1001",
        "customer_code": None,
        "customer_email": "buyer0@example.com",
        "ordered_at": BASE,
        "updated_at": BASE + timedelta(seconds=30),
        "currency": "USD",
        "total": Decimal("23.25"),
        "ship_region": "east",
        "fulfilment_status": "unfulfilled",  # Shopify's null: nothing shipped yet
        "lines": [
            {"line_no": 1, "sku": "SKU-00001", "qty": Decimal("2"), "unit_price": Decimal("9.50")},
            {"line_no": 2, "sku": "SKU-00002", "qty": Decimal("1"), "unit_price": Decimal("4.25")},
        ],
    }
    assert rec["ordered_at"].tzinfo == UTC


def test_map_order_missing_values_are_none_and_bad_values_reject() -> None:
    app, server = start([
        neutral_order(0, ship_region=None, customer_email=None),
        neutral_order(1, lines=[{"line_no": 1, "sku": "SKU-1", "qty": 1, "unit_price": "N/A"}]),
    ])
    try:
        c = connector(server, app)
        payloads = [r.payload for p in c.read("orders", None) for r in p.records]
        assert "province_code" not in payloads[0]["shipping_address"]
        assert payloads[1]["line_items"][0]["price"] == "N/A"  # rendered as it is
        rec = c.map("orders", payloads[0])
        assert rec["ship_region"] is None and rec["customer_email"] is None
        with pytest.raises(MappingError, match=r"line_items\[1\].price: not a number"):
            c.map("orders", payloads[1])
    finally:
        server.stop()


def test_map_order_takes_customer_email_when_order_email_is_missing() -> None:
    payload = {"id": 1, "name": "#1", "email": None, "customer": {"email": "c@x.com"},
               "updated_at": "2026-11-01T08:00:00+08:00", "line_items": []}
    rec = map_order(payload)
    assert rec["customer_email"] == "c@x.com"
    assert rec["updated_at"] == BASE
    with pytest.raises(MappingError, match="updated_at"):
        map_order({"id": 1})


def test_parse_helpers() -> None:
    assert parse_decimal("12.50", "p") == Decimal("12.50")
    assert parse_decimal(3, "q") == Decimal(3)
    assert parse_decimal(Decimal("1.1"), "p") == Decimal("1.1")
    assert parse_decimal(None, "p") is None and parse_decimal(" ", "p") is None
    for bad in ("N/A", "NaN", "Infinity", True, [1]):
        with pytest.raises(MappingError, match="^total: "):
            parse_decimal(bad, "total")
    with pytest.raises(TypeError, match="float"):
        parse_decimal(1.5, "total")
    assert parse_datetime("2026-11-01T10:00:00Z", "t") == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert parse_datetime("2026-11-01T18:00:00+08:00", "t") == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert parse_datetime("2026-11-01T10:00:00.123Z", "t").microsecond == 123000
    assert parse_datetime(None, "t") is None
    with pytest.raises(MappingError, match="^t: "):
        parse_datetime("yesterday", "t")
    assert to_iso(datetime(2026, 11, 1, 18, tzinfo=parse_datetime(
        "2026-11-01T18:00:00+08:00", "t").tzinfo)) == "2026-11-01T18:00:00Z"
    assert to_iso(parse_datetime("2026-11-01T18:00:00+08:00", "t")) == "2026-11-01T10:00:00Z"


# ------------------------------------------------------------------------------ fulfilment


def fulfil_docs(app: ShopifyFake, n: int) -> list[dict]:
    orders = sorted(app.orders.values(), key=lambda o: o["id"])[:n]
    return [
        {"key": f"shopify:fulfilment:{o['id']}", "order_external_id": str(o["id"]),
         "order_no": o["name"], "lines": [{"sku": li["sku"], "qty": str(li["quantity"])}
                                          for li in o["line_items"]]}
        for o in orders
    ]


def test_fulfilment_push_creates_exactly_once_per_order(
    shop: tuple[ShopifyFake, FakeServer],
) -> None:
    app, server = shop
    c = connector(server, app)
    docs = fulfil_docs(app, 3)
    first = c.push("fulfilment", docs)
    assert all(r.ok for r in first) and [r.key for r in first] == [d["key"] for d in docs]
    assert app.creates == {("fulfilment", d["order_external_id"]): 1 for d in docs}
    post = next(r for r in app.requests if r.method == "POST")
    fo_id = app._fo_by_order[int(docs[0]["order_external_id"])][0]
    assert post.json == {"fulfillment": {
        "line_items_by_fulfillment_order": [{"fulfillment_order_id": fo_id}],
        "notify_customer": False,
    }}
    # Rerun after a crash: recover=True finds the existing fulfilments and creates nothing.
    again = c.push("fulfilment", docs, recover=True)
    assert [r.remote_id for r in again] == [r.remote_id for r in first]
    # Even without recover, a closed fulfillment order is answered by the existing one.
    third = c.push("fulfilment", docs)
    assert [r.remote_id for r in third] == [r.remote_id for r in first]
    assert sum(app.creates.values()) == 3
    assert [f["name"] for f in app.fulfillments[int(docs[0]["order_external_id"])]] == ["#1001.1"]


def test_recover_creates_when_nothing_was_sent(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    docs = fulfil_docs(app, 1)
    res = connector(server, app).push("fulfilment", docs, recover=True)
    assert res[0].ok and app.creates[("fulfilment", docs[0]["order_external_id"])] == 1


def test_fulfilment_per_doc_error_is_a_failed_result(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    docs = fulfil_docs(app, 2)
    docs.insert(1, {"key": "k-missing", "order_external_id": "999", "order_no": "#x", "lines": []})
    app.faults.add(422, body={"errors": ["Fulfillment order is on hold."]}, path="fulfillments")
    res = connector(server, app).push("fulfilment", docs)
    assert [r.ok for r in res] == [False, False, True]
    assert "on hold" in (res[0].error or "") and "shop_cn" in (res[0].error or "")
    assert "404" in (res[1].error or "")
    # The first order was not fulfilled (fault), so a retry creates it exactly once.
    assert connector(server, app).push("fulfilment", docs[:1])[0].ok
    assert sum(app.creates.values()) == 2


def test_push_unknown_operation_and_auth_failure(shop: tuple[ShopifyFake, FakeServer]) -> None:
    app, server = shop
    with pytest.raises(ValueError, match="supports: fulfilment"):
        connector(server, app).push("invoice", [])
    with pytest.raises(AuthError):  # systemic: raised, not one failed result per doc
        connector(server, app, auth={"token": "nope-nope"}).push("fulfilment", fulfil_docs(app, 2))
