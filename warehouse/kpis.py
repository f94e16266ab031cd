"""The KPIs the business asked for, per run and per UTC day, read from the warehouse's own records.

Every figure is defined once here (docs/kpis.md says the same in prose, with examples):

- **cycle time** ``cycle_p50_s.<stage>`` / ``cycle_p95_s.<stage>``: seconds from an order's first
  ``captured`` event to its first event into ``allocated``, ``invoiced`` and ``paid``; orders
  counted where (run, or UTC day) they *reach* the stage. Percentiles are nearest-rank: the
  value at rank ``ceil(p/100 * n)`` of the sorted spans (PostgreSQL's ``percentile_disc``):
  the spans are computed in SQL (one statement, one row per order), sorted and ranked here.
- **automation** ``automation_rate[.<stage>]``: of the orders first captured in the scope, the
  share that reached ``validated`` (``.allocated``, ``.invoiced``: that stage) with no human
  touch: no ``ops_actions`` row for the order, and no manual state change in ``order_events``
  (leaving ``quarantined`` by any path - release, override, reject, a fix at the source - or
  entering ``cancelled``: the pipeline's own stages never do either).
- **quarantine** ``quarantine_rate[.<check>]``: of the orders gated in the scope (an event
  ``captured -> validated|quarantined``), the share moved ``captured -> quarantined`` there;
  per check, those that also hold a ``quarantine`` row for that check (an order failing two
  checks counts under both, once overall).
- **data accuracy** ``accuracy_rate``: of the orders first captured in the scope, the share
  whose stored ``orders.total`` is not null and equals both the sum of its ``order_lines.amount``
  (every line has one) and the source's own total, read from the raw payload in ``raw_records``
  by the source's connector mapping (``readers``: source name -> payload -> total). Needs the
  readers (flows/audit.py builds them from orderhub.yaml); without them it is not computed.
  One row per order of the scope, streamed (as the cycle times' spans are).
- **missed orders** ``missed_rate``: measured by flows/audit.py against the sources' own
  listings, stored here with ``record_audit``.

Scope: a run (events carrying its run id) or UTC days (events whose ``at`` falls on the day).
Every figure is given per source and for all sources together (source ``"*"``). Ratios are
``Decimal`` to 6 places, seconds to 3; each comes with its numerator and denominator. The order
flow asks for both at once (``refresh_and_run_kpis``): the days a run touched hold all of its
events, so one pass over those days gives the daily figures and the run's.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Float,
    Select,
    String,
    Subquery,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    extract,
    false,
    func,
    literal,
    null,
    or_,
    select,
    type_coerce,
    union,
    union_all,
    update,
)
from sqlalchemy import Date as SqlDate

from warehouse.engine import begin_write, dialect_insert, in_values
from warehouse.schema import (
    kpi_daily,
    ops_actions,
    order_events,
    order_lines,
    orders,
    quarantine,
    raw_records,
    rejected_records,
    runs,
)

__all__ = [
    "ALL",
    "KpiRow",
    "SourceTotal",
    "accounted_ids",
    "compute_daily",
    "cycle_time",
    "daily_kpis",
    "days_touched",
    "format_rate",
    "format_seconds",
    "latest_run",
    "record_audit",
    "refresh_and_run_kpis",
    "refresh_daily",
    "run_kpis",
    "warehouse_count",
]

ALL = "*"  # the source of a figure over all sources together
STAGES = ("allocated", "invoiced", "paid")  # cycle time: captured -> each of these
AUTOMATION_STAGES = ("validated", "allocated", "invoiced")
ORDERS_STREAM = "orders"
SHOW = 20  # inaccurate orders listed per scope, for ops
RATE = Decimal("0.000001")  # kpi_daily.value holds 6 places: compare and store at that scale
SECONDS = Decimal("0.001")

# metric families each writer owns in kpi_daily (a refresh deletes only its own stale rows)
COMPUTED = ("cycle_p50_s", "cycle_p95_s", "automation_rate", "quarantine_rate")
ACCURACY = "accuracy_rate"
MISSED = "missed_rate"

SourceTotal = Callable[[dict], Decimal | None]  # a raw payload -> the source's own order total


@dataclass(frozen=True)
class KpiRow:
    """One figure: ``day`` is None for a run's figures."""

    day: date | None
    source: str
    metric: str
    value: Decimal
    numerator: int | None
    denominator: int

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day, "source": self.source, "metric": self.metric, "value": self.value,
                "numerator": self.numerator, "denominator": self.denominator}


@dataclass
class _Accuracy:
    rows: list[KpiRow] = field(default_factory=list)
    inaccurate: list[dict[str, Any]] = field(default_factory=list)  # the first SHOW, for ops
    unchecked: int = 0  # orders of a source with no reader (not in config any more)


# --------------------------------------------------------------------------------- public API


