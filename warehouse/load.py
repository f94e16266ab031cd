"""Landing: raw records, rejected records, canonical upserts and the cursor — one transaction.

``land_batch`` is the only writer of pulled data. Per batch it

1. upserts ``raw_records`` on (source, stream, external_id) where the content hash differs;
2. upserts ``rejected_records`` (unparseable records, with the error) and removes the rejected
   row of any record that now maps cleanly;
3. upserts the canonical rows of the batch's kind, comparing a hash of the canonical record, so
   an unchanged record writes nothing (invariant 1: a rerun changes nothing);
4. saves the stream cursor.

All four commit together or not at all: the cursor never runs ahead of the rows it covers
(invariant 2) and a failure leaves the warehouse as it was (invariant 8).

Set-based: the existing keys and hashes of the whole batch are read with one query per table,
and every write is one statement (a driver executemany on SQLite, COPY on PostgreSQL); nothing
is looked up row by row. Rows are value tuples, not dicts. Where every row to write is new to
the warehouse (a first pull; the usual page of new orders) and the key is the stream's own, the
write is a plain INSERT - on PostgreSQL a COPY straight into the table instead of COPY into a
staging table and INSERT ... SELECT ... ON CONFLICT - which is safe because a landing holds its
stream's advisory lock (``_lock_stream``); changed rows are upserted as before.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Date,
    Engine,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table

from connectors.base import Cursor, RawRecord, paused_gc
from warehouse.engine import (
    begin_write,
    copy_rows,
    dialect_insert,
    in_values,
    insert_rows,
    json_default,
)
from warehouse.money import ROUNDING, MoneyError, decimals
from warehouse.orders import transition
from warehouse.schema import (
    MONEY,
    UtcDateTime,
    customers,
    order_events,
    order_lines,
    orders,
    payments,
    price_rules,
    prices,
    products,
    raw_records,
    receivables,
    rejected_records,
    stock,
    sync_state,
    warehouses,
)
from warehouse.states import OrderState

__all__ = [
    "KINDS",
    "LoadCounts",
    "canonical_json",
    "content_hash",
    "get_cursor",
    "land_batch",
    "lines_hash",
    "paused_gc",
    "resolve_customers",
]

CAPTURED = OrderState.CAPTURED.value
# A changed order in one of these states has not been acted on yet: take the new version.
# An order amended at the source goes back through the gate while nobody has acted on it yet.
REOPENABLE = (OrderState.CAPTURED.value, OrderState.QUARANTINED.value, OrderState.HELD.value)


@dataclass
class LoadCounts:
    """What one batch did. received = new + changed + unchanged + amended + rejected.

    amended: the source changed an order we have already acted on (validated or later); the
    change is kept in raw_records but not applied. Duplicates of one record inside a batch
    count as unchanged (the newest copy is the one loaded).
    """

    received: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    amended: int = 0
    rejected: int = 0

    def __add__(self, other: LoadCounts) -> LoadCounts:
        if not isinstance(other, LoadCounts):
            return NotImplemented
        return LoadCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def loaded(self) -> int:
        """Records that reached (or already were in) a canonical table."""
        return self.new + self.changed + self.unchanged + self.amended

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------------- hashing


def _make_encoder() -> Callable[[Any], str]:
    """The C JSON encoder, built once: ``json.dumps(..., sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, default=json_default)`` text, without building an encoder per call
    (ingest hashes every record, sometimes three times: a third of its Python time)."""
    from json import encoder as _json_encoder

    make = getattr(_json_encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator: the same text, the slow way
        slow = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                default=json_default)
        return slow.encode
    # markers=None: no circular-reference check (records are trees, parsed from JSON or mapped)
    fast = make(None, _json_default, _json_encoder.encode_basestring, None, ":", ",", True, False,
                True)
    return lambda value: "".join(fast(value, 0))


def _json_default(value: Any, _decimal: type = Decimal, _datetime: type = datetime) -> Any:
    # Decimal first, then datetime, without a call into json_default: most non-JSON values of a
    # record are one or the other (json_default gives the same text for both: str, isoformat)
    cls = value.__class__
    if cls is _decimal:
        return value.__str__()
    if cls is _datetime:
        return value.isoformat()
    return json_default(value)


_stdlib_encode = _make_encoder()
# sorted keys; datetimes through _json_default (isoformat), as the stdlib text has them
_ORJSON_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                   | orjson.OPT_PASSTHROUGH_DATACLASS)


def _encode_bytes(value: Any, _dumps: Callable[..., bytes] = orjson.dumps) -> bytes:
    """The canonical text (UTF-8), by orjson: the stdlib encoder's text (on 2 M random floats
    only those it writes with an exponent differ: those go to the stdlib) at 2.6x its speed on
    an order record. A value orjson refuses (keys that are not strings, an integer beyond 64 bits, a
    type ``json_default`` does not know) gets the stdlib's text, or its TypeError. One
    difference is kept: a NaN or infinite float is ``null`` (JSON has no NaN)."""
    try:
        text = _dumps(value, default=_json_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _stdlib_encode(value).encode("utf-8")
    if _EXPONENT.search(text) is not None:
        # a float the stdlib writes with an exponent (1e+16, 5e-05: orjson writes 1e16,
        # 0.00005), or a string that looks like one: the stdlib's text, so a record hashes as
        # it always did
        return _stdlib_encode(value).encode("utf-8")
    return text


def _encode(value: Any) -> str:
    return _encode_bytes(value).decode("utf-8")


_EXPONENT = re.compile(rb"[0-9][eE][-+0-9]|0\.0000")


def canonical_json(payload: Any) -> str:
    """Stable JSON text: sorted keys, no whitespace, Decimals and datetimes as strings."""
    return _encode(payload)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_hash(payload: dict) -> str:
    """sha256 of the canonical JSON of a payload."""
    return _sha256(_encode_bytes(payload))


def _norm(value: Decimal | None) -> str:
    # 2, 2.0 and 2.000 are the same quantity: hash them alike
    if value is None:
        return ""
    value = value.normalize()
    text = value.__str__()  # the same as format(value, "f") unless it has an exponent
    return format(value, "f") if "E" in text else text


# _norm of non-zero Decimals, by value: equal values normalise alike (a zero is left out: -0 and
# 0 are equal but normalise to "-0" and "0"). Quantities and list prices repeat a lot.
_NORMS: dict[Decimal, str] = {}
_NORMS_MAX = 100_000


def _norm_cached(value: Any, _decimal: type = Decimal, _norms: dict = _NORMS) -> str:
    if value.__class__ is _decimal and value:
        try:
            return _norms[value]
        except KeyError:
            if len(_norms) >= _NORMS_MAX:
                _norms.clear()
            text = _norms[value] = _norm(value)
            return text
        except TypeError:  # a signalling NaN cannot be hashed: _norm raises as it always did
            pass
    return _norm(value)


def lines_hash(lines: Iterable[Mapping[str, Any]]) -> str:
    """sha256 of the sorted (sku, qty, unit_price) lines: equal for the same goods in any order."""
    norm = _norm_cached
    key = sorted([
        (line.get("sku") or "", norm(line.get("qty")), norm(line.get("unit_price"))) for line in lines
    ])
    return _sha256(_encode_bytes(key))


# Left out of the content hash: updated_at (a source touching a record, or our own push-back
# doing so, is not a change of its content and must not send an order back through the gate),
# and an order's fulfilment_status (the channel's progress, stored on its own: _fulfilment_status).
_NOT_CONTENT = frozenset({"updated_at", "fulfilment_status"})


def _record_hash(record: Mapping[str, Any]) -> str:
    content = dict(record)
    content.pop("updated_at", None)  # _NOT_CONTENT, unrolled: called once per record
    content.pop("fulfilment_status", None)
    return _sha256(_encode_bytes(content))


# --------------------------------------------------------------------------------- dialect


# Below this many rows one statement is cheaper than COPY into a staging table and back.
COPY_MIN_ROWS = 200


def _upsert(
    conn: Connection,
    table: Table,
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key: Sequence[str],
    update_cols: Iterable[str],
    where: Callable[[Any], ColumnElement[bool]] | None = None,
) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE [WHERE ...] for all rows (value tuples in
    ``names`` order).

    PostgreSQL with many rows: COPY into a temporary staging table, then one
    INSERT ... SELECT ... ON CONFLICT. Otherwise one executemany.
    """
    if not rows:
        return
    stmt = dialect_insert(conn, table)
    staged = conn.dialect.name == "postgresql" and len(rows) >= COPY_MIN_ROWS
    if staged:
        staging = f"_stage_{table.name}_{uuid.uuid4().hex[:8]}"
        columns = ", ".join(f'"{n}"' for n in names)
        conn.exec_driver_sql(
            f'CREATE TEMPORARY TABLE "{staging}" ON COMMIT DROP AS '
            f'SELECT {columns} FROM "{table.name}" WITH NO DATA'
        )
        copy_rows(conn, staging, table, rows, names)
        stage = sa_table(staging, *(sa_column(n) for n in names))
        stmt = stmt.from_select(list(names), select(*(stage.c[n] for n in names)))
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c[k] for k in key],
        set_={c: stmt.excluded[c] for c in update_cols},
        where=where(stmt.excluded) if where is not None else None,
    )
    if staged:
        conn.execute(stmt)
    else:
        _executemany(conn, stmt, names, rows)


