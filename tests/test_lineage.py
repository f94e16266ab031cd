"""Lineage events follow the OpenLineage RunEvent shape (spec 2-0-2): the fields the spec
requires, UUID run ids, facets carrying _producer and _schemaURL."""

from __future__ import annotations

import json
import uuid

from flows.lineage import LineageWriter, dataset, new_run_id

EVENT_TYPES = {"START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"}


def _facets(obj: dict) -> list[dict]:
    out = []
    for key in ("facets", "inputFacets", "outputFacets"):
        out += list((obj.get(key) or {}).values())
    return out


def test_events_have_the_required_shape(tmp_path):
    parent = new_run_id()
    writer = LineageWriter(tmp_path, parent)
    child = str(uuid.uuid5(uuid.UUID(parent), "validate"))
    writer.emit("START", "order_to_cash", parent)
    writer.emit("COMPLETE", "validate", child,
                inputs=[dataset("sqlite:///wh.db", "orders",
                                assertions=[{"assertion": "qty_positive", "success": False}])],
                outputs=[dataset("sqlite:///wh.db", "quarantine", rows=3)])
    writer.emit("FAIL", "push", child, error="kingdee: unreachable")
    events = [json.loads(line) for line in writer.path.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "FAIL"]
    for e in events:
        assert e["eventType"] in EVENT_TYPES
        assert {"eventTime", "producer", "schemaURL", "run", "job"} <= set(e)
        assert e["eventTime"].endswith("Z")
        uuid.UUID(e["run"]["runId"])
        assert e["job"]["namespace"] == "orderhub" and e["job"]["name"]
        for thing in [e["run"], *e["inputs"], *e["outputs"]]:
            for facet in _facets(thing):
                assert facet["_producer"] and facet["_schemaURL"].startswith("https://openlineage.io/")
    validate = events[1]
    assert validate["run"]["facets"]["parent"]["run"]["runId"] == parent
    dq = validate["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert dq == [{"assertion": "qty_positive", "success": False}]
    assert validate["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 3
    assert events[2]["run"]["facets"]["errorMessage"]["message"] == "kingdee: unreachable"
