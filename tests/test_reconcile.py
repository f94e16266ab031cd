"""Settlement on the database, SQLite and PostgreSQL alike: exact outcomes of every rule on small
seeded books (each tier, many-to-one, one-to-many, fees, FX, refunds, duplicates, ambiguity),
reruns that change nothing, the finance views and their Parquet export, and the config."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select

from warehouse import schema as s
from warehouse.exports import export_parquet
from warehouse.reconcile import invoice_status, reconcile
from warehouse.reconcile_rules import ReconcileRules, RulesError
from warehouse.views import VIEWS, create_views, ensure_views

RUN = "00000000-0000-4000-8000-0000000000c1"
RUN2 = "00000000-0000-4000-8000-0000000000c2"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
TOL = D("0.01")
DAY = timedelta(days=1)


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


# --- seeding and reading books ----------------------------------------------------------------


def add_invoice(conn, no, order_ref, amount, currency="CNY", source="a", customer="C1", issued=T0):
    oid = conn.execute(insert(s.orders).values(
        source=source, external_id=f"{source}-{no}", order_no=order_ref, currency=currency,
        total=D(amount), status="invoiced", content_hash="h", captured_at=T0,
        run_id=RUN)).inserted_primary_key[0]
    conn.execute(insert(s.invoices).values(
        invoice_no=no, order_id=oid, order_ref=order_ref, customer_code=customer, currency=currency,
        amount=D(amount), issued_at=issued, run_id=RUN))
    return oid


def add_payments(conn, payments):
    """(ext, reference, currency, amount) tuples, or dicts for anything more."""
    rows = []
    for p in payments:
        if not isinstance(p, dict):
            ext, ref, cur, amount = p
            p = {"ext": ext, "ref": ref, "cur": cur, "amount": amount}
        rows.append({"source": p.get("source", "erp"), "external_id": p["ext"],
                     "reference": p.get("ref"), "customer_code": p.get("customer", "C1"),
                     "currency": p.get("cur", "CNY"), "amount": D(p["amount"]),
                     "received_at": p.get("at", T0), "content_hash": "h", "run_id": RUN,
                     "fee": D(p["fee"]) if p.get("fee") else None, "kind": p.get("kind")})
    conn.execute(insert(s.payments), rows)


def pay(ext: str, ref: str | None, amount: str, **kw: Any) -> dict[str, Any]:
    return {"ext": ext, "ref": ref, "amount": amount, **kw}


def seed(engine: Engine, invoices: list[tuple], payments: list[dict]) -> None:
    """invoices: (invoice_no, amount[, {currency, customer, issued, order_ref}])."""
    with engine.begin() as conn:
        for n, (no, amount, *extra) in enumerate(invoices):
            kw = extra[0] if extra else {}
            add_invoice(conn, no, kw.pop("order_ref", f"#{no}"), amount, source=f"s{n}", **kw)
        add_payments(conn, payments)


def outcome(engine: Engine) -> tuple[dict, dict, dict]:
    """(matches {(ext, invoice_no): (amount, applied, fee, rule)},
        payments {ext: (status, applied, unapplied)},
        invoices {invoice_no: (applied, fees, excess, outstanding, status)})."""
    m, p, i, pr = s.payment_matches, s.payments, s.invoices, s.payment_reconciliation
    with engine.connect() as conn:
        matches = {(r.external_id, r.invoice_no): (r.amount, r.applied, r.fee, r.rule)
                   for r in conn.execute(
                       select(p.c.external_id, i.c.invoice_no, m.c.amount, m.c.applied, m.c.fee, m.c.rule)
                       .join(p, p.c.id == m.c.payment_id).join(i, i.c.id == m.c.invoice_id))}
        pays = {r.external_id: (r.status, r.applied, r.unapplied) for r in conn.execute(
            select(p.c.external_id, pr.c.status, pr.c.applied, pr.c.unapplied)
            .join(pr, pr.c.payment_id == p.c.id))}
        invs = {r.invoice_no: (r.applied, r.fees, r.excess, r.outstanding, r.status)
                for r in conn.execute(select(s.reconciliation))}
    return matches, pays, invs


def reasons(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(
            select(s.payments.c.external_id, s.payment_reconciliation.c.reason)
            .join(s.payment_reconciliation,
                  s.payment_reconciliation.c.payment_id == s.payments.c.id)).all())


def match_rows(engine: Engine) -> dict[tuple[str, str], Any]:
    m = s.payment_matches
    with engine.connect() as conn:
        return {(r.external_id, r.invoice_no): r for r in conn.execute(
            select(s.payments.c.external_id, s.invoices.c.invoice_no, m.c.reason, m.c.inputs,
                   m.c.fx_rate)
            .join(s.payments, s.payments.c.id == m.c.payment_id)
            .join(s.invoices, s.invoices.c.id == m.c.invoice_id))}


def _snapshot(engine):
    with engine.connect() as conn:
        return tuple(
            conn.execute(select(t).order_by(*t.primary_key.columns)).all()
            for t in (s.payment_matches, s.reconciliation, s.payment_reconciliation, s.orders))


def _d(values: dict) -> dict:
    """View rows through raw SQL: SQLite hands back floats, PostgreSQL Decimals; compare as text."""
    return {k: tuple(D(str(x)) if isinstance(x, float | D) else x for x in v) for k, v in values.items()}


# --- the book the first version was built on ---------------------------------------------------


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
            ("P3", "#3", "CNY", "20.00"),  # two payments, 35 for 30: over paid, 5 held
            ("P4", "INV-a-3", "CNY", "15.00"),
            ("P5", "#5", "CNY", "9.99"),  # a cent short: paid within tolerance
            ("P6", "#1", "USD", "100.00"),  # another currency, no rate: unmatched
            ("P7", "NOPE", "CNY", "12.34"),  # unknown reference, no amount match: unmatched
            ("P8", None, "CNY", "1.00"),  # no reference: unmatched
            ("P9", "#9", "CNY", "5.00"),  # ambiguous everywhere: unmatched, not guessed
        ])
    return orders


def test_reconcile_exact_then_rerun_changes_nothing(engine, book):
    result = reconcile(engine, RUN, TOL)
    assert result == {"paid": 2, "part_paid": 1, "over_paid": 1, "open": 3, "matched": 5,
                      "rematched": 0, "changed": 7, "payments_changed": 9, "orders_paid": 3,
                      "unmatched_payments": 4,
                      "unmatched_amount": {"CNY": D("18.34"), "USD": D("100.00")},
                      "unapplied_amount": {"CNY": D("23.34"), "USD": D("100.00")},
                      "duplicates": 0, "by_rule": {"by_reference": 5}}
    matches, pays, invs = outcome(engine)
    assert invs == {
        "INV-a-1": (D("100.00"), D("0"), D("0"), D("0.00"), "paid"),
        "INV-a-2": (D("50.00"), D("0"), D("0"), D("150.00"), "part_paid"),
        # never over-applied: 30 applied, the other 5 held on account of it
        "INV-a-3": (D("30.00"), D("0"), D("5.00"), D("0.00"), "over_paid"),
        "INV-a-4": (D("0.00"), D("0"), D("0"), D("40.00"), "open"),
        "INV-a-5": (D("9.99"), D("0"), D("0"), D("0.01"), "paid"),
        "INV-a-9": (D("0.00"), D("0"), D("0"), D("5.00"), "open"),
        "INV-b-9": (D("0.00"), D("0"), D("0"), D("5.00"), "open"),
    }
    assert matches == {("P1", "INV-a-1"): (D("100.00"), D("100.00"), D("0"), "by_reference"),
                       ("P2", "INV-a-2"): (D("50.00"), D("50.00"), D("0"), "by_reference"),
                       ("P3", "INV-a-3"): (D("20.00"), D("20.00"), D("0"), "by_reference"),
                       ("P4", "INV-a-3"): (D("10.00"), D("10.00"), D("0"), "by_reference"),
                       ("P5", "INV-a-5"): (D("9.99"), D("9.99"), D("0"), "by_reference")}
    assert pays["P4"] == ("part_applied", D("10.00"), D("5.00"))
    assert {k for k, v in pays.items() if v[0] == "unapplied"} == {"P6", "P7", "P8", "P9"}
    why = reasons(engine)
    assert why["P4"] == ("by_reference: INV-a-3 10.00; "
                         "5.00 CNY over INV-a-3: held on account (not applied)")
    assert why["P6"] == ("reference '#1' = order_ref of INV-a-1: no USD->CNY rate for 2026-11-01; "
                         "not applied")
    assert why["P9"].startswith("reference '#9' names 2 invoices (INV-a-9, INV-b-9); "
                                "by_customer_amount: 2 invoices match")
    assert match_rows(engine)[("P1", "INV-a-1")].reason == \
        "reference '#1' = order_ref of INV-a-1; 100.00 CNY of 100.00 CNY open"
    with engine.connect() as conn:
        status = dict(conn.execute(select(s.orders.c.id, s.orders.c.status)).all())
    # paid in full, or more: the order is settled (the surplus is finance's to refund)
    assert {no for no, oid in book.items() if status[oid] == "paid"} == {"INV-a-1", "INV-a-3",
                                                                          "INV-a-5"}
    before = _snapshot(engine)
    again = reconcile(engine, RUN2, TOL)
    assert (again["matched"], again["rematched"], again["changed"], again["payments_changed"],
            again["orders_paid"]) == (0, 0, 0, 0, 0)
    assert _snapshot(engine) == before  # not even a run id moved


def test_a_late_payment_changes_only_what_it_touches(engine, book):
    reconcile(engine, RUN, TOL)
    with engine.begin() as conn:
        add_payments(conn, [pay("P10", "INV-a-2", "150.00", at=T0 + DAY)])
    result = reconcile(engine, RUN2, TOL)
    assert (result["matched"], result["rematched"], result["changed"], result["payments_changed"],
            result["orders_paid"]) == (1, 0, 1, 1, 1)
    assert (result["paid"], result["part_paid"]) == (3, 0)
    with engine.connect() as conn:
        runs = dict(conn.execute(select(s.reconciliation.c.invoice_no,
                                        s.reconciliation.c.run_id)).all())
    assert runs.pop("INV-a-2") == RUN2
    assert set(runs.values()) == {RUN}


def test_an_earlier_payment_arriving_late_takes_its_turn(engine):
    # P-late was received first but loaded second: the book is settled as if it came in order
    seed(engine, [("INV-1", "100.00")], [pay("P-b", "INV-1", "100.00", at=T0 + DAY)])
    reconcile(engine, RUN, TOL)
    assert outcome(engine)[1] == {"P-b": ("applied", D("100.00"), D("0.00"))}
    with engine.begin() as conn:
        add_payments(conn, [pay("P-a", "INV-1", "60.00", at=T0)])
    result = reconcile(engine, RUN2, TOL)
    assert (result["matched"], result["rematched"]) == (1, 1)
    _, pays, invs = outcome(engine)
    assert pays == {"P-a": ("applied", D("60.00"), D("0.00")),
                    "P-b": ("part_applied", D("40.00"), D("60.00"))}
    assert invs["INV-1"] == (D("100.00"), D("0"), D("60.00"), D("0.00"), "over_paid")


# --- every rule ---------------------------------------------------------------------------------


def test_each_tier(engine):
    seed(engine, [
        ("INV-1", "100.00"),
        ("INV-2", "80.00", {"customer": "C2"}),
        ("INV-3", "55.55", {"customer": "C3"}),
        ("INV-4", "55.55", {"customer": "C4", "issued": T0 - 60 * DAY}),  # outside the window
        ("INV-5", "70.00", {"customer": "C5", "order_ref": "SO-5"}),
    ], [
        pay("A1", "INV-1", "100.00"),  # 1. by invoice number
        pay("A5", "SO-5", "70.00", customer="C5"),  # 1. by order number
        pay("A2", None, "80.00", customer="C2"),  # 2. by customer and amount
        pay("A3", "garbled", "55.55", customer=None, at=T0 + 5 * DAY),  # 3. amount in window
    ])
    result = reconcile(engine, RUN, TOL)
    matches, pays, invs = outcome(engine)
    assert {k: v[3] for k, v in matches.items()} == {
        ("A1", "INV-1"): "by_reference", ("A5", "INV-5"): "by_reference",
        ("A2", "INV-2"): "by_customer_amount", ("A3", "INV-3"): "by_amount_window"}
    assert {no: v[4] for no, v in invs.items()} == {
        "INV-1": "paid", "INV-2": "paid", "INV-3": "paid", "INV-4": "open", "INV-5": "paid"}
    assert result["by_rule"] == {"by_amount_window": 1, "by_customer_amount": 1, "by_reference": 2}
    rows = match_rows(engine)
    assert rows[("A2", "INV-2")].reason == \
        "by_customer_amount: the only open invoice owing 80.00 CNY (customer C2)"
    assert rows[("A3", "INV-3")].reason == \
        "by_amount_window: the only open invoice owing 55.55 CNY (issued 2026-11-01, received 2026-11-06)"
    assert rows[("A3", "INV-3")].inputs == {"open": "55.55", "customer": None, "reference": "garbled"}


@pytest.mark.parametrize("chunk", [1, 2, 50_000])
def test_written_chunk_by_chunk_as_in_one_piece(engine, monkeypatch, chunk):
    """_sync compares and writes a range of keys at a time: inserts, updates and deletes land
    the same whatever the chunk, including stored rows between and after the chunks' ranges."""
    import warehouse.reconcile as rec

    monkeypatch.setattr(rec, "SYNC_CHUNK", chunk)
    seed(engine, [("INV-1", "100.00"), ("INV-2", "80.00", {"customer": "C2"}),
                  ("INV-3", "30.00"), ("INV-4", "40.00")],
         [pay("A1", "INV-1", "60.00"), pay("A2", None, "80.00", customer="C2"),
          pay("A3", "INV-3", "30.00"), pay("A4", "INV-4", "10.00")])
    first = reconcile(engine, RUN, TOL)
    assert (first["matched"], first["changed"], first["payments_changed"]) == (4, 4, 4)
    # a second 80.00 invoice of C2: A2's match goes (delete); a payment for INV-1 (insert,
    # update of INV-1's row)
    with engine.begin() as conn:
        add_invoice(conn, "INV-5", "#5", "80.00", source="s9", customer="C2")
        add_payments(conn, [pay("A5", "INV-1", "40.00", at=T0 + DAY)])
    second = reconcile(engine, RUN2, TOL)
    assert (second["matched"], second["rematched"], second["changed"],
            second["payments_changed"]) == (1, 1, 3, 2)
    matches, pays, invs = outcome(engine)
    assert set(matches) == {("A1", "INV-1"), ("A3", "INV-3"), ("A4", "INV-4"), ("A5", "INV-1")}
    assert pays["A2"] == ("unapplied", D("0.00"), D("80.00"))
    assert {no: v[4] for no, v in invs.items()} == {
        "INV-1": "paid", "INV-2": "open", "INV-3": "paid", "INV-4": "part_paid", "INV-5": "open"}
    before = _snapshot(engine)
    again = reconcile(engine, RUN2, TOL)
    assert (again["matched"], again["rematched"], again["changed"]) == (0, 0, 0)
    assert _snapshot(engine) == before


