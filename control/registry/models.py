"""The registry's rules for models: an upload makes a new, immutable model version (pure).

Its artifact (and extra files) are content-addressed; a version keeps the interface (inputs,
outputs) of the one before unless the upload allows the change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from control.registry.events import ControlEvent
from control.registry.rules import check_name, member
from control.registry.state import ArtifactRef, Model, ModelVersion, Registry
from control.registry.tensors import TensorSpec, interface_changes
from schemas.errors import Rejected

SHA256 = re.compile(r"[0-9a-f]{64}")
Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]


def _artifact(p: Mapping[str, Any], what: str) -> ArtifactRef:
    ref = ArtifactRef.from_record(p)
    if not SHA256.fullmatch(ref.sha256):
        raise Rejected(f"{what}: sha256 {ref.sha256!r} is not 64 lowercase hex digits")
    if ref.size <= 0 or ref.chunks <= 0:
        raise Rejected(f"{what}: empty artifact (size {ref.size}, {ref.chunks} chunks)")
    return ref


def _specs(records: Iterable[Mapping[str, Any]], what: str) -> tuple[TensorSpec, ...]:
    specs = tuple(TensorSpec(r["name"], r["dtype"], tuple(r["shape"])) for r in records)
    if not specs:
        raise Rejected(f"the model declares no {what}; is the artifact a model?")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise Rejected(f"the model declares duplicate {what}: {names}")
    return specs


def _upload_model(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    check_name("model", p["name"])
    key = (ws.name, p["name"])
    artifact = _artifact(p["artifact"], f"model {p['name']!r}")
    files = tuple((f["name"], _artifact(f["artifact"], f"file {f['name']!r}")) for f in p["files"])
    if len({name for name, _ in files}) != len(files):
        raise Rejected(f"model {p['name']!r}: two extra files have the same name")
    model = state.models.get(key) or Model(ws.name, p["name"], ())
    for earlier in model.versions:
        if earlier.artifact.sha256 == artifact.sha256 and set(earlier.files) == set(files):
            raise Rejected(
                f"model {p['name']!r} version {earlier.version} has this very artifact "
                f"(sha256 {artifact.sha256[:12]}…); upload a changed file to make a new version"
            )
    version = ModelVersion(
        workspace=ws.name, model=model.name, version=len(model.versions) + 1,
        framework=p["framework"], artifact=artifact, files=files,
        inputs=_specs(p["inputs"], "inputs"), outputs=_specs(p["outputs"], "outputs"),
        description=p["description"], created_by=event.actor, created_at=event.time,
    )
    # None: written before the field existed. Such uploads were accepted whatever their
    # interface, and a replay must fold them the same; every client of now writes a boolean.
    if model.versions and p.get("allow_interface_change") is False:
        _check_interface(model.latest, version)
    model = replace(model, versions=(*model.versions, version))
    return replace(state, models={**state.models, key: model})


def _check_interface(latest: ModelVersion, new: ModelVersion) -> None:
    """Steps and consumers read a model's inputs and outputs by name: a new version keeps them."""
    changes = [*interface_changes(latest.inputs, new.inputs, "input"),
               *interface_changes(latest.outputs, new.outputs, "output")]
    if changes:
        raise Rejected(
            f"model {new.model!r} version {new.version} would change the interface of version "
            f"{latest.version}: {'; '.join(changes)}. Pipeline steps and the consumers of "
            "results read these names, dtypes and shapes; export the model with the same "
            "ones, upload it as another model, or allow the change (--allow-interface-change)"
        )


MODEL_HANDLERS: dict[str, Handler] = {"UploadModel": _upload_model}