def _insert(conn: Connection, table: Table, names: Sequence[str],
            rows: Sequence[Sequence[Any]]) -> None:
    """Plain INSERT of many rows (value tuples in ``names`` order): COPY on PostgreSQL
    (engine.insert_rows), the driver's own executemany on SQLite (``_executemany``: its
    conversions column by column, dates and times once per distinct value)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        insert_rows(conn, table, names, rows)
    else:
        _executemany(conn, table.insert(), names, rows)


# Bind types whose processed value depends only on the value (equal in, equal out): processed
# once per distinct value. Not a plain DateTime: equal instants in two zones format differently.
_MEMO_TYPES = (UtcDateTime, Date)


def _executemany(conn: Connection, stmt: Any, names: Sequence[str],
                 rows: Sequence[Sequence[Any]]) -> None:
    """``conn.execute(stmt, rows)`` for many rows (value tuples in ``names`` order).

    On SQLite the statement is compiled once and the rows go to the driver's ``executemany`` as
    plain tuples, converted with the statement's own bind processors (so the stored values are
    exactly SQLAlchemy's), column by column. SQLAlchemy's executemany would build and process a
    parameter dict per row: most of the cost of landing a batch. Elsewhere: ``conn.execute``."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])
        return
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(names))
    order = compiled.positiontup
    index = {name: i for i, name in enumerate(names)}
    if not order or not set(order) <= index.keys():
        # a default or an extra bind the rows do not give
        conn.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])
        return
    given = list(zip(*rows, strict=True))  # the rows' columns
    processors = compiled._bind_processors
    columns: list[Any] = []
    for name in order:
        column = given[index[name]]
        process = processors.get(name)
        if process is None:
            pass
        elif isinstance(compiled.binds[name].type, _MEMO_TYPES):
            memo = {v: process(v) for v in set(column)}
            column = list(map(memo.__getitem__, column))
        else:
            column = list(map(process, column))
        columns.append(column)
    values = list(zip(*columns, strict=True))
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(compiled.string, values)
    finally:
        cursor.close()


