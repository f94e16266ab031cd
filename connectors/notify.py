"""Notification sinks: customer progress notifications (outbox operation ``notification``).

Both are connectors with the push interface only (no streams), registered as systems
``webhook`` and ``smtp``. The doc is what ``warehouse.notifications`` queued::

    {"key", "event", "source", "order_external_id", "order_no", "customer_code",
     "customer_email", "currency", "total", "invoice_no", "invoice_amount"}

**WebhookSink** — ``base_url``: the receiver's URL (``options.path`` is appended when given);
``auth``: optional ``{token}`` (sent as ``Authorization: Bearer``) and/or ``{secret}`` (the body
is signed: ``X-Orderhub-Signature: sha256=<hex HMAC-SHA256 of the raw body>``). One POST of
the doc as JSON per notification with ``Idempotency-Key: <key>``; a 2xx is a confirmed
delivery. Exactly once rests on the key: a resend (HttpClient retries, or ``recover=True``
after a crash between send and mark) carries the same key, and the receiver answers it with its
first answer instead of acting again (sandbox/webhook.py does; Stripe-style receivers do).

**SmtpSink** — ``base_url``: ``smtp://host:port`` (default port 25) or ``smtps://host:port``
(implicit TLS, default 465); ``auth``: optional ``{username, password}``; ``options``:
``from`` (required), ``starttls`` (default false), ``message_id_domain`` (default: the ``from``
domain), ``timeout``. One message per notification, to the order's e-mail, with
``Message-ID: <sha256(key)[:32].orderhub@domain>`` and ``X-Orderhub-Key: <key>``.

SMTP cannot be asked whether a message arrived. A row found ``sending`` after a crash
(``recover=True``), or a send whose ``250`` answer was lost, is sent again with the *same*
Message-ID: at-least-once in that window, and a duplicate is recognisable (mail stores and
clients that collapse on Message-ID show it once; an audit finds it by ``X-Orderhub-Key``).
Skipping such rows instead would lose mail: the drain marks a whole batch ``sending`` before
the first message leaves, and a row retried after a refusal (451) comes back with
``recover=True`` too. Outside that window a row is marked done on the server's 250 and never
sent again.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, ClassVar
from urllib.parse import urlsplit

from connectors.base import Connector, MappingError, PushResult
from connectors.http import Auth, AuthError, BearerAuth, dumps_json

OPERATION = "notification"
EVENT_TITLES = {"accepted": "accepted", "shipped": "shipped", "invoiced": "invoiced"}
WEBHOOK_OPTIONS = frozenset({"path"})
SMTP_OPTIONS = frozenset({"from", "starttls", "message_id_domain", "timeout"})


def _no_roles(name: str, roles: Iterable[str]) -> None:
    roles = list(roles)
    if roles:
        raise ValueError(f"source {name!r}: roles: a notification sink takes no roles (it is "
                         f"named by notifications.sink), got {roles[0]!r}")


def _known_options(name: str, options: Mapping[str, Any] | None, known: frozenset[str]) -> None:
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ValueError(f"source {name!r}: options.{unknown[0]}: unknown option (known: "
                         f"{', '.join(sorted(known))})")


# --- webhook --------------------------------------------------------------------------------------


class WebhookSink(Connector):
    system = "webhook"
    operations: ClassVar[set[str]] = {OPERATION}

    @classmethod
    def check_options(cls, name: str, options: Mapping[str, Any] | None,
                      roles: Iterable[str] = ()) -> None:
        _no_roles(name, roles)
        _known_options(name, options, WEBHOOK_OPTIONS)

    def __init__(self, name: str, cfg: dict) -> None:
        super().__init__(name, cfg)
        self.check_options(name, self.options)
        self._secret = str((cfg.get("auth") or {}).get("secret") or "")
        base = str(cfg["base_url"])
        path = str(self.options.get("path") or "")
        self.url = base.rstrip("/") + "/" + path.lstrip("/") if path else base

    def make_auth(self, auth_cfg: dict) -> Auth | None:
        token = auth_cfg.get("token")
        return BearerAuth(str(token)) if token else None

    def push_notification(self, doc: dict, recover: bool) -> str:
        # recover needs no lookup: the same Idempotency-Key makes the receiver replay its answer
        key = str(doc.get("key") or "")
        if not key:
            raise MappingError("key: missing")
        body = dumps_json(doc).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                   "X-Orderhub-Event": str(doc.get("event") or "")}
        if self._secret:
            digest = hmac.new(self._secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
            headers["X-Orderhub-Signature"] = f"sha256={digest}"
        resp = self.http.post(self.url, data=body, headers=headers)
        data = resp.data if isinstance(resp.data, dict) else {}
        return str(data.get("id") or key)


# --- smtp -----------------------------------------------------------------------------------------


def message_id(key: str, domain: str) -> str:
    """The Message-ID of a notification: derived from its key, so a resend is recognisable."""
    return f"<{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}.orderhub@{domain}>"


def render(doc: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, plain-text body) of one notification."""
    event = str(doc.get("event"))
    order_no = doc.get("order_no") or doc.get("order_external_id")
    subject = f"Order {order_no}: {EVENT_TITLES.get(event, event)}"
    if event == "accepted":
        text = f"We have received your order {order_no} and accepted it."
    elif event == "shipped":
        text = f"Your order {order_no} has shipped."
    elif event == "invoiced":
        amount = doc.get("invoice_amount") or doc.get("total")
        text = (f"Invoice {doc.get('invoice_no')} for your order {order_no} has been issued: "
                f"{amount} {doc.get('currency')}.")
    else:
        text = f"Your order {order_no}: {event}."
    return subject, text + "\n"


