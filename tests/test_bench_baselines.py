"""The baselines of ``make bench`` (raw bulk load, dlt) and the measuring harness, at TPC-H SF 0.01.

Each baseline loads into a migrated orderhub warehouse (SQLite and PostgreSQL via the
``warehouse_url`` fixture), so these tests also show it does not touch orderhub's own tables.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.baselines import (
    PG_RAW_SCHEMA,
    SQLITE_RAW_PREFIX,
    TABLES,
    dlt_load,
    dlt_sqlite_path,
    pg_conninfo,
    prefetched,
    raw_load,
    sql_type,
    sqlite_path,
)
from bench.measure import TELEMETRY_OFF, VariantFailed, bench_env, run_variant


def _tpchgen() -> str | None:
    beside = Path(sys.executable).parent / "tpchgen-cli"
    return str(beside) if beside.is_file() else shutil.which("tpchgen-cli")


@pytest.fixture(scope="module")
def tpch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = _tpchgen()
    if exe is None:
        pytest.skip("needs tpchgen-cli (pip install '.[bench]')")
    out = tmp_path_factory.mktemp("tpch-sf001")
    subprocess.run([exe, "parquet", "-s", "0.01", f"--output-dir={out}"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def expected(tpch: Path) -> tuple[dict[str, int], Decimal]:
    counts = {t: pq.ParquetFile(tpch / f"{t}.parquet").metadata.num_rows for t in TABLES}
    total = pc.sum(pq.read_table(tpch / "orders.parquet", columns=["o_totalprice"])["o_totalprice"])
    return counts, total.as_py()


def _loaded(url: str, variant: str) -> tuple[dict[str, int], Decimal]:
    """Row count per table and the exact sum of o_totalprice, as the database holds them."""
    if url.startswith("sqlite"):
        if variant == "raw":
            path, names = sqlite_path(url), {t: SQLITE_RAW_PREFIX + t for t in TABLES}
        else:
            path, names = dlt_sqlite_path(url), {t: t for t in TABLES}
        conn = sqlite3.connect(path)
        try:
            counts = {t: conn.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for t, n in names.items()}
            # SQLite keeps NUMERIC(15,2) as an 8-byte REAL: sum whole cents, exactly, in integers
            (cents,) = conn.execute(
                f"SELECT sum(CAST(round(o_totalprice * 100) AS INTEGER)) FROM {names['orders']}"
            ).fetchone()
        finally:
            conn.close()
        return counts, Decimal(cents).scaleb(-2)
    import psycopg

    schema = PG_RAW_SCHEMA if variant == "raw" else "bench_dlt"
    with psycopg.connect(pg_conninfo(url)) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {schema}.{t}").fetchone()[0] for t in TABLES}
        (total,) = conn.execute(f"SELECT sum(o_totalprice) FROM {schema}.orders").fetchone()
        # the money column is NUMERIC(15,2) on both loaders
        (dtype,) = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname = 'o_totalprice'",
            (f"{schema}.orders",),
        ).fetchone()
    assert dtype == "numeric(15,2)"
    return counts, total


def _orderhub_orders(url: str) -> int:
    """Rows in orderhub's own ``orders`` table (the baselines must leave it alone)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url))
        try:
            return conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(pg_conninfo(url)) as conn:
        return conn.execute("SELECT count(*) FROM public.orders").fetchone()[0]


@pytest.mark.parametrize("variant", ["raw", "dlt"])
def test_loads_every_row_and_money_exactly_and_a_rerun_replaces(
    tpch: Path, expected: tuple[dict[str, int], Decimal], warehouse_url: str, variant: str
) -> None:
    counts, total = expected
    load = raw_load if variant == "raw" else dlt_load
    result = load(tpch, warehouse_url)
    assert result["rows"] == sum(counts.values())
    assert result["tables"] == counts
    assert _loaded(warehouse_url, variant) == (counts, total)
    # a rerun replaces: no doubled rows (dlt reruns two tables only: its run costs seconds)
    again = TABLES if variant == "raw" else ("orders", "region")
    assert load(tpch, warehouse_url, tables=again)["tables"] == {t: counts[t] for t in again}
    assert _loaded(warehouse_url, variant) == (counts, total)
    assert _orderhub_orders(warehouse_url) == 0
    if variant == "dlt":
        assert set(result["dlt_s"]) >= {"extract", "normalize", "load", "run"}


