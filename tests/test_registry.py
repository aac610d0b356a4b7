"""The registry fold: every rule of the control plane, accepted and rejected (pure, no Kafka)."""

from __future__ import annotations

import math

import pytest
from registry_events import (
    CLASSIFIER,
    OTHER,
    SCALER,
    T0,
    Action,
    add_member,
    artifact,
    create_pipeline,
    create_pipeline_version,
    create_user,
    create_workspace,
    deactivate_user,
    deploy,
    event,
    given,
    key_split,
    model_step,
    random_split,
    reject,
    remove_member,
    rollback,
    sha256,
    shadow,
    tensor_spec,
    undeploy,
    upload_model,
    ws_members,
)

from control.registry.events import ControlEvent
from control.registry.fold import fold, result_of
from control.registry.state import (
    ArtifactRef,
    KeySplit,
    ModelStep,
    RandomSplit,
    Registry,
    ShadowStep,
)
from control.registry.tensors import TensorSpec


@pytest.fixture
def platform() -> Registry:
    """ann (first user, so admin), bob and carol; workspace ws: ann owner, bob collaborator."""
    return given(Registry(), *ws_members())


@pytest.fixture
def models(platform: Registry) -> Registry:
    """scaler x->y, classifier y->label and other x->z, each at version 1 in ws."""
    return given(platform, *(event(a, actor="bob") for a in (SCALER, CLASSIFIER, OTHER)))


@pytest.fixture
def pipelines(models: Registry) -> Registry:
    """Pipeline fraud: version 1 runs scaler, version 2 runs scaler then classifier."""
    return given(
        models,
        event(create_pipeline("fraud")),
        event(create_pipeline_version("fraud", model_step("scaler"))),
        event(create_pipeline_version("fraud", model_step("scaler"), model_step("classifier"))),
    )


# -- users -----------------------------------------------------------------------------------


def test_first_user_bootstraps_itself_and_becomes_admin() -> None:
    state = given(Registry(), event(create_user("ann", email="ann@example.com"), actor="ann"))

    ann = state.users["ann"]
    assert (ann.admin, ann.active, ann.email, ann.created_at) == (
        True, True, "ann@example.com", T0
    )


def test_first_user_must_create_itself() -> None:
    reject(Registry(), event(create_user("ann"), actor="root"), "first user", "'root'", "'ann'")


def test_admin_creates_users_and_administrators(platform: Registry) -> None:
    state = given(platform, event(create_user("dave", admin=True)))

    assert state.users["dave"].admin
    assert not state.users["bob"].admin


def test_non_admin_cannot_create_users(platform: Registry) -> None:
    reject(platform, event(create_user("dave"), actor="bob"), "administrator", "'bob'")


def test_duplicate_user_is_rejected(platform: Registry) -> None:
    reject(platform, event(create_user("bob")), "'bob'", "already exists")


@pytest.mark.parametrize("name", ["dave", "Dave.Smith@example.com", "d", "0-d_x", "d" * 128])
def test_valid_user_names(platform: Registry, name: str) -> None:
    assert name in given(platform, event(create_user(name))).users


@pytest.mark.parametrize(
    "name",
    [
        "", "-dave", ".dave", "dave smith", "dave/x", "dävé", "d" * 129,
        pytest.param("dave\n"),
    ],
)
def test_invalid_user_names_are_rejected(platform: Registry, name: str) -> None:
    reject(platform, event(create_user(name)), f"invalid user name {name!r}")


def test_unknown_actor_cannot_act(platform: Registry) -> None:
    reject(platform, event(create_workspace("lab"), actor="mallory"), "unknown user 'mallory'")


def test_deactivated_user_cannot_act(platform: Registry) -> None:
    state = given(platform, event(deactivate_user("bob")))

    assert not state.users["bob"].active
    reject(state, event(create_workspace("lab"), actor="bob"), "'bob'", "deactivated")
    reject(state, event(SCALER, actor="bob"), "'bob'", "deactivated")


def test_only_an_admin_deactivates_users(platform: Registry) -> None:
    reject(platform, event(deactivate_user("carol"), actor="bob"), "administrator", "'bob'")


def test_deactivating_an_unknown_user_is_rejected(platform: Registry) -> None:
    reject(platform, event(deactivate_user("zoe")), "'zoe'")


def test_last_admin_cannot_be_deactivated(platform: Registry) -> None:
    reject(platform, event(deactivate_user("ann")), "'ann'", "last active administrator")


