"""What every peer app does with a record: read the bench's input (Avro or JSON), write a JSON
result. Shared by the apps so they differ only in what the tool does around it.

Runs inside the peers' virtual environments (the checkout on PYTHONPATH): numpy,
onnxruntime and fastavro only, nothing else of inferstream's.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort

INPUT = "float_input"
AVRO_HEADER = 10  # single-object encoding: C3 01 and the schema's 8-byte fingerprint


class Config:
    """The app's settings, from the environment the driver sets."""

    __slots__ = ("bootstrap", "group", "model", "output", "schema", "source")

    def __init__(self) -> None:
        self.bootstrap = os.environ["BENCH_BOOTSTRAP"]
        self.source = os.environ["BENCH_INPUT"]
        self.output = os.environ["BENCH_OUTPUT"]
        self.group = os.environ["BENCH_GROUP"]
        self.model = os.environ["BENCH_MODEL"]
        self.schema = os.environ.get("BENCH_AVRO_SCHEMA") or None


def session(path: str) -> ort.InferenceSession:
    """The model as inferstream's worker opens it: one intra-op thread, no spinning, so the
    peers and inferstream share the two cores the same way."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class Reader:
    """Rows of one input record: Avro (with the writer's schema file) or JSON."""

    def __init__(self, schema_path: str | None) -> None:
        self.schema = (fastavro.parse_schema(json.loads(Path(schema_path).read_text()))
                       if schema_path else None)

    def rows(self, raw: bytes) -> np.ndarray:
        if self.schema is not None:
            doc: Any = fastavro.schemaless_reader(io.BytesIO(raw[AVRO_HEADER:]), self.schema,
                                                  None)
        else:
            doc = json.loads(raw)
        return np.asarray(doc[INPUT], dtype=np.float32).reshape(-1, 30)


def results(session_: ort.InferenceSession, rows: np.ndarray) -> list[dict[str, Any]]:
    """One ONNX call over the rows; one JSON-ready result per row."""
    label, probabilities = session_.run(None, {INPUT: rows})
    return [{"label": int(lab), "probabilities": p.tolist()}
            for lab, p in zip(label, probabilities, strict=True)]
