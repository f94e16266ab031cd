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