def test_an_admin_can_go_while_another_remains(platform: Registry) -> None:
    state = given(
        platform, event(create_user("dave", admin=True)), event(deactivate_user("ann"))
    )

    assert not state.users["ann"].active
    reject(state, event(deactivate_user("dave"), actor="dave"), "'dave'", "last active")


# -- workspaces and members ------------------------------------------------------------------


def test_workspace_creator_is_its_owner(platform: Registry) -> None:
    state = given(platform, event(create_workspace("lab"), actor="bob"))

    lab = state.workspaces["lab"]
    assert (lab.created_by, dict(lab.members)) == ("bob", {"bob": "owner"})


def test_duplicate_workspace_is_rejected(platform: Registry) -> None:
    reject(platform, event(create_workspace("ws"), actor="bob"), "'ws'", "already exists")


@pytest.mark.parametrize("name", ["lab", "lab-2", "lab_2", "0", "a" * 63])
def test_valid_workspace_names(platform: Registry, name: str) -> None:
    assert name in given(platform, event(create_workspace(name))).workspaces


@pytest.mark.parametrize(
    "name",
    [
        "", "Lab", "-lab", "_lab", "my lab", "lab/2", "lab.2", "a" * 64,
        pytest.param("lab\n"),
    ],
)
def test_invalid_workspace_names_are_rejected(platform: Registry, name: str) -> None:
    reject(platform, event(create_workspace(name)), f"invalid workspace name {name!r}")


def test_owner_adds_members_and_changes_roles(platform: Registry) -> None:
    state = given(platform, event(add_member("carol")), event(add_member("bob", "owner")))

    assert dict(state.workspaces["ws"].members) == {
        "ann": "owner", "bob": "owner", "carol": "collaborator",
    }


def test_admin_from_outside_the_workspace_adds_members(platform: Registry) -> None:
    state = given(platform, event(create_workspace("lab"), actor="bob"))

    state = given(state, event(add_member("carol"), actor="ann", workspace="lab"))

    assert state.workspaces["lab"].role_of("carol") == "collaborator"


def test_admin_must_join_a_workspace_to_work_in_it(platform: Registry) -> None:
    state = given(platform, event(create_workspace("lab"), actor="bob"))

    reject(state, event(SCALER, workspace="lab"), "'ann'", "not a member", "'lab'")
    state = given(state, event(add_member("ann"), workspace="lab"), event(SCALER, workspace="lab"))
    assert state.models[("lab", "scaler")].latest.created_by == "ann"


def test_collaborator_cannot_add_members(platform: Registry) -> None:
    reject(platform, event(add_member("carol"), actor="bob"), "owner", "'ws'", "'bob'")


def test_adding_an_unknown_user_is_rejected(platform: Registry) -> None:
    reject(platform, event(add_member("zoe")), "unknown user 'zoe'")


def test_adding_to_an_unknown_workspace_is_rejected(platform: Registry) -> None:
    reject(platform, event(add_member("carol"), workspace="nope"), "unknown workspace 'nope'")


def test_owner_removes_a_member(platform: Registry) -> None:
    state = given(platform, event(remove_member("bob")))

    assert dict(state.workspaces["ws"].members) == {"ann": "owner"}


def test_removing_a_non_member_is_rejected(platform: Registry) -> None:
    reject(platform, event(remove_member("carol")), "'carol'", "not a member", "'ws'")


def test_collaborator_cannot_remove_members(platform: Registry) -> None:
    reject(platform, event(remove_member("ann"), actor="bob"), "owner", "'bob'")


def test_last_owner_cannot_leave(platform: Registry) -> None:
    reject(platform, event(remove_member("ann")), "'ann'", "last owner", "'ws'")

    state = given(platform, event(add_member("bob", "owner")), event(remove_member("ann")))
    assert dict(state.workspaces["ws"].members) == {"bob": "owner"}


def test_last_owner_cannot_become_a_collaborator(platform: Registry) -> None:
    reject(platform, event(add_member("ann", "collaborator")), "'ann'", "last owner")


@pytest.mark.parametrize(
    "action",
    [
        upload_model("fresh"), create_pipeline("new"),
        create_pipeline_version("fraud", model_step("scaler")),
        deploy("fraud"), undeploy("fraud"), rollback("fraud", 1),
    ],
    ids=lambda a: a[0],
)
def test_non_member_cannot_act_in_a_workspace(pipelines: Registry, action: Action) -> None:
    reject(pipelines, event(action, actor="carol"), "'carol'", "not a member", "'ws'")


