"""The worker's own Avro writers give the very bytes the schema codec (fastavro) gives, and its
fast input reader reads what fastavro reads, or leaves the record to it."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import fastavro
import numpy as np
import pytest

from agents.records.avro_logs import LogWriter
from agents.records.avro_reader import read_body
from agents.records.avro_writer import ResultWriter, long
from agents.records.formats import BadRecord, InputRecord, avro_input, decode_record, tensor_records
from agents.runtimes import load_model
from agents.runtimes.base import ModelRuntime
from agents.serving.runner import PipelineRunner
from control.local.demo_models import build_onnx_classifier, iris_rows
from control.registry.state import ModelStep, PipelineVersion, ShadowStep
from control.registry.tensors import STRING, TensorSpec
from schemas.codec import codec, decode
from sinks.log_batches import decode_logs
from sinks.log_blocks import current_block_prefix

RNG = np.random.default_rng(0)
TENSORS = [
    {"float_input": RNG.normal(size=(1, 30)).astype(np.float32)},
    {"x": np.array([np.nan, np.inf, -0.0, 1e300])},
    {"i": np.arange(-5, 5).reshape(2, 5), "u": np.array([2**63], dtype=np.uint64)},
    {"b": np.array([True, False])},
    {"text": np.array(["a", "ü"]), "objects": np.array(["x", 1], dtype=object)},
    {"raw": np.array([b"ab", b"\xff"], dtype=object)},
    {"no_rows": np.zeros((0, 3)), "no_text": np.array([], dtype=str)},
    {"scalar": np.float64(3.5), "half": np.array([[1.5]], dtype=np.float16)},
    {},
]
OUTPUTS = {"label": np.array([1]), "probabilities": np.array([[0.1, 0.9]], dtype=np.float32)}


@pytest.mark.parametrize("n", [0, 1, -1, 63, 64, -64, -65, 127, 128, 2**31 - 1, -(2**31),
                               2**62, -(2**63), 1_795_559_347_813_000])
def test_long_is_a_zigzag_varint(n: int) -> None:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, {"type": "long"}, n)
    assert long(n) == out.getvalue()


@pytest.mark.parametrize("inputs", TENSORS)
@pytest.mark.parametrize("error", [None, "step 2 (m v7): boom ü"])
def test_inference_log_bytes_match_the_codec(inputs: dict, error: str | None) -> None:
    writer = LogWriter("ws", "pipe", 3, "host:1")
    got = writer.encode(1_795_559_347_813_123, "r1ü", 2, "m", 7, True, inputs, OUTPUTS, 1234,
                        error)
    want = codec("InferenceLog").encode({
        "time": 1_795_559_347_813_123, "record_id": "r1ü", "workspace": "ws",
        "pipeline": "pipe", "pipeline_version": 3, "step": 2, "model": "m", "model_version": 7,
        "shadow": True, "inputs": tensor_records(inputs), "outputs": tensor_records(OUTPUTS),
        "elapsed_us": 1234, "worker": "host:1", "error": error})
    assert got == want
    assert decode("InferenceLog", got)["error"] == error


@pytest.mark.parametrize("outputs", TENSORS)
@pytest.mark.parametrize("key", [None, b"", b"k\x00\xff"])
@pytest.mark.parametrize("models", [[], [(1, "a", 2, "model")],
                                    [(1, "a", 2, "champion"), (2, "b", 3, "route")]])
def test_inference_result_bytes_match_the_codec(outputs: dict, key: bytes | None,
                                                models: list) -> None:
    writer = ResultWriter("ws", "pipe", 3, "host:1")
    for _ in range(2):  # the second time from the writer's caches
        got = writer.encode("r1", key, models, outputs, 99, 1_795_559_347_813_123)
        want = codec("InferenceResult").encode({
            "record_id": "r1", "key": key, "workspace": "ws", "pipeline": "pipe",
            "pipeline_version": 3,
            "models": [{"step": s, "model": m, "version": v, "role": r} for s, m, v, r in models],
            "outputs": tensor_records(outputs), "elapsed_us": 99,
            "time": 1_795_559_347_813_123, "worker": "host:1"})
        assert got == want


FLOATS = (TensorSpec("float_input", "float32", (-1, 30)), TensorSpec("w", "float64", (-1, 2, 2)))


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("record_id", ["r1", None, "ü" * 70])
def test_fast_reader_reads_what_fastavro_reads(rows: int, record_id: str | None) -> None:
    avro = avro_input(FLOATS, "inferstream.input.ws.p")
    x = RNG.normal(size=(rows, 30)).astype(np.float32)
    w = RNG.normal(size=(rows, 2, 2))
    raw = avro.encode({"id": record_id, "float_input": x, "w": w})
    doc = read_body(raw, avro.plan)
    assert doc is not None and doc["id"] == record_id
    np.testing.assert_array_equal(doc["float_input"], x)
    np.testing.assert_array_equal(doc["w"], w)
    record = decode_record(raw, b"k", FLOATS, "default", avro)
    np.testing.assert_array_equal(record.tensors["float_input"], x)
    assert record.record_id == (record_id or "default")


def test_fast_reader_leaves_odd_records_to_fastavro() -> None:
    avro = avro_input(FLOATS, "inferstream.input.ws.p")
    good = avro.encode({"id": "r", "float_input": np.zeros((2, 30)), "w": np.zeros((2, 2, 2))})
    no_rows = avro.encode({"id": "r", "float_input": np.zeros((0, 30)), "w": np.zeros((0, 2, 2))})
    for raw in (good[:-3], good + b"\x00", no_rows):
        assert read_body(raw, avro.plan) is None
    with pytest.raises(BadRecord, match="corrupt"):
        decode_record(good[:-3], None, FLOATS, "d", avro)
    with pytest.raises(BadRecord, match="bytes after it"):
        decode_record(good + b"\x00", None, FLOATS, "d", avro)
    ragged = avro.encode({"id": "r", "float_input": [[0.0] * 30, [0.0] * 29],
                          "w": np.zeros((2, 2, 2))})
    assert read_body(ragged, avro.plan) is None
    with pytest.raises(BadRecord, match="float_input"):
        decode_record(ragged, None, FLOATS, "d", avro)


class _Texts(ModelRuntime):
    """Labels as text, so that a call's outputs are not all numbers."""

    framework = "test"

    @classmethod
    def load(cls, path: Path) -> ModelRuntime:
        raise NotImplementedError

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays["float_input"]
        return {"label": np.array([f"c{int(v)}" for v in x[:, 0]]), "score": x[:, :1] * 2}


