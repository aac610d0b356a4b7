"""Configuration in one place: INFERSTREAM_* environment variables, overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    user: str | None = Field(None, description="the operator acting (the event's actor)")
    workspace: str | None = Field(None, description="default workspace of commands")
    status_timeout_s: float = Field(30.0, description="how long to wait for a control status")
    artifact_chunk_bytes: int = Field(
        512 * 1024, description="artifact chunk size; stays under Kafka's 1 MB message limit"
    )
    clickhouse_url: str | None = Field(
        None, description="ClickHouse server URL; unset means chDB under data_dir"
    )
    pipeline_partitions: int = Field(
        4, description="partitions of a pipeline's input topic: the unit of worker parallelism"
    )
    max_record_bytes: int = Field(1_000_000, description="largest input record a worker accepts")
    worker_web_port: int = Field(6066, description="the worker's HTTP port (inference, health)")
    worker_name: str | None = Field(None, description="name in logs and results; default host:pid")
    assay_tick_s: float = Field(10.0, description="how often a worker looks for closed windows")
    task_tick_s: float = Field(2.0, description="how often a worker looks for task runs to start")
    task_stale_s: float = Field(
        60.0, description="a running task run not updated for this long lost its worker"
    )
    log_sink: bool = Field(
        True, description="whether a worker sinks the logs topic into ClickHouse; off, logs are "
        "still published and another worker (or none) sinks them")

    def topic(self, name: str) -> str:
        """Full name of one of the platform's topics, e.g. topic('control')."""
        return f"{self.namespace}.{name}"

    @property
    def artifact_cache(self) -> Path:
        return self.data_dir / "artifacts"

    def pipeline_topic(self, workspace: str, pipeline: str, kind: str) -> str:
        """A pipeline's input, output or dead-letter ("dead") topic."""
        return f"{self.namespace}.{workspace}.{pipeline}.{kind}"

    def kafka_config(self) -> dict[str, str]:
        """Settings every confluent-kafka client of the project starts from."""
        return {"bootstrap.servers": self.bootstrap_servers}
