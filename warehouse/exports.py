"""Parquet exports for finance: one file per table, streamed, typed, written atomically.

- Streamed: rows come in chunks (a server-side cursor on PostgreSQL) and each chunk becomes one
  Parquet row group, so memory stays bounded whatever the table size.
- Typed from the schema: money and quantities are ``decimal128(precision, scale)`` — never
  float; timestamps are UTC ``timestamp[us]``; JSON columns are JSON text.
- Consistent: all tables are read in one REPEATABLE READ (PostgreSQL) / one read transaction
  (SQLite WAL), so an export never mixes two states of the warehouse.
- Atomic: each file is written beside its target as a temporary file and renamed over it; a
  reader sees the old file or the new one, never half of one.
- An empty table still gets a file with its schema: a missing file would break readers.
- Finance views (``warehouse.views``) export like tables, typed by ``VIEW_TABLES``; a missing
  view is created first (as of today), an existing one is read as it stands.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    cast,
    select,
)

from warehouse.engine import begin_write
from warehouse.schema import metadata
from warehouse.views import VIEW_TABLES, ensure_views

DEFAULT_TABLES = (
    "reconciliation",
    "invoices",
    "payments",
    "payment_matches",
    "payment_reconciliation",
    "v_invoice_status",
    "v_open_receivables_aging",
    "v_unmatched_payments",
    "v_cash_per_day",
    "orders",
    "order_lines",
    "allocations",
    "quarantine",
)
CHUNK_ROWS = 50_000


def arrow_type(column: Column) -> pa.DataType:
    """The Arrow type a schema column is exported as."""
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):
        sql_type = sql_type.impl_instance
    if isinstance(sql_type, Float):
        raise TypeError(f"{column}: Float columns are not exported (money is never float)")
    if isinstance(sql_type, Numeric):
        return pa.decimal128(sql_type.precision or 38, sql_type.scale or 0)
    if isinstance(sql_type, Boolean):
        return pa.bool_()
    if isinstance(sql_type, Integer):
        return pa.int64()
    if isinstance(sql_type, DateTime):
        return pa.timestamp("us", tz="UTC" if sql_type.timezone else None)
    if isinstance(sql_type, Date):
        return pa.date32()
    if isinstance(sql_type, JSON | String):
        return pa.string()
    raise TypeError(f"{column}: no Parquet mapping for {sql_type!r}")


def arrow_schema(table: Table) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c), nullable=bool(c.nullable)) for c in table.columns])


def _batch(table: Table, schema: pa.Schema, rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    # JSON columns arrive as their text (_columns)
    arrays = [pa.array([row[i] for row in rows], type=field.type)
              for i, field in enumerate(schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _columns(table: Table) -> list[Any]:
    """The table's columns as read for export: JSON ones as the text stored (no parse and
    re-serialise per row; it is the JSON text the writer produced)."""
    return [cast(c, Text).label(c.name) if isinstance(c.type, JSON) else c for c in table.columns]


def _tables(names: Sequence[str]) -> list[Table]:
    known = {**metadata.tables, **VIEW_TABLES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"cannot export unknown tables: {', '.join(unknown)}")
    return [known[n] for n in names]


def export_parquet(
    engine: Engine, out_dir: str | os.PathLike[str], tables: Sequence[str] = DEFAULT_TABLES
) -> list[Path]:
    """Write ``<out_dir>/<table>.parquet`` for each table; return the paths in order."""
    targets = _tables(tables)
    if any(t.name in VIEW_TABLES for t in targets):
        with begin_write(engine) as conn:
            ensure_views(conn, only_missing=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    options: dict[str, Any] = {"stream_results": True, "yield_per": CHUNK_ROWS}
    if engine.dialect.name == "postgresql":
        options["isolation_level"] = "REPEATABLE READ"
    with engine.connect() as conn, conn.execution_options(**options).begin():
        for table in targets:
            path = out / f"{table.name}.parquet"
            tmp = out / f".{table.name}.parquet.{os.getpid()}.tmp"
            schema = arrow_schema(table)
            query = select(*_columns(table)).order_by(*table.primary_key.columns)
            try:
                with pq.ParquetWriter(tmp, schema) as writer:
                    for chunk in conn.execute(query).partitions():
                        writer.write_batch(_batch(table, schema, chunk))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(path)
    return written
