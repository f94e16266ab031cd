"""Invoicing: policies per channel, tax per line, numbering per company, credit notes.

Every rule comes from orderhub.yaml ``invoicing`` (``InvoicingConfig.from_config``); every
document records why it was issued (``invoices.policy``/``reason``, ``invoice_lines.tax_rule``,
``credit_notes.cause``/``reason``). docs/invoicing.md has the configuration with examples.

- **Policies.** ``on_order``: a pushed order (all its pushes confirmed) is invoiced.
  ``on_shipment``: a pushed order is invoiced once it is shipped (``shipped_condition``).
- **Tax** per line (``warehouse.tax``): rate by SKU prefix, currency or default, rounded per line;
  ``invoices.amount`` = net + tax, the lines are stored in ``invoice_lines``.
- **Numbering.** A source listed under a company gets the company's gap-free sequence
  (``{prefix}{n:0width}``), assigned in (ordered_at, id) order inside the transaction that
  inserts the invoices; a rerun finds nothing pending and assigns nothing; numbers are never
  reused (invoices are never deleted, the sequence only moves forward). A source no company
  lists keeps the deterministic ``INV-{source}-{order_no without '#'}``.
- **Outbox.** The idempotency key stays on the business key, the order
  (``{target}:invoice:INV-{source}-{order_no}``), never on the sequence number, so a rerun or a
  recovery can never turn one order into two documents (DESIGN invariant 3). Given the invoice
  target, ``create_invoices`` writes each invoice's outbox row in the transaction that inserts
  the invoice; ``enqueue_invoices`` queues the invoices that have none (issued before there was
  a target) and skips its pass when nothing was written since the last one.
- **Credit notes.** An invoiced order later ``cancelled`` or ``returned`` gets one credit note
  reversing its invoice in full, numbered in the company's credit series, pushed through the
  outbox (operation ``credit_note``) only after the invoice itself was confirmed at the target.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from itertools import groupby
from operator import itemgetter
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
    null,
    or_,
    select,
    update,
)
from sqlalchemy.sql import Select

from connectors.base import paused_gc
from warehouse import freshness
from warehouse.engine import (
    begin_write,
    connection_worker,
    dialect_insert,
    id_queue,
    id_windows,
    in_values,
    insert_rows,
    json_text,
)
from warehouse.money import quantize
from warehouse.orders import transition
from warehouse.outbox import _insert_new, _money, _qty, iso_utc, order_doc_no
from warehouse.schema import (
    credit_notes,
    customers,
    document_sequences,
    invoice_lines,
    invoices,
    order_events,
    order_lines,
    orders,
    outbox,
)
from warehouse.tax import LineTax, TaxConfigError, TaxRules, money_step, tax_lines, totals

log = logging.getLogger(__name__)
CHUNK = 5000  # orders (invoices) per batch: memory follows this, not the number of orders

POLICIES = ("on_order", "on_shipment")
CREDIT_CAUSES = ("cancelled", "returned")
# States in which an order has been handed over to the ERP (its sales order confirmed)
HANDED_OVER = ("pushed", "invoiced", "paid")
MAX_WIDTH = 18
MAX_NUMBER_LEN = 64  # invoices.invoice_no / credit_notes.credit_note_no


class InvoicingConfigError(ValueError):
    """A bad orderhub.yaml ``invoicing`` entry; str() is one line naming ``invoicing.<path>``."""


# the name earlier releases raised for an unknown policy
InvoicingPolicyError = InvoicingConfigError


class InvoicingError(RuntimeError):
    """Numbering could not be kept gap-free (nothing was written)."""


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Company:
    """A numbering company: its invoice and credit-note series and the sources it invoices."""

    key: str
    prefix: str
    credit_prefix: str
    width: int
    sources: tuple[str, ...]

    @property
    def invoice_series(self) -> str:
        return f"invoice:{self.key}"

    @property
    def credit_series(self) -> str:
        return f"credit_note:{self.key}"

    def number(self, prefix: str, n: int) -> str:
        return f"{prefix}{n:0{self.width}d}"


@dataclass(frozen=True)
class InvoicingConfig:
    """orderhub.yaml ``invoicing``. ``InvoicingConfig()`` is today's ``{policy: on_order}``."""

    policy: str = "on_order"
    channels: Mapping[str, str] = field(default_factory=dict)  # order source -> policy
    tax: TaxRules = field(default_factory=TaxRules)
    companies: tuple[Company, ...] = ()

    KEYS = ("policy", "channels", "tax", "companies")

    @classmethod
    def from_config(cls, raw: Any) -> InvoicingConfig:
        """Validate the ``invoicing`` mapping (None or {} -> defaults)."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InvoicingConfigError("invoicing: expected a mapping (e.g. {policy: on_order})")
        unknown = sorted(set(raw) - set(cls.KEYS))
        if unknown:
            raise InvoicingConfigError(f"invoicing.{unknown[0]}: unknown key (known: "
                                       f"{', '.join(cls.KEYS)})")
        policy = _policy(raw.get("policy", "on_order"), "invoicing.policy")
        channels_raw = raw.get("channels") or {}
        if not isinstance(channels_raw, Mapping):
            raise InvoicingConfigError("invoicing.channels: expected a mapping of source -> "
                                       "policy (e.g. {shopify: on_shipment})")
        channels = {str(src): _policy(p, f"invoicing.channels.{src}")
                    for src, p in channels_raw.items()}
        try:
            tax = TaxRules.from_config(raw.get("tax"), "invoicing.tax")
        except TaxConfigError as err:
            raise InvoicingConfigError(str(err)) from None
        return cls(policy, channels, tax, _companies(raw.get("companies")))

    def policy_for(self, source: str) -> str:
        return self.channels.get(source, self.policy)

    def company_for(self, source: str) -> Company | None:
        return next((c for c in self.companies if source in c.sources), None)

    def company(self, key: str | None) -> Company | None:
        return next((c for c in self.companies if c.key == key), None)

    def check_sources(self, known: Iterable[str]) -> None:
        """Every source named under channels or companies must be declared in ``sources``."""
        names = set(known)
        for src in self.channels:
            if src not in names:
                raise InvoicingConfigError(f"invoicing.channels.{src}: no such source")
        for company in self.companies:
            for src in company.sources:
                if src not in names:
                    raise InvoicingConfigError(
                        f"invoicing.companies.{company.key}.sources: {src!r} is no such source")


def _policy(value: Any, where: str) -> str:
    if value not in POLICIES:
        raise InvoicingConfigError(f"{where}: {value!r} is not one of {', '.join(POLICIES)}")
    return str(value)


def _companies(raw: Any) -> tuple[Company, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise InvoicingConfigError("invoicing.companies: expected a mapping of company -> "
                                   "{prefix, credit_prefix, width, sources}")
    out: list[Company] = []
    owner: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for key, spec in raw.items():
        where = f"invoicing.companies.{key}"
        if not isinstance(spec, Mapping):
            raise InvoicingConfigError(f"{where}: expected {{prefix, credit_prefix, width, "
                                       "sources}")
        known = {"prefix", "credit_prefix", "width", "sources"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise InvoicingConfigError(f"{where}.{unknown[0]}: unknown key (known: "
                                       f"{', '.join(sorted(known))})")
        width = spec.get("width", 8)
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
            raise InvoicingConfigError(f"{where}.width: expected a whole number 1..{MAX_WIDTH}")
        for name in ("prefix", "credit_prefix"):
            value = spec.get(name)
            if not isinstance(value, str) or not value.strip():
                raise InvoicingConfigError(f"{where}.{name}: required, a non-empty text such "
                                           f"as \"{str(key).upper()}-"
                                           f"{'INV' if name == 'prefix' else 'CRN'}-\"")
            if len(value) + max(width, 10) > MAX_NUMBER_LEN:
                raise InvoicingConfigError(f"{where}.{name}: too long for a "
                                           f"{MAX_NUMBER_LEN}-character number")
            # one printed number must never belong to two series: no prefix may start another
            for other, other_where in prefixes.items():
                if value.startswith(other) or other.startswith(value):
                    raise InvoicingConfigError(f"{where}.{name}: {value!r} clashes with "
                                               f"{other_where} {other!r}")
            prefixes[value] = f"{where}.{name}"
        sources = spec.get("sources") or []
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise InvoicingConfigError(f"{where}.sources: expected a list of source names")
        for src in sources:
            if src in owner:
                raise InvoicingConfigError(f"{where}.sources: {src!r} is already numbered by "
                                           f"invoicing.companies.{owner[src]}")
            owner[src] = str(key)
        out.append(Company(str(key), spec["prefix"], spec["credit_prefix"], width,
                           tuple(sources)))
    return tuple(out)


def _as_config(policy: str | InvoicingConfig | None) -> InvoicingConfig:
    if isinstance(policy, InvoicingConfig):
        return policy
    return InvoicingConfig.from_config({"policy": policy or "on_order"})


# --- shipment -----------------------------------------------------------------------------------


def _fulfilment_rows() -> ColumnElement[bool]:
    return and_(outbox.c.order_id == orders.c.id, outbox.c.operation == "fulfilment")


def shipped_condition() -> ColumnElement[bool]:
    """SQL: the order is shipped. Precedence (docs/invoicing.md):

    1. the channel reports ``restocked``: not shipped (goods came back; it overrides 2-4);
    2. the channel reports ``fulfilled``: shipped;
    3. our own fulfilment push to the channel is confirmed (outbox row done): shipped — a
       channel's ``unfulfilled``/``partial`` pulled before that push is only lagging;
    4. the channel reports nothing (null) and takes no fulfilment push from us: the confirmed
       ERP sales order (order pushed or later) is the hand-over to the warehouse.
    """
    status = orders.c.fulfilment_status
    return and_(
        or_(status.is_(None), status != "restocked"),
        or_(
            status == "fulfilled",
            exists().where(_fulfilment_rows(), outbox.c.status == "done"),
            and_(status.is_(None), ~exists().where(_fulfilment_rows()),
                 orders.c.status.in_(HANDED_OVER)),
        ),
    )


def _shipment_evidence() -> ColumnElement[str]:
    """Which rule of shipped_condition holds (read only where it does): the invoice's why."""
    return case(
        (orders.c.fulfilment_status == "fulfilled", literal("the channel reports fulfilled")),
        (exists().where(_fulfilment_rows(), outbox.c.status == "done"),
         literal("our fulfilment push is confirmed")),
        else_=literal("the ERP sales order is confirmed; the channel reports no fulfilment"),
    )


