"""A hand-built warehouse for the KPI tests: every order, event, quarantine and ops row written
with known timestamps, so each KPI has one exact expected value (worked out in the comments).

Two sources, named and shaped as the real connectors are (their raw payloads go through the
real Shopify and Kingdee mappings in the CLI test):

- shopify s1..s10, captured D1 08:00 in run R1; kingdee e1..e4, captured D1 09:00 in run R1.
- s1..s8 validated, allocated at +60 s * i (R1); s1..s4 invoiced at +3600 s * i (R1);
  s1 paid on D2 at +30 h (R3).
- s9 quarantined (customer_known) in R1, released by ops in R2 (event quarantined -> captured),
  validated, allocated at +4 h (R2).
- s10 quarantined (customer_known and sku_known), still quarantined.
- e1..e3 validated, allocated at +120 s * i after their capture (R1).
- e4 quarantined (price_matches_list) in R1, overridden by ops in R2 (quarantined ->
  validated), allocated 4 h after its capture (R2).
- Every order has two lines: 1 x 10.00 and 2 x 5.00 = 20.00. s2's stored total is 21.00 (its
  lines and the source say 20.00); e2's source total was since amended to 99.00 (raw payload).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, insert

from warehouse.engine import begin_write
from warehouse.schema import (
    ops_actions,
    order_events,
    order_lines,
    orders,
    quarantine,
    raw_records,
    runs,
)

D1, D2 = date(2026, 11, 2), date(2026, 11, 3)
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
R1 = "11111111-1111-4111-8111-111111111111"
R2 = "22222222-2222-4222-8222-222222222222"
R3 = "33333333-3333-4333-8333-333333333333"

# for the warehouse tests: each source's total as its payload states it
READERS = {
    "shopify": lambda p: Decimal(p["total_price"]),
    "kingdee": lambda p: Decimal(p["rows"][0]["FBillAllAmount"]),
}


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _payload(source: str, ext: str, total: str) -> dict:
    if source == "shopify":
        return {"id": int(ext), "name": f"#{ext}", "updated_at": "2026-11-02T08:00:00Z",
                "currency": "USD", "total_price": total,
                "line_items": [{"sku": "SKU-1", "quantity": 1, "price": "10.00"},
                               {"sku": "SKU-2", "quantity": 2, "price": "5.00"}]}
    return {"FID": int(ext), "rows": [
        {"FID": int(ext), "FBillNo": f"XSDD{ext}", "FModifyDate": "2026-11-02T09:00:00",
         "FBillAllAmount": total, "FEntryID": n, "FMaterialId.FNumber": sku, "FQty": qty,
         "FTaxPrice": price}
        for n, (sku, qty, price) in enumerate((("SKU-1", 1, "10.00"), ("SKU-2", 2, "5.00")), 1)]}


class World:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ids: dict[str, int] = {}

    def order(self, key: str, source: str, ext: str, captured: datetime, status: str,
              total: str = "20.00", source_total: str | None = None) -> int:
        with begin_write(self.engine) as conn:
            oid = conn.execute(insert(orders).values(
                source=source, external_id=ext, order_no=key, currency="USD",
                total=Decimal(total), status=status, content_hash=key, captured_at=captured,
                run_id=R1).returning(orders.c.id)).scalar_one()
            conn.execute(insert(order_lines), [
                {"order_id": oid, "line_no": 1, "sku": "SKU-1", "qty": Decimal(1),
                 "unit_price": Decimal("10.00"), "amount": Decimal("10.00"), "run_id": R1},
                {"order_id": oid, "line_no": 2, "sku": "SKU-2", "qty": Decimal(2),
                 "unit_price": Decimal("5.00"), "amount": Decimal("10.00"), "run_id": R1}])
            conn.execute(insert(raw_records).values(
                source=source, stream="orders", external_id=ext, content_hash=key,
                payload=json.dumps(_payload(source, ext, source_total or "20.00")),
                received_at=captured, run_id=R1))
        self.ids[key] = oid
        self.event(key, None, "captured", captured, R1)
        return oid

    def event(self, key: str, from_state: str | None, to_state: str, at: datetime,
              run_id: str) -> None:
        with begin_write(self.engine) as conn:
            conn.execute(insert(order_events).values(
                order_id=self.ids[key], from_state=from_state, to_state=to_state, at=at,
                reason="seeded", run_id=run_id))

    def path(self, key: str, run_id: str, *steps: tuple[str, str, datetime]) -> None:
        for from_state, to_state, at in steps:
            self.event(key, from_state, to_state, at, run_id)

    def quarantine(self, key: str, check_id: str, at: datetime, status: str = "open") -> None:
        with begin_write(self.engine) as conn:
            conn.execute(insert(quarantine).values(
                order_id=self.ids[key], check_id=check_id, severity="error", reason="seeded",
                status=status, created_at=at, run_id=R1))

    def ops(self, key: str, action: str, at: datetime, run_id: str) -> None:
        with begin_write(self.engine) as conn:
            conn.execute(insert(ops_actions).values(
                order_id=self.ids[key], action=action, actor="ops@example.com",
                reason="seeded", at=at, run_id=run_id))


def build(engine: Engine) -> World:
    w = World(engine)
    with begin_write(engine) as conn:
        conn.execute(insert(runs), [
            {"id": R1, "flow": "order_to_cash", "started_at": T0, "status": "completed"},
            {"id": R2, "flow": "ops", "started_at": T0 + s(3 * 3600), "status": "completed"},
            {"id": R3, "flow": "order_to_cash", "started_at": T0 + s(30 * 3600),
             "status": "completed"}])
    v = T0 + s(10)  # the gate
    for i in range(1, 11):
        status = {9: "allocated", 10: "quarantined"}.get(i, "invoiced" if i <= 4 else "allocated")
        w.order(f"s{i}", "shopify", str(5000 + i), T0, "paid" if i == 1 else status,
                total="21.00" if i == 2 else "20.00")
    for i in range(1, 9):
        w.path(f"s{i}", R1, ("captured", "validated", v), ("validated", "allocated", T0 + s(60 * i)))
    for i in range(1, 5):
        w.path(f"s{i}", R1, ("allocated", "pushed", T0 + s(600)),
               ("pushed", "invoiced", T0 + s(3600 * i)))
    w.event("s1", "invoiced", "paid", T0 + s(30 * 3600), R3)
    # s9: quarantined, released by ops, through on the second pass
    w.event("s9", "captured", "quarantined", v, R1)
    w.quarantine("s9", "customer_known", v, status="released")
    w.ops("s9", "release", T0 + s(3 * 3600), R2)
    w.path("s9", R2, ("quarantined", "captured", T0 + s(3 * 3600)),
           ("captured", "validated", T0 + s(3 * 3600 + 10)),
           ("validated", "allocated", T0 + s(4 * 3600)))
    # s10: two failing checks, still held
    w.event("s10", "captured", "quarantined", v, R1)
    w.quarantine("s10", "customer_known", v)
    w.quarantine("s10", "sku_known", v)

    c = T0 + s(3600)  # kingdee's capture
    for i in range(1, 5):
        w.order(f"e{i}", "kingdee", str(100000 + i), c, "allocated",
                source_total="99.00" if i == 2 else None)
    for i in range(1, 4):
        w.path(f"e{i}", R1, ("captured", "validated", c + s(10)),
               ("validated", "allocated", c + s(120 * i)))
    w.event("e4", "captured", "quarantined", c + s(10), R1)
    w.quarantine("e4", "price_matches_list", c + s(10), status="overridden")
    w.ops("e4", "override", T0 + s(4.5 * 3600), R2)
    w.path("e4", R2, ("quarantined", "validated", T0 + s(4.5 * 3600)),
           ("validated", "allocated", c + s(4 * 3600)))
    return w