def run_kpis(engine: Engine, run_id: str, *, readers: Mapping[str, SourceTotal] | None = None,
             audit: Mapping[str, Any] | None = None, show: int = SHOW) -> dict[str, Any]:
    """The KPIs of one run, for all sources (top level) and per source (``by_source``).

    ``readers`` enable data accuracy; ``audit`` is ``flows.audit.audit_sources``' result (else
    the one stored in the run's summary under ``"audit"``, if any).
    """
    return _run_kpis(engine, run_id, readers, audit, show)


def refresh_and_run_kpis(engine: Engine, run_id: str, *,
                         readers: Mapping[str, SourceTotal] | None = None,
                         audit: Mapping[str, Any] | None = None,
                         show: int = SHOW) -> tuple[dict[str, int], dict[str, Any]]:
    """``refresh_daily(engine, run_id, readers=readers)`` then ``run_kpis(engine, run_id,
    readers=readers, audit=audit, show=show)``, in one pass over the warehouse, not two.

    The days a run touched hold every event of the run, so each figure family's statement over
    those days also tallies the events that carry the run id as the run's own figures (and the
    raw payloads are read and mapped once): the same figures as the two calls, at the cost of
    the daily refresh alone. Returns (refresh counts, the run's KPIs)."""
    wanted = days_touched(engine, run_id)
    scope = _Scope(run_id=run_id, days=tuple(wanted))
    with engine.connect() as conn:
        rows = _computed(conn, scope)
        day_acc, run_acc = (_accuracy(conn, scope, readers, show) if readers is not None
                            else (None, None))
    if day_acc is not None:
        rows += day_acc.rows
    fresh = sorted((r for r in rows if r.day is not None), key=_row_order)
    families = COMPUTED + ((ACCURACY,) if readers is not None else ())
    counts = {"days": len(wanted), **_write(engine, run_id, wanted, fresh, families)}
    mine = [r for r in rows if r.day is None]
    return counts, _run_kpis(engine, run_id, readers, audit, show, run_acc, mine)


def _run_kpis(engine: Engine, run_id: str, readers: Mapping[str, SourceTotal] | None,
              audit: Mapping[str, Any] | None, show: int,
              acc: _Accuracy | None = None, computed: list[KpiRow] | None = None) -> dict[str, Any]:
    """run_kpis; ``acc`` and ``computed``: the run's accuracy and other figures when already
    computed (refresh_and_run_kpis)."""
    scope = _Scope(run_id=run_id)
    with engine.connect() as conn:
        info = conn.execute(select(runs.c.flow, runs.c.started_at, runs.c.finished_at,
                                   runs.c.status, runs.c.summary)
                            .where(runs.c.id == run_id)).first()
        rows = _computed(conn, scope) if computed is None else list(computed)
        if acc is None and readers is not None:
            acc = _accuracy(conn, scope, readers, show)[1]
    if acc is not None:
        rows += acc.rows
    if audit is None and info is not None and isinstance(info.summary, dict):
        audit = info.summary.get("audit")
    shaped = _shape(rows, with_accuracy=acc is not None)
    out: dict[str, Any] = {
        "run_id": run_id,
        "flow": info.flow if info else None,
        "started_at": info.started_at if info else None,
        "finished_at": info.finished_at if info else None,
        "status": info.status if info else None,
        **shaped.pop(ALL, _empty(acc is not None)),
    }
    if acc is not None:
        out["accuracy"]["inaccurate"] = acc.inaccurate
        out["accuracy"]["unchecked"] = acc.unchecked
    out["missed"] = _missed_section(audit)
    out["by_source"] = dict(sorted(shaped.items()))
    return out


def compute_daily(engine: Engine, days: Iterable[date], *,
                  readers: Mapping[str, SourceTotal] | None = None) -> list[KpiRow]:
    """The daily figures of ``days``, computed now (nothing written); missed orders excluded
    (they are measured against the sources: ``record_audit``)."""
    scope = _Scope(days=tuple(sorted(set(days))))
    if not scope.days:
        return []
    with engine.connect() as conn:
        rows = _computed(conn, scope)
        if readers is not None:
            rows += _accuracy(conn, scope, readers, 0)[0].rows  # type: ignore[union-attr]
    return sorted(rows, key=_row_order)


def refresh_daily(engine: Engine, run_id: str, days: Iterable[date] | None = None, *,
                  readers: Mapping[str, SourceTotal] | None = None) -> dict[str, int]:
    """Recompute ``days`` (default: every day ``run_id`` touched) into ``kpi_daily``.

    Idempotent: a figure is written only when new or changed, and a figure no longer produced
    is deleted (only within the families computed here; accuracy only when ``readers`` given).
    Returns counts of days, inserted, updated, deleted and unchanged rows.
    """
    wanted = sorted(set(days) if days is not None else days_touched(engine, run_id))
    fresh = compute_daily(engine, wanted, readers=readers)
    families = COMPUTED + ((ACCURACY,) if readers is not None else ())
    counts = _write(engine, run_id, wanted, fresh, families)
    return {"days": len(wanted), **counts}


