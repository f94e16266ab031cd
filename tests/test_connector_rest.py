"""The declared REST source: schema validation, every paginator and auth type through the
partner fake, and the declared mapping (nested paths, lines, Decimal money)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.base import Cursor, MappingError
from connectors.http import ApiError, AuthError, reset_rate_limits
from connectors.registry import build_connector
from connectors.rest import KINDS, DeclaredRestConnector, declare, map_record
from sandbox import start_sandbox
from sandbox.rest import API_KEY, BASE_PATH, ORDERS_PATH, PARTNER_OPTIONS, RestFake
from sandbox.server import FakeApp, FakeServer, Response

BASE = datetime(2026, 11, 1, tzinfo=UTC)
FAST_RETRY = {"max_retries": 2, "backoff_base": 0.001, "backoff_max": 0.005}
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rest-source.yaml"


def neutral_order(i: int, **over: Any) -> dict:
    o = {
        "external_id": f"PO-{i + 1:04d}",
        "order_no": f"PM{i + 1:04d}",
        "customer_code": "C00007",
        "customer_email": f"buyer{i}@example.com",
        "ordered_at": BASE + timedelta(minutes=i),
        "updated_at": BASE + timedelta(minutes=i, seconds=30),
        "currency": "CNY",
        "ship_region": "north",
        "lines": [
            {"line_no": 1, "sku": "SKU-00001", "qty": 2, "unit_price": Decimal("9.50")},
            {"line_no": 2, "sku": "SKU-00002", "qty": 1, "unit_price": Decimal("0.10")},
        ],
        "total": Decimal("19.10"),
    }
    o.update(over)
    return o


def ids(pages: list) -> list[str]:
    return [r.external_id for p in pages for r in p.records]


def options(**stream_over: Any) -> dict:
    """PARTNER_OPTIONS with the orders stream's keys replaced (None removes a key)."""
    opts = copy.deepcopy(PARTNER_OPTIONS)
    stream = opts["streams"]["orders"]
    for key, value in stream_over.items():
        if value is None:
            stream.pop(key, None)
        else:
            stream[key] = value
    return opts


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    reset_rate_limits()
    yield


@pytest.fixture
def partner() -> Iterator[tuple[RestFake, FakeServer]]:
    app = RestFake([neutral_order(i) for i in range(7)])
    server = FakeServer(app).start()
    yield app, server
    server.stop()


def connector(server: FakeServer, opts: dict | None = None, auth: dict | None = None,
              page_size: int | None = 3, **cfg: Any) -> DeclaredRestConnector:
    opts = copy.deepcopy(opts or PARTNER_OPTIONS)
    if page_size is not None:
        opts["page_size"] = page_size
    base = {"system": "rest", "base_url": server.url + BASE_PATH,
            "auth": RestFake.credentials_for("bearer") if auth is None else auth,
            "options": opts, "rate_limit": 0, "retry": FAST_RETRY}
    base.update(cfg)
    c = build_connector("partner", base)
    assert isinstance(c, DeclaredRestConnector)
    return c


# ------------------------------------------------------------------------------ validation


def _error(opts: Any, cfg: dict | None = None) -> str:
    base = {"system": "rest", "base_url": "http://x", "auth": {"token": "t0ken"},
            "options": opts, **(cfg or {})}
    with pytest.raises(ValueError) as exc:
        build_connector("partner", base)
    text = str(exc.value)
    assert "\n" not in text and text.startswith("source 'partner': ")
    return text[len("source 'partner': "):]


def _stream(**over: Any) -> dict:
    return options(**over)


def test_the_documented_paginator_type_error() -> None:
    opts = _stream(paginator={"type": "pages"})
    assert _error(opts) == ("options.streams.orders.paginator.type: 'pages' is not one of "
                            "link_header, cursor, offset, page, keyset")


