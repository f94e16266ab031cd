"""``orderhub serve``: serve the deployments declared in prefect.yaml, on their schedules.

Schedules need a running Prefect server (``prefect server start``) and PREFECT_API_URL pointing
at it: Prefect's temporary in-process server never runs schedules.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

NO_SERVER = """orderhub serve: schedules need a running Prefect server, and none is configured.
  Prefect's temporary in-process server runs single flows (as `orderhub run` and `orderhub demo`
  do) but never runs schedules. Start one and point orderhub at it:
    .venv/bin/prefect server start            # in another terminal
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    .venv/bin/orderhub serve
"""


def load_deployments(prefect_yaml: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8")) or {}
    deployments = doc.get("deployments") or []
    if not deployments:
        raise ValueError(f"{prefect_yaml}: deployments: none declared")
    return deployments


def _load_flow(entrypoint: str):
    """``flows/order_to_cash.py:ingest`` -> the flow object (our flows are an installed package)."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def build(prefect_yaml: Path) -> list[Any]:
    """RunnerDeployments for every deployment in prefect.yaml, with its schedules."""
    built = []
    for dep in load_deployments(prefect_yaml):
        flow = _load_flow(dep["entrypoint"])
        kwargs: dict[str, Any] = {"name": dep["name"], "parameters": dep.get("parameters") or {}}
        schedules = dep.get("schedules") or []
        intervals = [s["interval"] for s in schedules if "interval" in s]
        crons = [s["cron"] for s in schedules if "cron" in s]
        if intervals:
            kwargs["interval"] = intervals[0]
        elif crons:
            kwargs["cron"] = crons[0]
        built.append(flow.to_deployment(**kwargs))
    return built


def serve_deployments(prefect_yaml: Path) -> int:
    if not prefect_yaml.is_file():
        print(f"orderhub serve: {prefect_yaml}: file not found", file=sys.stderr)
        return 2
    deployments = build(prefect_yaml)
    if not os.environ.get("PREFECT_API_URL"):
        print(NO_SERVER, file=sys.stderr)
        return 2
    from prefect import serve

    print(f"serving {len(deployments)} deployments from {prefect_yaml}: "
          + ", ".join(d.name for d in deployments))
    serve(*deployments)
    return 0
