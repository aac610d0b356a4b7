"""Python steps: user code in child processes. A step that raises, hangs, allocates past its
limit or exits costs only its own records (dead-lettered with the reason); the worker stays
live and ready, serves every other record and pipeline, and loses or repeats no record."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from agents.records.formats import InputRecord, avro_input, decode_record
from agents.runtimes import describe_artifact
from agents.runtimes.packing import artifact_bytes, artifact_format, framework_of, unpack
from agents.runtimes.python import PythonRuntime
from agents.runtimes.python_pool import PythonLimits, PythonStepError
from agents.serving.runner import PipelineRunner
from control.config import Settings
from control.kafka import read_until_end
from control.local.worker_process import WorkerProcess
from control.registry.state import ModelStep, PipelineVersion
from control.registry.tensors import TensorSpec
from schemas.codec import codec
from schemas.errors import ArtifactError
from sinks.log_batches import decode_logs
from tests.helpers import wait_until
from tests.worker_platform import Platform, rows, serving

# A step whose rows say how to misbehave: x[:, 0] = -1 raises, 99 sleeps, 98 calls
# os._exit, 97 allocates 4 GiB; anything else is doubled. `at` must arrive as datetime64[us].
STEP = '''
import os, time
import numpy as np

INPUTS = {"float_input": ("float32", (-1, 4)), "at": ("timestamp", (-1,))}
OUTPUTS = {"float_input": ("float32", (-1, 4)), "year": ("int64", (-1,))}

def predict(batch):
    x, at = batch["float_input"], batch["at"]
    assert at.dtype == np.dtype("datetime64[us]"), at.dtype
    first = x[:, 0]
    if (first == -1).any():
        raise ValueError("x[0] is -1")
    if (first == 99).any():
        time.sleep(600)
    if (first == 98).any():
        os._exit(7)
    if (first == 97).any():
        hog = np.ones(4 * 1024**3, np.uint8)
    print("served", len(x))
    return {"float_input": x * 2, "year": at.astype("datetime64[Y]").astype(np.int64) + 1970}
'''
LIMITS = PythonLimits(workers=1, timeout_s=1.0, memory_mb=768)
AT = np.array(["2024-05-01T12:00:00"] * 4, "datetime64[us]")


def batch(*firsts: float) -> dict[str, np.ndarray]:
    x = np.ones((len(firsts), 4), np.float32)
    x[:, 0] = firsts
    return {"float_input": x, "at": np.resize(AT, len(firsts))}


@pytest.fixture(scope="module")
def step_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("steps") / "prep.py"
    path.write_text(STEP)
    return path


@pytest.fixture(scope="module")
def step(step_file: Path) -> Iterator[PythonRuntime]:
    runtime = PythonRuntime.load(step_file, LIMITS)
    yield runtime
    runtime.close()


def test_a_correct_step_declares_its_specs_and_serves(step: PythonRuntime) -> None:
    assert step.inputs == (TensorSpec("float_input", "float32", (-1, 4)),
                           TensorSpec("at", "datetime64[us]", (-1,)))
    assert step.outputs[1] == TensorSpec("year", "int64", (-1,))
    out = step.predict(batch(1, 2, 3))
    np.testing.assert_array_equal(out["float_input"][:, 0], [2, 4, 6])
    assert out["float_input"].dtype == np.float32 and out["year"].tolist() == [2024] * 3


@pytest.mark.parametrize(("first", "reason"), [
    (-1, "ValueError: x[0] is -1 (prep.py line"),
    (99, "took longer than 1 s on 2 rows"),
    (98, "process exited with code 7"),
    (97, "MemoryError: over the memory limit of 768 MiB"),
])
def test_a_failing_step_raises_and_the_next_batch_is_served(
        step: PythonRuntime, first: float, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(PythonStepError, match=re.escape(reason)):
        step.predict(batch(first, 1))
    assert time.monotonic() - started < LIMITS.timeout_s + 2
    np.testing.assert_array_equal(step.predict(batch(5))["float_input"][:, 0], [10])


def test_hanging_rows_cost_a_batch_at_most_twice_the_limit(step_file: Path) -> None:
    # After the batch fails, its records are tried alone within one more limit: the hanging
    # ones get their share of it, and each crash or kill costs a process start (~0.1 s).
    limits = PythonLimits(workers=1, timeout_s=3.0, memory_mb=768)
    runtime = PythonRuntime.load(step_file, limits)
    try:
        firsts = [1, 99, 2, 98, 3, -1, 4, 5] * 4
        records = [InputRecord(f"r{i}", None, "json", batch(f), {}, b"")
                   for i, f in enumerate(firsts)]
        version = PipelineVersion("ws", "p", 1, (ModelStep("prep", 1),), "ann",
                                  datetime.now(UTC))
        runner = PipelineRunner(version, {("prep", 1): runtime}, "w")
        started = time.monotonic()
        outcome = runner.run(records)
        took = time.monotonic() - started
    finally:
        runtime.close()
    assert took < 2 * limits.timeout_s + 1.5, took
    served = {r.record.record_id for r in outcome.results}
    failed = {f.record.record_id: f.reason for f in outcome.failures}
    assert served | set(failed) == {r.record_id for r in records} and not served & set(failed)
    assert {f"r{i}" for i, f in enumerate(firsts) if f in (1, 2, 3, 4, 5)} == served
    assert all(reason.startswith("step 1 (prep v1): ") for reason in failed.values())
    assert "ValueError: x[0] is -1" in failed["r5"] and "exited with code 7" in failed["r3"]
    assert "took longer than" in failed["r1"] and "share of the batch's retry budget" in \
        failed["r1"]


def test_a_folder_step_with_data_travels_as_an_artifact(tmp_path: Path) -> None:
    folder = tmp_path / "scaler"
    folder.mkdir()
    (folder / "scale.json").write_text(json.dumps({"factor": 3}))
    (folder / "helpers.py").write_text("def times(x, k):\n    return x * k\n")
    (folder / "step.py").write_text(
        "import json\nfrom helpers import times\n"
        "INPUTS = {'word': ('string', (-1,)), 'n': ('int64', (-1,))}\n"
        "OUTPUTS = {'text': ('string', (-1,)), 'n': ('int64', (-1,))}\n"
        "def load(folder):\n    global K\n    K = json.loads((folder / 'scale.json').read_text())"
        "['factor']\n"
        "def predict(batch):\n"
        "    return {'text': [w.upper() for w in batch['word']], 'n': times(batch['n'], K)}\n")
    assert (artifact_format(folder), framework_of(folder)) == ("pythondir", "python")
    (tmp_path / "x.py").write_text("")
    assert framework_of(tmp_path / "x.py") == "python"
    unpacked = unpack(artifact_bytes(folder), tmp_path / "sha")
    inputs, outputs = describe_artifact("python", unpacked)
    assert [s.dtype for s in inputs] == ["string", "int64"] and outputs[0].dtype == "string"
    runtime = PythonRuntime.load(unpacked, LIMITS)
    try:
        out = runtime.predict({"word": np.array(["a", "bc"], object), "n": np.array([1, 2])})
    finally:
        runtime.close()
    assert out["text"].tolist() == ["A", "BC"] and out["n"].tolist() == [3, 6]


@pytest.mark.parametrize(("source", "message"), [
    ("def predict(batch):\n    return batch\n", "defines no INPUTS"),
    ("INPUTS = {'x': ('float32', (4,))}\nOUTPUTS = INPUTS\ndef predict(b):\n    return b\n",
     "first axis is -1"),
    ("INPUTS = {'x': ('object', (-1,))}\nOUTPUTS = INPUTS\ndef predict(b):\n    return b\n",
     "numpy number or bool name"),
    ("INPUTS = OUTPUTS = {'x': ('float32', (-1,))}\n", "no function predict"),
    ("raise RuntimeError('no data here')\n", "RuntimeError: no data here"),
])
def test_a_step_without_its_contract_is_refused_at_upload(
        tmp_path: Path, source: str, message: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(ArtifactError, match=message):
        describe_artifact("python", path)


def test_wrong_outputs_are_the_steps_error(tmp_path: Path) -> None:
    path = tmp_path / "wrong.py"
    path.write_text("INPUTS = {'x': ('float32', (-1,))}\nOUTPUTS = {'y': ('int64', (-1,))}\n"
                    "def predict(b):\n    return {'y': b['x'] if b['x'][0] else [object()]}\n")
    runtime = PythonRuntime.load(path, LIMITS)
    try:
        with pytest.raises(PythonStepError, match="dtype float32, which OUTPUTS declares as"):
            runtime.predict({"x": np.array([1.0])})
        with pytest.raises(PythonStepError, match="TypeError: output 'y' has dtype"):
            runtime.predict({"x": np.array([0.0])})
    finally:
        runtime.close()


def test_python_steps_off_refuses_and_close_stops_the_children(
        step_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSTREAM_PYTHON_STEPS", "off")
    with pytest.raises(ArtifactError, match="INFERSTREAM_PYTHON_STEPS=off"):
        PythonRuntime.load(step_file)
    monkeypatch.delenv("INFERSTREAM_PYTHON_STEPS")
    runtime = PythonRuntime.load(step_file)  # the settings' defaults
    pid = runtime._pool._idle[0].process.pid
    runtime.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert runtime.predict(batch(1))["float_input"][0, 0] == 2  # a late batch still ends
    runtime.close()


def test_timestamps_decode_from_json_and_avro() -> None:
    specs = (TensorSpec("at", "datetime64[us]", (-1,)),)
    want = np.datetime64("2024-05-01T12:00:00", "us")
    for at in ("2024-05-01T12:00:00Z", "2024-05-01T14:00:00+02:00", 1714564800):
        decoded = decode_record(json.dumps({"at": at}).encode(), None, specs, "d")
        assert decoded.tensors["at"].tolist() == [want.item()]
    avro = avro_input(specs, "inferstream.input.ws.p")
    raw = avro.encode({"id": "a", "at": [datetime(2024, 5, 1, 12, tzinfo=UTC)]})
    assert decode_record(raw, None, specs, "d", avro).tensors["at"][0] == want
    with pytest.raises(Exception, match="'yesterday'\\), not a time"):
        decode_record(b'{"at": "yesterday"}', None, specs, "d")


# -- through a worker on the real broker ------------------------------------------------------

@pytest.fixture(scope="module")
def platform(broker, step_file: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    delivery = "exactly-once" if broker.supports_transactions else "at-least-once"
    if "python" not in json.dumps(codec("UploadModel").schema):
        pytest.fail("UploadModel's Framework enum lacks 'python': add it to schemas/avro/"
                    "inferstream.control.UploadModel.avsc and run python -m schemas freeze")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("INFERSTREAM_PYTHON_TIMEOUT_S", "2")  # the worker inherits them
        env.setenv("INFERSTREAM_PYTHON_MEMORY_MB", "768")
        with serving(broker.bootstrap, tmp_path_factory.mktemp("python"), "py",
                     keras=False, delivery=delivery) as p:
            p.client.upload_model("prep", step_file)
            yield p


@pytest.mark.kafka
@pytest.mark.slow
def test_a_worker_serves_around_a_misbehaving_step(platform: Platform) -> None:
    platform.pipeline("prepped", [{"model": "prep", "version": 1},
                                  {"model": "clf", "version": 1}])
    platform.pipeline("plain", [{"model": "clf", "version": 1}])
    platform.deploy("prepped", batch_size=16, batch_wait_ms=200)
    platform.deploy("plain")
    w1 = platform.workers[0]
    assert children(w1)  # the step runs in processes of its own
    kinds = [0, -1, 0, 99, 0, 98, 0, 97] * 3
    records = []
    for i, kind in enumerate(kinds):
        x = rows(1, i)[0].tolist()
        x[0] = kind or x[0]
        at = "2024-05-01T12:00:00Z" if i % 2 else 1714564800 + i
        records.append({"id": f"p{i}", "float_input": x, "at": at})
    replies = platform.client.infer("prepped", records, timeout=120)
    plain = platform.client.infer("plain", [{"id": "q", "float_input": rows(1)[0].tolist()}])
    assert plain[0].ok and ready(w1) == 200
    want = {0: None, -1: "ValueError: x[0] is -1", 99: "the python step took longer than",
            98: "exited with code 7", 97: "MemoryError"}
    for reply, kind in zip(replies, kinds, strict=True):
        assert reply.ok == (kind == 0), (kind, reply.body)
        if kind:
            assert want[kind] in reply.body["reason"] and "step 1 (prep v1)" in \
                reply.body["reason"]
    ok = [r.body for r in replies if r.ok]
    assert [(m["model"], m["version"]) for m in ok[0]["models"]] == [("prep", 1), ("clf", 1)]
    # Every id once: on the output or among the dead letters, and in the step's logs (whose
    # timestamps the log writer takes as text).
    s = platform.settings
    served = Counter(json.loads(m.value())["id"] for m in read_until_end(
        s, s.pipeline_topic("lab", "prepped", "output")))
    dead = Counter(json.loads(codec("DeadLetter").decode(m.value())["original"])["id"]
                   for m in read_until_end(s, s.pipeline_topic("lab", "prepped", "dead")))
    assert served == Counter(f"p{i}" for i, k in enumerate(kinds) if k == 0)
    assert dead == Counter(f"p{i}" for i, k in enumerate(kinds) if k)
    logs = [log for m in read_until_end(s, s.topic("logs")) for log in decode_logs(m.value())]
    stepped = Counter(e["record_id"] for e in logs
                      if e["pipeline"] == "prepped" and e["model"] == "prep")
    assert stepped == served + dead
    assert ready(w1) == 200
    # Undeployed, the step's processes stop (the worker's own children, by the step's name).
    platform.client.undeploy("prepped")
    wait_until(lambda: not children(w1), 30, "the python step's processes stop on undeploy")


def ready(w: WorkerProcess) -> int:
    try:
        with urllib.request.urlopen(f"{w.url}/health/ready", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def children(w: WorkerProcess) -> list[str]:
    """Command lines of the worker's child processes that run Python steps."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == w.process.pid and "python_child" in cmdline:
            found.append(cmdline)
    return found


def test_settings_have_python_limits() -> None:
    s = Settings(python_workers=2, python_timeout_s=3, python_memory_mb=0)
    assert PythonLimits.from_settings(s) == PythonLimits(2, 3.0, 0)
