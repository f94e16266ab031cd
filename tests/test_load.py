"""Warehouse plumbing on SQLite and PostgreSQL: engine and migration, runs, order transitions,
and landing (invariants 1, 2, 4, 6, 8)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, insert, select, text, update

from connectors.base import Cursor, RawRecord
from warehouse import load, runs
from warehouse import schema as s
from warehouse.engine import (
    current_revision,
    head_revision,
    in_values,
    make_engine,
    migrate,
    normalize_url,
)
from warehouse.load import LoadCounts, content_hash, get_cursor, land_batch, lines_hash
from warehouse.orders import transition
from warehouse.states import TransitionError

RUN1 = "11111111-1111-4111-8111-111111111111"
RUN2 = "22222222-2222-4222-8222-222222222222"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


# --------------------------------------------------------------------------------- helpers


def order(ext: str, *, lines: list[tuple] | None = None, updated: datetime = T0, **kw) -> dict:
    """A canonical order (docs/internals.md) with (sku, qty, unit_price) lines."""
    lines = lines if lines is not None else [("SKU-1", "2", "10.00"), ("SKU-2", "1", "5.50")]
    return {
        "external_id": ext,
        "order_no": f"#{ext}",
        "customer_code": kw.get("customer_code"),
        "customer_email": kw.get("customer_email", f"{ext}@example.com"),
        "ordered_at": kw.get("ordered_at", datetime(2026, 10, 31, 23, 30, tzinfo=UTC)),
        "updated_at": updated,
        "currency": kw.get("currency", "USD"),
        "total": kw.get("total", Decimal("25.50")),
        "ship_region": kw.get("ship_region", "east"),
        "lines": [
            {"line_no": i + 1, "sku": sku, "qty": Decimal(q), "unit_price": Decimal(p)}
            for i, (sku, q, p) in enumerate(lines)
        ],
    }


def raw_of(rec: dict, payload: dict | None = None) -> RawRecord:
    payload = payload if payload is not None else {"id": rec["external_id"], "v": repr(rec)}
    return RawRecord(rec["external_id"], rec.get("updated_at"), payload)


def land(
    engine: Engine,
    run_id: str,
    kind: str,
    recs: list[dict],
    bad: list[tuple[str, str]] = (),  # type: ignore[assignment]
    cursor: Cursor | None = None,
    source: str = "shop",
) -> LoadCounts:
    canonical = [(raw_of(r), r) for r in recs]
    rejected = [(RawRecord(ext, T0, {"id": ext, "price": "N/A"}), err) for ext, err in bad]
    records = [raw for raw, _ in canonical] + [raw for raw, _ in rejected]
    return land_batch(engine, run_id, source, kind, kind, records, canonical, rejected, cursor)


def count(engine: Engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def rows(engine: Engine, query) -> list:
    with engine.connect() as conn:
        return list(conn.execute(query))


def snapshot(engine: Engine) -> dict[str, list]:
    """Every row of every table, to prove that a rerun wrote nothing."""
    with engine.connect() as conn:
        return {
            t.name: sorted(map(repr, conn.execute(select(t)))) for t in s.metadata.sorted_tables
        }


def statuses(engine: Engine) -> dict[str, str]:
    return dict(rows(engine, select(s.orders.c.external_id, s.orders.c.status)))


# ------------------------------------------------------------------------ engine, migration


def test_migration_matches_metadata(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, s.metadata) == []


def test_migrate_is_idempotent_and_quiet(
    engine: Engine, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        migrate(engine)  # already at head: a no-op
    assert current_revision(engine) == head_revision()
    assert [r for r in caplog.records if r.name.startswith("alembic")] == []
    assert capfd.readouterr() == ("", "")


def test_first_migration_is_quiet_too(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'dir' / 'wh.db'}")  # dirs created
    assert current_revision(engine) is None
    with caplog.at_level(logging.INFO):
        migrate(engine)
    assert current_revision(engine) == head_revision()
    assert [r for r in caplog.records if r.name.startswith("alembic")] == []
    assert capfd.readouterr() == ("", "")
    engine.dispose()


def test_sqlite_engine_settings(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 16384
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -32768


def test_sqlite_transactions_cover_reads_and_ddl(sqlite_engine: Engine) -> None:
    # the driver's legacy mode would autocommit DDL; our BEGIN makes it part of the transaction
    with pytest.raises(RuntimeError), sqlite_engine.begin() as conn:
        conn.execute(text("CREATE TABLE scratch (x INTEGER)"))
        raise RuntimeError("boom")
    with sqlite_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name='scratch'")).scalar() == 0


def test_normalize_url() -> None:
    assert normalize_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalize_url("postgres://u@/db?host=/tmp/x") == "postgresql+psycopg://u@/db?host=/tmp/x"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///var/wh.db") == "sqlite:///var/wh.db"


def test_foreign_keys_enforced(engine: Engine) -> None:
    with pytest.raises(Exception, match="(?i)foreign key"), engine.begin() as conn:
        conn.execute(insert(s.order_lines).values(order_id=999, line_no=1, run_id=RUN1))


def test_datetimes_come_back_aware_utc(engine: Engine) -> None:
    run_id = runs.start_run(engine, "probe")
    started = runs.get_run(engine, run_id)["started_at"]
    assert started.tzinfo is not None and started.utcoffset() == timedelta(0)


def test_in_values_takes_any_number_of_values(engine: Engine) -> None:
    # far beyond SQLite's 32,766 bound variables: sent as one parameter
    ids = list(range(1, 40_001))
    with engine.connect() as conn:
        query = select(func.count()).where(in_values(s.orders.c.id, ids, conn.dialect.name))
        assert conn.execute(query.select_from(s.orders)).scalar_one() == 0
        words = ["a", "b"]
        query = select(func.count()).select_from(s.orders).where(
            in_values(s.orders.c.external_id, words, conn.dialect.name)
        )
        assert conn.execute(query).scalar_one() == 0


# ------------------------------------------------------------------------------------- runs


def test_runs_lifecycle(engine: Engine) -> None:
    parent = runs.start_run(engine, "order_to_cash")
    child = runs.start_run(engine, "ingest", parent_id=parent)
    assert runs.get_run(engine, child)["status"] == "running"
    runs.finish_run(engine, child, "completed", {"total": Decimal("10.50"), "when": T0,
                                                  "counts": LoadCounts(received=3, new=3),
                                                  "sources": {"shop"}, "seconds": 1.5,
                                                  "ratio": float("nan")})
    got = runs.get_run(engine, child)
    assert got["status"] == "completed" and got["parent_id"] == parent
    assert got["finished_at"] >= got["started_at"]
    assert got["summary"] == {
        "total": "10.50",  # exact, as a string: never a float
        "when": "2026-11-01T10:00:00+00:00",
        "counts": {"received": 3, "new": 3, "changed": 0, "unchanged": 0, "amended": 0,
                   "rejected": 0},
        "sources": ["shop"],
        "seconds": 1.5,  # timings stay numbers
        "ratio": "nan",  # JSON has no NaN
    }
    assert [r["id"] for r in runs.list_runs(engine, parent_id=parent)] == [child]
    assert {r["id"] for r in runs.list_runs(engine)} == {parent, child}
    assert runs.list_runs(engine, flow="ingest", status="completed")[0]["id"] == child
    assert runs.get_run(engine, "nope") is None
    with pytest.raises(runs.RunNotFound):
        runs.finish_run(engine, "nope", "failed", {})
    with pytest.raises(ValueError, match="status"):
        runs.finish_run(engine, parent, "done", {})
    with pytest.raises(TypeError, match="summary"):
        runs.finish_run(engine, parent, "failed", {"x": object()})


# ------------------------------------------------------------------------ order transitions


def _ids(engine: Engine) -> dict[str, int]:
    return dict(rows(engine, select(s.orders.c.external_id, s.orders.c.id)))


def test_transition_is_set_based_and_audited(engine: Engine) -> None:
    land(engine, RUN1, "orders", [order("1"), order("2"), order("3")])
    ids = _ids(engine)
    with engine.begin() as conn:
        moved = transition(conn, [ids["1"], ids["2"], ids["1"]], "validated", RUN2, "checks ok")
    assert moved == 2
    assert statuses(engine) == {"1": "validated", "2": "validated", "3": "captured"}
    events = rows(engine, select(s.order_events.c.order_id, s.order_events.c.from_state,
                                 s.order_events.c.to_state, s.order_events.c.reason,
                                 s.order_events.c.run_id).where(s.order_events.c.run_id == RUN2))
    assert sorted(events) == sorted(
        (ids[e], "captured", "validated", "checks ok", RUN2) for e in ("1", "2")
    )
    assert rows(engine, select(s.orders.c.run_id).where(s.orders.c.id == ids["1"])) == [(RUN2,)]
    # a SELECT of ids works the same
    with engine.begin() as conn:
        query = select(s.orders.c.id).where(s.orders.c.status == "validated")
        assert transition(conn, query, "allocated", RUN2, None) == 2
        assert transition(conn, [], "allocated", RUN2, None) == 0


def test_transition_refuses_and_writes_nothing(engine: Engine) -> None:
    land(engine, RUN1, "orders", [order("1"), order("2"), order("3")])
    ids = _ids(engine)
    with engine.begin() as conn:
        transition(conn, [ids["1"]], "validated", RUN1, None)
    before = snapshot(engine)
    with pytest.raises(TransitionError) as err, engine.begin() as conn:
        transition(conn, [ids["1"], ids["2"], ids["3"], 999_999], "allocated", RUN2, None)
    message = str(err.value)
    assert "nothing written" in message
    assert "captured (captured cannot become allocated" in message
    assert f"orders {ids['2']}, {ids['3']}" in message
    assert "unknown order ids: 999999" in message
    assert snapshot(engine) == before


def test_transition_locks_what_it_counted_on_postgresql(pg_engine: Engine) -> None:
    """Two transitions of the same order at once: the second waits for the first's lock, then
    finds the order moved and refuses: never two events from one state."""
    land(pg_engine, RUN1, "orders", [order("1")])
    oid = _ids(pg_engine)["1"]
    outcome: list[str] = []
    with pg_engine.begin() as first:
        transition(first, [oid], "validated", RUN1, "first")

        def second() -> None:
            try:
                with pg_engine.begin() as conn:
                    transition(conn, [oid], "quarantined", RUN2, "second")
                outcome.append("moved")
            except TransitionError as exc:
                outcome.append(str(exc))

        worker = threading.Thread(target=second)
        worker.start()
        worker.join(0.5)
        assert worker.is_alive(), "the second transition must wait for the first's row lock"
    worker.join(10)
    assert len(outcome) == 1 and "validated (validated cannot become quarantined" in outcome[0]
    assert statuses(pg_engine) == {"1": "validated"}
    events = rows(pg_engine, select(s.order_events.c.from_state, s.order_events.c.to_state)
                  .where(s.order_events.c.order_id == oid).order_by(s.order_events.c.id))
    assert events == [(None, "captured"), ("captured", "validated")]


def test_a_big_transition_refreshes_the_orders_statistics_on_postgresql(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner learns the new state within the same transaction: the next stage's
    queries are not planned for a state the statistics think empty."""
    import warehouse.orders as orders_mod

    land(pg_engine, RUN1, "orders", [order(str(i)) for i in range(30)])

    def common_states() -> set[str]:
        with pg_engine.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'orders' "
                "AND attname = 'status'").scalar()
        return set((found or "{}").strip("{}").split(","))

    with pg_engine.begin() as conn:
        conn.exec_driver_sql('ANALYZE "orders"')
    assert common_states() == {"captured"}
    monkeypatch.setattr(orders_mod, "ANALYZE_AFTER_MOVES", 20)
    ids = sorted(_ids(pg_engine).values())
    with pg_engine.begin() as conn:
        transition(conn, ids[:10], "validated", RUN2, None)  # fewer than 20: no ANALYZE
    assert common_states() == {"captured"}
    with pg_engine.begin() as conn:
        transition(conn, ids[10:], "validated", RUN2, None)  # 20: ANALYZE
    assert "validated" in common_states()


