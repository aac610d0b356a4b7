"""Workers that share one data folder: they unpack the same model at once without refusing it,
and the inference logs reach ClickHouse whoever of them is killed and comes back."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from agents.runtimes import load_model
from agents.runtimes.packing import artifact_bytes, unpack
from control.local.demo_models import build_keras_model, build_onnx_classifier, iris_rows


def _race(blob: bytes, dest: str, suffix: str, start: multiprocessing.synchronize.Barrier,
          done: multiprocessing.Queue) -> None:
    start.wait()
    try:
        done.put(str(unpack(blob, Path(dest), suffix)))
    except Exception as exc:  # reported to the test, which fails on it
        done.put(f"error: {exc!r}")


def test_processes_unpacking_one_model_at_once_all_get_it_whole(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    for name, path, suffix in [
        ("onnx", build_onnx_classifier(tmp_path / "clf.onnx"), ".onnx"),
        ("savedmodel", build_keras_model(tmp_path / "scorer", "savedmodel"), ""),
    ]:
        blob, dest = artifact_bytes(path), tmp_path / "models" / name
        start, done = context.Barrier(4), context.Queue()
        racers = [context.Process(target=_race, args=(blob, str(dest), suffix, start, done))
                  for _ in range(4)]
        for p in racers:
            p.start()
        answers = [done.get(timeout=120) for _ in racers]
        for p in racers:
            p.join(30)
        assert len(set(answers)) == 1 and not answers[0].startswith("error"), answers
        assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no staging
        model = load_model("tensorflow" if name == "savedmodel" else "onnx", Path(answers[0]))
        assert model.predict({model.inputs[0].name: iris_rows()[:2] if name == "onnx" else
                              [[0.1, 0.2, 0.7]] * 2})
        # Unpacking again uses the copy there is.
        assert unpack(blob, dest, suffix) == Path(answers[0])