@pytest.mark.parametrize(("opts", "expected"), [
    ([], "options: expected a mapping, got a list"),
    ({"streams": {}}, "options.streams: declare at least one stream"),
    ({"auth": {"type": "bearer"}}, "options.streams: missing (declare at least one stream)"),
    ({"stream": {}}, "options.stream: unknown key (known: auth, headers, error_path, page_size, "
                     "streams)"),
    ({"streams": {"invoices": {}}},
     "options.streams.invoices: 'invoices' is not a canonical kind (orders, customers, prices, "
     "stock, payments, receivables)"),
    (_stream(pagesize=10), "options.streams.orders.pagesize: unknown key (known: path, method, "
                           "params, records, id, updated, updated_format, since_param, "
                           "sorted_by_updated, filters_on_later_pages, paginator, page_size, "
                           "page_size_param, mapping, lines)"),
    (_stream(path=None), "options.streams.orders.path: missing"),
    (_stream(updated=None),
     "options.streams.orders.updated: missing (the record's last-modified field)"),
    (_stream(updated_format="epoch"),
     "options.streams.orders.updated_format: 'epoch' is not one of iso, unix"),
    (_stream(records="data..items"),
     "options.streams.orders.records: 'data..items' is not a dotted path like data.items"),
    (_stream(page_size=0), "options.streams.orders.page_size: expected a whole number >= 1, got 0"),
    (_stream(sorted_by_updated="yes"),
     "options.streams.orders.sorted_by_updated: expected true or false, got 'yes'"),
    (_stream(method="DELETE"), "options.streams.orders.method: 'DELETE' is not one of GET, POST"),
    (_stream(paginator=None), "options.streams.orders.paginator: missing "
                              "(type: link_header | cursor | offset | page | keyset)"),
    (_stream(paginator={"cursor_path": "x"}), "options.streams.orders.paginator.type: missing "
                                              "(link_header | cursor | offset | page | keyset)"),
    (_stream(paginator={"type": "cursor"}), "options.streams.orders.paginator.cursor_path: "
                                            "missing (where the next cursor sits, e.g. "
                                            "meta.next_cursor)"),
    (_stream(paginator={"type": "offset", "cursor_path": "x"}),
     "options.streams.orders.paginator.cursor_path: unknown key (known: type, param, start)"),
    (_stream(paginator={"type": "link_header"}),
     "options.streams.orders.paginator.param: missing (the query parameter of the "
     "rel=\"next\" URL that carries the page token)"),
    (_stream(paginator={"type": "keyset"}),
     "options.streams.orders.sorted_by_updated: a keyset paginator pages by id, so the records "
     "cannot be sorted by updated"),
    (_stream(paginator={"type": "keyset"}, sorted_by_updated=False, id="meta.id"),
     "options.streams.orders.paginator.field: keyset needs a top-level field of the record "
     "(got 'meta.id')"),
    (_stream(mapping={"order_number": "number"}),
     "options.streams.orders.mapping.order_number: not a canonical key here (known: "
     "external_id, order_no, customer_code, customer_email, ordered_at, updated_at, currency, "
     "total, ship_region)"),
    (_stream(mapping={"lines": "items"}),
     "options.streams.orders.mapping.lines: not a canonical key here (declare order lines with "
     "the stream's lines: block) (known: external_id, order_no, customer_code, customer_email, "
     "ordered_at, updated_at, currency, total, ship_region)"),
    (_stream(mapping={"currency": {"value": "CNY"}}),
     "options.streams.orders.mapping.currency.value: unknown key (known: const)"),
    (_stream(mapping={"total": 12}), "options.streams.orders.mapping.total: expected text, got 12"),
    (_stream(mapping=None), "options.streams.orders.mapping: missing"),
    (_stream(lines={"path": "items", "mapping": {"price": "unit_price"}}),
     "options.streams.orders.lines.mapping.price: not a canonical key here (known: line_no, sku, "
     "qty, unit_price)"),
    ({"streams": {"customers": {**PARTNER_OPTIONS["streams"]["orders"], "mapping": {}}}},
     "options.streams.customers.lines: only orders have lines"),
    ({**PARTNER_OPTIONS, "auth": {"type": "oauth2"}},
     "options.auth.type: 'oauth2' is not one of bearer, basic, api_key, none"),
    ({**PARTNER_OPTIONS, "auth": {"type": "api_key", "in": "cookie"}},
     "options.auth.in: 'cookie' is not one of header, query"),
    ({**PARTNER_OPTIONS, "auth": {"type": "bearer", "name": "X-Token"}},
     "options.auth.name: only used with type: api_key"),
    ({**PARTNER_OPTIONS, "headers": {"X-Api-Token": "abc"}},
     "options.headers.X-Api-Token: looks like a credential; declare it with options.auth and "
     "put the secret under auth"),
    ({**PARTNER_OPTIONS, "error_path": 3}, "options.error_path: expected text, got 3"),
])
def test_declaration_errors_name_the_source_and_the_key_path(opts: Any, expected: str) -> None:
    assert _error(opts) == expected