def _needs_shipment(cfg: InvoicingConfig) -> ColumnElement[bool]:
    on_shipment = [s for s, p in cfg.channels.items() if p == "on_shipment"]
    on_order = [s for s, p in cfg.channels.items() if p == "on_order"]
    if cfg.policy == "on_shipment":
        return ~orders.c.source.in_(on_order) if on_order else literal(True)
    return orders.c.source.in_(on_shipment) if on_shipment else literal(False)


# --- sequences ----------------------------------------------------------------------------------


def _lock_series(conn: Connection, run_id: str, names: Sequence[str]) -> dict[str, int]:
    """Create missing series at 0 and lock them (PostgreSQL; SQLite's BEGIN IMMEDIATE already
    holds the database). Taken before the pending documents are read, so a second worker waits
    here and then sees the first one's documents: it can neither reuse a number nor skip one."""
    if not names:
        return {}
    conn.execute(
        dialect_insert(conn, document_sequences)
        .values([{"series": n, "last_value": 0, "run_id": run_id} for n in names])
        .on_conflict_do_nothing(index_elements=["series"])
    )
    q = (select(document_sequences.c.series, document_sequences.c.last_value)
         .where(document_sequences.c.series.in_(list(names)))
         .order_by(document_sequences.c.series))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return {series: int(last) for series, last in conn.execute(q)}


