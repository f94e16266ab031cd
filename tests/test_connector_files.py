"""FileDropConnector against FileDropFake folders: CSV and Parquet in bounded batches, orders never
split, the (mtime, name) cursor and the manifest, quarantine of bad files, Decimal money from both
formats, confirmations written once per key, and the sandbox wiring of a fake without HTTP."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.base import Cursor, MappingError, Page
from connectors.files import FileDropConnector, count_confirmations, read_confirmations
from connectors.http import SourceError
from connectors.registry import build_connector
from sandbox import start_sandbox
from sandbox.files import FileDropFake, set_mtime, write_csv

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def _order(i: int, lines: int = 2, updated: datetime | None = None, **over: Any) -> dict:
    updated = updated or T0 + timedelta(minutes=i)
    o = {
        "external_id": f"D-{i:05d}", "order_no": f"D-{i:05d}", "customer_code": "C00001",
        "customer_email": None, "ordered_at": updated - timedelta(hours=1), "updated_at": updated,
        "currency": "CNY", "ship_region": "east",
        "lines": [{"line_no": n, "sku": f"SKU-{n:05d}", "qty": Decimal(n),
                   "unit_price": Decimal("10.05") + n} for n in range(1, lines + 1)],
    }
    o["total"] = sum((li["qty"] * li["unit_price"] for li in o["lines"]), Decimal(0))
    o.update(over)
    return o


@pytest.fixture
def fake() -> Iterator[FileDropFake]:
    f = FileDropFake([])  # empty: each test drops its own files
    f.start()
    yield f
    f.stop()


def _connector(fake: FileDropFake, **options: Any) -> FileDropConnector:
    cfg = {"system": "files", "base_url": fake.base_url, "lookback_seconds": 600,
           "options": {"batch_rows": 50, **options}}
    conn = build_connector("drop", cfg)
    assert isinstance(conn, FileDropConnector)
    return conn


def _read(conn: FileDropConnector, cursor: Cursor | None = None,
          stream: str = "orders") -> tuple[list[Page], list]:
    pages = list(conn.read(stream, cursor))
    return pages, [r for p in pages for r in p.records]


def _last_cursor(pages: list[Page]) -> Cursor:
    return [p.cursor for p in pages if p.cursor][-1]


def _walk(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


# ------------------------------------------------------------------------------ batches, pages


@pytest.mark.parametrize("name", ["big.csv", "big.parquet"])
def test_a_file_larger_than_batch_rows_streams_in_batches_and_orders_arrive_whole(fake, name):
    orders = [_order(i, lines=1 + i % 4) for i in range(400)]  # 1000 rows, 1..4 lines each
    fake.add_file(name, orders)
    conn = _connector(fake, batch_rows=64, csv={"block_size": 4096})
    pages, records = _read(conn)

    assert conn.batches_read > 1, "pyarrow must stream the file, not read it whole"
    rows = [sum(len(r.payload["lines"]) for r in p.records) for p in pages]
    assert sum(rows) == 1000 and max(rows) <= 64 + 4  # a page: batch_rows + the held order
    assert len(pages) >= 1000 // 64
    assert [r.external_id for r in records] == [o["order_no"] for o in orders]  # each once
    for rec, o in zip(records, orders, strict=True):
        assert len(rec.payload["lines"]) == len(o["lines"])
    # Only the page completing the file carries its position; earlier ones the incoming cursor.
    assert [p.cursor for p in pages[:-1]] == [None] * (len(pages) - 1)
    assert pages[-1].cursor == Cursor("2026-10-01T06:39:00Z", name)


def test_an_order_straddling_a_batch_boundary_arrives_whole_in_one_page(fake):
    fake.add_file("a.csv", [_order(1, lines=2), _order(2, lines=5), _order(3, lines=1)])
    pages, records = _read(_connector(fake, batch_rows=3))
    by_id = {r.external_id: r for r in records}
    assert len(by_id["D-00002"].payload["lines"]) == 5
    # rows 1a 1b 2a | 2b 2c 2d | 2e 3a: D-2 waits over two batches, then D-3 ends the file
    assert [[r.external_id for r in p.records] for p in pages] == [["D-00001"], ["D-00002"],
                                                                   ["D-00003"]]
    mapped = _connector(fake).map("orders", by_id["D-00002"].payload)
    assert [li["line_no"] for li in mapped["lines"]] == [1, 2, 3, 4, 5]


def test_money_is_decimal_from_csv_and_parquet_never_float(fake):
    o1, o2 = _order(1), _order(2)
    o1["lines"][0]["unit_price"] = "0012.50"  # CSV keeps the text as written
    fake.add_file("a.csv", [o1])
    fake.add_file("b.parquet", [o2])
    conn = _connector(fake)
    _, records = _read(conn)
    by_id = {r.external_id: r for r in records}
    parquet_line = by_id["D-00002"].payload["lines"][0]
    assert isinstance(parquet_line["unit_price"], Decimal)  # decimal128 -> Decimal, not float
    assert by_id["D-00001"].payload["lines"][0]["unit_price"] == "0012.50"  # CSV: text
    for rec in records:
        mapped = conn.map("orders", rec.payload)
        assert not any(isinstance(v, float) for v in _walk(mapped))
        assert not any(isinstance(v, float) for v in _walk(rec.payload))
    m1 = conn.map("orders", by_id["D-00001"].payload)
    m2 = conn.map("orders", by_id["D-00002"].payload)
    assert m1["lines"][0]["unit_price"] == Decimal("12.50")
    assert m2["lines"][0]["unit_price"] == Decimal("11.05")
    assert m2["total"] == o2["total"] and isinstance(m2["total"], Decimal)
    assert m2["ordered_at"] == o2["ordered_at"] and m2["updated_at"] == o2["updated_at"]


def test_float_money_in_parquet_is_a_bad_file(fake):
    table = pa.table({"order_no": ["F-1"], "sku": ["SKU-1"], "qty": [1],
                      "unit_price": pa.array([19.9], pa.float64())})
    pq.write_table(table, fake.inbox / "floaty.parquet")
    conn = _connector(fake)
    _, records = _read(conn)
    assert records == []
    [(name, reason)] = conn.quarantined_files
    assert name == "floaty.parquet" and "unit_price" in reason and "float" in reason


# -------------------------------------------------------------------------- cursor and manifest


def _three_files(fake: FileDropFake) -> None:
    for k in range(3):  # one file an hour: far apart compared with the 600 s lookback
        fake.add_file(f"day-{k}.csv", [_order(10 * k + j, updated=T0 + timedelta(hours=k))
                                       for j in range(3)])


def test_processed_files_are_not_read_twice(fake):
    _three_files(fake)
    first = _connector(fake)
    pages, records = _read(first)
    assert first.opened_files == ["day-0.csv", "day-1.csv", "day-2.csv"] and len(records) == 9
    cursor = _last_cursor(pages)
    assert cursor == Cursor("2026-10-01T02:00:00Z", "day-2.csv")

    again = _connector(fake)
    pages, records = _read(again, cursor)
    # Files before cursor - lookback are not opened; the last one is the overlap window.
    assert again.opened_files == ["day-2.csv"]
    assert {r.external_id for r in records} == {"D-00020", "D-00021", "D-00022"}
    assert _last_cursor(pages) == cursor

    fake.add_file("day-3.csv", [_order(30, updated=T0 + timedelta(hours=3))])
    third = _connector(fake)
    pages, _ = _read(third, cursor)
    assert third.opened_files == ["day-2.csv", "day-3.csv"]
    assert _last_cursor(pages) == Cursor("2026-10-01T03:00:00Z", "day-3.csv")


def test_a_changed_file_is_read_again_and_a_touched_one_is_not(fake):
    _three_files(fake)
    pages, _ = _read(_connector(fake))
    cursor = _last_cursor(pages)

    # Re-sent with new content but the old mtime kept (cp -p, rsync -t): only the manifest sees it.
    old = fake.inbox / "day-0.csv"
    fake.add_file("day-0.csv", [_order(0, lines=3, updated=T0)], mtime=T0)
    conn = _connector(fake)
    _, records = _read(conn, cursor)
    assert conn.opened_files == ["day-0.csv", "day-2.csv"]
    assert len(next(r for r in records if r.external_id == "D-00000").payload["lines"]) == 3

    # Same content, another (still old) mtime: hashed, found unchanged, not read (and every
    # other file is before this later cursor's window).
    set_mtime(old, T0 + timedelta(minutes=5))
    conn = _connector(fake)
    _read(conn, Cursor("2026-10-01T03:00:00Z", "later.csv"))
    assert conn.opened_files == []


def test_a_late_file_with_an_old_mtime_is_read_until_a_later_cursor_covers_it(fake):
    _three_files(fake)
    pages, _ = _read(_connector(fake))
    cursor = _last_cursor(pages)
    fake.add_file("late.csv", [_order(99)], mtime=T0 - timedelta(days=1))  # copied with its mtime

    conn = _connector(fake)
    pages, records = _read(conn, cursor)
    assert conn.opened_files == ["late.csv", "day-2.csv"]
    assert "D-00099" in {r.external_id for r in records}
    assert all(p.cursor == cursor for p in pages)  # read behind the cursor: it cannot move

    # The same cursor again (the run above may have crashed before committing): read again.
    conn = _connector(fake)
    _read(conn, cursor)
    assert conn.opened_files == ["late.csv", "day-2.csv"]
    # A later cursor was committed, so were the late file's records: not opened any more.
    fake.add_file("day-3.csv", [_order(30, updated=T0 + timedelta(hours=3))])
    later_cursor = Cursor("2026-10-01T03:00:00Z", "day-3.csv")
    conn = _connector(fake)
    _read(conn, later_cursor)
    assert conn.opened_files == ["day-3.csv"]


def test_a_crash_mid_file_reads_the_whole_file_again(fake):
    fake.add_file("a.csv", [_order(1)], mtime=T0)
    fake.add_file("b.csv", [_order(i, updated=T0 + timedelta(hours=2)) for i in range(2, 40)])
    conn = _connector(fake, batch_rows=10)
    it = conn.read("orders", None)
    taken = [next(it), next(it)]  # a.csv whole, then the first page of b.csv
    it.close()  # the consumer died here
    committed = _last_cursor(taken)
    assert committed == Cursor("2026-10-01T00:00:00Z", "a.csv")  # never b.csv mid-file

    conn = _connector(fake, batch_rows=10)
    pages, records = _read(conn, committed)
    assert conn.opened_files == ["a.csv", "b.csv"]  # a.csv: the overlap window
    assert {f"D-{i:05d}" for i in range(2, 40)} <= {r.external_id for r in records}
    assert _last_cursor(pages).id == "b.csv"


def test_a_file_still_being_written_is_not_completed_and_waits_for_the_next_run(fake, caplog):
    fake.add_file("a.csv", [_order(1)], mtime=T0)
    orders = [_order(i, updated=T0 + timedelta(hours=1)) for i in range(2, 22)]
    path = fake.add_file("b.csv", orders, mtime=T0 + timedelta(hours=1))
    fake.add_file("c.csv", [_order(50)], mtime=T0 + timedelta(hours=2))
    conn = _connector(fake, batch_rows=10)
    it = conn.read("orders", None)
    taken = [next(it), next(it)]  # a.csv, then the first page of b.csv
    with path.open("a", encoding="utf-8") as fh:  # the sender is still appending
        fh.write("D-00099,C00001,,,CNY,east,1,SKU-00001,1,1.00,,1.00\n")
    with caplog.at_level(logging.WARNING, logger="connectors.files"):
        taken += list(it)
    ids = [r.external_id for p in taken for r in p.records]
    assert "D-00021" not in ids  # b.csv's held last order is not emitted, maybe cut short
    assert "D-00050" not in ids and conn.opened_files == ["a.csv", "b.csv"]  # c.csv waits
    assert {p.cursor for p in taken} == {Cursor("2026-10-01T00:00:00Z", "a.csv")}
    assert "still being written" in caplog.text

    conn = _connector(fake, batch_rows=10)
    pages, records = _read(conn, _last_cursor(taken))
    assert {"D-00021", "D-00099", "D-00050"} <= {r.external_id for r in records}
    assert conn.opened_files == ["a.csv", "c.csv", "b.csv"]  # b.csv's mtime is now the newest
    assert _last_cursor(pages).id == "b.csv"


def test_files_with_one_mtime_are_taken_by_name(fake):
    for name in ("c.csv", "a.parquet", "b.csv"):
        fake.add_file(name, [_order(ord(name[0]))], mtime=T0)
    conn = _connector(fake)
    pages, _ = _read(conn)
    assert conn.opened_files == ["a.parquet", "b.csv", "c.csv"]
    assert [p.cursor.id for p in pages if p.cursor] == ["a.parquet", "b.csv", "c.csv"]


def test_recent_files_wait_for_settle_seconds(fake):
    fake.add_file("old.csv", [_order(1)], mtime=T0)
    fake.add_file("fresh.csv", [_order(2)], mtime=datetime.now(UTC))
    conn = _connector(fake, settle_seconds=30)
    pages, records = _read(conn)
    assert conn.opened_files == ["old.csv"] and _last_cursor(pages).id == "old.csv"


# --------------------------------------------------------------------------- bad files and rows


def test_bad_files_are_quarantined_with_their_reason_and_the_others_go_on(fake, caplog):
    fake.add_file("good-1.csv", [_order(1)], mtime=T0)
    fake.add_bad_file("no-money.csv", mtime=T0 + timedelta(minutes=1))
    (fake.inbox / "gbk.csv").write_bytes("order_no,sku,qty,unit_price\nX-1,SKU-1,1,单价\n"
                                         .encode("gbk"))
    (fake.inbox / "ragged.csv").write_text("order_no,sku,qty,unit_price\nR-1,SKU-1,1\n")
    write_csv(fake.inbox / "split.csv", [{"order_no": "S-1"}, {"order_no": "S-2"},
                                         {"order_no": "S-1"}])
    (fake.inbox / "broken.parquet").write_bytes(b"PAR1 not really")
    for n, name in enumerate(("gbk.csv", "ragged.csv", "split.csv", "broken.parquet"), start=2):
        set_mtime(fake.inbox / name, T0 + timedelta(minutes=n))
    fake.add_file("good-2.parquet", [_order(2)], mtime=T0 + timedelta(minutes=9))

    conn = _connector(fake)
    with caplog.at_level(logging.WARNING, logger="connectors.files"):
        pages, records = _read(conn)

    assert {r.external_id for r in records} == {"D-00001", "D-00002"}
    assert _last_cursor(pages).id == "good-2.parquet"
    reasons = dict(conn.quarantined_files)
    assert set(reasons) == {"no-money.csv", "gbk.csv", "ragged.csv", "split.csv", "broken.parquet"}
    assert "missing required column(s) qty, unit_price" in reasons["no-money.csv"]
    assert "UTF8" in reasons["gbk.csv"] or "utf" in reasons["gbk.csv"].lower()
    assert "Expected 4 columns" in reasons["ragged.csv"]
    assert "not consecutive" in reasons["split.csv"]
    assert "Parquet" in reasons["broken.parquet"]
    for name, reason in reasons.items():
        assert not (fake.inbox / name).exists() and (fake.quarantine / name).exists()
        text = (fake.quarantine / f"{name}.reason.txt").read_text(encoding="utf-8")
        assert text == reason + "\n" and text.startswith(name) and text.count("\n") == 1
        assert any(name in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
    # Gone from the inbox: the next run neither sees nor counts them.
    again = _connector(fake)
    _read(again)
    assert again.quarantined_files == [] and "gbk.csv" not in again.opened_files


def test_a_bad_last_file_still_moves_the_cursor(fake):
    fake.add_file("good.csv", [_order(1)], mtime=T0)
    fake.add_bad_file("zz-bad.csv", mtime=T0 + timedelta(hours=1))
    pages, _ = _read(_connector(fake))
    assert pages[-1].records == [] and pages[-1].cursor == Cursor("2026-10-01T01:00:00Z",
                                                                  "zz-bad.csv")


def test_an_unparseable_row_is_a_rejected_record_not_a_bad_file(fake):
    bad = _order(2)
    bad["lines"][1]["qty"] = "two"
    fake.add_file("a.csv", [_order(1), bad, _order(3)])
    conn = _connector(fake)
    _, records = _read(conn)
    assert conn.quarantined_files == [] and len(records) == 3
    with pytest.raises(MappingError, match=r"lines\[2\]\.qty \(row 4\): not a number: 'two'"):
        conn.map("orders", records[1].payload)
    assert conn.map("orders", records[2].payload)["order_no"] == "D-00003"


def test_the_lines_of_one_order_must_agree_on_order_fields(fake):
    o = _order(1)
    fake.add_file("a.csv", [o])
    _, [rec] = _read(_connector(fake))
    rec.payload["lines"][1]["currency"] = "USD"
    with pytest.raises(MappingError, match="currency: the lines of one order disagree"):
        _connector(fake).map("orders", rec.payload)
    rec.payload["lines"][1]["currency"] = ""  # blank on later lines: the first line's value
    assert _connector(fake).map("orders", rec.payload)["currency"] == "CNY"


# ----------------------------------------------------------------------- layout and options


def test_column_mapping_csv_options_and_optional_columns(fake):
    path = fake.inbox / "partner.txt"
    header = ("Auftrag", "Artikel", "Menge", "Preis", "Waehrung")
    rows = [{"Auftrag": "P-1", "Artikel": "SKU-1", "Menge": "2", "Preis": "1,5", "Waehrung": "CNY"},
            {"Auftrag": "P-1", "Artikel": "SKU-2", "Menge": "1", "Preis": "3.25",
             "Waehrung": "CNY"},
            {"Auftrag": "P-2", "Artikel": "货品", "Menge": "1", "Preis": "4", "Waehrung": "CNY"}]
    write_csv(path, rows, columns=header, delimiter=";", encoding="gbk")
    set_mtime(path, T0)
    conn = _connector(fake, pattern="*.txt", csv={"delimiter": ";", "encoding": "gbk"},
                      columns={"order_no": "Auftrag", "sku": "artikel", "qty": "Menge",
                               "unit_price": "Preis", "currency": "Waehrung"})
    _, records = _read(conn)
    assert [r.external_id for r in records] == ["P-1", "P-2"]
    assert records[0].updated_at == T0  # no updated_at column: the file's mtime
    with pytest.raises(MappingError, match=r"lines\[1\]\.unit_price"):
        conn.map("orders", records[0].payload)  # "1,5" is not a number: rejected, not guessed
    p2 = conn.map("orders", records[1].payload)
    assert p2["lines"] == [{"line_no": 1, "sku": "货品", "qty": Decimal(1),
                            "unit_price": Decimal(4)}]
    assert p2["total"] == Decimal(4) and p2["customer_code"] is None and p2["updated_at"] == T0


def test_config_errors_name_the_source_and_key(fake):
    base = {"system": "files", "base_url": fake.base_url}
    with pytest.raises(ValueError, match="'drop'.*base_url"):
        build_connector("drop", {"system": "files", "base_url": "relative/inbox"})
    with pytest.raises(ValueError, match="unknown option 'colums'"):
        build_connector("drop", {**base, "options": {"colums": {}}})
    with pytest.raises(ValueError, match="csv.encoding"):
        build_connector("drop", {**base, "options": {"csv": {"encoding": "nope"}}})
    conn = build_connector("drop", {**base, "options": {"columns": {"qtty": "Q"}}})
    with pytest.raises(ValueError, match="columns.qtty"):
        list(conn.read("orders", None))
    # A plain absolute path works as well as a file URL.
    assert build_connector("drop", {**base, "base_url": str(fake.inbox)}).inbox == fake.inbox


def test_an_unreadable_inbox_is_a_source_error_naming_source_and_path(fake):
    missing = fake.inbox / "nope"
    conn = build_connector("drop", {"system": "files", "base_url": missing.as_uri()})
    with pytest.raises(SourceError) as err:
        list(conn.read("orders", None))
    text = str(err.value)
    assert text.startswith("drop: ") and str(missing) in text and "\n" not in text


def test_customers_and_stock_streams_use_the_same_machinery(fake):
    (fake.inbox / "customers").mkdir()
    (fake.inbox / "stock").mkdir()
    write_csv(fake.inbox / "customers" / "c.csv",
              [{"code": "C1", "name": "Acme", "credit_limit": "5000.00",
                "updated_at": "2026-10-01T00:00:00Z"}, {"code": "", "name": "nobody"}],
              columns=("code", "name", "credit_limit", "updated_at"))
    pq.write_table(pa.table({"sku": ["SKU-1"], "warehouse": ["WH-EAST"],
                             "qty": pa.array([Decimal("7.5")], pa.decimal128(10, 1))}),
                   fake.inbox / "stock" / "s.parquet")
    conn = _connector(fake)
    _, customers = _read(conn, stream="customers")
    assert [c.external_id for c in customers] == ["C1", "c.csv#row2"]
    assert conn.map("customers", customers[0].payload)["credit_limit"] == Decimal("5000.00")
    with pytest.raises(MappingError, match="code: missing"):
        conn.map("customers", customers[1].payload)
    _, stock = _read(conn, stream="stock")
    assert conn.map("stock", stock[0].payload)["qty"] == Decimal("7.5")
    assert stock[0].external_id == "SKU-1@WH-EAST"
    _, orders = _read(conn)
    assert orders == []  # the subfolders are not the orders inbox


# ------------------------------------------------------------------------------ confirmations


def _docs(*keys: str) -> list[dict]:
    return [{"key": k, "order_external_id": f"D-{k}", "order_no": f"D-{k}",
             "lines": [{"sku": "SKU-1", "qty": "1"}]} for k in keys]


def test_confirmations_are_written_once_per_key_across_reruns_and_recovery(fake):
    conn = _connector(fake)
    first = conn.push("fulfilment", _docs("k1", "k2"))
    assert all(r.ok for r in first) and first[0].remote_id == first[1].remote_id
    files = sorted(p.name for p in fake.outbound.iterdir())
    assert files == [first[0].remote_id] and files[0].startswith("confirmations-")

    # The same batch again (a rerun): the file exists, nothing is written twice.
    again = _connector(fake).push("fulfilment", _docs("k2", "k1"))
    assert [r.remote_id for r in again] == [first[1].remote_id, first[0].remote_id]
    # Recovery after a crash between writing and marking done, in a bigger batch.
    rec_conn = _connector(fake)
    rec = rec_conn.push("fulfilment", _docs("k1", "k3", "k2"), recover=True)
    assert all(r.ok for r in rec) and rec[1].remote_id != first[0].remote_id
    assert rec_conn.confirmations_written == {"k3": 1}

    assert count_confirmations(fake.outbound) == {"k1": 1, "k2": 1, "k3": 1}
    assert fake.creates == {("fulfilment", "k1"): 1, ("fulfilment", "k2"): 1,
                            ("fulfilment", "k3"): 1}
    assert set(read_confirmations(fake.outbound)) == {"k1", "k2", "k3"}
    names = sorted(os.listdir(fake.outbound))
    assert len(names) == 2 and not any(n.startswith(".") for n in names)  # no temp files left
    text = (fake.outbound / first[0].remote_id).read_text(encoding="utf-8").splitlines()
    assert text[0] == "order_no,status,key,confirmed_at"
    assert text[1].startswith("D-k1,fulfilled,k1,") and text[1].endswith("Z")


def test_a_doc_without_key_fails_alone_and_unknown_operations_are_refused(fake):
    conn = _connector(fake)
    results = conn.push("fulfilment", [{"order_no": "X"}, *_docs("k9")])
    assert [r.ok for r in results] == [False, True] and "key" in (results[0].error or "")
    with pytest.raises(ValueError, match="invoice"):
        conn.push("invoice", _docs("k1"))


# ------------------------------------------------------------------------ sandbox and the flow


def test_the_sandbox_prepares_a_folder_for_the_files_fake_and_removes_it():
    ds = SimpleNamespace(orders={"files": [_order(i, updated=T0 + timedelta(hours=i))
                                           for i in range(9)]})
    with start_sandbox(ds, systems=("files",)) as sb:
        src = sb.sources()["files"]
        assert src["base_url"].startswith("file:///") and src["auth"] == {}
        fake = sb.apps["files"]
        assert sorted(fake.files) == ["orders-001.csv", "orders-002.csv", "orders-003.parquet"]
        conn = build_connector("drop", {"system": "files", **src})
        _, records = _read(conn)
        assert len(records) == 9 and conn.quarantined_files == []
        root = fake.root
    assert root is not None and not root.exists()
    assert sb.local == {} and sb.servers == {}


def test_the_fakes_bad_file_switch(tmp_path: Path):
    fake = FileDropFake({"orders": {"files": [_order(1)]}}, bad_file=True)
    fake.start()
    try:
        conn = build_connector("drop", {"system": "files", "base_url": fake.base_url})
        _, records = _read(conn)
        assert [r.external_id for r in records] == ["D-00001"]
        assert [n for n, _ in conn.quarantined_files] == ["orders-000-bad.csv"]
    finally:
        fake.stop()


def test_pulling_twice_through_the_flow_changes_nothing_the_second_time(fake, sqlite_engine):
    from flows.ingest import pull_stream
    from warehouse import load, runs

    bad = _order(5)
    bad["lines"][0]["unit_price"] = "N/A"
    fake.add_file("a.csv", [_order(i) for i in range(1, 5)], mtime=T0)
    fake.add_file("b.parquet", [bad, _order(6)], mtime=T0 + timedelta(hours=1))
    cfg = {"system": "files", "base_url": fake.base_url, "options": {"batch_rows": 3}}
    settings = SimpleNamespace(connector_config=lambda name: cfg)

    first = pull_stream(settings, sqlite_engine, runs.start_run(sqlite_engine, "t"), "drop",
                        "orders", batch_size=2)
    assert (first["received"], first["new"], first["rejected"]) == (6, 5, 1)
    assert load.get_cursor(sqlite_engine, "drop", "orders") == Cursor("2026-10-01T01:00:00Z",
                                                                      "b.parquet")
    second = pull_stream(settings, sqlite_engine, runs.start_run(sqlite_engine, "t"), "drop",
                         "orders", batch_size=2)
    assert second["new"] == 0 and second["changed"] == 0
