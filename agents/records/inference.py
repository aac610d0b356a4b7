"""What an inference produced, as the writers of results and logs read it: the models that
made a result, a predict call's arrays, and one log entry per inference of a record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class ModelUsed(NamedTuple):
    step: int
    model: str
    version: int
    role: str  # model | route | champion | challenger (serving/runner.py)


@dataclass(frozen=True, slots=True)
class Call:
    """One predict call's arrays; a record's rows are offsets[j]:offsets[j + 1] (None: one
    record, all rows)."""

    inputs: Mapping[str, np.ndarray]
    input_offsets: list[int] | None
    outputs: Mapping[str, np.ndarray]
    output_offsets: list[int] | None


class InferenceLogEntry:
    """One inference of one record; the caller adds time, pipeline and worker, and encodes.

    A served record's inputs and outputs are views of its predict call's arrays, made when
    first read: writers of many logs read the call's whole arrays instead (`call`, `row`).
    """

    __slots__ = ("_inputs", "_outputs", "anomalies", "call", "elapsed_us", "error", "model",
                 "model_version", "record_id", "row", "shadow", "step")

    def __init__(self, record_id: str, step: int, model: str, model_version: int,
                 shadow: bool, inputs: dict[str, np.ndarray] | None,
                 outputs: dict[str, np.ndarray] | None, elapsed_us: int,
                 error: str | None = None, call: Call | None = None, row: int = 0) -> None:
        self.record_id, self.step, self.model = record_id, step, model
        self.model_version, self.shadow, self.elapsed_us = model_version, shadow, elapsed_us
        self.error, self.call, self.row = error, call, row
        self._inputs, self._outputs = inputs, outputs
        # The validations the record failed: set by the runner on its last step's log only.
        self.anomalies: tuple[str, ...] = ()

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """By model input name, this record's rows."""
        if self._inputs is None:
            assert self.call is not None
            self._inputs = _rows(self.call.inputs, self.call.input_offsets, self.row)
        return self._inputs

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        """By model output name, this record's rows; empty when error is set."""
        if self._outputs is None:
            assert self.call is not None
            self._outputs = _rows(self.call.outputs, self.call.output_offsets, self.row)
        return self._outputs

    def __repr__(self) -> str:
        return (f"InferenceLogEntry({self.record_id!r}, step {self.step}, {self.model} "
                f"v{self.model_version}, shadow={self.shadow}, error={self.error!r})")


def _rows(arrays: Mapping[str, np.ndarray], offsets: list[int] | None, j: int
          ) -> dict[str, np.ndarray]:
    if offsets is None:
        return dict(arrays)
    begin, end = offsets[j], offsets[j + 1]
    return {name: a[begin:end] for name, a in arrays.items()}