def daily_kpis(engine: Engine, day_from: date, day_to: date,
               source: str | None = None) -> list[dict[str, Any]]:
    """The stored daily table from ``day_from`` to ``day_to`` (inclusive), by day, source
    (``"*"`` first), metric."""
    q = select(kpi_daily.c.day, kpi_daily.c.source, kpi_daily.c.metric, kpi_daily.c.value,
               kpi_daily.c.numerator, kpi_daily.c.denominator, kpi_daily.c.run_id).where(
        kpi_daily.c.day >= day_from, kpi_daily.c.day <= day_to)
    if source is not None:
        q = q.where(kpi_daily.c.source == source)
    with engine.connect() as conn:
        rows = [KpiRow(_as_date(r.day), r.source, r.metric, _dec(r.value, RATE), r.numerator,
                       r.denominator) for r in conn.execute(q)]
    return [r.as_dict() for r in sorted(rows, key=_row_order)]


def days_touched(engine: Engine, run_id: str) -> list[date]:
    """UTC days whose figures a run may have changed: the days of its events, and the capture
    days of the orders it moved or ops acted on (their cohorts' automation and accuracy)."""
    with engine.connect() as conn:
        d = conn.dialect.name
        ev, cap = order_events.alias("ev"), order_events.alias("cap")
        initial = and_(cap.c.from_state.is_(None), cap.c.to_state == "captured")
        # the orders the run moved or acted on, each once (a run moves an order through
        # several states), joined to their capture on order_id (indexed), not IN (...): a plan
        # that stays sane even before the database has statistics of freshly loaded tables
        moved = union(select(ev.c.order_id).where(ev.c.run_id == run_id),
                      select(ops_actions.c.order_id).where(ops_actions.c.run_id == run_id,
                                                           ops_actions.c.order_id.is_not(None))
                      ).subquery("moved")
        q = union(
            select(_day(ev.c.at, d).label("day")).where(ev.c.run_id == run_id),
            select(_day(cap.c.at, d)).select_from(
                moved.join(cap, and_(cap.c.order_id == moved.c.order_id, initial))),
        )
        return sorted({_as_date(day) for day in conn.scalars(q) if day is not None})


def cycle_time(engine: Engine, run_id: str, to_state: str) -> dict[str, Any]:
    """Seconds from capture to ``to_state`` for orders reaching it in this run (all sources):
    count, nearest-rank p50 and p95."""
    with engine.connect() as conn:
        rows = _cycle(conn, _Scope(run_id=run_id), (to_state,))
    found = {r.metric.split(".")[0]: r for r in rows if r.source == ALL}
    p50, p95 = found.get("cycle_p50_s"), found.get("cycle_p95_s")
    return {"to": to_state, "count": p50.denominator if p50 else 0,
            "p50_s": p50.value if p50 else None, "p95_s": p95.value if p95 else None}


def latest_run(engine: Engine, flow: str = "order_to_cash") -> str | None:
    """The id of the newest run of ``flow`` (None before the first)."""
    with engine.connect() as conn:
        return conn.scalar(select(runs.c.id).where(runs.c.flow == flow)
                           .order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(1))


# --- what the audit (flows/audit.py) asks of the warehouse ------------------------------------


def accounted_ids(engine: Engine, source: str, ids: Iterable[str],
                  stream: str = ORDERS_STREAM) -> set[str]:
    """Which of a source's ``ids`` the warehouse accounts for: an ``orders`` row or a
    ``rejected_records`` row of that source and stream (one query, one bound parameter)."""
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    with engine.connect() as conn:
        d = conn.dialect.name
        q = union(
            select(orders.c.external_id).where(orders.c.source == source,
                                               in_values(orders.c.external_id, wanted, d)),
            select(rejected_records.c.external_id).where(
                rejected_records.c.source == source, rejected_records.c.stream == stream,
                in_values(rejected_records.c.external_id, wanted, d)),
        )
        return set(conn.scalars(q))


def warehouse_count(engine: Engine, source: str, stream: str = ORDERS_STREAM) -> int:
    """Distinct external ids the warehouse holds for a source: orders plus rejected records.

    Each table holds an id once (their unique keys), so: the source's orders, plus its rejected
    records with no order of the same id - counted on the keys' indexes, no union to sort."""
    rej = rejected_records
    held = select(func.count()).select_from(orders).where(orders.c.source == source)
    only_rejected = select(func.count()).select_from(rej).where(
        rej.c.source == source, rej.c.stream == stream,
        ~exists().where(orders.c.source == source, orders.c.external_id == rej.c.external_id))
    with engine.connect() as conn:
        return (conn.scalar(held) or 0) + (conn.scalar(only_rejected) or 0)


