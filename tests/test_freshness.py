"""warehouse.freshness: a whole-book stage skips only when no run wrote to what it reads."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import Engine, insert

from warehouse import freshness, runs
from warehouse.schema import fx_rates

TABLES = ("fx_rates", "invoices")


def _write_rate(engine: Engine, run_id: str, day: int) -> None:
    with engine.begin() as conn:
        conn.execute(insert(fx_rates).values(base="USD", quote="CNY", rate_date=date(2026, 1, day),
                                             rate=Decimal("7.1"), source="test", run_id=run_id))


def _pass(engine: Engine, key: str = "k") -> str:
    """One run that runs the stage and finishes."""
    rid = runs.start_run(engine, "reconcile")
    t = freshness.now()
    freshness.mark(engine, "stage", rid, t, key, {"paid": 3})
    runs.finish_run(engine, rid, "completed", {})
    return rid


def test_no_mark_means_run_the_stage(engine: Engine) -> None:
    assert freshness.unchanged(engine, "stage", TABLES, "k") is None


def test_nothing_written_since_the_mark_skips_with_the_last_figures(engine: Engine) -> None:
    _pass(engine)
    rid = runs.start_run(engine, "order_to_cash")  # a run that writes nothing here
    assert freshness.unchanged(engine, "stage", TABLES, "k") == {"paid": 3}
    runs.finish_run(engine, rid, "completed", {})
    assert freshness.unchanged(engine, "stage", TABLES, "k") == {"paid": 3}


def test_another_key_runs_the_stage(engine: Engine) -> None:
    _pass(engine, key="config-1")
    assert freshness.unchanged(engine, "stage", TABLES, "config-2") is None


def test_a_later_write_runs_the_stage_again(engine: Engine) -> None:
    _pass(engine)
    rid = runs.start_run(engine, "ingest")
    _write_rate(engine, rid, 1)
    assert freshness.unchanged(engine, "stage", TABLES, "k") is None
    runs.finish_run(engine, rid, "completed", {})
    assert freshness.unchanged(engine, "stage", TABLES, "k") is None
    _pass(engine)  # the stage ran again: now it is current
    assert freshness.unchanged(engine, "stage", TABLES, "k") == {"paid": 3}


def test_a_run_writing_while_the_stage_read_is_caught(engine: Engine) -> None:
    other = runs.start_run(engine, "ingest")  # started before the mark, still going
    _pass(engine)
    _write_rate(engine, other, 2)
    runs.finish_run(engine, other, "completed", {})
    assert freshness.unchanged(engine, "stage", TABLES, "k") is None
