"""Customer progress notifications: one outbox row per (order, event), sent exactly once.

orderhub.yaml ``notifications`` names the sink (a source whose system is ``webhook`` or
``smtp``, connectors/notify.py) and the events to send. ``enqueue_notifications`` finds, set-based,
the orders that reached each event and are not queued yet, and writes outbox rows (operation
``notification``) with the deterministic key ``{sink}:notification:{source}:{external_id}:{event}``;
the unique key makes a rerun, or a second worker, a no-op. The push stage's drain sends them.

Events (an order that is cancelled, rejected or returned gets no new ones):

- ``accepted``: the order passed the gate (it has an order event to ``validated``);
- ``shipped``: ``warehouse.invoicing.shipped_condition`` (channel says fulfilled, or our
  fulfilment push is confirmed, or the ERP hand-over where the channel reports nothing);
- ``invoiced``: the invoice push is confirmed (an order event to ``invoiced``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, exists, func, literal, select

from warehouse.engine import begin_write
from warehouse.invoicing import shipped_condition
from warehouse.outbox import _insert_new, _money
from warehouse.schema import customers, invoices, order_events, orders, outbox

EVENTS = ("accepted", "shipped", "invoiced")
SINK_SYSTEMS = ("webhook", "smtp")
CLOSED = ("cancelled", "rejected", "returned")
OPERATION = "notification"


class NotificationsConfigError(ValueError):
    """A bad orderhub.yaml ``notifications`` entry; str() names ``notifications.<path>``."""


@dataclass(frozen=True)
class NotificationsConfig:
    """orderhub.yaml ``notifications``. ``NotificationsConfig()`` sends nothing."""

    sink: str | None = None
    events: tuple[str, ...] = ()
    since: datetime | None = None  # only orders placed at or after (no backlog on first use)
    sink_system: str | None = None  # webhook | smtp, when the sources were given

    KEYS = ("sink", "events", "since")

    @property
    def enabled(self) -> bool:
        return bool(self.sink and self.events)

    @property
    def require_email(self) -> bool:
        """SMTP needs a recipient; a webhook receiver decides for itself."""
        return self.sink_system == "smtp"

    @classmethod
    def from_config(cls, raw: Any, sources: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> NotificationsConfig:
        """Validate ``notifications``; with ``sources`` (name -> {system, ...}) the sink must
        be one of them, of system webhook or smtp."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise NotificationsConfigError("notifications: expected a mapping {sink, events}")
        unknown = sorted(set(raw) - set(cls.KEYS))
        if unknown:
            raise NotificationsConfigError(f"notifications.{unknown[0]}: unknown key (known: "
                                           f"{', '.join(cls.KEYS)})")
        sink = raw.get("sink")
        if not isinstance(sink, str) or not sink:
            raise NotificationsConfigError("notifications.sink: required, the name of a source "
                                           f"whose system is {' or '.join(SINK_SYSTEMS)}")
        system = None
        if sources is not None:
            if sink not in sources:
                raise NotificationsConfigError(f"notifications.sink: {sink!r} is no such source")
            system = sources[sink].get("system")
            if system not in SINK_SYSTEMS:
                raise NotificationsConfigError(
                    f"notifications.sink: source {sink!r} has system {system!r}, not "
                    f"{' or '.join(SINK_SYSTEMS)}")
        events = raw.get("events", list(EVENTS))
        if not isinstance(events, list) or not events:
            raise NotificationsConfigError("notifications.events: expected a list of "
                                           f"{', '.join(EVENTS)}")
        for i, event in enumerate(events):
            if event not in EVENTS:
                raise NotificationsConfigError(f"notifications.events[{i}]: {event!r} is not one "
                                               f"of {', '.join(EVENTS)}")
        return cls(sink, tuple(dict.fromkeys(events)), _since(raw.get("since")), system)


