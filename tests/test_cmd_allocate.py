"""``orderhub allocate --dry-run --rules new.yaml`` end to end through flows.cli.main, on a seeded
SQLite and PostgreSQL warehouse: the exact difference printed, and not one row written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml
from sqlalchemy import MetaData, insert, select

from flows.cli import main
from warehouse import schema as s
from warehouse.engine import make_engine

ROOT = Path(__file__).resolve().parents[1]
RUN = "00000000-0000-4000-8000-0000000000c1"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
HOME = {"id": "home_region", "warehouse_in": "customer_region", "require_stock": True}
ANY = {"id": "any_stock", "require_stock": True}
CURRENT = {
    "rules": [HOME, ANY, {"id": "backorder"}],
    "owners": {"territories": {"east": "team_east", "west": "team_west"},
               "teams": {"team_east": ["alice", "bob"], "team_west": ["wendy"]}},
}
NEW = {
    "rules": [HOME, ANY, {"id": "split", "split": True, "max_warehouses": 2},
              {"id": "partial", "partial": True}, {"id": "backorder"}],
    "priority": [{"by": "customer_group", "order": ["wholesale", "retail"]}, {"by": "ordered_at"}],
    # the west territory moves to the east team
    "owners": {"territories": {"east": "team_east", "west": "team_east"},
               "teams": {"team_east": ["alice", "bob"], "team_west": ["wendy"]}},
}


def _order(conn, no, sku, qty, *, customer, ship, minutes, status, owner=None):
    oid = conn.execute(insert(s.orders).values(
        source="shop", external_id=no, order_no=f"#{no}", customer_id=customer,
        ordered_at=T0 + timedelta(minutes=minutes), currency="CNY", total=D(qty) * 10,
        ship_region=ship, status=status, content_hash="h", captured_at=T0, run_id=RUN,
        owner=owner, team="team_east" if owner else None)).inserted_primary_key[0]
    lid = conn.execute(insert(s.order_lines).values(
        order_id=oid, line_no=1, sku=sku, qty=D(qty), unit_price=D(10), amount=D(qty) * 10,
        run_id=RUN)).inserted_primary_key[0]
    return oid, lid


def seed(url: str) -> None:
    """Four open orders (validated, backordered x2, allocated) and a pushed one, whose stock
    stays reserved; rows as the current rules left them."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(s.warehouses), [{"code": w, "region": r, "run_id": RUN} for w, r in
                                            (("WH-E1", "east"), ("WH-E2", "east"), ("WH-W", "west"))])
        conn.execute(insert(s.stock), [
            {"sku": k, "warehouse": w, "on_hand": D(q), "reserved": D(r), "source": "erp",
             "content_hash": "h", "run_id": RUN}
            for k, w, q, r in (("SKU-A", "WH-E1", 7, 2), ("SKU-A", "WH-E2", 3, 1),
                               ("SKU-B", "WH-W", 2, 0))])
        cust = {}
        for code, region, group in (("C-EAST", "east", "retail"), ("C-WEST", "west", "wholesale"),
                                    ("C-WHOLE", "east", "wholesale")):
            cust[code] = conn.execute(insert(s.customers).values(
                code=code, region=region, customer_group=group, source="crm", external_id=code,
                content_hash="h", run_id=RUN)).inserted_primary_key[0]
        _order(conn, "1", "SKU-A", 5, customer=cust["C-EAST"], ship="east", minutes=0,
               status="validated")
        _, l2 = _order(conn, "2", "SKU-B", 3, customer=cust["C-WEST"], ship="west", minutes=20,
                       status="backordered")
        _, l3 = _order(conn, "3", "SKU-A", 1, customer=cust["C-EAST"], ship="east", minutes=10,
                       status="allocated", owner="alice")
        _, l4 = _order(conn, "4", "SKU-A", 3, customer=cust["C-WHOLE"], ship="east", minutes=30,
                       status="backordered")
        _, l5 = _order(conn, "5", "SKU-A", 2, customer=cust["C-EAST"], ship="east", minutes=-60,
                       status="pushed", owner="bob")
        conn.execute(insert(s.allocations), [
            {"order_line_id": lid, "warehouse": wh, "qty": D(q), "status": st, "rule_id": rule,
             "rule_inputs": {}, "run_id": RUN}
            for lid, wh, q, st, rule in ((l2, None, 3, "backordered", "backorder"),
                                         (l3, "WH-E2", 1, "allocated", "home_region"),
                                         (l4, None, 3, "backordered", "backorder"),
                                         (l5, "WH-E1", 2, "allocated", "home_region"))])
        conn.execute(insert(s.owner_counters).values(team="team_east", assigned=2, run_id=RUN))
    engine.dispose()


def snapshot(url: str) -> dict[str, list[str]]:
    """Every row of every table in the database (reflected: whatever exists), in a fixed order."""
    engine = make_engine(url)
    md = MetaData()
    md.reflect(engine)
    with engine.connect() as conn:
        rows = {t.name: sorted(repr(tuple(r)) for r in conn.execute(select(t)))
                for t in md.sorted_tables}
    engine.dispose()
    return rows


def write_config(tmp_path: Path, url: str, allocation: dict) -> Path:
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["warehouse"] = {"url": url}
    raw["allocation"] = allocation
    cfg = tmp_path / "orderhub.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    return cfg


