"""OpenLineage run events, written as JSON lines to var/lineage/<run id>.jsonl.

We write the events ourselves (a few dicts) rather than pull in a client: the file is the
transport, and the shapes follow the OpenLineage 2-0-2 spec (RunEvent with run, job, inputs,
outputs; dataQualityAssertions as an input facet; outputStatistics as an output facet).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PRODUCER = "https://github.com/orderhub/orderhub"
SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
FACETS = "https://openlineage.io/spec/facets"
NAMESPACE = "orderhub"


def _facet(name: str, version: str, **fields: Any) -> dict[str, Any]:
    return {"_producer": PRODUCER, "_schemaURL": f"{FACETS}/{version}/{name}.json#/$defs/{name}",
            **fields}


def dataset(namespace: str, name: str, *, rows: int | None = None,
            assertions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A dataset with optional row count (output) or data-quality assertions (input)."""
    ds: dict[str, Any] = {"namespace": namespace, "name": name}
    if rows is not None:
        ds["outputFacets"] = {"outputStatistics": _facet(
            "OutputStatisticsOutputDatasetFacet", "1-0-2", rowCount=int(rows))}
    if assertions is not None:
        ds["inputFacets"] = {"dataQualityAssertions": _facet(
            "DataQualityAssertionsDatasetFacet", "1-0-1", assertions=assertions)}
    return ds


class LineageWriter:
    """Collects one run's events and appends them to its file as they happen."""

    def __init__(self, out_dir: Path, parent_run_id: str, parent_job: str = "order_to_cash"):
        self.path = Path(out_dir) / f"{parent_run_id}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.parent_run_id = parent_run_id
        self.parent_job = parent_job

    def emit(self, event_type: str, job: str, run_id: str, *, inputs: list | None = None,
             outputs: list | None = None, error: str | None = None) -> dict[str, Any]:
        facets: dict[str, Any] = {}
        if run_id != self.parent_run_id:
            facets["parent"] = _facet("ParentRunFacet", "1-1-0",
                                      run={"runId": self.parent_run_id},
                                      job={"namespace": NAMESPACE, "name": self.parent_job})
        if error:
            facets["errorMessage"] = _facet("ErrorMessageRunFacet", "1-0-1",
                                            message=error, programmingLanguage="python")
        event = {
            "eventType": event_type,
            "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "producer": PRODUCER,
            "schemaURL": SPEC,
            "run": {"runId": run_id, "facets": facets},
            "job": {"namespace": NAMESPACE, "name": job},
            "inputs": inputs or [],
            "outputs": outputs or [],
        }
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, default=str) + "\n")
        return event


def new_run_id() -> str:
    return str(uuid.uuid4())
