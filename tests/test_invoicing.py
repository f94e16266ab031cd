"""Invoicing: one invoice per pushed order, deterministic numbers, idempotent; then invoiced."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import func, insert, select

from warehouse import outbox as ob
from warehouse import schema as s
from warehouse.invoicing import InvoicingPolicyError, complete_invoices, create_invoices

RUN = "00000000-0000-4000-8000-0000000000b1"
RUN2 = "00000000-0000-4000-8000-0000000000b2"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def add_order(conn, source, ext, order_no, status, total, currency="CNY", customer_id=None,
              customer_code=None):
    oid = conn.execute(insert(s.orders).values(
        source=source, external_id=ext, order_no=order_no, customer_id=customer_id,
        customer_code=customer_code, ordered_at=T0, currency=currency, total=D(total),
        status=status, content_hash="h", captured_at=T0, run_id=RUN)).inserted_primary_key[0]
    conn.execute(insert(s.order_lines).values(order_id=oid, line_no=1, sku="SKU-A", qty=D(1),
                                              unit_price=D(total), amount=D(total), run_id=RUN))
    return oid


@pytest.fixture
def orders(engine):
    with engine.begin() as conn:
        cust = conn.execute(insert(s.customers).values(
            code="C00001", region="east", source="crm", external_id="c1", content_hash="h",
            run_id=RUN)).inserted_primary_key[0]
        return {
            "shop": add_order(conn, "shopify", "E1", "#1001", "pushed", "39.90", "USD",
                              customer_id=cust),
            "crm": add_order(conn, "jiandaoyun", "J1", "JDY-000001", "pushed", "1200.00",
                             customer_code="C00077"),  # unresolved: the channel's code
            "allocated": add_order(conn, "shopify", "E2", "#1002", "allocated", "5.00", "USD"),
        }


def _invoices(engine):
    with engine.connect() as conn:
        return {r.order_id: r for r in conn.execute(select(s.invoices))}


def test_create_invoices_for_pushed_orders_once(engine, orders):
    assert create_invoices(engine, RUN, "on_order") == 2
    inv = _invoices(engine)
    assert set(inv) == {orders["shop"], orders["crm"]}
    shop, crm = inv[orders["shop"]], inv[orders["crm"]]
    assert (shop.invoice_no, shop.order_ref, shop.customer_code, shop.currency, shop.amount,
            shop.run_id) == ("INV-shopify-1001", "#1001", "C00001", "USD", D("39.90"), RUN)
    assert (crm.invoice_no, crm.order_ref, crm.customer_code, crm.currency, crm.amount) == (
        "INV-jiandaoyun-JDY-000001", "JDY-000001", "C00077", "CNY", D("1200.00"))
    assert shop.issued_at.tzinfo is not None

    assert create_invoices(engine, RUN2) == 0  # rerun: nothing new, nothing rewritten
    assert _invoices(engine) == inv


def test_an_unknown_policy_is_refused_naming_the_key(engine):
    with pytest.raises(InvoicingPolicyError,
                       match=r"^invoicing.policy: 'on_delivery' is not one of on_order, "
                             r"on_shipment$"):
        create_invoices(engine, RUN, "on_delivery")


def test_without_tax_rules_or_companies_an_invoice_is_its_lines_untaxed(engine, orders):
    """`{policy: on_order}` alone: the number, amount and key an invoice always had."""
    create_invoices(engine, RUN)
    shop = _invoices(engine)[orders["shop"]]
    assert (shop.company, shop.net_amount, shop.tax_amount, shop.policy, shop.prices_include_tax,
            shop.reason) == (None, D("39.90"), D("0.00"), "on_order", False,
                             "on_order (source shopify): all pushes confirmed")
    with engine.connect() as conn:
        lines = [(r.line_no, r.sku, r.net_amount, r.tax_rate, r.tax_amount, r.amount, r.tax_rule)
                 for r in conn.execute(select(s.invoice_lines)
                                       .where(s.invoice_lines.c.invoice_id == shop.id))]
    assert lines == [(1, "SKU-A", D("39.90"), D("0"), D("0.00"), D("39.90"), "default")]


def test_an_invoice_number_clash_is_reported_not_silent(engine, caplog):
    with engine.begin() as conn:
        add_order(conn, "shopify", "E7", "#7", "pushed", "1.00", "USD")
        add_order(conn, "shopify", "E8", "7", "pushed", "2.00", "USD")  # same number without '#'
    with caplog.at_level(logging.WARNING, logger="warehouse.invoicing"):
        assert create_invoices(engine, RUN) == 1
    assert "1 pushed order(s) not invoiced: invoice number already taken" in caplog.text


def test_complete_invoices_after_the_invoice_push_is_confirmed(engine, orders):
    create_invoices(engine, RUN)
    assert ob.enqueue(engine, RUN, "invoice", "kingdee") == 2
    assert complete_invoices(engine, RUN) == 0  # nothing confirmed yet
    rows = ob.claim(engine, "kingdee", "invoice", 10)
    ob.mark_sending(engine, [r["id"] for r in rows])
    sent = next(r for r in rows if r["business_key"] == "INV-shopify-1001")
    ob.mark_done(engine, [(sent["id"], "AR-1")])
    assert complete_invoices(engine, RUN2) == 1
    assert complete_invoices(engine, RUN2) == 0
    with engine.connect() as conn:
        status = dict(conn.execute(select(s.orders.c.id, s.orders.c.status)).all())
        events = conn.execute(select(func.count()).select_from(s.order_events)).scalar_one()
    assert status == {orders["shop"]: "invoiced", orders["crm"]: "pushed",
                      orders["allocated"]: "allocated"}
    assert events == 1
