"""The rule executor's decisions on one alert, without Kafka: who it acts as, what it publishes,
what it skips, and an alert it holds on a secured platform without an identity."""

from __future__ import annotations

import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from registry_events import (
    SCALER,
    add_member,
    create_assay,
    create_pipeline,
    create_pipeline_version,
    create_rule,
    create_workspace,
    deploy,
    event,
    given,
    key_of,
    model_step,
    secured_user,
    signed,
    upload_model,
    ws_members,
)

from agents.scheduling.rule_executor import RuleExecutor
from control.config import Settings
from control.registry.events import ControlEvent
from control.registry.fold import apply
from control.registry.state import Registry
from schemas.codec import codec

NOW = datetime.now(UTC).replace(microsecond=0)
OTHER_SCALER = upload_model("other-scaler", b"other scaler v1", inputs=["x"], outputs=["y"])


def steps() -> tuple:
    return (create_pipeline("fraud"), create_pipeline_version("fraud", model_step("scaler")),
            create_pipeline_version("fraud", model_step("other-scaler")), deploy("fraud", 1),
            deploy("fraud", 2), create_assay("drift"))


def open_platform() -> Registry:
    state = given(Registry(), *ws_members(), *(event(a, actor="bob") for a in (
        SCALER, OTHER_SCALER, *steps())))
    return given(state, replace(event(create_rule("back"), actor="bob"),
                                time=NOW - timedelta(minutes=1)))


def secured_platform() -> Registry:
    state = given(Registry(), *(signed(a, actor="ann", workspace=None) for a in (
        secured_user("ann"), secured_user("bot"))), signed(create_workspace("ws")))
    state = given(state, *(signed(a) for a in (SCALER, OTHER_SCALER, *steps())))
    state = given(state, signed(add_member("bot")))
    return given(state, replace(signed(create_rule("back")), time=NOW - timedelta(minutes=1)))


def alert_of(state: Registry, status: str = "alert") -> bytes:
    return codec("AssayAlert").encode({
        "time": NOW, "status": status, "assay_id": state.assays[("ws", "drift")].assay_id,
        "actor": "ann", "workspace": "ws", "pipeline": "fraud", "model": "scaler",
        "io": "output", "field": "y", "index": 0, "window_start": NOW - timedelta(hours=1),
        "window_end": NOW, "metric": "psi", "aggregation": "density", "score": 0.5,
        "threshold": 0.25, "warning_threshold": None, "alert_threshold": 0.25})


def executor(state: Registry, **settings: object) -> RuleExecutor:
    """An executor whose registry is `state` (never connected: handle() is called directly)."""
    return RuleExecutor(Settings(**{"user": None, "key_file": None, **settings}),
                        lambda: state, lambda: None)


def count(rules: RuleExecutor, outcome: str) -> float:
    return rules.actions.labels(outcome)._value.get()


def test_on_an_open_platform_it_acts_as_the_rules_creator_and_once() -> None:
    state = open_platform()
    published: list[ControlEvent] = []
    # Two workers (or one restarted) that read the alert before the action is folded write
    # the same event: the fold applies it once.
    for rules in (executor(state), executor(state)):
        assert rules.handle(alert_of(state), lambda e: published.append(e) or True) is True
    action, twin = published
    assert (action.event_id, action.payload) == (
        twin.event_id, twin.payload)
    assert (action.type, action.actor, action.signature) == ("Rollback", "bob", None)
    after = apply(state, ControlEvent.from_bytes(action.to_bytes(), offset=100))
    assert after.deployments[("ws", "fraud")].version == 1

    # The registry now shows the alert fired the rule: read again, it is skipped.
    again = executor(after)
    more: list[ControlEvent] = []
    assert again.handle(alert_of(state), lambda e: more.append(e) or True) and not more
    assert count(again, "skipped") == 1
    # A warning fires no rule that acts on alerts; a non-alert is skipped, not held.
    assert again.handle(alert_of(state, "warning"), lambda e: more.append(e) or True)
    assert again.handle(b"not an alert", lambda e: more.append(e) or True) and not more
    assert count(again, "undecodable") == 1


def test_on_a_secured_platform_it_holds_alerts_until_it_has_an_identity(tmp_path: Path) -> None:
    state = secured_platform()
    rules = executor(state)
    published: list[ControlEvent] = []
    for _ in range(2):
        assert rules.handle(alert_of(state), lambda e: published.append(e) or True) is False
    assert not published and count(rules, "no_identity") == 2
    assert "INFERSTREAM_USER" in rules.identity.missing()

    key_file = tmp_path / "bot.pem"
    key_file.write_bytes(key_of("bot").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    bot = executor(state, user="bot", key_file=key_file)
    assert bot.handle(alert_of(state), lambda e: published.append(e) or True) is True
    (action,) = published
    assert action.actor == "bot" and action.signature is not None
    after = apply(state, ControlEvent.from_bytes(action.to_bytes(), offset=100))
    assert after.deployments[("ws", "fraud")].version == 1
    assert after.alert_rules[("ws", "back")].fired_count == 1

    key_file.chmod(0o644)  # a key others can read is refused, and said why
    loose = executor(state, user="bot", key_file=key_file)
    assert loose.handle(alert_of(state), lambda e: True) is False
    assert "chmod 600" in loose.identity.missing()
