"""allocate() on small seeded warehouses, SQLite and PostgreSQL: exact rows for every rule.

The pure rules are in tests/test_allocation_rules.py; here each scenario asserts the allocation
rows, the reservations, the order states and the owners a run leaves, and that a rerun with
nothing new writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from sqlalchemy import func, insert, select, update

from warehouse import schema as s
from warehouse.allocate import CHUNK_ORDERS, allocate, dry_run
from warehouse.allocation_rules import RuleConfigError

HOME = {"id": "home_region", "warehouse_in": "customer_region", "require_stock": True}
ANY = {"id": "any_stock", "require_stock": True}
SPLIT = {"id": "split", "split": True, "max_warehouses": 2}
PARTIAL = {"id": "partial", "partial": True}
BACKORDER = {"id": "backorder"}
RULES = [HOME, ANY, BACKORDER]
FULL = {"rules": [HOME, ANY, SPLIT, PARTIAL, BACKORDER]}
OWNERS = {"territories": {"east": "team_east", "west": "team_west"},
          "teams": {"team_east": ["alice", "bob"], "team_west": ["wendy"]},
          "default_team": "team_east"}
RUN = "00000000-0000-4000-8000-000000000001"
RUN2 = "00000000-0000-4000-8000-000000000002"
RUN3 = "00000000-0000-4000-8000-000000000003"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
REGIONS = {"WH-E1": "east", "WH-E2": "east", "WH-W": "west"}
NOTHING = {"allocated": 0, "backordered": 0, "lines_by_rule": {}, "skipped": 0, "unallocated": 0,
           "owners_assigned": 0}
# one chunk, and one order per chunk: decisions go in priority order chunk by chunk, the state
# moves and owners in a second pass in order id order; the outcome must not depend on the chunks
CHUNKS = pytest.mark.parametrize("chunk", [CHUNK_ORDERS, 1], ids=["one_chunk", "chunks_of_1"])


# --- seeding ------------------------------------------------------------------------------------


def seed_masters(conn, stock) -> dict[str, int]:
    """Warehouses, stock [(sku, warehouse, on_hand)], and customers by region and group."""
    conn.execute(insert(s.warehouses), [{"code": w, "region": r, "run_id": RUN}
                                        for w, r in REGIONS.items()])
    conn.execute(insert(s.stock), [
        {"sku": k, "warehouse": w, "on_hand": D(q), "reserved": D(0), "source": "erp",
         "content_hash": "h", "run_id": RUN} for k, w, q in stock])
    ids = {}
    for code, region, group in (("C-EAST", "east", "retail"), ("C-WEST", "west", "retail"),
                                ("C-WHOLE", "east", "wholesale")):
        ids[code] = conn.execute(insert(s.customers).values(
            code=code, region=region, customer_group=group, source="crm", external_id=code,
            content_hash="h", run_id=RUN)).inserted_primary_key[0]
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


def add_stock(engine, sku, warehouse, more) -> None:
    """Stock arrives: the source reports a higher on_hand (reserved is ours, untouched)."""
    with engine.begin() as conn:
        conn.execute(update(s.stock).where(s.stock.c.sku == sku, s.stock.c.warehouse == warehouse)
                     .values(on_hand=s.stock.c.on_hand + D(more)))


def state(engine):
    """Order states, allocation rows per (order, line_no), reservations, events, row count."""
    with engine.connect() as conn:
        status = dict(conn.execute(select(s.orders.c.id, s.orders.c.status)).all())
        allocs: dict[tuple[int, int], list[tuple]] = {}
        for oid, line_no, rule, wh, qty, st in conn.execute(
                select(s.order_lines.c.order_id, s.order_lines.c.line_no, s.allocations.c.rule_id,
                       s.allocations.c.warehouse, s.allocations.c.qty, s.allocations.c.status)
                .join(s.allocations, s.allocations.c.order_line_id == s.order_lines.c.id)
                .order_by(s.allocations.c.id)):
            allocs.setdefault((oid, line_no), []).append((rule, wh, qty, st))
        reserved = {(k, w): r for k, w, r in conn.execute(
            select(s.stock.c.sku, s.stock.c.warehouse, s.stock.c.reserved)) if r}
        events = conn.execute(select(func.count()).select_from(s.order_events)).scalar_one()
        n_allocs = conn.execute(select(func.count()).select_from(s.allocations)).scalar_one()
    return status, allocs, reserved, events, n_allocs


def held_matches_reserved(engine) -> bool:
    """Never double-reserving: stock.reserved is exactly what the allocated rows hold."""
    with engine.connect() as conn:
        held: dict[tuple[str, str], D] = {}
        for sku, wh, qty in conn.execute(
                select(s.order_lines.c.sku, s.allocations.c.warehouse, s.allocations.c.qty)
                .join(s.allocations, s.allocations.c.order_line_id == s.order_lines.c.id)
                .where(s.allocations.c.status == "allocated")):
            held[(sku, wh)] = held.get((sku, wh), D(0)) + qty
        reserved = {(k, w): r for k, w, r in conn.execute(
            select(s.stock.c.sku, s.stock.c.warehouse, s.stock.c.reserved)) if r}
    return held == reserved


def inputs_of(engine, oid, line_no=1, status=None):
    """The rule_inputs of the line's rows (asserting every row of one decision carries the same)."""
    with engine.connect() as conn:
        q = (select(s.allocations.c.rule_inputs)
             .join(s.order_lines, s.order_lines.c.id == s.allocations.c.order_line_id)
             .where(s.order_lines.c.order_id == oid, s.order_lines.c.line_no == line_no))
        if status:
            q = q.where(s.allocations.c.status == status)
        found = conn.execute(q).scalars().all()
    assert found and all(f == found[0] for f in found)
    return found[0]


