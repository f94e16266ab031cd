"""WooCommerceConnector against WooCommerceFake over real HTTP."""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from connectors.base import Connector, Cursor, MappingError
from connectors.http import AuthError, PaginationError, reset_rate_limits
from connectors.registry import build_connector
from connectors.woocommerce import WooCommerceConnector, map_order
from sandbox import start_sandbox
from sandbox.server import FakeServer, Request, Response
from sandbox.woocommerce import ORDERS_PATH, WooCommerceFake, render_order

BASE = datetime(2026, 11, 1, tzinfo=UTC)
FAST_RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


def neutral_order(i: int, **over: Any) -> dict:
    o = {
        "external_id": str(3001 + i),
        "order_no": f"WC-{3001 + i}",
        "customer_code": "C00042",
        "customer_email": f"buyer{i}@example.com",
        "ordered_at": BASE + timedelta(minutes=i),
        "updated_at": BASE + timedelta(minutes=i, seconds=30),
        "currency": "CNY",
        "ship_region": "east",
        "lines": [
            {"line_no": 1, "sku": "SKU-00001", "qty": 2, "unit_price": Decimal("9.50")},
            {"line_no": 2, "sku": "SKU-00002", "qty": 1, "unit_price": Decimal("4.25")},
        ],
        "total": Decimal("23.25"),
    }
    o.update(over)
    return o


def ids(pages: list) -> list[str]:
    return [r.external_id for p in pages for r in p.records]


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield


@pytest.fixture
def woo() -> Iterator[tuple[WooCommerceFake, FakeServer]]:
    app = WooCommerceFake([neutral_order(i) for i in range(7)])
    server = FakeServer(app).start()
    yield app, server
    server.stop()


def connector(server: FakeServer, app: WooCommerceFake, page_size: int = 3,
              **cfg: Any) -> Connector:
    base = {"system": "woocommerce", "base_url": server.url, "auth": app.credentials(),
            "options": {"page_size": page_size}, "rate_limit": 0, "retry": FAST_RETRY}
    base.update(cfg)
    return build_connector("woo_cn", base)


# ------------------------------------------------------------------------------ mapping


