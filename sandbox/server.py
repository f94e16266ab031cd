"""Fake HTTP servers for the sandbox: a route table app, fault switches, counters, a real server.

A fake is a :class:`FakeApp` subclass that registers routes in ``__init__``::

    class MyFake(FakeApp):
        def __init__(self):
            super().__init__()
            self.route("GET", r"/api/items/(?P<id>\\d+)", self.get_item)

        def get_item(self, req: Request) -> Response:
            return Response(200, {"id": req.path_params["id"]})

and runs behind a :class:`FakeServer` (``ThreadingHTTPServer`` on 127.0.0.1, a free port, a
daemon thread). Every request is recorded in ``app.requests``; ``app.faults.add(...)`` makes the
next N requests fail; ``app.creates`` counts remote creates per (operation, key). Handlers run
under ``app.lock`` (one request at a time touches state), so fakes need no locking of their own.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_DEC_MARK = "\u0000dec:"
_DEC_RE = re.compile(r'"\\u0000dec:([-+0-9.Ee]+)"')


def json_dumps(obj: Any) -> str:
    """JSON with Decimal written as an exact number (like a real API), never via float."""
    text = json.dumps(obj, ensure_ascii=False, default=_json_default)
    return _DEC_RE.sub(lambda m: m.group(1), text)


def _json_default(o: Any) -> str:
    # json.dumps asks only for what it cannot write itself: no Python walk over every value
    return _DEC_MARK + format(o, "f") if isinstance(o, Decimal) else str(o)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]             # first value of each parameter
    headers: dict[str, str]           # lower-case names
    json: Any = None                  # parsed body (Decimals) when it was JSON
    body: bytes = b""
    path_params: dict[str, str] = field(default_factory=dict)
    base_url: str = ""                # http://127.0.0.1:port, for building Link URLs

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    json: Any = None
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.body is not None:
            data = self.body.encode("utf-8") if isinstance(self.body, str) else self.body
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        elif self.json is not None:
            data = json_dumps(self.json).encode("utf-8")
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        else:
            data = b""
        return data, headers


Handler = Callable[[Request], Response]


@dataclass
class _Fault:
    status: int
    times: int
    retry_after: float | str | None
    body: Any
    headers: dict[str, str]
    path: re.Pattern[str] | None


class Faults:
    """Switchable faults: the next ``times`` matching requests answer ``status``."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._queue: list[_Fault] = []

    def add(
        self,
        status: int,
        times: int = 1,
        retry_after: float | str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        path: str | None = None,
    ) -> None:
        """Queue a fault. ``body``: dict/list -> JSON, str/bytes -> raw; ``path``: regex filter."""
        with self._lock:
            self._queue.append(
                _Fault(status, times, retry_after, body, dict(headers or {}),
                       re.compile(path) if path else None)
            )

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(f.times for f in self._queue)

    def take(self, req: Request) -> Response | None:
        with self._lock:
            for fault in self._queue:
                if fault.path is not None and not fault.path.search(req.path):
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self._queue.remove(fault)
                headers = dict(fault.headers)
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                if isinstance(fault.body, dict | list):
                    return Response(fault.status, json=fault.body, headers=headers)
                body = fault.body if fault.body is not None else f"fault {fault.status}"
                return Response(fault.status, body=body, headers=headers)
        return None


class FakeApp:
    """Route table + recorded requests + faults + create counters. Thread-safe via ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.requests: list[Request] = []
        self.creates: collections.Counter[tuple[str, str]] = collections.Counter()
        self.faults = Faults(self.lock)

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` and a full-match path regex (named groups ->
        ``req.path_params``)."""
        self.routes.append((method.upper(), re.compile(pattern), handler))

    def before_request(self, req: Request) -> Response | None:
        """Hook run after faults, before routing (auth checks, rate limits)."""
        return None

    def after_request(self, req: Request, resp: Response) -> Response:
        """Hook run on every non-fault answer (e.g. rate-limit headers)."""
        return resp

    def handle(self, req: Request) -> Response:
        with self.lock:
            self.requests.append(req)
            fault = self.faults.take(req)
            if fault is not None:
                return fault
            return self.after_request(req, self._dispatch(req))

    def _dispatch(self, req: Request) -> Response:
        with self.lock:
            early = self.before_request(req)
            if early is not None:
                return early
            allowed = False
            for method, pattern, handler in self.routes:
                m = pattern.fullmatch(req.path)
                if not m:
                    continue
                allowed = True
                if method == req.method:
                    req.path_params = m.groupdict()
                    return handler(req)
            if allowed:
                return Response(405, {"errors": "Method Not Allowed"})
            return Response(404, {"errors": "Not Found"})

    def reset_log(self) -> None:
        """Forget recorded requests (keeps data, creates and faults)."""
        with self.lock:
            self.requests.clear()


class FakeServer:
    """Serve a FakeApp on 127.0.0.1:<free port> in a daemon thread. Use as a context manager."""

    def __init__(self, app: FakeApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("FakeServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self._host, self._port), _make_handler(self.app))
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"fake-{type(self.app).__name__}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(app: FakeApp) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real APIs (we always send Content-Length)
        disable_nagle_algorithm = True  # else headers+body in two writes cost a 40 ms delayed ACK

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parsed: Any = None
            if raw:
                try:
                    parsed = json.loads(raw.decode("utf-8"), parse_float=Decimal)
                except (ValueError, UnicodeDecodeError):
                    parsed = None
            host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
            req = Request(
                method=self.command,
                path=split.path,
                query={k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
                headers={k.lower(): v for k, v in self.headers.items()},
                json=parsed,
                body=raw,
                base_url=f"http://{host}",
            )
            try:
                resp = app.handle(req)
            except Exception as exc:  # a fake bug must look like a 500, not hang the client
                resp = Response(500, {"errors": f"sandbox error: {type(exc).__name__}: {exc}"})
            data, headers = resp.encode()
            self.send_response(resp.status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return _Handler