def _advance(conn: Connection, run_id: str, start: Mapping[str, int], now: Mapping[str, int]
             ) -> None:
    moved = [{"b_series": s, "b_last": n, "b_run": run_id} for s, n in now.items()
             if n != start[s]]
    if moved:
        conn.execute(
            update(document_sequences)
            .where(document_sequences.c.series == bindparam("b_series"))
            .values(last_value=bindparam("b_last"), run_id=bindparam("b_run")),
            moved,
        )


def _plain_no(source: str, order_no: str | None, external_id: str) -> str:
    """Python twin of outbox.order_doc_no's number part (a test holds them together)."""
    return f"{source}-{(order_no or external_id).replace('#', '')}"


# --- invoices -----------------------------------------------------------------------------------


def create_invoices(engine: Engine, run_id: str,
                    policy: str | InvoicingConfig | None = "on_order",
                    target: str | None = None) -> int:
    """Invoice every pushed order its channel's policy allows; return how many were created.

    ``policy`` is an ``InvoicingConfig`` (or a policy name, for ``{policy: ...}`` alone). One
    transaction: lock the company series, queue the pending orders in (ordered_at, id) order
    (``engine.id_queue``), then ``CHUNK`` orders at a time read them with their lines, tax the
    lines, number the invoices and insert invoices and lines; advance the series. A failure
    writes nothing and consumes no number. The statements run in order on a worker
    (``engine.connection_worker``), on PostgreSQL on a thread of its own: the server reads the
    next chunk and writes the last one while this thread builds the rows of this one.

    ``target`` (the configured ``invoice_target``): each new invoice's outbox row is written in
    the same transaction, built from the figures in hand — the key and document
    ``enqueue_invoices`` builds from the stored invoice (a test holds the two equal) — so an
    invoice and its push are created together and nothing is read back.
    """
    cfg = _as_config(policy)
    needs_shipment = _needs_shipment(cfg)
    no_invoice = ~exists().where(invoices.c.order_id == orders.c.id)
    base = and_(orders.c.status == "pushed", no_invoice)
    ready = and_(base, orders.c.currency.is_not(None), or_(~needs_shipment, shipped_condition()))
    # the why of an on_shipment invoice: not worth a probe per line when no channel waits
    waits = cfg.policy == "on_shipment" or "on_shipment" in cfg.channels.values()
    heads = (
        select(
            orders.c.id, orders.c.source, orders.c.external_id, orders.c.order_no,
            orders.c.currency, orders.c.total,
            # the resolved customer's code; the channel's own code only when unresolved
            func.coalesce(customers.c.code, orders.c.customer_code).label("customer_code"),
            (_shipment_evidence() if waits else null()).label("evidence"),
        )
        .select_from(orders)
        .outerjoin(customers, customers.c.id == orders.c.customer_id)
    )
    lines = (
        select(order_lines.c.order_id, order_lines.c.line_no, order_lines.c.sku,
               order_lines.c.qty, order_lines.c.unit_price)
        .order_by(order_lines.c.order_id, order_lines.c.line_no)
    )
    sequence = [orders.c.ordered_at.is_(None), orders.c.ordered_at, orders.c.id]
    now = datetime.now(UTC)
    created = wanted = unpriced = off_total = 0
    texts = _Texts()
    # paused_gc: a chunk's rows, documents and taxed lines are small containers by the hundred
    # thousand that make no cycles (the collector walked them ~60 times per 150,000 invoices)
    with paused_gc(), begin_write(engine) as conn:
        if conn.dialect.name == "postgresql":
            # one invoicing transaction at a time (SQLite's write lock does this there): a second
            # worker waits here, then finds the first one's invoices already written
            conn.execute(select(func.pg_advisory_xact_lock(INVOICING_LOCK)))
        start = _lock_series(conn, run_id, [c.invoice_series for c in cfg.companies])
        last = dict(start)
        # numbered in (ordered_at, id) order, CHUNK orders at a time: the database sorts once.
        # Every statement is a job of the worker, run in order; this thread builds the rows.
        # PostgreSQL: on the worker's thread, so chunk i is taxed and numbered while the server
        # writes chunk i-1 and reads chunk i+1. SQLite: at once (no thread), as sqlite3 drops
        # the GIL for every row it steps and then waits for this busy thread to give it back:
        # measured slower than one after another.
        threaded = conn.dialect.name == "postgresql"
        with id_queue(conn, select(orders.c.id).where(ready), sequence) as queue, \
                connection_worker(conn, threaded) as db:
            chunks, new_ids = queue.chunks(CHUNK), _InvoiceIds()
            reading = db.submit(_read_chunk, chunks, heads, lines, new_ids)
            writing: Future[int] | None = None
            while (chunk := reading.result()) is not None:
                # the next chunk is read before this one is written: it is ready when needed
                reading = db.submit(_read_chunk, chunks, heads, lines, new_ids)
                docs, skipped, off = _invoice_docs(cfg, chunk.orders(), last, now, run_id)
                unpriced += skipped
                off_total += off
                wanted += len(docs)
                # ids in numbering order; fewer docs than orders leave the last ones unused
                rows = [_ready(iid, d, run_id, target, now, texts)
                        for iid, d in zip(chunk.invoice_ids, docs, strict=False)]
                if writing is not None:
                    # one write in flight, so memory holds about three chunks (read ahead,
                    # being built, being written); a failure in it stops the run here
                    created += writing.result()
                writing = db.submit(_write_invoices, rows)
            if writing is not None:
                created += writing.result()
        _advance(conn, run_id, start, last)
        waiting = conn.execute(
            select(func.count()).select_from(orders).where(base, ~ready)).scalar_one()
    if created < wanted:
        # a deterministic number clash (two orders of one source with the same number once '#'
        # is dropped): never silent, those orders wait in `pushed` until someone looks
        log.warning("invoicing: %d pushed order(s) not invoiced: invoice number already taken",
                    wanted - created)
    if unpriced:
        log.warning("invoicing: %d pushed order(s) not invoiced: a line has no qty or unit price",
                    unpriced)
    if off_total:
        log.warning("invoicing: %d invoice(s) differ from the channel's order total (the "
                    "invoice is built from the lines)", off_total)
    if waiting:
        log.info("invoicing: %d pushed order(s) wait for shipment (or have no currency)", waiting)
    return created


