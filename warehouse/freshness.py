"""Did anything a whole-book stage reads change since it last ran? Lets reconcile and the
Parquet exports skip a pass over every invoice, payment and order when nothing was written.

Every row a run writes carries that run's id (schema.py), and ``runs`` records when each run
started and finished. When a stage has run, it leaves a mark: the run, the time taken *before*
it read its inputs, a key (whatever else its result depends on: config, the day) and its
figures. Its inputs are unchanged when the key is the same and no input table holds a row
written by a run that started after the mark, or had not finished by then (so a run writing
while the stage read is caught), the marking run itself excepted (it wrote its rows before the
mark, or into tables the stage does not read). Each probe is one lookup in a ``run_id`` index.

Deletions leave no run id behind; every delete in orderhub comes with writes of the same run
to the same group of tables (re-allocation inserts the new allocations; a removed payment match
changes the invoice's reconciliation row), so the group as a whole is what is compared.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, exists, or_, select

from warehouse.engine import begin_write, dialect_insert
from warehouse.schema import metadata, runs, stage_marks


def now() -> datetime:
    """The mark's time: take it before the stage reads its inputs."""
    return datetime.now(UTC)


def unchanged(engine: Engine, stage: str, tables: tuple[str, ...], key: str) -> dict | None:
    """The figures of the stage's last pass when nothing it reads has changed since, else None."""
    with engine.connect() as conn:
        mark = conn.execute(select(stage_marks).where(stage_marks.c.stage == stage)).first()
        if mark is None or mark.key != key:
            return None
        t = mark.marked_at
        later = select(runs.c.id).where(
            runs.c.id != mark.run_id,
            or_(runs.c.started_at >= t, runs.c.finished_at.is_(None), runs.c.finished_at >= t))
        ids = [r for (r,) in conn.execute(later)]
        for name in tables:
            table = metadata.tables[name]
            if ids and conn.execute(select(exists().where(table.c.run_id.in_(ids)))).scalar():
                return None
    return dict(mark.result or {})


def mark(engine: Engine, stage: str, run_id: str, marked_at: datetime, key: str,
         result: dict[str, Any]) -> None:
    """Record the stage's pass: ``marked_at`` from ``now()`` before it read anything."""
    row = {"stage": stage, "run_id": run_id, "marked_at": marked_at, "key": key[:128],
           "result": result}
    with begin_write(engine) as conn:
        insert = dialect_insert(conn, stage_marks).values(**row)
        conn.execute(insert.on_conflict_do_update(
            index_elements=["stage"], set_={k: v for k, v in row.items() if k != "stage"}))
