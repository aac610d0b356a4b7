"""Kafka with SASL/SCRAM and ACLs: the CLI authenticates, a wrong password is refused with a
clear error, no secret reaches any output, and the documented ACLs keep workers off the
control topic and operators off the results.

A second broker of its own: Apache Kafka 4.1 from the jars, SASL_PLAINTEXT with
SCRAM-SHA-512, users created when its log dir is formatted, the StandardAuthorizer on, and
the ACLs of `inferstream acls` (control/local/acls.py) applied with Kafka's own kafka-acls tool.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

from control.cli import main
from control.client import Client
from control.config import Settings
from control.kafka import faust_broker_options, list_topics, producer, read_until_end
from control.local.broker_binaries import find_kafka_jars
from control.local.broker_security import BrokerSecurity, run_kafka_tool
from control.local.brokers import LocalBroker, start_local_broker
from control.local.demo_models import build_onnx_classifier, iris_rows
from control.registrar import Registrar
from schemas.errors import BrokerError
from tests.helpers import wait_until

PASSWORDS = {"admin": "Adm1n-pw-3f9a", "ops": "Op3rator-pw-7c21", "workers": "W0rker-pw-b8e4",
             "intruder": "Intrud3r-pw-51d0"}
WRONG = "Wr0ng-pw-e77c"
SECRETS = (*PASSWORDS.values(), WRONG)
AGENTS_APP = Path(__file__).resolve().parent.parent / "agents" / "app.py"

pytestmark = [
    pytest.mark.kafka, pytest.mark.slow,
    pytest.mark.skipif(not (find_kafka_jars() and shutil.which("java")),
                       reason="needs `java` and the Apache Kafka jars (.ci/kafka) for a SASL "
                              "broker of its own"),
]


@dataclass
class SecureCluster:
    broker: LocalBroker
    namespace: str
    folder: Path
    admin_config: Path

    def settings(self, user: str, password: str | None = None) -> Settings:
        return Settings(
            bootstrap_servers=self.broker.bootstrap, namespace=self.namespace,
            data_dir=self.folder / f"data-{user}", security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512", sasl_username=user,
            sasl_password=password or PASSWORDS[user],
            credentials_file=self.folder / f"home-{user}" / "credentials.json",
        )

    def acls(self, commands: list[list[str]]) -> None:
        """Run kafka-acls (org.apache.kafka.tools.AclCommand) as the super user."""
        for args in commands:
            run_kafka_tool(self.broker_jars, "org.apache.kafka.tools.AclCommand", [
                "--bootstrap-server", self.broker.bootstrap,
                "--command-config", str(self.admin_config), *args])

    @property
    def broker_jars(self) -> Path:
        jars = find_kafka_jars()
        assert jars is not None
        return jars


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    from control.local.acls import platform_acls

    folder = tmp_path_factory.mktemp("sasl")
    security = BrokerSecurity(PASSWORDS, acls=True)
    with start_local_broker(folder / "broker", "kafka", security=security) as broker:
        admin_config = folder / "admin.properties"
        admin_config.touch(mode=0o600)
        admin_config.write_text(security.java_client_properties())
        secure = SecureCluster(broker, f"sec{uuid4().hex[:8]}", folder, admin_config)
        secure.acls(platform_acls(secure.namespace, "ops", "workers"))
        yield secure


@pytest.fixture(scope="module")
def registrar(cluster: SecureCluster) -> Iterator[Registrar]:
    """The registrar, as workers run it: with the workers' credentials."""
    r = Registrar(cluster.settings("workers")).start()
    # It creates the platform's topics; operators may not (the ACLs give them no Create).
    control = f"{cluster.namespace}.control"
    wait_until(lambda: control in list_topics(cluster.settings("ops")).topics, 30,
               "the registrar created the platform's topics")
    yield r
    r.stop()


