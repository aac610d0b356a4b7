"""Dead-letter redrive against the real broker and a worker: records dead-lettered by a bug in
a Python step are redriven after the fixed version is deployed, each served exactly once
though the worker is killed (-9) mid-redrive; a record that fails again returns to the
dead-letter topic with its new reason and redrive count 1; a second redrive over the same
range sends nothing again."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agents.serving.redriven import REDRIVE_HEADER
from control.cli import main
from control.kafka import producer, read_until_end
from control.local.worker_process import WorkerProcess
from control.offsets import Progress
from schemas.codec import codec
from tests.helpers import wait_until
from tests.worker_platform import Platform, own_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Version 1 has a bug: it refuses every record whose x[0] is negative. Version 2 fixes it but
# for x[0] == -2, which it still refuses.
STEP = '''

INPUTS = {{"float_input": ("float32", (-1, 4))}}
OUTPUTS = {{"doubled": ("float32", (-1, 4))}}

def predict(batch):
    x = batch["float_input"]
    if (x[:, 0] {condition}).any():
        raise ValueError("{message}")
    return {{"doubled": x * 2}}
'''
RECORDS, BAD, STILL_BAD = 300, 100, 10  # every third record bad, every 30th still bad in v2
RATE = 25  # dead letters a second: the redrive takes ~4 s, time to kill the worker in it


def record(i: int) -> tuple[bytes, bytes]:
    """Record i: bad ones have no id of their own (their id is where they first arrived)."""
    x = [float(i % 5), 1.0, 2.0, 3.0]
    if i % 3 == 0:
        x[0] = -2.0 if i % 30 == 0 else -1.0
        return f"k{i}".encode(), json.dumps({"float_input": x}).encode()
    return f"k{i}".encode(), json.dumps({"id": f"r{i}", "float_input": x}).encode()


def run_cli(platform: Platform, capsys: pytest.CaptureFixture[str], *args: str,
            parse: bool = True) -> Any:
    """What the CLI printed: JSON read back, or the text when not parse."""
    s = platform.settings
    with pytest.raises(SystemExit) as exited:
        main(["--bootstrap-servers", s.bootstrap_servers, "--namespace", s.namespace,
              "--user", "ann", "--workspace", "lab", *args])
        raise SystemExit(0)
    printed = capsys.readouterr()
    assert exited.value.code == 0, printed.err
    return json.loads(printed.out) if parse else " ".join(printed.out.split())


def test_dead_letters_are_redriven_exactly_once_across_a_kill(
        broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = own_settings(broker.bootstrap, "redrive", tmp_path / "cli")
    platform = Platform(settings, tmp_path, keras=False)
    env = {"INFERSTREAM_REDRIVE_RATE": str(RATE), "INFERSTREAM_REDRIVE_TICK_S": "0.5"}
    try:
        first = WorkerProcess(settings, "w1", tmp_path, env=env)
        platform.workers.append(first)
        for version, condition, message in ((1, "< 0", "x[0] is negative"),
                                            (2, "== -2", "x[0] is -2")):
            path = tmp_path / f"v{version}" / "prep.py"
            path.parent.mkdir()
            path.write_text(STEP.format(condition=condition, message=message))
            platform.client.upload_model("prep", path)
        platform.pipeline("fix", [{"model": "prep", "version": 1}])
        first.wait_ready()
        platform.deploy("fix", 1)
        topic = lambda kind: settings.pipeline_topic("lab", "fix", kind)  # noqa: E731

        p = producer(settings)
        for i in range(RECORDS):
            key, value = record(i)
            p.produce(topic("input"), value, key)
        assert p.flush(30) == 0
        letters = lambda: [codec("DeadLetter").decode(m.value())  # noqa: E731
                           for m in read_until_end(settings, topic("dead"))]
        results = lambda: [json.loads(m.value())  # noqa: E731
                           for m in read_until_end(settings, topic("output"))]
        wait_until(lambda: len(letters()) == BAD, 90, f"{BAD} dead letters")
        first_letters = letters()
        assert {letter["redrive_count"] for letter in first_letters} == {0}
        wait_until(lambda: len(results()) == RECORDS - BAD, 60, "the good records served")

        # The fix, deployed; a dry run says what a redrive would do.
        platform.client.create_pipeline_version("fix", [{"model": "prep", "version": 2}])
        platform.deploy("fix", 2)
        dry = run_cli(platform, capsys, "pipelines", "redrive", "fix", "--dry-run", "--json")
        assert dry["dry_run"] and (dry["considered"], dry["redriven"]) == (BAD, BAD)
        assert sum(dry["by_reason"].values()) == BAD
        assert all("x[0] is negative" in reason for reason in dry["by_reason"])

        sent = run_cli(platform, capsys, "pipelines", "redrive", "fix", "--no-wait", "--json")
        redrive = platform.client.redrive_of(sent["redrive_id"])
        # The end offset is past the letters' transaction markers.
        (range_,) = redrive.ranges
        assert sent["redriven"] == BAD and range_[:2] == (0, 0) and range_[2] >= BAD

        # Killed mid-redrive: some letters committed, not all. Another worker resumes it.
        def midway() -> Progress | None:
            progress = platform.client.redrive_progress(redrive)
            return progress if 0 < progress.done < progress.total else None

        wait_until(midway, 60, "the redrive under way")
        first.kill()
        second = WorkerProcess(settings, "w2", tmp_path, env=env)
        platform.workers.append(second)
        second.wait_ready("lab/fix")
        wait_until(lambda: platform.client.redrive_progress(redrive).finished, 60,
                   "the redrive finished by the second worker")
        resumed = wait_until(lambda: re.search(
            rf"redrive {redrive.redrive_id} done: .*'redrive': (\d+)",
            second.log_path.read_text()), 10, "the second worker's word that it is done")
        assert resumed and 0 < int(resumed[1]) < BAD, "the kill came after the redrive ended"

        # Each dead letter served exactly once (or dead-lettered once more), its id kept.
        fixed_ids = {f"{d['topic']}:{d['partition']}:{d['offset']}" for d in first_letters
                     if "-2" not in d["original"].decode()}
        assert len(fixed_ids) == BAD - STILL_BAD
        wait_until(lambda: len(results()) >= RECORDS - STILL_BAD, 60, "the redriven served")
        wait_until(lambda: len(letters()) >= BAD + STILL_BAD, 60, "the still bad dead again")

        again = letters()[BAD:]
        assert len(again) == STILL_BAD
        by_key = {d["key"]: d for d in first_letters}
        assert len(by_key) == BAD
        for letter in again:
            before = by_key[letter["key"]]
            assert letter["redrive_count"] == 1 and letter["redrive_id"] == redrive.redrive_id
            assert "x[0] is -2" in letter["reason"] and letter["pipeline_version"] == 2
            assert (letter["topic"], letter["partition"], letter["offset"], letter["original"]
                    ) == (before["topic"], before["partition"], before["offset"],
                          before["original"])

        # A second redrive over the first one's range sends nothing again.
        second_run = run_cli(platform, capsys, "pipelines", "redrive", "fix", "--to",
                             redrive.created_at.isoformat(), "--json", "--timeout", "60")
        assert second_run["finished"] and second_run["redriven"] == 0
        assert second_run["skipped"] == {"already": BAD}
        marked = Counter(dict(m.headers() or []).get(REDRIVE_HEADER)
                         for m in read_until_end(settings, topic("input")))
        assert marked == {None: RECORDS, redrive.redrive_id.encode(): BAD}

        served = Counter(r["id"] for r in results())
        assert len(served) == RECORDS - STILL_BAD and set(served.values()) == {1}, \
            [i for i, n in served.items() if n > 1]
        assert fixed_ids <= set(served)
        assert {r["pipeline_version"] for r in results() if r["id"] in fixed_ids} == {2}
        status = run_cli(platform, capsys, "pipelines", "redrive-status", redrive.redrive_id,
                         parse=False)
        assert f"redrove {BAD} of {BAD} dead letters (redrive {redrive.redrive_id})" in status
        listed = run_cli(platform, capsys, "pipelines", "redrives", "fix", "--json")
        assert [r["redrive_id"] for r in listed] == [redrive.redrive_id,
                                                      second_run["redrive_id"]]
        assert all(r["finished"] for r in listed)
    finally:
        platform.close()
