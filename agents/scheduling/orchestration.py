"""Executing one run of a task: read the source, chain the pipelines, write the destination.

Records go through the pipelines' Kafka topics (mode "topics": logged and monitored like
any other traffic) or through the same runners in this worker (mode "in-process"); the
results are the same either way. Bad rows go to the errors connection with the reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from agents.connectors import open_writer, read_batches
from agents.records.formats import BadRecord, InputRecord
from agents.serving.dataplane import DataPlane
from agents.serving.model_cache import ModelCache
from agents.serving.runner import PipelineRunner
from control.config import Settings
from control.registry.connections import ConnectionSpec
from control.registry.state import IN_PROCESS, OrchestrationVersion, Registry, Task, step_models
from control.topic_inference import infer_through_topics
from schemas.errors import InferstreamError
from sinks.runs import FAILED, KILLED, PARTIAL, RUNNING, SUCCEEDED, Run, log_line, save_run
from sinks.storage import Storage

log = logging.getLogger(__name__)
Row = dict[str, Any]
Outcome = tuple[list[tuple[int, Row]], list[tuple[int, str]]]  # (index, outputs), (index, why)


class RunFailed(InferstreamError):
    """A run cannot go on; the reason is stored with it."""


class RunExecutor:
    """Runs tasks' orchestrations on this worker, recording every run in storage."""

    def __init__(self, settings: Settings, cache: ModelCache, plane: DataPlane) -> None:
        self.settings, self.cache, self.plane = settings, cache, plane
        self.worker = plane.worker

    def execute(self, storage: Storage, registry: Registry, task: Task, run: Run,
                should_stop: Callable[[], bool]) -> Run:
        """Run it to the end (or until killed); the returned run is saved, whatever happened."""
        run = save_run(storage, replace(run, status=RUNNING, started_at=datetime.now(UTC),
                                        worker=self.worker))
        log_line(storage, run.run_id, f"started on {self.worker}")
        try:
            run = self._execute(storage, registry, task, run, should_stop)
        except Exception as exc:  # recorded, never lost: the run says why it failed
            log.exception("run %s failed", run.run_id)
            log_line(storage, run.run_id, f"failed: {exc}", "error")
            return save_run(storage, replace(run, status=FAILED, error=str(exc),
                                             ended_at=datetime.now(UTC)))
        log_line(storage, run.run_id, f"{run.status}: {run.records_in} in, "
                 f"{run.records_out} out, {run.records_bad} bad")
        return save_run(storage, replace(run, ended_at=datetime.now(UTC)))

    def _execute(self, storage: Storage, registry: Registry, task: Task, run: Run,
                 should_stop: Callable[[], bool]) -> Run:
        ws = task.workspace
        orch = registry.orchestrations[(ws, task.orchestration)].versions[task.version - 1]
        arguments = {**{k: v for k, v in orch.parameters.items() if v is not None},
                     **task.arguments}
        connection = lambda name: _spec(registry, ws, name)  # noqa: E731
        versions = _deployed_versions(registry, ws, orch)
        run = save_run(storage, replace(run, pipeline_versions=versions, arguments=arguments))
        log_line(storage, run.run_id, "pipelines: " + ", ".join(
            f"{p} v{v}" for p, v in versions.items()))
        chain = self._chain(registry, orch, versions)
        targets = {**arguments, "run_id": run.run_id}
        with ExitStack() as stack:
            out = stack.enter_context(open_writer(connection(orch.destination), self.settings,
                                                  storage=storage, arguments=targets))
            errors = stack.enter_context(open_writer(
                connection(orch.errors), self.settings, storage=storage, arguments=targets,
            )) if orch.errors else None
            for batch in read_batches(connection(orch.source), self.settings, storage=storage,
                                      arguments=arguments, batch_size=orch.batch_size):
                if should_stop():
                    log_line(storage, run.run_id, "killed", "warning")
                    run = replace(run, status=KILLED)
                    break
                good, bad = chain(batch, run.run_id, run.records_in)
                out.write([{**_carried(batch[i], orch.carry), **outputs} for i, outputs in good])
                if errors is not None and bad:
                    errors.write([{**batch[i], "_error": why} for i, why in bad])
                run = save_run(storage, replace(
                    run, records_in=run.records_in + len(batch),
                    records_out=run.records_out + len(good),
                    records_bad=run.records_bad + len(bad)))
        if run.status == KILLED:
            return run
        if run.records_bad and not run.records_out:
            return replace(run, status=FAILED, error=f"all {run.records_bad} records were bad")
        return replace(run, status=PARTIAL if run.records_bad else SUCCEEDED)

    def _chain(self, registry: Registry, orch: OrchestrationVersion, versions: Mapping[str, int]
               ) -> Callable[[list[Row], str, int], Outcome]:
        """A function running one batch through every pipeline in turn."""
        ws = orch.workspace
        if orch.mode == IN_PROCESS:
            stages = []
            for name in orch.pipelines:
                version = registry.pipelines[(ws, name)].versions[versions[name] - 1]
                runtimes = self.cache.for_pipeline(registry, version)
                first = step_models(version.steps[0])[0]
                stages.append((PipelineRunner(version, runtimes, self.worker),
                               runtimes[(first.model, first.version)].inputs))
            return lambda batch, run_id, offset: _in_process(self.plane, stages, batch, run_id,
                                                             offset)
        return lambda batch, run_id, offset: _through_topics(self.settings, orch, batch, run_id,
                                                             offset)


