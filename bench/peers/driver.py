"""Start a peer's application in its venv and measure it as inferstream is measured.

The same load generator and tap (bench/load.py) on the same broker: a drain of a backlog
(saturation), then fixed offered rates, latency from each record's scheduled send time. CPU
is the peer's whole process tree (MLServer serves from a child process).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from bench.cpu import Timeline, cpu_seconds
from bench.load import latencies_ms, percentiles, stalls
from bench.peers.setup import HERE, Peer, ensure_venv
from bench.scenarios import Flow, run_flow, steady_rate

MLSERVER_BATCH, MLSERVER_BATCH_TIME_S = 512, 0.01
READY_S = 120.0


class PeerError(RuntimeError):
    """A peer that could not be started or did not serve: the message says why."""


class PeerProcess:
    """A peer's application running in its venv, in a process group of its own."""

    def __init__(self, peer: Peer, flow: Flow, model: Path, schema: Path | None,
                 folder: Path, group: str) -> None:
        self.peer, self.flow = peer, flow
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{peer.name}.log"
        python = ensure_venv(peer)
        env = {**os.environ, "BENCH_BOOTSTRAP": flow.bootstrap, "BENCH_INPUT": flow.source,
               "BENCH_OUTPUT": flow.sink, "BENCH_GROUP": group, "BENCH_MODEL": str(model),
               "BENCH_AVRO_SCHEMA": str(schema or ""), "BENCH_PORT": str(_free_port()),
               "PYTHONPATH": str(HERE.parent.parent)}
        self.http_port: int | None = None
        if peer.name == "mlserver":
            command = [str(python), "-m", "mlserver.cli.main", "start",
                       str(self._mlserver_folder(folder, model))]
        else:
            command = [str(python), str(HERE / f"{peer.name}_app.py")]
            if peer.name == "faust":
                command += ["worker", "-l", "warn"]
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, cwd=folder, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def _mlserver_folder(self, folder: Path, model: Path) -> Path:
        """settings.json (Kafka mode) and the model's folder (custom runtime, batching)."""
        root = folder / "mlserver"
        (root / "gbt").mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "mlserver_runtime.py", root / "gbt" / "mlserver_runtime.py")
        self.http_port = _free_port()
        (root / "settings.json").write_text(json.dumps({
            "kafka_enabled": True, "kafka_servers": self.flow.bootstrap,
            "kafka_topic_input": self.flow.source, "kafka_topic_output": self.flow.sink,
            "http_port": self.http_port, "grpc_port": _free_port(),
            "metrics_port": _free_port(), "parallel_workers": 1, "debug": False}))
        (root / "gbt" / "model-settings.json").write_text(json.dumps({
            "name": "gbt", "implementation": "mlserver_runtime.OnnxRuntime",
            "max_batch_size": MLSERVER_BATCH, "max_batch_time": MLSERVER_BATCH_TIME_S,
            "parameters": {"uri": str(model)}}))
        return root

    def wait_serving(self) -> None:
        """Until records sent to the input come out at the output (a few probes of 200)."""
        deadline = time.monotonic() + READY_S
        if self.http_port is not None:  # MLServer's consumer starts at the end: wait for it
            while not _http_ok(f"http://127.0.0.1:{self.http_port}/v2/health/ready"):
                self._check(deadline)
                time.sleep(0.5)
        while True:
            self._check(deadline)
            keys, *_ = run(self.flow, 200, None, 10)
            if len(keys):
                return

    def _check(self, deadline: float) -> None:
        if self.process.poll() is not None:
            raise PeerError(f"{self.peer.name} exited with code {self.process.returncode}: "
                            f"{self.tail()}")
        if time.monotonic() > deadline:
            raise PeerError(f"{self.peer.name} served nothing within {READY_S:g}s: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        """The end of the peer's log, for an error that says why."""
        text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return " | ".join(text) or "(no output)"

    def cpu(self) -> float | None:
        """CPU seconds of the peer's process and its children so far."""
        pids = [self.process.pid, *_descendants(self.process.pid)]
        used = [cpu_seconds(p) for p in pids]
        return sum(u for u in used if u is not None) if used[0] is not None else None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group: MLServer's workers too
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


def drain(peer: PeerProcess, count: int, deadline_s: float) -> dict[str, Any]:
    """A backlog of count records as fast as the generator goes: the peer's msgs/s and CPU."""
    with Timeline({"peer": peer.cpu}) as timeline:
        keys, times, _, sent_at = run(peer.flow, count, None, deadline_s)
    if len(keys) < 2:
        return {"records": count, "received": len(keys), "msgs_per_s": float("nan")}
    rate, a, b = steady_rate(times, sent_at)
    used = timeline.used(a, b).get("peer")
    records = rate * (b - a)
    return {"records": count, "received": len(keys), "msgs_per_s": rate, "window_s": b - a,
            "cpu_s_per_10k": {"worker": used * 10_000 / records} if used is not None and records
            else {}, "cpu_cores": {"worker": used / (b - a)} if used is not None and b > a else {}}


def offer(peer: PeerProcess, rate: float, seconds: float) -> dict[str, Any]:
    """A fixed rate for `seconds`: latency from scheduled send, and whether it was sustained.

    Sustained: at least 99.9 % of the records came out, and the median latency of the last
    quarter is at most 2 x + 250 ms that of the first (a queue that grows is not; Quix's
    0.5 s checkpoints alone move a short run's tenths by more than 1.5 x).
    """
    count = max(int(rate * seconds), 100)
    settle(peer.flow)
    with Timeline({"peer": peer.cpu}) as timeline:
        keys, times, start_at, _ = run(peer.flow, count, rate, deadline_s=seconds + 20)
    lat = latencies_ms(keys, times, start_at, rate)
    end = float(times.max()) if len(times) else float("nan")
    span = end - start_at
    used = timeline.used(start_at, end).get("peer") if len(times) else None
    out = {"offered_per_s": rate, "records": count, "received": len(keys),
           "achieved_per_s": len(keys) / span if span else float("nan"), **percentiles(lat),
           "cpu_s_per_10k": used * 10_000 / len(keys) if used is not None else None,
           "stalls": stalls(times)}
    order = np.argsort(keys)
    quarter = max(len(order) // 4, 1)
    early = float(np.median(lat[order[:quarter]])) if len(lat) else float("inf")
    late = float(np.median(lat[order[-quarter:]])) if len(lat) else float("inf")
    out["sustained"] = bool(len(keys) >= 0.999 * count and late <= 2 * early + 250)
    return out


def run(flow: Flow, count: int, rate: float | None, deadline_s: float
        ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """run_flow with keys of this run's own: results of a run before (a peer that lost
    track, or still works off a backlog) are dropped instead of timed as this run's."""
    first = time.time_ns() // 1000  # µs since 1970: unique per run, well inside int64
    keys, times, start_at, sent_at, _ = run_flow(flow, _ends(flow), count, rate, deadline_s,
                                                 first)
    keys = keys - first
    mine = (keys >= 0) & (keys < count)
    return keys[mine], times[mine], start_at, sent_at


def settle(flow: Flow, timeout: float = 60.0) -> None:
    """Until the output stops growing: what a run before left queued (Quix's last checkpoint,
    a backlog) must not come out inside the next run, whose keys start at 0 again."""
    deadline, last = time.monotonic() + timeout, _ends(flow)
    while time.monotonic() < deadline:
        time.sleep(0.6)  # longer than Quix's checkpoint interval
        if (now := _ends(flow)) == last:
            return
        last = now


def _ends(flow: Flow) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": flow.bootstrap, "group.id": "bench-ends"})
    try:
        parts = c.list_topics(flow.sink, timeout=10).topics[flow.sink].partitions
        return {p: c.get_watermark_offsets(TopicPartition(flow.sink, p), timeout=10)[1]
                for p in parts}
    finally:
        c.close()


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            for task in Path(f"/proc/{parent}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                out += children
                todo += children
        except OSError:
            continue
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
