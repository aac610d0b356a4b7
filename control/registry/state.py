"""The registry's entities: immutable records that the fold in fold.py builds (users, workspaces,
models, pipelines, deployments, assays, connections, orchestrations, tasks, API keys, the
rules that act on alerts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control.registry.applied import AppliedEvents
from control.registry.assay_config import AssayConfig
from control.registry.canary_state import (  # noqa: F401 - re-exported with the entities
    ABORTED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Canary,
    CanaryGates,
)
from control.registry.past_traffic import Redrive, Replay
from control.registry.tensors import TensorSpec

OWNER, COLLABORATOR, VIEWER = "owner", "collaborator", "viewer"
IN_PROCESS, TOPICS = "in-process", "topics"
ROLES = (OWNER, COLLABORATOR, VIEWER)


@dataclass(frozen=True)
class User:
    name: str
    email: str | None
    admin: bool
    active: bool
    created_at: datetime
    public_key: bytes | None = None  # raw Ed25519; None on an open platform


@dataclass(frozen=True)
class Workspace:
    name: str
    created_by: str
    created_at: datetime
    members: Mapping[str, str]  # user -> role

    def role_of(self, user: str) -> str | None:
        return self.members.get(user)


@dataclass(frozen=True)
class ArtifactRef:
    """Where a content-addressed blob lives in the artifact topic, and how to check it."""

    sha256: str
    size: int
    format: str
    topic: str
    partition: int
    offset: int
    chunks: int

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> ArtifactRef:
        return cls(**{k: r[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ModelVersion:
    workspace: str
    model: str
    version: int
    framework: str
    artifact: ArtifactRef
    files: tuple[tuple[str, ArtifactRef], ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str | None
    created_by: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.model}:v{self.version}"


@dataclass(frozen=True)
class Model:
    workspace: str
    name: str
    versions: tuple[ModelVersion, ...]

    @property
    def latest(self) -> ModelVersion:
        return self.versions[-1]

    def version(self, number: int) -> ModelVersion | None:
        return self.versions[number - 1] if 0 < number <= len(self.versions) else None


@dataclass(frozen=True)
class ModelStep:
    """Run one model version; input_map maps a model input name to the field that feeds it."""

    model: str
    version: int
    input_map: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RandomSplit:
    routes: tuple[tuple[float, ModelStep], ...]
    hash_key: str | None = None


@dataclass(frozen=True)
class KeySplit:
    field: str
    routes: tuple[tuple[str, ModelStep], ...]
    default: ModelStep


@dataclass(frozen=True)
class ShadowStep:
    champion: ModelStep
    challengers: tuple[ModelStep, ...]


Step = ModelStep | RandomSplit | KeySplit | ShadowStep


def step_models(step: Step) -> tuple[ModelStep, ...]:
    """Every model a step may run, the one whose output is returned first."""
    match step:
        case ModelStep():
            return (step,)
        case RandomSplit():
            return tuple(s for _, s in step.routes)
        case KeySplit():
            return (step.default, *(s for _, s in step.routes))
        case ShadowStep():
            return (step.champion, *step.challengers)
    raise TypeError(step)


@dataclass(frozen=True)
class Validation:
    """A named row-level check of a pipeline version: a record whose expression is true is
    flagged with the name (control/registry/validations.py says what an expression may hold)."""

    name: str
    expression: str


@dataclass(frozen=True)
class PipelineVersion:
    workspace: str
    pipeline: str
    version: int
    steps: tuple[Step, ...]
    created_by: str
    created_at: datetime
    result_steps: tuple[int, ...] = ()  # whose outputs its results carry; () = the last
    validations: tuple[Validation, ...] = ()  # the checks each record's result is flagged by

    @property
    def returned_steps(self) -> tuple[int, ...]:
        """The steps whose outputs results carry, in order: the last one unless others chosen."""
        return self.result_steps or (len(self.steps),)


@dataclass(frozen=True)
class Pipeline:
    workspace: str
    name: str
    description: str | None
    created_by: str
    created_at: datetime
    versions: tuple[PipelineVersion, ...] = ()

    def version(self, number: int) -> PipelineVersion | None:
        return self.versions[number - 1] if 0 < number <= len(self.versions) else None

    def with_version(self, version: PipelineVersion) -> Pipeline:
        """This pipeline with one more version (made directly: replace() takes 3x as long, and
        a replay of the control log makes one for every version event)."""
        return Pipeline(self.workspace, self.name, self.description, self.created_by,
                        self.created_at, (*self.versions, version))


@dataclass(frozen=True)
class Deployment:
    """A pipeline's deployment: the version served now, and every version deployed before."""

    workspace: str
    pipeline: str
    version: int
    active: bool
    batch_size: int
    batch_wait_ms: int
    history: tuple[int, ...]
    deployed_by: str
    deployed_at: datetime
    # (step, route), both from 1: routes of the served version's splits that get no records.
    # A deploy or rollback starts with none: route numbers belong to one version's steps.
    paused_routes: frozenset[tuple[int, int]] = frozenset()
    canary: Canary | None = None  # the last canary of this deployment, running or ended


@dataclass(frozen=True)
class Assay:
    """A named assay of a workspace: what it monitors (its config) and whether it runs.

    `config.assay_id` is the assay's name and the start of the event that created it, so
    an assay deleted and created again under the same name does not inherit old results.
    """

    workspace: str
    name: str
    config: AssayConfig
    active: bool
    created_by: str
    created_at: datetime

    @property
    def assay_id(self) -> str:
        return self.config.assay_id


