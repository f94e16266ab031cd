"""Runs: one row per flow run. Its id is the ``run_id`` every written row carries (invariant 6)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

from sqlalchemy import Engine, insert, select, update

from warehouse.engine import begin_write
from warehouse.schema import runs

RUNNING = "running"
FINISHED_STATUSES = ("completed", "failed")


class RunNotFound(LookupError):
    pass


def json_safe(value: Any) -> Any:
    """A JSON-serialisable copy: Decimal -> str (exact, never float), datetimes -> ISO-8601,
    sets -> sorted lists, dataclasses/enums/paths/UUIDs -> their plain values. Floats (timings,
    ratios — never money) stay numbers; NaN/inf, which JSON cannot hold, become strings."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return json_safe(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((json_safe(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    raise TypeError(f"run summary: cannot store a {type(value).__name__} ({value!r}) as JSON")


def start_run(engine: Engine, flow: str, parent_id: str | None = None) -> str:
    """Record a new running run and return its id (a UUID4 string)."""
    run_id = str(uuid.uuid4())
    with begin_write(engine) as conn:
        conn.execute(
            insert(runs).values(
                id=run_id,
                flow=flow,
                parent_id=parent_id,
                started_at=datetime.now(UTC),
                status=RUNNING,
            )
        )
    return run_id


def finish_run(engine: Engine, run_id: str, status: str, summary: dict) -> None:
    """Close a run with ``completed`` or ``failed`` and its summary (counts, errors)."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"run status must be one of {FINISHED_STATUSES}, not {status!r}")
    with begin_write(engine) as conn:
        result = conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(status=status, finished_at=datetime.now(UTC), summary=json_safe(summary))
        )
        if result.rowcount != 1:
            raise RunNotFound(f"no run {run_id!r}")


def get_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    return dict(row) if row is not None else None


def list_runs(
    engine: Engine,
    flow: str | None = None,
    *,
    parent_id: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first."""
    query = select(runs).order_by(runs.c.started_at.desc(), runs.c.id).limit(limit)
    if flow is not None:
        query = query.where(runs.c.flow == flow)
    if parent_id is not None:
        query = query.where(runs.c.parent_id == parent_id)
    if status is not None:
        query = query.where(runs.c.status == status)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]
