"""Drain the outbox for one (target, operation) through its connector.

Rows are marked ``sending`` before the request leaves and ``done`` only on confirmed success, so
a crash in between leaves a ``sending`` row; the next drain asks the connector to look for the
remote document first (``recover=True``) instead of creating a second one (DESIGN invariant 3).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from connectors.registry import build_connector
from flows.config import Settings
from flows.console import progress
from warehouse import outbox

CLAIM_SIZE = 500


def drain(settings: Settings, engine: Engine, run_id: str, target: str, operation: str,
          claim_size: int = CLAIM_SIZE) -> dict[str, Any]:
    counts = {"target": target, "operation": operation, "done": 0, "failed": 0, "recovered": 0}
    connector = None
    after_id = 0
    while True:
        rows = outbox.claim(engine, target, operation, claim_size, after_id=after_id)
        if not rows:
            break
        after_id = rows[-1]["id"]
        connector = connector or build_connector(target, settings.connector_config(target))
        outbox.mark_sending(engine, [r["id"] for r in rows])
        by_key = {r["idempotency_key"]: r for r in rows}
        results = []
        for recover in (False, True):
            docs = [r["payload"] for r in rows if bool(r["recover"]) is recover]
            if docs:
                results += connector.push(operation, docs, recover=recover)
        done = [(by_key[r.key]["id"], r.remote_id) for r in results if r.ok]
        failed = [(by_key[r.key]["id"], r.error or "unknown error") for r in results if not r.ok]
        outbox.mark_done(engine, done, run_id=run_id)  # the run that confirmed it: rollback unit
        outbox.mark_failed(engine, failed)
        counts["done"] += len(done)
        counts["failed"] += len(failed)
        counts["recovered"] += sum(1 for r in rows if r["recover"])
    if counts["done"] or counts["failed"]:
        progress("push %s/%s: %s done, %s failed", target, operation, f"{counts['done']:,}",
                 f"{counts['failed']:,}")
    return counts