def test_tiers_are_declared_not_coded(engine):
    seed(engine, [("INV-2", "80.00", {"customer": "C2"})], [pay("A2", None, "80.00", customer="C2")])
    reconcile(engine, RUN, TOL, ReconcileRules(match_order=("by_reference",)))
    assert outcome(engine)[1] == {"A2": ("unapplied", D("0.00"), D("80.00"))}
    assert reasons(engine)["A2"] == "no reference"
    reconcile(engine, RUN2, TOL)  # the default order: all three tiers
    assert outcome(engine)[1] == {"A2": ("applied", D("80.00"), D("0.00"))}


def test_one_payment_many_invoices_and_many_payments_one_invoice(engine):
    seed(engine, [("INV-1", "100.00"), ("INV-2", "50.00"), ("INV-3", "70.00")], [
        pay("B1", "INV-1, INV-2", "130.00", at=T0 + DAY),  # pays them in the order quoted
        pay("B2", "INV-2", "20.00"),  # received first: takes its 20 before B1 comes
        pay("B3", "INV-3;INV-1", "75.00", at=T0 + 2 * DAY),  # INV-3 first; INV-1 is full
    ])
    reconcile(engine, RUN, TOL)
    matches, pays, invs = outcome(engine)
    assert {k: v[0] for k, v in matches.items()} == {
        ("B1", "INV-1"): D("100.00"), ("B1", "INV-2"): D("30.00"), ("B2", "INV-2"): D("20.00"),
        ("B3", "INV-3"): D("70.00")}
    assert pays == {"B1": ("applied", D("130.00"), D("0.00")),
                    "B2": ("applied", D("20.00"), D("0.00")),
                    "B3": ("part_applied", D("70.00"), D("5.00"))}
    # B3's surplus is held against the last invoice it quotes
    assert invs == {"INV-1": (D("100.00"), D("0"), D("5.00"), D("0.00"), "over_paid"),
                    "INV-2": (D("50.00"), D("0"), D("0"), D("0.00"), "paid"),
                    "INV-3": (D("70.00"), D("0"), D("0"), D("0.00"), "paid")}


