"""The pipeline runner on real ONNX and TensorFlow models: chaining, batching, routing, failures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.records.formats import InputRecord
from agents.records.inference import ModelUsed
from agents.runtimes import ModelRuntime, load_model
from agents.serving.runner import MissingRuntime, PipelineRunner
from control.local.demo_models import build_keras_model, build_onnx_classifier, iris_rows
from control.registry.state import (
    KeySplit,
    ModelStep,
    PipelineVersion,
    RandomSplit,
    ShadowStep,
    Step,
)

REPO = Path(__file__).resolve().parents[1]
Key = tuple[str, int]
IRIS1, IRIS2, IRIS3, SCORER = ("iris", 1), ("iris", 2), ("iris", 3), ("scorer", 1)


def rec(record_id: str, tensors: dict[str, np.ndarray], **fields: Any) -> InputRecord:
    return InputRecord(record_id, None, "json", tensors, dict(fields), b"")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[Key, ModelRuntime]:
    root = tmp_path_factory.mktemp("models")
    runtimes = {
        (name, v): load_model("onnx", build_onnx_classifier(root / f"iris{v}.onnx", seed=v - 1))
        for name, v in (IRIS1, IRIS2, IRIS3)
    }
    runtimes[SCORER] = load_model("tensorflow", build_keras_model(root / "scorer"))
    return runtimes


def spy(
    monkeypatch: pytest.MonkeyPatch, runtimes: Mapping[Key, ModelRuntime]
) -> dict[Key, list[int]]:
    """Rows of every predict call, per model version (calls that raise included)."""
    calls: dict[Key, list[int]] = defaultdict(list)
    for key, runtime in runtimes.items():
        def predict(batch: Mapping[str, np.ndarray], key: Key = key,
                    original: Any = runtime.predict) -> dict[str, np.ndarray]:
            calls[key].append(len(next(iter(batch.values()))))
            return original(batch)  # type: ignore[no-any-return]
        monkeypatch.setattr(runtime, "predict", predict)
    return calls


def direct(runtime: ModelRuntime, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    """The runtime's own predict, past any spy."""
    return ModelRuntime.predict(runtime, arrays)


def pipeline(*steps: Step) -> PipelineVersion:
    return PipelineVersion("ws", "pipe", 1, steps, "alice", datetime.now(UTC))


def records(sizes: list[int], **fields: Any) -> list[InputRecord]:
    """Records of consecutive iris rows, sizes[k] rows for record k."""
    rows, bounds = iris_rows(), np.cumsum([0, *sizes])
    return [
        rec(f"r{k}", {"float_input": rows[a:b]}, **fields)
        for k, (a, b) in enumerate(pairwise(bounds))
    ]


def rows_of(recs: list[InputRecord], name: str = "float_input") -> np.ndarray:
    return np.concatenate([r.tensors[name] for r in recs])


def assert_served(outcome: Any, expected: list[InputRecord]) -> None:
    """The results are for exactly these record objects, in this order."""
    assert [id(r.record) for r in outcome.results] == [id(r) for r in expected]


def served_by(outcome: Any, step: int = 1) -> dict[str, int]:
    """record id -> version of the model that served it at step."""
    return {
        r.record.record_id: next(m.version for m in r.models if m.step == step)
        for r in outcome.results
    }


