"""The ``orderhub`` command.

Heavy libraries (Prefect, Great Expectations, SQLAlchemy) are imported inside the commands that
need them, so ``orderhub --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

# Each exposes add_commands(subparsers); missing ones are skipped.
COMMAND_MODULES = ("flows.cmd_quarantine", "flows.cmd_rollback", "flows.cmd_allocate",
                   "flows.cmd_kpis")
STAGES = ("order_to_cash", "ingest", "validate", "allocate", "push", "invoice", "reconcile")


def _quiet_environment() -> None:
    """No telemetry, no third-party chatter: our own progress lines are the output."""
    defaults = {
        "PREFECT_LOGGING_LEVEL": "CRITICAL",
        "PREFECT_LOGGING_ROOT_LEVEL": "WARNING",  # Prefect's root handler would show GE's INFO
        "PREFECT_LOGGING_SERVER_LEVEL": "CRITICAL",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
        "PREFECT_LOGGING_TO_API_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "TQDM_DISABLE": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _quiet_environment()
    from flows.console import enable

    enable(verbose=getattr(args, "verbose", False))
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("orderhub: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for people, never a traceback
        if os.environ.get("ORDERHUB_DEBUG"):
            raise
        print(f"orderhub: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderhub",
        description="Order-to-cash hub: pull every channel, gate, allocate, push back exactly "
                    "once, invoice and reconcile.",
    )
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run order_to_cash once against the local sandbox fakes")
    demo.add_argument("--orders", type=int, default=5000, help="orders to seed (default 5000)")
    demo.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    demo.add_argument("--config", default=None,
                      help="base config (default orderhub.yaml; with --channels "
                           "examples/orderhub.all.yaml)")
    demo.add_argument("--channels", default=None, metavar="all|CH,CH,...",
                      help="seed and run these channels (all, or a comma list of shopify, "
                           "jiandaoyun, kingdee, sap, u8, fxiaoke, woocommerce, files, rest, "
                           "stripe); default: the three-channel demo")
    demo.add_argument("--fresh", action="store_true", help="start from an empty warehouse")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run a flow once against the configured sources")
    run.add_argument("flow", nargs="?", default="order_to_cash", choices=STAGES)
    run.add_argument("--config", default="orderhub.yaml")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="serve the deployments of prefect.yaml on their schedules")
    serve.add_argument("--prefect-yaml", default="prefect.yaml")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate orderhub.yaml and say what it declares")
    check.add_argument("--config", default="orderhub.yaml")
    check.set_defaults(func=cmd_check_config)

    # Command groups in modules of their own (each keeps its imports light at module level).
    for module in COMMAND_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).add_commands(sub)
    return p


# --- commands ------------------------------------------------------------------------------

def cmd_check_config(args: argparse.Namespace) -> int:
    from flows.config import load_settings

    s = load_settings(args.config)
    print(f"{args.config}: ok")
    print(f"  warehouse  {s.warehouse_url}")
    for name, src in s.sources.items():
        print(f"  source     {name} ({src['system']}): {', '.join(src['roles'])}")
    print(f"  checks     {', '.join(c['id'] for c in s.checks)}")
    print(f"  allocation {' > '.join(r['id'] for r in s.allocation_rules)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flows import order_to_cash as o2c

    result = getattr(o2c, args.flow)(config_path=args.config)
    _print_result(args, result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    if args.channels is None:  # the three-channel demo, unchanged
        summary = run_demo(config=args.config or "orderhub.yaml", orders=args.orders,
                           seed=args.seed, fresh=args.fresh)
    else:
        summary = run_demo(config=args.config, orders=args.orders, seed=args.seed,
                           fresh=args.fresh, channels=args.channels)
    if args.json:
        _print_json(summary)
    else:
        from flows.summary import render

        print(render(summary))
    return 0 if summary["records"]["balanced"] else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_deployments

    return serve_deployments(Path(args.prefect_yaml))


def _print_result(args: argparse.Namespace, result: Any) -> None:
    if args.json or args.flow != "order_to_cash":
        _print_json(result)
    else:
        from flows.summary import render

        print(render(result))


def _print_json(obj: Any) -> None:
    import json

    print(json.dumps(obj, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
