"""Alerts to ops: a JSON POST to the configured webhook, and a Prefect artifact inside a flow run.

orderhub.yaml::

    alerts:
      webhook:
        url: env:ALERT_WEBHOOK_URL          # or a plain https://... URL
        auth: {token: env:ALERT_TOKEN}      # optional: sent as "Authorization: Bearer ..."
        timeout: 10                         # seconds (default 10)
      unmatched_payment_days: 14            # payment_unmatched: unapplied for more than N days

Kinds and keys: ``gate_failed`` (the gate quarantined orders: key the check; or it could not
judge the batch at all: key ``error``), ``batch_held`` (the gate's batch threshold held a
source's share: key the source), ``source_unreachable`` (a pull failed: key the source),
``payment_unmatched`` (key ``source:external_id`` of each payment).
An alert is sent once per (kind, key) per UTC day (``warehouse.alerts.claim``): a schedule every
5 minutes does not spam, a new key (another check, another source) is sent at once.

Raising an alert never fails the flow that raises it: a webhook that is down is recorded on the
alert (status ``failed``, tried again on the next raise) and logged. The POST goes through
``connectors.http.HttpClient`` (retries, timeouts, secret redaction); Prefect is touched only
when it is already imported and a flow run is active.
"""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from connectors.http import BearerAuth, HttpClient, SourceError
from flows.config import ConfigError, Settings, resolve_secret
from flows.console import progress
from warehouse import alerts as store
from warehouse.runs import json_safe

KINDS = ("gate_failed", "batch_held", "source_unreachable", "payment_unmatched")
DEFAULT_UNMATCHED_DAYS = 14
DETAIL_ROWS = 50  # list details beyond this are cut (the count says how many there were)


@dataclass(frozen=True)
class AlertsConfig:
    url: str | None = None  # a URL or a secret reference (env:NAME / prefect-secret:NAME)
    token: str | None = None  # a secret reference
    timeout: float = 10.0
    unmatched_payment_days: int = DEFAULT_UNMATCHED_DAYS

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> AlertsConfig:
        """From the whole orderhub.yaml mapping; ``ValueError`` names the key on one line."""
        section = (raw or {}).get("alerts")
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError("alerts: expected a mapping with webhook and unmatched_payment_days")
        unknown = sorted(set(section) - {"webhook", "unmatched_payment_days"})
        if unknown:
            raise ValueError(f"alerts.{unknown[0]}: unknown key "
                             "(known: unmatched_payment_days, webhook)")
        days = section.get("unmatched_payment_days", DEFAULT_UNMATCHED_DAYS)
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"alerts.unmatched_payment_days: {days!r} is not a whole number of "
                             "days >= 1")
        hook = section.get("webhook")
        if hook is None:
            return cls(unmatched_payment_days=days)
        if not isinstance(hook, Mapping):
            raise ValueError("alerts.webhook: expected a mapping with url (and auth, timeout)")
        unknown = sorted(set(hook) - {"url", "auth", "timeout"})
        if unknown:
            raise ValueError(f"alerts.webhook.{unknown[0]}: unknown key (known: auth, timeout, url)")
        url = hook.get("url")
        if not isinstance(url, str) or not url.startswith(
                ("http://", "https://", "env:", "prefect-secret:")):
            raise ValueError("alerts.webhook.url: expected an http(s) URL or a secret reference "
                             "(env:NAME, prefect-secret:NAME)")
        auth = hook.get("auth") or {}
        if not isinstance(auth, Mapping) or set(auth) - {"token"}:
            raise ValueError("alerts.webhook.auth: expected {token: env:NAME}")
        token = auth.get("token")
        if token is not None and not (isinstance(token, str)
                                      and token.startswith(("env:", "prefect-secret:"))):
            raise ValueError("alerts.webhook.auth.token: secrets must be references (env:NAME or "
                             "prefect-secret:NAME), not values")
        timeout = hook.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"alerts.webhook.timeout: {timeout!r} is not a number of seconds > 0")
        return cls(url=url, token=token, timeout=float(timeout), unmatched_payment_days=days)

    @property
    def has_webhook(self) -> bool:
        return self.url is not None


@dataclass
class AlertResult:
    kind: str
    keys: list[str]  # the keys this raise covered
    sent: list[str] = field(default_factory=list)  # keys it delivered (or recorded) now
    suppressed: list[str] = field(default_factory=list)  # already alerted today
    status: str = "suppressed"  # sent | failed | recorded (no webhook) | suppressed
    error: str | None = None
    artifact: bool = False