def test_fees_declared_and_within_tolerance(engine):
    seed(engine, [("INV-1", "100.00"), ("INV-2", "100.00"), ("INV-3", "100.00"),
                  ("INV-4", "100.00")], [
        pay("C1", "INV-1", "97.50", fee="2.50"),  # the bank says it took 2.50
        pay("C2", "INV-2", "98.00"),  # 2.00 short: a fee only within the fee tolerance
        pay("C3", "INV-3", "96.00"),  # 4.00 short: more than 3 %, part paid
        pay("C4a", "INV-4", "50.00"), pay("C4b", "INV-4", "48.50", at=T0 + DAY),
    ])
    reconcile(engine, RUN, TOL)  # default: no fee is inferred
    invs = outcome(engine)[2]
    assert invs["INV-1"] == (D("97.50"), D("2.50"), D("0"), D("0.00"), "paid")
    assert invs["INV-2"][4] == invs["INV-4"][4] == "part_paid"

    rules = ReconcileRules.from_config({"fee_tolerance": "0.03", "fee_account": 6603})
    result = reconcile(engine, RUN2, TOL, rules)
    assert (result["changed"], result["rematched"], result["matched"]) == (2, 2, 0)
    matches, _, invs = outcome(engine)
    assert invs == {"INV-1": (D("97.50"), D("2.50"), D("0"), D("0.00"), "paid"),
                    "INV-2": (D("98.00"), D("2.00"), D("0"), D("0.00"), "paid"),
                    "INV-3": (D("96.00"), D("0"), D("0"), D("4.00"), "part_paid"),
                    "INV-4": (D("98.50"), D("1.50"), D("0"), D("0.00"), "paid")}
    assert matches[("C4b", "INV-4")][2] == D("1.50") and matches[("C4a", "INV-4")][2] == 0
    row = match_rows(engine)[("C2", "INV-2")]
    assert row.inputs["fee_inferred"] == "2.00" and row.inputs["fee_account"] == "6603"
    assert row.reason.endswith("short 2.00 CNY <= fee tolerance 0.03 x 100.00 CNY: bank fee")
    assert "declared bank fee 2.50 CNY" in match_rows(engine)[("C1", "INV-1")].reason


