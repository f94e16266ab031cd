"""The validation rules of orderhub.yaml, each on a seeded scenario with exact outcomes.

Credit limits (ERP receivables + our outstanding invoices + uninvoiced and earlier batch orders),
price rules (customer group, dates, discounts, tolerance per currency), stock plausibility,
address completeness, duplicates by external ids, warn severity, the per-source batch threshold
and its release, and the one-line config errors. Every scenario is built by hand so each
assertion names exactly which order fails which rule and with which value; boundaries are set
so one cent (or one 1/10000) decides.

Each scenario goes through ``run_gate`` (Great Expectations and all) on SQLite and PostgreSQL;
option variants that need no second gate read the check's own SQL directly (the same text GE
runs), which keeps the module fast.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text

from checks.gate import GateResult, release_held, run_gate
from checks.report import held_table, quarantine_table, warning_table, write_report
from checks.suite import GatePolicy, batch_query, load_gate, load_suite, render
from warehouse import schema as s

RUN0 = "00000000-0000-0000-0000-000000000000"  # the run that "loaded" the data
T9 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
D = Decimal


# --- building the warehouse --------------------------------------------------------------------


def _masters(engine: Engine) -> None:
    """Customers (groups, limits), products, list prices, warehouses and stock."""
    common = {"source": "crm", "content_hash": "h", "run_id": RUN0}
    with engine.begin() as conn:
        conn.execute(insert(s.customers), [
            {"id": 1, "code": "C00001", "email": "a@example.com", "region": "east",
             "customer_group": "A", "credit_limit": D("1000.00"), "currency": "CNY",
             "external_id": "1", **common},
            {"id": 2, "code": "C00002", "email": "b@example.com", "region": "north",
             "customer_group": "B", "credit_limit": None, "currency": "CNY",
             "external_id": "2", **common},
            # the limit's currency is not stated: it is the order's
            {"id": 3, "code": "C00003", "email": "c@example.com", "region": "west",
             "customer_group": "A", "credit_limit": D("500.00"), "currency": None,
             "external_id": "3", **common},
            {"id": 4, "code": "C00004", "email": None, "region": None, "customer_group": None,
             "credit_limit": D("100.00"), "currency": "USD", "external_id": "4", **common},
        ])
        conn.execute(insert(s.products), [
            {"sku": sku, "name": sku, "source": "erp", "run_id": RUN0}
            for sku in ("SKU-1", "SKU-2", "SKU-3")
        ])
        conn.execute(insert(s.prices), [
            {"sku": sku, "currency": cur, "price": D(p), "source": "erp", "content_hash": "h",
             "run_id": RUN0}
            for sku, cur, p in (("SKU-1", "CNY", "10.00"), ("SKU-1", "USD", "1.50"),
                                ("SKU-2", "CNY", "20.00"))
        ])
        conn.execute(insert(s.warehouses), [
            {"code": "WH-EAST", "region": "east", "run_id": RUN0},
            {"code": "WH-NORTH", "region": "north", "run_id": RUN0},
        ])
        conn.execute(insert(s.stock), [
            {"sku": sku, "warehouse": wh, "on_hand": D(q), "reserved": D(0), "source": "erp",
             "content_hash": "h", "run_id": RUN0}
            for sku, wh, q in (("SKU-1", "WH-EAST", "30"), ("SKU-1", "WH-NORTH", "10"),
                               ("SKU-2", "WH-EAST", "5"))
        ])


Line = tuple[str | None, str | None, str | None]  # sku, qty, unit price


def _order(ext: str, *, source: str = "crm", order_no: str | None = None,
           code: str | None = "C00001", email: str | None = None, customer_id: int | None = 1,
           currency: str | None = "CNY", region: str | None = "east",
           at: datetime | None = None, lines: list[Line] | None = None,
           total: str | None = None, status: str = "captured") -> dict[str, Any]:
    at = at or T9
    lines = [("SKU-1", "1", "10.00")] if lines is None else lines
    amount = sum((D(q or 0) * D(p or 0) for _, q, p in lines), D("0"))
    key = repr(sorted((sku or "", q or "", p or "") for sku, q, p in lines))
    return {
        "source": source, "external_id": ext, "order_no": order_no or f"NO-{ext}",
        "customer_code": code, "customer_email": email, "customer_id": customer_id,
        "ordered_at": at, "source_updated_at": at, "currency": currency,
        "total": D(total) if total is not None else amount.quantize(D("0.01")),
        "ship_region": region, "order_date": at.date(),
        "lines_hash": hashlib.sha256(key.encode()).hexdigest(), "status": status,
        "content_hash": ext, "captured_at": at, "run_id": RUN0, "lines": lines,
    }


def _add(engine: Engine, batch: list[dict[str, Any]]) -> dict[str, int]:
    """Insert orders with their lines; returns external_id -> order id."""
    ids = {}
    with engine.begin() as conn:
        for o in batch:
            o = dict(o)
            lines = o.pop("lines")
            oid = conn.execute(insert(s.orders).values(**o).returning(s.orders.c.id)).scalar_one()
            ids[o["external_id"]] = oid
            if lines:
                conn.execute(insert(s.order_lines), [
                    {"order_id": oid, "line_no": n, "sku": sku,
                     "qty": None if q is None else D(q),
                     "unit_price": None if p is None else D(p),
                     "amount": D(q or 0) * D(p or 0), "run_id": RUN0}
                    for n, (sku, q, p) in enumerate(lines, start=1)
                ])
    return ids


def _rules(engine: Engine, rules: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(s.price_rules), [
            {"source": "erp", "customer_group": None, "valid_from": None, "valid_to": None,
             "price": None, "discount_pct": None, "content_hash": "h", "run_id": RUN0, **r}
            for r in rules
        ])


# --- reading outcomes --------------------------------------------------------------------------


def _run() -> str:
    return str(uuid.uuid4())


def _gate(engine: Engine, items: list[dict[str, Any]], policy: GatePolicy | None = None,
          run_id: str | None = None) -> GateResult:
    return run_gate(engine, run_id or _run(), load_suite(items), policy)


def _status(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(s.orders.c.external_id, s.orders.c.status)).all())


def _by_status(engine: Engine, status: str) -> set[str]:
    return {ext for ext, st in _status(engine).items() if st == status}


def _quarantined(engine: Engine, run_id: str) -> dict[str, dict[str, str]]:
    """external_id -> {check: value} of the run's quarantine rows."""
    out: dict[str, dict[str, str]] = {}
    for r in quarantine_table(engine, run_id):
        out.setdefault(r["external_id"], {})[r["check"]] = r["value"]
    return out


