"""Declared REST source: a JSON API described in orderhub.yaml under the source's ``options``.

A data engineer adds a new API without Python: where the records are, which field is the id
and which the cursor, how the API pages, and which field of a record feeds each canonical key.
The declaration is turned into the same ``StreamSpec`` + mapping function a hand-written
connector has (see connectors/base.py), so reading, retries, rate limits, redaction and paging
are the shared ones. The full schema, every key and a worked example: docs/declared-rest.md.

    options:
      auth: {type: bearer}                 # bearer | basic | api_key | none
      streams:
        orders:                            # a canonical kind
          path: /orders
          records: data.items
          id: id
          updated: updated_at
          since_param: updated_since
          paginator: {type: cursor, cursor_path: meta.next_cursor, param: cursor}
          mapping: {order_no: number, customer_code: buyer.code, total: total, ...}
          lines: {path: items, mapping: {sku: sku, qty: quantity, unit_price: unit_price}}

Validation happens in the constructor (``declare`` alone needs no secrets, for config checks):
every problem is one line naming the source and the key path, e.g. ``source 'partner':
options.streams.orders.paginator.type: 'pages' is not one of link_header, cursor, offset,
page, keyset``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from connectors.base import (
    Connector,
    MappingError,
    RawRecord,
    StreamSpec,
    parse_datetime,
    parse_decimal,
    to_iso,
)
from connectors.http import (
    ApiError,
    Auth,
    BasicAuth,
    BearerAuth,
    HeaderAuth,
    HttpClient,
    HttpResponse,
    QueryAuth,
    api_message,
    is_sensitive,
)
from connectors.paging import (
    CursorFieldPaginator,
    KeysetPaginator,
    LinkHeaderPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    Paginator,
)

# Canonical keys per kind (docs/internals.md) and how each is read from the API's value.
KINDS: dict[str, dict[str, str]] = {
    "orders": {"external_id": "text", "order_no": "text", "customer_code": "text",
               "customer_email": "text", "ordered_at": "datetime", "updated_at": "datetime",
               "currency": "text", "total": "decimal", "ship_region": "text"},
    "customers": {"external_id": "text", "code": "text", "name": "text", "email": "text",
                  "region": "text", "customer_group": "text", "credit_limit": "decimal",
                  "currency": "text", "updated_at": "datetime"},
    "prices": {"external_id": "text", "sku": "text", "name": "text", "currency": "text",
               "price": "decimal", "updated_at": "datetime"},
    "stock": {"external_id": "text", "sku": "text", "warehouse": "text", "region": "text",
              "qty": "decimal", "updated_at": "datetime"},
    "payments": {"external_id": "text", "reference": "text", "customer_code": "text",
                 "currency": "text", "amount": "decimal", "received_at": "datetime",
                 "updated_at": "datetime"},
    "receivables": {"external_id": "text", "invoice_no": "text", "order_ref": "text",
                    "customer_code": "text", "currency": "text", "amount": "decimal",
                    "open_amount": "decimal", "issued_at": "datetime", "due_date": "date",
                    "updated_at": "datetime"},
}
LINE_KEYS: dict[str, str] = {"line_no": "int", "sku": "text", "qty": "decimal",
                             "unit_price": "decimal"}
PAGINATORS = ("link_header", "cursor", "offset", "page", "keyset")
AUTH_TYPES = ("bearer", "basic", "api_key", "none")
PUSH_ROLES = ("fulfilment_target", "sales_order_target", "invoice_target")

SOURCE_KEYS = ("auth", "headers", "error_path", "page_size", "streams")
STREAM_KEYS = ("path", "method", "params", "records", "id", "updated", "updated_format",
               "since_param", "sorted_by_updated", "filters_on_later_pages", "paginator",
               "page_size", "page_size_param", "mapping", "lines")
PAGINATOR_KEYS: dict[str, tuple[str, ...]] = {
    "link_header": ("type", "param"),
    "cursor": ("type", "cursor_path", "param", "has_more_path"),
    "offset": ("type", "param", "start"),
    "page": ("type", "param", "start", "total_pages_header", "total_pages_path"),
    "keyset": ("type", "param", "field"),
}
# Which cfg["auth"] secrets each auth type needs.
AUTH_SECRETS: dict[str, tuple[str, ...]] = {
    "bearer": ("token",), "basic": ("username", "password"), "api_key": ("api_key",), "none": (),
}

Path = tuple[str, ...]


class DeclarationError(ValueError):
    """A mistake in a declared source; ``str()`` is one line: source, key path, problem."""


# -- the declaration, as data --------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """Where one canonical key comes from: a dotted path into the record, or a constant."""

    key: str
    type: str                 # text | decimal | datetime | date | int
    path: Path | None         # None: ``const``
    const: Any = None

    @property
    def label(self) -> str:
        return ".".join(self.path) if self.path else self.key


@dataclass(frozen=True)
class DeclaredStream:
    """What the mapping and the record reader need beyond the StreamSpec."""

    kind: str
    id_path: Path
    updated_path: Path
    unix: bool                              # updated_format: unix (seconds since the epoch)
    fields: tuple[Field, ...]
    lines_path: Path | None = None
    line_fields: tuple[Field, ...] = ()


@dataclass(frozen=True)
class Declaration:
    auth_type: str
    api_key_in: str                         # header | query (api_key only)
    api_key_name: str
    headers: Mapping[str, str]
    error_path: Path | None
    streams: Mapping[str, DeclaredStream]
    specs: Mapping[str, StreamSpec]             # what the base read loop runs


# -- validation ------------------------------------------------------------------------------------


class _Check:
    """One-line errors naming the source and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> DeclarationError:
        return DeclarationError(f"source {self.source!r}: {where}: {problem}")

    def mapping(self, value: Any, where: str, known: Iterable[str] | None = None) -> dict:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping, got {_kind_of(value)}")
        if known is not None:
            allowed = tuple(known)
            for key in value:
                if key not in allowed:
                    raise self.fail(f"{where}.{key}", f"unknown key (known: {', '.join(allowed)})")
        return dict(value)

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected text, got {_kind_of(value)}")
        return value.strip()

    def required(self, block: Mapping, key: str, where: str, hint: str = "") -> Any:
        if block.get(key) is None:
            raise self.fail(f"{where}.{key}", "missing" + (f" ({hint})" if hint else ""))
        return block[key]

    def choice(self, value: Any, where: str, choices: Iterable[str]) -> str:
        options = tuple(choices)
        if value not in options:
            raise self.fail(where, f"{value!r} is not one of {', '.join(options)}")
        return str(value)

    def flag(self, value: Any, where: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    def count(self, value: Any, where: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"expected a whole number >= {minimum}, got {value!r}")
        return value

    def path(self, value: Any, where: str) -> Path:
        text = self.text(value, where)
        parts = tuple(p.strip() for p in text.split("."))
        if not all(parts):
            raise self.fail(where, f"{text!r} is not a dotted path like data.items")
        return parts


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def declare(source: str, options: Mapping[str, Any] | None) -> Declaration:
    """Validate a declared source's ``options`` (no secrets, no HTTP) and build its streams."""
    c = _Check(source)
    opts = c.mapping({} if options is None else options, "options", SOURCE_KEYS)

    auth = c.mapping(opts.get("auth") or {"type": "bearer"}, "options.auth",
                     ("type", "in", "name"))
    auth_type = c.choice(auth.get("type", "bearer"), "options.auth.type", AUTH_TYPES)
    key_in, key_name = "header", "X-Api-Key"
    if auth_type == "api_key":
        key_in = c.choice(auth.get("in", "header"), "options.auth.in", ("header", "query"))
        default_name = "X-Api-Key" if key_in == "header" else "api_key"
        key_name = c.text(auth.get("name", default_name), "options.auth.name")
    elif "in" in auth or "name" in auth:
        extra = "in" if "in" in auth else "name"
        raise c.fail(f"options.auth.{extra}", "only used with type: api_key")

    headers = {}
    for name, value in c.mapping(opts.get("headers") or {}, "options.headers").items():
        where = f"options.headers.{name}"
        if is_sensitive(str(name)):
            # Options are not secret references: credentials belong under auth.
            raise c.fail(where, "looks like a credential; declare it with options.auth and "
                                "put the secret under auth")
        if not isinstance(value, str | int):
            raise c.fail(where, f"expected text, got {_kind_of(value)}")
        headers[str(name)] = str(value)

    error_path = c.path(opts["error_path"], "options.error_path") if opts.get("error_path") \
        else None
    if "page_size" in opts:
        c.count(opts["page_size"], "options.page_size")

    streams = c.mapping(c.required(opts, "streams", "options", "declare at least one stream"),
                        "options.streams")
    if not streams:
        raise c.fail("options.streams", "declare at least one stream")
    declared, specs = {}, {}
    for name, block in streams.items():
        where = f"options.streams.{name}"
        if name not in KINDS:
            raise c.fail(where, f"{name!r} is not a canonical kind ({', '.join(KINDS)})")
        declared[name], specs[name] = _stream(c, name, block, where)
    return Declaration(auth_type, key_in, key_name, headers, error_path, declared, specs)


def _stream(c: _Check, kind: str, block: Any, where: str) -> tuple[DeclaredStream, StreamSpec]:
    s = c.mapping(block, where, STREAM_KEYS)
    path = c.text(c.required(s, "path", where), f"{where}.path")
    method = c.choice(str(s.get("method", "GET")).upper(), f"{where}.method", ("GET", "POST"))
    params = c.mapping(s.get("params") or {}, f"{where}.params")
    for k, v in params.items():
        if isinstance(v, Mapping | list) and method == "GET":
            raise c.fail(f"{where}.params.{k}", "a query parameter must be a single value")
    records = c.path(s["records"], f"{where}.records") if s.get("records") else ()
    id_path = c.path(s.get("id", "id"), f"{where}.id")
    updated_path = c.path(c.required(s, "updated", where, "the record's last-modified field"),
                          f"{where}.updated")
    fmt = c.choice(s.get("updated_format", "iso"), f"{where}.updated_format", ("iso", "unix"))
    since_param = c.text(s["since_param"], f"{where}.since_param") if s.get("since_param") \
        else None
    sorted_by_updated = c.flag(s.get("sorted_by_updated"), f"{where}.sorted_by_updated", False)
    filters_later = c.flag(s.get("filters_on_later_pages"), f"{where}.filters_on_later_pages",
                           True)
    page_size = c.count(s.get("page_size", 100), f"{where}.page_size")
    size_param: str | None = "limit"
    if "page_size_param" in s:
        size_param = None if s["page_size_param"] is None else c.text(
            s["page_size_param"], f"{where}.page_size_param")

    pwhere = f"{where}.paginator"
    pblock = c.mapping(c.required(s, "paginator", where, f"type: {' | '.join(PAGINATORS)}"),
                       pwhere)
    ptype = c.choice(c.required(pblock, "type", pwhere, " | ".join(PAGINATORS)), f"{pwhere}.type",
                     PAGINATORS)
    c.mapping(pblock, pwhere, PAGINATOR_KEYS[ptype])
    paginator = _paginator(c, ptype, pblock, pwhere, id_path)
    if ptype == "keyset" and sorted_by_updated:
        raise c.fail(f"{where}.sorted_by_updated",
                     "a keyset paginator pages by id, so the records cannot be sorted by updated")

    fields = _fields(c, KINDS[kind], c.mapping(c.required(s, "mapping", where), f"{where}.mapping"),
                     f"{where}.mapping")
    fields = _with_default(fields, "external_id", KINDS[kind], id_path)
    fields = _with_default(fields, "updated_at", KINDS[kind], updated_path)

    lines_path: Path | None = None
    line_fields: tuple[Field, ...] = ()
    if s.get("lines") is not None:
        lwhere = f"{where}.lines"
        if kind != "orders":
            raise c.fail(lwhere, "only orders have lines")
        lb = c.mapping(s["lines"], lwhere, ("path", "mapping"))
        lines_path = c.path(c.required(lb, "path", lwhere), f"{lwhere}.path")
        line_fields = _fields(c, LINE_KEYS, c.mapping(c.required(lb, "mapping", lwhere),
                                                      f"{lwhere}.mapping"), f"{lwhere}.mapping")

    stream = DeclaredStream(kind=kind, id_path=id_path, updated_path=updated_path,
                            unix=fmt == "unix", fields=fields, lines_path=lines_path,
                            line_fields=line_fields)
    spec = StreamSpec(
        kind=kind,
        path=path,
        method=method,
        paginator=paginator,
        records_path=records,
        id_field=".".join(id_path),
        updated_field=".".join(updated_path),
        since_param=since_param,
        params=params,
        page_size=page_size,
        page_size_param=size_param,
        filters_on_later_pages=filters_later,
        cursor_per_page=sorted_by_updated,
        mapper=partial(map_record, stream),
    )
    return stream, spec


def _paginator(c: _Check, ptype: str, p: dict, where: str, id_path: Path) -> Callable[[int],
                                                                                     Paginator]:
    def param(default: str | None) -> str:
        if default is None and p.get("param") is None:
            raise c.fail(f"{where}.param", "missing (the query parameter of the rel=\"next\" "
                                           "URL that carries the page token)")
        return c.text(p.get("param", default), f"{where}.param")

    if ptype == "link_header":
        return partial(LinkHeaderPaginator, param=param(None))
    if ptype == "cursor":
        cursor_path = c.path(c.required(p, "cursor_path", where, "where the next cursor sits, "
                                                                 "e.g. meta.next_cursor"),
                             f"{where}.cursor_path")
        has_more = c.path(p["has_more_path"], f"{where}.has_more_path") \
            if p.get("has_more_path") else None
        return partial(CursorFieldPaginator, cursor_path=cursor_path, param=param("cursor"),
                       has_more_path=has_more)
    if ptype == "offset":
        start = c.count(p.get("start", 0), f"{where}.start", minimum=0)
        return partial(OffsetPaginator, param=param("offset"), start=start)
    if ptype == "page":
        start = c.count(p.get("start", 1), f"{where}.start", minimum=0)
        header = c.text(p["total_pages_header"], f"{where}.total_pages_header") \
            if p.get("total_pages_header") else None
        body = c.path(p["total_pages_path"], f"{where}.total_pages_path") \
            if p.get("total_pages_path") else None
        return partial(PageNumberPaginator, param=param("page"), start=start,
                       total_pages_header=header, total_pages_path=body,
                       id_field=id_path[0] if len(id_path) == 1 else None)
    # keyset: the last record's field goes back as the token (records come ordered by it)
    field = p.get("field") or (id_path[0] if len(id_path) == 1 else None)
    if field is None or "." in str(field):
        shown = ".".join(id_path) if field is None else field
        raise c.fail(f"{where}.field", f"keyset needs a top-level field of the record "
                                       f"(got {shown!r})")
    return partial(KeysetPaginator, id_field=c.text(field, f"{where}.field"), param=param("after"))


def _fields(c: _Check, known: Mapping[str, str], mapping: dict, where: str) -> tuple[Field, ...]:
    out = []
    for key, source in mapping.items():
        fwhere = f"{where}.{key}"
        if key not in known:
            hint = " (declare order lines with the stream's lines: block)" if key == "lines" else ""
            raise c.fail(fwhere, f"not a canonical key here{hint} (known: {', '.join(known)})")
        if isinstance(source, Mapping):
            c.mapping(source, fwhere, ("const",))
            if "const" not in source:
                raise c.fail(f"{fwhere}.const", "missing")
            const = source["const"]
            if isinstance(const, float):
                const = Decimal(str(const))  # YAML floats: keep the written digits, not binary
            out.append(Field(key, known[key], None, const))
        else:
            out.append(Field(key, known[key], c.path(source, fwhere)))
    return tuple(out)


def _with_default(fields: tuple[Field, ...], key: str, known: Mapping[str, str],
                  path: Path) -> tuple[Field, ...]:
    """external_id/updated_at default to the stream's id/updated paths."""
    if any(f.key == key for f in fields):
        return fields
    return (*fields, Field(key, known[key], path))


# -- mapping (pure) --------------------------------------------------------------------------------


def dig(data: Any, path: Path) -> Any:
    """Dotted-path lookup; a numeric step indexes a list (``items.0.sku``). None when missing."""
    for key in path:
        if isinstance(data, Mapping):
            data = data.get(key)
        elif isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        else:
            return None
    return data


def read_datetime(value: Any, label: str, unix: bool) -> datetime | None:
    """ISO-8601 text, or unix seconds (a JSON number always; digit text when ``unix``)."""
    if isinstance(value, bool):
        raise MappingError(f"{label}: expected a datetime, got {value!r}")
    if isinstance(value, str) and unix and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int | Decimal):
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=int(value)) + \
                timedelta(microseconds=int((Decimal(value) % 1) * 1_000_000))
        except (OverflowError, ValueError):
            raise MappingError(f"{label}: not a unix time: {value!r}") from None
    return parse_datetime(value, label)


