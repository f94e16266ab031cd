"""order_to_cash end to end, under prefect_test_harness, against the sandbox fakes over real HTTP.

The generator knows the truth it seeded; these tests assert exactly that truth, then run again
and assert that nothing changed. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from e2e_truth import check_truth as _check_truth
from e2e_truth import snapshot as _snapshot
from sqlalchemy import create_engine

from flows.config import load_settings
from flows.demo import write_sandbox_config
from sandbox import start_sandbox
from sandbox.generator import generate

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
ORDERS = 600


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture(scope="module")
def dataset():
    return generate(seed=11, orders=ORDERS)


def _config(tmp: Path, url: str) -> Path:
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["warehouse"] = {"url": url}
    path = tmp / "orderhub.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(config: Path) -> dict:
    from flows.order_to_cash import order_to_cash

    return order_to_cash(config_path=str(config))


def _e2e(harness, dataset, tmp_path, url) -> None:
    config = _config(tmp_path, url)
    engine = create_engine(url)
    with start_sandbox(dataset, fast=True) as sandbox:
        sandbox_config = write_sandbox_config(load_settings(config), sandbox.sources())
        first = _run(sandbox_config)
        _check_truth(engine, sandbox, dataset, first)
        assert first["records"]["already_held"] == 0
        assert first["records"]["in"] == sum(len(v) for v in dataset.orders.values())
        assert Path(first["report"]).is_file()
        assert Path(first["lineage"]).is_file()
        _check_exports(engine, first)
        before = _snapshot(engine)
        creates = dict(sandbox.apps["shopify"].creates) | dict(sandbox.apps["kingdee"].creates)

        second = _run(sandbox_config)
        _check_truth(engine, sandbox, dataset, second)
        after = _snapshot(engine)
        # A rerun pulls again and changes nothing but its own bookkeeping.
        bookkeeping = {"runs", "check_results", "sync_state"}
        assert {k: v for k, v in after.items() if k not in bookkeeping} == \
               {k: v for k, v in before.items() if k not in bookkeeping}
        assert dict(sandbox.apps["shopify"].creates) | dict(sandbox.apps["kingdee"].creates) \
            == creates
        rec = second["records"]
        assert rec["loaded"] == rec["quarantined"] == rec["rejected"] == 0
    engine.dispose()


def _check_exports(engine, summary: dict) -> None:
    """The exports (run beside the KPIs) finished: every file there, as many rows as its table,
    and the lineage has their job, completed under the parent run, with the files as outputs."""
    import json

    import pyarrow.parquet as pq
    from sqlalchemy import func, select

    from warehouse import schema

    files = [Path(f) for f in summary["stages"]["reconcile"]["exports"]]
    assert files and all(f.is_file() for f in files)
    with engine.connect() as conn:
        for f in files:
            if f.stem in schema.metadata.tables:
                table = schema.metadata.tables[f.stem]
                stored = conn.execute(select(func.count()).select_from(table)).scalar_one()
                assert pq.ParquetFile(f).metadata.num_rows == stored, f.stem
    events = [json.loads(line) for line in Path(summary["lineage"]).read_text().splitlines()]
    done = [e for e in events if e["job"]["name"] == "export" and e["eventType"] == "COMPLETE"]
    assert len(done) == 1
    assert done[0]["run"]["facets"]["parent"]["run"]["runId"] == summary["run_id"]
    assert sorted(o["name"] for o in done[0]["outputs"]) == sorted(str(f) for f in files)
    assert summary["stages"]["seconds"]["export"] >= 0


def test_order_to_cash_sqlite(harness, dataset, tmp_path):
    _e2e(harness, dataset, tmp_path, f"sqlite:///{tmp_path / 'wh.db'}")


@pytest.mark.postgres
def test_order_to_cash_postgres(harness, dataset, tmp_path, pg_url):
    _e2e(harness, dataset, tmp_path, pg_url)


def test_demo_command_is_clean(tmp_path):
    """`orderhub demo` as people run it: exit 0, a summary, no traceback or ERROR lines."""
    import subprocess
    import sys

    shutil.copy(ROOT / "orderhub.yaml", tmp_path / "orderhub.yaml")
    cmd = [sys.executable, "-m", "flows.cli", "demo", "--orders", "300", "--config",
           str(tmp_path / "orderhub.yaml")]
    for attempt in range(2):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        text = out.stdout + out.stderr
        assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
        assert "| INFO" not in text and "| WARNING" not in text, text[-3000:]  # no library logs
        assert "[balanced]" in out.stdout
        if attempt == 1:
            assert "nothing new" in out.stdout
    assert list((tmp_path / "var" / "reports").glob("*.html"))
    assert len(list((tmp_path / "var" / "exports").glob("*.parquet"))) >= 4
    assert list((tmp_path / "var" / "lineage").glob("*.jsonl"))
