"""Allocation rules, priority and owners as pure functions: no database, exact outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml

from warehouse.allocation_rules import (
    AllocationConfig,
    LineIn,
    LineNeed,
    OrderIn,
    Pick,
    PriorityKey,
    Rule,
    RuleConfigError,
    choose,
    decide,
    plan_orders,
    steps_label,
    validate_rules,
)
from warehouse.owners import OwnerDecision, OwnerNeed, OwnersConfig, assign_owners, parse_owners

ROOT = Path(__file__).resolve().parents[1]
RULES = [
    {"id": "home_region", "warehouse_in": "customer_region", "require_stock": True},
    {"id": "any_stock", "require_stock": True},
    {"id": "backorder"},
]
FULL_RULES = [
    RULES[0], RULES[1],
    {"id": "split", "split": True, "max_warehouses": 2},
    {"id": "partial", "partial": True},
    {"id": "backorder"},
]
REGIONS = {"WH-E1": "east", "WH-E2": "east", "WH-W": "west", "WH-N": "north"}
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
OWNERS = {"territories": {"east": "team_east", "west": "team_west"},
          "teams": {"team_east": ["alice", "bob"], "team_west": ["wendy"]},
          "default_team": "team_east"}


# --- configuration ------------------------------------------------------------------------------


def test_the_shipped_orderhub_yaml_parses_to_exactly_this():
    section = yaml.safe_load((ROOT / "orderhub.yaml").read_text())["allocation"]
    cfg = AllocationConfig.from_config(section)
    assert cfg.rules == (
        Rule("home_region", require_stock=True, warehouse_in="customer_region"),
        Rule("any_stock", require_stock=True),
        Rule("split", require_stock=True, split=True, max_warehouses=2),
        Rule("partial", partial=True),
        Rule("backorder"),
    )
    assert cfg.priority == (PriorityKey("customer_group", ("vip", "wholesale", "retail")),
                            PriorityKey("ordered_at"))
    assert cfg.owners is not None and cfg.owners.default_team == "team_east"
    assert cfg.owners.territories["west"] == "team_west"


def test_defaults_and_a_bare_rules_list():
    assert AllocationConfig.from_config(None) == AllocationConfig((Rule("backorder"),))
    assert AllocationConfig.from_config({}) == AllocationConfig((Rule("backorder"),))
    bare = AllocationConfig.from_config(RULES)
    assert bare.rules == tuple(validate_rules(RULES)) and bare.priority == () and bare.owners is None


@pytest.mark.parametrize(
    "section, message",
    [
        ("nope", "allocation: expected a mapping with rules, priority, owners"),
        ({"rule": []}, "allocation.rule: unknown key (allowed: rules, priority, owners)"),
        ({"rules": []}, "allocation.rules: expected a non-empty list of rules"),
        ({"rules": ["backorder"]}, "allocation.rules[0]: expected a mapping"),
        ({"rules": [{"require_stock": True}]}, "allocation.rules[0]: 'id' is required"),
        ({"rules": [{"id": "any", "require_stok": True}]},
         "allocation.rules[0] (any): unknown key 'require_stok' (allowed: id, require_stock, "
         "warehouse_in, split, partial, max_warehouses)"),
        ({"rules": [{"id": "a", "require_stock": True}, {"id": "a"}]},
         "allocation.rules[1] (a): duplicate rule id 'a'"),
        ({"rules": [{"id": "a", "require_stock": "yes"}]},
         "allocation.rules[0] (a): 'require_stock' must be true or false"),
        ({"rules": [{"id": "h", "warehouse_in": "planet", "require_stock": True}]},
         "allocation.rules[0] (h): 'warehouse_in' must be one of customer_region, got 'planet'"),
        ({"rules": [{"id": "h", "warehouse_in": "customer_region"}]},
         "allocation.rules[0] (h): 'warehouse_in' needs 'require_stock: true' (or split / partial)"),
        ({"rules": [{"id": "s", "split": True, "partial": True}]},
         "allocation.rules[0] (s): 'split' and 'partial' exclude each other"),
        ({"rules": [{"id": "p", "partial": True, "require_stock": True}]},
         "allocation.rules[0] (p): 'partial' places what there is: drop 'require_stock'"),
        ({"rules": [{"id": "s", "split": True, "require_stock": False}]},
         "allocation.rules[0] (s): 'split' fills the whole line from stock"),
        ({"rules": [{"id": "s", "split": True, "max_warehouses": 1}]},
         "allocation.rules[0] (s): 'max_warehouses' must be a whole number >= 2"),
        ({"rules": [{"id": "s", "split": True, "max_warehouses": "3"}]},
         "allocation.rules[0] (s): 'max_warehouses' must be a whole number >= 2"),
        ({"rules": [{"id": "p", "partial": True, "max_warehouses": 2}]},
         "allocation.rules[0] (p): 'max_warehouses' needs 'split: true'"),
        ({"rules": [{"id": "backorder"}, {"id": "any", "require_stock": True}]},
         "allocation.rules[1] (any): unreachable, rule 'backorder' before it takes every line"),
        # a split takes one warehouse when one can: a one-warehouse rule after it never fires
        ({"rules": [{"id": "split", "split": True}, {"id": "any", "require_stock": True}]},
         "allocation.rules[1] (any): unreachable, rule 'split' before it places every line this "
         "one could"),
        ({"rules": [{"id": "p", "partial": True}, {"id": "s", "split": True}]},
         "allocation.rules[1] (s): unreachable, rule 'p' before it places every line"),
        ({"priority": "ordered_at"}, "allocation.priority: expected a list"),
        ({"priority": [{"by": "tier"}]},
         "allocation.priority[0]: 'by' must be one of customer_group, source, ship_region, "
         "ordered_at, got 'tier'"),
        ({"priority": [{"by": "customer_group"}]},
         "allocation.priority[0] (customer_group): 'order' must be a non-empty list"),
        ({"priority": [{"by": "ordered_at", "order": ["new"]}]},
         "allocation.priority[0] (ordered_at): 'order' is not used with ordered_at"),
        ({"priority": [{"by": "ordered_at"}, {"by": "ordered_at"}]},
         "allocation.priority[1] (ordered_at): ordered_at is listed twice"),
        ({"priority": [{"by": "source", "order": ["a"], "desc": True}]},
         "allocation.priority[0]: unknown key 'desc' (allowed: by, order)"),
        ({"owners": ["alice"]}, "allocation.owners: expected a mapping with territories"),
        ({"owners": {"teams": {}}}, "allocation.owners.teams: expected a non-empty mapping"),
        ({"owners": {"teams": {"t": []}, "default_team": "t"}},
         "allocation.owners.teams.t: expected a non-empty list of owner names"),
        ({"owners": {"teams": {"t": ["a", "a"]}, "default_team": "t"}},
         "allocation.owners.teams.t: 'a' is listed twice"),
        ({"owners": {"teams": {"t": ["a"]}, "territories": {"east": "x"}}},
         "allocation.owners.territories.east: team 'x' is not declared in allocation.owners.teams"),
        ({"owners": {"teams": {"t": ["a"]}, "default_team": "x"}},
         "allocation.owners.default_team: team 'x' is not declared"),
        ({"owners": {"teams": {"t": ["a"]}}},
         "allocation.owners: declare territories, a default_team, or both"),
        ({"owners": {"teams": {"t": ["a"]}, "default_team": "t", "round_robin": True}},
         "allocation.owners.round_robin: unknown key"),
        ({"owners": {"teams": {"t": ["a"]}, "territories": {False: "t"}}},
         "allocation.owners.territories: region False must be a string (quote it)"),
    ],
)
def test_a_bad_section_is_one_line_naming_the_path(section, message):
    with pytest.raises(RuleConfigError) as err:
        AllocationConfig.from_config(section)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


# --- one line: each rule ------------------------------------------------------------------------


def _choose(stock, qty="2", ship="east", customer=None, rules=FULL_RULES):
    need = LineNeed("SKU-A", D(qty), ship_region=ship, customer_region=customer)
    return choose(need, {w: D(q) for w, q in stock.items()}, REGIONS, validate_rules(rules))


def test_home_region_takes_the_ship_region_warehouse_with_most_stock():
    d = _choose({"WH-E1": "5", "WH-E2": "8", "WH-W": "100"})
    assert (d.rule_id, d.picks) == ("home_region", (Pick("WH-E2", D(2)),))
    assert d.inputs == {"qty": "2", "region": "east", "region_from": "ship_region",
                        "candidates": {"WH-E1": "5", "WH-E2": "8"}}
    assert _choose({"WH-E2": "8", "WH-E1": "8"}).picks == (Pick("WH-E1", D(2)),)  # tie: code


def test_home_region_falls_back_to_the_customer_region():
    d = _choose({"WH-E1": "5", "WH-W": "3"}, ship=None, customer="west")
    assert (d.rule_id, d.picks) == ("home_region", (Pick("WH-W", D(2)),))
    assert d.inputs["region_from"] == "customer_region"


def test_any_stock_says_why_home_region_did_not_fire():
    d = _choose({"WH-E1": "1", "WH-E2": "1", "WH-W": "2"})
    assert (d.rule_id, d.picks) == ("any_stock", (Pick("WH-W", D(2)),))
    assert d.inputs == {"qty": "2", "candidates": {"WH-E1": "1", "WH-E2": "1", "WH-W": "2"},
                        "skipped": {"home_region": "no single warehouse holds 2 (most: 1 at WH-E1)"}}
    d = _choose({"WH-W": "9", "WH-N": "9"}, ship=None)
    assert (d.rule_id, d.picks) == ("any_stock", (Pick("WH-N", D(2)),))  # tie: code
    assert d.inputs["skipped"] == {
        "home_region": "no region known (no ship_region, no customer region)"}


def test_split_takes_the_fewest_warehouses_home_region_first_then_most_stock():
    # no single warehouse holds 6: two do; home (east) ones first, the fuller one first
    d = _choose({"WH-E1": "3", "WH-E2": "4", "WH-W": "5"}, qty="6")
    assert (d.rule_id, d.picks) == ("split", (Pick("WH-E2", D(4)), Pick("WH-E1", D(2))))
    assert d.inputs == {
        "qty": "6", "home": "east", "candidates": {"WH-E1": "3", "WH-E2": "4", "WH-W": "5"},
        "max_warehouses": 2,
        "skipped": {"home_region": "no single warehouse holds 6 (most: 4 at WH-E2)",
                    "any_stock": "no single warehouse holds 6 (most: 5 at WH-W)"},
    }
    # 8: the two east warehouses hold only 7, so one home warehouse plus the fullest other
    d = _choose({"WH-E1": "3", "WH-E2": "4", "WH-W": "5"}, qty="8")
    assert d.picks == (Pick("WH-E2", D(4)), Pick("WH-W", D(4)))
    # the fewest wins over home: one remote warehouse rather than two home ones
    d = _choose({"WH-E1": "1", "WH-E2": "1", "WH-W": "5"}, rules=[{"id": "s", "split": True}])
    assert (d.rule_id, d.picks) == ("s", (Pick("WH-W", D(2)),))
    # more than max_warehouses would be needed: split does not fire
    d = _choose({"WH-E1": "2", "WH-E2": "2", "WH-W": "2"}, qty="5")
    assert d.rule_id == "partial"
    assert d.inputs["skipped"]["split"] == "the 2 fullest warehouses hold 4 of 5"
    d = _choose({"WH-E1": "2", "WH-E2": "2", "WH-W": "2"}, qty="5",
                rules=[{"id": "s", "split": True, "max_warehouses": 3}])
    assert d.picks == (Pick("WH-E1", D(2)), Pick("WH-E2", D(2)), Pick("WH-W", D(1)))


def _decide(stock, qty="2", ship="east", rules=FULL_RULES):
    need = LineNeed("SKU-A", D(qty), ship_region=ship)
    return decide(need, {w: D(q) for w, q in stock.items()}, REGIONS, validate_rules(rules))


def test_partial_takes_what_there_is_and_the_rest_goes_back_through_the_rules():
    # one step: everything there is, home region (east) first, then the fullest
    d = _choose({"WH-E1": "1", "WH-W": "3", "WH-N": "0"}, qty="10")
    assert (d.rule_id, d.picks) == ("partial", (Pick("WH-E1", D(1)), Pick("WH-W", D(3))))
    assert not d.backordered and d.label() == "partial: WH-E1 1 + WH-W 3"
    assert d.inputs["skipped"]["split"] == "the 2 fullest warehouses hold 4 of 10"
    # the line: the 6 left go back through the rules at once; nothing is left: a backorder row
    steps = _decide({"WH-E1": "1", "WH-W": "3", "WH-N": "0"}, qty="10")
    assert [(d.rule_id, d.picks) for d in steps] == [
        ("partial", (Pick("WH-E1", D(1)), Pick("WH-W", D(3)))), ("backorder", (Pick(None, D(6)),))]
    assert steps[1].inputs["available"] == {"WH-E1": "0", "WH-N": "0", "WH-W": "0"}
    assert steps_label(steps) == "partial: WH-E1 1 + WH-W 3; backorder: 6 waiting"
    # a home-only partial: the rest is filled from elsewhere by a rule further down, at once
    rules = [{"id": "home_region", "warehouse_in": "customer_region", "require_stock": True},
             {"id": "home_partial", "warehouse_in": "customer_region", "partial": True},
             {"id": "any_stock", "require_stock": True}, {"id": "backorder"}]
    steps = _decide({"WH-E1": "2", "WH-W": "8"}, qty="5", rules=rules)
    assert steps_label(steps) == "home_partial: WH-E1 2; any_stock: WH-W 3"
    assert steps[1].inputs["qty"] == "3" and steps[1].inputs["skipped"] == {
        "home_region": "no stock in any candidate warehouse",
        "home_partial": "no stock in any candidate warehouse"}
    # no catch-all rule: what is left waits under the partial step itself
    steps = _decide({"WH-W": "3"}, qty="5", rules=[{"id": "p", "partial": True}])
    assert [(d.rule_id, d.picks) for d in steps] == [("p", (Pick("WH-W", D(3)), Pick(None, D(2))))]
    assert steps[0].backordered and steps[0].waiting == D(2)
    assert _decide({"WH-W": "0"}, rules=[{"id": "p", "partial": True}]) is None
    assert steps_label(None) == "not placed"


def test_backorder_when_no_stock_anywhere_with_every_reason():
    d = _choose({"WH-E1": "0", "WH-W": "-1"}, qty="3")
    assert (d.rule_id, d.picks, d.label()) == ("backorder", (Pick(None, D(3)),),
                                               "backorder: 3 waiting")
    assert d.inputs == {"qty": "3", "available": {"WH-E1": "0", "WH-W": "-1"}, "skipped": {
        "home_region": "no stock in any candidate warehouse",
        "any_stock": "no stock in any candidate warehouse",
        "split": "no stock in any candidate warehouse",
        "partial": "no stock in any candidate warehouse",
    }}
    assert _choose({}, ship="north", rules=RULES).inputs["skipped"] == {
        "home_region": "no warehouse in scope", "any_stock": "no warehouse in scope"}


def test_no_catch_all_rule_means_no_decision():
    assert _choose({"WH-W": "1"}, rules=RULES[:2]) is None


# --- orders: priority with scarce stock ---------------------------------------------------------


def _order(oid, group, minutes, qty="2", sku="SKU-A", ship="east", status="validated"):
    line = LineIn(oid * 10, 1, sku, D(qty), D(qty))
    return OrderIn(oid, status, (line,), ordered_at=T0 + timedelta(minutes=minutes),
                   ship_region=ship, customer_group=group)


def test_scarce_stock_goes_by_group_then_date_then_id():
    cfg = AllocationConfig.from_config({
        "rules": RULES, "priority": [{"by": "customer_group", "order": ["wholesale", "retail"]},
                                     {"by": "ordered_at"}]})
    work = [_order(1, "retail", 0), _order(2, "wholesale", 20), _order(3, "wholesale", 10),
            _order(4, "retail", 0), _order(5, None, -60), _order(6, "retail", 5)]
    plans = plan_orders(work, {"SKU-A": {"WH-E1": D(5)}}, REGIONS, cfg)
    # wholesale by date (3, 2), then retail by date, ties by id (1, 4, 6), unlisted last (5)
    assert [(p.order.order_id, p.outcome) for p in plans] == [
        (3, "allocated"), (2, "allocated"), (1, "backordered"), (4, "backordered"),
        (6, "backordered"), (5, "backordered")]
    d = plans[0].decisions[0][1][0]
    assert d.inputs["priority"] == {"customer_group": "wholesale",
                                    "ordered_at": "2026-11-01T10:10:00+00:00"}
    # default: oldest first, then id; an order without a date is served last
    plans = plan_orders(work, {"SKU-A": {"WH-E1": D(5)}}, REGIONS, AllocationConfig.from_config(RULES))
    assert [p.order.order_id for p in plans if p.outcome == "allocated"] == [5, 1]
    assert "priority" not in plans[0].decisions[0][1][0].inputs


def test_an_order_is_all_or_nothing_and_bad_lines_are_skipped():
    cfg = AllocationConfig.from_config(RULES[:2])
    two = OrderIn(1, "validated", (LineIn(1, 1, "SKU-A", D(1), D(1)), LineIn(2, 2, "SKU-B", D(1), D(1))),
                  ship_region="east")
    bad = OrderIn(2, "validated", (LineIn(3, 1, "SKU-A", D(0), D(0)),))
    after = OrderIn(3, "validated", (LineIn(4, 1, "SKU-A", D(1), D(1)),), ship_region="east")
    plans = plan_orders([two, bad, after], {"SKU-A": {"WH-E1": D(1)}}, REGIONS, cfg)
    # order 1 could place SKU-A but not SKU-B: it takes nothing, so order 3 gets the unit
    assert [(p.order.order_id, p.outcome) for p in plans] == [
        (1, "unallocated"), (2, "skipped"), (3, "allocated")]


def test_lines_already_allocated_are_left_alone_and_only_the_waiting_qty_is_placed():
    cfg = AllocationConfig.from_config(FULL_RULES)
    order = OrderIn(1, "backordered", (LineIn(1, 1, "SKU-A", D(5), None),
                                       LineIn(2, 2, "SKU-A", D(10), D(4))), ship_region="west")
    (plan,) = plan_orders([order], {"SKU-A": {"WH-W": D(6)}}, REGIONS, cfg)
    assert plan.outcome == "allocated"
    assert [(ln.line_no, [(d.rule_id, d.picks) for d in steps]) for ln, steps in plan.decisions] == [
        (2, [("home_region", (Pick("WH-W", D(4)),))])]


# --- owners -------------------------------------------------------------------------------------


def test_owners_by_territory_round_robin_from_the_stored_counter():
    cfg = parse_owners(OWNERS)
    assert cfg == OwnersConfig({"east": "team_east", "west": "team_west"},
                               {"team_east": ("alice", "bob"), "team_west": ("wendy",)}, "team_east")
    needs = [OwnerNeed(5, "east", None), OwnerNeed(2, "east", "west"), OwnerNeed(3, None, "west"),
             OwnerNeed(4, "north", None), OwnerNeed(1, None, None)]
    decisions, counters = assign_owners(needs, cfg, {"team_east": 3})
    assert [(d.order_id, d.team, d.owner, d.rule) for d in decisions] == [
        (1, "team_east", "bob", "default_team"),  # turn 3 -> members[3 % 2]
        (2, "team_east", "alice", "territory"),  # the ship region wins over the customer's
        (3, "team_west", "wendy", "territory"),
        (4, "team_east", "bob", "default_team"),
        (5, "team_east", "alice", "territory"),
    ]
    assert counters == {"team_east": 7, "team_west": 1}
    assert decisions[0].inputs == {"region": None, "region_from": None,
                                   "why": "no region known (no ship_region, no customer region)",
                                   "team": "team_east", "members": ["alice", "bob"], "turn": 3}
    assert decisions[2].inputs == {"region": "west", "region_from": "customer_region",
                                   "team": "team_west", "members": ["wendy"], "turn": 0}
    assert decisions[3].inputs["why"] == "no territory for region 'north'"
    # the same input gives the same owners: deterministic
    assert assign_owners(reversed(needs), cfg, {"team_east": 3}) == (decisions, counters)


def test_without_a_default_team_an_order_outside_every_territory_gets_no_owner():
    cfg = parse_owners({**OWNERS, "default_team": None})
    decisions, counters = assign_owners([OwnerNeed(1, "north", None)], cfg, {})
    assert decisions == [] and counters == {}
    assert OwnerDecision(1, "t", "a", "territory", {"x": 1}) == OwnerDecision(1, "t", "a", "territory")


def test_every_yaml_example_in_the_docs_is_a_valid_allocation_section():
    import re

    text = (ROOT / "docs" / "allocation.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    assert len(blocks) == 3
    for block in blocks:
        AllocationConfig.from_config(block.get("allocation", block))