def _hash_changed(table: Table) -> Callable[[Any], ColumnElement[bool]]:
    return lambda excluded: table.c.content_hash != excluded.content_hash


# ------------------------------------------------------------------------------ the kinds


@dataclass(frozen=True)
class _Kind:
    """How one canonical kind maps onto its table."""

    table: Table
    key: tuple[str, ...]  # natural key columns (the ON CONFLICT target)
    required: tuple[str, ...]  # canonical fields a NOT NULL column needs
    to_row: Callable[[dict, str], dict]  # (canonical record, source) -> column values
    after: Callable[[Connection, list[dict], _Batch], None] | None = None  # products, warehouses


@dataclass(frozen=True)
class _Batch:
    run_id: str
    source: str
    stream: str
    now: datetime


def _customer_row(rec: dict, source: str) -> dict:
    return {
        "code": rec.get("code"),
        "name": rec.get("name"),
        "email": rec.get("email"),
        "region": rec.get("region"),
        "customer_group": rec.get("customer_group"),
        "credit_limit": rec.get("credit_limit"),
        "currency": rec.get("currency"),
        "source": source,
        "external_id": rec.get("external_id"),
    }


def _price_row(rec: dict, source: str) -> dict:
    return {
        "sku": rec.get("sku"),
        "currency": rec.get("currency"),
        "price": rec.get("price"),
        "source": source,
        "_name": rec.get("name"),  # for products; not a prices column
    }


def _stock_row(rec: dict, source: str) -> dict:
    return {
        "sku": rec.get("sku"),
        "warehouse": rec.get("warehouse"),
        "on_hand": rec.get("qty"),
        "source": source,
        "_region": rec.get("region"),  # for warehouses; not a stock column
    }


def _payment_row(rec: dict, source: str) -> dict:
    return {
        "source": source,
        "external_id": rec.get("external_id"),
        "reference": rec.get("reference"),
        "customer_code": rec.get("customer_code"),
        "currency": rec.get("currency"),
        "amount": rec.get("amount"),
        "received_at": rec.get("received_at"),
        "fee": rec.get("fee"),  # a bank/processor fee the source reports, if any
        "kind": rec.get("kind"),  # None (a payment) or "refund"
    }


def _receivable_row(rec: dict, source: str) -> dict:
    return {
        "source": source,
        "external_id": rec.get("external_id"),
        "invoice_no": rec.get("invoice_no"),
        "order_ref": rec.get("order_ref"),
        "customer_code": rec.get("customer_code"),
        "currency": rec.get("currency"),
        "amount": rec.get("amount"),
        "open_amount": rec.get("open_amount"),
        "issued_at": rec.get("issued_at"),
        "due_date": rec.get("due_date"),
    }


def _day(value: Any) -> Any:
    """A Date column takes a date: a datetime (as some sources send) becomes its UTC day."""
    if isinstance(value, datetime):
        return (value if value.tzinfo is None else value.astimezone(UTC)).date()
    return value


def _price_rule_row(rec: dict, source: str) -> dict:
    return {
        "source": source,
        "external_id": rec.get("external_id"),
        "sku": rec.get("sku"),
        "currency": rec.get("currency"),
        "customer_group": rec.get("customer_group"),
        "valid_from": _day(rec.get("valid_from")),
        "valid_to": _day(rec.get("valid_to")),
        "price": rec.get("price"),
        "discount_pct": rec.get("discount_pct"),
    }