# ---------------------------------------------------------------------------------- hashing


def test_content_hash_is_canonical() -> None:
    a = {"b": Decimal("1.50"), "a": [1, {"y": None, "x": T0}]}
    b = {"a": [1, {"x": T0, "y": None}], "b": Decimal("1.50")}
    assert content_hash(a) == content_hash(b)
    assert len(content_hash(a)) == 64
    assert content_hash(a) != content_hash({**a, "b": Decimal("1.51")})
    assert load.canonical_json({"p": Decimal("0.10")}) == '{"p":"0.10"}'


@pytest.mark.parametrize("value", [
    {"z": 1, "a": "é中\U0001F600", "m": "tab\tnl\nnul\x00del\x7f\u2028 \"q\" \\"},
    {"f": [0.1, 100.0, -0.0, 1e15, 1e16, 5e-05, 0.0001, 1.5e-300, 123456789.125]},
    {"small": 6.737756870116006e-05, "big": 2.5e22},  # the stdlib writes both with an exponent
    {"s": "looks like 1e5 or 0.00001", "d": Decimal("0.000010")},
    {"n": 2**70, "neg": -(2**63)},  # beyond 64 bits: orjson refuses, the stdlib writes it
    {2: "b", 10: "a"},  # keys that are not strings: the stdlib's order and text
    {"when": T0, "day": date(2024, 2, 29), "nested": ({"b": None, "a": True},)},
])
def test_canonical_json_is_the_stdlib_text(value: object) -> None:
    # records hash as they always did (stored content hashes stay valid): the orjson text is
    # the stdlib's compact, sorted one, and where it would differ the stdlib's is taken
    assert load.canonical_json(value) == load._stdlib_encode(value)


