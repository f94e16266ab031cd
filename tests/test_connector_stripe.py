"""StripeConnector against StripeFake over real HTTP: minor units, refunds, paging, invoices."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import pytest

from connectors.base import Connector, Cursor, MappingError
from connectors.http import (
    ApiError,
    AuthError,
    PaginationError,
    RateLimitError,
    reset_rate_limits,
)
from connectors.registry import build_connector
from connectors.stripe import (
    StripeConnector,
    amount_from_minor,
    amount_to_minor,
    form_pairs,
    idempotency_key,
    map_charge,
)
from sandbox.server import FakeServer
from sandbox.stripe import DEFAULT_KEY, StripeFake, error_body, mask_key

BASE = 1_793_491_200  # 2026-11-01T00:00:00Z
BASE_DT = datetime(2026, 11, 1, tzinfo=UTC)
FAST_RETRY = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


# ------------------------------------------------------------------------------ fixtures


def charge(i: int, created: int | None = None, **over: Any) -> dict:
    c = {"id": f"ch_{i:04d}", "amount": 1000 + i, "currency": "usd",
         "created": BASE + i * 60 if created is None else created,
         "metadata": {"order_no": f"#{1001 + i}", "customer_code": "C00001"}}
    c.update(over)
    return c


def start(charges: list[dict], **kw: Any) -> tuple[StripeFake, FakeServer]:
    app = StripeFake({"payments": [], "charges": charges}, **kw)
    return app, FakeServer(app).start()


def connector(server: FakeServer, app: StripeFake, page_size: int = 3, **cfg: Any) -> Connector:
    options = {**app.options(), "page_size": page_size, **cfg.pop("options", {})}
    base = {"system": "stripe", "base_url": server.url, "auth": app.credentials(),
            "options": options, "rate_limit": 0, "retry": FAST_RETRY}
    base.update(cfg)
    return build_connector("stripe_eu", base)


def ids(pages: list) -> list[str]:
    return [r.external_id for p in pages for r in p.records]


def form(req: Any) -> dict[str, str]:
    return dict(parse_qsl(req.body.decode()))


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield


@pytest.fixture
def stripe() -> Iterator[tuple[StripeFake, FakeServer]]:
    app, server = start([charge(i) for i in range(7)])
    yield app, server
    server.stop()


# ------------------------------------------------------------------------------ money


def test_minor_units_two_zero_and_three_decimal_currencies() -> None:
    assert amount_from_minor(1234, "usd") == Decimal("12.34")
    assert amount_from_minor(1234, "JPY") == Decimal("1234")       # zero-decimal
    assert amount_from_minor(12340, "kwd") == Decimal("12.340")    # three-decimal
    # Where Stripe's wire exponent is not ISO 4217's:
    assert amount_from_minor(500, "isk") == Decimal("5")           # ISK two-decimal in Stripe
    assert amount_from_minor(4010, "isk") == Decimal("40.10")      # old fractional ISK: kept
    assert amount_from_minor(1000, "mga") == Decimal("1000.00")    # MGA zero-decimal in Stripe
    assert amount_to_minor("12.34", "USD") == 1234
    assert amount_to_minor("1250", "JPY") == 1250
    assert amount_to_minor("12.340", "KWD") == 12340
    assert amount_to_minor("5", "ISK") == 500
    assert amount_to_minor("1000", "MGA") == 1000
    for amount, cur, why in (("12.345", "USD", "more decimals"), ("1250.5", "JPY", "more decimals"),
                             ("12.345", "KWD", "multiples of 0.010"),
                             ("1000.50", "MGA", "whole units"), (1.5, "USD", "float")):
        with pytest.raises(MappingError, match=why):
            amount_to_minor(amount, cur)
    for bad in (Decimal("12.5"), "1234", True, None):
        with pytest.raises(MappingError, match="^amount: expected integer minor units"):
            amount_from_minor(bad, "USD")
    with pytest.raises(MappingError, match="currency"):
        amount_from_minor(100, "dollars")


def test_map_charge_refunds_and_status() -> None:
    base = charge(1, amount=5000, amount_captured=5000, status="succeeded")
    rec = map_charge(base)
    assert rec == {"external_id": "ch_0001", "reference": "#1002", "customer_code": "C00001",
                   "currency": "USD", "amount": Decimal("50.00"),
                   "received_at": BASE_DT + timedelta(minutes=1),
                   "updated_at": BASE_DT + timedelta(minutes=1)}
    # Cash kept = captured - refunded; a full refund is no cash; failed/pending are none yet.
    assert map_charge({**base, "amount_refunded": 1250})["amount"] == Decimal("37.50")
    assert map_charge({**base, "amount_refunded": 5000, "refunded": True})["amount"] == 0
    assert map_charge({**base, "status": "failed", "amount_captured": 0})["amount"] == 0
    assert map_charge({**base, "status": "pending"})["amount"] == 0
    # Uncaptured (auth only): nothing received.
    assert map_charge({**base, "amount_captured": 0, "captured": False})["amount"] == 0
    # API versions without amount_captured: the amount when captured.
    legacy = {k: v for k, v in base.items() if k != "amount_captured"}
    assert map_charge({**legacy, "captured": True})["amount"] == Decimal("50.00")
    # JPY: zero-decimal, no division by 100.
    assert map_charge({**base, "currency": "jpy", "amount": 1250, "amount_captured": 1250,
                       "amount_refunded": 250})["amount"] == Decimal("1000")
    with pytest.raises(MappingError, match="amount_refunded: 6000 exceeds"):
        map_charge({**base, "amount_refunded": 6000})


def test_map_charge_reference_fallbacks_and_rejects() -> None:
    base = charge(2, amount_captured=1002, status="succeeded", metadata={},
                  description="Order XSDD000007")
    rec = map_charge(base)
    assert rec["reference"] == "Order XSDD000007" and rec["customer_code"] is None
    # An expanded payment intent's metadata is read when the charge has none.
    pi = {"id": "pi_1", "metadata": {"order_no": "#1", "customer_code": "C9"}}
    assert map_charge({**base, "payment_intent": pi})["reference"] == "#1"
    for bad, msg in (({"id": None}, "id: missing"), ({"currency": None}, "currency: missing"),
                     ({"created": "2026-11-01"}, "created: expected unix seconds"),
                     ({"amount_captured": Decimal("10.5")}, "amount_captured: expected integer"),
                     ({"currency": "xx"}, "amount: currency")):
        with pytest.raises(MappingError, match=msg):
            map_charge({**base, **bad})


def test_fake_renders_stripe_payments_of_a_dataset_with_zero_decimal_jpy() -> None:
    payments = [
        {"external_id": "500001", "reference": "#1001", "customer_code": None,
         "amount": Decimal("1250"), "currency": "JPY", "received_at": BASE_DT,
         "updated_at": BASE_DT, "system": "stripe"},
        {"external_id": "ch_given", "reference": "XSDD000001", "customer_code": "C00002",
         "amount": Decimal("99.95"), "currency": "USD", "refunded": Decimal("9.95"),
         "received_at": BASE_DT + timedelta(hours=1), "updated_at": BASE_DT, "system": "stripe"},
        {"external_id": "500003", "reference": "K1", "customer_code": "C1",   # a Kingdee receipt
         "amount": Decimal("5"), "currency": "CNY", "received_at": BASE_DT,
         "updated_at": BASE_DT, "system": "kingdee"},
    ]
    app = StripeFake(SimpleNamespace(payments=payments))
    assert sorted(app.charges) == ["ch_500001", "ch_given"]
    jpy = app.charges["ch_500001"]
    assert (jpy["amount"], jpy["currency"], jpy["created"]) == (1250, "jpy", BASE)
    assert jpy["metadata"] == {"order_no": "#1001"}
    assert map_charge(jpy)["amount"] == Decimal("1250")
    usd = map_charge(app.charges["ch_given"])
    assert (usd["amount"], usd["customer_code"]) == (Decimal("90.00"), "C00002")
    # A generator Dataset without Stripe payments yet: an empty fake, not an error.
    assert StripeFake(SimpleNamespace(payments=payments[2:], charges=None)).charges == {}


# ------------------------------------------------------------------------------ reading


def test_registry_and_required_key() -> None:
    c = build_connector("s", {"system": "stripe", "auth": {"api_key": "sk_test_x"}})
    assert isinstance(c, StripeConnector)
    assert c.http.base_url == "https://api.stripe.com/"
    with pytest.raises(ValueError, match="auth.api_key is required"):
        build_connector("s", {"system": "stripe", "auth": {}})


def test_full_read_is_newest_first_and_the_cursor_comes_only_at_the_end(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    pages = list(connector(server, app).read("payments", None))
    assert ids(pages) == [f"ch_{i:04d}" for i in range(6, -1, -1)]
    assert [p.cursor for p in pages] == [None, None, Cursor("2026-11-01T00:06:00Z", "ch_0006")]
    assert [r.query for r in app.requests] == [
        {"limit": "3"},
        {"limit": "3", "starting_after": "ch_0004"},
        {"limit": "3", "starting_after": "ch_0001"},
    ]  # a full read does not ask for refunds: every charge is read in its current state
    first = app.requests[0]
    assert first.path == "/v1/charges"
    assert first.headers["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert first.headers["stripe-version"] == "2024-06-20"
    assert pages[0].records[0].updated_at == BASE_DT + timedelta(minutes=6)
    assert pages[0].records[0].payload["amount"] == 1006  # as Stripe sent it


def test_incremental_read_sends_created_gte_on_every_page_then_follows_refunds() -> None:
    app, server = start([charge(i) for i in range(10)])
    try:
        c = connector(server, app, page_size=2, lookback_seconds=90)
        prior = Cursor("2026-11-01T00:05:00Z", "ch_0005")
        pages = list(c.read("payments", prior))
        since = str(BASE + 300 - 90)  # cursor - lookback, unix seconds
        assert ids(pages) == [f"ch_{i:04d}" for i in range(9, 3, -1)]
        assert [(r.path, r.query) for r in app.requests] == [
            ("/v1/charges", {"created[gte]": since, "limit": "2"}),
            ("/v1/charges", {"created[gte]": since, "limit": "2", "starting_after": "ch_0008"}),
            ("/v1/charges", {"created[gte]": since, "limit": "2", "starting_after": "ch_0006"}),
            ("/v1/refunds", {"created[gte]": since, "limit": "2", "expand[]": "data.charge"}),
        ]
        final = Cursor("2026-11-01T00:09:00Z", "ch_0009")
        assert [p.cursor for p in pages] == [None, None, None, final]
        assert pages[-1].records == []
    finally:
        server.stop()


def test_ties_in_one_second_are_ordered_by_id_desc_and_not_lost_across_pages() -> None:
    same = BASE + 3600
    tied = [charge(i, created=same, id=f"ch_t{c}") for i, c in enumerate("qbmxa")]
    app, server = start([charge(0), charge(1)] + tied)
    try:
        c = connector(server, app, page_size=2, lookback_seconds=0)
        pages = list(c.read("payments", None))
        assert ids(pages) == ["ch_tx", "ch_tq", "ch_tm", "ch_tb", "ch_ta", "ch_0001", "ch_0000"]
        assert pages[-1].cursor == Cursor("2026-11-01T01:00:00Z", "ch_tx")
        # Resume from the middle of the tie: created[gte] is inclusive, the whole tie comes back.
        again = ids(list(c.read("payments", Cursor("2026-11-01T01:00:00Z", "ch_tb"))))
        assert set(again) == {"ch_tx", "ch_tq", "ch_tm", "ch_tb", "ch_ta"}
    finally:
        server.stop()


def test_empty_incremental_read_keeps_the_cursor(stripe: tuple[StripeFake, FakeServer]) -> None:
    app, server = stripe
    prior = Cursor("2026-12-01T00:00:00Z", "ch_zzzz")
    pages = list(connector(server, app).read("payments", prior))
    assert [len(p.records) for p in pages] == [0, 0]  # charges, then refunds
    assert [p.cursor for p in pages] == [None, prior]


def test_a_refund_days_later_is_seen_by_the_next_incremental_read() -> None:
    app, server = start([charge(i) for i in range(3)])
    try:
        c = connector(server, app, lookback_seconds=60)
        pages = list(c.read("payments", None))
        cursor = pages[-1].cursor
        assert cursor is not None
        app.now = BASE + 5 * 86400  # five days on: far outside the lookback window
        resp = c.http.post("/v1/refunds", data=form_pairs({"charge": "ch_0000", "amount": 400}),
                           headers={"Idempotency-Key": "refund-ch_0000-1"})
        assert resp.data["amount"] == 400
        app.requests.clear()
        again = list(c.read("payments", cursor))
        refunded = [r for p in again for r in p.records if r.external_id == "ch_0000"]
        assert len(refunded) == 1
        assert c.map("payments", refunded[0].payload)["amount"] == Decimal("6.00")  # 10.00 - 4.00
        assert again[-1].cursor == cursor  # an older charge never moves the cursor
        assert app.requests[-1].path == "/v1/refunds"
        # follow_refunds off: the refund is not seen (documented trade-off)
        off = connector(server, app, lookback_seconds=60, options={"follow_refunds": "false"})
        assert "ch_0000" not in ids(list(off.read("payments", cursor)))
    finally:
        server.stop()


def test_page_size_is_capped_at_stripes_maximum(stripe: tuple[StripeFake, FakeServer]) -> None:
    app, server = stripe
    list(connector(server, app, page_size=500).read("payments", None))
    assert app.requests[0].query == {"limit": "100"}


def test_repeated_page_token_and_has_more_without_data_raise_pagination_error(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    same = {"object": "list", "url": "/v1/charges", "has_more": True,
            "data": [charge(1, amount_captured=1001, status="succeeded")]}
    app.faults.add(200, times=2, body=same)
    with pytest.raises(PaginationError, match="stripe_eu: page token 'ch_0001' repeated"):
        list(connector(server, app).read("payments", None))
    app.faults.clear()
    app.faults.add(200, body={"object": "list", "url": "/v1/charges", "has_more": True, "data": []})
    with pytest.raises(PaginationError, match="has_more is true but the page has no last id"):
        list(connector(server, app).read("payments", None))


# ------------------------------------------------------------------------------ errors


def test_auth_failure_quotes_stripes_masked_key_never_ours(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    wrong = "sk_test_51ThisIsAWrongKey000000000abcd"
    c = connector(server, app, auth={"api_key": wrong})
    with pytest.raises(AuthError) as exc:
        list(c.read("payments", None))
    text = str(exc.value)
    assert text.startswith("stripe_eu: credentials refused, HTTP 401")
    assert "Invalid API Key provided: sk_test_****abcd" in text
    assert wrong not in text and "\n" not in text
    assert len(app.requests) == 1  # not retried
    assert mask_key(wrong) == "sk_test_****abcd"


def test_the_apis_error_shape_is_in_the_message(stripe: tuple[StripeFake, FakeServer]) -> None:
    app, server = stripe
    c = connector(server, app)
    with pytest.raises(ApiError) as exc:
        c.http.get("/v1/charges", params={"limit": 3, "order": "asc"})
    assert exc.value.status == 400
    assert "Received unknown parameter: order" in str(exc.value)
    with pytest.raises(ApiError, match="No such charge: 'ch_nope'"):
        c.http.get("/v1/charges", params={"starting_after": "ch_nope"})
    with pytest.raises(ApiError, match="greater than or equal to 1"):
        c.http.get("/v1/charges", params={"limit": 0})
    app.faults.add(402, body=error_body("Your card was declined.", type="card_error",
                                        code="card_declined"))
    with pytest.raises(ApiError, match="HTTP 402.*card_declined"):
        list(c.read("payments", None))


def test_429_with_retry_after_then_success(stripe: tuple[StripeFake, FakeServer]) -> None:
    app, server = stripe
    app.faults.add(429, times=2, retry_after="0.05",
                   body=error_body("Too many requests", code="rate_limit"))
    assert len(ids(list(connector(server, app).read("payments", None)))) == 7
    assert len(app.requests) == 5


def test_429_without_retry_after_backs_off_and_gives_up(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    app.faults.add(429, times=20, body=error_body("Too many requests", code="rate_limit"))
    with pytest.raises(RateLimitError, match="stripe_eu"):
        list(connector(server, app).read("payments", None))
    assert len(app.requests) == 4


def test_5xx_then_success_mid_stream(stripe: tuple[StripeFake, FakeServer]) -> None:
    app, server = stripe
    pages = connector(server, app).read("payments", None)
    first = next(pages)
    app.faults.add(503, times=2)
    assert len(first.records) + sum(len(p.records) for p in pages) == 7
    assert len(app.requests) == 5


def test_documented_test_mode_rate_limit_is_answered_in_stripes_shape() -> None:
    app, server = start([charge(0)], fast=False)
    try:
        c = connector(server, app, retry={"max_retries": 0})
        with pytest.raises(RateLimitError, match="rate_limit"):
            for _ in range(40):  # test mode: 25 requests/s
                c.http.get("/v1/charges", params={"limit": 1})
    finally:
        server.stop()


# ------------------------------------------------------------------------------ push: invoice


def invoice_doc(n: int = 1, currency: str = "USD", amount: str = "23.25",
                lines: list[dict] | None = None, **over: Any) -> dict:
    doc = {
        "key": f"stripe:invoice:INV-{n:06d}", "bill_no": f"INV-{n:06d}",
        "invoice_no": f"INV-{n:06d}", "order_ref": f"#{1000 + n}", "customer_code": "C00001",
        "currency": currency, "issued_at": "2026-11-02T00:00:00Z", "amount": amount,
        "lines": lines if lines is not None else [
            {"sku": "SKU-00001", "qty": "2", "unit_price": "9.50", "amount": "19.00"},
            {"sku": "SKU-00002", "qty": "1", "unit_price": "4.25", "amount": "4.25"},
        ],
    }
    doc.update(over)
    return doc


def posts(app: StripeFake, path: str) -> list:
    return [r for r in app.requests if r.method == "POST" and r.path == path]


def test_invoice_push_sends_exact_form_requests_with_idempotency_keys(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    c = connector(server, app)
    res = c.push("invoice", [invoice_doc(1), invoice_doc(2)])
    assert [r.ok for r in res] == [True, True]
    inv = app.invoices[res[0].remote_id or ""]
    assert (inv["status"], inv["total"], inv["number"]) == ("open", 2325, "ORDH-0001")
    assert app.creates == {("customer", "C00001"): 1, ("invoice", "INV-000001"): 1,
                           ("invoice", "INV-000002"): 1}
    cus = inv["customer"]
    create = posts(app, "/v1/invoices")[0]
    assert create.headers["idempotency-key"] == "stripe:invoice:INV-000001"
    assert create.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form(create) == {
        "customer": cus, "currency": "usd", "collection_method": "send_invoice",
        "days_until_due": "30", "auto_advance": "false",
        "pending_invoice_items_behavior": "exclude", "description": "Order #1001",
        "metadata[invoice_no]": "INV-000001", "metadata[order_ref]": "#1001",
        "metadata[customer_code]": "C00001", "metadata[issued_at]": "2026-11-02T00:00:00Z",
    }
    items = posts(app, "/v1/invoiceitems")[:2]
    assert [r.headers["idempotency-key"] for r in items] == [
        "stripe:invoice:INV-000001:line:1", "stripe:invoice:INV-000001:line:2"]
    assert form(items[0]) == {
        "customer": cus, "invoice": inv["id"], "currency": "usd", "amount": "1900",
        "description": "SKU-00001 x 2 @ 9.50", "metadata[invoice_no]": "INV-000001",
        "metadata[line_no]": "1", "metadata[sku]": "SKU-00001"}
    fin = posts(app, f"/v1/invoices/{inv['id']}/finalize")[0]
    assert fin.headers["idempotency-key"] == "stripe:invoice:INV-000001:finalize"
    # Looked up before creating (lookup_first), by the invoice number in metadata.
    search = next(r for r in app.requests if r.path == "/v1/invoices/search")
    assert search.query == {"query": "metadata['invoice_no']:'INV-000001'", "limit": "10"}


def test_invoice_minor_units_jpy_and_an_adjustment_line() -> None:
    app, server = start([])
    try:
        lines = [{"sku": "A", "qty": "2", "unit_price": "500", "amount": "1000"},
                 {"sku": "B", "qty": "3", "unit_price": "70", "amount": None}]  # 210, computed
        res = connector(server, app).push("invoice", [invoice_doc(1, "JPY", "1200", lines)])
        assert res[0].ok, res[0].error
        inv = app.invoices[res[0].remote_id or ""]
        assert inv["currency"] == "jpy" and inv["total"] == 1200  # yen, not 120000
        assert [(li["amount"], li["description"]) for li in inv["lines"]["data"]] == [
            (1000, "A x 2 @ 500"), (210, "B x 3 @ 70"), (-10, "Adjustment to invoice total")]
    finally:
        server.stop()


def test_invoice_amounts_stripe_cannot_take_fail_the_doc_without_a_request() -> None:
    app, server = start([])
    try:
        c = connector(server, app)
        res = c.push("invoice", [
            invoice_doc(1, "KWD", "12.345", lines=[]),   # three-decimal: must end in 0
            invoice_doc(2, "USD", "10.005", lines=[]),   # more decimals than USD has
            invoice_doc(3, "KWD", "12.340", lines=[]),
            invoice_doc(4, customer_code=None),
        ])
        assert [r.ok for r in res] == [False, False, True, False]
        assert "multiples of 0.010" in (res[0].error or "")
        assert "more decimals than USD" in (res[1].error or "")
        assert res[3].error == "customer_code: missing"
        assert app.invoices[res[2].remote_id or ""]["total"] == 12340
        assert [k for k in app.creates if k[0] == "invoice"] == [("invoice", "INV-000003")]
    finally:
        server.stop()


def test_same_key_is_replayed_same_id_one_create(stripe: tuple[StripeFake, FakeServer]) -> None:
    app, server = stripe
    # Without the lookup, exactly-once rests on Stripe's idempotency alone.
    c = connector(server, app, options={"lookup_first": False})
    first = c.push("invoice", [invoice_doc(1)])
    second = c.push("invoice", [invoice_doc(1)])
    assert first[0].ok and second[0].ok and first[0].remote_id == second[0].remote_id
    assert app.creates[("invoice", "INV-000001")] == 1 and len(app.invoices) == 1
    assert len(posts(app, "/v1/invoices")) == 2
    assert len(app.invoiceitems) == 2
    # The replay is Stripe's: same key, same parameters -> the saved first answer.
    replay = c.http.post("/v1/invoices", data=[tuple(p) for p in parse_qsl(
        posts(app, "/v1/invoices")[0].body.decode())],
        headers={"Idempotency-Key": "stripe:invoice:INV-000001"})
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.data["id"] == first[0].remote_id and replay.data["status"] == "draft"


def test_same_key_with_different_parameters_is_a_clear_error(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    c = connector(server, app)
    assert c.push("invoice", [invoice_doc(1)])[0].ok
    changed = invoice_doc(1, invoice_no="INV-000001-B", amount="30.00", lines=[])  # same key
    res = c.push("invoice", [changed])[0]
    assert not res.ok
    assert "Idempotency-Key 'stripe:invoice:INV-000001' was first used with different " \
           "parameters" in (res.error or "")
    assert "idempotency_error" in (res.error or "") and "stripe_eu" in (res.error or "")
    assert len(app.invoices) == 1


def test_a_saved_error_is_replayed_for_its_key(stripe: tuple[StripeFake, FakeServer]) -> None:
    app, server = stripe
    c = connector(server, app)
    pairs = form_pairs({"charge": "ch_nope"})
    for _ in range(2):
        with pytest.raises(ApiError, match="No such charge"):
            c.http.post("/v1/refunds", data=pairs, headers={"Idempotency-Key": "r1"})
    assert app.idempotency["r1"].response.status == 400
    # ... but a validation failure is not saved (Stripe: the endpoint never started).
    with pytest.raises(ApiError, match="parameter_missing"):
        c.http.post("/v1/refunds", data=[], headers={"Idempotency-Key": "r2"})
    assert "r2" not in app.idempotency
    ok = c.http.post("/v1/refunds", data=form_pairs({"charge": "ch_0001"}),
                     headers={"Idempotency-Key": "r2"})
    assert ok.data["amount"] == 1001 and app.creates[("refund", "r2")] == 1


def test_recover_after_keys_were_pruned_finds_the_invoice_by_metadata(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    c = connector(server, app, options={"lookup_first": False})
    first = c.push("invoice", [invoice_doc(1)])[0]
    app.prune_idempotency_keys()  # 24 h later
    app.requests.clear()
    again = c.push("invoice", [invoice_doc(1)], recover=True)[0]
    assert again.ok and again.remote_id == first.remote_id
    assert [r.method for r in app.requests] == ["GET"]  # the search, nothing created
    assert app.creates[("invoice", "INV-000001")] == 1


def test_recover_completes_a_half_built_draft_adding_only_missing_lines(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    c = connector(server, app)
    # The first attempt dies after the invoice and its first line (second line keeps failing).
    app.faults.add(503, times=4, path="/v1/invoiceitems", )
    failed = c.push("invoice", [invoice_doc(1)])[0]
    assert not failed.ok and "503" in (failed.error or "")
    (inv,) = app.invoices.values()
    assert inv["status"] == "draft" and inv["lines"]["data"] == []
    c.http.post("/v1/invoiceitems", data=form_pairs({
        "customer": inv["customer"], "invoice": inv["id"], "currency": "usd", "amount": 1900,
        "metadata": {"line_no": 1}}), headers={"Idempotency-Key": "by-hand"})
    app.prune_idempotency_keys()
    done = c.push("invoice", [invoice_doc(1)], recover=True)[0]
    assert done.ok and done.remote_id == inv["id"]
    assert inv["status"] == "open" and inv["total"] == 2325
    assert [li["amount"] for li in inv["lines"]["data"]] == [1900, 425]
    assert app.creates[("invoice", "INV-000001")] == 1


def test_long_keys_are_hashed_deterministically_and_form_encoding() -> None:
    long = "stripe:invoice:" + "X" * 300
    k = idempotency_key(long, ":line:1")
    assert len(k) <= 255 and k == idempotency_key(long, ":line:1") and k.endswith(":line:1")
    assert idempotency_key("short") == "short"
    assert form_pairs({"a": 1, "b": None, "c": True, "metadata": {"x": "y", "n": None},
                       "lines": [{"amount": 5}]}) == [
        ("a", "1"), ("c", "true"), ("metadata[x]", "y"), ("lines[0][amount]", "5")]
    with pytest.raises(TypeError, match="float"):
        form_pairs({"amount": 1.5})


def test_fake_refuses_json_bodies_and_over_long_keys(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    c = connector(server, app)
    with pytest.raises(ApiError, match="application/x-www-form-urlencoded"):
        c.http.post("/v1/refunds", json={"charge": "ch_0001"})
    with pytest.raises(ApiError, match="at most 255"):
        c.http.post("/v1/refunds", data=form_pairs({"charge": "ch_0001"}),
                    headers={"Idempotency-Key": "k" * 256})
    assert not app.refunds


def test_push_unknown_operation_and_auth_failure(stripe: tuple[StripeFake, FakeServer]) -> None:
    app, server = stripe
    with pytest.raises(ValueError, match="supports: invoice"):
        connector(server, app).push("fulfilment", [])
    with pytest.raises(AuthError):  # systemic: raised, not one failed result per doc
        connector(server, app, auth={"api_key": "sk_test_nope1234"}).push(
            "invoice", [invoice_doc(1), invoice_doc(2)])


def test_fake_lists_ending_before_created_bounds_and_payment_intents(
    stripe: tuple[StripeFake, FakeServer],
) -> None:
    app, server = stripe
    c = connector(server, app)
    newer = c.http.get("/v1/charges", params={"ending_before": "ch_0002", "limit": 2}).data
    assert [o["id"] for o in newer["data"]] == ["ch_0004", "ch_0003"] and newer["has_more"]
    window = c.http.get("/v1/charges", params={"created[gt]": BASE + 60,
                                               "created[lt]": BASE + 240}).data
    assert [o["id"] for o in window["data"]] == ["ch_0003", "ch_0002"]
    intents = c.http.get("/v1/payment_intents", params={"limit": 1,
                                                        "expand[]": "data.latest_charge"}).data
    (pi,) = intents["data"]
    assert (pi["id"], pi["amount_received"], pi["latest_charge"]["id"]) == (
        "pi_0006", 1006, "ch_0006")
    assert intents["url"] == "/v1/payment_intents" and intents["object"] == "list"