# Key of the PostgreSQL advisory lock create_invoices holds for its transaction ("orderhub.inv")
INVOICING_LOCK = 0x6F68_696E_76
# invoices / invoice_lines columns in the order _invoice_docs builds their value tuples
INVOICE_COLUMNS = ("invoice_no", "order_id", "order_ref", "customer_code", "currency", "amount",
                   "net_amount", "tax_amount", "issued_at", "run_id", "company", "policy",
                   "prices_include_tax", "reason")
LINE_COLUMNS = ("invoice_id", "line_no", "sku", "qty", "unit_price", "net_amount", "tax_rate",
                "tax_amount", "amount", "tax_rule", "run_id")
RATE_PLACES = invoice_lines.c.tax_rate.type.scale or 6  # what invoice_lines.tax_rate holds


@dataclass(slots=True)
class _NewInvoice:
    """One invoice of a chunk: its ``invoices`` values (INVOICE_COLUMNS order), its order lines
    (line_no, sku, qty, unit_price) with their tax, and its outbox business key."""

    row: tuple[Any, ...]
    lines: list[tuple[Any, ...]]
    taxed: list[LineTax]
    business_key: str


def _invoice_docs(cfg: InvoicingConfig, chunk: Iterable[tuple[Any, list[Any]]],
                  last: dict[str, int], now: datetime, run_id: str
                  ) -> tuple[list[_NewInvoice], int, int]:
    """One chunk's invoices from its (order, lines) in numbering order, each line (line_no,
    sku, qty, unit_price) (``last``: the series numbers, advanced here); also how many orders
    were not invoiced for an unpriced line, and how many differ from the channel's total."""
    docs: list[_NewInvoice] = []
    unpriced = off_total = 0
    rules = cfg.tax
    include = rules.prices_include_tax
    by_source: dict[str, tuple[Company | None, str]] = {}
    for head, lines in chunk:
        if any(qty is None or price is None for _, _, qty, price in lines):
            unpriced += 1  # a line without qty or price: never invoice a guess
            continue
        oid, source, external_id, order_no, currency, total, customer_code, evidence = head
        taxed = tax_lines(rules, currency, [ln[1:] for ln in lines])
        net, tax, gross = totals(taxed)
        if total is not None and (gross if include else net) != total:
            off_total += 1
        if source not in by_source:
            by_source[source] = (cfg.company_for(source), cfg.policy_for(source))
        company, chosen = by_source[source]
        if company is not None:
            last[company.invoice_series] += 1
            number = company.number(company.prefix, last[company.invoice_series])
        else:
            number = "INV-" + _plain_no(source, order_no, external_id)
        why = "all pushes confirmed" if chosen == "on_order" else evidence
        docs.append(_NewInvoice(
            (number, oid, order_no, customer_code, currency, gross, net, tax, now, run_id,
             company.key if company else None, chosen, include,
             f"{chosen} (source {source}): {why}"),
            lines, taxed, "INV-" + _key_no(source, order_no, external_id)))
    return docs, unpriced, off_total


def _key_no(source: str, order_no: str | None, external_id: str) -> str:
    """Exactly what outbox.order_doc_no spells in SQL after its prefix (COALESCE, not ``or``)."""
    return f"{source}-{(external_id if order_no is None else order_no).replace('#', '')}"


def _read_chunk(conn: Connection, chunks: Iterator[list[int]], heads: Select[Any],
                lines: Select[Any], new_ids: _InvoiceIds) -> _Chunk | None:
    """A worker job: the queue's next chunk of orders (the queue's pages are read on the
    connection too) with their lines, and as many unused invoice ids; None when there are no
    more."""
    ids = next(chunks, None)
    if ids is None:
        return None
    dialect = conn.dialect.name
    # the orders and their lines apart (an order's columns once, not once per line); all():
    # the driver's fetchall, not a fetch per row
    return _Chunk(ids, conn.execute(heads.where(in_values(orders.c.id, ids, dialect))).all(),
                  conn.execute(lines.where(in_values(order_lines.c.order_id, ids,
                                                     dialect))).all(),
                  new_ids.take(conn, len(ids)))


@dataclass(slots=True)
class _Chunk:
    """What _read_chunk read: the order ids in queue order, their orders, their lines (by
    order, line_no) and an unused invoice id for each order, ascending."""

    ids: list[int]
    heads: list[Any]
    lines: list[Any]
    invoice_ids: list[int]

    def orders(self) -> list[tuple[Any, list[Any]]]:
        """(order, its lines (line_no, sku, qty, unit_price)) in queue order."""
        head = {r[0]: r for r in self.heads}
        found = {oid: [r[1:] for r in rows]
                 for oid, rows in groupby(self.lines, key=itemgetter(0))}
        return [(head[i], found.get(i, [])) for i in self.ids]


