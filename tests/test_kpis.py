"""KPIs on a hand-seeded warehouse (tests/kpi_world.py): each figure is asserted exactly, on
SQLite and on PostgreSQL. The expected values are worked out next to each assertion."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D
from pathlib import Path

import pytest
from kpi_world import D1, D2, R1, R2, R3, READERS, T0, build, s
from sqlalchemy import Engine, delete, select, update

from warehouse import kpis, metrics
from warehouse.engine import begin_write
from warehouse.schema import kpi_daily, order_events, order_lines, orders

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def world(engine: Engine):
    return build(engine)


def _daily(engine: Engine, day: date, source: str = kpis.ALL) -> dict[str, tuple]:
    return {r["metric"]: (r["value"], r["numerator"], r["denominator"])
            for r in kpis.daily_kpis(engine, day, day, source=source)}


def _stored(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(select(
            kpi_daily.c.day, kpi_daily.c.source, kpi_daily.c.metric, kpi_daily.c.value,
            kpi_daily.c.numerator, kpi_daily.c.denominator, kpi_daily.c.run_id)))


# ------------------------------------------------------------------------------- cycle times


def test_cycle_time_percentiles_are_nearest_rank_and_exact(engine, world):
    k = kpis.run_kpis(engine, R1)
    # R1 allocated 11 orders: shopify 60..480 s (8), kingdee 120, 240, 360 s. Sorted:
    # 60 120 120 180 240 240 300 360 360 420 480 -> p50 rank ceil(5.5)=6, p95 rank ceil(10.45)=11
    assert k["cycle_time"]["allocated"] == {"count": 11, "p50_s": D("240.000"),
                                            "p95_s": D("480.000")}
    # invoiced: 3600, 7200, 10800, 14400 -> ranks 2 and ceil(3.8)=4
    assert k["cycle_time"]["invoiced"] == {"count": 4, "p50_s": D("7200"), "p95_s": D("14400")}
    assert k["cycle_time"]["paid"] == {"count": 0, "p50_s": None, "p95_s": None}
    assert k["by_source"]["kingdee"]["cycle_time"]["allocated"] == {
        "count": 3, "p50_s": D(240), "p95_s": D(360)}
    assert k["by_source"]["shopify"]["cycle_time"]["allocated"] == {
        "count": 8, "p50_s": D(240), "p95_s": D(480)}
    # R2 allocated s9 and e4, each 4 h after capture; R3 paid s1 30 h after capture
    assert kpis.run_kpis(engine, R2)["cycle_time"]["allocated"] == {
        "count": 2, "p50_s": D(14400), "p95_s": D(14400)}
    assert kpis.run_kpis(engine, R3)["cycle_time"]["paid"] == {
        "count": 1, "p50_s": D(108000), "p95_s": D(108000)}


def test_metrics_cycle_times_keeps_its_shape_for_the_run_summary(engine, world):
    assert metrics.cycle_times(engine, R1, "allocated") == {
        "to": "allocated", "count": 11, "p50_s": 240.0, "p95_s": 480.0}
    assert metrics.cycle_times(engine, R1, "paid") == {
        "to": "paid", "count": 0, "p50_s": None, "p95_s": None}


def test_daily_cycle_time_counts_orders_on_the_day_they_reach_the_stage(engine, world):
    rows = {(r.day, r.source, r.metric): (r.value, r.denominator)
            for r in kpis.compute_daily(engine, [D1, D2])}
    # D1 allocated 13: the 11 above plus s9 and e4 (14400 s each):
    # 60 120 120 180 240 240 300 360 360 420 480 14400 14400 -> ranks 7 and ceil(12.35)=13
    assert rows[(D1, "*", "cycle_p50_s.allocated")] == (D(300), 13)
    assert rows[(D1, "*", "cycle_p95_s.allocated")] == (D(14400), 13)
    # shopify 60..480 and 14400 (9): ranks 5 and 9; kingdee 120 240 360 14400: ranks 2 and 4
    assert rows[(D1, "shopify", "cycle_p50_s.allocated")] == (D(300), 9)
    assert rows[(D1, "shopify", "cycle_p95_s.allocated")] == (D(14400), 9)
    assert rows[(D1, "kingdee", "cycle_p50_s.allocated")] == (D(240), 4)
    assert rows[(D1, "kingdee", "cycle_p95_s.allocated")] == (D(14400), 4)
    # s1 was paid on D2, 30 h after its capture on D1; nothing else happened on D2
    assert {k: v for k, v in rows.items() if k[0] == D2} == {
        (D2, "*", "cycle_p50_s.paid"): (D(108000), 1), (D2, "*", "cycle_p95_s.paid"): (D(108000), 1),
        (D2, "shopify", "cycle_p50_s.paid"): (D(108000), 1),
        (D2, "shopify", "cycle_p95_s.paid"): (D(108000), 1)}


# -------------------------------------------------------------------------------- automation


def test_automation_rate_a_released_or_overridden_order_is_not_automated(engine, world):
    a = kpis.run_kpis(engine, R1)["automation"]
    # 14 captured in R1; validated untouched: s1..s8 and e1..e3 = 11. s9 (released: ops row and
    # quarantined -> captured), e4 (overridden) and s10 (still quarantined) are not.
    assert (a["captured"], a["automated"], a["rate"]) == (14, 11, D("0.785714"))
    assert a["by_stage"]["allocated"] == {"automated": 11, "rate": D("0.785714")}
    assert a["by_stage"]["invoiced"] == {"automated": 4, "rate": D("0.285714")}
    by = kpis.run_kpis(engine, R1)["by_source"]
    assert (by["shopify"]["automation"]["automated"], by["shopify"]["automation"]["rate"]) == (8, D("0.8"))
    assert (by["kingdee"]["automation"]["automated"], by["kingdee"]["automation"]["rate"]) == (3, D("0.75"))
    # R2 and R3 captured nothing: no automation figure, not a 0 %
    assert kpis.run_kpis(engine, R2)["automation"]["rate"] is None


def test_a_manual_state_change_alone_also_counts_as_a_human_touch(engine, world):
    # s3 gets an event out of quarantine (say a rollback recorded only as a transition)
    world.event("s3", "quarantined", "captured", T0 + s(7200), R2)
    a = kpis.run_kpis(engine, R1)["automation"]
    assert (a["automated"], a["rate"]) == (10, D("0.714286"))
    world.ops("s4", "note", T0 + s(7200), R2)  # any ops_actions row is a touch
    assert kpis.run_kpis(engine, R1)["automation"]["automated"] == 9


# -------------------------------------------------------------------------------- quarantine


def test_quarantine_rate_by_check(engine, world):
    q = kpis.run_kpis(engine, R1)["quarantine"]
    # 14 gated in R1; quarantined: s9 (customer_known), s10 (customer_known, sku_known), e4
    # (price_matches_list): 3 orders, an order failing two checks counted under each
    assert (q["gated"], q["quarantined"], q["rate"]) == (14, 3, D("0.214286"))
    assert q["by_check"] == {
        "customer_known": {"quarantined": 2, "rate": D("0.142857")},
        "price_matches_list": {"quarantined": 1, "rate": D("0.071429")},
        "sku_known": {"quarantined": 1, "rate": D("0.071429")},
    }
    shop = kpis.run_kpis(engine, R1)["by_source"]["shopify"]["quarantine"]
    assert shop["by_check"] == {"customer_known": {"quarantined": 2, "rate": D("0.2")},
                                "sku_known": {"quarantined": 1, "rate": D("0.1")}}
    # R2 gated s9 again (after its release) and it passed: 0 of 1; an override is no gate
    q2 = kpis.run_kpis(engine, R2)["quarantine"]
    assert (q2["gated"], q2["quarantined"], q2["rate"], q2["by_check"]) == (1, 0, D(0), {})


# ---------------------------------------------------------------------------------- accuracy


def test_data_accuracy_compares_total_lines_and_the_source(engine, world):
    acc = kpis.run_kpis(engine, R1, readers=READERS)["accuracy"]
    # s2 stored 21.00 (lines and source 20.00); e2's source now says 99.00: 12 of 14
    assert (acc["orders"], acc["accurate"], acc["rate"], acc["unchecked"]) == (14, 12, D("0.857143"), 0)
    assert [(x["external_id"], x["problem"]) for x in acc["inaccurate"]] == [
        ("5002", "total 21.00 != sum of lines 20.00"),
        ("100002", "total 20.00 != the source's total 99.00"),
    ]
    by = kpis.run_kpis(engine, R1, readers=READERS)["by_source"]
    assert by["shopify"]["accuracy"] == {"orders": 10, "accurate": 9, "rate": D("0.9")}
    assert by["kingdee"]["accuracy"] == {"orders": 4, "accurate": 3, "rate": D("0.75")}
    # without readers accuracy is not computed (rather than guessed)
    assert kpis.run_kpis(engine, R1)["accuracy"] is None
    # ``show`` lists the first inaccurate orders by order id, the one pass the same
    one = kpis.run_kpis(engine, R1, readers=READERS, show=1)["accuracy"]["inaccurate"]
    assert [x["external_id"] for x in one] == ["5002"]
    _, figures = kpis.refresh_and_run_kpis(engine, R1, readers=READERS, show=1)
    assert figures["accuracy"]["inaccurate"] == one


def test_accuracy_problems_are_named(engine, world):
    ids = world.ids
    with begin_write(engine) as conn:
        conn.execute(update(orders).where(orders.c.id == ids["s5"]).values(total=None))
        conn.execute(update(order_lines).where(order_lines.c.order_id == ids["s6"],
                                               order_lines.c.line_no == 2).values(amount=None))
    readers = {"shopify": READERS["shopify"]}  # kingdee no longer configured: unchecked
    acc = kpis.run_kpis(engine, R1, readers=readers)["accuracy"]
    assert (acc["orders"], acc["accurate"], acc["unchecked"]) == (10, 7, 4)
    assert [x["problem"] for x in acc["inaccurate"]] == [
        "total 21.00 != sum of lines 20.00", "no total stored", "a line has no amount"]


# ------------------------------------------------------------------------------- daily table


def test_daily_table_is_written_once_and_rewritten_only_where_it_changed(engine, world):
    assert kpis.days_touched(engine, R1) == [D1]
    assert kpis.days_touched(engine, R3) == [D1, D2]  # s1, captured on D1, was paid on D2
    first = kpis.refresh_daily(engine, R3, readers=READERS)
    assert first == {"days": 2, "inserted": 35, "updated": 0, "deleted": 0, "unchanged": 0}
    stored = _stored(engine)
    assert kpis.refresh_daily(engine, R3, readers=READERS) == {
        "days": 2, "inserted": 0, "updated": 0, "deleted": 0, "unchanged": 35}
    assert _stored(engine) == stored

    day = _daily(engine, D1)
    assert day["automation_rate"] == (D("0.785714"), 11, 14)
    assert day["quarantine_rate.customer_known"] == (D("0.142857"), 2, 14)
    assert day["accuracy_rate"] == (D("0.857143"), 12, 14)
    assert day["cycle_p95_s.allocated"] == (D(14400), None, 13)
    assert _daily(engine, D1, "kingdee")["automation_rate.invoiced"] == (D(0), 0, 4)

    # an ops note on s4 (run "R4"): only its cohort's automation figures change
    r4 = "44444444-4444-4444-8444-444444444444"
    world.ops("s4", "note", T0 + s(7200), r4)
    assert kpis.days_touched(engine, r4) == [D1]
    assert kpis.refresh_daily(engine, r4, readers=READERS) == {
        "days": 1, "inserted": 0, "updated": 6, "deleted": 0, "unchanged": 25}
    changed = {row[1:3] for row in _stored(engine) if row[-1] == r4}
    assert changed == {(src, m) for src in ("*", "shopify") for m in (
        "automation_rate", "automation_rate.allocated", "automation_rate.invoiced")}
    assert _daily(engine, D1)["automation_rate"] == (D("0.714286"), 10, 14)

    # a refresh without readers leaves accuracy alone; a figure that disappears is deleted
    with begin_write(engine) as conn:
        conn.execute(delete(order_events).where(order_events.c.to_state == "paid"))
    assert kpis.refresh_daily(engine, r4, [D2]) == {
        "days": 1, "inserted": 0, "updated": 0, "deleted": 4, "unchanged": 0}
    assert _daily(engine, D2) == {}
    assert _daily(engine, D1)["accuracy_rate"] == (D("0.857143"), 12, 14)


def test_record_audit_stores_the_missed_rate_per_source_and_overall(engine):
    counts = kpis.record_audit(engine, R1, D1, {
        "shopify": {"source_count": 10, "missed": 1}, "kingdee": {"source_count": 4, "missed": 0},
        "down": {"error": "down: unreachable"}})
    assert counts == {"inserted": 3, "updated": 0, "deleted": 0, "unchanged": 0}
    assert _daily(engine, D1) == {"missed_rate": (D("0.071429"), 1, 14)}
    assert _daily(engine, D1, "shopify") == {"missed_rate": (D("0.1"), 1, 10)}
    assert kpis.record_audit(engine, R1, D1, {"shopify": {"source_count": 10, "missed": 1},
                                              "kingdee": {"source_count": 4, "missed": 0}}
                             )["unchanged"] == 3


def test_latest_run_and_an_empty_warehouse(engine):
    assert kpis.latest_run(engine) is None
    k = kpis.run_kpis(engine, R1)
    assert k["automation"]["rate"] is None and k["by_source"] == {}
    assert k["cycle_time"]["allocated"]["count"] == 0
    assert kpis.compute_daily(engine, []) == []
    assert kpis.refresh_daily(engine, R1, [])["days"] == 0


def test_latest_run_is_the_newest_order_to_cash(engine, world):
    assert kpis.latest_run(engine) == R3
    assert kpis.latest_run(engine, "ops") == R2


# ------------------------------------------------------------------------- orderhub kpis (CLI)


@pytest.fixture
def cli_config(tmp_path, warehouse_url):
    """orderhub.yaml's sources (shopify, jiandaoyun, kingdee: the real mappings read the seeded
    payloads) over the seeded warehouse."""
    import yaml

    from warehouse.engine import make_engine

    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["warehouse"] = {"url": warehouse_url}
    path = tmp_path / "orderhub.yaml"
    path.write_text(yaml.safe_dump(raw))
    engine = make_engine(warehouse_url)
    build(engine)
    engine.dispose()
    return str(path)


RUN_OUTPUT = f"""\
orderhub KPIs — run {R1} (order_to_cash, started 2026-11-02 08:00 UTC, completed)

  cycle time              orders         p50         p95
  captured -> allocated       11     4.0 min     8.0 min
  captured -> invoiced         4       2.0 h       4.0 h
  captured -> paid             0           -           -

  automation     78.6 %  11 of 14 orders captured in the run went through with no human touch \
