"""Configuration in one place: INFERSTREAM_* environment variables, overridden by CLI flags."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """Every setting of inferstream, with defaults that work on a laptop."""

    model_config = SettingsConfigDict(env_prefix="INFERSTREAM_", extra="ignore")

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated"
    )
    namespace: str = Field(
        "inferstream", description="prefix of every topic name; one namespace is one platform"
    )
    data_dir: Path = Field(
        Path(".inferstream"), description="local data: embedded broker, chDB, artifact cache"
    )
    user: str | None = Field(
        None, description="the operator acting (the event's actor); default: the one logged in")
    key_file: Path | None = Field(
        None, description="private key that signs control events; default: the logged-in "
        "user's, from the credentials file")
    credentials_file: Path = Field(
        Path("~/.inferstream/credentials.json"),
        description="where `inferstream login` keeps which key file signs for which user")
    workspace: str | None = Field(None, description="default workspace of commands")
    status_timeout_s: float = Field(30.0, description="how long to wait for a control status")
    artifact_chunk_bytes: int = Field(
        512 * 1024, description="artifact chunk size; stays under Kafka's 1 MB message limit"
    )
    clickhouse_url: str | None = Field(
        None, description="ClickHouse server URL; unset means chDB under data_dir. TLS: "
        "https://user:password@host:8443/db?ca_cert=/path/ca.pem"
    )
    max_artifact_bytes: int = Field(
        2 * 1024**3, gt=0,
        description="largest model artifact (file or packed directory) to upload or load")
    # Kafka transport security, passed to every client the project makes (kafka_config and
    # control.kafka.faust_broker_options).
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL protocol)")
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password; never printed")
    ssl_ca_location: Path | None = Field(
        None, description="CA certificate(s) (PEM) that sign the brokers' certificates")
    ssl_certificate_location: Path | None = Field(
        None, description="client certificate (PEM), for brokers that require mutual TLS")
    ssl_key_location: Path | None = Field(None, description="client private key (PEM)")
    ssl_key_password: SecretStr | None = Field(
        None, description="password of the client private key; never printed")
    ssl_check_hostname: bool = Field(
        True, description="check that a broker's certificate names the host connected to")
    replication_factor: int | None = Field(
        None, ge=1, description="replicas of every topic the platform creates (pipelines' too); "
        "unset: the cluster's default.replication.factor")
    control_replication_factor: int | None = Field(
        None, ge=1, description="replicas of the control and artifacts topics (the registry and "
        "every model: losing them loses the platform); unset: as replication_factor")
    min_insync_replicas: int | None = Field(
        None, ge=1, description="min.insync.replicas of the platform's topics: how many replicas "
        "must have a write before it counts (acks=all); unset: the cluster's default")
    pipeline_partitions: int = Field(
        4, description="partitions of a pipeline's input topic: the unit of worker parallelism"
    )
    delivery: Literal["exactly-once", "at-least-once"] = Field(
        "exactly-once", description="exactly-once: a batch's results, dead letters, logs and "
        "input offsets commit in one Kafka transaction; at-least-once: for brokers without "
        "transactions (the embedded Tansu), a crash may serve a batch twice")
    max_record_bytes: int = Field(
        1_000_000, gt=0, description="largest input record a worker accepts; a larger one is "
        "dead-lettered with its size and this limit")
    max_batch_size: int = Field(
        10_000, gt=0, description="largest batch size a deployment may ask for; a Deploy over "
        "it is rejected. A rule of the registry: give every process the same value")
    worker_web_port: int = Field(6066, description="the worker's HTTP port (inference, health)")
    worker_bind: str = Field(
        "127.0.0.1", description="address the worker's HTTP server listens on; loopback unless "
        "set (0.0.0.0: every interface, for a worker others call over the network)")
    worker_host: str | None = Field(
        None, description="host name in the worker's own URL (what its TLS certificate names); "
        "default: the bind address, or 127.0.0.1 when it binds every interface")
    http_tls_cert: Path | None = Field(
        None, description="certificate (PEM) the worker's HTTP server presents: HTTPS with "
        "INFERSTREAM_HTTP_TLS_KEY")
    http_tls_key: Path | None = Field(None, description="private key (PEM) of http_tls_cert")
    http_ca_location: Path | None = Field(
        None, description="CA certificate(s) (PEM) the CLI and client check a worker's HTTPS "
        "certificate with; unset: the system's")
    http_check_hostname: bool = Field(
        True, description="check that a worker's certificate names the host connected to")
    api_key: SecretStr | None = Field(
        None, description="an API key (isk_...) the client sends to workers over HTTP instead "
        "of signing requests with the user's key; never printed")
    http_auth_window_s: float = Field(
        60.0, gt=0, description="how far a signed HTTP request's time may be from the worker's "
        "clock; a nonce is refused twice within it")
    http_max_in_flight: int = Field(
        64, gt=0, description="requests a worker serves at once over HTTP; more get 503 with "
        "Retry-After")
    http_request_timeout_s: float = Field(
        30.0, gt=0, description="longest a worker spends on one HTTP request (503 past it)")
    worker_name: str | None = Field(None, description="name in logs and results; default host:pid")
    assay_tick_s: float = Field(10.0, description="how often a worker looks for closed windows")
    assay_rescore_s: float = Field(
        60.0, ge=0, description="how often a performance assay's windows still within their "
        "label wait are scored again as late labels arrive")
    task_tick_s: float = Field(2.0, description="how often a worker looks for task runs to start")
    replay_tick_s: float = Field(
        1.0, gt=0, description="how often the worker that runs schedules looks for replays to "
        "run, and how long a replay batch waits for records")
    replay_batch_size: int = Field(
        1000, gt=0, le=100_000, description="records a replay serves in one transaction "
        "(one micro-batch of the version's runner)")
    canary_tick_s: float = Field(
        1.0, gt=0, description="how often the worker that runs schedules looks for canary "
        "steps to judge (docs/canary.md)")
    canary_sink_lag_s: float = Field(
        5.0, ge=0, le=3600, description="how far behind now a canary step's measures end: "
        "inference logs reach ClickHouse this long after they are served, at most (a step is "
        "judged that long after it is due; docs/canary.md)")
    heartbeat_s: float = Field(
        5.0, description="how often a worker publishes its heartbeat (`inferstream status`)")
    task_stale_s: float = Field(
        60.0, description="a running task run not updated for this long lost its worker"
    )
    python_steps: bool = Field(
        True, description="whether this worker runs Python steps (framework python); off: "
        "their pipelines are refused here, with the reason")
    python_workers: int = Field(
        1, ge=1, description="child processes per deployed Python step version")
    python_timeout_s: float = Field(
        10.0, gt=0, description="longest a Python step may take on one batch; its process is "
        "killed and its records dead-lettered past it")
    python_memory_mb: int = Field(
        1024, ge=0, description="address-space limit of each Python step process in MiB "
        "(RLIMIT_AS); 0: none")
    rules: bool = Field(
        True, description="whether this worker runs the rule executor (rules that act on "
        "alerts); the workers that do share the alerts, each alert is read by one")
    log_sink: bool = Field(
        True, description="whether a worker sinks the logs topic into ClickHouse; off, logs are "
        "still published and another worker (or none) sinks them")
    labels_refresh_s: float = Field(
        5.0, gt=0, description="how often the worker that sinks logs looks for new pipelines' "
        "labels topics (it sinks every one of them into the `labels` table)")
    redrive_limit: int = Field(
        3, ge=1, description="a dead letter already redriven this many times is not redriven "
        "again unless the redrive is forced (`pipelines redrive --force`)")
    redrive_rate: float = Field(
        2000.0, gt=0, description="most dead letters a second that a redrive sends back to a "
        "pipeline's input topic, so that a large redrive does not crowd out live records")
    redrive_tick_s: float = Field(
        2.0, gt=0, description="how often the worker that runs schedules looks for redrives "
        "to carry out")

    @property
    def worker_scheme(self) -> str:
        """http, or https when the worker has a certificate."""
        if bool(self.http_tls_cert) != bool(self.http_tls_key):
            raise ConfigError("INFERSTREAM_HTTP_TLS_CERT and INFERSTREAM_HTTP_TLS_KEY go "
                              "together: give both for HTTPS, or neither")
        return "https" if self.http_tls_cert else "http"

    @property
    def worker_url(self) -> str:
        """Where this machine reaches the worker these settings start, e.g. by the CLI."""
        host = self.worker_host or self.worker_bind
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.worker_scheme}://{host}:{self.worker_web_port}"

    def http_client_tls(self) -> ssl.SSLContext:
        """How the CLI and client check a worker's certificate over HTTPS."""
        context = ssl.create_default_context(
            cafile=str(Path(self.http_ca_location).expanduser())
            if self.http_ca_location else None)
        context.check_hostname = self.http_check_hostname
        return context

    def http_server_tls(self) -> ssl.SSLContext | None:
        """The worker's TLS context, when it has a certificate and key."""
        if self.worker_scheme != "https":
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(Path(self.http_tls_cert).expanduser()),
                                    str(Path(self.http_tls_key).expanduser()))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the worker's TLS certificate "
                              f"{self.http_tls_cert} and key {self.http_tls_key}: {exc}") from None
        return context

    def topic(self, name: str) -> str:
        """Full name of one of the platform's topics, e.g. topic('control')."""
        return f"{self.namespace}.{name}"

    @property
    def artifact_cache(self) -> Path:
        return self.data_dir / "artifacts"

    def pipeline_topic(self, workspace: str, pipeline: str, kind: str) -> str:
        """A pipeline's input, output, dead-letter ("dead") or ground-truth ("labels") topic."""
        return f"{self.namespace}.{workspace}.{pipeline}.{kind}"

    def kafka_config(self) -> dict[str, Any]:
        """Settings every confluent-kafka client of the project starts from.

        Holds the SASL password in clear: pass it to a client, never print or log it.
        """
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        protocol = self.security_protocol
        if protocol != "PLAINTEXT":
            config["security.protocol"] = protocol
        if protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ConfigError(
                    f"security protocol {protocol} needs INFERSTREAM_SASL_MECHANISM, "
                    "INFERSTREAM_SASL_USERNAME and INFERSTREAM_SASL_PASSWORD"
                )
            config |= {"sasl.mechanisms": self.sasl_mechanism,
                       "sasl.username": self.sasl_username,
                       "sasl.password": secret(self.sasl_password)}
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ConfigError(
                f"SASL settings are given but the security protocol is {protocol}; set "
                "INFERSTREAM_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT on a trusted network)"
            )
        if protocol.endswith("SSL"):
            for key, value in (("ssl.ca.location", self.ssl_ca_location),
                               ("ssl.certificate.location", self.ssl_certificate_location),
                               ("ssl.key.location", self.ssl_key_location)):
                if value is not None:
                    config[key] = str(Path(value).expanduser())
            if self.ssl_key_password is not None:
                config["ssl.key.password"] = secret(self.ssl_key_password)
            config["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_check_hostname else "none")
        return config

    def __repr_args__(self) -> Any:
        # The ClickHouse URL may carry a password; SecretStr fields mask themselves.
        for name, value in super().__repr_args__():
            yield name, (without_password(value) if name == "clickhouse_url" and value
                         else value)


def secret(value: SecretStr | str | None) -> str | None:
    """The clear text of a secret setting (model_copy(update=...) may leave a plain str)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def without_password(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file that no one but its owner can read."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"key file {path} can be read by others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The library's message never holds key material; say what the file should be.
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key
