"""Scikit-learn, XGBoost and LightGBM models converted to ONNX on upload: real models trained on
bundled data sets, converted, checked against the original, uploaded to the real broker and run
from the stored artifact as a worker would; unfaithful conversions and bad files are refused."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import joblib
import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from agents.runtimes import load_model
from control.client import Client
from control.client.conversion import ConversionError, convert_model, kind_of, read_sample
from control.kafka import end_offsets
from schemas.errors import ArtifactError, Rejected
from tests.worker_platform import Namespace, own_settings

# A built model: its file, rows of its data set, and the original's outputs on them by name.
Built = tuple[Path, np.ndarray, dict[str, np.ndarray]]


def _rows(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def sklearn_classifier(tmp: Path) -> Built:
    x, y = load_iris(return_X_y=True)
    model = GradientBoostingClassifier(n_estimators=30, random_state=0).fit(x, y)
    joblib.dump(model, tmp / "gbc.joblib")
    rows = _rows(x)
    return tmp / "gbc.joblib", rows, {"label": model.predict(rows),
                                      "probabilities": model.predict_proba(rows)}


def sklearn_pipeline(tmp: Path) -> Built:
    x, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    joblib.dump(model, tmp / "pipe.pkl")
    rows = _rows(x)
    return tmp / "pipe.pkl", rows, {"label": model.predict(rows),
                                    "probabilities": model.predict_proba(rows)}


def sklearn_regressor(tmp: Path) -> Built:
    x, y = load_diabetes(return_X_y=True)
    model = GradientBoostingRegressor(n_estimators=50, random_state=0).fit(x, y)
    joblib.dump(model, tmp / "gbr.joblib")
    rows = _rows(x)
    return tmp / "gbr.joblib", rows, {"variable": model.predict(rows).reshape(-1, 1)}


def xgboost_classifier(suffix: str) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        x, y = load_iris(return_X_y=True)
        model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
        model.save_model(tmp / f"xgb{suffix}")
        rows = _rows(x)
        return tmp / f"xgb{suffix}", rows, {"label": model.predict(rows),
                                            "probabilities": model.predict_proba(rows)}
    return build


def lightgbm_classifier(tmp: Path) -> Built:
    x, y = load_breast_cancer(return_X_y=True)
    model = lightgbm.LGBMClassifier(n_estimators=30, random_state=0, verbose=-1).fit(x, y)
    model.booster_.save_model(tmp / "lgbm.txt")
    rows = _rows(x)
    return tmp / "lgbm.txt", rows, {"label": model.predict(rows),
                                    "probabilities": model.predict_proba(rows)}


def timestamp_regressor(tmp: Path) -> tuple[Path, np.ndarray]:
    """A linear model on a Unix-timestamp feature: float32 cannot tell seconds apart at 1.7e9,
    so the scaler's (x - mean) drifts by up to a minute in ONNX."""
    rng = np.random.default_rng(0)
    x = np.hstack([1.7e9 + rng.uniform(0, 86400, (300, 1)), rng.normal(size=(300, 2))])
    y = (x[:, 0] - 1.7e9) / 60 + x[:, 1]
    joblib.dump(make_pipeline(StandardScaler(), LinearRegression()).fit(x, y), tmp / "ts.joblib")
    return tmp / "ts.joblib", x[:40]


@pytest.fixture(scope="module")
def lab(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """ann's client in her workspace lab, on a namespace of its own for the module (each test
    uploads under its own model name)."""
    tmp = tmp_path_factory.mktemp("tm")
    namespace = Namespace(own_settings(broker.bootstrap, "tm", tmp / "data"), tmp)
    yield namespace.client
    namespace.close()


def stored_chunks(client: Client) -> int:
    return sum(end_offsets(client.settings, client.settings.topic("artifacts")).values())


# -- converted, checked, uploaded, run ---------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.parametrize("build", [
    sklearn_classifier, sklearn_pipeline, sklearn_regressor, xgboost_classifier(".json"),
    xgboost_classifier(".ubj"), lightgbm_classifier,
], ids=["sklearn-gbc", "sklearn-pipeline", "sklearn-gbr", "xgboost-json", "xgboost-ubj",
        "lightgbm-txt"])