@pytest.mark.parametrize(
    "action",
    [upload_model("fresh"), create_pipeline("new"), add_member("carol"), deploy("fraud")],
    ids=lambda a: a[0],
)
def test_workspace_events_need_a_workspace(pipelines: Registry, action: Action) -> None:
    reject(pipelines, event(action, workspace=None), f"{action[0]} acts in a workspace")


def test_acting_in_an_unknown_workspace_is_rejected(platform: Registry) -> None:
    reject(platform, event(SCALER, workspace="nope"), "unknown workspace 'nope'")


# -- models ----------------------------------------------------------------------------------


def test_upload_registers_version_1(platform: Registry) -> None:
    e = event(upload_model("scaler", b"v1", inputs=[tensor_spec("x", "float64", [-1, 3])]),
              actor="bob")
    state = given(platform, e)

    v1 = state.models[("ws", "scaler")].latest
    assert (v1.version, v1.framework, v1.created_by, v1.ref) == (1, "onnx", "bob", "scaler:v1")
    assert v1.artifact == ArtifactRef(**artifact(b"v1"))
    assert v1.inputs == (TensorSpec("x", "float64", (-1, 3)),)
    assert v1.outputs == (TensorSpec("y", "float32", (-1, 4)),)
    assert result_of(platform, state, e) == {"model": "scaler", "version": "1"}


def test_changed_artifact_is_version_2(models: Registry) -> None:
    e = event(upload_model("scaler", b"scaler v2", inputs=["x"], outputs=["y"]))
    state = given(models, e)

    scaler = state.models[("ws", "scaler")]
    assert [v.version for v in scaler.versions] == [1, 2]
    assert scaler.version(1) == models.models[("ws", "scaler")].latest  # versions are immutable
    assert scaler.latest.artifact.sha256 == sha256(b"scaler v2")
    assert result_of(models, state, e) == {"model": "scaler", "version": "2"}


def test_identical_artifact_is_rejected(models: Registry) -> None:
    reject(models, event(SCALER), "'scaler'", "version 1", sha256(b"scaler v1")[:12])


def test_changed_extra_file_makes_a_new_version(models: Registry) -> None:
    changed = upload_model("scaler", b"scaler v1", inputs=["x"], outputs=["y"],
                           files={"vocab.txt": b"a b c"})
    state = given(models, event(changed))

    v2 = state.models[("ws", "scaler")].latest
    assert (v2.version, v2.files) == (2, (("vocab.txt", ArtifactRef(**artifact(b"a b c"))),))


def test_same_model_name_in_another_workspace_is_another_model(models: Registry) -> None:
    state = given(models, event(create_workspace("lab")), event(SCALER, workspace="lab"))

    assert state.models[("lab", "scaler")].latest.version == 1


@pytest.mark.parametrize(
    "digest",
    [
        "", "abc", sha256(b"x")[:63], sha256(b"x") + "0", sha256(b"x").upper(), "g" * 64,
        pytest.param(sha256(b"x") + "\n"),
    ],
    ids=["empty", "short", "63-hex", "65-hex", "uppercase", "not-hex", "trailing-newline"],
)
def test_bad_sha256_is_rejected(platform: Registry, digest: str) -> None:
    bad = upload_model("scaler", artifact_record=artifact(digest=digest))

    reject(platform, event(bad), "model 'scaler'", f"sha256 {digest!r}")


def test_bad_sha256_of_an_extra_file_names_the_file(platform: Registry) -> None:
    action = upload_model("scaler", files={"vocab.txt": b"x"})
    action[1]["files"][0]["artifact"]["sha256"] = "nothex"

    reject(platform, event(action), "file 'vocab.txt'", "'nothex'")


@pytest.mark.parametrize(("size", "chunks"), [(0, 1), (1024, 0)])
def test_empty_artifact_is_rejected(platform: Registry, size: int, chunks: int) -> None:
    bad = upload_model("scaler", artifact_record=artifact(size=size, chunks=chunks))

    reject(platform, event(bad), "empty artifact", f"size {size}, {chunks} chunks")