def _upsert_products(conn: Connection, rows: list[dict], batch: _Batch) -> None:
    by_sku = {r["sku"]: r["_name"] for r in rows}
    _upsert(
        conn,
        products,
        ("sku", "name", "source", "run_id"),
        [(sku, name, batch.source, batch.run_id) for sku, name in by_sku.items()],
        key=("sku",),
        update_cols=("name", "source", "run_id"),
        # a price without a name does not blank the product's name
        where=lambda ex: and_(ex.name.is_not(None), products.c.name.is_distinct_from(ex.name)),
    )


def _upsert_warehouses(conn: Connection, rows: list[dict], batch: _Batch) -> None:
    by_code = {r["warehouse"]: r["_region"] for r in rows}
    _upsert(
        conn,
        warehouses,
        ("code", "region", "run_id"),
        [(code, region, batch.run_id) for code, region in by_code.items()],
        key=("code",),
        update_cols=("region", "run_id"),
        where=lambda ex: and_(ex.region.is_not(None), warehouses.c.region.is_distinct_from(ex.region)),
    )


KINDS: dict[str, _Kind] = {
    "customers": _Kind(customers, ("code",), ("code",), _customer_row),
    "prices": _Kind(prices, ("sku", "currency"), ("sku", "currency", "price"), _price_row, _upsert_products),
    "stock": _Kind(stock, ("sku", "warehouse"), ("sku", "warehouse", "qty"), _stock_row, _upsert_warehouses),
    "payments": _Kind(payments, ("source", "external_id"), ("currency", "amount"), _payment_row),
    "receivables": _Kind(receivables, ("source", "external_id"), ("currency", "amount"),
                         _receivable_row),
    # group / date / discount prices (checks: price_matches_list); see docs/checks.md
    "price_rules": _Kind(price_rules, ("source", "external_id"), ("sku", "currency"),
                         _price_rule_row),
    # orders have their own path (lines, states, events): see _land_orders
    "orders": _Kind(orders, ("source", "external_id"), (), lambda rec, source: {}),
}


# A pull that landed this many rows (new or changed) refreshes the statistics of the tables it
# grew right away on PostgreSQL, as a bulk load should: autovacuum would too, but a minute or
# more later, and meanwhile the next stages' queries are planned for the emptier tables.
ANALYZE_AFTER_ROWS = 10_000
_GROWN = {"orders": ("orders", "order_lines", "order_events"), "prices": ("prices", "products"),
          "stock": ("stock", "warehouses")}


def refresh_statistics(engine: Engine, kind: str, rows: int) -> list[str]:
    """PostgreSQL, after a pull of ``kind`` that landed ``rows`` rows (``ANALYZE_AFTER_ROWS`` or
    more): ANALYZE the tables it grew. Returns their names (none on SQLite or a small pull)."""
    if rows < ANALYZE_AFTER_ROWS or engine.dialect.name != "postgresql" or kind not in KINDS:
        return []
    names = [*_GROWN.get(kind, (KINDS[kind].table.name,)), raw_records.name]
    with engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f'ANALYZE "{name}"')
    return names


# ------------------------------------------------------------------------------ public API