@pytest.mark.postgres
def test_raw_copy_modes_load_the_same(
    tpch: Path, expected: tuple[dict[str, int], Decimal], pg_url: str
) -> None:
    counts, total = expected
    raw_load(tpch, pg_url, tables=("orders", "region"), copy_mode="rows")
    got_counts, got_total = _loaded_subset(pg_url)
    assert got_counts == {"orders": counts["orders"], "region": counts["region"]}
    assert got_total == total


def _loaded_subset(url: str) -> tuple[dict[str, int], Decimal]:
    import psycopg

    with psycopg.connect(pg_conninfo(url)) as conn:
        got = {
            t: conn.execute(f"SELECT count(*) FROM {PG_RAW_SCHEMA}.{t}").fetchone()[0]
            for t in ("orders", "region")
        }
        (total,) = conn.execute(f"SELECT sum(o_totalprice) FROM {PG_RAW_SCHEMA}.orders").fetchone()
    return got, total


def test_run_variant_reports_rows_wall_and_peak_rss(
    tpch: Path, expected: tuple[dict[str, int], Decimal], sqlite_url: str
) -> None:
    report = run_variant(["bench.baselines", "raw", "--parquet", str(tpch), "--url", sqlite_url], timeout=120)
    assert report["rows"] == sum(expected[0].values())
    assert report["variant"] == "raw"
    assert 0 < report["wall_s"] <= report["parent_wall_s"]
    assert report["rows_per_s"] > 0
    assert report["peak_rss_mb"] > 0
    assert report["peak_rss_mb"] == max(report["peak_rss_self_mb"], report["peak_rss_children_mb"])
    assert "stderr" not in report  # silent without --verbose


def test_a_failing_variant_raises_one_line(tmp_path: Path) -> None:
    with pytest.raises(VariantFailed) as err:
        run_variant(
            ["bench.baselines", "raw", "--parquet", str(tmp_path / "missing"), "--url", "sqlite:///x.db"],
            timeout=120,
        )
    message = str(err.value)
    assert "\n" not in message
    assert "exit status 1" in message and "FileNotFoundError" in message
    assert "Traceback" not in message


def test_children_run_with_telemetry_off() -> None:
    env = bench_env({"DO_NOT_TRACK": "0", "RUNTIME__DLTHUB_TELEMETRY": "true", "OTHER": "kept"})
    assert {k: env[k] for k in TELEMETRY_OFF} == TELEMETRY_OFF
    assert env["OTHER"] == "kept"


def test_column_types_follow_arrow() -> None:
    assert sql_type(pa.int64(), "postgresql") == "BIGINT"
    assert sql_type(pa.int32(), "sqlite") == "INTEGER"
    assert sql_type(pa.decimal128(15, 2), "postgresql") == "NUMERIC(15,2)"
    assert sql_type(pa.date32(), "sqlite") == "DATE"
    assert sql_type(pa.string_view(), "postgresql") == "TEXT"
    with pytest.raises(TypeError):
        sql_type(pa.list_(pa.int64()), "sqlite")


def test_prefetched_keeps_order_passes_errors_and_stops_its_thread() -> None:
    import threading

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetched(failing()))

    before = threading.active_count()
    items = prefetched(iter(range(1000)), depth=2)
    assert next(items) == 0
    items.close()  # the consumer gives up early (a failed COPY): the producer must end
    assert threading.active_count() == before
