"""create_invoices overlaps its database work with building the next chunk's rows (a worker
runs every statement, in order). These tests use a tiny CHUNK so that every invoice run spans
several chunks: numbering, ids, lines and outbox rows must agree across chunks, a clash in a
later chunk must still undo everything, and nothing may run on the connection afterwards."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select
from test_invoicing_policies import RUN, T0, YAML, _queued, invoice_rows, seed, sequences

from warehouse import invoicing
from warehouse import schema as s
from warehouse.engine import ConnectionWorker
from warehouse.invoicing import (
    InvoicingConfig,
    InvoicingError,
    create_invoices,
    enqueue_invoices,
)

H = timedelta(hours=1)
CFG = InvoicingConfig.from_config({**YAML, "channels": {}})


def _seed_mixed(engine: Engine) -> list[int]:
    """Eleven pushed orders of two companies and one plain source, captured out of time order
    and with one to three lines each; their ids in (ordered_at, id) order."""
    plan = [("kingdee", "CNY", 5), ("shopify", "USD", 2), ("woo", "USD", 9),
            ("jiandaoyun", "CNY", 0), ("kingdee", "CNY", 7), ("shopify", "USD", 2),
            ("woo", "USD", 1), ("kingdee", "CNY", 3), ("jiandaoyun", "CNY", 8),
            ("shopify", "USD", 6), ("kingdee", "CNY", 4)]
    made = []
    with engine.begin() as conn:
        for n, (source, currency, hours) in enumerate(plan):
            lines = [(f"SKU-{9 if k == 1 else 1}{n}", str(k + 1), f"{n + 1}.{k}5")
                     for k in range(n % 3 + 1)]
            oid = seed(conn, source, f"E{n}", lines, order_no=f"#{n}", currency=currency,
                       ordered_at=T0 + hours * H)
            made.append((T0 + hours * H, oid))
    return [oid for _, oid in sorted(made)]


def test_numbers_ids_lines_and_outbox_agree_across_chunks(engine: Engine, monkeypatch) -> None:
    monkeypatch.setattr(invoicing, "CHUNK", 3)
    in_order = _seed_mixed(engine)
    assert create_invoices(engine, RUN, CFG, "kingdee") == 11
    made = invoice_rows(engine)
    with engine.connect() as conn:
        source = dict(conn.execute(select(s.orders.c.id, s.orders.c.source)).all())
        order_lines = {}
        for r in conn.execute(select(s.order_lines).order_by(s.order_lines.c.line_no)):
            order_lines.setdefault(r.order_id, []).append(r)
        lines: dict[int, list[Any]] = {}
        for r in conn.execute(select(s.invoice_lines).order_by(s.invoice_lines.c.line_no)):
            lines.setdefault(r.invoice_id, []).append(r)
    # numbering: gap-free per company, in (ordered_at, id) order over all chunks
    expected, count = {}, {"cn": 0, "us": 0}
    for oid in in_order:
        company = {"kingdee": "cn", "jiandaoyun": "cn", "shopify": "us"}.get(source[oid])
        if company is None:
            expected[oid] = "INV-woo-" + made[oid].order_ref.replace("#", "")
            continue
        count[company] += 1
        expected[oid] = (f"CN-INV-{count[company]:06d}" if company == "cn"
                         else f"US-INV-{count[company]:04d}")
    assert {oid: r.invoice_no for oid, r in made.items()} == expected
    assert sequences(engine) == {"invoice:cn": 6, "invoice:us": 3}
    # the ids given ahead follow the numbering order too
    ids = [made[oid].id for oid in in_order]
    assert ids == sorted(ids)
    # each invoice's lines are its own order's lines and add up to its totals
    assert set(lines) == {r.id for r in made.values()}
    for oid, inv in made.items():
        mine = lines[inv.id]
        assert [(ln.line_no, ln.sku, ln.qty) for ln in mine] == [
            (ol.line_no, ol.sku, ol.qty) for ol in order_lines[oid]]
        assert (sum(ln.net_amount for ln in mine), sum(ln.tax_amount for ln in mine),
                sum(ln.amount for ln in mine)) == (inv.net_amount, inv.tax_amount, inv.amount)
    # each outbox row is its invoice's: the order, the number, the lines
    queued = _queued(engine)
    assert len(queued) == 11
    for row in queued.values():
        inv = made[row["order_id"]]
        assert row["payload"]["invoice_no"] == inv.invoice_no
        assert row["payload"]["amount"] == str(inv.amount)
        assert [ln["sku"] for ln in row["payload"]["lines"]] == [
            ln.sku for ln in lines[inv.id]]
    # and just what enqueue_invoices builds from the stored invoices
    assert enqueue_invoices(engine, RUN, "kingdee") == 0
    with engine.begin() as conn:
        conn.execute(s.outbox.delete())
        conn.execute(s.stage_marks.delete())
    assert enqueue_invoices(engine, RUN, "kingdee") == 11
    assert _queued(engine) == queued


def test_a_taken_number_in_a_later_chunk_undoes_every_chunk(engine: Engine,
                                                           monkeypatch) -> None:
    """Chunks 1 and 2 are written (on PostgreSQL by the worker) before chunk 3 meets a number
    issued by hand: nothing of the run may stay, and no number is consumed."""
    monkeypatch.setattr(invoicing, "CHUNK", 2)
    with engine.begin() as conn:
        old = seed(conn, "kingdee", "K0", [("SKU-1", "1", "1.00")], path=())
        conn.execute(insert(s.invoices).values(
            invoice_no="CN-INV-000005", order_id=old, currency="CNY", amount=D(1),
            issued_at=T0, run_id=RUN))
        for n in range(6):
            seed(conn, "kingdee", f"K{n + 1}", [("SKU-1", "1", "1.00")], ordered_at=T0 + n * H)
    for _ in range(2):  # a second try finds the same state and fails the same way
        with pytest.raises(InvoicingError, match=r"^invoicing: CN-INV-000005 could not"):
            create_invoices(engine, RUN, CFG, "kingdee")
        assert set(invoice_rows(engine)) == {old}
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(s.invoice_lines)) == 0
            assert conn.scalar(select(func.count()).select_from(s.outbox)) == 0
            assert set(conn.scalars(select(s.orders.c.status).where(s.orders.c.id != old))) == {
                "pushed"}
        assert sequences(engine) == {}
    assert not _db_threads()


def test_a_plain_number_clash_sees_the_earlier_chunk(engine: Engine, monkeypatch,
                                                     caplog) -> None:
    """Two orders whose deterministic numbers clash, in different chunks: the second one's
    check runs after the first one's insert, so it is skipped (not a failed insert)."""
    monkeypatch.setattr(invoicing, "CHUNK", 1)
    with engine.begin() as conn:
        first = seed(conn, "woo", "W1", [("SKU-1", "1", "1.00")], order_no="#W-1",
                     currency="USD")
        seed(conn, "woo", "W2", [("SKU-1", "1", "2.00")], order_no="W-1", currency="USD",
             ordered_at=T0 + H)
        third = seed(conn, "woo", "W3", [("SKU-1", "1", "3.00")], currency="USD",
                     ordered_at=T0 + 2 * H)
    with caplog.at_level(logging.WARNING):
        assert create_invoices(engine, RUN, CFG, "kingdee") == 2
    assert {oid: r.invoice_no for oid, r in invoice_rows(engine).items()} == {
        first: "INV-woo-W-1", third: "INV-woo-W3"}
    assert "1 pushed order(s) not invoiced: invoice number already taken" in caplog.text
    assert sorted(_queued(engine)) == ["kingdee:invoice:INV-woo-W-1", "kingdee:invoice:INV-woo-W3"]


