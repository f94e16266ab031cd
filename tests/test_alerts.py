"""Alerts: each trigger posts once to a fake webhook (over real HTTP), deduplicated per
(kind, key) per day; a webhook that is down never fails the caller and is tried again; secrets
stay out of messages; an artifact appears inside a flow run. SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from sqlalchemy import insert, select

from checks.gate import CheckOutcome, GateError, GateResult, SourceHold
from connectors.http import SourceError
from flows import alerts
from flows.alerts import AlertsConfig, raise_alert
from flows.config import load_settings
from flows.ingest import pull_stream
from sandbox.alerts_sink import AlertSink
from sandbox.server import FakeServer
from warehouse import schema as s
from warehouse.engine import make_engine

TOKEN = "alert-sink-token-5f2a"
RUN = "11111111-1111-4111-8111-111111111111"
NOW = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _quiet_console():
    yield
    log = logging.getLogger("orderhub")
    for handler in [h for h in log.handlers if getattr(h, "_orderhub", False)]:
        log.removeHandler(handler)


@pytest.fixture
def sink():
    app = AlertSink(token=TOKEN)
    with FakeServer(app) as server:
        app.url = server.url + "/hooks/ops"  # type: ignore[attr-defined]
        yield app


def _settings(tmp_path: Path, url: str, alerts_section: dict | None, monkeypatch) -> object:
    monkeypatch.setenv("ALERT_TOKEN", TOKEN)
    monkeypatch.setenv("SHOP_TOKEN", "shpat_dead_source_token")
    raw = {
        "warehouse": {"url": url},
        # nothing listens on port 9: a source that cannot be reached (no retries: fast)
        "sources": {"shop": {"system": "shopify", "base_url": "http://127.0.0.1:9",
                             "auth": {"token": "env:SHOP_TOKEN"}, "roles": ["orders"],
                             "retry": {"max_retries": 0}}},
    }
    if alerts_section is not None:
        raw["alerts"] = alerts_section
    path = tmp_path / "orderhub.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_settings(path)


@pytest.fixture
def world(tmp_path, warehouse_url, sink, monkeypatch):
    alerts._engine.cache_clear()
    section = {"webhook": {"url": sink.url, "auth": {"token": "env:ALERT_TOKEN"}},
               "unmatched_payment_days": 14}
    settings = _settings(tmp_path, warehouse_url, section, monkeypatch)
    engine = make_engine(warehouse_url)
    yield settings, engine, sink
    engine.dispose()
    alerts._engine.cache_clear()


def _rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(s.alerts.c.kind, s.alerts.c.alert_key, s.alerts.c.day, s.alerts.c.raised,
                   s.alerts.c.status).order_by(s.alerts.c.id))]


# --- configuration -----------------------------------------------------------------------------


def test_config_from_yaml_and_its_errors():
    raw = yaml.safe_load("""
alerts:
  webhook:
    url: https://hooks.example.com/orderhub
    auth: {token: env:ALERT_TOKEN}
  unmatched_payment_days: 14
