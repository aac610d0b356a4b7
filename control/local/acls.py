"""Kafka ACLs that lock a platform's topics down: only workers write results, statuses, logs
and alerts; only operators write control events and artifacts.

`inferstream acls` prints them as `kafka-acls.sh` commands; the tests run exactly these
against a broker with SASL/SCRAM and the StandardAuthorizer (tests/test_sasl.py).

- workers: read, write and create every `<ns>.` topic and Faust's `<ns>-workers…` topics,
  in their consumer groups, with transactions of their own, except that they may never
  write `<ns>.control` (nor the artifact topic), so a compromised worker cannot forge an
  operator's event;
- operators: write `<ns>.control` and `<ns>.artifacts`, read those, `<ns>.control.status`
  and `<ns>.workers` (heartbeats), and see (describe, not read) the other topics;
- producers and consumers of a pipeline: its input and labels (ground truth) topics to
  write, or the output and dead-letter topics to read — per pipeline, since Kafka's
  prefixes cannot name a suffix.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def platform_acls(namespace: str, operator: str, worker: str) -> list[list[str]]:
    """kafka-acls arguments (after --bootstrap-server/--command-config) for one platform."""
    ns, op, wk = namespace, f"User:{operator}", f"User:{worker}"
    return [
        ["--add", "--allow-principal", wk, *_ops("Read", "Write", "Create", "Describe",
                                                "DescribeConfigs"),
         "--topic", f"{ns}.", "--topic", f"{ns}-workers", "--resource-pattern-type", "prefixed"],
        ["--add", "--allow-principal", wk, *_ops("Read", "Describe"),
         "--group", f"{ns}.", "--group", f"{ns}-workers", "--resource-pattern-type", "prefixed"],
        # The intake's transactions (agents.serving.intake): ids `<ns>-workers-serving-<worker>`.
        ["--add", "--allow-principal", wk, *_ops("Write", "Describe"),
         "--transactional-id", f"{ns}-workers", "--resource-pattern-type", "prefixed"],
        ["--add", "--deny-principal", wk, *_ops("Write"),
         "--topic", f"{ns}.control", "--topic", f"{ns}.artifacts"],
        ["--add", "--allow-principal", op, *_ops("Describe"),
         "--topic", f"{ns}.", "--resource-pattern-type", "prefixed"],
        ["--add", "--allow-principal", op, *_ops("Read", "Write"),
         "--topic", f"{ns}.control", "--topic", f"{ns}.artifacts"],
        ["--add", "--allow-principal", op, *_ops("Read"),
         "--topic", f"{ns}.control.status", "--topic", f"{ns}.workers",
         "--group", f"{ns}.reader"],
    ]


def pipeline_acls(namespace: str, workspace: str, pipeline: str, producer: str,
                  consumer: str, consumer_group: str) -> list[list[str]]:
    """Who may feed one pipeline (records and their labels), and who may read its results and
    dead letters."""
    topic = f"{namespace}.{workspace}.{pipeline}"
    return [
        ["--add", "--allow-principal", f"User:{producer}", *_ops("Write", "Describe"),
         "--topic", f"{topic}.input", "--topic", f"{topic}.labels"],
        ["--add", "--allow-principal", f"User:{consumer}", *_ops("Read", "Describe"),
         "--topic", f"{topic}.output", "--topic", f"{topic}.dead", "--group", consumer_group],
    ]


def as_shell(commands: Sequence[Sequence[str]], bootstrap: str = "BROKER:9092",
             command_config: str = "admin.properties") -> str:
    """The commands as a person types them."""
    head = f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config}"
    return "\n".join(f"{head} \\\n  {shlex.join(args)}" for args in commands)


def _ops(*operations: str) -> list[str]:
    return [arg for op in operations for arg in ("--operation", op)]
