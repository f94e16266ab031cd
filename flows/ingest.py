"""Pull one (source, stream) into the warehouse: connector pages -> mapped batches -> landing.

Batches, not rows: pages are gathered up to ``batch_size`` records, mapped, and landed in one
transaction together with the cursor they reach (DESIGN invariant 2).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from connectors.base import Cursor, MappingError, RawRecord
from connectors.registry import build_connector
from flows.config import Settings
from flows.console import progress
from warehouse import load

BATCH_SIZE = 2000


def pull_stream(settings: Settings, engine: Engine, run_id: str, source: str, stream: str,
                batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    connector = build_connector(source, settings.connector_config(source))
    cursor = load.get_cursor(engine, source, stream)
    totals = load.LoadCounts()
    # The connector reads and maps the next batch in a thread while this one lands: landing
    # waits mostly on the database (the server, or SQLite's steps, which release the GIL),
    # reading on files, HTTP or Python. Done in turn, each would wait for the other.
    with _read_ahead(_batches(connector, stream, cursor, batch_size)) as batches:
        for batch in batches:
            with load.paused_gc():  # a landed batch's rows make no cycles: see paused_gc
                totals += load.land_batch(engine, run_id, source, stream, stream,
                                          batch.records, batch.canonical, batch.rejected,
                                          batch.cursor)
            if batch.more:
                progress("%s/%s: %s records so far", source, stream, f"{totals.received:,}")
    progress("%s/%s: %s received, %s new, %s changed, %s rejected", source, stream,
             f"{totals.received:,}", f"{totals.new:,}", f"{totals.changed:,}",
             f"{totals.rejected:,}")
    # File drops set aside whole files they cannot read (each with its reason): say so.
    bad_files = [{"file": name, "reason": reason}
                 for name, reason in getattr(connector, "quarantined_files", [])]
    for bad in bad_files:
        progress("%s/%s: file quarantined: %s", source, stream, bad["reason"])
    return {"source": source, "stream": stream, **totals.as_dict(), "bad_files": bad_files}


@dataclass(slots=True)
class _Batch:
    """Up to ``batch_size`` records, mapped, with the cursor they reach: one landing."""

    records: list[RawRecord]
    canonical: list[tuple[RawRecord, dict]]
    rejected: list[tuple[RawRecord, str]]
    cursor: Cursor | None
    more: bool  # more pages follow


def _batches(connector: Any, stream: str, cursor: Cursor | None,
             batch_size: int) -> Iterator[_Batch]:
    """The stream's pages gathered up to ``batch_size`` records and mapped; a record that does
    not map is rejected with its reason (landed as such, never dropped)."""
    pages = iter(connector.read(stream, cursor))
    more = True
    while more:
        # with the garbage collector paused: the records make no cycles (see paused_gc)
        with load.paused_gc():
            pending: list[RawRecord] = []
            pending_cursor: Cursor | None = None
            more = False
            for page in pages:
                pending.extend(page.records)
                pending_cursor = page.cursor or pending_cursor
                if len(pending) >= batch_size:
                    more = True
                    break
            page = None  # noqa: F841 - the last page's records go with the batch
            if not pending and not pending_cursor:
                return
            canonical: list[tuple[RawRecord, dict]] = []
            rejected: list[tuple[RawRecord, str]] = []
            for rec in pending:
                try:
                    canonical.append((rec, connector.map(stream, rec.payload)))
                except MappingError as exc:
                    rejected.append((rec, str(exc)))
        yield _Batch(pending, canonical, rejected, pending_cursor, more)


_DONE = object()


@contextmanager
def _read_ahead(batches: Iterator[_Batch]) -> Iterator[Iterator[_Batch]]:
    """``batches``, produced one ahead in a thread of their own. An error there is raised here,
    where the batch it stopped would have been taken; leaving the block early stops the thread
    (at most one batch read ahead is dropped: its cursor was never stored, so it is read again
    next time)."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed over, raised by the consumer
            put(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # the connector's open file or response, now, in this thread

    def consume() -> Iterator[_Batch]:
        while (item := handoff.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    reader = threading.Thread(target=produce, name="ingest-read-ahead", daemon=True)
    reader.start()
    try:
        yield consume()
    finally:
        stop.set()
        reader.join()
