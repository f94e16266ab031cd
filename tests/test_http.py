"""HttpClient against a FakeServer over real HTTP: retries, Retry-After, errors, redaction, limits."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from email.utils import formatdate
from typing import Any

import pytest

from connectors.http import (
    ApiError,
    AuthError,
    BasicAuth,
    BearerAuth,
    HeaderAuth,
    HttpClient,
    HttpResponse,
    QueryAuth,
    RateLimitError,
    SessionLogin,
    SourceError,
    TransientError,
    parse_retry_after,
    reset_rate_limits,
)
from sandbox.server import FakeApp, FakeServer, Request, Response

SECRET = "s3cr3t-VALUE-42"
FAST = {"max_retries": 3, "backoff_base": 0.001, "backoff_max": 0.005}


class EchoApp(FakeApp):
    """Tiny API: /items returns Decimals, /echo-error echoes the query back in a 400,
    /login sets a session cookie that /private requires, /body-error errs inside a 200."""

    def __init__(self) -> None:
        super().__init__()
        self.logins = 0
        self.valid_session = "sess-1"
        self.route("GET", r"/items", lambda r: Response(200, {"items": [{"price": Decimal("12.30")}]}))
        self.route("POST", r"/items", lambda r: Response(201, {"got": r.json}))
        self.route("GET", r"/echo-error", self.echo_error)
        self.route("POST", r"/login", self.login)
        self.route("GET", r"/private", self.private)
        self.route("GET", r"/body-error", lambda r: Response(200, {"errorCode": 5, "msg": "bad FormId"}))

    def echo_error(self, req: Request) -> Response:
        return Response(400, {"errors": f"invalid request {req.query} {req.headers.get('authorization')}"})

    def login(self, req: Request) -> Response:
        self.logins += 1
        self.valid_session = f"sess-{self.logins}"
        return Response(200, {"ok": True},
                        headers={"Set-Cookie": f"kdservice-sessionid={self.valid_session}; Path=/"})

    def private(self, req: Request) -> Response:
        if f"kdservice-sessionid={self.valid_session}" not in (req.header("cookie") or ""):
            return Response(401, {"errors": "not logged in"})
        return Response(200, {"rows": [1, 2]})


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield
    reset_rate_limits()


@pytest.fixture
def app() -> EchoApp:
    return EchoApp()


@pytest.fixture
def server(app: EchoApp) -> Iterator[FakeServer]:
    with FakeServer(app) as s:
        yield s


def client(server: FakeServer, **kw: Any) -> HttpClient:
    opts = {**FAST, **kw}
    return HttpClient("erp", server.url, **opts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------- basics


def test_json_is_parsed_with_decimal(server: FakeServer) -> None:
    resp = client(server).get("/items")
    assert resp.status == 200
    price = resp.data["items"][0]["price"]
    assert isinstance(price, Decimal) and price == Decimal("12.30")


def test_json_body_sends_decimals_exactly(server: FakeServer, app: EchoApp) -> None:
    resp = client(server).post("/items", json={"amount": Decimal("0.10"), "n": 3})
    assert resp.status == 201
    assert app.requests[-1].body == b'{"amount":0.10,"n":3}'  # exact, compact
    assert resp.data["got"]["amount"] == Decimal("0.10")


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


# ---------------------------------------------------------------------------------- retries


def test_429_honours_retry_after_seconds(server: FakeServer, app: EchoApp) -> None:
    app.faults.add(429, retry_after="0.3", body={"errors": "slow down"})
    started = time.monotonic()
    resp = client(server).get("/items")
    assert resp.status == 200
    assert time.monotonic() - started >= 0.3  # tiny backoff settings: only Retry-After explains it
    assert len(app.requests) == 2


def test_429_honours_retry_after_http_date(server: FakeServer, app: EchoApp) -> None:
    app.faults.add(429, retry_after=formatdate(time.time() + 2, usegmt=True))
    started = time.monotonic()
    client(server).get("/items")
    assert time.monotonic() - started >= 0.9  # an HTTP date ~2 s ahead (whole seconds, so at least 1 s)


def test_429_exhausted_raises_rate_limit_error(server: FakeServer, app: EchoApp) -> None:
    app.faults.add(429, times=10, retry_after="0")
    with pytest.raises(RateLimitError) as exc:
        client(server, max_retries=2).get("/items")
    assert len(app.requests) == 3
    assert "erp" in str(exc.value) and "/items" in str(exc.value)


def test_5xx_then_success(server: FakeServer, app: EchoApp) -> None:
    app.faults.add(503, times=2)
    app.faults.add(500, times=1)
    resp = client(server).get("/items")
    assert resp.status == 200
    assert len(app.requests) == 4


def test_per_call_retries_override(server: FakeServer, app: EchoApp) -> None:
    app.faults.add(503, times=5)
    with pytest.raises(TransientError):
        client(server).post("/items", json={"a": 1}, retries=0)
    assert len(app.requests) == 1


def test_5xx_exhausted_raises_transient_error(server: FakeServer, app: EchoApp) -> None:
    app.faults.add(502, times=10, body={"errors": "bad gateway"})
    with pytest.raises(TransientError) as exc:
        client(server, max_retries=1).get("/items")
    assert "HTTP 502" in str(exc.value) and "bad gateway" in str(exc.value)
    assert len(app.requests) == 2


def test_4xx_is_not_retried_and_carries_the_api_message(server: FakeServer, app: EchoApp) -> None:
    app.faults.add(422, body={"errors": ["Fulfillment order 1 is closed."]})
    with pytest.raises(ApiError) as exc:
        client(server).get("/items")
    assert exc.value.status == 422
    assert "Fulfillment order 1 is closed." in str(exc.value)
    assert len(app.requests) == 1


def test_401_raises_auth_error(server: FakeServer, app: EchoApp) -> None:
    app.faults.add(401, body={"errors": "Invalid API key"})
    with pytest.raises(AuthError) as exc:
        client(server).get("/items")
    assert "credentials refused" in str(exc.value)


def test_full_jitter_backoff_stays_within_cap(server: FakeServer) -> None:
    c = HttpClient("x", server.url, backoff_base=1.0, backoff_max=4.0)
    for attempt in range(8):
        for _ in range(20):
            assert 0 <= c._backoff(attempt, None) <= min(4.0, 2.0**attempt)
    assert c._backoff(3, 7.0) == 7.0  # Retry-After wins over the computed backoff
    assert HttpClient("x", server.url, retry_after_max=5)._backoff(0, 600) == 5


# --------------------------------------------------------------------------- connection errors


def test_connection_refused_names_source_and_url_without_secret() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    c = HttpClient("crm", url, auth=QueryAuth({"api_key": SECRET}), **FAST)
    with pytest.raises(SourceError) as exc:
        c.get("/api/v5/list", params={"limit": 5})
    text = str(exc.value)
    assert text.startswith("crm: ")
    assert "connection refused" in text
    assert f"{url}/api/v5/list" in text
    assert SECRET not in text and "\n" not in text
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


# --------------------------------------------------------------------------------- redaction


def test_secrets_are_redacted_from_error_strings(server: FakeServer, app: EchoApp) -> None:
    c = HttpClient("crm", server.url, auth=QueryAuth({"app_key": SECRET}),
                   secrets=["other-secret-99"], **FAST)
    with pytest.raises(ApiError) as exc:
        c.get("/echo-error", params={"q": "other-secret-99", "signature": "abcdef", "page": "2"})
    text = str(exc.value)
    assert SECRET not in text and "other-secret-99" not in text and "abcdef" not in text
    assert "app_key=***" in text and "signature=***" in text and "page=2" in text
    # The server really got the secret: it is the message that was scrubbed.
    assert app.requests[-1].query["app_key"] == SECRET


def test_bearer_token_redacted_from_errors_and_logs(
    server: FakeServer, app: EchoApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="orderhub.http")
    app.faults.add(503, times=1, body={"errors": f"upstream said Bearer {SECRET}"})
    c = HttpClient("crm", server.url, auth=BearerAuth(SECRET), **FAST)
    c.get("/items")
    with pytest.raises(ApiError) as exc:
        c.get("/echo-error")
    assert app.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(exc.value)
    assert SECRET not in caplog.text
    assert "retry 1/3" in caplog.text  # retries are logged (WARNING), requests at DEBUG
    assert "GET" in caplog.text


def test_header_and_basic_auth_are_sent(server: FakeServer, app: EchoApp) -> None:
    HttpClient("s", server.url, auth=HeaderAuth("X-Shopify-Access-Token", SECRET)).get("/items")
    assert app.requests[-1].headers["x-shopify-access-token"] == SECRET
    c = HttpClient("s", server.url, auth=BasicAuth("user", SECRET), **FAST)
    c.get("/items")
    assert app.requests[-1].headers["authorization"].startswith("Basic ")
    with pytest.raises(ApiError) as exc:
        c.get("/echo-error")  # the server echoes the Authorization header back
    assert app.requests[-1].headers["authorization"].split()[1] not in str(exc.value)


# ------------------------------------------------------------------------------ session login


def test_session_login_cookie_persists_and_relogs_on_401(server: FakeServer, app: EchoApp) -> None:
    def login(http: HttpClient) -> None:
        http.post("/login", json={"acctID": "1", "appSecret": SECRET}, authenticate=False)

    c = HttpClient("erp", server.url, auth=SessionLogin(login, secrets=[SECRET]), **FAST)
    assert c.get("/private").data == {"rows": [1, 2]}
    assert c.get("/private").data == {"rows": [1, 2]}
    assert app.logins == 1  # cookie reused
    app.valid_session = "expired-elsewhere"  # server-side session expiry
    assert c.get("/private").data == {"rows": [1, 2]}
    assert app.logins == 2


# -------------------------------------------------------------------------- errors in HTTP 200


def test_body_hook_turns_200_error_into_api_error(server: FakeServer) -> None:
    def check(resp: HttpResponse) -> None:
        if isinstance(resp.data, dict) and resp.data.get("errorCode"):
            raise resp.error(f"errorCode {resp.data['errorCode']}: {resp.data.get('msg')}")

    with pytest.raises(ApiError) as exc:
        client(server, check_body=check).get("/body-error")
    assert str(exc.value).startswith("erp: errorCode 5: bad FormId (GET http://")


def test_body_hook_transient_error_is_retried(server: FakeServer, app: EchoApp) -> None:
    calls = {"n": 0}

    def check(resp: HttpResponse) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise resp.error("quota busy", TransientError)

    assert client(server, check_body=check).get("/items").status == 200
    assert len(app.requests) == 2


# ---------------------------------------------------------------------------------- rate limit


def test_rate_limiter_spaces_requests(server: FakeServer) -> None:
    c = client(server, rate_limit=20.0)
    started = time.monotonic()
    for _ in range(6):
        c.get("/items")
    assert time.monotonic() - started >= 5 / 20 - 0.02  # first is free, then 50 ms apart


def test_rate_limiter_is_shared_per_host(server: FakeServer) -> None:
    a, b = client(server, rate_limit=20.0), client(server, rate_limit=20.0)
    started = time.monotonic()
    for _ in range(3):
        a.get("/items")
        b.get("/items")
    assert time.monotonic() - started >= 5 / 20 - 0.02
    assert a.bucket is b.bucket