# --- home region, any stock, backorder (the three classic rules) --------------------------------


@pytest.fixture
def seeded(engine):
    with engine.begin() as conn:
        c = seed_masters(conn, [("SKU-A", "WH-E1", 5), ("SKU-A", "WH-E2", 8),
                                ("SKU-A", "WH-W", 100), ("SKU-B", "WH-W", 3), ("SKU-C", "WH-E1", 0)])
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


def test_allocate_exact_outcome_then_rerun_allocates_nothing(engine, seeded):
    o = seeded
    result = allocate(engine, RUN, RULES)
    assert result == {"allocated": 2, "backordered": 2,
                      "lines_by_rule": {"backorder": 2, "home_region": 4},
                      "skipped": 0, "unallocated": 0, "owners_assigned": 0}
    status, allocs, reserved, events, _ = state(engine)
    assert status == {o["o1"]: "backordered", o["o2"]: "allocated", o["o3"]: "backordered",
                      o["o4"]: "allocated", o["captured"]: "captured"}
    assert allocs == {
        (o["o4"], 1): [("home_region", "WH-W", D("3"), "allocated")],
        (o["o1"], 1): [("home_region", "WH-E2", D("2"), "allocated")],  # most stock in the east
        (o["o1"], 2): [("backorder", None, D("1"), "backordered")],  # o4 took all of SKU-B
        (o["o2"], 1): [("home_region", "WH-W", D("10"), "allocated")],
        (o["o3"], 1): [("backorder", None, D("1"), "backordered")],
        (o["o3"], 2): [("home_region", "WH-E2", D("1"), "allocated")],  # E2 6 left > E1 5
    }
    assert reserved == {("SKU-A", "WH-E2"): D("3"), ("SKU-A", "WH-W"): D("10"),
                        ("SKU-B", "WH-W"): D("3")}
    assert events == 4
    assert inputs_of(engine, o["o1"]) == {"qty": "2.000", "region": "east",
                                          "region_from": "ship_region",
                                          "candidates": {"WH-E1": "5.000", "WH-E2": "8.000"}}
    before = state(engine)
    assert allocate(engine, RUN2, RULES) == NOTHING
    assert state(engine) == before


