"""``orderhub demo``: seed the sandbox fakes, point the config at them, run order_to_cash once.

The sandbox's credentials reach the flow as environment references, like production secrets,
so they never appear in flow parameters, the config file, logs or lineage.

``--channels all`` (or a list such as ``shopify,sap,stripe``) runs every system at once from
examples/orderhub.all.yaml (or ``--config``), keeping only the sources of the chosen channels
plus the masters (jiandaoyun: customers; kingdee: prices, stock, receipts and the ERP targets),
and seeds orders in exactly those channels. Without ``--channels`` nothing changes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from flows.config import Settings, load_settings
from flows.console import progress

ALL_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "orderhub.all.yaml"
# Always started, whatever the channels: they master the customers (jiandaoyun) and the
# prices, stock and receipts, and take the sales orders and invoices (kingdee).
MASTER_SYSTEMS = ("jiandaoyun", "kingdee")


def run_demo(config: str | None = "orderhub.yaml", orders: int = 5000, seed: int = 7,
             fresh: bool = False, channels: str | Iterable[str] | None = None) -> dict[str, Any]:
    """Seed the sandbox, run order_to_cash once, return its summary (plus ``seeded``).

    ``config`` None means orderhub.yaml, or with ``channels`` the bundled
    examples/orderhub.all.yaml."""
    from sandbox import start_sandbox
    from sandbox.generator import generate

    if channels is None:  # the three-channel demo, exactly as it always was
        base = load_settings(config or "orderhub.yaml")
        chosen = None
    else:
        chosen = parse_channels(channels)
        base = channel_settings(config, chosen)
    if fresh:
        _remove_sqlite(base.warehouse_url)
    dataset = generate(seed=seed, orders=orders) if chosen is None else \
        generate(seed=seed, orders=orders, channels=chosen)
    systems = sorted({src["system"] for src in base.sources.values()})
    progress("sandbox: seeding %s orders into %s", f"{orders:,}", ", ".join(systems))
    with start_sandbox(dataset, systems=tuple(systems), fast=True) as sandbox:
        out = None if chosen is None else _home(config) / "var" / "demo" / \
            f"orderhub.{_label(chosen)}.yaml"
        demo_config = write_sandbox_config(base, sandbox.sources(), out=out)
        from flows.order_to_cash import order_to_cash

        summary = order_to_cash(config_path=str(demo_config))
    summary["seeded"] = dataset.summary()
    return summary


def parse_channels(channels: str | Iterable[str]) -> tuple[str, ...]:
    """``"all"`` or ``"shopify,sap"`` (or a list) -> the channels in canonical order.

    ValueError (one line, naming the unknown ones) for a channel no system provides."""
    from sandbox.generator import ALL_CHANNELS, ORDER_CHANNELS

    names = channels.split(",") if isinstance(channels, str) else list(channels)
    names = [n.strip().lower() for n in names if n.strip()]
    if names == ["all"]:
        return ALL_CHANNELS
    unknown = sorted(set(names) - set(ALL_CHANNELS))
    if unknown or not names:
        raise ValueError(f"--channels: unknown channel(s) {', '.join(unknown) or '(none given)'}; "
                         f"use all or a comma list of {', '.join(ALL_CHANNELS)}")
    if not set(names) & set(ORDER_CHANNELS):
        raise ValueError(f"--channels: name at least one order channel "
                         f"({', '.join(ORDER_CHANNELS)}), not only payments")
    return tuple(ch for ch in ALL_CHANNELS if ch in names)


def channel_settings(config: str | None, channels: tuple[str, ...]) -> Settings:
    """The settings for a ``--channels`` demo: the chosen channels' sources plus the masters.

    A master that is not itself a chosen channel keeps its data roles but loses ``orders`` (the
    generator seeds none there). With the bundled example the warehouse and var/ sit in the
    current folder, one warehouse per channel set: datasets of different channel sets reuse
    order ids, so sharing a warehouse would mix them.
    """
    from sandbox.generator import ALL_CHANNELS

    path = Path(config) if config else ALL_CONFIG
    bundled = config is None
    if bundled and not path.is_file():
        raise ValueError(f"{path}: not found; pass --config with a file declaring every channel")
    base = load_settings(path, root=_home(config))
    declared = {src["system"] for src in base.sources.values()}
    missing = [ch for ch in channels if ch not in declared]
    if missing:
        raise ValueError(f"{path}: no source for channel(s) {', '.join(missing)}")
    keep = set(channels) | set(MASTER_SYSTEMS)
    sources: dict[str, dict[str, Any]] = {}
    for name, src in base.sources.items():
        if src["system"] not in keep:
            continue
        roles = src["roles"] if src["system"] in channels else \
            [r for r in src["roles"] if r != "orders"]
        sources[name] = {**src, "roles": roles}
    raw = copy.deepcopy(base.raw)
    raw["sources"] = {name: {**raw["sources"][name], "roles": sources[name]["roles"]}
                      for name in sources}
    url = base.warehouse_url
    if bundled and set(channels) != set(ALL_CHANNELS) and "ORDERHUB_WAREHOUSE_URL" not in os.environ:
        url = url.replace("orderhub-all.db", f"orderhub-{_label(channels)}.db")
    return dataclasses.replace(base, sources=sources, raw=raw, warehouse_url=url)


def _home(config: str | None) -> Path:
    """Where var/ goes: the current folder for the bundled example, else the config's folder."""
    return Path.cwd() if config is None else Path(config).resolve().parent


def _label(channels: Iterable[str]) -> str:
    from sandbox.generator import ALL_CHANNELS

    channels = tuple(channels)
    return "all" if set(channels) == set(ALL_CHANNELS) else "-".join(channels)


def write_sandbox_config(base: Settings, sandbox_sources: dict[str, dict],
                         out: Path | None = None) -> Path:
    """A copy of the config whose sources point at the sandbox; secrets go via the environment.

    Written to ``out``, by default ``var/demo/orderhub.yaml`` next to the base config."""
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
    out = out or root / "var" / "demo" / "orderhub.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# written by `orderhub demo`: orderhub.yaml pointed at the sandbox\n"
                   + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def _remove_sqlite(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
