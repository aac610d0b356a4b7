"""The registry's assay rules: create, pause, resume, delete, accepted and rejected (no Kafka)."""

from __future__ import annotations

import builtins
import io
import json
import socket
from dataclasses import replace
from datetime import timedelta
from typing import Any

import fastavro
import pytest
from registry_events import (
    ADMIN,
    CLASSIFIER,
    OTHER,
    PERFORMANCE,
    SCALER,
    T0,
    baseline_range,
    baseline_values,
    create_assay,
    create_pipeline,
    create_pipeline_version,
    create_workspace,
    delete_assay,
    event,
    given,
    model_step,
    pause_assay,
    reject,
    resume_assay,
    shadow,
    tensor_spec,
    upload_model,
    ws_members,
)

from control.registry.assay_config import AssayConfig
from control.registry.assays import assay_payload, config_of
from control.registry.events import NAMESPACE, ControlEvent
from control.registry.fold import apply, fold, result_of
from control.registry.state import Registry
from schemas.codec import HISTORY_DIR, MARKER

HOUR = timedelta(hours=1)
SCALER_V2 = upload_model(  # adds output z, and is only in the pipeline's second version
    "scaler", b"scaler v2", inputs=["x"],
    outputs=["y", tensor_spec("z", "float32", [-1, -1])],
)
SCALER_V3 = upload_model(  # adds output w, and is in no version of the pipeline
    "scaler", b"scaler v3", inputs=["x"], outputs=["y", "w"],
)
CHALLENGER = upload_model("challenger", b"challenger v1", inputs=["y"], outputs=["label"])


@pytest.fixture
def platform() -> Registry:
    """Workspace ws (ann owner, bob collaborator; carol is no member) with pipeline fraud.

    fraud v1: scaler v1 -> classifier, with challenger shadowing it; v2: scaler v2 ->
    classifier. Model other is in no pipeline; pipeline empty has no version.
    """
    return given(
        Registry(),
        *ws_members(),
        event(SCALER),
        event(CLASSIFIER),
        event(CHALLENGER),
        event(OTHER),
        event(create_pipeline("fraud")),
        event(create_pipeline("empty")),
        event(create_pipeline_version(
            "fraud", model_step("scaler", 1),
            shadow(model_step("classifier"), model_step("challenger")),
        )),
        event(SCALER_V2),
        event(create_pipeline_version("fraud", model_step("scaler", 2),
                                      model_step("classifier"))),
        event(SCALER_V3),
    )


# -- create ----------------------------------------------------------------------------------


def test_create_assay_registers_its_config(platform: Registry) -> None:
    created = event(create_assay("drift", warning=0.1, alert=0.25), actor="bob")

    state = apply(platform, created)

    assay = state.assays[("ws", "drift")]
    assert (assay.workspace, assay.name, assay.active) == ("ws", "drift", True)
    assert (assay.created_by, assay.created_at) == ("bob", T0)
    assert assay.assay_id == f"drift-{created.event_id[:8]}"
    c = assay.config
    assert (c.workspace, c.pipeline, c.model, c.io, c.field, c.index) == (
        "ws", "fraud", "scaler", "output", "y", 0)
    assert (c.baseline_start, c.baseline_end, c.baseline_values) == (T0, T0 + HOUR, None)
    assert (c.width, c.step, c.start) == (HOUR, HOUR, T0 + HOUR)
    assert (c.binning, c.bins, c.edges, c.aggregation, c.metric) == (
        "quantile", 5, None, "density", "psi")
    assert (c.warning_threshold, c.alert_threshold, c.epsilon) == (0.1, 0.25, 0.005)
    assert result_of(platform, state, created) == {"assay": "drift",
                                                   "assay_id": assay.assay_id}
    assert state.active_assays() == [assay]