class SmtpSink(Connector):
    """One e-mail per notification through one SMTP connection per batch (smtplib)."""

    system = "smtp"
    operations: ClassVar[set[str]] = {OPERATION}
    default_options: ClassVar[dict[str, Any]] = {"starttls": False}

    @classmethod
    def check_options(cls, name: str, options: Mapping[str, Any] | None,
                      roles: Iterable[str] = ()) -> None:
        _no_roles(name, roles)
        options = options or {}
        _known_options(name, options, SMTP_OPTIONS)
        sender = options.get("from")
        if not isinstance(sender, str) or "@" not in sender:
            raise ValueError(f"source {name!r}: options.from: required, the sender address "
                             "(e.g. orders@example.com)")

    def __init__(self, name: str, cfg: dict) -> None:
        # no HttpClient: SMTP is not HTTP (the base __init__ would build one)
        self.name = name
        self.cfg = cfg
        self.options = {**self.default_options, **(cfg.get("options") or {})}
        self.check_options(name, self.options)
        url = urlsplit(str(cfg.get("base_url") or ""))
        if url.scheme not in ("smtp", "smtps") or not url.hostname:
            raise ValueError(f"source {name!r}: base_url: expected smtp://host:port or "
                             "smtps://host:port")
        self.implicit_tls = url.scheme == "smtps"
        self.host = url.hostname
        self.port = url.port or (465 if self.implicit_tls else 25)
        auth = cfg.get("auth") or {}
        self.username = auth.get("username")
        self.password = auth.get("password")
        self.sender = str(self.options["from"])
        self.domain = str(self.options.get("message_id_domain") or self.sender.split("@", 1)[1])
        self.timeout = float(self.options.get("timeout") or cfg.get("timeout") or 30)

    def close(self) -> None:
        """Nothing held between pushes: each batch opens and closes its own connection."""

    def _error(self, message: str) -> str:
        text = f"{self.name}: {message} (smtp://{self.host}:{self.port})"
        if self.password:
            text = text.replace(str(self.password), "***")
        return " ".join(text.split())

    def message(self, doc: Mapping[str, Any]) -> EmailMessage:
        key = str(doc.get("key") or "")
        to = doc.get("customer_email")
        if not key:
            raise MappingError("key: missing")
        if not to:
            raise MappingError("customer_email: missing (an e-mail sink needs a recipient)")
        subject, text = render(doc)
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = str(to)
        msg["Subject"] = subject
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = message_id(key, self.domain)
        msg["X-Orderhub-Key"] = key
        msg["X-Orderhub-Event"] = str(doc.get("event"))
        msg.set_content(text)
        return msg

    def _connect(self) -> smtplib.SMTP:
        if self.implicit_tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            client.ehlo()
            if self.options.get("starttls"):
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if self.username:
                client.login(str(self.username), str(self.password or ""))
        except BaseException:
            _quietly_close(client)
            raise
        return client

    def push(self, operation: str, docs: list[dict], recover: bool = False) -> list[PushResult]:
        # recover changes nothing: no server can be asked, the same Message-ID marks a resend
        if operation not in self.operations:
            raise ValueError(f"smtp cannot push {operation!r} (supports: {OPERATION})")
        results: list[PushResult] = []
        messages: list[tuple[str, EmailMessage]] = []
        for doc in docs:
            key = str(doc.get("key"))
            try:
                messages.append((key, self.message(doc)))
            except MappingError as err:
                results.append(PushResult(key, False, error=f"{self.name}: {err}"))
        if not messages:
            return results
        try:
            client = self._connect()
        except smtplib.SMTPAuthenticationError:
            raise AuthError(self.name, "login refused",
                            url=f"smtp://{self.host}:{self.port}") from None
        except (OSError, smtplib.SMTPException) as err:
            why = self._error(f"cannot connect ({type(err).__name__}: {err})")
            return results + [PushResult(k, False, error=why) for k, _ in messages]
        try:
            for i, (key, msg) in enumerate(messages):
                try:
                    # a refusal raises; otherwise the server answered 250 for the recipient
                    client.send_message(msg)
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError,
                        smtplib.SMTPSenderRefused) as err:
                    results.append(PushResult(key, False, error=self._error(
                        f"{msg['Message-ID']} refused: {type(err).__name__}: {err}")))
                except (OSError, smtplib.SMTPException) as err:
                    # the connection is gone: this one may or may not have arrived (a retry is
                    # recognisable by its Message-ID); the rest were not sent
                    why = self._error(f"connection lost ({type(err).__name__}: {err})")
                    results += [PushResult(k, False, error=why) for k, _ in messages[i:]]
                    break
                else:
                    results.append(PushResult(key, True, remote_id=msg["Message-ID"]))
        finally:
            _quietly_close(client)
        return results


def _quietly_close(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


__all__ = ["SmtpSink", "WebhookSink", "message_id", "render"]