""")
    cfg = AlertsConfig.from_config(raw)
    assert cfg == AlertsConfig(url="https://hooks.example.com/orderhub", token="env:ALERT_TOKEN",
                               timeout=10.0, unmatched_payment_days=14)
    assert AlertsConfig.from_config({}) == AlertsConfig()
    assert not AlertsConfig().has_webhook
    bad = [
        ({"alerts": {"webhook": {"url": "hooks.example.com"}}}, "alerts.webhook.url: expected"),
        ({"alerts": {"webhook": {"url": "https://x", "auth": {"token": "plain-secret"}}}},
         "alerts.webhook.auth.token: secrets must be references"),
        ({"alerts": {"webhook": {"url": "https://x", "headers": {}}}},
         "alerts.webhook.headers: unknown key"),
        ({"alerts": {"unmatched_payment_days": 0}}, "alerts.unmatched_payment_days: 0 is not"),
        ({"alerts": {"unmatched_payment_days": "14"}}, "alerts.unmatched_payment_days: '14'"),
        ({"alerts": {"slack": {}}}, "alerts.slack: unknown key"),
    ]
    for given, message in bad:
        with pytest.raises(ValueError) as err:
            AlertsConfig.from_config(given)
        assert str(err.value).startswith(message), str(err.value)


# --- the four triggers -------------------------------------------------------------------------


def test_gate_failed_posts_once_per_check_per_day(world):
    settings, engine, sink = world
    result = GateResult(RUN, evaluated=40, quarantined=3, validated=37, checks=[
        CheckOutcome("customer_known", "error", 40, 2, False),
        CheckOutcome("sku_known", "error", 40, 1, False),
        CheckOutcome("qty_positive", "error", 40, 0, True),
    ])
    (first,) = alerts.alert_gate(settings, engine, RUN, result)
    assert (first.kind, first.status, first.sent, first.suppressed) == (
        "gate_failed", "sent", ["customer_known", "sku_known"], [])
    (body,) = sink.received
    assert body["kind"] == "gate_failed" and body["keys"] == ["customer_known", "sku_known"]
    assert body["message"] == (f"gate run {RUN}: 3 of 40 orders quarantined (customer_known 2, "
                               "sku_known 1); see `orderhub quarantine list`")
    assert body["details"]["checks"] == {"customer_known": 2, "sku_known": 1}
    assert body["text"].startswith("orderhub gate_failed: gate run")
    assert sink.requests[0].headers["authorization"] == f"Bearer {TOKEN}"

    # the 5-minute schedule fails the same checks again: nothing more is posted today
    (again,) = alerts.alert_gate(settings, engine, RUN, result)
    assert (again.status, again.sent, again.suppressed) == (
        "suppressed", [], ["customer_known", "sku_known"])
    assert len(sink.received) == 1
    # a check failing for the first time today is news
    result.checks[2] = CheckOutcome("qty_positive", "error", 40, 1, False)
    (third,) = alerts.alert_gate(settings, engine, RUN, result)
    assert third.sent == ["qty_positive"] and len(sink.received) == 2
    # nothing quarantined, nothing held: no alert
    assert alerts.alert_gate(settings, engine, RUN, GateResult(RUN, 5, 0, 5)) == []
    assert [(k, key, n, st) for k, key, _, n, st in _rows(engine)] == [
        ("gate_failed", "customer_known", 3, "sent"), ("gate_failed", "sku_known", 3, "sent"),
        ("gate_failed", "qty_positive", 1, "sent")]


def test_a_gate_that_cannot_judge_is_a_failed_gate(world):
    settings, engine, sink = world
    error = GateError(f"gate run {RUN}: check 'sku_known' errored: no such table: products; "
                      "no order was quarantined or validated")
    assert alerts.alert_gate_error(settings, engine, RUN, error).status == "sent"
    assert alerts.alert_gate_error(settings, engine, RUN, error).status == "suppressed"
    (body,) = sink.received
    assert (body["kind"], body["keys"]) == ("gate_failed", ["error"])
    assert body["message"] == f"the gate could not judge the batch (it stays captured): {error}"
    # tomorrow it still fails: one more post
    later = alerts.raise_alert(settings, "gate_failed", "still failing", key="error",
                               engine=engine, now=datetime.now(UTC) + timedelta(days=1))
    assert later.status == "sent" and len(sink.received) == 2


def test_batch_held_posts_once_per_source_per_day(world):
    settings, engine, sink = world
    hold = SourceHold("shop", evaluated=60, failed=30, limit=Decimal("20"),
                      top_checks=[("sku_known", 25), ("qty_positive", 5)], held=60)
    result = GateResult(RUN, evaluated=100, quarantined=0, validated=40, held_orders=60,
                        holds=[hold])
    (held,) = alerts.alert_gate(settings, engine, RUN, result)
    assert (held.kind, held.sent, held.status) == ("batch_held", ["shop"], "sent")
    (body,) = sink.received
    assert body["message"] == (
        f"gate run {RUN}: batch held: 30 of 60 (50.0%) shop orders failed, over the 20% limit: "
        "top checks sku_known 25, qty_positive 5; release with `orderhub quarantine "
        "release-held --source shop` once the source is fixed")
    assert body["details"]["source"] == "shop" and body["details"]["held"] == 60
    (again,) = alerts.alert_gate(settings, engine, RUN, result)
    assert again.status == "suppressed" and len(sink.received) == 1


def test_source_unreachable_from_a_real_pull(world):
    settings, engine, sink = world
    with pytest.raises(SourceError) as err:
        pull_stream(settings, engine, RUN, "shop", "orders")
    result = alerts.alert_source_unreachable(settings, engine, RUN, "shop", err.value, "orders")
    assert result.status == "sent"
    (body,) = sink.received
    assert body["kind"] == "source_unreachable" and body["keys"] == ["shop"]
    assert body["message"].startswith("shop/orders could not be read: shop: cannot connect")
    assert "shpat_dead_source_token" not in str(body)
    assert alerts.alert_source_unreachable(settings, engine, RUN, "shop", err.value).status == \
        "suppressed"
    assert len(sink.received) == 1


def _payments(engine, rows: list[tuple[str, str, int, str]]) -> None:
    """(external id, amount, days before NOW, reconciliation status)"""
    with engine.begin() as conn:
        for ext, amount, days, status in rows:
            pid = conn.execute(insert(s.payments).values(
                source="kingdee", external_id=ext, reference=f"REF-{ext}", customer_code="C00001",
                currency="CNY", amount=Decimal(amount), received_at=NOW - timedelta(days=days),
                content_hash="h", run_id=RUN).returning(s.payments.c.id)).scalar_one()
            applied = Decimal(amount) if status == "applied" else Decimal("0")
            conn.execute(insert(s.payment_reconciliation).values(
                payment_id=pid, currency="CNY", received=Decimal(amount), applied=applied,
                unapplied=Decimal(amount) - applied, status=status,
                reason="no invoice matches" if status == "unapplied" else "", run_id=RUN))


def test_payment_unmatched_for_more_than_n_days(world):
    settings, engine, sink = world
    _payments(engine, [
        ("P-old", "120.50", 20, "unapplied"),     # unmatched for 20 days: alerted
        ("P-new", "80.00", 3, "unapplied"),       # only 3 days: not yet
        ("P-paid", "99.00", 30, "applied"),       # matched
        ("P-copy", "120.50", 19, "duplicate"),    # a duplicate has its own status
    ])
    first = alerts.alert_unmatched_payments(settings, engine, RUN, now=NOW)
    assert first.sent == ["kingdee:P-old"]
    (body,) = sink.received
    assert body["message"] == ("1 payment(s) unmatched for more than 14 days (CNY 120.50); "
                               "see the payment_reconciliation table")
    assert body["details"]["payments"][0]["payment"] == "kingdee:P-old"
    assert body["details"]["payments"][0]["amount"] == "120.50"  # exact, as a string
    # later the same day: nothing new
    assert alerts.alert_unmatched_payments(settings, engine, RUN, now=NOW + timedelta(hours=3)
                                           ).status == "suppressed"
    # 12 days later P-new is 15 days old: only it is news that day... and P-old again (a new day)
    later = alerts.alert_unmatched_payments(settings, engine, RUN, now=NOW + timedelta(days=12))
    assert later.sent == ["kingdee:P-old", "kingdee:P-new"]
    assert len(sink.received) == 2
    # nothing unmatched: no alert
    with engine.begin() as conn:
        conn.execute(s.payment_reconciliation.update().values(status="applied"))
    assert alerts.alert_unmatched_payments(settings, engine, RUN, now=NOW) is None


# --- delivery ----------------------------------------------------------------------------------


def test_a_webhook_that_is_down_never_fails_the_caller_and_is_tried_again(world):
    settings, engine, sink = world
    sink.faults.add(503, times=3)  # the first attempt and both retries
    first = raise_alert(settings, "source_unreachable", "erp down", key="erp", engine=engine)
    assert first.status == "failed" and "HTTP 503" in first.error
    assert TOKEN not in first.error and sink.received == []
    assert _rows(engine)[0][3:] == (1, "failed")
    second = raise_alert(settings, "source_unreachable", "erp down", key="erp", engine=engine)
    assert second.status == "sent" and len(sink.received) == 1
    assert _rows(engine)[0][3:] == (2, "sent")


def test_a_secret_webhook_url_is_redacted(tmp_path, sqlite_url, sink, monkeypatch):
    alerts._engine.cache_clear()
    monkeypatch.setenv("ALERT_URL", sink.url + "-nothing-here")
    settings = _settings(tmp_path, sqlite_url, {"webhook": {"url": "env:ALERT_URL"}}, monkeypatch)
    result = raise_alert(settings, "batch_held", "held", key="gate")
    assert result.status == "failed" and "HTTP 401" in result.error  # no token given
    assert result.error.endswith("(POST ***)") and "nothing-here" not in result.error
    alerts._engine.cache_clear()


def test_without_a_webhook_alerts_are_recorded(tmp_path, sqlite_url, monkeypatch):
    alerts._engine.cache_clear()
    settings = _settings(tmp_path, sqlite_url, None, monkeypatch)
    result = raise_alert(settings, "batch_held", "held", key="gate")
    assert (result.status, result.sent) == ("recorded", ["gate"])
    assert raise_alert(settings, "batch_held", "held", key="gate").status == "suppressed"
    with pytest.raises(ValueError, match="alert kind 'oops' is not one of"):
        raise_alert(settings, "oops", "x")
    alerts._engine.cache_clear()


@pytest.mark.e2e
def test_an_alert_inside_a_flow_run_is_an_artifact(tmp_path, sqlite_url, monkeypatch):
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    alerts._engine.cache_clear()
    settings = _settings(tmp_path, sqlite_url, None, monkeypatch)
    assert raise_alert(settings, "batch_held", "outside", key="a").artifact is False

    @flow
    def raising() -> bool:
        return raise_alert(settings, "batch_held", "inside a flow", key="b").artifact

    with prefect_test_harness():
        assert raising() is True
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async def latest() -> list:
            async with get_client() as client:
                return await client.read_artifacts(artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["alert-batch-held"])))

        import asyncio

        (artifact,) = asyncio.run(latest())
        assert artifact.type == "markdown" and "inside a flow" in artifact.data
    alerts._engine.cache_clear()
