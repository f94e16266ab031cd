"""Reconciliation: settle payments against invoices, keep what finance reads up to date.

One transaction per run:
1. load every invoice, every payment and the fx rates in bulk (three SELECTs);
2. ``reconcile_rules.settle`` decides everything from that whole book (pure; see its docstring
   for the rules) - a function of the set, so arrival order and the number of runs that saw a
   payment cannot change the result;
3. write the difference only: ``payment_matches`` (one row per payment and invoice, with rule,
   reason and inputs), ``reconciliation`` (per invoice) and ``payment_reconciliation`` (per
   payment) rows are deleted / inserted / updated only where a value changed, so an unchanged row
   keeps the run id that last really changed it (DESIGN invariant 6) and a rerun writes nothing;
4. settle the orders of paid (or over-paid) invoices: invoiced -> paid, as before;
5. make sure the finance views exist and match this code (no DDL when they already do).

Recomputing from scratch means a late payment may move an earlier decision (a payment received
earlier than one already applied now takes its turn first); the matches table always shows the
decisions for the book as it stands, and an order once ``paid`` stays paid.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, select, text

from connectors.base import paused_gc
from warehouse.engine import begin_write, in_values, insert_rows, update_rows
from warehouse.orders import transition
from warehouse.reconcile_rules import (
    FxRate,
    Invoice,
    Payment,
    Rates,
    ReconcileRules,
    Settlement,
    invoice_status,
    settle,
)
from warehouse.schema import (
    fx_rates,
    invoices,
    orders,
    payment_matches,
    payment_reconciliation,
    payments,
    reconciliation,
)
from warehouse.views import ensure_views

__all__ = ["SETTLING", "STATUSES", "ReconcileRules", "invoice_status", "reconcile"]

STATUSES = ("paid", "part_paid", "over_paid", "open")
# Invoice statuses that settle the order (invoiced -> paid). Over-paid counts: the invoice is
# paid in full (the surplus is held on account for finance to refund), and an invoice that was
# `paid` and then received one more payment would otherwise leave its order's state depending on
# the order the payments arrived in (an order never goes back from paid).
SETTLING = ("paid", "over_paid")
ZERO = Decimal("0.00")

MATCH_COLS = ("amount", "applied", "fee", "fx_rate", "rule", "reason", "inputs")
INVOICE_COLS = ("invoice_no", "customer_code", "currency", "invoiced", "applied", "fees", "excess",
                "outstanding", "status")
PAYMENT_COLS = ("currency", "received", "applied", "unapplied", "status", "reason", "duplicate_of",
                "on_account_invoice_id")
SYNC_CHUNK = 50_000  # wanted rows compared and written at a time (_sync)


# --- load ----------------------------------------------------------------------------------------


def _load(conn: Connection) -> tuple[list[Invoice], list[Payment], list[FxRate]]:
    invs = [Invoice(r.id, r.invoice_no, r.order_ref, r.customer_code, r.currency, r.amount, r.issued_at)
            for r in conn.execute(select(
                invoices.c.id, invoices.c.invoice_no, invoices.c.order_ref, invoices.c.customer_code,
                invoices.c.currency, invoices.c.amount, invoices.c.issued_at))]
    pays = [Payment(r.id, r.source, r.external_id, r.reference, r.customer_code, r.currency, r.amount,
                    r.received_at, r.fee, r.kind)
            for r in conn.execute(select(
                payments.c.id, payments.c.source, payments.c.external_id, payments.c.reference,
                payments.c.customer_code, payments.c.currency, payments.c.amount,
                payments.c.received_at, payments.c.fee, payments.c.kind))]
    rates = [FxRate(r.base, r.quote, r.rate_date, r.rate) for r in conn.execute(select(
        fx_rates.c.base, fx_rates.c.quote, fx_rates.c.rate_date, fx_rates.c.rate))]
    return invs, pays, rates


# --- write the difference --------------------------------------------------------------------------


def _sync(conn: Connection, table: Table, key: Sequence[str], cols: Sequence[str],
          wanted: Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]], run_id: str,
          delete_missing: bool = True, chunk: int | None = None) -> tuple[int, int, int]:
    """Make ``table`` hold exactly ``wanted`` - (key tuple, values of ``cols`` in that order)
    pairs, sorted by key (of a repeated key the last counts) - touching only rows that differ.
    Returns (inserted, updated, deleted).

    ``chunk`` (default ``SYNC_CHUNK``) wanted rows at a time, with the table's rows of the same
    range of the key's first column (the ranges meet, so no stored row falls between two):
    memory follows the chunk, not the book (at TPC-H SF 1 the whole-table dicts were about a
    gigabyte)."""
    dialect = conn.dialect.name
    # the tables synced by more than one key column have a surrogate id to update and delete by
    by_id = "id" in table.c and "id" not in key
    if len(key) > 1 and not by_id:
        raise ValueError(f"{table.name}: a composite key needs a surrogate id")
    n_key, n_cols = len(key), len(cols)
    first = table.c[key[0]]
    stored = select(*(table.c[k] for k in key), *(table.c[c] for c in cols),
                    *([table.c.id] if by_id else []))
    counts = [0, 0, 0]

    def sync_range(part: list[tuple[tuple[Any, ...], tuple[Any, ...]]], *where: Any) -> None:
        have: dict[tuple[Any, ...], tuple[Any, ...]] = {
            tuple(r[:n_key]): tuple(r[n_key:])  # the values of cols, then the id when by_id
            for r in conn.execute(stored.where(*where))
        }
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for k, values in part:
            now = have.pop(k, None)
            if now is None:
                inserts.append((*k, *values, run_id))
            elif now[:n_cols] != values:
                updates.append((now[n_cols] if by_id else k[0], *values, run_id))
        gone = list(have) if delete_missing else []  # what is left of the range is not wanted
        if gone:
            if by_id:
                conn.execute(delete(table).where(in_values(
                    table.c.id, [have[k][n_cols] for k in gone], dialect)))
            else:
                conn.execute(delete(table).where(in_values(
                    table.c[key[0]], [k[0] for k in gone], dialect)))
        update_rows(conn, table, "id" if by_id else key[0], (*cols, "run_id"), updates)
        insert_rows(conn, table, (*key, *cols, "run_id"), inserts)
        counts[0] += len(inserts)
        counts[1] += len(updates)
        counts[2] += len(gone)

    above: list[Any] = []  # the next range starts above the last chunk's highest first key
    for part in _key_chunks(wanted, chunk or SYNC_CHUNK):
        top = part[-1][0][0]
        sync_range(part, *above, first <= top)
        above = [first > top]
    if delete_missing:  # stored rows above the last wanted key (all of them, with none wanted)
        sync_range([], *above)
    return counts[0], counts[1], counts[2]


def _key_chunks(wanted: Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]], size: int
                ) -> Iterable[list[tuple[tuple[Any, ...], tuple[Any, ...]]]]:
    """``wanted`` in lists of about ``size`` pairs, never splitting one first-key value over
    two lists (the table is read by ranges of it); a repeated key keeps its last values."""
    part: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
    for k, values in wanted:
        if part and part[-1][0] == k:
            part[-1] = (k, values)
            continue
        if len(part) >= size and part[-1][0][0] != k[0]:
            yield part
            part = []
        part.append((k, values))
    if part:
        yield part


# wanted rows: (key tuple, values in MATCH_COLS / INVOICE_COLS / PAYMENT_COLS order), sorted by
# key and made as they are written (tuples, not dicts: at 1.5 M invoices a dict per row was
# about a gigabyte)

def _match_rows(result: Settlement) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    return sorted((((a.payment_id, a.invoice_id),
                    (a.amount, a.applied, a.fee, a.fx_rate, a.rule, a.reason, a.inputs or None))
                   for a in result.allocations), key=itemgetter(0))


def _invoice_rows(result: Settlement, invs: Iterable[Invoice]
                  ) -> Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    for inv in sorted(invs, key=attrgetter("id")):
        o = result.invoices[inv.id]
        yield (inv.id,), (inv.invoice_no, inv.customer, inv.currency, o.invoiced, o.applied,
                          o.fees, o.excess, o.outstanding, o.status)


def _payment_rows(result: Settlement) -> Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    for o in sorted(result.payments.values(), key=attrgetter("payment_id")):
        yield (o.payment_id,), (o.currency, o.received, o.applied, o.unapplied, o.status,
                                o.reason, o.duplicate_of, o.on_account_invoice_id)


# --- the run -------------------------------------------------------------------------------------


def reconcile(engine: Engine, run_id: str, tolerance: Decimal,
              rules: ReconcileRules | None = None) -> dict[str, Any]:
    """Settle every payment against the invoices and refresh the reconciled tables and views.

    ``rules`` come from orderhub.yaml (``ReconcileRules.from_config``); without them the defaults
    apply with ``tolerance`` as the amount tolerance (the call flows made before rules existed).

    Returns {paid, part_paid, over_paid, open: invoices by status (all invoices, after this run),
    matched: match rows added, rematched: match rows changed or removed, changed: invoice rows
    written, payments_changed: payment rows written, orders_paid: orders moved to paid,
    unmatched_payments: payments nothing was applied from, unmatched_amount: {currency: their sum},
    unapplied_amount: {currency: all unapplied cash, over-payments included}, duplicates: count,
    by_rule: {rule: match rows}}.
    """
    if not isinstance(tolerance, Decimal):
        # money is Decimal end to end (invariant 5); a float tolerance is a caller bug
        raise TypeError(f"reconcile: tolerance must be a Decimal, got {type(tolerance).__name__}")
    if rules is None:
        rules = ReconcileRules(amount_tolerance=tolerance)
    elif rules.amount_tolerance != tolerance:
        raise ValueError(f"reconcile: tolerance {tolerance} differs from "
                         f"reconciliation.amount_tolerance {rules.amount_tolerance}")
    # paused_gc: the whole book is in memory (every invoice and payment) and settling builds
    # more of the same, none of it in cycles: the collector would walk it all again and again
    with paused_gc(), begin_write(engine) as conn:
        if conn.dialect.name == "postgresql":
            # one reconcile at a time: each recomputes the whole book (SQLite: BEGIN IMMEDIATE)
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('orderhub.reconcile'))"))
        invs, pays, table_rates = _load(conn)
        result = settle(invs, pays, rules, Rates(table_rates, rules.fx_rates))

        added, updated, removed = _sync(conn, payment_matches, ("payment_id", "invoice_id"),
                                        MATCH_COLS, _match_rows(result), run_id)
        inv_new, inv_upd, _ = _sync(conn, reconciliation, ("invoice_id",), INVOICE_COLS,
                                    _invoice_rows(result, invs), run_id, delete_missing=False)
        pay_new, pay_upd, _ = _sync(conn, payment_reconciliation, ("payment_id",), PAYMENT_COLS,
                                    _payment_rows(result), run_id, delete_missing=False)

        settled = select(invoices.c.order_id).join(
            reconciliation, reconciliation.c.invoice_id == invoices.c.id
        ).where(reconciliation.c.status.in_(SETTLING))
        ready = select(orders.c.id).where(orders.c.status == "invoiced", orders.c.id.in_(settled))
        orders_paid = transition(conn, ready, "paid", run_id, "invoice paid")
        ensure_views(conn, rules.as_of)

    counts = dict.fromkeys(STATUSES, 0) | Counter(o.status for o in result.invoices.values())
    unmatched: dict[str, Decimal] = defaultdict(lambda: ZERO)
    unapplied: dict[str, Decimal] = defaultdict(lambda: ZERO)
    n_unmatched = 0
    for o in result.payments.values():
        if o.applied == 0:
            n_unmatched += 1
            unmatched[o.currency] += o.received
        if o.unapplied:
            unapplied[o.currency] += o.unapplied
    return {
        **counts,
        "matched": added,
        "rematched": updated + removed,
        "changed": inv_new + inv_upd,
        "payments_changed": pay_new + pay_upd,
        "orders_paid": orders_paid,
        "unmatched_payments": n_unmatched,
        "unmatched_amount": dict(sorted(unmatched.items())),
        "unapplied_amount": dict(sorted(unapplied.items())),
        "duplicates": sum(o.status == "duplicate" for o in result.payments.values()),
        "by_rule": dict(sorted(Counter(a.rule for a in result.allocations).items())),
    }
