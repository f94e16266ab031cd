"""Parquet exports for finance: one file per table, streamed, typed, written atomically.

- Streamed: rows come in chunks and every ``CHUNK_ROWS`` rows become one Parquet row group, so
  memory stays bounded whatever the table size.
- Typed from the schema: money and quantities are ``decimal128(precision, scale)`` — never
  float; timestamps are UTC ``timestamp[us]``; JSON columns are JSON text.
- Fast: values go from the driver to Arrow column by column, never through SQLAlchemy rows or
  a Python object per value where it can be helped. PostgreSQL sends ``COPY (SELECT ...) TO
  STDOUT`` as CSV and Arrow parses it with the exported types (numeric text -> decimal128 is
  exact). SQLite is read with the plain DBAPI cursor and converted by Arrow compute to what
  SQLAlchemy's result processors produce (``_sqlite_plan``); the processors stay the
  fallback for any value not in the shape we expect.
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Dialect,
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
from sqlalchemy.sql.elements import ColumnElement

from connectors.base import paused_gc
from warehouse.engine import begin_write
from warehouse.schema import UtcDateTime, metadata
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


def _columns(table: Table) -> list[ColumnElement[Any]]:
    """The table's columns as read for export: JSON ones as the text stored (no parse and
    re-serialise per row; it is the JSON text the writer produced)."""
    return [cast(c, Text).label(c.name) if isinstance(c.type, JSON) else c for c in table.columns]


def _tables(names: Sequence[str]) -> list[Table]:
    known = {**metadata.tables, **VIEW_TABLES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"cannot export unknown tables: {', '.join(unknown)}")
    return [known[n] for n in names]


# --------------------------------------------------------------------------- SQLite (DBAPI)

# The text SQLAlchemy's SQLite dialect stores. Only values of exactly this shape take the
# vectorised path: for them Arrow's ISO-8601 cast and ``datetime.fromisoformat`` agree.
_SQLITE_DATETIME = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$"
_SQLITE_DATE = r"^\d{4}-\d\d-\d\d$"

Finish = Callable[[pa.Array], pa.Array]


class _Unexpected(ValueError):
    """A chunk's values are not in the shape the vectorised conversion is exact for."""


def _shaped(pattern: str, then: pa.DataType) -> Finish:
    def finish(text: pa.Array) -> pa.Array:
        if pc.all(pc.match_substring_regex(text, pattern)).as_py() is False:  # NULLs pass
            raise _Unexpected(pattern)
        return text.cast(then)
    return finish


def _sqlite_column(expr: ColumnElement[Any], field: pa.Field,
                   dialect: Dialect) -> tuple[pa.DataType, Finish] | None:
    """(Arrow type of the values sqlite3 returns, vectorised conversion to the exported type)
    giving what SQLAlchemy's result processor gives for this column; None if we have none."""
    target = field.type
    if expr.type.dialect_impl(dialect).result_processor(dialect, None) is None:
        return target, lambda array: array  # the driver's value is the value: ints, text
    sql_type = expr.type
    if isinstance(sql_type, TypeDecorator):
        if not isinstance(sql_type, UtcDateTime):  # its result hook is ours to reproduce
            return None
        sql_type = sql_type.impl_instance
    if isinstance(sql_type, Numeric) and pa.types.is_decimal(target):
        scale = (sql_type.decimal_return_scale if sql_type.decimal_return_scale is not None
                 else sql_type.scale)
        if scale != target.scale:
            return None
        # SQLite stores Numeric as REAL (INTEGER when whole); SQLAlchemy returns
        # Decimal('%.<scale>f' % value): the float's exact binary value rounded half-even to
        # `scale` digits. Arrow's float64 -> decimal128 cast computes exactly that (pinned by
        # tests/test_exports.py against SQLAlchemy's own processor) and raises on overflow.
        return pa.float64(), lambda array: array.cast(target)
    if isinstance(sql_type, DateTime) and pa.types.is_timestamp(target):
        # naive UTC text; UtcDateTime (or pyarrow, for a plain timezone=True column) takes it
        # as UTC, so naive -> UTC keeps every value as it is
        naive = _shaped(_SQLITE_DATETIME, pa.timestamp("us"))
        return pa.string(), lambda array: naive(array).cast(target)
    if isinstance(sql_type, Date) and pa.types.is_date32(target):
        return pa.string(), _shaped(_SQLITE_DATE, target)
    if isinstance(sql_type, Boolean) and pa.types.is_boolean(target):
        return pa.int64(), lambda array: array.cast(target)  # 0/1: as int_to_boolean
    return None


