"""Fixtures shared by every test: the real broker the tests talk to, per-test settings, the
ClickHouse storage (chDB in a tmp folder, or a server in Docker) and the operator CLI.

The broker is, in order: an external one named by INFERSTREAM_TEST_BOOTSTRAP; Kafka in
Docker when an engine answers; Apache Kafka from local jars; else Tansu, with the tests
that need what Tansu lacks skipped by name and reason.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import uuid4

import pytest

from control.config import Settings
from control.local.broker_binaries import find_kafka_jars, kafka_version, tansu_version
from control.local.brokers import TANSU_DEFECTS, start_local_broker
from schemas.errors import BrokerError

if TYPE_CHECKING:  # the storage and the CLI are imported by the fixtures that use them
    from sinks.storage import Storage

DOCKER_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"  # Apache Kafka 3.6 in KRaft mode
CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:25.8"  # the one compose.yaml runs
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
    config.addinivalue_line(
        "markers", "chdb_and_server: the test's `storage` runs on chDB, then on a ClickHouse "
        "server in Docker (skipped, with the reason, when no Docker engine answers)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "storage" in metafunc.fixturenames and \
            metafunc.definition.get_closest_marker("chdb_and_server"):
        metafunc.parametrize("storage", ["chdb", "server"], indirect=True)


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


# -- ClickHouse storage ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[str]:
    """Admin URL of a ClickHouse server in Docker (skips without a Docker engine)."""
    if not _docker_answers():
        pytest.skip("no Docker engine answers docker.from_env().ping(): no ClickHouse server")
    from testcontainers.community.clickhouse import ClickHouseContainer

    with ClickHouseContainer(CLICKHOUSE_IMAGE) as server:
        host, port = server.get_container_host_ip(), server.get_exposed_port(8123)
        yield f"http://{server.username}:{server.password}@{host}:{port}"


@contextmanager
def _opened_storage(request: pytest.FixtureRequest, folder: Path,
                    migrated: bool) -> Iterator[Storage]:
    """A fresh database: chDB in `folder`, or, where the fixture is parametrized with "server",
    a database of its own on the ClickHouse server; closed on leaving."""
    from sinks.storage import ChdbStorage, ServerStorage
    from sinks.tables import migrate

    if getattr(request, "param", "chdb") == "chdb":
        opened: Storage = ChdbStorage(folder)
    else:
        admin_url = request.getfixturevalue("clickhouse_server")
        database = f"t{uuid4().hex[:12]}"
        with ServerStorage(admin_url) as admin:
            admin.command(f"CREATE DATABASE {database}")
        opened = ServerStorage(f"{admin_url}/{database}")
    try:
        if migrated:
            migrate(opened)
        yield opened
    finally:
        opened.close()


@pytest.fixture
def storage_folder(tmp_path: Path) -> Path:
    """Where `storage` keeps its chDB folder; a module overrides it to share the folder with
    the code under test."""
    return tmp_path / "chdb"


@pytest.fixture
def storage_migrated() -> bool:
    """Whether `storage` comes migrated; a module that tests the migrations overrides it."""
    return True


@pytest.fixture
def storage(request: pytest.FixtureRequest, storage_folder: Path,
            storage_migrated: bool) -> Iterator[Storage]:
    """A fresh database of the test's own: chDB in `storage_folder`, migrated unless
    `storage_migrated` says not; under the chdb_and_server marker, on each transport."""
    with _opened_storage(request, storage_folder, storage_migrated) as opened:
        yield opened


@pytest.fixture(scope="module")
def chdb(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    """One chDB folder for the whole module, unmigrated: chDB opens one folder per process."""
    with _opened_storage(request, tmp_path_factory.mktemp("chdb"), migrated=False) as opened:
        yield opened


# -- the operator CLI --------------------------------------------------------------------------


@pytest.fixture
def cli_at_home() -> bool:
    """How `cli` says who runs it. False: with --user, `user=` (default ann). A module overrides
    it with True to run the CLI as someone on their own machine: `home=` (default ann) names
    the folder under tmp_path that holds their credentials file."""
    return False


@pytest.fixture
def cli(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        cli_at_home: bool) -> Iterator[Callable[..., str]]:
    """`inferstream ... --workspace fraud *args` run in this process while the platform's
    registrar runs: `cli(*args, ok=True)` asserts it exits 0 exactly when `ok`, and returns its
    stdout if so, else its stderr."""
    from control.cli import main
    from control.registrar import Registrar

    registrar = Registrar(settings).start()

    def run(*args: str, user: str | None = None, home: str | None = None,
            ok: bool = True) -> str:
        if cli_at_home:
            assert user is None, "cli_at_home: say who runs the CLI with home="
            who = ["--credentials", str(tmp_path / (home or "ann") / "credentials.json")]
        else:
            assert home is None, "say who runs the CLI with user= (or override cli_at_home)"
            who = ["--user", user or "ann"]
        argv = ["--bootstrap-servers", settings.bootstrap_servers, "--namespace",
                settings.namespace, "--data-dir", str(settings.data_dir), *who,
                "--workspace", "fraud", *args]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
            raise SystemExit(0)
        captured = capsys.readouterr()
        assert (exit_info.value.code == 0) == ok, captured.err + captured.out
        return captured.out if ok else captured.err

    yield run
    registrar.stop()