def test_a_chunk_that_fails_to_write_leaves_nothing_written(engine, seeded, monkeypatch):
    """Chunks of one order, written on the database thread while the next is planned: the
    second chunk's write fails -> the error as raised, nothing of the first chunk kept, no
    thread left behind; then a run allocates exactly as if nothing had happened."""
    import threading

    from warehouse import allocate as allocate_mod

    real_write, calls = allocate_mod._write, []

    def failing(conn, w):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full while writing chunk 2")
        real_write(conn, w)

    before = state(engine)
    threads = threading.active_count()
    monkeypatch.setattr(allocate_mod, "_write", failing)
    with pytest.raises(OSError, match="disk full while writing chunk 2"):
        allocate(engine, RUN, RULES, chunk_size=1)
    assert state(engine) == before
    assert threading.active_count() == threads
    monkeypatch.setattr(allocate_mod, "_write", real_write)
    assert allocate(engine, RUN, RULES, chunk_size=1)["allocated"] == 2


def test_backordered_lines_are_allocated_when_stock_arrives(engine, seeded):
    o = seeded
    allocate(engine, RUN, RULES)
    add_stock(engine, "SKU-B", "WH-W", 7)
    add_stock(engine, "SKU-C", "WH-E1", 5)
    result = allocate(engine, RUN2, RULES)
    assert result == {"allocated": 2, "backordered": 0,
                      "lines_by_rule": {"any_stock": 1, "home_region": 1},
                      "skipped": 0, "unallocated": 0, "owners_assigned": 0}
    status, allocs, reserved, events, n_allocs = state(engine)
    assert status[o["o1"]] == status[o["o3"]] == "allocated"
    assert allocs[(o["o1"], 2)] == [("any_stock", "WH-W", D("1"), "allocated")]
    assert allocs[(o["o3"], 1)] == [("home_region", "WH-E1", D("1"), "allocated")]
    assert n_allocs == 6  # the backorder rows became allocated in place: one row per line
    assert reserved[("SKU-B", "WH-W")] == D("4") and reserved[("SKU-C", "WH-E1")] == D("1")
    assert events == 6 and held_matches_reserved(engine)
    with engine.connect() as conn:
        moved = conn.execute(select(s.order_events.c.from_state, s.order_events.c.to_state)
                             .where(s.order_events.c.run_id == RUN2)).all()
    assert sorted(moved) == [("backordered", "allocated")] * 2
    before = state(engine)
    assert allocate(engine, RUN2, RULES) == NOTHING
    assert state(engine) == before


def test_an_order_no_rule_can_place_is_left_whole(engine):
    with engine.begin() as conn:
        seed_masters(conn, [("SKU-A", "WH-E1", 5), ("SKU-C", "WH-E1", 0)])
        # line 1 could be placed, line 2 cannot (no catch-all rule): nothing of it is written
        oid = add_order(conn, "9", [("SKU-A", "1"), ("SKU-C", "1")], ship_region="east")
        bad = add_order(conn, "10", [("SKU-A", "0")], ship_region="east")
        empty = add_order(conn, "11", [])
    result = allocate(engine, RUN, {"rules": RULES[:2], "owners": OWNERS})
    assert result == {**NOTHING, "unallocated": 1, "skipped": 2}  # and no owner either
    status, allocs, reserved, events, _ = state(engine)
    assert status == {oid: "validated", bad: "validated", empty: "validated"}
    assert allocs == {} and reserved == {} and events == 0


def test_a_bad_config_fails_before_anything_is_written(engine, seeded):
    with pytest.raises(RuleConfigError, match=r"allocation.rules\[0\] \(x\): unknown key 'warehouse'"):
        allocate(engine, RUN, [{"id": "x", "warehouse": "WH-E1"}])
    with pytest.raises(RuleConfigError, match="allocation.owners.default_team: team 'x'"):
        allocate(engine, RUN, {"rules": RULES, "owners": {**OWNERS, "default_team": "x"}})
    assert state(engine)[3:] == (0, 0)


# --- split, partial, backorder; then re-allocation as stock arrives -------------------------------


