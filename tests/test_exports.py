"""Parquet exports: typed (Decimal stays decimal128), streamed, atomic, empty tables included."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, insert

from warehouse import exports
from warehouse import schema as s
from warehouse.exports import DEFAULT_TABLES, arrow_schema, export_parquet

RUN = "33333333-3333-4333-8333-333333333333"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def _seed(engine: Engine, n_orders: int = 3) -> None:
    with engine.begin() as conn:
        conn.execute(insert(s.orders), [
            {"id": i, "source": "shop", "external_id": str(i), "order_no": f"#{i}",
             "currency": "USD", "total": Decimal("1234567890123.45") + i, "status": "invoiced",
             "content_hash": "h", "captured_at": T0, "ordered_at": T0, "run_id": RUN,
             "order_date": T0.date()}
            for i in range(1, n_orders + 1)
        ])
        conn.execute(insert(s.order_lines), [
            {"order_id": 1, "line_no": 1, "sku": "A", "qty": Decimal("1.005"),
             "unit_price": Decimal("0.1234"), "amount": Decimal("0.12"), "run_id": RUN}
        ])
        conn.execute(insert(s.invoices).values(
            id=1, invoice_no="INV-1", order_id=1, order_ref="#1", customer_code="C1",
            currency="USD", amount=Decimal("0.30"), issued_at=T0, run_id=RUN))
        conn.execute(insert(s.reconciliation).values(
            invoice_id=1, invoice_no="INV-1", customer_code="C1", currency="USD",
            invoiced=Decimal("0.30"), applied=Decimal("0.10"), outstanding=Decimal("0.20"),
            status="part_paid", run_id=RUN))
        conn.execute(insert(s.allocations).values(
            order_line_id=1, warehouse="WH-EAST", qty=Decimal("1.005"), status="allocated",
            rule_id="home_region", rule_inputs={"stock": Decimal("9.5"), "region": "east"},
            run_id=RUN))


def test_export_round_trips_decimals_and_writes_every_table(engine: Engine,
                                                           tmp_path: Path) -> None:
    _seed(engine)
    paths = export_parquet(engine, tmp_path / "out")
    assert [p.name for p in paths] == [f"{t}.parquet" for t in DEFAULT_TABLES]
    assert all(p.is_file() for p in paths)
    assert not list((tmp_path / "out").glob("*.tmp"))

    recon = pq.read_table(tmp_path / "out" / "reconciliation.parquet")
    assert recon.schema.field("outstanding").type == pa.decimal128(18, 2)
    assert recon.to_pylist()[0]["outstanding"] == Decimal("0.20")

    orders = pq.read_table(tmp_path / "out" / "orders.parquet").to_pylist()
    assert [o["total"] for o in orders] == [Decimal("1234567890124.45"),
                                            Decimal("1234567890125.45"),
                                            Decimal("1234567890126.45")]
    assert orders[0]["captured_at"] == T0 and orders[0]["order_date"] == T0.date()

    line = pq.read_table(tmp_path / "out" / "order_lines.parquet").to_pylist()[0]
    assert (line["qty"], line["unit_price"], line["amount"]) == (
        Decimal("1.005"), Decimal("0.1234"), Decimal("0.12"))

    alloc = pq.read_table(tmp_path / "out" / "allocations.parquet").to_pylist()[0]
    assert alloc["rule_inputs"] == '{"stock": "9.5", "region": "east"}'  # JSON text, exact

    # tables with no rows still get a file with the full schema
    empty = pq.read_table(tmp_path / "out" / "quarantine.parquet")
    assert empty.num_rows == 0 and empty.schema.names == [c.name for c in s.quarantine.columns]


def test_no_float_anywhere_in_the_export_schemas() -> None:
    for table in s.metadata.sorted_tables:
        for field in arrow_schema(table):
            assert not pa.types.is_floating(field.type), (table.name, field.name)


def test_export_streams_in_chunks(engine: Engine, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _seed(engine, n_orders=25)
    monkeypatch.setattr(exports, "CHUNK_ROWS", 10)
    (path,) = export_parquet(engine, tmp_path, tables=["orders"])
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 25 and meta.num_row_groups == 3  # 10 + 10 + 5: bounded memory


def test_export_replaces_atomically_and_refuses_unknown_tables(engine: Engine,
                                                               tmp_path: Path) -> None:
    (tmp_path / "orders.parquet").write_text("old")
    _seed(engine)
    export_parquet(engine, tmp_path, tables=["orders"])
    assert pq.read_table(tmp_path / "orders.parquet").num_rows == 3
    with pytest.raises(ValueError, match="unknown tables: nope"):
        export_parquet(engine, tmp_path, tables=["orders", "nope"])
