"""The control log: worker and CLI start time with 1k, 10k, 100k events on the control topic.

Every reader replays the control topic from offset 0 (the registry is a fold over it), so start
time grows with the log. The log is filled with the events an operator's CI would leave: 100
pipelines of the GBT created once, then round robin over them either new pipeline versions
(mix "versions", the default: the fold alone) or Deploy/Undeploy pairs (mix "deploys", ending
undeployed; a worker reconciles what it serves after each deployment event it replays, so this
mix also measures that: ~0.15 s an event in a smoke run, far too slow for 10k). The events
are encoded once and produced in one go, so the set-up is not what is measured; the registrar
folds them (its catch-up time is recorded) before anything is timed. Then: a new worker from
start to ready (replayed and live), `inferstream pipelines list` from start to exit (it
replays twice: pipelines, then deployments), and the client's own replay in this process.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench.platform import WORKSPACE, BenchPlatform
from control.client import Client
from control.kafka import end_offsets, producer
from control.local.child_process import child_env
from control.local.worker_process import WorkerProcess
from control.registry.chains import RULES
from control.registry.events import ControlEvent
from control.registry.steps import step_from_json, step_to_avro

PIPELINES = 100
CLI_RUNS = 3
REGISTRAR_S_PER_EVENT = 0.03  # the most the registrar's catch-up is waited for, an event


def events(start: int, count: int, mix: str) -> Iterator[ControlEvent]:
    """Events start .. start+count-1 of the log's sequence (creations first, then the mix)."""
    step = step_to_avro(step_from_json({"model": "gbt", "version": 1}, lambda _: 1))
    def version(name: str) -> ControlEvent:
        return ControlEvent("CreatePipelineVersion", {
            "pipeline": name, "steps": [step], "result_steps": [], "rules": RULES,
            "validations": []}, "bench", WORKSPACE)

    for i in range(start, start + count):
        if i < 2 * PIPELINES:
            name = f"ctl-{i // 2}"
            yield (ControlEvent("CreatePipeline", {"name": name, "description": None},
                                "bench", WORKSPACE) if i % 2 == 0 else version(name))
            continue
        j = i - 2 * PIPELINES
        if mix == "versions":
            yield version(f"ctl-{j % PIPELINES}")
            continue
        name = f"ctl-{j // 2 % PIPELINES}"
        yield (ControlEvent("Deploy", {"pipeline": name, "version": None, "batch_size": 512,
                                       "batch_wait_ms": 10, "rules": RULES}, "bench", WORKSPACE)
               if j % 2 == 0 else ControlEvent("Undeploy", {"pipeline": name}, "bench", WORKSPACE))


def fill(platform: BenchPlatform, start: int, count: int, mix: str) -> dict[str, float]:
    """Produce `count` pre-encoded events; wait until the registrar has judged them all."""
    settings = platform.settings
    encoded = [(e.event_id.encode(), e.to_bytes()) for e in events(start, count, mix)]
    statuses = settings.topic("control.status")
    before = sum(end_offsets(settings, statuses).values())
    p = producer(settings, **{"linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    started = time.monotonic()
    for key, value in encoded:
        while True:
            try:
                p.produce(settings.topic("control"), key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)
    produced_s = time.monotonic() - started
    # The registrar flushes a status and commits after every event: ~100-150 events/s in a
    # smoke run, so 100k take most of 20 minutes.
    wait = 300 + count * REGISTRAR_S_PER_EVENT
    deadline = time.monotonic() + wait
    while sum(end_offsets(settings, statuses).values()) < before + count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the registrar judged fewer than {count} events in {wait:.0f}s")
        time.sleep(0.2)
    return {"produce_s": produced_s, "registrar_caught_up_s": time.monotonic() - started}


def curve(platform: BenchPlatform, sizes: Sequence[int], mix: str,
          say: Callable[[str], None]) -> dict[str, Any]:
    """A point per log length: worker start, CLI start and in-process replay times."""
    settings = platform.settings
    control = settings.topic("control")
    ours = 0  # events of this curve on the log so far
    points = []
    for size in sizes:
        on_log = sum(end_offsets(settings, control).values())
        add = max(size - on_log, 0)
        if mix == "deploys":
            add += (ours + add) % 2  # whole Deploy/Undeploy pairs: nothing is left deployed
        say(f"control log {size:,}: produce {add:,} events")
        try:
            filled = fill(platform, ours, add, mix)
            ours += add
            points.append(_point(platform, size, filled, say))
        except Exception as exc:  # the sizes before it are kept; the log is not whole: stop
            say(f"control log {size:,} failed: {exc!r}")
            points.append({"size": size, "error": repr(exc)})
            break
    then = "new versions" if mix == "versions" else "Deploy/Undeploy pairs"
    return {"mix": mix, "what": f"{PIPELINES} pipelines created, then {then}; worker = "
                    "start to ready, CLI = `inferstream pipelines list` start to exit",
            "points": points}


def _point(platform: BenchPlatform, size: int, filled: dict[str, float],
           say: Callable[[str], None]) -> dict[str, Any]:
    settings = platform.settings
    events_on_log = sum(end_offsets(settings, settings.topic("control")).values())
    say(f"control log {events_on_log:,} events: worker, CLI, client replay")
    started = time.monotonic()
    w = WorkerProcess(settings, f"w-ctl{size}", platform.folder)
    try:
        w.wait_ready(timeout=900)
        worker_s = time.monotonic() - started
    finally:
        w.stop()
    return {"size": size, "events": events_on_log, "worker_ready_s": worker_s,
            "cli_pipelines_list_s": _cli(platform), "client_replay_s": _replay(settings),
            **filled}


def _cli(platform: BenchPlatform) -> float:
    """Median wall time of `inferstream pipelines list` run as a user would."""
    env = {**child_env(platform.settings, platform.folder / "cli"), "INFERSTREAM_USER": "bench",
           "INFERSTREAM_WORKSPACE": WORKSPACE}
    times = []
    for _ in range(CLI_RUNS):
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "control.cli", "pipelines", "list"], env=env,
                       check=True, stdout=subprocess.DEVNULL, timeout=600)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def _replay(settings: Any) -> float:
    """The client's replay and fold of the whole log, in this process."""
    started = time.monotonic()
    Client(settings, user="bench", workspace=WORKSPACE).registry()
    return time.monotonic() - started