def land_batch(
    engine: Engine,
    run_id: str,
    source: str,
    stream: str,
    kind: str,
    records: list[RawRecord],
    canonical: list[tuple[RawRecord, dict]],
    rejected: list[tuple[RawRecord, str]],
    cursor: Cursor | None,
) -> LoadCounts:
    """Land one batch of a stream in one transaction; see the module docstring.

    ``records`` is everything received; each of them is in exactly one of ``canonical`` (mapped)
    or ``rejected`` (with the mapping error).
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if len(canonical) + len(rejected) != len(records):
        raise ValueError(
            f"{source}/{stream}: {len(records)} records received but {len(canonical)} mapped + "
            f"{len(rejected)} rejected: every record must be one or the other"
        )
    batch = _Batch(run_id, source, stream, datetime.now(UTC))

    # Records that mapped but cannot be stored (no natural key, a NOT NULL value missing,
    # duplicate line numbers) are rejected here, so one bad record cannot block the stream.
    mapped: list[tuple[RawRecord, dict]] = []
    rejects = list(rejected)
    for raw, rec in canonical:
        problem = _unstorable(kind, spec, rec)
        if problem:
            rejects.append((raw, problem))
        else:
            mapped.append((raw, rec))

    counts = LoadCounts(received=len(records), rejected=len(rejects))
    with paused_gc(), begin_write(engine) as conn:
        _lock_stream(conn, batch, kind)
        # an order's own total lands beside its payload (the accuracy KPI reads it there)
        totals = ({id(raw): rec.get("total") for raw, rec in mapped} if kind == "orders"
                  else {})
        _land_raw(conn, batch, records, totals)
        held = _land_rejected(conn, batch, rejects, [raw.external_id for raw, _ in mapped])
        counts.rejected -= held
        counts.unchanged += held
        if kind == "orders":
            _land_orders(conn, batch, mapped, counts)
        else:
            _land_kind(conn, batch, spec, mapped, counts)
        if cursor is not None:
            _save_cursor(conn, batch, cursor)
    return counts


def get_cursor(engine: Engine, source: str, stream: str) -> Cursor | None:
    """The saved position of a stream, or None before its first load."""
    with engine.connect() as conn:
        row = conn.execute(
            select(sync_state.c.cursor_value, sync_state.c.cursor_id).where(
                sync_state.c.source == source, sync_state.c.stream == stream
            )
        ).first()
    if row is None or row.cursor_value is None:
        return None
    return Cursor(updated_at=row.cursor_value, id=row.cursor_id or "")


def resolve_customers(engine: Engine, run_id: str) -> int:
    """Set ``orders.customer_id`` of captured orders: by customer code, else by e-mail
    (case-insensitive, and only when exactly one customer has that e-mail). Returns the number
    of orders resolved."""
    pending = and_(orders.c.status == CAPTURED, orders.c.customer_id.is_(None))
    by_code = select(customers.c.id).where(customers.c.code == orders.c.customer_code)
    emails = (
        select(
            func.lower(customers.c.email).label("email"),
            func.min(customers.c.id).label("customer_id"),
        )
        .where(customers.c.email.is_not(None))
        .group_by(func.lower(customers.c.email))
        .having(func.count() == 1)  # an e-mail two customers share identifies neither
        .subquery()
    )
    with begin_write(engine) as conn:
        n_code = conn.execute(
            update(orders)
            .where(pending, orders.c.customer_code.is_not(None), exists(by_code))
            .values(customer_id=by_code.scalar_subquery(), run_id=run_id)
        ).rowcount
        n_email = conn.execute(
            update(orders)
            .where(pending, func.lower(orders.c.customer_email) == emails.c.email)
            .values(customer_id=emails.c.customer_id, run_id=run_id)
        ).rowcount
    return n_code + n_email


# --------------------------------------------------------------------------------- landing


def _newest(items: Iterable[tuple[Any, RawRecord, Any]]) -> tuple[dict[Any, Any], int]:
    """Keep one item per key: the newest by source updated_at, later in the batch on ties.
    Returns {key: item} and the number of duplicates dropped (pages overlap by design)."""
    items = list(items)
    unique = {key: item for key, _, item in items}
    if len(unique) == len(items):  # the usual batch: nothing to choose between
        return unique, 0
    chosen: dict[Any, tuple[tuple[datetime, int], Any]] = {}
    n = 0
    for pos, (key, raw, item) in enumerate(items):
        n += 1
        when = raw.updated_at or datetime.min.replace(tzinfo=UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        rank = (when, pos)
        if key not in chosen or rank >= chosen[key][0]:
            chosen[key] = (rank, item)
    return {k: v for k, (_, v) in chosen.items()}, n - len(chosen)


_RAW_COLUMNS = ("source", "stream", "external_id", "content_hash", "payload", "source_updated_at",
                "received_at", "run_id", "source_total")


def _lock_stream(conn: Connection, batch: _Batch, kind: str) -> None:
    """PostgreSQL: one landing of a stream at a time (a transaction-level advisory lock on
    (source, stream), and on (source, kind) if that differs). The rows a batch finds missing
    then stay missing until it commits, so rows new to the warehouse go in with a plain INSERT
    (COPY), not an upsert through a staging table; a second landing of the same stream waits,
    then finds them held. SQLite: BEGIN IMMEDIATE already admits one writer at a time."""
    if conn.dialect.name != "postgresql":
        return
    for name in sorted({batch.stream, kind}):  # a fixed order: two landings cannot deadlock
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%(a)s), hashtext(%(b)s))",
                             {"a": f"orderhub.land:{batch.source}", "b": name})


def _land_raw(conn: Connection, batch: _Batch, records: list[RawRecord],
              totals: dict[int, Any]) -> None:
    """Land the payloads that are new or changed. ``totals``: by ``id()`` of a record, the
    source's own total its mapping read (orders); a record without one gets none."""
    latest, _ = _newest((r.external_id, r, r) for r in records)
    if not latest:
        return
    encoded = {ext: _encode_bytes(r.payload) for ext, r in latest.items()}
    hashes = {ext: _sha256(data) for ext, data in encoded.items()}
    texts = {ext: data.decode("utf-8") for ext, data in encoded.items()}
    known = dict(
        conn.execute(
            select(raw_records.c.external_id, raw_records.c.content_hash).where(
                raw_records.c.source == batch.source,
                raw_records.c.stream == batch.stream,
                in_values(raw_records.c.external_id, list(latest), conn.dialect.name),
            )
        ).all()
    )
    source, stream, now, run_id = batch.source, batch.stream, batch.now, batch.run_id
    rows = [
        (source, stream, ext, hashes[ext], texts[ext], raw.updated_at, now, run_id,
         totals.get(id(raw)))
        for ext, raw in latest.items()
        if known.get(ext) != hashes[ext]
    ]
    if not any(row[2] in known for row in rows):  # only new records: see _lock_stream
        _insert(conn, raw_records, _RAW_COLUMNS, rows)
        return
    _upsert(
        conn,
        raw_records,
        _RAW_COLUMNS,
        rows,
        key=("source", "stream", "external_id"),
        update_cols=("content_hash", "payload", "source_updated_at", "received_at", "run_id",
                     "source_total"),
        where=_hash_changed(raw_records),
    )


