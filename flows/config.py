"""orderhub.yaml: load, validate, resolve secret references.

One file a data engineer reads top to bottom. Validation happens on load and every problem is a
single line naming the file, the key path and what is wrong. Secrets are references
(``env:NAME`` or ``prefect-secret:NAME``) resolved only when a source is actually used, so a
config can be checked without credentials at hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from connectors.registry import CONNECTORS

# Which canonical streams each role pulls, and the order ingest takes them in: masters before
# orders (customer and price checks need them), payments last.
PULL_ROLES = ("customers", "prices", "price_rules", "stock", "orders", "receivables", "payments")
PUSH_ROLES = ("fulfilment_target", "sales_order_target", "invoice_target")
SOURCE_KEYS = {"system", "base_url", "auth", "roles", "options", "rate_limit", "lookback_seconds",
               "timeout", "retry"}
RETRY_KEYS = {"max_retries", "backoff_base", "backoff_max", "retry_after_max"}
TOP_KEYS = {"warehouse", "paths", "sources", "checks", "gate", "allocation", "invoicing",
            "notifications", "reconciliation", "ops", "alerts", "kpis"}


class ConfigError(ValueError):
    """A problem in orderhub.yaml; str() is one line naming the file and key."""


@dataclass
class Settings:
    path: Path
    warehouse_url: str
    sources: dict[str, dict[str, Any]]
    checks: list[dict[str, Any]]
    allocation_rules: list[dict[str, Any]]
    allocation: Any
    invoicing_policy: str
    invoicing: Any
    notifications: Any
    amount_tolerance: Decimal
    reconcile_rules: Any
    reports_dir: Path
    exports_dir: Path
    lineage_dir: Path
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def sources_with_role(self, role: str) -> list[str]:
        """Source names holding ``role``, in the order the file declares them."""
        return [name for name, src in self.sources.items() if role in src["roles"]]

    def target(self, role: str) -> str | None:
        names = self.sources_with_role(role)
        return names[0] if names else None

    def connector_config(self, name: str) -> dict[str, Any]:
        """The source's config with its secret references resolved (only now, on use)."""
        src = self.sources[name]
        auth = {k: resolve_secret(v, f"{self.path}: sources.{name}.auth.{k}")
                for k, v in (src.get("auth") or {}).items()}
        return {**src, "auth": auth}


