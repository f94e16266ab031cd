"""Outbox: deterministic keys, set-based enqueue, claim/mark lifecycle, crash recovery."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import func, insert, select, update

from warehouse import outbox as ob
from warehouse import schema as s

RUN = "00000000-0000-4000-8000-0000000000a1"
RUN2 = "00000000-0000-4000-8000-0000000000a2"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def add_order(conn, source, ext, order_no, status, lines, customer_id=None, currency="USD"):
    total = sum((D(q) * D(p) for _, q, p in lines), D(0))
    oid = conn.execute(insert(s.orders).values(
        source=source, external_id=ext, order_no=order_no, customer_id=customer_id,
        customer_code="RAW" if customer_id is None else None, ordered_at=T0, currency=currency,
        total=total, ship_region="east", status=status, content_hash="h", captured_at=T0,
        run_id=RUN)).inserted_primary_key[0]
    for n, (sku, q, p) in enumerate(lines, 1):
        line_id = conn.execute(insert(s.order_lines).values(
            order_id=oid, line_no=n, sku=sku, qty=D(q), unit_price=D(p), amount=D(q) * D(p),
            run_id=RUN)).inserted_primary_key[0]
        if status in ("allocated", "backordered"):
            conn.execute(insert(s.allocations).values(
                order_line_id=line_id, warehouse="WH-E" if status == "allocated" else None,
                qty=D(q), status="allocated" if status == "allocated" else "backordered",
                rule_id="home_region", run_id=RUN))
    return oid


@pytest.fixture
def orders(engine):
    with engine.begin() as conn:
        cust = conn.execute(insert(s.customers).values(
            code="C00001", region="east", source="crm", external_id="c1", content_hash="h",
            run_id=RUN)).inserted_primary_key[0]
        return {
            "shop_alloc": add_order(conn, "shopify", "E1", "#1001", "allocated",
                                    [("SKU-A", "2", "9.5"), ("SKU-B", "1", "20")], cust),
            "shop_back": add_order(conn, "shopify", "E2", "#1002", "backordered",
                                   [("SKU-A", "1", "9.5")]),
            "shop_valid": add_order(conn, "shopify", "E3", "#1003", "validated",
                                    [("SKU-A", "1", "9.5")]),
            "crm_alloc": add_order(conn, "jiandaoyun", "J1", "JDY-000001", "allocated",
                                   [("SKU-B", "3", "20")], cust, currency="CNY"),
            "erp_alloc": add_order(conn, "kingdee", "K1", "XSDD000001", "allocated",
                                   [("SKU-B", "1", "20")], cust, currency="CNY"),
        }


def _rows(engine):
    with engine.connect() as conn:
        rows = conn.execute(select(s.outbox).order_by(s.outbox.c.id))
        return {r.idempotency_key: r for r in rows}


def test_idempotency_key_is_deterministic():
    assert ob.idempotency_key("shopify", "fulfilment", "E1") == "shopify:fulfilment:E1"
    assert ob.idempotency_key("kingdee", "sales_order", "SO-shopify-1001") == \
        "kingdee:sales_order:SO-shopify-1001"


def test_enqueue_fulfilment_to_the_orders_own_channel_once(engine, orders):
    assert ob.enqueue(engine, RUN, "fulfilment", "shopify", ["shopify"]) == 1
    assert ob.enqueue(engine, RUN2, "fulfilment", "shopify", ["shopify"]) == 0  # rerun: no-op
    rows = _rows(engine)
    assert list(rows) == [ob.idempotency_key("shopify", "fulfilment", "E1")]
    row = rows["shopify:fulfilment:E1"]
    assert (row.target, row.operation, row.business_key, row.order_id, row.status,
            row.attempts, row.run_id) == ("shopify", "fulfilment", "E1", orders["shop_alloc"],
                                          "pending", 0, RUN)
    assert row.payload == {"key": "shopify:fulfilment:E1", "order_external_id": "E1",
                           "order_no": "#1001",
                           "lines": [{"sku": "SKU-A", "qty": "2"}, {"sku": "SKU-B", "qty": "1"}]}


def test_enqueue_sales_orders_to_the_erp_but_never_its_own_orders(engine, orders):
    assert ob.enqueue(engine, RUN, "sales_order", "kingdee", ["shopify", "jiandaoyun"]) == 3
    assert ob.enqueue(engine, RUN, "sales_order", "kingdee", None) == 0  # kingdee's own: never
    rows = _rows(engine)
    assert list(rows) == ["kingdee:sales_order:SO-shopify-1001",
                          "kingdee:sales_order:SO-shopify-1002",
                          "kingdee:sales_order:SO-jiandaoyun-JDY-000001"]
    assert rows["kingdee:sales_order:SO-shopify-1001"].payload == {
        "key": "kingdee:sales_order:SO-shopify-1001", "bill_no": "SO-shopify-1001",
        "order_no": "#1001", "source": "shopify", "customer_code": "C00001", "currency": "USD",
        "ordered_at": "2026-11-01T10:00:00Z",
        "lines": [{"sku": "SKU-A", "qty": "2", "unit_price": "9.5000"},
                  {"sku": "SKU-B", "qty": "1", "unit_price": "20.0000"}],
        "total": "39.00"}
    # an unresolved customer keeps the channel's own code
    assert rows["kingdee:sales_order:SO-shopify-1002"].payload["customer_code"] == "RAW"


def test_enqueue_invoices_not_yet_queued(engine, orders):
    with engine.begin() as conn:
        conn.execute(insert(s.invoices).values(
            invoice_no="INV-shopify-1001", order_id=orders["shop_alloc"], order_ref="#1001",
            customer_code="C00001", currency="USD", amount=D("39.00"), issued_at=T0, run_id=RUN))
    assert ob.enqueue(engine, RUN, "invoice", "kingdee") == 1
    assert ob.enqueue(engine, RUN, "invoice", "kingdee") == 0
    (row,) = _rows(engine).values()
    assert (row.business_key, row.order_id) == ("INV-shopify-1001", orders["shop_alloc"])
    assert row.payload == {
        "key": "kingdee:invoice:INV-shopify-1001", "bill_no": "INV-shopify-1001",
        "invoice_no": "INV-shopify-1001", "order_ref": "#1001", "customer_code": "C00001",
        "currency": "USD", "issued_at": "2026-11-01T10:00:00Z", "amount": "39.00",
        "lines": [{"sku": "SKU-A", "qty": "2", "unit_price": "9.5000", "amount": "19.00"},
                  {"sku": "SKU-B", "qty": "1", "unit_price": "20.0000", "amount": "20.00"}]}


def test_unknown_operation_is_a_clear_error(engine):
    with pytest.raises(ob.OutboxError, match="unknown operation 'refund'"):
        ob.enqueue(engine, RUN, "refund", "kingdee")


def test_claim_mark_lifecycle(engine, orders):
    ob.enqueue(engine, RUN, "sales_order", "kingdee", ["shopify", "jiandaoyun"])
    first = ob.claim(engine, "kingdee", "sales_order", 2)
    assert [r["business_key"] for r in first] == ["SO-shopify-1001", "SO-shopify-1002"]
    assert [r["recover"] for r in first] == [False, False]
    assert first[0]["payload"]["bill_no"] == "SO-shopify-1001"
    # a second worker meanwhile gets only what the first did not take
    other = ob.claim(engine, "kingdee", "sales_order", 10)
    assert [r["business_key"] for r in other] == ["SO-jiandaoyun-JDY-000001"]
    assert ob.claim(engine, "kingdee", "sales_order", 10) == []

    a, b = (r["id"] for r in first)
    ob.mark_sending(engine, [a, b])
    ob.mark_done(engine, [(a, "SO-REMOTE-1")])
    ob.mark_failed(engine, [(b, "HTTP 500: boom")])
    rows = {r.id: r for r in _rows(engine).values()}
    assert (rows[a].status, rows[a].attempts, rows[a].remote_id) == ("done", 1, "SO-REMOTE-1")
    assert rows[a].done_at is not None
    assert (rows[b].status, rows[b].attempts, rows[b].last_error) == ("pending", 1,
                                                                    "HTTP 500: boom")
    # a failed row is free again at once; after_id lets a drain pass move beyond it
    assert [r["id"] for r in ob.claim(engine, "kingdee", "sales_order", 10)] == [b]
    later = ob.claim(engine, "kingdee", "sales_order", 10, after_id=b, lease_seconds=0)
    assert [r["business_key"] for r in later] == ["SO-jiandaoyun-JDY-000001"]
    assert ob.pending_counts(engine) == {"kingdee": {"sales_order": {"pending": 2}}}


def test_failed_after_max_attempts(engine, orders):
    ob.enqueue(engine, RUN, "fulfilment", "shopify", ["shopify"])
    (row,) = ob.claim(engine, "shopify", "fulfilment", 10)
    for _ in range(3):
        ob.mark_sending(engine, [row["id"]])
        ob.mark_failed(engine, [(row["id"], "HTTP 422")], max_attempts=3)
    (after,) = _rows(engine).values()
    assert (after.status, after.attempts) == ("failed", 3)
    assert ob.claim(engine, "shopify", "fulfilment", 10, lease_seconds=0) == []
    assert ob.pending_counts(engine) == {"shopify": {"fulfilment": {"failed": 1}}}


def test_a_failed_attempt_is_retried_with_a_lookup_first(engine, orders):
    """A failure may have happened after the target stored the document (a timeout, a lost
    answer), so the retry must look before it creates."""
    ob.enqueue(engine, RUN, "fulfilment", "shopify", ["shopify"])
    (row,) = ob.claim(engine, "shopify", "fulfilment", 10)
    assert row["recover"] is False  # never tried: create straight away
    ob.mark_sending(engine, [row["id"]])
    ob.mark_failed(engine, [(row["id"], "read timed out")])
    (again,) = ob.claim(engine, "shopify", "fulfilment", 10, lease_seconds=0)
    assert (again["status"], again["attempts"], again["recover"]) == ("pending", 1, True)


def test_sending_rows_come_back_with_recover_after_the_lease(engine, orders):
    ob.enqueue(engine, RUN, "fulfilment", "shopify", ["shopify"])
    (row,) = ob.claim(engine, "shopify", "fulfilment", 10)
    ob.mark_sending(engine, [row["id"]])
    # ... the worker crashes here: the request may or may not have reached Shopify
    assert ob.claim(engine, "shopify", "fulfilment", 10) == []  # still within its lease
    (again,) = ob.claim(engine, "shopify", "fulfilment", 10, lease_seconds=0)
    assert (again["id"], again["recover"], again["attempts"]) == (row["id"], True, 1)
    # a row found `sending` without a claim stamp (e.g. set by hand) is recovered at once
    with engine.begin() as conn:
        conn.execute(update(s.outbox).values(claimed_at=None))
    assert [r["recover"] for r in ob.claim(engine, "shopify", "fulfilment", 10)] == [True]


def test_two_workers_never_take_the_same_row(engine, orders):
    with engine.begin() as conn:  # 200 rows to fight over
        conn.execute(insert(s.outbox), [
            {"idempotency_key": f"kingdee:sales_order:SO-{i}", "target": "kingdee",
             "operation": "sales_order", "business_key": f"SO-{i}", "payload": {"n": i},
             "status": "pending", "attempts": 0, "created_at": T0, "run_id": RUN}
            for i in range(200)])
    taken: list[list[int]] = [[], [], [], []]

    def worker(n: int) -> None:
        while rows := ob.claim(engine, "kingdee", "sales_order", 7):
            taken[n].extend(r["id"] for r in rows)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for t in taken for i in t]
    assert len(ids) == len(set(ids)) == 200


def test_complete_pushes_moves_only_fully_pushed_orders(engine, orders):
    ob.enqueue(engine, RUN, "fulfilment", "shopify", ["shopify"])
    ob.enqueue(engine, RUN, "sales_order", "kingdee", ["shopify", "jiandaoyun"])
    rows = _rows(engine)
    done = ["shopify:fulfilment:E1", "kingdee:sales_order:SO-shopify-1001",
            "kingdee:sales_order:SO-shopify-1002"]  # the backordered order stays backordered
    ob.mark_done(engine, [(rows[k].id, "R") for k in done])
    assert ob.complete_pushes(engine, RUN2) == 2
    assert ob.complete_pushes(engine, RUN2) == 0
    with engine.connect() as conn:
        status = dict(conn.execute(select(s.orders.c.id, s.orders.c.status)).all())
        events = conn.execute(select(func.count()).select_from(s.order_events)).scalar_one()
    assert status == {orders["shop_alloc"]: "pushed", orders["shop_back"]: "backordered",
                      orders["shop_valid"]: "validated",
                      orders["crm_alloc"]: "allocated",  # its sales order is still pending
                      orders["erp_alloc"]: "pushed"}  # the ERP's own order: nothing to push
    assert events == 2
