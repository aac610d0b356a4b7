"""Run one pipeline version over a micro-batch of records, every model once per step per batch.

- Steps are numbered from 1, as in the registry. Step 1 reads the records' tensors; step N+1
  reads only what step N returned (by name, through the step's input_map).
- Records are concatenated along axis 0 per input. Records that cannot share a call (another
  trailing shape, text beside numbers) form a group of their own: one call per group. Numeric
  dtypes share a group; the model's input spec casts them as it would one record.
- RecordResult.elapsed_us is the wall time of the whole batch's steps, given to every record
  (each waited for all of it); a log entry's elapsed_us is that of the call that served it.
- A random split hashes str(value) of the hash-key field with blake2b: a value takes the same
  route in every worker and batch while the weights stay. Records without the field (or None)
  draw from a numpy Generator seeded from `seed`. A key split routes on str(value); a missing
  field, None or an unlisted value takes the default route. A paused route of the deployment
  (PauseRoute) gets nothing: a random split's open routes share its weight, a key split's
  paused values take the default.
- RecordResult.models lists the model versions that returned outputs for the record; a failed
  challenger appears only in the logs, with its error.
- RecordResult.outputs holds the outputs of the version's result steps: the last step's by
  their own names, an earlier step's as 'step<N>.<output>' (control/registry/chains.py).
- The version's validations run once per batch over the served records (validations.py);
  RecordResult.anomalies and the log of the step that made the result name the failed ones.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.runtimes.base import ModelRuntime
from agents.serving.batch_run import (
    CHALLENGER,
    CHAMPION,
    MODEL,
    ROUTE,
    BatchOutcome,
    BatchRun,
    BoundModel,
    Call,
    Failure,
    Position,
    R,
    Record,
    RecordResult,
    result_outputs,
)
from agents.serving.validations import Checks, Values, stacked, texts
from control.registry.state import (
    KeySplit,
    ModelStep,
    PipelineVersion,
    RandomSplit,
    ShadowStep,
    Step,
    step_models,
)
from control.registry.validations import INPUT_STEP, RECORD, Ref
from schemas.errors import InferstreamError

# What the serving modules import from here, wherever it is defined.
__all__ = ["CHALLENGER", "CHAMPION", "MODEL", "ROUTE", "BatchOutcome", "BoundModel", "Call",
           "Failure", "MissingRuntime", "PipelineRunner", "Record", "RecordResult"]


class MissingRuntime(InferstreamError):
    """A pipeline version names a model version that the runner was given no runtime for."""


@dataclass(frozen=True, slots=True)
class _Stage:
    step: Step
    models: tuple[BoundModel, ...]  # in step_models order: default / champion first
    bounds: np.ndarray | None = None  # random split: cumulative weights, last exactly 1
    key_routes: Mapping[str, int] | None = None  # key split: value -> index in models


class PipelineRunner:
    """Runs one pipeline version over micro-batches; keeps nothing between batches but an RNG.

    run() may be called from several threads at once (numpy's Generator holds a lock).
    """

    def __init__(
        self,
        version: PipelineVersion,
        runtimes: Mapping[tuple[str, int], ModelRuntime],
        worker: str,
        seed: int | None = None,
        paused_routes: frozenset[tuple[int, int]] = frozenset(),
    ) -> None:
        if not version.steps:
            raise InferstreamError(
                f"pipeline {version.pipeline!r} v{version.version} has no steps; "
                "deploy a version with at least one step"
            )
        self.version = version
        self.worker = worker
        self._rng = np.random.default_rng(seed)
        self._stages = [_stage(n, step, runtimes, {r for s, r in paused_routes if s == n})
                        for n, step in enumerate(version.steps, 1)]
        self._carried = set(version.returned_steps)
        self.checks = Checks(version.validations, self.given()) if version.validations else None

    def given(self) -> dict[int, frozenset[str]]:
        """What each step gives a check (0: the inputs), from the loaded runtimes."""
        first = self._stages[0].models[0].runtime
        given = {INPUT_STEP: frozenset(s.name for s in first.inputs)}
        for n, stage in enumerate(self._stages, 1):
            models = stage.models[:1] if isinstance(stage.step, ShadowStep) else stage.models
            given[n] = frozenset.intersection(
                *(frozenset(s.name for s in m.runtime.outputs) for m in models))
        return given

    def chain(self) -> tuple[BoundModel, ...] | None:
        """The models in order when every step runs one model (no split, no shadow)."""
        if all(type(stage.step) is ModelStep for stage in self._stages):
            return tuple(stage.models[0] for stage in self._stages)
        return None

    def run(self, records: Sequence[R]) -> BatchOutcome[R]:
        """Run every step over the batch; bad records go to failures, the others on."""
        start = time.perf_counter_ns()
        batch = BatchRun(records)
        carried: list[tuple[int, list[Position | None]]] = []  # result steps: where rows are
        checked: dict[int, list[Position | None]] = {}  # steps the validations read
        wanted = self.checks.steps if self.checks is not None else ()
        for n, stage in enumerate(self._stages, 1):
            alive = [i for i, p in enumerate(batch.where) if p is not None]
            if not alive:
                break
            served: dict[int, Position] = {}
            if isinstance(stage.step, ShadowStep):
                champion, *challengers = stage.models
                served = batch.infer(champion, CHAMPION, alive)
                kept = [i for i in alive if i in served]
                for challenger in challengers:
                    batch.infer(challenger, CHALLENGER, kept)
            else:
                role = MODEL if isinstance(stage.step, ModelStep) else ROUTE
                # Routes that run the same model version the same way share one call.
                by_model: dict[BoundModel, list[int]] = {}
                for model, members in zip(stage.models, self._route(stage, alive, records),
                                          strict=True):
                    by_model.setdefault(model, []).extend(members)
                for model, members in by_model.items():
                    if members:
                        served.update(batch.infer(model, role, sorted(members)))
            batch.where = [served.get(i) for i in range(len(records))]
            if n in self._carried:
                carried.append((n, batch.where))
            if n in wanted:
                checked[n] = batch.where
        elapsed_us = (time.perf_counter_ns() - start) // 1000
        for i, position in enumerate(batch.where):
            if position is not None:
                # Copies of the rows' dict: the log entries hold the same rows, callers may edit.
                batch.outcome.results.append(RecordResult(
                    records[i], self._outputs(i, carried), batch.used[i], elapsed_us))
        if self.checks is not None and batch.outcome.results:
            self._check(batch, checked)
        return batch.outcome

    def _check(self, batch: BatchRun[R], checked: dict[int, list[Position | None]]) -> None:
        """Run the validations over the served records; flag their results and last logs."""
        assert self.checks is not None
        served = [i for i, p in enumerate(batch.where) if p is not None]
        records = batch.records

        def values(ref: Ref) -> Values:
            if ref.step == RECORD:
                return texts([records[i].record_id if ref.name == "id" else records[i].key
                              for i in served])
            if ref.step == INPUT_STEP:
                return stacked([records[i].tensors[ref.name] for i in served])
            where = checked[ref.step]
            return stacked([where[i][0].rows(where[i][1])[ref.name]  # type: ignore[index]
                            for i in served])

        report = self.checks.evaluate(values, len(served))
        for result, i, flags in zip(batch.outcome.results, served, report.anomalies, strict=True):
            result.anomalies = flags
            entry = batch.logged[i]
            if entry is not None:
                entry.anomalies = flags
        batch.outcome.checks = report

    def _outputs(self, i: int, carried: list[tuple[int, list[Position | None]]]
                 ) -> dict[str, np.ndarray]:
        """Record i's outputs of the result steps (served by the last: by every step)."""
        rows = [(n, where[i][0].rows(where[i][1])) for n, where in carried]  # type: ignore[index]
        return result_outputs(rows, len(self._stages))

    def _route(self, stage: _Stage, alive: list[int], records: Sequence[R]) -> list[list[int]]:
        """The records of each of stage.models, in batch order."""
        step = stage.step
        routes: list[list[int]] = [[] for _ in stage.models]
        if isinstance(step, RandomSplit):
            assert stage.bounds is not None
            draws = np.empty(len(alive))
            unkeyed: list[int] = []
            for pos, i in enumerate(alive):
                value = records[i].fields.get(step.hash_key) if step.hash_key else None
                if value is None:
                    unkeyed.append(pos)
                else:
                    draws[pos] = _unit(value)
            draws[unkeyed] = self._rng.random(len(unkeyed))
            choice = np.searchsorted(stage.bounds, draws, side="right")
            for i, r in zip(alive, choice.tolist(), strict=True):
                routes[r].append(i)
        elif isinstance(step, KeySplit):
            assert stage.key_routes is not None
            for i in alive:
                value = records[i].fields.get(step.field)
                routes[0 if value is None else stage.key_routes.get(str(value), 0)].append(i)
        else:
            routes[0] = alive
        return routes


def _stage(n: int, step: Step, runtimes: Mapping[tuple[str, int], ModelRuntime],
           paused: set[int]) -> _Stage:
    """Step n bound to its loaded models; `paused` routes (from 1) of a split get no records."""
    def bind(m: ModelStep) -> BoundModel:
        runtime = runtimes.get((m.model, m.version))
        if runtime is None:
            raise MissingRuntime(
                f"step {n} needs model {m.model!r} v{m.version}, which is not loaded (loaded: "
                f"{sorted(f'{k}:v{v}' for k, v in runtimes)}); load it before running the "
                "pipeline version"
            )
        feeds = tuple((s.name, m.input_map.get(s.name, s.name)) for s in runtime.inputs)
        return BoundModel(n, m.model, m.version, runtime, feeds)

    models = tuple(bind(m) for m in step_models(step))
    if isinstance(step, RandomSplit):
        weights = np.array([w for w, _ in step.routes], dtype=np.float64)
        if not len(weights) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise InferstreamError(
                f"step {n}: a random split needs positive weights, got {weights.tolist()}"
            )
        # A paused route weighs nothing: the open ones share its weight (the registry keeps one
        # open). Its bound equals the one before, so no draw lands in it.
        weights[[r - 1 for r in paused if 0 < r <= len(weights)]] = 0.0
        if not weights.any():
            raise InferstreamError(f"step {n}: every route of the split is paused")
        bounds = np.cumsum(weights) / weights.sum()
        # Draws are < 1, so rounding can never route past the last open route.
        bounds[int(np.flatnonzero(weights)[-1]):] = 1.0
        return _Stage(step, models, bounds=bounds)
    if isinstance(step, KeySplit):
        # step_models puts the default first, then the routes in order; a paused route's
        # values take the default.
        return _Stage(step, models, key_routes={v: r for r, (v, _) in enumerate(step.routes, 1)
                                                if r not in paused})
    return _Stage(step, models)


def _unit(value: Any) -> float:
    """A uniform float in [0, 1) from str(value): the same in every process, unlike hash()."""
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)

