"""PageNumberPaginator and CursorFieldPaginator: pure unit tests (no HTTP)."""

from __future__ import annotations

import pytest

from connectors.http import PaginationError
from connectors.paging import CursorFieldPaginator, PageNumberPaginator

# ----------------------------------------------------------------------------- page numbers


def test_page_number_sends_the_first_page_and_counts_up_to_the_header_total() -> None:
    p = PageNumberPaginator(2, total_pages_header="X-WP-TotalPages", id_field="id")
    assert p.first and p.params() == {"page": 1}
    p.advance([{"id": 1}, {"id": 2}], {"X-WP-TotalPages": "3"})
    assert p.params() == {"page": 2} and p.total_pages == 3
    p.advance([{"id": 3}, {"id": 4}], {"x-wp-totalpages": "3"})  # plain dicts: any case
    assert p.params() == {"page": 3}
    p.advance([{"id": 5}, {"id": 6}], {"X-WP-TotalPages": "3"})  # full, but the last by count
    assert p.finished and p.pages == 3


def test_page_number_total_from_the_body_and_a_zero_based_start() -> None:
    p = PageNumberPaginator(2, param="p", start=0, total_pages_path="meta.total_pages")
    assert p.params() == {"p": 0}
    p.advance([{"id": 1}, {"id": 2}], {}, {"meta": {"total_pages": 2}})
    assert p.params() == {"p": 1}
    p.advance([{"id": 3}, {"id": 4}], {}, {"meta": {"total_pages": 2}})
    assert p.finished


def test_page_number_without_a_total_stops_on_a_short_or_empty_page() -> None:
    p = PageNumberPaginator(2)
    p.advance([{"id": 1}, {"id": 2}])
    p.advance([{"id": 3}])
    assert p.finished and p.pages == 2
    q = PageNumberPaginator(2, total_pages_header="X-Total-Pages")
    q.advance([], {"X-Total-Pages": "9"})  # past the end: WooCommerce answers []
    assert q.finished


def test_page_number_refuses_an_api_that_ignores_the_page_parameter() -> None:
    p = PageNumberPaginator(2, total_pages_header="X-WP-TotalPages", id_field="id", source="woo")
    p.advance([{"id": 1}, {"id": 2}], {"X-WP-TotalPages": "5"})
    with pytest.raises(PaginationError) as exc:
        p.advance([{"id": 1}, {"id": 2}], {"X-WP-TotalPages": "5"})
    assert "woo" in str(exc.value) and "page 2 repeated the records of page 1" in str(exc.value)


def test_page_number_repeat_check_without_ids_compares_content() -> None:
    p = PageNumberPaginator(1)
    p.advance([{"sku": "A"}])
    p.advance([{"sku": "B"}])
    with pytest.raises(PaginationError):
        p.advance([{"sku": "A"}])  # cycling back to page 1's content


def test_page_number_unreadable_total_is_an_error() -> None:
    p = PageNumberPaginator(1, total_pages_header="X-WP-TotalPages")
    with pytest.raises(PaginationError) as exc:
        p.advance([{"id": 1}], {"X-WP-TotalPages": "many"})
    assert "not a whole number" in str(exc.value)


# --------------------------------------------------------------------------------- cursors


def test_cursor_field_follows_the_body_token_until_null() -> None:
    p = CursorFieldPaginator(2, cursor_path="meta.next_cursor")
    assert p.params() == {}
    p.advance([1, 2], {}, {"meta": {"next_cursor": "c1"}})
    assert p.params() == {"cursor": "c1"}
    p.advance([3, 4], {}, {"meta": {"next_cursor": "c2"}})
    assert p.params() == {"cursor": "c2"}
    p.advance([5], {}, {"meta": {"next_cursor": None}})
    assert p.finished and p.pages == 3


def test_cursor_field_tuple_path_custom_param_and_empty_string_ends() -> None:
    p = CursorFieldPaginator(2, cursor_path=("paging", "next", "after"), param="after")
    p.advance([1, 2], {}, {"paging": {"next": {"after": "42"}}})
    assert p.params() == {"after": "42"}
    p.advance([3], {}, {"paging": {"next": {"after": ""}}})
    assert p.finished


def test_cursor_field_has_more_false_ends_even_with_a_token() -> None:
    p = CursorFieldPaginator(2, cursor_path="next", has_more_path="has_more")
    p.advance([1, 2], {}, {"next": "n1", "has_more": True})
    assert p.params() == {"cursor": "n1"}
    p.advance([3, 4], {}, {"next": "n2", "has_more": False})
    assert p.finished


def test_cursor_field_repeated_token_is_refused() -> None:
    p = CursorFieldPaginator(2, cursor_path="next", source="partner")
    p.advance([1, 2], {}, {"next": "same"})
    with pytest.raises(PaginationError) as exc:
        p.advance([1, 2], {}, {"next": "same"})
    assert "partner" in str(exc.value) and "repeated" in str(exc.value)


def test_cursor_field_that_is_an_object_is_an_error() -> None:
    p = CursorFieldPaginator(2, cursor_path="next")
    with pytest.raises(PaginationError):
        p.advance([1, 2], {}, {"next": {"id": 3}})