def _read_date(value: Any, label: str, unix: bool) -> date | None:
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise MappingError(f"{label}: not an ISO-8601 date: {value!r}") from None
    when = read_datetime(value, label, unix)
    return when.date() if when else None


def _read_text(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping | list):
        raise MappingError(f"{label}: expected a value, got {_kind_of(value)}")
    if isinstance(value, Decimal):
        value = format(value, "f")
    text = str(value).strip()
    return text or None


def _read_int(value: Any, label: str) -> int | None:
    number = parse_decimal(value, label)
    if number is None:
        return None
    if number != number.to_integral_value():
        raise MappingError(f"{label}: expected a whole number, got {value!r}")
    return int(number)


def _convert(f: Field, record: Any, unix: bool, prefix: str = "") -> Any:
    value = f.const if f.path is None else dig(record, f.path)
    label = prefix + f.label
    if f.type == "decimal":
        return parse_decimal(value, label)
    if f.type == "datetime":
        return read_datetime(value, label, unix)
    if f.type == "date":
        return _read_date(value, label, unix)
    if f.type == "int":
        return _read_int(value, label)
    return _read_text(value, label)


def map_record(stream: DeclaredStream, payload: dict) -> dict:
    """A record as the API sent it -> the canonical record of ``stream.kind``: exactly the
    canonical keys, missing ones None; MappingError for a value that cannot be read."""
    out: dict[str, Any] = dict.fromkeys(KINDS[stream.kind])
    for f in stream.fields:
        out[f.key] = _convert(f, payload, stream.unix)
    for key in ("external_id", "updated_at"):
        if out[key] is None:
            label = next(f.label for f in stream.fields if f.key == key)
            raise MappingError(f"{label}: missing")
    if stream.kind == "orders":
        out["lines"] = _lines(stream, payload)
    return out