def test_a_failure_while_building_rows_undoes_everything_and_stops_the_worker(
        engine: Engine, monkeypatch) -> None:
    monkeypatch.setattr(invoicing, "CHUNK", 2)
    _seed_mixed(engine)
    built = invoicing._invoice_docs
    calls = []

    def fail_third(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return built(*args, **kwargs)

    monkeypatch.setattr(invoicing, "_invoice_docs", fail_third)
    with pytest.raises(RuntimeError, match="^boom$"):
        create_invoices(engine, RUN, CFG, "kingdee")
    assert invoice_rows(engine) == {} and _queued(engine) == {} and sequences(engine) == {}
    assert not _db_threads()
    monkeypatch.setattr(invoicing, "_invoice_docs", built)
    assert create_invoices(engine, RUN, CFG, "kingdee") == 11  # the connection was fine


def _db_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("orderhub-db")]


# --- the worker itself --------------------------------------------------------------------------


@pytest.mark.parametrize("threaded", [True, False])
def test_the_worker_runs_jobs_in_order_and_stops_after_a_failure(threaded: bool) -> None:
    conn: Any = object()  # jobs get it; the worker itself never uses it
    seen: list[str] = []
    gate = threading.Event()

    def job(c: Any, name: str) -> str:
        assert c is conn
        if name == "a" and threaded:
            gate.wait(5)  # b and c are queued meanwhile, and must wait
        seen.append(name)
        if name == "bad":
            raise ValueError("bad job")
        return name.upper()

    worker = ConnectionWorker(conn, threaded)
    futures = [worker.submit(job, n) for n in ("a", "b", "c")]
    gate.set()
    assert [f.result() for f in futures] == ["A", "B", "C"] and seen == ["a", "b", "c"]
    bad, after = worker.submit(job, "bad"), worker.submit(job, "d")
    with pytest.raises(ValueError, match="bad job"):
        bad.result()
    with pytest.raises(ValueError, match="bad job"):  # the first failure, not a wrapper
        after.result()
    assert seen == ["a", "b", "c", "bad"]  # d never touched the connection
    with pytest.raises(ValueError, match="bad job"):  # never committed after a failure
        worker.close(failed=False)
