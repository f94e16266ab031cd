"""``orderhub allocate``: allocate by the declared rules, or show what new rules would change.

    orderhub allocate [--config orderhub.yaml]                      # a real run (the allocate flow)
    orderhub allocate --dry-run --rules new.yaml [--config ...]     # replay, print the difference

The dry run replays the open orders (validated, backordered, and allocated but not yet pushed)
from on-hand stock under the config's ``allocation`` section and under ``new.yaml``'s, prints
every line, status and owner that would differ plus a summary table, and writes nothing: it
reads in one read-only transaction and does not even migrate the warehouse.

Module-level imports stay light (argparse only): ``orderhub --help`` must answer at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SECTION_HINT = "an `allocation:` section (or just its rules / priority / owners)"


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "allocate",
        help="allocate stock and owners by the declared rules (--dry-run --rules new.yaml: "
             "show what new rules would change, writing nothing)",
        description="Allocate validated and backordered orders by orderhub.yaml's allocation "
                    "rules. With --dry-run --rules NEW.yaml, replay the open orders under the "
                    "current and the new rules and print the difference; nothing is written.",
    )
    p.add_argument("--config", default="orderhub.yaml")
    p.add_argument("--dry-run", action="store_true",
                   help="replay the open orders and print the difference; write nothing")
    p.add_argument("--rules", metavar="NEW.yaml",
                   help=f"the rules to compare with (with --dry-run): a file with {SECTION_HINT}")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_allocate)


def cmd_allocate(args: argparse.Namespace) -> int:
    if not args.dry_run:
        if args.rules:
            raise ValueError(f"--rules needs --dry-run (a real run uses the rules in {args.config})")
        return _real_run(args)
    if not args.rules:
        raise ValueError("--dry-run needs --rules NEW.yaml: the rules to compare with")
    return _dry_run(args)


def _real_run(args: argparse.Namespace) -> int:
    from flows import order_to_cash as o2c  # Prefect loads only here

    result = o2c.allocate(config_path=args.config)
    if args.json:
        _print_json(result)
    else:
        rules = ", ".join(f"{k} {n:,}" for k, n in (result.get("lines_by_rule") or {}).items())
        print(f"allocate  {result['allocated']:,} allocated, {result['backordered']:,} backordered"
              + (f" (lines: {rules})" if rules else "")
              + f"; owners assigned {result.get('owners_assigned', 0):,}")
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from flows.config import load_settings
    from warehouse.allocate import dry_run

    settings = load_settings(args.config)
    current = _allocation(settings.path, settings.raw.get("allocation"))
    new = _allocation(Path(args.rules), _read_section(Path(args.rules)))
    engine = _open_warehouse(settings.warehouse_url)
    try:
        result = dry_run(engine, current, new)
    finally:
        engine.dispose()
    if args.json:
        _print_json({
            "orders": result.by_status,
            "changes": [c.__dict__ for c in result.changes()],
            "summary": [{"what": w, "current": a, "new": b} for w, a, b in result.summary()],
            "written": 0,
        })
    else:
        print(render(result, str(args.config), str(args.rules)))
    return 0


def _allocation(path: Path, section: Any) -> Any:
    """AllocationConfig from a file's section; errors name the file and allocation.<path>."""
    from flows.config import ConfigError
    from warehouse.allocation_rules import AllocationConfig, RuleConfigError

    try:
        return AllocationConfig.from_config(section)
    except RuleConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_section(path: Path) -> Any:
    """The ``allocation`` section of a rules file: a whole orderhub.yaml or just the section."""
    import yaml

    from flows.config import ConfigError
    from warehouse.allocation_rules import SECTION_KEYS

    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{path}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})"
                          ) from None
    if isinstance(raw, dict) and "allocation" in raw:
        return raw["allocation"]
    if isinstance(raw, dict) and raw and set(raw) <= set(SECTION_KEYS):
        return raw
    raise ConfigError(f"{path}: expected {SECTION_HINT}")


def _open_warehouse(url: str) -> Any:
    """An engine on an existing, migrated warehouse: a dry run creates and migrates nothing."""
    from sqlalchemy.engine import make_url

    from warehouse.engine import current_revision, head_revision, make_engine

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and ":memory:" not in database and not Path(database).is_file():
            raise ValueError(f"no warehouse at {database} (a dry run creates nothing: run a flow "
                             "first)")
    engine = make_engine(url)
    at, head = current_revision(engine), head_revision()
    if at != head:
        engine.dispose()
        raise ValueError(f"the warehouse schema is at {at or 'nothing'}, this orderhub needs {head}: "
                         "run a flow first (a dry run does not migrate)")
    return engine


# --- output -------------------------------------------------------------------------------------


def _table(rows: list[list[str]], right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


def render(result: Any, current_name: str, new_name: str) -> str:
    """The dry run for people: a header, the differences, a summary table."""
    by_status = ", ".join(f"{s} {n}" for s, n in result.by_status.items())
    total = sum(result.by_status.values())
    lines = [f"allocate dry run: {total} open orders" + (f" ({by_status})" if by_status else ""),
             f"replayed from on-hand stock under {current_name} (current) and {new_name} (new)",
             ""]
    changes = result.changes()
    if changes:
        rows = [["order", "change", "current", "new"]]
        rows += [[c.order_no or str(c.order_id), c.what, c.current, c.new] for c in changes]
        lines += _table(rows)
    else:
        lines.append("no difference: the new rules decide every open order as the current ones do")
    lines.append("")
    rows = [["summary", "current", "new", "change"]]
    for what, a, b in result.summary():
        rows.append([what, str(a), str(b), f"{b - a:+d}" if b != a else "0"])
    lines += _table(rows, right=frozenset({1, 2, 3}))
    orders = len({c.order_id for c in changes})
    lines += ["", f"{len(changes)} changes in {orders} orders; nothing written"]
    return "\n".join(lines)


def _print_json(obj: Any) -> None:
    import json

    print(json.dumps(obj, indent=2, default=str))