def _lines(stream: DeclaredStream, payload: dict) -> list[dict]:
    if stream.lines_path is None:
        return []
    where = ".".join(stream.lines_path)
    items = dig(payload, stream.lines_path)
    if items is None:
        return []
    if not isinstance(items, list):
        raise MappingError(f"{where}: expected a list of lines, got {_kind_of(items)}")
    lines = []
    for n, item in enumerate(items, start=1):
        prefix = f"{where}[{n}]."
        if not isinstance(item, Mapping):
            raise MappingError(f"{where}[{n}]: expected an object, got {_kind_of(item)}")
        line: dict[str, Any] = {"line_no": n, "sku": None, "qty": None, "unit_price": None}
        for f in stream.line_fields:
            line[f.key] = _convert(f, item, stream.unix, prefix)
        if line["line_no"] is None:
            line["line_no"] = n
        lines.append(line)
    return lines


# -- the connector -----------------------------------------------------------------------------


class _DeclaredAuth(Auth):
    """The declared credentials plus the declared static headers, as one auth hook."""

    def __init__(self, inner: Auth | None, headers: Mapping[str, str]) -> None:
        self.inner, self.headers = inner, dict(headers)

    def secrets(self) -> list[str]:
        return self.inner.secrets() if self.inner else []

    def prepare(self, client: HttpClient) -> None:
        if self.inner:
            self.inner.prepare(client)

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers.update(self.headers)
        if self.inner:
            self.inner.apply(headers, params)

    def on_auth_failure(self, client: HttpClient) -> bool:
        return self.inner.on_auth_failure(client) if self.inner else False