def cli_env(monkeypatch: pytest.MonkeyPatch, cluster: SecureCluster, password: str) -> None:
    """The operator's shell: every setting, the password too, from the environment."""
    s = cluster.settings("ops")
    for name, value in {"BOOTSTRAP_SERVERS": s.bootstrap_servers, "NAMESPACE": s.namespace,
                        "DATA_DIR": str(s.data_dir), "CREDENTIALS_FILE": str(s.credentials_file),
                        "SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "SCRAM-SHA-512",
                        "SASL_USERNAME": "ops", "SASL_PASSWORD": password,
                        "WORKSPACE": "fraud"}.items():
        monkeypatch.setenv(f"INFERSTREAM_{name}", value)


def run(capfd: pytest.CaptureFixture[str], *args: str, ok: bool = True) -> tuple[str, str]:
    """Run the CLI; its stdout and its stderr, librdkafka's own stderr lines included."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
        raise SystemExit(0)
    captured = capfd.readouterr()
    assert (exit_info.value.code == 0) == ok, captured.err + captured.out
    return captured.out, captured.err


def no_secret_in(*texts: str | bytes) -> None:
    for text in texts:
        blob = text if isinstance(text, bytes) else text.encode()
        leaked = [s for s in SECRETS if s.encode() in blob]
        assert not leaked, f"secret(s) {leaked} in output: {blob[:2000]!r}"


def test_the_cli_authenticates_and_never_prints_a_secret(
    cluster: SecureCluster, registrar: Registrar, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    cli_env(monkeypatch, cluster, PASSWORDS["ops"])
    caplog.set_level("DEBUG")
    outputs = [
        run(capfd, "bootstrap", "ann", "--json"),
        run(capfd, "whoami", "--json"),
        run(capfd, "users", "create", "bob", "--json"),
        run(capfd, "workspaces", "create", "fraud"),
        run(capfd, "workspaces", "add-member", "bob", "--role", "viewer", "--json"),
        run(capfd, "models", "upload", "clf", str(build_onnx_classifier(tmp_path / "c.onnx")),
            "--json"),
        run(capfd, "pipelines", "create", "scoring"),
        run(capfd, "pipelines", "version", "scoring", "--step", "clf", "--json"),
        run(capfd, "pipelines", "deploy", "scoring", "--wait-workers", "0", "--json"),
        run(capfd, "pipelines", "list", "--json"),
        run(capfd, "users", "list", "--json"),
        run(capfd, "workspaces", "get", "fraud", "--json"),
        run(capfd, "pipelines", "create", "scoring", ok=False),  # rejected: exists
        run(capfd, "--user", "bob", "models", "list"),
        run(capfd, "acls", "--operator", "ops", "--worker", "workers"),
    ]
    assert json.loads(outputs[1][0])["matches"] is True
    assert "already exists" in outputs[12][1]

    statuses = list(read_until_end(cluster.settings("ops"), f"{cluster.namespace}.control.status"))
    assert len(statuses) >= 8
    no_secret_in(*(text for pair in outputs for text in pair), caplog.text,
                 *(m.value() for m in statuses))
    no_secret_in(repr(cluster.settings("ops")), str(cluster.settings("ops")),
                 cluster.settings("ops").model_dump_json())


def test_a_wrong_password_is_refused_with_a_clear_error(
    cluster: SecureCluster, registrar: Registrar, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    cli_env(monkeypatch, cluster, WRONG)

    printed = "".join(run(capfd, "users", "list", ok=False))

    assert "refused the credentials of SASL user 'ops' (SCRAM-SHA-512)" in printed
    assert "Authentication failed" in printed and "INFERSTREAM_SASL_PASSWORD" in printed
    no_secret_in(printed)
    with pytest.raises(BrokerError, match="refused the credentials of SASL user 'workers'"):
        list_topics(cluster.settings("workers", WRONG), timeout=20)


def delivery_error(settings: Settings, topic: str) -> str | None:
    """Produce one record; the broker's error, or None when it was written."""
    errors: list[object] = []
    p = producer(settings, **{"enable.idempotence": False})
    p.produce(topic, b"probe", on_delivery=lambda err, _msg: errors.append(err))
    p.flush(20)
    assert errors, f"no delivery report for {topic} within 20 s"
    return None if errors[0] is None else str(errors[0])


