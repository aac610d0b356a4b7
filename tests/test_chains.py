"""Model version interfaces and pipeline chains in the fold: what a new model version may change,
what each step may read of the step before, which steps' outputs results carry, and that events
written before these rules fold as they always did (pure, no Kafka)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence

import fastavro
import numpy as np
import pytest
from registry_events import (
    CLASSIFIER,
    OTHER,
    SCALER,
    T0,
    Action,
    create_pipeline,
    create_pipeline_version,
    deploy,
    event,
    given,
    key_split,
    model_step,
    random_split,
    reject,
    rollback,
    shadow,
    tensor_spec,
    upload_model,
    ws_members,
)

from agents.runtimes.base import InputMismatch, conform
from control.registry.chains import TYPED
from control.registry.events import NAMESPACE, ControlEvent
from control.registry.fold import fold
from control.registry.state import Registry
from control.registry.tensors import Cast, TensorSpec, can_feed, dtype_cast, feed_problem
from schemas.codec import MARKER, writer_schemas

# The ControlEvent schema released before UploadModel.allow_interface_change and the `rules`
# of CreatePipelineVersion, Deploy and Rollback (schemas/history/).
BEFORE_THE_RULES = bytes.fromhex("ad2de36c775baac1")


def written_before_the_rules(action: Action, actor: str = "ann", offset: int = 0
                             ) -> ControlEvent:
    """The event as a client of the release before wrote it: with that release's schema."""
    type_, payload = action
    out = io.BytesIO()
    fastavro.schemaless_writer(out, writer_schemas()[BEFORE_THE_RULES], {
        "event_id": uuid.uuid4().hex, "time": T0, "actor": actor, "workspace": "ws",
        "payload": (NAMESPACE + type_, payload), "signature": None})
    return ControlEvent.from_bytes(MARKER + BEFORE_THE_RULES + out.getvalue(), offset=offset)


def spec(name: str, dtype: str = "float32", shape: Sequence[int] = (-1, 4)) -> dict:
    return tensor_spec(name, dtype, shape)


def upload(name: str, content: bytes, inputs: Sequence[dict], outputs: Sequence[dict],
           allow: bool | None = False) -> ControlEvent:
    """An upload as clients of now write it (allow_interface_change a boolean)."""
    return event(upload_model(name, content, inputs=inputs, outputs=outputs,
                              allow_interface_change=allow))


def version(pipeline: str, *steps: dict | tuple, result_steps: Sequence[int] = ()
            ) -> ControlEvent:
    """A pipeline version as clients of now write it (typed rules)."""
    return event(create_pipeline_version(pipeline, *steps, result_steps=result_steps,
                                         rules=TYPED))


@pytest.fixture
def models() -> Registry:
    """Workspace ws; scaler x->y, classifier y->label, other x->z (float32 [-1, 4]); texter
    x->y of text; narrow x->y of float32 [-1, 3]; flat x->y of float32 [-1]; pipeline fraud."""
    return given(
        Registry(), *ws_members(), *(event(a) for a in (SCALER, CLASSIFIER, OTHER)),
        upload("texter", b"texter", [spec("x")], [spec("y", "string")]),
        upload("narrow", b"narrow", [spec("x")], [spec("y", shape=(-1, 3))]),
        upload("flat", b"flat", [spec("x")], [spec("y", shape=(-1,))]),
        upload("counter", b"counter", [spec("x")], [spec("y", "int64")]),
        event(create_pipeline("fraud")),
    )


# -- the cast rules, shared with the runtime ----------------------------------------------------


@pytest.mark.parametrize(("got", "want", "how"), [
    ("float32", "float32", Cast.SAME), ("string", "string", Cast.SAME),
    ("float64", "float32", Cast.ALWAYS), ("int64", "float32", Cast.ALWAYS),
    ("bool", "int8", Cast.ALWAYS), ("int8", "int64", Cast.ALWAYS),
    ("uint8", "int16", Cast.ALWAYS), ("int64", "int8", Cast.IF_FITS),
    ("int8", "uint64", Cast.IF_FITS), ("uint64", "int64", Cast.IF_FITS),
    ("float32", "int64", Cast.NEVER), ("string", "float32", Cast.NEVER),
    ("float32", "string", Cast.NEVER), ("int64", "bool", Cast.NEVER),
    ("complex64", "complex128", Cast.NEVER),
    ("datetime64[s]", "datetime64[us]", Cast.ALWAYS),
    ("datetime64[ns]", "datetime64[us]", Cast.NEVER),
])
def test_dtype_cast_rules(got: str, want: str, how: Cast) -> None:
    assert dtype_cast(got, want) is how