def test_two_step_onnx_to_tensorflow_chain_equals_calling_the_runtimes_directly(
    models: dict[Key, ModelRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, models)
    batch = records([1, 3, 2, 1, 4, 2])
    runner = PipelineRunner(pipeline(ModelStep(*IRIS1), ModelStep(*SCORER)), models, "w1")
    outcome = runner.run(batch)

    assert dict(calls) == {IRIS1: [13], SCORER: [13]}  # once per step, for the whole batch
    probabilities = direct(models[IRIS1], float_input=rows_of(batch))["probabilities"]
    score = direct(models[SCORER], probabilities=probabilities)["score"]
    assert not outcome.failures
    assert_served(outcome, batch)
    start = 0
    for result in outcome.results:
        n = len(result.record.tensors["float_input"])
        assert result.outputs["score"].shape == (n, 1)
        np.testing.assert_allclose(result.outputs["score"], score[start : start + n], atol=1e-6)
        assert result.models == [
            ModelUsed(1, "iris", 1, "model"), ModelUsed(2, "scorer", 1, "model")
        ]
        start += n
    assert len({r.elapsed_us for r in outcome.results}) == 1
    assert outcome.results[0].elapsed_us > 0

    assert [(e.record_id, e.step) for e in outcome.logs] == [
        *((r.record_id, 1) for r in batch), *((r.record_id, 2) for r in batch)
    ]
    start = 0
    pairs = zip(batch, outcome.logs[:6], outcome.logs[6:], strict=True)
    for k, (record, one, two) in enumerate(pairs):
        n = len(record.tensors["float_input"])
        assert (one.model, one.model_version, one.shadow, one.error) == ("iris", 1, False, None)
        assert (two.model, two.model_version, two.shadow, two.error) == ("scorer", 1, False, None)
        np.testing.assert_array_equal(one.inputs["float_input"], record.tensors["float_input"])
        np.testing.assert_array_equal(one.outputs["probabilities"], probabilities[start:][:n])
        np.testing.assert_array_equal(two.inputs["probabilities"], one.outputs["probabilities"])
        # Step 1 served the whole batch, so step 2 reads its outputs without a copy.
        assert np.shares_memory(two.inputs["probabilities"], one.outputs["probabilities"])
        np.testing.assert_array_equal(two.outputs["score"], outcome.results[k].outputs["score"])
        start += n


def test_a_bad_record_in_the_middle_fails_alone_while_its_neighbours_are_served(
    models: dict[Key, ModelRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, models)
    good = records([2, 1, 3, 1])
    wide = rec("wide", {"float_input": np.ones((1, 5), np.float32)})
    missing = rec("missing", {"petals": np.ones((1, 4), np.float32)})
    batch = [good[0], good[1], wide, good[2], missing, good[3]]
    runner = PipelineRunner(pipeline(ModelStep(*IRIS1), ModelStep(*SCORER)), models, "w1")
    outcome = runner.run(batch)

    assert [f.record.record_id for f in outcome.failures] == ["missing", "wide"]
    reasons = {f.record.record_id: f.reason for f in outcome.failures}
    assert reasons["wide"].startswith("step 1 (iris v1): input 'float_input' expects shape")
    assert "[1, 5]" in reasons["wide"]
    assert "needs field 'float_input', which is missing" in reasons["missing"]
    assert "'petals'" in reasons["missing"]
    # The 5-wide record cannot be concatenated with the others: its own call, never a retry.
    assert sorted(calls[IRIS1]) == [1, 7]
    assert calls[SCORER] == [7]
    assert_served(outcome, good)
    score = direct(models[SCORER], **direct(models[IRIS1], float_input=rows_of(good)))["score"]
    np.testing.assert_allclose(
        np.concatenate([r.outputs["score"] for r in outcome.results]), score, atol=1e-6
    )
    errors = [(e.record_id, e.step) for e in outcome.logs if e.error]
    assert sorted(errors) == [("missing", 1), ("wide", 1)]


def test_numeric_dtypes_share_one_call_and_are_cast_by_the_model(
    models: dict[Key, ModelRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, models)
    x = iris_rows(3)
    batch = [rec(f"r{k}", {"float_input": x[k : k + 1].astype(t)})
             for k, t in enumerate([np.float32, np.float64, np.int64])]
    outcome = PipelineRunner(pipeline(ModelStep(*IRIS1)), models, "w1").run(batch)
    assert calls[IRIS1] == [3] and not outcome.failures
    cast = np.concatenate([r.tensors["float_input"].astype(np.float32) for r in batch])
    np.testing.assert_allclose(
        np.concatenate([r.outputs["probabilities"] for r in outcome.results]),
        direct(models[IRIS1], float_input=cast)["probabilities"], atol=1e-6,
    )


class RejectsNaN(ModelRuntime):
    """The real iris model behind a check that refuses NaN, as a model's own validation would."""

    framework = "onnx"

    def __init__(self, inner: ModelRuntime) -> None:
        super().__init__(inner.inputs, inner.outputs)
        self._inner = inner

    @classmethod
    def load(cls, path: Path) -> ModelRuntime:
        raise NotImplementedError

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if np.isnan(arrays["float_input"]).any():
            raise ValueError("NaN in float_input")
        return direct(self._inner, **arrays)


def test_a_failing_group_is_retried_record_by_record(
    models: dict[Key, ModelRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtimes = {**models, IRIS1: RejectsNaN(models[IRIS1])}
    calls = spy(monkeypatch, runtimes)
    batch = records([2, 1, 1, 3, 1])
    batch[2].tensors["float_input"] = np.full((1, 4), np.nan, np.float32)
    outcome = PipelineRunner(
        pipeline(ModelStep(*IRIS1), ModelStep(*SCORER)), runtimes, "w1"
    ).run(batch)

    assert [(f.record.record_id, f.reason) for f in outcome.failures] == [
        ("r2", "step 1 (iris v1): ValueError: NaN in float_input")
    ]
    assert calls[IRIS1] == [8, 2, 1, 1, 3, 1]  # the batch, then each record alone
    assert calls[SCORER] == [7]  # the survivors are one batch again
    good = [batch[k] for k in (0, 1, 3, 4)]
    assert_served(outcome, good)
    score = direct(models[SCORER], **direct(models[IRIS1], float_input=rows_of(good)))["score"]
    np.testing.assert_allclose(
        np.concatenate([r.outputs["score"] for r in outcome.results]), score, atol=1e-6
    )


def test_input_map_feeds_a_model_input_from_a_field_of_another_name(
    models: dict[Key, ModelRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, models)
    batch = [rec(f"r{k}", {"features": iris_rows()[k : k + 2]}) for k in range(3)]
    renamed = ModelStep("iris", 1, {"float_input": "features"})
    outcome = PipelineRunner(pipeline(renamed, ModelStep(*SCORER)), models, "w1").run(batch)
    assert not outcome.failures
    expected = direct(models[IRIS1], float_input=rows_of(batch, "features"))["probabilities"]
    np.testing.assert_array_equal(
        np.concatenate([e.outputs["probabilities"] for e in outcome.logs if e.step == 1]), expected
    )
    assert set(outcome.logs[0].inputs) == {"float_input"}  # logged under the model's names

    wrong = ModelStep("iris", 1, {"float_input": "nope"})
    outcome = PipelineRunner(pipeline(wrong), models, "w1").run(batch)
    assert not outcome.results
    assert all("field 'nope'" in f.reason and "input_map" in f.reason for f in outcome.failures)
    assert calls[IRIS1] == [6]  # only the first run called the model


def within_5_sigma(hits: int, n: int, p: float) -> bool:
    # 5 sigma: a correct router fails this about once in 1.7 million seeds.
    return abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_random_split_shares_follow_the_weights(
    models: dict[Key, ModelRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, models)
    split = RandomSplit(((1.0, ModelStep(*IRIS1)), (3.0, ModelStep(*IRIS2))))
    batch = [rec(f"r{k}", {"float_input": iris_rows()[k % 150 : k % 150 + 1]}) for k in range(2000)]
    outcome = PipelineRunner(pipeline(split), models, "w1", seed=7).run(batch)

    versions = served_by(outcome)
    assert len(versions) == 2000
    assert within_5_sigma(sum(v == 2 for v in versions.values()), 2000, 0.75)
    assert len(calls[IRIS1]) == len(calls[IRIS2]) == 1
    assert calls[IRIS1][0] + calls[IRIS2][0] == 2000
    for version in (1, 2):
        routed = [r for r in outcome.results if r.models[0].version == version]
        assert all(r.models == [ModelUsed(1, "iris", version, "route")] for r in routed)
        x = rows_of([r.record for r in routed])
        expected = direct(models[("iris", version)], float_input=x)
        np.testing.assert_array_equal(
            np.concatenate([r.outputs["probabilities"] for r in routed]), expected["probabilities"]
        )

    # Hashed keys spread like random draws: 2000 distinct customers follow the weights too.
    keyed = PipelineRunner(pipeline(RandomSplit(split.routes, "customer")), models, "w1")
    for k, record in enumerate(batch):
        record.fields["customer"] = f"customer-{k}"
    versions = served_by(keyed.run(batch))
    assert within_5_sigma(sum(v == 2 for v in versions.values()), 2000, 0.75)


def test_sticky_hash_key_routes_a_value_the_same_way_across_batches_and_runners(
    models: dict[Key, ModelRuntime],
) -> None:
    split = pipeline(RandomSplit(((1.0, ModelStep(*IRIS1)), (1.0, ModelStep(*IRIS2))), "customer"))
    batch = records([1] * 400)
    for k, record in enumerate(batch):
        record.fields["customer"] = f"c{k % 40}"
    route_of: dict[str, set[int]] = defaultdict(set)
    for seed, part in ((1, batch[:150]), (1, batch[150:]), (2, batch[::-1]), (None, batch)):
        outcome = PipelineRunner(split, models, "w1", seed=seed).run(part)
        for result in outcome.results:
            route_of[result.record.fields["customer"]].add(result.models[0].version)
    assert len(route_of) == 40
    assert all(len(versions) == 1 for versions in route_of.values())
    assert {v for versions in route_of.values() for v in versions} == {1, 2}

    # Without the field a record is routed at random: both routes over 200 records.
    unkeyed = PipelineRunner(split, models, "w1", seed=3).run(records([1] * 200))
    assert set(served_by(unkeyed).values()) == {1, 2}


ROUTES_IN_A_FRESH_PROCESS = """
import json, sys
from dataclasses import replace
from datetime import UTC, datetime
import numpy as np
from agents.records.formats import InputRecord
from agents.serving.runner import PipelineRunner
from agents.runtimes import load_model
from control.registry.state import ModelStep, PipelineVersion, RandomSplit

split = RandomSplit(((1.0, ModelStep("iris", 1)), (1.0, ModelStep("iris", 2))), "customer")
version = PipelineVersion("ws", "pipe", 1, (split,), "alice", datetime.now(UTC))
runtimes = {("iris", v): load_model("onnx", path) for v, path in enumerate(sys.argv[1:], 1)}
batch = [
    InputRecord(str(k), None, "json", {"float_input": np.ones((1, 4), np.float32)},
                {"customer": f"c{k}"}, b"")
    for k in range(40)
]
outcome = PipelineRunner(version, runtimes, "w").run(batch)
print(json.dumps({r.record.fields["customer"]: r.models[0].version for r in outcome.results}))
"""


def test_sticky_routes_are_the_same_in_every_worker_process(tmp_path: Path) -> None:
    paths = [str(build_onnx_classifier(tmp_path / f"iris{v}.onnx", seed=v)) for v in (1, 2)]

    def routes(hash_seed: str) -> dict[str, int]:
        # Python's own hash() of a str changes with PYTHONHASHSEED; the routes must not.
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", ROUTES_IN_A_FRESH_PROCESS, *paths],
            env=env, cwd=REPO, capture_output=True, text=True, check=True, timeout=120,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    first = routes("1")
    assert len(first) == 40 and set(first.values()) == {1, 2}
    assert routes("2") == first


def test_key_split_routes_on_the_field_value_with_a_default(
    models: dict[Key, ModelRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, models)
    split = KeySplit(
        "country", (("de", ModelStep(*IRIS1)), ("7", ModelStep(*IRIS2))), ModelStep(*IRIS3)
    )
    batch = records([1, 2, 1, 1, 3, 1])
    for record, country in zip(batch, ["de", 7, "fr", None, "de", "missing"], strict=True):
        if country != "missing":
            record.fields["country"] = country
    outcome = PipelineRunner(pipeline(split), models, "w1").run(batch)
    assert served_by(outcome) == {"r0": 1, "r1": 2, "r2": 3, "r3": 3, "r4": 1, "r5": 3}
    assert dict(calls) == {IRIS1: [4], IRIS2: [2], IRIS3: [3]}
    assert all(r.models[0].role == "route" for r in outcome.results)


def test_a_paused_route_gets_no_records_and_the_others_share_its_weight(
    models: dict[Key, ModelRuntime],
) -> None:
    three = RandomSplit(((1.0, ModelStep(*IRIS1)), (1.0, ModelStep(*IRIS2)),
                         (2.0, ModelStep(*IRIS3))))
    batch = [rec(f"r{k}", {"float_input": iris_rows()[k % 150: k % 150 + 1]}) for k in range(2000)]
    for paused, share_of_2 in (({(1, 1)}, 1 / 3), ({(1, 3)}, 1 / 2)):
        runner = PipelineRunner(pipeline(three), models, "w1", seed=3,
                                paused_routes=frozenset(paused))
        versions = served_by(runner.run(batch))
        assert len(versions) == 2000 and paused.isdisjoint({(1, v) for v in versions.values()})
        assert within_5_sigma(sum(v == 2 for v in versions.values()), 2000, share_of_2)

    split = KeySplit("country", (("de", ModelStep(*IRIS1)), ("fr", ModelStep(*IRIS2))),
                     ModelStep(*IRIS3))
    keyed = records([1, 1, 1], country="de")
    keyed[1].fields["country"] = "fr"
    runner = PipelineRunner(pipeline(split), models, "w1", paused_routes=frozenset({(1, 1)}))
    assert served_by(runner.run(keyed)) == {"r0": 3, "r1": 2, "r2": 3}


class Crashing(ModelRuntime):
    """A challenger that fails on every batch."""

    framework = "onnx"

    @classmethod
    def load(cls, path: Path) -> ModelRuntime:
        raise NotImplementedError

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("challenger crashed")


def test_shadow_challenger_outputs_go_only_to_logs_and_a_crash_fails_no_record(
    models: dict[Key, ModelRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = ("crash", 1)
    runtimes = {**models, crash: Crashing(models[IRIS1].inputs, models[IRIS1].outputs)}
    calls = spy(monkeypatch, runtimes)
    shadow = ShadowStep(ModelStep(*IRIS1), (ModelStep(*IRIS2), ModelStep(*crash)))
    batch = records([2, 1, 3, 1])
    outcome = PipelineRunner(pipeline(shadow, ModelStep(*SCORER)), runtimes, "w1").run(batch)

    assert not outcome.failures
    x = rows_of(batch)
    score = direct(models[SCORER], **direct(models[IRIS1], float_input=x))["score"]
    np.testing.assert_allclose(
        np.concatenate([r.outputs["score"] for r in outcome.results]), score, atol=1e-6
    )
    assert all(
        r.models == [
            ModelUsed(1, "iris", 1, "champion"), ModelUsed(1, "iris", 2, "challenger"),
            ModelUsed(2, "scorer", 1, "model"),
        ]
        for r in outcome.results
    )
    assert calls[IRIS1] == calls[IRIS2] == calls[SCORER] == [7]
    challenger = [e for e in outcome.logs if e.model_version == 2]
    assert [e.record_id for e in challenger] == ["r0", "r1", "r2", "r3"]
    assert all(e.shadow and e.error is None for e in challenger)
    np.testing.assert_array_equal(
        np.concatenate([e.outputs["probabilities"] for e in challenger]),
        direct(models[IRIS2], float_input=x)["probabilities"],
    )
    crashed = [e for e in outcome.logs if e.model == "crash"]
    assert [e.record_id for e in crashed] == ["r0", "r1", "r2", "r3"]
    assert all(e.shadow and not e.outputs for e in crashed)
    assert all(e.error == "step 1 (crash v1): RuntimeError: challenger crashed" for e in crashed)
    served = [e for e in outcome.logs if (e.model, e.model_version) in (IRIS1, SCORER)]
    assert len(served) == 8 and not any(e.shadow for e in served)

    assert calls[crash] == [7, 2, 1, 3, 1]  # the crash is pinned on no record: each alone

    # As the last step, the champion's outputs are the result, never the challenger's.
    alone = PipelineRunner(pipeline(shadow), runtimes, "w1").run(batch)
    champion = direct(models[IRIS1], float_input=x)["probabilities"]
    assert not np.allclose(champion, direct(models[IRIS2], float_input=x)["probabilities"])
    np.testing.assert_array_equal(
        np.concatenate([r.outputs["probabilities"] for r in alone.results]), champion
    )


def test_a_model_version_without_a_runtime_is_refused_when_the_runner_is_built(
    models: dict[Key, ModelRuntime],
) -> None:
    with pytest.raises(MissingRuntime, match=r"step 2 needs model 'scorer' v9.*iris:v1"):
        PipelineRunner(pipeline(ModelStep(*IRIS1), ModelStep("scorer", 9)), models, "w1")


def test_an_empty_batch_gives_an_empty_outcome(models: dict[Key, ModelRuntime]) -> None:
    outcome = PipelineRunner(pipeline(ModelStep(*IRIS1)), models, "w1").run([])
    assert (outcome.results, outcome.failures, outcome.logs) == ([], [], [])


def test_results_carry_the_outputs_of_the_chosen_steps_named_by_step(
    models: dict[Key, ModelRuntime]
) -> None:
    batch = records([1, 3, 2])
    version = replace(pipeline(ModelStep(*IRIS1), ModelStep(*SCORER)), result_steps=(1, 2))
    outcome = PipelineRunner(version, models, "w1").run(batch)

    first = direct(models[IRIS1], float_input=rows_of(batch))
    start = 0
    for result in outcome.results:
        # The last step's outputs first, by their own names, as when only it is carried.
        assert list(result.outputs) == ["score", "step1.label", "step1.probabilities"]
        n = len(result.record.tensors["float_input"])
        rows = slice(start, start + n)
        np.testing.assert_array_equal(result.outputs["step1.label"], first["label"][rows])
        np.testing.assert_allclose(result.outputs["step1.probabilities"],
                                   first["probabilities"][rows], atol=1e-6)
        start += n
    only_first = replace(version, result_steps=(1,))
    result = PipelineRunner(only_first, models, "w1").run(batch).results[0]
    assert list(result.outputs) == ["step1.label", "step1.probabilities"]
