"""The child processes of a Python step: each started by fork + exec of python_child.py,
spoken to over its pipes with deadlines, killed and replaced when it hangs, dies or breaks
the framing."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.runtimes.python_child import read_message, write_message
from control.config import Settings
from schemas.errors import ArtifactError, InferstreamError

log = logging.getLogger(__name__)
START_TIMEOUT_S = 60.0  # a child's import and load(), which may read large data files
_CHILD = Path(__file__).with_name("python_child.py")
_LINE_BYTES = 65536  # stderr is read in pieces of at most this; longer lines are cut
_LOGGED_CHARS = 2000  # of a line, what reaches the log
_PR_SET_DUMPABLE = 4
_undumpable = False


class PythonStepError(InferstreamError):
    """A Python step failed on a batch: it raised, timed out, or its process ended."""


@dataclass(frozen=True)
class PythonLimits:
    """How a version's children run: how many, how long a batch may take, how much memory."""

    workers: int = 1
    timeout_s: float = 10.0
    memory_mb: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> PythonLimits:
        if not settings.python_steps:
            raise ArtifactError(
                "Python steps are turned off on this worker (INFERSTREAM_PYTHON_STEPS=off); "
                "serve this pipeline on a worker that allows them, or use an ONNX model")
        return cls(settings.python_workers, settings.python_timeout_s, settings.python_memory_mb)


class _Timeout(PythonStepError):
    pass


class _Ended(PythonStepError):
    pass