def test_the_runtime_casts_by_the_same_rules() -> None:
    names = ["bool", "int8", "int64", "uint8", "uint64", "float16", "float32", "float64", "string"]
    for got in names:
        for want in names:
            values = np.array([[1, 0]], dtype=str if got == "string" else got)
            try:
                conform(TensorSpec("x", want, (-1, 2)), {"x": values})
                ran = True
            except InputMismatch:
                ran = False
            assert ran == (dtype_cast(got, want) is not Cast.NEVER), (got, want)


def test_shapes_feed_when_ranks_match_and_fixed_sizes_agree() -> None:
    wide = TensorSpec("y", "float32", (-1, 4))
    assert can_feed(TensorSpec("y", "float32", (-1, -1)), wide)
    assert can_feed(TensorSpec("y", "float64", (1, 4)), wide)
    assert feed_problem(TensorSpec("y", "float32", (-1, 3)), wide) == (
        "its dimension 1 is 3, the input's 4")
    assert feed_problem(TensorSpec("y", "float32", (-1,)), wide) == (
        "it has 1 dimensions, the input 2")


# -- model version interface ----------------------------------------------------------------------


def test_a_new_version_that_renames_an_output_is_refused_with_the_difference(
        models: Registry) -> None:
    risk = upload("risk", b"keras", [spec("x")], [spec("risk", shape=(-1, 1))])
    state = given(models, risk)
    saved_model = upload("risk", b"savedmodel", [spec("x", "float64")],
                         [spec("output_0", shape=(-1, 1))])

    reject(state, saved_model, "model 'risk' version 2", "version 1",
           "output 'risk' (float32 [-1, 1]) is gone", "new output 'output_0' (float32 [-1, 1])",
           "input 'x' dtype float32 -> float64", "--allow-interface-change")


def test_a_changed_shape_is_an_interface_change(models: Registry) -> None:
    reject(models, upload("scaler", b"scaler v2", [spec("x", shape=(-1, 5))], [spec("y")]),
           "input 'x' shape [-1, 4] -> [-1, 5]")


def test_the_flag_allows_the_change(models: Registry) -> None:
    state = given(models, upload("scaler", b"scaler v2", [spec("x")], [spec("w")], allow=True))

    assert [o.name for o in state.models[("ws", "scaler")].latest.outputs] == ["w"]


def test_a_version_with_the_same_interface_needs_no_flag(models: Registry) -> None:
    state = given(models, upload("scaler", b"scaler v2", [spec("x")], [spec("y")]))

    assert state.models[("ws", "scaler")].latest.version == 2


def test_an_upload_written_before_the_check_folds_as_it_did(models: Registry) -> None:
    # Accepted when it was written: a replay of the control topic must accept it again, or
    # every later version number of the model would shift.
    old = written_before_the_rules(upload_model("scaler", b"scaler v2", outputs=["w"]))

    assert old.payload["allow_interface_change"] is None
    assert given(models, old).models[("ws", "scaler")].latest.outputs[0].name == "w"


# -- chains -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "mentions"), [
    ("texter", ["string values cannot be cast to float32"]),
    ("narrow", ["float32 [-1, 3]", "its dimension 1 is 3, the input's 4"]),
    ("flat", ["it has 1 dimensions, the input 2"]),
])
def test_a_step_that_cannot_read_the_step_before_is_refused(
        models: Registry, first: str, mentions: list[str]) -> None:
    e = version("fraud", model_step(first), model_step("classifier"))

    reject(models, e, "step 2 (classifier v1) input 'y' (float32 [-1, 4])", "field 'y'",
           f"step 1 ({first} v1)", *mentions)


def test_values_that_cast_feed_the_next_step(models: Registry) -> None:
    state = given(models, version("fraud", model_step("counter"), model_step("classifier")))

    assert len(state.pipelines[("ws", "fraud")].versions) == 1


def test_every_route_of_a_split_must_feed_the_next_step(models: Registry) -> None:
    split = random_split((0.5, model_step("scaler")), (0.5, model_step("texter")))

    reject(models, version("fraud", split, model_step("classifier")),
           "step 2 (classifier v1)", "route texter v1", "string")


