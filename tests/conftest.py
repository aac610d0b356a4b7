"""Fixtures shared by every test: the real broker the tests talk to, and per-test settings.

The broker is, in order: an external one named by INFERSTREAM_TEST_BOOTSTRAP; Kafka in
Docker when an engine answers; Apache Kafka from local jars; else Tansu, with the tests
that need what Tansu lacks skipped by name and reason.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

from control.config import Settings
from control.local.brokers import (
    TANSU_DEFECTS,
    find_kafka_jars,
    kafka_version,
    start_local_broker,
    tansu_version,
)
from schemas.errors import BrokerError

DOCKER_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"  # Apache Kafka 3.6 in KRaft mode
NO_TRANSACTIONS = (
    "Tansu broker: aiokafka idempotent/transactional producers fail; runs on Apache Kafka"
)


@dataclass
class BrokerUnderTest:
    """The broker of this test session."""

    kind: str  # "apache-kafka" | "docker-kafka" | "tansu" | "external"
    version: str
    bootstrap: str = ""  # set once the broker runs
    external: bool = False  # named by INFERSTREAM_TEST_BOOTSTRAP; the session starts none

    @property
    def supports_transactions(self) -> bool:
        return self.kind != "tansu"


@functools.cache
def _chosen() -> BrokerUnderTest:
    """Which broker this session uses; decided once, before any is started."""
    if os.environ.get("INFERSTREAM_TEST_BOOTSTRAP"):
        return BrokerUnderTest(
            kind=os.environ.get("INFERSTREAM_TEST_BROKER_KIND", "external"),
            version=os.environ.get("INFERSTREAM_TEST_BROKER_VERSION", "unknown"),
            bootstrap=os.environ["INFERSTREAM_TEST_BOOTSTRAP"],
            external=True,
        )
    # INFERSTREAM_TEST_BROKER_KIND=tansu (without a bootstrap) forces the Tansu stand-in.
    forced_tansu = os.environ.get("INFERSTREAM_TEST_BROKER_KIND") == "tansu"
    if not forced_tansu and _docker_answers():
        return BrokerUnderTest("docker-kafka", DOCKER_KAFKA_IMAGE)
    jars = None if forced_tansu else find_kafka_jars(fetch=True)
    if jars and shutil.which("java"):
        return BrokerUnderTest("apache-kafka", kafka_version(jars))
    try:
        return BrokerUnderTest("tansu", tansu_version())
    except BrokerError:  # no binary either: the broker fixture will say so when asked
        return BrokerUnderTest("tansu", "unavailable")


def _docker_answers() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:  # no client library, no socket, no daemon: all mean "no Docker"
        return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "transactions: needs idempotent/transactional producers (not on Tansu)"
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    chosen = _chosen()
    where = chosen.bootstrap or "started when first needed"
    where += ", external" if chosen.external else ""
    lines = [f"broker: {chosen.kind} {chosen.version} ({where})"]
    if chosen.kind == "tansu":
        lines += [f"  Tansu defect: {defect}" for defect in TANSU_DEFECTS]
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # The header is hidden under -q (the README's command), so say it again at the end.
    chosen = _chosen()
    origin = "external" if chosen.external else "started by the tests"
    where = f"at {chosen.bootstrap} ({origin})" if chosen.bootstrap else "(not started)"
    terminalreporter.write_line(f"broker: {chosen.kind} {chosen.version} {where}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("transactions") and not _chosen().supports_transactions:
        pytest.skip(NO_TRANSACTIONS)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerUnderTest]:
    """The running broker; started once per session unless it is external."""
    chosen = _chosen()
    if chosen.external:
        yield chosen
    elif chosen.kind == "docker-kafka":
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers before the community split
            from testcontainers.kafka import KafkaContainer
        with KafkaContainer(DOCKER_KAFKA_IMAGE).with_kraft() as container:
            chosen.bootstrap = container.get_bootstrap_server()
            yield chosen
    else:
        kind = "kafka" if chosen.kind == "apache-kafka" else "tansu"
        with start_local_broker(tmp_path_factory.mktemp("broker"), kind=kind) as local:
            chosen.bootstrap, chosen.version = local.bootstrap, local.version
            yield chosen


@pytest.fixture(scope="session", autouse=True)
def _credentials_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test reads or writes the operator's own ~/.inferstream credentials."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("credentials")
        patch.setenv("INFERSTREAM_CREDENTIALS_FILE", str(folder / "credentials.json"))
        for name in ("USER", "KEY_FILE", "SECURITY_PROTOCOL", "SASL_MECHANISM",
                     "SASL_USERNAME", "SASL_PASSWORD"):
            patch.delenv(f"INFERSTREAM_{name}", raising=False)
        yield


@pytest.fixture
def requires_transactions(broker: BrokerUnderTest) -> None:
    """Skip the test unless the broker has working idempotent/transactional producers."""
    if not broker.supports_transactions:
        pytest.skip(NO_TRANSACTIONS)


@pytest.fixture
def settings(broker: BrokerUnderTest, tmp_path: Path) -> Settings:
    """Settings of a platform of its own: a fresh namespace, so fresh topic names."""
    return Settings(
        bootstrap_servers=broker.bootstrap,
        namespace=f"t{uuid4().hex[:10]}",
        data_dir=tmp_path / "data",
        credentials_file=tmp_path / "credentials" / "credentials.json",
        delivery="exactly-once" if broker.supports_transactions else "at-least-once",
    )