def _since(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise NotificationsConfigError(f"notifications.since: {value!r} is not an ISO-8601 "
                                           "date-time (e.g. \"2026-11-01T00:00:00Z\")") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _reached(state: str) -> ColumnElement[bool]:
    return exists().where(order_events.c.order_id == orders.c.id,
                          order_events.c.to_state == state)


def event_condition(event: str) -> ColumnElement[bool]:
    """SQL: the order has reached ``event`` (see the module docstring)."""
    if event == "accepted":
        return _reached("validated")
    if event == "shipped":
        return shipped_condition()
    if event == "invoiced":
        return _reached("invoiced")
    raise NotificationsConfigError(f"notifications: unknown event {event!r} "
                                   f"(known: {', '.join(EVENTS)})")


def notification_key(sink: str, source: str, external_id: str, event: str) -> str:
    """The outbox key of one notification (a test holds it to the SQL spelling below)."""
    return f"{sink}:{OPERATION}:{source}:{external_id}:{event}"


def enqueue_notifications(
    engine: Engine,
    run_id: str,
    events: Sequence[str],
    sink: str,
    *,
    since: datetime | None = None,
    require_email: bool = False,
) -> dict[str, int]:
    """Queue one ``notification`` row per order and event reached and not yet queued.

    Returns ``{event: rows created}``, plus ``no_email`` (orders left out because the sink needs
    an address and none is known — they are queued once one is). One transaction; per event one
    SELECT builds the docs and one INSERT ... ON CONFLICT (idempotency_key) DO NOTHING writes them.
    """
    email = func.coalesce(orders.c.customer_email, customers.c.email)
    counts: dict[str, int] = {}
    no_email = 0
    with begin_write(engine) as conn:
        for event in dict.fromkeys(events):
            business_key = (orders.c.source + literal(":") + orders.c.external_id
                            + literal(f":{event}"))
            key = literal(f"{sink}:{OPERATION}:") + business_key
            where = [event_condition(event), orders.c.status.not_in(CLOSED),
                     ~exists().where(outbox.c.idempotency_key == key)]
            if since is not None:
                where.append(orders.c.ordered_at >= since)
            base = (select(orders.c.id).select_from(orders)
                    .outerjoin(customers, customers.c.id == orders.c.customer_id).where(*where))
            if require_email:
                no_email += conn.execute(select(func.count()).select_from(
                    base.where(email.is_(None)).subquery())).scalar_one()
                where.append(email.is_not(None))
            q = (
                select(
                    orders.c.id, orders.c.source, orders.c.external_id, orders.c.order_no,
                    orders.c.currency, orders.c.total, email.label("email"),
                    func.coalesce(customers.c.code, orders.c.customer_code).label("code"),
                    invoices.c.invoice_no, invoices.c.amount.label("invoice_amount"),
                    business_key.label("business_key"), key.label("key"),
                )
                .select_from(orders)
                .outerjoin(customers, customers.c.id == orders.c.customer_id)
                .outerjoin(invoices, invoices.c.order_id == orders.c.id)
                .where(*where)
                .order_by(orders.c.id)
            )
            now = datetime.now(UTC)
            rows = [
                {"idempotency_key": r.key, "business_key": r.business_key, "order_id": r.id,
                 "target": sink, "operation": OPERATION, "status": "pending", "attempts": 0,
                 "created_at": now, "run_id": run_id,
                 "payload": {
                     "key": r.key, "event": event, "source": r.source,
                     "order_external_id": r.external_id, "order_no": r.order_no,
                     "customer_code": r.code, "customer_email": r.email,
                     "currency": r.currency, "total": _money(r.total, r.currency),
                     "invoice_no": r.invoice_no if event == "invoiced" else None,
                     "invoice_amount": (_money(r.invoice_amount, r.currency)
                                        if event == "invoiced" else None),
                 }}
                for r in conn.execute(q)
            ]
            counts[event] = _insert_new(conn, rows) if rows else 0
    if require_email:
        counts["no_email"] = no_email
    return counts