def record_audit(engine: Engine, run_id: str, day: date,
                 per_source: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Store an audit's missed-order rate for ``day``: per source, and over all of them.

    ``per_source``: source -> {"source_count", "missed"}; sources with an ``error`` are left
    out (nothing was measured). Only changed figures are rewritten; nothing is deleted.
    """
    measured = {s: r for s, r in per_source.items() if not r.get("error")}
    rows = [_ratio(day, s, MISSED, int(r["missed"]), int(r["source_count"]))
            for s, r in measured.items()]
    if measured:
        rows.append(_ratio(day, ALL, MISSED, sum(int(r["missed"]) for r in measured.values()),
                           sum(int(r["source_count"]) for r in measured.values())))
    return _write(engine, run_id, [day], [r for r in rows if r is not None], families=())


# ----------------------------------------------------------------------------------- the scope


@dataclass(frozen=True)
class _Scope:
    """Which events a figure counts, and under which keys.

    - ``run_id`` alone: the events carrying the run id; figures per source, day None.
    - ``days`` alone: the events whose ``at`` falls on those UTC days; figures per day and source.
    - both: the days' figures, and in the same statements the run's (day None), from the days'
      events that carry the run id. Exact only when the days hold every event of the run, as
      ``days_touched`` does (refresh_and_run_kpis): then the run's figures equal run_kpis'.
    """

    run_id: str | None = None
    days: tuple[date, ...] = ()

    @property
    def daily(self) -> bool:
        """Figures per day (the days' events are the ones read)."""
        return bool(self.days) or self.run_id is None

    @property
    def per_run(self) -> bool:
        """Figures of the run (day None)."""
        return self.run_id is not None

    def events(self, ev: Any) -> ColumnElement[bool]:
        if not self.daily:
            return ev.c.run_id == self.run_id
        spans = [and_(ev.c.at >= _midnight(a), ev.c.at < _midnight(b + timedelta(days=1)))
                 for a, b in _ranges(self.days)]
        return or_(*spans) if spans else false()

    def in_run(self, ev: Any) -> ColumnElement[bool]:
        """Whether an event of the scope is the run's (always, for a run's scope)."""
        return ev.c.run_id == self.run_id

    def keys(self, ev: Any, dialect: str) -> list[ColumnElement[Any]]:
        """The key columns of a base query over events ``ev``: the event's UTC day (daily), the
        source, and whether the event is the run's (days and a run: ``in_run``, 1 or 0)."""
        day = [_day(ev.c.at, dialect).label("day")] if self.daily else []
        mine = ([case((self.in_run(ev), 1), else_=0).label("in_run")]
                if self.daily and self.per_run else [])
        return [*day, orders.c.source.label("source"), *mine]

    def grouped(self, sub: Subquery, aggregates: Sequence[ColumnElement[Any]],
                by: Sequence[str] = (), where: ColumnElement[bool] | None = None) -> Any:
        """``aggregates`` over the rows of ``sub`` (a base query's columns, e.g. through
        ``_both``), per (day, source, *by) for the days and per (source, *by) over the run's
        rows with a null day: one statement either way."""
        keys = [sub.c.source, *(sub.c[b] for b in by)]
        parts = []
        if self.daily:
            q = select(sub.c.day, *keys, *aggregates)
            parts.append((q if where is None else q.where(where)).group_by(sub.c.day, *keys))
        if self.per_run:
            q = select(null().label("day"), *keys, *aggregates)
            if where is not None:
                q = q.where(where)
            if self.daily:
                q = q.where(sub.c.in_run == 1)
            parts.append(q.group_by(*keys))
        return parts[0] if len(parts) == 1 else union_all(*parts)


def _ranges(days: Sequence[date]) -> list[tuple[date, date]]:
    """Sorted days as inclusive runs of consecutive days: one range filter each."""
    out: list[tuple[date, date]] = []
    for d in sorted(days):
        if out and d == out[-1][1] + timedelta(days=1):
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(0), tzinfo=UTC)


def _day(at: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp. SQLite stores naive UTC text; PostgreSQL's
    timestamptz is shifted to UTC first, so the session time zone never moves a day."""
    if dialect == "postgresql":
        return cast(func.timezone("UTC", at), SqlDate)
    return func.date(at)


def _seconds(start: ColumnElement[Any], end: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        ts = DateTime(timezone=True)
        # epoch of an interval is numeric with 6 places (microseconds): as a double it keeps
        # every digit (at most 15 significant below 31 years), so it sorts and prints the same
        return cast(extract("epoch", type_coerce(end, ts) - type_coerce(start, ts)), Float)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _both(base: Select) -> Subquery:
    """The base rows twice: under their own source, and under ``"*"`` (all sources)."""
    sub = base.cte()  # referenced twice: both databases materialise it, so it runs once
    everyone = [literal(ALL, String(64)).label("source") if c.name == "source" else c
                for c in sub.c]
    return union_all(select(*sub.c), select(*everyone)).subquery()


# --------------------------------------------------------------------------------- the figures


def _computed(conn: Connection, scope: _Scope) -> list[KpiRow]:
    return [*_cycle(conn, scope, STAGES), *_automation(conn, scope), *_quarantine(conn, scope)]


def _cycle(conn: Connection, scope: _Scope, stages: Sequence[str]) -> list[KpiRow]:
    """Nearest-rank p50/p95 of capture -> stage spans, per key and stage.

    One statement gives each order of the scope its spans, a column per stage (and per scope,
    the days' and the run's); the spans are sorted per key here and the value at rank
    ceil(p/100 * n) taken: the value a window ranking in SQL would pick, without sorting
    every span twice more (per source and for "*") inside the database."""
    d = conn.dialect.name
    ev, cap = order_events.alias("ev"), order_events.alias("cap")
    firsts = []  # per order: its first event into each stage, on the days / in the run
    for i, stage in enumerate(stages):
        into = ev.c.to_state == stage
        if scope.daily:
            firsts.append(func.min(case((into, ev.c.at))).label(f"d{i}"))
        if scope.per_run:
            mine = and_(into, scope.in_run(ev)) if scope.daily else into
            firsts.append(func.min(case((mine, ev.c.at))).label(f"r{i}"))
    # the first capture (any run, any day), looked up on the order_events.order_id index once
    # per order; inside the grouped statement, which neither database inlines into the outer
    # one, so it is not looked up again for every span that reads it
    captured = (select(func.min(cap.c.at))
                .where(cap.c.order_id == ev.c.order_id, cap.c.to_state == "captured")
                .scalar_subquery())
    reached = (select(ev.c.order_id, *firsts, captured.label("captured_at"))
               .where(ev.c.to_state.in_(stages), scope.events(ev))
               .group_by(ev.c.order_id).subquery("reached"))
    cols: list[ColumnElement[Any]] = [orders.c.source]
    for i in range(len(stages)):
        if scope.daily:
            cols += [_day(reached.c[f"d{i}"], d).label(f"day{i}"),
                     _seconds(reached.c.captured_at, reached.c[f"d{i}"], d).label(f"sd{i}")]
        if scope.per_run:
            cols.append(_seconds(reached.c.captured_at, reached.c[f"r{i}"], d).label(f"sr{i}"))
    q = select(*cols).select_from(reached.join(orders, orders.c.id == reached.c.order_id))
    # a span is null when the order did not reach the stage there, or was never captured
    spans: dict[tuple[int, date | None], dict[str, array[float]]] = {}
    days: dict[Any, date] = {}
    for r in _stream(conn, q):
        source, col = r[0], 1
        for i in range(len(stages)):
            if scope.daily:
                day, s = r[col], r[col + 1]
                col += 2
                if s is not None:
                    if day not in days:
                        days[day] = _as_date(day)
                    spans.setdefault((i, days[day]), {}).setdefault(source, array("d")).append(s)
            if scope.per_run:
                s = r[col]
                col += 1
                if s is not None:
                    spans.setdefault((i, None), {}).setdefault(source, array("d")).append(s)
    out = []
    for (i, day), by_source in spans.items():
        ordered = {source: sorted(values) for source, values in by_source.items()}
        if len(ordered) == 1:
            ordered[ALL] = next(iter(ordered.values()))
        else:  # sorted runs, merged: cheap
            ordered[ALL] = sorted([s for values in ordered.values() for s in values])
        for source, values in ordered.items():
            n = len(values)
            for pct in (50, 95):  # rank ceil(pct/100 * n), 1-based, in integers
                out.append(KpiRow(day, source, f"cycle_p{pct}_s.{stages[i]}",
                                  _dec(values[(pct * n + 99) // 100 - 1], SECONDS), None, n))
    return out


def _automation(conn: Connection, scope: _Scope) -> list[KpiRow]:
    """Orders first captured in the scope, and how many reached each stage untouched."""
    d = conn.dialect.name
    ev, manual = order_events.alias("ev"), order_events.alias("manual")
    touched = or_(
        exists().where(ops_actions.c.order_id == ev.c.order_id),
        exists().where(manual.c.order_id == ev.c.order_id,
                       or_(manual.c.from_state == "quarantined", manual.c.to_state == "cancelled")),
    )

    def reached(stage: str) -> ColumnElement[int]:
        went = order_events.alias(f"to_{stage}")
        return case((exists().where(went.c.order_id == ev.c.order_id, went.c.to_state == stage), 1),
                    else_=0).label(f"reached_{stage}")

    # touched is judged once per order, not once per stage
    base = (select(ev.c.order_id, *scope.keys(ev, d), case((touched, 1), else_=0).label("touched"),
                   *(reached(s) for s in AUTOMATION_STAGES))
            .select_from(ev.join(orders, orders.c.id == ev.c.order_id))
            .where(ev.c.from_state.is_(None), ev.c.to_state == "captured", scope.events(ev)))
    both = _both(base)
    untouched = 1 - both.c.touched
    q = scope.grouped(both, [func.count().label("captured"),
                             *(func.sum(both.c[f"reached_{s}"] * untouched).label(s)
                               for s in AUTOMATION_STAGES)])
    out = []
    for r in conn.execute(q).mappings():
        day = _key_day(r["day"])
        for stage in AUTOMATION_STAGES:
            metric = "automation_rate" if stage == "validated" else f"automation_rate.{stage}"
            out.append(_ratio(day, r["source"], metric, int(r[stage] or 0), int(r["captured"])))
    return [r for r in out if r is not None]


def _quarantine(conn: Connection, scope: _Scope) -> list[KpiRow]:
    """Orders gated in the scope; of them, those quarantined there: overall and by check."""
    d = conn.dialect.name
    ev = order_events.alias("ev")
    gate = and_(ev.c.from_state == "captured", scope.events(ev))
    joined = ev.join(orders, orders.c.id == ev.c.order_id)
    gated_base = (select(ev.c.order_id, *scope.keys(ev, d)).select_from(joined)
                  .where(gate, ev.c.to_state.in_(("validated", "quarantined"))))
    held_base = (select(ev.c.order_id, *scope.keys(ev, d), quarantine.c.check_id)
                 .select_from(joined.outerjoin(quarantine, quarantine.c.order_id == ev.c.order_id))
                 .where(gate, ev.c.to_state == "quarantined"))
    g, h = _both(gated_base), _both(held_base)
    gated = {(_key_day(r.day), r.source): int(r.n) for r in conn.execute(
        scope.grouped(g, [func.count(func.distinct(g.c.order_id)).label("n")]))}
    per_check = conn.execute(scope.grouped(h, [func.count(func.distinct(h.c.order_id)).label("n")],
                                           by=("check_id",), where=h.c.check_id.is_not(None))).all()
    held = {(_key_day(r.day), r.source): int(r.n) for r in conn.execute(
        scope.grouped(h, [func.count(func.distinct(h.c.order_id)).label("n")]))}
    out: list[KpiRow | None] = []
    for (day, source), n in gated.items():  # every gated key gets its overall rate, 0 included
        out.append(_ratio(day, source, "quarantine_rate", held.get((day, source), 0), n))
    for r in per_check:
        day = _key_day(r.day)
        out.append(_ratio(day, r.source, f"quarantine_rate.{r.check_id}", int(r.n),
                          gated.get((day, r.source), 0)))
    return [r for r in out if r is not None]


def _accuracy(conn: Connection, scope: _Scope, readers: Mapping[str, SourceTotal],
              show: int) -> tuple[_Accuracy | None, _Accuracy | None]:
    """Stored total == sum of line amounts == the source's total.

    The line sums are SQL; the source's total is the one the connector's mapping read from the
    order's raw payload when it landed (``raw_records.source_total``), streamed with the
    scope's orders (bounded memory: yield_per). An order whose raw record has none (landed
    before migration 0005t) has its payload read and mapped now, a block of rows at a time.
    Returns the days' figures and the run's (each None when the scope has none); the run's
    lists its first ``show`` inaccurate orders."""
    d = conn.dialect.name
    ev = order_events.alias("ev")
    cohort = (select(ev.c.id.label("event_id"), ev.c.order_id, *scope.keys(ev, d),
                     orders.c.external_id, orders.c.total)
              .select_from(ev.join(orders, orders.c.id == ev.c.order_id))
              .where(ev.c.from_state.is_(None), ev.c.to_state == "captured", scope.events(ev))
              .subquery("cohort"))
    # the line sums: each cohort row joined to its lines on the order_lines.order_id index and
    # grouped, and the landed total looked up per row on raw_records' key - a plan that stays
    # sane whatever the database guesses about the cohort's size (no statistics yet after a
    # load)
    ln = order_lines
    landed = (select(raw_records.c.source_total)
              .where(raw_records.c.source == cohort.c.source,
                     raw_records.c.stream == ORDERS_STREAM,
                     raw_records.c.external_id == cohort.c.external_id)
              .scalar_subquery())
    group = [c for c in cohort.c]
    q = (select(*(c for c in cohort.c if c.name != "event_id"),
                func.sum(ln.c.amount).label("line_sum"), func.count(ln.c.id).label("n_lines"),
                func.count(ln.c.amount).label("n_amounts"), landed.label("source_total"))
         .select_from(cohort.outerjoin(ln, ln.c.order_id == cohort.c.order_id))
         .group_by(*group))  # no ORDER BY: a sort would carry every row
    checked: Counter[tuple] = Counter()
    accurate: Counter[tuple] = Counter()
    daily = _Accuracy() if scope.daily else None
    run = _Accuracy() if scope.per_run else None
    split = daily is not None and run is not None  # rows say whether they are the run's
    days: dict[Any, date] = {}  # the day column's values, each read once
    shown: list[tuple[int, int, dict[str, Any]]] = []  # the run's first inaccurate by order id
    rows = _stream(conn, q).mappings()
    seq = 0
    while block := rows.fetchmany(_ACCURACY_BLOCK):
        payloads = _payloads(conn, [r for r in block if r["source_total"] is None
                                    and r["source"] in readers])
        for r in block:
            seq += 1
            mine = run is not None and (not split or r["in_run"] == 1)
            reader = readers.get(r["source"])
            if reader is None:
                if daily is not None:
                    daily.unchecked += 1
                if mine:
                    run.unchecked += 1  # type: ignore[union-attr]
                continue
            keys: list[tuple] = []
            if daily is not None:
                day = days.get(r["day"])
                if day is None:
                    day = days[r["day"]] = _as_date(r["day"])
                keys += [(day, r["source"]), (day, ALL)]
            if mine:
                keys += [(None, r["source"]), (None, ALL)]
            problem = _accuracy_problem(r, reader, payloads)
            for key in keys:
                checked[key] += 1
                accurate[key] += problem is None
            if problem and mine and show > 0:
                order_id = int(r["order_id"])
                shown.append((order_id, seq, {"order_id": order_id, "source": r["source"],
                                              "external_id": r["external_id"],
                                              "problem": problem}))
                if len(shown) >= 4 * show + 64:  # keep the lowest ids only: bounded
                    shown.sort(key=_first_two)
                    del shown[show:]
    if run is not None:
        run.inaccurate = [found for *_, found in sorted(shown, key=_first_two)[:show]]
    for (day, source), n in checked.items():
        row = _ratio(day, source, ACCURACY, accurate[(day, source)], n)
        if row is not None:
            (run if day is None else daily).rows.append(row)  # type: ignore[union-attr]
    return daily, run


_ACCURACY_BLOCK = 2000  # rows judged together: the payloads a block lacks are read in one query


def _first_two(item: tuple) -> tuple:
    return item[:2]


def _stream(conn: Connection, q: Any) -> Any:
    """Execute ``q`` and stream its rows (bounded memory)."""
    if conn.dialect.name == "postgresql":
        # A streamed read is a cursor, which PostgreSQL plans for the first 10 % of rows
        # (nested loops). Every row is read: plan for all of them (this transaction only).
        conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
    return conn.execute(q, execution_options={"yield_per": 2000})  # this statement only


def _payloads(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """The raw order payloads of ``rows`` (source, external_id), for those landed without
    their total: {(source, external_id): payload text}."""
    wanted: dict[str, list[str]] = {}
    for r in rows:
        wanted.setdefault(r["source"], []).append(r["external_id"])
    out: dict[tuple[str, str], str] = {}
    for source, ids in wanted.items():
        for ext, payload in conn.execute(
                select(raw_records.c.external_id, raw_records.c.payload)
                .where(raw_records.c.source == source, raw_records.c.stream == ORDERS_STREAM,
                       in_values(raw_records.c.external_id, ids, conn.dialect.name))):
            out[(source, ext)] = payload
    return out


def _accuracy_problem(r: Mapping[str, Any], reader: SourceTotal,
                      payloads: Mapping[tuple[str, str], str]) -> str | None:
    """Why an order's stored total is not accurate, or None when it is."""
    total, line_sum = r["total"], r["line_sum"]
    if total is None:
        return "no total stored"
    if (r["n_amounts"] or 0) != (r["n_lines"] or 0):
        return "a line has no amount"
    line_sum = Decimal(line_sum) if line_sum is not None else Decimal(0)
    if Decimal(total) != line_sum:
        return f"total {total} != sum of lines {line_sum}"
    source_total = r["source_total"]
    if source_total is None:  # landed without it (before 0005t): the payload, mapped now
        payload = payloads.get((r["source"], r["external_id"]))
        if payload is None:
            return "no raw record of the order"
        try:
            source_total = reader(json.loads(payload, parse_float=Decimal))
        except (ValueError, KeyError, TypeError) as exc:  # MappingError is a ValueError
            return f"raw payload does not map: {exc}"
    if source_total is None or Decimal(source_total) != Decimal(total):
        return f"total {total} != the source's total {source_total}"
    return None


# ------------------------------------------------------------------------------------- writing


def _write(engine: Engine, run_id: str, days: Sequence[date], rows: Sequence[KpiRow],
           families: Sequence[str]) -> dict[str, int]:
    """Make kpi_daily hold ``rows`` for ``days``: insert new figures, update changed ones,
    delete stale ones of ``families``; an unchanged figure is not touched (nor its run_id)."""
    counts = {"inserted": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    if not days:
        return counts
    t = kpi_daily
    new = {(r.day, r.source, r.metric): r for r in rows}
    with begin_write(engine) as conn:
        have = {(_as_date(x.day), x.source, x.metric): x for x in conn.execute(
            select(t.c.id, t.c.day, t.c.source, t.c.metric, t.c.value, t.c.numerator,
                   t.c.denominator).where(t.c.day.in_(sorted(set(days)))))}
        inserts, updates = [], []
        for key, r in new.items():
            old = have.get(key)
            values = {"value": r.value, "numerator": r.numerator, "denominator": r.denominator}
            if old is None:
                inserts.append({"day": r.day, "source": r.source, "metric": r.metric, **values,
                                "run_id": run_id})
            elif (_dec(old.value, RATE), old.numerator, old.denominator) != (
                    r.value, r.numerator, r.denominator):
                updates.append({"kid": old.id, **values, "run_id": run_id})
            else:
                counts["unchanged"] += 1
        stale = [old.id for key, old in have.items()
                 if key not in new and old.metric.split(".")[0] in families]
        if inserts:
            # ON CONFLICT: a concurrent refresh of the same day may have inserted it meanwhile
            stmt = dialect_insert(conn, t)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[t.c.day, t.c.source, t.c.metric],
                set_={c: stmt.excluded[c] for c in ("value", "numerator", "denominator", "run_id")},
            ), inserts)
        if updates:
            conn.execute(update(t).where(t.c.id == bindparam("kid")), updates)
        if stale:
            conn.execute(delete(t).where(t.c.id.in_(stale)))
    counts.update(inserted=len(inserts), updated=len(updates), deleted=len(stale))
    return counts


