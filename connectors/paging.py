"""Paginators: tiny, pure objects that say what the next request's page token is.

A stream asks for a fresh paginator per read. The read loop is::

    p = spec.paginator()                     # e.g. KeysetPaginator(100, id_field="_id")
    while True:
        params = p.params()                  # {} on the first page unless the API needs a start
        ... send, extract records ...
        p.advance(records, headers, body)    # computes the next token or sets p.finished
        if p.finished: break

Every paginator refuses a token it has already seen (raises PaginationError), so an API that
answers the same page twice cannot make a read loop forever.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from connectors.http import PaginationError

_LINK_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?([^";,]+)"?')


class Paginator(ABC):
    """Base: token bookkeeping and the repeated-token guard. Subclasses compute the next token."""

    #: request parameter the token travels in (query param or body key, the connector decides)
    param: str

    def __init__(self, page_size: int, *, start: Any = None, source: str = "paginator") -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.page_size = page_size
        self.token: Any = start
        self.finished = False
        self.pages = 0
        self.source = source
        self._seen: set[Hashable] = set()
        if start is not None:
            self._seen.add(_key(start))

    @property
    def first(self) -> bool:
        """True before the first page has been read (filters go only on the first request)."""
        return self.pages == 0

    def params(self) -> dict[str, Any]:
        """The token as request parameters: ``{param: token}``, or {} when there is none."""
        return {} if self.token is None else {self.param: self.token}

    def advance(
        self,
        records: list[Any],
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Record one page; set the next token, or ``finished`` when there is no next page."""
        if self.finished:
            raise PaginationError(self.source, "advance() called after the last page")
        self.pages += 1
        nxt = self.next_token(records, headers or {}, body)
        if nxt is None:
            self.finished = True
            return
        k = _key(nxt)
        if k in self._seen:
            raise PaginationError(
                self.source,
                f"page token {str(nxt)[:80]!r} repeated after page {self.pages}; stopping "
                "instead of looping forever",
            )
        self._seen.add(k)
        self.token = nxt

    @abstractmethod
    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        """The next page's token, or None when the page just read was the last."""


class LinkHeaderPaginator(Paginator):
    """Shopify-style: the next token is ``page_info`` of the ``Link: <...>; rel="next"`` URL."""

    def __init__(self, page_size: int, *, param: str = "page_info", **kw: Any) -> None:
        super().__init__(page_size, **kw)
        self.param = param
        self.next_url: str | None = None

    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        self.next_url = parse_link_header(_header(headers, "Link")).get("next")
        if not self.next_url:
            return None
        values = parse_qs(urlsplit(self.next_url).query).get(self.param)
        if not values:
            raise PaginationError(
                self.source, f'Link rel="next" has no {self.param} parameter'
            )
        return values[0]


class KeysetPaginator(Paginator):
    """Jiandaoyun-style: next token = the last record's id; stop when a page is short."""

    def __init__(
        self, page_size: int, *, id_field: str = "id", param: str = "data_id", **kw: Any
    ) -> None:
        super().__init__(page_size, **kw)
        self.id_field = id_field
        self.param = param

    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        if len(records) < self.page_size:
            return None
        last = records[-1]
        token = last.get(self.id_field) if isinstance(last, Mapping) else None
        if token is None:
            raise PaginationError(self.source, f"last record has no {self.id_field!r} for keyset")
        return token


class OffsetPaginator(Paginator):
    """Kingdee StartRow-style: next start = start + page_size while the page is full.

    The first request already carries the start (``params()`` returns ``{param: 0}``).
    """

    def __init__(
        self, page_size: int, *, param: str = "StartRow", start: int = 0, **kw: Any
    ) -> None:
        super().__init__(page_size, start=start, **kw)
        self.param = param

    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        if len(records) < self.page_size:
            return None
        return int(self.token or 0) + self.page_size


def parse_link_header(value: str | None) -> dict[str, str]:
    """``<u1>; rel="previous", <u2>; rel="next"`` -> {"previous": u1, "next": u2}."""
    if not value:
        return {}
    out: dict[str, str] = {}
    for url, rels in _LINK_RE.findall(value):
        for rel in rels.split():
            out.setdefault(rel.strip().lower(), url.strip())
    return out


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # plain dicts are not case-insensitive
        lname = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lname), None)
    return value


