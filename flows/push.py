"""Drain the outbox for one (target, operation) through its connector.

Rows are marked ``sending`` before the request leaves and ``done`` only on confirmed success, so
a crash in between leaves a ``sending`` row; the next drain asks the connector to look for the
remote document first (``recover=True``) instead of creating a second one (DESIGN invariant 3).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from connectors.base import paused_gc
from connectors.registry import build_connector
from flows.config import Settings
from flows.console import progress
from warehouse import outbox

CLAIM_SIZE = 500  # rows per batch, unless the connector says (``push_batch``) or the caller


def drain(settings: Settings, engine: Engine, run_id: str, target: str, operation: str,
          claim_size: int | None = None) -> dict[str, Any]:
    counts = {"target": target, "operation": operation, "done": 0, "failed": 0, "recovered": 0}
    if not outbox.ready_to_drain(engine, target, operation):
        return counts  # nothing to send: no connector built
    connector = build_connector(target, settings.connector_config(target))
    size = claim_size or getattr(connector, "push_batch", None) or CLAIM_SIZE
    after_id = 0
    # claim and mark_sending in one commit, before the request leaves; one commit for the
    # batch's results after it
    while True:
        # paused_gc: a batch is thousands of payload dicts and results that make no cycles;
        # the collector, left on, would walk the whole heap again and again meanwhile
        with paused_gc():
            rows = outbox.claim(engine, target, operation, size, after_id=after_id,
                                sending=True)
            if not rows:
                break
            after_id = rows[-1]["id"]
            by_key = {r["idempotency_key"]: r for r in rows}
            results = []
            for recover in (False, True):
                docs = [r["payload"] for r in rows if bool(r["recover"]) is recover]
                if docs:
                    results += connector.push(operation, docs, recover=recover)
            done = [(by_key[r.key]["id"], r.remote_id) for r in results if r.ok]
            failed = [(by_key[r.key]["id"], r.error or "unknown error")
                      for r in results if not r.ok]
            # done: the run that confirmed it becomes the row's run (the rollback unit)
            outbox.mark_results(engine, done, failed, run_id=run_id)
        counts["done"] += len(done)
        counts["failed"] += len(failed)
        counts["recovered"] += sum(1 for r in rows if r["recover"])
    if counts["done"] or counts["failed"]:
        progress("push %s/%s: %s done, %s failed", target, operation, f"{counts['done']:,}",
                 f"{counts['failed']:,}")
    return counts
