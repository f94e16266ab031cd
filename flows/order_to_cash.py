"""The order's way through, as Prefect flows: ingest -> validate -> allocate -> push -> invoice
-> reconcile, and the parent ``order_to_cash`` that runs them in turn.

Flows only compose: every stage is one task per stage (and per source stream, or per push
target), never one per order. SQL lives in warehouse/ and checks/, HTTP in connectors/.
Each flow takes the path of orderhub.yaml (deployments can pass it) and an optional run id: the
parent passes its own, so every row written in a full run carries the same run id; a stage run
alone (e.g. the hourly reconcile deployment) records a run of its own.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from connectors.base import frozen_heap
from connectors.http import SourceError
from flows import alerts
from flows import ingest as ingest_mod
from flows import push as push_mod
from flows.config import Settings, load_settings
from flows.console import progress
from flows.lineage import LineageWriter, dataset
from warehouse import allocate as allocate_mod
from warehouse import (
    exports,
    freshness,
    invoicing,
    kpis,
    load,
    metrics,
    notifications,
    outbox,
    runs,
)
from warehouse import reconcile as reconcile_mod
from warehouse.engine import make_engine, migrate

DEFAULT_CONFIG = "orderhub.yaml"
INGEST_ROLES = ("customers", "prices", "price_rules", "stock", "orders", "receivables")


@cache
def _engine(url: str) -> Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine


@contextmanager
def _stage(config_path: str, flow_name: str, run_id: str | None
           ) -> Iterator[tuple[Settings, Engine, str, dict]]:
    """Settings, engine, run id and the stage's lineage inputs/outputs (filled by the stage).

    Owns the run record when the stage runs alone; emits the stage job's START and COMPLETE
    (or FAIL) events, under the parent run when there is one."""
    settings = load_settings(config_path)
    engine = _engine(settings.warehouse_url)
    own = run_id is None
    rid = run_id or runs.start_run(engine, flow_name)
    lineage = LineageWriter(settings.lineage_dir, rid)
    # alone, the stage is the root run; inside order_to_cash it is a child of the parent run
    job_run = rid if own else lineage_run(rid, flow_name)
    io: dict[str, list] = {"inputs": [], "outputs": []}
    lineage.emit("START", flow_name, job_run)
    try:
        with frozen_heap():  # what earlier stages and imports left is not walked again
            yield settings, engine, rid, io
    except Exception as exc:
        lineage.emit("FAIL", flow_name, job_run, error=str(exc))
        if own:
            runs.finish_run(engine, rid, "failed", {"error": str(exc)})
        raise
    lineage.emit("COMPLETE", flow_name, job_run, inputs=io["inputs"], outputs=io["outputs"])
    if own:
        runs.finish_run(engine, rid, "completed", {})


def _wh(settings: Settings) -> str:
    """The lineage namespace of the warehouse: its URL without credentials."""
    url = settings.warehouse_url
    if "@" in url:
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://{rest.split('@', 1)[1]}"
    return url


# --- tasks: one per stage, or per source stream / push target -----------------------------

@task(name="pull", cache_policy=NO_CACHE, task_run_name="pull {source}/{stream}")
def pull_task(settings: Settings, engine: Engine, run_id: str, source: str, stream: str) -> dict:
    started = time.monotonic()
    try:
        counts = ingest_mod.pull_stream(settings, engine, run_id, source, stream)
    except SourceError as exc:
        alerts.alert_source_unreachable(settings, engine, run_id, source, exc, stream)
        raise
    counts["seconds"] = round(time.monotonic() - started, 2)
    return counts


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(settings: Settings, engine: Engine, run_id: str) -> Any:
    from checks.gate import GateError, run_gate  # Great Expectations loads only when a gate runs
    from checks.suite import load_gate, load_suite

    load.resolve_customers(engine, run_id)
    try:
        result = run_gate(engine, run_id, load_suite(settings.checks),
                          load_gate(settings.raw.get("gate")))
    except GateError as exc:
        alerts.alert_gate_error(settings, engine, run_id, exc)
        raise
    alerts.alert_gate(settings, engine, run_id, result)  # failed checks, held batches
    return result


@task(name="allocate", cache_policy=NO_CACHE)
def allocate_task(settings: Settings, engine: Engine, run_id: str) -> dict:
    return allocate_mod.allocate(engine, run_id, settings.allocation)


@task(name="enqueue", cache_policy=NO_CACHE, task_run_name="enqueue {operation} -> {target}")
def enqueue_task(engine: Engine, run_id: str, operation: str, target: str,
                 orders_from: list[str] | None) -> int:
    return outbox.enqueue(engine, run_id, operation, target, orders_from)


@task(name="drain", cache_policy=NO_CACHE, task_run_name="push {operation} -> {target}")
def drain_task(settings: Settings, engine: Engine, run_id: str, target: str,
               operation: str) -> dict:
    return push_mod.drain(settings, engine, run_id, target, operation)


# --- stage bodies ----------------------------------------------------------------------------

def run_ingest(config_path: str = DEFAULT_CONFIG, run_id: str | None = None,
           roles: list[str] | None = None) -> list[dict]:
    """Pull every declared source stream: masters first, then orders in the file's order."""
    with _stage(config_path, "ingest", run_id) as (settings, engine, rid, io):
        results = []
        for role in roles or INGEST_ROLES:
            for source in settings.sources_with_role(role):
                counts = pull_task(settings, engine, rid, source, role)
                results.append(counts)
                io["inputs"].append(dataset(source, role))
                io["outputs"].append(dataset(_wh(settings), f"{role}/{source}",
                                             rows=counts["new"] + counts["changed"]))
        return results


