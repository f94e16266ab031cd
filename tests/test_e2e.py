"""order_to_cash end to end, under prefect_test_harness, against the sandbox fakes over real HTTP.

The generator knows the truth it seeded; these tests assert exactly that truth, then run again
and assert that nothing changed. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, func, select

from flows.config import load_settings
from flows.demo import write_sandbox_config
from sandbox import start_sandbox
from sandbox.generator import generate
from warehouse import schema as s

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


def _snapshot(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in s.metadata.sorted_tables}


def _run(config: Path) -> dict:
    from flows.order_to_cash import order_to_cash

    return order_to_cash(config_path=str(config))


def _check_truth(engine, sandbox, dataset, summary) -> None:
    truth = dataset.truth
    with engine.connect() as conn:
        keys = {oid: (src, ext) for oid, src, ext in conn.execute(
            select(s.orders.c.id, s.orders.c.source, s.orders.c.external_id))}
        status = {keys[oid]: st for oid, st in conn.execute(select(s.orders.c.id, s.orders.c.status))}
        failing: dict[tuple, set] = {}
        for oid, check in conn.execute(select(s.quarantine.c.order_id, s.quarantine.c.check_id)):
            failing.setdefault(keys[oid], set()).add(check)
        rejected = {(src, ext) for src, ext in conn.execute(
            select(s.rejected_records.c.source, s.rejected_records.c.external_id)
            .where(s.rejected_records.c.stream == "orders"))}
        rules = {}
        for src, ext, line_no, rule in conn.execute(
                select(s.orders.c.source, s.orders.c.external_id, s.order_lines.c.line_no,
                       s.allocations.c.rule_id)
                .join(s.order_lines, s.order_lines.c.order_id == s.orders.c.id)
                .join(s.allocations, s.allocations.c.order_line_id == s.order_lines.c.id)):
            rules[(src, ext, line_no)] = rule
        recon = {keys[oid]: st for oid, st in conn.execute(
            select(s.invoices.c.order_id, s.reconciliation.c.status)
            .join(s.reconciliation, s.reconciliation.c.invoice_id == s.invoices.c.id))}
        matched = {ext for (ext,) in conn.execute(
            select(s.payments.c.external_id).join(
                s.payment_matches, s.payment_matches.c.payment_id == s.payments.c.id))}
        all_payments = {ext for (ext,) in conn.execute(select(s.payments.c.external_id))}

    # Every seeded defect is quarantined by exactly the right check; nothing else is.
    assert failing == {key: {check} for key, check in truth.defects.items()}
    assert {k for k, st in status.items() if st == "quarantined"} == set(truth.defects)
    # Unparseable records are rejected with their raw payload kept, never half-loaded.
    assert rejected == set(truth.rejected)
    assert not set(truth.rejected) & set(status)
    # Every clean order went all the way; backordered ones wait for stock.
    clean_done = truth.clean - truth.backordered
    assert {k for k in clean_done if status[k] not in ("invoiced", "paid")} == set()
    assert {k for k in truth.backordered if status[k] != "backordered"} == set()
    assert {k: v for k, v in rules.items() if (k[0], k[1]) in truth.clean} == truth.line_rules
    # Each document was created exactly once at its target.
    shop = sandbox.apps["shopify"].creates
    shop_expected = {("fulfilment", ext) for ch, ext in clean_done if ch == "shopify"}
    assert set(shop) == shop_expected and set(shop.values()) == {1}
    kd = sandbox.apps["kingdee"].creates
    assert set(kd.values()) == {1}
    kd_ops = Counter(op for op, _ in kd)
    assert kd_ops["sales_order"] == len({k for k in truth.clean if k[0] != "kingdee"})
    assert kd_ops["invoice"] == len(clean_done)
    # Payments: every invoice's status and every unmatched payment as seeded.
    assert recon == truth.invoice_status
    assert all_payments - matched == truth.unmatched_payments
    # Nothing lost: records in = loaded + quarantined + rejected (+ already held).
    assert summary["records"]["balanced"]


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
        assert "[balanced]" in out.stdout
        if attempt == 1:
            assert "nothing new" in out.stdout
    assert list((tmp_path / "var" / "reports").glob("*.html"))
    assert len(list((tmp_path / "var" / "exports").glob("*.parquet"))) >= 4
    assert list((tmp_path / "var" / "lineage").glob("*.jsonl"))