def _key(token: Any) -> Hashable:
    try:
        hash(token)
        return token
    except TypeError:
        return repr(token)


class PageNumberPaginator(Paginator):
    """WordPress/WooCommerce-style: ``page=1, 2, ...`` until the total-pages count or a short page.

    The total comes from a response header (``X-WP-TotalPages``) or a body path
    (``("meta", "total_pages")``) when the API sends one; otherwise a short or empty page ends the
    read. Page numbers never repeat by construction, so the repeated-token guard alone would not
    catch an API that ignores ``page`` and answers page 1 again: this paginator also refuses a page
    whose records (by ``id_field``, else their full content) repeat an earlier page's.
    """

    def __init__(
        self,
        page_size: int,
        *,
        param: str = "page",
        start: int = 1,
        total_pages_header: str | None = None,
        total_pages_path: tuple[str, ...] | str | None = None,
        id_field: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(page_size, start=start, **kw)
        self.param = param
        self.start = start
        self.total_pages_header = total_pages_header
        self.total_pages_path = _path(total_pages_path) if total_pages_path else None
        self.id_field = id_field
        self.total_pages: int | None = None  # as the API last reported it
        self._pages_seen: dict[Hashable, int] = {}  # page fingerprint -> its page number

    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        current = int(self.token)
        if not records:
            return None  # past the end (WooCommerce answers [] for a page beyond the last)
        fingerprint = self._fingerprint(records)
        if fingerprint in self._pages_seen:
            raise PaginationError(
                self.source,
                f"page {current} repeated the records of page {self._pages_seen[fingerprint]} "
                f"({self.param!r} ignored?); stopping instead of looping forever",
            )
        self._pages_seen[fingerprint] = current
        self.total_pages = self._read_total(headers, body)
        if self.total_pages is not None:
            last = self.start + self.total_pages - 1
            return current + 1 if current < last else None
        return current + 1 if len(records) >= self.page_size else None

    def _read_total(self, headers: Mapping[str, str], body: Any) -> int | None:
        raw: Any = None
        if self.total_pages_header:
            raw = _header(headers, self.total_pages_header)
        if raw is None and self.total_pages_path:
            raw = _dig(body, self.total_pages_path)
        if raw is None or raw == "":
            return None
        try:
            return int(str(raw).strip())
        except ValueError:
            where = self.total_pages_header or ".".join(self.total_pages_path or ())
            raise PaginationError(
                self.source, f"total pages {str(raw)[:40]!r} (from {where}) is not a whole number"
            ) from None

    def _fingerprint(self, records: list[Any]) -> Hashable:
        if self.id_field:
            ids = tuple(r.get(self.id_field) if isinstance(r, Mapping) else None for r in records)
            if any(i is not None for i in ids):
                return tuple(_key(i) for i in ids)
        return hash(repr(records))  # no ids: the page's content stands in for them


class CursorFieldPaginator(Paginator):
    """HubSpot/partner-style: the next token is a field of the response body.

    ``cursor_path`` is where it sits (``"meta.next_cursor"``, ``("paging", "next", "after")``);
    the read ends when it is missing, null or "" — or when ``has_more_path`` (e.g. Stripe-like
    ``"has_more"``) is present and false. The token goes back in ``param``.
    """

    def __init__(
        self,
        page_size: int,
        *,
        cursor_path: tuple[str, ...] | str,
        param: str = "cursor",
        has_more_path: tuple[str, ...] | str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(page_size, **kw)
        self.cursor_path = _path(cursor_path)
        self.param = param
        self.has_more_path = _path(has_more_path) if has_more_path else None

    def next_token(self, records: list[Any], headers: Mapping[str, str], body: Any) -> Any:
        if self.has_more_path is not None:
            more = _dig(body, self.has_more_path)
            if more is not None and not more:
                return None
        token = _dig(body, self.cursor_path)
        if token is None or token == "":
            return None
        if isinstance(token, Mapping | list):
            raise PaginationError(
                self.source, f"next cursor at {'.'.join(self.cursor_path)!r} is not a value"
            )
        return token


def _path(path: tuple[str, ...] | str) -> tuple[str, ...]:
    """``"meta.next_cursor"`` or a tuple -> a tuple of keys."""
    return tuple(path.split(".")) if isinstance(path, str) else tuple(path)


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    # Not connectors.base.dig: base imports this module, so this one stays import-free.
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data
