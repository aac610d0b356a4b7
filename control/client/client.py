"""The Python client: everything the CLI does, for notebooks and CI/CD scripts.

    from control.client import Client
    with Client(user="ann", workspace="fraud") as c:
        v = c.upload_model("scorer", Path("scorer.onnx"))
        c.create_pipeline("scoring")
        c.create_pipeline_version("scoring", [{"model": "scorer"}])
        c.deploy("scoring")

A change publishes a control event, signed with the actor's key when there is one (`key`,
--key-file, or the key `inferstream login` recorded), and waits for its status record; a
rejection raises Rejected with the reason. Reads replay the control topic and show only the
workspaces the actor is a member of; assays and inference logs come from
control.client.monitoring, which reads ClickHouse.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control.client.credentials import signing_key
from control.client.http import HttpClient
from control.client.keys import read_private_key
from control.client.models import ModelClient
from control.client.monitoring import Monitoring
from control.client.redrives import RedriveClient
from control.client.replays import ReplayClient
from control.client.rules import RuleClient
from control.client.users import AccessClient
from control.client.workloads import WorkloadClient
from control.config import Settings
from control.kafka import (
    consumer,
    end_offsets,
    ensure_topics,
    platform_topics,
    producer,
    read_until_end,
)
from control.registrar import limits_of
from control.registry.chains import RULES
from control.registry.collector import collector_paused
from control.registry.events import ControlEvent, ControlStatus
from control.registry.fold import fold
from control.registry.rules import may_read
from control.registry.state import (
    Deployment,
    Model,
    Pipeline,
    PipelineVersion,
    Registry,
    Step,
    step_models,
)
from control.registry.steps import step_from_json, step_to_avro
from control.topic_inference import Reply, infer_through_topics
from schemas.errors import BrokerError, ConfigError, DecodeError, Rejected, StatusTimeout

StepLike = Step | Mapping[str, Any]


def _next_status(c: Any, event_id: str, wait: float,
                 wanted: Callable[[ControlStatus], bool]) -> ControlStatus | None:
    """The next status of event_id that `wanted` accepts, or None after `wait` seconds."""
    deadline = time.monotonic() + wait
    key = event_id.encode()
    while time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is None or msg.error():
            if msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                raise BrokerError(f"reading statuses: {msg.error()}")
            continue
        if msg.key() == key:
            status = ControlStatus.from_bytes(msg.value())
            if wanted(status):
                return status
    return None


class Client(AccessClient, ModelClient, Monitoring, WorkloadClient, RuleClient, ReplayClient,
             RedriveClient,
             HttpClient):
    """One operator's connection to an inferstream platform.

    Users and workspaces come from AccessClient; uploads from ModelClient; assays and logs
    from Monitoring; connections, orchestrations, tasks from WorkloadClient; rules that act on
    alerts and route pauses from RuleClient; replays from ReplayClient; dead-letter
    redrives from RedriveClient; API keys and requests to workers from HttpClient.

    key: the private key (or its PEM file) that signs this user's events; default:
    Settings.key_file, else the key `inferstream login` recorded for the user, else none.
    """

    def __init__(
        self, settings: Settings | None = None, *, user: str | None = None,
        workspace: str | None = None, key: Ed25519PrivateKey | Path | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.user = user or self.settings.user  # else the one logged in: see _actor()
        self.workspace = workspace or self.settings.workspace
        self._key = read_private_key(key) if isinstance(key, str | Path) else key
        self._key_looked_up = self._key is not None
        self._producer = None
        self._topics_ready = False
        self._folded: tuple[Registry, int] = (Registry(), 0)  # and the offset after it

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    # -- events ------------------------------------------------------------------------------

    def send(
        self, type: str, payload: Mapping[str, Any], *, workspace: str | None = None,
        scoped: bool = True, check: bool = True, timeout: float | None = None,
        worker_wait: float = 0.0,
    ) -> ControlStatus:
        """Publish one control event and wait for its status; Rejected when check and rejected."""
        event = ControlEvent(
            type=type, payload=dict(payload), actor=self._actor(),
            workspace=(workspace or self.workspace) if scoped else None,
        )
        key = self._signing_key()
        if key is not None:
            event = event.signed_with(key)
        status = self.publish(event.to_bytes(), event.event_id, timeout, worker_wait)
        if check and not status.accepted:
            raise Rejected(status.reason or "rejected")
        return status

    def publish(self, data: bytes, event_id: str, timeout: float | None = None,
                worker_wait: float = 0.0) -> ControlStatus:
        """Put raw bytes on the control topic and wait for the status of event_id.

        With worker_wait, an accepted deploy or rollback also waits that long for the first
        worker to report that it serves the version, or that it cannot load it (rejected).
        """
        self._ensure_topics()
        status_topic = self.settings.topic("control.status")
        start = end_offsets(self.settings, status_topic)
        c = consumer(self.settings, **{"enable.partition.eof": False})
        c.assign([TopicPartition(status_topic, p, o) for p, o in start.items()])
        try:
            p = self._get_producer()
            p.produce(self.settings.topic("control"), key=event_id.encode(), value=data)
            if p.flush(30):
                raise BrokerError(f"control event {event_id} was not delivered within 30s")
            wait = timeout if timeout is not None else self.settings.status_timeout_s
            status = _next_status(c, event_id, wait, lambda s: "worker" not in s.result)
            if status is None:
                raise StatusTimeout(
                    f"no status for control event {event_id} after {wait:.0f}s: is a registrar "
                    f"running on {self.settings.bootstrap_servers} (`inferstream up` or "
                    "`inferstream worker`)?"
                )
            if status.accepted and worker_wait > 0:
                served = _next_status(c, event_id, worker_wait, lambda s: "worker" in s.result)
                return served or replace(status, result={**status.result, "worker": ""})
            return status
        finally:
            c.close()

    def statuses(self) -> list[ControlStatus]:
        """The status records still on the status topic that the acting user may see (their
        own, and those of workspaces they may read), oldest first."""
        self._ensure_topics()
        registry, actor = self.registry(), self._actor()
        out = []
        for msg in read_until_end(self.settings, self.settings.topic("control.status")):
            try:
                status = ControlStatus.from_bytes(msg.value())
            except DecodeError:
                continue
            if status.actor == actor or (status.workspace is not None and may_read(
                    registry, actor, status.workspace)) or _is_admin(registry, actor):
                out.append(status)
        return out

    # -- reads -------------------------------------------------------------------------------

    def events(self) -> list[ControlEvent]:
        """Every decodable event on the control topic, in order (undecodable ones are skipped)."""
        with collector_paused():  # 100k events make 100k objects for the collector to scan
            return list(self._events(OFFSET_BEGINNING))

    def _events(self, start: int, end: int | None = None) -> Iterator[ControlEvent]:
        self._ensure_topics()
        for msg in read_until_end(self.settings, self.settings.topic("control"), start=start,
                                  ends=None if end is None else {0: end}):
            with contextlib.suppress(DecodeError):
                yield ControlEvent.from_bytes(msg.value(), msg.offset())

    def registry(self) -> Registry:
        """The registry as of now: the control topic replayed, each event folded as it is
        read. A client folds only the events since its last call (a command that reads the
        registry twice replays the log once)."""
        self._ensure_topics()
        registry, position = self._folded
        end = end_offsets(self.settings, self.settings.topic("control")).get(0, 0)
        if end == position:
            return registry
        if end < position:  # the topic is not the one folded (made again): from its start
            registry, position = Registry(), 0
        registry = fold(self._events(position or OFFSET_BEGINNING, end), registry,
                        limits_of(self.settings))
        self._folded = (registry, end)
        return registry

    def models(self, workspace: str | None = None) -> list[Model]:
        ws, registry = self._readable(workspace)
        return [m for (w, _), m in sorted(registry.models.items()) if w == ws]

    def model(self, name: str, workspace: str | None = None) -> Model:
        ws, registry = self._readable(workspace)
        model = registry.models.get((ws, name))
        if model is None:
            raise Rejected(f"unknown model {name!r} in workspace {ws!r}")
        return model

    def pipelines(self, workspace: str | None = None) -> list[Pipeline]:
        ws, registry = self._readable(workspace)
        return [p for (w, _), p in sorted(registry.pipelines.items()) if w == ws]

    def pipeline(self, name: str, workspace: str | None = None) -> Pipeline:
        ws, registry = self._readable(workspace)
        pipeline = registry.pipelines.get((ws, name))
        if pipeline is None:
            raise Rejected(f"unknown pipeline {name!r} in workspace {ws!r}")
        return pipeline

    def deployments(self, workspace: str | None = None) -> list[Deployment]:
        ws, registry = self._readable(workspace)
        return [d for (w, _), d in sorted(registry.deployments.items()) if w == ws]

    # -- pipelines and deployments ---------------------------------------------------------------

    def create_pipeline(self, name: str, description: str | None = None,
                        workspace: str | None = None) -> Pipeline:
        ws = self._ws(workspace)
        self.send("CreatePipeline", {"name": name, "description": description}, workspace=ws)
        return self.pipeline(name, ws)

    def create_pipeline_version(self, pipeline: str, steps: Sequence[StepLike],
                                workspace: str | None = None,
                                result_steps: Sequence[int] = (),
                                validations: Mapping[str, str] | None = None) -> PipelineVersion:
        """A new version of a pipeline from steps (dataclasses or their JSON form); its results
        carry the outputs of result_steps (numbers from 1; default: the last step) and the names
        of the validations (name -> expression, docs/data-plane.md) each record failed."""
        ws, registry = self._readable(workspace)

        def latest(model: str) -> int:
            found = registry.models.get((ws, model))
            if found is None:
                raise Rejected(f"unknown model {model!r} in workspace {ws!r}")
            return found.latest.version

        parsed = [s if not isinstance(s, Mapping) else step_from_json(s, latest) for s in steps]
        status = self.send("CreatePipelineVersion", {
            "pipeline": pipeline, "steps": [step_to_avro(s) for s in parsed],
            "result_steps": list(result_steps), "rules": RULES,
            "validations": [{"name": n, "expression": e} for n, e in (validations or {}).items()],
        }, workspace=ws)
        return self.pipeline(pipeline, ws).versions[int(status.result["version"]) - 1]

    def deploy(self, pipeline: str, version: int | None = None, *, batch_size: int = 64,
               batch_wait_ms: int = 20, workspace: str | None = None,
               worker_wait: float = 0.0) -> Deployment:
        """Deploy a version; with worker_wait, also wait for a worker to serve it (or refuse)."""
        ws = self._ws(workspace)
        self.send("Deploy", {"pipeline": pipeline, "version": version, "batch_size": batch_size,
                             "batch_wait_ms": batch_wait_ms, "rules": RULES}, workspace=ws,
                  worker_wait=worker_wait)
        return self.registry().deployments[(ws, pipeline)]

    def undeploy(self, pipeline: str, workspace: str | None = None) -> Deployment:
        ws = self._ws(workspace)
        self.send("Undeploy", {"pipeline": pipeline}, workspace=ws)
        return self.registry().deployments[(ws, pipeline)]

    def rollback(self, pipeline: str, version: int | None = None,
                 workspace: str | None = None, worker_wait: float = 0.0) -> Deployment:
        ws = self._ws(workspace)
        self.send("Rollback", {"pipeline": pipeline, "version": version, "rules": RULES},
                  workspace=ws,
                  worker_wait=worker_wait)
        return self.registry().deployments[(ws, pipeline)]

    def start_canary(self, pipeline: str, version: int, steps: Sequence[int], every_s: int, *,
                     hash_key: str | None = None, max_dead_letter_pp: float = 1.0,
                     max_error_pp: float = 1.0, max_p99_ratio: float = 1.5,
                     p99_slack_ms: float = 5.0, min_records: int = 100,
                     assays: Sequence[str] = (), workspace: str | None = None) -> Deployment:
        """Ramp the deployed pipeline up to `version` (docs/canary.md); returns the deployment
        with its running canary."""
        ws = self._ws(workspace)
        self.send("StartCanary", {
            "pipeline": pipeline, "version": version, "steps": list(steps), "every_s": every_s,
            "hash_key": hash_key, "max_dead_letter_pp": max_dead_letter_pp,
            "max_error_pp": max_error_pp, "max_p99_ratio": max_p99_ratio,
            "p99_slack_ms": p99_slack_ms, "min_records": min_records, "assays": list(assays),
        }, workspace=ws)
        return self.registry().deployments[(ws, pipeline)]

    def abort_canary(self, pipeline: str, reason: str | None = None,
                     workspace: str | None = None) -> Deployment:
        """Stop a running canary: every record goes to the current version again."""
        ws = self._ws(workspace)
        self.send("AbortCanary", {"pipeline": pipeline, "reason": reason}, workspace=ws)
        return self.registry().deployments[(ws, pipeline)]

    # -- inference ---------------------------------------------------------------------------

    def input_schema(self, pipeline: str, version: int | None = None,
                     workspace: str | None = None) -> dict[str, Any]:
        """The Avro schema of a pipeline version's input records (default: the deployed one).

        Producers write records of it with Avro single-object encoding (schemas.codec-style:
        C3 01, the schema's CRC-64-AVRO fingerprint, the body); see agents.records.formats.
        """
        from agents.records.formats import input_schema, input_schema_name

        ws, registry = self._readable(workspace)
        found = registry.pipelines.get((ws, pipeline))
        if found is None or not found.versions:
            raise Rejected(f"pipeline {pipeline!r} in workspace {ws!r} has no version")
        deployed = registry.deployments.get((ws, pipeline))
        number = version or (deployed.version if deployed else len(found.versions))
        chosen = found.version(number)
        if chosen is None:
            raise Rejected(f"pipeline {pipeline!r} has no version {number}")
        first = step_models(chosen.steps[0])[0]
        inputs = registry.models[(ws, first.model)].version(first.version).inputs
        return input_schema(inputs, input_schema_name(ws, pipeline))

    def infer(self, pipeline: str, records: Sequence[bytes | Mapping[str, Any]], *,
              workspace: str | None = None, timeout: float = 60.0) -> list[Reply]:
        """Publish records to a deployed pipeline and wait for each one's result or dead letter.

        A dict is sent as JSON; bytes as they are (JSON, V2 or Avro). Replies come in the
        order of `records`; they are correlated by the Kafka key, a fresh id per record.
        """
        ws = self._ws(workspace)
        deployment = self.registry().deployments.get((ws, pipeline))
        if deployment is None or not deployment.active:
            raise Rejected(f"pipeline {pipeline!r} is not deployed in workspace {ws!r}")
        return infer_through_topics(self.settings, ws, pipeline, records, timeout,
                                    self._get_producer())

    # -- plumbing ----------------------------------------------------------------------------

    def _ws(self, workspace: str | None) -> str:
        ws = workspace or self.workspace
        if not ws:
            raise ConfigError("no workspace: pass --workspace or set INFERSTREAM_WORKSPACE")
        return ws

    def _signing_key(self) -> Ed25519PrivateKey | None:
        if not self._key_looked_up:
            self._key = signing_key(self.settings, self._actor())
            self._key_looked_up = True
        return self._key

    def _ensure_topics(self) -> None:
        if not self._topics_ready:
            ensure_topics(self.settings, platform_topics(self.settings))
            self._topics_ready = True

    def _get_producer(self):
        if self._producer is None:
            self._producer = producer(self.settings)
        return self._producer


def _is_admin(registry: Registry, user: str) -> bool:
    found = registry.users.get(user)
    return bool(found and found.admin and found.active)