def test_map_order_reads_gmt_dates_meta_customer_code_and_decimal_money() -> None:
    payload = render_order(neutral_order(0), 3001)
    # The fake renders site-local twins (+08:00, no offset): the mapper must use *_gmt.
    assert payload["date_modified"] == "2026-11-01T08:00:30"
    assert payload["date_modified_gmt"] == "2026-11-01T00:00:30"
    rec = map_order(payload)
    assert rec == {
        "external_id": "3001",
        "order_no": "WC-3001",
        "customer_code": "C00042",
        "customer_email": "buyer0@example.com",
        "ordered_at": BASE,
        "updated_at": BASE + timedelta(seconds=30),
        "currency": "CNY",
        "total": Decimal("23.25"),
        "ship_region": "east",
        "lines": [
            {"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2), "unit_price": Decimal("9.50")},
            {"line_no": 2, "sku": "SKU-00002", "qty": Decimal(1), "unit_price": Decimal("4.25")},
        ],
    }
    assert all(isinstance(ln["unit_price"], Decimal) for ln in rec["lines"])


def test_map_order_missing_values_are_none_not_absent() -> None:
    payload = render_order(neutral_order(0, customer_code=None, customer_email=None,
                                         ship_region=None), 3001)
    rec = map_order(payload)
    assert rec["customer_code"] is None and rec["customer_email"] is None
    assert rec["ship_region"] is None  # WooCommerce sends "" for an empty state


def test_map_order_rejects_an_unparseable_price_and_a_missing_modified_date() -> None:
    bad = render_order(neutral_order(0, lines=[{"line_no": 1, "sku": "S", "qty": 1,
                                                "unit_price": "N/A"}]), 3001)
    with pytest.raises(MappingError, match=r"line_items\[1\]\.price"):
        map_order(bad)
    with pytest.raises(MappingError, match="date_modified_gmt"):
        map_order({**render_order(neutral_order(0), 3001), "date_modified_gmt": None})


def test_map_order_without_price_derives_it_from_the_subtotal() -> None:
    payload = render_order(neutral_order(0), 3001)
    for li in payload["line_items"]:
        del li["price"]
    assert [ln["unit_price"] for ln in map_order(payload)["lines"]] == [Decimal("9.50"),
                                                                         Decimal("4.25")]


# ------------------------------------------------------------------------------ reading


def test_full_read_pages_by_number_up_to_x_wp_totalpages(woo) -> None:
    app, server = woo
    pages = list(connector(server, app).read("orders", None))
    assert [len(p.records) for p in pages] == [3, 3, 1]
    assert ids(pages) == [str(3001 + i) for i in range(7)]
    # Ordered by modified: every page carries the cursor of its newest record.
    assert pages[0].cursor == Cursor("2026-11-01T00:02:30Z", "3003")
    assert pages[-1].cursor == Cursor("2026-11-01T00:06:30Z", "3007")
    assert [r.query for r in app.requests] == [
        {"orderby": "modified", "order": "asc", "dates_are_gmt": "true", "per_page": "3",
         "page": str(n)} for n in (1, 2, 3)
    ]
    assert app.requests[0].headers["authorization"].startswith("Basic ")


def test_stops_at_the_total_even_when_the_last_page_is_full(woo) -> None:
    app, server = woo  # 7 orders
    pages = list(connector(server, app, page_size=7).read("orders", None))
    assert len(pages) == 1 and len(app.requests) == 1  # X-WP-TotalPages 1: no probe for page 2


def test_incremental_read_sends_modified_after_on_every_page(woo) -> None:
    app, server = woo
    c = connector(server, app, page_size=2, lookback_seconds=60)
    pages = list(c.read("orders", Cursor("2026-11-01T00:04:30Z", "3005")))
    # since = 00:03:30 (exclusive): orders 3005.. (00:04:30 and later)
    assert ids(pages) == ["3005", "3006", "3007"]
    assert all(r.query["modified_after"] == "2026-11-01T00:03:30" for r in app.requests)
    assert pages[-1].cursor == Cursor("2026-11-01T00:06:30Z", "3007")


def test_zero_lookback_still_overlaps_one_second_because_modified_after_is_exclusive(woo) -> None:
    app, server = woo
    c = connector(server, app, lookback_seconds=0)
    pages = list(c.read("orders", Cursor("2026-11-01T00:06:30Z", "3007")))
    assert app.requests[0].query["modified_after"] == "2026-11-01T00:06:29"
    assert ids(pages) == ["3007"]  # the row at the cursor second is re-read, not skipped


def test_a_server_that_ignores_page_raises_instead_of_looping(woo) -> None:
    app, server = woo
    app.ignore_page = True
    with pytest.raises(PaginationError) as exc:
        list(connector(server, app).read("orders", None))
    assert "woo_cn" in str(exc.value) and "repeated" in str(exc.value)
    assert len(app.requests) == 2


def test_page_size_is_clamped_to_the_api_maximum(woo) -> None:
    app, server = woo
    list(connector(server, app, page_size=500).read("orders", None))
    assert app.requests[0].query["per_page"] == "100"


def test_bad_credentials_are_an_auth_error_without_the_secret(woo) -> None:
    app, server = woo
    wrong = "cs_definitely_wrong_1234"
    c = connector(server, app, auth={"consumer_key": app.consumer_key, "consumer_secret": wrong})
    with pytest.raises(AuthError) as exc:
        list(c.read("orders", None))
    text = str(exc.value)
    assert "woo_cn" in text and "Sorry, you cannot list resources." in text
    assert wrong not in text


def test_missing_credentials_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="auth.consumer_key and auth.consumer_secret"):
        build_connector("w", {"system": "woocommerce", "base_url": "http://x",
                              "auth": {"consumer_key": "ck_1"}})


def test_registry_and_sandbox_know_woocommerce() -> None:
    c = build_connector("w", {"system": "woocommerce", "base_url": "http://x",
                              "auth": {"consumer_key": "ck", "consumer_secret": "cs"}})
    assert isinstance(c, WooCommerceConnector)
    dataset = type("D", (), {"orders": {"woocommerce": [neutral_order(0)]}})()
    with start_sandbox(dataset, systems=("woocommerce",)) as sb:
        src = sb.sources()["woocommerce"]
        c = build_connector("w", {"system": "woocommerce", "rate_limit": 0, **src})
        assert ids(list(c.read("orders", None))) == ["3001"]


# ------------------------------------------------------------------------------ push