(to allocated 78.6 %, to invoiced 28.6 %)
  quarantine     21.4 %  3 of 14 gated orders: customer_known 14.3 % (2), price_matches_list \
7.1 % (1), sku_known 7.1 % (1)
  accuracy       85.7 %  12 of 14 orders: stored total = sum of lines = the source's total
                 order shopify:5002: total 21.00 != sum of lines 20.00
                 order kingdee:100002: total 20.00 != the source's total 99.00
  missed orders  -  not measured for this run (`orderhub kpis --audit` asks the sources now)

  by source       automation  quarantine  accuracy  p50 -> invoiced
  kingdee             75.0 %      25.0 %    75.0 %                -
  shopify             80.0 %      20.0 %    90.0 %            2.0 h
"""

DAILY_OUTPUT = """\
Daily KPIs 2026-11-02 .. 2026-11-03 (UTC days)
  day         source         captured  automated  quarantined  accurate  missed  \
-> allocated p50/p95   -> invoiced p50/p95       -> paid p50/p95
  2026-11-02  (all)                14     78.6 %       21.4 %    85.7 %       -       \
5.0 min / 4.0 h         2.0 h / 4.0 h                     -
              kingdee               4     75.0 %       25.0 %    75.0 %       -       \
4.0 min / 4.0 h                     -                     -
              shopify              10     80.0 %       20.0 %    90.0 %       -       \