def test_lines_hash_ignores_order_and_trailing_zeros() -> None:
    one = [{"sku": "A", "qty": Decimal("2"), "unit_price": Decimal("10")},
           {"sku": "B", "qty": Decimal("1"), "unit_price": None}]
    two = [{"sku": "B", "qty": Decimal("1.000"), "unit_price": None},
           {"sku": "A", "qty": Decimal("2.0"), "unit_price": Decimal("10.0000")}]
    assert lines_hash(one) == lines_hash(two)
    assert lines_hash(one) != lines_hash(one[:1])


def test_load_counts_add() -> None:
    total = LoadCounts(3, 1, 1, 1, 0, 0) + LoadCounts(2, 0, 0, 0, 1, 1)
    assert total == LoadCounts(received=5, new=1, changed=1, unchanged=1, amended=1, rejected=1)
    assert total.loaded == 4 and total.as_dict()["received"] == 5


# ---------------------------------------------------------------------------------- landing


def test_new_orders_land_with_lines_events_and_cursor(engine: Engine) -> None:
    cursor = Cursor("2026-11-01T10:00:00Z", "2")
    counts = land(engine, RUN1, "orders", [order("1"), order("2", currency="JPY",
                                                             lines=[("SKU-9", "3", "333.5")])],
                  cursor=cursor)
    assert counts == LoadCounts(received=2, new=2)
    got = rows(engine, select(s.orders).order_by(s.orders.c.external_id))
    assert [(o.external_id, o.status, o.run_id) for o in got] == [
        ("1", "captured", RUN1), ("2", "captured", RUN1)]
    first = got[0]
    assert first.order_date == date(2026, 10, 31)  # the UTC date of ordered_at
    assert first.total == Decimal("25.50") and first.customer_id is None
    assert first.lines_hash == lines_hash(order("1")["lines"])
    assert first.content_hash and first.captured_at.tzinfo is not None
    lines = rows(engine, select(s.order_lines.c.order_id, s.order_lines.c.line_no,
                                s.order_lines.c.sku, s.order_lines.c.qty,
                                s.order_lines.c.unit_price, s.order_lines.c.amount)
                 .order_by(s.order_lines.c.order_id, s.order_lines.c.line_no))
    assert [tuple(line)[1:] for line in lines] == [
        (1, "SKU-1", Decimal("2.000"), Decimal("10.0000"), Decimal("20.00")),
        (2, "SKU-2", Decimal("1.000"), Decimal("5.5000"), Decimal("5.50")),
        (1, "SKU-9", Decimal("3.000"), Decimal("333.5000"), Decimal("1001")),  # JPY: 0 places
    ]
    events = rows(engine, select(s.order_events.c.from_state, s.order_events.c.to_state,
                                 s.order_events.c.run_id))
    assert events == [(None, "captured", RUN1)] * 2
    assert count(engine, s.raw_records, s.raw_records.c.stream == "orders") == 2
    assert get_cursor(engine, "shop", "orders") == cursor
    assert get_cursor(engine, "shop", "customers") is None