def _sqlite_plan(exprs: Sequence[ColumnElement[Any]], schema: pa.Schema,
                 dialect: Dialect) -> tuple[pa.StructType, list[Finish]] | None:
    """How a chunk of SQLite rows becomes Arrow columns without a Python object per value:
    the rows as one struct array of the driver's types (one pass, in C), then each column
    converted. None when some column has no such conversion (or it is not SQLite)."""
    if dialect.name != "sqlite":
        return None
    columns = [_sqlite_column(e, f, dialect) for e, f in zip(exprs, schema, strict=True)]
    if None in columns:
        return None
    types, finish = zip(*columns, strict=True)
    return pa.struct([pa.field(f.name, t) for f, t in zip(schema, types, strict=True)]), list(finish)


def _cursor_chunks(conn: Connection, table: Table, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The DBAPI cursor's rows, CHUNK_ROWS at a time, converted by ``_sqlite_plan``; a chunk
    it cannot take (a value of another shape), or any other database, goes through
    SQLAlchemy's result processors value by value: the old path, exact by construction."""
    dialect = conn.dialect
    exprs = _columns(table)
    plan = _sqlite_plan(exprs, schema, dialect)
    processors = [e.type.dialect_impl(dialect).result_processor(dialect, None) for e in exprs]

    def vectorised(rows: list[tuple[Any, ...]]) -> list[pa.Array] | None:
        if plan is None:
            return None
        raw, finish = plan
        try:
            columns = pa.array(rows, raw).flatten()
            return [f(column) for f, column in zip(finish, columns, strict=True)]
        except (_Unexpected, pa.ArrowInvalid, pa.ArrowTypeError):
            return None

    def per_value(rows: list[tuple[Any, ...]]) -> list[pa.Array]:
        columns = zip(*rows, strict=True)
        return [pa.array(values if p is None else [p(v) for v in values], f.type)
                for p, f, values in zip(processors, schema, columns, strict=True)]

    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_select_sql(conn, table))
        while rows := cursor.fetchmany(CHUNK_ROWS):
            arrays = vectorised(rows)
            if arrays is None:
                arrays = per_value(rows)
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    finally:
        cursor.close()


# ------------------------------------------------------------------------- PostgreSQL (COPY)


def _copy_chunks(conn: Connection, table: Table, schema: pa.Schema) -> Iterator[pa.Table]:
    """``COPY (SELECT ...) TO STDOUT`` as CSV, CHUNK_ROWS rows at a time, each chunk parsed
    by Arrow with the exported types. The server sends one CopyData message per row, so a
    chunk is exactly CHUNK_ROWS rows; it is read here, on the connection's thread, and Arrow
    parses it from memory (an Arrow reader on the live stream would read ahead from its own
    threads, and an error would leave two threads on one connection)."""
    options = {
        "read_options": pa_csv.ReadOptions(column_names=schema.names),
        "parse_options": pa_csv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
        # PostgreSQL's CSV: NULL is an empty unquoted field, '' is "" (quoted); bools are t/f
        "convert_options": pa_csv.ConvertOptions(
            column_types={f.name: f.type for f in schema}, null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=False,
            true_values=["t"], false_values=["f"]),
    }

    def parse(rows: list[Any]) -> pa.Table:
        parsed = pa_csv.read_csv(pa.py_buffer(b"".join(rows)), **options)
        # the schema's nullability (the CSV reader makes every field nullable); one array per
        # column, as from the cursor, so the Parquet pages come out as they always did
        return pa.Table.from_arrays(parsed.columns, schema=schema).combine_chunks()

    sql = _select_sql(conn, table)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv, ENCODING 'UTF8')") as copy:
            rows: list[Any] = []
            while row := copy.read():
                rows.append(row)
                if len(rows) == CHUNK_ROWS:
                    yield parse(rows)
                    rows = []
            if rows:
                yield parse(rows)
    finally:
        cursor.close()


# ------------------------------------------------------------------------------------ export


def _select_sql(conn: Connection, table: Table) -> str:
    query = select(*_columns(table)).order_by(*table.primary_key.columns)
    return str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))


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
    postgres = engine.dialect.name == "postgresql"
    options: dict[str, Any] = {"isolation_level": "REPEATABLE READ"} if postgres else {}
    # paused_gc: a chunk is 50,000 row tuples that make no cycles; the collector would walk
    # them again and again (a fifth of the SQLite export's time)
    with paused_gc(), engine.connect() as conn, conn.execution_options(**options).begin():
        if postgres:
            # the text COPY writes: UTC offsets (+00) and ISO dates, whatever the server's
            # defaults; for this transaction only
            conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
            conn.exec_driver_sql("SET LOCAL DateStyle = 'ISO, YMD'")
        read = _copy_chunks if postgres else _cursor_chunks
        for table in targets:
            path = out / f"{table.name}.parquet"
            tmp = out / f".{table.name}.parquet.{os.getpid()}.tmp"
            schema = arrow_schema(table)
            try:
                with pq.ParquetWriter(tmp, schema) as writer:
                    for chunk in read(conn, table, schema):  # one row group per chunk
                        writer.write(chunk, row_group_size=CHUNK_ROWS)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(path)
    return written
