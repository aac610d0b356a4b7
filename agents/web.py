"""The worker's HTTP endpoints: synchronous inference, health, metrics.

    POST /pipelines/{name}/infer      a record in any input format (JSON, V2, Avro)
    POST /v2/models/{name}/infer      Open Inference Protocol V2
    POST /storage/query               read-only SQL on the chDB folder this worker owns
    GET  /health                      liveness and readiness, with what is served and refused
    GET  /health/live                 200 while the worker takes records, else 503 and why
    GET  /health/ready                200 once every deployment is served, else 503 and why
    GET  /metrics                     Prometheus: records in/out/dead per pipeline, batch
                                      latency, lag, load failures, time per stage
    GET  /metrics/stages              time per stage (decode, infer, ...) as JSON (bench/)

A request is served in-process by the deployed version (not through the input
topic) and logged like any other inference; a bad request gets a 4xx with the reason.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import TYPE_CHECKING

import faust
from faust.web import Request, Response, View

from agents.formats import BadRecord, decode_record, encode_result
from agents.metrics import CONTENT_TYPE, worker_exposition
from sinks.access import from_wire, to_wire
from sinks.storage import StorageError

READ_ONLY = re.compile(r"\s*(SELECT|WITH)\b", re.IGNORECASE)
NOT_LIVE = "the worker does not take records from its input topics; restart it"

if TYPE_CHECKING:
    from agents.log_sink import LogSink
    from agents.serving import DeploymentManager, Serving


def register(app: faust.App, manager: DeploymentManager, sink: LogSink) -> None:
    """Add the inference, storage and health pages to the app's web server."""

    def find(request: Request, name: str) -> tuple[Serving | None, int, str]:
        workspace = request.query.get("workspace")
        matches = [s for (ws, p), s in manager.served.items()
                   if p == name and workspace in (None, ws)]
        if not matches:
            where = f" in workspace {workspace!r}" if workspace else ""
            return None, 404, f"pipeline {name!r} is not deployed{where}"
        if len(matches) > 1:
            return None, 400, (f"pipeline {name!r} is deployed in several workspaces; "
                               "add ?workspace=NAME")
        return matches[0], 200, ""

    async def infer(view: View, request: Request, name: str) -> Response:
        serving, status, reason = find(request, name)
        if serving is None:
            return view.error(status, reason)
        body = await request.read()
        try:
            record = decode_record(body, None, serving.specs, f"http:{uuid.uuid4().hex}",
                                   serving.avro, max_bytes=manager.settings.max_record_bytes)
        except BadRecord as exc:
            return view.error(400, str(exc))
        outcome = await asyncio.get_running_loop().run_in_executor(
            None, serving.runner.run, [record])
        shipment = manager.outbox.shipment()
        manager.publish_logs(serving, outcome, shipment)
        await shipment.delivered()
        if outcome.failures:
            return view.error(422, outcome.failures[0].reason)
        result = outcome.results[0]
        value = encode_result(record, result.outputs, manager.meta(serving, result))
        content_type = "avro/binary" if record.format == "avro" else "application/json"
        return view.bytes(value, content_type=content_type)

    @app.page("/pipelines/{name}/infer")
    class PipelineInfer(View):
        async def post(self, request: Request, name: str) -> Response:
            return await infer(self, request, name)

    @app.page("/v2/models/{name}/infer")
    class V2Infer(View):
        async def post(self, request: Request, name: str) -> Response:
            return await infer(self, request, name)

    @app.page("/storage/query")
    class StorageQuery(View):
        """Read-only SQL on the chDB folder this worker owns, for the CLI (loopback only)."""

        async def post(self, request: Request) -> Response:
            if sink.storage is None:
                return self.error(409, "this worker does not own the storage")
            body = from_wire(json.loads(await request.read()))
            sql = body.get("sql", "")
            if not READ_ONLY.match(sql):
                return self.error(400, "only SELECT (or WITH … SELECT) queries are served")
            try:
                rows = await asyncio.get_running_loop().run_in_executor(
                    None, sink.storage.query, sql, body.get("params") or {})
            except StorageError as exc:
                return self.error(400, str(exc))
            return self.bytes(json.dumps({"rows": to_wire(rows)}, default=str).encode(),
                              content_type="application/json")

    def refused() -> dict[str, str]:
        return {f"{ws}/{p}": reason for (ws, p), reason in manager.refused.items()}

    @app.page("/metrics")
    class Metrics(View):
        """Prometheus' text format: per-pipeline series, then the worker's own."""

        async def get(self, request: Request) -> Response:
            body = manager.pipeline_metrics.render() + worker_exposition(
                manager.metrics, manager.alive(), manager.ready, len(manager.refused))
            # Set as a header: aiohttp refuses a charset in its content_type argument.
            return self.bytes(body, headers={"Content-Type": CONTENT_TYPE})

    @app.page("/metrics/stages")
    class StageTimes(View):
        """Where the time goes: nanoseconds per stage since start (agents.metrics)."""

        async def get(self, request: Request) -> Response:
            return self.json(manager.metrics.snapshot())

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            served = {f"{ws}/{p}": s.deployment.version for (ws, p), s in manager.served.items()}
            return self.json({"live": manager.alive(), "ready": manager.ready,
                              "worker": manager.worker, "serving": served,
                              "refused": refused()})

    @app.page("/health/live")
    class Live(View):
        """Liveness: whether to restart the worker."""

        async def get(self, request: Request) -> Response:
            if manager.alive():
                return self.json({"live": True})
            return self.json({"live": False, "reason": not_live()}, status=503)

    @app.page("/health/ready")
    class Ready(View):
        """Readiness: the registry replayed and every deployment served by this worker."""

        async def get(self, request: Request) -> Response:
            reason = not_ready()
            if reason is None:
                return self.json({"ready": True})
            return self.json({"ready": False, "reason": reason, "refused": refused()},
                             status=503)

    def not_live() -> str:
        # The intake says why it stopped, when it knows.
        error = getattr(getattr(manager, "intake", None), "error", None)
        return f"{NOT_LIVE}: {error}" if error else NOT_LIVE

    def not_ready() -> str | None:
        if not manager.ready:
            return "registry not replayed yet: the worker is still catching up on deployments"
        if not manager.alive():
            return not_live()
        if manager.refused:
            return "; ".join(f"{name}: {why}" for name, why in sorted(refused().items()))
        return None
