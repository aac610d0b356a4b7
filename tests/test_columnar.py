"""The column-wise fast path (agents.serving.columnar) writes the very bytes the record path writes,
and leaves every batch it cannot serve whole to the record path."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

from agents.metrics import StageMetrics
from agents.runtimes.onnx import OnnxRuntime
from agents.serving.dataplane import DataPlane, Serving
from agents.serving.deployments import DeploymentManager
from control.config import Settings
from control.local.demo_models import TARGET_OPSET, iris_rows, train_iris_classifier
from control.registry.state import (
    Deployment,
    ModelStep,
    PipelineVersion,
    RandomSplit,
    Step,
    Validation,
)
from control.registry.tensors import STRING, TensorSpec
from schemas.codec import decode
from sinks.log_batches import decode_logs

NOW = datetime(2026, 11, 25, tzinfo=UTC)
ROWS = iris_rows()


class Message:
    """What serving reads of a confluent_kafka.Message."""

    def __init__(self, value: bytes | None, key: bytes | None, offset: int) -> None:
        self._value, self._key, self._offset = value, key, offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def headers(self) -> None:  # none: no record here was redriven
        return None


class Collect:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))


def _classifier(path: Path, passthrough: bool, seed: int = 0) -> OnnxRuntime:
    """An iris classifier; with passthrough it also returns its input as "features"."""
    onx = convert_sklearn(train_iris_classifier(seed), initial_types=[
        ("float_input", FloatTensorType([None, 4]))], options={"zipmap": False},
        target_opset=TARGET_OPSET)
    if passthrough:
        onx.graph.node.append(helper.make_node("Identity", ["float_input"], ["features"]))
        onx.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                              [None, 4]))
    path.write_bytes(onx.SerializeToString())
    onnx.checker.check_model(str(path))
    return OnnxRuntime.load(path)


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], OnnxRuntime]:
    folder = tmp_path_factory.mktemp("columnar")
    return {("a", 1): _classifier(folder / "a.onnx", True),
            ("b", 1): _classifier(folder / "b.onnx", True, seed=1),
            ("c", 1): _classifier(folder / "c.onnx", False, seed=2)}


@pytest.fixture(scope="module")
def manager() -> Iterator[DeploymentManager]:
    settings = Settings(bootstrap_servers="127.0.0.1:9")  # no broker is reached
    m = DeploymentManager(settings, DataPlane(settings, "w1"))
    yield m
    m.plane.close()


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same times in both paths: they are the only bytes that may differ."""
    monkeypatch.setattr(time, "time_ns", lambda: 1_795_000_000_000_000_000)
    monkeypatch.setattr(time, "perf_counter_ns", lambda: 42)


CHAIN = (ModelStep("a", 1), ModelStep("b", 1, {"float_input": "features"}),
         ModelStep("c", 1, {"float_input": "features"}))


def _serving(manager: DeploymentManager, runtimes: dict, steps: tuple[Step, ...],
             result_steps: tuple[int, ...] = (),
             validations: tuple[Validation, ...] = ()) -> Serving:
    version = PipelineVersion("ws", "p", 1, steps, "ann", NOW, result_steps, validations)
    deployment = Deployment("ws", "p", 1, True, 512, 10, (1,), "ann", NOW)
    return manager.serving(deployment, version, runtimes)


def _record(serving: Serving, i: int, record_id: str | None = None) -> bytes:
    return serving.avro.encode({"id": f"r{i}" if record_id is None else record_id,
                                "float_input": ROWS[i % len(ROWS)][np.newaxis]})


def _both(manager: DeploymentManager, serving: Serving, messages: list[Message]
          ) -> tuple[list, list, tuple[int, int]]:
    """What the fast path sends (None if it declines), and what the manager sends without it."""
    fast = Collect()
    served = serving.columnar.serve(messages, fast, StageMetrics())  # type: ignore[union-attr]
    slow = Collect()
    counts = manager.plane.serve_batch(replace(serving, columnar=None), messages, slow)
    return (fast.sent if served is not None else None), slow.sent, counts  # type: ignore[return-value]


@pytest.mark.parametrize("steps", [CHAIN[:1], CHAIN], ids=["one model", "three-model chain"])
@pytest.mark.parametrize("n", [1, 2, 150])
def test_a_batch_of_the_common_case_gives_the_record_paths_bytes(
        manager: DeploymentManager, runtimes: dict, steps: tuple[Step, ...], n: int,
        frozen: None) -> None:
    serving = _serving(manager, runtimes, steps)
    assert serving.columnar is not None
    ids = [None, "", "é" * 20, None]  # a given id, no id (null, empty): the record's position
    messages = [Message(_record(serving, i, ids[i % 4]) if i % 4 else
                        serving.avro.encode({"id": None, "float_input": ROWS[i][np.newaxis]}),
                        None if i % 3 == 0 else f"k{i}".encode(), 100 + i) for i in range(n)]
    fast, slow, counts = _both(manager, serving, messages)
    assert counts == (n, 0)
    assert fast == slow
    results = [m for m in fast if m[0] == serving.output_topic]
    assert len(results) == n
    logs = [log for m in fast if m[0] != serving.output_topic
            for log in decode_logs(m[2])]
    assert [(log["step"], log["record_id"]) for log in logs] == [
        (step, decode("InferenceResult", r[2])["record_id"])
        for step in range(1, len(steps) + 1) for r in results]