def test_rerun_of_the_same_batch_changes_nothing(engine: Engine) -> None:
    batch = [order("1"), order("2")]
    cursor = Cursor("2026-11-01T10:00:00Z", "2")
    land(engine, RUN1, "orders", batch, bad=[("9", "price: not a number")], cursor=cursor)
    before = snapshot(engine)
    again = land(engine, RUN2, "orders", batch, bad=[("9", "price: not a number")], cursor=cursor)
    # the unparseable record is already held as rejected, unchanged: not rejected again
    assert again == LoadCounts(received=3, unchanged=3, rejected=0)
    assert snapshot(engine) == before  # no new events, no rewritten row, not even a run_id


def test_touched_but_unchanged_order_is_unchanged(engine: Engine) -> None:
    land(engine, RUN1, "orders", [order("1")])
    # the source bumped updated_at (e.g. our fulfilment landed there): same content
    counts = land(engine, RUN2, "orders", [order("1", updated=T0 + timedelta(hours=1))])
    assert counts == LoadCounts(received=1, unchanged=1)
    assert rows(engine, select(s.orders.c.run_id)) == [(RUN1,)]


def test_changed_order_returns_to_captured_with_new_lines(engine: Engine) -> None:
    land(engine, RUN1, "orders", [order("1"), order("2")])
    ids = _ids(engine)
    with engine.begin() as conn:
        transition(conn, [ids["1"]], "quarantined", RUN1, "price_matches_list")
    fixed = [order("1", lines=[("SKU-1", "3", "10.00")], total=Decimal("30.00"),
                   updated=T0 + timedelta(hours=1)),
             order("2", lines=[("SKU-3", "1", "1.00")], updated=T0 + timedelta(hours=1))]
    counts = land(engine, RUN2, "orders", fixed)
    assert counts == LoadCounts(received=2, changed=2)
    assert statuses(engine) == {"1": "captured", "2": "captured"}
    assert _ids(engine) == ids  # same rows, updated in place
    got = rows(engine, select(s.order_lines.c.order_id, s.order_lines.c.sku, s.order_lines.c.qty,
                              s.order_lines.c.run_id).order_by(s.order_lines.c.order_id))
    assert got == [(ids["1"], "SKU-1", Decimal("3.000"), RUN2),
                   (ids["2"], "SKU-3", Decimal("1.000"), RUN2)]
    o = rows(engine, select(s.orders).where(s.orders.c.id == ids["1"]))[0]
    assert (o.total, o.run_id, o.lines_hash) == (Decimal("30.00"), RUN2,
                                                 lines_hash(fixed[0]["lines"]))
    assert o.source_updated_at == T0 + timedelta(hours=1)
    back = rows(engine, select(s.order_events.c.order_id, s.order_events.c.from_state,
                               s.order_events.c.to_state).where(s.order_events.c.run_id == RUN2))
    assert back == [(ids["1"], "quarantined", "captured")]  # order 2 never left captured


