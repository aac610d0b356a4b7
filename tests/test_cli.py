"""The operator CLI end to end against the real broker: every command, --json, rejections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.cli import app
from control.local.demo_models import build_keras_model, build_onnx_classifier

pytestmark = pytest.mark.kafka


def test_operator_session(cli, tmp_path: Path) -> None:
    assert json.loads(cli("users", "create", "ann", "--json"))["admin"] is True
    cli("users", "create", "bob", "--email", "bob@example.com")
    cli("workspaces", "create", "fraud")
    cli("workspaces", "add-member", "bob", "--role", "collaborator")
    members = json.loads(cli("workspaces", "get", "fraud", "--json"))["members"]
    assert members == {"ann": "owner", "bob": "collaborator"}

    onnx = build_onnx_classifier(tmp_path / "clf.onnx")
    v1 = json.loads(cli("models", "upload", "clf", str(onnx), "--json"))
    assert (v1["version"], v1["framework"]) == (1, "onnx")
    onnx2 = build_onnx_classifier(tmp_path / "clf2.onnx", C=0.3)
    assert "version 2" in cli("models", "upload", "clf", str(onnx2), user="bob")
    assert "this very artifact" in cli("models", "upload", "clf", str(onnx2), ok=False)
    scorer = build_keras_model(tmp_path / "scorer.keras", "keras")
    cli("models", "upload", "scorer", str(scorer), "--file", str(onnx))
    listed = json.loads(cli("models", "list", "--json"))
    assert [(m["name"], len(m["versions"])) for m in listed] == [("clf", 2), ("scorer", 1)]
    assert json.loads(cli("models", "get", "scorer", "--version", "1", "--json"))["files"][0][0] \
        == "clf.onnx"

    cli("pipelines", "create", "scoring")
    assert "version 1" in cli("pipelines", "version", "scoring", "--step", "clf:1",
                              "--step", "scorer")
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps([
        {"shadow": {"champion": {"model": "clf", "version": 2},
                    "challengers": [{"model": "clf", "version": 1}]}},
        {"model": "scorer"},
    ]))
    v2 = json.loads(cli("pipelines", "version", "scoring", "--steps-file", str(steps), "--json"))
    assert v2["steps"][0]["shadow"]["challengers"] == [{"model": "clf", "version": 1}]
    assert json.loads(cli("pipelines", "deploy", "scoring", "--version", "1", "--json",
                               "--wait-workers", "0"))[
        "version"] == 1
    # Deployed, yet no worker confirms: a script must see it (exit code 3, see --help).
    assert "no worker confirmed within 1s" in cli("pipelines", "deploy", "scoring",
                                                  "--batch-size", "128", "--wait-workers", "1",
                                                  ok=False)
    assert "back to version 1" in cli("pipelines", "rollback", "scoring", "--wait-workers", "0")
    assert "v1" in cli("pipelines", "list")
    cli("pipelines", "undeploy", "scoring")
    assert "is not deployed" in cli("pipelines", "undeploy", "scoring", ok=False)

    # Rejections exit non-zero with the reason; a non-member cannot act in the workspace.
    cli("users", "create", "eve")
    assert "not a member of workspace 'fraud'" in cli("pipelines", "create", "x", user="eve",
                                                      ok=False)
    assert "unknown model 'ghost'" in cli("pipelines", "version", "scoring", "--step", "ghost",
                                          ok=False)


def test_every_command_has_help() -> None:
    from typer.main import get_command

    group = get_command(app)
    names = [(name,) for name in group.commands] + [
        (name, sub) for name, cmd in group.commands.items()
        for sub in getattr(cmd, "commands", {})
    ]
    for path in names:
        command = group
        for part in path:
            command = command.commands[part]
        assert command.help, f"`inferstream {' '.join(path)}` has no help text"


def test_workload_commands_and_secrets_never_printed(cli, tmp_path: Path) -> None:
    cli("users", "create", "ann")
    cli("workspaces", "create", "fraud")
    cli("models", "upload", "clf", str(build_onnx_classifier(tmp_path / "clf.onnx")))
    cli("pipelines", "create", "scoring")
    cli("pipelines", "version", "scoring", "--step", "clf")
    secret = "hunter2-very-secret"
    cli("connections", "create", "warehouse", "--type", "clickhouse",
        "--detail", f"url=http://etl:{secret}@db:8123", "--detail", "table=scores")
    cli("connections", "create", "events", "--type", "kafka", "--detail", "topic=events",
        "--detail", "sasl_username=etl", "--detail", f"sasl_password={secret}",
        "--detail", "security_protocol=SASL_SSL", "--detail", "sasl_mechanism=SCRAM-SHA-512")
    cli("connections", "create", "inbox", "--type", "file", "--detail",
        f"path={tmp_path}/in-*.parquet")
    outputs = [cli("connections", "list"), cli("connections", "list", "--json"),
               cli("connections", "get", "events", "--json"),
               cli("connections", "get", "warehouse")]
    assert all(secret not in text for text in outputs)
    assert json.loads(outputs[2])["details"]["sasl_username"] == "etl"
    assert "'ftp'" in cli("connections", "create", "x", "--type", "ftp", ok=False)

    assert "version 1" in cli("orchestrations", "create", "nightly", "--source", "inbox",
                              "--pipeline", "scoring", "--destination", "warehouse",
                              "--param", "day=")
    assert "version 2" in cli("orchestrations", "create", "nightly", "--source", "inbox",
                              "--pipeline", "scoring", "--destination", "warehouse")
    assert "is used by orchestrations ['nightly']" in cli("connections", "delete", "inbox",
                                                          ok=False)
    assert "unknown time zone 'Mars/Olympus'" in cli(
        "tasks", "schedule", "t", "nightly", "--cron", "0 3 * * *", "--timezone",
        "Mars/Olympus", ok=False)
    cli("tasks", "schedule", "nightly-3am", "nightly", "--cron", "0 3 * * *", "--timezone",
        "Europe/Berlin")
    detached = json.loads(cli("tasks", "run-once", "nightly", "--name", "now", "--detach",
                              "--json"))
    assert detached["task"] == "now" and len(detached["run_id"]) == 32
    listed = json.loads(cli("tasks", "list", "--json"))
    assert [(t["name"], t["schedule"]) for t in listed] == [("nightly-3am", "0 3 * * *"),
                                                           ("now", None)]
    cli("tasks", "kill", "now")
    assert "already killed" in cli("tasks", "kill", "now", ok=False)
