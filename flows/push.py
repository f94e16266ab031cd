"""Drain the outbox for one (target, operation) through its connector.

Rows are marked ``sending`` before the request leaves and ``done`` only on confirmed success, so
a crash in between leaves a ``sending`` row; the next drain asks the connector to look for the
remote document first (``recover=True``) instead of creating a second one (DESIGN invariant 3).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine

from connectors.base import paused_gc
from connectors.registry import build_connector
from flows.config import Settings
from flows.console import progress
from warehouse import outbox

# rows per claimed batch, unless the connector says (``push_batch``) or the caller. The connector
# sends a batch in requests of its own size (Kingdee: ``batch_size``); a claim and its mark are
# a transaction each, so fewer, larger batches cost the database less: the TPC-H SF 0.1 invoice
# drain on PostgreSQL took 17-20 s with 500, 15-16 s with 1,000 (2,000: 14.7 s, for twice the
# rows left `sending` by a crash)
CLAIM_SIZE = 1000


def drain(settings: Settings, engine: Engine, run_id: str, target: str, operation: str,
          claim_size: int | None = None) -> dict[str, Any]:
    counts = {"target": target, "operation": operation, "done": 0, "failed": 0, "recovered": 0}
    if not outbox.ready_to_drain(engine, target, operation):
        return counts  # nothing to send: no connector built
    connector = build_connector(target, settings.connector_config(target))
    size = claim_size or getattr(connector, "push_batch", None) or CLAIM_SIZE
    # Two batches in flight at most: while one thread sends batch N (the target works on
    # it; this process mostly waits on the socket), this one marks batch N-1's results and
    # claims batch N+1. Claim still commits `sending` before its batch can leave, so a crash
    # leaves at most two batches `sending`, which the next drain looks up before re-creating.
    # One sender thread: the connector sees its batches one at a time and in claim order.
    after_id = 0
    in_flight: deque[tuple[list[dict[str, Any]], Future]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"push-{target}") as sender:
        try:
            while True:
                # paused_gc: a batch is thousands of payload dicts and results that make no
                # cycles; the collector, left on, would walk the whole heap again and again
                with paused_gc():
                    rows = outbox.claim(engine, target, operation, size, after_id=after_id,
                                        sending=True)
                    if rows:
                        after_id = rows[-1]["id"]
                        in_flight.append((rows, sender.submit(_send, connector, operation,
                                                              rows)))
                    # the batch before the newest: its answer is in, or nearly
                    while len(in_flight) > (1 if rows else 0):
                        _record(engine, run_id, *in_flight.popleft(), counts)
                if not rows:
                    break
        finally:
            # on an error: a batch not sent yet stays claimed (`sending`, looked up before it is
            # created next time); one that went out still gets its results recorded
            for rows, sent in in_flight:
                if not sent.cancel() and sent.exception() is None:
                    _record(engine, run_id, rows, sent, counts)
    if counts["done"] or counts["failed"]:
        progress("push %s/%s: %s done, %s failed", target, operation, f"{counts['done']:,}",
                 f"{counts['failed']:,}")
    return counts


def _send(connector: Any, operation: str, rows: list[dict[str, Any]]) -> list[Any]:
    """One claimed batch to the target: the new rows, then those to look up first (``recover``)."""
    results = []
    for recover in (False, True):
        docs = [r["payload"] for r in rows if bool(r["recover"]) is recover]
        if docs:
            results += connector.push(operation, docs, recover=recover)
    return results


def _record(engine: Engine, run_id: str, rows: list[dict[str, Any]], sent: Future,
            counts: dict[str, Any]) -> None:
    """A sent batch's results, in one commit; the target's error (if any) is raised here."""
    by_key = {r["idempotency_key"]: r for r in rows}
    results = sent.result()
    done = [(by_key[r.key]["id"], r.remote_id) for r in results if r.ok]
    failed = [(by_key[r.key]["id"], r.error or "unknown error") for r in results if not r.ok]
    # done: the run that confirmed it becomes the row's run (the rollback unit)
    outbox.mark_results(engine, done, failed, run_id=run_id)
    counts["done"] += len(done)
    counts["failed"] += len(failed)
    counts["recovered"] += sum(1 for r in rows if r["recover"])
