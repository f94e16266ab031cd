"""The missed-order audit: ask every order source how many orders it has, and compare.

"Missed" is measured against the source's own answer, not against our cursor: for each source
with the ``orders`` role the connector lists the orders (``read("orders", None)``, a full
listing, or from ``since`` on), the distinct external ids are counted, and each id is looked
up in what the warehouse accounts for from that source — an ``orders`` row or a
``rejected_records`` row. missed = source ids not accounted for; rate = missed / source count.
It must be 0. The first ``show`` missing ids are listed for ops.

A connector that offers ``count(stream) -> int`` (none does today) is asked that first: when
the count equals the warehouse's, the listing is skipped. Equal counts could hide one missing
order behind one the source has since deleted, which is why a listing is the default.

Plain Python, no Prefect: the order_to_cash flow calls ``audit_sources`` after its stages, and
``orderhub kpis --audit`` on demand. The results are stored as the day's ``missed_rate`` in
``kpi_daily`` (``warehouse.kpis.record_audit``).

``source_total_readers`` gives the data-accuracy KPI each source's own reading of an order's
total: the connector's mapping, applied to a stored raw payload (no request is made).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from connectors.base import Connector, Cursor, to_iso
from connectors.http import SourceError
from connectors.registry import build_connector
from flows.config import Settings
from flows.console import progress
from warehouse import kpis

STREAM = "orders"
SHOW = 20  # missing ids listed per source


def audit_sources(settings: Settings, engine: Engine, run_id: str, *,
                  since: datetime | None = None, show: int = SHOW,
                  record: bool = True) -> dict[str, Any]:
    """Audit every order source; store the day's missed-order rate unless ``record`` is False.

    Returns ``{"run_id", "window_since", "source_count", "missed", "rate", "ok", "sources":
    {name: {...}}}``; ``ok`` is True when every source answered and nothing is missed. A source
    that cannot be read has an ``error`` (one line) and no figures, and makes ``ok`` False.
    """
    per_source = {name: audit_source(settings, engine, name, since=since, show=show)
                  for name in settings.sources_with_role(STREAM)}
    measured = [r for r in per_source.values() if not r.get("error")]
    source_count = sum(r["source_count"] for r in measured)
    missed = sum(r["missed"] for r in measured)
    if record:
        kpis.record_audit(engine, run_id, datetime.now(UTC).date(), per_source)
    return {
        "run_id": run_id,
        "window_since": since,
        "source_count": source_count,
        "missed": missed,
        "rate": _rate(missed, source_count),
        "ok": missed == 0 and len(measured) == len(per_source),
        "sources": per_source,
    }


def audit_source(settings: Settings, engine: Engine, name: str, *,
                 since: datetime | None = None, show: int = SHOW) -> dict[str, Any]:
    """One source: its count, the warehouse's, and the ids it has that we do not."""
    try:
        connector = build_connector(name, settings.connector_config(name))
    except ValueError as exc:  # ConfigError (a secret not set), a bad system: this source only
        progress("audit %s: %s", name, exc)
        return {"source": name, "error": str(exc)}
    try:
        counted = _count_shortcut(connector, engine, name) if since is None else None
        if counted is not None:
            return counted
        return _listing(connector, engine, name, since, show)
    except SourceError as exc:  # one unreachable source must not hide the others' figures
        progress("audit %s: %s", name, exc)
        return {"source": name, "error": str(exc)}
    finally:
        connector.close()


def source_total_readers(settings: Settings) -> dict[str, kpis.SourceTotal]:
    """source name -> (raw order payload -> the source's total), for every order source.

    The reader is the connector's own mapping, so the total is read exactly as ingest read it.
    Only ``map`` is called: no request is sent and no secret is needed, so the source's config
    is used with its secret references unresolved."""
    readers: dict[str, kpis.SourceTotal] = {}
    for name in settings.sources_with_role(STREAM):
        readers[name] = _total_reader(build_connector(name, dict(settings.sources[name])))
    return readers


# ---------------------------------------------------------------------------------- helpers


def _total_reader(connector: Connector) -> Callable[[dict], Decimal | None]:
    def total(payload: dict) -> Decimal | None:
        return connector.map(STREAM, payload).get("total")

    return total


def _count_shortcut(connector: Connector, engine: Engine, name: str) -> dict[str, Any] | None:
    """The source's cheap count, when it has one and it agrees with the warehouse's."""
    count = getattr(connector, "count", None)
    if not callable(count):
        return None
    source_count = int(count(STREAM))
    held = kpis.warehouse_count(engine, name, STREAM)
    if source_count != held:
        return None  # they differ: the listing says which ids
    return {"source": name, "method": "count", "source_count": source_count, "accounted": held,
            "missed": 0, "rate": _rate(0, source_count), "missing": [], "warehouse_count": held}


def _listing(connector: Connector, engine: Engine, name: str, since: datetime | None,
             show: int) -> dict[str, Any]:
    """Page through the source's orders; each page's new ids are looked up in one query."""
    cursor = Cursor(to_iso(since), "") if since is not None else None
    seen: set[str] = set()  # distinct ids: pages overlap and records repeat
    missing: list[str] = []
    n_missing = 0
    for page in connector.read(STREAM, cursor):
        fresh = [r.external_id for r in page.records if r.external_id not in seen]
        fresh = list(dict.fromkeys(fresh))  # first-seen order, each id once
        if not fresh:
            continue
        seen.update(fresh)
        found = kpis.accounted_ids(engine, name, fresh, STREAM)
        gone = [i for i in fresh if i not in found]
        n_missing += len(gone)
        missing.extend(gone[: max(0, show - len(missing))])
    held = kpis.warehouse_count(engine, name, STREAM)
    result = {"source": name, "method": "listing", "source_count": len(seen),
              "accounted": len(seen) - n_missing, "missed": n_missing,
              "rate": _rate(n_missing, len(seen)), "missing": missing, "warehouse_count": held}
    if since is None:
        # ids we hold that the source no longer lists (deleted there?): for ops, not a miss
        result["not_at_source"] = held - result["accounted"]
    progress("audit %s: %s orders at the source, %s missed", name, f"{len(seen):,}",
             f"{n_missing:,}")
    return result


def _rate(missed: int, total: int) -> Decimal | None:
    return (Decimal(missed) / Decimal(total)).quantize(kpis.RATE) if total else None
