"""The quality gate: suite validation, exact row-level outcomes, reruns, errors, the report.

A small staged batch is built by hand: one clean order and one order per failing check, so every
assertion names exactly which order fails which check. Great Expectations is imported once per
process (3-5 s); each gate run after that costs well under a second.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select

from checks import suite as suite_mod
from checks.gate import GateError, run_gate
from checks.report import quarantine_table, write_report
from checks.suite import CheckSpec, load_suite
from warehouse import schema as s

ROOT = Path(__file__).resolve().parents[1]
RUN0 = "00000000-0000-0000-0000-000000000000"  # the run that "loaded" the batch

SUITE = [
    {"id": "customer_known", "severity": "error"},
    {"id": "price_matches_list", "severity": "error", "tolerance": "0.01"},
    {"id": "qty_positive", "severity": "error"},
    {"id": "sku_known", "severity": "error"},
    {"id": "currency_allowed", "severity": "error", "allowed": ["CNY", "USD"]},
    {"id": "required_fields", "severity": "error",
     "fields": ["customer", "currency", "ordered_at", "ship_region", "lines"]},
    {"id": "not_duplicate", "severity": "error"},
]

# external_id -> the checks it must fail (empty: clean)
EXPECTED: dict[str, set[str]] = {
    "clean": set(),
    "clean-usd": set(),
    "unknown-customer": {"customer_known"},
    "price-off": {"price_matches_list"},
    "qty-negative": {"qty_positive"},
    "sku-unknown": {"sku_known"},
    "currency-eur": {"currency_allowed"},
    "no-region": {"required_fields"},
    "no-lines": {"required_fields"},
    "copy-of-clean": {"not_duplicate"},
}


# --- the batch ---------------------------------------------------------------------------------


def _order(ext: str, *, code: str | None = "C00001", email: str | None = None,
           customer_id: int | None = 1, currency: str | None = "CNY",
           ship_region: str | None = "east", at: datetime | None = None,
           lines: list[tuple[str | None, str | None, str | None]] | None = None) -> dict:
    at = at or datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    lines = [("SKU-1", "2", "10.00")] if lines is None else lines
    total = sum((Decimal(q or 0) * Decimal(p or 0) for _, q, p in lines), Decimal("0"))
    key = repr(sorted((sku or "", q or "", p or "") for sku, q, p in lines))
    return {
        "source": "crm", "external_id": ext, "order_no": f"NO-{ext}", "customer_code": code,
        "customer_email": email, "customer_id": customer_id, "ordered_at": at,
        "source_updated_at": at, "currency": currency, "total": total.quantize(Decimal("0.01")),
        "ship_region": ship_region, "order_date": at.date(),
        "lines_hash": hashlib.sha256(key.encode()).hexdigest(), "status": "captured",
        "content_hash": ext, "captured_at": at, "run_id": RUN0, "lines": lines,
    }


def _batch() -> list[dict]:
    later = datetime(2026, 11, 1, 10, 30, tzinfo=UTC)
    return [
        # the boundary: 20.01 vs list 20.00 is exactly the tolerance, so it passes
        _order("clean", lines=[("SKU-1", "2", "10.00"), ("SKU-2", "1", "20.01")]),
        _order("clean-usd", code=None, email="b@example.com", customer_id=2, currency="USD",
               lines=[("SKU-1", "3", "1.50")]),
        _order("unknown-customer", code="C99999", customer_id=None),
        _order("price-off", lines=[("SKU-1", "1", "10.02")]),
        _order("qty-negative", lines=[("SKU-1", "1", "10.00"), ("SKU-2", "-1", "20.00")]),
        _order("sku-unknown", lines=[("<b>SKU-404</b>", "1", "5.00")]),
        _order("currency-eur", currency="EUR", lines=[("SKU-1", "1", "9.00")]),
        _order("no-region", ship_region=None),
        _order("no-lines", lines=[]),
        # same customer, date, currency, total and lines as "clean", ordered later
        _order("copy-of-clean", at=later, lines=[("SKU-1", "2", "10.00"), ("SKU-2", "1", "20.01")]),
    ]


def _load(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(s.customers), [
            {"id": 1, "code": "C00001", "email": "a@example.com", "source": "crm",
             "external_id": "1", "content_hash": "h", "run_id": RUN0},
            {"id": 2, "code": "C00002", "email": "b@example.com", "source": "crm",
             "external_id": "2", "content_hash": "h", "run_id": RUN0},
        ])
        conn.execute(insert(s.products), [
            {"sku": sku, "name": sku, "source": "erp", "run_id": RUN0} for sku in ("SKU-1", "SKU-2")
        ])
        conn.execute(insert(s.prices), [
            {"sku": sku, "currency": cur, "price": Decimal(p), "source": "erp",
             "content_hash": "h", "run_id": RUN0}
            for sku, cur, p in (("SKU-1", "CNY", "10.00"), ("SKU-1", "USD", "1.50"),
                                ("SKU-2", "CNY", "20.00"))
        ])
    _add_orders(engine, _batch())


def _add_orders(engine: Engine, batch: list[dict]) -> None:
    with engine.begin() as conn:
        for o in batch:
            lines = o.pop("lines")
            oid = conn.execute(insert(s.orders).values(**o).returning(s.orders.c.id)).scalar_one()
            if lines:
                conn.execute(insert(s.order_lines), [
                    {"order_id": oid, "line_no": n, "sku": sku,
                     "qty": None if q is None else Decimal(q),
                     "unit_price": None if p is None else Decimal(p),
                     "amount": Decimal(q or 0) * Decimal(p or 0), "run_id": RUN0}
                    for n, (sku, q, p) in enumerate(lines, start=1)
                ])


@pytest.fixture
def wh(engine: Engine) -> Engine:
    """A fresh migrated warehouse (SQLite file, then PostgreSQL) holding the hand-built batch."""
    _load(engine)
    return engine


def _status(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {ext: st for ext, st in conn.execute(select(s.orders.c.external_id, s.orders.c.status))}


def _failing(engine: Engine) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {ext: set() for ext in _status(engine)}
    with engine.connect() as conn:
        for ext, check in conn.execute(
            select(s.orders.c.external_id, s.quarantine.c.check_id)
            .join(s.quarantine, s.quarantine.c.order_id == s.orders.c.id)
        ):
            out[ext].add(check)
    return out


def _snapshot(engine: Engine) -> dict[str, list]:
    tables = (s.orders, s.quarantine, s.order_events)
    with engine.connect() as conn:
        return {t.name: sorted(map(tuple, conn.execute(select(t)).all()), key=repr)
                for t in tables}


def _run_id() -> str:
    return str(uuid.uuid4())


# --- suite validation (no database, no GE) -----------------------------------------------------


def test_load_suite_reads_the_declared_suite() -> None:
    specs = load_suite(SUITE)
    assert [x.id for x in specs] == [c["id"] for c in SUITE]
    price = specs[1]
    assert price.tolerance == Decimal("0.01") and isinstance(price.tolerance, Decimal)
    assert specs[4].allowed == ("CNY", "USD")
    assert specs[5].fields == ("customer", "currency", "ordered_at", "ship_region", "lines")
    assert all(x.blocking for x in specs)
    assert load_suite([{"id": "qty_positive", "severity": "warn"}])[0].blocking is False
    # YAML reads an unquoted 0.01 as a float: taken by its literal, never as binary float
    assert load_suite([{"id": "price_matches_list", "tolerance": 0.01}])[0].tolerance == Decimal(
        "0.01")
    assert load_suite(None) == []


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"id": "spelling"}], "checks[0] spelling: id: unknown check"),
        ([{"id": "qty_positive", "severity": "fatal"}],
         "checks[0] qty_positive: severity: 'fatal' is not one of error, warn"),
        ([{"id": "price_matches_list", "tolerance": "abc"}],
         "checks[0] price_matches_list: tolerance: 'abc' is not a decimal number"),
        ([{"id": "price_matches_list", "tolerance": "-1"}],
         "checks[0] price_matches_list: tolerance: '-1' must be a non-negative number"),
        ([{"id": "price_matches_list", "tolerance": "0.00001"}],
         "checks[0] price_matches_list: tolerance: '0.00001' has more than 4 decimals"),
        ([{"id": "qty_positive"}, {"id": "sku_known", "tolerance": "1"}],
         "checks[1] sku_known: tolerance: not an option of this check"),
        ([{"id": "currency_allowed"}], "checks[0] currency_allowed: allowed: required"),
        ([{"id": "currency_allowed", "allowed": ["usd"]}],
         "checks[0] currency_allowed: allowed: 'usd' is not a three-letter"),
        ([{"id": "currency_allowed", "allowed": ["CNY'); DROP TABLE orders; --"]}],
         "checks[0] currency_allowed: allowed:"),
        ([{"id": "required_fields", "fields": ["colour"]}],
         "checks[0] required_fields: fields: 'colour' is not a known field"),
        ([{"id": "qty_positive"}, {"id": "qty_positive"}], "checks[1] qty_positive: id: declared"),
        ([{"severity": "error"}], "checks[0]: id: missing"),
        ("qty_positive", "checks: expected a list"),
    ],
)
def test_load_suite_names_the_check_and_key(items, message: str) -> None:
    with pytest.raises(ValueError) as err:
        load_suite(items)
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text


ALL_VARIANTS = SUITE + [
    {"id": "credit_limit"},
    {"id": "stock_plausible", "factor": "1.5", "max_qty": "100"},
    {"id": "address_complete",
     "fields": ["ship_region", "region_known", "customer_code", "customer_email", "contact"]},
]


@pytest.mark.parametrize("variant", [
    {},
    {"price_matches_list": {"tolerance": {"CNY": "0.05", "default": "0.01"}},
     "not_duplicate": {"key": "external_ids"},
     "credit_limit": {"include": ["receivables"]}},
])
def test_every_check_query_joins_the_batch_the_same_way(variant: dict) -> None:
    # GE substitutes {batch} differently for queries without a JOIN; ours all have one.
    items = [{**c, **variant.get(c["id"], {})} for c in ALL_VARIANTS]
    specs = load_suite(items)
    assert {x.id for x in specs} == set(suite_mod.CHECK_IDS)
    for spec in specs:
        for dialect in ("sqlite", "postgresql"):
            sql = spec.sql(dialect)
            assert "FROM {batch} AS b JOIN orders o ON o.id = b.id" in sql
            assert sql.count("{") == sql.count("{batch} AS b") >= 1  # always aliased by us
            assert ":" not in sql  # SQLAlchemy bind syntax
        assert "%" not in spec.sql("postgresql")  # psycopg's parameter marker


@pytest.mark.parametrize("module", ["checks.suite", "checks.gate", "checks.report"])
def test_importing_checks_does_not_import_great_expectations(module: str) -> None:
    code = f"import sys, {module}; sys.exit('great_expectations' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or f"{module} imported great_expectations"


# --- the gate ----------------------------------------------------------------------------------


def test_gate_quarantines_exactly_the_failing_orders(wh: Engine, tmp_path: Path) -> None:
    run_id = _run_id()
    result = run_gate(wh, run_id, load_suite(SUITE))

    assert _failing(wh) == EXPECTED
    status = _status(wh)
    assert {ext for ext, st in status.items() if st == "validated"} == {"clean", "clean-usd"}
    assert {ext for ext, st in status.items() if st == "quarantined"} == set(EXPECTED) - {
        "clean", "clean-usd"}

    assert result.evaluated == len(EXPECTED)
    assert (result.quarantined, result.validated) == (8, 2)
    counts = {c.check_id: (c.evaluated, c.failed, c.success, c.error) for c in result.checks}
    want = {c["id"]: sum(c["id"] in v for v in EXPECTED.values()) for c in SUITE}
    assert counts == {c: (10, n, n == 0, None) for c, n in want.items()}
    assert result.as_table()[0] == {"check": "customer_known", "severity": "error",
                                    "evaluated": 10, "failed": 1, "success": False, "error": ""}

    with wh.connect() as conn:
        recorded = {r.check_id: (r.evaluated, r.failed, bool(r.success), r.error)
                    for r in conn.execute(select(s.check_results)
                                          .where(s.check_results.c.run_id == run_id))}
        events = conn.execute(select(func.count()).select_from(s.order_events)
                              .where(s.order_events.c.run_id == run_id)).scalar_one()
    assert recorded == counts
    assert events == len(EXPECTED)

    rows = {(r["external_id"], r["check"]): r for r in quarantine_table(wh, run_id)}
    assert rows[("unknown-customer", "customer_known")]["value"] == "code C99999"
    assert rows[("currency-eur", "currency_allowed")]["value"] == "EUR"
    assert rows[("no-region", "required_fields")]["value"] == "ship_region"
    assert rows[("no-lines", "required_fields")]["value"] == "lines"
    assert rows[("sku-unknown", "sku_known")]["value"] == "line 1 <b>SKU-404</b>"
    assert rows[("copy-of-clean", "not_duplicate")]["value"] == "crm NO-clean"
    qty = rows[("qty-negative", "qty_positive")]["value"]
    assert qty.startswith("line 2 qty ") and Decimal(qty.split()[-1]) == -1
    price = rows[("price-off", "price_matches_list")]
    assert price["value"].startswith("line 1 SKU-1 10.02")
    assert "0.01" in price["reason"] and price["status"] == "open"
    assert rows[("price-off", "price_matches_list")]["total"] == "10.02"

    # the report: self-contained, escaped, naming the failing orders and checks
    path = write_report(wh, run_id, tmp_path / "reports")
    page = path.read_text(encoding="utf-8")
    assert path.name == f"checks-{run_id}.html"
    assert "&lt;b&gt;SKU-404&lt;/b&gt;" in page and "<b>SKU-404" not in page
    assert "NO-copy-of-clean" in page and "not_duplicate" in page and run_id in page
    assert "(external id clean)" not in page and "clean-usd" not in page  # validated: not listed
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert not list(path.parent.glob("*.tmp"))

    # a rerun finds nothing captured: nothing evaluated, nothing changed
    before = _snapshot(wh)
    again = run_gate(wh, _run_id(), load_suite(SUITE))
    assert (again.evaluated, again.quarantined, again.validated) == (0, 0, 0)
    assert all(c.evaluated == 0 and c.failed == 0 for c in again.checks)
    assert _snapshot(wh) == before


def test_warn_severity_is_recorded_but_the_order_passes(wh: Engine) -> None:
    items = [dict(c, severity="warn") if c["id"] == "qty_positive" else c for c in SUITE]
    run_id = _run_id()
    result = run_gate(wh, run_id, load_suite(items))

    assert _status(wh)["qty-negative"] == "validated"
    assert "qty-negative" not in {r["external_id"] for r in quarantine_table(wh, run_id)}
    qty = next(c for c in result.checks if c.check_id == "qty_positive")
    assert (qty.severity, qty.failed, qty.success) == ("warn", 1, False)
    assert (result.quarantined, result.validated) == (7, 3)


def test_a_released_order_that_fails_again_is_reopened_not_duplicated(wh: Engine) -> None:
    from warehouse.orders import transition

    run_gate(wh, _run_id(), load_suite(SUITE))
    with wh.begin() as conn:  # ops release it unfixed
        oid = conn.execute(select(s.orders.c.id)
                           .where(s.orders.c.external_id == "price-off")).scalar_one()
        conn.execute(s.quarantine.update().where(s.quarantine.c.order_id == oid)
                     .values(status="released"))
        transition(conn, [oid], "captured", RUN0, "released by ops")

    second = _run_id()
    result = run_gate(wh, second, load_suite(SUITE))
    assert (result.evaluated, result.quarantined, result.validated) == (1, 1, 0)
    with wh.connect() as conn:
        rows = conn.execute(select(s.quarantine.c.status, s.quarantine.c.run_id)
                            .where(s.quarantine.c.order_id == oid)).all()
    assert [tuple(r) for r in rows] == [("open", second)]


def test_duplicates_rank_gated_orders_first_then_by_order_time(wh: Engine) -> None:
    run_gate(wh, _run_id(), load_suite(SUITE))  # "clean" is validated now
    early, noon, eleven = (datetime(2026, 11, 1, h, 0, tzinfo=UTC) for h in (8, 12, 11))
    other = [("SKU-2", "3", "20.00")]
    _add_orders(wh, [
        # a copy of the validated "clean", ordered earlier but arriving later: still the copy
        _order("late-copy", at=early, lines=[("SKU-1", "2", "10.00"), ("SKU-2", "1", "20.01")]),
        # two new twins in one batch: the one ordered later is the duplicate, whatever the ids
        _order("twin-noon", at=noon, lines=other),
        _order("twin-eleven", at=eleven, lines=other),
        _order("twin-third", at=noon + timedelta(minutes=5), lines=other),
    ])
    run_id = _run_id()
    run_gate(wh, run_id, load_suite(SUITE))
    dup = {r["external_id"]: r["value"] for r in quarantine_table(wh, run_id)
           if r["check"] == "not_duplicate"}
    assert dup == {"late-copy": "crm NO-clean", "twin-noon": "crm NO-twin-eleven",
                   "twin-third": "crm NO-twin-eleven"}
    assert _status(wh)["twin-eleven"] == "validated"


def test_an_erroring_check_is_reported_and_quarantines_nothing(
    wh: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(spec: CheckSpec, dialect: str) -> str:
        return ("SELECT o.id AS order_id, o.no_such_column AS value, 'x' AS reason "
                "FROM {batch} AS b JOIN orders o ON o.id = b.id")

    monkeypatch.setitem(suite_mod._SQL, "sku_known", broken)
    before = _snapshot(wh)
    run_id = _run_id()
    with pytest.raises(GateError) as err:
        run_gate(wh, run_id, load_suite(SUITE))

    message = str(err.value)
    assert "'sku_known' errored" in message and "no_such_column" in message
    assert "no order was quarantined or validated" in message and "\n" not in message
    assert _snapshot(wh) == before  # every order still captured, no quarantine, no events
    with wh.connect() as conn:
        recorded = {r.check_id: (bool(r.success), r.error) for r in conn.execute(
            select(s.check_results).where(s.check_results.c.run_id == run_id))}
    assert recorded["sku_known"][0] is False and "no_such_column" in recorded["sku_known"][1]
    assert all(ok and error is None for c, (ok, error) in recorded.items() if c != "sku_known")

    # fixed, the next gate judges the same batch as usual
    monkeypatch.undo()
    run_gate(wh, _run_id(), load_suite(SUITE))
    assert _failing(wh) == EXPECTED


def test_no_checks_declared_validates_the_batch(wh: Engine) -> None:
    result = run_gate(wh, _run_id(), [])
    assert (result.evaluated, result.validated, result.checks) == (10, 10, [])
    assert set(_status(wh).values()) == {"validated"}


def test_in_memory_sqlite_is_refused_clearly() -> None:
    from warehouse.engine import make_engine

    with pytest.raises(GateError, match="not in-memory"):
        run_gate(make_engine("sqlite://"), _run_id(), load_suite(SUITE))


def test_report_for_a_run_without_quarantine(wh: Engine, tmp_path: Path) -> None:
    path = write_report(wh, "no-such-run", tmp_path / "r.html")
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "r.html"
    assert "No order was quarantined in this run." in page
    assert date.today().isoformat()[:4] in page