def test_the_shadow_champion_feeds_the_next_step_not_its_challengers(models: Registry) -> None:
    step = shadow(model_step("scaler"), model_step("texter"))
    given(models, version("fraud", step, model_step("classifier")))

    reject(models, version("fraud", shadow(model_step("texter"), model_step("scaler")),
                           model_step("classifier")), "step 1 (texter v1)", "string")


def test_routes_of_the_last_step_must_return_the_same_outputs(models: Registry) -> None:
    split = random_split((0.5, model_step("scaler")), (0.5, model_step("other")))

    reject(models, version("fraud", split), "step 1 routes return different outputs",
           "scaler v1 gives 'y' (float32 [-1, 4])", "other v1 gives 'z'")


def test_routes_of_step_1_must_take_the_inputs_records_are_decoded_for(
        models: Registry) -> None:
    split = key_split("country", [("de", model_step("wide"))], default=model_step("scaler"))

    reject(given(models, upload("wide", b"wide", [spec("w")], [spec("y")])),
           version("fraud", split), "step 1 (wide v1) needs input 'w'", "scaler v1",
           "no such field")


def test_a_chain_written_before_the_typed_rules_folds_as_it_did(models: Registry) -> None:
    old = written_before_the_rules(create_pipeline_version(
        "fraud", model_step("texter"), model_step("classifier")))

    assert old.payload["rules"] == 1
    assert len(given(models, old).pipelines[("ws", "fraud")].versions) == 1


# -- deploying a version made before the rules ---------------------------------------------------


@pytest.fixture
def gapped(models: Registry) -> Registry:
    """fraud v1 texter -> classifier, accepted under the old rules; v2 scaler -> classifier."""
    return given(models,
                 written_before_the_rules(create_pipeline_version(
                     "fraud", model_step("texter"), model_step("classifier"))),
                 version("fraud", model_step("scaler"), model_step("classifier")))


def test_deploying_a_version_whose_chain_breaks_the_rules_is_refused(gapped: Registry) -> None:
    reject(gapped, event(deploy("fraud", 1, rules=TYPED)), "pipeline 'fraud' version 1 cannot be "
           "served", "step 2 (classifier v1)", "string")
    given(gapped, event(deploy("fraud", 2, rules=TYPED)))


def test_rolling_back_to_it_is_refused(gapped: Registry) -> None:
    state = given(gapped, written_before_the_rules(deploy("fraud", 1)),
                  event(deploy("fraud", 2, rules=TYPED)))

    reject(state, event(rollback("fraud", rules=TYPED)), "version 1 cannot be served")


def test_old_deploys_and_rollbacks_fold_as_they_did(gapped: Registry) -> None:
    events = [written_before_the_rules(a, offset=n) for n, a in enumerate(
        [deploy("fraud", 1), deploy("fraud", 2), rollback("fraud")])]

    state = fold(events, gapped)

    assert state.deployments[("ws", "fraud")].history == (1, 2, 1)


# -- result steps --------------------------------------------------------------------------------


def test_results_carry_the_last_step_by_default(models: Registry) -> None:
    state = given(models, version("fraud", model_step("scaler"), model_step("classifier")))

    v1 = state.pipelines[("ws", "fraud")].versions[0]
    assert (v1.result_steps, v1.returned_steps) == ((2,), (2,))


def test_a_version_chooses_the_steps_its_results_carry(models: Registry) -> None:
    e = version("fraud", model_step("scaler"), model_step("classifier"), result_steps=[2, 1])

    assert given(models, e).pipelines[("ws", "fraud")].versions[0].returned_steps == (1, 2)


@pytest.mark.parametrize(("numbers", "mention"), [
    ([0], "result steps [0] are not steps"), ([3], "(it has 1..2)"),
    ([1, 1], "name a step twice"),
])
def test_result_steps_must_be_steps_of_the_version(
        models: Registry, numbers: list[int], mention: str) -> None:
    e = version("fraud", model_step("scaler"), model_step("classifier"), result_steps=numbers)

    reject(models, e, mention)


def test_an_earlier_result_step_that_is_a_split_needs_routes_with_the_same_outputs(
        models: Registry) -> None:
    split = random_split((0.5, model_step("scaler")), (0.5, model_step("scaler2")))
    state = given(models, upload("scaler2", b"scaler2", [spec("x")], [spec("y"), spec("extra")]))
    given(state, version("fraud", split, model_step("classifier")))

    reject(state, version("fraud", split, model_step("classifier"), result_steps=[1, 2]),
           "step 1 routes return different outputs")