def _sql_failures(engine: Engine, item: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The check's own SQL over the captured batch, without GE: external_id -> (value, reason).
    For option variants on one scenario (the gate would consume the batch)."""
    [spec] = load_suite([item])
    sql = render(spec.sql(engine.dialect.name), batch_query())
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT o.external_id, f.value, f.reason FROM ({sql}) f "
            "JOIN orders o ON o.id = f.order_id")).all()
    return {ext: (value, reason) for ext, value, reason in rows}


@pytest.fixture
def wh(engine: Engine) -> Engine:
    _masters(engine)
    return engine


# --- price rules -------------------------------------------------------------------------------

PRICE = {"id": "price_matches_list", "tolerance": {"CNY": "0.05", "USD": "0.01", "default": "0"}}


def test_price_rules_specificity_dates_discount_and_tolerance_per_currency(wh: Engine) -> None:
    _rules(wh, [
        # general rules for SKU-1: the latest valid_from wins
        {"external_id": "R-OLD", "sku": "SKU-1", "currency": "CNY",
         "valid_from": date(2026, 9, 1), "price": D("9.50")},
        {"external_id": "R-GEN", "sku": "SKU-1", "currency": "CNY",
         "valid_from": date(2026, 10, 1), "price": D("9.00")},
        # group A beats every general rule, even an older one: 8.00 less 5 % = 7.60
        {"external_id": "R-A", "sku": "SKU-1", "currency": "CNY", "customer_group": "A",
         "valid_from": date(2026, 1, 1), "price": D("8.00"), "discount_pct": D("5")},
        # group A from 2 November on (not yet active on the 1st)
        {"external_id": "R-A-NOV2", "sku": "SKU-1", "currency": "CNY", "customer_group": "A",
         "valid_from": date(2026, 11, 2), "price": D("7.00")},
        # SKU-2: group B's deal expired on 31 October (valid_to inclusive); a discount-only
        # rule for everyone: list 20.00 less 10 % = 18.00
        {"external_id": "R-B-OCT", "sku": "SKU-2", "currency": "CNY", "customer_group": "B",
         "valid_to": date(2026, 10, 31), "price": D("15.00")},
        {"external_id": "R-DISC", "sku": "SKU-2", "currency": "CNY", "discount_pct": D("10")},
        # no list price at all: the rule alone prices SKU-3; 9.99 less 5 % = 9.4905 exactly
        {"external_id": "R-3", "sku": "SKU-3", "currency": "CNY", "customer_group": "A",
         "price": D("9.99"), "discount_pct": D("5")},
    ])
    b = {"code": "C00002", "customer_id": 2}  # group B
    _add(wh, [
        _order("a-exact", lines=[("SKU-1", "1", "7.60")]),
        _order("a-boundary", lines=[("SKU-1", "2", "7.65")]),  # 0.05 off: the CNY tolerance
        _order("a-over", lines=[("SKU-1", "1", "7.66")]),
        _order("a-nov2", at=T9 + timedelta(days=1), lines=[("SKU-1", "1", "7.00")]),
        _order("a-nov1-at-nov2-price", lines=[("SKU-1", "1", "7.00")]),
        _order("b-general", **b, lines=[("SKU-1", "1", "9.00")]),
        _order("b-older-rule", **b, lines=[("SKU-1", "1", "9.50")]),
        _order("b-discount", **b, lines=[("SKU-2", "1", "18.00")]),
        _order("b-expired", **b, lines=[("SKU-2", "1", "15.00")]),
        _order("a-rounded-boundary", lines=[("SKU-3", "1", "9.5405")]),  # 0.0500 off
        _order("a-rounded-over", lines=[("SKU-3", "1", "9.5406")]),  # 0.0501 off
        _order("usd-boundary", **b, currency="USD", lines=[("SKU-1", "1", "1.51")]),
        _order("usd-over", **b, currency="USD", lines=[("SKU-1", "3", "1.52")]),
        # no rule, no list price: not judged (sku_known's business if the sku is unknown)
        _order("no-price", **b, lines=[("SKU-3", "1", "1.00")]),
    ])
    run_id = _run()
    result = _gate(wh, [PRICE], run_id=run_id)

    failed = {"a-over", "a-nov1-at-nov2-price", "b-older-rule", "b-expired", "a-rounded-over",
              "usd-over"}
    assert _by_status(wh, "quarantined") == failed
    assert (result.quarantined, result.validated) == (6, 8)
    got = {ext: checks["price_matches_list"] for ext, checks in _quarantined(wh, run_id).items()}
    assert got == {
        "a-over": "line 1 SKU-1 7.66 vs 7.60 (rule R-A, group A, from 2026-01-01, price 8.00 "
                  "less 5%)",
        "a-nov1-at-nov2-price": "line 1 SKU-1 7.00 vs 7.60 (rule R-A, group A, from "
                                "2026-01-01, price 8.00 less 5%)",
        "b-older-rule": "line 1 SKU-1 9.50 vs 9.00 (rule R-GEN, all customers, from "
                        "2026-10-01, price 9.00)",
        "b-expired": "line 1 SKU-2 15.00 vs 18.00 (rule R-DISC, all customers, list 20.00 "
                     "less 10%)",
        "a-rounded-over": "line 1 SKU-3 9.5406 vs 9.4905 (rule R-3, group A, price 9.99 "
                          "less 5%)",
        "usd-over": "line 1 SKU-1 1.52 vs list 1.50",
    }
    reasons = {r["external_id"]: r["reason"] for r in quarantine_table(wh, run_id)}
    assert reasons["usd-over"] == "unit price differs from the applicable price by more than 0.01 USD"
    assert reasons["a-over"] == "unit price differs from the applicable price by more than 0.05 CNY"


def test_price_check_lists_every_failing_line_in_line_order(wh: Engine) -> None:
    """Several failing lines of one order: one value, lines in order, rule or list price each
    (SQLite finds each line's rule by lookup, PostgreSQL ranks (line, rule) rows)."""
    lines = [("SKU-1", "1", "11.00"), ("SKU-2", "1", "20.00"), ("SKU-2", "2", "21.00"),
             ("SKU-1", "1", "12.00")]
    _add(wh, [_order("several", lines=lines), _order("clean", lines=[("SKU-1", "1", "10.00")])])
    assert _sql_failures(wh, PRICE) == {"several": (
        "line 1 SKU-1 11.00 vs list 10.00; line 3 SKU-2 21.00 vs list 20.00; "
        "line 4 SKU-1 12.00 vs list 10.00",
        "unit price differs from the applicable price by more than 0.05 CNY")}
    # a rule for SKU-2 only: line 2 now fails against it, line 3 no longer does
    _rules(wh, [{"external_id": "R-2", "sku": "SKU-2", "currency": "CNY", "price": D("21.00")}])
    assert _sql_failures(wh, PRICE)["several"][0] == (
        "line 1 SKU-1 11.00 vs list 10.00; line 2 SKU-2 20.00 vs 21.00 (rule R-2, all customers, "
        "price 21.00); line 4 SKU-1 12.00 vs list 10.00")


def test_price_tolerance_default_applies_to_currencies_not_named(wh: Engine) -> None:
    _add(wh, [_order("usd", code="C00002", customer_id=2, currency="USD",
                     lines=[("SKU-1", "1", "1.51")])])
    assert set(_sql_failures(wh, PRICE)) == set()  # USD: 0.01
    tight = {"id": "price_matches_list", "tolerance": {"CNY": "0.05"}}  # USD falls to 0
    assert _sql_failures(wh, tight) == {"usd": ("line 1 SKU-1 1.51 vs list 1.50",
                                                "unit price differs from the applicable price "
                                                "by more than 0 USD")}
    assert set(_sql_failures(wh, {"id": "price_matches_list", "tolerance": "0.01"})) == set()


# --- credit limit ------------------------------------------------------------------------------


def _credit_book(engine: Engine) -> None:
    """Customer C00001 (limit 1000.00 CNY) owes 700.00 before this batch:
    ERP receivables 400.00 = R1 open 300.00 + R5 amount 50.00 (open not stated) + R6 50.00 (the
    ERP invoiced allocated order old-4, so old-4 itself is not counted again); not counted: R2
    (paid), R3 (USD), R4 (mirrors our INV-1).
    Our invoices 200.00 = INV-1 outstanding 120.00 (reconciled) + INV-2 80.00 (not reconciled
    yet: the invoiced amount).
    Uninvoiced orders 100.00 = old-3 (validated); old-5 is quarantined: not counted."""
    ids = _add(engine, [
        _order("old-1", total="200.00", status="invoiced"),
        _order("old-2", total="80.00", status="invoiced"),
        _order("old-3", total="100.00", status="validated"),
        _order("old-4", total="50.00", status="allocated"),
        _order("old-5", total="999.00", status="quarantined"),
        _order("old-other", code="C00002", customer_id=2, total="5000.00", status="validated"),
    ])
    now = datetime(2026, 10, 20, tzinfo=UTC)
    with engine.begin() as conn:
        inv = {}
        for no, ext, amount in (("INV-1", "old-1", "200.00"), ("INV-2", "old-2", "80.00")):
            inv[no] = conn.execute(insert(s.invoices).values(
                invoice_no=no, order_id=ids[ext], order_ref=f"NO-{ext}", customer_code="C00001",
                currency="CNY", amount=D(amount), issued_at=now, run_id=RUN0,
            ).returning(s.invoices.c.id)).scalar_one()
        conn.execute(insert(s.reconciliation).values(
            invoice_id=inv["INV-1"], invoice_no="INV-1", customer_code="C00001", currency="CNY",
            invoiced=D("200.00"), applied=D("80.00"), outstanding=D("120.00"),
            status="part_paid", run_id=RUN0))
        conn.execute(insert(s.receivables), [
            {"source": "erp", "external_id": ext, "invoice_no": no, "order_ref": ref,
             "customer_code": "C00001", "currency": cur, "amount": D(amount),
             "open_amount": None if open_ is None else D(open_), "content_hash": "h",
             "run_id": RUN0}
            for ext, no, ref, cur, amount, open_ in (
                ("R1", "AR-1", None, "CNY", "500.00", "300.00"),
                ("R2", "AR-2", None, "CNY", "400.00", "0.00"),
                ("R3", "AR-3", None, "USD", "100.00", "100.00"),
                ("R4", "INV-1", "NO-old-1", "CNY", "200.00", "200.00"),
                ("R5", "AR-5", None, "CNY", "50.00", None),
                ("R6", "AR-6", "NO-old-4", "CNY", "50.00", "50.00"),
            )
        ])


def test_credit_limit_counts_erp_receivables_our_invoices_and_open_orders(wh: Engine) -> None:
    _credit_book(wh)
    h = timedelta(hours=1)
    _add(wh, [
        # 700.00 open + 250.00 = 950.00, then + 50.00 = 1000.00: exactly the limit, passes
        _order("c1-first", total="250.00"),
        _order("c1-second", at=T9 + h, total="50.00"),
        # one cent over: 1000.00 open (with both earlier orders of this batch) + 0.01
        _order("c1-third", at=T9 + 2 * h, total="0.01"),
        # no limit known: never judged
        _order("c2-no-limit", code="C00002", customer_id=2, total="1000000.00"),
        # limit without a currency: in the order's currency (USD here); 500.01 > 500.00
        _order("c3-usd-over", code="C00003", customer_id=3, currency="USD", total="500.01"),
        _order("c3-cny-ok", code="C00003", customer_id=3, total="500.00"),
        # limit 100.00 USD: an order in CNY is not compared (no FX); one in USD is
        _order("c4-cny", code="C00004", customer_id=4, total="5000.00"),
        _order("c4-usd-over", code="C00004", customer_id=4, currency="USD", total="100.01"),
        # unknown customer: customer_known's failure, not credit's
        _order("unknown", code="C99999", customer_id=None, total="99999.00"),
    ])
    run_id = _run()
    result = _gate(wh, [{"id": "credit_limit", "severity": "error"}], run_id=run_id)

    assert _by_status(wh, "quarantined") - {"old-5"} == {"c1-third", "c3-usd-over",
                                                          "c4-usd-over"}
    assert (result.quarantined, result.validated) == (3, 6)
    rows = {r["external_id"]: r for r in quarantine_table(wh, run_id)}
    assert {ext: r["value"] for ext, r in rows.items()} == {
        "c1-third": "open 1000.00 + order 0.01 > limit 1000.00 CNY",
        "c3-usd-over": "open 0.00 + order 500.01 > limit 500.00 USD",
        "c4-usd-over": "open 0.00 + order 100.01 > limit 100.00 USD",
    }
    assert rows["c1-third"]["reason"] == (
        "credit limit exceeded; open = ERP receivables 400.00 + our invoices 200.00 + "
        "uninvoiced orders 100.00 + earlier orders in this batch 300.00")


def test_credit_limit_include_narrows_what_counts(wh: Engine) -> None:
    _credit_book(wh)
    _add(wh, [_order("c1", total="600.00"), _order("c1-later", at=T9 + timedelta(hours=1),
                                                   total="1.00")])
    every = _sql_failures(wh, {"id": "credit_limit"})
    assert {ext: v for ext, (v, _) in every.items()} == {
        "c1": "open 700.00 + order 600.00 > limit 1000.00 CNY",
        "c1-later": "open 1300.00 + order 1.00 > limit 1000.00 CNY"}
    # ERP receivables alone: R4 now counts too (our invoices are not counted), and so does
    # nothing else: 300 + 200 + 50 + 50 = 600.00; 600 + 600 > 1000, 600 + 1 is not
    only = _sql_failures(wh, {"id": "credit_limit", "include": ["receivables"]})
    assert only == {"c1": ("open 600.00 + order 600.00 > limit 1000.00 CNY",
                           "credit limit exceeded; open = ERP receivables 600.00")}
    # our book alone: invoices 200 + uninvoiced 100 + old-4 (no receivable is read) 50 = 350
    ours = _sql_failures(wh, {"id": "credit_limit", "include": ["invoices", "uninvoiced"]})
    assert ours == {}  # 350 + 600 = 950: within the limit


# --- stock plausibility and warn severity --------------------------------------------------------


def test_warn_severity_flags_but_passes_stock_plausible(wh: Engine, tmp_path: Path) -> None:
    _add(wh, [
        _order("stock-ok", lines=[("SKU-1", "40", "10.00")]),  # exactly all 40 on hand
        _order("stock-over", lines=[("SKU-1", "41", "10.00"), ("SKU-2", "5", "20.00")]),
        _order("stock-none", lines=[("SKU-3", "1.5", "3.00")]),  # no stock row at all
        _order("unknown-sku", lines=[("SKU-404", "100", "1.00")]),  # sku_known's, not stock's
        _order("qty-negative", lines=[("SKU-1", "-1", "10.00")]),  # qty_positive's
        _order("both", lines=[("SKU-404", "1", "1.00"), ("SKU-2", "6", "20.00")]),
    ])
    items = [{"id": "stock_plausible"}, {"id": "sku_known"}, {"id": "qty_positive"}]
    assert load_suite(items)[0].severity == "warn"  # the default of this check
    run_id = _run()
    result = _gate(wh, items, run_id=run_id)

    assert _by_status(wh, "validated") == {"stock-ok", "stock-over", "stock-none"}
    assert _by_status(wh, "quarantined") == {"unknown-sku", "qty-negative", "both"}
    assert (result.quarantined, result.validated, result.warned) == (3, 3, 2)
    stock = next(c for c in result.checks if c.check_id == "stock_plausible")
    assert (stock.severity, stock.failed, stock.success) == ("warn", 3, False)
    # warnings are flags, never quarantine rows
    assert {r["check"] for r in quarantine_table(wh, run_id)} == {"sku_known", "qty_positive"}
    flags = {r["external_id"]: r["value"] for r in warning_table(wh, run_id)}
    assert flags == {"stock-over": "line 1 SKU-1 qty 41 > on hand 40",
                     "stock-none": "line 1 SKU-3 qty 1.5 > on hand 0",
                     "both": "line 2 SKU-2 qty 6 > on hand 5"}
    assert {r["reason"] for r in warning_table(wh, run_id)} == {
        "quantity above the on-hand stock of all warehouses"}

    page = write_report(wh, run_id, tmp_path).read_text(encoding="utf-8")
    assert "<h2>Warnings</h2>" in page and "2 order(s) with warnings" not in page
    assert "3 order(s) with warnings" in page  # every flagged order, quarantined or not
    assert page.count('<span class="flag">warn: stock_plausible</span>') == 3
    assert "NO-stock-over" in page and "line 1 SKU-1 qty 41 &gt; on hand 40" in page


def test_stock_plausible_factor_and_max_qty(wh: Engine) -> None:
    _add(wh, [_order("q60", lines=[("SKU-1", "60", "10.00")]),
              _order("q61", lines=[("SKU-1", "61", "10.00")]),
              _order("q45", lines=[("SKU-1", "45", "10.00")])])
    assert set(_sql_failures(wh, {"id": "stock_plausible"})) == {"q60", "q61", "q45"}
    factor = _sql_failures(wh, {"id": "stock_plausible", "factor": "1.5"})  # 40 x 1.5 = 60
    assert factor == {"q61": ("line 1 SKU-1 qty 61 > on hand 40 x 1.5",
                              "quantity above the on-hand stock of all warehouses x 1.5")}
    capped = _sql_failures(wh, {"id": "stock_plausible", "factor": "10", "max_qty": "60"})
    assert capped == {"q61": ("line 1 SKU-1 qty 61 > max 60",
                              "quantity above the on-hand stock of all warehouses x 10 or "
                              "above 60")}


# --- address completeness ----------------------------------------------------------------------


def test_address_complete_needs_a_known_region_and_a_contact(wh: Engine) -> None:
    _add(wh, [
        _order("ok"),
        _order("case-and-spaces", region=" East "),
        _order("customer-region", region="west"),  # only a customer is in the west: known
        _order("atlantis", region="atlantis"),
        _order("no-region", region=None),
        _order("email-only", code=None, email="x@example.com", customer_id=None),
        _order("nobody", code=None, customer_id=None, region="mars"),
    ])
    run_id = _run()
    result = _gate(wh, [{"id": "address_complete", "severity": "error"}], run_id=run_id)
    got = {ext: c["address_complete"] for ext, c in _quarantined(wh, run_id).items()}
    assert got == {"atlantis": "unknown region atlantis", "no-region": "no ship region",
                   "nobody": "unknown region mars; no customer code or email"}
    assert (result.quarantined, result.validated) == (3, 4)


def test_address_complete_fields_are_configurable(wh: Engine) -> None:
    _add(wh, [
        _order("email-on-customer"),  # the order has no e-mail; its customer has
        _order("no-email", code="C00004", customer_id=4),  # neither has one
        _order("no-code", code=None, email="x@example.com", customer_id=None, region="moon"),
    ])
    item = {"id": "address_complete", "fields": ["customer_email", "customer_code"]}
    assert {ext: v for ext, (v, _) in _sql_failures(wh, item).items()} == {
        "no-email": "no customer email", "no-code": "no customer code"}


# --- duplicates --------------------------------------------------------------------------------


def test_duplicates_by_external_ids_across_sources(wh: Engine) -> None:
    later = T9 + timedelta(hours=2)
    _add(wh, [
        # a marketplace order already gated, known to the shop by its marketplace id
        _order("T-1001", source="shop", order_no="#1001", status="validated"),
        # the ERP got the same order, its number is the marketplace id: a duplicate
        _order("555", source="erp", order_no="T-1001", at=later),
        # two new orders carrying X-9 in one batch: the later one is the copy
        _order("X-9", source="crm", order_no="X-9", at=T9 + timedelta(hours=1)),
        _order("777", source="erp", order_no="X-9", at=later),
        # one source repeating an order number is not a cross-channel duplicate
        _order("Y-1", source="crm", order_no="DUP-1"),
        _order("Y-2", source="crm", order_no="DUP-1"),
    ])
    run_id = _run()
    item = {"id": "not_duplicate", "key": "external_ids"}
    result = _gate(wh, [item], run_id=run_id)
    rows = {r["external_id"]: (r["value"], r["reason"]) for r in quarantine_table(wh, run_id)}
    assert rows == {
        "555": ("shop #1001", "external id T-1001 also on an earlier order from another source"),
        "777": ("crm X-9", "external id X-9 also on an earlier order from another source"),
    }
    assert (result.quarantined, result.validated) == (2, 3)


def test_duplicate_key_content_and_id_fields(wh: Engine) -> None:
    # two ERPs numbering their documents alike: the same internal id, different orders
    _add(wh, [_order("100001", source="kingdee", order_no="XSDD000001", total="10.00"),
              _order("100001", source="u8", order_no="U8SO000001", at=T9 + timedelta(hours=1),
                     lines=[("SKU-2", "1", "20.00")])])
    by_both = _sql_failures(wh, {"id": "not_duplicate", "key": "external_ids"})
    assert by_both == {"100001": ("kingdee XSDD000001", "external id 100001 also on an earlier "
                                  "order from another source")}
    # ids: [order_no] - internal ids that collide across systems are not compared
    assert _sql_failures(wh, {"id": "not_duplicate", "key": "external_ids",
                              "ids": ["order_no"]}) == {}
    # content (the default): different lines, not duplicates
    assert _sql_failures(wh, {"id": "not_duplicate", "key": "content"}) == {}
    assert _sql_failures(wh, {"id": "not_duplicate"}) == {}


# --- the batch threshold -----------------------------------------------------------------------

POLICY = GatePolicy(hold_percent=D("20"), min_batch=5)
SKU_QTY = [{"id": "sku_known"}, {"id": "qty_positive"}]


def _source_batch(source: str, n: int, bad_sku: int = 0, bad_qty: int = 0,
                  start: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        k = i - start
        line = (("SKU-404", "1", "1.00") if k < bad_sku else
                ("SKU-1", "-1", "10.00") if k < bad_sku + bad_qty else ("SKU-1", "1", "10.00"))
        out.append(_order(f"{source}-{i:02d}", source=source, lines=[line]))
    return out


def test_threshold_holds_only_the_failing_source_and_release_regates(
    wh: Engine, tmp_path: Path
) -> None:
    _add(wh, _source_batch("shop", 10, bad_sku=2, bad_qty=1)  # 30 %: held
         + _source_batch("crm", 10, bad_sku=2)  # 20 %: not over 20 %, judged
         + _source_batch("erp", 4, bad_sku=4))  # 100 % of 4 < min_batch 5: judged
    run_id = _run()
    result = _gate(wh, SKU_QTY, POLICY, run_id=run_id)

    status = _status(wh)
    assert {e for e, st in status.items() if st == "held"} == {f"shop-{i:02d}" for i in range(10)}
    assert {e for e, st in status.items() if st == "quarantined"} == {
        "crm-00", "crm-01", "erp-00", "erp-01", "erp-02", "erp-03"}
    assert {e for e, st in status.items() if st == "validated"} == {
        f"crm-{i:02d}" for i in range(2, 10)}
    assert result.held is True
    assert (result.held_orders, result.quarantined, result.validated) == (10, 6, 8)
    [hold] = result.holds
    reason = ("batch held: 3 of 10 (30.0%) shop orders failed, over the 20% limit: "
              "top checks sku_known 2, qty_positive 1")
    assert (hold.source, hold.evaluated, hold.failed, hold.held, hold.reason) == (
        "shop", 10, 3, 10, reason)
    summary = json.loads(json.dumps(result.summary()))  # JSON-safe: alerts, lineage, artifacts
    assert summary["held"] is True and summary["held_orders"] == 10
    assert summary["holds"][0] == {
        "source": "shop", "evaluated": 10, "failed": 3, "percent": "30.0", "limit": "20",
        "held": 10, "top_checks": [{"check": "sku_known", "failed": 2},
                                   {"check": "qty_positive", "failed": 1}],
        "reason": reason}
    # nothing of the held share is quarantined; its events carry the numbers
    assert not {r["source"] for r in quarantine_table(wh, run_id)} & {"shop"}
    with wh.connect() as conn:
        events = conn.execute(select(s.order_events.c.reason, func.count())
                              .where(s.order_events.c.run_id == run_id,
                                     s.order_events.c.to_state == "held")
                              .group_by(s.order_events.c.reason)).all()
    assert [tuple(e) for e in events] == [(reason, 10)]
    assert held_table(wh, run_id) == [{"source": "shop", "reason": reason, "held": 10,
                                       "still_held": 10}]
    page = write_report(wh, run_id, tmp_path).read_text(encoding="utf-8")
    assert "Batch held: source shop" in page and reason in page and "10 held order(s)" in page

    # ops release it unfixed: the re-gate judges each order on its own, no hold again
    with pytest.raises(ValueError, match="actor and reason are required"):
        release_held(wh, _run(), " ", "why")
    assert release_held(wh, _run(), "ops@example.com", "checked", source="crm") == 0
    release_run = _run()
    assert release_held(wh, release_run, "ops@example.com", "SKU master fixed",
                        held_by=run_id) == 10
    with wh.connect() as conn:
        acts = conn.execute(select(s.ops_actions.c.action, s.ops_actions.c.actor,
                                   s.ops_actions.c.reason, func.count())
                            .group_by(s.ops_actions.c.action, s.ops_actions.c.actor,
                                      s.ops_actions.c.reason)).all()
    assert [tuple(a) for a in acts] == [("release_held", "ops@example.com", "SKU master fixed", 10)]
    assert held_table(wh, run_id)[0]["still_held"] == 0

    again = _gate(wh, SKU_QTY, POLICY)
    assert (again.held, again.quarantined, again.validated) == (False, 3, 7)
    assert {e for e, st in _status(wh).items() if st == "quarantined" and e.startswith("shop")} \
        == {"shop-00", "shop-01", "shop-02"}

    # fresh orders of the same source still fall under the threshold: 2 of 5 fail -> held
    _add(wh, _source_batch("shop", 5, bad_sku=2, start=10))
    third = _gate(wh, SKU_QTY, POLICY)
    assert (third.held_orders, third.quarantined, third.validated) == (5, 0, 0)
    assert third.holds[0].reason == ("batch held: 2 of 5 (40.0%) shop orders failed, over the "
                                     "20% limit: top checks sku_known 2")


def test_no_gate_policy_never_holds(wh: Engine) -> None:
    _add(wh, _source_batch("shop", 10, bad_sku=10))
    result = _gate(wh, SKU_QTY)
    assert (result.held, result.quarantined, result.validated) == (False, 10, 0)


# --- configuration errors ----------------------------------------------------------------------


def test_new_options_are_read() -> None:
    specs = {x.id: x for x in load_suite([
        {"id": "price_matches_list", "tolerance": {"CNY": 0.05, "USD": "0.01", "default": "0"}},
        {"id": "not_duplicate", "key": "external_ids", "ids": ["order_no"]},
        {"id": "credit_limit", "include": ["receivables", "invoices"]},
        {"id": "stock_plausible", "factor": "1.5", "max_qty": 500},
        {"id": "address_complete", "fields": ["ship_region"]},
    ])}
    price = specs["price_matches_list"]
    assert price.tolerance_for("CNY") == D("0.05") and price.tolerance_for("EUR") == D("0")
    assert price.options() == {"tolerance": {"CNY": "0.05", "USD": "0.01", "default": "0"}}
    assert (specs["not_duplicate"].key, specs["not_duplicate"].ids) == ("external_ids",
                                                                          ("order_no",))
    assert specs["credit_limit"].include == ("receivables", "invoices")
    assert specs["credit_limit"].severity == "error"
    stock = specs["stock_plausible"]
    assert (stock.factor, stock.max_qty, stock.severity) == (D("1.5"), D("500"), "warn")
    assert specs["address_complete"].address_fields == ("ship_region",)
    assert load_suite([{"id": "stock_plausible", "severity": "error"}])[0].blocking


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"id": "price_matches_list", "tolerance": {"CNY": "abc"}}],
         "checks[0] price_matches_list: tolerance: CNY: 'abc' is not a decimal number"),
        ([{"id": "price_matches_list", "tolerance": {"cny": "0.01"}}],
         "checks[0] price_matches_list: tolerance: 'cny' is not a three-letter upper-case ISO "
         "currency code or 'default'"),
        ([{"id": "price_matches_list", "tolerance": {"default": "-1"}}],
         "checks[0] price_matches_list: tolerance: '-1' must be a non-negative number"),
        ([{"id": "qty_positive"}, {"id": "not_duplicate", "key": "phone"}],
         "checks[1] not_duplicate: key: 'phone' is not one of content, external_ids"),
        ([{"id": "not_duplicate", "ids": ["order_no"]}],
         "checks[0] not_duplicate: ids: only applies with key: external_ids"),
        ([{"id": "not_duplicate", "key": "external_ids", "ids": ["email"]}],
         "checks[0] not_duplicate: ids: 'email' is not a known id field (external_id, order_no)"),
        ([{"id": "credit_limit", "include": ["loans"]}],
         "checks[0] credit_limit: include: 'loans' is not a known item (receivables, invoices, "
         "uninvoiced, batch)"),
        ([{"id": "credit_limit", "tolerance": "1"}],
         "checks[0] credit_limit: tolerance: not an option of this check"),
        ([{"id": "stock_plausible", "factor": "0"}],
         "checks[0] stock_plausible: factor: '0' must be above 0"),
        ([{"id": "stock_plausible", "max_qty": "-5"}],
         "checks[0] stock_plausible: max_qty: '-5' must be a non-negative number"),
        ([{"id": "stock_plausible", "max_qty": "1.0001"}],
         "checks[0] stock_plausible: max_qty: '1.0001' has more than 3 decimals"),
        ([{"id": "address_complete", "fields": ["zip"]}],
         "checks[0] address_complete: fields: 'zip' is not a known field (ship_region, "
         "region_known, customer_code, customer_email, contact)"),
        ([{"id": "address_complete", "fields": "ship_region"}],
         "checks[0] address_complete: fields: expected a non-empty list of:"),
    ],
)
def test_config_errors_name_the_check_and_key(items: list, message: str) -> None:
    with pytest.raises(ValueError) as err:
        load_suite(items)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"hold_if_failed_over_percent": "lots"},
         "gate: hold_if_failed_over_percent: 'lots' is not a decimal number"),
        ({"hold_if_failed_over_percent": 150},
         "gate: hold_if_failed_over_percent: 150 must be a percentage from 0 to 100"),
        ({"hold_if_failed_over_percent": 20, "min_batch": 0},
         "gate: min_batch: 0 must be a whole number of at least 1"),
        ({"hold_if_failed_over_percent": 20, "min_batch": True},
         "gate: min_batch: True must be a whole number of at least 1"),
        ({"hold_percent": 20}, "gate: hold_percent: unknown key"),
        ([20], "gate: expected a mapping"),
    ],
)
def test_gate_config_errors_are_one_line(raw: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        load_gate(raw)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_gate_policy_reads_and_decides_exactly() -> None:
    assert load_gate(None) == GatePolicy(None, 50)
    policy = load_gate({"hold_if_failed_over_percent": 20, "min_batch": 5})
    assert policy == GatePolicy(D("20"), 5)
    assert load_gate({"hold_if_failed_over_percent": 12.5}).hold_percent == D("12.5")
    assert policy.holds(10, 3) and not policy.holds(10, 2)  # more than 20 %, not 20 % itself
    assert not policy.holds(4, 4)  # below min_batch
    assert not GatePolicy().holds(100, 100)


# --- Kingdee price rules, from the fake to a verdict -------------------------------------------


def test_kingdee_price_rules_land_and_drive_the_price_check(wh: Engine) -> None:
    from connectors.http import reset_rate_limits
    from connectors.kingdee import KingdeeConnector
    from sandbox.kingdee import KingdeeFake, _price_rows
    from sandbox.server import FakeServer
    from warehouse.load import land_batch

    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    products = [{"sku": "SKU-1", "name": "One", "prices": {"CNY": D("10.00")}, "updated_at": t0}]
    plain = SimpleNamespace(products=products)
    assert KingdeeFake(plain).static_rows["SAL_PriceList"] == _price_rows(products)  # unchanged
    dataset = SimpleNamespace(products=products, price_rules=[
        {"sku": "SKU-1", "currency": "CNY", "customer_group": "A", "valid_from": date(2026, 10, 1),
         "valid_to": date(2100, 1, 1), "price": D("8.00"), "discount_pct": D("5"),
         "updated_at": t0 + timedelta(minutes=1)},
        {"sku": "SKU-1", "currency": "CNY", "customer_group": None, "valid_from": None,
         "valid_to": None, "price": None, "discount_pct": D("2.5"),
         "updated_at": t0 + timedelta(minutes=2)},
    ])
    app = KingdeeFake(dataset)
    reset_rate_limits()
    with FakeServer(app) as server:
        conn = KingdeeConnector("erp", {
            "system": "kingdee", "base_url": server.url + app.base_path,
            "auth": app.credentials(), "options": {"price_rules_filter": "FCustTypeId.FNumber<>''"},
            "rate_limit": 0})
        grouped = [r for page in conn.read("price_rules", None) for r in page.records]
        conn.options["price_rules_filter"] = ""
        records = [r for page in conn.read("price_rules", None) for r in page.records]
    reset_rate_limits()
    assert [r.external_id for r in grouped] == ["500001"]
    mapped = [(r, conn.map("price_rules", r.payload)) for r in records]
    assert [m for _, m in mapped] == [
        {"external_id": "1", "sku": "SKU-1", "currency": "CNY", "customer_group": None,
         "valid_from": None, "valid_to": None, "price": D("10.00"), "discount_pct": None,
         "updated_at": t0},
        {"external_id": "500001", "sku": "SKU-1", "currency": "CNY", "customer_group": "A",
         "valid_from": date(2026, 10, 1), "valid_to": date(2100, 1, 1), "price": D("8.00"),
         "discount_pct": D("5"), "updated_at": t0 + timedelta(minutes=1)},
        {"external_id": "500002", "sku": "SKU-1", "currency": "CNY", "customer_group": None,
         "valid_from": None, "valid_to": None, "price": None, "discount_pct": D("2.5"),
         "updated_at": t0 + timedelta(minutes=2)},
    ]
    counts = land_batch(wh, _run(), "erp", "price_rules", "price_rules", records, mapped, [], None)
    assert (counts.new, counts.rejected) == (3, 0)

    b = {"code": "C00002", "customer_id": 2}
    _add(wh, [
        _order("a", lines=[("SKU-1", "1", "7.60")]),  # group A: 8.00 less 5 %
        # everyone else: the discount-only rule beats the plain row (same specificity, loaded
        # later): 10.00 less 2.5 % = 9.75
        _order("b", **b, lines=[("SKU-1", "1", "9.75")]),
        _order("b-list", **b, lines=[("SKU-1", "1", "10.00")]),
    ])
    assert {ext: v for ext, (v, _) in _sql_failures(wh, PRICE).items()} == {
        "b-list": "line 1 SKU-1 10.00 vs 9.75 (rule 500002, all customers, list 10.00 less 2.5%)"}