class ChildPool:
    """The children of one loaded version: at most `workers`, one batch each at a time."""

    def __init__(self, artifact: Path, limits: PythonLimits, label: str) -> None:
        self.artifact, self.limits, self.label = artifact, limits, label
        self._idle: list[_Child] = []
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()
        _stop_being_dumpable()

    def run(self, arrays: dict[str, np.ndarray], limit_s: Callable[[], float], wait_s: float,
            rows: int, why: str) -> dict[str, np.ndarray]:
        """One batch through a free child: wait_s bounds finding a ready child, limit_s() (asked
        once the child is ready) the batch itself; a child that times out, dies or breaks the
        framing is replaced."""
        waited = time.monotonic() + wait_s
        child = self._acquire(waited)
        try:
            child.ready(waited)
            limit = limit_s()
        except _Timeout:
            self._release(child, healthy=True)  # still loading: the next call may use it
            raise PythonStepError(f"no process of the python step was ready within "
                                  f"{wait_s:.3g} s ({why})") from None
        except PythonStepError as exc:
            self._release(child, healthy=child.hello is not None and not isinstance(exc, _Ended))
            raise
        try:
            outputs = child.call(arrays, time.monotonic() + limit)
        except _Timeout:
            self._release(child, healthy=False)
            raise PythonStepError(
                f"the python step took longer than {limit:.3g} s on {rows} "
                f"row{'' if rows == 1 else 's'} ({why}); "
                "its process was stopped") from None
        except PythonStepError as exc:
            self._release(child, healthy=child.process.poll() is None and not isinstance(
                exc, _Ended))
            raise
        except BaseException:
            self._release(child, healthy=False)
            raise
        self._release(child, healthy=True)
        return outputs

    def first(self) -> dict:
        """Start one child and return its hello (the declared INPUTS and OUTPUTS)."""
        child = self._acquire(time.monotonic())
        try:
            hello = child.ready(time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            self._release(child, healthy=False, replace=False)
            raise
        self._release(child, healthy=True)
        return hello

    def close(self) -> None:
        """Stop the idle children now, the busy ones when their batch is done. For good: a
        later call (a batch or task run still holding the version) runs in a child started
        for it and stopped after it."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for child in idle:
            child.kill()

    def _acquire(self, deadline: float) -> _Child:
        with self._cond:
            while not self._idle and self._count >= self.limits.workers:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise _Timeout("every process of the python step stayed busy")
            if self._idle:
                return self._idle.pop()
            self._count += 1
        return self._spawn()

    def _spawn(self) -> _Child:
        """A new child in a slot already counted; the slot is given back if it cannot start."""
        try:
            return _Child(self.artifact, self.limits, self.label)
        except OSError as exc:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise PythonStepError(f"cannot start the python step's process: {exc}") from exc

    def _release(self, child: _Child, healthy: bool, replace: bool = True) -> None:
        with self._cond:
            if healthy and not self._closed:
                self._idle.append(child)
                self._cond.notify()
                return
            if self._closed or not replace or (not healthy and child.hello is None):
                self._count -= 1  # a child that never loaded is not started again at once
                self._cond.notify()
                replace = False
        child.kill()
        if not replace:
            return
        try:  # started now, it loads while the runner gets to its next call
            fresh = self._spawn()
        except PythonStepError:
            return
        with self._cond:
            if not self._closed:
                self._idle.append(fresh)
                self._cond.notify()
                return
            self._count -= 1  # closed while it started: it must not outlive the pool
            self._cond.notify()
        fresh.kill()


class _Child:
    """One child process; its hello (the declared specs) is read on first use."""

    def __init__(self, artifact: Path, limits: PythonLimits, label: str) -> None:
        # Without the worker's own settings (pydantic reads them in any case): its Kafka and
        # ClickHouse passwords among them. /proc/<worker>/environ is closed by
        # _stop_being_dumpable().
        env = {**{k: v for k, v in os.environ.items()
                  if not k.upper().startswith("INFERSTREAM_")},
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        # fork + exec, not multiprocessing's fork: the worker's librdkafka threads must not
        # be copied; -I: the user's code sees neither PYTHONPATH nor the worker's folder.
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(_CHILD), str(artifact), str(limits.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=True, bufsize=0)
        self.label = f"python step {label} [{self.process.pid}]"
        self.limit_bytes = (limits.memory_mb or 4096) * 1024 * 1024  # a reply never exceeds it
        self.hello: dict | None = None
        threading.Thread(target=self._relay_stderr, daemon=True, name=self.label).start()

    def ready(self, deadline: float) -> dict:
        """The child's hello, waiting for its load() until deadline."""
        if self.hello is None:
            header, _ = self._read(deadline)
            if not header.get("ok"):
                raise PythonStepError(f"the python step did not load: {header.get('error')}")
            self.hello = header
        return self.hello

    def call(self, arrays: dict[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        assert self.process.stdin is not None
        try:
            _write(self.process.stdin.fileno(), arrays, deadline)
        except BrokenPipeError:
            raise self._ended() from None
        header, outputs = self._read(deadline)
        if not header.get("ok"):
            raise PythonStepError(str(header.get("error"))[:2000])
        return outputs

    def _read(self, deadline: float) -> tuple[dict, dict[str, np.ndarray]]:
        assert self.process.stdout is not None
        try:
            message = read_message(_DeadlineReader(self.process.stdout.fileno(), deadline),
                                   self.limit_bytes)
        except EOFError:
            message = None
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            # Not our framing: the step wrote to our pipe (deep JSON nesting: RecursionError).
            self.kill()
            raise PythonStepError(f"the python step broke the protocol ({exc}); do not write "
                                  "to file descriptors other than stdout and stderr") from None
        if message is None:
            raise self._ended()
        return message

    def _ended(self) -> _Ended:
        try:
            code = self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:  # a real-time signal, or one this Python has no name for
                name = f"signal {-code}"
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return _Ended(f"the python step's process was killed by {name}{hint}")
        return _Ended(f"the python step's process exited with code {code}")

    def kill(self) -> None:
        """Stop the child and every process it started (its session's process group), so
        that none lives on, or keeps its stderr open, after a timeout."""
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
            os.killpg(self.process.pid, signal.SIGKILL)  # a leader by start_new_session
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.process.wait()

    def _relay_stderr(self) -> None:
        # Buffered, in pieces of at most 64 KiB: a step that writes one huge line (or never a
        # newline) costs neither a syscall per byte nor memory without bound.
        assert self.process.stderr is not None
        with io.BufferedReader(self.process.stderr, _LINE_BYTES) as reader:  # type: ignore[arg-type]
            while piece := reader.readline(_LINE_BYTES):
                line, size = piece, len(piece)
                while not piece.endswith(b"\n") and (piece := reader.readline(_LINE_BYTES)):
                    size += len(piece)  # the rest of a long line is counted, not kept
                text = line[:_LOGGED_CHARS].decode("utf-8", "replace").rstrip()
                if size > _LOGGED_CHARS:
                    text += f" … (a line of {size} bytes, cut)"
                log.info("%s: %s", self.label, text)


class _DeadlineReader:
    """readinto() over a pipe that gives up at a deadline."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd, self.deadline = fd, deadline

    def readinto(self, view: memoryview) -> int:
        _wait(self.fd, self.deadline, readable=True)
        return os.readv(self.fd, [view])


def _write(fd: int, arrays: dict[str, np.ndarray], deadline: float) -> None:
    os.set_blocking(fd, False)  # a child that stops reading must not block the worker

    def send(data: memoryview) -> None:
        while data:
            _wait(fd, deadline, readable=False)
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                continue

    write_message(send, {"op": "predict"}, arrays)


def _wait(fd: int, deadline: float, readable: bool) -> None:
    # poll, not select: select refuses file descriptors past 1023, which a busy worker has.
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Timeout("timed out")
    poller = select.poll()
    poller.register(fd, select.POLLIN if readable else select.POLLOUT)
    if not poller.poll(math.ceil(left * 1000)):
        raise _Timeout("timed out")


def _stop_being_dumpable() -> None:
    """Make this process undumpable (Linux), before it starts a child: then a child, though
    it runs as the same user, cannot read /proc/<worker>/environ or mem, nor ptrace the
    worker. A root child with CAP_SYS_PTRACE still can (docs/security.md)."""
    global _undumpable
    if _undumpable or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed (errno %d): Python steps can read this "
                    "worker's environment", ctypes.get_errno())
    _undumpable = True