def raise_alert(settings_or_config: Settings | AlertsConfig | Mapping[str, Any], kind: str,
                message: str, details: Mapping[str, Any] | None = None, *,
                key: str | None = None, keys: Sequence[str] | None = None,
                engine: Engine | None = None, run_id: str | None = None,
                now: datetime | None = None) -> AlertResult:
    """Raise one alert: deduplicate per (kind, key) per day, POST it, show it as an artifact.

    ``settings_or_config``: Settings (its ``alerts:`` section, and its warehouse when no
    ``engine`` is given), an AlertsConfig, or the orderhub.yaml mapping. ``keys``: one alert
    about several things (each deduplicated on its own; only the new ones are sent).
    """
    if kind not in KINDS:
        raise ValueError(f"alert kind {kind!r} is not one of {', '.join(KINDS)}")
    cfg = _config(settings_or_config)
    engine = engine or _engine_of(settings_or_config)
    now = now or datetime.now(UTC)
    day = now.astimezone(UTC).date()
    wanted = list(dict.fromkeys(keys if keys is not None else [key or kind]))
    result = AlertResult(kind, wanted)
    if not wanted:
        return result
    details = dict(details or {})
    fresh = store.claim(engine, kind, wanted, day, message, details, run_id or _no_run(), now)
    result.suppressed = [k for k in wanted if k not in fresh]
    if not fresh:
        return result
    result.sent = fresh
    body = {
        "source": "orderhub", "kind": kind, "keys": fresh, "message": message,
        "text": f"orderhub {kind}: {message}", "details": json_safe(details),
        "day": day.isoformat(), "raised_at": now.isoformat(), "run_id": run_id,
    }
    if cfg.has_webhook:
        try:
            _post(cfg, body)
            result.status = store.SENT
        except (SourceError, ConfigError) as exc:  # redacted, one line; never fails the flow
            result.status, result.error = store.FAILED, str(exc)
            progress("alert %s not delivered: %s", kind, exc)
    else:
        result.status = store.RECORDED
    store.mark(engine, kind, fresh, day, result.status, result.error)
    result.artifact = _artifact(kind, message, fresh, details)
    progress("alert %s: %s", kind, message)
    return result


def _config(given: Settings | AlertsConfig | Mapping[str, Any]) -> AlertsConfig:
    if isinstance(given, AlertsConfig):
        return given
    raw = given.raw if isinstance(given, Settings) else given
    try:
        return AlertsConfig.from_config(raw)
    except ValueError as exc:
        where = f"{given.path}: " if isinstance(given, Settings) else ""
        raise ConfigError(f"{where}{exc}") from None


def _engine_of(given: Any) -> Engine:
    if isinstance(given, Settings):
        return _engine(given.warehouse_url)
    raise ValueError("raise_alert: pass engine= (alerts are deduplicated in the warehouse)")


@functools.cache
def _engine(url: str) -> Engine:
    from warehouse.engine import make_engine, migrate

    engine = make_engine(url)
    migrate(engine)
    return engine


def _no_run() -> str:
    return str(uuid.UUID(int=0))  # raised outside a run (a test, a script)


def _post(cfg: AlertsConfig, body: dict[str, Any]) -> None:
    url = str(resolve_secret(cfg.url, "alerts.webhook.url"))
    token = resolve_secret(cfg.token, "alerts.webhook.auth.token") if cfg.token else None
    secrets = [str(token)] if token else []
    if cfg.url and not cfg.url.startswith("http"):
        secrets.append(url)  # a URL kept as a secret (Slack-style hooks) is redacted as one
    client = HttpClient("alerts webhook", url, auth=BearerAuth(str(token)) if token else None,
                        secrets=secrets, timeout=cfg.timeout, max_retries=2, backoff_max=5.0)
    try:
        client.post(url, json=body)  # the absolute URL as given (no trailing slash added)
    finally:
        client.close()


def _artifact(kind: str, message: str, keys: Sequence[str], details: Mapping[str, Any]) -> bool:
    """A markdown artifact on the current flow run; False outside one or without Prefect.

    Prefect is not imported here: outside a flow run it need not be loaded at all."""
    if "prefect" not in sys.modules:
        return False
    try:
        from prefect.artifacts import create_markdown_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return False
        shown = ", ".join(f"`{k}`" for k in keys[:20]) + (" ..." if len(keys) > 20 else "")
        lines = [f"## orderhub alert: {kind}", "", message, "", f"keys: {shown}"]
        for name, value in details.items():
            if not isinstance(value, list | dict):
                lines.append(f"- **{name}**: {value}")
        create_markdown_artifact(markdown="\n".join(lines), key=f"alert-{kind.replace('_', '-')}",
                                 description=f"orderhub alert: {kind}")
        return True
    except Exception:  # noqa: BLE001 - an artifact is a convenience, never a failure
        return False