def _land_rejected(
    conn: Connection,
    batch: _Batch,
    rejects: list[tuple[RawRecord, str]],
    now_clean: list[str],
) -> int:
    """Upsert the rejects; return how many were already held unchanged (same payload and
    error), which a rerun counts as already held, not as rejected again."""
    latest, _ = _newest((raw.external_id, raw, (raw, err)) for raw, err in rejects)
    t = rejected_records
    held: dict[str, tuple[str, str]] = {}
    if latest:
        held = {ext: (h, e) for ext, h, e in conn.execute(
            select(t.c.external_id, t.c.content_hash, t.c.error).where(
                t.c.source == batch.source, t.c.stream == batch.stream,
                in_values(t.c.external_id, list(latest), conn.dialect.name)))}
    rows = []
    for ext, (raw, error) in latest.items():
        data = _encode_bytes(raw.payload)
        rows.append((batch.source, batch.stream, ext, _sha256(data), data.decode("utf-8"),
                     str(error), batch.now, batch.run_id))
    # (external_id, content_hash, error) are the row's 3rd, 4th and 6th values
    unchanged = sum(1 for r in rows if held.get(r[2]) == (r[3], r[5]))
    _upsert(
        conn,
        t,
        ("source", "stream", "external_id", "content_hash", "payload", "error", "rejected_at",
         "run_id"),
        rows,
        key=("source", "stream", "external_id"),
        update_cols=("content_hash", "payload", "error", "rejected_at", "run_id"),
        where=lambda ex: or_(t.c.content_hash != ex.content_hash, t.c.error != ex.error),
    )
    if now_clean:
        # a record fixed at the source (or by a mapper fix) is no longer rejected: one place only
        conn.execute(
            delete(t).where(
                t.c.source == batch.source,
                t.c.stream == batch.stream,
                in_values(t.c.external_id, now_clean, conn.dialect.name),
            )
        )
    return unchanged


def _unstorable(kind: str, spec: _Kind, rec: dict) -> str | None:
    for name in spec.required:
        if rec.get(name) is None or rec.get(name) == "":
            return f"{name}: missing (required to store a {kind} record)"
    if kind == "orders":
        numbers = [line.get("line_no") for line in rec.get("lines") or ()]
        if set(map(type, numbers)) <= {int} and len(set(numbers)) == len(numbers):
            return None  # the usual record: integer line numbers, each once
        seen: set[int] = set()
        for i, line in enumerate(rec.get("lines") or []):
            line_no = line.get("line_no")
            if not isinstance(line_no, int):
                return f"lines[{i}].line_no: missing or not an integer"
            if line_no in seen:
                return f"lines[{i}].line_no: duplicate line number {line_no}"
            seen.add(line_no)
    return None


def _existing(
    conn: Connection,
    table: Table,
    key: tuple[str, ...],
    keys: list[tuple],
    cols: Sequence[str],
    lock: bool = False,
) -> dict[tuple, Any]:
    """{natural key: row} for the batch's keys, in one query. Each key column is filtered on its
    own set of values (a superset for composite keys), then matched exactly here. ``lock`` takes
    row locks on PostgreSQL (SQLite's BEGIN IMMEDIATE already holds the whole database)."""
    if not keys:
        return {}
    conditions = [
        in_values(table.c[name], sorted({k[i] for k in keys}), conn.dialect.name)
        for i, name in enumerate(key)
    ]
    query = select(*(table.c[c] for c in key), *(table.c[c] for c in cols)).where(*conditions)
    if lock:
        query = query.order_by(*(table.c[c] for c in key)).with_for_update()
    wanted = set(keys)
    found = {}
    for row in conn.execute(query):
        k = tuple(row[: len(key)])
        if k in wanted:
            found[k] = row
    return found


