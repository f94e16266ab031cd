"""Customer notifications (accepted, shipped, invoiced) through the outbox, each sent exactly
once: to the webhook fake over HTTP and to a local SMTP server, with a rerun and a crash between
send and mark. SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Connection, Engine, insert, select, update

from connectors.notify import SmtpSink, WebhookSink, message_id, render
from connectors.registry import build_connector
from flows.config import ConfigError, load_settings
from flows.push import drain
from sandbox.server import FakeServer
from sandbox.webhook import TOKEN, SmtpFake, WebhookFake
from warehouse import outbox as ob
from warehouse import schema as s
from warehouse.engine import begin_write
from warehouse.invoicing import create_invoices
from warehouse.notifications import (
    NotificationsConfig,
    NotificationsConfigError,
    enqueue_notifications,
    notification_key,
)
from warehouse.orders import transition

RUN = "00000000-0000-4000-8000-0000000000d1"
RUN2 = "00000000-0000-4000-8000-0000000000d2"
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
EVENTS = ["accepted", "shipped", "invoiced"]


def seed(conn: Connection, source: str, ext: str, path: tuple[str, ...], *,
         email: str | None = None, code: str | None = None, customer_id: int | None = None,
         ordered_at: datetime = T0) -> int:
    oid = conn.execute(insert(s.orders).values(
        source=source, external_id=ext, order_no=f"#{ext}", customer_code=code,
        customer_email=email, customer_id=customer_id, ordered_at=ordered_at, currency="CNY",
        total=D("10.00"), status="captured", content_hash="h", captured_at=T0,
        run_id=RUN)).inserted_primary_key[0]
    conn.execute(insert(s.order_lines).values(order_id=oid, line_no=1, sku="SKU-1", qty=D(1),
                                              unit_price=D("10.00"), amount=D("10.00"),
                                              run_id=RUN))
    for state in path:
        transition(conn, [oid], state, RUN, f"seeded {state}")
    return oid


@pytest.fixture
def world(engine: Engine) -> dict[str, int]:
    """A: shipped by our push and invoiced; B: accepted, allocated; C: accepted, no e-mail;
    D: cancelled after acceptance; E: quarantined; F: pushed to the ERP, channel reports nothing."""
    pushed = ("validated", "allocated", "pushed")
    with engine.begin() as conn:
        cust = conn.execute(insert(s.customers).values(
            code="C1", email="c1@crm.test", source="crm", external_id="c1", content_hash="h",
            run_id=RUN)).inserted_primary_key[0]
        ids = {
            "A": seed(conn, "shopify", "A", pushed, email="a@shop.test"),
            "B": seed(conn, "jiandaoyun", "B", ("validated", "allocated"), code="C1",
                      customer_id=cust),
            "C": seed(conn, "shopify", "C", ("validated",)),
            "D": seed(conn, "shopify", "D", ("validated", "cancelled"), email="d@shop.test"),
            "E": seed(conn, "jiandaoyun", "E", ("quarantined",), code="C1", customer_id=cust),
            "F": seed(conn, "jiandaoyun", "F", pushed, code="C1", customer_id=cust),
        }
        conn.execute(insert(s.outbox).values(
            idempotency_key="shopify:fulfilment:A", target="shopify", operation="fulfilment",
            business_key="A", order_id=ids["A"], payload={}, status="done", attempts=1,
            created_at=T0, run_id=RUN))
    create_invoices(engine, RUN)
    with engine.begin() as conn:
        transition(conn, [ids["A"]], "invoiced", RUN, "invoice sent")
    return ids


def keys(sink: str, *pairs: str) -> set[str]:
    out = set()
    for pair in pairs:
        order, event = pair.split(".")
        source = "shopify" if order in "ACDG" else "jiandaoyun"
        out.add(notification_key(sink, source, order, event))
    return out


ALL = ("A.accepted", "A.shipped", "A.invoiced", "B.accepted", "C.accepted", "F.accepted",
       "F.shipped")


def outbox_rows(engine: Engine, operation: str = "notification") -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.idempotency_key: r for r in conn.execute(
            select(s.outbox).where(s.outbox.c.operation == operation))}


def _expire_leases(engine: Engine) -> None:
    with begin_write(engine) as conn:
        conn.execute(update(s.outbox).values(claimed_at=datetime.now(UTC) - timedelta(hours=1)))


def settings_for(tmp_path: Path, engine: Engine, sources: dict[str, Any]) -> Any:
    path = tmp_path / "orderhub.yaml"
    path.write_text(yaml.safe_dump({"warehouse": {"url": str(engine.url.render_as_string(
        hide_password=False))}, "sources": sources}))
    return load_settings(path)


# --- configuration ------------------------------------------------------------------------------


def test_config_reads_and_checks_the_sink() -> None:
    sources = {"notices": {"system": "webhook"}, "mail": {"system": "smtp"},
               "kingdee": {"system": "kingdee"}}
    cfg = NotificationsConfig.from_config(
        {"sink": "mail", "events": ["accepted", "invoiced"], "since": "2026-11-01T00:00:00Z"},
        sources)
    assert cfg == NotificationsConfig("mail", ("accepted", "invoiced"),
                                      datetime(2026, 11, 1, tzinfo=UTC), "smtp")
    assert cfg.enabled and cfg.require_email
    assert NotificationsConfig.from_config({"sink": "notices"}).events == tuple(EVENTS)
    assert not NotificationsConfig.from_config(None).enabled
    for raw, message in [
        ({"sink": "kingdee"}, "notifications.sink: source 'kingdee' has system 'kingdee', not "
                              "webhook or smtp"),
        ({"sink": "nope"}, "notifications.sink: 'nope' is no such source"),
        ({"sink": "mail", "events": ["paid"]},
         "notifications.events[0]: 'paid' is not one of accepted, shipped, invoiced"),
        ({"sink": "mail", "evnts": []}, "notifications.evnts: unknown key (known: sink, events, "
                                        "since)"),
        ({"events": ["accepted"]}, "notifications.sink: required, the name of a source whose "
                                   "system is webhook or smtp"),
        ({"sink": "mail", "since": "yesterday"},
         "notifications.since: 'yesterday' is not an ISO-8601 date-time (e.g. "
         "\"2026-11-01T00:00:00Z\")"),
    ]:
        with pytest.raises(NotificationsConfigError) as exc:
            NotificationsConfig.from_config(raw, sources)
        assert str(exc.value) == message


def test_sink_options_are_checked_when_orderhub_yaml_loads(tmp_path: Path) -> None:
    path = tmp_path / "orderhub.yaml"
    path.write_text(yaml.safe_dump({"sources": {"mail": {
        "system": "smtp", "base_url": "smtp://127.0.0.1:2525", "options": {"form": "x"}}}}))
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert str(exc.value) == (f"{path}: sources.mail: source 'mail': options.form: unknown option "
                              "(known: from, message_id_domain, starttls, timeout)")


# --- enqueue ------------------------------------------------------------------------------------


def test_each_order_and_event_is_queued_once(engine: Engine, world: dict[str, int]) -> None:
    assert enqueue_notifications(engine, RUN, EVENTS, "notices") == {
        "accepted": 4, "shipped": 2, "invoiced": 1}
    rows = outbox_rows(engine)
    assert set(rows) == keys("notices", *ALL)
    assert enqueue_notifications(engine, RUN2, EVENTS, "notices") == {
        "accepted": 0, "shipped": 0, "invoiced": 0}
    a = rows["notices:notification:shopify:A:invoiced"]
    assert (a.target, a.operation, a.business_key, a.order_id, a.status) == (
        "notices", "notification", "shopify:A:invoiced", world["A"], "pending")
    assert a.payload == {
        "key": "notices:notification:shopify:A:invoiced", "event": "invoiced",
        "source": "shopify", "order_external_id": "A", "order_no": "#A",
        "customer_code": None, "customer_email": "a@shop.test", "currency": "CNY",
        "total": "10.00", "invoice_no": "INV-shopify-A", "invoice_amount": "10.00"}
    # the master's e-mail when the order has none (a CRM order names the customer by code)
    assert rows["notices:notification:jiandaoyun:B:accepted"].payload["customer_email"] == \
        "c1@crm.test"


def test_since_leaves_older_orders_out(engine: Engine, world: dict[str, int]) -> None:
    with engine.begin() as conn:
        seed(conn, "shopify", "G", ("validated",), email="g@shop.test",
             ordered_at=T0 + timedelta(days=1))
    assert enqueue_notifications(engine, RUN, ["accepted"], "notices",
                                 since=T0 + timedelta(hours=1)) == {"accepted": 1}
    assert set(outbox_rows(engine)) == keys("notices", "G.accepted")


# --- webhook ------------------------------------------------------------------------------------


@pytest.fixture
def webhook(tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch):
    app = WebhookFake(token=TOKEN)
    monkeypatch.setenv("NOTIFY_TOKEN", TOKEN)
    monkeypatch.setenv("NOTIFY_SECRET", "sign-me-please")
    with FakeServer(app) as server:
        settings = settings_for(tmp_path, engine, {"notices": {
            "system": "webhook", "base_url": server.url + app.base_path, "rate_limit": 0,
            "auth": {"token": "env:NOTIFY_TOKEN", "secret": "env:NOTIFY_SECRET"}}})
        yield app, settings


def test_webhook_delivers_each_notification_exactly_once(engine: Engine, world: dict[str, int],
                                                         webhook) -> None:
    app, settings = webhook
    enqueue_notifications(engine, RUN, EVENTS, "notices")
    assert drain(settings, engine, RUN, "notices", "notification")["done"] == 7
    expected = keys("notices", *ALL)
    assert dict(app.creates) == {("notification", k): 1 for k in expected}
    assert set(app.deliveries) == expected
    assert app.deliveries["notices:notification:jiandaoyun:F:shipped"]["event"] == "shipped"
    req = next(r for r in app.requests
               if r.header("idempotency-key") == "notices:notification:shopify:A:accepted")
    assert (req.method, req.path, req.header("authorization"), req.header("x-orderhub-event")) \
        == ("POST", "/notify", f"Bearer {TOKEN}", "accepted")
    signature = hmac.new(b"sign-me-please", req.body, hashlib.sha256).hexdigest()
    assert req.header("x-orderhub-signature") == f"sha256={signature}"
    assert {r.status for r in outbox_rows(engine).values()} == {"done"}
    assert outbox_rows(engine)["notices:notification:shopify:A:accepted"].remote_id == \
        app._answers["notices:notification:shopify:A:accepted"].json["id"]

    # A rerun queues nothing and sends nothing.
    assert sum(enqueue_notifications(engine, RUN2, EVENTS, "notices").values()) == 0
    assert drain(settings, engine, RUN2, "notices", "notification")["done"] == 0
    assert len(app.requests) == 7


def test_webhook_crash_between_send_and_mark_is_replayed_not_redelivered(
        engine: Engine, world: dict[str, int], webhook) -> None:
    app, settings = webhook
    enqueue_notifications(engine, RUN, EVENTS, "notices")
    rows = ob.claim(engine, "notices", "notification", 100)
    ob.mark_sending(engine, [r["id"] for r in rows])
    sent = rows[:3]  # these reached the receiver; then the worker died before marking
    connector = build_connector("notices", settings.connector_config("notices"))
    assert all(r.ok for r in connector.push("notification", [r["payload"] for r in sent]))
    assert drain(settings, engine, RUN, "notices", "notification")["done"] == 0  # lease held
    _expire_leases(engine)
    result = drain(settings, engine, RUN2, "notices", "notification")
    assert (result["done"], result["recovered"]) == (7, 7)
    replayed = {r["idempotency_key"] for r in sent}
    assert app.received == Counter({k: 2 if k in replayed else 1
                                    for k in keys("notices", *ALL)})
    assert dict(app.creates) == {("notification", k): 1 for k in keys("notices", *ALL)}
    assert {r.status for r in outbox_rows(engine).values()} == {"done"}


def test_webhook_refusal_is_a_failed_row_not_a_silent_done(engine: Engine, world, webhook
                                                           ) -> None:
    app, settings = webhook
    enqueue_notifications(engine, RUN, ["invoiced"], "notices")
    app.faults.add(400, body={"error": "unknown customer"})
    result = drain(settings, engine, RUN, "notices", "notification")
    assert (result["done"], result["failed"]) == (0, 1)
    row = outbox_rows(engine)["notices:notification:shopify:A:invoiced"]
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error.startswith("notices: HTTP 400: unknown customer (POST http://127.0.0.1:")
    assert drain(settings, engine, RUN2, "notices", "notification")["done"] == 1
    assert app.creates[("notification", "notices:notification:shopify:A:invoiced")] == 1


# --- SMTP ---------------------------------------------------------------------------------------


@pytest.fixture
def smtp(tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MAIL_USER", "orderhub")
    monkeypatch.setenv("MAIL_PASSWORD", "smtp-s3cret")
    with SmtpFake(username="orderhub", password="smtp-s3cret") as fake:

        def settings() -> Any:
            return settings_for(tmp_path, engine, {"mail": {
                "system": "smtp", "base_url": fake.url,
                "auth": {"username": "env:MAIL_USER", "password": "env:MAIL_PASSWORD"},
                "options": {"from": "orders@shop.test"}}})

        yield fake, settings


def _mail_keys() -> set[str]:
    return keys("mail", *[p for p in ALL if not p.startswith("C.")])  # C has no e-mail


def test_smtp_sends_one_message_per_notification_once(engine: Engine, world, smtp) -> None:
    fake, settings = smtp
    assert enqueue_notifications(engine, RUN, EVENTS, "mail", require_email=True) == {
        "accepted": 3, "shipped": 2, "invoiced": 1, "no_email": 1}
    assert drain(settings(), engine, RUN, "mail", "notification")["done"] == 6
    assert dict(fake.creates) == {("notification", k): 1 for k in _mail_keys()}
    assert fake.sessions == 1  # one connection for the batch
    got = {(m.message["X-Orderhub-Key"], m.message["To"], m.message["Subject"],
            m.message["Message-ID"], tuple(m.rcpt_tos)) for m in fake.messages}
    addr = {"A": "a@shop.test", "B": "c1@crm.test", "F": "c1@crm.test"}
    assert got == {(k, addr[k.split(":")[3]], f"Order #{k.split(':')[3]}: {k.split(':')[4]}",
                    message_id(k, "shop.test"), (addr[k.split(":")[3]],)) for k in _mail_keys()}
    invoiced = next(m.message for m in fake.messages
                    if m.message["X-Orderhub-Event"] == "invoiced")
    assert invoiced.get_content().splitlines() == [
        "Invoice INV-shopify-A for your order #A has been issued: 10.00 CNY."]
    assert {r.status for r in outbox_rows(engine).values()} == {"done"}
    assert outbox_rows(engine)["mail:notification:shopify:A:shipped"].remote_id == message_id(
        "mail:notification:shopify:A:shipped", "shop.test")

    # Rerun: nothing queued (C still has no address), nothing sent.
    assert enqueue_notifications(engine, RUN2, EVENTS, "mail", require_email=True) == {
        "accepted": 0, "shipped": 0, "invoiced": 0, "no_email": 1}
    assert drain(settings(), engine, RUN2, "mail", "notification")["done"] == 0
    assert len(fake.messages) == 6


def test_smtp_crash_between_send_and_mark(engine: Engine, world, smtp) -> None:
    """SMTP cannot be asked: a row left `sending` is resent with the same Message-ID
    (at-least-once in the crash window, and recognisable); the rest are sent once."""
    fake, settings = smtp
    enqueue_notifications(engine, RUN, EVENTS, "mail", require_email=True)
    rows = ob.claim(engine, "mail", "notification", 100)
    ob.mark_sending(engine, [r["id"] for r in rows])
    crashed = rows[0]["idempotency_key"]
    sink = build_connector("mail", settings().connector_config("mail"))
    assert [r.ok for r in sink.push("notification", [rows[0]["payload"]])] == [True]
    assert drain(settings(), engine, RUN, "mail", "notification")["done"] == 0  # lease held
    _expire_leases(engine)
    result = drain(settings(), engine, RUN2, "mail", "notification")
    assert (result["done"], result["recovered"]) == (6, 6)
    # every row was `sending`; only the one that had left is there twice, same Message-ID
    assert dict(fake.by_message_id) == {message_id(k, "shop.test"): 2 if k == crashed else 1
                                        for k in _mail_keys()}
    assert {r.status for r in outbox_rows(engine).values()} == {"done"}
    assert drain(settings(), engine, RUN2, "mail", "notification")["done"] == 0


def test_smtp_lost_answer_is_retried_with_the_same_message_id(engine: Engine, world,
                                                              smtp) -> None:
    fake, settings = smtp
    enqueue_notifications(engine, RUN, ["invoiced"], "mail", require_email=True)
    fake.drop_after_data()  # the server kept it; the 250 never came back
    result = drain(settings(), engine, RUN, "mail", "notification")
    assert (result["done"], result["failed"]) == (0, 1)
    key = "mail:notification:shopify:A:invoiced"
    assert outbox_rows(engine)[key].last_error.startswith(
        "mail: connection lost (SMTPServerDisconnected")
    fake.fail_next(451)  # a temporary refusal: not kept, retried
    assert drain(settings(), engine, RUN, "mail", "notification")["failed"] == 1
    assert drain(settings(), engine, RUN, "mail", "notification")["done"] == 1
    assert fake.by_message_id == Counter({message_id(key, "shop.test"): 2})  # detectable
    assert outbox_rows(engine)[key].attempts == 3


def test_smtp_bad_password_is_an_auth_error_without_the_secret(engine: Engine, world, smtp
                                                              ) -> None:
    fake, _ = smtp
    sink = SmtpSink("mail", {"system": "smtp", "base_url": fake.url,
                             "auth": {"username": "orderhub", "password": "wrong-pass"},
                             "options": {"from": "orders@shop.test"}})
    doc = {"key": "k", "event": "accepted", "order_no": "#1", "customer_email": "a@x.test"}
    with pytest.raises(Exception) as exc:
        sink.push("notification", [doc])
    assert type(exc.value).__name__ == "AuthError"
    assert "wrong-pass" not in str(exc.value) and "login refused" in str(exc.value)


def test_render_and_sinks_registered() -> None:
    assert render({"event": "shipped", "order_no": "#9"}) == ("Order #9: shipped",
                                                             "Your order #9 has shipped.\n")
    assert isinstance(build_connector("w", {"system": "webhook", "base_url": "http://x/h"}),
                      WebhookSink)
    with pytest.raises(ValueError, match=r"options.from: required"):
        build_connector("m", {"system": "smtp", "base_url": "smtp://127.0.0.1:25"})
