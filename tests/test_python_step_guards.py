"""Python steps that attack or strain the worker through the process boundary: a lying reply
header, a huge stderr line, a grandchild left running, values out of an output's range, many
hanging rows, a worker with its file descriptors past 1023; and the limits a worker is given."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from agents.records.avro_writer import timestamp_texts
from agents.records.formats import InputRecord, ResultMeta, encode_result, tensor_records
from agents.runtimes.python import PythonRuntime
from agents.runtimes.python_pool import PythonLimits, PythonStepError
from agents.serving.model_cache import ModelCache
from agents.serving.runner import PipelineRunner
from control.config import Settings
from control.registry.state import ArtifactRef, ModelStep, ModelVersion, PipelineVersion
from tests.helpers import wait_until

LIMITS = PythonLimits(workers=1, timeout_s=1.0, memory_mb=768)
X = "INPUTS = {'x': ('int64', (-1,))}\n"


def load(tmp_path: Path, source: str, limits: PythonLimits = LIMITS) -> PythonRuntime:
    path = tmp_path / "guard.py"
    path.write_text(source)
    return PythonRuntime.load(path, limits)


@pytest.fixture
def closing() -> Iterator[list[PythonRuntime]]:
    runtimes: list[PythonRuntime] = []
    yield runtimes
    for runtime in runtimes:
        runtime.close()


def _message(header: str) -> bytes:
    return struct.pack("<Q", len(header)) + header.encode()


@pytest.mark.parametrize("header", [
    # Shapes whose int64 products wrap: 8 GiB, then a negative size making the sum small.
    json.dumps({"ok": True, "arrays": [["a", "|u1", [2**33]], ["b", "|u1", [2**62, 3]]]}),
    json.dumps({"ok": True, "arrays": [["a", "|u1", [True, 1.5]]]}),
    "[1, 2]",
    "[" * 200_000 + "]" * 200_000,
])
def test_a_step_writing_a_lying_reply_is_stopped(tmp_path: Path, closing: list,
                                                 header: str) -> None:
    (tmp_path / "reply.bin").write_bytes(_message(header))
    runtime = load(tmp_path, X + "OUTPUTS = INPUTS\nimport os, pathlib\n"
                   "FAKE = (pathlib.Path(__file__).parent / 'reply.bin').read_bytes()\n"
                   "def predict(b):\n"
                   "    for fd in range(3, 32):\n"
                   "        try:\n            os.write(fd, FAKE)\n"
                   "        except OSError:\n            pass\n"
                   "    return b\n")
    closing.append(runtime)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PythonStepError, match="broke the protocol"):
        runtime.predict({"x": np.array([1])})
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_a_huge_stderr_line_is_cut(tmp_path: Path, closing: list,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "agents.runtimes.python_pool")
    runtime = load(tmp_path, X + "OUTPUTS = INPUTS\nimport sys\n"
                   "def predict(b):\n    sys.stderr.write('x' * 4_000_000)\n"
                   "    sys.stderr.flush()\n    return b\n")
    closing.append(runtime)
    started = time.process_time()
    assert runtime.predict({"x": np.array([1])})["x"].tolist() == [1]
    runtime.close()  # the line ends with the process
    wait_until(lambda: any("4000000 bytes, cut" in r.getMessage() for r in caplog.records), 10,
               "the cut line is logged")
    logged = [r.getMessage() for r in caplog.records if "cut" in r.getMessage()]
    assert len(logged) == 1 and len(logged[0]) < 2200
    assert time.process_time() - started < 1.0  # not a syscall per byte


def test_a_grandchild_dies_with_its_hanging_step(tmp_path: Path, closing: list) -> None:
    runtime = load(tmp_path, X + "OUTPUTS = INPUTS\nimport pathlib, subprocess, time\n"
                   "def predict(b):\n"
                   "    p = subprocess.Popen(['sleep', '600'])\n"
                   f"    pathlib.Path({str(tmp_path / 'pid')!r}).write_text(str(p.pid))\n"
                   "    time.sleep(600)\n")
    closing.append(runtime)
    with pytest.raises(PythonStepError, match="took longer than 1 s"):
        runtime.predict({"x": np.array([1])})
    pid = int((tmp_path / "pid").read_text())
    wait_until(lambda: not _running(pid), 5, "the grandchild is killed with the step")


def _running(pid: int) -> bool:
    try:  # a zombie waiting for a reaper counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_int_out_of_the_outputs_range_is_refused(tmp_path: Path, closing: list) -> None:
    runtime = load(tmp_path, X + "OUTPUTS = {'y': ('int8', (-1,))}\n"
                   "def predict(b):\n    return {'y': b['x'] * 100}\n")
    closing.append(runtime)
    assert runtime.predict({"x": np.array([1])})["y"].dtype == np.int8
    with pytest.raises(PythonStepError, match="'y' has dtype int64, which OUTPUTS declares as "
                                              "int8, or a value out of its range"):
        runtime.predict({"x": np.array([3])})  # 300 would have become 44


def test_hanging_2d_string_rows_stay_within_the_bound(tmp_path: Path, closing: list) -> None:
    # Each record's rows are as wide as its own longest text: no row looks like its batch's.
    runtime = load(tmp_path, "INPUTS = {'w': ('string', (-1, 2))}\nOUTPUTS = INPUTS\n"
                   "import time\ndef predict(b):\n    time.sleep(600)\n")
    closing.append(runtime)
    records = [InputRecord(f"r{i}", None, "json", {"w": np.array([["a" * (i + 1), "b"]])}, {},
                           b"") for i in range(8)]
    version = PipelineVersion("ws", "p", 1, (ModelStep("s", 1),), "ann", datetime.now(UTC))
    runner = PipelineRunner(version, {("s", 1): runtime}, "w")
    started = time.monotonic()
    outcome = runner.run(records)
    took = time.monotonic() - started
    assert len(outcome.failures) == 8 and took < 2 * LIMITS.timeout_s + 1.0, took


def test_a_lone_call_after_a_failed_batch_gets_the_whole_limit(tmp_path: Path,
                                                               closing: list) -> None:
    # Not a retry, though its row is one of the failed batch's (another caller, e.g. HTTP).
    runtime = load(tmp_path, X + "OUTPUTS = INPUTS\nimport time\n"
                   "def predict(b):\n    time.sleep(600)\n")
    closing.append(runtime)
    with pytest.raises(PythonStepError):
        runtime.predict({"x": np.array([7, 7])})
    with pytest.raises(PythonStepError, match="INFERSTREAM_PYTHON_TIMEOUT_S=1"):
        runtime.predict({"x": np.array([7])})


def test_unknown_signals_and_high_file_descriptors(tmp_path: Path, closing: list) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE {hard} leaves no file descriptor past 1023")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]  # the pipes come after
    try:
        runtime = load(tmp_path, X + "OUTPUTS = INPUTS\nimport os\n"
                       "def predict(b):\n    if b['x'][0] == 40:\n"
                       "        os.kill(os.getpid(), 40)\n    return b\n")
        closing.append(runtime)
        assert runtime._pool._idle[0].process.stdout.fileno() > 1023
        assert runtime.predict({"x": np.array([1])})["x"].tolist() == [1]
        with pytest.raises(PythonStepError, match="killed by signal 40"):
            runtime.predict({"x": np.array([40])})
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_step_sees_no_settings_and_the_worker_is_undumpable(
        tmp_path: Path, closing: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("inferstream_sasl_password", "lower")
    monkeypatch.setenv("INFERSTREAM_SASL_PASSWORD", "upper")
    runtime = load(tmp_path, X + "OUTPUTS = {'n': ('int64', (-1,)), 'read': ('bool', (-1,))}\n"
                   "import os\ndef predict(b):\n"
                   "    n = sum(k.upper().startswith('INFERSTREAM_') for k in os.environ)\n"
                   "    try:\n        open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
                   "        read = True\n    except OSError:\n        read = False\n"
                   "    return {'n': [n], 'read': [read]}\n")
    closing.append(runtime)
    out = runtime.predict({"x": np.array([1])})
    assert out["n"].tolist() == [0]
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE
    if os.geteuid() != 0:  # root with CAP_SYS_PTRACE reads it regardless (docs/security.md)
        assert out["read"].tolist() == [False]


def test_a_closed_pool_keeps_no_process(tmp_path: Path, closing: list) -> None:
    runtime = load(tmp_path, X + "OUTPUTS = INPUTS\ndef predict(b):\n    return b\n")
    closing.append(runtime)
    runtime.close()
    assert runtime.predict({"x": np.array([2])})["x"].tolist() == [2]  # a late call ends
    assert not runtime._pool._idle and runtime._pool._count == 0


def test_a_worker_uses_the_limits_of_its_settings(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSTREAM_PYTHON_TIMEOUT_S", "99")
    settings = Settings().model_copy(update={"data_dir": tmp_path, "python_timeout_s": 0.5,
                                             "python_workers": 2})
    sha = "0" * 64
    folder = tmp_path / "models" / sha  # already unpacked: no artifact store needed
    folder.mkdir(parents=True)
    (folder / "step.py").write_text(X + "OUTPUTS = INPUTS\ndef predict(b):\n    return b\n")
    version = ModelVersion("ws", "guard", 1, "python",
                           ArtifactRef(sha, 1, "pythondir", "t", 0, 0, 1), (), (), (), None, "me",
                           datetime.now(UTC))
    cache = ModelCache(settings)
    try:
        runtime = cache.load(version)
        assert runtime._limits == PythonLimits(2, 0.5, settings.python_memory_mb)
        assert cache.load(version) is runtime
    finally:
        cache.close()


def test_timestamps_are_one_text_in_json_avro_and_logs() -> None:
    at = np.array([["2024-05-01T12:00:00"], ["2024-05-01T12:00:00.25"], ["NaT"]],
                  "datetime64[us]")
    texts = ["2024-05-01T12:00:00", "2024-05-01T12:00:00.250000", "NaT"]
    assert timestamp_texts(at) == texts
    assert tensor_records({"at": at})[0]["strings"] == texts
    record = InputRecord("r", None, "json", {}, {}, b"")
    meta = ResultMeta("p", 1, "ws", (), 0, "w")
    doc = json.loads(encode_result(record, {"at": at}, meta))
    assert doc["outputs"]["at"] == [[t] for t in texts]
