"""Bad input on a pipeline's input topic: whatever bytes arrive, a record decodes or is refused.

Property of `decode_record`: it returns a record whose arrays have the inputs' dtypes and
shapes (rows first), with text that is valid UTF-8, or raises BadRecord with a short reason
naming the field or the problem; any other exception is a bug. The records: random bytes;
JSON records, V2 requests and Avro records built for several kinds of inputs, with values from
the edges (NaN, ±inf, huge numbers, text where numbers go, lists where scalars go, missing
and extra fields, odd unicode), whole, cut short or with a byte changed; deeply nested JSON.
Then the worker's whole path without Kafka: decode, run a real ONNX model, encode results,
logs and dead letters: every record ends as exactly one result or one failure, with a reason.

NaN and ±inf are model inputs like any float (a model may mean something by them); a result
holding them is still valid: JSON has no NaN, so JSON results carry null; Avro carries them.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import orjson
import pytest
from confluent_kafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.records.avro_logs import LogWriter
from agents.records.formats import (
    AVRO,
    JSON,
    BadRecord,
    InputRecord,
    ResultMeta,
    dead_letter,
    decode_record,
    encode_result,
)
from agents.runtimes import load_model
from agents.runtimes.base import conform
from agents.serving.runner import PipelineRunner
from control.config import Settings
from control.kafka import consumer, end_offsets, producer, read_until_end
from control.local.demo_models import build_onnx_classifier
from control.registry.state import ModelStep, PipelineVersion, ShadowStep
from control.registry.tensors import STRING
from schemas.codec import MARKER, decode
from tests.fuzz_strategies import (
    AVRO_INPUTS,
    EXAMPLES,
    FUZZ,
    INPUTS,
    IRIS,
    KINDS,
    MANGLED,
    against_the_broker,
    avro_records,
    json_records,
    mangle,
    record_bytes,
    v2_requests,
    weighted,
)

# numpy warns where a cast loses a value (2.0**63 into an int64): here that is a bug.
pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("error::RuntimeWarning")]


# -- the property ----------------------------------------------------------------------------


def check(raw: bytes, kind: str, max_bytes: int = 1_000_000) -> InputRecord | None:
    """The record, checked against the inputs of `kind`; None for a BadRecord with a reason."""
    specs = INPUTS[kind]
    try:
        record = decode_record(raw, b"key", specs, "in:0:7", AVRO_INPUTS[kind], max_bytes)
    except BadRecord as exc:
        assert exc.reason.strip() and len(exc.reason) < 1000, exc.reason
        assert exc.field is None or repr(exc.field) in exc.reason, exc.reason
        return None
    assert set(record.tensors) == {s.name for s in specs}
    assert record.rows >= 1 and record.raw == raw
    for spec in specs:
        a = record.tensors[spec.name]
        if spec.dtype == STRING:
            assert a.dtype.kind == "U"
            for text in a.flat:
                text.encode()  # the log and result writers must be able to write it
        else:
            assert a.dtype == np.dtype(spec.dtype), (spec, a.dtype)
        assert a.ndim == max(len(spec.shape), 1) and len(a) == record.rows, (spec, a.shape)
        if spec.shape:
            assert conform(spec, record.tensors) is a  # no cast left for the model to do
    record.record_id.encode()
    for value in record.fields.values():
        if isinstance(value, str):
            value.encode()
    return record


# -- targets ---------------------------------------------------------------------------------


@FUZZ
@given(KINDS, weighted((2, st.binary(max_size=300)), (1, st.binary(max_size=120).map(
    lambda b: MARKER + b)), (2, st.tuples(KINDS, st.binary(max_size=120)).map(
        lambda t: MARKER + AVRO_INPUTS[t[0]].fingerprint + t[1]))))
def test_random_bytes(kind: str, raw: bytes) -> None:
    check(raw, kind)


@FUZZ
@given(KINDS.flatmap(lambda k: st.tuples(st.just(k), json_records(INPUTS[k]))), MANGLED,
       st.booleans())
def test_json_records(item: tuple[str, bytes], how: tuple[int, int, int], whole: bool) -> None:
    kind, raw = item
    check(raw if whole else mangle(raw, *how), kind)


@FUZZ
@given(KINDS.flatmap(lambda k: st.tuples(st.just(k), v2_requests(INPUTS[k]))), MANGLED,
       st.booleans())
def test_v2_requests(item: tuple[str, bytes], how: tuple[int, int, int], whole: bool) -> None:
    kind, raw = item
    check(raw if whole else mangle(raw, *how), kind)


@FUZZ
@given(KINDS.flatmap(lambda k: st.tuples(st.just(k), avro_records(k))), MANGLED, st.booleans())
def test_avro_records(item: tuple[str, bytes], how: tuple[int, int, int], whole: bool) -> None:
    kind, raw = item
    check(raw if whole else mangle(raw, *how), kind)


NESTINGS = [b"[%s1%s]", b'{"float_input": %s1%s}', b'{"float_input": [1, 2, 3, %s4%s]}',
            b'{"float_input": [1, 2, 3, 4], "id": %s"x"%s}',
            b'{"float_input": [NaN, 2, 3, 4], "extra": %s1%s}',
            b'[{"float_input": [1, 2, 3, 4]}, %s{}%s]',
            b'{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", '
            b'"data": %s1%s}]}',
            b'{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", '
            b'"data": [1, 2, 3, 4]}], "parameters": {"a": %s1%s}}']


@settings(FUZZ, max_examples=max(EXAMPLES // 10, 50))
@given(st.sampled_from(NESTINGS), weighted((3, st.integers(1, 1100)), (1, st.integers(
    1100, 120_000))), st.sampled_from([b"[", b'{"a": ', b'[{"b": ']))
def test_deeply_nested_json(template: bytes, depth: int, opener: bytes) -> None:
    closer = {b"[": b"]", b'{"a": ': b"}", b'[{"b": ': b"}]"}[opener]
    check(template % (opener * depth, closer * depth), "iris", max_bytes=10**7)


@pytest.mark.parametrize("template", NESTINGS)
def test_nesting_100_000_deep_is_a_bad_record(template: bytes) -> None:
    assert check(template % (b"[" * 100_000, b"]" * 100_000), "iris", max_bytes=10**7) is None


def test_huge_records_decode_or_are_refused_by_size() -> None:
    rows = np.arange(200_000, dtype=np.float32).reshape(-1, 4)
    raw = json.dumps({"float_input": rows.tolist()}).encode()
    assert check(raw, "iris", max_bytes=len(raw)).rows == 50_000
    assert f"record is {len(raw)} bytes, over the limit of 1000 bytes" in _too_big(raw, 1000)
    big = AVRO_INPUTS["iris"].encode({"float_input": rows})
    assert check(big, "iris", max_bytes=len(big)).rows == 50_000
    assert "over the limit of 100 bytes" in _too_big(big, 100)


def _too_big(raw: bytes, limit: int) -> str:
    with pytest.raises(BadRecord) as caught:
        decode_record(raw, None, IRIS, "d", AVRO_INPUTS["iris"], max_bytes=limit)
    return caught.value.reason


SOME_BYTES = st.none() | st.binary(max_size=50) | st.integers(0, 40_000).map(
    lambda n: bytes(range(256)) * (n // 256))


@FUZZ
@given(SOME_BYTES, SOME_BYTES, st.text(max_size=50) | st.integers(3990, 5000).map(
    lambda n: "é🙂" * (n // 2)), st.integers(20_000, 40_000))
def test_a_dead_letter_fits_its_size_whatever_it_carries(
        raw: bytes | None, key: bytes | None, reason: str, most: int) -> None:
    letter = dead_letter(raw, key, reason, "iris", 1, "in", 0, 7, max_bytes=most)
    read = decode("DeadLetter", letter)
    assert len(letter) <= most and read["reason"].startswith(reason[:50])
    assert (raw or b"").startswith(read["original"]) and (key or b"").startswith(read["key"] or b"")
    if read["original"] != (raw or b"") or read["key"] != key:
        assert "this letter keeps the first" in read["reason"]


# -- the worker's path without Kafka ---------------------------------------------------------


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineRunner]:
    """A real ONNX iris classifier, shadowed by another one, as a worker would run them."""
    tmp: Path = tmp_path_factory.mktemp("models")
    runtimes = {("clf", v): load_model("onnx", build_onnx_classifier(tmp / f"{v}.onnx", seed=v))
                for v in (1, 2)}
    version = PipelineVersion("ws", "iris", 1, (
        ShadowStep(ModelStep("clf", 1), (ModelStep("clf", 2),)),), "ann", datetime.now(UTC))
    yield PipelineRunner(version, runtimes, "w1", seed=0)


META = ResultMeta("iris", 1, "ws", [(1, "clf", 1, "champion")], 1200, "w1", 1_700_000_000)
IRIS_RECORDS = weighted((8, record_bytes("iris")), (1, st.binary(max_size=60)))


def test_nan_and_inf_reach_the_model_and_every_result_format_holds_them(
        runner: PipelineRunner) -> None:
    rows = [[math.nan, 1.0, 1.0, 1.0], [math.inf, -math.inf, 0.0, 1.0]]
    sent = [json.dumps({"id": "j", "float_input": rows}).encode(),
            json.dumps({"id": "v", "inputs": [{"name": "float_input", "shape": [2, 4],
                                               "datatype": "FP32", "data": rows}]}).encode(),
            AVRO_INPUTS["iris"].encode({"id": "a", "float_input": rows})]
    records = [decode_record(raw, None, IRIS, "d", AVRO_INPUTS["iris"]) for raw in sent]
    outcome = runner.run(records)
    assert not outcome.failures and len(outcome.results) == 3
    by_id = {r.record.record_id: r for r in outcome.results}
    assert np.isnan(by_id["j"].outputs["probabilities"][0]).all()  # the model's own answer
    as_json = orjson.loads(encode_result(by_id["j"].record, by_id["j"].outputs, META))
    assert as_json["outputs"]["probabilities"][0] == [None, None, None]  # JSON has no NaN
    as_v2 = orjson.loads(encode_result(by_id["v"].record, by_id["v"].outputs, META))
    assert None in {o["name"]: o for o in as_v2["outputs"]}["probabilities"]["data"]
    as_avro = decode("InferenceResult", encode_result(by_id["a"].record, by_id["a"].outputs,
                                                      META))
    values = {t["name"]: t for t in as_avro["outputs"]}["probabilities"]["values"]
    assert math.isnan(values[0])  # Avro keeps it


@settings(FUZZ, max_examples=max(EXAMPLES * 2 // 3, 50))
@given(st.lists(IRIS_RECORDS, min_size=1, max_size=6))
def test_the_worker_path_never_raises(runner: PipelineRunner, batch: list[bytes]) -> None:
    records = [r for r in (check(raw, "iris") for raw in batch) if r is not None]
    outcome = runner.run(records)
    ended = [id(r.record) for r in outcome.results] + [id(f.record) for f in outcome.failures]
    assert sorted(ended) == sorted(id(r) for r in records), "a record went missing or twice"
    for failure in outcome.failures:
        assert failure.reason.strip()
        letter = decode("DeadLetter", dead_letter(failure.record.raw, b"key", failure.reason,
                                                  "iris", 1, "in", 0, 7))
        assert letter["reason"] == failure.reason
    for result in outcome.results:
        out = encode_result(result.record, result.outputs, META)
        if result.record.format == AVRO:
            assert decode("InferenceResult", out)["record_id"] == result.record.record_id
        else:  # strict JSON: orjson refuses NaN and Infinity
            body = orjson.loads(out)
            assert body["id"] == result.record.record_id
            if result.record.format == JSON:
                probabilities = np.array(body["outputs"]["probabilities"], dtype=float)
                assert probabilities.shape == (result.record.rows, 3)
    # An Avro float may be a signalling NaN (its bits as sent); numpy warns when the log
    # writer widens one to a double, which is then a quiet NaN: nothing is lost.
    with np.errstate(invalid="ignore"):
        logs = LogWriter("ws", "iris", 1, "w1").encode_all(1_700_000_000, outcome.logs)
    for log in logs:
        decode("InferenceLog", log)


# -- against the real broker: a worker serving a pipeline ------------------------------------

RECORD_LIMIT = 20_000  # the worker's INFERSTREAM_MAX_RECORD_BYTES here


class Served:
    """A platform of its own: registrar, the iris classifier deployed as ws/iris, a worker."""

    def __init__(self, broker: Any, tmp: Path) -> None:
        from control.client import Client
        from control.local.worker_process import WorkerProcess
        from control.registrar import Registrar

        self.settings = Settings(
            bootstrap_servers=broker.bootstrap, namespace=f"fz{uuid4().hex[:8]}",
            data_dir=tmp / "cli", pipeline_partitions=2,
            **({} if broker.supports_transactions else {"delivery": "at-least-once"}))
        self.registrar = Registrar(self.settings).start()
        self.client = Client(self.settings, user="ann", workspace="ws")
        self.client.create_user("ann")
        self.client.create_workspace("ws")
        self.client.upload_model("clf", build_onnx_classifier(tmp / "clf.onnx"))
        self.client.create_pipeline("iris")
        self.client.create_pipeline_version("iris", [{"model": "clf", "version": 1}])
        self.worker = WorkerProcess(self.settings, "w1", tmp,
                                    env={"INFERSTREAM_MAX_RECORD_BYTES": str(RECORD_LIMIT)})
        self.worker.wait_ready()
        self.client.deploy("iris", batch_size=32, batch_wait_ms=50, worker_wait=60)
        self.worker.wait_ready("ws/iris")
        self.topics = {kind: self.settings.pipeline_topic("ws", "iris", kind)
                       for kind in ("input", "output", "dead")}

    def close(self) -> None:
        self.worker.stop()
        self.client.close()
        self.registrar.stop()

    def serve(self, records: list[tuple[bytes, bytes]], timeout: float = 45.0
              ) -> dict[bytes, list[tuple[str, bytes]]]:
        """Produce (key, value) records; every key's messages on the output and dead topics,
        as (topic kind, value), once each key has one (or at the deadline)."""
        starts = {kind: end_offsets(self.settings, self.topics[kind]) for kind in
                  ("output", "dead")}
        p = producer(self.settings)
        for key, value in records:
            p.produce(self.topics["input"], key=key, value=value)
        assert not p.flush(30), "records not delivered to the input topic"
        seen: dict[bytes, list[tuple[str, bytes]]] = {}
        keys = {key for key, _ in records}
        c = consumer(self.settings, **{"enable.partition.eof": False})
        c.assign([TopicPartition(self.topics[kind], p, o)
                  for kind, ends in starts.items() for p, o in ends.items()])
        deadline = time.monotonic() + timeout
        try:
            while not keys <= seen.keys() and time.monotonic() < deadline:
                msg = c.poll(0.2)
                if msg is not None and not msg.error() and msg.key() in keys:
                    kind = "dead" if msg.topic() == self.topics["dead"] else "output"
                    seen.setdefault(msg.key(), []).append((kind, msg.value()))
        finally:
            c.close()
        return seen


@pytest.fixture(scope="module")
def served(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    platform = Served(broker, tmp_path_factory.mktemp("fuzz-served"))
    yield platform
    platform.close()


GOOD = json.dumps({"float_input": [5.1, 3.5, 1.4, 0.2]}).encode()
OVERSIZE = st.integers(1200, 2000).map(  # over RECORD_LIMIT
    lambda rows: json.dumps({"float_input": [[1.0, 2.0, 3.0, 4.0]] * rows}).encode())
GARBAGE = st.lists(weighted((6, record_bytes("iris")), (1, st.binary(max_size=200)),
                            (1, st.just(b"")), (1, OVERSIZE)), min_size=50, max_size=70)


@pytest.mark.kafka
@against_the_broker(3)
@given(GARBAGE)
def test_garbage_on_the_input_topic_ends_in_results_or_dead_letters(
        served: Served, garbage: list[bytes]) -> None:
    # A good record after every fifth bad one, and one last: the worker must still serve.
    records = []
    for i, value in enumerate(garbage):
        records.append((f"bad-{uuid4().hex}".encode(), value))
        if i % 5 == 4:
            records.append((f"good-{uuid4().hex}".encode(), GOOD))
    records.append((f"good-{uuid4().hex}".encode(), GOOD))
    seen = served.serve(records)
    missing = [key for key, _ in records if key not in seen]
    assert not missing, f"{len(missing)} of {len(records)} records got no result or dead letter"
    # Exactly once: read both topics again, whole, now that every record has its answer.
    wanted = {key for key, _ in records}
    counts = Counter(m.key() for kind in ("output", "dead")
                     for m in read_until_end(served.settings, served.topics[kind])
                     if m.key() in wanted)
    assert {k: n for k, n in counts.items() if n != 1} == {}
    for key, value in records:
        [(kind, out)] = seen[key]
        if kind == "dead":
            letter = decode("DeadLetter", out)
            assert letter["reason"].strip() and letter["original"] == value
            assert letter["key"] == key and letter["pipeline"] == "iris"
        elif out[:2] == MARKER:
            decode("InferenceResult", out)
        else:
            orjson.loads(out)  # strict JSON: no NaN or Infinity
        if key.startswith(b"good-"):
            assert kind == "output", decode("DeadLetter", out)["reason"]
        if len(value) > RECORD_LIMIT:
            reason = decode("DeadLetter", out)["reason"]
            assert f"record is {len(value)} bytes, over the limit of {RECORD_LIMIT}" in reason


@pytest.mark.kafka
def test_a_record_near_the_brokers_message_size_gets_its_dead_letter(served: Served) -> None:
    # Its letter (the original, the key and the reason) would be over the broker's 1 MiB.
    edge = (b"k" * 1000, b"x" * 1_047_000)
    seen = served.serve([edge, (b"after", GOOD)])
    assert seen[b"after"][0][0] == "output", "the worker stalled on the record"
    [(kind, out)] = seen[edge[0]]
    letter = decode("DeadLetter", out)
    assert kind == "dead" and len(out) <= 1_000_000 and edge[1].startswith(letter["original"])
    assert "over the limit of 20000 bytes" in letter["reason"]
    assert f"this letter keeps the first {len(letter['original'])} of its 1047000 bytes" in (
        letter["reason"])
