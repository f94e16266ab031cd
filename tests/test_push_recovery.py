"""A crash between sending and marking never creates a second remote document (invariant 3).

Real parts throughout: the sandbox fakes over HTTP, the connectors, a migrated warehouse. The
"crash" is an outbox row left in ``sending``: either after the remote create (the answer was
lost) or before the request left. Once the row's lease has run out, the next drain looks the
document up before creating it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from sqlalchemy import select, update

from checks.gate import run_gate
from checks.suite import load_suite
from connectors.registry import build_connector
from flows.config import load_settings
from flows.demo import write_sandbox_config
from flows.ingest import pull_stream
from flows.push import drain
from sandbox import start_sandbox
from sandbox.generator import generate
from warehouse import allocate, load, outbox
from warehouse.engine import begin_write, make_engine, migrate

ROOT = Path(__file__).resolve().parents[1]
RUN = "33333333-3333-4333-8333-333333333333"
RUN2 = "33333333-3333-4333-8333-333333333334"


@pytest.fixture
def world(tmp_path):
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["warehouse"] = {"url": f"sqlite:///{tmp_path / 'wh.db'}"}
    (tmp_path / "orderhub.yaml").write_text(yaml.safe_dump(raw))
    dataset = generate(seed=5, orders=120)
    with start_sandbox(dataset, fast=True) as sandbox:
        settings = load_settings(write_sandbox_config(load_settings(tmp_path / "orderhub.yaml"),
                                                      sandbox.sources()))
        engine = make_engine(settings.warehouse_url)
        migrate(engine)
        for role in ("customers", "prices", "stock", "orders"):
            for source in settings.sources_with_role(role):
                pull_stream(settings, engine, RUN, source, role)
        load.resolve_customers(engine, RUN)
        run_gate(engine, RUN, load_suite(settings.checks))
        allocate.allocate(engine, RUN, settings.allocation_rules)
        yield settings, engine, sandbox
        engine.dispose()


def _expire_leases(engine) -> None:
    with begin_write(engine) as conn:
        conn.execute(update(outbox.outbox).values(
            claimed_at=datetime.now(UTC) - timedelta(hours=1)))


@pytest.mark.parametrize("target,operation,system", [
    ("kingdee", "sales_order", "kingdee"),
    ("shopify", "fulfilment", "shopify"),
])
def test_crash_after_send_and_before_send(world, target, operation, system):
    settings, engine, sandbox = world
    others = None if operation == "fulfilment" else ["shopify", "jiandaoyun"]
    outbox.enqueue(engine, RUN, operation, target, [target] if others is None else others)
    rows = outbox.claim(engine, target, operation, 1000)
    assert len(rows) >= 4
    outbox.mark_sending(engine, [r["id"] for r in rows])
    # Half of them reached the target before the "crash"; the other half never left.
    sent = rows[: len(rows) // 2]
    connector = build_connector(target, settings.connector_config(target))
    assert all(r.ok for r in connector.push(operation, [r["payload"] for r in sent]))
    creates = sandbox.apps[system].creates
    assert sum(creates.values()) == len(sent)

    # Within the lease nobody touches them (another worker may still be sending).
    assert drain(settings, engine, RUN, target, operation)["done"] == 0
    _expire_leases(engine)
    result = drain(settings, engine, RUN, target, operation)
    assert result["done"] == len(rows) and result["recovered"] == len(rows)
    assert sum(creates.values()) == len(rows) and set(creates.values()) == {1}
    # And a further drain has nothing left to do.
    assert drain(settings, engine, RUN, target, operation)["done"] == 0
    assert sum(creates.values()) == len(rows)


class _Recorder:
    """A connector that confirms every doc and records the batches it was given."""

    push_batch = 2

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], bool]] = []

    def push(self, operation, docs, recover=False):
        from connectors.base import PushResult

        self.batches.append(([d["key"] for d in docs], recover))
        return [PushResult(d["key"], True, remote_id=f"R-{d['key']}") for d in docs]


def _queue(engine, n):
    with begin_write(engine) as conn:
        outbox._insert_new(conn, [
            {"idempotency_key": f"kingdee:sales_order:SO-{i}", "business_key": f"SO-{i}",
             "order_id": None, "payload": {"key": f"kingdee:sales_order:SO-{i}"},
             "target": "kingdee", "operation": "sales_order", "status": "pending",
             "attempts": 0, "created_at": datetime.now(UTC), "run_id": RUN}
            for i in range(n)])


def test_drain_sends_in_the_connectors_batches_and_marks_each_once(sqlite_engine, monkeypatch):
    import flows.push

    recorder = _Recorder()
    monkeypatch.setattr(flows.push, "build_connector", lambda target, cfg: recorder)
    settings = SimpleNamespace(connector_config=lambda target: {})
    _queue(sqlite_engine, 5)
    # a crashed earlier drain left the second row `sending`: it is looked up, not re-created
    outbox.claim(sqlite_engine, "kingdee", "sales_order", 2, sending=True)
    _expire_leases(sqlite_engine)
    outbox.mark_failed(sqlite_engine, [(1, "read timed out")])
    result = drain(settings, sqlite_engine, RUN2, "kingdee", "sales_order")
    assert (result["done"], result["failed"], result["recovered"]) == (5, 0, 2)
    keys = [f"kingdee:sales_order:SO-{i}" for i in range(5)]
    assert recorder.batches == [([keys[0], keys[1]], True), ([keys[2], keys[3]], False),
                                ([keys[4]], False)]
    with sqlite_engine.connect() as conn:
        rows = conn.execute(select(outbox.outbox.c.status, outbox.outbox.c.attempts,
                                   outbox.outbox.c.remote_id, outbox.outbox.c.run_id)
                            .order_by(outbox.outbox.c.id)).all()
    assert rows == [("done", 2, f"R-{keys[0]}", RUN2), ("done", 2, f"R-{keys[1]}", RUN2),
                    *[("done", 1, f"R-{k}", RUN2) for k in keys[2:]]]
    # nothing left: the next drain builds no connector at all
    monkeypatch.setattr(flows.push, "build_connector", lambda target, cfg: pytest.fail("built"))
    assert drain(settings, sqlite_engine, RUN2, "kingdee", "sales_order")["done"] == 0


class _FailsOnce(_Recorder):
    """Confirms every doc, except that its second call fails (the target went away)."""

    def push(self, operation, docs, recover=False):
        if len(self.batches) == 1:
            self.batches.append(([d["key"] for d in docs], "raised"))
            raise RuntimeError("target went away")
        return super().push(operation, docs, recover)


def test_a_failed_send_mid_drain_loses_nothing_and_creates_nothing_twice(sqlite_engine,
                                                                          monkeypatch):
    """The drain sends one batch while it claims the next: when a send fails, the batches
    claimed after it stay `sending` (or, already sent, get their results); after the lease,
    the next drain finishes all of them, looking up every row that may have gone out."""
    import flows.push

    failing = _FailsOnce()
    monkeypatch.setattr(flows.push, "build_connector", lambda target, cfg: failing)
    settings = SimpleNamespace(connector_config=lambda target: {})
    _queue(sqlite_engine, 7)
    with pytest.raises(RuntimeError, match="target went away"):
        drain(settings, sqlite_engine, RUN, "kingdee", "sales_order")
    keys = [f"kingdee:sales_order:SO-{i}" for i in range(7)]
    assert failing.batches[:2] == [(keys[0:2], False), (keys[2:4], "raised")]
    with sqlite_engine.connect() as conn:
        status = dict(conn.execute(select(outbox.outbox.c.business_key,
                                          outbox.outbox.c.status)).all())
    recorded = {k for b, how in failing.batches if how is False for k in b}
    assert {f"kingdee:sales_order:{b}" for b, s in status.items() if s == "done"} == recorded
    assert status["SO-2"] == status["SO-3"] == "sending"  # may have reached the target

    _expire_leases(sqlite_engine)
    recorder = _Recorder()
    monkeypatch.setattr(flows.push, "build_connector", lambda target, cfg: recorder)
    result = drain(settings, sqlite_engine, RUN2, "kingdee", "sales_order")
    assert result["done"] == 7 - len(recorded)
    created_before = [k for b, how in failing.batches if how is False for k in b]
    created_now = [k for b, recover in recorder.batches if not recover for k in b]
    looked_up = {k for b, recover in recorder.batches if recover for k in b}
    assert {"kingdee:sales_order:SO-2", "kingdee:sales_order:SO-3"} <= looked_up
    # no document created twice; every one created or looked up once in all
    assert len(created_before + created_now) == len(set(created_before + created_now))
    assert set(created_before) | set(created_now) | looked_up == set(keys)
    with sqlite_engine.connect() as conn:
        assert {s for (s,) in conn.execute(select(outbox.outbox.c.status))} == {"done"}