@pytest.fixture
def seeded(warehouse_url, tmp_path, monkeypatch):
    monkeypatch.delenv("ORDERHUB_WAREHOUSE_URL", raising=False)
    seed(warehouse_url)
    cfg = write_config(tmp_path, warehouse_url, CURRENT)
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"allocation": NEW}, sort_keys=False))
    return warehouse_url, cfg, new


def test_dry_run_prints_the_difference_and_writes_nothing(seeded, capsys):
    url, cfg, new = seeded
    before = snapshot(url)
    assert sum(map(len, before.values())) > 20  # a real seeded warehouse, not an empty one
    assert main(["allocate", "--dry-run", "--rules", str(new), "--config", str(cfg)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.splitlines() == [
        "allocate dry run: 4 open orders (validated 1, backordered 2, allocated 1)",
        f"replayed from on-hand stock under {cfg} (current) and {new} (new)",
        "",
        "order  change            current               new",
        "#1     line 1 SKU-A x 5  home_region: WH-E1 5  split: WH-E2 3 + WH-E1 2",
        "#2     line 1 SKU-B x 3  backorder: 3 waiting  partial: WH-W 2; backorder: 1 waiting",
        "#2     owner             wendy (team_west)     bob (team_east)",
        "#3     line 1 SKU-A x 1  home_region: WH-E2 1  backorder: 1 waiting",
        "#3     status            allocated             backordered",
        "#4     line 1 SKU-A x 3  backorder: 3 waiting  home_region: WH-E1 3",
        "#4     status            backordered           allocated",
        "#4     owner             bob (team_east)       alice (team_east)",
        "",
        "summary               current  new  change",
        "lines backorder             2    2       0",
        "lines home_region           2    1      -1",
        "lines partial               0    1      +1",
        "lines split                 0    1      +1",
        "orders allocated            2    2       0",
        "orders backordered          2    2       0",
        "orders with an owner        4    4       0",
        "",
        "8 changes in 4 orders; nothing written",
    ]
    assert snapshot(url) == before


def test_dry_run_with_the_same_rules_shows_no_difference_and_json(seeded, capsys, tmp_path):
    url, cfg, _ = seeded
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(CURRENT))  # just the section is enough
    before = snapshot(url)
    assert main(["allocate", "--dry-run", "--rules", str(same), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "no difference: the new rules decide every open order as the current ones do" in out
    assert out.rstrip().endswith("0 changes in 0 orders; nothing written")
    assert main(["allocate", "--dry-run", "--rules", str(same), "--config", str(cfg),
                 "--json"]) == 0
    assert '"changes": []' in capsys.readouterr().out
    assert snapshot(url) == before


@pytest.mark.parametrize(
    "content, message",
    [
        ({"rules": [{"id": "x", "warehouse": "WH-E1"}]},
         "allocation.rules[0] (x): unknown key 'warehouse'"),
        ({"allocation": {"priority": [{"by": "tier"}]}},
         "allocation.priority[0]: 'by' must be one of"),
        ({"sources": {}}, "expected an `allocation:` section"),
    ],
)
def test_a_bad_rules_file_is_one_line_naming_the_file_and_path(seeded, capsys, content, message):
    url, cfg, new = seeded
    new.write_text(yaml.safe_dump(content))
    assert main(["allocate", "--dry-run", "--rules", str(new), "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"orderhub: error: {new}: ") and message in err


def test_usage_errors_and_a_missing_warehouse_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ORDERHUB_WAREHOUSE_URL", raising=False)
    db = tmp_path / "none.db"
    cfg = write_config(tmp_path, f"sqlite:///{db}", CURRENT)
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(NEW))
    assert main(["allocate", "--rules", str(new), "--config", str(cfg)]) == 1
    assert "--rules needs --dry-run" in capsys.readouterr().err
    assert main(["allocate", "--dry-run", "--config", str(cfg)]) == 1
    assert "--dry-run needs --rules NEW.yaml" in capsys.readouterr().err
    assert main(["allocate", "--dry-run", "--rules", str(new), "--config", str(cfg)]) == 1
    assert f"no warehouse at {db}" in capsys.readouterr().err
    assert not db.exists()


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.mark.e2e  # Prefect's test harness starts a server (~10 s): the same flow the scheduler runs
def test_without_dry_run_it_allocates_for_real(harness, sqlite_url, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ORDERHUB_WAREHOUSE_URL", raising=False)
    seed(sqlite_url)
    cfg = write_config(tmp_path, sqlite_url, CURRENT)
    assert main(["allocate", "--config", str(cfg)]) == 0
    # the flow's own run: #1 takes the east's 5; #2 and #4 still find nothing (no rows rewritten)
    assert capsys.readouterr().out.startswith(
        "allocate  1 allocated, 0 backordered (lines: home_region 1)")
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        status = dict(conn.execute(select(s.orders.c.order_no, s.orders.c.status)).all())
        reserved = dict(conn.execute(select(s.stock.c.warehouse, s.stock.c.reserved)
                                     .where(s.stock.c.sku == "SKU-A")).all())
    engine.dispose()
    assert status == {"#1": "allocated", "#2": "backordered", "#3": "allocated",
                      "#4": "backordered", "#5": "pushed"}
    assert reserved == {"WH-E1": D(7), "WH-E2": D(1)}
