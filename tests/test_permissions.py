"""Who may send which control event: every event type by every role, on a secured platform.

The expectations are written out here, not read from control.registry.security.PERMISSIONS,
so that a change to the rules has to change this table too. Every event is signed by its actor.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from registry_events import (
    T0,
    add_member,
    canary_actions,
    create_api_key,
    create_assay,
    create_connection,
    create_orchestration,
    create_pipeline,
    create_pipeline_version,
    create_rule,
    create_task,
    create_workspace,
    deactivate_user,
    delete_assay,
    delete_connection,
    delete_rule,
    delete_workspace,
    deploy,
    given,
    key_of,
    kill_task,
    model_step,
    pause_assay,
    pause_route,
    pause_rule,
    random_split,
    redrive,
    reject,
    remove_member,
    resume_assay,
    resume_replay,
    resume_route,
    resume_rule,
    revoke_api_key,
    rollback,
    secured_user,
    signed,
    start_replay,
    stop_replay,
    undeploy,
    upload_model,
)

from control.registry.events import EVENT_TYPES, ControlEvent
from control.registry.security import PERMISSIONS
from control.registry.state import Registry

# role -> the user who has it in workspace "ws" ("admin" is a platform administrator who is no
# member of ws; "non-member" is an active user who is not in ws either).
ACTORS = {"admin": "root", "owner": "olive", "collaborator": "cole", "viewer": "vera",
          "non-member": "nina"}
ROLES = tuple(ACTORS)
EVERYONE = set(ROLES)
ADMIN_ONLY = {"admin"}
MANAGERS = {"admin", "owner"}
WRITERS = {"owner", "collaborator"}

RAMP_EVENT = "ca" * 16
RAMP_ID = f"fraud-{RAMP_EVENT[:8]}"

# event type -> (an event of it that is valid when its actor may send it, who may)
TABLE = {
    "CreateUser": (secured_user("newbie"), ADMIN_ONLY),
    "DeactivateUser": (deactivate_user("dave"), ADMIN_ONLY),
    "CreateWorkspace": (create_workspace("lab"), EVERYONE),
    "DeleteWorkspace": (delete_workspace("ws"), MANAGERS),
    "AddMember": (add_member("dave", "viewer"), MANAGERS),
    "RemoveMember": (remove_member("vera"), MANAGERS),
    "UploadModel": (upload_model("fresh", b"fresh v1"), WRITERS),
    "CreatePipeline": (create_pipeline("new"), WRITERS),
    "CreatePipelineVersion": (create_pipeline_version("fraud", model_step("scaler")), WRITERS),
    "Deploy": (deploy("fraud", 1), WRITERS),
    "Undeploy": (undeploy("fraud"), WRITERS),
    "Rollback": (rollback("fraud"), WRITERS),
    "CreateAssay": (create_assay("drift-2", "fraud", "scaler", "y"), WRITERS),
    "PauseAssay": (pause_assay("drift"), WRITERS),
    "ResumeAssay": (resume_assay("paused"), WRITERS),
    "DeleteAssay": (delete_assay("drift"), WRITERS),
    "CreateConnection": (create_connection("new-conn"), WRITERS),
    "DeleteConnection": (delete_connection("spare"), WRITERS),
    "CreateOrchestration": (create_orchestration("new-orch"), WRITERS),
    "CreateTask": (create_task("new-task"), WRITERS),
    "KillTask": (kill_task("nightly-once"), WRITERS),
    "CreateApiKey": (create_api_key("new-key", key_id="00000000000000ff"), WRITERS),
    "RevokeApiKey": (revoke_api_key("service"), WRITERS),
    "CreateRule": (create_rule("new-rule"), WRITERS),
    "PauseRule": (pause_rule("rule"), WRITERS),
    "ResumeRule": (resume_rule("paused-rule"), WRITERS),
    "DeleteRule": (delete_rule("rule"), WRITERS),
    "PauseRoute": (pause_route("split", 1, 1), WRITERS),
    "ResumeRoute": (resume_route("split", 1, 2), WRITERS),
    "StartReplay": (start_replay("new-replay", "fraud"), WRITERS),
    "StopReplay": (stop_replay("replay"), WRITERS),
    "ResumeReplay": (resume_replay("stopped-replay"), WRITERS),
    "Redrive": (redrive("fraud", (0, 0, 10)), WRITERS),
    "StartCanary": (("StartCanary", {**canary_actions()[0][1], "pipeline": "split",
                                     "assays": []}), WRITERS),
    # On fraud, whose canary of v1 (RAMP) started an hour before T0: every step is due.
    **{type_: ((type_, {**payload, "canary_id": RAMP_ID, "step": step}), WRITERS)
       for (type_, payload), step in zip(canary_actions()[1:4], (2, 1, 1), strict=True)},
    "AbortCanary": (canary_actions()[4], WRITERS),
}
# What a refusal says, by what the event needs and who was refused.
REASONS = {
    "admin-only": "needs a platform administrator",
    "managers": "needs an owner",
    "writers/admin": "not a member",
    "writers/viewer": "may only read",
    "writers/non-member": "not a member",
}


def ramp_started() -> ControlEvent:
    """olive's canary of fraud v1 (every minute), started an hour before T0."""
    type_, payload = canary_actions()[0]
    return ControlEvent(type_, {**payload, "version": 1, "every_s": 60, "assays": []},
                        "olive", "ws", event_id=RAMP_EVENT, time=T0 - timedelta(hours=1)
                        ).signed_with(key_of("olive"))