def _fail(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {problem}")


def resolve_secret(value: Any, where: str) -> Any:
    """Turn ``env:NAME`` / ``prefect-secret:NAME`` into the secret; plain values pass through."""
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("prefect-secret:"):
        name = value[len("prefect-secret:"):]
        try:
            from prefect.blocks.system import Secret

            return Secret.load(name).get()
        except Exception as exc:  # noqa: BLE001 - any failure is a config problem for the user
            raise ConfigError(f"{where}: Prefect Secret block {name!r} could not be read "
                              f"({type(exc).__name__})") from None
    return value


def load_settings(path: str | Path = "orderhub.yaml", root: Path | None = None) -> Settings:
    """Read and validate orderhub.yaml. Relative var/ paths are taken from ``root`` (the
    file's folder by default)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{path}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})"
                          ) from None
    if not isinstance(raw, dict):
        raise _fail(path, "(top)", "expected a mapping of sections")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise _fail(path, sorted(unknown)[0], f"unknown section (known: {', '.join(sorted(TOP_KEYS))})")
    root = root or path.resolve().parent

    wh = raw.get("warehouse") or {}
    url = os.environ.get("ORDERHUB_WAREHOUSE_URL") or wh.get("url") or "sqlite:///var/orderhub.db"
    url = _anchor_sqlite(url, root)

    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise _fail(path, "sources", "declare at least one source")
    checked_sources = {name: _check_source(path, name, src) for name, src in sources.items()}

    checks = raw.get("checks") or []
    if not isinstance(checks, list):
        raise _fail(path, "checks", "expected a list of {id, severity, ...}")
    for i, check in enumerate(checks):
        if not isinstance(check, dict) or "id" not in check:
            raise _fail(path, f"checks[{i}]", "each check needs an id")

    from warehouse.allocation_rules import AllocationConfig

    allocation = raw.get("allocation") or {}
    try:
        allocation_cfg = AllocationConfig.from_config(allocation)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    rules = allocation.get("rules") or [{"id": "backorder"}]

    from warehouse.invoicing import InvoicingConfig
    from warehouse.notifications import NotificationsConfig

    try:
        invoicing_cfg = InvoicingConfig.from_config(raw.get("invoicing"))
        invoicing_cfg.check_sources(checked_sources)
        notifications_cfg = NotificationsConfig.from_config(raw.get("notifications"),
                                                            checked_sources)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None

    _check_ops_sections(path, raw)
    from checks.suite import load_gate, load_suite  # light: no Great Expectations here

    try:
        load_suite(checks)
        load_gate(raw.get("gate"))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    from warehouse.reconcile_rules import ReconcileRules

    try:
        reconcile_rules = ReconcileRules.from_config(raw.get("reconciliation") or {})
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    tolerance = reconcile_rules.amount_tolerance

    paths = raw.get("paths") or {}
    return Settings(
        path=path,
        warehouse_url=url,
        sources=checked_sources,
        checks=checks,
        allocation_rules=rules,
        allocation=allocation_cfg,
        invoicing_policy=invoicing_cfg.policy,
        invoicing=invoicing_cfg,
        notifications=notifications_cfg,
        amount_tolerance=tolerance,
        reconcile_rules=reconcile_rules,
        reports_dir=root / paths.get("reports", "var/reports"),
        exports_dir=root / paths.get("exports", "var/exports"),
        lineage_dir=root / paths.get("lineage", "var/lineage"),
        raw=raw,
    )


def _check_source(path: Path, name: str, src: Any) -> dict[str, Any]:
    key = f"sources.{name}"
    if not isinstance(src, dict):
        raise _fail(path, key, "expected a mapping")
    unknown = set(src) - SOURCE_KEYS
    if unknown:
        raise _fail(path, f"{key}.{sorted(unknown)[0]}",
                    f"unknown key (known: {', '.join(sorted(SOURCE_KEYS))})")
    system = src.get("system")
    if system not in CONNECTORS:
        raise _fail(path, f"{key}.system", f"{system!r} is not one of {', '.join(CONNECTORS)}")
    if not src.get("base_url"):
        raise _fail(path, f"{key}.base_url", "missing")
    roles = src.get("roles") or []
    bad = [r for r in roles if r not in PULL_ROLES + PUSH_ROLES]
    if bad:
        raise _fail(path, f"{key}.roles", f"unknown role {bad[0]!r} "
                    f"(known: {', '.join(PULL_ROLES + PUSH_ROLES)})")
    auth = src.get("auth") or {}
    if not isinstance(auth, dict):
        raise _fail(path, f"{key}.auth", "expected a mapping of secret references")
    for k, v in auth.items():
        if isinstance(v, str) and not v.startswith(("env:", "prefect-secret:")):
            raise _fail(path, f"{key}.auth.{k}",
                        "secrets must be references (env:NAME or prefect-secret:NAME), not values")
    rate = src.get("rate_limit")
    if rate is not None and (not isinstance(rate, int | float) or rate < 0):
        raise _fail(path, f"{key}.rate_limit",
                    "requests per second must be a number (0 turns the client-side limit off)")
    _check_connector_options(path, key, name, system, src.get("options") or {}, roles)
    retry = src.get("retry") or {}
    if not isinstance(retry, dict) or set(retry) - RETRY_KEYS:
        raise _fail(path, f"{key}.retry", f"expected a mapping of {', '.join(sorted(RETRY_KEYS))}")
    return {"system": system, "base_url": src["base_url"], "auth": auth, "roles": list(roles),
            "retry": dict(retry),
            "options": dict(src.get("options") or {}), "rate_limit": rate,
            "lookback_seconds": int(src.get("lookback_seconds", 600)),
            "timeout": float(src.get("timeout", 30))}


def _check_ops_sections(path: Path, raw: dict) -> None:
    """ops (roles) and alerts are read by their own modules; check them at load time too."""
    from flows.alerts import AlertsConfig
    from warehouse.quarantine_ops import OpsConfig

    try:
        OpsConfig.from_config(raw)
        AlertsConfig.from_config(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _check_connector_options(path: Path, key: str, name: str, system: str, options: dict,
                             roles: list[str]) -> None:
    """A connector that declares more in ``options`` (the declared REST source) checks it here,
    with no secrets and no HTTP, so a typo shows at load time with the file's name."""
    from connectors.registry import connector_class

    check = getattr(connector_class(system), "check_options", None)
    if check is None:
        return
    try:
        check(name, options, roles)
    except ValueError as exc:
        raise ConfigError(f"{path}: {key}: {exc}") from None


def _anchor_sqlite(url: str, root: Path) -> str:
    """Make a relative SQLite path relative to the config's folder, not the caller's cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(root / url[len(prefix):])
    return url