@pytest.fixture
def scarce(engine):
    with engine.begin() as conn:
        c = seed_masters(conn, [("SKU-S", "WH-E1", 3), ("SKU-S", "WH-E2", 4), ("SKU-S", "WH-W", 2),
                                ("SKU-P", "WH-W", 2), ("SKU-Z", "WH-E1", 0)])
        at = iter(T0 + timedelta(minutes=m) for m in range(10))
        ids = {
            # no warehouse holds 6: the two east (home) ones do, the fuller first
            "split": add_order(conn, "s1", [("SKU-S", "6")], customer_id=c["C-EAST"],
                               ship_region="east", at=next(at)),
            # 3 left in the west order's way: home W 2 first, then the east's last unit
            "split_home": add_order(conn, "s2", [("SKU-S", "3")], customer_id=c["C-WEST"],
                                    ship_region="west", at=next(at)),
            "partial": add_order(conn, "p1", [("SKU-P", "5")], customer_id=c["C-WEST"],
                                 ship_region="west", at=next(at)),
            "backorder": add_order(conn, "z1", [("SKU-Z", "1")], customer_id=c["C-EAST"],
                                   ship_region="east", at=next(at)),
        }
    return ids


@CHUNKS
def test_split_partial_and_backorder_exact_rows(engine, scarce, chunk):
    o = scarce
    result = allocate(engine, RUN, FULL, chunk)
    assert result == {"allocated": 2, "backordered": 2,
                      "lines_by_rule": {"backorder": 2, "partial": 1, "split": 2},
                      "skipped": 0, "unallocated": 0, "owners_assigned": 0}
    status, allocs, reserved, events, n_allocs = state(engine)
    assert allocs == {
        (o["split"], 1): [("split", "WH-E2", D(4), "allocated"), ("split", "WH-E1", D(2), "allocated")],
        (o["split_home"], 1): [("split", "WH-W", D(2), "allocated"),
                               ("split", "WH-E1", D(1), "allocated")],
        # what partial could not place went back through the rules: nothing left, so it waits
        (o["partial"], 1): [("partial", "WH-W", D(2), "allocated"),
                            ("backorder", None, D(3), "backordered")],
        (o["backorder"], 1): [("backorder", None, D(1), "backordered")],
    }
    assert status == {o["split"]: "allocated", o["split_home"]: "allocated",
                      o["partial"]: "backordered", o["backorder"]: "backordered"}
    assert reserved == {("SKU-S", "WH-E1"): D(3), ("SKU-S", "WH-E2"): D(4),
                        ("SKU-S", "WH-W"): D(2), ("SKU-P", "WH-W"): D(2)}
    assert held_matches_reserved(engine) and n_allocs == 7
    # every row says why: the rule's inputs and why each earlier rule did not fire
    assert inputs_of(engine, o["split"], status="allocated") == {
        "qty": "6.000", "home": "east", "max_warehouses": 2,
        "candidates": {"WH-E1": "3.000", "WH-E2": "4.000", "WH-W": "2.000"},
        "skipped": {"home_region": "no single warehouse holds 6 (most: 4 at WH-E2)",
                    "any_stock": "no single warehouse holds 6 (most: 4 at WH-E2)"}}
    assert inputs_of(engine, o["partial"], status="allocated")["skipped"]["split"] == (
        "the 1 fullest warehouses hold 2 of 5")
    rest = inputs_of(engine, o["partial"], status="backordered")
    assert (rest["qty"], rest["available"]) == ("3.000", {"WH-W": "0.000"})
    assert rest["skipped"]["partial"] == "no stock in any candidate warehouse"
    assert inputs_of(engine, o["backorder"])["skipped"] == {
        rule: "no stock in any candidate warehouse"
        for rule in ("home_region", "any_stock", "split", "partial")}
    before = state(engine)
    assert allocate(engine, RUN2, FULL, chunk) == NOTHING  # nothing arrived: nothing written
    assert state(engine) == before