def run_validate(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> dict:
    """Gate the staged (captured) orders; failing ones go to quarantine with check and reason."""
    with _stage(config_path, "validate", run_id) as (settings, engine, rid, io):
        result = gate_task(settings, engine, rid)
        summary = result.summary()
        assertions = [{"assertion": c["check_id"], "success": bool(c["success"])}
                      for c in summary.get("checks", [])]
        io["inputs"].append(dataset(_wh(settings), "orders", assertions=assertions))
        io["outputs"].append(dataset(_wh(settings), "quarantine",
                                     rows=summary.get("quarantined", 0)))
        _artifact_gate(result, rid)
        return summary


def run_allocate(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> dict:
    """Reserve stock for validated orders by the declared rules; record the rule per line."""
    with _stage(config_path, "allocate", run_id) as (settings, engine, rid, io):
        result = allocate_task(settings, engine, rid)
        io["inputs"] += [dataset(_wh(settings), "orders"), dataset(_wh(settings), "stock")]
        io["outputs"].append(dataset(_wh(settings), "allocations",
                                     rows=sum(result.get("lines_by_rule", {}).values())))
        return result


def run_push(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> list[dict]:
    """Send fulfilments to each order's own channel and sales orders to the ERP, exactly once."""
    with _stage(config_path, "push", run_id) as (settings, engine, rid, io):
        results = []
        for target in settings.sources_with_role("fulfilment_target"):
            enqueue_task(engine, rid, "fulfilment", target, [target])
            results.append(drain_task(settings, engine, rid, target, "fulfilment"))
        erp = settings.target("sales_order_target")
        if erp:
            others = [s for s in settings.sources_with_role("orders") if s != erp]
            enqueue_task(engine, rid, "sales_order", erp, others)
            results.append(drain_task(settings, engine, rid, erp, "sales_order"))
        outbox.complete_pushes(engine, rid)
        io["inputs"].append(dataset(_wh(settings), "outbox"))
        io["outputs"] += [dataset(r["target"], r["operation"], rows=r["done"]) for r in results]
        return results


def run_invoice(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> dict:
    """Invoice pushed orders by the policy and send the receivables to the finance system."""
    with _stage(config_path, "invoice", run_id) as (settings, engine, rid, io):
        invoicing.apply_channel_returns(engine, rid)
        target = settings.target("invoice_target")
        # with a target, each invoice's outbox row is written with it (same transaction)
        created = invoicing.create_invoices(engine, rid, settings.invoicing, target or None)
        sent: dict[str, Any] = {"done": 0, "failed": 0}
        credits = 0
        if target:
            invoicing.enqueue_invoices(engine, rid, target)  # invoices queued before a target
            sent = drain_task(settings, engine, rid, target, "invoice")
        invoicing.complete_invoices(engine, rid)
        credits = invoicing.create_credit_notes(engine, rid, settings.invoicing)
        if target:
            invoicing.enqueue_credit_notes(engine, rid, target)
            drain_task(settings, engine, rid, target, "credit_note")
        notified = _notify(settings, engine, rid)
        io["inputs"].append(dataset(_wh(settings), "orders"))
        io["outputs"] += [dataset(_wh(settings), "invoices", rows=created),
                          dataset(target or "none", "invoice", rows=sent["done"])]
        progress("invoice: %s created, %s sent, %s credit notes", f"{created:,}",
                 f"{sent['done']:,}", f"{credits:,}")
        return {"created": created, "sent": sent["done"], "failed": sent["failed"],
                "credit_notes": credits, "notifications": notified}


def _notify(settings: Settings, engine: Engine, rid: str) -> int:
    """Customer progress notices (accepted, shipped, invoiced), each sent exactly once."""
    n = settings.notifications
    if not n.enabled:
        return 0
    notifications.enqueue_notifications(engine, rid, n.events, n.sink, since=n.since,
                                        require_email=n.require_email)
    return drain_task(settings, engine, rid, n.sink, "notification")["done"]


def run_reconcile(config_path: str = DEFAULT_CONFIG, run_id: str | None = None,
                  export: bool = True) -> dict:
    """Pull payments and match them to invoices; refresh the reconciled tables and (unless
    ``export`` is false: order_to_cash runs them beside its KPIs) the Parquet exports."""
    with _stage(config_path, "reconcile", run_id) as (settings, engine, rid, io):
        pulled = [pull_task(settings, engine, rid, source, "payments")
                  for source in settings.sources_with_role("payments")]
        result = _reconcile(settings, engine, rid)
        alerts.alert_unmatched_payments(settings, engine, rid)
        files = _export(settings, engine, rid) if export else []
        io["inputs"] += [dataset(s["source"], "payments") for s in pulled]
        io["inputs"].append(dataset(_wh(settings), "invoices"))
        io["outputs"] += [dataset(_wh(settings), "reconciliation"),
                          *[dataset("file", str(f)) for f in files]]
        progress("reconcile: %s", ", ".join(f"{k} {v}" for k, v in result.items()
                                             if not isinstance(v, dict)))
        return {"pulled": pulled, **result, "exports": [str(f) for f in files]}


def run_export(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> list[str]:
    """The finance Parquet exports of the reconciled tables (skipped when nothing changed)."""
    with _stage(config_path, "export", run_id) as (settings, engine, rid, io):
        files = _export(settings, engine, rid)
        io["inputs"] += [dataset(_wh(settings), t) for t in EXPORT_INPUTS]
        io["outputs"] += [dataset("file", str(f)) for f in files]
        return [str(f) for f in files]


@task(name="export", cache_policy=NO_CACHE)
def export_task(config_path: str, run_id: str, own_process: bool = False) -> dict[str, Any]:
    """``run_export`` beside the KPIs. ``own_process``: in a fresh interpreter (spawn, not fork:
    this process has threads) that reads the config itself, its error raised here; the one
    ``_export_process`` started with the run when there is one. On SQLite the export is Python
    work (driver rows to Arrow) that, in a thread, shares the interpreter lock with the KPIs:
    at TPC-H SF 0.1, 14 s beside them in a thread, 8.3 s in a process. On PostgreSQL the server
    does most of it (COPY ... TO) and a thread is quicker (9 s; a process, with its start and
    imports, 11.5 s)."""
    started = time.monotonic()
    if own_process:
        settings = load_settings(config_path)
        # nothing to export (a rerun): no process to start, the skip is recorded here
        own_process = not _exports_current(settings, _engine(settings.warehouse_url))[2]
    if own_process:
        warm = _EXPORT_PROCESSES.get(run_id)
        if warm is not None:
            files = warm.submit(run_export, config_path, run_id).result()
        else:
            with _spawned_process() as pool:
                files = pool.submit(run_export, config_path, run_id).result()
    else:
        files = run_export(config_path, run_id)
    return {"files": files, "seconds": round(time.monotonic() - started, 2)}


# SQLite: the exports' process of a run, by run id (``_export_process``)
_EXPORT_PROCESSES: dict[str, ProcessPoolExecutor] = {}


def _spawned_process() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def _warm_up() -> None:
    """Nothing: the child imports this module (and with it everything the exports use) to
    run it, which is the point."""


@contextmanager
def _export_process(settings: Settings, engine: Engine, run_id: str) -> Iterator[None]:
    """SQLite, exports to write: their process, started now and importing while the stages
    run (on the core SQLite leaves idle), so the exports begin at once after reconcile: its
    start and imports are ~1.5 s that would otherwise come last. Stopped on leaving."""
    if engine.dialect.name != "sqlite" or _exports_current(settings, engine)[2]:
        yield
        return
    pool = _spawned_process()
    pool.submit(_warm_up)
    _EXPORT_PROCESSES[run_id] = pool
    try:
        yield
    finally:
        _EXPORT_PROCESSES.pop(run_id, None)
        pool.shutdown(wait=True, cancel_futures=True)


# What reconcile and the exports read; when no run has written here since their last pass (and
# the config and day are the same), they skip it: a rerun with nothing new costs index probes,
# not a pass over every invoice and order.
RECONCILE_INPUTS = ("invoices", "payments", "fx_rates")
EXPORT_INPUTS = ("orders", "order_lines", "allocations", "quarantine", "invoices", "payments",
                 "payment_matches", "reconciliation", "payment_reconciliation")
PER_RUN = ("matched", "rematched", "changed", "payments_changed", "orders_paid")


def _reconcile(settings: Settings, engine: Engine, rid: str) -> dict[str, Any]:
    key = f"{settings.amount_tolerance}|{settings.reconcile_rules!r}|{date.today()}"
    key = hashlib.sha256(key.encode()).hexdigest()
    last = freshness.unchanged(engine, "reconcile", RECONCILE_INPUTS, key)
    if last is not None:
        return {**last, **dict.fromkeys(PER_RUN, 0), "skipped": "nothing changed"}
    started = freshness.now()
    result = reconcile_mod.reconcile(engine, rid, settings.amount_tolerance,
                                     settings.reconcile_rules)
    freshness.mark(engine, "reconcile", rid, started, key, json.loads(json.dumps(result,
                                                                                 default=str)))
    return result


def _export(settings: Settings, engine: Engine, rid: str) -> list[Path]:
    paths, key, current = _exports_current(settings, engine)
    if current:
        return paths
    started = freshness.now()
    files = exports.export_parquet(engine, settings.exports_dir)
    freshness.mark(engine, "exports", rid, started, key, {"files": len(files)})
    return files


def _exports_current(settings: Settings, engine: Engine) -> tuple[list[Path], str, bool]:
    """The export files, their freshness key, and whether they are current: all there, and no
    run has written their inputs since (same folder, same day)."""
    folder = settings.exports_dir
    paths = [Path(folder) / f"{t}.parquet" for t in exports.DEFAULT_TABLES]
    key = hashlib.sha256(f"{Path(folder).resolve()}|{date.today()}".encode()).hexdigest()
    current = (all(p.exists() for p in paths)
               and freshness.unchanged(engine, "exports", EXPORT_INPUTS, key) is not None)
    return paths, key, current


# --- stage flows: each stage deployable alone (prefect.yaml); the parent runs the same bodies
# as plain calls, because a subflow costs about a second of Prefect bookkeeping per stage.

@flow(name="ingest")
def ingest(config_path: str = DEFAULT_CONFIG, run_id: str | None = None,
           roles: list[str] | None = None) -> list[dict]:
    """Pull every declared source stream: masters first, then orders in the file's order."""
    return run_ingest(config_path, run_id, roles)


@flow(name="validate")
def validate(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> dict:
    """Gate the staged (captured) orders; failing ones go to quarantine with check and reason."""
    return run_validate(config_path, run_id)


@flow(name="allocate")
def allocate(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> dict:
    """Reserve stock for validated orders by the declared rules; record the rule per line."""
    return run_allocate(config_path, run_id)


@flow(name="push")
def push(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> list[dict]:
    """Send fulfilments to each order's own channel and sales orders to the ERP, exactly once."""
    return run_push(config_path, run_id)


@flow(name="invoice")
def invoice(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> dict:
    """Invoice pushed orders by the policy and send the receivables to the finance system."""
    return run_invoice(config_path, run_id)


@flow(name="reconcile")
def reconcile(config_path: str = DEFAULT_CONFIG, run_id: str | None = None) -> dict:
    """Pull payments and match them to invoices; refresh the reconciled tables and exports."""
    return run_reconcile(config_path, run_id)


STAGE_BODIES = (("ingest", run_ingest), ("validate", run_validate), ("allocate", run_allocate),
                ("push", run_push), ("invoice", run_invoice), ("reconcile", run_reconcile))


@flow(name="order_to_cash")
def order_to_cash(config_path: str = DEFAULT_CONFIG) -> dict:
    """The whole way through, once. Returns the run summary."""
    settings = load_settings(config_path)
    engine = _engine(settings.warehouse_url)
    rid = runs.start_run(engine, "order_to_cash")
    lineage = LineageWriter(settings.lineage_dir, rid)
    lineage.emit("START", "order_to_cash", rid)
    started = time.monotonic()
    stages: dict[str, Any] = {}
    # SQLite: the exports' process starts now, beside the stages (_export_process); the heap
    # as it is now (imports) and after each stage is frozen until the run ends (frozen_heap)
    with frozen_heap(), _export_process(settings, engine, rid):
        try:
            for name, stage in STAGE_BODIES:
                t0 = time.monotonic()
                progress("%s ...", name)
                # the reconcile stage without its exports: they run beside the KPIs, below
                stages[name] = stage(config_path, rid, **({"export": False} if name == "reconcile"
                                                          else {}))
                stages.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 2)
            # The Parquet exports only read what the stages wrote, on a connection of their own:
            # beside the summary, KPIs and report (in a process of their own on SQLite, see
            # export_task), not after them.
            exported = export_task.submit(config_path, rid,
                                          own_process=engine.dialect.name == "sqlite")
            try:
                summary = run_summary(settings, engine, rid, stages)
                t0 = time.monotonic()
                summary.update(_kpis(settings, engine, rid))
                stages["seconds"]["kpis"] = round(time.monotonic() - t0, 2)
                t0 = time.monotonic()
                summary["report"] = str(_write_report(settings, engine, rid, summary["kpis"]))
                stages["seconds"]["report"] = round(time.monotonic() - t0, 2)
            finally:
                done = exported.result(raise_on_failure=False)  # never leave it running
            if isinstance(done, BaseException):
                raise done
            stages["reconcile"]["exports"] = done["files"]
            stages["seconds"]["export"] = done["seconds"]  # beside kpis and report, not after
            summary["seconds"] = round(time.monotonic() - started, 2)
            summary["lineage"] = str(lineage.path)
        except Exception as exc:
            lineage.emit("FAIL", "order_to_cash", rid, error=str(exc))
            runs.finish_run(engine, rid, "failed", {"error": str(exc), "stages": stages})
            raise
    runs.finish_run(engine, rid, "completed", summary)
    lineage.emit("COMPLETE", "order_to_cash", rid)
    _artifact_summary(summary)
    return summary


def run_summary(settings: Settings, engine: Engine, rid: str, stages: dict) -> dict[str, Any]:
    """Counts per stage and the records identity: in = loaded + quarantined + rejected + held."""
    pulled = stages.get("ingest", []) + stages.get("reconcile", {}).get("pulled", [])
    order_pulls = [p for p in pulled if p["stream"] == "orders"]
    entered = metrics.events_in_run(engine, rid)
    received = sum(p["received"] for p in order_pulls)
    rejected = sum(p["rejected"] for p in order_pulls)
    held = sum(p["unchanged"] + p.get("amended", 0) for p in order_pulls)
    loaded = entered.get("validated", 0)
    # a held batch is neither loaded nor quarantined: it waits, whole, for ops
    quarantined = entered.get("quarantined", 0) + entered.get("held", 0)
    return {
        "run_id": rid,
        "streams": pulled,
        "records": {"in": received, "loaded": loaded, "quarantined": quarantined,
                    "rejected": rejected, "already_held": held,
                    "balanced": received == loaded + quarantined + rejected + held},
        "entered": entered,
        "orders_by_status": metrics.orders_by_status(engine),
        "outbox": metrics.outbox_by_status(engine),
        "stages": stages,
        # "cycle_time" comes with the KPIs (_kpis): the same figures, computed once
    }


def _kpis(settings: Settings, engine: Engine, rid: str) -> dict[str, Any]:
    """The business's figures for this run, and the summary's cycle times read from them; the
    missed-order audit asks each source itself."""
    from flows.audit import audit_sources, source_total_readers

    progress("kpis ...")
    readers = source_total_readers(settings)
    audit = audit_sources(settings, engine, rid)
    # the daily figures of the days the run touched and the run's: one pass over those days
    _, figures = kpis.refresh_and_run_kpis(engine, rid, readers=readers, audit=audit)
    return {"audit": audit, "kpis": figures, "cycle_time": metrics.summary_cycle_times(figures)}


def _write_report(settings: Settings, engine: Engine, rid: str, figures: dict) -> Path:
    from checks.report import write_report

    return write_report(engine, rid, settings.reports_dir / f"{rid}.html", kpis=figures)


def lineage_run(rid: str, *parts: str) -> str:
    """A stable per-job run id under the parent (OpenLineage wants UUIDs)."""
    import uuid

    return str(uuid.uuid5(uuid.UUID(rid), "/".join(parts)))


def _artifact_gate(result: Any, rid: str) -> None:
    try:
        from prefect.artifacts import create_table_artifact

        rows = result.as_table()
        create_table_artifact(key="failed-checks", table=rows,
                              description=f"Failed checks, run {rid}")
    except Exception:  # noqa: BLE001 - an artifact is a convenience, never a failure
        pass


def _artifact_summary(summary: dict) -> None:
    try:
        from prefect.artifacts import create_table_artifact

        rec = summary["records"]
        create_table_artifact(key="run-summary", table=[{k: str(v) for k, v in rec.items()}],
                              description=f"order_to_cash run {summary['run_id']}")
    except Exception:  # noqa: BLE001
        pass