def test_fx_within_and_outside_tolerance(engine):
    seed(engine, [
        ("INV-1", "100.00"), ("INV-2", "100.00"),
        ("INV-3", "20.00", {"currency": "USD", "customer": "C3"}),
        ("INV-4", "70.00"), ("INV-5", "72.00"),
    ], [
        pay("D1", "INV-1", "14.10", cur="USD"),  # 100.11 CNY at 7.10: within 1 %
        pay("D2", "INV-2", "13.00", cur="USD"),  # 92.30 CNY: outside
        pay("D3", None, "142.00", customer="C3"),  # 20.00 USD at 1/7.10, by customer and amount
        pay("D4", "INV-4", "10.00", cur="USD", at=datetime(2026, 11, 3, tzinfo=UTC)),
        pay("D5", "INV-5", "10.00", cur="USD", at=datetime(2026, 11, 6, tzinfo=UTC)),
    ])
    with engine.begin() as conn:  # dated rates beat the config's fixed one
        conn.execute(insert(s.fx_rates), [
            {"base": "USD", "quote": "CNY", "rate_date": date(2026, 11, 2), "rate": D("7.00"),
             "source": "ecb", "run_id": RUN},
            {"base": "USD", "quote": "CNY", "rate_date": date(2026, 11, 5), "rate": D("7.20"),
             "source": "ecb", "run_id": RUN}])
    rules = ReconcileRules.from_config({"fx_rates": {"USD/CNY": "7.10"}, "fx_tolerance": "0.01"})
    reconcile(engine, RUN, TOL, rules)
    matches, pays, invs = outcome(engine)
    assert matches == {
        ("D1", "INV-1"): (D("14.10"), D("100.00"), D("0"), "by_reference"),
        ("D3", "INV-3"): (D("142.00"), D("20.00"), D("0"), "by_customer_amount"),
        ("D4", "INV-4"): (D("10.00"), D("70.00"), D("0"), "by_reference"),
        ("D5", "INV-5"): (D("10.00"), D("72.00"), D("0"), "by_reference")}
    assert pays["D2"] == ("unapplied", D("0.00"), D("13.00"))
    assert {no: v[4] for no, v in invs.items()} == {
        "INV-1": "paid", "INV-2": "open", "INV-3": "paid", "INV-4": "paid", "INV-5": "paid"}
    rows = match_rows(engine)
    assert rows[("D1", "INV-1")].fx_rate == D("7.10")
    assert rows[("D1", "INV-1")].inputs == {  # 11-01: before the first dated rate
        "rate_source": "config USD/CNY", "converted": "100.11", "open": "100.00",
        "fx_difference": "0.11"}
    assert rows[("D3", "INV-3")].fx_rate == D("0.14084507")
    assert rows[("D3", "INV-3")].inputs["rate_source"] == "config 1/(USD/CNY)"
    assert rows[("D4", "INV-4")].inputs["rate_source"] == "fx_rates USD/CNY 2026-11-02"
    assert rows[("D5", "INV-5")].fx_rate == D("7.20")
    assert reasons(engine)["D2"] == (
        "reference 'INV-2' = invoice_no: 13.00 USD at 7.10000000 (config USD/CNY) = "
        "92.30 CNY, open 100.00 CNY: outside fx tolerance 0.01; not applied")


