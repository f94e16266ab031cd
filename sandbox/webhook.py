"""Fake notification sinks: a webhook receiver (HTTP) and an SMTP server, both on 127.0.0.1.

**WebhookFake** (a FakeApp, served by FakeServer): ``POST /notify`` takes a JSON notification
with an ``Idempotency-Key`` header (400 without one; 401 without the bearer token when one is
set). The first request of a key is delivered — stored in ``deliveries``, counted in
``creates[("notification", key)]`` — and answered ``201 {"id": "ntf_000001", ...}``. A repeated
key is not delivered again: the first answer is replayed with ``Idempotent-Replayed: true``
(a different body under a used key is a 422, as Stripe does). ``received`` counts every request
per key, replays included.

**SmtpFake** (``serves_http = False``: ``start()`` returns ``smtp://127.0.0.1:<port>``): a small
SMTP server (stdlib socketserver) speaking EHLO/HELO, optional AUTH PLAIN, MAIL, RCPT, DATA
(dot-stuffing undone), RSET, NOOP, QUIT. Every accepted message is kept in ``messages`` (parsed,
with envelope) and counted in ``creates[("notification", <X-Orderhub-Key>)]`` and
``by_message_id``: a resend shows up as a count of 2 under one Message-ID. Faults:
``fail_next(code, times)`` answers DATA with ``code`` (e.g. 451) without keeping the message;
``drop_after_data(times)`` keeps the message and then closes the connection without the 250 —
the lost answer that makes SMTP at-least-once.
"""

from __future__ import annotations

import base64
import collections
import socketserver
import threading
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from sandbox.server import FakeApp, Request, Response

TOKEN = "webhook-sandbox-token"


class WebhookFake(FakeApp):
    base_path = "/notify"  # sources() gives base_url = server URL + this

    def __init__(self, dataset: Any = None, fast: bool = True, token: str | None = None) -> None:
        super().__init__()
        self.token = token
        self.deliveries: dict[str, Any] = {}  # key -> the body delivered
        self.received: collections.Counter[str] = collections.Counter()
        self._answers: dict[str, Response] = {}
        self.route("POST", r"/notify/?", self.notify)

    def credentials(self) -> dict[str, str]:
        return {"token": self.token} if self.token else {}

    def options(self) -> dict[str, Any]:
        return {}

    def notify(self, req: Request) -> Response:
        if self.token and req.header("authorization") != f"Bearer {self.token}":
            return Response(401, {"error": "invalid token"})
        key = req.header("idempotency-key")
        if not key:
            return Response(400, {"error": "Idempotency-Key header is required"})
        if not isinstance(req.json, dict):
            return Response(400, {"error": "expected a JSON object"})
        self.received[key] += 1
        first = self._answers.get(key)
        if first is not None:
            if req.json != self.deliveries[key]:
                return Response(422, {"error": f"Idempotency-Key {key} was used with another "
                                               "body"})
            return Response(first.status, first.json,
                            headers={**first.headers, "Idempotent-Replayed": "true"})
        answer = Response(201, {"id": f"ntf_{len(self._answers) + 1:06d}", "key": key,
                                "status": "delivered"})
        self.deliveries[key] = req.json
        self.creates[("notification", key)] += 1
        self._answers[key] = answer
        return answer


# --- SMTP -----------------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage


