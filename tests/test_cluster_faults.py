"""Faults of a real Kafka cluster: three KRaft nodes on loopback (control/local/cluster.py), the
platform's topics with three replicas and two in sync, two workers on one data folder.

One at a time: kill -9 the node leading the input partitions, the transaction coordinator of a
worker, and the leader of the control topic; restart all three in turn; keep one down for a
minute; deploy and roll back while one is down. Each case streams records at a steady rate
through the fault and checks every record id: none lost, none twice on the output under
read_committed, and every served one stored once in ClickHouse. The longest pause of results
in each case is written to $INFERSTREAM_FAULT_REPORT (JSON) when set (docs/operations.md).
Run only these: `pytest -m cluster`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from uuid import uuid4

import pytest

from control.client import Client
from control.config import Settings
from control.kafka import TopicSpec, ensure_topics, list_topics, read_until_end, replication_factor
from control.local.broker_binaries import find_kafka_jars
from control.local.cluster import LocalCluster, start_local_cluster
from schemas.errors import BrokerError
from tests.fault_tools import FaultPlatform, Flow, Watch, exactly_once, note_pause
from tests.helpers import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.faults, pytest.mark.cluster,
              pytest.mark.transactions]
RATE = 150.0  # records a second: a steady trickle the two workers keep up with on 2 cores


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if find_kafka_jars(fetch=True) is None:
        pytest.skip("the cluster suite needs Apache Kafka's jars and Java (.ci/run fetches them)")
    with start_local_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def platform(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[FaultPlatform]:
    tmp = tmp_path_factory.mktemp("cluster-platform")
    settings = Settings(bootstrap_servers=cluster.bootstrap, namespace=f"c{uuid4().hex[:8]}",
                        data_dir=tmp / "data", pipeline_partitions=2, min_insync_replicas=2)
    p = FaultPlatform(settings, tmp, keras=False)
    for name in ("w1", "w2"):  # one data folder: one of them owns chDB and sinks the logs
        p.worker(name, data_dir=settings.data_dir).wait_ready()
    yield p
    p.close()


def test_every_platform_topic_has_three_replicas(platform: FaultPlatform) -> None:
    platform.pipeline("replicated", [{"model": "clf", "version": 1}])
    platform.deploy("replicated")
    topics = list_topics(platform.settings).topics
    ours = [t for t in topics if t.startswith(platform.settings.namespace)]
    assert len(ours) >= 9  # control, status, artifacts, logs, alerts, workers, and the pipeline's
    assert {t: min(len(p.replicas) for p in topics[t].partitions.values()) for t in ours} == {
        t: 3 for t in ours}


def test_replication_the_cluster_cannot_hold_is_refused_and_too_few_replicas_are_named(
        cluster: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(bootstrap_servers=cluster.bootstrap, namespace=f"r{uuid4().hex[:8]}")
    with pytest.raises(BrokerError, match=r"with 5 replicas .* cluster of 3 broker\(s\)"):
        ensure_topics(settings.model_copy(update={"replication_factor": 5}),
                      {settings.topic("five"): TopicSpec()})
    ensure_topics(settings.model_copy(update={"replication_factor": 1}),
                  {settings.topic("one"): TopicSpec()})
    with caplog.at_level(logging.WARNING, "control.kafka"):
        ensure_topics(settings, {settings.topic("one"): TopicSpec(vital=True)})  # default: 3
        assert "has 1 replica(s)" not in caplog.text  # the cluster's default is not asked for
        ensure_topics(settings.model_copy(update={"replication_factor": 3}),
                      {settings.topic("one"): TopicSpec()})
    assert f"topic {settings.topic('one')} has 1 replica(s), fewer than the 3" in caplog.text
    assert replication_factor(settings) == 3  # the cluster's default.replication.factor


def run_through(platform: FaultPlatform, cluster: LocalCluster, name: str, fault,
                count: int = 1500) -> None:
    """Stream `count` records through pipeline `name` while `fault(cluster)` happens, then
    check every id on the output and in ClickHouse; note the longest pause of results."""
    if (("lab", name)) not in platform.client.registry().deployments:
        platform.pipeline(name, [{"model": "clf", "version": 1}])
        platform.deploy(name, batch_size=32, batch_wait_ms=10)
    flow = Flow(platform.settings, name, count, RATE)
    watch = Watch(platform.settings, name, flow.tag).start()
    flow.start()
    wait_until(lambda: results_of(platform.settings, name, flow.tag) >= 100, 60,
               "results flowing before the fault")
    fault(cluster)
    flow.join(300)
    exactly_once(platform.settings, flow, timeout=300)
    reader = Client(platform.settings, user="ann", workspace="lab")
    wait_until(lambda: sorted(r["record_id"] for r in reader.logs(name, limit=None)
                              if r["record_id"].startswith(flow.tag)) == sorted(flow.good),
               180, "every served record's log stored once in ClickHouse")
    note_pause(f"cluster: {name}", watch.stop())


def results_of(settings: Settings, pipeline: str, tag: str) -> int:
    topic = settings.pipeline_topic("lab", pipeline, "output")
    return sum(1 for m in read_until_end(settings, topic) if m.key().decode().startswith(tag))


def kill_and_restart(node_of) -> callable:
    def fault(cluster: LocalCluster) -> None:
        node = node_of(cluster)
        cluster.kill(node)
        cluster.wait_for_brokers({n.node_id for n in cluster.nodes if n.running})
        time.sleep(5)  # a fault that lasts: records flow past it for a while
        cluster.start_node(node)
    return fault


def test_kill_the_leader_of_the_input_partitions(platform: FaultPlatform,
                                                 cluster: LocalCluster) -> None:
    topic = platform.settings.pipeline_topic("lab", "input-leader", "input")
    run_through(platform, cluster, "input-leader",
                kill_and_restart(lambda c: c.leader(topic, 0)))


def test_kill_the_transaction_coordinator_of_a_worker(platform: FaultPlatform,
                                                      cluster: LocalCluster) -> None:
    transactional_id = f"{platform.settings.namespace}-workers-serving-w1"
    run_through(platform, cluster, "coordinator",
                kill_and_restart(lambda c: c.coordinator(transactional_id)))


def test_kill_the_leader_of_the_control_topic(platform: FaultPlatform,
                                              cluster: LocalCluster) -> None:
    control = platform.settings.topic("control")
    run_through(platform, cluster, "control-leader",
                kill_and_restart(lambda c: c.leader(control, 0)))
    # The registry survived: a new control event is judged and applied.
    platform.client.create_pipeline("after-control-leader")
    assert ("lab", "after-control-leader") in platform.client.registry().pipelines


def test_a_rolling_restart_of_every_node(platform: FaultPlatform,
                                         cluster: LocalCluster) -> None:
    def rolling(c: LocalCluster) -> None:
        for node in [n.node_id for n in c.nodes]:
            c.restart(node)
    run_through(platform, cluster, "rolling", rolling, count=3000)


def test_a_node_down_for_a_minute(platform: FaultPlatform, cluster: LocalCluster) -> None:
    def minute(c: LocalCluster) -> None:
        node = c.nodes[-1].node_id
        c.stop_node(node)
        time.sleep(60)  # the fault is a minute long: nothing to wait for but the clock
        c.start_node(node)
    run_through(platform, cluster, "minute", minute, count=int(RATE * 75))


def test_deploy_and_roll_back_while_a_node_is_down(platform: FaultPlatform,
                                                   cluster: LocalCluster) -> None:
    def redeploy(c: LocalCluster) -> None:
        node = c.leader(platform.settings.topic("control"), 0)
        c.kill(node)
        c.wait_for_brokers({n.node_id for n in c.nodes if n.running})
        platform.client.create_pipeline_version("swap", [{"model": "clf", "version": 2}])
        platform.client.deploy("swap", 2, worker_wait=60)
        platform.client.rollback("swap", worker_wait=60)
        c.start_node(node)
    run_through(platform, cluster, "swap", redeploy)
    deployment = platform.client.registry().deployments[("lab", "swap")]
    assert (deployment.version, deployment.history) == (1, (1, 2, 1))