def test_refunds(engine):
    seed(engine, [("INV-1", "30.00"), ("INV-2", "50.00"), ("INV-3", "40.00")], [
        pay("E1", "INV-1", "35.00"),
        pay("E2", "INV-1", "5.00", kind="refund", at=T0 + DAY),  # gives the surplus back
        pay("E3", "INV-2", "50.00"),
        pay("E4", "INV-2", "-50.00", at=T0 + DAY),  # negative: a refund whatever the kind
        pay("E5", "INV-3", "-10.00"),  # nothing was received: nothing to give back
        pay("E6", None, "-3.00"),  # a refund with no reference is never guessed
    ])
    result = reconcile(engine, RUN, TOL)
    matches, pays, invs = outcome(engine)
    assert matches == {
        ("E1", "INV-1"): (D("35.00"), D("35.00"), D("0"), "by_reference"),
        ("E2", "INV-1"): (D("-5.00"), D("-5.00"), D("0"), "refund"),
        ("E3", "INV-2"): (D("50.00"), D("50.00"), D("0"), "by_reference"),
        ("E4", "INV-2"): (D("-50.00"), D("-50.00"), D("0"), "refund")}
    assert invs == {"INV-1": (D("30.00"), D("0"), D("0"), D("0.00"), "paid"),
                    "INV-2": (D("0.00"), D("0"), D("0"), D("50.00"), "open"),
                    "INV-3": (D("0.00"), D("0"), D("0"), D("40.00"), "open")}
    assert pays["E5"] == ("unapplied", D("0.00"), D("-10.00"))
    assert pays["E6"] == ("unapplied", D("0.00"), D("-3.00"))
    why = reasons(engine)
    assert why["E5"] == "10.00 CNY exceeds the cash INV-3 received: not applied"
    assert why["E6"] == "no reference; refunds are matched by reference only"
    assert result["unapplied_amount"] == {"CNY": D("-13.00")}