def test_secrets_and_roles_are_checked_against_the_declaration() -> None:
    basic = {**PARTNER_OPTIONS, "auth": {"type": "basic"}}
    assert _error(basic, {"auth": {"username": "u"}}) == \
        "auth.password: required for options.auth.type basic"
    assert _error(PARTNER_OPTIONS, {"auth": {}}) == "auth.token: required for options.auth.type bearer"
    assert _error(PARTNER_OPTIONS, {"roles": ["orders", "customers"]}) == \
        "roles: 'customers' has no options.streams.customers declaration"
    assert _error(PARTNER_OPTIONS, {"roles": ["orders", "fulfilment_target"]}) == \
        "roles: 'fulfilment_target': a declared rest source is read-only"


def test_declare_needs_no_secrets_and_builds_one_stream_per_kind() -> None:
    decl = declare("partner", PARTNER_OPTIONS)
    assert set(decl.specs) == {"orders"}
    spec = decl.specs["orders"]
    assert spec.kind == "orders" and spec.records_path == ("data", "items")
    assert spec.page_size == 50 and spec.page_size_param == "limit" and spec.cursor_per_page


def test_the_example_file_is_the_fakes_declaration_and_a_valid_config() -> None:
    from flows.config import load_settings

    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert raw["sources"]["partner"]["options"] == PARTNER_OPTIONS
    settings = load_settings(EXAMPLE)
    assert settings.sources_with_role("orders") == ["partner"]
    declare("partner", settings.sources["partner"]["options"])


# ------------------------------------------------------------------------------ paginators


PAGING = {
    "cursor": ({"type": "cursor", "cursor_path": "meta.next_cursor", "param": "cursor"}, "cursor"),
    "offset": ({"type": "offset"}, "offset"),
    "page": ({"type": "page", "total_pages_header": "X-Total-Pages"}, "page"),
    "page_body_total": ({"type": "page", "total_pages_path": "meta.total_pages"}, "page"),
    "link_header": ({"type": "link_header", "param": "page_token"}, "page_token"),
    "keyset": ({"type": "keyset"}, "after"),
}


@pytest.mark.parametrize("name", list(PAGING))
def test_every_paginator_type_reads_every_page_through_the_fake(partner, name: str) -> None:
    app, server = partner
    paginator, token_param = PAGING[name]
    mode = {"link_header": "link", "page_body_total": "page"}.get(name, name)
    opts = options(paginator=paginator, params={"paging": mode},
                   sorted_by_updated=(name != "keyset"))
    pages = list(connector(server, opts).read("orders", None))
    assert ids(pages) == [f"PO-{i + 1:04d}" for i in range(7)]
    assert [len(p.records) for p in pages] == [3, 3, 1]
    assert len(app.requests) == 3  # a total or a cursor ends the read: no empty probe
    assert all(r.query["paging"] == mode and r.query["limit"] == "3" for r in app.requests)
    assert all(token_param in r.query for r in app.requests[1:])
    if name == "keyset":  # ordered by id, not updated: only the last page moves the cursor
        assert [p.cursor for p in pages[:-1]] == [None, None]
    else:
        assert pages[0].cursor == Cursor("2026-11-01T00:02:30Z", "PO-0003")
    assert pages[-1].cursor == Cursor("2026-11-01T00:06:30Z", "PO-0007")


