"""Fault injection on Apache Kafka: every record that enters a pipeline's input topic ends up
exactly once as a result or as a dead letter, and every served one exactly once in the
inference logs, through worker crashes, a broker restart, redeploys and a corrupt artifact.

Each case streams a few thousand records (Avro, every 25th malformed JSON) at a steady rate
while the fault happens, then checks every record id, not counts. Batches without a malformed
record take the column-wise path (agents.serving.columnar), the others the record path. Run only
these: `pytest -m faults`.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from control.client import Client
from control.config import Settings
from control.local.broker_binaries import find_kafka_jars
from control.local.brokers import start_local_broker
from schemas.errors import Rejected
from sinks.access import read_owner
from tests.fault_tools import (
    FaultPlatform,
    Flow,
    Watch,
    exactly_once,
    note_pause,
    outcome,
    progress,
)
from tests.helpers import wait_until
from tests.worker_platform import serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.faults,
              pytest.mark.transactions]
@pytest.fixture(scope="module")
def platform(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultPlatform]:
    with serving(broker.bootstrap, tmp_path_factory.mktemp("faults"), "f", FaultPlatform,
                 keras=False, pipeline_partitions=4) as p:
        yield p


def test_worker_killed_repeatedly_loses_and_duplicates_nothing(platform: FaultPlatform) -> None:
    platform.pipeline("crashy", [{"model": "clf", "version": 1}])
    platform.deploy("crashy", batch_size=32, batch_wait_ms=10)
    flow = Flow(platform.settings, "crashy", 4000, 400).start()
    rng = random.Random(11)
    for _ in range(3):
        # Kill at a random point: somewhere in the next few hundred results.
        target = progress(platform.settings, "crashy") + rng.randrange(50, 400)
        wait_until(lambda t=target: progress(platform.settings, "crashy") >= t, 90,
                   "results flowing")
        platform.kill("w1")
        platform.restart("w1")
    flow.join()
    exactly_once(platform.settings, flow)
    # The log sink (in the worker, killed with it) stored every served record once too.
    good = sorted(flow.good)
    owner = platform.settings.model_copy(update={"data_dir": platform.tmp / "w1"})
    reader = Client(owner, user="ann", workspace="lab")

    def stored() -> bool:
        ids = [r["record_id"] for r in reader.logs("crashy", limit=None)]
        return sorted(ids) == good
    wait_until(stored, 120, "every log stored once in ClickHouse")


def test_the_other_worker_takes_over_a_killed_ones_partitions(platform: FaultPlatform) -> None:
    platform.pipeline("pair", [{"model": "clf", "version": 1}])
    platform.deploy("pair", batch_size=32, batch_wait_ms=10)
    platform.worker("w2").wait_ready("lab/pair")
    flow = Flow(platform.settings, "pair", 3000, 300).start()

    def both_serving() -> bool:
        seen = outcome(platform.settings, "pair", flow.tag)
        return {b["worker"] for b in seen.bodies.values()} == {"w1", "w2"}

    wait_until(both_serving, 90, "both workers serving")
    platform.kill("w2")
    platform.workers = [w for w in platform.workers if w.name != "w2"]
    flow.join()
    seen = exactly_once(platform.settings, flow)
    last = max(seen.bodies, key=lambda k: int(k.rsplit("-", 1)[1]))
    assert seen.bodies[last]["worker"] == "w1"


def test_redeploy_and_rollback_while_records_flow(platform: FaultPlatform) -> None:
    platform.pipeline("swap", [{"model": "clf", "version": 1}])
    platform.client.create_pipeline_version("swap", [{"model": "clf", "version": 2}])
    platform.deploy("swap", 1, batch_size=32, batch_wait_ms=10)
    flow = Flow(platform.settings, "swap", 3000, 300).start()
    for step in (500, 1200, 2000):
        wait_until(lambda s=step: progress(platform.settings, "swap") >= s, 90, "flowing")
        if step == 1200:
            platform.client.rollback("swap")
            platform.deploy("swap", 1)
        else:
            platform.deploy("swap", 2)
    flow.join()
    seen = exactly_once(platform.settings, flow)
    versions = Counter(b["pipeline_version"] for b in seen.bodies.values())
    assert set(versions) == {1, 2}
    for body in seen.bodies.values():  # each record wholly served by the version it names
        assert [(m["model"], m["version"]) for m in body["models"]] == [
            ("clf", body["pipeline_version"])]


def test_a_corrupt_artifact_is_refused_while_the_old_version_serves(
        platform: FaultPlatform) -> None:
    platform.corrupt_model("rotten")
    platform.pipeline("kept", [{"model": "clf", "version": 1}])
    platform.client.create_pipeline_version("kept", [{"model": "rotten", "version": 1}])
    platform.deploy("kept", 1, batch_size=32, batch_wait_ms=10)
    flow = Flow(platform.settings, "kept", 2000, 400).start()
    wait_until(lambda: progress(platform.settings, "kept") >= 300, 60, "flowing")
    with pytest.raises(Rejected, match=r"cannot load kept version 2.*keeps serving version 1"):
        platform.client.deploy("kept", 2, worker_wait=30)
    flow.join()
    seen = exactly_once(platform.settings, flow)
    assert {b["pipeline_version"] for b in seen.bodies.values()} == {1}


@pytest.fixture
def own_broker(broker, tmp_path: Path):
    """An Apache Kafka broker of this test's own, which it may restart."""
    if broker.kind not in ("apache-kafka", "external") or not find_kafka_jars() \
            or not shutil.which("java"):
        pytest.skip("restarting a broker needs Apache Kafka from local jars and java")
    with start_local_broker(tmp_path / "broker", "kafka") as local:
        yield local


