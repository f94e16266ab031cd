"""Parquet exports: typed (Decimal stays decimal128), streamed, atomic, empty tables included."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Column, Engine, Numeric, insert, select
from sqlalchemy.dialects import sqlite

from warehouse import exports
from warehouse import schema as s
from warehouse.exports import DEFAULT_TABLES, arrow_schema, export_parquet
from warehouse.views import create_views

RUN = "33333333-3333-4333-8333-333333333333"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def _seed(engine: Engine, n_orders: int = 3) -> None:
    with engine.begin() as conn:
        conn.execute(insert(s.orders), [
            {"id": i, "source": "shop", "external_id": str(i), "order_no": f"#{i}",
             "currency": "USD", "total": Decimal("1234567890123.45") + i, "status": "invoiced",
             "content_hash": "h", "captured_at": T0, "ordered_at": T0, "run_id": RUN,
             "order_date": T0.date()}
            for i in range(1, n_orders + 1)
        ])
        conn.execute(insert(s.order_lines), [
            {"order_id": 1, "line_no": 1, "sku": "A", "qty": Decimal("1.005"),
             "unit_price": Decimal("0.1234"), "amount": Decimal("0.12"), "run_id": RUN}
        ])
        conn.execute(insert(s.invoices).values(
            id=1, invoice_no="INV-1", order_id=1, order_ref="#1", customer_code="C1",
            currency="USD", amount=Decimal("0.30"), issued_at=T0, run_id=RUN))
        conn.execute(insert(s.reconciliation).values(
            invoice_id=1, invoice_no="INV-1", customer_code="C1", currency="USD",
            invoiced=Decimal("0.30"), applied=Decimal("0.10"), outstanding=Decimal("0.20"),
            status="part_paid", run_id=RUN))
        conn.execute(insert(s.allocations).values(
            order_line_id=1, warehouse="WH-EAST", qty=Decimal("1.005"), status="allocated",
            rule_id="home_region", rule_inputs={"stock": Decimal("9.5"), "region": "east"},
            run_id=RUN))


def test_export_round_trips_decimals_and_writes_every_table(engine: Engine,
                                                           tmp_path: Path) -> None:
    _seed(engine)
    paths = export_parquet(engine, tmp_path / "out")
    assert [p.name for p in paths] == [f"{t}.parquet" for t in DEFAULT_TABLES]
    assert all(p.is_file() for p in paths)
    assert not list((tmp_path / "out").glob("*.tmp"))

    recon = pq.read_table(tmp_path / "out" / "reconciliation.parquet")
    assert recon.schema.field("outstanding").type == pa.decimal128(18, 2)
    assert recon.to_pylist()[0]["outstanding"] == Decimal("0.20")

    orders = pq.read_table(tmp_path / "out" / "orders.parquet").to_pylist()
    assert [o["total"] for o in orders] == [Decimal("1234567890124.45"),
                                            Decimal("1234567890125.45"),
                                            Decimal("1234567890126.45")]
    assert orders[0]["captured_at"] == T0 and orders[0]["order_date"] == T0.date()

    line = pq.read_table(tmp_path / "out" / "order_lines.parquet").to_pylist()[0]
    assert (line["qty"], line["unit_price"], line["amount"]) == (
        Decimal("1.005"), Decimal("0.1234"), Decimal("0.12"))

    alloc = pq.read_table(tmp_path / "out" / "allocations.parquet").to_pylist()[0]
    assert alloc["rule_inputs"] == '{"stock":"9.5","region":"east"}'  # JSON text, exact

    # tables with no rows still get a file with the full schema
    empty = pq.read_table(tmp_path / "out" / "quarantine.parquet")
    assert empty.num_rows == 0 and empty.schema.names == [c.name for c in s.quarantine.columns]


def test_no_float_anywhere_in_the_export_schemas() -> None:
    for table in s.metadata.sorted_tables:
        for field in arrow_schema(table):
            assert not pa.types.is_floating(field.type), (table.name, field.name)


def test_export_streams_in_chunks(engine: Engine, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _seed(engine, n_orders=25)
    monkeypatch.setattr(exports, "CHUNK_ROWS", 10)
    (path,) = export_parquet(engine, tmp_path, tables=["orders"])
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 25 and meta.num_row_groups == 3  # 10 + 10 + 5: bounded memory


def test_export_replaces_atomically_and_refuses_unknown_tables(engine: Engine,
                                                               tmp_path: Path) -> None:
    (tmp_path / "orders.parquet").write_text("old")
    _seed(engine)
    export_parquet(engine, tmp_path, tables=["orders"])
    assert pq.read_table(tmp_path / "orders.parquet").num_rows == 3
    with pytest.raises(ValueError, match="unknown tables: nope"):
        export_parquet(engine, tmp_path, tables=["orders", "nope"])


# ----------------------------------------------------------------- exactly what SQLAlchemy reads

# Money whose float (SQLite stores Numeric as REAL) sits just below or above the half: 1.005 is
# 1.00499999999999989... (SQLAlchemy reads 1.00), 0.005 is 0.005000000000000000104... (0.01),
# exact binary ties (0.125) round half-even; whole values are stored as INTEGER.
TRICKY = ["0.005", "-0.005", "1.005", "-1.005", "2.675", "0.015", "0.125", "-0.125", "0.375",
          "100", "0", "-3", "1234567890123.45", "-9999999999999.99", "0.1", "0.07"]
STAMPS = [T0, T0.replace(microsecond=123456), T0.replace(microsecond=1),
          datetime(2026, 11, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
          datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
TEXTS = ["", " ", "a,b", 'say "hi"', "line\nbreak\r\nend", "\\N", "NULL", "ünï 简道云", "\t"]


def _seed_tricky(engine: Engine) -> None:
    n = len(TRICKY)
    with engine.begin() as conn:
        conn.execute(insert(s.orders), [
            {"id": i + 1, "source": "shop", "external_id": str(i), "currency": "USD",
             "order_no": TEXTS[i % len(TEXTS)], "customer_email": None if i % 4 == 0 else "",
             "total": Decimal(TRICKY[i]), "status": "invoiced", "content_hash": "h",
             "captured_at": STAMPS[i % len(STAMPS)],
             "ordered_at": None if i % 5 == 0 else STAMPS[(i + 1) % len(STAMPS)],
             "order_date": None if i % 3 == 0 else STAMPS[i % len(STAMPS)].date(),
             "owner_inputs": None if i % 2 else {"note": TEXTS[i % len(TEXTS)],
                                                 "amount": Decimal(TRICKY[i])},
             "run_id": RUN}
            for i in range(n)
        ])
        conn.execute(insert(s.order_lines), [
            {"order_id": i + 1, "line_no": 1, "sku": "A", "qty": Decimal(TRICKY[i]) / 7,
             "unit_price": Decimal(TRICKY[i]) / 3, "amount": None if i == 3 else Decimal(TRICKY[i]),
             "run_id": RUN}
            for i in range(n)
        ])
        conn.execute(insert(s.invoices), [
            {"id": i + 1, "invoice_no": f"INV-{i}", "order_id": i + 1, "currency": "USD",
             "amount": Decimal(TRICKY[i]), "issued_at": STAMPS[i % len(STAMPS)],
             "prices_include_tax": (True, False, None)[i % 3], "reason": TEXTS[i % len(TEXTS)],
             "run_id": RUN}
            for i in range(n)
        ])


def _sqlalchemy_read(engine: Engine, name: str) -> pa.Table:
    """The table as SQLAlchemy's result processors type it: what the export always wrote."""
    (table,) = exports._tables([name])
    query = select(*exports._columns(table)).order_by(*table.primary_key.columns)
    with engine.connect() as conn:
        rows = [row._asdict() for row in conn.execute(query)]
    return pa.Table.from_pylist(rows, schema=arrow_schema(table))


