"""The one place orderhub speaks HTTP.

Everything a connector needs from the wire lives here, once: a ``requests.Session``, auth hooks,
timeouts, retries with exponential backoff + full jitter (honouring ``Retry-After``), a per-host
token-bucket rate limiter shared by every client in the process, JSON parsed with
``parse_float=Decimal``, and secret redaction in every error message and log line.

This is the only module that imports ``requests``; connectors use :class:`HttpClient`.

Errors (all ``str()`` on one line, naming the source and the redacted URL, never a secret)::

    SourceError
      +-- AuthError          401/403, or a body hook saying "token expired"/"not logged in"
      +-- ApiError           the API's own error shape (any 4xx, or an error inside a 200 body)
      +-- RateLimitError     429 still answered after max_retries
      +-- TransientError     5xx / connection failure / timeout still failing after max_retries
      +-- PaginationError    a paginator saw a token twice (would loop forever)
      +-- EmptyResultError   an empty answer where data is expected (e.g. a missing permission)
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit

import orjson
import requests
from requests.auth import _basic_auth_str

log = logging.getLogger("orderhub.http")

REDACTED = "***"

# Query parameter / header names whose values are never shown. Matched as substrings, lower-case,
# so "access_token", "app_key", "X-Shopify-Access-Token", "kdservice-sessionid" are all covered.
SENSITIVE_NAMES = (
    "token", "key", "secret", "password", "passwd", "pwd", "signature", "sign",
    "authorization", "auth", "cookie", "session", "credential",
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


# --------------------------------------------------------------------------------------- errors


class SourceError(Exception):
    """A source could not be read or written. ``str()`` is one line: source, problem, URL."""

    retry_after: float | None = None  # seconds the server asked us to wait (429/503)

    def __init__(
        self,
        source: str,
        message: str,
        *,
        url: str | None = None,
        method: str | None = None,
        status: int | None = None,
    ) -> None:
        self.source = source
        self.message = message
        self.url = url
        self.method = method
        self.status = status
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.url:
            where = f" ({self.method} {self.url})" if self.method else f" ({self.url})"
        text = f"{self.source}: {self.message}{where}"
        return " ".join(text.split())  # one line, always

    def redacted(self, redact: Callable[[str], str]) -> SourceError:
        """Scrub message and URL in place (used on errors raised by connector hooks)."""
        self.message = redact(self.message)
        if self.url:
            self.url = redact(self.url)
        self.args = (str(self),)
        return self


class AuthError(SourceError):
    """Credentials were refused (401/403 or the API's own 'not logged in')."""


class ApiError(SourceError):
    """The API answered with its own error shape (4xx, or an error inside an HTTP 200 body)."""


class RateLimitError(SourceError):
    """Still rate-limited (429) after the configured retries."""


class TransientError(SourceError):
    """5xx, timeout or connection failure still happening after the configured retries."""


class PaginationError(SourceError):
    """A paginator was handed a token it had already seen: the API would loop forever."""


class EmptyResultError(SourceError):
    """An empty answer where data is expected (e.g. Kingdee's missing query permission)."""


# ------------------------------------------------------------------------------------ redaction


class Redactor:
    """Replaces secret values and sensitive query parameters in any text."""

    _QUERY_RE = re.compile(r"((?:^|(?<=[?&;\s]))([^=&#\s?;]+)=)([^&#\s]*)")
    # "name": "value" / 'name': 'value' (JSON or a dict repr echoed back in an API message)
    _PAIR_RE = re.compile(r"""((["'])([^"']+)\2\s*:\s*(["']))([^"']*)(\4)""")
    _USERINFO_RE = re.compile(r"(://)[^/@\s:]+:[^/@\s]+@")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for s in secrets:
            # Short values ("1", "") would shred unrelated text; real secrets are longer.
            if isinstance(s, str) and len(s) >= 4:
                self._secrets.update({s, quote(s, safe=""), quote_plus(s)})

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, REDACTED)
        text = self._USERINFO_RE.sub(r"\1" + REDACTED + "@", text)

        def _param(m: re.Match[str]) -> str:
            return m.group(1) + REDACTED if is_sensitive(m.group(2)) else m.group(0)

        def _pair(m: re.Match[str]) -> str:
            return m.group(1) + REDACTED + m.group(6) if is_sensitive(m.group(3)) else m.group(0)

        text = self._PAIR_RE.sub(_pair, text)
        return self._QUERY_RE.sub(_param, text)

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {k: (REDACTED if is_sensitive(k) else self(str(v))) for k, v in headers.items()}


def is_sensitive(name: str) -> bool:
    n = name.lower()
    return any(word in n for word in SENSITIVE_NAMES)


