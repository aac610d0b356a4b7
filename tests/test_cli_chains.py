"""`pipelines version` and `deploy` with the chain rules, against the real broker: result steps
from a flag or a steps file, and a chain whose next step cannot read the step before refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.local.demo_models import build_keras_model, build_onnx_classifier

pytestmark = pytest.mark.kafka


def test_result_steps_and_chain_gaps(cli, tmp_path: Path) -> None:
    cli("users", "create", "ann")
    cli("workspaces", "create", "fraud")
    cli("models", "upload", "clf", str(build_onnx_classifier(tmp_path / "clf.onnx")))
    cli("models", "upload", "scorer", str(build_keras_model(tmp_path / "scorer.keras", "keras")))
    cli("pipelines", "create", "scoring")

    made = cli("pipelines", "version", "scoring", "--step", "clf", "--step", "scorer",
               "--result-steps", "1,2")
    assert "version 1" in made and "results carry steps [1, 2]" in made
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps({"steps": [{"model": "clf"}, {"model": "scorer"}],
                                 "result_steps": [1, 2]}))
    v2 = json.loads(cli("pipelines", "version", "scoring", "--steps-file", str(steps), "--json"))
    assert v2["result_steps"] == [1, 2]
    assert "1, 2" in cli("pipelines", "get", "scoring")

    # clf's probabilities (3 per row) cannot feed another clf's float_input (4 per row).
    steps.write_text(json.dumps([
        {"model": "clf"}, {"model": "clf", "input_map": {"float_input": "probabilities"}}]))
    refused = cli("pipelines", "version", "scoring", "--steps-file", str(steps), ok=False)
    assert "step 2 (clf v1) input 'float_input' (float32 [-1, 4])" in refused
    assert "its dimension 1 is 3, the input's 4" in refused
    assert "are not steps" in cli("pipelines", "version", "scoring", "--step", "clf",
                                  "--result-steps", "2", ok=False)
    assert "step numbers" in cli("pipelines", "version", "scoring", "--step", "clf",
                                 "--result-steps", "one", ok=False)