def test_acls_let_only_workers_write_results_and_only_operators_write_control_events(
    cluster: SecureCluster, registrar: Registrar,
) -> None:
    ns, ops, workers = cluster.namespace, cluster.settings("ops"), cluster.settings("workers")
    denied = "Topic authorization failed"

    assert delivery_error(ops, f"{ns}.control") is None  # garbage; the registrar rejects it
    assert denied in (delivery_error(workers, f"{ns}.control") or "")
    assert denied in (delivery_error(workers, f"{ns}.artifacts") or "")
    assert delivery_error(workers, f"{ns}.alerts") is None
    for topic in ("logs", "alerts", "control.status"):
        assert denied in (delivery_error(ops, f"{ns}.{topic}") or ""), topic
    assert denied in (delivery_error(cluster.settings("intruder"), f"{ns}.control") or "")
    with pytest.raises(BrokerError, match=r"(?i)authoriz"):
        list(read_until_end(cluster.settings("intruder"), f"{ns}.control", timeout=10))


def test_faust_broker_options_authenticate_aiokafka(cluster: SecureCluster,
                                                     registrar: Registrar) -> None:
    """What a worker's Faust app gets from faust_broker_options logs in (aiokafka, SCRAM)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    async def send(settings: Settings) -> None:
        options = faust_broker_options(settings)
        auth = credentials_to_aiokafka_auth(options["broker_credentials"])
        p = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers,
                             request_timeout_ms=10_000, **auth)
        try:
            await p.start()
            await p.send_and_wait(settings.topic("alerts"), b"from aiokafka")
        finally:
            await p.stop()

    asyncio.run(send(cluster.settings("workers")))
    with pytest.raises((KafkaError, OSError)):
        asyncio.run(send(cluster.settings("workers", WRONG)))


@pytest.mark.skipif(
    "faust_broker_options" not in AGENTS_APP.read_text(),
    reason="agents/app.py builds faust.App without SASL credentials: it needs "
           "`from control.kafka import faust_broker_options` and, in create_app, "
           "`**faust_broker_options(settings),` in place of the `broker=[...]` argument")
def test_a_worker_authenticates_and_serves(cluster: SecureCluster, registrar: Registrar,
                                           tmp_path: Path) -> None:
    from control.local.acls import pipeline_acls, platform_acls
    from control.local.worker_process import WorkerProcess

    # A platform of its own (other tests of the module bootstrap theirs), with its ACLs.
    ns = f"{cluster.namespace}w"
    cluster.acls(platform_acls(ns, "ops", "workers"))
    cluster.acls(pipeline_acls(ns, "lab", "scoring", "ops", "ops", f"{ns}.reader"))
    ops = cluster.settings("ops").model_copy(update={"namespace": ns})
    workers = cluster.settings("workers").model_copy(update={"namespace": ns})
    env = {"INFERSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "INFERSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
           "INFERSTREAM_SASL_USERNAME": "workers",
           "INFERSTREAM_SASL_PASSWORD": PASSWORDS["workers"]}
    worker = WorkerProcess(workers, "w1", tmp_path, env=env)
    try:
        worker.wait_ready()  # its registrar judges the bootstrap below
        with Client(ops, user="sam", workspace="lab") as first:
            first.bootstrap_admin("sam", key_file=tmp_path / "sam.key")
        with Client(ops, user="sam", workspace="lab", key=tmp_path / "sam.key") as client:
            client.create_workspace("lab")
            client.upload_model("clf", build_onnx_classifier(tmp_path / "clf.onnx"))
            client.create_pipeline("scoring")
            client.create_pipeline_version("scoring", [{"model": "clf"}])
            client.deploy("scoring", worker_wait=60)
            worker.wait_ready("lab/scoring")
            [reply] = client.infer("scoring", [{"float_input": iris_rows(1)[0].tolist()}])
            assert reply.ok and reply.body["pipeline"] == "scoring"
        no_secret_in(worker.log_path.read_bytes())
    finally:
        worker.stop()