class SmtpFake:
    """An SMTP server for tests and the demo. Thread-safe; see the module docstring."""

    serves_http = False

    def __init__(self, dataset: Any = None, fast: bool = True, username: str | None = None,
                 password: str | None = None) -> None:
        self.username, self.password = username, password
        self.lock = threading.RLock()
        self.messages: list[Received] = []
        self.creates: collections.Counter[tuple[str, str]] = collections.Counter()
        self.by_message_id: collections.Counter[str] = collections.Counter()
        self.sessions = 0
        self._fail: list[list[int]] = []  # [code, times]
        self._drop = 0
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the sandbox's LocalFake contract ----------------------------------------------------
    def start(self) -> str:
        if self._server is None:
            server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _handler(self))
            server.daemon_threads = True
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name="fake-smtp", daemon=True)
            self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("SmtpFake is not started")
        host, port = self._server.server_address[:2]
        return f"smtp://{host}:{port}"

    def credentials(self) -> dict[str, str]:
        if self.username:
            return {"username": self.username, "password": self.password or ""}
        return {}

    def options(self) -> dict[str, Any]:
        return {"from": "orders@orderhub.test"}

    def __enter__(self) -> SmtpFake:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------
    def fail_next(self, code: int = 451, times: int = 1) -> None:
        """The next ``times`` DATA commands are refused with ``code``; nothing is kept."""
        with self.lock:
            self._fail.append([code, times])

    def drop_after_data(self, times: int = 1) -> None:
        """The next ``times`` messages are kept, then the connection closes before the 250."""
        with self.lock:
            self._drop += times

    # -- what the handler calls --------------------------------------------------------------
    def _take_fault(self) -> int | None:
        with self.lock:
            if not self._fail:
                return None
            code = self._fail[0][0]
            self._fail[0][1] -= 1
            if self._fail[0][1] <= 0:
                self._fail.pop(0)
            return code

    def _keep(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> bool:
        """Store one message; True when the answer must be dropped."""
        msg = message_from_bytes(data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.messages.append(Received(mail_from, rcpt_tos, data, msg))
            self.creates[("notification", str(msg.get("X-Orderhub-Key", "")))] += 1
            self.by_message_id[str(msg.get("Message-ID", ""))] += 1
            if self._drop:
                self._drop -= 1
                return True
        return False


def _handler(fake: SmtpFake) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = 10

        def reply(self, line: str) -> None:
            self.wfile.write(line.encode("ascii") + b"\r\n")
            self.wfile.flush()

        def handle(self) -> None:
            with fake.lock:
                fake.sessions += 1
            self.reply("220 orderhub-sandbox ESMTP")
            mail_from: str | None = None
            rcpts: list[str] = []
            authed = fake.username is None
            while True:
                raw = self.rfile.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    extra = ["250-AUTH PLAIN"] if fake.username else []
                    for ext in ["250-orderhub-sandbox", *extra, "250-8BITMIME"]:
                        self.reply(ext)
                    self.reply("250 SMTPUTF8")
                elif verb == "HELO":
                    self.reply("250 orderhub-sandbox")
                elif verb == "AUTH":
                    mech, _, blob = arg.partition(" ")
                    parts = base64.b64decode(blob or "").split(b"\0") if mech.upper() == \
                        "PLAIN" else []
                    ok = len(parts) == 3 and parts[1].decode() == fake.username and \
                        parts[2].decode() == (fake.password or "")
                    authed = authed or ok
                    self.reply("235 2.7.0 authenticated" if ok else "535 5.7.8 bad credentials")
                elif verb == "MAIL":
                    if not authed:
                        self.reply("530 5.7.0 authentication required")
                        continue
                    mail_from, rcpts = _address(arg), []
                    self.reply("250 OK")
                elif verb == "RCPT":
                    if mail_from is None:
                        self.reply("503 5.5.1 MAIL first")
                        continue
                    rcpts.append(_address(arg))
                    self.reply("250 OK")
                elif verb == "DATA":
                    if mail_from is None or not rcpts:
                        self.reply("503 5.5.1 RCPT first")
                        continue
                    self.reply("354 end with <CRLF>.<CRLF>")
                    data = self._read_data()
                    code = fake._take_fault()
                    if code is not None:
                        self.reply(f"{code} 4.3.0 try again later")
                    elif fake._keep(mail_from, rcpts, data):
                        return  # dropped: the client never hears the 250
                    else:
                        self.reply("250 2.0.0 OK queued")
                    mail_from, rcpts = None, []
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    self.reply("250 OK")
                elif verb == "NOOP":
                    self.reply("250 OK")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("502 5.5.2 command not implemented")

        def _read_data(self) -> bytes:
            lines: list[bytes] = []
            while True:
                raw = self.rfile.readline()
                if not raw or raw in (b".\r\n", b".\n"):
                    break
                lines.append(raw[1:] if raw.startswith(b"..") else raw)  # undo dot-stuffing
            return b"".join(lines)

    return Handler


def _address(arg: str) -> str:
    """``FROM:<a@b> SIZE=1`` -> ``a@b``."""
    _, _, rest = arg.partition(":")
    return rest.strip().split(" ")[0].strip("<>")
