"""A child process of the local platform (a worker, the console): its environment, its log,
and stopping it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from control.config import Settings

TRANSPORT = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
             "ssl_ca_location", "ssl_certificate_location", "ssl_key_location",
             "ssl_key_password", "ssl_check_hostname",
             "worker_bind", "worker_host", "http_tls_cert", "http_tls_key",
             "http_max_in_flight", "http_request_timeout_s", "http_auth_window_s",
             "max_record_bytes")


def child_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """The environment of a child process of this platform (a worker, the console): ours, with
    the connection settings it needs, whether or not they came from our environment."""
    env = {
        **os.environ,
        "INFERSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "INFERSTREAM_NAMESPACE": settings.namespace,
        "INFERSTREAM_DATA_DIR": str(data_dir),
        "INFERSTREAM_PIPELINE_PARTITIONS": str(settings.pipeline_partitions),
        "INFERSTREAM_DELIVERY": settings.delivery,
    }
    if settings.clickhouse_url:
        env["INFERSTREAM_CLICKHOUSE_URL"] = settings.clickhouse_url
    for name in TRANSPORT:
        value = getattr(settings, name, None)
        if value is not None:
            secret = getattr(value, "get_secret_value", None)
            env[f"INFERSTREAM_{name.upper()}"] = str(secret() if secret else value)
    return env


class LoggedProcess:
    """A child process whose output goes to a log file; stop() ends it, politely first."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