def test_duplicates(engine):
    seed(engine, [("INV-1", "100.00"), ("INV-2", "100.00"), ("INV-3", "100.00")], [
        pay("F1", "INV-1", "100.00"),
        pay("F2", "INV-1", "100.00", at=T0 + DAY),  # a copy of a settling payment: duplicate
        pay("F3", "INV-2", "50.00"),
        pay("F4", "INV-2", "50.00", at=T0 + DAY),  # an equal instalment: applied
        pay("F6", "INV-3", "100.00"),
        pay("F7", "INV-3", "100.00", at=T0 + 5 * DAY),  # outside 3 days: an over-payment
        pay("F8", None, "12.00", customer="C9"),
        pay("F9", None, "12.00", customer="C9"),  # same moment, no reference: duplicate
    ])
    result = reconcile(engine, RUN, TOL)
    _, pays, invs = outcome(engine)
    assert {k: v[0] for k, v in pays.items()} == {
        "F1": "applied", "F2": "duplicate", "F3": "applied", "F4": "applied", "F6": "applied",
        "F7": "unapplied", "F8": "unapplied", "F9": "duplicate"}
    assert {no: v[4] for no, v in invs.items()} == {
        "INV-1": "paid", "INV-2": "paid", "INV-3": "over_paid"}
    assert result["duplicates"] == 2
    with engine.connect() as conn:
        dup_of = dict(conn.execute(
            select(s.payments.c.external_id, s.payment_reconciliation.c.duplicate_of)
            .join(s.payment_reconciliation, s.payment_reconciliation.c.payment_id == s.payments.c.id)
            .where(s.payment_reconciliation.c.duplicate_of.is_not(None))).all())
        ids = dict(conn.execute(select(s.payments.c.external_id, s.payments.c.id)).all())
    assert dup_of == {"F2": ids["F1"], "F9": ids["F8"]}
    assert reasons(engine)["F2"] == ("duplicate of erp/F1: same payer, amount and reference "
                                     "within 3 days; not applied")
    # a rule change, no code: without duplicate detection F2 is an over-payment
    reconcile(engine, RUN2, TOL, ReconcileRules.from_config({"duplicate_window_days": None}))
    assert outcome(engine)[2]["INV-1"][4] == "over_paid"


