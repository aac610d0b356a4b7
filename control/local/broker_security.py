"""SASL/SCRAM (and, optionally, ACLs) on a local Apache Kafka broker: for tests and trials.

The users and their passwords are written into the metadata log when the log dir is
formatted (`StorageTool format --add-scram`), so the broker authenticates from its first
second. The first user is the broker's own identity and its super user. The controller
listener speaks SASL/PLAIN with that user only; clients reach the SASL_PLAINTEXT listener.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import BrokerError

MECHANISM = "SCRAM-SHA-512"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BrokerSecurity:
    """Who may log in to a local broker (name -> password), and whether ACLs are enforced."""

    users: Mapping[str, str]
    acls: bool = False

    def __post_init__(self) -> None:
        if not self.users:
            raise BrokerError("a SASL broker needs at least one user: its own (the first)")
        for name, password in self.users.items():
            # They go into server.properties and StorageTool's [name=...,password=...] syntax.
            if not _NAME.fullmatch(name) or any(c in password for c in '",[]=\\\n'):
                raise BrokerError(f"SASL user {name!r}: use a plain name and a password "
                                  "without quotes, commas, brackets, '=' or backslashes")

    @property
    def super_user(self) -> tuple[str, str]:
        return next(iter(self.users.items()))

    def listener_properties(self, port: int, controller_port: int) -> str:
        """server.properties lines for the listeners, SASL and (with acls) the authorizer."""
        name, password = self.super_user
        lines = [
            f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,"
            "CONTROLLER:SASL_PLAINTEXT",
            f"sasl.enabled.mechanisms={MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
            # SCRAM users live in the metadata log, which the controller serves: it cannot
            # check SCRAM itself, so its own listener uses PLAIN with the super user only.
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security"
            f'.plain.PlainLoginModule required username="{name}" password="{password}" '
            f'user_{name}="{password}";',
            f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config=org.apache.kafka"
            f'.common.security.scram.ScramLoginModule required username="{name}" '
            f'password="{password}";',
        ]
        if self.acls:
            lines += [f"authorizer.class.name={AUTHORIZER}", f"super.users=User:{name}",
                      "allow.everyone.if.no.acl.found=false"]
        return "\n".join(lines) + "\n"

    def format_args(self) -> list[str]:
        """StorageTool format arguments that create every user's SCRAM credentials."""
        args: list[str] = []
        for name, password in self.users.items():
            args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return args

    def client_config(self, user: str | None = None) -> dict[str, Any]:
        """confluent-kafka settings (without bootstrap.servers) to log in as `user`."""
        name = user or self.super_user[0]
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": MECHANISM,
                "sasl.username": name, "sasl.password": self.users[name]}

    def java_client_properties(self, user: str | None = None) -> str:
        """A Java client's --command-config file content (kafka-acls and friends)."""
        name = user or self.super_user[0]
        return (
            "security.protocol=SASL_PLAINTEXT\n"
            f"sasl.mechanism={MECHANISM}\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{name}" password="{self.users[name]}";\n'
        )


def run_kafka_tool(jars: Path, main_class: str, args: Sequence[str], *,
                   timeout: float = 120.0) -> str:
    """Run one of Kafka's command line tools (e.g. org.apache.kafka.tools.AclCommand, which
    `kafka-acls.sh` runs) from the jars; its output, or BrokerError with it."""
    log4j = Path(__file__).resolve().parents[2] / ".ci" / "kafka" / "log4j2.properties"
    command = ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={log4j}",
               "-cp", f"{jars}{os.sep}*", main_class, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise BrokerError(f"{main_class} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout
