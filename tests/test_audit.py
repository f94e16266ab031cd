"""The missed-order audit against the sandbox fakes over real HTTP (the connectors, a migrated
warehouse on SQLite and PostgreSQL): nothing missed after a full ingest; one order deleted from
the warehouse is missed and named; an unreachable source is reported, not guessed. And the
accuracy KPI through the real connector mappings: every loaded order is accurate."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from sqlalchemy import delete, select, update

from flows.audit import audit_sources, source_total_readers
from flows.cli import main
from flows.config import load_settings
from flows.demo import write_sandbox_config
from flows.ingest import pull_stream
from sandbox import start_sandbox
from sandbox.generator import generate
from warehouse import kpis
from warehouse.engine import begin_write, make_engine, migrate
from warehouse.schema import order_events, order_lines, orders, raw_records

ROOT = Path(__file__).resolve().parents[1]
RUN = "55555555-5555-4555-8555-555555555555"
CHANNELS = ("shopify", "jiandaoyun", "kingdee")


@pytest.fixture(scope="module")
def dataset():
    return generate(seed=5, orders=120)


@pytest.fixture
def world(tmp_path, warehouse_url, dataset):
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["warehouse"] = {"url": warehouse_url}
    (tmp_path / "orderhub.yaml").write_text(yaml.safe_dump(raw))
    with start_sandbox(dataset, fast=True) as sandbox:
        config = write_sandbox_config(load_settings(tmp_path / "orderhub.yaml"), sandbox.sources(),
                                      out=tmp_path / "sandbox.yaml")
        settings = load_settings(config)
        engine = make_engine(settings.warehouse_url)
        migrate(engine)
        for role in ("customers", "prices", "stock", "orders"):
            for source in settings.sources_with_role(role):
                pull_stream(settings, engine, RUN, source, role)
        yield settings, engine, sandbox, config
        engine.dispose()


def _delete_order(engine, source: str, external_id: str) -> None:
    with begin_write(engine) as conn:
        oid = conn.scalar(select(orders.c.id).where(orders.c.source == source,
                                                    orders.c.external_id == external_id))
        conn.execute(delete(order_lines).where(order_lines.c.order_id == oid))
        conn.execute(delete(order_events).where(order_events.c.order_id == oid))
        conn.execute(delete(orders).where(orders.c.id == oid))


def test_nothing_missed_then_one_deleted_order_is_missed_and_named(world, dataset):
    settings, engine, _, _ = world
    per_channel = {ch: len({o["external_id"] for o in dataset.orders[ch]}) for ch in CHANNELS}
    rejected = {ch: sum(1 for key in dataset.truth.rejected if key[0] == ch) for ch in CHANNELS}
    assert sum(rejected.values()) > 0  # the accounted-for side includes rejected records

    first = audit_sources(settings, engine, RUN)
    assert (first["missed"], first["rate"], first["ok"]) == (0, Decimal(0), True)
    assert first["source_count"] == sum(per_channel.values())
    for ch in CHANNELS:
        src = first["sources"][ch]
        assert (src["source_count"], src["accounted"], src["missed"], src["missing"],
                src["not_at_source"], src["method"]) == (
            per_channel[ch], per_channel[ch], 0, [], 0, "listing")
    today = datetime.now(UTC).date()
    stored = {(r["source"], r["metric"]): (r["value"], r["numerator"], r["denominator"])
              for r in kpis.daily_kpis(engine, today, today)}
    assert stored[("*", "missed_rate")] == (Decimal(0), 0, sum(per_channel.values()))

    victim = next(o for o in dataset.orders["jiandaoyun"]
                  if ("jiandaoyun", o["external_id"]) not in dataset.truth.rejected)
    _delete_order(engine, "jiandaoyun", victim["external_id"])
    second = audit_sources(settings, engine, RUN)
    jdy = second["sources"]["jiandaoyun"]
    n = per_channel["jiandaoyun"]
    assert (jdy["missed"], jdy["missing"], jdy["accounted"]) == (1, [victim["external_id"]], n - 1)
    assert jdy["rate"] == (Decimal(1) / Decimal(n)).quantize(Decimal("0.000001"))
    assert (second["missed"], second["ok"]) == (1, False)
    assert second["sources"]["shopify"]["missed"] == second["sources"]["kingdee"]["missed"] == 0
    stored = {(r["source"], r["metric"]): r["numerator"]
              for r in kpis.daily_kpis(engine, today, today)}
    assert stored[("jiandaoyun", "missed_rate")] == 1 and stored[("*", "missed_rate")] == 1


def test_an_unreachable_source_is_reported_not_counted(world):
    settings, engine, sandbox, _ = world
    sandbox.apps["shopify"].faults.add(401, times=5, body={"errors": "[API] Invalid API key"})
    result = audit_sources(settings, engine, RUN, record=False)
    assert "shopify" in result["sources"]["shopify"]["error"]
    assert result["ok"] is False and result["missed"] == 0
    assert result["source_count"] == sum(result["sources"][ch]["source_count"]
                                         for ch in ("jiandaoyun", "kingdee"))


def test_every_loaded_order_is_accurate_through_the_real_mappings(world, dataset):
    settings, engine, _, _ = world
    acc = kpis.run_kpis(engine, RUN, readers=source_total_readers(settings))["accuracy"]
    loaded = sum(len(v) for v in dataset.orders.values()) - len(dataset.truth.rejected)
    assert (acc["orders"], acc["accurate"], acc["rate"], acc["inaccurate"]) == (
        loaded, loaded, Decimal(1), [])

    # each order's own total landed beside its payload, as the mapping read it
    raw = raw_records
    with engine.connect() as conn:
        landed = conn.execute(
            select(orders.c.source, orders.c.external_id, orders.c.total, raw.c.source_total)
            .join(raw, (raw.c.source == orders.c.source) & (raw.c.stream == "orders")
                  & (raw.c.external_id == orders.c.external_id))).all()
    assert len(landed) == loaded and all(r.source_total == r.total for r in landed)

    # a record landed before the column (no total kept) is mapped from its payload again; one
    # whose kept total differs from the stored one is named
    (s1, e1, *_), (s2, e2, t2, _) = sorted(landed, key=lambda r: (r.source, r.external_id))[:2]
    with begin_write(engine) as conn:
        conn.execute(update(raw).where(raw.c.source == s1, raw.c.external_id == e1)
                     .values(source_total=None, payload="{}"))
        conn.execute(update(raw).where(raw.c.source == s2, raw.c.external_id == e2)
                     .values(source_total=t2 + 1))
    acc = kpis.run_kpis(engine, RUN, readers=source_total_readers(settings))["accuracy"]
    problems = {(x["source"], x["external_id"]): x["problem"] for x in acc["inaccurate"]}
    assert acc["accurate"] == loaded - 2 and set(problems) == {(s1, e1), (s2, e2)}
    assert problems[(s1, e1)].startswith("raw payload does not map")
    assert problems[(s2, e2)] == f"total {t2} != the source's total {t2 + 1}"


def test_orderhub_kpis_audit_prints_the_missed_orders(world, capsys):
    settings, engine, _, config = world
    with engine.connect() as conn:
        victim = conn.scalar(select(orders.c.external_id).where(orders.c.source == "kingdee")
                             .order_by(orders.c.id).limit(1))
    _delete_order(engine, "kingdee", victim)
    assert main(["kpis", "--config", str(config), "--days", "1", "--audit"]) == 0
    out = capsys.readouterr().out
    assert f"kingdee: 1 missing: {victim}" in out
    assert "missed orders  1 of " in out and "[CHECK]" in out


def test_gate_kpis_match_the_seeded_truth(world, dataset):
    """Through the real quality gate: every planted defect is quarantined under its one check,
    and every other loaded order went through untouched."""
    from collections import Counter

    from checks.gate import run_gate
    from checks.suite import load_suite
    from warehouse.load import resolve_customers

    settings, engine, _, _ = world
    resolve_customers(engine, RUN)
    run_gate(engine, RUN, load_suite(settings.checks))
    k = kpis.run_kpis(engine, RUN)
    loaded = sum(len(v) for v in dataset.orders.values()) - len(dataset.truth.rejected)
    planted = Counter(dataset.truth.defects.values())
    q = k["quarantine"]
    assert (q["gated"], q["quarantined"]) == (loaded, sum(planted.values()))
    assert {c: v["quarantined"] for c, v in q["by_check"].items()} == dict(planted)
    a = k["automation"]
    assert (a["captured"], a["automated"]) == (loaded, loaded - sum(planted.values()))