@CHUNKS
def test_stock_arrival_reallocates_backorders_into_the_rows_they_hold(engine, scarce, chunk):
    o = scarce
    allocate(engine, RUN, FULL, chunk)
    with engine.connect() as conn:
        bo_id = conn.execute(
            select(s.allocations.c.id)
            .join(s.order_lines, s.order_lines.c.id == s.allocations.c.order_line_id)
            .where(s.order_lines.c.order_id == o["backorder"])).scalar_one()
    add_stock(engine, "SKU-P", "WH-W", 10)
    add_stock(engine, "SKU-Z", "WH-E1", 1)
    result = allocate(engine, RUN2, FULL, chunk)
    assert result == {"allocated": 2, "backordered": 0, "lines_by_rule": {"home_region": 2},
                      "skipped": 0, "unallocated": 0, "owners_assigned": 0}
    status, allocs, reserved, _, n_allocs = state(engine)
    # the 3 waiting went to WH-W, where the line already held 2: one row of 5, the backorder gone
    assert allocs[(o["partial"], 1)] == [("home_region", "WH-W", D(5), "allocated")]
    assert allocs[(o["backorder"], 1)] == [("home_region", "WH-E1", D(1), "allocated")]
    assert reserved[("SKU-P", "WH-W")] == D(5) and reserved[("SKU-Z", "WH-E1")] == D(1)
    assert status[o["partial"]] == status[o["backorder"]] == "allocated"
    assert n_allocs == 6 and held_matches_reserved(engine)
    with engine.connect() as conn:  # the backorder row itself became the allocation
        assert conn.execute(select(s.allocations.c.status).where(s.allocations.c.id == bo_id)
                            ).scalar_one() == "allocated"
    merged = inputs_of(engine, o["partial"])
    assert merged["added"] == "3.000" and merged["candidates"] == {"WH-W": "10.000"}
    assert [(e["rule_id"], e["qty"], e["run_id"]) for e in merged["earlier"]] == [
        ("partial", "2.000", RUN)]
    assert merged["earlier"][0]["inputs"]["home"] == "west"
    before = state(engine)
    assert allocate(engine, RUN3, FULL, chunk) == NOTHING
    assert state(engine) == before


def test_a_partial_line_is_filled_over_three_arrivals_never_double_reserved(engine):
    with engine.begin() as conn:
        c = seed_masters(conn, [("SKU-P", "WH-W", 2), ("SKU-P", "WH-E1", 0)])
        oid = add_order(conn, "p", [("SKU-P", "10")], customer_id=c["C-WEST"], ship_region="west")
    rules = {"rules": [HOME, ANY, PARTIAL, BACKORDER]}
    allocate(engine, RUN, rules)
    assert state(engine)[1][(oid, 1)] == [("partial", "WH-W", D(2), "allocated"),
                                          ("backorder", None, D(8), "backordered")]
    add_stock(engine, "SKU-P", "WH-W", 3)  # 3 more at W: still not enough, placed, 5 wait
    assert allocate(engine, RUN2, rules)["lines_by_rule"] == {"backorder": 1, "partial": 1}
    status, allocs, reserved, _, _ = state(engine)
    assert allocs[(oid, 1)] == [("partial", "WH-W", D(5), "allocated"),
                                ("backorder", None, D(5), "backordered")]
    assert status[oid] == "backordered" and reserved == {("SKU-P", "WH-W"): D(5)}
    merged = inputs_of(engine, oid, status="allocated")
    assert merged["added"] == "3.000" and [e["qty"] for e in merged["earlier"]] == ["2.000"]
    add_stock(engine, "SKU-P", "WH-E1", 6)  # the rest arrives in another region
    assert allocate(engine, RUN3, rules)["allocated"] == 1
    status, allocs, reserved, events, _ = state(engine)
    assert allocs[(oid, 1)] == [("partial", "WH-W", D(5), "allocated"),
                                ("any_stock", "WH-E1", D(5), "allocated")]
    assert reserved == {("SKU-P", "WH-W"): D(5), ("SKU-P", "WH-E1"): D(5)}
    assert status[oid] == "allocated" and events == 2 and held_matches_reserved(engine)


