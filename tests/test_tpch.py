"""The TPC-H channel: sandbox.tpch's seeded defects and truth, and TpchConnector's streams,
merge-join, snapshot cursor, bad input and fulfilment push. One SF 0.01 drop per module."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from connectors.base import Cursor, Page
from connectors.files import count_confirmations, read_confirmations
from connectors.http import SourceError
from connectors.registry import build_connector
from connectors.tpch import TpchConnector
from sandbox.tpch import KINDS, TpchTruth, generate_tpch, load_truth

SF = 0.01
RATE = 0.02
CENT = Decimal("0.01")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TpchTruth]:
    root = tmp_path_factory.mktemp("tpch")
    truth = generate_tpch(SF, root / "drop", seed=7, defect_rate=RATE, cache=root / "cache")
    return root / "drop", truth


@pytest.fixture(scope="module")
def mapped(world: tuple[Path, TpchTruth]) -> dict[str, list[dict]]:
    """Every stream, read in full and mapped."""
    drop, _ = world
    conn = _conn(drop)
    return {s: [conn.map(s, r.payload) for r in _records(conn, s)] for s in conn.streams}


def _conn(drop: Path, **options: Any) -> TpchConnector:
    conn = build_connector("tpch", {"system": "tpch", "base_url": drop.as_uri(),
                                    "options": {"currency": "USD", **options}})
    assert isinstance(conn, TpchConnector)
    return conn


def _records(conn: TpchConnector, stream: str, cursor: Cursor | None = None) -> list:
    return [r for p in conn.read(stream, cursor) for r in p.records]


def _copy(drop: Path, dest: Path) -> Path:
    shutil.copytree(drop, dest)
    return dest


# ------------------------------------------------------------------------------------ truth


def test_truth_counts_match_the_files(world: tuple[Path, TpchTruth]) -> None:
    drop, truth = world
    rows = {t: pq.ParquetFile(drop / f"{t}.parquet").metadata.num_rows
            for t in ("orders", "lineitem", "customer", "part", "partsupp", "payments")}
    assert (truth.orders, truth.lines) == (rows["orders"], rows["lineitem"])
    assert (truth.customers, truth.parts, truth.stock_rows) == (1500, 2000, 8000)
    assert truth.payments == rows["payments"]
    assert truth.clean == truth.orders - len(truth.defects)
    assert sum(truth.invoice_status.values()) == truth.clean
    assert truth.payments == (truth.invoice_status["paid"] + truth.invoice_status["part_paid"]
                              + len(truth.unmatched_payments))
    assert len(truth.unmatched_payments) == round(15000 * RATE / 20)
    by_kind = Counter(truth.defects.values())
    assert set(by_kind) == set(KINDS)
    for kind in KINDS:  # 15000 orders x 2 % / 5 kinds = 60 each, give or take the hash
        assert 30 <= by_kind[kind] <= 90, (kind, by_kind)
    assert truth.defects_by_kind == dict(by_kind)
    assert truth.ample_stock
    assert load_truth(drop.parent / "truth.json") == truth


def test_generation_is_deterministic_for_a_seed(world: tuple[Path, TpchTruth],
                                                tmp_path: Path) -> None:
    drop, truth = world
    cache = drop.parent / "cache"
    again = generate_tpch(SF, tmp_path / "a" / "drop", seed=7, defect_rate=RATE, cache=cache)
    assert again == truth
    other = generate_tpch(SF, tmp_path / "b" / "drop", seed=8, defect_rate=RATE, cache=cache)
    assert other.defects != truth.defects
    assert abs(len(other.defects) - len(truth.defects)) < 100


def test_each_defect_fails_exactly_its_check(world: tuple[Path, TpchTruth],
                                             mapped: dict[str, list[dict]]) -> None:
    """The suite's checks, restated over the mapped streams: every defective order fails its
    seeded check and no other; every other order fails none."""
    drop, truth = world
    customers = {c["code"] for c in mapped["customers"]}
    prices = {p["sku"]: p["price"] for p in mapped["prices"]}
    first: dict[tuple, str] = {}
    failed: dict[str, set[str]] = {}
    for o in mapped["orders"]:
        fails = set()
        if o["customer_code"] not in customers:
            fails.add("customer_known")
        if any(li["sku"] not in prices for li in o["lines"]):
            fails.add("sku_known")
        if any(li["qty"] is None or li["qty"] <= 0 for li in o["lines"]):
            fails.add("qty_positive")
        if any(li["sku"] in prices and abs(li["unit_price"] - prices[li["sku"]]) > CENT
               for li in o["lines"]):
            fails.add("price_matches_list")
        content = (o["customer_code"], o["ordered_at"], o["currency"], o["total"],
                   tuple(sorted((li["sku"], li["qty"].normalize(), li["unit_price"].normalize())
                                for li in o["lines"])))
        if content in first:
            fails.add("not_duplicate")
        first.setdefault(content, o["order_no"])
        if not o["ship_region"] or not o["currency"] or not o["lines"]:
            fails.add("required_fields")
        if fails:
            failed[o["order_no"]] = fails
    # the connector takes the ship region from the customer: an unknown one has none
    unknown = {k for k, v in truth.defects.items() if v == "customer_known"}
    assert {k for k, v in failed.items() if "required_fields" in v} == unknown
    for k in unknown:
        failed[k].discard("required_fields")
    assert failed == {k: {v} for k, v in truth.defects.items()}
    # with a default ship region that overlap goes away
    conn = _conn(drop, default_ship_region="unknown")
    order = next(r for r in _records(conn, "orders") if r.external_id in unknown)
    assert conn.map("orders", order.payload)["ship_region"] == "unknown"


def test_duplicates_are_appended_copies_with_fresh_keys(world: tuple[Path, TpchTruth],
                                                        mapped: dict[str, list[dict]]) -> None:
    _, truth = world
    orders = mapped["orders"]
    keys = [int(o["order_no"][1:]) for o in orders]
    assert keys == sorted(keys)
    copies = [o for o in orders if truth.defects.get(o["order_no"]) == "not_duplicate"]
    originals = [o for o in orders if o["order_no"] not in truth.defects]
    top = max(int(o["order_no"][1:]) for o in originals)
    assert copies and orders[-len(copies):] == copies  # at the end of the file
    assert all(int(o["order_no"][1:]) > top for o in copies)


def test_payments_follow_order_status(world: tuple[Path, TpchTruth],
                                      mapped: dict[str, list[dict]]) -> None:
    drop, truth = world
    status = dict(zip((f"O{k}" for k in pq.read_table(drop / "orders.parquet",
                                                      columns=["o_orderkey"])[0].to_pylist()),
                      pq.read_table(drop / "orders.parquet",
                                    columns=["o_orderstatus"])[0].cast("string").to_pylist(),
                      strict=True))
    totals = {o["order_no"]: o["total"] for o in mapped["orders"]}
    dates = {o["order_no"]: o["ordered_at"] for o in mapped["orders"]}
    customers = {c["code"] for c in mapped["customers"]}
    seen: Counter[str] = Counter()
    for p in mapped["payments"]:
        assert p["currency"] == "USD" and p["received_at"] == p["updated_at"]
        ref = p["reference"]
        if p["external_id"] in truth.unmatched_payments:
            assert ref.startswith("UNKNOWN-") and ref not in totals
            assert p["customer_code"] not in customers
            continue
        assert p["external_id"] == f"PAY-{ref}" and ref not in truth.defects
        if status[ref] == "F":
            assert p["amount"] == totals[ref]
        else:
            assert status[ref] == "P"
            assert p["amount"] == (totals[ref] / 2).quantize(CENT, rounding="ROUND_DOWN")
        assert (p["received_at"] - dates[ref]).days == 30
        seen[status[ref]] += 1
    assert seen == {"F": truth.invoice_status["paid"], "P": truth.invoice_status["part_paid"]}


# ------------------------------------------------------------------------------------ mapping


def test_stream_mappings_of_known_rows(world: tuple[Path, TpchTruth],
                                       mapped: dict[str, list[dict]]) -> None:
    drop, truth = world
    mtime = _conn(drop)._mtime(TpchConnector.streams["customers"])
    c1 = mapped["customers"][0]
    assert c1 == {"external_id": "C1", "code": "C1", "name": "Customer#000000001",
                  "email": None, "region": "africa", "customer_group": "building",
                  "credit_limit": Decimal("711.56"), "currency": "USD", "updated_at": mtime}
    assert {c["region"] for c in mapped["customers"]} == {
        "africa", "america", "asia", "europe", "middle_east"}
    p1 = mapped["prices"][0]
    assert (p1["external_id"], p1["sku"], p1["name"], p1["currency"], p1["price"]) == (
        "P1", "P1", "goldenrod lavender spring chocolate lace", "USD", Decimal("901.00"))
    s1 = mapped["stock"][0]
    assert (s1["external_id"], s1["sku"], s1["warehouse"], s1["region"], s1["qty"]) == (
        "P1@S2", "P1", "S2", "africa", Decimal(3325))
    assert "O1" not in truth.defects
    o1 = mapped["orders"][0]
    assert {k: o1[k] for k in ("external_id", "order_no", "customer_code", "customer_email",
                               "currency", "ship_region", "total")} == {
        "external_id": "O1", "order_no": "O1", "customer_code": "C370", "customer_email": None,
        "currency": "USD", "ship_region": "asia", "total": Decimal("180734.63")}
    assert o1["ordered_at"].isoformat() == "1996-01-02T00:00:00+00:00"
    assert len(o1["lines"]) == 6
    assert o1["lines"][0] == {"line_no": 1, "sku": "P1552", "qty": Decimal("17.00"),
                              "unit_price": Decimal("1453.55")}
    assert o1["total"] == sum(li["qty"] * li["unit_price"] for li in o1["lines"])


def test_payloads_are_the_rows_read(world: tuple[Path, TpchTruth]) -> None:
    drop, _ = world
    conn = _conn(drop, batch_rows=3)
    page = next(conn.read("orders", None))
    payload = page.records[0].payload
    assert set(payload) == {"order", "customer_region", "lines"}
    assert payload["order"] == {"o_orderkey": 1, "o_custkey": 370, "o_orderdate": "1996-01-02"}
    assert payload["customer_region"] == "ASIA"
    assert payload["lines"][0] == {"l_orderkey": 1, "l_linenumber": 1, "l_partkey": 1552,
                                   "l_quantity": Decimal("17.00"),
                                   "l_extendedprice": Decimal("24710.35")}
    pay = next(conn.read("payments", None)).records[0].payload
    assert isinstance(pay["received_at"], str) and isinstance(pay["amount"], Decimal)


# ------------------------------------------------------------------------------------ reading


def test_merge_join_over_small_batches(world: tuple[Path, TpchTruth]) -> None:
    drop, truth = world
    conn = _conn(drop, batch_rows=7)
    pages = list(conn.read("orders", None))
    records = [r for p in pages for r in p.records]
    assert all(1 <= len(p.records) <= 7 for p in pages)
    ids = [r.external_id for r in records]
    assert len(ids) == len(set(ids)) == truth.orders == conn.count("orders")
    assert sum(len(r.payload["lines"]) for r in records) == truth.lines
    for r in records:
        key = r.payload["order"]["o_orderkey"]
        assert r.external_id == f"O{key}" and r.payload["lines"]
        assert {li["l_orderkey"] for li in r.payload["lines"]} == {key}
        numbers = [li["l_linenumber"] for li in r.payload["lines"]]
        assert numbers == list(range(1, len(numbers) + 1))
    for p in pages:  # each page carries its last record's position
        assert p.cursor is not None
        assert p.cursor.id == f"{p.records[-1].payload['order']['o_orderkey']:012d}"
    assert conn.orphan_lines == 0


def _small_groups(drop: Path, dest: Path) -> Path:
    """The drop with orders and lineitem in many small row groups."""
    _copy(drop, dest)
    for name, size in (("orders.parquet", 1000), ("lineitem.parquet", 4000)):
        table = pq.read_table(drop / name)
        (dest / name).unlink()
        pq.write_table(table, dest / name, row_group_size=size)
    return dest


def test_cursor_resume_mid_file_skips_row_groups(world: tuple[Path, TpchTruth],
                                                 tmp_path: Path) -> None:
    drop, truth = world
    folder = _small_groups(drop, tmp_path / "drop")
    conn = _conn(folder, batch_rows=500)
    pages = list(conn.read("orders", None))
    every = [r.external_id for p in pages for r in p.records]
    mid = pages[len(pages) // 2]
    assert mid.cursor is not None
    done = every.index(mid.records[-1].external_id) + 1
    again = _conn(folder, batch_rows=500)
    rest = list(again.read("orders", mid.cursor))
    assert [r.external_id for p in rest for r in p.records] == every[done:]
    lines = sum(len(r.payload["lines"]) for p in rest for r in p.records)
    assert lines == truth.lines - sum(len(r.payload["lines"]) for p in pages[: pages.index(mid)
                                                                                + 1]
                                      for r in p.records)
    groups = pq.ParquetFile(folder / "orders.parquet").metadata.num_row_groups
    assert again.row_groups_read["orders.parquet"] <= groups // 2 + 1
    assert again.row_groups_read["lineitem.parquet"] < pq.ParquetFile(
        folder / "lineitem.parquet").metadata.num_row_groups


@pytest.mark.parametrize("stream", ["customers", "prices", "stock", "payments"])
def test_cursor_resume_other_streams(world: tuple[Path, TpchTruth], stream: str) -> None:
    drop, _ = world
    conn = _conn(drop, batch_rows=300)
    pages = list(conn.read(stream, None))
    every = [r.external_id for p in pages for r in p.records]
    assert len(every) == len(set(every)) == conn.count(stream)
    rest = [r.external_id for r in _records(_conn(drop, batch_rows=300), stream,
                                            pages[1].cursor)]
    assert rest == every[600:]
    assert list(_conn(drop).read(stream, pages[-1].cursor)) == []


def test_rerun_with_the_final_cursor_reads_nothing(world: tuple[Path, TpchTruth]) -> None:
    drop, _ = world
    pages: list[Page] = list(_conn(drop, batch_rows=4000).read("orders", None))
    last = pages[-1]
    assert last.cursor is not None
    conn = _conn(drop)
    assert list(conn.read("orders", last.cursor)) == []
    assert conn.opened_files == []  # not one data page read (the footers only)


def test_a_touched_file_is_read_again(world: tuple[Path, TpchTruth], tmp_path: Path) -> None:
    drop, truth = world
    folder = _copy(drop, tmp_path / "drop")
    pages = list(_conn(folder, batch_rows=4000).read("orders", None))
    final = pages[-1].cursor
    assert final is not None
    st = (folder / "lineitem.parquet").stat()
    os.utime(folder / "lineitem.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again = _records(_conn(folder), "orders", final)
    assert len(again) == truth.orders
    assert again[0].updated_at is not None
    assert again[0].updated_at.isoformat() > final.updated_at.replace("Z", "+00:00")
    # ... and with that new cursor, nothing again
    newest = list(_conn(folder, batch_rows=100_000).read("orders", None))[-1].cursor
    assert list(_conn(folder).read("orders", newest)) == []


# ------------------------------------------------------------------------------------ bad input


def _one_line_error(conn: TpchConnector, stream: str) -> str:
    with pytest.raises(SourceError) as exc:
        list(conn.read(stream, None))
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_missing_file_column_or_folder_is_one_line(world: tuple[Path, TpchTruth],
                                                   tmp_path: Path) -> None:
    drop, _ = world
    folder = _copy(drop, tmp_path / "drop")
    (folder / "payments.parquet").unlink()
    assert "payments.parquet: file not found" in _one_line_error(_conn(folder), "payments")
    table = pq.read_table(drop / "customer.parquet")
    (folder / "customer.parquet").unlink()
    pq.write_table(table.drop_columns(["c_mktsegment"]), folder / "customer.parquet")
    text = _one_line_error(_conn(folder), "customers")
    assert "customer.parquet: column c_mktsegment missing" in text
    # orders need the customer file's keys only
    assert len(_records(_conn(folder), "orders")) > 0
    (folder / "lineitem.parquet").write_bytes(b"not parquet")
    assert "lineitem.parquet: not readable as Parquet" in _one_line_error(_conn(folder),
                                                                           "orders")
    assert "not found" in _one_line_error(_conn(tmp_path / "nowhere"), "prices")


def test_config_errors(world: tuple[Path, TpchTruth]) -> None:
    drop, _ = world
    with pytest.raises(ValueError, match="unknown option 'pattern'"):
        _conn(drop, pattern="*.parquet")
    with pytest.raises(ValueError, match="base_url"):
        build_connector("tpch", {"system": "tpch", "base_url": "relative/path"})
    with pytest.raises(ValueError, match="cannot push 'invoice'"):
        _conn(drop).push("invoice", [])


# ------------------------------------------------------------------------------------ push


def test_fulfilment_push_is_idempotent(world: tuple[Path, TpchTruth], tmp_path: Path) -> None:
    drop, _ = world
    conn = _conn(drop, outbound=str(tmp_path / "out"))
    docs = [{"key": f"ful-O{i}", "order_external_id": f"O{i}", "order_no": f"O{i}",
             "lines": [{"sku": "P1", "qty": "1"}]} for i in (1, 2)]
    first = conn.push("fulfilment", docs)
    assert [r.ok for r in first] == [True, True]
    assert len(list((tmp_path / "out").glob("confirmations-*.csv"))) == 1
    assert [r.ok for r in conn.push("fulfilment", docs)] == [True, True]
    more = docs + [{"key": "ful-O3", "order_no": "O3", "lines": []}]
    results = _conn(drop, outbound=str(tmp_path / "out")).push("fulfilment", more, recover=True)
    assert all(r.ok for r in results)
    assert results[0].remote_id == first[0].remote_id  # found where it was written
    assert count_confirmations(tmp_path / "out") == {"ful-O1": 1, "ful-O2": 1, "ful-O3": 1}
    assert set(read_confirmations(tmp_path / "out")) == {"ful-O1", "ful-O2", "ful-O3"}
    bad = conn.push("fulfilment", [{"key": "", "order_no": "O9"}])
    assert not bad[0].ok and "required" in (bad[0].error or "")


def test_default_outbound_is_next_to_the_drop(world: tuple[Path, TpchTruth]) -> None:
    drop, _ = world
    assert _conn(drop).outbound == (drop.parent / "outbound").resolve()
