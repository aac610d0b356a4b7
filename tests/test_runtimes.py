"""Model runtimes on real small models: ONNX Runtime, TensorFlow SavedModel and Keras files."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from agents.runtimes import (
    FRAMEWORKS,
    InputMismatch,
    ModelRuntime,
    TensorSpec,
    UnknownFramework,
    describe_artifact,
    load_model,
    runtime_for,
)
from agents.runtimes.packing import artifact_bytes, artifact_format, framework_of, unpack
from control.local.demo_models import (
    build_keras_model,
    build_onnx_classifier,
    build_onnx_regressor,
    diabetes_rows,
    iris_rows,
    keras_scorer,
    train_diabetes_regressor,
    train_iris_classifier,
)
from schemas.errors import ArtifactError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_onnx_classifier(tmp_path_factory.mktemp("onnx") / "iris.onnx")


@pytest.fixture(scope="module")
def keras_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keras")
    return {
        "savedmodel": build_keras_model(root / "scorer", kind="savedmodel"),
        "keras": build_keras_model(root / "scorer.keras", kind="keras"),
    }


def test_onnx_classifier_predicts_what_sklearn_predicts(classifier_path: Path) -> None:
    rows = iris_rows()
    result = load_model("onnx", classifier_path).predict({"float_input": rows})
    reference = train_iris_classifier()
    np.testing.assert_allclose(result["probabilities"], reference.predict_proba(rows), atol=1e-5)
    np.testing.assert_array_equal(result["label"], reference.predict(rows))


def test_onnx_regressor_predicts_what_sklearn_predicts(tmp_path: Path) -> None:
    rows = diabetes_rows()
    model = load_model("onnx", build_onnx_regressor(tmp_path / "diabetes.onnx"))
    result = model.predict({"float_input": rows})
    expected = train_diabetes_regressor().predict(rows.astype(np.float64))
    np.testing.assert_allclose(result["variable"][:, 0], expected, rtol=1e-5, atol=1e-3)


def test_describe_onnx_classifier(classifier_path: Path) -> None:
    inputs, outputs = describe_artifact("onnx", classifier_path)
    assert inputs == (TensorSpec("float_input", "float32", (-1, 4)),)
    assert outputs == (
        TensorSpec("label", "int64", (-1,)),
        TensorSpec("probabilities", "float32", (-1, 3)),
    )


def test_onnx_builders_are_deterministic_and_follow_seed_and_c(tmp_path: Path) -> None:
    def blob(name: str, **kwargs: float) -> bytes:
        return build_onnx_classifier(tmp_path / name, **kwargs).read_bytes()  # type: ignore[arg-type]

    base = blob("a.onnx")
    assert blob("b.onnx") == base
    assert blob("c.onnx", seed=1) != base
    assert blob("d.onnx", C=0.5) != base
    regressor = build_onnx_regressor(tmp_path / "r0.onnx")
    assert build_onnx_regressor(tmp_path / "r1.onnx", seed=1).read_bytes() != regressor.read_bytes()


def test_onnx_session_is_tuned_for_a_small_machine(classifier_path: Path) -> None:
    runtime = runtime_for("onnx").load(classifier_path, intra_op_threads=1)  # type: ignore[call-arg]
    options = runtime._session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_corrupt_onnx_file_is_an_artifact_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ArtifactError, match=r"broken\.onnx"):
        load_model("onnx", path)


def test_missing_input_names_the_input_and_what_was_given(classifier_path: Path) -> None:
    model = load_model("onnx", classifier_path)
    with pytest.raises(InputMismatch, match=r"'float_input' \(float32, shape \[-1, 4\]\).*'x'"):
        model.predict({"x": iris_rows(3)})


def test_wrong_trailing_shape_names_expected_and_got(classifier_path: Path) -> None:
    model = load_model("onnx", classifier_path)
    with pytest.raises(InputMismatch, match=r"'float_input'.*\[-1, 4\].*\[3, 5\]"):
        model.predict({"float_input": np.zeros((3, 5), np.float32)})
    with pytest.raises(InputMismatch, match=r"\[-1, 4\].*\[4\]"):
        model.predict({"float_input": np.zeros(4, np.float32)})


def test_dtypes_are_cast_only_when_values_keep_their_meaning(classifier_path: Path) -> None:
    model = load_model("onnx", classifier_path)
    rows = iris_rows(5)
    expected = model.predict({"float_input": rows})["probabilities"]
    as_float64 = model.predict({"float_input": rows.astype(np.float64)})["probabilities"]
    np.testing.assert_array_equal(as_float64, expected)
    model.predict({"float_input": np.ones((2, 4), np.int64)})  # JSON integers reach float models
    with pytest.raises(InputMismatch, match=r"'float_input' expects dtype float32 but got str32"):
        model.predict({"float_input": np.full((2, 4), "a")})


def test_keys_the_model_does_not_take_are_ignored(classifier_path: Path) -> None:
    model = load_model("onnx", classifier_path)
    result = model.predict({"float_input": iris_rows(2), "note": np.array(["a", "b"])})
    assert result["probabilities"].shape == (2, 3)


class Echo(ModelRuntime):
    """A runtime without a framework, to test the validation every runtime shares."""

    framework = "echo"

    @classmethod
    def load(cls, path: Path) -> Echo:
        ids, text = TensorSpec("ids", "int32", (-1,)), TensorSpec("text", "string", (-1, 2))
        return cls((ids, text), (ids,))

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"ids": arrays["ids"]}


def test_inputs_of_one_batch_must_agree_in_size() -> None:
    echo = Echo.load(Path("unused"))
    text = np.array([["a", "b"], ["c", "d"]])
    assert echo.predict({"ids": np.array([1, 2]), "text": text})["ids"].dtype == np.int32
    with pytest.raises(InputMismatch, match="batch size"):
        echo.predict({"ids": np.array([1, 2, 3]), "text": text})


def test_integers_that_do_not_fit_are_refused() -> None:
    echo = Echo.load(Path("unused"))
    text = np.array([["a", "b"]])
    with pytest.raises(InputMismatch, match="'ids' expects dtype int32 but got int64"):
        echo.predict({"ids": np.array([2**40]), "text": text})
    with pytest.raises(InputMismatch, match="'ids' expects dtype int32 but got float64"):
        echo.predict({"ids": np.array([1.5]), "text": text})
    with pytest.raises(InputMismatch, match="'text' expects dtype string but got float64"):
        echo.predict({"ids": np.array([1]), "text": np.array([[1.0, 2.0]])})


def test_unknown_framework_lists_the_known_ones() -> None:
    with pytest.raises(UnknownFramework, match=r"'pytorch'.*onnx, tensorflow"):
        runtime_for("pytorch")
    assert FRAMEWORKS[:2] == ("onnx", "tensorflow") and "python" in FRAMEWORKS
    assert issubclass(UnknownFramework, ArtifactError)


def test_tensorflow_is_imported_only_for_tensorflow_models(classifier_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from agents.runtimes import load_model; "
        f"load_model('onnx', Path({str(classifier_path)!r})); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120)


@pytest.mark.parametrize("kind", ["savedmodel", "keras"])
def test_tensorflow_predicts_what_keras_predicts(
    kind: str, keras_artifacts: dict[str, Path]
) -> None:
    rows = np.random.default_rng(0).dirichlet(np.ones(3), size=64).astype(np.float32)
    model = load_model("tensorflow", keras_artifacts[kind])
    result = model.predict({"probabilities": rows})
    expected = keras_scorer()(rows)["score"]
    assert set(result) == {"score"}
    np.testing.assert_allclose(result["score"], np.asarray(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["savedmodel", "keras"])
def test_describe_tensorflow_model(kind: str, keras_artifacts: dict[str, Path]) -> None:
    inputs, outputs = describe_artifact("tensorflow", keras_artifacts[kind])
    assert inputs == (TensorSpec("probabilities", "float32", (-1, 3)),)
    assert outputs == (TensorSpec("score", "float32", (-1, 1)),)


def test_tensorflow_rejects_what_is_not_a_tensorflow_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="empty"):
        load_model("tensorflow", tmp_path / "empty")
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(ArtifactError, match=r"model\.h5.*\.keras"):
        load_model("tensorflow", tmp_path / "model.h5")


def test_onnx_probabilities_feed_the_keras_model(
    classifier_path: Path, keras_artifacts: dict[str, Path]
) -> None:
    classifier = load_model("onnx", classifier_path)
    scorer = load_model("tensorflow", keras_artifacts["savedmodel"])
    rows = iris_rows()
    first = classifier.predict({"float_input": rows})
    scores = scorer.predict(first)  # the whole output dict; the scorer takes "probabilities"
    expected = keras_scorer()(first["probabilities"])["score"]
    np.testing.assert_allclose(scores["score"], np.asarray(expected), rtol=1e-6, atol=1e-6)
    assert scores["score"].shape == (len(rows), 1)


def test_packing_a_savedmodel_twice_gives_the_same_bytes(
    keras_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    directory = keras_artifacts["savedmodel"]
    blob = artifact_bytes(directory)
    assert artifact_bytes(directory) == blob
    copy = unpack(blob, tmp_path / "copy")  # new files: new mtimes, maybe another order
    assert copy == tmp_path / "copy"
    assert artifact_bytes(copy) == blob
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        assert {(m.mtime, m.uid, m.gid) for m in tar} == {(0, 0, 0)}


def test_unpacked_artifacts_load_and_predict(
    classifier_path: Path, keras_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    rows = iris_rows(10)
    onnx_path = unpack(artifact_bytes(classifier_path), tmp_path / "c", suffix=".onnx")
    assert onnx_path == tmp_path / "c" / "model.onnx"
    probabilities = load_model("onnx", onnx_path).predict({"float_input": rows})["probabilities"]
    for kind, suffix in (("savedmodel", ""), ("keras", ".keras")):
        path = unpack(artifact_bytes(keras_artifacts[kind]), tmp_path / kind, suffix=suffix)
        assert artifact_format(path) == kind
        scores = load_model(framework_of(path), path).predict({"probabilities": probabilities})
        assert scores["score"].shape == (10, 1)


def _tar(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size))
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


@pytest.mark.parametrize("name", ["../evil", "variables/../../evil", "/etc/evil"])
def test_unpack_refuses_members_outside_the_directory(name: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="evil"):
        unpack(_tar(_file("saved_model.pb"), _file(name)), tmp_path / "model")
    assert not (tmp_path / "model").exists()
    assert not (tmp_path.parent / "evil").exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind


def test_unpack_refuses_a_link_pointing_outside(tmp_path: Path) -> None:
    link = tarfile.TarInfo("variables")
    link.type, link.linkname = tarfile.SYMTYPE, "/tmp"
    with pytest.raises(ArtifactError, match="variables"):
        unpack(_tar(link, _file("variables/evil")), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_formats_and_frameworks_of_artifacts(
    classifier_path: Path, keras_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    assert (artifact_format(classifier_path), framework_of(classifier_path)) == ("onnx", "onnx")
    for kind in ("savedmodel", "keras"):
        assert artifact_format(keras_artifacts[kind]) == kind
        assert framework_of(keras_artifacts[kind]) == "tensorflow"
    (tmp_path / "model.pt").write_bytes(b"torch")
    with pytest.raises(ArtifactError, match=r"model\.pt.*\.onnx.*\.keras.*SavedModel"):
        framework_of(tmp_path / "model.pt")