def test_ambiguity_is_left_for_a_person_with_the_reason(engine):
    seed(engine, [("INV-1", "60.00"), ("INV-2", "60.00"), ("INV-3", "45.00", {"customer": "C2"})], [
        pay("G1", None, "60.00"),  # two invoices of C1 owe 60
        pay("G2", None, "45.00", customer="C2"),  # two payments for one invoice
        pay("G3", None, "45.00", customer="C2", at=T0 + 5 * DAY),
    ])
    result = reconcile(engine, RUN, TOL)
    assert result["matched"] == 0 and result["open"] == 3
    why = reasons(engine)
    assert why["G1"] == (
        "no reference; by_customer_amount: 2 invoices match by customer and amount (INV-1, INV-2); "
        "left for a person; by_amount_window: 2 invoices match by amount within 30 days "
        "(INV-1, INV-2); left for a person")
    assert why["G2"] == ("no reference; by_customer_amount: 2 payments match INV-3; left for a "
                         "person; by_amount_window: 2 payments match INV-3; left for a person")


def test_an_ambiguous_reference_narrows_the_amount_tiers(engine):
    seed(engine, [("INV-a-7", "5.00", {"order_ref": "#7"}),
                  ("INV-b-7", "5.00", {"order_ref": "#7", "customer": "C2"}),
                  ("INV-c-8", "5.00", {"order_ref": "#8"})],
         [pay("K1", "#7", "5.00")])  # C1 owes 5.00 twice, but only once on order #7
    reconcile(engine, RUN, TOL)
    assert {k: v[3] for k, v in outcome(engine)[0].items()} == {("K1", "INV-a-7"): "by_customer_amount"}


# --- views and exports --------------------------------------------------------------------------


def test_finance_views(engine, book, tmp_path: Path):
    assert create_views(engine) == create_views(engine) == list(VIEWS)
    reconcile(engine, RUN, TOL)
    with engine.begin() as conn:
        assert ensure_views(conn) == []  # current: no DDL on a rerun
    with engine.connect() as conn:
        status = dict(conn.exec_driver_sql("SELECT invoice_no, status FROM v_invoice_status").all())
        unmatched = {r[0]: r[1:] for r in conn.exec_driver_sql(
            "SELECT external_id, unapplied, status, on_account_of FROM v_unmatched_payments")}
        open_ = dict(conn.exec_driver_sql(
            "SELECT invoice_no, outstanding FROM v_open_receivables").all())
        cash = {(str(r[0]), r[1]): r[2:] for r in conn.exec_driver_sql(
            "SELECT day, currency, payments, received, refunded, net, applied, unapplied, duplicates "
            "FROM v_cash_per_day")}
    assert status["INV-a-3"] == "over_paid" and len(status) == 7
    assert _d(unmatched) == {
        "P4": (D("5"), "part_applied", "INV-a-3"), "P6": (D("100"), "unapplied", None),
        "P7": (D("12.34"), "unapplied", None), "P8": (D("1"), "unapplied", None),
        "P9": (D("5"), "unapplied", None)}
    assert {k: D(str(v)) for k, v in open_.items()} == {
        "INV-a-2": D("150"), "INV-a-4": D("40"), "INV-a-9": D("5"), "INV-b-9": D("5")}
    assert _d(cash) == {
        ("2026-11-01", "CNY"): (8, D("213.33"), D("0"), D("213.33"), D("189.99"), D("23.34"), 0),
        ("2026-11-01", "USD"): (1, D("100"), D("0"), D("100"), D("0"), D("100"), 0)}

    paths = export_parquet(engine, tmp_path, tables=["v_cash_per_day", "v_unmatched_payments",
                                                     "payment_reconciliation"])
    cash_pq = pq.read_table(paths[0])
    assert cash_pq.schema.field("received").type == pa.decimal128(18, 2)
    assert cash_pq.to_pylist()[0]["applied"] == D("189.99")
    assert cash_pq.schema.field("day").type == pa.date32()
    unmatched_pq = pq.read_table(paths[1]).to_pylist()
    assert [r["external_id"] for r in unmatched_pq] == ["P4", "P6", "P7", "P8", "P9"]
    assert unmatched_pq[0]["unapplied"] == D("5.00") and "held on account" in unmatched_pq[0]["reason"]
    for path in paths:
        for field in pq.read_schema(path):
            assert not pa.types.is_floating(field.type), (path.name, field.name)