# ----------------------------------------------------------------------------------------- auth


class Auth:
    """Auth hook. Subclasses add headers/params, and may log in lazily (see SessionLogin)."""

    def secrets(self) -> list[str]:
        """Values to redact everywhere."""
        return []

    def prepare(self, client: HttpClient) -> None:
        """Called before every request (outside the retry loop); log in here if needed."""

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        """Add credentials to one outgoing request."""

    def on_auth_failure(self, client: HttpClient) -> bool:
        """Called once on AuthError; return True to retry the request once (e.g. re-login)."""
        return False


class BearerAuth(Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def secrets(self) -> list[str]:
        return [self.token]

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers["Authorization"] = f"Bearer {self.token}"


class HeaderAuth(Auth):
    """A fixed header, e.g. ``HeaderAuth("X-Shopify-Access-Token", token)``."""

    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value

    def secrets(self) -> list[str]:
        return [self.value]

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers[self.name] = self.value


class QueryAuth(Auth):
    """Credentials as query parameters (U8-style ``app_key=...&token=...``)."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self.params = dict(params)

    def secrets(self) -> list[str]:
        return [str(v) for v in self.params.values()]

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        params.update(self.params)


class BasicAuth(Auth):
    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password

    def secrets(self) -> list[str]:
        value = _basic_auth_str(self.username, self.password)
        return [self.password, value, value.split(" ", 1)[1]]

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers["Authorization"] = _basic_auth_str(self.username, self.password)


class SessionLogin(Auth):
    """Log in once with ``login(client)``; the session's cookies then carry the login.

    ``login`` calls ``client.request(..., authenticate=False)`` (no recursion) and may return
    extra headers to send from then on (e.g. a token it fetched). On a 401/403 or an AuthError
    from the body hook the client calls :meth:`on_auth_failure`, which forgets the login and
    retries the request once — that covers expired sessions (Kingdee) and tokens (Fxiaoke 20016).
    """

    def __init__(
        self,
        login: Callable[[HttpClient], Mapping[str, str] | None],
        secrets: Iterable[str] = (),
    ) -> None:
        self._login = login
        self._secrets = [s for s in secrets if s]
        self._headers: dict[str, str] = {}
        self._logged_in = False
        self._lock = threading.Lock()

    def secrets(self) -> list[str]:
        return list(self._secrets) + list(self._headers.values())

    def prepare(self, client: HttpClient) -> None:
        with self._lock:
            if not self._logged_in:
                self._headers = dict(self._login(client) or {})
                client.redact.add(self._headers.values())
                self._logged_in = True

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers.update(self._headers)

    def on_auth_failure(self, client: HttpClient) -> bool:
        with self._lock:
            self._logged_in = False
        client.clear_cookies()
        return True


# ----------------------------------------------------------------------------------- rate limit


class TokenBucket:
    """requests/s with a small burst. ``acquire`` reserves a slot, then sleeps outside the lock."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate_limit must be > 0 requests/s")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait > 0:
            time.sleep(wait)
        return wait


