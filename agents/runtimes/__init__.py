"""Model runtimes behind one interface, found by framework name."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from agents.runtimes.base import InputMismatch, ModelRuntime, UnknownFramework
from control.registry.tensors import TensorSpec

# Module and class names, not classes: importing TensorFlow costs seconds, so a runtime's
# module is imported only when a model of its framework is first loaded.
_RUNTIMES: dict[str, tuple[str, str]] = {
    "onnx": ("agents.runtimes.onnx", "OnnxRuntime"),
    "tensorflow": ("agents.runtimes.tensorflow", "TensorflowRuntime"),
    "python": ("agents.runtimes.python", "PythonRuntime"),
}

FRAMEWORKS: tuple[str, ...] = tuple(_RUNTIMES)


def runtime_for(framework: str) -> type[ModelRuntime]:
    """The runtime class of a framework name, e.g. "onnx", "tensorflow" or "python"."""
    try:
        module, name = _RUNTIMES[framework]
    except KeyError:
        raise UnknownFramework(
            f"no model runtime for framework {framework!r}; known frameworks: "
            f"{', '.join(FRAMEWORKS)}"
        ) from None
    runtime: type[ModelRuntime] = getattr(import_module(module), name)
    return runtime


def load_model(framework: str, path: Path) -> ModelRuntime:
    """Load the artifact at path with the runtime of framework."""
    return runtime_for(framework).load(Path(path))


def describe_artifact(
    framework: str, path: Path
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of an artifact, read by loading it as a worker would."""
    model = load_model(framework, path)
    close = getattr(model, "close", None)
    if close is not None:  # a Python step's child process is not needed after this
        close()
    return model.inputs, model.outputs


__all__ = [
    "FRAMEWORKS",
    "InputMismatch",
    "ModelRuntime",
    "TensorSpec",
    "UnknownFramework",
    "describe_artifact",
    "load_model",
    "runtime_for",
]