def test_changed_order_already_acted_on_is_amended_not_applied(engine: Engine) -> None:
    land(engine, RUN1, "orders", [order("1")])
    ids = _ids(engine)
    with engine.begin() as conn:
        transition(conn, [ids["1"]], "validated", RUN1, None)
    changed = order("1", lines=[("SKU-1", "9", "10.00")], updated=T0 + timedelta(hours=1))
    counts = land(engine, RUN2, "orders", [changed])
    assert counts == LoadCounts(received=1, amended=1)
    assert statuses(engine) == {"1": "validated"}
    assert rows(engine, select(s.order_lines.c.qty)) == [(Decimal("2.000"),), (Decimal("1.000"),)]
    # the source's new version is kept in the raw landing
    assert rows(engine, select(s.raw_records.c.run_id)) == [(RUN2,)]


def test_duplicates_in_a_batch_keep_the_newest(engine: Engine) -> None:
    old = order("1", total=Decimal("1.00"))
    new = order("1", total=Decimal("2.00"), updated=T0 + timedelta(minutes=5))
    canonical = [(raw_of(new), new), (raw_of(old), old)]  # newest first: order is not trusted
    counts = land_batch(engine, RUN1, "shop", "orders", "orders", [r for r, _ in canonical],
                        canonical, [], None)
    assert counts == LoadCounts(received=2, new=1, unchanged=1)
    assert rows(engine, select(s.orders.c.total)) == [(Decimal("2.00"),)]
    assert rows(engine, select(s.raw_records.c.source_updated_at)) == [(new["updated_at"],)]


