"""Invoicing rules from orderhub.yaml, on seeded scenarios with exact outcomes (SQLite and PG):
per-channel policy, tax per line, numbering per company, credit notes pushed exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, insert, select, update

from connectors.base import RawRecord
from connectors.registry import build_connector
from flows.push import drain
from sandbox.kingdee import KingdeeFake
from sandbox.server import FakeServer
from warehouse import load, runs
from warehouse import outbox as ob
from warehouse import schema as s
from warehouse.engine import begin_write
from warehouse.invoicing import (
    InvoicingConfig,
    InvoicingConfigError,
    InvoicingError,
    _plain_no,
    apply_channel_returns,
    create_credit_notes,
    create_invoices,
    enqueue_credit_notes,
    enqueue_invoices,
    mark_returned,
    shipped_condition,
)
from warehouse.orders import transition
from warehouse.tax import TaxRules, line_tax, totals

RUN = "00000000-0000-4000-8000-0000000000c1"
RUN2 = "00000000-0000-4000-8000-0000000000c2"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
PUSHED = ("validated", "allocated", "pushed")

# the YAML of docs/invoicing.md, as yaml.safe_load gives it
YAML = {
    "policy": "on_order",
    "channels": {"shopify": "on_shipment"},
    "tax": {"default": "0.13", "by_currency": {"USD": "0"},
            "by_sku_prefix": {"SKU-9": "0.06", "SKU-99": "0.01"}, "prices_include_tax": False},
    "companies": {
        "cn": {"prefix": "CN-INV-", "credit_prefix": "CN-CRN-", "width": 6,
               "sources": ["jiandaoyun", "kingdee"]},
        "us": {"prefix": "US-INV-", "credit_prefix": "US-CRN-", "width": 4,
               "sources": ["shopify"]},
    },
}


def seed(conn: Connection, source: str, ext: str, lines: list[tuple[str, str, str]], *,
         order_no: str | None = None, currency: str = "CNY", path: tuple[str, ...] = PUSHED,
         ordered_at: datetime = T0, code: str | None = "C00001",
         fulfilment_status: str | None = None) -> int:
    """An order walked through ``path`` by real transitions (so order_events are real)."""
    total = sum((D(q) * D(p) for _, q, p in lines), D(0)).quantize(D("0.01"))
    oid = conn.execute(insert(s.orders).values(
        source=source, external_id=ext, order_no=order_no or ext, customer_code=code,
        ordered_at=ordered_at, currency=currency, total=total, status="captured",
        content_hash="h", captured_at=T0, run_id=RUN,
        fulfilment_status=fulfilment_status)).inserted_primary_key[0]
    conn.execute(insert(s.order_lines), [
        {"order_id": oid, "line_no": n, "sku": sku, "qty": D(q), "unit_price": D(p),
         "amount": (D(q) * D(p)).quantize(D("0.01")), "run_id": RUN}
        for n, (sku, q, p) in enumerate(lines, start=1)])
    for state in path:
        transition(conn, [oid], state, RUN, f"seeded {state}")
    return oid


def fulfilment_row(conn: Connection, oid: int, target: str, status: str = "done") -> None:
    conn.execute(insert(s.outbox).values(
        idempotency_key=f"{target}:fulfilment:{oid}", target=target, operation="fulfilment",
        business_key=str(oid), order_id=oid, payload={}, status=status, attempts=1,
        created_at=T0, run_id=RUN))


def invoice_rows(engine: Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        return {r.order_id: r for r in conn.execute(select(s.invoices))}


def sequences(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(s.document_sequences.c.series,
                                        s.document_sequences.c.last_value)).all())


# --- configuration --------------------------------------------------------------------------


def test_the_documented_yaml_reads_as_declared() -> None:
    cfg = InvoicingConfig.from_config(YAML)
    assert cfg.policy == "on_order" and cfg.policy_for("shopify") == "on_shipment"
    assert cfg.policy_for("kingdee") == "on_order"
    assert cfg.tax == TaxRules(D("0.13"), {"USD": D("0")}, {"SKU-9": D("0.06"),
                                                             "SKU-99": D("0.01")}, False)
    assert [(c.key, c.prefix, c.credit_prefix, c.width, c.sources) for c in cfg.companies] == [
        ("cn", "CN-INV-", "CN-CRN-", 6, ("jiandaoyun", "kingdee")),
        ("us", "US-INV-", "US-CRN-", 4, ("shopify",))]
    assert cfg.company_for("kingdee").key == "cn" and cfg.company_for("woo") is None
    assert InvoicingConfig.from_config({"policy": "on_order"}) == InvoicingConfig()
    assert InvoicingConfig.from_config(None) == InvoicingConfig()
    cfg.check_sources(["shopify", "jiandaoyun", "kingdee"])
    with pytest.raises(InvoicingConfigError,
                       match=r"^invoicing.companies.cn.sources: 'kingdee' is no such source$"):
        cfg.check_sources(["shopify", "jiandaoyun"])


@pytest.mark.parametrize("raw,message", [
    ({"policy": "on_delivery"},
     "invoicing.policy: 'on_delivery' is not one of on_order, on_shipment"),
    ({"channels": {"shopify": "later"}},
     "invoicing.channels.shopify: 'later' is not one of on_order, on_shipment"),
    ({"polcy": "on_order"}, "invoicing.polcy: unknown key (known: policy, channels, tax, "
                            "companies)"),
    ({"tax": {"default": 0.13}},
     'invoicing.tax.default: 0.13 must be a quoted decimal such as "0.13"'),
    ({"tax": {"default": "13"}},
     "invoicing.tax.default: '13' is not a rate in [0, 1) (13 % is \"0.13\")"),
    ({"tax": {"by_currency": {"usd": "0"}}},
     "invoicing.tax.by_currency.usd: not a 3-letter ISO currency code"),
    ({"tax": {"prices_include_tax": "yes"}},
     "invoicing.tax.prices_include_tax: expected true or false"),
    ({"companies": {"cn": {"prefix": "CN-", "sources": []}}},
     'invoicing.companies.cn.credit_prefix: required, a non-empty text such as "CN-CRN-"'),
    ({"companies": {"cn": {"prefix": "X-", "credit_prefix": "X-C", "sources": []}}},
     "invoicing.companies.cn.credit_prefix: 'X-C' clashes with invoicing.companies.cn.prefix "
     "'X-'"),
    ({"companies": {"a": {"prefix": "A-", "credit_prefix": "AC-", "sources": ["shop"]},
                    "b": {"prefix": "B-", "credit_prefix": "BC-", "sources": ["shop"]}}},
     "invoicing.companies.b.sources: 'shop' is already numbered by invoicing.companies.a"),
    ({"companies": {"cn": {"prefix": "A-", "credit_prefix": "C-", "width": 0, "sources": []}}},
     "invoicing.companies.cn.width: expected a whole number 1..18"),
])
def test_config_errors_are_one_line_and_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(InvoicingConfigError) as exc:
        InvoicingConfig.from_config(raw)
    assert str(exc.value) == message


# --- tax (pure) -------------------------------------------------------------------------------


def test_rate_precedence_sku_prefix_then_currency_then_default() -> None:
    rules = InvoicingConfig.from_config(YAML).tax
    assert rules.rate_for("SKU-991", "CNY") == (D("0.01"), "by_sku_prefix SKU-99")  # longest
    assert rules.rate_for("SKU-900", "USD") == (D("0.06"), "by_sku_prefix SKU-9")  # before USD
    assert rules.rate_for("SKU-1", "USD") == (D("0"), "by_currency USD")
    assert rules.rate_for("SKU-1", "CNY") == (D("0.13"), "default")
    assert rules.rate_for(None, "CNY") == (D("0.13"), "default")


def test_each_line_is_rounded_on_its_own_and_totals_add_up() -> None:
    net_rules = TaxRules(D("0.13"), {}, {"SKU-9": D("0.06")}, prices_include_tax=False)
    a = line_tax(net_rules, "SKU-1", "CNY", D(3), D("33.33"))
    b = line_tax(net_rules, "SKU-900", "CNY", D(1), D("10.05"))
    assert (a.net, a.tax, a.gross) == (D("99.99"), D("13.00"), D("112.99"))  # 12.9987 -> 13.00
    assert (b.net, b.tax, b.gross) == (D("10.05"), D("0.60"), D("10.65"))  # 0.603 -> 0.60
    assert totals([a, b]) == (D("110.04"), D("13.60"), D("123.64"))
    gross_rules = TaxRules(D("0.13"), {}, {}, prices_include_tax=True)
    c = line_tax(gross_rules, "SKU-1", "CNY", D(3), D("33.33"))
    assert (c.net, c.tax, c.gross) == (D("88.49"), D("11.50"), D("99.99"))  # 99.99 / 1.13
    yen = line_tax(TaxRules(D("0.1")), "SKU-1", "JPY", D(3), D("333.5"))
    assert (yen.net, yen.tax, yen.gross) == (D("1001"), D("100"), D("1101"))  # 0 decimals
    half = line_tax(TaxRules(D("0.06")), "SKU-1", "USD", D(1), D("4.25"))
    assert half.tax == D("0.26")  # 0.255 rounds half up


# --- policies ---------------------------------------------------------------------------------


def test_on_shipment_waits_for_the_pulled_back_status_then_invoices_once(engine: Engine) -> None:
    cfg = InvoicingConfig.from_config(YAML)
    with engine.begin() as conn:
        shop = seed(conn, "shopify", "5001", [("SKU-1", "2", "9.50")], order_no="#1001",
                    currency="USD", fulfilment_status="unfulfilled")
        crm = seed(conn, "jiandaoyun", "J1", [("SKU-1", "1", "100.00")])
    assert create_invoices(engine, RUN, cfg) == 1  # on_order: the CRM order at once
    assert set(invoice_rows(engine)) == {crm}
    assert create_invoices(engine, RUN, cfg) == 0  # shopify still waits

    # The channel's status comes back with the next pull of the (already pushed) order.
    payload = {"id": 5001, "name": "#1001"}
    record = {"external_id": "5001", "order_no": "#1001", "customer_code": "C00001",
              "customer_email": None, "ordered_at": T0, "updated_at": T0 + timedelta(hours=2),
              "currency": "USD", "total": D("19.00"), "ship_region": None,
              "lines": [{"line_no": 1, "sku": "SKU-1", "qty": D(2), "unit_price": D("9.50")}],
              "fulfilment_status": "fulfilled"}
    raw = RawRecord("5001", T0 + timedelta(hours=2), payload)
    counts = load.land_batch(engine, RUN2, "shopify", "orders", "orders", [raw], [(raw, record)],
                             [], None)
    assert counts.amended == 1  # the order was acted on; only its fulfilment status is taken
    assert create_invoices(engine, RUN2, cfg) == 1
    assert create_invoices(engine, RUN2, cfg) == 0
    inv = invoice_rows(engine)[shop]
    assert (inv.invoice_no, inv.policy, inv.reason, inv.amount) == (
        "US-INV-0001", "on_shipment",
        "on_shipment (source shopify): the channel reports fulfilled", D("19.00"))
    assert invoice_rows(engine)[crm].reason == "on_order (source jiandaoyun): all pushes confirmed"


def test_a_status_change_alone_is_stored_without_touching_the_order(engine: Engine) -> None:
    def land(status: str, run: str) -> load.LoadCounts:
        rec = {"external_id": "7", "order_no": "#7", "customer_code": None,
               "customer_email": "a@x.test", "ordered_at": T0, "updated_at": T0,
               "currency": "USD", "total": D("5.00"), "ship_region": "east",
               "lines": [{"line_no": 1, "sku": "SKU-1", "qty": D(1), "unit_price": D("5.00")}],
               "fulfilment_status": status}
        raw = RawRecord("7", T0, {"id": 7, "fulfillment_status": status})
        return load.land_batch(engine, run, "shopify", "orders", "orders", [raw], [(raw, rec)],
                               [], None)

    def row() -> Any:
        with engine.connect() as conn:
            return conn.execute(select(s.orders)).one()

    assert land("unfulfilled", RUN).new == 1
    first = row()
    assert land("partial", RUN2).unchanged == 1  # not content: no amendment, no re-gate
    second = row()
    assert (second.fulfilment_status, second.run_id, second.content_hash, second.status) == (
        "partial", RUN2, first.content_hash, "captured")
    land("partial", RUN)  # a rerun writes nothing, not even the run id
    assert row().run_id == RUN2


@pytest.mark.parametrize("channel,push,path,shipped", [
    ("fulfilled", None, PUSHED, True),          # the channel says so
    ("restocked", "done", PUSHED, False),       # the channel's reversal beats our push
    ("unfulfilled", "done", PUSHED, True),      # our confirmed push; the channel only lags
    ("partial", None, PUSHED, False),           # partly shipped is not shipped
    ("unfulfilled", None, PUSHED, False),       # the channel reports and has not shipped
    (None, None, PUSHED, True),                 # reports nothing, takes no fulfilment: the ERP
    (None, "failed", PUSHED, False),            # our push exists and is not confirmed
    (None, None, ("validated", "allocated"), False),  # not handed over yet
])
def test_shipment_precedence(engine: Engine, channel: str | None, push: str | None,
                             path: tuple[str, ...], shipped: bool) -> None:
    with engine.begin() as conn:
        oid = seed(conn, "shopify", "S1", [("SKU-1", "1", "1.00")], path=path,
                   fulfilment_status=channel)
        if push:
            fulfilment_row(conn, oid, "shopify", push)
        found = conn.scalars(select(s.orders.c.id).where(shipped_condition())).all()
    assert found == ([oid] if shipped else [])


# --- tax and totals stored per line ------------------------------------------------------------


@pytest.mark.parametrize("include", [False, True])
def test_tax_per_line_and_totals_are_stored(engine: Engine, include: bool) -> None:
    raw = {**YAML, "tax": {**YAML["tax"], "prices_include_tax": include}, "channels": {}}
    cfg = InvoicingConfig.from_config(raw)
    with engine.begin() as conn:
        cn = seed(conn, "jiandaoyun", "J1", [("SKU-1", "3", "33.33"), ("SKU-900", "1", "10.05"),
                                             ("SKU-991", "7", "1.15")])
        us = seed(conn, "shopify", "S1", [("SKU-1", "2", "9.50"), ("SKU-900", "1", "4.25")],
                  currency="USD")
    assert create_invoices(engine, RUN, cfg) == 2
    with engine.connect() as conn:
        lines = [(r.invoice_id, r.line_no, r.net_amount, r.tax_rate, r.tax_amount, r.amount,
                  r.tax_rule) for r in conn.execute(
                      select(s.invoice_lines).order_by(s.invoice_lines.c.id))]
    inv = invoice_rows(engine)
    c, u = inv[cn].id, inv[us].id
    if not include:
        assert lines == [
            (c, 1, D("99.99"), D("0.13"), D("13.00"), D("112.99"), "default"),
            (c, 2, D("10.05"), D("0.06"), D("0.60"), D("10.65"), "by_sku_prefix SKU-9"),
            (c, 3, D("8.05"), D("0.01"), D("0.08"), D("8.13"), "by_sku_prefix SKU-99"),
            (u, 1, D("19.00"), D("0"), D("0.00"), D("19.00"), "by_currency USD"),
            (u, 2, D("4.25"), D("0.06"), D("0.26"), D("4.51"), "by_sku_prefix SKU-9"),
        ]
        totals_cn, totals_us = (D("118.09"), D("13.68"), D("131.77")), (D("23.25"), D("0.26"),
                                                                         D("23.51"))
    else:
        assert lines == [
            (c, 1, D("88.49"), D("0.13"), D("11.50"), D("99.99"), "default"),
            (c, 2, D("9.48"), D("0.06"), D("0.57"), D("10.05"), "by_sku_prefix SKU-9"),
            (c, 3, D("7.97"), D("0.01"), D("0.08"), D("8.05"), "by_sku_prefix SKU-99"),
            (u, 1, D("19.00"), D("0"), D("0.00"), D("19.00"), "by_currency USD"),
            (u, 2, D("4.01"), D("0.06"), D("0.24"), D("4.25"), "by_sku_prefix SKU-9"),
        ]
        # prices that include tax: the invoice total is the order total the customer saw
        totals_cn, totals_us = (D("105.94"), D("12.15"), D("118.09")), (D("23.01"), D("0.24"),
                                                                        D("23.25"))
    assert (inv[cn].net_amount, inv[cn].tax_amount, inv[cn].amount) == totals_cn
    assert (inv[us].net_amount, inv[us].tax_amount, inv[us].amount) == totals_us
    assert inv[cn].prices_include_tax is include


# --- numbering per company ----------------------------------------------------------------------


def test_numbering_is_gap_free_per_company_in_order_and_stable(engine: Engine) -> None:
    cfg = InvoicingConfig.from_config({**YAML, "channels": {}})
    h = timedelta(hours=1)
    with engine.begin() as conn:
        j1 = seed(conn, "jiandaoyun", "J1", [("SKU-1", "1", "1.00")], ordered_at=T0 + 3 * h)
        s1 = seed(conn, "shopify", "S1", [("SKU-1", "1", "1.00")], ordered_at=T0 + h,
                  currency="USD")
        k1 = seed(conn, "kingdee", "K1", [("SKU-1", "1", "1.00")], ordered_at=T0 + h)
        j2 = seed(conn, "jiandaoyun", "J2", [("SKU-1", "1", "1.00")], ordered_at=T0 + h)
        s2 = seed(conn, "shopify", "S2", [("SKU-1", "1", "1.00")], ordered_at=T0, currency="USD")
        j3 = seed(conn, "jiandaoyun", "J3", [("SKU-1", "1", "1.00")], ordered_at=T0,
                  path=("validated", "allocated"))
        w1 = seed(conn, "woo", "#W-1", [("SKU-1", "1", "1.00")], currency="USD")
    assert create_invoices(engine, RUN, cfg) == 6
    numbers = {oid: r.invoice_no for oid, r in invoice_rows(engine).items()}
    # (ordered_at, id): K1 and J2 share a time, K1 was captured first
    assert numbers == {k1: "CN-INV-000001", j2: "CN-INV-000002", j1: "CN-INV-000003",
                       s2: "US-INV-0001", s1: "US-INV-0002",
                       w1: "INV-woo-W-1"}  # a source no company lists: the deterministic one
    assert {oid: r.company for oid, r in invoice_rows(engine).items()} == {
        k1: "cn", j2: "cn", j1: "cn", s2: "us", s1: "us", w1: None}
    assert sequences(engine) == {"invoice:cn": 3, "invoice:us": 2}

    before = invoice_rows(engine)
    assert create_invoices(engine, RUN2, cfg) == 0  # a rerun assigns nothing
    assert invoice_rows(engine) == before and sequences(engine) == {"invoice:cn": 3,
                                                                    "invoice:us": 2}
    with engine.connect() as conn:
        assert set(conn.scalars(select(s.document_sequences.c.run_id))) == {RUN}

    with engine.begin() as conn:
        transition(conn, [j3], "pushed", RUN2, "seeded pushed")
    assert create_invoices(engine, RUN2, cfg) == 1
    assert invoice_rows(engine)[j3].invoice_no == "CN-INV-000004"  # J3 is oldest, but later
    assert sequences(engine) == {"invoice:cn": 4, "invoice:us": 2}


def test_a_number_that_cannot_land_fails_the_run_and_consumes_nothing(engine: Engine) -> None:
    cfg = InvoicingConfig.from_config({**YAML, "channels": {}})
    with engine.begin() as conn:
        old = seed(conn, "kingdee", "K0", [("SKU-1", "1", "1.00")], path=())
        conn.execute(insert(s.invoices).values(  # someone issued CN-INV-000001 by hand
            invoice_no="CN-INV-000001", order_id=old, currency="CNY", amount=D(1),
            issued_at=T0, run_id=RUN))
        seed(conn, "kingdee", "K1", [("SKU-1", "1", "1.00")])
    with pytest.raises(InvoicingError, match=r"^invoicing: CN-INV-000001 could not be inserted"):
        create_invoices(engine, RUN, cfg)
    assert set(invoice_rows(engine)) == {old}
    assert sequences(engine) == {}  # the transaction, series creation included, rolled back


def test_the_invoice_outbox_key_is_the_order_not_the_number(engine: Engine) -> None:
    cfg = InvoicingConfig.from_config({**YAML, "channels": {}})
    with engine.begin() as conn:
        oid = seed(conn, "shopify", "5001", [("SKU-900", "1", "4.25")], order_no="#1001",
                   currency="USD")
        legacy = seed(conn, "woo", "W1", [("SKU-1", "1", "1.00")], order_no="#W1", currency="USD")
    create_invoices(engine, RUN, cfg)
    assert enqueue_invoices(engine, RUN, "kingdee") == 2
    assert enqueue_invoices(engine, RUN, "kingdee") == 0
    with engine.connect() as conn:
        rows = {r.order_id: r for r in conn.execute(select(s.outbox))}
        sql_no = dict(conn.execute(select(s.orders.c.id, ob.order_doc_no("INV"))).all())
    assert rows[oid].idempotency_key == "kingdee:invoice:INV-shopify-1001"
    assert rows[oid].payload == {
        "key": "kingdee:invoice:INV-shopify-1001", "bill_no": "US-INV-0001",
        "invoice_no": "US-INV-0001", "order_ref": "#1001", "customer_code": "C00001",
        "currency": "USD", "issued_at": rows[oid].payload["issued_at"], "amount": "4.51",
        "net_amount": "4.25", "tax_amount": "0.26", "company": "us",
        "prices_include_tax": False,
        "lines": [{"sku": "SKU-900", "qty": "1", "unit_price": "4.2500", "amount": "4.51",
                   "net_amount": "4.25", "tax_rate": "0.06", "tax_amount": "0.26"}]}
    # the key outbox.enqueue spells for a deterministically numbered invoice: the same one
    assert rows[legacy].idempotency_key == ob.idempotency_key("kingdee", "invoice", "INV-woo-W1")
    assert {k: "INV-" + _plain_no(src, no, ext) for k, src, no, ext in [
        (oid, "shopify", "#1001", "5001"), (legacy, "woo", "#W1", "W1")]} == {
        oid: sql_no[oid], legacy: sql_no[legacy]}


def _queued(engine: Engine) -> dict[str, dict[str, Any]]:
    """The invoice outbox rows by key, without what only says when a row was written."""
    with engine.connect() as conn:
        return {r.idempotency_key: {k: v for k, v in r._mapping.items()
                                    if k not in ("id", "created_at")}
                for r in conn.execute(select(s.outbox).where(s.outbox.c.operation == "invoice"))}


@pytest.mark.parametrize("include", [False, True])
def test_create_invoices_queues_what_enqueue_invoices_would(engine: Engine, include: bool) -> None:
    """With the target, each invoice's outbox row is written with it from the figures in hand:
    the same key and document enqueue_invoices builds from the stored invoice."""
    tax = {**YAML["tax"], "by_currency": {"USD": "0", "KWD": "0.05"},
           "prices_include_tax": include}
    cfg = InvoicingConfig.from_config({**YAML, "channels": {}, "tax": tax})
    with engine.begin() as conn:
        seed(conn, "shopify", "5001", [("SKU-900", "1", "4.25"), ("SKU-1", "3", "0.10")],
             order_no="#1001", currency="USD")
        seed(conn, "kingdee", "K1", [("SKU-1", "3", "33.33"), ("SKU-991", "2.5", "1.15"),
                                     ("SKU-900", "1", "10.05")])
        seed(conn, "woo", "W1", [("SKU-1", "3", "333.5")], order_no="#W-1", currency="JPY")
        seed(conn, "woo", "W2", [("SKU-1", "7", "1.2345")], currency="KWD")  # 3 decimals
        seed(conn, "woo", "W3", [("SKU-1", "0", "5.00")], currency="USD")  # a zero line
    assert create_invoices(engine, RUN, cfg, "kingdee") == 5
    assert enqueue_invoices(engine, RUN, "kingdee") == 0  # all queued already
    made = _queued(engine)
    assert set(made) == {"kingdee:invoice:INV-shopify-1001", "kingdee:invoice:INV-kingdee-K1",
                         "kingdee:invoice:INV-woo-W-1", "kingdee:invoice:INV-woo-W2",
                         "kingdee:invoice:INV-woo-W3"}
    with engine.begin() as conn:  # what enqueue_invoices builds from the stored invoices
        conn.execute(s.outbox.delete())
        conn.execute(s.stage_marks.delete())
    assert enqueue_invoices(engine, RUN, "kingdee") == 5
    assert _queued(engine) == made
    # KWD: taxed to the cent (what the MONEY columns hold), spelled in its own 3 decimals
    kwd = made["kingdee:invoice:INV-woo-W2"]["payload"]
    assert (kwd["amount"], kwd["net_amount"], kwd["tax_amount"]) == (
        ("8.640", "8.230", "0.410") if include else ("9.070", "8.640", "0.430"))
    assert kwd["lines"] == [{"sku": "SKU-1", "qty": "7", "unit_price": "1.2345",
                             "amount": kwd["amount"], "net_amount": kwd["net_amount"],
                             "tax_rate": "0.05", "tax_amount": kwd["tax_amount"]}]
    zero = made["kingdee:invoice:INV-woo-W3"]["payload"]["lines"]
    assert zero == [{"sku": "SKU-1", "qty": "0", "unit_price": "5.0000", "amount": "0.00",
                     "net_amount": "0.00", "tax_rate": "0", "tax_amount": "0.00"}]


def test_create_invoices_queues_nothing_twice_for_one_key(engine: Engine) -> None:
    """Two orders whose numbers spell one key (once '#' is dropped): the first invoice keeps
    the key, as enqueue_invoices would; an invoice already queued by key is not queued again."""
    cfg = InvoicingConfig.from_config({**YAML, "channels": {}})
    h = timedelta(hours=1)
    with engine.begin() as conn:
        first = seed(conn, "shopify", "S1", [("SKU-1", "1", "1.00")], order_no="#7",
                     currency="USD")
        seed(conn, "shopify", "S2", [("SKU-1", "1", "2.00")], order_no="7", currency="USD",
             ordered_at=T0 + h)
    assert create_invoices(engine, RUN, cfg, "kingdee") == 2  # numbered: both invoiced
    made = _queued(engine)
    assert list(made) == ["kingdee:invoice:INV-shopify-7"]
    assert made["kingdee:invoice:INV-shopify-7"]["order_id"] == first
    assert enqueue_invoices(engine, RUN, "kingdee") == 0


def test_enqueue_invoices_reads_again_only_after_invoices_or_orders_were_written(
        engine: Engine) -> None:
    cfg = InvoicingConfig.from_config({**YAML, "channels": {}})
    with engine.begin() as conn:
        o1 = seed(conn, "kingdee", "K1", [("SKU-1", "1", "1.00")])
    create_invoices(engine, RUN, cfg)  # no target: queued by enqueue_invoices

    def passed_in() -> str:  # the run whose enqueue_invoices pass is the last one
        with engine.connect() as conn:
            return conn.scalar(select(s.stage_marks.c.run_id).where(
                s.stage_marks.c.stage == "enqueue_invoices:kingdee"))

    first = runs.start_run(engine, "invoice")
    assert enqueue_invoices(engine, first, "kingdee") == 1
    runs.finish_run(engine, first, "completed", {})
    again = runs.start_run(engine, "invoice")
    assert enqueue_invoices(engine, again, "kingdee") == 0
    assert passed_in() == first  # nothing written since: no pass at all
    # a new invoice, even from a writer no run records: the newest invoice tells
    with engine.begin() as conn:
        seed(conn, "kingdee", "K2", [("SKU-1", "1", "2.00")])
    create_invoices(engine, RUN2, cfg)
    assert enqueue_invoices(engine, again, "kingdee") == 1
    assert passed_in() == again
    runs.finish_run(engine, again, "completed", {})
    # an order written by a run since the last pass (its number spells the key): read again
    ingest = runs.start_run(engine, "ingest")
    with engine.begin() as conn:
        conn.execute(update(s.orders).where(s.orders.c.id == o1).values(run_id=ingest))
    runs.finish_run(engine, ingest, "completed", {})
    third = runs.start_run(engine, "invoice")
    assert enqueue_invoices(engine, third, "kingdee") == 0
    assert passed_in() == third
    # another target has its own pass
    assert enqueue_invoices(engine, third, "stripe") == 2


# --- credit notes -------------------------------------------------------------------------------


@pytest.fixture
def kingdee():
    app = KingdeeFake(None)
    with FakeServer(app) as server:
        cfg = {"system": "kingdee", "base_url": server.url + "/k3cloud",
               "auth": app.credentials(), "options": {}, "rate_limit": 0}
        yield app, SimpleNamespace(connector_config=lambda name: cfg), cfg


def _expire_leases(engine: Engine) -> None:
    with begin_write(engine) as conn:
        conn.execute(update(s.outbox).values(claimed_at=datetime.now(UTC) - timedelta(hours=1)))


def test_credit_notes_for_a_cancellation_and_returns_pushed_exactly_once(engine: Engine,
                                                                         kingdee) -> None:
    app, settings, kd_cfg = kingdee
    cfg = InvoicingConfig.from_config({**YAML, "channels": {}})
    h = timedelta(hours=1)
    with engine.begin() as conn:
        s2 = seed(conn, "shopify", "S2", [("SKU-900", "1", "4.25")], currency="USD")
        k1 = seed(conn, "kingdee", "K1", [("SKU-1", "3", "33.33")], ordered_at=T0 + h)
        j2 = seed(conn, "jiandaoyun", "J2", [("SKU-1", "1", "10.00")], ordered_at=T0 + h)
        keep = seed(conn, "jiandaoyun", "J3", [("SKU-1", "1", "5.00")], ordered_at=T0 + 2 * h)
    assert create_invoices(engine, RUN, cfg) == 4
    assert enqueue_invoices(engine, RUN, "kingdee") == 4
    with engine.begin() as conn:
        transition(conn, [k1, j2, keep], "invoiced", RUN, "invoice sent")
        transition(conn, [s2], "cancelled", RUN, "customer cancelled before shipment")
        conn.execute(update(s.orders).where(s.orders.c.id == k1)
                     .values(fulfilment_status="restocked"))
    assert mark_returned(engine, RUN, [j2], "goods returned: RMA-7") == 1
    assert apply_channel_returns(engine, RUN) == 1  # K1: the channel reports restocked

    assert create_credit_notes(engine, RUN, cfg) == 3
    assert create_credit_notes(engine, RUN2, cfg) == 0
    with engine.connect() as conn:
        notes = {r.order_id: r for r in conn.execute(select(s.credit_notes))}
    inv = invoice_rows(engine)
    got = {oid: (n.credit_note_no, n.invoice_id, n.net_amount, n.tax_amount, n.amount, n.cause,
                 n.reason) for oid, n in notes.items()}
    assert got == {
        s2: ("US-CRN-0001", inv[s2].id, D("-4.25"), D("-0.26"), D("-4.51"), "cancelled",
             "order cancelled after invoice US-INV-0001: customer cancelled before shipment"),
        k1: ("CN-CRN-000001", inv[k1].id, D("-99.99"), D("-13.00"), D("-112.99"), "returned",
             "order returned after invoice CN-INV-000001: the channel reports the fulfilment "
             "restocked"),
        j2: ("CN-CRN-000002", inv[j2].id, D("-10.00"), D("-1.30"), D("-11.30"), "returned",
             "order returned after invoice CN-INV-000002: goods returned: RMA-7"),
    }
    assert sequences(engine) == {"invoice:cn": 3, "invoice:us": 1, "credit_note:cn": 2,
                                 "credit_note:us": 1}

    # A red receivable must find its invoice: nothing is queued before the invoices are sent.
    assert enqueue_credit_notes(engine, RUN, "kingdee") == 0
    assert drain(settings, engine, RUN, "kingdee", "invoice")["done"] == 4
    assert enqueue_credit_notes(engine, RUN, "kingdee") == 3
    assert enqueue_credit_notes(engine, RUN, "kingdee") == 0

    # Crash between send and mark: one credit note reached Kingdee, its row stays `sending`.
    rows = ob.claim(engine, "kingdee", "credit_note", 10)
    ob.mark_sending(engine, [r["id"] for r in rows])
    connector = build_connector("kingdee", kd_cfg)
    first = next(r for r in rows if r["order_id"] == j2)
    assert [r.ok for r in connector.push("credit_note", [first["payload"]])] == [True]
    assert drain(settings, engine, RUN, "kingdee", "credit_note")["done"] == 0  # lease held
    _expire_leases(engine)
    result = drain(settings, engine, RUN2, "kingdee", "credit_note")
    assert (result["done"], result["recovered"]) == (3, 3)
    assert drain(settings, engine, RUN2, "kingdee", "credit_note")["done"] == 0

    assert dict(app.creates) == {
        ("invoice", "US-INV-0001"): 1, ("invoice", "CN-INV-000001"): 1,
        ("invoice", "CN-INV-000002"): 1, ("invoice", "CN-INV-000003"): 1,
        ("credit_note", "US-CRN-0001"): 1, ("credit_note", "CN-CRN-000001"): 1,
        ("credit_note", "CN-CRN-000002"): 1}
    red = app.documents[("AR_receivable", "CN-CRN-000002")].model
    assert (red["FALLAMOUNTFOR"], red["F_SrcInvoiceNo"], red["F_InvoiceNo"]) == (
        D("-11.30"), "CN-INV-000002", "CN-CRN-000002")
    assert red["FEntityDetail"] == [{"FMATERIALID": {"FNumber": "SKU-1"}, "FPriceQty": D("-1"),
                                     "FPrice": D("10.0000"), "FEntryTaxRate": D("13")}]
    with engine.connect() as conn:
        keys = set(conn.scalars(select(s.outbox.c.idempotency_key)
                                .where(s.outbox.c.operation == "credit_note")))
    assert keys == {"kingdee:credit_note:CRN-shopify-S2", "kingdee:credit_note:CRN-kingdee-K1",
                    "kingdee:credit_note:CRN-jiandaoyun-J2"}
