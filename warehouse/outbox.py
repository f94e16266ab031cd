"""The outbox: every push to an external system is a row here first (DESIGN invariant 3).

Life of a row: ``pending`` -> ``sending`` (the request may have left) -> ``done`` | ``failed``.

- ``enqueue`` creates rows set-based with a deterministic idempotency key
  ``{target}:{operation}:{business_key}``; the unique key makes a second enqueue a no-op.
- ``claim`` hands a batch to one worker: it stamps ``claimed_at`` in the same statement that
  picks the rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), and skips rows another worker
  claimed within the lease, so two workers never take the same row.
- ``mark_sending`` is committed before the request leaves. A row found still ``sending`` after
  its lease has expired, or any row with an earlier attempt, may have reached the target:
  ``claim`` returns it with ``recover=True`` and the connector looks for the remote document
  before creating one.
- ``mark_done`` only on confirmed success; ``mark_failed`` puts the row back to ``pending``
  until ``max_attempts``, then ``failed`` (left for a person, never retried silently).
- ``done`` -> ``compensated``: a rollback (flows/rollback.py) undid the remote document;
  ``done_in_run`` lists what a run pushed, newest first. A compensated row keeps its key, so
  enqueue never re-creates it: ``requeue_compensated`` (an ops decision) sends it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)

from warehouse.engine import begin_write, dialect_insert, id_windows, json_default
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
    with begin_write(engine) as conn:
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
    """INSERT the rows, skipping keys already queued (a concurrent enqueue); -> rows inserted."""
    if conn.dialect.name == "postgresql":
        # one JSON parameter expanded server-side: ~4x faster than psycopg's multi-row VALUES,
        # whose client-side parameter handling dominates at tens of thousands of rows
        cols = ", ".join(rows[0])
        stmt = text(
            f"INSERT INTO outbox ({cols}) SELECT {cols} "
            "FROM json_populate_recordset(NULL::outbox, CAST(:rows AS json)) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
        )
        return len(conn.execute(stmt, {"rows": json.dumps(rows, default=json_default)}).all())
    stmt = (
        dialect_insert(conn, outbox)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(outbox.c.id)
    )
    return len(conn.execute(stmt, rows).all())


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


def _fulfilment_docs(
    conn: Connection, target: str, orders_from: Sequence[str] | None,
    window: tuple[int, int],
) -> list[dict[str, Any]]:
    business_key = orders.c.external_id
    key = _key_expr(target, "fulfilment", business_key)
    q = (
        select(
            orders.c.id.label("group_id"),
            orders.c.external_id,
            orders.c.order_no,
            key.label("key"),
            order_lines.c.sku,
            allocations.c.qty,
            literal(True).label("has_line"),
        )
        .join(order_lines, order_lines.c.order_id == orders.c.id)
        .join(allocations, and_(allocations.c.order_line_id == order_lines.c.id,
                                allocations.c.status == "allocated"))
        .where(orders.c.source == target, orders.c.status == "allocated", _not_queued(key),
               *_source_filter(orders_from), *_in_window(orders.c.id, window))
        .order_by(orders.c.id, order_lines.c.line_no, allocations.c.id)
    )
    return _group(
        conn.execute(q),
        lambda r: {
            "idempotency_key": r.key, "business_key": r.external_id, "order_id": r.group_id,
            "payload": {"key": r.key, "order_external_id": r.external_id,
                        "order_no": r.order_no, "lines": []},
        },
        lambda r: {"sku": r.sku, "qty": _qty(r.qty)},
    )


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
        .outerjoin(order_lines, order_lines.c.order_id == orders.c.id)
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


def claim(
    engine: Engine,
    target: str,
    operation: str,
    limit: int,
    after_id: int = 0,
    lease_seconds: float = LEASE_SECONDS,
) -> list[dict[str, Any]]:
    """Take up to ``limit`` unclaimed pending or sending rows for one worker, oldest first.

    Rows claimed by another worker within ``lease_seconds`` are skipped; ``sending`` rows come
    back with ``recover=True``. ``after_id`` lets a drain loop move past rows it already tried
    in this pass (a failed row goes back to pending and would otherwise be taken again at once).
    """
    now = _now()
    stale = now - timedelta(seconds=lease_seconds)
    pick = (
        select(outbox.c.id)
        .where(
            outbox.c.target == target,
            outbox.c.operation == operation,
            outbox.c.status.in_(ACTIVE),
            outbox.c.id > after_id,
            or_(outbox.c.claimed_at.is_(None), outbox.c.claimed_at <= stale),
        )
        .order_by(outbox.c.id)
        .limit(limit)
        # PostgreSQL: a second worker skips the rows this statement is taking; SQLite has one
        # writer at a time, and the pick and the stamp are one statement there too
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(outbox)
        .where(outbox.c.id.in_(pick.scalar_subquery()))
        .values(claimed_at=now)
        .returning(
            outbox.c.id, outbox.c.idempotency_key, outbox.c.target, outbox.c.operation,
            outbox.c.business_key, outbox.c.order_id, outbox.c.payload, outbox.c.status,
            outbox.c.attempts,
        )
    )
    with begin_write(engine) as conn:
        rows = conn.execute(stmt).mappings().all()
    # Any earlier attempt may have reached the target (a timeout after the remote create, a
    # lost answer): such a row is looked up before it is created again, not only `sending` ones.
    claimed = [{**r, "recover": r["status"] == "sending" or r["attempts"] > 0} for r in rows]
    claimed.sort(key=lambda r: r["id"])  # RETURNING order is not guaranteed
    return claimed


def mark_sending(engine: Engine, ids: Sequence[int]) -> None:
    """Record that the request may leave now (attempts + 1, lease renewed). Commit comes first."""
    if not ids:
        return
    with begin_write(engine) as conn:
        conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(list(ids)), outbox.c.status.in_(ACTIVE))
            .values(status="sending", attempts=outbox.c.attempts + 1, claimed_at=_now())
        )


def mark_done(engine: Engine, results: Sequence[tuple[int, str | None]],
              run_id: str | None = None) -> None:
    """Confirmed successes: (outbox id, remote document id).

    ``run_id``: the run that confirmed them; it becomes the row's run_id (invariant 6: the run
    that last wrote the row), so ``done_in_run`` - what a rollback undoes - names the run that
    really pushed the document. None keeps the enqueuing run's id."""
    if not results:
        return
    stamp = {} if run_id is None else {"run_id": run_id}
    stmt = (
        update(outbox)
        .where(outbox.c.id == bindparam("b_id"))
        .values(status="done", remote_id=bindparam("b_remote"), done_at=bindparam("b_at"),
                last_error=None, **stamp)
    )
    now = _now()
    with begin_write(engine) as conn:
        conn.execute(stmt, [{"b_id": i, "b_remote": r, "b_at": now} for i, r in results])


def mark_failed(
    engine: Engine, results: Sequence[tuple[int, str]], max_attempts: int = MAX_ATTEMPTS
) -> None:
    """Failed sends: (outbox id, error). Back to pending until ``max_attempts``, then failed."""
    if not results:
        return
    stmt = (
        update(outbox)
        .where(outbox.c.id == bindparam("b_id"), outbox.c.status != "done")
        .values(
            status=case((outbox.c.attempts < max_attempts, "pending"), else_="failed"),
            last_error=bindparam("b_error"),
            claimed_at=None,  # free for the next drain at once
        )
    )
    with begin_write(engine) as conn:
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
