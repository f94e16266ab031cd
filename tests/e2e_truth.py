"""The sandbox's seeded truth, asserted exactly against a warehouse after order_to_cash.

Shared by the end-to-end tests (tests/test_e2e.py: three channels; tests/test_e2e_channels.py:
every channel). Truth keys are ``(channel, external_id)`` as the generator numbered them; sources
are named after their channel, so they compare with the warehouse's ``(source, external_id)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine, func, select

from sandbox.generator import Dataset, Truth
from warehouse import schema as s

BOOKKEEPING = {"runs", "check_results", "sync_state"}  # what a rerun may write


def _fxiaoke_id(external_id: str) -> str:
    # The fxiaoke fake derives each record's ``_id`` from the neutral id (a hash) rather than
    # keeping it, so the warehouse holds that derived id.
    from sandbox.fxiaoke import ORDERS, fx_id

    return fx_id(ORDERS, external_id)


# channel -> the external id its fake (and so the warehouse) gives a neutral external_id
WAREHOUSE_ID: dict[str, Callable[[str], str]] = {"fxiaoke": _fxiaoke_id}


def warehouse_truth(dataset: Dataset) -> Truth:
    """The dataset's truth with every key in the warehouse's id space."""
    t = dataset.truth

    def key(k: tuple[str, str]) -> tuple[str, str]:
        ch, ext = k
        return (ch, WAREHOUSE_ID[ch](ext)) if ch in WAREHOUSE_ID else k

    return Truth(
        defects={key(k): v for k, v in t.defects.items()},
        rejected={key(k): v for k, v in t.rejected.items()},
        clean={key(k) for k in t.clean},
        line_rules={(*key((ch, ext)), n): v for (ch, ext, n), v in t.line_rules.items()},
        backordered={key(k) for k in t.backordered},
        invoice_status={key(k): v for k, v in t.invoice_status.items()},
        unmatched_payments=set(t.unmatched_payments),
        duplicates={key(k): key(v) for k, v in t.duplicates.items()},
    )


def snapshot(engine: Engine) -> dict[str, int]:
    """Row count of every warehouse table."""
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in s.metadata.sorted_tables}


def all_creates(sandbox: Any) -> dict[tuple[str, str, str], int]:
    """Every remote create of every fake: (system, operation, key) -> count."""
    return {(system, op, key): n for system, app in sandbox.apps.items()
            for (op, key), n in app.creates.items()}


def check_truth(engine: Engine, sandbox: Any, dataset: Dataset, summary: dict, *,
                fulfilment_targets: Iterable[str] = ("shopify",), erp: str = "kingdee") -> None:
    """Assert the warehouse and the fakes' create counters hold exactly the seeded truth.

    ``fulfilment_targets``: channels that receive a fulfilment for each of their clean, fully
    allocated orders; ``erp``: the sales-order and invoice target (every other channel's clean
    orders become sales orders there, every invoice a receivable)."""
    truth = warehouse_truth(dataset)
    with engine.connect() as conn:
        keys = {oid: (src, ext) for oid, src, ext in conn.execute(
            select(s.orders.c.id, s.orders.c.source, s.orders.c.external_id))}
        order_nos = {keys[oid]: no for oid, no in conn.execute(
            select(s.orders.c.id, s.orders.c.order_no))}
        status = {keys[oid]: st for oid, st in conn.execute(select(s.orders.c.id, s.orders.c.status))}
        failing: dict[tuple, set] = {}
        duplicate_of: dict[tuple, str] = {}
        for oid, check, value in conn.execute(
                select(s.quarantine.c.order_id, s.quarantine.c.check_id, s.quarantine.c.value)):
            failing.setdefault(keys[oid], set()).add(check)
            if check == "not_duplicate":
                duplicate_of[keys[oid]] = value
        rejected = {(src, ext) for src, ext in conn.execute(
            select(s.rejected_records.c.source, s.rejected_records.c.external_id)
            .where(s.rejected_records.c.stream == "orders"))}
        rules = {}
        for src, ext, line_no, rule in conn.execute(
                select(s.orders.c.source, s.orders.c.external_id, s.order_lines.c.line_no,
                       s.allocations.c.rule_id)
                .join(s.order_lines, s.order_lines.c.order_id == s.orders.c.id)
                .join(s.allocations, s.allocations.c.order_line_id == s.order_lines.c.id)):
            rules[(src, ext, line_no)] = rule
        recon = {keys[oid]: st for oid, st in conn.execute(
            select(s.invoices.c.order_id, s.reconciliation.c.status)
            .join(s.reconciliation, s.reconciliation.c.invoice_id == s.invoices.c.id))}
        matched = {ext for (ext,) in conn.execute(
            select(s.payments.c.external_id).join(
                s.payment_matches, s.payment_matches.c.payment_id == s.payments.c.id))}
        all_payments = {ext for (ext,) in conn.execute(select(s.payments.c.external_id))}

    # Every seeded defect is quarantined by exactly the right check; nothing else is.
    assert failing == {key: {check} for key, check in truth.defects.items()}
    assert {k for k, st in status.items() if st == "quarantined"} == set(truth.defects)
    # The same order seen in two channels is one canonical order: the later copy is held as a
    # duplicate of exactly its original, and the original goes all the way.
    assert duplicate_of == {copy: f"{orig[0]} {order_nos[orig]}"
                            for copy, orig in truth.duplicates.items()}
    assert {orig for orig in truth.duplicates.values()
            if status[orig] not in ("invoiced", "paid")} == set()
    # Unparseable records are rejected with their raw payload kept, never half-loaded.
    assert rejected == set(truth.rejected)
    assert not set(truth.rejected) & set(status)
    # Every clean order went all the way; backordered ones wait for stock.
    clean_done = truth.clean - truth.backordered
    assert {k for k in clean_done if status[k] not in ("invoiced", "paid")} == set()
    assert {k for k in truth.backordered if status[k] != "backordered"} == set()
    assert {k: v for k, v in rules.items() if (k[0], k[1]) in truth.clean} == truth.line_rules
    # Each document was created exactly once at its target.
    for target in fulfilment_targets:
        creates = sandbox.apps[target].creates
        expected = {("fulfilment", ext) for ch, ext in clean_done if ch == target}
        assert set(creates) == expected, target
        assert set(creates.values()) <= {1}, target
    kd = sandbox.apps[erp].creates
    assert set(kd.values()) == {1}
    kd_ops = Counter(op for op, _ in kd)
    assert kd_ops["sales_order"] == len({k for k in truth.clean if k[0] != erp})
    assert kd_ops["invoice"] == len(clean_done)
    # Payments: every invoice's status and every unmatched payment as seeded.
    assert recon == truth.invoice_status
    assert all_payments - matched == truth.unmatched_payments
    # Nothing lost: records in = loaded + quarantined + rejected (+ already held).
    assert summary["records"]["balanced"]