@pytest.mark.parametrize("name", list(PAGING))
def test_every_paginator_sends_the_incremental_filter(partner, name: str) -> None:
    app, server = partner
    paginator, _ = PAGING[name]
    mode = {"link_header": "link", "page_body_total": "page"}.get(name, name)
    opts = options(paginator=paginator, params={"paging": mode},
                   sorted_by_updated=(name != "keyset"))
    c = connector(server, opts, page_size=2, lookback_seconds=60)
    pages = list(c.read("orders", Cursor("2026-11-01T00:04:30Z", "PO-0005")))
    assert ids(pages) == ["PO-0004", "PO-0005", "PO-0006", "PO-0007"]  # since 00:03:30, inclusive
    assert {r.query["updated_since"] for r in app.requests} == {"2026-11-01T00:03:30Z"}


def test_filters_only_on_the_first_request_when_declared(partner) -> None:
    app, server = partner
    opts = options(filters_on_later_pages=False)
    pages = list(connector(server, opts, lookback_seconds=0).read(
        "orders", Cursor("2026-11-01T00:01:30Z", "PO-0002")))
    assert ids(pages) == [f"PO-{i:04d}" for i in range(2, 8)]
    assert "updated_since" in app.requests[0].query
    assert all(set(r.query) == {"limit", "cursor"} for r in app.requests[1:])


def test_unix_updated_format_reads_and_sends_seconds(partner) -> None:
    app, server = partner
    opts = options(updated="updated_ts", updated_format="unix")
    c = connector(server, opts, lookback_seconds=60)
    pages = list(c.read("orders", Cursor("2026-11-01T00:05:30Z", "PO-0006")))
    since = int((BASE + timedelta(minutes=4, seconds=30)).timestamp())
    assert app.requests[0].query["updated_since"] == str(since)
    assert ids(pages) == ["PO-0005", "PO-0006", "PO-0007"]
    assert pages[-1].records[-1].updated_at == BASE + timedelta(minutes=6, seconds=30)
    assert c.map("orders", pages[0].records[0].payload)["updated_at"] == \
        BASE + timedelta(minutes=4, seconds=30)


def test_a_post_stream_sends_the_request_as_a_json_body() -> None:
    class Search(FakeApp):
        def __init__(self) -> None:
            super().__init__()
            rows = [{"id": n, "sku": f"SKU-{n}", "price": "1.10", "at": "2026-11-01T00:00:00Z"}
                    for n in range(1, 6)]
            self.route("POST", "/v1/search", lambda req: Response(
                200, {"results": [r for r in rows if r["id"] > (req.json.get("after") or 0)]
                      [:req.json["size"]]}))

    app = Search()
    with FakeServer(app) as server:
        opts = {"auth": {"type": "none"}, "streams": {"prices": {
            "path": "/search", "method": "POST", "params": {"index": "prices"},
            "records": "results", "updated": "at", "since_param": "changed_since",
            "paginator": {"type": "keyset"}, "page_size_param": "size",
            "mapping": {"sku": "sku", "price": "price", "currency": {"const": "CNY"}}}}}
        c = connector(server, opts, auth={}, page_size=2)
        pages = list(c.read("prices", Cursor("2026-11-01T00:10:00Z", "1")))
    assert ids(pages) == ["1", "2", "3", "4", "5"]
    assert app.requests[0].json == {"index": "prices", "changed_since": "2026-11-01T00:00:00Z",
                                    "size": 2}
    assert app.requests[1].json["after"] == 2
    assert c.map("prices", pages[0].records[0].payload) == {
        "external_id": "1", "sku": "SKU-1", "name": None, "currency": "CNY",
        "price": Decimal("1.10"), "updated_at": BASE}


# ------------------------------------------------------------------------------ auth


AUTHS: dict[str, tuple[dict, dict, str]] = {
    # name: (options.auth, cfg auth, the request header/param that must carry the secret)
    "bearer": ({"type": "bearer"}, RestFake.credentials_for("bearer"), "authorization"),
    "basic": ({"type": "basic"}, RestFake.credentials_for("basic"), "authorization"),
    "api_key_header": ({"type": "api_key"}, RestFake.credentials_for("api_key"), "x-api-key"),
    "api_key_query": ({"type": "api_key", "in": "query", "name": "api_key"},
                      RestFake.credentials_for("api_key"), "?api_key"),
}