def test_export_is_exactly_what_sqlalchemy_reads(engine: Engine, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _seed_tricky(engine)
    monkeypatch.setattr(exports, "CHUNK_ROWS", 7)  # several chunks, a short last one
    for path in export_parquet(engine, tmp_path):
        name = path.name.removesuffix(".parquet")
        assert pq.read_table(path).equals(_sqlalchemy_read(engine, name)), name
    orders = pq.read_table(tmp_path / "orders.parquet").to_pylist()
    assert [o["order_no"] for o in orders[:len(TEXTS)]] == TEXTS  # '' stays '', not NULL
    assert orders[0]["customer_email"] is None and orders[1]["customer_email"] == ""
    assert orders[3]["captured_at"] == datetime(2026, 11, 1, 10, 30, tzinfo=UTC)


def test_sqlite_vectorised_path_alone_matches_sqlalchemy(sqlite_engine: Engine) -> None:
    """The vectorised conversion itself, not its per-value fallback, gives SQLAlchemy's
    values for every exported table (the fallback would hide a wrong fast path)."""
    _seed_tricky(sqlite_engine)
    create_views(sqlite_engine)
    for name in DEFAULT_TABLES:
        (table,) = exports._tables([name])
        schema = arrow_schema(table)
        with sqlite_engine.connect() as conn:
            plan = exports._sqlite_plan(exports._columns(table), schema, conn.dialect)
            assert plan is not None, name
            raw, finish = plan
            rows = conn.exec_driver_sql(exports._select_sql(conn, table)).cursor.fetchall()
        arrays = [f(c) for f, c in zip(finish, pa.array(rows, raw).flatten(), strict=True)]
        got = pa.Table.from_batches([pa.RecordBatch.from_arrays(arrays, schema=schema)])
        assert got.equals(_sqlalchemy_read(sqlite_engine, name)), name


def test_sqlite_values_of_another_shape_take_sqlalchemys_processors(sqlite_engine: Engine,
                                                                    tmp_path: Path) -> None:
    _seed_tricky(sqlite_engine)
    with sqlite_engine.begin() as conn:  # text no SQLAlchemy writer produces, but it parses
        conn.exec_driver_sql("UPDATE orders SET ordered_at = '2026-11-01T12:00:00+02:00', "
                             "order_date = '2026-11-01' WHERE id = 2")
        conn.exec_driver_sql("UPDATE orders SET source_updated_at = '2026-11-01 10:00:00.5' "
                             "WHERE id = 3")
    (path,) = export_parquet(sqlite_engine, tmp_path, tables=["orders"])
    got = pq.read_table(path)
    assert got.equals(_sqlalchemy_read(sqlite_engine, "orders"))
    assert got.column("ordered_at")[1].as_py() == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert got.column("source_updated_at")[2].as_py() == T0.replace(microsecond=500000)


def test_float_to_decimal_is_sqlalchemys_rounding() -> None:
    """SQLite's Numeric floats become decimal128 by an Arrow cast; SQLAlchemy's processor is
    Decimal('%.<scale>f' % value). Pinned on edge and random values at every scale we use."""
    rng = random.Random(20261127)
    dialect = sqlite.dialect()
    for scale in (2, 3, 4, 8):
        limit = 10.0 ** (18 - scale)
        values = [float(v) for v in TRICKY] + [0.0, -0.0, 5e-324, 0.49999999999999994,
                                               limit / 10 + 0.5, -(limit / 10) - 0.25]
        values += [(2 * rng.randrange(-10**9, 10**9) + 1) / (2 * 10**scale)  # k.5 ulp-near
                   for _ in range(3000)]
        values += [rng.randrange(-10**6, 10**6) + (2 * rng.randrange(2**scale) + 1)  # exact ties
                   / 2 ** (scale + 1) for _ in range(1000)]
        values += [rng.uniform(-1, 1) * 10 ** rng.uniform(-12, 17 - scale) for _ in range(3000)]
        values += [sum(round(rng.uniform(-1e3, 1e3), 2) for _ in range(9)) for _ in range(1000)]
        values = [v for v in values if abs(v) < limit]  # beyond: an overflow error, both ways
        column = Column("x", Numeric(18, scale))
        field = pa.field("x", pa.decimal128(18, scale))
        fast = exports._sqlite_column(column, field, dialect)
        assert fast is not None
        raw, finish = fast
        processor = column.type.result_processor(dialect, None)
        expected = [processor(v) for v in values]
        assert finish(pa.array(values, raw)).to_pylist() == expected, scale