def _in_process(plane: DataPlane, stages: Sequence[tuple[PipelineRunner, Any]],
                batch: list[Row], run_id: str, offset: int) -> Outcome:
    records: dict[int, InputRecord] = {}
    bad: list[tuple[int, str]] = []
    runner0, specs0 = stages[0]
    for i, row in enumerate(batch):
        try:
            records[i] = plane.decode(json.dumps(row, default=_plain).encode(), None, specs0,
                                      f"{run_id}:{offset + i}")
        except BadRecord as exc:
            bad.append((i, f"{runner0.version.pipeline}: {exc}"))
    flags: dict[int, list[str]] = {}
    for n, (runner, _) in enumerate(stages):
        if n:  # the previous pipeline's outputs are this one's inputs
            records = {i: InputRecord(r.record_id, None, r.format, outputs, r.fields, b"")
                       for i, (r, outputs) in records.items()}
        index = {id(r): i for i, r in records.items()}
        outcome = runner.run(list(records.values()))
        for failure in outcome.failures:
            bad.append((index[id(failure.record)], f"{runner.version.pipeline}: {failure.reason}"))
        records = {index[id(r.record)]: (r.record, r.outputs) for r in outcome.results}
        if runner.checks is not None:
            for r in outcome.results:
                flags.setdefault(index[id(r.record)], []).extend(
                    _flagged(runner.version.pipeline, r.anomalies, len(stages)))
    good = [(i, {k: _single(np.asarray(v).tolist()) for k, v in outputs.items()})
            for i, (_, outputs) in sorted(records.items())]
    return _with_anomalies(good, flags, any(r.checks is not None for r, _ in stages)), sorted(bad)


def _through_topics(settings: Settings, orch: OrchestrationVersion, batch: list[Row],
                    run_id: str, offset: int) -> Outcome:
    alive = {i: {**row, "id": f"{run_id}:{offset + i}"} for i, row in enumerate(batch)}
    bad: list[tuple[int, str]] = []
    outputs: dict[int, Row] = {}
    flags: dict[int, list[str]] = {}
    checked = False
    for name in orch.pipelines:
        order = sorted(alive)
        replies = infer_through_topics(settings, orch.workspace, name, [
            json.dumps(alive[i], default=_plain).encode() for i in order], timeout=300)
        outputs = {}
        for i, reply in zip(order, replies, strict=True):
            if reply.ok:
                outputs[i] = reply.body["outputs"]
                if "anomalies" in reply.body:  # the version has validations
                    checked = True
                    flags.setdefault(i, []).extend(
                        _flagged(name, reply.body["anomalies"], len(orch.pipelines)))
            else:
                bad.append((i, f"{name}: {reply.body['reason']}"))
        alive = {i: {**o, **_carried(alive[i], ("id",))} for i, o in outputs.items()}
    good = [(i, {k: _single(v) for k, v in o.items()}) for i, o in sorted(outputs.items())]
    return _with_anomalies(good, flags, checked), sorted(bad)


def _flagged(pipeline: str, anomalies: Sequence[str], pipelines: int) -> list[str]:
    """A record's failed validations as a destination row names them: by their own names, or
    as `pipeline/check` when the orchestration chains several pipelines."""
    return list(anomalies) if pipelines == 1 else [f"{pipeline}/{a}" for a in anomalies]


def _with_anomalies(good: list[tuple[int, Row]], flags: Mapping[int, list[str]],
                    checked: bool) -> list[tuple[int, Row]]:
    """Rows with an `anomalies` column when a pipeline of the chain has validations."""
    if not checked:
        return good
    return [(i, {**row, "anomalies": flags.get(i, [])}) for i, row in good]


def _deployed_versions(registry: Registry, ws: str, orch: OrchestrationVersion
                       ) -> dict[str, int]:
    versions = {}
    for name in orch.pipelines:
        deployment = registry.deployments.get((ws, name))
        if deployment is None or not deployment.active:
            raise RunFailed(f"pipeline {name!r} is not deployed; deploy it and run again")
        versions[name] = deployment.version
    return versions


def _spec(registry: Registry, ws: str, name: str) -> ConnectionSpec:
    connection = registry.connections.get((ws, name))
    if connection is None:
        raise RunFailed(f"connection {name!r} was deleted from workspace {ws!r}")
    return ConnectionSpec(connection.name, connection.type, dict(connection.details))


def _carried(row: Row, fields: Sequence[str]) -> Row:
    return {f: row.get(f) for f in fields}


def _single(value: Any) -> Any:
    """One row's output without the rows axis: [[0.1, 0.9]] -> [0.1, 0.9]."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} to a pipeline")