5.0 min / 4.0 h         2.0 h / 4.0 h                     -
  2026-11-03  (all)                 -          -            -         -       -       \
              -                     -         1.2 d / 1.2 d
              shopify               -          -            -         -       -       \
              -                     -         1.2 d / 1.2 d
"""


def test_orderhub_kpis_prints_a_run(cli_config, capsys):
    from flows.cli import main

    assert main(["kpis", "--config", cli_config, "--run", R1]) == 0
    assert capsys.readouterr().out == RUN_OUTPUT


def test_orderhub_kpis_daily_table_refreshed_then_read(cli_config, capsys):
    from flows.cli import main

    args = ["kpis", "--config", cli_config, "--days", "2", "--to", "2026-11-03"]
    assert main(args) == 0
    assert "no daily figures stored for these days" in capsys.readouterr().out
    assert main([*args, "--refresh"]) == 0
    assert capsys.readouterr().out == DAILY_OUTPUT
    assert main(args) == 0  # stored: the same table without recomputing
    assert capsys.readouterr().out == DAILY_OUTPUT


def test_orderhub_kpis_default_and_json(cli_config, capsys):
    import json

    from flows.cli import main

    assert main(["kpis", "--config", cli_config]) == 0  # the latest order_to_cash run: R3
    out = capsys.readouterr().out
    assert out.startswith(f"orderhub KPIs — run {R3} ")
    assert "captured -> paid             1       1.2 d       1.2 d" in out
    assert "Daily KPIs " in out  # and the daily table of the last 7 days
    assert main(["kpis", "--config", cli_config, "--run", R1, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run"]["automation"]["rate"] == "0.785714"
    assert data["run"]["cycle_time"]["allocated"] == {"count": 11, "p50_s": "240.000",
                                                      "p95_s": "480.000"}
    assert data["run"]["accuracy"]["accurate"] == 12 and data["daily"] is None


def test_orderhub_kpis_errors_are_one_line(cli_config, tmp_path, capsys):
    from flows.cli import main

    assert main(["kpis", "--config", cli_config, "--run", "no-such-run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("orderhub: error: run no-such-run is not in the warehouse")
    assert err.count("\n") == 1
    assert main(["kpis", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --run and --days exclude each other
        main(["kpis", "--config", cli_config, "--run", R1, "--days", "3"])


# ------------------------------------------------------------------------------ report section


def test_kpi_section_is_self_contained_html_with_exact_bars(engine, world):
    import re
    import xml.etree.ElementTree as ET

    from checks.kpi_chart import kpi_section_html

    kpis.refresh_daily(engine, R3, readers=READERS)
    html = kpi_section_html(engine, R1)
    assert html.startswith('<section class="ohk" id="kpis">')
    assert not re.search(r"<script|<link|<img|src=|url\(|@import", html)
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert len(svgs) == 2
    ns = "{http://www.w3.org/2000/svg}"
    cycle, quarantined = (ET.fromstring(svg) for svg in svgs)  # well-formed XML
    # one scale per chart: the longest bar is BAR_W (360 px); the others in proportion
    widths = {r.find(f"{ns}title").text: int(r.get("width")) for r in cycle.iter(f"{ns}rect")
              if r.find(f"{ns}title") is not None}
    assert widths == {"p50 4.0 min": 6, "p95 8.0 min": 12, "p50 2.0 h": 180, "p95 4.0 h": 360}
    widths = {r.find(f"{ns}title").text: int(r.get("width"))
              for r in quarantined.iter(f"{ns}rect")}
    assert widths == {"14.3 % (2 of 14)": 360, "7.1 % (1 of 14)": 180}
    # accuracy is not this run's own without the sources: the stored daily figure, so labelled
    assert "12 accurate of 14 (daily figure of 2026-11-02)" in html
    assert "<td>Automation rate</td><td class=\"num\">78.6 %</td>" in html
    # given the run's full KPIs (readers, audit), they are shown as this run's
    audit = {"source_count": 14, "missed": 0, "rate": D(0), "ok": True, "sources": {}}
    full = kpis.run_kpis(engine, R1, readers=READERS, audit=audit)
    html = kpi_section_html(engine, R1, kpis=full)
    assert "12 of 14 orders: stored total = lines = source" in html
    assert "0 of 14 orders at the sources (0.0 %)" in html


def test_kpi_section_copes_with_an_empty_run(engine):
    from checks.kpi_chart import kpi_section_html

    html = kpi_section_html(engine, R1)
    assert "No order reached these stages in this run." in html
    assert "No order was gated in this run." in html
    assert "No daily figures stored for these days." in html


def test_kpi_section_escapes_what_it_shows(engine, world):
    from checks.kpi_chart import kpi_section_html

    world.quarantine("s10", "<img src=x>&", T0 + s(10))
    html = kpi_section_html(engine, R1)
    assert "<img" not in html and "&lt;img src=x&gt;&amp;" in html


# ------------------------------------------------------------- one pass: the daily and the run's


def test_refresh_and_run_kpis_equals_the_daily_refresh_and_run_kpis_apart(engine, world):
    """The order flow's single pass over the touched days gives each run exactly the figures
    run_kpis computes on its own, and stores exactly compute_daily's, also when a run spans two
    days that hold other runs' events (R3 below: s5 paid on D1, s2 allocated again on D2)."""
    world.event("s5", "invoiced", "paid", T0 + s(5 * 3600), R3)
    world.event("s2", "invoiced", "allocated", T0 + s(26 * 3600), R3)
    world.event("s3", "captured", "validated", T0 + s(27 * 3600), R3)  # gated again, on D2
    world.ops("s6", "note", T0 + s(28 * 3600), R3)
    for run in (R1, R2, R3):
        days = kpis.days_touched(engine, run)
        alone = kpis.run_kpis(engine, run, readers=READERS)
        daily = kpis.compute_daily(engine, days, readers=READERS)
        counts, figures = kpis.refresh_and_run_kpis(engine, run, readers=READERS)
        assert figures == alone
        assert counts["days"] == len(days)
        stored = [r for r in kpis.daily_kpis(engine, min(days), max(days))
                  if r["metric"] != "missed_rate"]
        assert stored == [r.as_dict() for r in daily]
        assert metrics.summary_cycle_times(figures) == {
            st: metrics.cycle_times(engine, run, st) for st in ("allocated", "invoiced", "paid")}
    # R3 on its own: s1 paid (D2, 30 h) and s5 paid (D1, 5 h); s2 allocated again (its first
    # allocation was in R1: in R3 it reached the stage 26 h after capture)
    k = kpis.run_kpis(engine, R3)
    assert k["cycle_time"]["paid"] == {"count": 2, "p50_s": D(18000), "p95_s": D(108000)}
    assert k["cycle_time"]["allocated"] == {"count": 1, "p50_s": D(93600), "p95_s": D(93600)}


