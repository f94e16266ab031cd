"""Connector base: records a connector yields, the stream declaration, the generic read loop.

Recipe — writing a connector (see connectors/shopify.py for a complete one)
==========================================================================

A connector module reads like a table of its streams. Paging, auth, retry, rate limit and
secret redaction live in ``connectors/http.py`` and ``connectors/paging.py``; the base class
below runs the read loop. A connector supplies declarations, pure mapping functions and a few
hooks — no loops and no try/except around a stream.

1. Declare the class and its streams::

       class JiandaoyunConnector(Connector):
           system = "jiandaoyun"
           default_base_url = "https://api.jiandaoyun.com"
           default_rate_limit = 5.0                    # req/s; cfg rate_limit overrides, 0 = off
           operations = {"sales_order"}                # push ops -> methods push_<op>
           streams = {
               "customers": StreamSpec(
                   kind="customers", method="POST", path="/api/v5/app/entry/data/list",
                   records_path=("data",), id_field="_id", updated_field="updateTime",
                   paginator=partial(KeysetPaginator, id_field="_id", param="data_id"),
                   page_size=100, page_size_param="limit",
                   cursor_per_page=False,              # sorted by _id, not updateTime
                   mapper=map_customer,                # pure: payload dict -> canonical dict
               ),
           }

   ``paginator`` is any callable taking ``page_size`` and returning a fresh paginator
   (``LinkHeaderPaginator``, ``partial(KeysetPaginator, id_field="_id")``,
   ``partial(OffsetPaginator, param="StartRow")``). ``page_size`` can be overridden with
   ``cfg["options"]["page_size"]`` (tests use a small one to get many pages).

2. Auth: override ``make_auth(self, auth_cfg) -> Auth`` returning ``BearerAuth(...)``,
   ``HeaderAuth(name, value)``, ``QueryAuth({...})``, ``BasicAuth(u, p)`` or
   ``SessionLogin(login_fn, secrets=[...])`` (from connectors.http). A session login::

       def make_auth(self, auth):
           def login(http: HttpClient) -> None:
               http.post(LOGIN_PATH, json={...}, authenticate=False,
                         check_body=self.check_login)   # cookie persists on http.session
           return SessionLogin(login, secrets=[auth["app_secret"]])

   Every string value of ``cfg["auth"]`` is redacted from errors and logs automatically.

3. Request shape: by default ``build_request`` sends ``spec.params`` + ``since_filter(...)``
   (first page, and later pages too unless ``filters_on_later_pages=False``) +
   ``{page_size_param: page_size}`` + ``paginator.params()`` as query params for GET, or as
   the JSON body otherwise. Override ``since_filter(spec, since)`` when the "updated since"
   filter is nested (Jiandaoyun ``filter.cond[range]``, Kingdee ``FilterString``), or
   ``build_request`` when the whole body is unusual (Kingdee wraps it in ``{"data": ...}``).
   ``since`` is ``cursor.updated_at - lookback`` (cfg ``lookback_seconds``, default 600), an
   aware UTC datetime, or None on a first full read.

4. Records: by default ``extract_records`` digs ``spec.records_path`` in the JSON body. Override
   it when records are not dicts (Kingdee ExecuteBillQuery returns arrays in FieldKeys order:
   zip them into dicts here, so mappers and RawRecord payloads have names).

5. Errors inside HTTP 200: override ``check_body(self, resp)`` and raise
   ``resp.error("message")`` (ApiError), ``resp.error("...", AuthError)`` (re-login and retry
   once) or ``resp.error("...", TransientError)`` (retried with backoff). Empty-where-data-is-
   expected: raise ``resp.error("...", EmptyResultError)``.

6. Mapping: module-level pure functions ``payload -> canonical dict`` (docs/internals.md), using
   ``parse_decimal``, ``parse_datetime`` and ``MappingError`` from here; ``map(stream, payload)``
   dispatches to ``spec.mapper``.

7. Push: list the operations in ``operations`` and write ``push_<operation>(self, doc, recover)
   -> remote_id``. Look the remote document up first when ``recover`` is true (or always, if
   cheap). The base ``push`` turns a SourceError/MappingError for one doc into a failed
   ``PushResult``; only AuthError (affects every doc) propagates.

8. Register it in connectors/registry.py (``"system": "module:Class"``).

Cursor semantics: ``Page.cursor`` is the composite (updated_at, id) of the newest record read so
far, never behind the incoming cursor. With ``cursor_per_page=True`` (API sorted by updated_at,
id) every page carries it; otherwise only the last page does (earlier pages carry None).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from connectors.http import (
    ApiError,
    Auth,
    AuthError,
    HttpClient,
    HttpResponse,
    SourceError,
)
from connectors.paging import Paginator

# ------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Cursor:
    """Composite incremental position: never loses rows that share one updated_at."""

    updated_at: str  # ISO-8601 UTC, e.g. "2026-11-01T10:00:00Z"
    id: str


@dataclass
class RawRecord:
    external_id: str
    updated_at: datetime | None
    payload: dict  # the record exactly as the API sent it (JSON-able; Decimals allowed)


@dataclass
class Page:
    records: list[RawRecord]
    cursor: Cursor | None  # position after this page, or None when it cannot advance mid-stream


@dataclass
class PushResult:
    key: str  # the doc's idempotency key
    ok: bool
    remote_id: str | None = None
    error: str | None = None


class MappingError(ValueError):
    """A record that cannot be read at all; message is "field: problem". Goes to rejected."""


@dataclass(frozen=True)
class Request:
    """One request of a read, as built by Connector.build_request."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None