@pytest.mark.parametrize("sizes", [[1] * 7, [1, 2, 1, 3], [2, 2, 2]])
def test_logs_written_per_call_match_logs_written_one_by_one(tmp_path: Path,
                                                              sizes: list[int]) -> None:
    iris = [load_model("onnx", build_onnx_classifier(tmp_path / f"i{s}.onnx", seed=s))
            for s in (0, 1)]
    texts = _Texts((TensorSpec("float_input", "float32", (-1, 4)),),
                   (TensorSpec("label", STRING, (-1,)), TensorSpec("score", "float32", (-1, 1))))
    runtimes = {("iris", 1): iris[0], ("iris", 2): iris[1], ("texts", 1): texts}
    version = PipelineVersion("ws", "p", 1, (
        ShadowStep(ModelStep("iris", 1), (ModelStep("iris", 2),)),
        ModelStep("texts", 1, {"float_input": "probabilities"})), "ann", datetime.now(UTC))
    rows = np.resize(iris_rows(), (sum(sizes), 4))
    bounds = np.cumsum([0, *sizes])
    records = [InputRecord(f"r{k}", None, "json", {"float_input": rows[a:b]}, {}, b"")
               for k, (a, b) in enumerate(pairwise(bounds))]
    records.append(InputRecord("bad", None, "json", {"float_input": np.zeros((1, 3))}, {}, b""))
    outcome = PipelineRunner(version, runtimes, "w").run(records)
    assert outcome.failures and any(e.call is not None for e in outcome.logs)
    writer = LogWriter("ws", "p", 1, "host:1")
    one_by_one = [writer.encode(7, e.record_id, e.step, e.model, e.model_version, e.shadow,
                                e.inputs, e.outputs, e.elapsed_us, e.error)
                  for e in outcome.logs]
    messages = writer.messages(7, outcome.logs)
    # A block per call of the iris models whose records have as many rows each; text labels
    # and ragged calls are logs of their own.
    blocks = [m for m in messages if m[:10] == current_block_prefix()]
    assert len(blocks) == (2 if len(set(sizes)) == 1 else 0)
    order = lambda log: (log["record_id"], log["step"], log["shadow"])  # noqa: E731
    assert sorted((log for m in messages for log in decode_logs(m)), key=order) == sorted(
        (log for m in one_by_one for log in decode_logs(m)), key=order)