_BUCKETS: dict[str, TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def host_bucket(host: str, rate: float, burst: float = 1.0) -> TokenBucket:
    """The process-wide bucket of a host, shared by its clients (the slower rate wins)."""
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get(host)
        if bucket is None:
            bucket = _BUCKETS[host] = TokenBucket(rate, burst)
        elif rate < bucket.rate:
            bucket.rate = rate
        return bucket


def reset_rate_limits() -> None:
    """Forget every host bucket (tests)."""
    with _BUCKETS_LOCK:
        _BUCKETS.clear()


# ------------------------------------------------------------------------------------- response


@dataclass
class HttpResponse:
    """What a connector sees of an answer: status, headers, parsed JSON (Decimals), text."""

    source: str
    method: str
    url: str                # redacted
    status: int
    headers: Mapping[str, str]   # case-insensitive
    data: Any               # parsed JSON (parse_float=Decimal) or None
    text: str = field(repr=False, default="")

    def error(self, message: str, cls: type[SourceError] = ApiError) -> SourceError:
        """Build an error naming this response's source and URL (for body hooks)."""
        return cls(self.source, message, url=self.url, method=self.method, status=self.status)


def parse_json(text: str) -> Any:
    """JSON with every non-integer number as Decimal: no float ever touches money."""
    return json.loads(text, parse_float=Decimal)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (``"2"``, ``"2.0"``) or an HTTP date; None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def api_message(data: Any, text: str, limit: int = 300) -> str:
    """A short one-line rendering of an API's error body (Shopify {"errors": ...} and friends)."""
    if isinstance(data, dict):
        for k in ("errors", "error", "message", "msg", "Message", "errmsg", "errorMessage"):
            if k in data and data[k]:
                data = data[k]
                break
    if data is None:
        msg = text
    elif isinstance(data, str):
        msg = data
    else:
        msg = json.dumps(data, default=str, ensure_ascii=False)
    msg = " ".join((msg or "").split())
    return msg[:limit] + ("..." if len(msg) > limit else "")


# --------------------------------------------------------------------------------------- client


BodyCheck = Callable[[HttpResponse], None]


class HttpClient:
    """A session for one source. ``request`` returns an :class:`HttpResponse` or raises SourceError.

    - ``source``: the configured source name, used in every message.
    - ``auth``: an :class:`Auth` hook; ``secrets``: extra values to redact.
    - ``rate_limit``: requests/s for this host (shared by every client of the host), None = off.
    - ``max_retries``/``backoff_base``/``backoff_max``: retry 429, 5xx, timeouts and connection
      errors ``max_retries`` times, sleeping ``uniform(0, min(backoff_max, base * 2**n))`` (full
      jitter), or ``Retry-After`` when the server sends one (capped at ``retry_after_max``).
    - ``check_body``: called on every 2xx answer; raise ``resp.error("...")`` for errors an API
      reports inside HTTP 200 (raise AuthError to trigger a re-login, TransientError/
      RateLimitError to be retried like a 5xx/429).
    """

    def __init__(
        self,
        source: str,
        base_url: str,
        *,
        auth: Auth | None = None,
        secrets: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        rate_limit: float | None = None,
        rate_burst: float = 1.0,
        check_body: BodyCheck | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.base_url = base_url.rstrip("/") + "/"
        self.auth = auth
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.check_body = check_body
        self._sleep = sleep
        self.redact = Redactor(secrets)
        if auth is not None:
            self.redact.add(auth.secrets())
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": "orderhub/0.1"})
        if headers:
            self.session.headers.update(headers)
        host = urlsplit(self.base_url).netloc
        self.bucket = host_bucket(host, rate_limit, rate_burst) if rate_limit else None

    # -- public -------------------------------------------------------------------------------

    def get(self, path: str, **kw: Any) -> HttpResponse:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> HttpResponse:
        return self.request("POST", path, **kw)

    def url_for(self, path: str) -> str:
        """Absolute URL: ``path`` relative to base_url, or already absolute (a Link header URL)."""
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.base_url, path.lstrip("/"))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        check_body: BodyCheck | None = None,
        retries: int | None = None,
    ) -> HttpResponse:
        """One logical call: auth, rate limit, retries, error mapping. Raises SourceError.

        ``retries`` overrides ``max_retries`` for this call: pass 0 for a create the target
        cannot deduplicate, and recover by lookup instead of blindly resending.
        """
        method = method.upper()
        url = self.url_for(path)
        check = check_body or self.check_body
        reauthed = False
        while True:
            if authenticate and self.auth is not None:
                self.auth.prepare(self)
            try:
                resp = self._send_with_retries(
                    method, url, params, json, data, headers, authenticate, check,
                    self.max_retries if retries is None else retries,
                )
            except AuthError:
                if authenticate and self.auth is not None and not reauthed:
                    reauthed = True
                    if self.auth.on_auth_failure(self):
                        log.warning("%s: auth refused; logging in again", self.source)
                        continue
                raise
            return resp

    def clear_cookies(self) -> None:
        self.session.cookies.clear()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _send_with_retries(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        json_body: Any,
        data: Any,
        extra_headers: Mapping[str, str] | None,
        authenticate: bool,
        check: BodyCheck | None,
        max_retries: int,
    ) -> HttpResponse:
        attempt = 0
        while True:
            req_headers: dict[str, str] = dict(extra_headers or {})
            req_params: dict[str, Any] = dict(params or {})
            if authenticate and self.auth is not None:
                self.auth.apply(req_headers, req_params)
            shown = self._shown_url(url, req_params)
            try:
                resp = self._send_once(method, url, req_params, json_body, data, req_headers, check)
            except (RateLimitError, TransientError) as err:
                err.redacted(self.redact)
                if err.url is None:
                    err.url, err.method = shown, method
                    err.args = (str(err),)
                delay = err.retry_after
                if attempt >= max_retries:
                    if attempt:
                        err.message += f" (gave up after {attempt + 1} attempts)"
                        err.args = (str(err),)
                    raise err from None
                wait = self._backoff(attempt, delay)
                attempt += 1
                log.warning(
                    "%s: %s; retry %d/%d in %.2fs",
                    self.source, err.message, attempt, max_retries, wait,
                )
                self._sleep(wait)
                continue
            except SourceError as err:
                err.redacted(self.redact)
                if err.url is None:
                    err.url, err.method = shown, method
                    err.args = (str(err),)
                raise err from None
            return resp

    def _send_once(
        self,
        method: str,
        url: str,
        params: dict[str, Any],
        json_body: Any,
        data: Any,
        headers: dict[str, str],
        check: BodyCheck | None,
    ) -> HttpResponse:
        shown = self._shown_url(url, params)
        if self.bucket is not None:
            self.bucket.acquire()
        body = data
        if json_body is not None:
            # Serialise ourselves so Decimals go out as exact JSON numbers, never via float.
            body = dumps_json(json_body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        started = time.monotonic()
        try:
            raw = self.session.request(
                method, url, params=params or None, data=body, headers=headers,
                timeout=self.timeout,
            )
        except requests.Timeout:
            raise TransientError(
                self.source, f"timed out after {self.timeout:g}s", url=shown, method=method
            ) from None
        except requests.ConnectionError as exc:
            raise TransientError(
                self.source, f"cannot connect ({_reason(exc)})", url=shown, method=method
            ) from None
        except requests.RequestException as exc:
            raise SourceError(
                self.source, f"request failed ({type(exc).__name__})", url=shown, method=method
            ) from None
        elapsed = (time.monotonic() - started) * 1000
        shown = self.redact(raw.url) or shown
        log.debug("%s: %s %s -> %s in %.0fms", self.source, method, shown, raw.status_code, elapsed)

        text = raw.text
        parsed: Any = None
        if text.strip():
            try:
                parsed = parse_json(text)
            except ValueError:
                parsed = None
        resp = HttpResponse(
            source=self.source, method=method, url=shown, status=raw.status_code,
            headers=raw.headers, data=parsed, text=text,
        )
        status = raw.status_code
        if status < 400:
            if check is not None:
                check(resp)
            return resp
        msg = self.redact(api_message(parsed, text))
        detail = f"HTTP {status}" + (f": {msg}" if msg else "")
        kw = {"url": shown, "method": method, "status": status}
        if status == 429:
            err: SourceError = RateLimitError(self.source, detail, **kw)
            err.retry_after = parse_retry_after(raw.headers.get("Retry-After"))
            raise err
        if status in RETRY_STATUSES:
            err = TransientError(self.source, detail, **kw)
            err.retry_after = parse_retry_after(raw.headers.get("Retry-After"))
            raise err
        if status in (401, 403):
            raise AuthError(self.source, f"credentials refused, {detail}", **kw)
        raise ApiError(self.source, detail, **kw)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        # Full jitter (AWS architecture blog): spreads retrying clients apart.
        return random.uniform(0, min(self.backoff_max, self.backoff_base * (2**attempt)))

    def _shown_url(self, url: str, params: Mapping[str, Any]) -> str:
        if params:
            prepared = requests.Request("GET", url, params=params).prepare().url or url
        else:
            prepared = url
        return self.redact(prepared)


def _reason(exc: BaseException) -> str:
    """A short cause ('connection refused') instead of urllib3's nested repr."""
    text = str(exc).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("name or service not known", "host not found"),
        ("nodename nor servname", "host not found"),
        ("failed to resolve", "host not found"),
        ("timed out", "connect timed out"),
        ("reset by peer", "connection reset"),
        ("remote end closed", "connection closed by server"),
        ("ssl", "TLS error"),
    ):
        if needle in text:
            return reason
    return type(exc).__name__


# dumps_json: keys that are not strings written as strings (as json.dumps does); datetimes and
# dataclasses through _json_default (str), as json.dumps would, not orjson's own spellings
_JSON_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                 | orjson.OPT_PASSTHROUGH_DATACLASS)


def dumps_json(obj: Any) -> str:
    """Compact JSON text (UTF-8, no escapes) with each Decimal written as an exact JSON number,
    as the document spells it (the standard library would refuse it or go through float).

    orjson, with each Decimal passed through as a raw fragment: a BatchSave of 500 receivables
    (14,000 Decimals) encodes in 5 ms, where json.dumps with a marker string per Decimal, then
    unquoted, took 15 ms, on the sender thread of a drain."""
    return orjson.dumps(obj, default=_json_default, option=_JSON_OPTIONS).decode("utf-8")


def _json_default(o: Any) -> Any:
    # asked only for what orjson cannot write itself: no Python walk over every value
    if isinstance(o, Decimal) and o.is_finite():
        return orjson.Fragment(format(o, "f"))
    return str(o)

