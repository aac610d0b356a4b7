"""A local Apache Kafka cluster of three (or more) KRaft nodes on loopback, for failover tests
and for anyone trying them on a laptop.

Each node is broker and controller, with ports, a data folder and a log of its own and a small
heap; topics get three replicas and need two in sync (`min.insync.replicas=2`), Kafka's own
internal topics too, so that any one node may die without a write being lost.

    python -m control.local.cluster start --data-dir D [--nodes 3]
    python -m control.local.cluster stop --data-dir D
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from control.local import broker_binaries
from control.local.broker_binaries import (
    KAFKA_JVM_OPTIONS,
    LOG4J_CONFIG,
    find_kafka_jars,
    kafka_version,
)
from control.local.brokers import _alive, free_port
from schemas.errors import BrokerError

_START_TIMEOUT_S = 90.0
# Three JVMs on a laptop: a quarter of the single broker's heap each is plenty for tests.
_HEAP = ("-Xms256m", "-Xmx512m")
_NODE_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dirs}
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={in_sync}
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={in_sync}
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={in_sync}
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
# A node that comes back catches up and leads again its preferred partitions soon.
leader.imbalance.check.interval.seconds=10
"""


@dataclass
class Node:
    """One KRaft node (broker and controller) of a local cluster."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    """A cluster of KRaft nodes on loopback; kill, stop and start them one at a time."""

    data_dir: Path
    version: str
    nodes: list[Node] = field(default_factory=list)
    _client: tuple[str, AdminClient] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def start_node(self, node_id: int) -> None:
        """Start a node (again) on its ports and data, and wait until it is in the cluster."""
        node = self.node(node_id)
        if node.running:
            return
        with (node.data_dir / "node.log").open("ab") as log:
            node.process = subprocess.Popen(
                _command(node.data_dir), cwd=node.data_dir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        self.wait_for_brokers({n.node_id for n in self.nodes if n.running})

    def kill(self, node_id: int) -> None:
        """kill -9 the node."""
        self._end(node_id, signal.SIGKILL)

    def stop_node(self, node_id: int) -> None:
        """Stop the node cleanly (it hands its leaderships over first)."""
        self._end(node_id, signal.SIGTERM)

    def restart(self, node_id: int) -> None:
        self.stop_node(node_id)
        self.start_node(node_id)

    def stop(self) -> None:
        for node in self.nodes:
            self._end(node.node_id, signal.SIGTERM)

    def leader(self, topic: str, partition: int = 0) -> int:
        """The node that leads a partition now."""
        meta = self._admin().list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None or partition not in meta.partitions:
            raise BrokerError(f"no metadata for {topic}[{partition}]: {meta.error}")
        return meta.partitions[partition].leader

    def coordinator(self, transactional_id: str) -> int:
        """The node that coordinates a transactional id (holds its __transaction_state part)."""
        # Kafka's rule: the partition is abs(hashCode of the id) % the topic's partitions.
        topic = "__transaction_state"
        meta = self._admin().list_topics(topic, timeout=10).topics[topic]
        return self.leader(topic, _java_hash(transactional_id) % len(meta.partitions))

    def wait_for_brokers(self, wanted: set[int], timeout: float = _START_TIMEOUT_S) -> None:
        """Wait until the cluster's metadata names exactly these nodes as brokers."""
        deadline, seen = time.monotonic() + timeout, set()
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None \
                        and node.node_id in wanted:
                    raise BrokerError(f"node {node.node_id} exited; its log:\n{_tail(node)}")
            up = [n for n in self.nodes if n.running and _listening(n.port)]
            with contextlib.suppress(Exception):  # KafkaException while nodes come up
                seen = set(self._admin().list_topics(timeout=2).brokers) if up else set()
                if seen == wanted:
                    return
            time.sleep(0.2)
        raise BrokerError(f"the cluster shows brokers {sorted(seen)}, not {sorted(wanted)}, "
                          f"after {timeout:g}s")

    def _end(self, node_id: int, sig: int) -> None:
        node = self.node(node_id)
        if node.running:
            assert node.process is not None
            node.process.send_signal(sig)
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)
        node.process = None

    def _admin(self) -> AdminClient:
        """A client of the running nodes (made again when they change); quiet, since nodes
        that are coming up or going down refuse connections by design here."""
        running = ",".join(n.address for n in self.nodes if n.running) or self.bootstrap
        if self._client is None or self._client[0] != running:
            self._client = (running, AdminClient({"bootstrap.servers": running,
                                                  "log_level": 2}))
        return self._client[1]

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_cluster(data_dir: Path, nodes: int = 3) -> LocalCluster:
    """Format and start `nodes` KRaft nodes under `data_dir`, and wait until all are brokers."""
    jars = find_kafka_jars(fetch=True)
    if jars is None:
        raise BrokerError("no Apache Kafka jars: a local cluster needs them (.ci/run fetches "
                          "them with Maven)")
    data_dir = Path(data_dir).resolve()
    members = [Node(i, free_port(), free_port(), data_dir / f"node-{i}")
               for i in range(1, nodes + 1)]
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in members)
    cluster_id, replicas = broker_binaries.cluster_id(), min(3, nodes)
    for node in members:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        config = node.data_dir / "server.properties"
        config.write_text(_NODE_PROPERTIES.format(
            node_id=node.node_id, voters=voters, port=node.port,
            controller_port=node.controller_port, log_dirs=node.data_dir / "kraft-logs",
            replicas=replicas, in_sync=max(1, replicas - 1)))
        done = subprocess.run(
            ["java", "-cp", f"{jars}{os.sep}*", "kafka.tools.StorageTool", "format", "-t",
             cluster_id, "-c", str(config)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrokerError(f"formatting node {node.node_id} failed:\n{done.stderr}")
    cluster = LocalCluster(data_dir, kafka_version(jars), members)
    for node in members:  # all at once: a controller quorum needs a majority to elect
        with (node.data_dir / "node.log").open("ab") as log:
            node.process = subprocess.Popen(
                _command(node.data_dir), cwd=node.data_dir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cluster.wait_for_brokers({n.node_id for n in members})
    except BrokerError:
        cluster.stop()
        raise
    return cluster


def _command(node_dir: Path) -> list[str]:
    jars = find_kafka_jars()
    options = [o for o in KAFKA_JVM_OPTIONS if not o.startswith(("-Xms", "-Xmx"))]
    command = ["java", *_HEAP, *options]
    if LOG4J_CONFIG.exists():
        command.append(f"-Dlog4j2.configurationFile={LOG4J_CONFIG}")
    return [*command, "-cp", f"{jars}{os.sep}*", "kafka.Kafka",
            str(node_dir / "server.properties")]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _java_hash(text: str) -> int:
    """Java's String.hashCode, made non-negative as Kafka's Utils.abs does."""
    h = 0
    for ch in text:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    signed = h - (1 << 32) if h & 0x80000000 else h
    return signed & 0x7FFFFFFF if signed != -(1 << 31) else 0


def _tail(node: Node, lines: int = 20) -> str:
    try:
        text = (node.data_dir / "node.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    """`start` a detached cluster and print its bootstrap servers, or `stop` it again."""
    parser = argparse.ArgumentParser(prog="python -m control.local.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a cluster that outlives this command")
    start.add_argument("--data-dir", type=Path, required=True)
    start.add_argument("--nodes", type=int, default=3)
    stop = commands.add_parser("stop", help="stop the cluster started in --data-dir")
    stop.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    pids = args.data_dir.resolve() / "cluster.json"
    if args.command == "stop":
        if pids.exists():
            for pid in json.loads(pids.read_text())["pids"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            for pid in json.loads(pids.read_text())["pids"]:
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            pids.unlink()
        return 0
    try:
        cluster = start_local_cluster(args.data_dir, args.nodes)
    except BrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    facts = {"bootstrap": cluster.bootstrap, "version": cluster.version,
             "pids": [n.process.pid for n in cluster.nodes if n.process]}
    pids.write_text(json.dumps(facts))
    print(f"bootstrap={cluster.bootstrap}\nversion={cluster.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
