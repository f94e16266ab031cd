"""The outbox: every push to an external system is a row here first (DESIGN invariant 3).

Life of a row: ``pending`` -> ``sending`` (the request may have left) -> ``done`` | ``failed``.

- ``enqueue`` creates rows set-based with a deterministic idempotency key
  ``{target}:{operation}:{business_key}``; the unique key makes a second enqueue a no-op.
- ``claim`` hands a batch to one worker: it stamps ``claimed_at`` in the same transaction
  that picks the rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite),
  and skips rows another worker claimed within the lease, so two workers never take the same
  row. One statement stamps the whole batch (the ids as one parameter).
- ``mark_sending`` is committed before the request leaves (a drain does it in the claim's own
  statement and commit: ``claim(..., sending=True)``). A row found still ``sending`` after
  its lease has expired, or any row with an earlier attempt, may have reached the target:
  ``claim`` returns it with ``recover=True`` and the connector looks for the remote document
  before creating one.
- ``mark_done`` only on confirmed success; ``mark_failed`` puts the row back to ``pending``
  until ``max_attempts``, then ``failed`` (left for a person, never retried silently);
  ``mark_results`` does both for a batch in one transaction, set-based.
- ``done`` -> ``compensated``: a rollback (flows/rollback.py) undid the remote document;
  ``done_in_run`` lists what a run pushed, newest first. A compensated row keeps its key, so
  enqueue never re-creates it: ``requeue_compensated`` (an ops decision) sends it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.types import NullType

from connectors.base import paused_gc
from warehouse.engine import begin_write, id_windows, in_values, insert_rows, update_rows
from warehouse.money import quantize
from warehouse.orders import transition
from warehouse.schema import allocations, customers, invoices, order_lines, orders, outbox

OPERATIONS = ("fulfilment", "sales_order", "invoice")
PUSH_OPERATIONS = ("fulfilment", "sales_order")  # what takes an order from allocated to pushed
MAX_ATTEMPTS = 5
# How long a claim keeps a row from other workers. mark_sending renews it just before the
# request leaves, so it must cover one batch's push; after it a `sending` row counts as crashed.
LEASE_SECONDS = 600
ACTIVE = ("pending", "sending")
ENQUEUE_CHUNK = 5000  # order (or invoice) ids per window: enqueue's memory follows this
BIG_DRAIN = 10_000  # claimable rows from which a drain refreshes statistics (ready_to_drain)


class OutboxError(ValueError):
    """A bad enqueue request (unknown operation)."""


def idempotency_key(target: str, operation: str, business_key: str) -> str:
    """The deterministic key of a push: the same business document always gets the same key."""
    return f"{target}:{operation}:{business_key}"


def order_doc_no(prefix: str) -> ColumnElement[str]:
    """SQL for a deterministic document number: ``{prefix}-{source}-{order_no without '#'}``.

    Computed in SQL so the NOT EXISTS on the idempotency key can use its unique index. Falls
    back to the external id when an order has no number, so the key is never NULL.
    """
    number = func.replace(func.coalesce(orders.c.order_no, orders.c.external_id), "#", "")
    return literal(f"{prefix}-") + orders.c.source + literal("-") + number


def _key_expr(target: str, operation: str, business_key: ColumnElement[str]) -> ColumnElement[str]:
    # must spell exactly what idempotency_key() spells (a test holds them together)
    return literal(f"{target}:{operation}:") + business_key


def _now() -> datetime:
    return datetime.now(UTC)


def iso_utc(value: datetime | None) -> str | None:
    """ISO-8601 UTC with a Z; a naive value is taken as UTC (the warehouse stores UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _money(value: Decimal | None, currency: str | None = None) -> str | None:
    """Money as a string; with a currency, in its own decimals (JPY "1200", USD "12.50")."""
    if value is None:
        return None
    return str(quantize(value, currency) if currency else value)


def _qty(value: Decimal | None) -> str | None:
    """Quantities without padding zeros ("2", "2.5"), never in exponent form."""
    if value is None:
        return None
    return format(value.normalize(), "f")


# --- enqueue ----------------------------------------------------------------------------------


def enqueue(
    engine: Engine,
    run_id: str,
    operation: str,
    target: str,
    orders_from: Sequence[str] | None = None,
) -> int:
    """Create the outbox rows ``operation`` needs for ``target``; return how many are new.

    - ``fulfilment``: the target's own allocated orders without a fulfilment row.
    - ``sales_order``: allocated and backordered orders from other sources (the ERP target
      does not get its own orders back).
    - ``invoice``: invoices without an outbox row.
    ``orders_from`` narrows to orders from these sources (None: any source).
    One bulk query builds the docs (only for keys not yet queued); one INSERT ... ON CONFLICT
    (idempotency_key) DO NOTHING writes them, so a concurrent enqueue cannot double a row.
    """
    builders = {"fulfilment": _fulfilment_docs, "sales_order": _sales_order_docs,
                "invoice": _invoice_docs}
    if operation not in builders:
        raise OutboxError(
            f"outbox: unknown operation {operation!r} (known: {', '.join(OPERATIONS)})"
        )
    now = _now()
    id_col = invoices.c.id if operation == "invoice" else orders.c.id
    added = 0
    # paused_gc: a window's docs are thousands of small dicts that make no cycles
    with paused_gc(), begin_write(engine) as conn:
        # window by window over the ids: the docs of one window at a time in memory
        for window in id_windows(conn, id_col, ENQUEUE_CHUNK):
            rows = builders[operation](conn, target, orders_from, window)
            if not rows:
                continue
            for row in rows:
                row.update(target=target, operation=operation, status="pending", attempts=0,
                           created_at=now, run_id=run_id)
            added += _insert_new(conn, rows)
    return added


def _insert_new(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """INSERT the rows (dicts with the same keys, every column they need), in their order,
    skipping keys already queued (a concurrent enqueue); -> rows inserted.

    The driver's fastest path (``insert_rows``: COPY on PostgreSQL, a driver executemany on
    SQLite) with ``ON CONFLICT (idempotency_key) DO NOTHING``."""
    if not rows:
        return 0
    columns = list(rows[0])
    values = itemgetter(*columns)
    return insert_rows(conn, outbox, columns, [values(r) for r in rows],
                       skip_existing=("idempotency_key",))


def _not_queued(key: ColumnElement[str]) -> ColumnElement[bool]:
    return ~exists().where(outbox.c.idempotency_key == key)


def _source_filter(orders_from: Sequence[str] | None) -> list[ColumnElement[bool]]:
    return [] if orders_from is None else [orders.c.source.in_(list(orders_from))]


def _in_window(id_col: ColumnElement[int], window: tuple[int, int]) -> list[ColumnElement[bool]]:
    return [id_col > window[0], id_col <= window[1]]


def _group(rows: Iterable[Any], head: Any, line: Any) -> list[dict[str, Any]]:
    """Fold (order, line) rows, sorted by order, into one row per order with its doc lines."""
    out: list[dict[str, Any]] = []
    current = None
    for r in rows:
        if current != r.group_id:
            current = r.group_id
            out.append(head(r))
        if r.has_line:
            out[-1]["payload"]["lines"].append(line(r))
    return out


def _each_value_once(conn: Connection, column: ColumnElement[Any],
                     fn: Callable[[Any], str | None]
                     ) -> tuple[ColumnElement[Any], Callable[[Any], str | None]]:
    """What to select for ``column`` and the function giving ``fn(its value)`` from what comes
    back, computed once per distinct value: a window's lines repeat a few quantities thousands
    of times. Only for an ``fn`` that reads the value, not its spelling (``_qty``: 2 and 2.000
    give "2"). On SQLite a Numeric comes from the driver as a float or int: it is selected as
    such (no per-row Decimal) and the column's own result processing runs once per value;
    PostgreSQL's driver gives the Decimal itself. Zero is never kept (0 and -0 are one key
    but may spell differently)."""
    dialect = conn.dialect
    process = None
    if dialect.name == "sqlite":
        process = column.type.dialect_impl(dialect).result_processor(dialect, None)
        column = type_coerce(column, NullType())
    kept: dict[Any, str | None] = {}

    def once(value: Any) -> str | None:
        text = kept.get(value)
        if text is None:
            text = fn(process(value) if process is not None and value is not None else value)
            if value:
                kept[value] = text
        return text

    return column, once


def _fulfilment_docs(
    conn: Connection, target: str, orders_from: Sequence[str] | None,
    window: tuple[int, int],
) -> list[dict[str, Any]]:
    business_key = orders.c.external_id
    key = _key_expr(target, "fulfilment", business_key)
    # (order, allocated line) rows sorted by order, folded into one doc per order: the hot
    # loop of a big enqueue, so plain tuples and each distinct quantity formatted once
    qty_column, qty = _each_value_once(conn, allocations.c.qty, _qty)
    q = (
        select(
            orders.c.id,
            orders.c.external_id,
            orders.c.order_no,
            key.label("key"),
            order_lines.c.sku,
            qty_column,
        )
        .join(order_lines, order_lines.c.order_id == orders.c.id)
        .join(allocations, and_(allocations.c.order_line_id == order_lines.c.id,
                                allocations.c.status == "allocated"))
        .where(orders.c.source == target, orders.c.status == "allocated", _not_queued(key),
               *_source_filter(orders_from), *_in_window(orders.c.id, window),
               # implied by the join, spelled out so the window's lines are found by their
               # index (PostgreSQL would scan every line of the table per window)
               *_in_window(order_lines.c.order_id, window))
        .order_by(orders.c.id, order_lines.c.line_no, allocations.c.id)
    )
    docs: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    current = None
    for order_id, external_id, order_no, doc_key, sku, allocated in conn.execute(q):
        if order_id != current:
            current = order_id
            lines = []
            docs.append({"idempotency_key": doc_key, "business_key": external_id,
                         "order_id": order_id,
                         "payload": {"key": doc_key, "order_external_id": external_id,
                                     "order_no": order_no, "lines": lines}})
        lines.append({"sku": sku, "qty": qty(allocated)})
    return docs


def _sales_order_docs(
    conn: Connection, target: str, orders_from: Sequence[str] | None,
    window: tuple[int, int],
) -> list[dict[str, Any]]:
    bill_no = order_doc_no("SO")
    key = _key_expr(target, "sales_order", bill_no)
    q = (
        select(
            orders.c.id.label("group_id"),
            orders.c.order_no,
            orders.c.source,
            func.coalesce(customers.c.code, orders.c.customer_code).label("customer_code"),
            orders.c.currency,
            orders.c.ordered_at,
            orders.c.total,
            bill_no.label("bill_no"),
            key.label("key"),
            order_lines.c.sku,
            order_lines.c.qty,
            order_lines.c.unit_price,
            order_lines.c.id.is_not(None).label("has_line"),
        )
        .outerjoin(customers, customers.c.id == orders.c.customer_id)
        .outerjoin(order_lines, and_(order_lines.c.order_id == orders.c.id,
                                     *_in_window(order_lines.c.order_id, window)))  # as above
        .where(orders.c.status.in_(("allocated", "backordered")), orders.c.source != target,
               _not_queued(key), *_source_filter(orders_from), *_in_window(orders.c.id, window))
        .order_by(orders.c.id, order_lines.c.line_no)
    )
    return _group(
        conn.execute(q),
        lambda r: {
            "idempotency_key": r.key, "business_key": r.bill_no, "order_id": r.group_id,
            "payload": {"key": r.key, "bill_no": r.bill_no, "order_no": r.order_no,
                        "source": r.source, "customer_code": r.customer_code,
                        "currency": r.currency, "ordered_at": iso_utc(r.ordered_at),
                        "lines": [], "total": _money(r.total, r.currency)},
        },
        lambda r: {"sku": r.sku, "qty": _qty(r.qty), "unit_price": _money(r.unit_price)},
    )


def _invoice_docs(
    conn: Connection, target: str, orders_from: Sequence[str] | None,
    window: tuple[int, int],
) -> list[dict[str, Any]]:
    key = _key_expr(target, "invoice", invoices.c.invoice_no)
    q = (
        select(
            invoices.c.id.label("group_id"),
            invoices.c.order_id,
            invoices.c.invoice_no,
            invoices.c.order_ref,
            invoices.c.customer_code,
            invoices.c.currency,
            invoices.c.issued_at,
            invoices.c.amount,
            key.label("key"),
            order_lines.c.sku,
            order_lines.c.qty,
            order_lines.c.unit_price,
            order_lines.c.amount.label("line_amount"),
            order_lines.c.id.is_not(None).label("has_line"),
        )
        .join(orders, orders.c.id == invoices.c.order_id)
        .outerjoin(order_lines, order_lines.c.order_id == orders.c.id)
        .where(_not_queued(key), *_source_filter(orders_from),
               *_in_window(invoices.c.id, window))
        .order_by(invoices.c.id, order_lines.c.line_no)
    )
    return _group(
        conn.execute(q),
        lambda r: {
            "idempotency_key": r.key, "business_key": r.invoice_no, "order_id": r.order_id,
            "payload": {"key": r.key, "bill_no": r.invoice_no, "invoice_no": r.invoice_no,
                        "order_ref": r.order_ref, "customer_code": r.customer_code,
                        "currency": r.currency, "issued_at": iso_utc(r.issued_at),
                        "amount": _money(r.amount, r.currency), "lines": []},
        },
        lambda r: {"sku": r.sku, "qty": _qty(r.qty), "unit_price": _money(r.unit_price),
                   "amount": _money(r.line_amount, r.currency)},
    )


# --- claim and mark ---------------------------------------------------------------------------


# what claim returns of a row besides its id, status and attempts (taken by the pick)
# The payload comes back as its text and is parsed by orjson (``_payload``): a drain claims
# every row once, and json.loads of a 900-byte invoice document is 15 us, orjson's 10 us.
# Safe for these documents: we wrote them (json_text: money and quantities as strings, no
# float, no integer beyond 64 bits that orjson would read as a float).
_CLAIMED = (outbox.c.id, outbox.c.idempotency_key, outbox.c.target, outbox.c.operation,
            outbox.c.business_key, outbox.c.order_id, cast(outbox.c.payload, Text))
_payload = orjson.loads


def _claimable(target: str, operation: str, stale: datetime) -> list[ColumnElement[bool]]:
    """Rows of (target, operation) no worker holds: never claimed, or the lease ran out."""
    return [outbox.c.target == target, outbox.c.operation == operation,
            or_(outbox.c.claimed_at.is_(None), outbox.c.claimed_at <= stale)]


def claim(
    engine: Engine,
    target: str,
    operation: str,
    limit: int,
    after_id: int = 0,
    lease_seconds: float = LEASE_SECONDS,
    sending: bool = False,
) -> list[dict[str, Any]]:
    """Take up to ``limit`` unclaimed pending or sending rows for one worker, oldest first.

    Rows claimed by another worker within ``lease_seconds`` are skipped; ``sending`` rows come
    back with ``recover=True``. ``after_id`` lets a drain loop move past rows it already tried
    in this pass (a failed row goes back to pending and would otherwise be taken again at once).
    ``sending=True`` also does ``mark_sending`` in the same statement and commit (a drain about
    to send the batch): the rows come back as they were when claimed.
    """
    now = _now()
    stale = now - timedelta(seconds=lease_seconds)
    stamp: dict[str, Any] = {"claimed_at": now}
    if sending:
        stamp.update(status="sending", attempts=outbox.c.attempts + 1)
    pick = (
        # narrow: whatever plan the database picks, it never sorts payloads
        select(outbox.c.id, outbox.c.status, outbox.c.attempts)
        .where(*_claimable(target, operation, stale), outbox.c.id > after_id)
        .order_by(outbox.c.id)
        .limit(limit)
        # PostgreSQL: a second worker skips the rows this transaction has locked; SQLite has
        # one writer at a time (begin_write takes the write lock before the pick)
        .with_for_update(skip_locked=True)
    )
    with begin_write(engine) as conn:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            rows = conn.execute(pick.where(outbox.c.status.in_(ACTIVE))).all()
        else:
            # one pick per status: each walks the status index in id order and stops at
            # ``limit``, where one IN (...) would sort every active row on every claim
            rows = sorted((r for status in ACTIVE
                           for r in conn.execute(pick.where(outbox.c.status == status))),
                          key=itemgetter(0))[:limit]
        if not rows:
            return []
        # the stamp: one statement for the batch (the ids as one parameter), which also
        # returns the rest of each row
        stamped = {r[0]: r for r in conn.execute(
            update(outbox).where(in_values(outbox.c.id, [r.id for r in rows], dialect))
            .values(**stamp).returning(*_CLAIMED))}
    # Any earlier attempt may have reached the target (a timeout after the remote create, a
    # lost answer): such a row is looked up before it is created again, not only `sending` ones.
    # status and attempts are the row's as claimed (before ``sending`` changed them).
    claimed = []
    for id_, status, attempts in rows:
        _, key, target_, operation_, business_key, order_id, payload = stamped[id_]
        claimed.append({"id": id_, "idempotency_key": key, "target": target_,
                        "operation": operation_, "business_key": business_key,
                        "order_id": order_id, "payload": _payload(payload), "status": status,
                        "attempts": attempts, "recover": status == "sending" or attempts > 0})
    return claimed


def ready_to_drain(engine: Engine, target: str, operation: str,
                   lease_seconds: float = LEASE_SECONDS) -> bool:
    """Whether ``claim`` would find a row now (a drain looks before it builds a connector).

    PostgreSQL, a big drain (``BIG_DRAIN`` rows or more, a bulk enqueue just before): the
    outbox's statistics are refreshed first. Planned on the statistics from before the
    enqueue, claim's pick would read and sort every active row on each call, where it
    should walk the primary key from ``after_id``; autovacuum analyzes too, but a minute or
    more later."""
    stale = _now() - timedelta(seconds=lease_seconds)
    waiting = (select(outbox.c.id).where(*_claimable(target, operation, stale),
                                         outbox.c.status.in_(ACTIVE))
               .limit(BIG_DRAIN).subquery())
    with engine.connect() as conn:
        found = conn.execute(select(func.count()).select_from(waiting)).scalar_one()
    if found >= BIG_DRAIN and engine.dialect.name == "postgresql":
        with begin_write(engine) as conn:
            conn.execute(text("ANALYZE outbox"))
    return found > 0


def mark_sending(engine: Engine, ids: Sequence[int]) -> None:
    """Record that the request may leave now (attempts + 1, lease renewed). Commit comes first."""
    if not ids:
        return
    with begin_write(engine) as conn:
        conn.execute(
            update(outbox)
            .where(in_values(outbox.c.id, list(ids), conn.dialect.name),
                   outbox.c.status.in_(ACTIVE))
            .values(status="sending", attempts=outbox.c.attempts + 1, claimed_at=_now())
        )


def mark_done(engine: Engine, results: Sequence[tuple[int, str | None]],
              run_id: str | None = None) -> None:
    """Confirmed successes: (outbox id, remote document id).

    ``run_id``: the run that confirmed them; it becomes the row's run_id (invariant 6: the run
    that last wrote the row), so ``done_in_run`` - what a rollback undoes - names the run that
    really pushed the document. None keeps the enqueuing run's id."""
    mark_results(engine, results, (), run_id=run_id)


def mark_failed(
    engine: Engine, results: Sequence[tuple[int, str]], max_attempts: int = MAX_ATTEMPTS
) -> None:
    """Failed sends: (outbox id, error). Back to pending until ``max_attempts``, then failed."""
    mark_results(engine, (), results, max_attempts=max_attempts)


def mark_results(engine: Engine, done: Sequence[tuple[int, str | None]],
                 failed: Sequence[tuple[int, str]], run_id: str | None = None,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
    """``mark_done`` and ``mark_failed`` of one batch's results, in one transaction."""
    if not done and not failed:
        return
    with begin_write(engine) as conn:
        if done:
            _mark_done(conn, done, run_id)
        if failed:
            _mark_failed(conn, failed, max_attempts)


def _mark_done(conn: Connection, results: Sequence[tuple[int, str | None]],
               run_id: str | None) -> None:
    # update_rows: one UPDATE ... FROM on PostgreSQL, the driver's executemany on SQLite;
    # a repeated id: its last result counts
    now = _now()
    columns = ["status", "remote_id", "done_at", "last_error"]
    tail: tuple[Any, ...] = ()
    if run_id is not None:
        columns.append("run_id")
        tail = (run_id,)
    update_rows(conn, outbox, "id", columns,
                [(i, "done", None if r is None else str(r), now, None, *tail)
                 for i, r in dict(results).items()])


def _mark_failed(conn: Connection, results: Sequence[tuple[int, str]],
                 max_attempts: int) -> None:
    stmt = (
        update(outbox)
        .where(outbox.c.id == bindparam("b_id"), outbox.c.status != "done")
        .values(
            status=case((outbox.c.attempts < max_attempts, "pending"), else_="failed"),
            last_error=bindparam("b_error"),
            claimed_at=None,  # free for the next drain at once
        )
    )
    conn.execute(stmt, [{"b_id": i, "b_error": e[:2000]} for i, e in results])


def pending_counts(engine: Engine) -> dict[str, dict[str, dict[str, int]]]:
    """Rows not yet done: {target: {operation: {status: n}}} for pending, sending and failed."""
    q = (
        select(outbox.c.target, outbox.c.operation, outbox.c.status, func.count())
        .where(outbox.c.status != "done")
        .group_by(outbox.c.target, outbox.c.operation, outbox.c.status)
    )
    out: dict[str, dict[str, dict[str, int]]] = {}
    with engine.connect() as conn:
        for target, operation, status, n in conn.execute(q):
            out.setdefault(target, {}).setdefault(operation, {})[status] = n
    return out


def complete_pushes(engine: Engine, run_id: str) -> int:
    """Allocated orders whose enqueued pushes (fulfilment, sales order) are all done -> pushed.

    The required pushes are the ones enqueued for the order, so the flow must enqueue for every
    push target before calling this. An order that needs none (an ERP's own order, from a
    channel that takes no fulfilment) has nothing outstanding and moves on too.
    """
    outstanding = and_(outbox.c.order_id == orders.c.id,
                       outbox.c.operation.in_(PUSH_OPERATIONS), outbox.c.status != "done")
    ready = select(orders.c.id).where(orders.c.status == "allocated", ~exists().where(outstanding))
    with begin_write(engine) as conn:
        return transition(conn, ready, "pushed", run_id, "all pushes confirmed")


# --- rollback: compensation -------------------------------------------------------------------

COMPENSATED = "compensated"  # done, then undone at the target by a rollback


def done_in_run(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """What a run pushed: its ``done`` rows, newest completion first (the order a rollback
    undoes them in: an invoice before the sales order it rests on)."""
    q = (
        select(outbox.c.id, outbox.c.idempotency_key, outbox.c.target, outbox.c.operation,
               outbox.c.business_key, outbox.c.order_id, outbox.c.payload, outbox.c.remote_id,
               outbox.c.done_at)
        .where(outbox.c.run_id == run_id, outbox.c.status == "done")
        .order_by(outbox.c.done_at.desc(), outbox.c.id.desc())
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def mark_compensated(conn: Connection, ids: Sequence[int], run_id: str) -> int:
    """Done rows whose remote document was undone -> ``compensated``, in the caller's
    transaction (with the orders' moves). The rollback run becomes the rows' run_id. Only
    ``done`` rows change, so repeating it is a no-op; returns the rows changed."""
    if not ids:
        return 0
    result = conn.execute(
        update(outbox)
        .where(outbox.c.id.in_(list(ids)), outbox.c.status == "done")
        .values(status=COMPENSATED, run_id=run_id, claimed_at=None, last_error=None)
    )
    return result.rowcount


def requeue_compensated(conn: Connection, order_ids: Sequence[int], run_id: str) -> int:
    """Compensated rows of these orders -> ``pending`` as if never sent (attempts 0, no remote
    id), so the next drain pushes them again under the same idempotency key."""
    if not order_ids:
        return 0
    result = conn.execute(
        update(outbox)
        .where(outbox.c.order_id.in_(list(order_ids)), outbox.c.status == COMPENSATED)
        .values(status="pending", attempts=0, remote_id=None, done_at=None, claimed_at=None,
                last_error=None, run_id=run_id)
    )
    return result.rowcount