def test_a_dry_run_predicts_the_real_run_exactly_and_writes_nothing(engine, scarce):
    before = state(engine)
    dry_run(engine, RULES, FULL)
    replay = dry_run(engine, RULES, FULL)  # a pooled connection again: read-only, then given back
    assert state(engine) == before
    assert {c.order_id for c in replay.changes()} == set(scarce.values()) - {scarce["backorder"]}
    predicted = {
        (oid, ln.line_no): [(d.rule_id, p.warehouse, p.qty,
                             "allocated" if p.warehouse else "backordered")
                            for d in steps for p in d.picks]
        for oid, plan in replay.new.items() for ln, steps in plan.decisions}
    allocate(engine, RUN, FULL)  # the engine writes as before
    assert state(engine)[1] == predicted


# --- priority: group, then date, with scarce stock ----------------------------------------------


@CHUNKS
def test_scarce_stock_goes_to_wholesale_first_then_the_oldest(engine, chunk):
    with engine.begin() as conn:
        c = seed_masters(conn, [("SKU-A", "WH-E1", 4)])
        o = {
            "retail_old": add_order(conn, "r1", [("SKU-A", "2")], customer_id=c["C-EAST"],
                                    ship_region="east", at=T0),
            "whole_late": add_order(conn, "w1", [("SKU-A", "2")], customer_id=c["C-WHOLE"],
                                    ship_region="east", at=T0 + timedelta(hours=2)),
            "whole_early": add_order(conn, "w2", [("SKU-A", "2")], customer_id=c["C-WHOLE"],
                                     ship_region="east", at=T0 + timedelta(hours=1)),
            "retail_tie": add_order(conn, "r2", [("SKU-A", "2")], customer_id=c["C-EAST"],
                                    ship_region="east", at=T0),  # same time as r1, higher id
            "no_group": add_order(conn, "x", [("SKU-A", "2")], ship_region="east",
                                  at=T0 - timedelta(days=1)),  # oldest, but no listed group
        }
    cfg = {"rules": [HOME, BACKORDER],
           "priority": [{"by": "customer_group", "order": ["wholesale", "retail"]},
                        {"by": "ordered_at"}]}
    assert allocate(engine, RUN, cfg, chunk)["allocated"] == 2
    status = state(engine)[0]
    assert {k: status[v] for k, v in o.items()} == {
        "retail_old": "backordered", "whole_late": "allocated", "whole_early": "allocated",
        "retail_tie": "backordered", "no_group": "backordered"}
    assert inputs_of(engine, o["whole_late"])["priority"] == {
        "customer_group": "wholesale", "ordered_at": "2026-11-01T12:00:00+00:00"}
    add_stock(engine, "SKU-A", "WH-E1", 3)  # 3 arrive: the oldest retail order, by id on a tie
    assert allocate(engine, RUN2, cfg, chunk)["allocated"] == 1
    status = state(engine)[0]
    assert [k for k, v in o.items() if status[v] == "allocated"] == [
        "retail_old", "whole_late", "whole_early"]
    assert held_matches_reserved(engine)


# --- owners: territory, round-robin, stable on rerun --------------------------------------------