@pytest.fixture(scope="module")
def platform() -> Registry:
    """A secured platform with one of everything in workspace ws, built by its owner."""
    def by(actor: str, *actions: tuple) -> list:
        return [signed(a, actor=actor) for a in actions]

    return given(
        Registry(),
        *by("root", secured_user("root"), *(secured_user(u) for u in (
            "olive", "cole", "vera", "nina", "dave"))),
        *by("olive", create_workspace("ws"), add_member("cole"), add_member("vera", "viewer"),
            create_connection("inbox"), create_connection("outbox", details={
                "path": "out/{run_id}.parquet"}), create_connection("spare"),
            upload_model("scaler", b"scaler v1", inputs=["x"], outputs=["y"]),
            upload_model("classifier", b"classifier v1", inputs=["y"], outputs=["label"]),
            create_pipeline("fraud"),
            create_pipeline_version("fraud", model_step("scaler")),
            create_pipeline_version("fraud", model_step("scaler"), model_step("classifier")),
            deploy("fraud", 1), deploy("fraud", 2),
            create_assay("drift", "fraud", "scaler", "y"),
            create_assay("paused", "fraud", "scaler", "y"), pause_assay("paused"),
            create_orchestration("nightly"), create_task("nightly-once"),
            create_api_key("service"),
            create_rule("rule"), create_rule("paused-rule"), pause_rule("paused-rule"),
            create_pipeline("split"), create_pipeline_version("split", random_split(
                (1.0, model_step("scaler")), (1.0, model_step("scaler")),
                (1.0, model_step("scaler")))),
            deploy("split"), pause_route("split", 1, 2),
            start_replay("replay", "fraud"), start_replay("stopped-replay", "fraud"),
            stop_replay("stopped-replay"),
            create_pipeline_version("split", model_step("scaler"))),
        ramp_started(),
    )


def test_the_table_covers_every_event_type() -> None:
    assert sorted(TABLE) == sorted(EVENT_TYPES) == sorted(PERMISSIONS)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("type_", sorted(TABLE))
def test_each_role_may_do_exactly_what_it_should(platform: Registry, type_: str,
                                                 role: str) -> None:
    action, allowed = TABLE[type_]
    actor = ACTORS[role]
    state = platform
    if type_ == "DeleteWorkspace":  # a workspace that serves pipelines cannot go
        state = given(state, signed(undeploy("fraud"), actor="olive"),
                      signed(undeploy("split"), actor="olive"))
    e = signed(action, actor=actor)

    if role in allowed:
        after = given(state, e)
        assert after != state and e.event_id in after.applied
    else:
        need = ("admin-only" if allowed == ADMIN_ONLY else "managers" if allowed == MANAGERS
                else f"writers/{role}")
        reject(state, e, f"{actor!r}", REASONS[need])


def test_an_owner_deletes_a_workspace_and_everything_in_it(platform: Registry) -> None:
    state = given(platform, signed(undeploy("fraud"), actor="olive"),
                  signed(undeploy("split"), actor="olive"),
                  signed(delete_workspace("ws"), actor="olive"))

    assert "ws" not in state.workspaces and "ws" in state.deleted_workspaces
    for entries in (state.models, state.pipelines, state.deployments, state.assays,
                    state.connections, state.orchestrations, state.tasks, state.alert_rules):
        assert not [k for k in entries if k[0] == "ws"]
    reject(state, signed(create_workspace("ws"), actor="olive"), "'ws'", "deleted",
           "pick another name")


def test_a_workspace_that_serves_pipelines_cannot_be_deleted(platform: Registry) -> None:
    reject(platform, signed(delete_workspace("ws"), actor="olive"), "['fraud', 'split']",
           "undeploy")


def test_delete_workspace_names_the_workspace_it_acts_in(platform: Registry) -> None:
    state = given(platform, signed(undeploy("fraud"), actor="olive"),
                  signed(undeploy("split"), actor="olive"))

    reject(state, signed(delete_workspace("other"), actor="olive"), "'other'", "'ws'")


def test_a_viewer_promoted_to_collaborator_may_write(platform: Registry) -> None:
    state = given(platform, signed(add_member("vera", "collaborator"), actor="olive"))

    assert ("ws", "new") in given(state, signed(create_pipeline("new"), actor="vera")).pipelines