@dataclass(frozen=True)
class ApiKey:
    """A workspace's key for HTTP callers; the registry keeps only its secret's sha256."""

    workspace: str
    name: str
    key_id: str
    secret_sha256: bytes
    scopes: tuple[str, ...]  # infer, read
    created_by: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def usable_at(self, moment: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or moment < self.expires_at)


@dataclass(frozen=True)
class Connection:
    """A named source or destination: a file location, a ClickHouse table/query, a topic."""

    workspace: str
    name: str
    type: str  # file | clickhouse | kafka
    details: Mapping[str, str]
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class OrchestrationVersion:
    """Read `source`, run the records through `pipelines` in turn, write to `destination`."""

    workspace: str
    orchestration: str
    version: int
    source: str
    pipelines: tuple[str, ...]
    destination: str
    errors: str | None  # where bad rows go, with the reason; None: they only count
    batch_size: int
    carry: tuple[str, ...]  # source fields copied to every result row
    mode: str  # topics: through the pipelines' Kafka topics; in-process: on the worker
    parameters: Mapping[str, str | None]  # name -> default (None: required)
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class Orchestration:
    workspace: str
    name: str
    versions: tuple[OrchestrationVersion, ...]

    @property
    def latest(self) -> OrchestrationVersion:
        return self.versions[-1]


@dataclass(frozen=True)
class Task:
    """Runs one orchestration version once, or on a cron schedule, with arguments."""

    workspace: str
    name: str
    orchestration: str
    version: int
    schedule: str | None  # cron expression; None: run once
    timezone: str
    arguments: Mapping[str, str]
    killed: bool
    created_by: str
    created_at: datetime
    killed_at: datetime | None = None
    event_id: str = ""  # the creating event: a run-once task's run id

    @property
    def once(self) -> bool:
        return self.schedule is None


ROLLBACK, UNDEPLOY, PAUSE_ROUTE, RUN_TASK = "rollback", "undeploy", "pause_route", "run_task"
ACTIONS = (ROLLBACK, UNDEPLOY, PAUSE_ROUTE, RUN_TASK)


@dataclass(frozen=True)
class AlertRule:
    """When an assay of `pipeline` raises an alert whose status is in `on`, publish `action`.

    `rule_id` is the name and the start of the creating event: a rule deleted and created again
    under its name is another rule, and its actions' event ids differ. `fired` holds the alert
    identities (assay id, window start, status) that fired it, so each fires it once.
    """

    workspace: str
    name: str
    rule_id: str
    pipeline: str
    assay: str | None  # the assay's name; None: any assay of the pipeline
    assay_id: str | None  # the id of that assay when the rule was made
    on: tuple[str, ...]  # alert and/or warning
    action: str  # one of ACTIONS
    version: int | None  # rollback: to this version; None: the one deployed before
    step: int | None  # pause_route
    route: int | None  # pause_route
    orchestration: str | None  # run_task
    arguments: Mapping[str, str]  # run_task
    cooldown_s: int
    active: bool
    created_by: str
    created_at: datetime
    fired: frozenset[str] = frozenset()
    fired_count: int = 0
    last_fired_at: datetime | None = None
    last_alert: str | None = None  # the identity of the alert that fired it last


Key = tuple[str, str]  # (workspace, name)


@dataclass(frozen=True)
class Registry:
    """Everything the control topic says, as of one position in it."""

    users: Mapping[str, User] = field(default_factory=dict)
    workspaces: Mapping[str, Workspace] = field(default_factory=dict)
    models: Mapping[Key, Model] = field(default_factory=dict)
    pipelines: Mapping[Key, Pipeline] = field(default_factory=dict)
    deployments: Mapping[Key, Deployment] = field(default_factory=dict)
    assays: Mapping[Key, Assay] = field(default_factory=dict)
    connections: Mapping[Key, Connection] = field(default_factory=dict)
    orchestrations: Mapping[Key, Orchestration] = field(default_factory=dict)
    tasks: Mapping[Key, Task] = field(default_factory=dict)
    api_keys: Mapping[str, ApiKey] = field(default_factory=dict)  # by key id
    alert_rules: Mapping[Key, AlertRule] = field(default_factory=dict)
    replays: Mapping[Key, Replay] = field(default_factory=dict)  # by (workspace, replay id)
    redrives: Mapping[str, Redrive] = field(default_factory=dict)  # by redrive id, in order
    # Bootstrapped with a key: every event must be signed by its actor, every user has a key.
    secured: bool = False
    applied: AppliedEvents = field(default_factory=AppliedEvents)
    # Deleted workspaces keep their names: their topics and logs outlive them.
    deleted_workspaces: Mapping[str, datetime] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> Registry:
        """dataclasses.replace(self, **changes) without its per-field work (0.5 µs against 3):
        the fold makes one or two for every event of a replay. The registry has no
        __post_init__ and caches nothing in its __dict__, so a copy of it is the record."""
        if unknown := changes.keys() - self.__dict__.keys():
            raise TypeError(f"Registry has no fields {sorted(unknown)}")
        new = object.__new__(Registry)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def active_deployments(self) -> list[Deployment]:
        return [d for d in self.deployments.values() if d.active]

    def active_assays(self) -> list[Assay]:
        return [a for a in self.assays.values() if a.active]