def _land_kind(
    conn: Connection,
    batch: _Batch,
    spec: _Kind,
    mapped: list[tuple[RawRecord, dict]],
    counts: LoadCounts,
) -> None:
    prepared = []
    for raw, rec in mapped:
        row = spec.to_row(rec, batch.source)
        if "external_id" in row and row["external_id"] is None:
            row["external_id"] = raw.external_id
        row["content_hash"] = _record_hash(rec)
        row["run_id"] = batch.run_id
        prepared.append((tuple(row[k] for k in spec.key), raw, row))
    latest, duplicates = _newest(prepared)
    known = _existing(conn, spec.table, spec.key, list(latest), ("content_hash",))
    write = []
    changed = 0
    for key, row in latest.items():
        if key not in known:
            counts.new += 1
        elif known[key].content_hash != row["content_hash"]:
            changed += 1
        else:
            counts.unchanged += 1
            continue
        write.append(row)
    counts.changed += changed
    counts.unchanged += duplicates
    if not write:
        return
    columns = [c for c in write[0] if not c.startswith("_")]
    values = itemgetter(*columns)  # every kind has several columns: a tuple per row
    if spec.table is stock:
        # insert new stock rows with nothing reserved; on update, never touch `reserved`
        zero = Decimal(0)
        names = [*columns, "reserved"]
        rows = [(*values(r), zero) for r in write]
    else:
        names = columns
        rows = [values(r) for r in write]
    if not changed and spec.key[0] == "source":
        # only new rows, of a key that is the source's own (held by _lock_stream): INSERT
        _insert(conn, spec.table, names, rows)
    else:
        _upsert(
            conn,
            spec.table,
            names,
            rows,
            key=spec.key,
            update_cols=[c for c in columns if c not in spec.key],
            where=_hash_changed(spec.table),
        )
    if spec.after is not None:
        spec.after(conn, write, batch)


# ---------------------------------------------------------------------------------- orders


def _line_amount(line: Mapping[str, Any], currency: str | None) -> Decimal | None:
    qty, price = line.get("qty"), line.get("unit_price")
    if qty is None or price is None:
        return None
    return (qty * price).quantize(_amount_exponent(currency), rounding=ROUNDING)


def _amount_exponent(currency: str | None) -> Decimal:
    """The exponent a line amount is rounded to: the currency's places, at most the column's."""
    try:
        places = decimals(currency) if currency else 2
    except MoneyError:
        places = 2  # an unknown currency is the currency_allowed check's business, not ours
    # the column holds MONEY.scale decimals: round here, identically on every database
    places = min(places, MONEY.scale or 2)
    return Decimal(1).scaleb(-places)


_LINE_COLUMNS = ("order_id", "line_no", "sku", "qty", "unit_price", "amount", "run_id")


def _line_rows(ids: Mapping[str, int], orders_: Iterable[tuple[str, dict, str]],
               run_id: str) -> list[tuple]:
    """The order_lines rows (``_LINE_COLUMNS`` tuples) of mapped orders (amount as
    _line_amount, the exponent found once per currency)."""
    rows = []
    append = rows.append
    exponents: dict[Any, Decimal] = {}
    for ext, rec, _ in orders_:
        currency = rec.get("currency")
        exp = exponents.get(currency)
        if exp is None:
            exp = exponents[currency] = _amount_exponent(currency)
        order_id = ids[ext]
        for line in rec.get("lines") or ():
            qty, price = line.get("qty"), line.get("unit_price")
            append((
                order_id,
                line["line_no"],
                line.get("sku"),
                qty,
                price,
                None if qty is None or price is None
                else (qty * price).quantize(exp, rounding=ROUNDING),
                run_id,
            ))
    return rows


_ORDER_COLUMNS = (
    "source", "external_id", "order_no", "customer_code", "customer_email", "customer_id",
    "ordered_at", "source_updated_at", "currency", "total", "ship_region", "order_date",
    "lines_hash", "fulfilment_status", "status", "content_hash", "captured_at", "run_id",
)
# captured_at stays the first capture; status is set explicitly (captured)
_ORDER_UPDATE = tuple(c for c in _ORDER_COLUMNS if c not in ("source", "external_id", "captured_at"))


def _order_row(rec: dict, ext: str, batch: _Batch, chash: str, customer_id: int | None
               ) -> tuple:
    """The orders row (``_ORDER_COLUMNS`` values) of a mapped order; ``customer_id``: the
    customer its code names, when the warehouse holds it already."""
    ordered_at = rec.get("ordered_at")
    if isinstance(ordered_at, datetime) and ordered_at.tzinfo is None:
        ordered_at = ordered_at.replace(tzinfo=UTC)
    return (
        batch.source,
        ext,
        rec.get("order_no"),
        rec.get("customer_code"),
        rec.get("customer_email"),
        customer_id,  # else resolve_customers sets it (by code or e-mail) before the gate
        ordered_at,
        rec.get("updated_at"),
        rec.get("currency"),
        rec.get("total"),
        rec.get("ship_region"),
        ordered_at.astimezone(UTC).date() if ordered_at else None,
        lines_hash(rec.get("lines") or []),
        rec.get("fulfilment_status"),
        CAPTURED,
        chash,
        batch.now,
        batch.run_id,
    )


