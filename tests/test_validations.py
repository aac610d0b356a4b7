"""Validations: the registry's judgement of check expressions (well-formed, malformed, hostile),
the vectorised evaluation against a per-record reference, and the runner flagging results and
logs. Pure: no broker, no ClickHouse (tests/test_worker_validations.py has the worker)."""

from __future__ import annotations

import io
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from registry_events import (
    CLASSIFIER,
    SCALER,
    T0,
    create_pipeline,
    create_pipeline_version,
    event,
    given,
    model_step,
    reject,
    ws_members,
)

from agents.records.formats import InputRecord
from agents.runtimes.base import ModelRuntime
from agents.serving.runner import PipelineRunner
from agents.serving.validations import Checks, stacked, texts
from control.registry.chains import TYPED
from control.registry.events import NAMESPACE, ControlEvent
from control.registry.fold import apply, fold
from control.registry.state import ModelStep, PipelineVersion, Registry, Validation
from control.registry.tensors import TensorSpec
from control.registry.validations import (
    MAX_CHARS,
    RECORD,
    Ref,
    check_validations,
    parse,
    refs,
)
from schemas.codec import MARKER, writer_schemas
from schemas.errors import Rejected

# The chain of the pure tests: inputs amount, country, x; step 1 gives risk and
# probabilities; step 2 (the last) gives label.
OUTPUTS = {0: frozenset({"amount", "country", "x"}), 1: frozenset({"risk", "probabilities"}),
           2: frozenset({"label"})}
# The ControlEvent schema released before validations (schemas/history/).
BEFORE_VALIDATIONS = bytes.fromhex("1556749a4fd41613")


def judged(expression: str) -> frozenset[Ref]:
    return refs(parse(expression, "c"), OUTPUTS, "c")


# -- judging at creation ---------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "reads"), [
    ("label > 0.95", {Ref(2, "label")}),
    ('amount > 10000 and country == "de"', {Ref(0, "amount"), Ref(0, "country")}),
    ("step1.probabilities[0] is nan", {Ref(1, "probabilities")}),
    ("step1.risk is not nan or not (1 < step0.amount <= 5)", {Ref(1, "risk"), Ref(0, "amount")}),
    ("abs(step1.risk - 0.5) * 2 > max(amount, 1, 2) ** 2", {Ref(1, "risk"), Ref(0, "amount")}),
    ('id == "r-1" or key != "k"', {Ref(RECORD, "id"), Ref(RECORD, "key")}),
])
def test_well_formed_checks_read_what_the_chain_gives(expression: str, reads: set[Ref]) -> None:
    assert judged(expression) == reads


@pytest.mark.parametrize(("expression", "mentions"), [
    ("", "empty expression"),
    ("risk >", "is not an expression"),
    ("label + 1", "is not true or false"),
    ("nope > 1", "unknown name 'nope'"),
    ("step7.risk > 1", "names step 7"),
    ("step1.label > 1", "no 'label' among step 1's outputs"),
    ("x[-1] > 0", "an index is a whole number constant"),
    ("x[1.5] > 0", "an index is a whole number constant"),
    ("x is 1", "'is' only tests 'is nan'"),
    ("x in (1, 2)", "comparison In is not allowed"),
    ('country + "x" == "dex"', "text may only be compared"),
    ('country > "de"', "text may only be compared with '==' and '!='"),
    ("key is nan", "text may only be compared with '==' and '!='"),
    ('1 < id <= "z"', "text may only be compared with '==' and '!='"),
    ("label > 1 if x > 0 else True", "IfExp is not allowed"),
    ("round(label) > 1", "only the functions"),
    ("abs(label, 2) > 1", "abs() takes 1..1 arguments"),
    ("label > 1; label < 0", "is not an expression"),
    ("x > 1" + " or x > 1" * 300, f"more than {MAX_CHARS}"),
])
def test_malformed_checks_are_refused_with_a_clear_reason(expression: str, mentions: str
                                                          ) -> None:
    with pytest.raises(Rejected) as caught:
        judged(expression)
    assert mentions in str(caught.value)


