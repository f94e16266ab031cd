"""Outbox: deterministic keys, set-based enqueue, claim/mark lifecycle, crash recovery."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import func, insert, select, text, update

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


def _plain_rows(engine, n, **over):
    """``n`` outbox rows (kingdee sales orders) inserted as is; -> their ids."""
    with engine.begin() as conn:
        conn.execute(insert(s.outbox), [
            {"idempotency_key": f"kingdee:sales_order:SO-{i}", "target": "kingdee",
             "operation": "sales_order", "business_key": f"SO-{i}", "payload": {"n": i},
             "status": "pending", "attempts": 0, "created_at": T0, "run_id": RUN, **over}
            for i in range(n)])
        return list(conn.execute(select(s.outbox.c.id).order_by(s.outbox.c.id)).scalars())


@pytest.mark.parametrize("sending", [False, True])
def test_two_workers_never_take_the_same_row(engine, orders, sending):
    _plain_rows(engine, 200)  # 200 rows to fight over
    taken: list[list[int]] = [[], [], [], []]

    def worker(n: int) -> None:
        while rows := ob.claim(engine, "kingdee", "sales_order", 7, sending=sending):
            taken[n].extend(r["id"] for r in rows)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for t in taken for i in t]
    assert len(ids) == len(set(ids)) == 200


def test_claim_for_sending_marks_the_batch_in_the_same_commit(engine, orders):
    """What a drain does: claim and mark_sending as one step. The rows come back as they were
    claimed (status, attempts, recover); in the table they are already `sending`."""
    ob.enqueue(engine, RUN, "sales_order", "kingdee", ["shopify", "jiandaoyun"])
    first = ob.claim(engine, "kingdee", "sales_order", 2, sending=True)
    assert [(r["business_key"], r["status"], r["attempts"], r["recover"]) for r in first] == [
        ("SO-shopify-1001", "pending", 0, False), ("SO-shopify-1002", "pending", 0, False)]
    rows = {r.id: r for r in _rows(engine).values()}
    assert [(rows[r["id"]].status, rows[r["id"]].attempts) for r in first] == [("sending", 1)] * 2
    assert all(rows[r["id"]].claimed_at is not None for r in first)
    # another worker gets only the rest; nobody gets the in-flight rows within the lease
    other = ob.claim(engine, "kingdee", "sales_order", 10, sending=True)
    assert [r["business_key"] for r in other] == ["SO-jiandaoyun-JDY-000001"]
    assert ob.claim(engine, "kingdee", "sales_order", 10, sending=True) == []
    # ... the worker crashed mid-send: after the lease they come back to be looked up first
    again = ob.claim(engine, "kingdee", "sales_order", 2, lease_seconds=0, sending=True)
    assert [(r["id"], r["status"], r["attempts"], r["recover"]) for r in again] == [
        (r["id"], "sending", 1, True) for r in first]
    after = {r.id: r for r in _rows(engine).values()}
    assert [(after[r["id"]].status, after[r["id"]].attempts) for r in first] == [("sending", 2)] * 2


def test_claim_takes_pending_and_sending_rows_together_oldest_first(engine, orders):
    ids = _plain_rows(engine, 6)
    stale = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:  # a crashed worker's rows among new ones
        conn.execute(update(s.outbox).where(s.outbox.c.id.in_([ids[1], ids[4]]))
                     .values(status="sending", attempts=1, claimed_at=stale))
        conn.execute(update(s.outbox).where(s.outbox.c.id == ids[2]).values(status="done"))
    got = ob.claim(engine, "kingdee", "sales_order", 3)
    assert [(r["id"], r["recover"]) for r in got] == [(ids[0], False), (ids[1], True),
                                                       (ids[3], False)]
    rest = ob.claim(engine, "kingdee", "sales_order", 3, after_id=ids[3])
    assert [(r["id"], r["recover"]) for r in rest] == [(ids[4], True), (ids[5], False)]


def test_mark_results_marks_a_batch_in_one_step(engine, orders):
    ids = _plain_rows(engine, 4)
    ob.claim(engine, "kingdee", "sales_order", 10, sending=True)
    ob.mark_results(engine, [(ids[0], "R-0"), (ids[1], None), (ids[0], "R-0b")],
                    [(ids[2], "HTTP 500: boom"), (ids[3], "x" * 3000)], run_id=RUN2)
    rows = {r.id: r for r in _rows(engine).values()}
    assert [(rows[i].status, rows[i].remote_id, rows[i].run_id, rows[i].last_error)
            for i in ids[:2]] == [("done", "R-0b", RUN2, None), ("done", None, RUN2, None)]
    assert all(rows[i].done_at is not None for i in ids[:2])
    assert [(rows[i].status, rows[i].attempts, rows[i].claimed_at, rows[i].run_id)
            for i in ids[2:]] == [("pending", 1, None, RUN)] * 2  # a failure keeps the run
    assert rows[ids[2]].last_error == "HTTP 500: boom" and len(rows[ids[3]].last_error) == 2000
    ob.mark_failed(engine, [(ids[0], "late")])  # a done row stays done
    ob.mark_done(engine, [(ids[2], "R-2")])  # without a run id: the row keeps its own
    rows = {r.id: r for r in _rows(engine).values()}
    assert (rows[ids[0]].status, rows[ids[0]].last_error) == ("done", None)
    assert (rows[ids[2]].status, rows[ids[2]].remote_id, rows[ids[2]].run_id) == ("done", "R-2",
                                                                                  RUN)


def test_insert_new_skips_keys_already_queued_and_repeated(engine, orders):
    def row(key, n):
        return {"idempotency_key": key, "business_key": key, "order_id": None,
                "payload": {"n": n, "amount": D("1.50")}, "target": "kingdee",
                "operation": "invoice", "status": "pending", "attempts": 0, "created_at": T0,
                "run_id": RUN}

    with engine.begin() as conn:
        assert ob._insert_new(conn, [row("k1", 1), row("k2", 2), row("k1", 3)]) == 2
        assert ob._insert_new(conn, [row("k2", 4), row("k3", 5)]) == 1
        assert ob._insert_new(conn, []) == 0
    rows = _rows(engine)
    assert list(rows) == ["k1", "k2", "k3"]  # in the order given, the first of a key wins
    assert [r.payload for r in rows.values()] == [{"n": 1, "amount": "1.50"},
                                                  {"n": 2, "amount": "1.50"},
                                                  {"n": 5, "amount": "1.50"}]
    assert rows["k3"].created_at == T0 and rows["k3"].attempts == 0


def test_ready_to_drain_sees_what_claim_would_take(engine, orders):
    assert not ob.ready_to_drain(engine, "kingdee", "sales_order")
    ids = _plain_rows(engine, 2)
    assert ob.ready_to_drain(engine, "kingdee", "sales_order")
    assert not ob.ready_to_drain(engine, "kingdee", "invoice")
    ob.claim(engine, "kingdee", "sales_order", 10, sending=True)
    assert not ob.ready_to_drain(engine, "kingdee", "sales_order")  # held within the lease
    assert ob.ready_to_drain(engine, "kingdee", "sales_order", lease_seconds=0)
    ob.mark_done(engine, [(i, "R") for i in ids])
    assert not ob.ready_to_drain(engine, "kingdee", "sales_order", lease_seconds=0)


def test_a_big_drain_gets_fresh_statistics_first(engine, orders, monkeypatch):
    """PostgreSQL plans claim's pick on the outbox's statistics: after a bulk enqueue they
    describe the table before it, so a big drain analyzes first (SQLite keeps none)."""
    monkeypatch.setattr(ob, "BIG_DRAIN", 3)
    _plain_rows(engine, 3)

    def reltuples():
        with engine.connect() as conn:
            return conn.execute(text("SELECT reltuples FROM pg_class "
                                     "WHERE relname = 'outbox'")).scalar()

    if engine.dialect.name == "postgresql":
        assert reltuples() < 0  # never analyzed
    assert ob.ready_to_drain(engine, "kingdee", "sales_order")
    if engine.dialect.name == "postgresql":
        assert reltuples() == 3


def test_fulfilment_quantities_keep_their_spelling(engine, orders):
    """Each distinct quantity is formatted once per window: equal values in another spelling,
    zero and fractions still come out as _qty spells them."""
    with engine.begin() as conn:
        add_order(conn, "shopify", "E9", "#1009", "allocated",
                  [("SKU-A", "2.000", "1"), ("SKU-B", "2", "1"), ("SKU-C", "0", "1"),
                   ("SKU-D", "2.500", "1"), ("SKU-E", "100", "1"), ("SKU-F", "0.125", "1")])
    ob.enqueue(engine, RUN, "fulfilment", "shopify", ["shopify"])
    lines = _rows(engine)["shopify:fulfilment:E9"].payload["lines"]
    assert [ln["qty"] for ln in lines] == ["2", "2", "0", "2.5", "100", "0.125"]


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
