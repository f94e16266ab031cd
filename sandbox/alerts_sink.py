"""A fake webhook receiver for alerts: records every POST it gets, checks a bearer token.

    sink = AlertSink(token="sink-token")
    with FakeServer(sink) as server:
        url = server.url + "/hooks/ops"        # alerts.webhook.url
        ...
        sink.received                          # [{"kind": ..., "message": ..., ...}, ...]

A wrong or missing token answers 401 (when ``token`` is set); ``faults`` make it fail like any
fake (e.g. ``sink.faults.add(503, times=5)`` for a webhook that is down).
"""

from __future__ import annotations

from typing import Any

from sandbox.server import FakeApp, Request, Response


class AlertSink(FakeApp):
    def __init__(self, dataset: Any = None, fast: bool = True, token: str | None = None) -> None:
        super().__init__()
        self.token = token
        self.received: list[dict[str, Any]] = []
        self.route("POST", r"/hooks/(?P<name>[\w.-]+)", self.receive)

    def credentials(self) -> dict[str, str]:
        return {"token": self.token} if self.token else {}

    def options(self) -> dict[str, str]:
        return {}

    def receive(self, req: Request) -> Response:
        if self.token and req.header("Authorization") != f"Bearer {self.token}":
            return Response(401, {"error": "bad token"})
        if not isinstance(req.json, dict):
            return Response(400, {"error": "expected a JSON object"})
        self.received.append({**req.json, "_hook": req.path_params["name"]})
        return Response(200, {"ok": True})
