"""order_to_cash end to end with orders from every channel at once, on SQLite.

The sandbox seeds orders into every order channel (shopify, woocommerce, jiandaoyun, fxiaoke,
kingdee, sap, u8, files, rest) and their payments into Kingdee receipts and Stripe charges;
examples/orderhub.all.yaml declares every system. The test asserts the seeded truth exactly
(tests/e2e_truth.py, shared with test_e2e.py) — including orders seen in two channels
(a shopify order copied into jiandaoyun, a woocommerce order copied into fxiaoke) ending as one
canonical order — then runs again and asserts that nothing changed. The small tests below it
cover how ``orderhub demo --channels`` picks its sources.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from e2e_truth import BOOKKEEPING, all_creates, check_truth, snapshot
from sqlalchemy import create_engine, select

from flows.demo import ALL_CONFIG, channel_settings, parse_channels, write_sandbox_config
from sandbox import start_sandbox
from sandbox.generator import ALL_CHANNELS, ORDER_CHANNELS, Dataset, generate
from warehouse import schema as s

ORDERS = 300  # every channel gets a few dozen orders, defects, a rejected record and payments
FULFILMENT_TARGETS = ("shopify", "woocommerce")


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate(seed=13, orders=ORDERS, channels=ALL_CHANNELS)


def _config(tmp: Path, url: str) -> Path:
    """examples/orderhub.all.yaml with its warehouse and var/ in ``tmp``."""
    raw = yaml.safe_load(ALL_CONFIG.read_text(encoding="utf-8"))
    raw["warehouse"] = {"url": url}
    path = tmp / "orderhub.all.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _run(config: Path) -> dict:
    from flows.order_to_cash import order_to_cash

    return order_to_cash(config_path=str(config))


@pytest.mark.e2e
def test_every_channel_at_once_sqlite(harness, dataset: Dataset, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wh.db'}"
    settings = channel_settings(str(_config(tmp_path, url)), ALL_CHANNELS)
    systems = tuple(sorted({src["system"] for src in settings.sources.values()}))
    assert set(systems) == set(ALL_CHANNELS)
    # the truth holds a copy in each duplicate pair, so both dedup paths are exercised
    assert {(orig[0], copy[0]) for copy, orig in dataset.truth.duplicates.items()} == {
        ("shopify", "jiandaoyun"), ("woocommerce", "fxiaoke")}
    engine = create_engine(url)
    with start_sandbox(dataset, systems=systems, fast=True) as sandbox:
        config = write_sandbox_config(settings, sandbox.sources(), out=tmp_path / "sandbox.yaml")
        first = _run(config)
        check_truth(engine, sandbox, dataset, first, fulfilment_targets=FULFILMENT_TARGETS)
        rec = first["records"]
        assert rec["already_held"] == 0
        assert rec["in"] == sum(len(v) for v in dataset.orders.values()) == ORDERS
        with engine.connect() as conn:
            sources = set(conn.execute(select(s.orders.c.source).distinct()).scalars())
        assert sources == set(ORDER_CHANNELS)  # orders from nine channels in one warehouse
        assert {p["source"] for p in first["stages"]["reconcile"]["pulled"]} == {"kingdee",
                                                                                "stripe"}
        assert Path(first["report"]).is_file() and Path(first["lineage"]).is_file()
        before, creates = snapshot(engine), all_creates(sandbox)

        second = _run(config)
        check_truth(engine, sandbox, dataset, second, fulfilment_targets=FULFILMENT_TARGETS)
        # A rerun pulls again (each source re-reads its overlap window) and changes nothing but
        # its own bookkeeping: no row, no remote document, no state.
        after = snapshot(engine)
        assert {k: v for k, v in after.items() if k not in BOOKKEEPING} == \
               {k: v for k, v in before.items() if k not in BOOKKEEPING}
        assert all_creates(sandbox) == creates
        rec = second["records"]
        # Re-read records (a file drop re-reads the files inside its lookback window, an API
        # the records at its cursor) are all already held, unparseable ones included.
        assert rec["loaded"] == rec["quarantined"] == rec["rejected"] == 0
        assert rec["in"] == rec["already_held"]
    engine.dispose()


# --- how `orderhub demo --channels` picks its sources (no flow run) ----------------------------


def test_parse_channels() -> None:
    assert parse_channels("all") == ALL_CHANNELS
    assert parse_channels(" Stripe, sap ,shopify") == ("shopify", "sap", "stripe")  # canonical
    with pytest.raises(ValueError, match="unknown channel.*magento"):
        parse_channels("shopify,magento")
    with pytest.raises(ValueError, match="at least one order channel"):
        parse_channels("stripe")


def test_the_bundled_config_declares_every_system_in_a_sound_order(tmp_path: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORDERHUB_WAREHOUSE_URL", raising=False)
    settings = channel_settings(None, ALL_CHANNELS)
    assert {src["system"] for src in settings.sources.values()} == set(ALL_CHANNELS)
    assert list(settings.sources) == [src["system"] for src in settings.sources.values()]
    orders = settings.sources_with_role("orders")
    # originals' channels before their copies' channels
    assert orders.index("shopify") < orders.index("jiandaoyun")
    assert orders.index("woocommerce") < orders.index("fxiaoke")
    assert settings.sources_with_role("payments") == ["kingdee", "stripe"]
    assert settings.sources_with_role("fulfilment_target") == ["shopify", "woocommerce"]
    assert settings.target("sales_order_target") == settings.target("invoice_target") == "kingdee"
    # var/ and the warehouse sit where the demo runs, apart from the three-channel demo's
    assert settings.warehouse_url == f"sqlite:///{tmp_path / 'var' / 'orderhub-all.db'}"
    assert settings.reports_dir == tmp_path / "var" / "reports"


def test_a_channel_subset_keeps_the_masters_without_their_orders(tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORDERHUB_WAREHOUSE_URL", raising=False)
    settings = channel_settings(None, parse_channels("sap,shopify"))
    roles = {name: src["roles"] for name, src in settings.sources.items()}
    assert roles == {"shopify": ["orders", "fulfilment_target"], "jiandaoyun": ["customers"],
                     "kingdee": ["prices", "stock", "payments", "sales_order_target",
                                 "invoice_target"],
                     "sap": ["orders"]}
    assert [n for n in settings.raw["sources"]] == list(roles)
    assert settings.raw["sources"]["kingdee"]["roles"] == roles["kingdee"]
    assert settings.warehouse_url.endswith("/var/orderhub-shopify-sap.db")
    bare = tmp_path / "bare.yaml"
    bare.write_text("sources:\n  shop: {system: shopify, base_url: https://x, roles: [orders]}\n")
    with pytest.raises(ValueError, match="no source for channel.*sap"):
        channel_settings(str(bare), ("shopify", "sap"))
