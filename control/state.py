"""The registry's entities: immutable records that the fold in registry.py builds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents.runtimes.base import TensorSpec
from control.workloads import Connection, Orchestration, Task
from sinks.assay_config import AssayConfig

OWNER, COLLABORATOR = "owner", "collaborator"


@dataclass(frozen=True)
class User:
    name: str
    email: str | None
    admin: bool
    active: bool
    created_at: datetime


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
class PipelineVersion:
    workspace: str
    pipeline: str
    version: int
    steps: tuple[Step, ...]
    created_by: str
    created_at: datetime


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

    def active_deployments(self) -> list[Deployment]:
        return [d for d in self.deployments.values() if d.active]

    def active_assays(self) -> list[Assay]:
        return [a for a in self.assays.values() if a.active]