def test_receivables_aging(engine):
    as_of = date(2026, 12, 31)
    ages = {"A0": 0, "A30": 30, "A31": 31, "A60": 60, "A61": 61, "A90": 90, "A91": 91, "A400": 400}
    seed(engine, [(no, "10.00", {"issued": datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
                                 - timedelta(days=age)}) for no, age in ages.items()]
         + [("NOW", "7.00", {"issued": datetime.now(UTC)})],
         [pay("H1", "A31", "4.00")])
    reconcile(engine, RUN, TOL, ReconcileRules(as_of=as_of))
    with engine.connect() as conn:
        aged = {r[0]: r[1:] for r in conn.exec_driver_sql(
            "SELECT invoice_no, age_days, bucket, outstanding, days_0_30, days_31_60, days_61_90, "
            "days_90_plus, as_of FROM v_open_receivables_aging")}
    assert {no: (r[0], r[1]) for no, r in aged.items() if no != "NOW"} == {
        "A0": (0, "0-30"), "A30": (30, "0-30"), "A31": (31, "31-60"), "A60": (60, "31-60"),
        "A61": (61, "61-90"), "A90": (90, "61-90"), "A91": (91, "90+"), "A400": (400, "90+")}
    assert str(aged["A0"][7]) == "2026-12-31"
    assert _d({"A31": aged["A31"][2:7]}) == {"A31": (D("6"), D("0"), D("6"), D("0"), D("0"))}
    # without a fixed date, the views age as of today (UTC): each dialect's own expression
    create_views(engine)
    with engine.connect() as conn:
        now_row = conn.exec_driver_sql(
            "SELECT age_days, bucket FROM v_open_receivables_aging WHERE invoice_no = 'NOW'").one()
    assert tuple(now_row) in {(0, "0-30"), (1, "0-30")}  # 1: the clock passed midnight UTC


# --- configuration -------------------------------------------------------------------------------


def test_rules_from_config():
    rules = ReconcileRules.from_config({
        "amount_tolerance": 0.05, "date_window_days": 14, "duplicate_window_days": 0,
        "fee_tolerance": "0.02", "fee_account": "6603", "fx_tolerance": "0.005",
        "fx_rates": {"USD/CNY": "7.1", "EUR/CNY": 7.8}, "as_of": date(2026, 12, 31),
        "match_order": ["by_reference", "by_amount_window"]})
    assert rules.describe() == {
        "amount_tolerance": "0.05", "date_window_days": 14, "duplicate_window_days": 0,
        "fee_tolerance": "0.02", "fee_account": "6603", "fx_tolerance": "0.005",
        "fx_rates": {"EUR/CNY": "7.80000000", "USD/CNY": "7.10000000"}, "as_of": "2026-12-31",
        "match_order": ["by_reference", "by_amount_window"]}
    assert ReconcileRules.from_config(None) == ReconcileRules.from_config({}) == ReconcileRules()
    assert ReconcileRules.from_config({"as_of": "2026-12-31"}).as_of == date(2026, 12, 31)


@pytest.mark.parametrize("raw, message", [
    ({"amount_tolrance": "0.01"}, "reconciliation.amount_tolrance: unknown key"),
    ({"amount_tolerance": "ten"}, "reconciliation.amount_tolerance: not a decimal number: 'ten'"),
    ({"amount_tolerance": "-1"}, "reconciliation.amount_tolerance: must be >= 0"),
    ({"date_window_days": -3}, "reconciliation.date_window_days: expected a whole number"),
    ({"date_window_days": "30"}, "reconciliation.date_window_days: expected a whole number"),
    ({"fx_tolerance": "1"}, "reconciliation.fx_tolerance: must be >= 0 and < 1"),
    ({"fee_tolerance": "NaN"}, "reconciliation.fee_tolerance: not a decimal number"),
    ({"fx_rates": {"USDCNY": "7"}}, "reconciliation.fx_rates.USDCNY: expected BASE/QUOTE"),
    ({"fx_rates": {"USD/CNY": "0"}}, "reconciliation.fx_rates.USD/CNY: a rate must be > 0"),
    ({"fx_rates": {"usd/CNY": "7"}}, "reconciliation.fx_rates.usd/CNY: expected ISO currency"),
    ({"as_of": "31/12/2026"}, "reconciliation.as_of: expected a date YYYY-MM-DD"),
    ({"match_order": ["by_magic"]}, "reconciliation.match_order: unknown tier 'by_magic'"),
    ({"match_order": ["by_reference", "by_reference"]}, "reconciliation.match_order: a tier is"),
    ({"fee_account": ""}, "reconciliation.fee_account: expected an account code"),
])
def test_rules_errors_are_one_line_naming_the_key(raw, message):
    with pytest.raises(RulesError) as err:
        ReconcileRules.from_config(raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_reconcile_refuses_float_and_conflicting_tolerance(sqlite_engine):
    with pytest.raises(TypeError, match="must be a Decimal"):
        reconcile(sqlite_engine, RUN, 0.01)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differs from reconciliation.amount_tolerance"):
        reconcile(sqlite_engine, RUN, D("0.02"), ReconcileRules())