# --- the four triggers -------------------------------------------------------------------------


def alert_gate(settings: Settings, engine: Engine, run_id: str, result: Any) -> list[AlertResult]:
    """After a gate (a ``checks.gate.GateResult``): ``gate_failed`` when it quarantined orders,
    one key per failing error check; ``batch_held`` per source whose share it held, key the
    source. A check or source already alerted today is not sent again."""
    raised: list[AlertResult] = []
    if getattr(result, "quarantined", 0):
        failing = [c for c in result.checks if c.failed and c.severity == "error"]
        counts = ", ".join(f"{c.check_id} {c.failed}" for c in failing)
        message = (f"gate run {run_id}: {result.quarantined} of {result.evaluated} orders "
                   f"quarantined ({counts}); see `orderhub quarantine list`")
        raised.append(raise_alert(
            settings, "gate_failed", message,
            {"run_id": run_id, "evaluated": result.evaluated, "quarantined": result.quarantined,
             "checks": {c.check_id: c.failed for c in failing}},
            keys=[c.check_id for c in failing] or ["gate"], engine=engine, run_id=run_id))
    for hold in getattr(result, "holds", None) or []:
        raised.append(alert_batch_held(settings, engine, run_id, hold))
    return raised


def alert_gate_error(settings: Settings, engine: Engine, run_id: str,
                     error: BaseException | str) -> AlertResult:
    """``gate_failed``, key ``error``: the gate could not judge the batch at all (a
    ``checks.gate.GateError``); every captured order waits for the next gate."""
    text = _first_line(error)
    return raise_alert(settings, "gate_failed",
                       f"the gate could not judge the batch (it stays captured): {text}",
                       {"run_id": run_id, "error": text}, key="error", engine=engine,
                       run_id=run_id)


def alert_batch_held(settings: Settings, engine: Engine, run_id: str, hold: Any) -> AlertResult:
    """``batch_held``, key the source: the gate's batch threshold held a source's share of the
    batch (a ``checks.gate.SourceHold``: its ``reason`` has the numbers)."""
    details = hold.as_dict() if hasattr(hold, "as_dict") else {"source": hold.source}
    message = (f"gate run {run_id}: {hold.reason}; release with `orderhub quarantine "
               f"release-held --source {hold.source}` once the source is fixed")
    return raise_alert(settings, "batch_held", message, {"run_id": run_id, **details},
                       key=hold.source, engine=engine, run_id=run_id)


def alert_source_unreachable(settings: Settings, engine: Engine, run_id: str, source: str,
                             error: BaseException | str, stream: str | None = None) -> AlertResult:
    """``source_unreachable``: a pull failed (a ``SourceError``: already one redacted line)."""
    text = _first_line(error)
    where = f"{source}/{stream}" if stream else source
    return raise_alert(settings, "source_unreachable", f"{where} could not be read: {text}",
                       {"run_id": run_id, "source": source, "stream": stream, "error": text},
                       key=source, engine=engine, run_id=run_id)


def alert_unmatched_payments(settings: Settings, engine: Engine, run_id: str | None = None,
                             now: datetime | None = None) -> AlertResult | None:
    """``payment_unmatched``: payments nothing could be applied from, received more than
    ``alerts.unmatched_payment_days`` days ago. One POST listing the ones not alerted today."""
    days = _config(settings).unmatched_payment_days
    found = store.unmatched_payments(engine, days, now)
    if not found:
        return None
    totals: dict[str, Decimal] = {}
    for p in found:
        totals[p["currency"]] = totals.get(p["currency"], Decimal("0")) + p["amount"]
    amounts = ", ".join(f"{cur} {amt}" for cur, amt in sorted(totals.items()))
    message = (f"{len(found)} payment(s) unmatched for more than {days} days ({amounts}); "
               "see the payment_reconciliation table")
    rows = [{"payment": f"{p['source']}:{p['external_id']}", "reference": p["reference"],
             "customer": p["customer_code"], "amount": p["amount"], "currency": p["currency"],
             "received_at": p["received_at"], "reason": p["reason"]} for p in found]
    details = {"days": days, "count": len(found), "totals": totals, "payments": rows[:DETAIL_ROWS]}
    return raise_alert(settings, "payment_unmatched", message, details,
                       keys=[f"{p['source']}:{p['external_id']}" for p in found], engine=engine,
                       run_id=run_id, now=now)


def _first_line(error: BaseException | str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else (type(error).__name__ if isinstance(error, BaseException) else "")