class _InvoiceIds:
    """Unused invoice ids, ascending, taken ahead by the read jobs: each chunk's rows are built
    whole (the lines carry their invoice's id) and nothing is read back. An id not used (an
    order not invoiced) is a gap, as a rolled-back insert leaves one.

    PostgreSQL: from the id column's sequence. SQLite: counting on from the largest id, as
    SQLite itself gives a rowid (the column is no AUTOINCREMENT): the transaction holds the
    write lock (BEGIN IMMEDIATE) and only this one inserts invoices."""

    def __init__(self) -> None:
        self._next: int | None = None

    def take(self, conn: Connection, n: int) -> list[int]:
        if conn.dialect.name == "postgresql":
            # the sequence found once (a subquery), not once per id (the lookup scans
            # pg_depend); one array, not a row per id
            seq = select(func.pg_get_serial_sequence(invoices.name, invoices.c.id.name))
            taken = conn.scalar(select(func.array_agg(func.nextval(seq.scalar_subquery())))
                                .select_from(func.generate_series(1, n)))
            return sorted(taken)
        if self._next is None:
            self._next = conn.scalar(select(func.coalesce(func.max(invoices.c.id), 0))) + 1
        first, self._next = self._next, self._next + n
        return list(range(first, first + n))


@dataclass(slots=True)
class _Ready:
    """A new invoice's rows as they are inserted: ``invoices`` ("id", *INVOICE_COLUMNS),
    ``invoice_lines`` (LINE_COLUMNS) and its outbox row (None without a target)."""

    number: str
    company: str | None
    invoice: tuple[Any, ...]
    lines: list[tuple[Any, ...]]
    outbox: dict[str, Any] | None


def _ready(iid: int, d: _NewInvoice, run_id: str, target: str | None, now: datetime,
           texts: _Texts) -> _Ready:
    queued = None
    if target is not None:
        queued = _new_invoice_row(d, run_id, target, now, texts)
        # the document's JSON text made here, not by the insert on the worker: the same text
        queued["payload"] = json_text(queued["payload"])
    return _Ready(d.row[0], d.row[10], (iid, *d.row),
                  [(iid, line_no, sku, qty, price, t.net, t.rate, t.tax, t.gross, t.rule, run_id)
                   for (line_no, sku, qty, price), t in zip(d.lines, d.taxed, strict=True)],
                  queued)


def _write_invoices(conn: Connection, chunk: list[_Ready]) -> int:
    """Insert the invoices that can land, their lines and outbox rows; -> how many invoices.
    A worker job: ``taken`` sees every earlier chunk's invoices. A number already taken (by an
    earlier invoice or earlier in the chunk) skips its invoice; a company number that cannot
    land fails the transaction."""
    if not chunk:
        return 0
    taken = set(conn.scalars(select(invoices.c.invoice_no).where(
        in_values(invoices.c.invoice_no, [r.number for r in chunk], conn.dialect.name))).all())
    keep: list[_Ready] = []
    for r in chunk:
        if r.number in taken:
            if r.company is not None:
                # a sequence number that does not land would leave a gap: undo the whole
                # transaction
                raise InvoicingError(f"invoicing: {r.number} could not be inserted (number or "
                                     "order already invoiced); nothing written, no number "
                                     "consumed")
            continue
        taken.add(r.number)
        keep.append(r)
    if not keep:
        return 0
    # the orders are not invoiced (the queue's condition) and no other transaction invoices
    # meanwhile (the locks above): a plain insert, the driver's fastest (COPY on PostgreSQL)
    insert_rows(conn, invoices, ("id", *INVOICE_COLUMNS), [r.invoice for r in keep])
    insert_rows(conn, invoice_lines, LINE_COLUMNS, [line for r in keep for line in r.lines])
    queued = [r.outbox for r in keep if r.outbox is not None]
    if queued:
        _insert_new(conn, queued)
    return len(keep)


class _Texts:
    """What one create_invoices spells again and again: each tax rule's rate, quantities."""

    MAX_KEPT = 4096

    def __init__(self) -> None:
        self.rates: dict[str, str] = {}  # rule -> its rate's text (a config has one per rule)
        self.qtys: dict[Decimal, str] = {}

    def rate(self, t: LineTax) -> str:
        text = self.rates.get(t.rule)
        if text is None:
            text = self.rates[t.rule] = _rate_text(_stored_rate(t.rate))
        return text

    def qty(self, value: Decimal | None) -> str | None:
        text = self.qtys.get(value)  # type: ignore[arg-type]
        if text is None:
            text = _qty(value)
            # never a zero: 0 and -0 are one key but spell differently
            if value and len(self.qtys) < self.MAX_KEPT:
                self.qtys[value] = text
        return text


def _new_invoice_row(d: _NewInvoice, run_id: str, target: str, now: datetime, texts: _Texts
                     ) -> dict[str, Any]:
    """The outbox row of a new invoice, from its figures in hand: what ``enqueue_invoices``
    builds from the stored invoice (the stored rate has TAX_RATE's scale)."""
    (number, oid, order_ref, customer_code, currency, gross, net, tax, issued_at, _, company,
     _, include, _) = d.row
    key = f"{target}:invoice:{d.business_key}"
    money = _figures_money(currency)
    lines = [_doc_line(sku, texts.qty(qty), price, t.gross, t.net, texts.rate(t), t.tax, money)
             for (_, sku, qty, price), t in zip(d.lines, d.taxed, strict=True)]
    payload = _invoice_payload(key, number, order_ref, customer_code, currency, issued_at,
                               gross, net, tax, company, include, lines)
    return _outbox_row(key, d.business_key, oid, run_id, target, "invoice", payload, now)