@pytest.mark.parametrize("which", ["inputs", "outputs"])
def test_model_without_inputs_or_outputs_is_rejected(platform: Registry, which: str) -> None:
    reject(platform, event(upload_model("scaler", **{which: []})), f"declares no {which}")


def test_duplicate_input_names_are_rejected(platform: Registry) -> None:
    reject(platform, event(upload_model("scaler", inputs=["x", "x"])), "duplicate inputs", "'x'")


def test_duplicate_extra_file_names_are_rejected(platform: Registry) -> None:
    action = upload_model("scaler", files={"vocab.txt": b"a"})
    action[1]["files"].append({"name": "vocab.txt", "artifact": artifact(b"b")})

    reject(platform, event(action), "'scaler'", "same name")


def test_invalid_model_name_is_rejected(platform: Registry) -> None:
    reject(platform, event(upload_model("My Model")), "invalid model name 'My Model'")


# -- pipelines and their versions ------------------------------------------------------------


def test_create_pipeline(models: Registry) -> None:
    state = given(models, event(create_pipeline("fraud", "scores payments"), actor="bob"))

    fraud = state.pipelines[("ws", "fraud")]
    assert (fraud.description, fraud.created_by, fraud.versions) == ("scores payments", "bob", ())


def test_duplicate_pipeline_is_rejected(pipelines: Registry) -> None:
    reject(pipelines, event(create_pipeline("fraud")), "'fraud'", "already exists", "'ws'")


def test_invalid_pipeline_name_is_rejected(models: Registry) -> None:
    reject(models, event(create_pipeline("Fraud!")), "invalid pipeline name 'Fraud!'")


def test_version_of_an_unknown_pipeline_is_rejected(models: Registry) -> None:
    action = create_pipeline_version("nope", model_step("scaler"))

    reject(models, event(action), "unknown pipeline 'nope'")


def test_version_without_steps_is_rejected(pipelines: Registry) -> None:
    reject(pipelines, event(create_pipeline_version("fraud")), "'fraud'", "at least one step")


@pytest.mark.parametrize(
    ("step", "mentions"),
    [
        (model_step("nope"), ["step 1", "unknown model 'nope'"]),
        (model_step("scaler", 7), ["step 1", "'scaler'", "no version 7", "1..1"]),
        (model_step("scaler", 0), ["step 1", "no version 0"]),
    ],
    ids=["unknown-model", "unknown-version", "version-0"],
)
def test_step_must_reference_an_existing_model_version(
    pipelines: Registry, step: dict, mentions: list[str]
) -> None:
    reject(pipelines, event(create_pipeline_version("fraud", step)), *mentions)


def test_chain_where_each_step_feeds_the_next_is_accepted(pipelines: Registry) -> None:
    e = event(create_pipeline_version("fraud", model_step("scaler"), model_step("classifier")))
    state = given(pipelines, e)

    v3 = state.pipelines[("ws", "fraud")].versions[-1]
    assert (v3.version, v3.steps) == (3, (ModelStep("scaler", 1), ModelStep("classifier", 1)))
    assert result_of(pipelines, state, e) == {"pipeline": "fraud", "version": "3"}


def test_chain_whose_next_step_misses_an_input_is_rejected(pipelines: Registry) -> None:
    action = create_pipeline_version("fraud", model_step("classifier"), model_step("scaler"))

    reject(pipelines, event(action), "step 2", "'x'", "['label']", "input_map")


def test_input_map_feeds_an_input_from_another_field(pipelines: Registry) -> None:
    mapped = model_step("scaler", input_map={"x": "label"})
    state = given(pipelines, event(create_pipeline_version("fraud", model_step("classifier"),
                                                            mapped)))

    assert state.pipelines[("ws", "fraud")].versions[-1].steps[1].input_map == {"x": "label"}


def test_input_map_to_a_missing_field_is_rejected(pipelines: Registry) -> None:
    mapped = model_step("scaler", input_map={"x": "score"})
    action = create_pipeline_version("fraud", model_step("classifier"), mapped)

    reject(pipelines, event(action), "step 2", "'x'", "'score'")


def test_random_split(pipelines: Registry) -> None:
    split = random_split((0.9, model_step("scaler")), (0.1, model_step("other")), hash_key="user")
    state = given(pipelines, event(create_pipeline_version("fraud", split)))

    assert state.pipelines[("ws", "fraud")].versions[-1].steps == (
        RandomSplit(((0.9, ModelStep("scaler", 1)), (0.1, ModelStep("other", 1))), "user"),
    )


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_random_split_weights_must_be_positive(pipelines: Registry, weight: float) -> None:
    split = random_split((1.0, model_step("scaler")), (weight, model_step("other")))

    reject(pipelines, event(create_pipeline_version("fraud", split)), "step 1", "positive")