def test_create_assay_with_given_values_and_every_option(platform: Registry) -> None:
    action = create_assay(
        "inputs", field="x", io="input", index=3, baseline=baseline_values(1, 2, 3),
        first_window_start=T0, width_s=7200, interval_s=600, binning="provided", bins=2,
        edges=[0, 1.5, 3], aggregation="cumulative", metric="maxdiff", epsilon=0.001,
    )

    c = apply(platform, event(action)).assays[("ws", "inputs")].config

    assert (c.io, c.field, c.index, c.baseline_values) == ("input", "x", 3, (1.0, 2.0, 3.0))
    assert (c.start, c.width, c.step) == (T0, 2 * HOUR, timedelta(minutes=10))
    assert (c.binning, c.bins, c.edges, c.aggregation, c.metric, c.epsilon) == (
        "provided", 2, (0.0, 1.5, 3.0), "cumulative", "maxdiff", 0.001)


@pytest.mark.parametrize(
    ("model", "io", "field"),
    [("scaler", "output", "z"), ("challenger", "output", "label"), ("classifier", "input", "y")],
    ids=["field-of-a-later-version", "shadow-challenger", "input"],
)
def test_any_model_version_the_pipeline_runs_may_be_monitored(
    platform: Registry, model: str, io: str, field: str
) -> None:
    state = apply(platform, event(create_assay("a", model=model, io=io, field=field)))
    assert state.assays[("ws", "a")].config.model == model


def test_payload_and_config_convert_both_ways() -> None:
    config = AssayConfig(
        assay_id="drift", workspace="ws", pipeline="fraud", model="scaler", field="y",
        baseline_values=(1.0, 2.0), first_window_start=T0, width=HOUR,
        interval=timedelta(minutes=5), binning="equal", bins=3, warning_threshold=0.2,
    )
    assert config_of("ws", "drift", assay_payload("drift", config)) == config


