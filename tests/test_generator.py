"""The sandbox generator: deterministic, and its truth holds against an independent re-check."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from sandbox import FAKES, start_sandbox
from sandbox.generator import (
    BASE_DATE,
    CHECK_IDS,
    INVOICE_STATUSES,
    Dataset,
    generate,
)

CENT = Decimal("0.01")
SIZES = (200, 5000)


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"orders={n}")
def ds(request: pytest.FixtureRequest) -> Dataset:
    return generate(seed=7, orders=request.param)


@pytest.fixture(scope="module")
def small() -> Dataset:
    return generate(seed=11, orders=200)


def all_orders(ds: Dataset):
    for channel, rows in ds.orders.items():
        for o in rows:
            yield channel, o


# --- an independent re-implementation of the checks and the allocation rules ----------------


def failing_checks(ds: Dataset) -> dict[tuple[str, str], set[str]]:
    """Every loaded (non-rejected) order -> the checks it fails, computed from the data alone."""
    by_code = {c["code"]: c for c in ds.customers}
    by_email = {c["email"]: c for c in ds.customers}
    prices = {p["sku"]: p["prices"] for p in ds.products}
    out: dict[tuple[str, str], set[str]] = {}
    dup_groups: dict[tuple, list[tuple[datetime, str, tuple[str, str]]]] = defaultdict(list)
    for channel, o in all_orders(ds):
        key = (channel, o["external_id"])
        if key in ds.truth.rejected:
            continue
        failed = set()
        customer = by_email.get(o["customer_email"]) if channel == "shopify" else by_code.get(
            o["customer_code"])
        if customer is None:
            failed.add("customer_known")
        for ln in o["lines"]:
            listed = prices.get(ln["sku"], {}).get(o["currency"])
            if listed is not None and abs(ln["unit_price"] - listed) > CENT:
                failed.add("price_matches_list")
            if ln["qty"] <= 0:
                failed.add("qty_positive")
            if ln["sku"] not in prices:
                failed.add("sku_known")
        if o["currency"] not in ("CNY", "USD"):
            failed.add("currency_allowed")
        if o["ship_region"] is None or o["ordered_at"] is None or not o["lines"]:
            failed.add("required_fields")
        out[key] = failed
        who = customer["code"] if customer else (o["customer_code"], o["customer_email"])
        lines = tuple(sorted((ln["sku"], ln["qty"], ln["unit_price"]) for ln in o["lines"]))
        dup = (who, o["ordered_at"].date(), o["currency"], o["total"], lines)
        dup_groups[dup].append((o["ordered_at"], o["order_no"], key))
    for group in dup_groups.values():
        for _, _, key in sorted(group)[1:]:  # the later ones are duplicates
            out[key].add("not_duplicate")
    return out


def stock_regions(ds: Dataset) -> dict[str, set[str]]:
    region = {w["code"]: w["region"] for w in ds.warehouses}
    out: dict[str, set[str]] = defaultdict(set)
    for s in ds.stock:
        if s["qty"] > 0:
            out[s["sku"]].add(region[s["warehouse"]])
    return out


# --- determinism and shape ---------------------------------------------------------------------


def test_same_seed_same_dataset_other_seed_differs() -> None:
    a, b = generate(seed=3, orders=300), generate(seed=3, orders=300)
    assert a == b
    assert a.summary() == b.summary()
    assert generate(seed=4, orders=300).orders != a.orders


def test_too_few_orders_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least"):
        generate(orders=10)


def test_sizes_and_channel_split(ds: Dataset) -> None:
    n = sum(len(rows) for rows in ds.orders.values())
    assert n in SIZES
    assert len(ds.customers) == max(20, n // 10)
    assert 20 <= len(ds.products) <= 200
    assert [(w["code"], w["region"]) for w in ds.warehouses] == [
        ("WH-EAST", "east"), ("WH-NORTH", "north"), ("WH-SOUTH", "south"), ("WH-WEST", "west")]
    assert len(ds.stock) == 4 * len(ds.products)
    assert {ch: len(rows) for ch, rows in ds.orders.items()} == {
        "shopify": n * 40 // 100, "jiandaoyun": n * 36 // 100, "kingdee": n * 24 // 100}


def test_channel_conventions(ds: Dataset) -> None:
    dup_copies = {k for k in ds.truth.duplicates}
    for channel, o in all_orders(ds):
        key = (channel, o["external_id"])
        assert set(o) == {"external_id", "order_no", "customer_code", "customer_email",
                          "ordered_at", "updated_at", "currency", "ship_region", "lines", "total"}
        if channel == "shopify":
            assert o["customer_code"] is None and o["customer_email"]
            assert re.fullmatch(r"#\d+", o["order_no"]) and o["external_id"].isdigit()
            assert o["currency"] in ("USD", "EUR")
        elif channel == "jiandaoyun":
            assert o["customer_email"] is None and o["customer_code"]
            assert re.fullmatch(r"JDY-\d{6}", o["order_no"])
            assert re.fullmatch(r"[0-9a-f]{24}", o["external_id"])
            assert o["currency"] == ("USD" if key in dup_copies else "CNY") or (
                ds.truth.defects.get(key) == "currency_allowed")
        else:
            assert o["customer_email"] is None and o["customer_code"]
            assert re.fullmatch(r"XSDD\d{6}", o["order_no"]) and o["external_id"].isdigit()
            assert o["currency"] in ("CNY", "EUR")
        assert 1 <= len(o["lines"]) <= 4
        assert [ln["line_no"] for ln in o["lines"]] == list(range(1, len(o["lines"]) + 1))
    order_nos = [o["order_no"] for _, o in all_orders(ds)]
    assert len(order_nos) == len(set(order_nos))
    for rows in ds.orders.values():
        assert len({o["external_id"] for o in rows}) == len(rows)


def test_times_money_and_no_floats(ds: Dataset) -> None:
    def walk(value: object) -> None:
        assert not isinstance(value, float), "floats never appear in the dataset"
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, datetime):
            assert value.utcoffset() == timedelta(0)

    walk([ds.customers, ds.products, ds.stock, ds.orders, ds.payments])
    for p in ds.products:
        cny, usd = p["prices"]["CNY"], p["prices"]["USD"]
        assert cny.as_tuple().exponent == -2 and usd.as_tuple().exponent == -2
        assert usd == (cny / 7).quantize(CENT)
    for c in ds.customers:
        assert c["credit_limit"].as_tuple().exponent == -2
    for channel, o in all_orders(ds):
        assert BASE_DATE - timedelta(days=30) <= o["ordered_at"] < BASE_DATE
        assert o["updated_at"] >= o["ordered_at"]
        if (channel, o["external_id"]) not in ds.truth.rejected:
            assert o["total"] == sum(ln["qty"] * ln["unit_price"] for ln in o["lines"])
            assert o["total"].as_tuple().exponent == -2
            assert all(ln["unit_price"].as_tuple().exponent == -2 for ln in o["lines"])
    for p in ds.payments:  # amounts carry cents exactly, as a receipt would
        assert p["amount"].as_tuple().exponent == -2
        assert p["updated_at"] >= p["received_at"]


def test_updated_at_ties_exist_in_every_stream(ds: Dataset) -> None:
    streams = [*ds.orders.values(), ds.payments, ds.customers, ds.stock]
    for rows in streams:
        counts = Counter(r["updated_at"] for r in rows)
        assert max(counts.values()) >= 2


# --- the truth --------------------------------------------------------------------------------


def test_every_order_has_exactly_one_fate(ds: Dataset) -> None:
    t = ds.truth
    keys = {(ch, o["external_id"]) for ch, o in all_orders(ds)}
    fates = [t.clean, set(t.defects), set(t.rejected)]
    assert set().union(*fates) == keys
    assert sum(len(f) for f in fates) == len(keys)


def test_every_defect_kind_and_rejection_is_planted(ds: Dataset) -> None:
    kinds = Counter(ds.truth.defects.values())
    assert set(kinds) == set(CHECK_IDS)
    assert all(kinds[k] >= 1 for k in CHECK_IDS)
    rejected_channels = {ch for ch, _ in ds.truth.rejected}
    assert rejected_channels == {"shopify", "jiandaoyun", "kingdee"}
    reasons = " ".join(ds.truth.rejected.values())
    assert "'N/A'" in reasons and "'two'" in reasons


def test_each_defect_fails_exactly_its_check_and_clean_orders_fail_none(ds: Dataset) -> None:
    failed = failing_checks(ds)
    for key, checks in failed.items():
        expected = {ds.truth.defects[key]} if key in ds.truth.defects else set()
        assert checks == expected, (key, checks)


def test_rejected_records_hold_an_unparseable_value(ds: Dataset) -> None:
    for channel, o in all_orders(ds):
        if (channel, o["external_id"]) in ds.truth.rejected:
            bad = [v for ln in o["lines"] for v in (ln["qty"], ln["unit_price"])
                   if not isinstance(v, Decimal)]
            assert bad and set(bad) <= {"N/A", "two"}


def test_duplicates_copy_an_earlier_clean_shopify_order(ds: Dataset) -> None:
    orders = {(ch, o["external_id"]): o for ch, o in all_orders(ds)}
    t = ds.truth
    assert set(t.duplicates) == {k for k, v in t.defects.items() if v == "not_duplicate"}
    by_email = {c["email"]: c["code"] for c in ds.customers}
    for copy_key, orig_key in t.duplicates.items():
        assert copy_key[0] == "jiandaoyun" and orig_key[0] == "shopify"
        assert orig_key in t.clean and orig_key not in t.backordered
        copy, orig = orders[copy_key], orders[orig_key]
        assert copy["customer_code"] == by_email[orig["customer_email"]]
        assert copy["ordered_at"].date() == orig["ordered_at"].date()
        assert copy["ordered_at"] > orig["ordered_at"] and copy["updated_at"] > orig["updated_at"]
        assert (copy["currency"], copy["total"], copy["ship_region"]) == (
            orig["currency"], orig["total"], orig["ship_region"])
        assert copy["lines"] == orig["lines"]


def test_line_rules_follow_stock_and_ship_region(ds: Dataset) -> None:
    t = ds.truth
    stocked = stock_regions(ds)
    expected: dict[tuple[str, str, int], str] = {}
    for channel, o in all_orders(ds):
        if (channel, o["external_id"]) not in t.clean:
            continue
        for ln in o["lines"]:
            regions = stocked.get(ln["sku"], set())
            rule = ("backorder" if not regions
                    else "home_region" if o["ship_region"] in regions else "any_stock")
            expected[(channel, o["external_id"], ln["line_no"])] = rule
    assert t.line_rules == expected
    assert set(Counter(expected.values())) == {"home_region", "any_stock", "backorder"}


def test_backorders_come_only_from_zero_stock_skus(ds: Dataset) -> None:
    stocked = stock_regions(ds)
    orders = {(ch, o["external_id"]): o for ch, o in all_orders(ds)}
    for key in ds.truth.backordered:
        assert any(not stocked.get(ln["sku"]) for ln in orders[key]["lines"])
    by_order = defaultdict(set)
    for (ch, ext, _), rule in ds.truth.line_rules.items():
        by_order[(ch, ext)].add(rule)
    assert ds.truth.backordered == {k for k, rules in by_order.items() if "backorder" in rules}
    # Defective and rejected orders never touch zero-stock SKUs (unknown SKUs have no stock row).
    known = {p["sku"] for p in ds.products}
    for key, o in orders.items():
        if key not in ds.truth.clean:
            assert all(stocked.get(ln["sku"]) or ln["sku"] not in known for ln in o["lines"])


def test_stock_is_ample_or_zero(ds: Dataset) -> None:
    demand: Counter[str] = Counter()
    for _, o in all_orders(ds):
        for ln in o["lines"]:
            if isinstance(ln["qty"], Decimal):
                demand[ln["sku"]] += abs(int(ln["qty"]))
    for s in ds.stock:
        assert isinstance(s["qty"], int)
        assert s["qty"] == 0 or s["qty"] >= demand[s["sku"]]


def test_invoice_status_matches_the_payments(ds: Dataset) -> None:
    t = ds.truth
    assert set(t.invoice_status) == t.clean - t.backordered
    assert set(Counter(t.invoice_status.values())) == set(INVOICE_STATUSES)
    orders = {o["order_no"]: (ch, o) for ch, o in all_orders(ds)}
    paid: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for p in ds.payments:
        assert p["amount"] > 0
        if p["external_id"] in t.unmatched_payments:
            assert p["reference"] not in orders
            continue
        ch, o = orders[p["reference"]]
        assert p["currency"] == o["currency"] and p["received_at"] > o["ordered_at"]
        paid[(ch, o["external_id"])] += p["amount"]
    totals = {(ch, o["external_id"]): o["total"] for ch, o in all_orders(ds)}
    for key, status in t.invoice_status.items():
        amount, total = paid.get(key, Decimal(0)), totals[key]
        if status == "paid":
            assert amount == total
        elif status == "part_paid":
            assert CENT <= amount < total - CENT
        elif status == "over_paid":
            assert amount > total + CENT
        else:
            assert key not in paid
    assert set(paid) <= set(t.invoice_status)


def test_payments_shape_and_unmatched(ds: Dataset) -> None:
    t = ds.truth
    ids = [p["external_id"] for p in ds.payments]
    assert len(ids) == len(set(ids)) and all(i.isdigit() for i in ids)
    assert [p["bill_no"] for p in ds.payments] == [
        f"SKD{i:06d}" for i in range(1, len(ds.payments) + 1)]
    assert len(t.unmatched_payments) >= 3
    order_nos = {o["order_no"] for _, o in all_orders(ds)}
    assert t.unmatched_payments == {
        p["external_id"] for p in ds.payments if p["reference"] not in order_nos}


def test_counts_and_summary(ds: Dataset) -> None:
    c = ds.truth.counts()
    assert c["clean"] + c["defects"] + c["rejected"] == sum(map(len, ds.orders.values()))
    assert sum(c[f"defect.{k}"] for k in CHECK_IDS) == c["defects"]
    assert sum(c[f"invoice.{s}"] for s in INVOICE_STATUSES) == c["invoiced"]
    text = ds.summary()
    assert "shopify" in text and "not_duplicate" in text


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    generate(seed=1, orders=5000)
    assert time.perf_counter() - start < 2.0  # ~0.15 s here; generous for a busy machine


# --- start_sandbox ----------------------------------------------------------------------------


def stub_fake(dataset: Dataset, fast: bool = True):
    """Stands in for a colleague's fake: built as ``Fake(dataset, fast=...)``, a real FakeApp
    with ``credentials()``, ``options()`` and a ``base_path``."""
    from sandbox.server import FakeApp, Response

    app = FakeApp()
    count = len(dataset.orders["kingdee"])
    app.route("GET", r"/k3cloud/ping", lambda req: Response(200, {"orders": count}))
    app.base_path = "/k3cloud"
    app.fast = fast
    app.credentials = lambda: {"app_id": "stub", "app_secret": "s3cret"}
    app.options = lambda: {"acct_id": "stub-acct"}
    return app


def broken_fake(dataset: Dataset, fast: bool = True) -> None:
    raise RuntimeError("cannot start")


def test_start_sandbox_wires_apps_urls_sources_and_stops(
    small: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sandbox.server")
    monkeypatch.setitem(FAKES, "kingdee", (__name__, "stub_fake"))
    with start_sandbox(small, systems=("kingdee",), fast=False) as sb:
        app, url = sb.apps["kingdee"], sb.urls["kingdee"]
        assert app.fast is False
        assert sb.sources() == {"kingdee": {
            "base_url": url + "/k3cloud",
            "auth": {"app_id": "stub", "app_secret": "s3cret"},
            "options": {"acct_id": "stub-acct"},
        }}
        with urllib.request.urlopen(url + "/k3cloud/ping", timeout=5) as resp:
            assert resp.status == 200
        assert [r.path for r in app.requests] == ["/k3cloud/ping"]
    assert sb.servers == {}
    with pytest.raises(OSError):  # stopped: nothing listens there any more
        urllib.request.urlopen(url + "/k3cloud/ping", timeout=2)
    sb.stop()  # a second stop is harmless


def test_start_sandbox_stops_what_it_started_when_a_fake_fails(
    small: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sandbox.server")
    started: list = []
    from sandbox import server

    real_start = server.FakeServer.start

    def spy(self):  # remember each started server to prove it was stopped
        started.append(self)
        return real_start(self)

    monkeypatch.setattr(server.FakeServer, "start", spy)
    monkeypatch.setitem(FAKES, "kingdee", (__name__, "stub_fake"))
    monkeypatch.setitem(FAKES, "shopify", (__name__, "broken_fake"))
    with pytest.raises(RuntimeError, match="cannot start"):
        start_sandbox(small, systems=("kingdee", "shopify"))
    assert len(started) == 1
    with pytest.raises(RuntimeError, match="not started"):
        _ = started[0].url


def test_start_sandbox_rejects_an_unknown_system(small: Dataset) -> None:
    with pytest.raises(ValueError, match="unknown sandbox system"):
        start_sandbox(small, systems=("sap",))


@pytest.mark.parametrize("system", sorted(FAKES))
def test_start_sandbox_serves_each_fake(small: Dataset, system: str) -> None:
    module_name, class_name = FAKES[system]
    module = pytest.importorskip(module_name)
    if not hasattr(module, class_name):
        pytest.skip(f"{module_name}.{class_name} not written yet")

    with start_sandbox(small, systems=(system,)) as sb:
        assert set(sb.apps) == {system}
        url = sb.urls[system]
        assert url.startswith("http://127.0.0.1:")
        src = sb.sources()[system]
        assert src["base_url"].startswith(url)
        assert isinstance(src["auth"], dict) and isinstance(src["options"], dict)
        try:  # any HTTP answer proves the server is up; the status is the fake's business
            urllib.request.urlopen(url + "/", timeout=5).close()
        except urllib.error.HTTPError:
            pass
    assert sb.servers == {}
