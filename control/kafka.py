"""Thin confluent-kafka plumbing shared by the control plane: clients, topics, replay.

Every client takes `Settings.kafka_config()` (SASL and TLS included); the Faust app of the
workers takes the same settings through `faust_broker_options`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from control.config import Settings, secret
from schemas.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)
FOREVER = "-1"
READ_BATCH = 1000  # messages taken from the consumer at once by readers of a whole topic
# Errors of a partition whose leader is not settled yet (a new topic, a restarted broker).
_LEADERSHIP = {
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    # A leader elected a moment ago answers this until its high watermark has caught up.
    KafkaError.OFFSET_NOT_AVAILABLE,
}


@dataclass(frozen=True)
class TopicSpec:
    partitions: int = 1
    config: dict[str, str] = field(default_factory=dict)
    vital: bool = False  # the registry or the models: control_replication_factor applies


def platform_topics(settings: Settings) -> dict[str, TopicSpec]:
    """The topics every platform has, whatever is deployed on it."""
    return {
        # One partition: control events have one total order, kept forever.
        settings.topic("control"): TopicSpec(1, {"retention.ms": FOREVER}, vital=True),
        settings.topic("control.status"): TopicSpec(1, {"retention.ms": str(7 * 86_400_000)}),
        # Chunk keys are unique (sha256:index), so compaction keeps every artifact forever.
        settings.topic("artifacts"): TopicSpec(1, {"cleanup.policy": "compact"}, vital=True),
        # chDB has one owner, so one consumer of the logs; a server takes several.
        settings.topic("logs"): TopicSpec(3 if settings.clickhouse_url else 1),
        settings.topic("alerts"): TopicSpec(1),
        # Workers' heartbeats keyed by worker (agents.heartbeat): compaction keeps the latest
        # of each; deletion drops, after a week, the last one of a worker that died.
        settings.topic("workers"): TopicSpec(1, {
            "cleanup.policy": "compact,delete", "retention.ms": str(7 * 86_400_000),
            "segment.ms": str(3_600_000)}),
    }


def pipeline_topics(settings: Settings, workspace: str, pipeline: str) -> dict[str, TopicSpec]:
    """A deployed pipeline's input, output, dead-letter and labels (ground truth) topics."""
    many = TopicSpec(settings.pipeline_partitions)
    return {
        settings.pipeline_topic(workspace, pipeline, "input"): many,
        settings.pipeline_topic(workspace, pipeline, "output"): many,
        settings.pipeline_topic(workspace, pipeline, "dead"): TopicSpec(1),
        settings.pipeline_topic(workspace, pipeline, "labels"): many,
    }


def producer(settings: Settings, **overrides: object) -> Producer:
    """An idempotent producer whose key hashing matches Faust/aiokafka (murmur2)."""
    config = {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "message.max.bytes": 2_000_000,
        **overrides,
    }
    return Producer(config)


def consumer(settings: Settings, group: str | None = None, **overrides: object) -> Consumer:
    """A consumer; without a group it is only used with assign() and never commits."""
    config = {
        **settings.kafka_config(),
        "group.id": group or f"{settings.namespace}.reader",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "fetch.message.max.bytes": 2_000_000,
        # Workers write results, dead letters and logs in transactions: read only committed ones.
        "isolation.level": "read_committed",
        **overrides,
    }
    return Consumer(config)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())


class ClientErrors:
    """What librdkafka reports through `error_cb`: how a refused login becomes a clear error.

    A client whose credentials the broker refuses only sees metadata requests time out; the
    reason (SASL authentication failed, TLS handshake failed) comes through this callback.
    """

    _REFUSALS = {KafkaError._AUTHENTICATION, KafkaError._SSL}

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []

    def __call__(self, error: KafkaError) -> None:
        self.errors.append(error)

    def refusal(self, settings: Settings) -> BrokerError | None:
        """A BrokerError saying why the broker refused the connection, if it did."""
        found = next((e for e in self.errors if e.code() in self._REFUSALS), None)
        if found is None:
            return None
        if found.code() == KafkaError._SSL:
            return BrokerError(
                f"TLS with Kafka at {settings.bootstrap_servers} failed: {found.str()}; check "
                "INFERSTREAM_SSL_CA_LOCATION (and the client certificate and key, if any)"
            )
        return BrokerError(
            f"Kafka at {settings.bootstrap_servers} refused the credentials of SASL user "
            f"{settings.sasl_username!r} ({settings.sasl_mechanism}): {found.str()}; check "
            "INFERSTREAM_SASL_USERNAME and INFERSTREAM_SASL_PASSWORD"
        )