def test_results_of_several_steps_are_the_record_paths_too(
        manager: DeploymentManager, runtimes: dict, frozen: None) -> None:
    serving = _serving(manager, runtimes, CHAIN, result_steps=(1, 3))
    assert serving.columnar is not None
    messages = [Message(_record(serving, i), None, i) for i in range(30)]
    fast, slow, counts = _both(manager, serving, messages)
    assert counts == (30, 0) and fast == slow
    result = decode("InferenceResult", fast[0][2])
    assert [t["name"] for t in result["outputs"]] == [
        "label", "probabilities", "step1.label", "step1.probabilities", "step1.features"]


def test_validations_flag_the_same_records_on_both_paths(
        manager: DeploymentManager, runtimes: dict, frozen: None) -> None:
    checks = (Validation("wide", "step1.features[0] > 6"),
              Validation("middle", "probabilities[1] > 0.5 and step2.label != 0"),
              Validation("named", 'id == "r3" or key == "k4"'),
              Validation("broken", "step1.features[7] > 0"))
    serving = _serving(manager, runtimes, CHAIN, validations=checks)
    assert serving.columnar is not None
    messages = [Message(_record(serving, i), f"k{i}".encode(), i) for i in range(60)]
    fast, slow, counts = _both(manager, serving, messages)
    assert counts == (60, 0) and fast == slow
    results = [decode("InferenceResult", m[2]) for m in fast if m[0] == serving.output_topic]
    flags = {r["record_id"]: r["anomalies"] for r in results}
    assert "named" in flags["r3"] and "named" in flags["r4"] and "named" not in flags["r5"]
    assert {f for fs in flags.values() for f in fs} == {"wide", "middle", "named"}
    logs = [log for m in fast if m[0] != serving.output_topic for log in decode_logs(m[2])]
    assert {log["record_id"]: log["anomalies"] for log in logs if log["step"] == 3} == flags
    assert all(log["anomalies"] == [] for log in logs if log["step"] != 3)


def _odd_ones(serving: Serving) -> dict[str, bytes]:
    good = _record(serving, 3)
    return {
        "JSON": b'{"id": "j", "float_input": [1, 2, 3, 4]}',
        "two rows": serving.avro.encode({"id": "t", "float_input": ROWS[:2]}),
        "long id": _record(serving, 1, "x" * 64),
        "truncated": good[:-3],
        "trailing bytes": good + b"\x00",
        "a row of 3": good[:13] + b"\x06" + good[14:26] + good[30:],
        "not the id's union": good[:10] + b"\x04" + good[11:],
        "empty": b"",
        "tombstone": None,  # type: ignore[dict-item]
        "bad UTF-8 id": good[:12] + b"\xff" + good[13:],
        "another schema's fingerprint": good[:2] + b"\x01" * 8 + good[10:],
    }


@pytest.mark.parametrize("odd", [
    "JSON", "two rows", "long id", "truncated", "trailing bytes", "a row of 3",
    "not the id's union", "empty", "tombstone", "bad UTF-8 id", "another schema's fingerprint"])
def test_a_batch_with_one_odd_record_is_left_to_the_record_path(
        manager: DeploymentManager, runtimes: dict, odd: str, frozen: None) -> None:
    serving = _serving(manager, runtimes, CHAIN)
    messages = [Message(_record(serving, i), b"k", i) for i in range(20)]
    messages[7] = Message(_odd_ones(serving)[odd], b"k", 7)
    fast, slow, (results, dead) = _both(manager, serving, messages)
    assert fast is None
    assert results + dead == 20
    letters = [m for m in slow if m[0] == serving.dead_topic]
    assert len(letters) == dead


def test_a_model_that_fails_the_batch_leaves_it_to_the_record_path(
        manager: DeploymentManager, runtimes: dict, frozen: None) -> None:
    class Broken(OnnxRuntime):
        def predict(self, batch: dict) -> dict:  # type: ignore[override]
            if len(batch["float_input"]) > 1:
                raise RuntimeError("too many rows")
            return super().predict(batch)

    broken = object.__new__(Broken)
    broken.__dict__.update(runtimes[("b", 1)].__dict__)
    serving = _serving(manager, {**runtimes, ("b", 1): broken}, CHAIN)
    messages = [Message(_record(serving, i), None, i) for i in range(5)]
    fast, _slow, counts = _both(manager, serving, messages)
    assert fast is None
    assert counts == (5, 0)  # one record at a time, the model serves each


def test_splits_and_other_inputs_are_not_the_common_case(
        manager: DeploymentManager, runtimes: dict) -> None:
    split = (RandomSplit(((1.0, ModelStep("a", 1)), (1.0, ModelStep("c", 1)))),)
    assert _serving(manager, runtimes, split).columnar is None
    mapped = (ModelStep("c", 1, {"float_input": "x"}),)  # step 1 reads what no record holds
    assert _serving(manager, runtimes, mapped).columnar is None
    texts = object.__new__(OnnxRuntime)  # a model whose label is text
    texts.__dict__.update(runtimes[("c", 1)].__dict__)
    texts._outputs = (TensorSpec("label", STRING, (-1,)),)
    assert _serving(manager, {**runtimes, ("c", 1): texts}, (ModelStep("c", 1),)).columnar is None
