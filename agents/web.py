"""The worker's HTTP endpoints: synchronous inference, typed reads, health, metrics.

    POST /pipelines/{name}/infer      a record in any input format (JSON, V2, Avro)
    POST /v2/models/{name}/infer      Open Inference Protocol V2
    POST /reads/{name}                a typed read of the storage this worker owns
                                      (sinks/reads.py: logs, counts, pages, assay results,
                                      previews, runs, run logs), JSON arguments, never SQL
    GET  /health                      liveness and readiness, with what is served and refused
    GET  /health/live                 200 while the worker takes records from its input topics
    GET  /health/ready                200 once every deployment is served, else 503 and why
    GET  /metrics                     Prometheus: records in/out/dead per pipeline, batch
                                      latency, lag, load failures, time per stage
    GET  /metrics/stages              time per stage (decode, infer, ...) as JSON (bench/)

On a secured platform inference needs an owner's or collaborator's credential (or an API key
with scope infer) and reads a member's (or scope read): 401 without a good one, 403 when it
may not (control/registry/http_auth.py). Health and metrics are open on the bind address. A request
is served in-process by the deployed version (not through the input topic) and logged like
any other inference; a bad request gets a 4xx with the reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View
from pydantic import ValidationError

from agents.http_guard import CHALLENGE, Guard
from agents.metrics import CONTENT_TYPE, worker_exposition
from control.registry.http_auth import Forbidden, Principal, Unauthenticated, authorize, may_infer
from schemas.errors import InferstreamError
from sinks.access import to_wire
from sinks.reads import READS, Read
from sinks.storage import StorageError

if TYPE_CHECKING:
    from agents.serving.dataplane import Serving
    from agents.serving.deployments import DeploymentManager
    from control.registry.state import Registry
    from sinks.log_sink import LogSink
    from sinks.storage import Storage


def register(app: faust.App, manager: DeploymentManager, sink: LogSink, guard: Guard) -> None:
    """Add the inference, read and health pages to the app's web server."""

    def identify(view: View, request: Request, body: bytes) -> Principal | Response:
        if guard.registry() is None:
            return view.error(503, "the worker is still reading the registry; retry shortly",
                              headers={"Retry-After": "1"})
        try:
            return guard.identify(request, body)
        except Unauthenticated as exc:
            return view.error(401, str(exc), headers={"WWW-Authenticate": CHALLENGE})

    def find(request: Request, name: str, principal: Principal
             ) -> tuple[Serving | None, int, str]:
        workspace = request.query.get("workspace")
        matches = [s for (ws, p), s in manager.served.items()
                   if p == name and workspace in (None, ws)]
        if len(matches) > 1:  # the caller's own, when the name is deployed in several
            registry = guard.registry()
            matches = [s for s in matches if registry is not None
                       and may_infer(registry, principal, s.deployment.workspace)] or matches
        if not matches:
            where = f" in workspace {workspace!r}" if workspace else ""
            return None, 404, f"pipeline {name!r} is not deployed{where}"
        if len(matches) > 1:
            return None, 400, (f"pipeline {name!r} is deployed in several workspaces; "
                               "add ?workspace=NAME")
        return matches[0], 200, ""

    async def infer(view: View, request: Request, name: str) -> Response:
        body = await request.read()
        principal = identify(view, request, body)
        if not isinstance(principal, Principal):
            return principal
        serving, status, reason = find(request, name, principal)
        if serving is None:
            return view.error(status, reason)
        try:
            authorize(guard.registry(), principal, serving.deployment.workspace, "infer")
        except Forbidden as exc:
            return view.error(403, str(exc))
        answer = await manager.plane.serve_request(serving, body, f"http:{uuid.uuid4().hex}")
        if answer.status != 200:
            return view.error(answer.status, str(answer.body))
        return view.bytes(answer.body, content_type=answer.content_type)

    @app.page("/pipelines/{name}/infer")
    class PipelineInfer(View):
        async def post(self, request: Request, name: str) -> Response:
            return await infer(self, request, name)

    @app.page("/v2/models/{name}/infer")
    class V2Infer(View):
        async def post(self, request: Request, name: str) -> Response:
            return await infer(self, request, name)

    @app.page("/reads/{name}")
    class Reads(View):
        """A typed read of the storage this worker owns, for callers that may read it."""

        async def post(self, request: Request, name: str) -> Response:
            read = READS.get(name)
            if read is None:
                return self.error(404, f"unknown read {name[:64]!r}; reads: "
                                  f"{', '.join(sorted(READS))}")
            body = await request.read()
            principal = identify(self, request, body)
            if not isinstance(principal, Principal):
                return principal
            storage = sink.storage
            if storage is None:
                return self.error(409, "this worker does not own the storage")
            try:
                args = read.args.model_validate_json(body)
            except (ValidationError, InferstreamError) as exc:
                return self.error(400, f"bad arguments of read {name}: {str(exc)[:2000]}")
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    None, serve_read, read, storage, args, principal)
            except Forbidden as exc:
                return self.error(403, str(exc))
            except StorageError as exc:
                return self.error(400, str(exc))
            return self.bytes(json.dumps({"result": to_wire(result)}, default=str).encode(),
                              content_type="application/json")

    def serve_read(read: Read, storage: Storage, args: Any, principal: Principal) -> Any:
        registry: Registry | None = guard.registry()
        workspace = read.workspace(storage, args)
        if workspace is not None:
            authorize(registry, principal, workspace, "read")  # type: ignore[arg-type]
            refused = read.refuse(registry, args)  # type: ignore[arg-type]
            if refused:
                raise Forbidden(refused)
        return read.run(storage, args, manager.settings.http_request_timeout_s)

    def refused() -> dict[str, str]:
        return {f"{ws}/{p}": reason for (ws, p), reason in manager.refused.items()}

    @app.page("/metrics")
    class Metrics(View):
        """Prometheus' text format: per-pipeline series, then the worker's own."""

        async def get(self, request: Request) -> Response:
            plane = manager.plane
            body = plane.pipeline_metrics.render() + worker_exposition(
                plane.metrics, manager.alive(), manager.not_ready() is None,
                len(manager.refused))
            # Set as a header: aiohttp refuses a charset in its content_type argument.
            return self.bytes(body, headers={"Content-Type": CONTENT_TYPE})

    @app.page("/metrics/stages")
    class StageTimes(View):
        """Where the time goes: nanoseconds per stage since start (agents.metrics)."""

        async def get(self, request: Request) -> Response:
            return self.json(manager.plane.metrics.snapshot())

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            served = {f"{ws}/{p}": s.deployment.version for (ws, p), s in manager.served.items()}
            registry = guard.registry()
            reason = manager.not_ready()
            return self.json({"live": manager.alive(), "ready": reason is None,
                              "reason": reason, "replayed": manager.replayed,
                              "worker": manager.worker, "serving": served,
                              "refused": refused(),
                              "secured": registry.secured if registry else None})

    @app.page("/health/live")
    class Live(View):
        """Liveness: whether to restart the worker."""

        async def get(self, request: Request) -> Response:
            reason = manager.not_live()
            if reason is None:
                return self.json({"live": True})
            return self.json({"live": False, "reason": reason}, status=503)

    @app.page("/health/ready")
    class Ready(View):
        """Readiness: the registry replayed and every deployment served by this worker."""

        async def get(self, request: Request) -> Response:
            reason = manager.not_ready()
            if reason is None:
                return self.json({"ready": True})
            return self.json({"ready": False, "reason": reason, "refused": refused()},
                             status=503)