def test_random_split_reason_names_the_bad_weight(pipelines: Registry) -> None:
    split = random_split((1.0, model_step("scaler")), (-0.5, model_step("other")))

    reject(pipelines, event(create_pipeline_version("fraud", split)), "-0.5")


def test_random_split_needs_routes(pipelines: Registry) -> None:
    reject(pipelines, event(create_pipeline_version("fraud", random_split())), "step 1", "routes")


def test_random_split_route_with_an_unknown_model_names_the_route(pipelines: Registry) -> None:
    split = random_split((0.5, model_step("scaler")), (0.5, model_step("nope")))

    reject(pipelines, event(create_pipeline_version("fraud", split)), "step 1 route 2", "'nope'")


def test_key_split(pipelines: Registry) -> None:
    split = key_split("country", [("fr", model_step("scaler")), ("de", model_step("other"))],
                      default=model_step("scaler"))
    state = given(pipelines, event(create_pipeline_version("fraud", split)))

    assert state.pipelines[("ws", "fraud")].versions[-1].steps == (
        KeySplit("country", (("fr", ModelStep("scaler", 1)), ("de", ModelStep("other", 1))),
                 ModelStep("scaler", 1)),
    )


def test_key_split_values_must_be_distinct(pipelines: Registry) -> None:
    split = key_split("country", [("fr", model_step("scaler")), ("fr", model_step("other"))],
                      default=model_step("scaler"))

    reject(pipelines, event(create_pipeline_version("fraud", split)), "step 1", "its own value")


def test_key_split_reason_names_the_repeated_value(pipelines: Registry) -> None:
    split = key_split("country", [("fr", model_step("scaler")), ("fr", model_step("other"))],
                      default=model_step("scaler"))

    reject(pipelines, event(create_pipeline_version("fraud", split)), "'fr'")


def test_key_split_needs_routes(pipelines: Registry) -> None:
    split = key_split("country", [], default=model_step("scaler"))

    reject(pipelines, event(create_pipeline_version("fraud", split)), "step 1", "routes")


def test_key_split_default_must_exist(pipelines: Registry) -> None:
    split = key_split("country", [("fr", model_step("scaler"))], default=model_step("nope"))

    reject(pipelines, event(create_pipeline_version("fraud", split)), "unknown model 'nope'")


def test_shadow_step(pipelines: Registry) -> None:
    step = shadow(model_step("scaler"), model_step("other"))
    state = given(pipelines, event(create_pipeline_version("fraud", step)))

    assert state.pipelines[("ws", "fraud")].versions[-1].steps == (
        ShadowStep(ModelStep("scaler", 1), (ModelStep("other", 1),)),
    )


def test_shadow_step_needs_challengers(pipelines: Registry) -> None:
    step = shadow(model_step("scaler"))

    reject(pipelines, event(create_pipeline_version("fraud", step)), "step 1", "challenger")


def test_only_the_champion_feeds_the_step_after_a_shadow_step(pipelines: Registry) -> None:
    champion_feeds = shadow(model_step("scaler"), model_step("other"))
    given(pipelines, event(create_pipeline_version("fraud", champion_feeds,
                                                   model_step("classifier"))))

    challenger_would = shadow(model_step("other"), model_step("scaler"))
    action = create_pipeline_version("fraud", challenger_would, model_step("classifier"))
    reject(pipelines, event(action), "step 2", "'y'", "['z']")


def test_step_after_a_split_needs_an_output_of_every_branch(pipelines: Registry) -> None:
    split = random_split((0.5, model_step("scaler")), (0.5, model_step("other")))
    action = create_pipeline_version("fraud", split, model_step("classifier"))

    reject(pipelines, event(action), "step 2", "'y'", "outputs only []")


# -- deployments -----------------------------------------------------------------------------


def test_deploy_latest_version(pipelines: Registry) -> None:
    e = event(deploy("fraud"))
    state = given(pipelines, e)

    d = state.deployments[("ws", "fraud")]
    assert (d.version, d.active, d.history) == (2, True, (2,))
    assert (d.batch_size, d.batch_wait_ms) == (64, 20)
    assert state.active_deployments() == [d]
    assert result_of(pipelines, state, e) == {"pipeline": "fraud", "version": "2"}