# ------------------------------------------------------------------------------------- helpers


def format_rate(rate: Decimal | str | None) -> str:
    """A ratio for people: 0.785714 -> "78.6 %"; None (nothing to measure) -> "-"."""
    if rate is None:
        return "-"
    return f"{(Decimal(str(rate)) * 100).quantize(Decimal('0.1'))} %"


def format_seconds(seconds: Decimal | str | None) -> str:
    """Seconds in the unit people read: "45.0 s", "12.5 min", "3.2 h", "1.5 d"; None -> "-"."""
    if seconds is None:
        return "-"
    s = Decimal(str(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{(s / size).quantize(Decimal('0.1'))} {unit}"
    return f"{s.quantize(Decimal('0.1'))} s"


def _ratio(day: date | None, source: str, metric: str, num: int, den: int) -> KpiRow | None:
    """A rate row, or None when there is nothing to divide by."""
    if den <= 0:
        return None
    return KpiRow(day, source, metric, (Decimal(num) / Decimal(den)).quantize(RATE), num, den)


def _dec(value: Any, places: Decimal) -> Decimal:
    """A database number as a Decimal of fixed places (SQLite hands back floats for SQL
    arithmetic: via str, so 3599.9999999 reads as the 3600.000 it stands for)."""
    return Decimal(str(value)).quantize(places)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))  # SQLite's date() answers text