def test_fulfilment_completes_the_order_exactly_once_across_reruns(woo) -> None:
    app, server = woo
    c = connector(server, app)
    doc = {"key": "fulfilment:woo_cn:3002", "order_external_id": "3002", "order_no": "WC-3002",
           "lines": [{"sku": "SKU-00001", "qty": "2"}]}
    first = c.push("fulfilment", [doc])
    assert first[0].ok and first[0].remote_id == "3002"
    assert app.orders[3002]["status"] == "completed"
    puts = [r for r in app.requests if r.method == "PUT"]
    assert len(puts) == 1 and puts[0].path == f"{ORDERS_PATH}/3002"
    assert puts[0].json == {"status": "completed"}
    # A rerun and a crash recovery send nothing new and create nothing new.
    again = c.push("fulfilment", [doc]) + c.push("fulfilment", [doc], recover=True)
    assert all(r.ok and r.remote_id == "3002" for r in again)
    assert app.creates == {("fulfilment", "3002"): 1}
    assert len([r for r in app.requests if r.method == "PUT"]) == 1


def test_fulfilment_retries_5xx_and_completes_once(woo) -> None:
    app, server = woo
    app.faults.add(503, times=1, path=r"/orders/3001$")  # the GET and its first retry fail;
    app.faults.add(502, times=1, path=r"/orders/3001$")  # the PUT is idempotent, retried too
    res = connector(server, app).push("fulfilment", [{"key": "k", "order_external_id": "3001"}])
    assert res[0].ok and app.creates == {("fulfilment", "3001"): 1}


def test_fulfilment_refuses_cancelled_orders_and_unknown_ids(woo) -> None:
    app, server = woo
    app.orders[3003]["status"] = "cancelled"
    res = connector(server, app).push("fulfilment", [
        {"key": "a", "order_external_id": "3003"},
        {"key": "b", "order_external_id": "9999"},
        {"key": "c", "order_external_id": "#1001"},
        {"key": "d", "order_external_id": "3004"},
    ])
    assert [r.ok for r in res] == [False, False, False, True]
    assert "cancelled" in (res[0].error or "") and app.orders[3003]["status"] == "cancelled"
    assert "Invalid ID." in (res[1].error or "")
    assert "not a WooCommerce order id" in (res[2].error or "")
    assert app.creates == {("fulfilment", "3004"): 1}


def test_fulfilment_with_bad_credentials_raises_for_the_whole_batch(woo) -> None:
    app, server = woo
    c = connector(server, app, auth={"consumer_key": "ck_x", "consumer_secret": "cs_wrong_0000"})
    with pytest.raises(AuthError):
        c.push("fulfilment", [{"key": "k", "order_external_id": "3001"}])
    assert not app.creates


# ------------------------------------------------------------------------------ the fake


def _get(app: WooCommerceFake, **query: str) -> Response:
    token = b64encode(f"{app.consumer_key}:{app.consumer_secret}".encode()).decode()
    return app.handle(Request("GET", ORDERS_PATH, dict(query),
                              {"authorization": f"Basic {token}"}, base_url="http://h"))


def test_fake_orders_like_woocommerce_and_validates_like_it() -> None:
    app = WooCommerceFake([neutral_order(i, updated_at=BASE - timedelta(minutes=i))
                           for i in range(4)])
    by_date = _get(app)  # default: orderby=date, order=desc
    assert [o["id"] for o in by_date.json] == [3004, 3003, 3002, 3001]
    assert by_date.headers["X-WP-Total"] == "4" and by_date.headers["X-WP-TotalPages"] == "1"
    assert [o["id"] for o in _get(app, orderby="modified", order="asc").json] == \
        [3004, 3003, 3002, 3001]
    page2 = _get(app, orderby="id", order="asc", per_page="3", page="2")
    assert [o["id"] for o in page2.json] == [3004] and 'rel="prev"' in page2.headers["Link"]
    assert _get(app, per_page="3", page="9").json == []  # beyond the last page
    bad = _get(app, per_page="101")
    assert bad.status == 400 and bad.json["code"] == "rest_invalid_param"
    assert "per_page" in bad.json["data"]["params"]


def test_fake_modified_after_is_exclusive_and_site_local_unless_gmt() -> None:
    app = WooCommerceFake([neutral_order(0, updated_at=BASE)])
    assert _get(app, modified_after="2026-11-01T00:00:00", dates_are_gmt="true").json == []
    assert len(_get(app, modified_after="2026-10-31T23:59:59", dates_are_gmt="true").json) == 1
    # Without dates_are_gmt the value is site time (+08:00): 07:59:59 local is 23:59:59 UTC.
    assert len(_get(app, modified_after="2026-11-01T07:59:59").json) == 1
    assert _get(app, modified_after="2026-11-01T08:00:00").json == []
