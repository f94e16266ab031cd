"""Paginators: pure unit tests (no HTTP)."""

from __future__ import annotations

import pytest

from connectors.http import PaginationError
from connectors.paging import (
    KeysetPaginator,
    LinkHeaderPaginator,
    OffsetPaginator,
    parse_link_header,
)


def link(next_token: str | None = None, prev_token: str | None = None) -> dict[str, str]:
    parts = []
    base = "https://shop.example/admin/api/2024-10/orders.json?limit=2"
    if prev_token:
        parts.append(f'<{base}&page_info={prev_token}>; rel="previous"')
    if next_token:
        parts.append(f'<{base}&page_info={next_token}>; rel="next"')
    return {"Link": ", ".join(parts)} if parts else {}


def test_parse_link_header_both_rels() -> None:
    got = parse_link_header('<https://a/x?page_info=p1>; rel="previous", '
                            '<https://a/x?page_info=n1>; rel="next"')
    assert got == {"previous": "https://a/x?page_info=p1", "next": "https://a/x?page_info=n1"}
    assert parse_link_header(None) == {}
    assert parse_link_header("") == {}


def test_link_header_paginator_follows_next_until_absent() -> None:
    p = LinkHeaderPaginator(2)
    assert p.first and p.params() == {}
    p.advance([{}, {}], link("tok1"))
    assert not p.finished and p.params() == {"page_info": "tok1"} and not p.first
    p.advance([{}, {}], link("tok2", prev_token="tok0"))
    assert p.params() == {"page_info": "tok2"}
    p.advance([{}], link(prev_token="tok1"))  # only rel="previous": last page
    assert p.finished and p.pages == 3


def test_link_header_is_case_insensitive_in_plain_dicts() -> None:
    p = LinkHeaderPaginator(2)
    p.advance([{}], {"link": '<https://a/x?page_info=abc&limit=2>; rel="next"'})
    assert p.token == "abc"


def test_link_header_paginator_raises_on_repeated_token() -> None:
    p = LinkHeaderPaginator(2, source="shop")
    p.advance([{}, {}], link("same"))
    with pytest.raises(PaginationError) as exc:
        p.advance([{}, {}], link("same"))
    assert "shop" in str(exc.value) and "repeated" in str(exc.value)


def test_link_without_page_info_is_an_error() -> None:
    p = LinkHeaderPaginator(2)
    with pytest.raises(PaginationError):
        p.advance([{}], {"Link": '<https://a/x?limit=2>; rel="next"'})


def test_keyset_paginator_uses_last_id_and_stops_on_short_page() -> None:
    p = KeysetPaginator(2, id_field="_id")
    assert p.params() == {}
    p.advance([{"_id": "a"}, {"_id": "b"}])
    assert p.params() == {"data_id": "b"}
    p.advance([{"_id": "c"}, {"_id": "d"}])
    assert p.params() == {"data_id": "d"}
    p.advance([{"_id": "e"}])
    assert p.finished


def test_keyset_paginator_stops_on_empty_page() -> None:
    p = KeysetPaginator(2)
    p.advance([])
    assert p.finished


def test_keyset_paginator_raises_on_repeated_page() -> None:
    p = KeysetPaginator(2)
    p.advance([{"id": 1}, {"id": 2}])
    with pytest.raises(PaginationError):
        p.advance([{"id": 1}, {"id": 2}])  # API ignored data_id and answered page 1 again


def test_keyset_paginator_needs_the_id_field() -> None:
    p = KeysetPaginator(1, id_field="_id")
    with pytest.raises(PaginationError):
        p.advance([{"id": 1}])


def test_offset_paginator_counts_up_while_pages_are_full() -> None:
    p = OffsetPaginator(3)
    assert p.params() == {"StartRow": 0}  # the first request already carries the start
    p.advance([[1], [2], [3]])
    assert p.params() == {"StartRow": 3}
    p.advance([[4], [5], [6]])
    assert p.params() == {"StartRow": 6}
    p.advance([[7]])
    assert p.finished and p.pages == 3


def test_offset_paginator_custom_param_and_start() -> None:
    p = OffsetPaginator(10, param="offset", start=20)
    assert p.params() == {"offset": 20}
    p.advance(list(range(10)))
    assert p.params() == {"offset": 30}


def test_advance_after_finished_is_an_error() -> None:
    p = OffsetPaginator(2)
    p.advance([])
    with pytest.raises(PaginationError):
        p.advance([])


def test_offset_repeated_token_guard() -> None:
    class Stuck(OffsetPaginator):
        def next_token(self, records, headers, body):  # type: ignore[no-untyped-def]
            return 0  # a buggy API/offset that never moves

    p = Stuck(2)
    with pytest.raises(PaginationError):
        p.advance([1, 2])


def test_page_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        KeysetPaginator(0)