def test_deploy_explicit_version(pipelines: Registry) -> None:
    state = given(pipelines, event(deploy("fraud", version=1, batch_size=8, batch_wait_ms=0)))

    d = state.deployments[("ws", "fraud")]
    assert (d.version, d.batch_size, d.batch_wait_ms) == (1, 8, 0)


@pytest.mark.parametrize(
    "version",
    [
        5, -1,
        pytest.param(0),
    ],
)
def test_deploy_of_an_unknown_version_is_rejected(pipelines: Registry, version: int) -> None:
    reject(pipelines, event(deploy("fraud", version=version)), f"no version {version}", "1..2")


def test_deploy_of_a_pipeline_without_versions_is_rejected(models: Registry) -> None:
    state = given(models, event(create_pipeline("empty")))

    reject(state, event(deploy("empty")), "'empty'", "no version to deploy")


def test_deploy_of_an_unknown_pipeline_is_rejected(pipelines: Registry) -> None:
    reject(pipelines, event(deploy("nope")), "unknown pipeline 'nope'")


@pytest.mark.parametrize(("size", "wait"), [(1, 0), (10_000, 60_000)])
def test_batch_limits_accept_their_bounds(pipelines: Registry, size: int, wait: int) -> None:
    state = given(pipelines, event(deploy("fraud", batch_size=size, batch_wait_ms=wait)))

    assert state.deployments[("ws", "fraud")].batch_size == size


@pytest.mark.parametrize(
    ("size", "wait", "mention"),
    [
        (0, 20, "batch size 0"), (10_001, 20, "batch size 10001"), (-5, 20, "batch size -5"),
        (64, -1, "batch wait -1 ms"), (64, 60_001, "batch wait 60001 ms"),
    ],
)
def test_batch_limits_reject_values_outside(
    pipelines: Registry, size: int, wait: int, mention: str
) -> None:
    reject(pipelines, event(deploy("fraud", batch_size=size, batch_wait_ms=wait)), mention)


def test_undeploy(pipelines: Registry) -> None:
    state = given(pipelines, event(deploy("fraud")), event(undeploy("fraud"), actor="bob"))

    d = state.deployments[("ws", "fraud")]
    assert (d.active, d.version, d.deployed_by) == (False, 2, "bob")
    assert state.active_deployments() == []


def test_undeploy_when_not_deployed_is_rejected(pipelines: Registry) -> None:
    reject(pipelines, event(undeploy("fraud")), "'fraud'", "not deployed")

    undeployed = given(pipelines, event(deploy("fraud")), event(undeploy("fraud")))
    reject(undeployed, event(undeploy("fraud")), "'fraud'", "not deployed")


def test_rollback_to_the_previously_deployed_version(pipelines: Registry) -> None:
    before = given(pipelines, event(deploy("fraud", 1)), event(deploy("fraud", 2)))
    e = event(rollback("fraud"))
    state = given(before, e)

    d = state.deployments[("ws", "fraud")]
    assert (d.version, d.active, d.history) == (1, True, (1, 2, 1))
    assert result_of(before, state, e) == {"pipeline": "fraud", "version": "1"}


def test_rollback_goes_to_the_version_served_just_before(pipelines: Registry) -> None:
    state = given(
        pipelines,
        event(create_pipeline_version("fraud", model_step("other"))),
        event(deploy("fraud", 1)), event(deploy("fraud", 2)), event(deploy("fraud", 3)),
        event(rollback("fraud")),
    )

    assert state.deployments[("ws", "fraud")].version == 2


def test_rollback_to_an_explicit_version_keeps_batch_settings(pipelines: Registry) -> None:
    state = given(
        pipelines, event(deploy("fraud", 2, batch_size=8)), event(rollback("fraud", 1))
    )

    d = state.deployments[("ws", "fraud")]
    assert (d.version, d.batch_size) == (1, 8)


def test_rollback_after_undeploy_serves_the_earlier_version(pipelines: Registry) -> None:
    state = given(
        pipelines, event(deploy("fraud", 1)), event(deploy("fraud", 2)),
        event(undeploy("fraud")), event(rollback("fraud")),
    )

    d = state.deployments[("ws", "fraud")]
    assert (d.version, d.active) == (1, True)