def test_a_model_is_uploaded_as_onnx_that_predicts_what_the_original_does(
        lab: Client, tmp_path: Path, build: Callable[[Path], Built]) -> None:
    path, rows, expected = build(tmp_path)
    heard = []

    version = lab.upload_model(path.name.replace(".", "-"), path, converted=heard.append)

    assert version.framework == "onnx"
    assert [s.name for s in version.inputs] == ["features"]
    assert version.inputs[0].dtype == "float32"
    assert version.inputs[0].shape == (-1, rows.shape[1])
    assert [s.name for s in version.outputs] == list(expected)
    assert heard[0].agreement.largest_difference <= 1e-4
    # The original is kept beside the ONNX, byte for byte, for people: workers never load it.
    (name, ref), = version.files
    assert name == f"original{path.suffix}"
    assert lab.artifact(ref) == path.read_bytes()
    # The stored artifact, loaded by the runtime workers use, on the data set's own rows.
    stored = tmp_path / "stored.onnx"
    stored.write_bytes(lab.artifact(version.artifact))
    outputs = load_model(version.framework, stored).predict({"features": rows})
    for out, want in expected.items():
        if out == "label":
            np.testing.assert_array_equal(outputs[out], want)
        else:
            np.testing.assert_allclose(outputs[out], want, rtol=1e-4, atol=1e-4)


@pytest.mark.kafka
def test_the_same_original_converts_to_the_same_artifact(lab: Client, tmp_path: Path) -> None:
    path, _, _ = sklearn_classifier(tmp_path)
    lab.upload_model("same", path, allow_interface_change=True)

    # Converted again, the same bytes: a second upload is refused as no new version.
    with pytest.raises(Rejected, match="this very artifact"):
        lab.upload_model("same", path)


@pytest.mark.kafka
def test_a_converted_version_with_another_interface_needs_allow_interface_change(
        lab: Client, tmp_path: Path) -> None:
    classifier, _, _ = sklearn_classifier(tmp_path)
    regressor, _, _ = sklearn_regressor(tmp_path)
    lab.upload_model("iface", classifier)

    with pytest.raises(Rejected, match="would change the interface of version 1"):
        lab.upload_model("iface", regressor)
    version = lab.upload_model("iface", regressor, allow_interface_change=True)
    assert (version.version, [s.name for s in version.outputs]) == (2, ["variable"])


# -- refused -----------------------------------------------------------------------------------


@pytest.mark.kafka
def test_a_conversion_that_drifts_beyond_the_tolerance_is_refused(lab: Client,
                                                                  tmp_path: Path) -> None:
    path, sample = timestamp_regressor(tmp_path)
    before = stored_chunks(lab)

    with pytest.raises(ConversionError, match=r"output 'variable' of sample row \d+ .*a "
                                              r"difference of .*largest absolute difference "
                                              r".*over the tolerance of 0\.0001"):
        lab.upload_model("ts", path, sample=sample)
    assert stored_chunks(lab) == before and "ts" not in {n for _, n in lab.registry().models}
    # Made-up rows around the scaler's statistics find the drift as well.
    with pytest.raises(ConversionError, match="over the tolerance"):
        convert_model(path)


def test_a_tight_tolerance_refuses_the_float32_drift_of_a_good_conversion(
        tmp_path: Path) -> None:
    path, rows, _ = sklearn_regressor(tmp_path)

    assert convert_model(path, sample=rows[:50]).agreement.largest_difference > 1e-9
    with pytest.raises(ConversionError, match=r"over the tolerance of 1e-09"):
        convert_model(path, sample=rows[:50], tolerance=1e-9)


def test_an_estimator_skl2onnx_cannot_convert_is_refused_by_name(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=500))
    joblib.dump(model.fit(x, y), tmp_path / "log.joblib")

    with pytest.raises(ConversionError, match=r"skl2onnx cannot convert the Pipeline\("
                                              r"FunctionTransformer, LogisticRegression\).*"
                                              r"FunctionTransformer is not supported"):
        convert_model(tmp_path / "log.joblib")


@pytest.mark.parametrize(("name", "content", "framework", "reason"), [
    ("model.joblib", b"\x80\x04 cut short", None, r"not a readable pickle or joblib file"),
    ("model.ubj", b"{garbage", None, r"not an XGBoost model file"),
    ("model.txt", b"hello", "lightgbm", r"not a LightGBM text model"),
    ("model.json", b"{}", "sklearn", r"not a readable pickle or joblib file"),
])
def test_a_corrupt_model_file_is_refused_with_a_clear_error(
        tmp_path: Path, name: str, content: bytes, framework: str | None, reason: str) -> None:
    (tmp_path / name).write_bytes(content)

    with pytest.raises(ConversionError, match=reason):
        convert_model(tmp_path / name, framework)