@pytest.mark.parametrize("name", list(AUTHS))
def test_each_auth_type_is_accepted_and_a_wrong_secret_never_shows(partner, name: str) -> None:
    app, server = partner
    declared, secrets, carrier = AUTHS[name]
    opts = {**copy.deepcopy(PARTNER_OPTIONS), "auth": declared}
    assert len(ids(list(connector(server, opts, auth=secrets).read("orders", None)))) == 7
    req = app.requests[0]
    if carrier.startswith("?"):
        assert req.query[carrier[1:]] == API_KEY and "x-api-key" not in req.headers
    else:
        assert carrier in req.headers

    wrong = {k: f"{v}-but-wrong" for k, v in secrets.items()}
    with pytest.raises(AuthError) as exc:
        list(connector(server, opts, auth=wrong).read("orders", None))
    text = str(exc.value)
    assert "partner" in text and "missing or invalid credentials" in text
    assert all(v not in text for v in wrong.values())


def test_auth_none_and_static_headers(partner) -> None:
    app, server = partner
    opts = {**copy.deepcopy(PARTNER_OPTIONS), "auth": {"type": "none"},
            "headers": {"Accept-Version": "2"}}
    with pytest.raises(AuthError):
        list(connector(server, opts, auth={}).read("orders", None))
    assert app.requests[0].headers["accept-version"] == "2"
    assert "authorization" not in app.requests[0].headers


# ------------------------------------------------------------------------------ errors


def test_errors_inside_http_200_are_raised_when_declared(partner) -> None:
    app, server = partner
    body = {"error": {"code": "maintenance", "message": "read-only window"}}
    app.faults.add(200, body=body)
    with pytest.raises(ApiError) as exc:
        list(connector(server, {**PARTNER_OPTIONS, "error_path": "error"}).read("orders", None))
    assert str(exc.value).startswith("partner: read-only window (maintenance)")
    app.faults.add(200, body=body)  # undeclared: the missing record list is the error
    with pytest.raises(ApiError, match="no record list at 'data.items'"):
        list(connector(server).read("orders", None))


def test_the_apis_4xx_error_shape_is_in_the_message(partner) -> None:
    app, server = partner
    opts = options(params={"paging": "sideways"})
    with pytest.raises(ApiError) as exc:
        list(connector(server, opts).read("orders", None))
    assert "invalid_request" in str(exc.value) and "paging must be one of" in str(exc.value)


# ------------------------------------------------------------------------------ mapping


def test_mapping_nested_paths_lines_and_decimal_money(partner) -> None:
    app, server = partner
    c = connector(server)
    payload = next(iter(c.read("orders", None))).records[0].payload
    assert payload["total"] == Decimal("19.10") and payload["items"][0]["unit_price"] == "9.50"
    rec = c.map("orders", payload)
    assert rec == {
        "external_id": "PO-0001",
        "order_no": "PM0001",
        "customer_code": "C00007",
        "customer_email": "buyer0@example.com",
        "ordered_at": BASE,
        "updated_at": BASE + timedelta(seconds=30),
        "currency": "CNY",
        "total": Decimal("19.10"),
        "ship_region": "north",
        "lines": [
            {"line_no": 1, "sku": "SKU-00001", "qty": Decimal(2), "unit_price": Decimal("9.50")},
            {"line_no": 2, "sku": "SKU-00002", "qty": Decimal(1), "unit_price": Decimal("0.10")},
        ],
    }
    assert sum(ln["qty"] * ln["unit_price"] for ln in rec["lines"]) == rec["total"]  # exact


def test_missing_values_are_none_and_unparseable_ones_are_rejected(partner) -> None:
    app, server = partner
    app.load([neutral_order(0, customer_email=None, ship_region=None, lines=[]),
              neutral_order(1, lines=[{"line_no": 1, "sku": "S", "qty": 1,
                                       "unit_price": "N/A"}])])
    c = connector(server, page_size=None)
    records = {r.external_id: r.payload for p in c.read("orders", None) for r in p.records}
    first = c.map("orders", records["PO-0001"])
    assert first["customer_email"] is None and first["ship_region"] is None
    assert first["lines"] == []
    with pytest.raises(MappingError, match=r"items\[1\]\.unit_price: not a number: 'N/A'"):
        c.map("orders", records["PO-0002"])


