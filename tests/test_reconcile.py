"""Reconciliation: exact statuses on a seeded book, reruns change nothing, and properties over
random books (applied + unapplied = received; arrival order does not matter)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from warehouse import schema as s
from warehouse.engine import make_engine
from warehouse.reconcile import invoice_status, reconcile
from warehouse.views import create_views

RUN = "00000000-0000-4000-8000-0000000000c1"
RUN2 = "00000000-0000-4000-8000-0000000000c2"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
TOL = D("0.01")


# --- the pure status rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    "invoiced, applied, status",
    [
        ("100.00", "100.00", "paid"),
        ("100.00", "99.99", "paid"),  # within tolerance
        ("100.00", "100.01", "paid"),
        ("100.00", "99.98", "part_paid"),
        ("100.00", "0.01", "part_paid"),
        ("100.00", "100.02", "over_paid"),
        ("100.00", "0", "open"),
        ("0.00", "0", "paid"),  # nothing owed
    ],
)
def test_invoice_status(invoiced, applied, status):
    assert invoice_status(D(invoiced), D(applied), TOL) == status


money = st.decimals(min_value=0, max_value=10**6, places=2)


@given(money, money, st.sampled_from([D("0"), D("0.01"), D("1")]))
def test_invoice_status_matches_its_definition(invoiced, applied, tol):
    status = invoice_status(invoiced, applied, tol)
    assert status == ("paid" if abs(invoiced - applied) <= tol
                      else "over_paid" if applied > invoiced + tol
                      else "part_paid" if 0 < applied < invoiced - tol
                      else "open")


# --- a seeded book ------------------------------------------------------------------------------


def add_invoice(conn, no, order_ref, amount, currency="CNY", source="a"):
    oid = conn.execute(insert(s.orders).values(
        source=source, external_id=f"{source}-{no}", order_no=order_ref, currency=currency,
        total=D(amount), status="invoiced", content_hash="h", captured_at=T0,
        run_id=RUN)).inserted_primary_key[0]
    conn.execute(insert(s.invoices).values(
        invoice_no=no, order_id=oid, order_ref=order_ref, customer_code="C1", currency=currency,
        amount=D(amount), issued_at=T0, run_id=RUN))
    return oid


def add_payments(conn, payments):
    conn.execute(insert(s.payments), [
        {"source": "erp", "external_id": ext, "reference": ref, "customer_code": "C1",
         "currency": cur, "amount": D(amount), "received_at": T0, "content_hash": "h",
         "run_id": RUN}
        for ext, ref, cur, amount in payments])


@pytest.fixture
def book(engine):
    with engine.begin() as conn:
        orders = {no: add_invoice(conn, no, ref, amount, source=src) for no, ref, amount, src in [
            ("INV-a-1", "#1", "100.00", "a"),
            ("INV-a-2", "#2", "200.00", "a"),
            ("INV-a-3", "#3", "30.00", "a"),
            ("INV-a-4", "#4", "40.00", "a"),
            ("INV-a-5", "#5", "10.00", "a"),
            ("INV-a-9", "#9", "5.00", "a"),
            ("INV-b-9", "#9", "5.00", "b"),  # same order number in another channel
        ]}
        add_payments(conn, [
            ("P1", "#1", "CNY", "100.00"),  # by order number: paid
            ("P2", "INV-a-2", "CNY", "50.00"),  # by invoice number: part paid
            ("P3", "#3", "CNY", "20.00"),  # two payments, 35 for 30: over paid
            ("P4", "INV-a-3", "CNY", "15.00"),
            ("P5", "#5", "CNY", "9.99"),  # a cent short: paid within tolerance
            ("P6", "#1", "USD", "100.00"),  # wrong currency: unmatched
            ("P7", "NOPE", "CNY", "12.34"),  # unknown reference: unmatched
            ("P8", None, "CNY", "1.00"),  # no reference: unmatched
            ("P9", "#9", "CNY", "5.00"),  # ambiguous order number: unmatched, not guessed
        ])
    return orders


def _snapshot(engine):
    with engine.connect() as conn:
        return (
            conn.execute(select(s.payment_matches).order_by(s.payment_matches.c.id)).all(),
            conn.execute(select(s.reconciliation).order_by(s.reconciliation.c.invoice_id)).all(),
            conn.execute(select(s.orders.c.id, s.orders.c.status, s.orders.c.run_id)
                         .order_by(s.orders.c.id)).all(),
        )


def test_reconcile_exact_then_rerun_changes_nothing(engine, book):
    result = reconcile(engine, RUN, TOL)
    assert result == {"paid": 2, "part_paid": 1, "over_paid": 1, "open": 3, "matched": 5,
                      "changed": 7, "orders_paid": 3, "unmatched_payments": 4,
                      "unmatched_amount": {"CNY": D("18.34"), "USD": D("100.00")}}
    with engine.connect() as conn:
        recon = {r.invoice_no: (r.invoiced, r.applied, r.outstanding, r.status, r.run_id)
                 for r in conn.execute(select(s.reconciliation))}
        matches = {(p, i, a, rule) for p, i, a, rule in conn.execute(
            select(s.payments.c.external_id, s.invoices.c.invoice_no, s.payment_matches.c.amount,
                   s.payment_matches.c.rule)
            .join(s.payments, s.payments.c.id == s.payment_matches.c.payment_id)
            .join(s.invoices, s.invoices.c.id == s.payment_matches.c.invoice_id))}
        status = dict(conn.execute(select(s.orders.c.id, s.orders.c.status)).all())
    assert recon == {
        "INV-a-1": (D("100.00"), D("100.00"), D("0.00"), "paid", RUN),
        "INV-a-2": (D("200.00"), D("50.00"), D("150.00"), "part_paid", RUN),
        "INV-a-3": (D("30.00"), D("35.00"), D("-5.00"), "over_paid", RUN),
        "INV-a-4": (D("40.00"), D("0.00"), D("40.00"), "open", RUN),
        "INV-a-5": (D("10.00"), D("9.99"), D("0.01"), "paid", RUN),
        "INV-a-9": (D("5.00"), D("0.00"), D("5.00"), "open", RUN),
        "INV-b-9": (D("5.00"), D("0.00"), D("5.00"), "open", RUN),
    }
    assert matches == {("P1", "INV-a-1", D("100.00"), "by_reference"),
                       ("P2", "INV-a-2", D("50.00"), "by_reference"),
                       ("P3", "INV-a-3", D("20.00"), "by_reference"),
                       ("P4", "INV-a-3", D("15.00"), "by_reference"),
                       ("P5", "INV-a-5", D("9.99"), "by_reference")}
    # paid in full, or more: the order is settled (the surplus is finance's to refund)
    assert {no for no, oid in book.items() if status[oid] == "paid"} == {"INV-a-1", "INV-a-3",
                                                                          "INV-a-5"}

    before = _snapshot(engine)
    again = reconcile(engine, RUN2, TOL)
    assert (again["matched"], again["changed"], again["orders_paid"]) == (0, 0, 0)
    assert _snapshot(engine) == before  # not even a run id moved


def test_a_late_payment_changes_only_its_invoice(engine, book):
    reconcile(engine, RUN, TOL)
    with engine.begin() as conn:
        add_payments(conn, [("P10", "INV-a-2", "CNY", "150.00")])
    result = reconcile(engine, RUN2, TOL)
    assert (result["matched"], result["changed"], result["orders_paid"]) == (1, 1, 1)
    assert (result["paid"], result["part_paid"]) == (3, 0)
    with engine.connect() as conn:
        runs = dict(conn.execute(select(s.reconciliation.c.invoice_no,
                                        s.reconciliation.c.run_id)).all())
    assert runs.pop("INV-a-2") == RUN2
    assert set(runs.values()) == {RUN}


def test_finance_views(engine, book):
    assert create_views(engine) == create_views(engine)  # idempotent
    reconcile(engine, RUN, TOL)
    with engine.connect() as conn:
        status = dict(conn.exec_driver_sql(
            "SELECT invoice_no, status FROM v_invoice_status").all())
        unmatched = sorted(conn.exec_driver_sql(
            "SELECT external_id FROM v_unmatched_payments").scalars())
        open_ = dict(conn.exec_driver_sql(
            "SELECT invoice_no, outstanding FROM v_open_receivables").all())
    assert status["INV-a-3"] == "over_paid" and len(status) == 7
    assert unmatched == ["P6", "P7", "P8", "P9"]
    assert {k: D(str(v)) for k, v in open_.items()} == {
        "INV-a-2": D("150"), "INV-a-4": D("40"), "INV-a-9": D("5"), "INV-b-9": D("5")}


# --- properties over random books (a fresh in-memory SQLite per example) ----------------------

invoice_st = st.tuples(st.sampled_from(["#1", "#2", "#3"]), money, st.sampled_from(["CNY", "USD"]))


@st.composite
def books(draw):
    invoices = draw(st.lists(invoice_st, min_size=1, max_size=5))
    refs = [f"INV-{i}" for i in range(len(invoices))] + ["#1", "#2", "#3", "NOPE", None]
    payments = draw(st.lists(
        st.tuples(st.sampled_from(refs), st.sampled_from(["CNY", "USD"]),
                  st.decimals(min_value=D("0.01"), max_value=1000, places=2)),
        max_size=12))
    return invoices, [(f"P{n}", ref, cur, amount) for n, (ref, cur, amount) in
                      enumerate(payments)]


def _fresh(invoices):
    engine = make_engine("sqlite://")
    s.metadata.create_all(engine)
    with engine.begin() as conn:
        for n, (ref, amount, cur) in enumerate(invoices):
            add_invoice(conn, f"INV-{n}", ref, amount, cur, source=f"s{n}")
    return engine


def _final(engine):
    with engine.connect() as conn:
        matches = set(conn.execute(
            select(s.payments.c.external_id, s.invoices.c.invoice_no, s.payment_matches.c.amount)
            .join(s.payments, s.payments.c.id == s.payment_matches.c.payment_id)
            .join(s.invoices, s.invoices.c.id == s.payment_matches.c.invoice_id)).all())
        recon = set(conn.execute(select(
            s.reconciliation.c.invoice_no, s.reconciliation.c.invoiced, s.reconciliation.c.applied,
            s.reconciliation.c.outstanding, s.reconciliation.c.status)).all())
        status = set(conn.execute(select(s.orders.c.external_id, s.orders.c.status)).all())
    return matches, recon, status


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books(), st.randoms(use_true_random=False))
def test_reconcile_properties(book, rnd: random.Random):
    invoices, payments = book
    # one book: every payment at once
    whole = _fresh(invoices)
    with whole.begin() as conn:
        if payments:
            add_payments(conn, payments)
    result = reconcile(whole, RUN, TOL)
    # applied + unapplied = received, per currency
    received: Counter[str] = Counter()
    for _, _, cur, amount in payments:
        received[cur] += amount
    matches, recon, _ = _final(whole)
    applied: Counter[str] = Counter()
    by_payment = {p[0]: p for p in payments}
    for ext, _, amount in matches:
        assert amount == by_payment[ext][3]  # a payment is applied whole, to one invoice
        applied[by_payment[ext][2]] += amount
    assert len({ext for ext, _, _ in matches}) == len(matches)
    for cur in ("CNY", "USD"):
        assert applied[cur] + result["unmatched_amount"].get(cur, 0) == received[cur]
    for _, invoiced, paid, outstanding, status in recon:
        assert outstanding == invoiced - paid
        assert status == invoice_status(invoiced, paid, TOL)
    # a rerun changes nothing
    before = _snapshot(whole)
    again = reconcile(whole, RUN2, TOL)
    assert (again["matched"], again["changed"], again["orders_paid"]) == (0, 0, 0)
    assert _snapshot(whole) == before
    # the same payments arriving in another order, in two batches, end the same
    shuffled = payments[:]
    rnd.shuffle(shuffled)
    cut = rnd.randint(0, len(shuffled))
    split = _fresh(invoices)
    for batch in (shuffled[:cut], shuffled[cut:]):
        if batch:
            with split.begin() as conn:
                add_payments(conn, batch)
        reconcile(split, RUN, TOL)
    assert _final(split) == _final(whole)
    whole.dispose()
    split.dispose()