@pytest.mark.kafka
def test_an_upload_of_a_corrupt_or_unknown_file_stores_nothing(lab: Client,
                                                               tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"\x80\x04 cut short")
    (tmp_path / "model.txt").write_text("hello")
    before = stored_chunks(lab)

    with pytest.raises(ArtifactError, match=r"not a readable pickle or joblib file"):
        lab.upload_model("bad", tmp_path / "model.joblib")
    with pytest.raises(ArtifactError, match=r"not a model artifact.*a scikit-learn pickle.*"
                                            r"LightGBM text model \(\.txt\).*--framework"):
        lab.upload_model("bad", tmp_path / "model.txt")
    assert stored_chunks(lab) == before and "bad" not in {n for _, n in lab.registry().models}


def test_a_pickle_of_something_else_is_refused(tmp_path: Path) -> None:
    joblib.dump({"weights": [1, 2, 3]}, tmp_path / "dict.pkl")

    with pytest.raises(ConversionError, match=r"holds a builtins\.dict, not a scikit-learn"):
        convert_model(tmp_path / "dict.pkl")


def test_without_the_extra_an_xgboost_file_names_the_extra_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = xgboost_classifier(".json")(tmp_path)
    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if not installed: import fails

    with pytest.raises(ConversionError, match=r"pip install 'inferstream\[xgboost\]'"):
        convert_model(path)


# -- files and samples -------------------------------------------------------------------------


def test_the_kind_of_file_is_told_by_its_name_or_content(tmp_path: Path) -> None:
    lgbm, _, _ = lightgbm_classifier(tmp_path)
    renamed = tmp_path / "lgbm.model"
    renamed.write_bytes(lgbm.read_bytes())
    xgb_json, _, _ = xgboost_classifier(".json")(tmp_path)
    (tmp_path / "other.json").write_text('{"rows": []}')
    (tmp_path / "model.bin").write_bytes(b"\x80\x04\x95 a pickle by another name")

    assert [kind_of(p) for p in (lgbm, renamed, xgb_json, tmp_path / "other.json",
                                 tmp_path / "model.bin", tmp_path)] \
        == ["lightgbm", "lightgbm", "xgboost", None, "sklearn", None]


def test_sample_rows_come_from_npy_csv_or_json(tmp_path: Path) -> None:
    rows = np.arange(8, dtype=np.float64).reshape(2, 4)
    np.save(tmp_path / "rows.npy", rows)
    (tmp_path / "rows.csv").write_text("a,b,c,d\n0,1,2,3\n4,5,6,7\n")
    (tmp_path / "rows.json").write_text(json.dumps(rows.tolist()))

    for name in ("rows.npy", "rows.csv", "rows.json"):
        np.testing.assert_array_equal(read_sample(tmp_path / name), rows)
    path, _, _ = sklearn_classifier(tmp_path)
    with pytest.raises(ConversionError, match=r"shape \[2, 3\].*takes 4 features"):
        convert_model(path, sample=rows[:, :3])


# -- the CLI -----------------------------------------------------------------------------------


@pytest.mark.kafka
def test_cli_upload_converts_with_a_sample_and_get_shows_the_interface(
        cli: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps lines and table cells at the width
    cli("users", "create", "ann")
    cli("workspaces", "create", "fraud")
    path, rows, _ = sklearn_classifier(tmp_path)
    np.savetxt(tmp_path / "sample.csv", rows[:20], delimiter=",")

    out = cli("models", "upload", "iris", str(path), "--sample", str(tmp_path / "sample.csv"))
    assert "converted sklearn GradientBoostingClassifier to ONNX; on 20 sample rows" in out
    assert "original kept as original.joblib" in out and "(onnx," in out
    refused = cli("models", "upload", "iris", str(path), "--tolerance", "1e-12", ok=False)
    assert "over the tolerance of 1e-12" in refused
    table = cli("models", "get", "iris")
    assert "features:float32[-1, 4]" in table and "probabilities:float32[-1, 3]" in table