def _stored_rate(rate: Decimal) -> Decimal:
    """The rate as invoice_lines.tax_rate holds it (a rate with more decimals is rounded)."""
    exponent = rate.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -RATE_PLACES:
        return rate.quantize(Decimal(1).scaleb(-RATE_PLACES), rounding=ROUND_HALF_UP)
    return rate



def complete_invoices(engine: Engine, run_id: str) -> int:
    """Pushed orders whose invoice push is confirmed (outbox row done) -> invoiced."""
    ready = select(orders.c.id).where(
        orders.c.status == "pushed",
        exists().where(and_(outbox.c.order_id == orders.c.id, outbox.c.operation == "invoice",
                            outbox.c.status == "done")),
    )
    with begin_write(engine) as conn:
        return transition(conn, ready, "invoiced", run_id, "invoice sent")


# What enqueue_invoices reads: the invoices, and the orders their keys are spelled from
QUEUE_INPUTS = ("invoices", "orders")


def enqueue_invoices(engine: Engine, run_id: str, target: str,
                     orders_from: Sequence[str] | None = None) -> int:
    """Outbox rows (operation ``invoice``) for invoices not yet queued to ``target``.

    The key is ``{target}:invoice:INV-{source}-{order_no}``: the order, not the invoice number
    (the same key ``outbox.enqueue(..., "invoice", ...)`` gives an invoice numbered the
    deterministic way, so the two can never queue one order twice). The doc carries the legal
    number (``bill_no``/``invoice_no``), the totals and the taxed lines.

    ``create_invoices`` queues the invoices it creates when given the target; this queues the
    others (created before a target was configured). A pass leaves every invoice it read
    queued and outbox rows are never deleted, so there is new work only when an invoice was
    added or an order (whose number spells the key) written since the last pass: when no run
    wrote ``invoices`` or ``orders`` since (``warehouse.freshness``) and the newest invoice is
    the same, a rerun returns at once instead of probing every invoice's key.
    """
    stage, scope = _queue_mark(target, orders_from)
    started = freshness.now()  # before anything is read
    newest = _newest_invoice(engine)
    last = freshness.unchanged(engine, stage, QUEUE_INPUTS, scope)
    if last is not None and last.get("newest_invoice") == newest:
        return 0
    doc_key = order_doc_no("INV")
    key = literal(f"{target}:invoice:") + doc_key
    q = (
        select(
            invoices.c.id.label("group_id"), invoices.c.order_id, invoices.c.invoice_no,
            invoices.c.order_ref, invoices.c.customer_code, invoices.c.currency,
            invoices.c.issued_at, invoices.c.amount, invoices.c.net_amount,
            invoices.c.tax_amount, invoices.c.company, invoices.c.prices_include_tax,
            doc_key.label("business_key"), key.label("key"),
        )
        .join(orders, orders.c.id == invoices.c.order_id)
        .where(~exists().where(outbox.c.idempotency_key == key),
               *([] if orders_from is None else [orders.c.source.in_(list(orders_from))]))
        .order_by(invoices.c.id)
    )
    added = 0
    with begin_write(engine) as conn:
        # after create_invoices given the target there is mostly nothing to queue: one
        # anti-join says so in a fraction of the time the windows take to probe every invoice
        if conn.execute(select(exists(q.order_by(None)))).scalar():
            for lo, hi in id_windows(conn, invoices.c.id, CHUNK):  # bounded memory
                heads = conn.execute(q.where(invoices.c.id > lo, invoices.c.id <= hi)).all()
                if heads:
                    added += _insert_new(conn, _invoice_rows(conn, heads, run_id, target))
    freshness.mark(engine, stage, run_id, started, scope,
                   {"newest_invoice": newest, "queued": added})
    return added


def _queue_mark(target: str, orders_from: Sequence[str] | None) -> tuple[str, str]:
    """enqueue_invoices' freshness stage (one per target) and key (its sources)."""
    stage = f"enqueue_invoices:{target}"
    if len(stage) > 64:  # stage_marks.stage
        stage = f"enqueue_invoices:{hashlib.sha256(target.encode()).hexdigest()[:40]}"
    scope = "*" if orders_from is None else json.dumps(sorted(orders_from))
    return stage, hashlib.sha256(f"{target}|{scope}".encode()).hexdigest()