def test_every_kind_maps_to_exactly_its_canonical_keys() -> None:
    for kind, keys in KINDS.items():
        opts = {"streams": {kind: {"path": "/x", "updated": "u", "paginator": {"type": "offset"},
                                   "mapping": {}}}}
        stream = declare("p", opts).streams[kind]
        rec = map_record(stream, {"id": 7, "u": "2026-11-01T08:00:00+08:00"})
        expected = set(keys) | ({"lines"} if kind == "orders" else set())
        assert set(rec) == expected
        assert rec["external_id"] == "7" and rec["updated_at"] == BASE


def test_receivables_dates_constants_list_indexes_and_unix_numbers() -> None:
    opts = {"streams": {"receivables": {
        "path": "/open-items", "id": "doc.no", "updated": "changed",
        "paginator": {"type": "page"},
        "mapping": {"invoice_no": "doc.no", "order_ref": "refs.0", "customer_code": "party.code",
                    "currency": {"const": "CNY"}, "amount": "amount", "open_amount": "open",
                    "issued_at": "issued", "due_date": "due"}}}}
    stream = declare("erp", opts).streams["receivables"]
    rec = map_record(stream, {
        "doc": {"no": "INV-9"}, "refs": ["PM0001", "PM0002"], "party": {"code": "C00001"},
        "amount": Decimal("100.005"), "open": "40.00", "issued": 1793145600,
        "due": "2026-11-30", "changed": "2026-11-01T00:00:00Z"})
    assert rec == {
        "external_id": "INV-9", "invoice_no": "INV-9", "order_ref": "PM0001",
        "customer_code": "C00001", "currency": "CNY", "amount": Decimal("100.005"),
        "open_amount": Decimal("40.00"), "issued_at": datetime(2026, 10, 28, tzinfo=UTC),
        "due_date": date(2026, 11, 30), "updated_at": BASE}
    with pytest.raises(MappingError, match="due: not an ISO-8601 date"):
        map_record(stream, {"doc": {"no": "X"}, "changed": "2026-11-01T00:00:00Z",
                            "due": "2026-13-40"})
    with pytest.raises(MappingError, match="doc.no: missing"):
        map_record(stream, {"changed": "2026-11-01T00:00:00Z"})


def test_declared_line_numbers_and_an_object_where_text_belongs() -> None:
    opts = options(lines={"path": "items", "mapping": {"line_no": "pos", "sku": "sku"}},
                   mapping={"customer_code": "buyer"})
    stream = declare("p", opts).streams["orders"]
    rec = map_record(stream, {"id": "1", "updated_at": "2026-11-01T00:00:00Z", "buyer": "C1",
                              "items": [{"pos": "10", "sku": "A"}, {"sku": "B"}]})
    assert [ln["line_no"] for ln in rec["lines"]] == [10, 2]
    with pytest.raises(MappingError, match="buyer: expected a value, got a mapping"):
        map_record(stream, {"id": "1", "updated_at": "2026-11-01T00:00:00Z",
                            "buyer": {"code": "C1"}})


# ------------------------------------------------------------------------------ sandbox


def test_the_sandbox_serves_the_rest_fake_with_its_declaration() -> None:
    dataset = type("D", (), {"orders": {"rest": [neutral_order(i) for i in range(3)]}})()
    with start_sandbox(dataset, systems=("rest",)) as sb:
        src = sb.sources()["rest"]
        assert src["base_url"].endswith(BASE_PATH) and src["options"] == PARTNER_OPTIONS
        c = build_connector("partner", {"system": "rest", "rate_limit": 0, **src})
        assert ids(list(c.read("orders", None))) == ["PO-0001", "PO-0002", "PO-0003"]
        assert sb.apps["rest"].requests[0].path == ORDERS_PATH