HOSTILE = [
    "__import__('os').system('touch {sentinel}') == 0",
    "().__class__.__bases__[0].__subclasses__() == 1",
    "label.__class__ == 1",
    "step1.__dict__ == 1",
    "(lambda: __import__('os').system('touch {sentinel}'))() == 0",
    "[open('{sentinel}', 'w') for _ in (1,)] == 1",
    "{{k: 1 for k in 'ab'}} == 1",
    "open('{sentinel}', 'w').write('x') == 1",
    "exec('import os') == 1",
    "eval('1') == 1",
    "9 ** 9 ** 9 > 1",
    "label ** 1000000 > 1",
    "'a' * 10 ** 9 == 'b'",
    "label > 99999999999999999999999999999999",
    "'" + "a" * 300 + "' == country",
    "(" * 300 + "label > 1" + ")" * 300,
    "[" * 300 + "1" + "]" * 300 + " == label",
    "-" * 500 + "label > 1",
    "not " * 240 + "label > 1",
    "label > 1 and " * 70 + "label > 1",
    "(x := 1) == 1",
    "f'{{label}}' == '1'",
    "label[0:2] == 1",
    "step1.risk.real > 1",
    "*x > 1",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_checks_are_refused_and_never_run(hostile: str, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    expression = hostile.format(sentinel=sentinel)
    started = time.perf_counter()
    with pytest.raises(Rejected):
        check_validations([{"name": "evil", "expression": expression}], OUTPUTS)
    # Nor can the data plane be made to run one: it compiles through the same judgement.
    with pytest.raises(Rejected):
        Checks([Validation("evil", expression)], OUTPUTS)
    assert time.perf_counter() - started < 1.0
    assert not sentinel.exists()


def test_a_huge_expression_is_refused_quickly() -> None:
    for text in ("(" * 1_000_000 + "1" + ")" * 1_000_000, "label > 1 or " * 100_000 + "x > 1",
                 "\0" * 100):
        started = time.perf_counter()
        with pytest.raises(Rejected):
            parse(text, "big")
        assert time.perf_counter() - started < 0.5


def test_check_names_must_be_well_formed_unique_and_few() -> None:
    ok = {"expression": "label > 1"}
    for bad, mentions in [("", "invalid validation name"), ("Has Space", "invalid"),
                          ("_x", "invalid")]:
        with pytest.raises(Rejected, match=mentions):
            check_validations([{"name": bad, **ok}], OUTPUTS)
    with pytest.raises(Rejected, match="given twice"):
        check_validations([{"name": "a", **ok}, {"name": "a", **ok}], OUTPUTS)
    with pytest.raises(Rejected, match="more than 32"):
        check_validations([{"name": f"c{i}", **ok} for i in range(33)], OUTPUTS)


# -- the registry ----------------------------------------------------------------------------


@pytest.fixture
def fraud() -> Registry:
    """Workspace ws; scaler x->y, classifier y->label (float32 [-1, 4]); pipeline fraud."""
    return given(Registry(), *ws_members(), event(SCALER), event(CLASSIFIER),
                 event(create_pipeline("fraud")))


def version(*validations: tuple[str, str]) -> ControlEvent:
    return event(create_pipeline_version(
        "fraud", model_step("scaler"), model_step("classifier"), rules=TYPED,
        validations=dict(validations)))


def test_a_version_keeps_its_checks(fraud: Registry) -> None:
    after = apply(fraud, version(("high", "label[3] > 0.9"), ("odd", "step1.y[0] is nan")))
    assert after.pipelines[("ws", "fraud")].versions[0].validations == (
        Validation("high", "label[3] > 0.9"), Validation("odd", "step1.y[0] is nan"))


def test_a_bad_check_refuses_the_version_with_its_reason(fraud: Registry) -> None:
    reject(fraud, version(("high", "labels > 1")), "validation 'high'", "unknown name 'labels'",
           "['label']")
    reject(fraud, version(("evil", "__import__('os') == 1")), "validation 'evil'",
           "only the functions")
    # A tensor of several values a row is read one value at a time.
    reject(fraud, version(("whole", "label > 0.9")), "validation 'whole'",
           "'label' holds 4 values a row", "label[0]")


def test_a_version_written_before_validations_folds_as_it_did(fraud: Registry) -> None:
    type_, payload = create_pipeline_version("fraud", model_step("scaler"),
                                             model_step("classifier"), rules=TYPED)
    del payload["validations"]
    out = io.BytesIO()
    fastavro.schemaless_writer(out, writer_schemas()[BEFORE_VALIDATIONS], {
        "event_id": uuid.uuid4().hex, "time": T0, "actor": "ann", "workspace": "ws",
        "payload": (NAMESPACE + type_, payload), "signature": None})
    old = ControlEvent.from_bytes(MARKER + BEFORE_VALIDATIONS + out.getvalue())
    assert old.payload["validations"] == []
    after = fold([old], fraud)
    created = after.pipelines[("ws", "fraud")].versions[0]
    assert created.validations == () and len(created.steps) == 2


# -- evaluation ------------------------------------------------------------------------------


def batch(n: int, seed: int = 7) -> dict[Ref, Any]:
    """Random values of every Ref of OUTPUTS: NaNs, text, several values a record."""
    rng = np.random.default_rng(seed)
    amount = rng.normal(10_000, 5_000, (n, 1))
    amount[rng.random(n) < 0.1] = np.nan
    probabilities = rng.random((n, 3))
    probabilities[rng.random(n) < 0.2, 0] = np.nan
    return {
        Ref(0, "amount"): amount, Ref(0, "x"): rng.integers(-5, 5, (n, 2)),
        Ref(0, "country"): rng.choice(np.array(["de", "fr", "it"]), (n, 1)),
        Ref(1, "risk"): rng.random((n, 1)).astype(np.float32),
        Ref(1, "probabilities"): probabilities, Ref(2, "label"): rng.integers(0, 3, (n, 1)),
        Ref(RECORD, "id"): texts([f"r{i}" for i in range(n)]),
        Ref(RECORD, "key"): texts([None if i % 3 else f"k{i % 2}".encode() for i in range(n)]),
    }


Row = dict[str, Any]


def divided(a: float, b: float) -> float:
    """a / b as IEEE 754 has it (numpy, ClickHouse): x / 0 is an infinity, not an error."""
    if b:
        return a / b
    return math.nan if math.isnan(a) or a == 0 else math.copysign(math.inf, a)
# Each check, and what it says of one record, written out in plain Python.
REFERENCE: list[tuple[str, Callable[[Row], bool]]] = [
    ("step1.risk > 0.95", lambda r: r["risk"] > 0.95),
    ('amount > 10000 and country == "de"', lambda r: r["amount"] > 10000 and r["country"] == "de"),
    ("step1.probabilities[0] is nan", lambda r: math.isnan(r["p"][0])),
    ("step1.probabilities[2] is not nan and 0.2 < step1.probabilities[2] <= 0.7",
     lambda r: 0.2 < r["p"][2] <= 0.7),
    ("not (label == 1 or x[1] < 0)", lambda r: not (r["label"] == 1 or r["x"][1] < 0)),
    ("abs(x[0] - x[1]) >= 3 or max(x[0], x[1], 0) * 2 == 8",
     lambda r: abs(r["x"][0] - r["x"][1]) >= 3 or max(r["x"][0], r["x"][1], 0) * 2 == 8),
    ("x[0] ** 2 + x[1] % 3 > 10 - label // 2",
     lambda r: r["x"][0] ** 2 + r["x"][1] % 3 > 10 - r["label"] // 2),
    ("amount / (x[0] + 5) > 3000", lambda r: divided(r["amount"], r["x"][0] + 5) > 3000),
    ('key == "k0" or id == "r4"', lambda r: r["key"] == "k0" or r["id"] == "r4"),
    ("(x[0] > 1) + (x[1] > 1) + -(label > 1) >= 2",  # comparisons count as 0 and 1
     lambda r: (r["x"][0] > 1) + (r["x"][1] > 1) + -(r["label"] > 1) >= 2),
    ("sqrt(abs(amount)) > 100 and log(step1.risk) < -1", lambda r: math.sqrt(abs(r["amount"])) > 100
     and (math.log(r["risk"]) if r["risk"] > 0 else -math.inf) < -1),
]


def test_vectorised_checks_flag_exactly_what_a_per_record_reference_does() -> None:
    n = 2000
    values = batch(n)
    checks = Checks([Validation(f"c{k}", e) for k, (e, _) in enumerate(REFERENCE)], OUTPUTS)
    report = checks.evaluate(values.__getitem__, n)
    assert report.errors == {}
    for i in range(n):
        row = {"risk": float(values[Ref(1, "risk")][i, 0]),
               "amount": float(values[Ref(0, "amount")][i, 0]),
               "country": str(values[Ref(0, "country")][i, 0]),
               "p": values[Ref(1, "probabilities")][i].tolist(),
               "x": values[Ref(0, "x")][i].tolist(), "label": int(values[Ref(2, "label")][i, 0]),
               "id": values[Ref(RECORD, "id")][i, 0], "key": values[Ref(RECORD, "key")][i, 0]}
        expected = tuple(f"c{k}" for k, (_, ref) in enumerate(REFERENCE) if ref(row))
        assert report.anomalies[i] == expected, (i, row)
    assert report.flagged == {f"c{k}": sum(f"c{k}" in a for a in report.anomalies)
                              for k in range(len(REFERENCE))}
    assert all(0 < report.flagged[f"c{k}"] < n for k in (0, 1, 2, 3, 4))  # a real test


@pytest.mark.parametrize(("expression", "error"), [
    ("country > 1", "cannot compare text with number"),
    ("step1.probabilities > 0.5", "holds 3 values a record; index it"),
    ("x[5] > 0", "has only 2 values"),
    ('country * 2 == "dede"', "arithmetic on text values"),
    ("country is nan", "arithmetic on text values"),
])
def test_a_check_that_cannot_run_flags_nothing_and_says_why(expression: str, error: str
                                                           ) -> None:
    n = 50
    checks = Checks([Validation("bad", expression), Validation("ok", "label >= 0")], OUTPUTS)
    report = checks.evaluate(batch(n).__getitem__, n)
    assert error in report.errors["bad"]
    assert "bad" not in report.flagged and report.flagged["ok"] == n
    assert report.anomalies == [("ok",)] * n


def test_records_of_uneven_values_are_indexed_record_by_record() -> None:
    ragged = stacked([np.array([1.0, 2.0]), np.array([[3.0], [9.0], [4.0]]), np.array([0.5, 7])])
    assert isinstance(ragged, list)
    outputs = {0: frozenset({"x"}), 1: frozenset({"y"})}
    values = {Ref(0, "x"): ragged}
    report = Checks([Validation("second", "step0.x[1] > 5")], outputs).evaluate(
        values.__getitem__, 3)
    assert report.anomalies == [(), ("second",), ("second",)]
    short = Checks([Validation("third", "step0.x[2] > 5")], outputs).evaluate(
        values.__getitem__, 3)
    assert "2 records hold 2 values" in short.errors["third"]


# -- the runner ------------------------------------------------------------------------------


class Scorer(ModelRuntime):
    """x (float32 [-1, 3]) -> risk, the mean of a row, and p, the row itself."""

    framework = "test"

    def __init__(self) -> None:
        super().__init__((TensorSpec("x", "float32", (-1, 3)),),
                         (TensorSpec("risk", "float32", (-1, 1)),
                          TensorSpec("p", "float32", (-1, 3))))

    @classmethod
    def load(cls, path: Path) -> ModelRuntime:
        raise NotImplementedError

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays["x"]
        return {"risk": x.mean(axis=1, keepdims=True), "p": x}


def test_the_runner_flags_results_and_the_log_of_the_result_step() -> None:
    steps = (ModelStep("scorer", 1, {}), ModelStep("scorer", 1, {"x": "p"}))
    version = PipelineVersion("ws", "pipe", 1, steps, "ann", datetime.now(UTC),
                              validations=(Validation("high", "risk > 0.5"),
                                           Validation("first", 'step1.p[0] is nan or id == "b"'),
                                           Validation("broken", "step0.x > 1")))
    runner = PipelineRunner(version, {("scorer", 1): Scorer()}, "w1")
    rows = {"a": [0.9, 0.9, 0.9], "b": [0.1, 0.1, 0.1], "c": [math.nan, 0.2, 0.2]}
    records = [InputRecord(k, None, "json", {"x": np.array([v], np.float32)}, {}, b"")
               for k, v in rows.items()]
    outcome = runner.run(records)
    assert [r.anomalies for r in outcome.results] == [("high",), ("first",), ("first",)]
    last = {e.record_id: e.anomalies for e in outcome.logs if e.step == 2}
    assert last == {"a": ("high",), "b": ("first",), "c": ("first",)}
    assert all(e.anomalies == () for e in outcome.logs if e.step == 1)
    assert outcome.checks is not None
    assert outcome.checks.flagged == {"high": 1, "first": 2}
    assert "holds 3 values a record" in outcome.checks.errors["broken"]
