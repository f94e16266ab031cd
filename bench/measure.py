"""Measuring harness of ``make bench``: each variant in its own subprocess.

Peak RSS is a per-process high-water mark, so variants measured in one process would hide
each other; each runs as ``python -m <module> ... --json-out FILE`` instead.

Parent side: ``run_variant(module_args, env=None, timeout=None) -> dict`` runs the child, reads
the JSON it wrote and adds ``parent_wall_s`` (the child's whole life: interpreter start and
imports included). A child that fails raises ``VariantFailed`` with one line: the command, the
exit status and the child's last stderr lines.

Child side: ``child_main(json_out, fn, **fields)`` times ``fn()`` (which returns a dict with at
least ``rows``), writes ``child_report`` and turns an exception into one stderr line and exit
status 1. ``child_report(path, **fields)`` writes the fields plus ``peak_rss_mb``,
``peak_rss_self_mb``, ``peak_rss_children_mb`` and ``rows_per_s``.

``peak_rss_mb`` is the max of the process's own high-water RSS (``VmHWM`` on Linux, else
``getrusage(RUSAGE_SELF).ru_maxrss``) and
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest terminated, waited-for descendant), not
their sum: it is the largest single process of the variant. A database server (PostgreSQL) is
not our descendant and is not counted.

Every child runs with telemetry off (``TELEMETRY_OFF``): the bench has no network, and a
library that phones home would time out inside the measurement.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

TELEMETRY_OFF: dict[str, str] = {
    "RUNTIME__DLTHUB_TELEMETRY": "false",  # dlt
    "DO_NOT_TRACK": "1",  # the cross-tool convention
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # Prefect
    "GX_ANALYTICS_ENABLED": "false",  # Great Expectations
}
STDERR_TAIL_LINES = 5
STDERR_LINE_CHARS = 400


class VariantFailed(RuntimeError):
    """A variant's subprocess failed, timed out or wrote no report."""


# ------------------------------------------------------------------------------ child side


def _maxrss_mb(who: int) -> float:
    kib = resource.getrusage(who).ru_maxrss
    if sys.platform == "darwin":  # bytes there, KiB on Linux
        kib /= 1024
    return round(kib / 1024, 1)


def _own_peak_mb() -> float:
    """This process's high-water RSS. On Linux from /proc (VmHWM), because ``ru_maxrss``
    survives fork + exec: a child started by a parent holding 1 GB would report 1 GB even if it
    never used it (seen here: the runner holds the Kingdee fake's documents)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return _maxrss_mb(resource.RUSAGE_SELF)


def peak_rss() -> dict[str, float]:
    """``peak_rss_mb`` = max(self, largest waited-for child), with both parts."""
    own = _own_peak_mb()
    children = _maxrss_mb(resource.RUSAGE_CHILDREN)
    return {"peak_rss_mb": max(own, children), "peak_rss_self_mb": own, "peak_rss_children_mb": children}


def child_report(path: str | os.PathLike[str], **fields: Any) -> dict[str, Any]:
    """Write ``fields`` + peak RSS (+ ``rows_per_s`` from ``rows`` and ``wall_s``) as JSON."""
    report = dict(fields)
    rows, wall = report.get("rows"), report.get("wall_s")
    if "rows_per_s" not in report and isinstance(rows, int) and wall:
        report["rows_per_s"] = round(rows / wall)
    report.update(peak_rss())
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(report, default=str, indent=1))
    tmp.replace(path)  # the parent never reads half a report
    return report


def child_main(json_out: str, fn: Callable[[], Mapping[str, Any]], **fields: Any) -> int:
    """Run ``fn`` timed and report; an exception becomes one line on stderr and exit status 1."""
    try:
        t0 = time.perf_counter()
        result = dict(fn())
        wall = time.perf_counter() - t0
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the parent shows this line, not a traceback
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr, flush=True)
        return 1
    child_report(json_out, **{**fields, **result, "wall_s": round(wall, 3)})
    return 0


def exit_now(code: int) -> None:
    """End the process once its report is written, without tearing its heap down object by
    object (the runner holds the Kingdee fake's documents, a (c) child a run's worth of
    objects and Prefect's exit hooks): ~2 s at SF 0.1 that measure nothing. Output is
    flushed first; every server and child process has been stopped by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def error_line(exc: BaseException) -> str:
    """One line: each exception of the chain (outermost first) as ``Type: first line``.

    Libraries wrap the cause (dlt: "Pipeline execution failed at step=load" around the
    database's error); the first line of each link says what failed and why.
    """
    parts: list[str] = []
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        first = next((ln.strip() for ln in str(link).splitlines() if ln.strip()), "(no message)")
        parts.append(f"{type(link).__name__}: {first[:STDERR_LINE_CHARS]}")
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return " <- ".join(parts)


# ----------------------------------------------------------------------------- parent side


def bench_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The children's environment: ours, ``env`` on top, telemetry off whatever ``env`` says."""
    return {**os.environ, **(env or {}), **TELEMETRY_OFF}


def _tail(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    cut = [ln if len(ln) <= 3 * STDERR_LINE_CHARS else ln[: 3 * STDERR_LINE_CHARS] + "..." for ln in lines]
    return " | ".join(cut[-STDERR_TAIL_LINES:]) or "(no stderr)"


def run_variant(
    module_args: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``python -m <module_args...> --json-out FILE`` and return its report.

    ``module_args[0]`` is the module, the rest its arguments. The report is the child's JSON
    plus ``parent_wall_s``. Raises ``VariantFailed`` (one line) on a non-zero exit, a timeout
    or a missing report. ``echo`` receives each line the child writes as it comes (progress of
    a long variant); the lines are also kept for the report and for errors.
    """
    if not module_args:
        raise ValueError("module_args: the module to run first, then its arguments")
    label = " ".join(module_args)
    with tempfile.TemporaryDirectory(prefix="bench-variant-") as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", *module_args, "--json-out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=bench_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if echo:
                    echo(line.rstrip("\n"))
            returncode = proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
        stderr = "".join(lines)
        parent_wall = time.perf_counter() - t0
        if timeout and parent_wall >= timeout and returncode != 0:
            raise VariantFailed(f"{label}: timed out after {timeout} s: {_tail(stderr)}")
        if returncode != 0:
            raise VariantFailed(f"{label}: exit status {returncode}: {_tail(stderr)}")
        if not out.is_file():
            raise VariantFailed(f"{label}: exited 0 but wrote no report: {_tail(stderr)}")
        report = json.loads(out.read_text())
    # what the child said (stage lines, a library's warnings), without the periodic
    # "N records so far" ticks: at SF 1 those are thousands of lines that say nothing more
    kept = "".join(line for line in lines if not line.rstrip().endswith(" records so far"))
    if kept.strip():
        report["stderr"] = kept
    report["parent_wall_s"] = round(parent_wall, 3)
    return report
