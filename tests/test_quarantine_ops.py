"""Quarantine decisions: each command's exact effect on a seeded batch, roles, re-checks.

The batch is built by hand and judged by the real gate (Great Expectations), so every assertion
names which order fails which check before and after a decision. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, func, insert, select

from checks.gate import run_gate
from checks.suite import GatePolicy, load_suite
from flows.cli import main
from flows.cmd_quarantine import gate_recheck, release_held_orders
from warehouse import allocate
from warehouse import schema as s
from warehouse.load import lines_hash
from warehouse.quarantine_ops import (
    FixSpec,
    OpsConfig,
    OpsError,
    RoleError,
    find_order,
    fix,
    list_quarantine,
    override,
    reject,
    release,
    show_order,
)

RUN0 = "00000000-0000-4000-8000-000000000000"
SUITE = [
    {"id": "required_fields", "severity": "error",
     "fields": ["customer", "currency", "ordered_at", "ship_region", "lines"]},
    {"id": "customer_known", "severity": "error"},
    {"id": "sku_known", "severity": "error"},
    {"id": "qty_positive", "severity": "error"},
    {"id": "currency_allowed", "severity": "error", "allowed": ["CNY", "USD"]},
    {"id": "price_matches_list", "severity": "error", "tolerance": "0.01"},
    {"id": "not_duplicate", "severity": "error"},
]
SPECS = load_suite(SUITE)
OPS = OpsConfig(roles={"alice": frozenset({"ops"}), "bob": frozenset({"ops", "approver"})})
RULES = [{"id": "any_stock", "require_stock": True}, {"id": "backorder"}]

# external id -> the one check it fails after the first gate (None: passes)
SEEDED = {
    "clean": None,
    "unknown-customer": "customer_known",
    "qty-zero": "qty_positive",
    "price-off": "price_matches_list",
    "sku-unknown": "sku_known",
    "no-region": "required_fields",
}


def _order(ext: str, *, code: str = "C00001", region: str | None = "east",
           lines: list[tuple[str, str, str]] | None = None) -> dict:
    at = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    lines = lines or [("SKU-1", "2", "10.00")]
    amounts = [Decimal(q) * Decimal(p) for _, q, p in lines]
    return {
        "source": "crm", "external_id": ext, "order_no": f"NO-{ext}", "customer_code": code,
        "customer_email": None, "customer_id": None, "ordered_at": at, "source_updated_at": at,
        "currency": "CNY", "total": sum(amounts, Decimal("0")).quantize(Decimal("0.01")),
        "ship_region": region, "order_date": at.date(),
        "lines_hash": lines_hash([{"sku": k, "qty": Decimal(q), "unit_price": Decimal(p)}
                                  for k, q, p in lines]),
        "status": "captured", "content_hash": hashlib.sha256(ext.encode()).hexdigest(),
        "captured_at": at, "run_id": RUN0, "lines": lines,
    }


def _seed(engine: Engine, policy: GatePolicy | None = None) -> None:
    batch = [
        _order("clean", lines=[("SKU-1", "2", "10.00"), ("SKU-2", "1", "20.00")]),
        _order("unknown-customer", code="C00009", lines=[("SKU-1", "1", "10.00")]),
        _order("qty-zero", lines=[("SKU-1", "2", "10.00"), ("SKU-2", "0", "20.00")]),
        _order("price-off", lines=[("SKU-1", "1", "12.00")]),
        _order("sku-unknown", lines=[("SKU-404", "1", "5.00")]),
        _order("no-region", region=None, lines=[("SKU-2", "3", "20.00")]),
    ]
    with engine.begin() as conn:
        conn.execute(insert(s.customers), [
            {"code": "C00001", "email": "a@example.com", "region": "east", "source": "crm",
             "external_id": "1", "content_hash": "h", "run_id": RUN0}])
        conn.execute(insert(s.products), [
            {"sku": sku, "name": sku, "source": "erp", "run_id": RUN0} for sku in ("SKU-1", "SKU-2")])
        conn.execute(insert(s.prices), [
            {"sku": sku, "currency": "CNY", "price": Decimal(p), "source": "erp",
             "content_hash": "h", "run_id": RUN0}
            for sku, p in (("SKU-1", "10.00"), ("SKU-2", "20.00"))])
        conn.execute(insert(s.warehouses), [{"code": "WH-EAST", "region": "east", "run_id": RUN0}])
        conn.execute(insert(s.stock), [
            {"sku": sku, "warehouse": "WH-EAST", "on_hand": Decimal(100), "reserved": Decimal(0),
             "source": "erp", "content_hash": "h", "run_id": RUN0} for sku in ("SKU-1", "SKU-2")])
        for o in batch:
            lines = o.pop("lines")
            oid = conn.execute(insert(s.orders).values(**o).returning(s.orders.c.id)).scalar_one()
            conn.execute(insert(s.order_lines), [
                {"order_id": oid, "line_no": n, "sku": sku, "qty": Decimal(q),
                 "unit_price": Decimal(p), "amount": (Decimal(q) * Decimal(p)).quantize(Decimal("0.01")),
                 "run_id": RUN0} for n, (sku, q, p) in enumerate(lines, start=1)])
    from warehouse.load import resolve_customers

    resolve_customers(engine, RUN0)
    if policy is not None:
        result = run_gate(engine, RUN0, SPECS, policy)
        assert result.held_orders == 6  # 5 of crm's 6 orders fail: its whole share is held
        return
    result = run_gate(engine, RUN0, SPECS)
    assert result.quarantined == 5 and result.validated == 1


@pytest.fixture
def wh(engine: Engine) -> Engine:
    _seed(engine)
    return engine


def _id(engine: Engine, ext: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(s.orders.c.id).where(s.orders.c.external_id == ext)).scalar_one()


def _status(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(s.orders.c.external_id, s.orders.c.status)).all())


def _q_rows(engine: Engine, ext: str) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(
            select(s.quarantine.c.check_id, s.quarantine.c.status)
            .join(s.orders, s.orders.c.id == s.quarantine.c.order_id)
            .where(s.orders.c.external_id == ext)).all())


def _counts(engine: Engine) -> dict[str, int]:
    tables = (s.runs, s.ops_actions, s.order_events, s.quarantine, s.orders, s.order_lines)
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in tables}


def _actions(engine: Engine, ext: str) -> list[dict]:
    oid = _id(engine, ext)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(s.ops_actions).where(s.ops_actions.c.order_id == oid)
            .order_by(s.ops_actions.c.id)).mappings()]


def _events(engine: Engine, ext: str) -> list[tuple]:
    oid = _id(engine, ext)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(s.order_events.c.from_state, s.order_events.c.to_state, s.order_events.c.reason,
                   s.order_events.c.run_id)
            .where(s.order_events.c.order_id == oid).order_by(s.order_events.c.id))]


# --- config and roles --------------------------------------------------------------------------


def test_ops_config_from_yaml_and_its_errors():
    raw = yaml.safe_load("""