def _newest_invoice(engine: Engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(select(func.max(invoices.c.id))).scalar()


def _invoice_rows(conn: Connection, heads: Sequence[Any], run_id: str, target: str
                  ) -> list[dict[str, Any]]:
    by_invoice = _doc_lines(conn, heads, sign=1)
    now = datetime.now(UTC)
    return [
        _outbox_row(h.key, h.business_key, h.order_id, run_id, target, "invoice",
                    _invoice_payload(h.key, h.invoice_no, h.order_ref, h.customer_code,
                                     h.currency, h.issued_at, h.amount, h.net_amount,
                                     h.tax_amount, h.company, h.prices_include_tax,
                                     by_invoice.get(h.group_id, [])), now)
        for h in heads
    ]


def _invoice_payload(key: str, number: str, order_ref: str | None, customer_code: str | None,
                     currency: str, issued_at: datetime | None, amount: Decimal | None,
                     net: Decimal | None, tax: Decimal | None, company: str | None,
                     include: bool | None, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """An invoice's outbox document: one spelling for the stored and the new invoice."""
    return {
        "key": key, "bill_no": number, "invoice_no": number, "order_ref": order_ref,
        "customer_code": customer_code, "currency": currency,
        "issued_at": iso_utc(issued_at), "amount": _money_text(amount, currency),
        "net_amount": _money_text(net, currency), "tax_amount": _money_text(tax, currency),
        "company": company, "prices_include_tax": include, "lines": lines,
    }


def _outbox_row(key: str, business_key: str, order_id: int, run_id: str, target: str,
                operation: str, payload: dict[str, Any], created_at: datetime
                ) -> dict[str, Any]:
    return {"idempotency_key": key, "business_key": business_key, "order_id": order_id,
            "payload": payload, "target": target, "operation": operation, "status": "pending",
            "attempts": 0, "created_at": created_at, "run_id": run_id}


def _doc_line(sku: str | None, qty: str | None, unit_price: Decimal | None, amount: Decimal,
              net: Decimal, rate: str, tax: Decimal, money: Callable[[Decimal], str]
              ) -> dict[str, Any]:
    """A taxed doc line; ``qty`` and ``rate`` are already text, ``money`` spells the amounts
    in the currency's decimals (outbox._money)."""
    return {"sku": sku, "qty": qty, "unit_price": None if unit_price is None else str(unit_price),
            "amount": money(amount), "net_amount": money(net), "tax_rate": rate,
            "tax_amount": money(tax)}


def _rate_text(rate: Decimal) -> str:
    return format(rate.normalize(), "f")


@lru_cache(maxsize=256)
def _money_in(currency: str) -> Callable[[Decimal], str]:
    """outbox._money(amount, currency) for the amounts of one currency (Decimals, never None),
    its quantum found once."""
    quantum = _quantum(currency)

    def text(amount: Decimal) -> str:
        return str(amount.quantize(quantum, rounding=ROUND_HALF_UP))

    return text


@lru_cache(maxsize=256)
def _figures_money(currency: str) -> Callable[[Decimal], str]:
    """_money_in for a line's own figures (tax.tax_lines): already rounded to the currency's
    decimals unless it has more than tax.MAX_PLACES, so they are spelled as they are."""
    if money_step(currency).as_tuple().exponent == _quantum(currency).as_tuple().exponent:
        return str
    return _money_in(currency)


def _money_text(value: Decimal | None, currency: str | None = None) -> str | None:
    """outbox._money (money as text; with a currency, in its own decimals), its quantum found
    once per currency: called for every amount of every invoice."""
    if value is None or not currency or value.__class__ is not Decimal:
        return _money(value, currency)
    return str(value.quantize(_quantum(currency), rounding=ROUND_HALF_UP))


@lru_cache(maxsize=256)
def _quantum(currency: str) -> Decimal:
    return quantize(Decimal(1), currency)  # the currency's decimals, as outbox._money rounds


def _doc_lines(conn: Connection, heads: Sequence[Any], sign: int) -> dict[int, list[dict]]:
    """Doc lines per invoice id: its taxed lines; for an invoice issued before 0005c (no taxed
    lines) the order's lines. ``sign`` -1 reverses quantities and amounts (a credit note)."""
    ids = [h.group_id for h in heads]
    currency = {h.group_id: h.currency for h in heads}
    out: dict[int, list[dict]] = {}
    taxed = conn.execute(
        select(invoice_lines.c.invoice_id, invoice_lines.c.sku, invoice_lines.c.qty,
               invoice_lines.c.unit_price, invoice_lines.c.amount, invoice_lines.c.net_amount,
               invoice_lines.c.tax_rate, invoice_lines.c.tax_amount)
        .where(in_values(invoice_lines.c.invoice_id, ids, conn.dialect.name))
        .order_by(invoice_lines.c.invoice_id, invoice_lines.c.line_no))
    for iid, sku, qty, price, amount, net, rate, tax in taxed:
        if sign != 1:  # sign * x, not -x: a zero keeps its sign ("-0.00")
            qty, amount, net, tax = _signed(qty, sign), sign * amount, sign * net, sign * tax
        out.setdefault(iid, []).append(_doc_line(sku, _qty(qty), price, amount, net,
                                                 _rate_text(rate), tax, _money_in(currency[iid])))
    legacy = [i for i in ids if i not in out]
    if legacy:
        plain = conn.execute(
            select(invoices.c.id, order_lines)
            .join(order_lines, order_lines.c.order_id == invoices.c.order_id)
            .where(invoices.c.id.in_(legacy))
            .order_by(invoices.c.id, order_lines.c.line_no))
        for r in plain:
            out.setdefault(r[0], []).append({
                "sku": r.sku, "qty": _qty(_signed(r.qty, sign)),
                "unit_price": _money(r.unit_price),
                "amount": _money(_signed(r.amount, sign), currency[r[0]]),
            })
    return out


def _signed(value: Decimal | None, sign: int) -> Decimal | None:
    return None if value is None else sign * value


# --- returns and credit notes -------------------------------------------------------------------


def mark_returned(engine: Engine, run_id: str, order_ids: Sequence[int], reason: str) -> int:
    """Ops: these invoiced (or paid) orders came back -> returned; the reason is kept."""
    with begin_write(engine) as conn:
        return transition(conn, list(order_ids), "returned", run_id, reason)


def apply_channel_returns(engine: Engine, run_id: str) -> int:
    """Invoiced or paid orders whose channel now reports ``restocked`` -> returned.

    A changed source order is the channel's word that the goods came back; call this after
    ingest and before ``create_credit_notes``.
    """
    back = select(orders.c.id).where(orders.c.status.in_(("invoiced", "paid")),
                                     orders.c.fulfilment_status == "restocked")
    with begin_write(engine) as conn:
        return transition(conn, back, "returned", run_id, "the channel reports the fulfilment "
                          "restocked")


def create_credit_notes(engine: Engine, run_id: str,
                        config: InvoicingConfig | None = None) -> int:
    """One credit note per invoice whose order is now cancelled or returned; return how many.

    Negative amounts reversing the invoice in full, numbered in the invoice's company credit
    series (``CRN-{source}-{order_no}`` for an invoice without a company), in (ordered_at, id)
    order, in one transaction with the series. ``cause`` is the order's state; ``reason``
    quotes the order event that put it there.
    """
    cfg = config or InvoicingConfig()
    why = (
        select(order_events.c.reason)
        .where(order_events.c.order_id == orders.c.id, order_events.c.to_state == orders.c.status)
        .order_by(order_events.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    q = (
        select(invoices.c.id, invoices.c.order_id, invoices.c.invoice_no, invoices.c.company,
               invoices.c.currency, invoices.c.amount, invoices.c.net_amount,
               invoices.c.tax_amount, orders.c.source, orders.c.external_id, orders.c.order_no,
               orders.c.status, why.label("why"))
        .join(orders, orders.c.id == invoices.c.order_id)
        .where(orders.c.status.in_(CREDIT_CAUSES),
               ~exists().where(credit_notes.c.invoice_id == invoices.c.id))
        .order_by(orders.c.ordered_at.is_(None), orders.c.ordered_at, orders.c.id)
    )
    now = datetime.now(UTC)
    with begin_write(engine) as conn:
        start = _lock_series(conn, run_id, [c.credit_series for c in cfg.companies])
        last = dict(start)
        rows = []
        for r in conn.execute(q):
            if r.company is not None:
                company = cfg.company(r.company)
                if company is None:
                    raise InvoicingConfigError(
                        f"invoicing.companies.{r.company}: invoice {r.invoice_no} was numbered "
                        "by this company, which is no longer configured (its credit series is "
                        "needed)")
                last[company.credit_series] += 1
                number = company.number(company.credit_prefix, last[company.credit_series])
            else:
                number = "CRN-" + _plain_no(r.source, r.order_no, r.external_id)
            net = r.net_amount if r.net_amount is not None else r.amount
            tax = r.tax_amount if r.tax_amount is not None else Decimal(0)
            rows.append({
                "credit_note_no": number, "invoice_id": r.id, "order_id": r.order_id,
                "company": r.company, "currency": r.currency, "net_amount": -net,
                "tax_amount": -tax, "amount": -r.amount, "cause": r.status,
                "reason": f"order {r.status} after invoice {r.invoice_no}: "
                          f"{r.why or 'no reason recorded'}",
                "issued_at": now, "run_id": run_id,
            })
        if rows:
            # plain INSERT: a clash must fail the transaction, never leave a hole in a series
            conn.execute(credit_notes.insert(), rows)
        _advance(conn, run_id, start, last)
    return len(rows)


def enqueue_credit_notes(engine: Engine, run_id: str, target: str) -> int:
    """Outbox rows (operation ``credit_note``) for credit notes not yet queued to ``target``,
    once their invoice's push to that target is confirmed (a red receivable must find the
    original). Key ``{target}:credit_note:CRN-{source}-{order_no}``: the order, not the number.
    """
    doc_key = order_doc_no("CRN")
    key = literal(f"{target}:credit_note:") + doc_key
    invoice_sent = exists().where(
        outbox.c.order_id == credit_notes.c.order_id, outbox.c.target == target,
        outbox.c.operation == "invoice", outbox.c.status == "done")
    q = (
        select(
            credit_notes.c.invoice_id.label("group_id"), credit_notes.c.order_id,
            credit_notes.c.credit_note_no, credit_notes.c.company, credit_notes.c.currency,
            credit_notes.c.net_amount, credit_notes.c.tax_amount, credit_notes.c.amount,
            credit_notes.c.cause, credit_notes.c.reason, credit_notes.c.issued_at,
            invoices.c.invoice_no, invoices.c.order_ref, invoices.c.customer_code,
            invoices.c.prices_include_tax,
            doc_key.label("business_key"), key.label("key"),
        )
        .join(invoices, invoices.c.id == credit_notes.c.invoice_id)
        .join(orders, orders.c.id == credit_notes.c.order_id)
        .where(invoice_sent, ~exists().where(outbox.c.idempotency_key == key))
        .order_by(credit_notes.c.id)
    )
    added = 0
    with begin_write(engine) as conn:
        for lo, hi in id_windows(conn, credit_notes.c.id, CHUNK):  # bounded memory
            heads = conn.execute(q.where(credit_notes.c.id > lo, credit_notes.c.id <= hi)).all()
            if heads:
                added += _insert_new(conn, _credit_rows(conn, heads, run_id, target))
    return added


def _credit_rows(conn: Connection, heads: Sequence[Any], run_id: str, target: str
                 ) -> list[dict[str, Any]]:
    by_invoice = _doc_lines(conn, heads, sign=-1)
    now = datetime.now(UTC)
    return [
        _outbox_row(h.key, h.business_key, h.order_id, run_id, target, "credit_note", {
            "key": h.key, "bill_no": h.credit_note_no, "credit_note_no": h.credit_note_no,
            "invoice_no": h.invoice_no, "order_ref": h.order_ref,
            "customer_code": h.customer_code, "currency": h.currency,
            "issued_at": iso_utc(h.issued_at), "amount": _money_text(h.amount, h.currency),
            "net_amount": _money_text(h.net_amount, h.currency),
            "tax_amount": _money_text(h.tax_amount, h.currency), "company": h.company,
            "prices_include_tax": h.prices_include_tax, "cause": h.cause,
            "reason": h.reason, "lines": by_invoice.get(h.group_id, []),
        }, now)
        for h in heads
    ]
