"""The benchmark keeps working: ``bench.run`` at TPC-H SF 0.01 on SQLite and PostgreSQL.

Not a timing test (the numbers live in bench/results): it checks that (a), (b) and (c) ran on
the same rows, that orderhub found exactly the defects the generator seeded and settled exactly
the payments it seeded, and that the second run wrote nothing with the same task runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import run as bench_run

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, pg_server_url: str) -> dict:
    tmp = tmp_path_factory.mktemp("bench")
    os.environ["ORDERHUB_BENCH_PG_URL"] = pg_server_url
    try:
        assert bench_run.main(["--sf", "0.01", "--work", str(tmp / "work"),
                               "--out", str(tmp / "results")]) == 0
    finally:
        os.environ.pop("ORDERHUB_BENCH_PG_URL", None)
    (path,) = (tmp / "results").glob("*-sf0.01.json")
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_every_variant_loads_the_same_rows(report: dict, db: str) -> None:
    res = report["databases"][db]
    assert res["raw"]["rows"] == res["dlt"]["rows"] == res["orderhub"]["rows"] > 0
    for variant in ("raw", "dlt", "orderhub"):
        assert res[variant]["wall_s"] > 0 and res[variant]["peak_rss_mb"] > 0
    assert set(res["ratios"]) == {"c/a", "c/b"}


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_orderhub_finds_the_seeded_truth(report: dict, db: str) -> None:
    truth = report["truth"]
    c = report["databases"][db]["orderhub"]["summary"]
    failed = {k: v for k, v in c["gate"]["failed_by_check"].items() if v}
    assert failed == truth["defects_by_check"]
    rec = c["records"]
    assert rec["balanced"] and rec["in"] == truth["orders"]
    assert rec["loaded"] == truth["clean"]
    assert rec["quarantined"] == sum(truth["defects_by_check"].values())
    assert truth["ample_stock"]
    assert c["invoice"]["created"] == c["invoice"]["sent"] == truth["clean"]
    statuses = {k: c["reconcile"].get(k, 0) for k in truth["invoice_status"]}
    assert statuses == truth["invoice_status"]
    assert c["reconcile"]["unmatched_payments"] == truth["unmatched_payments"]


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_a_rerun_with_nothing_new_writes_nothing(report: dict, db: str) -> None:
    c = report["databases"][db]["orderhub"]
    assert c["rerun"]["rows_written"] == {}
    assert c["rerun"]["records"]["loaded"] == 0
    # the task runs are per stage and stream, never per order
    assert c["rerun"]["task_runs"] == c["task_runs"]


def test_the_bench_server_runs_with_its_settings_and_goes_away(tmp_path: Path) -> None:
    """The embedded server the bench starts itself (no ORDERHUB_BENCH_PG_URL) has the settings
    it asked for; leaving it stops the server and deletes its data."""
    settings = bench_run.server_settings(8192)
    assert settings["shared_buffers"] == "2048MB"  # a quarter of memory
    assert bench_run.server_settings(64 * 1024)["shared_buffers"] == "4096MB"  # capped
    # the WAL between checkpoints: a quarter of the free disk, 1-16 GB
    assert bench_run.server_settings(8192, 200 * 1024)["max_wal_size"] == "16GB"
    assert bench_run.server_settings(8192, 23 * 1024)["max_wal_size"] == "5888MB"
    assert bench_run.server_settings(8192, 2 * 1024)["max_wal_size"] == "1GB"
    os.environ.pop("ORDERHUB_BENCH_PG_URL", None)
    with bench_run.postgres_server(tmp_path, settings) as ready:
        url = ready()
        shown = bench_run.effective_settings(url, ("shared_buffers", "max_wal_size",
                                                   "checkpoint_timeout", "fsync"))
    assert shown == {"shared_buffers": "2GB", "max_wal_size": "16GB",
                     "checkpoint_timeout": "30min", "fsync": "on"}
    assert list(tmp_path.iterdir()) == []  # data directory deleted
    import psycopg

    with pytest.raises(psycopg.OperationalError):  # and no server answers there any more
        psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=2)