def test_rejected_records_are_kept_then_cleared_when_fixed(engine: Engine) -> None:
    counts = land(engine, RUN1, "orders", [order("1")], bad=[("2", "lines[0].unit_price: N/A")])
    assert counts == LoadCounts(received=2, new=1, rejected=1)
    got = rows(engine, select(s.rejected_records.c.external_id, s.rejected_records.c.error,
                              s.rejected_records.c.payload, s.rejected_records.c.run_id))
    assert got == [("2", "lines[0].unit_price: N/A", '{"id":"2","price":"N/A"}', RUN1)]
    assert count(engine, s.raw_records) == 2  # the raw landing keeps everything received
    counts = land(engine, RUN2, "orders", [order("1"), order("2")])
    assert counts == LoadCounts(received=2, new=1, unchanged=1)
    assert count(engine, s.rejected_records) == 0  # one place only: it is an order now


def test_mapped_but_unstorable_records_are_rejected(engine: Engine) -> None:
    nameless = {"external_id": "c1", "code": None, "name": "X", "email": None, "region": None,
                "customer_group": None, "credit_limit": None, "currency": "CNY", "updated_at": T0}
    dup_lines = order("1")
    dup_lines["lines"][1]["line_no"] = 1
    assert land(engine, RUN1, "customers", [nameless]) == LoadCounts(received=1, rejected=1)
    assert land(engine, RUN1, "orders", [dup_lines]) == LoadCounts(received=1, rejected=1)
    errors = sorted(e for (e,) in rows(engine, select(s.rejected_records.c.error)))
    assert errors == ["code: missing (required to store a customers record)",
                      "lines[1].line_no: duplicate line number 1"]


def test_records_must_be_accounted_for(engine: Engine) -> None:
    rec = order("1")
    with pytest.raises(ValueError, match="every record"):
        land_batch(engine, RUN1, "shop", "orders", "orders", [raw_of(rec)] * 2,
                   [(raw_of(rec), rec)], [], None)
    with pytest.raises(ValueError, match="unknown kind"):
        land_batch(engine, RUN1, "shop", "orders", "invoices", [], [], [], None)


