"""Pull one (source, stream) into the warehouse: connector pages -> mapped batches -> landing.

Batches, not rows: pages are gathered up to ``batch_size`` records, mapped, and landed in one
transaction together with the cursor they reach (DESIGN invariant 2).
"""

from __future__ import annotations

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
    pages = iter(connector.read(stream, cursor))
    more = True
    while more:
        # One batch from its first page to its landing with the garbage collector paused, its
        # records dropped before it resumes: they make no cycles, and the collector would
        # otherwise walk the whole batch each time it resumes in between (see paused_gc).
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
            if pending or pending_cursor:
                totals += _land(engine, run_id, connector, source, stream, pending,
                                pending_cursor)
                if more:
                    progress("%s/%s: %s records so far", source, stream, f"{totals.received:,}")
            pending = []
    load.refresh_statistics(engine, stream, totals.new + totals.changed)
    progress("%s/%s: %s received, %s new, %s changed, %s rejected", source, stream,
             f"{totals.received:,}", f"{totals.new:,}", f"{totals.changed:,}",
             f"{totals.rejected:,}")
    # File drops set aside whole files they cannot read (each with its reason): say so.
    bad_files = [{"file": name, "reason": reason}
                 for name, reason in getattr(connector, "quarantined_files", [])]
    for bad in bad_files:
        progress("%s/%s: file quarantined: %s", source, stream, bad["reason"])
    return {"source": source, "stream": stream, **totals.as_dict(), "bad_files": bad_files}


def _land(engine, run_id, connector, source, stream, records, cursor) -> load.LoadCounts:
    canonical: list[tuple[RawRecord, dict]] = []
    rejected: list[tuple[RawRecord, str]] = []
    with load.paused_gc():  # mapped records by the thousand, no cycles: see paused_gc
        for rec in records:
            try:
                canonical.append((rec, connector.map(stream, rec.payload)))
            except MappingError as exc:
                rejected.append((rec, str(exc)))
    return load.land_batch(engine, run_id, source, stream, stream, records, canonical, rejected,
                           cursor)