def list_topics(settings: Settings, timeout: float = 30.0) -> dict[str, Any]:
    """The cluster's topic metadata; a refused login fails at once, with the reason."""
    errors = ClientErrors()
    client = AdminClient({**settings.kafka_config(), "error_cb": errors})
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            client.poll(0)  # serves error_cb
            refused = errors.refusal(settings)
            if refused is not None:
                raise refused from None
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}; is a broker "
                    "running (`inferstream up`) and INFERSTREAM_BOOTSTRAP_SERVERS right?"
                ) from exc


def ensure_topics(settings: Settings, specs: dict[str, TopicSpec], timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet, with the platform's replication, and wait until
    the broker knows them; warn of existing ones with fewer replicas than asked for."""
    metadata = list_topics(settings, timeout)
    existing = metadata.topics
    client = admin(settings)
    missing = [
        NewTopic(name, spec.partitions, _replicas(settings, spec),
                 config={**_insync(settings), **spec.config})
        for name, spec in specs.items() if name not in existing
    ]
    for name, spec in specs.items():
        _check_replicas(settings, name, spec, existing.get(name))
    for name, future in client.create_topics(missing).items() if missing else ():
        try:
            future.result(timeout)
        except KafkaException as exc:
            error = exc.args[0]
            code = error.code()
            if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise BrokerError(
                    f"topic {name} does not exist and {settings.sasl_username or 'this client'!r}"
                    " may not create it (Kafka ACLs); start a worker, which creates the "
                    "platform's topics, or have an administrator create it"
                ) from None
            if code in (KafkaError.INVALID_REPLICATION_FACTOR, KafkaError.INVALID_CONFIG,
                        KafkaError.POLICY_VIOLATION):
                raise BrokerError(
                    f"cannot create topic {name} with {_replicas(settings, specs[name])} "
                    f"replicas and min.insync.replicas {settings.min_insync_replicas or 'default'}"
                    f" on a cluster of {len(metadata.brokers)} broker(s): {error.str()}; set "
                    "INFERSTREAM_REPLICATION_FACTOR (and _CONTROL_REPLICATION_FACTOR, "
                    "_MIN_INSYNC_REPLICAS) to what the cluster can hold"
                ) from None
            if code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while not _led(client.list_topics(timeout=timeout).topics, specs):
        if time.monotonic() > deadline:
            raise BrokerError(f"topics {sorted(specs)} got no partition leaders in {timeout}s")
        time.sleep(0.05)


def _replicas(settings: Settings, spec: TopicSpec) -> int:
    """The replication factor asked for; -1 leaves it to the cluster's default."""
    asked = settings.control_replication_factor if spec.vital else None
    return asked or settings.replication_factor or -1


def _insync(settings: Settings) -> dict[str, str]:
    if settings.min_insync_replicas is None:
        return {}
    return {"min.insync.replicas": str(settings.min_insync_replicas)}


def _check_replicas(settings: Settings, name: str, spec: TopicSpec, found: Any) -> None:
    """Warn when a topic made earlier (or by hand) has fewer replicas than now asked for."""
    wanted = _replicas(settings, spec)
    if found is None or wanted < 0 or not found.partitions:
        return
    fewest = min(len(p.replicas) for p in found.partitions.values())
    if fewest < wanted:
        log.warning("topic %s has %d replica(s), fewer than the %d asked for "
                    "(INFERSTREAM_%sREPLICATION_FACTOR): add replicas with "
                    "kafka-reassign-partitions", name, fewest, wanted,
                    "CONTROL_" if spec.vital and settings.control_replication_factor else "")


def replication_factor(settings: Settings, timeout: float = 10.0) -> int | None:
    """The replication of the platform's topics: the setting, else the cluster's
    default.replication.factor (None when the cluster will not say)."""
    if settings.replication_factor:
        return settings.replication_factor
    client = admin(settings)
    try:
        brokers = client.list_topics(timeout=timeout).brokers
        resource = ConfigResource(ConfigResource.Type.BROKER, str(min(brokers)))
        found = client.describe_configs([resource])[resource].result(timeout)
        return int(found["default.replication.factor"].value)
    except (KafkaException, KeyError, ValueError) as exc:
        log.info("cannot read the cluster's default.replication.factor: %s", exc)
        return None


def _led(topics: dict, specs: dict[str, TopicSpec]) -> bool:
    """Whether every partition of every topic has a leader (fresh topics need a moment)."""
    return all(
        name in topics and topics[name].error is None and topics[name].partitions
        and all(p.leader >= 0 for p in topics[name].partitions.values())
        for name in specs
    )


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The current end (high watermark) of each partition of a topic."""
    c = consumer(settings)
    try:
        meta = c.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise BrokerError(f"topic {topic}: {meta.error}")
        return {p: watermarks(c, TopicPartition(topic, p), timeout)[1] for p in meta.partitions}
    finally:
        c.close()


def watermarks(c: Consumer, tp: TopicPartition, timeout: float = 10.0) -> tuple[int, int]:
    """The (low, high) watermarks of one partition, waiting out a leadership move for up to
    `timeout` seconds (a new topic, a broker restarted or killed a moment ago)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return c.get_watermark_offsets(tp, timeout=timeout)
        except KafkaException as exc:
            # Leadership moves (new topic, broker restart) are retriable; wait them out.
            error = exc.args[0]
            if not (error.retriable() or error.code() in _LEADERSHIP) \
                    or time.monotonic() > deadline:
                raise BrokerError(f"end offset of {tp.topic}[{tp.partition}]: {exc}") from exc
            time.sleep(0.1)


def read_until_end(
    settings: Settings, topic: str, timeout: float = 30.0, start: int = OFFSET_BEGINNING,
    ends: dict[int, int] | None = None,
) -> Iterator[Message]:
    """Every message of a topic from `start` up to its end as of now (or up to `ends`, read
    by the caller), partition by partition."""
    ends = end_offsets(settings, topic) if ends is None else ends
    c = consumer(settings)
    try:
        for partition, end in ends.items():
            if end <= 0:
                continue
            c.assign([TopicPartition(topic, partition, start)])
            yield from _partition_until(c, topic, partition, end, timeout)
    finally:
        c.close()


def _partition_until(c: Consumer, topic: str, partition: int, end: int, timeout: float
                     ) -> Iterator[Message]:
    """The assigned partition's messages up to `end`, read in batches."""
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise BrokerError(
                f"reading {topic}[{partition}] up to offset {end} took over {timeout}s")
        for msg in poll_batch(c, 0.5, READ_BATCH, eof=True):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= end:
                        return
                    continue
                raise BrokerError(f"reading {topic}[{partition}]: {msg.error()}")
            yield msg
            if msg.offset() + 1 >= end:
                return


def poll_batch(c: Consumer, timeout: float, most: int, eof: bool = False) -> list[Message]:
    """The messages at hand: waits up to `timeout` for the first, then takes those already
    fetched, up to `most` in all, without waiting for more. Partition ends are left out
    unless `eof`."""
    first = c.poll(timeout)
    if first is None:
        return []
    batch = [first, *c.consume(most - 1, 0)] if most > 1 else [first]
    return batch if eof else [
        m for m in batch if m.error() is None or m.error().code() != KafkaError._PARTITION_EOF]


def delivery_error(err: KafkaError | None, msg: Message) -> None:
    """A produce callback that turns a failed delivery into an exception at flush time."""
    if err is not None:
        raise BrokerError(f"delivery to {msg.topic()} failed: {err}")


def deliver(p: Producer, topic: str, key: bytes | None, value: bytes,
            timeout: float = 30.0) -> str | None:
    """Produce one message and wait until the broker has it: None then, else why not (a
    caller that must not lose it keeps it, and tries again)."""
    errors: list[str] = []
    p.produce(topic, key=key, value=value,
              on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
    if p.flush(timeout):
        return f"not delivered to {topic} within {timeout:g} s"
    return f"delivery to {topic} failed: {errors[0]}" if errors else None


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of faust.App that reach the brokers as every other client does.

    `broker` and, with SASL or TLS, `broker_credentials` (faust.SASLCredentials or
    faust.SSLCredentials); Faust hands them to aiokafka.
    """
    import faust  # heavy; only workers need it

    options: dict[str, Any] = {
        "broker": [f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(",")],
    }
    settings.kafka_config()  # the same checks (and ConfigErrors) as the confluent clients
    protocol = settings.security_protocol
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.sasl_username, password=secret(settings.sasl_password),
            mechanism=settings.sasl_mechanism, ssl_context=context)
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context from the same files librdkafka is given."""
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ssl_ca_location) if settings.ssl_ca_location else None)
        if settings.ssl_certificate_location:
            context.load_cert_chain(
                str(settings.ssl_certificate_location),
                str(settings.ssl_key_location) if settings.ssl_key_location else None,
                secret(settings.ssl_key_password))
    except (OSError, ssl.SSLError) as exc:
        # Neither error carries the key password; name the files and what failed.
        raise ConfigError(f"cannot set up TLS for Kafka: {exc}; check INFERSTREAM_SSL_*") from None
    context.check_hostname = settings.ssl_check_hostname
    return context
