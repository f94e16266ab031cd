"""Allocation: the pure rules (no database), then allocate() on a small seeded warehouse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from sqlalchemy import func, insert, select, update

from warehouse import schema as s
from warehouse.allocate import allocate
from warehouse.allocation_rules import (
    LineNeed,
    Rule,
    RuleConfigError,
    choose,
    validate_rules,
)

RULES = [
    {"id": "home_region", "warehouse_in": "customer_region", "require_stock": True},
    {"id": "any_stock", "require_stock": True},
    {"id": "backorder"},
]
RUN = "00000000-0000-4000-8000-000000000001"
RUN2 = "00000000-0000-4000-8000-000000000002"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
REGIONS = {"WH-E1": "east", "WH-E2": "east", "WH-W": "west"}


# --- validate_rules -----------------------------------------------------------------------------


def test_validate_rules_parses_the_default_rules():
    assert validate_rules(RULES) == [
        Rule("home_region", True, "customer_region"),
        Rule("any_stock", True, None),
        Rule("backorder", False, None),
    ]


@pytest.mark.parametrize(
    "rules, message",
    [
        ([], "allocation.rules: expected a non-empty list"),
        ({"id": "x"}, "allocation.rules: expected a non-empty list"),
        (["backorder"], "allocation.rules[0]: expected a mapping"),
        ([{"require_stock": True}], "allocation.rules[0]: 'id' is required"),
        ([{"id": "any", "require_stok": True}],
         "allocation.rules[0] (any): unknown key 'require_stok' (allowed: id, require_stock, "
         "warehouse_in)"),
        ([{"id": "a", "require_stock": True}, {"id": "a"}],
         "allocation.rules[1] (a): duplicate rule id 'a'"),
        ([{"id": "a", "require_stock": "yes"}], "allocation.rules[0] (a): 'require_stock' must"),
        ([{"id": "h", "warehouse_in": "planet", "require_stock": True}],
         "allocation.rules[0] (h): 'warehouse_in' must be one of customer_region, got 'planet'"),
        ([{"id": "h", "warehouse_in": "customer_region"}],
         "allocation.rules[0] (h): 'warehouse_in' needs 'require_stock: true'"),
        ([{"id": "backorder"}, {"id": "any", "require_stock": True}],
         "allocation.rules[1] (any): unreachable, rule 'backorder' before it takes every line"),
    ],
)
def test_validate_rules_names_the_bad_rule_and_key(rules, message):
    with pytest.raises(RuleConfigError) as err:
        validate_rules(rules)
    assert str(err.value).startswith(message)


# --- choose -------------------------------------------------------------------------------------

PARSED = validate_rules(RULES)


def _choose(sku_stock, qty="2", ship="east", customer=None, rules=PARSED):
    need = LineNeed("SKU-A", D(qty), ship_region=ship, customer_region=customer)
    return choose(need, {w: D(q) for w, q in sku_stock.items()}, REGIONS, rules)


def test_home_region_takes_the_ship_region_warehouse_with_most_stock():
    d = _choose({"WH-E1": "5", "WH-E2": "8", "WH-W": "100"})
    assert (d.rule_id, d.warehouse, d.qty) == ("home_region", "WH-E2", D("2"))
    assert d.inputs == {"qty": "2", "region": "east", "region_from": "ship_region",
                        "candidates": {"WH-E1": "5", "WH-E2": "8"}}


def test_home_region_tie_on_stock_goes_to_the_lower_code():
    assert _choose({"WH-E2": "8", "WH-E1": "8"}).warehouse == "WH-E1"


def test_home_region_falls_back_to_the_customer_region_without_ship_region():
    d = _choose({"WH-E1": "5", "WH-W": "3"}, ship=None, customer="west")
    assert (d.rule_id, d.warehouse) == ("home_region", "WH-W")
    assert d.inputs["region_from"] == "customer_region"


def test_a_line_is_never_split_other_region_then_backorder():
    # east has 1 + 1: not enough in one warehouse for 2, so another region fills it
    d = _choose({"WH-E1": "1", "WH-E2": "1", "WH-W": "2"})
    assert (d.rule_id, d.warehouse) == ("any_stock", "WH-W")
    assert d.inputs["skipped"] == ["home_region"]
    d = _choose({"WH-E1": "1", "WH-W": "1"})
    assert (d.rule_id, d.warehouse, d.qty) == ("backorder", None, D("2"))
    assert d.backordered and d.inputs["skipped"] == ["home_region", "any_stock"]
    assert d.inputs["available"] == {"WH-E1": "1", "WH-W": "1"}


def test_any_stock_ties_by_most_available_then_code_and_unknown_region_is_no_home():
    d = _choose({"WH-W": "9", "WH-X": "9"}, ship=None, customer=None)
    assert (d.rule_id, d.warehouse) == ("any_stock", "WH-W")
    assert d.inputs["skipped"] == ["home_region"]  # no region known: no home warehouse


def test_no_catch_all_rule_means_no_decision():
    assert _choose({"WH-W": "1"}, rules=PARSED[:2]) is None


# --- allocate() on a seeded warehouse -----------------------------------------------------------


def _seed_masters(conn) -> dict[str, int]:
    conn.execute(insert(s.warehouses), [{"code": w, "region": r, "run_id": RUN}
                                        for w, r in REGIONS.items()])
    stock = [("SKU-A", "WH-E1", 5), ("SKU-A", "WH-E2", 8), ("SKU-A", "WH-W", 100),
             ("SKU-B", "WH-W", 3), ("SKU-C", "WH-E1", 0)]
    conn.execute(insert(s.stock), [
        {"sku": k, "warehouse": w, "on_hand": D(q), "reserved": D(0), "source": "erp",
         "content_hash": "h", "run_id": RUN} for k, w, q in stock])
    ids = {}
    for code, region in (("C-EAST", "east"), ("C-WEST", "west")):
        ids[code] = conn.execute(insert(s.customers).values(
            code=code, region=region, source="crm", external_id=code, content_hash="h",
            run_id=RUN)).inserted_primary_key[0]
    return ids


def add_order(conn, ext, lines, *, status="validated", customer_id=None, ship_region=None,
              at=T0, source="shop", currency="CNY") -> int:
    total = sum((D(q) * D("10") for _, q in lines), D(0))
    oid = conn.execute(insert(s.orders).values(
        source=source, external_id=ext, order_no=f"#{ext}", customer_id=customer_id,
        ordered_at=at, currency=currency, total=total, ship_region=ship_region, status=status,
        content_hash="h", captured_at=T0, run_id=RUN)).inserted_primary_key[0]
    if lines:
        conn.execute(insert(s.order_lines), [
            {"order_id": oid, "line_no": n, "sku": sku, "qty": D(q), "unit_price": D("10"),
             "amount": D(q) * D("10"), "run_id": RUN} for n, (sku, q) in enumerate(lines, 1)])
    return oid


@pytest.fixture
def seeded(engine):
    with engine.begin() as conn:
        c = _seed_masters(conn)
        ids = {
            "o1": add_order(conn, "1", [("SKU-A", "2"), ("SKU-B", "1")],
                            customer_id=c["C-EAST"], ship_region="east"),
            # no ship region: the customer's region (west) is home
            "o2": add_order(conn, "2", [("SKU-A", "10")], customer_id=c["C-WEST"],
                            at=T0 + timedelta(minutes=5)),
            "o3": add_order(conn, "3", [("SKU-C", "1"), ("SKU-A", "1")],
                            customer_id=c["C-EAST"], ship_region="east",
                            at=T0 + timedelta(minutes=10)),
            # inserted last but ordered first: it gets the scarce SKU-B before o1
            "o4": add_order(conn, "4", [("SKU-B", "3")], customer_id=c["C-WEST"],
                            ship_region="west", at=T0 - timedelta(hours=1)),
            "captured": add_order(conn, "5", [("SKU-A", "1")], status="captured"),
        }
    return ids


def _state(engine):
    with engine.connect() as conn:
        status = dict(conn.execute(select(s.orders.c.id, s.orders.c.status)).all())
        allocs = {
            (oid, line_no): (rule, wh, qty, st)
            for oid, line_no, rule, wh, qty, st in conn.execute(
                select(s.order_lines.c.order_id, s.order_lines.c.line_no, s.allocations.c.rule_id,
                       s.allocations.c.warehouse, s.allocations.c.qty, s.allocations.c.status)
                .join(s.allocations, s.allocations.c.order_line_id == s.order_lines.c.id))
        }
        reserved = {(k, w): r for k, w, r in conn.execute(
            select(s.stock.c.sku, s.stock.c.warehouse, s.stock.c.reserved)) if r}
        events = conn.execute(select(func.count()).select_from(s.order_events)).scalar_one()
        n_allocs = conn.execute(select(func.count()).select_from(s.allocations)).scalar_one()
    return status, allocs, reserved, events, n_allocs


def test_allocate_exact_outcome_then_rerun_allocates_nothing(engine, seeded):
    o = seeded
    result = allocate(engine, RUN, RULES)
    assert result == {"allocated": 2, "backordered": 2,
                      "lines_by_rule": {"backorder": 2, "home_region": 4},
                      "skipped": 0, "unallocated": 0}
    status, allocs, reserved, events, _ = _state(engine)
    assert status == {o["o1"]: "backordered", o["o2"]: "allocated", o["o3"]: "backordered",
                      o["o4"]: "allocated", o["captured"]: "captured"}
    assert allocs == {
        (o["o4"], 1): ("home_region", "WH-W", D("3"), "allocated"),
        (o["o1"], 1): ("home_region", "WH-E2", D("2"), "allocated"),  # most stock in the east
        (o["o1"], 2): ("backorder", None, D("1"), "backordered"),  # o4 took all of SKU-B
        (o["o2"], 1): ("home_region", "WH-W", D("10"), "allocated"),
        (o["o3"], 1): ("backorder", None, D("1"), "backordered"),
        (o["o3"], 2): ("home_region", "WH-E2", D("1"), "allocated"),  # E2 6 left > E1 5
    }
    assert reserved == {("SKU-A", "WH-E2"): D("3"), ("SKU-A", "WH-W"): D("10"),
                        ("SKU-B", "WH-W"): D("3")}
    assert events == 4
    with engine.connect() as conn:
        inputs, run_id = conn.execute(
            select(s.allocations.c.rule_inputs, s.allocations.c.run_id)
            .join(s.order_lines, s.order_lines.c.id == s.allocations.c.order_line_id)
            .where(s.order_lines.c.order_id == o["o1"], s.order_lines.c.line_no == 1)).one()
    assert run_id == RUN
    assert inputs == {"qty": "2.000", "region": "east", "region_from": "ship_region",
                      "candidates": {"WH-E1": "5.000", "WH-E2": "8.000"}}

    before = _state(engine)
    assert allocate(engine, RUN2, RULES) == {"allocated": 0, "backordered": 0,
                                             "lines_by_rule": {}, "skipped": 0,
                                             "unallocated": 0}
    assert _state(engine) == before


def test_backordered_lines_are_allocated_when_stock_arrives(engine, seeded):
    o = seeded
    allocate(engine, RUN, RULES)
    with engine.begin() as conn:
        conn.execute(update(s.stock).where(s.stock.c.sku == "SKU-B").values(on_hand=D("10")))
        conn.execute(update(s.stock).where(s.stock.c.sku == "SKU-C").values(on_hand=D("5")))
    result = allocate(engine, RUN2, RULES)
    assert result == {"allocated": 2, "backordered": 0,
                      "lines_by_rule": {"any_stock": 1, "home_region": 1},
                      "skipped": 0, "unallocated": 0}
    status, allocs, reserved, events, n_allocs = _state(engine)
    assert status[o["o1"]] == status[o["o3"]] == "allocated"
    assert allocs[(o["o1"], 2)] == ("any_stock", "WH-W", D("1"), "allocated")
    assert allocs[(o["o3"], 1)] == ("home_region", "WH-E1", D("1"), "allocated")
    assert n_allocs == 6  # the backorder rows became allocated in place: one row per line
    assert reserved[("SKU-B", "WH-W")] == D("4") and reserved[("SKU-C", "WH-E1")] == D("1")
    assert events == 6
    with engine.connect() as conn:
        moved = conn.execute(select(s.order_events.c.from_state, s.order_events.c.to_state)
                             .where(s.order_events.c.run_id == RUN2)).all()
    assert sorted(moved) == [("backordered", "allocated")] * 2
    before = _state(engine)
    assert allocate(engine, RUN2, RULES)["lines_by_rule"] == {}
    assert _state(engine) == before


def test_an_order_no_rule_can_place_is_left_whole(engine):
    with engine.begin() as conn:
        _seed_masters(conn)
        # line 1 could be placed, line 2 cannot (no catch-all rule): nothing of it is written
        oid = add_order(conn, "9", [("SKU-A", "1"), ("SKU-C", "1")], ship_region="east")
        bad = add_order(conn, "10", [("SKU-A", "0")], ship_region="east")
        empty = add_order(conn, "11", [])
    result = allocate(engine, RUN, RULES[:2])
    assert result["unallocated"] == 1 and result["skipped"] == 2
    status, allocs, reserved, events, _ = _state(engine)
    assert status == {oid: "validated", bad: "validated", empty: "validated"}
    assert allocs == {} and reserved == {} and events == 0


def test_a_bad_rules_list_fails_before_anything_is_written(engine, seeded):
    with pytest.raises(RuleConfigError, match="unknown key 'warehouse'"):
        allocate(engine, RUN, [{"id": "x", "warehouse": "WH-E1"}])
    assert _state(engine)[3:] == (0, 0)