def _key_day(day: Any) -> date | None:
    """A grouped row's day: None for the run's figures."""
    return None if day is None else _as_date(day)


def _row_order(r: KpiRow) -> tuple:
    return (r.day or date.min, r.source != ALL, r.source, r.metric)


def _empty(with_accuracy: bool) -> dict[str, Any]:
    section: dict[str, Any] = {
        "cycle_time": {s: {"count": 0, "p50_s": None, "p95_s": None} for s in STAGES},
        "automation": {"captured": 0, "automated": 0, "rate": None,
                       "by_stage": {s: {"automated": 0, "rate": None} for s in AUTOMATION_STAGES}},
        "quarantine": {"gated": 0, "quarantined": 0, "rate": None, "by_check": {}},
        "accuracy": ({"orders": 0, "accurate": 0, "rate": None} if with_accuracy else None),
    }
    return section


def _shape(rows: Iterable[KpiRow], with_accuracy: bool) -> dict[str, dict[str, Any]]:
    """Flat figures -> {source: {cycle_time, automation, quarantine, accuracy}}."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r.source, _empty(with_accuracy))
        family, _, detail = r.metric.partition(".")
        if family in ("cycle_p50_s", "cycle_p95_s"):
            ct = s["cycle_time"].setdefault(detail, {})
            ct["count"] = r.denominator
            ct["p50_s" if family == "cycle_p50_s" else "p95_s"] = r.value
        elif family == "automation_rate":
            a = s["automation"]
            a["captured"] = r.denominator
            a["by_stage"][detail or "validated"] = {"automated": r.numerator, "rate": r.value}
            if not detail:
                a["automated"], a["rate"] = r.numerator, r.value
        elif family == "quarantine_rate":
            q = s["quarantine"]
            q["gated"] = r.denominator
            if detail:
                q["by_check"][detail] = {"quarantined": r.numerator, "rate": r.value}
            else:
                q["quarantined"], q["rate"] = r.numerator, r.value
        elif family == ACCURACY:
            s["accuracy"] = {"orders": r.denominator, "accurate": r.numerator, "rate": r.value}
    for s in out.values():
        s["quarantine"]["by_check"] = dict(sorted(s["quarantine"]["by_check"].items()))
    return out


def _missed_section(audit: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The audit's figures as the KPI shows them (None: no audit of this run)."""
    if not audit:
        return None
    return {k: audit.get(k) for k in ("source_count", "missed", "rate", "ok", "window_since")} | {
        "by_source": audit.get("sources", {})}