ops:
  roles: {alice: [ops], bob: [ops, approver]}
  default_actor_from: env:USER
""")
    cfg = OpsConfig.from_config(raw)
    assert cfg.roles == {"alice": {"ops"}, "bob": {"ops", "approver"}}
    assert cfg.default_actor_from == "env:USER"
    assert OpsConfig.from_config({}).roles == {}
    bad = [
        ({"ops": {"roles": {"carol": ["admin"]}}},
         "ops.roles.carol: unknown role 'admin' (known: ops, approver)"),
        ({"ops": {"roles": {"carol": []}}}, "ops.roles.carol: expected a list of roles"),
        ({"ops": {"roles": ["alice"]}}, "ops.roles: expected a mapping"),
        ({"ops": {"default_actor_from": "USER"}}, "ops.default_actor_from: expected env:NAME"),
        ({"ops": {"approvers": []}}, "ops.approvers: unknown key"),
    ]
    for given, message in bad:
        with pytest.raises(ValueError) as err:
            OpsConfig.from_config(given)
        assert str(err.value).startswith(message), str(err.value)


def test_actor_comes_from_flag_then_orderhub_actor_then_user():
    cfg = OpsConfig.from_config({"ops": {"roles": {"alice": ["ops"]}}})
    env = {"ORDERHUB_ACTOR": "bob", "USER": "carol"}
    assert cfg.actor("alice", env) == "alice"
    assert cfg.actor(None, env) == "bob"
    assert cfg.actor(None, {"USER": "carol"}) == "carol"
    with pytest.raises(OpsError, match="no actor: pass --actor NAME or set ORDERHUB_ACTOR"):
        cfg.actor(None, {})
    # without default_actor_from, $USER is not consulted
    with pytest.raises(OpsError, match="no actor"):
        OpsConfig(default_actor_from=None).actor(None, {"USER": "carol"})


def test_roles_are_checked_per_command():
    OPS.require("alice", "release")
    OPS.require("bob", "override")
    OPS.require("bob", "rollback")
    with pytest.raises(RoleError, match="override: alice needs the role 'approver' \\(has: ops\\)"):
        OPS.require("alice", "override")
    with pytest.raises(RoleError, match="release: mallory needs the role 'ops' \\(has: no role\\)"):
        OPS.require("mallory", "release")
    with pytest.raises(RoleError, match="no roles are configured; add ops.roles"):
        OpsConfig().require("alice", "list")


# --- list and show -----------------------------------------------------------------------------


def test_list_shows_each_quarantined_order_with_its_check(wh):
    rows = list_quarantine(wh)
    got = {r["external_id"]: [c["check"] for c in r["checks"]] for r in rows}
    assert got == {ext: [check] for ext, check in SEEDED.items() if check}
    qty = next(r for r in rows if r["external_id"] == "qty-zero")
    assert qty["checks"][0]["value"] == "line 2 qty 0.000" or qty["checks"][0]["value"].startswith(
        "line 2 qty 0")
    assert qty["order_status"] == "quarantined" and qty["total"] == Decimal("20.00")

    assert [r["external_id"] for r in list_quarantine(wh, check="sku_known")] == ["sku-unknown"]
    assert list_quarantine(wh, source="shop") == []
    assert len(list_quarantine(wh, source="crm")) == 5
    assert list_quarantine(wh, status="released") == []
    with pytest.raises(OpsError, match="--status: 'closed' is not one of"):
        list_quarantine(wh, status="closed")


def test_show_has_lines_checks_and_events(wh):
    data = show_order(wh, "crm:price-off")
    assert data["order"]["status"] == "quarantined"
    assert [(ln["line_no"], ln["sku"], ln["unit_price"]) for ln in data["lines"]] == [
        (1, "SKU-1", Decimal("12.0000"))]
    assert [(c["check_id"], c["status"]) for c in data["checks"]] == [("price_matches_list", "open")]
    assert "vs list 10" in data["checks"][0]["value"]
    assert [(e["from_state"], e["to_state"]) for e in data["events"]] == [("captured", "quarantined")]
    assert data["actions"] == [] and data["pushes"] == []
    # the same order by id and by order number
    assert show_order(wh, str(data["order"]["id"]))["order"]["external_id"] == "price-off"
    assert show_order(wh, "NO-price-off")["order"]["external_id"] == "price-off"
    with pytest.raises(OpsError, match="no order 'NO-nothing'"):
        show_order(wh, "NO-nothing")
    with pytest.raises(OpsError, match="no order with id 999999"):
        show_order(wh, "999999")


# --- release -----------------------------------------------------------------------------------


def test_release_rechecks_at_once_and_the_order_continues(wh):
    # the cause is fixed elsewhere: the customer master now knows C00009
    with wh.begin() as conn:
        conn.execute(insert(s.customers).values(
            code="C00009", email="z@example.com", region="east", source="crm", external_id="9",
            content_hash="h", run_id=RUN0))
    before = _counts(wh)
    result = release(wh, OPS, "alice", ["NO-unknown-customer"], "customer C00009 added to CRM",
                     recheck=gate_recheck(SPECS))
    assert result.recheck_error is None
    assert [(o["label"].split(" ")[1], o["status"]) for o in result.orders] == [
        ("(crm", "validated")]
    assert _status(wh)["unknown-customer"] == "validated"
    assert _q_rows(wh, "unknown-customer") == {"customer_known": "released"}
    (action,) = _actions(wh, "unknown-customer")
    assert (action["action"], action["actor"], action["reason"]) == (
        "release", "alice", "customer C00009 added to CRM")
    assert action["detail"] == {"checks": ["customer_known"], "from": "quarantined",
                                "to": "captured"}
    assert action["run_id"] == result.run_id
    events = _events(wh, "unknown-customer")
    assert events[1:] == [
        ("quarantined", "captured", "release by alice: customer C00009 added to CRM",
         result.run_id),
        ("captured", "validated", "passed the quality gate", result.run_id),
    ]
    with wh.connect() as conn:
        run = conn.execute(select(s.runs).where(s.runs.c.id == result.run_id)).mappings().one()
    assert (run["flow"], run["status"]) == ("quarantine", "completed")
    assert run["summary"]["action"] == "release" and run["summary"]["recheck"]["validated"] == 1
    after = _counts(wh)
    assert after["ops_actions"] - before["ops_actions"] == 1
    assert after["runs"] - before["runs"] == 1
    assert after["order_events"] - before["order_events"] == 2

    # "continues": the next allocate stage takes it on, with the clean order
    counts = allocate.allocate(wh, RUN0, RULES)
    assert counts["allocated"] == 2
    assert _status(wh)["unknown-customer"] == "allocated"


def test_release_of_an_order_whose_cause_remains_quarantines_it_again(wh):
    result = release(wh, OPS, "alice", ["crm:price-off", "crm:sku-unknown"], "try again",
                     recheck=gate_recheck(SPECS))
    got = {o["label"].split(" ")[-1].rstrip(")"): (o["status"], [c["check"] for c in o["open_checks"]])
           for o in result.orders}
    assert got == {"NO-price-off": ("quarantined", ["price_matches_list"]),
                   "NO-sku-unknown": ("quarantined", ["sku_known"])}
    # the gate reopened the rows under the release's run; both actions are on record
    assert _q_rows(wh, "price-off") == {"price_matches_list": "open"}
    assert [a["action"] for a in _actions(wh, "price-off")] == ["release"]
    assert [e[:2] for e in _events(wh, "price-off")] == [
        ("captured", "quarantined"), ("quarantined", "captured"), ("captured", "quarantined")]


def test_release_without_recheck_leaves_the_order_for_the_next_gate(wh):
    result = release(wh, OPS, "alice", ["crm:no-region"], "region backfilled")
    assert result.recheck is None and result.orders[0]["status"] == "captured"
    assert _status(wh)["no-region"] == "captured"


def test_release_held_judges_each_order_on_its_own(engine):
    policy = GatePolicy(hold_percent=Decimal("20"), min_batch=2)
    _seed(engine, policy)
    assert set(_status(engine).values()) == {"held"}
    with pytest.raises(RoleError):
        release_held_orders(engine, OpsConfig(roles={"carol": frozenset({"approver"})}), "carol",
                            "x", recheck=gate_recheck(SPECS, policy))
    with pytest.raises(OpsError, match="release-held: no held orders from shop; nothing"):
        release_held_orders(engine, OPS, "alice", "x", source="shop")
    result = release_held_orders(engine, OPS, "alice", "price list reloaded", source="crm",
                                 recheck=gate_recheck(SPECS, policy))
    assert {o["label"].split()[-1].rstrip(")"): o["status"] for o in result.orders} == {
        "NO-clean": "validated", "NO-unknown-customer": "quarantined",
        "NO-qty-zero": "quarantined", "NO-price-off": "quarantined",
        "NO-sku-unknown": "quarantined", "NO-no-region": "quarantined"}
    with engine.connect() as conn:
        acts = conn.execute(select(s.ops_actions.c.action, s.ops_actions.c.actor, func.count())
                            .where(s.ops_actions.c.run_id == result.run_id)
                            .group_by(s.ops_actions.c.action, s.ops_actions.c.actor)).all()
    assert [tuple(a) for a in acts] == [("release_held", "alice", 6)]


# --- fix ---------------------------------------------------------------------------------------


def test_fix_a_line_recomputes_amount_total_and_hash_then_validates(wh):
    oid = _id(wh, "qty-zero")
    with wh.connect() as conn:
        content_hash = conn.execute(select(s.orders.c.content_hash)
                                    .where(s.orders.c.id == oid)).scalar_one()
    spec = FixSpec.parse([(2, "qty=3")])
    result = fix(wh, OPS, "alice", str(oid), spec, "customer confirmed 3 units by phone",
                 recheck=gate_recheck(SPECS))
    assert result.orders[0]["status"] == "validated"
    with wh.connect() as conn:
        order = conn.execute(select(s.orders).where(s.orders.c.id == oid)).mappings().one()
        lines = conn.execute(select(s.order_lines.c.line_no, s.order_lines.c.qty,
                                    s.order_lines.c.amount, s.order_lines.c.run_id)
                             .where(s.order_lines.c.order_id == oid)
                             .order_by(s.order_lines.c.line_no)).all()
    assert [(n, q, a) for n, q, a, _ in lines] == [
        (1, Decimal("2"), Decimal("20.00")), (2, Decimal("3"), Decimal("60.00"))]
    assert lines[1].run_id == result.run_id and lines[0].run_id == RUN0
    assert order["total"] == Decimal("80.00")  # 20.00 + (80.00 - 20.00)
    assert order["lines_hash"] == lines_hash([
        {"sku": "SKU-1", "qty": Decimal(2), "unit_price": Decimal("10")},
        {"sku": "SKU-2", "qty": Decimal(3), "unit_price": Decimal("20")}])
    assert order["content_hash"] == content_hash  # the source's fingerprint stays
    (action,) = _actions(wh, "qty-zero")
    assert action["action"] == "fix" and action["actor"] == "alice"
    detail = action["detail"]
    assert detail["lines"] == [{"line_no": 2,
                                "before": {"sku": "SKU-2", "qty": "0.000", "unit_price": "20.0000",
                                           "amount": "0.00"},
                                "after": {"sku": "SKU-2", "qty": "3", "unit_price": "20.0000",
                                          "amount": "60.00"}}]
    assert detail["before"]["total"] == "20.00" and detail["after"]["total"] == "80.00"
    assert detail["checks"] == ["qty_positive"]
    assert _q_rows(wh, "qty-zero") == {"qty_positive": "released"}
    assert [e[:3] for e in _events(wh, "qty-zero")][1] == (
        "quarantined", "captured", "fix by alice: customer confirmed 3 units by phone")


def test_fix_an_order_field_and_a_customer_code(wh):
    result = fix(wh, OPS, "alice", "crm:no-region", FixSpec.parse([(None, "ship_region=east")]),
                 "region from the delivery note", recheck=gate_recheck(SPECS))
    assert result.orders[0]["status"] == "validated"
    # a code fix clears the resolved customer so the re-check resolves it again
    result = fix(wh, OPS, "alice", "crm:unknown-customer",
                 FixSpec.parse([(None, "customer_code=C00001")]), "typo in the code",
                 recheck=gate_recheck(SPECS))
    assert result.orders[0]["status"] == "validated"
    with wh.connect() as conn:
        cid = conn.execute(select(s.orders.c.customer_id)
                           .where(s.orders.c.external_id == "unknown-customer")).scalar_one()
    assert cid is not None
    (action,) = _actions(wh, "unknown-customer")
    assert action["detail"]["before"] == {"customer_code": "C00009", "customer_id": None}
    assert action["detail"]["after"] == {"customer_code": "C00001", "customer_id": None}


def test_fix_refusals_write_nothing(wh):
    before = _counts(wh)
    cases = [
        (lambda: FixSpec.parse([(None, "qty=3")]),
         "--set qty: not a field that can be fixed (fixable: customer_code"),
        (lambda: FixSpec.parse([(1, "total=3")]), "--line 1 --set total: not a field"),
        (lambda: FixSpec.parse([(1, "qty=three")]), "--line 1 --set qty: 'three' is not a number"),
        (lambda: FixSpec.parse([(None, "currency=EURO")]), "--set currency: 'EURO' is not a three"),
        (lambda: FixSpec.parse([]), "fix: nothing to change"),
        (lambda: fix(wh, OPS, "alice", "crm:qty-zero", FixSpec.parse([(7, "qty=1")]), "x"),
         "fix: 3 (crm NO-qty-zero) has no line 7 (lines: 1, 2); nothing was written"),
        (lambda: fix(wh, OPS, "alice", "crm:qty-zero", FixSpec.parse([(2, "qty=0")]), "x"),
         "already holds these values"),
        (lambda: fix(wh, OPS, "alice", "crm:clean", FixSpec.parse([(1, "qty=1")]), "x"),
         "fix: only a quarantined order can be fixed: 1 (crm NO-clean) is validated"),
        (lambda: fix(wh, OPS, "alice", "crm:qty-zero", FixSpec.parse([(2, "qty=1")]), "  "),
         "fix: a reason is required"),
    ]
    for call, message in cases:
        with pytest.raises(OpsError) as err:
            call()
        assert message in str(err.value), str(err.value)
    assert _counts(wh) == before


# --- override and reject -----------------------------------------------------------------------


def test_override_needs_an_approver_and_writes_nothing_without(wh):
    before = _counts(wh)
    with pytest.raises(RoleError, match="override: alice needs the role 'approver'"):
        override(wh, OPS, "alice", ["crm:price-off"], "agreed price")
    assert _counts(wh) == before and _status(wh)["price-off"] == "quarantined"

    result = override(wh, OPS, "bob", ["crm:price-off"], "agreed discount, mail of 2 Nov")
    assert result.orders[0]["status"] == "validated"
    assert _q_rows(wh, "price-off") == {"price_matches_list": "overridden"}
    (action,) = _actions(wh, "price-off")
    assert (action["action"], action["actor"], action["detail"]) == (
        "override", "bob", {"checks": ["price_matches_list"], "from": "quarantined",
                            "to": "validated"})
    assert _events(wh, "price-off")[-1][:3] == (
        "quarantined", "validated", "override by bob: agreed discount, mail of 2 Nov")
    after = _counts(wh)
    assert (after["runs"] - before["runs"], after["ops_actions"] - before["ops_actions"]) == (1, 1)
    # an overridden order continues like any validated one
    allocate.allocate(wh, RUN0, RULES)
    assert _status(wh)["price-off"] == "allocated"


def test_reject_is_final(wh):
    reject(wh, OPS, "alice", ["crm:sku-unknown"], "product discontinued")
    assert _status(wh)["sku-unknown"] == "rejected"
    assert _q_rows(wh, "sku-unknown") == {"sku_known": "rejected"}
    before = _counts(wh)
    with pytest.raises(OpsError, match="only a quarantined order can be released: .* is rejected"):
        release(wh, OPS, "alice", ["crm:sku-unknown"], "oops")
    with pytest.raises(OpsError, match="only a quarantined order can be rejected: .*is validated"):
        reject(wh, OPS, "alice", ["crm:clean"], "x")
    assert _counts(wh) == before


def test_one_order_in_the_wrong_state_refuses_the_whole_command(wh):
    before = _counts(wh)
    with pytest.raises(OpsError, match="1 \\(crm NO-clean\\) is validated; nothing was written"):
        reject(wh, OPS, "alice", ["crm:sku-unknown", "crm:clean"], "cleanup")
    assert _counts(wh) == before and _status(wh)["sku-unknown"] == "quarantined"


def test_find_order_names_an_ambiguous_number(wh):
    with wh.begin() as conn:
        conn.execute(insert(s.orders).values(**{
            k: v for k, v in _order("other").items() if k != "lines"} | {
            "source": "shop", "order_no": "NO-clean", "status": "captured"}))
        with pytest.raises(OpsError, match="order number 'NO-clean' is ambiguous"):
            find_order(conn, "NO-clean")


# --- the command ------------------------------------------------------------------------------


def _config(tmp_path: Path, url: str, roles: dict | None = None) -> Path:
    raw = {
        "warehouse": {"url": url},
        "sources": {"crm": {"system": "jiandaoyun", "base_url": "http://127.0.0.1:9",
                            "roles": ["orders"]}},
        "checks": SUITE,
        "ops": {"roles": roles if roles is not None else {"alice": ["ops"],
                                                           "bob": ["ops", "approver"]}},
    }
    path = tmp_path / "orderhub.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_list_release_and_a_refusal(sqlite_engine, sqlite_url, tmp_path, capsys):
    _seed(sqlite_engine)
    config = str(_config(tmp_path, sqlite_url))
    assert main(["quarantine", "list", "--config", config, "--actor", "alice"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ORDER", "SOURCE", "NUMBER", "STATUS", "CUSTOMER",
                                           "TOTAL", "SINCE", "CHECKS"]
    assert "NO-qty-zero" in out and "qty_positive: line 2 qty 0" in out and "5 order(s)" in out

    assert main(["quarantine", "show", "crm:qty-zero", "--config", config, "--actor", "alice"]) == 0
    out = capsys.readouterr().out
    assert "[quarantined]" in out and "qty_positive" in out and "captured" in out

    before = _counts(sqlite_engine)
    assert main(["quarantine", "override", "crm:price-off", "--reason", "ok", "--config", config,
                 "--actor", "alice"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("orderhub: error: override: alice needs the role 'approver' (has: ops); "
                   "nothing was written")
    assert _counts(sqlite_engine) == before

    assert main(["quarantine", "fix", "crm:qty-zero", "--line", "2", "--set", "qty=3", "--reason",
                 "confirmed", "--config", config, "--actor", "alice"]) == 0
    out = capsys.readouterr().out
    assert "fixed 1 order(s) as alice" in out
    assert "(crm NO-qty-zero): validated: the next allocate stage takes it on" in out

    assert main(["quarantine", "release", "crm:price-off", "--reason", "retry", "--config", config,
                 "--actor", "alice"]) == 0
    out = capsys.readouterr().out
    assert "(crm NO-price-off): quarantined again: price_matches_list: unit price differs" in out


def test_cli_without_roles_configured_refuses(sqlite_engine, sqlite_url, tmp_path, capsys):
    _seed(sqlite_engine)
    config = str(_config(tmp_path, sqlite_url, roles={}))
    assert main(["quarantine", "reject", "crm:sku-unknown", "--reason", "x", "--config", config,
                 "--actor", "alice"]) == 1
    err = capsys.readouterr().err
    assert "reject: no roles are configured; add ops.roles to orderhub.yaml" in err
    assert _status(sqlite_engine)["sku-unknown"] == "quarantined"