def test_outbox_by_status_counts_each_operation_and_status(engine, world):
    from sqlalchemy import insert

    from warehouse.schema import outbox

    statuses = ["done"] * 5 + ["pending", "failed", "sending"] + ["done", "failed"]
    operations = ["fulfilment"] * 8 + ["invoice"] * 2
    with begin_write(engine) as conn:
        conn.execute(insert(outbox), [
            {"idempotency_key": f"k{i}", "target": "shopify", "operation": op,
             "business_key": f"b{i}", "order_id": world.ids["s1"], "payload": {},
             "status": st, "attempts": 0, "created_at": T0, "run_id": R1}
            for i, (op, st) in enumerate(zip(operations, statuses, strict=True))])
        conn.execute(insert(outbox).values(
            idempotency_key="k-sales", target="kingdee", operation="sales_order",
            business_key="b-sales", order_id=None, payload={}, status="pending", attempts=0,
            created_at=T0, run_id=R1))
    got = metrics.outbox_by_status(engine)
    assert got == {"fulfilment": {"done": 5, "failed": 1, "pending": 1, "sending": 1},
                   "invoice": {"done": 1, "failed": 1}, "sales_order": {"pending": 1}}
    assert [list(v) for v in got.values()] == [sorted(v) for v in got.values()]
    assert list(got) == sorted(got)
    assert metrics.outbox_by_status(engine) == got