def test_rollback_with_nothing_to_roll_back_to_is_rejected(pipelines: Registry) -> None:
    state = given(pipelines, event(deploy("fraud")))

    reject(state, event(rollback("fraud")), "'fraud'", "no deployed version older than 2",
           "--version")


def test_rollback_of_a_never_deployed_pipeline_is_rejected(pipelines: Registry) -> None:
    reject(pipelines, event(rollback("fraud", 1)), "'fraud'", "never deployed")


@pytest.mark.parametrize("version", [2, 3])
def test_rollback_to_the_served_or_a_newer_version_is_rejected(
    pipelines: Registry, version: int
) -> None:
    state = given(
        pipelines, event(create_pipeline_version("fraud", model_step("other"))),
        event(deploy("fraud", 2)),
    )

    reject(state, event(rollback("fraud", version)), "older than the current 2",
           f"deploy version {version} instead")


def test_rollback_twice_keeps_going_back(pipelines: Registry) -> None:
    state = given(
        pipelines,
        event(create_pipeline_version("fraud", model_step("other"))),
        event(deploy("fraud", 1)), event(deploy("fraud", 2)), event(deploy("fraud", 3)),
        event(rollback("fraud")), event(rollback("fraud")),
    )

    assert state.deployments[("ws", "fraud")].version == 1


def test_rollback_to_an_unknown_version_is_rejected(pipelines: Registry) -> None:
    state = given(pipelines, event(deploy("fraud", 2)))

    reject(state, event(rollback("fraud", 9)), "no version 9", "1..2")


# -- the fold --------------------------------------------------------------------------------


def test_unknown_event_type_is_rejected(platform: Registry) -> None:
    reject(platform, ControlEvent("Teleport", {}, actor="ann"), "unknown event type 'Teleport'")


def test_payload_built_around_the_codec_is_rejected_not_raised(platform: Registry) -> None:
    reject(platform, ControlEvent("CreateWorkspace", {}, actor="ann"), "malformed CreateWorkspace")


def scenario() -> list[ControlEvent]:
    """A platform's history with a few rejected events in it."""
    actions: list[tuple[Action, str]] = [
        (create_user("ann"), "ann"),
        (create_user("bob"), "ann"),
        (create_user("eve"), "bob"),  # rejected: bob is no administrator
        (create_workspace("ws"), "ann"),
        (add_member("bob"), "ann"),
        (SCALER, "bob"),
        (SCALER, "bob"),  # rejected: identical artifact
        (CLASSIFIER, "bob"),
        (create_pipeline("fraud"), "bob"),
        (create_pipeline_version("fraud", model_step("scaler"), model_step("classifier")), "bob"),
        (deploy("fraud", 7), "bob"),  # rejected: no version 7
        (deploy("fraud"), "bob"),
    ]
    return [event(a, actor=actor, offset=n) for n, (a, actor) in enumerate(actions)]


REJECTED_IN_SCENARIO = (2, 6, 10)


def test_fold_skips_rejected_events() -> None:
    events = scenario()
    accepted = [e for n, e in enumerate(events) if n not in REJECTED_IN_SCENARIO]

    state = fold(events)

    assert state == fold(accepted) == given(Registry(), *accepted)
    assert "eve" not in state.users
    assert state.deployments[("ws", "fraud")].version == 1


def test_fold_is_deterministic_across_replays() -> None:
    events = scenario()
    replayed = [ControlEvent.from_bytes(e.to_bytes(), offset=e.offset) for e in events]

    assert fold(events) == fold(events) == fold(replayed)


def test_fold_continues_from_a_given_state() -> None:
    events = scenario()

    assert fold(events[6:], state=fold(events[:6])) == fold(events)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (create_user("dave"), {}),
        (create_pipeline("other"), {}),
        (upload_model("scaler", b"scaler v2"), {"model": "scaler", "version": "2"}),
        (create_pipeline_version("fraud", model_step("scaler")),
         {"pipeline": "fraud", "version": "3"}),
        (deploy("fraud", 1), {"pipeline": "fraud", "version": "1"}),
        (rollback("fraud", 1), {"pipeline": "fraud", "version": "1"}),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else None,
)
def test_result_of_names_what_the_event_made(
    pipelines: Registry, action: Action, expected: dict
) -> None:
    before = given(pipelines, event(deploy("fraud", 2)))
    e = event(action)

    assert result_of(before, given(before, e), e) == expected