def _land_orders(
    conn: Connection,
    batch: _Batch,
    mapped: list[tuple[RawRecord, dict]],
    counts: LoadCounts,
) -> None:
    source = batch.source
    items = []
    for raw, rec in mapped:
        ext = rec.get("external_id") or raw.external_id
        items.append(((source, ext), raw, (ext, rec, _record_hash(rec))))
    latest, duplicates = _newest(items)
    counts.unchanged += duplicates
    # locked: a worker validating these orders meanwhile must not see them reopened under it
    known = _existing(
        conn,
        orders,
        ("source", "external_id"),
        list(latest),
        ("id", "content_hash", "status"),
        lock=True,
    )
    new: list[tuple[str, dict, str]] = []
    reopened: list[tuple[str, dict, str]] = []
    back_from_quarantine: list[int] = []
    for key, (ext, rec, chash) in latest.items():
        have = known.get(key)
        if have is None:
            new.append((ext, rec, chash))
        elif have.content_hash == chash:
            counts.unchanged += 1
        elif have.status in REOPENABLE:
            reopened.append((ext, rec, chash))
            if have.status != CAPTURED:
                back_from_quarantine.append(have.id)
        else:
            counts.amended += 1  # already acted on: kept in raw_records, not applied
    counts.new += len(new)
    counts.changed += len(reopened)
    _fulfilment_status(conn, batch, latest)
    if not new and not reopened:
        return

    if back_from_quarantine:
        transition(conn, back_from_quarantine, OrderState.CAPTURED, batch.run_id, "amended at source")
    # the customers the orders' codes name, resolved as the rows are written: one lookup per
    # batch instead of an UPDATE of every new order at the gate (resolve_customers then has
    # only the codes not held yet and the e-mails left)
    codes = list({c for _, rec, _ in new + reopened
                  if isinstance(c := rec.get("customer_code"), str)})
    by_code = dict(conn.execute(select(customers.c.code, customers.c.id).where(
        in_values(customers.c.code, codes, conn.dialect.name))).all()) if codes else {}
    rows = [_order_row(rec, ext, batch, chash, by_code.get(rec.get("customer_code")))
            for ext, rec, chash in new + reopened]
    if reopened:
        _upsert(conn, orders, _ORDER_COLUMNS, rows, key=("source", "external_id"),
                update_cols=_ORDER_UPDATE)
    else:  # all new: a plain INSERT (see _lock_stream)
        _insert(conn, orders, _ORDER_COLUMNS, rows)

    ids = {
        ext: oid
        for ext, oid in conn.execute(
            select(orders.c.external_id, orders.c.id).where(
                orders.c.source == source,
                in_values(orders.c.external_id, [ext for ext, _, _ in new], conn.dialect.name),
            )
        )
    } if new else {}
    ids.update({ext: known[(source, ext)].id for ext, _, _ in reopened})
    if reopened:
        # the new version's lines replace the old ones (nothing is allocated before validation)
        conn.execute(
            delete(order_lines).where(
                in_values(order_lines.c.order_id, [ids[e] for e, _, _ in reopened], conn.dialect.name)
            )
        )
    _insert(conn, order_lines, _LINE_COLUMNS, _line_rows(ids, new + reopened, batch.run_id))
    if new:
        reason = f"captured from {source}"
        _insert(
            conn,
            order_events,
            ("order_id", "from_state", "to_state", "at", "reason", "run_id"),
            [(ids[ext], None, CAPTURED, batch.now, reason, batch.run_id) for ext, _, _ in new],
        )


def _fulfilment_status(conn: Connection, batch: _Batch, latest: Mapping[Any, Any]) -> None:
    """Store the channel's fulfilment status of orders we already hold, whatever their state
    (on_shipment invoicing and the shipped notification read it). Only records whose mapper
    reports the key; an unchanged status writes nothing (a rerun changes nothing)."""
    rows = [
        (batch.source, ext, rec["fulfilment_status"], batch.run_id)
        for ext, rec, _ in latest.values() if "fulfilment_status" in rec
    ]
    if rows:
        _executemany(
            conn,
            update(orders)
            .where(orders.c.source == bindparam("b_source"),
                   orders.c.external_id == bindparam("b_ext"),
                   orders.c.fulfilment_status.is_distinct_from(bindparam("b_status")))
            .values(fulfilment_status=bindparam("b_status"), run_id=bindparam("b_run")),
            ("b_source", "b_ext", "b_status", "b_run"),
            rows,
        )


def _save_cursor(conn: Connection, batch: _Batch, cursor: Cursor) -> None:
    t = sync_state
    _upsert(
        conn,
        t,
        ("source", "stream", "cursor_value", "cursor_id", "updated_at", "run_id"),
        [(batch.source, batch.stream, cursor.updated_at, cursor.id, batch.now, batch.run_id)],
        key=("source", "stream"),
        update_cols=("cursor_value", "cursor_id", "updated_at", "run_id"),
        # an unchanged cursor is not rewritten: a rerun over the same data changes nothing
        where=lambda ex: or_(
            t.c.cursor_value.is_distinct_from(ex.cursor_value),
            t.c.cursor_id.is_distinct_from(ex.cursor_id),
        ),
    )