@dataclass(frozen=True)
class StreamSpec:
    """Declaration of one stream. See the module docstring for how each field is used."""

    kind: str                                   # canonical kind: orders, customers, ...
    path: str                                   # relative to base_url; {option} placeholders
    paginator: Callable[[int], Paginator]       # page_size -> fresh paginator
    method: str = "GET"
    records_path: tuple[str, ...] = ()          # keys to the record list in the JSON body
    id_field: str = "id"
    updated_field: str | None = "updated_at"    # None: no incremental reads
    since_param: str | None = None              # query/body key for "updated since" (ISO UTC)
    params: Mapping[str, Any] = field(default_factory=dict)  # static params / body keys
    page_size: int = 100
    page_size_param: str | None = "limit"
    filters_on_later_pages: bool = True         # False: Shopify (page_info forbids filters)
    cursor_per_page: bool = True                # API ordered by (updated_at, id)
    mapper: Callable[[dict], dict] | None = None


# ------------------------------------------------------------------------------------- parsing


def parse_text(value: Any) -> str | None:
    """Text as sources send it: "" or blanks mean missing (None); other values are stripped."""
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else str(value).strip()
    return text or None


def parse_decimal(value: Any, field: str) -> Decimal | None:
    """str/int/Decimal -> Decimal; None or "" -> None; anything unreadable -> MappingError.

    A float is refused with TypeError: it means JSON was parsed without parse_float=Decimal,
    a bug to fix, not a bad record to reject.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise MappingError(f"{field}: expected a number, got {value!r}")
    if isinstance(value, float):
        raise TypeError(f"{field}: float {value!r} refused for money/quantities (use Decimal)")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        return Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            result = Decimal(text)
        except InvalidOperation:
            raise MappingError(f"{field}: not a number: {value!r}") from None
    else:
        raise MappingError(f"{field}: expected a number, got {type(value).__name__}")
    if not result.is_finite():
        raise MappingError(f"{field}: not a finite number: {value!r}")
    return result


def parse_datetime(value: Any, field: str, assume_tz: tzinfo = UTC) -> datetime | None:
    """ISO-8601 (``Z``, offsets, space separator) or datetime -> aware UTC datetime.

    None or "" -> None. A naive value is read in ``assume_tz`` (e.g. Kingdee's local time).
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise MappingError(f"{field}: not an ISO-8601 datetime: {value!r}") from None
    else:
        raise MappingError(f"{field}: expected a datetime, got {type(value).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=assume_tz)
    return dt.astimezone(UTC)


def to_iso(dt: datetime) -> str:
    """Aware datetime -> "2026-11-01T10:00:00Z" (microseconds only when present)."""
    if dt.tzinfo is None:
        raise ValueError("to_iso needs an aware datetime")
    dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds").replace(
        "+00:00", "Z"
    )


def dig(data: Any, path: tuple[str, ...]) -> Any:
    """data[path[0]][path[1]]...; None when any step is missing."""
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def cursor_key(c: Cursor) -> tuple[datetime, int, Any]:
    """Sort key for cursors: time, then id numerically when it is a number (so "9" < "10")."""
    when = parse_datetime(c.updated_at, "cursor.updated_at")
    assert when is not None
    return (when, 0, int(c.id)) if c.id.isdigit() else (when, 1, c.id)


def later(a: Cursor | None, b: Cursor | None) -> Cursor | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if cursor_key(b) > cursor_key(a) else a


# ------------------------------------------------------------------------------------ connector


class Connector:
    """Base for one external system. Subclasses declare; this class runs reads and pushes."""

    system: ClassVar[str]
    streams: ClassVar[dict[str, StreamSpec]] = {}
    operations: ClassVar[set[str]] = set()
    default_base_url: ClassVar[str | None] = None
    default_rate_limit: ClassVar[float | None] = None
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str, cfg: dict) -> None:
        self.name = name
        self.cfg = cfg
        self.options: dict[str, Any] = {**self.default_options, **(cfg.get("options") or {})}
        self.lookback = timedelta(seconds=int(cfg.get("lookback_seconds", 600)))
        base_url = cfg.get("base_url") or self.default_base_url
        if not base_url:
            raise ValueError(f"source {name!r}: base_url is required")
        auth_cfg = cfg.get("auth") or {}
        retry = dict(cfg.get("retry") or {})  # max_retries, backoff_base, backoff_max, ...
        # None (or absent) -> the system's documented limit; 0 -> no client-side limit.
        rate = cfg.get("rate_limit")
        rate = self.default_rate_limit if rate is None else (float(rate) or None)
        self.http = HttpClient(
            name,
            base_url,
            auth=self.make_auth(auth_cfg),
            secrets=[str(v) for v in auth_cfg.values() if v],
            timeout=float(cfg.get("timeout") or 30.0),
            rate_limit=rate,
            check_body=self.check_body,
            **retry,
        )

    # -- hooks (override as needed) -------------------------------------------------------------

    def make_auth(self, auth_cfg: dict) -> Auth | None:
        """Auth hook from the resolved ``cfg["auth"]`` values."""
        return None

    def check_body(self, resp: HttpResponse) -> None:
        """Raise ``resp.error(...)`` for an error the API reports inside an HTTP 2xx body."""

    def page_size(self, spec: StreamSpec) -> int:
        return int(self.options.get("page_size") or spec.page_size)

    def since_filter(self, spec: StreamSpec, since: datetime) -> dict[str, Any]:
        """The "updated since" filter as request params/body keys."""
        return {spec.since_param: to_iso(since)} if spec.since_param else {}

    def build_request(
        self, spec: StreamSpec, since: datetime | None, paginator: Paginator
    ) -> Request:
        payload: dict[str, Any] = {}
        if paginator.first or spec.filters_on_later_pages:
            payload.update(spec.params)
            if since is not None:
                payload.update(self.since_filter(spec, since))
        if spec.page_size_param:
            payload[spec.page_size_param] = paginator.page_size
        payload.update(paginator.params())
        path = self.path_for(spec)
        if spec.method.upper() == "GET":
            return Request("GET", path, params=payload)
        return Request(spec.method.upper(), path, json=payload)

    def path_for(self, spec: StreamSpec) -> str:
        """``spec.path`` with ``{option}`` placeholders filled from options (api_version...)."""
        return spec.path.format_map(self.options) if "{" in spec.path else spec.path

    def extract_records(self, spec: StreamSpec, resp: HttpResponse) -> list[dict]:
        records = dig(resp.data, spec.records_path) if spec.records_path else resp.data
        if not isinstance(records, list):
            where = ".".join(spec.records_path) or "body"
            raise resp.error(f"response has no record list at {where!r}")
        return records

    def raw_record(self, spec: StreamSpec, record: dict) -> RawRecord:
        rid = record.get(spec.id_field)
        if rid is None or rid == "":
            raise ApiError(self.name, f"a {spec.kind} record has no {spec.id_field!r}")
        updated: datetime | None = None
        if spec.updated_field:
            try:
                updated = parse_datetime(record.get(spec.updated_field), spec.updated_field)
            except MappingError:
                updated = None  # the mapper rejects it; reading must go on
        return RawRecord(external_id=str(rid), updated_at=updated, payload=record)

    # -- the generic read loop --------------------------------------------------------------------

    def read(self, stream: str, cursor: Cursor | None) -> Iterator[Page]:
        """Yield pages from ``cursor - lookback`` to the end. Never loops forever."""
        spec = self._spec(stream)
        since: datetime | None = None
        if cursor is not None and spec.updated_field:
            since = parse_datetime(cursor.updated_at, "cursor.updated_at")
            since = since - self.lookback if since else None
        paginator = spec.paginator(self.page_size(spec))
        paginator.source = self.name
        newest = cursor
        while True:
            req = self.build_request(spec, since, paginator)
            resp = self.http.request(req.method, req.path, params=req.params, json=req.json)
            records = self.extract_records(spec, resp)
            raws = [self.raw_record(spec, r) for r in records]
            paginator.advance(records, resp.headers, resp.data)
            for raw in raws:
                if raw.updated_at is not None:
                    newest = later(newest, Cursor(to_iso(raw.updated_at), raw.external_id))
            done = paginator.finished
            yield Page(raws, newest if (spec.cursor_per_page or done) else None)
            if done:
                return

    def map(self, stream: str, payload: dict) -> dict:
        spec = self._spec(stream)
        if spec.mapper is None:
            raise NotImplementedError(f"{self.system}: no mapper for stream {stream!r}")
        return spec.mapper(payload)

    # -- push ---------------------------------------------------------------------------------

    def push(self, operation: str, docs: list[dict], recover: bool = False) -> list[PushResult]:
        """Send docs one by one via ``push_<operation>``; one doc's failure fails only that doc."""
        if operation not in self.operations:
            known = ", ".join(sorted(self.operations)) or "none"
            raise ValueError(f"{self.system} cannot push {operation!r} (supports: {known})")
        handler: Callable[[dict, bool], str | None] = getattr(self, f"push_{operation}")
        results = []
        for doc in docs:
            key = str(doc.get("key"))
            try:
                remote_id = handler(doc, recover)
            except AuthError:
                raise  # every following doc would fail the same way
            except (SourceError, MappingError) as err:
                results.append(PushResult(key, False, error=str(err)))
            else:
                results.append(PushResult(key, True, remote_id=remote_id))
        return results

    # -- compensation (rollback) ------------------------------------------------------------------

    def compensate(self, operation: str, docs: list[dict]) -> list[PushResult]:
        """Undo pushed documents (``orderhub rollback``); one PushResult per doc, by its key.

        Each doc is the push doc plus ``remote_id`` (what the push returned). A connector that
        can undo ``operation`` writes ``compensate_<operation>(self, doc) -> remote_id`` (it
        must be idempotent: a document already undone is a success) or overrides this method
        (batched APIs). Without one, every doc fails with a clear error and nothing is sent:
        a rollback must never take "cannot undo" for "undone".
        """
        handler: Callable[[dict], str | None] | None = getattr(self, f"compensate_{operation}",
                                                                None)
        if handler is None:
            error = (f"{self.name}: {self.system} cannot compensate {operation!r} "
                     "(no compensation for it in this connector); undo it in the target by hand")
            return [PushResult(str(doc.get("key")), False, error=error) for doc in docs]
        results = []
        for doc in docs:
            key = str(doc.get("key"))
            try:
                remote_id = handler(doc)
            except AuthError:
                raise  # every following doc would fail the same way
            except (SourceError, MappingError) as err:
                results.append(PushResult(key, False, error=str(err)))
            else:
                results.append(PushResult(key, True, remote_id=remote_id))
        return results

    def close(self) -> None:
        self.http.close()

    def _spec(self, stream: str) -> StreamSpec:
        try:
            return self.streams[stream]
        except KeyError:
            known = ", ".join(sorted(self.streams)) or "none"
            raise ValueError(
                f"{self.system} source {self.name!r} has no stream {stream!r} (has: {known})"
            ) from None


_frozen_depth = 0  # frozen_heap blocks open (nested: only the outermost unfreezes)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects alive when the block starts are left out of CPython's cyclic collector
    until the outermost block ends (``gc.freeze``, after one collection so no garbage is
    frozen; ``gc.unfreeze`` at the end hands them back).

    A run's process holds a million or more long-lived objects (Prefect, SQLAlchemy, Great
    Expectations, pyarrow), and every full collection walked them all: measured on the TPC-H
    SF 0.1 invoice stage on PostgreSQL, 6.0 s of 41.5 s in the collector, 2.4 s frozen. An
    object frozen here is still freed by reference counting; only one that ends in a cycle
    waits for the unfreeze."""
    global _frozen_depth
    gc.collect()
    gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()


@contextmanager
def paused_gc() -> Iterator[None]:
    """CPython's cyclic garbage collection paused inside the block (its state restored after).

    Hot paths that build rows, dicts and small containers by the hundred thousand (a page of
    records, a landed batch, an allocation chunk) make no cycles, and reference counting frees
    them; the automatic collector would still walk them all again every few hundred
    allocations: a quarter to a half of those paths' time, for nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
