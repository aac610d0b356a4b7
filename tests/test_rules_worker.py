"""Rules against the real broker and a worker: an assay alert rolls a pipeline back once, with
its cause in the audit, though the alert comes twice and a second executor reads every alert
again from the start (as a restart that lost its offsets would)."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents.scheduling.rule_executor import RuleExecutor
from control.cli import main
from control.follower import RegistryFollower
from control.kafka import producer
from control.registry.alert_rules import action_event_id, action_of, cause_of
from control.registry.events import ControlEvent
from schemas.codec import codec
from tests.helpers import wait_until
from tests.worker_platform import serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def metrics_of(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        return reply.read().decode()


def test_an_alert_rolls_the_pipeline_back_exactly_once(
        broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serving(broker.bootstrap, tmp_path, "rules", keras=False) as platform:
        client, settings = platform.client, platform.settings
        platform.pipeline("scoring", [{"model": "clf", "version": 1}])
        client.create_pipeline_version("scoring", [{"model": "clf", "version": 2}])
        platform.deploy("scoring", 1)
        platform.deploy("scoring", 2)
        # Its windows start tomorrow: the alert below is the only one.
        assay = client.create_assay(
            "drift", pipeline="scoring", model="clf", io="output", field="probabilities",
            index=0, baseline_values=(0.1, 0.5, 0.9), width=timedelta(hours=1),
            first_window_start=datetime.now(UTC) + timedelta(days=1), alert_threshold=0.25)
        rule = client.create_rule("back", "scoring", "rollback", assay="drift")
        # The window ends now, after the deploy of v2 (to the millisecond, as Avro keeps it: cut
        # to the second, it could end before a deploy in the same second, and the rule would
        # rightly ignore it).
        now = datetime.now(UTC)
        start = now.replace(microsecond=now.microsecond // 1000 * 1000) - timedelta(hours=1)
        alert = {
            "time": datetime.now(UTC), "status": "alert", "assay_id": assay.assay_id,
            "actor": "ann", "workspace": "lab", "pipeline": "scoring", "model": "clf",
            "io": "output", "field": "probabilities", "index": 0, "window_start": start,
            "window_end": start + timedelta(hours=1), "metric": "psi",
            "aggregation": "density", "score": 0.61, "threshold": 0.25,
            "warning_threshold": None, "alert_threshold": 0.25}
        alerts = producer(settings)
        alerts.produce(settings.topic("alerts"), key=b"lab/drift",
                       value=codec("AssayAlert").encode(alert))
        alerts.flush(10)

        wait_until(lambda: client.registry().deployments[("lab", "scoring")].version == 1, 60,
                   "the rule rolls scoring back to v1")
        platform.workers[0].wait_ready("lab/scoring")

        # The alert again (a window scored twice), read by the worker and by a second
        # executor of its own group, which reads every alert from the start.
        alerts.produce(settings.topic("alerts"), key=b"lab/drift",
                       value=codec("AssayAlert").encode(alert))
        alerts.flush(10)
        follower = RegistryFollower(settings).start()
        again = RuleExecutor(settings, lambda: follower.registry, follower.wait_caught_up,
                             group=f"{settings.namespace}.rules-replay").start()
        try:
            wait_until(lambda: again.done == 2, 60, "the second executor reads both alerts")
            wait_until(lambda: 'inferstream_rule_actions_total{outcome="skipped"} 1.0'
                       in metrics_of(platform.workers[0].url), 30,
                       "the worker reads the repeated alert and does not act on it")
        finally:
            again.stop()
            follower.stop()
        assert again.actions.labels("skipped")._value.get() == 2
        assert again.actions.labels("published")._value.get() == 0
        assert 'inferstream_rule_actions_total{outcome="published"} 1.0' in metrics_of(
            platform.workers[0].url)

        rollbacks = [e for e in client.events() if e.type == "Rollback"]
        assert len(rollbacks) == 1, rollbacks  # the operator's deploys were Deploys
        (action,) = rollbacks
        assert action.event_id == action_event_id(rule, alert) and action.actor == "ann"
        assert action.payload["cause"] == {
            "rule": "back", "rule_id": rule.rule_id, "assay_id": assay.assay_id,
            "pipeline": "scoring", "status": "alert", "window_start": start,
            "window_end": start + timedelta(hours=1), "score": 0.61, "threshold": 0.25,
            "metric": "psi", "alert_time": alert["time"]}
        # The registrar's status, not a worker's report that it serves the version (either
        # may come first on the status topic).
        status = next(s for s in client.statuses()
                      if s.event_id == action.event_id and "worker" not in s.result)
        assert status.accepted and status.result["version"] == "1"
        assert status.result["cause"].startswith(f"alert of assay {assay.assay_id} on "
                                                 "pipeline scoring")
        assert client.rule("back").fired_count == 1

        # A racing worker that wrote the same action a moment later: applied once.
        type_, payload = action_of(rule, cause_of(rule, alert))
        racing = ControlEvent(type_, payload, "ann", "lab", event_id=action.event_id)
        late = client.publish(racing.to_bytes(), racing.event_id)
        assert not late.accepted and "already applied" in (late.reason or "")
        assert client.registry().deployments[("lab", "scoring")].version == 1

        # The CLI lists the rule and the action it took, with its cause and outcome.
        argv = ["--bootstrap-servers", settings.bootstrap_servers, "--namespace",
                settings.namespace, "--user", "ann", "--workspace", "lab"]
        for args in (["rules", "list", "--json"], ["rules", "actions", "back", "--json"]):
            with pytest.raises(SystemExit) as exited:
                main([*argv, *args])
                raise SystemExit(0)
            assert exited.value.code == 0
        listed, actions = (json.loads(part) for part in _json_documents(
            capsys.readouterr().out))
        assert listed[0]["name"] == "back" and listed[0]["fired_count"] == 1
        assert [a["outcome"] for a in actions] == ["accepted", "rejected: " + late.reason]
        assert actions[0]["cause"]["assay_id"] == assay.assay_id


def _json_documents(text: str) -> list[str]:
    """The JSON documents printed one after the other (each starts at a line's first '[')."""
    starts = [i for i, line in enumerate(text.splitlines()) if line.startswith("[")]
    lines = text.splitlines()
    return ["\n".join(lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]