def test_failing_batch_leaves_nothing_not_even_the_cursor(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Cursor("2026-11-01T10:00:00Z", "1")
    land(engine, RUN1, "orders", [order("1")], cursor=first)
    before = snapshot(engine)
    # a canonical record the database refuses, after raw rows were already written
    broken = order("3", lines=[("SKU-1", "1", "1.00")])
    broken["lines"][0]["qty"] = "one"
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error type differs
        land(engine, RUN2, "orders", [order("2"), broken], bad=[("4", "bad")],
             cursor=Cursor("2026-11-02T00:00:00Z", "3"))
    assert snapshot(engine) == before
    assert get_cursor(engine, "shop", "orders") == first

    # and the other way round: the rows never commit without their cursor
    def fail(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(load, "_save_cursor", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        land(engine, RUN2, "orders", [order("2")], cursor=Cursor("2026-11-02T00:00:00Z", "2"))
    assert snapshot(engine) == before


def test_masters_payments_and_stock(engine: Engine) -> None:
    cust = [{"external_id": f"j{i}", "code": f"C{i}", "name": f"N{i}", "email": f"c{i}@x.com",
             "region": "east", "customer_group": "retail", "credit_limit": Decimal("1000.00"),
             "currency": "CNY", "updated_at": T0} for i in (1, 2)]
    price = [{"external_id": f"p{i}-{cur}", "sku": f"SKU-{i}", "name": f"Widget {i}",
              "currency": cur, "price": Decimal("9.9900"), "updated_at": T0}
             for i in (1, 2) for cur in ("CNY", "USD")]
    stk = [{"external_id": f"s{i}", "sku": f"SKU-{i}", "warehouse": "WH-EAST", "region": "east",
            "qty": Decimal(10 * i), "updated_at": T0} for i in (1, 2)]
    pay = [{"external_id": "r1", "reference": "#1", "customer_code": "C1", "currency": "CNY",
            "amount": Decimal("99.95"), "received_at": T0, "updated_at": T0}]
    assert land(engine, RUN1, "customers", cust, source="crm") == LoadCounts(2, new=2)
    assert land(engine, RUN1, "prices", price, source="erp") == LoadCounts(4, new=4)
    assert land(engine, RUN1, "stock", stk, source="erp") == LoadCounts(2, new=2)
    assert land(engine, RUN1, "payments", pay, source="erp") == LoadCounts(1, new=1)
    assert rows(engine, select(s.products.c.sku, s.products.c.name, s.products.c.run_id)
                .order_by(s.products.c.sku)) == [("SKU-1", "Widget 1", RUN1),
                                                 ("SKU-2", "Widget 2", RUN1)]
    assert rows(engine, select(s.warehouses)) == [("WH-EAST", "east", RUN1)]
    assert rows(engine, select(s.payments.c.amount, s.payments.c.received_at)) == [
        (Decimal("99.95"), T0)]

    # allocations hold stock; a new stock level from the source must never touch `reserved`
    with engine.begin() as conn:
        conn.execute(update(s.stock).where(s.stock.c.sku == "SKU-1").values(reserved=Decimal(4)))
    stk[0]["qty"] = Decimal(7)
    price[0]["price"] = Decimal("10.5000")
    cust[1]["email"] = "new@x.com"
    assert land(engine, RUN2, "stock", stk, source="erp") == LoadCounts(2, changed=1, unchanged=1)
    assert land(engine, RUN2, "prices", price, source="erp") == LoadCounts(4, changed=1,
                                                                           unchanged=3)
    assert land(engine, RUN2, "customers", cust, source="crm") == LoadCounts(2, changed=1,
                                                                             unchanged=1)
    assert rows(engine, select(s.stock.c.on_hand, s.stock.c.reserved, s.stock.c.run_id)
                .where(s.stock.c.sku == "SKU-1")) == [(Decimal("7.000"), Decimal("4.000"), RUN2)]
    assert rows(engine, select(s.prices.c.price).where(s.prices.c.sku == "SKU-1",
                                                       s.prices.c.currency == "CNY")) == [
        (Decimal("10.5000"),)]
    assert rows(engine, select(s.customers.c.email, s.customers.c.run_id)
                .order_by(s.customers.c.code)) == [("c1@x.com", RUN1), ("new@x.com", RUN2)]
    # unchanged product names and warehouse regions are not rewritten
    assert {r for (r,) in rows(engine, select(s.products.c.run_id))} == {RUN1}


def test_every_written_row_carries_its_run_id(engine: Engine) -> None:
    land(engine, RUN1, "orders", [order("1"), order("2")], bad=[("3", "bad")],
         cursor=Cursor("2026-11-01T10:00:00Z", "2"))
    land(engine, RUN1, "stock", [{"external_id": "s", "sku": "A", "warehouse": "W",
                                  "region": None, "qty": Decimal(1), "updated_at": T0}])
    land(engine, RUN1, "prices", [{"external_id": "p", "sku": "A", "name": None,
                                   "currency": "USD", "price": Decimal(1), "updated_at": T0}])
    with engine.connect() as conn:
        for table in s.metadata.sorted_tables:
            if "run_id" in table.c and conn.execute(select(func.count()).select_from(table)
                                                    ).scalar_one():
                got = set(conn.execute(select(table.c.run_id).distinct()).scalars())
                assert got == {RUN1}, table.name


def _customers(*pairs: tuple[str, str | None]) -> list[dict]:
    return [{"external_id": c, "code": c, "name": c, "email": e, "region": "east",
             "customer_group": None, "credit_limit": None, "currency": "CNY", "updated_at": T0}
            for c, e in pairs]


def test_resolve_customers_by_code_else_email(engine: Engine) -> None:
    land(engine, RUN1, "customers", _customers(("C1", "one@x.com"), ("C2", "Two@X.com"),
                                               ("C3", "dup@x.com"), ("C4", "DUP@x.com")),
         source="crm")
    land(engine, RUN1, "orders", [
        order("a", customer_code="C1", customer_email="two@x.com"),  # code wins
        order("b", customer_code=None, customer_email="two@x.COM"),  # e-mail, any case
        order("c", customer_code="C9", customer_email="one@x.com"),  # unknown code: e-mail
        order("d", customer_code=None, customer_email="dup@x.com"),  # ambiguous: left alone
        order("e", customer_code=None, customer_email=None),
        order("f", customer_code="C5"),  # its customer comes after it
        order("g", customer_code="C5"),
    ])
    cid = dict(rows(engine, select(s.customers.c.code, s.customers.c.id)))
    got = dict(rows(engine, select(s.orders.c.external_id, s.orders.c.customer_id)))
    # a code the warehouse holds is resolved as the order lands; the rest waits for the gate
    assert got == {"a": cid["C1"], "b": None, "c": None, "d": None, "e": None, "f": None,
                   "g": None}
    land(engine, RUN1, "customers", _customers(("C5", None)), source="crm")
    ids = _ids(engine)
    with engine.begin() as conn:
        transition(conn, [ids["f"]], "quarantined", RUN1, None)  # only captured are resolved
    assert load.resolve_customers(engine, RUN2) == 3
    cid = dict(rows(engine, select(s.customers.c.code, s.customers.c.id)))
    got = dict(rows(engine, select(s.orders.c.external_id, s.orders.c.customer_id)))
    assert got == {"a": cid["C1"], "b": cid["C2"], "c": cid["C1"], "d": None, "e": None,
                   "f": None, "g": cid["C5"]}
    assert rows(engine, select(s.orders.c.run_id).where(s.orders.c.external_id == "b")) == [
        (RUN2,)]
    assert load.resolve_customers(engine, RUN2) == 0  # idempotent
    # an amended order is resolved again by its new code as it lands
    land(engine, RUN2, "orders", [order("g", customer_code="C2", updated=T0 + timedelta(hours=1))])
    got = dict(rows(engine, select(s.orders.c.external_id, s.orders.c.customer_id)))
    assert got["g"] == cid["C2"]


def test_landings_of_one_stream_take_turns_on_postgresql(engine: Engine) -> None:
    """New rows go in with a plain INSERT (COPY): safe because a landing holds its stream's
    advisory lock, so a second landing of the stream waits, then finds the rows held."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite admits one writer at a time anyway (BEGIN IMMEDIATE)")
    import threading

    results: list[LoadCounts] = []
    with engine.connect() as holder:  # a landing of shop/orders in progress
        holder.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%(a)s), hashtext(%(b)s))",
                               {"a": "orderhub.land:shop", "b": "orders"})
        other = threading.Thread(
            target=lambda: results.append(land(engine, RUN1, "orders", [order("1")])))
        other.start()
        other.join(1.5)
        assert other.is_alive() and not results  # waiting for the lock
        holder.rollback()  # the first landing ends
    other.join(30)
    assert results == [LoadCounts(1, new=1)]
    assert land(engine, RUN2, "orders", [order("1")]) == LoadCounts(1, unchanged=1)


def test_copy_path_behaves_like_the_statement_path(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big batches on PostgreSQL go through COPY (+ a staging table for upserts): force that path
    on small data and replay the scenarios above (on SQLite this is the same path again)."""
    monkeypatch.setattr(load, "COPY_MIN_ROWS", 1)
    naive = order("n", ordered_at=datetime(2026, 10, 31, 23, 30))  # naive: taken as UTC
    land(engine, RUN1, "orders", [naive])
    got = rows(engine, select(s.orders.c.ordered_at, s.orders.c.order_date))
    assert got == [(datetime(2026, 10, 31, 23, 30, tzinfo=UTC), date(2026, 10, 31))]
    for scenario in (
        test_changed_order_returns_to_captured_with_new_lines,
        test_rerun_of_the_same_batch_changes_nothing,
        test_masters_payments_and_stock,
        lambda e: test_failing_batch_leaves_nothing_not_even_the_cursor(e, monkeypatch),
    ):
        with engine.begin() as conn:
            for table in reversed(s.metadata.sorted_tables):
                conn.execute(table.delete())
        scenario(engine)


def test_sqlite_autocommit_option_is_honoured(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(insert(s.runs).values(id="r", flow="f", started_at=T0, status="running"))
    assert count(sqlite_engine, s.runs) == 1  # no BEGIN was left open and rolled back


def test_a_big_pull_refreshes_the_statistics_of_what_it_grew(engine: Engine) -> None:
    """PostgreSQL: ANALYZE right after a bulk landing (pg_class.reltuples is -1 until a table
    was analyzed); a small pull, and SQLite, leave the statistics alone."""
    def analyzed() -> dict[str, bool]:
        q = text("SELECT relname, reltuples >= 0 FROM pg_class WHERE relname IN "
                 "('orders', 'order_lines', 'order_events', 'raw_records', 'payments')")
        with engine.connect() as conn:
            return dict(conn.execute(q).all())

    small = load.refresh_statistics(engine, "orders", load.ANALYZE_AFTER_ROWS - 1)
    big = load.refresh_statistics(engine, "orders", load.ANALYZE_AFTER_ROWS)
    assert small == []
    if engine.dialect.name != "postgresql":
        assert big == []
        return
    assert big == ["orders", "order_lines", "order_events", "raw_records"]
    assert analyzed() == {"orders": True, "order_lines": True, "order_events": True,
                          "raw_records": True, "payments": False}