def test_broker_restart_while_workers_run(own_broker, tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers=own_broker.bootstrap, namespace="restart",
                        data_dir=tmp_path / "cli", pipeline_partitions=2)
    platform = FaultPlatform(settings, tmp_path, keras=False)
    try:
        platform.worker("w1").wait_ready()
        platform.pipeline("steady", [{"model": "clf", "version": 1}])
        platform.deploy("steady", batch_size=32, batch_wait_ms=10)
        flow = Flow(settings, "steady", 3000, 200)
        watch = Watch(settings, "steady", flow.tag).start()
        flow.start()
        wait_until(lambda: progress(settings, "steady") >= 500, 60, "flowing")
        own_broker.restart()  # same port and data folder: topics and records survive
        flow.join(180)
        try:
            exactly_once(settings, flow, timeout=240)
        except AssertionError as exc:  # what the worker was doing says more than the count
            raise AssertionError(f"{exc}\nworker log:\n{platform.workers[0].tail(80)}") from exc
        note_pause("one broker restarted", watch.stop())
        assert platform.workers[0].process.poll() is None, "the worker carried on"
    finally:
        platform.close()


def test_logs_reach_clickhouse_whichever_worker_on_a_shared_folder_dies(
        broker, tmp_path: Path) -> None:
    """Two workers on one data folder (one owns chDB and sinks the logs): kill -9 the owner
    twice while records flow; the other takes the folder and the logs topic, the killed one
    comes back as an ordinary worker, and every served record's log is stored once."""
    shared = tmp_path / "shared"
    settings = Settings(bootstrap_servers=broker.bootstrap, namespace=f"s{uuid4().hex[:8]}",
                        data_dir=shared, pipeline_partitions=2)
    platform = FaultPlatform(settings, tmp_path, keras=False)
    try:
        for name in ("s1", "s2"):
            platform.worker(name, data_dir=shared).wait_ready()
        platform.pipeline("shared", [{"model": "clf", "version": 1}])
        platform.deploy("shared", batch_size=32, batch_wait_ms=10)
        flow = Flow(settings, "shared", 3000, 200).start()
        reader = Client(settings, user="ann", workspace="lab")
        for _ in range(2):
            target = progress(settings, "shared") + 300
            wait_until(lambda t=target: progress(settings, "shared") >= t, 90, "flowing")
            owner = wait_until(lambda: read_owner(settings), 60, "a worker owns chDB")
            victim = next(w for w in platform.workers if w.process.pid == owner["pid"])
            platform.kill(victim.name)
            victim = platform.worker(victim.name, data_dir=shared)  # back, same name
            platform.workers = [w for w in platform.workers
                                if w is victim or w.process.poll() is None]
            victim.wait_ready()
            # Both alive again: the logs of what was served so far reach ClickHouse, whichever
            # of the two holds the logs partition now.
            served = len(outcome(settings, "shared", flow.tag).results)
            wait_until(lambda n=served: reader.count_logs("shared") >= n, 60,
                       f"the logs of {served} served records stored after the restart")
        flow.join()
        exactly_once(settings, flow)
        wait_until(lambda: sorted(r["record_id"] for r in reader.logs("shared", limit=None))
                   == sorted(flow.good), 90, "every served record's log stored once")
    finally:
        platform.close()