def test_the_fold_does_no_io(platform: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_io(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the registry fold did I/O")

    monkeypatch.setattr(builtins, "open", no_io)
    monkeypatch.setattr(socket, "socket", no_io)
    state = apply(platform, event(create_assay("drift")))
    state = apply(state, event(pause_assay("drift")))
    assert not state.assays[("ws", "drift")].active


def test_create_assay_needs_a_member(platform: Registry) -> None:
    reject(platform, event(create_assay("drift"), actor="carol"),
           "'carol' is not a member of workspace 'ws'")


def test_create_assay_needs_a_valid_unique_name(platform: Registry) -> None:
    reject(platform, event(create_assay("Drift!")), "invalid assay name 'Drift!'")
    state = apply(platform, event(create_assay("drift")))
    reject(state, event(create_assay("drift", field="y")),
           "assay 'drift' already exists in workspace 'ws'")


def test_the_same_name_in_another_workspace_is_another_assay(platform: Registry) -> None:
    state = given(
        platform, event(create_assay("drift")), event(create_workspace("other")),
        event(SCALER, workspace="other"), event(create_pipeline("fraud"), workspace="other"),
        event(create_pipeline_version("fraud", model_step("scaler")), workspace="other"),
        event(create_assay("drift"), workspace="other"),
    )
    assert sorted(state.assays) == [("other", "drift"), ("ws", "drift")]
    reject(state, event(pause_assay("ghost"), workspace="other"), "['drift']")


def test_create_assay_needs_an_existing_pipeline_with_a_version(platform: Registry) -> None:
    reject(platform, event(create_assay("drift", pipeline="ghost")),
           "unknown pipeline 'ghost' in workspace 'ws'")
    reject(platform, event(create_assay("drift", pipeline="empty")),
           "pipeline 'empty' has no version yet")


def test_create_assay_needs_a_model_the_pipeline_runs(platform: Registry) -> None:
    reason = reject(platform, event(create_assay("drift", model="other", field="z")),
                    "model 'other' is not used by any version of pipeline 'fraud'")
    assert "['challenger', 'classifier', 'scaler']" in reason
    reject(platform, event(create_assay("drift", model="ghost")), "model 'ghost'")


@pytest.mark.parametrize(
    ("io", "field", "mentions"),
    [
        ("output", "nope", ["model 'scaler' has no output 'nope'", "(v1, v2)",
                            "['y', 'z']"]),
        ("output", "w", ["has no output 'w'"]),  # only scaler v3 has it: no pipeline runs v3
        ("input", "y", ["has no input 'y'", "['x']"]),
    ],
    ids=["unknown", "of-a-version-not-in-the-pipeline", "output-named-as-input"],
)
def test_create_assay_needs_a_field_of_the_model(
    platform: Registry, io: str, field: str, mentions: list[str]
) -> None:
    reject(platform, event(create_assay("drift", io=io, field=field)), *mentions)


def test_create_assay_needs_an_index_within_the_field(platform: Registry) -> None:
    apply(platform, event(create_assay("drift", index=3)))  # y is [-1, 4]: 4 per record
    reject(platform, event(create_assay("drift", index=4)),
           "index 4 is past the end of output 'y'", "4 element(s)", "[-1, 4]")
    reject(platform, event(create_assay("drift", index=-1)), "index -1", "negative")
    apply(platform, event(create_assay("drift", field="z", index=99)))  # z's size is unknown


@pytest.mark.parametrize(
    ("options", "mention"),
    [
        ({"baseline": baseline_range(T0, T0)}, "is not before its end"),
        ({"baseline": baseline_values()}, "baseline values are empty"),
        ({"baseline": baseline_values(1.0)}, "first_window_start is missing"),
        ({"width_s": 0}, "window width 0:00:00"),
        ({"interval_s": -60}, "interval -1 day"),
        ({"width_s": 10**15}, f"window width of {10**15} s is too long"),
        ({"bins": 0}, "bins 0 is outside 1..1000"),
        ({"binning": "provided", "bins": 3}, "needs 4 edges"),
        ({"binning": "provided", "bins": 2, "edges": [3, 1, 2]}, "[3.0, 1.0, 2.0]"),
        ({"edges": [1, 2]}, "binning is 'quantile'"),
        ({"warning": 0.5, "alert": 0.2}, "warning threshold 0.5 is above alert threshold 0.2"),
        ({"warning": -1.0}, "warning_threshold -1.0"),
        ({"epsilon": 0.0}, "epsilon 0.0"),
    ],
    ids=["empty-range", "no-values", "values-without-start", "zero-width",
         "negative-interval", "huge-width", "no-bins", "provided-without-edges",
         "unsorted-edges", "edges-without-provided", "warning-above-alert",
         "negative-threshold", "zero-epsilon"],
)
def test_create_assay_rejects_a_config_that_cannot_work(
    platform: Registry, options: dict[str, Any], mention: str
) -> None:
    reject(platform, event(create_assay("drift", **options)), "assay 'drift'", mention)


# -- pause, resume, delete -------------------------------------------------------------------


@pytest.fixture
def monitored(platform: Registry) -> Registry:
    return apply(platform, event(create_assay("drift")))


def test_pause_and_resume(monitored: Registry) -> None:
    paused = apply(monitored, event(pause_assay("drift"), actor="bob"))
    assert not paused.assays[("ws", "drift")].active
    assert paused.active_assays() == []
    reject(paused, event(pause_assay("drift")), "assay 'drift' is already paused")

    resumed = apply(paused, event(resume_assay("drift")))
    assert resumed.assays[("ws", "drift")] == monitored.assays[("ws", "drift")]
    reject(resumed, event(resume_assay("drift")), "assay 'drift' is already active")


@pytest.mark.parametrize("change", [pause_assay, resume_assay, delete_assay])
def test_changing_an_assay_needs_a_member_and_an_existing_assay(
    monitored: Registry, change: Any
) -> None:
    reject(monitored, event(change("drift"), actor="carol"), "'carol' is not a member")
    reject(monitored, event(change("ghost")), "unknown assay 'ghost' in workspace 'ws'",
           "['drift']")


def test_delete_frees_the_name_and_a_new_assay_gets_a_new_id(monitored: Registry) -> None:
    before = monitored.assays[("ws", "drift")]
    deleted = apply(monitored, event(delete_assay("drift")))
    assert deleted.assays == {}
    reject(deleted, event(delete_assay("drift")), "unknown assay 'drift'", "it has none")

    again = apply(deleted, event(create_assay("drift", field="z")))
    assert again.assays[("ws", "drift")].assay_id != before.assay_id


def test_replay_skips_rejected_assay_events(platform: Registry) -> None:
    events = [event(create_assay("drift")), event(resume_assay("drift")),
              event(pause_assay("drift")), event(create_assay("drift"))]
    state = fold(events, platform)
    assert list(state.assays) == [("ws", "drift")]
    assert not state.assays[("ws", "drift")].active


# -- performance assays ----------------------------------------------------------------------

# The envelope as it was before performance metrics (CreateAssay without their fields, its
# baseline without null, its metric enum of three), frozen in schemas/history.
BEFORE_PERFORMANCE = "inferstream.control.ControlEvent.1556749a4fd41613.avsc"


def test_a_create_assay_written_before_performance_metrics_folds_as_it_did(
        platform: Registry) -> None:
    """The old bytes decode with the new fields at their defaults, which mean what the old
    event meant: the same drift assay."""
    old = json.loads((HISTORY_DIR / BEFORE_PERFORMANCE).read_text())
    _, payload = create_assay("drift", warning=0.1, alert=0.25)
    payload = {k: v for k, v in payload.items() if k not in (
        "prediction", "decision_threshold", "positive_class", "average", "label_wait_s")}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), {
        "event_id": "e-old", "time": T0, "actor": ADMIN, "workspace": "ws",
        "payload": (NAMESPACE + "CreateAssay", payload), "signature": None})
    data = MARKER + bytes.fromhex(BEFORE_PERFORMANCE.split(".")[3]) + body.getvalue()

    old_event = ControlEvent.from_bytes(data)
    now = event(create_assay("drift", warning=0.1, alert=0.25))

    assert old_event.payload["label_wait_s"] == 7 * 86_400
    old_config = apply(platform, old_event).assays[("ws", "drift")].config
    new_config = apply(platform, now).assays[("ws", "drift")].config
    assert replace(old_config, assay_id="x") == replace(new_config, assay_id="x")
    assert (old_config.metric, old_config.performance, old_config.lower_is_worse) == (
        "psi", False, False)


def test_create_a_performance_assay(platform: Registry) -> None:
    action = create_assay("acc", model="classifier", field="label", baseline=PERFORMANCE,
                          first_window_start=T0, metric="f1", average="macro",
                          prediction="argmax", label_wait_s=86_400, warning=0.9, alert=0.8)
    c = apply(platform, event(action)).assays[("ws", "acc")].config
    assert (c.metric, c.average, c.prediction, c.label_wait) == (
        "f1", "macro", "argmax", timedelta(days=1))
    assert (c.baseline_start, c.baseline_values, c.performance, c.lower_is_worse) == (
        None, None, True, True)
    assert config_of("ws", c.assay_id, assay_payload("acc", c)) == c

    reject(platform, event(create_assay("b", model="classifier", field="label",
                                        metric="accuracy", warning=0.8, alert=0.9,
                                        baseline=PERFORMANCE, first_window_start=T0)),
           "warning threshold 0.8 is below alert threshold 0.9")
    reject(platform, event(create_assay("c", model="classifier", field="label",
                                        metric="mae")),
           "takes no baseline")
    reject(platform, event(create_assay("d", model="classifier", field="label",
                                        metric="rmse", baseline=PERFORMANCE)),
           "first_window_start is missing")
