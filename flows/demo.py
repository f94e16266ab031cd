"""``orderhub demo``: seed the sandbox fakes, point the config at them, run order_to_cash once.

The sandbox's credentials reach the flow as environment references, like production secrets,
so they never appear in flow parameters, the config file, logs or lineage.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from flows.config import Settings, load_settings
from flows.console import progress


def run_demo(config: str = "orderhub.yaml", orders: int = 5000, seed: int = 7,
             fresh: bool = False) -> dict[str, Any]:
    from sandbox import start_sandbox
    from sandbox.generator import generate

    base = load_settings(config)
    if fresh:
        _remove_sqlite(base.warehouse_url)
    dataset = generate(seed=seed, orders=orders)
    systems = sorted({src["system"] for src in base.sources.values()})
    progress("sandbox: seeding %s orders into %s", f"{orders:,}", ", ".join(systems))
    with start_sandbox(dataset, systems=tuple(systems), fast=True) as sandbox:
        demo_config = write_sandbox_config(base, sandbox.sources())
        from flows.order_to_cash import order_to_cash

        summary = order_to_cash(config_path=str(demo_config))
    summary["seeded"] = dataset.summary()
    return summary


def write_sandbox_config(base: Settings, sandbox_sources: dict[str, dict]) -> Path:
    """A copy of the config whose sources point at the sandbox; secrets go via the environment."""
    raw = copy.deepcopy(base.raw)
    root = base.path.resolve().parent
    raw["warehouse"] = {"url": base.warehouse_url}
    raw["paths"] = {"reports": str(base.reports_dir), "exports": str(base.exports_dir),
                    "lineage": str(base.lineage_dir)}
    for name, src in raw["sources"].items():
        fake = sandbox_sources[src["system"]]
        src["base_url"] = fake["base_url"]
        src["options"] = {**(src.get("options") or {}), **fake.get("options", {})}
        # No client-side pacing: the fakes enforce their own limits and answer 429 with
        # Retry-After, which the client honours.
        src["rate_limit"] = 0
        auth = {}
        for key, value in fake["auth"].items():
            env = f"ORDERHUB_SANDBOX_{name}_{key}".upper()
            os.environ[env] = str(value)
            auth[key] = f"env:{env}"
        src["auth"] = auth
    out = root / "var" / "demo" / "orderhub.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# written by `orderhub demo`: orderhub.yaml pointed at the sandbox\n"
                   + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def _remove_sqlite(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
