"""Rollback end to end: a real order-to-cash run against the sandbox fakes over HTTP, then
``orderhub rollback RUN --yes`` through the CLI, asserting what the fakes saw and what the
warehouse holds; then a second rollback that finds nothing, and a re-push of what was undone.

The run is composed from the stages as flows/order_to_cash.py composes them (ingest, gate,
allocate, push, invoice), without Prefect: the rollback does not depend on it.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, func, select

from checks.gate import run_gate
from checks.suite import load_suite
from connectors.base import Connector
from connectors.registry import build_connector
from flows.cli import main
from flows.config import Settings, load_settings
from flows.demo import write_sandbox_config
from flows.ingest import pull_stream
from flows.push import drain
from flows.rollback import RollbackStopped, plan_rollback, rollback
from sandbox import start_sandbox
from sandbox.generator import generate
from warehouse import allocate, invoicing, load, outbox, runs
from warehouse import reconcile as reconcile_mod
from warehouse import schema as s
from warehouse.engine import make_engine, migrate
from warehouse.quarantine_ops import OpsConfig, OpsError, RoleError

ROOT = Path(__file__).resolve().parents[1]
OPS = OpsConfig(roles={"alice": frozenset({"ops"}), "bob": frozenset({"ops", "approver"})})


@pytest.fixture(autouse=True)
def _console_handler_per_test():
    """main() points the progress logger at this test's captured stderr; drop it afterwards
    so later progress lines do not go to a closed stream."""
    yield
    log = logging.getLogger("orderhub")
    for handler in [h for h in log.handlers if getattr(h, "_orderhub", False)]:
        log.removeHandler(handler)


@pytest.fixture
def world(tmp_path, warehouse_url):
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["warehouse"] = {"url": warehouse_url}
    raw["ops"] = {"roles": {"alice": ["ops"], "bob": ["ops", "approver"]}}
    (tmp_path / "orderhub.yaml").write_text(yaml.safe_dump(raw))
    dataset = generate(seed=5, orders=120)
    with start_sandbox(dataset, fast=True) as sandbox:
        config = write_sandbox_config(load_settings(tmp_path / "orderhub.yaml"), sandbox.sources())
        settings = load_settings(config)
        engine = make_engine(settings.warehouse_url)
        migrate(engine)
        yield settings, engine, sandbox, config
        engine.dispose()


def order_to_cash(settings: Settings, engine: Engine) -> str:
    """One run through ingest, gate, allocate, push and invoice; returns its run id."""
    rid = runs.start_run(engine, "order_to_cash")
    for role in ("customers", "prices", "stock", "orders"):
        for source in settings.sources_with_role(role):
            pull_stream(settings, engine, rid, source, role)
    load.resolve_customers(engine, rid)
    run_gate(engine, rid, load_suite(settings.checks))
    allocate.allocate(engine, rid, settings.allocation_rules)
    push_and_invoice(settings, engine, rid)
    runs.finish_run(engine, rid, "completed", {})
    return rid


def push_and_invoice(settings: Settings, engine: Engine, rid: str) -> None:
    for target in settings.sources_with_role("fulfilment_target"):
        outbox.enqueue(engine, rid, "fulfilment", target, [target])
        drain(settings, engine, rid, target, "fulfilment")
    erp = settings.target("sales_order_target")
    others = [x for x in settings.sources_with_role("orders") if x != erp]
    outbox.enqueue(engine, rid, "sales_order", erp, others)
    drain(settings, engine, rid, erp, "sales_order")
    outbox.complete_pushes(engine, rid)
    invoicing.create_invoices(engine, rid, settings.invoicing_policy)
    target = settings.target("invoice_target")
    outbox.enqueue(engine, rid, "invoice", target, None)
    drain(settings, engine, rid, target, "invoice")
    invoicing.complete_invoices(engine, rid)


def _by(engine: Engine, column, *where) -> dict:
    with engine.connect() as conn:
        return dict(Counter(conn.execute(select(column).where(*where)).scalars()))


def _count(engine: Engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def _kingdee_numbers(app, op: str, form: str) -> list[str]:
    """Bill numbers the fake received in ``op`` calls on ``form``, in call order."""
    return [n for r in app.requests if r.path.endswith(f".{op}.common.kdsvc")
            and isinstance(r.json, dict) and r.json.get("formid") == form
            for n in (r.json.get("data") or {}).get("Numbers") or []]


def test_rollback_end_to_end(world, capsys):
    settings, engine, sandbox, config = world
    kingdee, shopify = sandbox.apps["kingdee"], sandbox.apps["shopify"]
    rid = order_to_cash(settings, engine)

    pushed = {(t, op): n for (t, op), n in Counter(
        (r["target"], r["operation"]) for r in outbox.done_in_run(engine, rid)).items()}
    n_fulfil, n_so, n_inv = (pushed[("shopify", "fulfilment")], pushed[("kingdee", "sales_order")],
                             pushed[("kingdee", "invoice")])
    assert min(n_fulfil, n_so, n_inv) > 5
    sales_orders = {no for (form, no) in kingdee.documents if form == "SAL_SaleOrder"}
    receivables = {no for (form, no) in kingdee.documents if form == "AR_receivable"}
    assert (len(sales_orders), len(receivables)) == (n_so, n_inv)
    assert all(b.status == "C" for b in kingdee.documents.values())
    states = _by(engine, s.orders.c.status)
    assert states.get("invoiced") == n_inv and "pushed" not in states
    # orders whose own pushes (fulfilment, sales order) are undone go back to allocated; the
    # ERP's own orders needed no push, so undoing their invoice takes them back to pushed only
    with engine.connect() as conn:
        pushed_ids = set(conn.execute(select(s.outbox.c.order_id).where(
            s.outbox.c.run_id == rid, s.outbox.c.operation.in_(("fulfilment", "sales_order"))))
            .scalars())
        # backordered orders got a sales order too; they never moved to pushed, nor back
        waiting = set(conn.execute(select(s.orders.c.id).where(
            s.orders.c.id.in_(pushed_ids), s.orders.c.status == "backordered")).scalars())
    n_back, n_wait = len(pushed_ids - waiting), len(waiting)
    allocations = _count(engine, s.allocations)
    reserved = _by(engine, s.stock.c.reserved)
    creates = dict(kingdee.creates) | dict(shopify.creates)

    # people are asked; without a terminal only --yes confirms, and nothing happens before
    kingdee.reset_log()
    assert main(["rollback", rid, "--config", str(config), "--actor", "bob"]) == 1
    captured = capsys.readouterr()
    assert "stdin is not a terminal" in captured.err and "pass --yes" in captured.err
    assert f"kingdee      invoice      {n_inv:>6}" in captured.out  # the plan was shown
    assert kingdee.requests == [] and _count(engine, s.runs, s.runs.c.flow == "rollback") == 0

    # an actor without the approver role is refused before anything is opened
    assert main(["rollback", rid, "--yes", "--config", str(config), "--actor", "alice"]) == 1
    assert "rollback: alice needs the role 'approver'" in capsys.readouterr().err

    assert main(["rollback", rid, "--yes", "--reason", "wrong price list pushed", "--config",
                 str(config), "--actor", "bob"]) == 0
    out = capsys.readouterr().out
    total = n_fulfil + n_so + n_inv
    assert (f"{total} document(s) undone for {n_inv + n_wait} order(s), now allocated {n_back}, "
            f"backordered {n_wait}, pushed {n_inv - n_back};") in out

    # Kingdee: every receivable and sales order unaudited, then deleted; invoices first
    unaudited = _kingdee_numbers(kingdee, "UnAudit", "AR_receivable")
    assert sorted(unaudited) == sorted(receivables)
    assert sorted(_kingdee_numbers(kingdee, "Delete", "AR_receivable")) == sorted(receivables)
    assert sorted(_kingdee_numbers(kingdee, "UnAudit", "SAL_SaleOrder")) == sorted(sales_orders)
    assert sorted(_kingdee_numbers(kingdee, "Delete", "SAL_SaleOrder")) == sorted(sales_orders)
    ops = [(r.json["formid"], r.path.split(".")[-3]) for r in kingdee.requests
           if isinstance(r.json, dict) and "formid" in r.json]
    assert ops.index(("AR_receivable", "Delete")) < ops.index(("SAL_SaleOrder", "UnAudit"))
    assert not any(form in ("SAL_SaleOrder", "AR_receivable") for form, _ in kingdee.documents)

    # Shopify: each fulfilment cancelled once, its fulfillment order open again
    fulfilled = {key for (op, key) in shopify.creates if op == "fulfilment"}
    assert shopify.cancels == Counter({("fulfilment", k): 1 for k in fulfilled})
    assert len(fulfilled) == n_fulfil
    assert all(fo["status"] == "open" for fo in shopify.fulfillment_orders.values())
    assert {f["status"] for fs in shopify.fulfillments.values() for f in fs} == {"cancelled"}

    # the warehouse: rows compensated by the rollback run, orders back, nothing else released
    (rb,) = runs.list_runs(engine, "rollback")
    assert (rb["parent_id"], rb["status"]) == (rid, "completed")
    assert rb["summary"]["compensated"] == total and rb["summary"]["remaining"] == 0
    assert [(g["target"], g["operation"]) for g in rb["summary"]["groups"]] == [
        ("kingdee", "invoice"), ("kingdee", "sales_order"), ("shopify", "fulfilment")]
    assert _by(engine, s.outbox.c.status) == {"compensated": total}
    assert _count(engine, s.outbox, s.outbox.c.run_id == rb["id"]) == total
    states_after = _by(engine, s.orders.c.status)
    assert "invoiced" not in states_after and states_after["pushed"] == n_inv - n_back
    assert states_after["allocated"] == states.get("allocated", 0) + n_back
    assert _by(engine, s.orders.c.status, s.orders.c.id.in_(pushed_ids)) == {
        "allocated": n_back, "backordered": n_wait}
    assert _count(engine, s.allocations) == allocations and _by(engine, s.stock.c.reserved) == reserved
    with engine.connect() as conn:
        acts = conn.execute(select(s.ops_actions.c.order_id, s.ops_actions.c.actor,
                                   s.ops_actions.c.reason)
                            .where(s.ops_actions.c.run_id == rb["id"])).all()
        events = conn.execute(select(s.order_events.c.from_state, s.order_events.c.to_state,
                                     func.count())
                              .where(s.order_events.c.run_id == rb["id"])
                              .group_by(s.order_events.c.from_state, s.order_events.c.to_state)
                              ).all()
    assert {(a.actor, a.reason) for a in acts} == {("bob", "wrong price list pushed")}
    assert sum(1 for a in acts if a.order_id is None) == 1  # the run-level record
    assert dict(((f, t), n) for f, t, n in events) == {("invoiced", "pushed"): n_inv,
                                                        ("pushed", "allocated"): n_back}

    # a second rollback of the same run finds nothing and records nothing
    kingdee.reset_log()
    assert main(["rollback", rid, "--yes", "--config", str(config), "--actor", "bob"]) == 0
    assert "nothing to roll back" in capsys.readouterr().out
    assert len(runs.list_runs(engine, "rollback")) == 1
    assert not any("Delete" in r.path or "UnAudit" in r.path for r in kingdee.requests)

    # the rolled-back orders wait; a re-push sends the same documents again
    push_and_invoice(settings, engine, runs.start_run(engine, "order_to_cash"))
    assert dict(kingdee.creates) | dict(shopify.creates) == creates  # nothing sent by itself
    some = sorted(fulfilled)[:2]
    with engine.connect() as conn:
        ids = conn.execute(select(s.orders.c.id).where(s.orders.c.source == "shopify",
                                                       s.orders.c.external_id.in_(some))).scalars()
        refs = [str(i) for i in ids]
    assert main(["repush", *refs, "--reason", "prices corrected", "--config", str(config),
                 "--actor", "alice"]) == 0
    assert "queued again 2 order(s)" in capsys.readouterr().out
    again = runs.start_run(engine, "order_to_cash")
    push_and_invoice(settings, engine, again)
    assert {k: n for (op, k), n in shopify.creates.items() if k in some} == {k: 2 for k in some}
    assert _by(engine, s.orders.c.status, s.orders.c.id.in_([int(r) for r in refs])) == {
        "invoiced": 2}


def test_rollback_leaves_paid_orders_alone(world):
    settings, engine, sandbox, _ = world
    rid = order_to_cash(settings, engine)
    recon = runs.start_run(engine, "reconcile")
    pulled = [pull_stream(settings, engine, recon, src, "payments")
              for src in settings.sources_with_role("payments")]
    assert pulled
    reconcile_mod.reconcile(engine, recon, Decimal("0.01"))
    paid = _count(engine, s.orders, s.orders.c.status == "paid")
    assert paid > 0
    plan = plan_rollback(engine, rid)
    assert len(plan.held) == paid and set(plan.held.values()) == {
        "paid: a payment is applied to its invoice"}
    result = rollback(settings, engine, OPS, "bob", rid, "test")
    assert result.compensated == plan.documents
    assert _count(engine, s.orders, s.orders.c.status == "paid") == paid
    # the paid orders' documents stay in place, and a second rollback has nothing else to undo
    assert _count(engine, s.outbox, s.outbox.c.status == "done") == plan.held_documents
    again = rollback(settings, engine, OPS, "bob", rid, "test")
    assert again.run_id is None and len(again.held) == paid


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class NoUndo(Connector):
    """A target whose connector cannot compensate anything (the base default)."""

    system = "noundo"

    def __init__(self, name: str) -> None:  # no HTTP: compensate must not send anything
        self.name = name


def test_unsupported_compensation_stops_then_a_rerun_continues(world):
    settings, engine, sandbox, _ = world
    rid = order_to_cash(settings, engine)
    done = len(outbox.done_in_run(engine, rid))

    def kingdee_cannot(target: str) -> Connector:
        if target == "kingdee":
            return NoUndo(target)
        return build_connector(target, settings.connector_config(target))

    with pytest.raises(RollbackStopped) as err:
        rollback(settings, engine, OPS, "bob", rid, "test", connector_for=kingdee_cannot)
    message = str(err.value)
    assert message.startswith(f"rollback of run {rid} stopped: kingdee/invoice: ")
    assert "kingdee: noundo cannot compensate 'invoice'" in message and "\n" not in message
    assert f"0 document(s) undone and recorded, {done} still in place" in message
    # it stopped before touching anything else, Shopify included
    assert sandbox.apps["shopify"].cancels == Counter()
    assert _count(engine, s.outbox, s.outbox.c.status == "compensated") == 0
    (failed,) = runs.list_runs(engine, "rollback")
    assert failed["status"] == "failed" and "cannot compensate" in failed["summary"]["error"]

    result = rollback(settings, engine, OPS, "bob", rid, "test")
    assert result.compensated == done and result.error is None
    assert _count(engine, s.outbox, s.outbox.c.status == "compensated") == done


def test_refusals_write_nothing(world, monkeypatch, capsys):
    settings, engine, sandbox, config = world
    rid = order_to_cash(settings, engine)
    with pytest.raises(RoleError):
        rollback(settings, engine, OPS, "alice", rid)
    with pytest.raises(OpsError, match="no run 'nope'"):
        rollback(settings, engine, OPS, "bob", "nope")
    running = runs.start_run(engine, "order_to_cash")
    with pytest.raises(OpsError, match="is still running; wait for it to finish"):
        rollback(settings, engine, OPS, "bob", running)
    with pytest.raises(OpsError, match="not confirmed; nothing was done"):
        rollback(settings, engine, OPS, "bob", rid, confirm=lambda plan: False)
    # a person at a terminal answering no
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert main(["rollback", rid, "--config", str(config), "--actor", "bob"]) == 1
    assert "not confirmed" in capsys.readouterr().err
    assert runs.list_runs(engine, "rollback") == []
    assert _count(engine, s.outbox, s.outbox.c.status == "compensated") == 0
    assert sandbox.apps["shopify"].cancels == Counter()


# --- the compensations themselves, against the fakes -------------------------------------------


@pytest.fixture
def fakes():
    dataset = generate(seed=5, orders=60)
    with start_sandbox(dataset, systems=("shopify", "kingdee"), fast=True) as sb:
        src = sb.sources()
        made = {system: build_connector(system, {"system": system, **src[system]})
                for system in ("shopify", "kingdee")}
        yield dataset, sb, made


def _sales_order(dataset, n: int) -> dict:
    customer = dataset.customers[0]["code"]
    sku = dataset.products[0]["sku"]
    return {"key": f"kingdee:sales_order:SO-test-{n}", "bill_no": f"SO-test-{n}",
            "order_no": f"T-{n}", "source": "test", "customer_code": customer, "currency": "CNY",
            "ordered_at": "2026-11-01T00:00:00Z", "total": "10.00",
            "lines": [{"sku": sku, "qty": "1", "unit_price": "10.00"}]}


def test_kingdee_undo_states_and_the_permission_trap(fakes):
    dataset, sb, made = fakes
    kd, app = made["kingdee"], sb.apps["kingdee"]
    docs = [_sales_order(dataset, n) for n in range(4)]
    pushed = kd.push("sales_order", docs)
    assert all(r.ok for r in pushed)
    docs = [{**d, "remote_id": r.remote_id} for d, r in zip(docs, pushed, strict=True)]
    app.documents[("SAL_SaleOrder", "SO-test-1")].status = "B"  # submitted, not audited
    app.documents[("SAL_SaleOrder", "SO-test-2")].status = "A"  # saved only: Delete alone
    del app.documents[("SAL_SaleOrder", "SO-test-3")]  # gone already (a rerun after a crash)
    app.reset_log()
    results = {r.key: r for r in kd.compensate("sales_order", docs)}
    assert [results[d["key"]].ok for d in docs] == [True, False, True, True]
    assert "SO-test-1 is in status B (submitted, not audited)" in results[docs[1]["key"]].error
    assert _kingdee_numbers(app, "UnAudit", "SAL_SaleOrder") == ["SO-test-0"]
    assert _kingdee_numbers(app, "Delete", "SAL_SaleOrder") == ["SO-test-0", "SO-test-2"]
    assert list(app.documents) == [("SAL_SaleOrder", "SO-test-1")]
    # again: the deleted ones count as undone, nothing is sent for them
    app.reset_log()
    again = kd.compensate("sales_order", [docs[0], docs[2]])
    assert all(r.ok for r in again) and _kingdee_numbers(app, "Delete", "SAL_SaleOrder") == []

    # the permission trap: a query answers [] although the bill exists: never "undone"
    pushed = kd.push("sales_order", [_sales_order(dataset, 9)])
    app.deny_query_forms.add("SAL_SaleOrder")
    (trap,) = kd.compensate("sales_order", [{**_sales_order(dataset, 9),
                                             "remote_id": pushed[0].remote_id}])
    assert not trap.ok and "exists but a query cannot see it" in trap.error
    assert ("SAL_SaleOrder", "SO-test-9") in app.documents


def test_shopify_cancel_is_idempotent(fakes, monkeypatch):
    dataset, sb, made = fakes
    shop, app = made["shopify"], sb.apps["shopify"]
    order = dataset.orders["shopify"][0]
    doc = {"key": "shopify:fulfilment:x", "order_external_id": order["external_id"],
           "order_no": order["order_no"], "lines": []}
    (pushed,) = shop.push("fulfilment", [doc])
    done = {**doc, "remote_id": pushed.remote_id}
    assert [r.ok for r in shop.compensate("fulfilment", [done, done])] == [True, True]
    assert app.cancels == Counter({("fulfilment", str(order["external_id"])): 1})
    # the fulfillment order is open again: a re-push makes a new fulfilment; a 503 is retried
    (again,) = shop.push("fulfilment", [doc])
    assert again.remote_id != pushed.remote_id
    app.faults.add(503, times=1, path=r"/cancel\.json$")
    (undone,) = shop.compensate("fulfilment", [{**doc, "remote_id": again.remote_id}])
    assert undone.ok and app.cancels[("fulfilment", str(order["external_id"]))] == 2
    # cancelled meanwhile (our earlier attempt whose answer was lost): the POST gets 422, a
    # second look finds it cancelled, and that is a success, not a second cancel
    real, looks = shop._fulfilment, []

    def stale_first(order_id, fid):
        looks.append(fid)
        found = real(order_id, fid)
        return {**found, "status": "success"} if len(looks) == 1 else found

    monkeypatch.setattr(shop, "_fulfilment", stale_first)
    (raced,) = shop.compensate("fulfilment", [{**doc, "remote_id": again.remote_id}])
    assert raced.ok and len(looks) == 2
    assert app.cancels[("fulfilment", str(order["external_id"]))] == 2
    # an unknown fulfilment is an error, not a success
    (bad,) = shop.compensate("fulfilment", [{**doc, "remote_id": "1"}])
    assert not bad.ok and "has no fulfilment 1 to cancel" in bad.error


def test_a_connector_without_compensation_fails_every_doc_and_sends_nothing(fakes):
    _, sb, _ = fakes
    results = NoUndo("crm").compensate("sales_order", [{"key": "a"}, {"key": "b"}])
    assert [(r.key, r.ok) for r in results] == [("a", False), ("b", False)]
    assert results[0].error == ("crm: noundo cannot compensate 'sales_order' (no compensation for "
                                "it in this connector); undo it in the target by hand")
    made = build_connector("kingdee", {"system": "kingdee", **sb.sources()["kingdee"]})
    (fulfil,) = made.compensate("fulfilment", [{"key": "k"}])
    assert not fulfil.ok and "kingdee cannot compensate 'fulfilment'" in fulfil.error
