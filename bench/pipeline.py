"""(c) of the benchmark: orderhub's whole order_to_cash over a TPC-H drop, then a rerun.

Runs in its own process (``python -m bench.pipeline``) so that its peak RSS is its own:

    python -m bench.pipeline --drop DIR --url URL --work DIR --invoice-target JSON --json-out F

The first run takes everything: ingest (customers, prices, stock, orders), the Great
Expectations gate, allocation, fulfilment confirmations to the drop's outbound folder, invoices
to the Kingdee fake (BatchSave), payments and reconciliation, KPIs, report and exports. The
second run finds nothing new; it must write no business row (every row carries the run id
that wrote it, so "wrote nothing" is checked per table by run id) and finish quickly.
The Prefect task runs of each are counted through Prefect's own API.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from bench.measure import child_report, exit_now

# Bookkeeping a run writes by design: its own run record, its KPIs and alerts about itself.
BOOKKEEPING = {"runs", "kpi_daily", "kpi_runs", "alerts", "sync_state"}

CHECKS = [
    # no ship_region: a TPC-H order ships to its customer's region, so only customer_known can
    # find an order without one
    {"id": "required_fields", "severity": "error",
     "fields": ["customer", "currency", "ordered_at", "lines"]},
    {"id": "customer_known", "severity": "error"},
    {"id": "sku_known", "severity": "error"},
    {"id": "qty_positive", "severity": "error"},
    {"id": "currency_allowed", "severity": "error", "allowed": ["USD"]},
    {"id": "price_matches_list", "severity": "error", "tolerance": "0.01"},
    {"id": "not_duplicate", "severity": "error"},
]

TPCH_TABLES = ("orders", "lineitem", "customer", "part", "partsupp", "supplier", "nation",
               "region")
REGIONS = ("africa", "america", "asia", "europe", "middle_east")


def config(drop: Path, url: str, work: Path, invoice_target: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's orderhub.yaml: one TPC-H drop, the Kingdee fake for invoices."""
    return {
        "warehouse": {"url": url},
        "paths": {"reports": str(work / "reports"), "exports": str(work / "exports"),
                  "lineage": str(work / "lineage")},
        "sources": {
            "tpch": {
                "system": "tpch",
                "base_url": drop.resolve().as_uri(),
                "roles": ["customers", "prices", "stock", "orders", "payments",
                          "fulfilment_target"],
                "options": {"currency": "USD", "outbound": str(work / "outbound")},
            },
            "kingdee": {"system": "kingdee", "roles": ["invoice_target"], **invoice_target},
        },
        "checks": CHECKS,
        "allocation": {
            "rules": [
                {"id": "home_region", "warehouse_in": "customer_region", "require_stock": True},
                {"id": "any_stock", "require_stock": True},
                {"id": "split", "split": True, "max_warehouses": 2},
                {"id": "partial", "partial": True},
                {"id": "backorder"},
            ],
            "priority": [{"by": "ordered_at"}],
            "owners": {
                "territories": {r: f"team_{r}" for r in REGIONS},
                "teams": {f"team_{r}": [f"{r}_1", f"{r}_2"] for r in REGIONS},
                "default_team": "team_america",
            },
        },
        "invoicing": {"policy": "on_order"},
        "reconciliation": {"amount_tolerance": "0.01"},
    }


def tpch_rows(drop: Path) -> int:
    """The rows of the eight TPC-H tables: what (a) and (b) load, so rows/s compare."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(drop / f"{t}.parquet").metadata.num_rows for t in TPCH_TABLES)


def task_runs(flow_run_id: Any) -> int:
    """Task runs of one flow run, as Prefect's API records them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)
    return len(runs)


def rows_written(url: str, run_id: str) -> dict[str, int]:
    """Per business table, the rows that carry ``run_id``: what that run wrote."""
    from sqlalchemy import func, select

    from warehouse import schema
    from warehouse.engine import make_engine

    engine = make_engine(url)
    out: dict[str, int] = {}
    with engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            if table.name in BOOKKEEPING or "run_id" not in table.c:
                continue
            n = conn.execute(select(func.count()).select_from(table)
                             .where(table.c.run_id == run_id)).scalar_one()
            if n:
                out[table.name] = int(n)
    engine.dispose()
    return out


def run_once(config_path: Path) -> tuple[dict[str, Any], float, int]:
    """One order_to_cash: its summary, wall seconds and Prefect task-run count."""
    from flows.order_to_cash import order_to_cash

    started = time.perf_counter()
    state = order_to_cash(config_path=str(config_path), return_state=True)
    wall = time.perf_counter() - started
    summary = state.result()
    return summary, wall, task_runs(state.state_details.flow_run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline")
    parser.add_argument("--drop", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--invoice-target", required=True,
                        help="JSON: base_url, auth, options of the Kingdee (fake) target")
    parser.add_argument("--json-out", type=Path, required=True)
    parser.add_argument("--profile", type=Path, help="write a pyinstrument text profile here")
    args = parser.parse_args(argv)

    from flows.cli import _quiet_environment
    from flows.console import enable

    _quiet_environment()
    enable()
    args.work.mkdir(parents=True, exist_ok=True)
    cfg_path = args.work / "orderhub.yaml"
    cfg_path.write_text(yaml.safe_dump(config(args.drop, args.url, args.work,
                                              json.loads(args.invoice_target))))
    t0 = time.perf_counter()
    import flows.order_to_cash  # noqa: F401 - the import is measured apart from the run

    import_s = time.perf_counter() - t0
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.01)
        profiler.start()
    from flows.console import progress

    progress("order_to_cash, first run:")
    first, wall, tasks = run_once(cfg_path)
    if profiler:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=False, color=False,
                                                     show_all=False))
    progress("order_to_cash, second run (no new data):")
    second, rerun_wall, rerun_tasks = run_once(cfg_path)
    written = rows_written(args.url, second["run_id"])
    rows = tpch_rows(args.drop)
    child_report(args.json_out, wall_s=round(wall, 3), rows=rows,
                 rows_per_s=round(rows / wall, 1), import_s=round(import_s, 3),
                 task_runs=tasks, summary=_lean(first),
                 rerun={"wall_s": round(rerun_wall, 3), "task_runs": rerun_tasks,
                        "stage_seconds": second["stages"].get("seconds", {}),
                        "rows_written": written, "records": second["records"]})
    return 0


def _lean(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures the benchmark reports and the smoke test checks, JSON-safe."""
    stages = summary.get("stages", {})
    validate = stages.get("validate", {})
    return json.loads(json.dumps({
        "run_id": summary["run_id"],
        "records": summary["records"],
        "entered": summary["entered"],
        "orders_by_status": summary["orders_by_status"],
        "outbox": summary["outbox"],
        "stage_seconds": stages.get("seconds", {}),
        "gate": {"duration_s": validate.get("duration_s"), "ge_s": validate.get("ge_s"),
                 "failed_by_check": {c["check_id"]: c["failed"]
                                     for c in validate.get("checks", [])}},
        "allocate": stages.get("allocate", {}),
        "invoice": stages.get("invoice", {}),
        "reconcile": {k: v for k, v in stages.get("reconcile", {}).items()
                      if k not in ("pulled", "exports")},
        "seconds": summary.get("seconds"),
    }, default=str))


if __name__ == "__main__":
    exit_now(main())