class DeclaredRestConnector(Connector):
    """A read-only source whose streams come from ``cfg["options"]`` (see ``declare``)."""

    system = "rest"
    operations: set[str] = set()

    def __init__(self, name: str, cfg: dict) -> None:
        self.decl = self.check_options(name, cfg.get("options"), cfg.get("roles") or ())
        # Instance-level: each declared source has its own streams.
        self.streams = dict(self.decl.specs)
        super().__init__(name, cfg)

    @classmethod
    def check_options(cls, name: str, options: Mapping[str, Any] | None,
                      roles: Iterable[str] = ()) -> Declaration:
        """Validate a source's options and roles with no secrets and no HTTP (what a config
        check can call); raises DeclarationError."""
        decl = declare(name, options)
        for role in roles:
            if role in PUSH_ROLES:
                raise DeclarationError(f"source {name!r}: roles: {role!r}: a declared rest "
                                       "source is read-only")
            if role not in decl.specs:
                raise DeclarationError(f"source {name!r}: roles: {role!r} has no "
                                       f"options.streams.{role} declaration")
        return decl

    def make_auth(self, auth_cfg: dict) -> Auth:
        kind = self.decl.auth_type
        missing = [k for k in AUTH_SECRETS[kind] if not auth_cfg.get(k)]
        if missing:
            raise DeclarationError(f"source {self.name!r}: auth.{missing[0]}: required for "
                                   f"options.auth.type {kind}")
        inner: Auth | None = None
        if kind == "bearer":
            inner = BearerAuth(str(auth_cfg["token"]))
        elif kind == "basic":
            inner = BasicAuth(str(auth_cfg["username"]), str(auth_cfg["password"]))
        elif kind == "api_key":
            key = str(auth_cfg["api_key"])
            inner = HeaderAuth(self.decl.api_key_name, key) if self.decl.api_key_in == "header" \
                else QueryAuth({self.decl.api_key_name: key})
        return _DeclaredAuth(inner, self.decl.headers)

    def check_body(self, resp: HttpResponse) -> None:
        # APIs that report errors inside HTTP 200 ({"error": {...}}): declared by error_path.
        if self.decl.error_path is None:
            return
        err = dig(resp.data, self.decl.error_path)
        if err not in (None, "", False, [], {}):
            message = api_message(err, str(err))
            code = err.get("code") if isinstance(err, Mapping) else None
            raise resp.error(f"{message} ({code})" if code and str(code) not in message
                             else message)

    def path_for(self, spec: StreamSpec) -> str:
        # Declared paths are literal: no {option} placeholders (options hold the declaration).
        return spec.path

    def since_filter(self, spec: StreamSpec, since: datetime) -> dict[str, Any]:
        if not spec.since_param:
            return {}
        if self.decl.streams[spec.kind].unix:
            return {spec.since_param: int(since.timestamp())}  # floor: widens the window
        return {spec.since_param: to_iso(since)}

    def raw_record(self, spec: StreamSpec, record: dict) -> RawRecord:
        stream = self.decl.streams[spec.kind]
        if not isinstance(record, Mapping):
            where = ".".join(spec.records_path) or "body"
            raise ApiError(self.name, f"the {spec.kind} records at {where!r} are not objects")
        rid = dig(record, stream.id_path)
        if rid is None or rid == "" or isinstance(rid, Mapping | list):
            raise ApiError(self.name, f"a {spec.kind} record has no {spec.id_field!r}")
        try:
            updated = read_datetime(dig(record, stream.updated_path), spec.updated_field or "",
                                    stream.unix)
        except MappingError:
            updated = None  # the mapper rejects it; reading must go on
        return RawRecord(external_id=_read_text(rid, spec.id_field) or "", updated_at=updated,
                         payload=record)