@CHUNKS
def test_owners_by_territory_round_robin_and_stable_across_runs(engine, chunk):
    with engine.begin() as conn:
        c = seed_masters(conn, [("SKU-A", "WH-E1", 100)])
        o = {
            "e1": add_order(conn, "e1", [("SKU-A", "1")], ship_region="east"),
            "e2": add_order(conn, "e2", [("SKU-A", "1")], customer_id=c["C-WEST"], ship_region="east"),
            "w1": add_order(conn, "w1", [("SKU-A", "1")], ship_region="west"),
            "e3": add_order(conn, "e3", [("SKU-A", "1")], ship_region="east"),
            "cust_west": add_order(conn, "cw", [("SKU-A", "1")], customer_id=c["C-WEST"]),
            "nowhere": add_order(conn, "n", [("SKU-A", "1")]),
            "north": add_order(conn, "no", [("SKU-A", "1")], ship_region="north"),
            "waits": add_order(conn, "b", [("SKU-B", "1")], ship_region="west"),  # no SKU-B
        }
    cfg = {"rules": RULES, "owners": OWNERS}
    assert allocate(engine, RUN, cfg, chunk)["owners_assigned"] == 8

    def owners():
        with engine.connect() as conn:
            got = {oid: (owner, team, rule) for oid, owner, team, rule in conn.execute(
                select(s.orders.c.id, s.orders.c.owner, s.orders.c.team, s.orders.c.owner_rule))}
            counters = dict(conn.execute(select(s.owner_counters.c.team,
                                                s.owner_counters.c.assigned)).all())
        return {k: got[v] for k, v in o.items()}, counters

    first = owners()
    assert first == ({
        "e1": ("alice", "team_east", "territory"),
        "e2": ("bob", "team_east", "territory"),  # the ship region, not the customer's (west)
        "w1": ("wendy", "team_west", "territory"),
        "e3": ("alice", "team_east", "territory"),
        "cust_west": ("wendy", "team_west", "territory"),  # no ship region: the customer's
        "nowhere": ("bob", "team_east", "default_team"),
        "north": ("alice", "team_east", "default_team"),  # north has no territory
        "waits": ("wendy", "team_west", "territory"),  # a backordered order has an owner too
    }, {"team_east": 5, "team_west": 3})
    with engine.connect() as conn:
        assert conn.execute(select(s.orders.c.owner_inputs, s.orders.c.run_id)
                            .where(s.orders.c.id == o["north"])).one() == (
            {"region": "north", "region_from": "ship_region", "why": "no territory for region 'north'",
             "team": "team_east", "members": ["alice", "bob"], "turn": 4}, RUN)
    # rerun: nothing new, nothing moves (the backordered order is re-evaluated, keeps its owner)
    before = state(engine)
    assert allocate(engine, RUN2, cfg, chunk) == NOTHING
    assert owners() == first and state(engine) == before
    # a new order continues the team's turn from the stored counter, not from the start
    with engine.begin() as conn:
        o["e4"] = add_order(conn, "e4", [("SKU-A", "1")], ship_region="east")
    assert allocate(engine, RUN3, cfg, chunk)["owners_assigned"] == 1
    later = owners()
    assert later[0]["e4"] == ("bob", "team_east", "territory")
    assert {k: v for k, v in later[0].items() if k != "e4"} == first[0]
    assert later[1] == {"team_east": 6, "team_west": 3}


# --- two allocators at once (PostgreSQL: SKIP LOCKED) -------------------------------------------


def test_an_allocator_skips_orders_another_one_holds(pg_engine):
    with pg_engine.begin() as conn:
        seed_masters(conn, [("SKU-A", "WH-E1", 3)])
        first = add_order(conn, "a", [("SKU-A", "2")], ship_region="east")
        second = add_order(conn, "b", [("SKU-A", "2")], ship_region="east",
                           at=T0 + timedelta(minutes=1))
    cfg = {"rules": RULES, "owners": OWNERS}
    with pg_engine.connect() as other:  # another allocator is busy with the first order
        other.execute(select(s.orders.c.id).where(s.orders.c.id == first).with_for_update())
        assert allocate(pg_engine, RUN, cfg) == {**NOTHING, "allocated": 1, "owners_assigned": 1,
                                                 "lines_by_rule": {"home_region": 1}}
        other.rollback()
    status, allocs, reserved, _, _ = state(pg_engine)
    assert status == {first: "validated", second: "allocated"}
    # the first order now finds what the second left: 1 of 3, so it waits; nothing reserved twice
    assert allocate(pg_engine, RUN2, cfg)["backordered"] == 1
    status, allocs, reserved, _, _ = state(pg_engine)
    assert allocs[(first, 1)] == [("backorder", None, D("2.000"), "backordered")]
    assert reserved == {("SKU-A", "WH-E1"): D(2)} and held_matches_reserved(pg_engine)
    with pg_engine.connect() as conn:
        assert dict(conn.execute(select(s.orders.c.id, s.orders.c.owner)).all()) == {
            second: "alice", first: "bob"}  # the counter continued across the two runs
