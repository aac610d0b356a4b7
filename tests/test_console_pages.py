"""The console's data pages in headless Chromium against a real platform: inference logs (filters,
pages, CSV/Parquet export), dead letters (hostile bytes shown as text or hex), assays (charts
and badges), tasks and runs. Each shows what the client and CLI show for the same platform; a
viewer of a secured platform sees no other workspace. Screenshots via tests/browser.py."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from control.client.log_export import LogExport
from control.config import Settings
from control.console.dead_letters import SHOWN_BYTES, shown
from control.kafka import producer
from control.local.demo_models import build_onnx_classifier, iris_rows
from control.local.worker_process import WorkerProcess
from control.registry.alert_rules import describe
from sinks.access import read_owner
from sinks.log_queries import LogFilter, count_upto
from sinks.storage import Storage
from sinks.tables import LOG_ROWS, log_rows
from tests.browser import (  # noqa: F401
    browser_fixture,
    browser_test,
    console_at,
    page_fixture,
    screenshot,
    secured_fixture,
    sign_in,
)
from tests.helpers import wait_until
from tests.worker_platform import Namespace, json_records, own_settings

PAGES = {"logs": "/logs", "dead-letters": "/dead-letters", "assays": "/assays", "rules": "/rules",
         "runs": "/runs"}
SCRIPT = b'<script>document.title="owned"</script>'
NOT_UTF8 = SCRIPT + b"\xff\xfe\x80 not utf-8"
GOOD = 130  # records inferred: two pages of logs


# -- pure parts ------------------------------------------------------------------------------


def test_bytes_show_as_text_or_hex_and_long_ones_are_cut_with_their_size() -> None:
    assert shown(SCRIPT).kind == "text" and shown(SCRIPT).text == SCRIPT.decode()
    assert shown(NOT_UTF8).kind == "hex" and shown(NOT_UTF8).text.startswith("3c 73 63")
    assert shown(None).kind == "empty"
    long = ("é" * SHOWN_BYTES).encode()  # two bytes a character: the cut splits one
    cut = shown(long)
    assert cut.kind == "text" and cut.cut and cut.size == 2 * SHOWN_BYTES
    assert cut.text == "é" * (SHOWN_BYTES // 2)


def _log(i: int, error: str | None = None) -> dict[str, Any]:
    return {"time": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
            "record_id": f"r{i}", "workspace": "lab", "pipeline": "p", "pipeline_version": 1,
            "step": 0, "model": "clf", "model_version": 1, "shadow": False,
            "inputs": [{"name": "x", "dtype": "float64", "shape": [1, 1], "values": [1.0]}],
            "outputs": [], "elapsed_us": 5, "worker": "w1", "error": error}


def test_count_upto_stops_at_its_cap(storage: Storage) -> None:
    storage.insert(LOG_ROWS, log_rows([_log(i, "bad" if i % 3 == 0 else None)
                                       for i in range(30)]))
    where = LogFilter(workspace="lab", pipeline="p")
    assert count_upto(storage, where, 1000) == 30
    assert count_upto(storage, where, 7) == 7
    failed = LogFilter(workspace="lab", pipeline="p", only_failures=True)
    assert count_upto(storage, failed, 1000) == 10
    assert count_upto(storage, LogFilter(workspace="lab", pipeline="q"), 5) == 0


# -- an open platform with a worker that owns the storage --------------------------------------


def iris_parquet(path: Path, n: int, bad: tuple[int, ...]) -> Path:
    rows = np.resize(iris_rows(), (n, 4))
    inputs = [r.tolist()[:3] if i in bad else r.tolist() for i, r in enumerate(rows)]
    pq.write_table(pa.table({"id": [f"t{i:03d}" for i in range(n)], "float_input": inputs}),
                   path)
    return path


class Lab(Namespace):
    """ann's lab: pipeline p (clf) served by w1, which owns the chDB folder of these settings;
    logs, dead letters with hostile bytes, a paused assay with scored windows, a finished run."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        super().__init__(settings, tmp)
        c = self.client
        c.upload_model("clf", build_onnx_classifier(tmp / "clf.onnx"))
        c.create_pipeline("p")
        c.create_pipeline_version("p", [{"model": "clf"}])
        w1 = WorkerProcess(settings, "w1", tmp, data_dir=settings.data_dir,
                           env={"INFERSTREAM_ASSAY_TICK_S": "1", "INFERSTREAM_TASK_TICK_S": "0.5"})
        self.workers.append(w1)
        w1.wait_ready()
        wait_until(lambda: read_owner(settings), 60, "w1 owns the storage")
        c.deploy("p", worker_wait=60)
        w1.wait_ready("lab/p")

    def fill(self) -> None:
        c = self.client
        # First the run (its records are logged too), then the logs all the pages count.
        c.create_connection("iris", "file", {"path": str(iris_parquet(self.tmp / "iris.parquet",
                                                                     25, bad=(3,)))})
        c.create_connection("out", "file", {"path": str(self.tmp / "out-{run_id}.jsonl")})
        c.create_orchestration("nightly", source="iris", pipelines=["p"], destination="out",
                               carry=["id"])
        self.run = c.wait_for_run(c.create_task("nightly-once", "nightly").event_id, 120)
        assert (self.run.status, self.run.records_out, self.run.records_bad) == (
            "partially succeeded", 24, 1)
        replies = c.infer("p", [*json_records(GOOD), {"id": "bad", "float_input": [1.0]}])
        assert sum(not r.ok for r in replies) == 1
        p = producer(self.settings)
        for key, value in ((b"hostile-1", SCRIPT), (b"hostile-2", NOT_UTF8),
                           (b"big", b"x" * (3 * SHOWN_BYTES))):
            p.produce(self.settings.pipeline_topic("lab", "p", "input"), key=key, value=value)
        p.flush(10)
        wait_until(lambda: c.count_logs("p") >= GOOD + 24, 60, "the logs are stored")
        # Windows of the past, over logs already stored: the worker backfills them with data.
        first = min(r["time"] for r in c.logs("p", limit=None)).replace(microsecond=0)
        # A rule made before the assay sees its warnings; p has no older version to go back
        # to, so each rollback it publishes is refused, with the alert in the audit.
        c.create_rule("guard", "p", "rollback", on=("warning", "alert"))
        c.create_assay("drift", pipeline="p", model="clf", field="probabilities", index=1,
                       baseline_values=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], width=timedelta(seconds=1),
                       first_window_start=first, binning="equal", bins=4,
                       warning_threshold=0.1, alert_threshold=1.0)
        wait_until(lambda: len([r for r in c.assay_results("drift") if r.score is not None])
                   >= 1, 60, "a scored window of the assay")
        c.pause_assay("drift")  # its results stay as they are while pages and client compare


@pytest.fixture(scope="module")
def lab(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    tmp = tmp_path_factory.mktemp("console-pages")
    platform = Lab(own_settings(broker.bootstrap, "cp", tmp / "data", pipeline_partitions=2),
                   tmp)
    try:
        platform.fill()
        with console_at(platform.settings, tmp / "console") as url:
            yield platform, url
    finally:
        platform.close()


@browser_test
def test_every_page_loads_without_errors(lab, page) -> None:
    _, url = lab
    for name, path in PAGES.items():
        page.goto(url + path)
        assert page.locator(f'.bar nav a[href="{path}"]').get_attribute("aria-current") == "page"
        screenshot(page, f"pages-{name}")


@browser_test
def test_logs_show_the_clients_count_and_rows_page_by_page(lab, page) -> None:
    platform, url = lab
    c = platform.client
    page.goto(f"{url}/logs?workspace=lab&pipeline=p")
    total = c.count_logs("p")
    assert page.locator('#log-count [data-field="total"]').inner_text() == str(total)
    newest = [r["record_id"] for r in c.logs("p", limit=100)][::-1]
    assert page.locator("#logs tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.record)") == newest
    screenshot(page, "logs")
    page.click("text=older")
    older = [r["record_id"] for r in c.logs("p", limit=None)][: total - 100][::-1]
    assert page.locator("#logs tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.record)") == older
    # Filters: failures, a version, a model; a time range that holds nothing.
    for query, want in [("failures=on", c.count_logs("p", only_failures=True)),
                        ("version=1&model=clf", c.count_logs("p", pipeline_version=1,
                                                             model="clf")),
                        ("to=2000-01-01T00:00", 0)]:
        page.goto(f"{url}/logs?workspace=lab&pipeline=p&{query}")
        assert page.locator('#log-count [data-field="total"]').inner_text() == str(want), query
    screenshot(page, "logs-filtered")


def client_export(platform: Lab, path: Path, **filters: Any) -> Path:
    """What `inferstream logs p --export PATH` writes (its writer over the client's pages)."""
    export = LogExport(path, 10**9, split=False)
    for rows in platform.client.iter_logs("p", **filters):
        export.write(rows)
    export.close()
    return path


@browser_test
def test_export_downloads_what_the_cli_exports(lab, page, tmp_path: Path) -> None:
    platform, url = lab
    page.goto(f"{url}/logs?workspace=lab&pipeline=p&model=clf")
    with page.expect_download() as got:
        page.click("#export-csv")
    csv_path = tmp_path / got.value.suggested_filename
    got.value.save_as(csv_path)
    assert csv_path.name == "lab-p-logs.csv"
    want = client_export(platform, tmp_path / "cli.csv", model="clf")
    shown_rows = list(csv.DictReader(csv_path.open()))
    assert len(shown_rows) == platform.client.count_logs("p", model="clf") >= 100
    assert shown_rows == list(csv.DictReader(want.open()))
    with page.expect_download() as got:
        page.click("#export-parquet")
    got.value.save_as(tmp_path / "page.parquet")
    want = client_export(platform, tmp_path / "cli.parquet", model="clf")
    assert pq.read_table(tmp_path / "page.parquet").to_pylist() == \
        pq.read_table(want).to_pylist()


@browser_test
def test_dead_letters_show_hostile_bytes_as_text(lab, page) -> None:
    _, url = lab
    page.goto(f"{url}/dead-letters?workspace=lab&pipeline=p")

    def letters() -> int:
        page.reload()
        return page.locator(".letter").count() >= 4

    wait_until(letters, 30, "four dead letters")
    assert page.locator("main script").count() == 0 and page.title() != "owned"
    text = page.inner_text("main")
    assert SCRIPT.decode() in text  # shown as text, escaped
    hexed = page.locator(".letter pre.bytes.hex")
    assert hexed.count() == 1 and "ff fe 80" in hexed.inner_text()
    big = page.locator('.original .size[data-size="6144"]')
    assert f"the first {SHOWN_BYTES} shown" in big.inner_text()
    assert len(page.locator(".letter").filter(has=big).locator("pre").last.inner_text()) \
        == SHOWN_BYTES
    assert "float_input" in text  # the shape error of the record {"float_input": [1.0]}
    screenshot(page, "dead-letters")


@browser_test
def test_assay_shows_the_clients_results_as_charts(lab, page) -> None:
    platform, url = lab
    results = platform.client.assay_results("drift")
    page.goto(url + "/assays")
    row = page.locator('#assays tr[data-assay="lab/drift"]')
    assert row.locator(".badge").get_attribute("data-status") == results[-1].status
    assert "paused" in row.inner_text()
    page.goto(f"{url}/assays?workspace=lab&assay=drift")
    page.wait_for_selector("#score-chart[data-drawn]")
    assert page.locator("#score-chart").get_attribute("data-drawn") == str(len(results))
    assert page.locator("#score-chart canvas").count() == 1
    assert page.locator("#density-chart canvas").count() == 1
    shown_rows = page.locator("#windows tbody tr")
    assert shown_rows.count() == len(results)
    for r, tr in zip(reversed(results), shown_rows.all(), strict=True):
        assert tr.get_attribute("data-start") == r.window_start.isoformat()
        score = "-" if r.score is None else f"{r.score:.6f}"
        assert tr.locator('[data-field="score"]').inner_text() == score
        assert tr.locator(".badge").get_attribute("data-status") == r.status
    data = json.loads(page.request.get(
        f"{url}/assays/data?workspace=lab&assay=drift").text())
    assert [w["score"] for w in data["windows"]] == [r.score for r in results]
    assert [w["window"] for w in data["windows"]] == [list(r.window_densities) for r in results]
    assert (data["warning"], data["alert"]) == (0.1, 1.0)
    # Another window's densities, picked in the list.
    scored = next(i for i, r in enumerate(results) if r.score is not None)
    page.select_option("#window-pick", str(scored))
    assert float(page.locator("#density-chart").get_attribute("data-window")) == \
        results[scored].window_start.timestamp()
    screenshot(page, "assay")


@browser_test
def test_runs_show_the_clients_counts_and_log_lines(lab, page) -> None:
    platform, url = lab
    run = platform.client.run(platform.run.run_id)
    page.goto(url + "/runs")
    assert "once" in page.locator('#tasks tr[data-task="lab/nightly-once"]').inner_text()
    row = page.locator(f'#runs tr[data-run="{run.run_id}"]')
    assert [row.locator(f'[data-field="{f}"]').inner_text() for f in ("in", "out", "bad")] == [
        str(run.records_in), str(run.records_out), str(run.records_bad)]
    assert row.locator(".badge").get_attribute("data-status") == "partially succeeded"
    row.locator("a").first.click()
    lines = platform.client.run_logs(run.run_id)
    assert lines and page.locator("#run-log span").count() == len(lines)
    assert all(line["message"] in page.inner_text("#run-log") for line in lines)
    screenshot(page, "run")


@browser_test
def test_rules_show_each_rule_and_the_actions_it_took(lab, page) -> None:
    platform, url = lab
    c = platform.client
    actions = wait_until(lambda: c.rule_actions("guard"), 60, "the rule acted on a warning")
    page.goto(url + "/rules")
    row = page.locator('#rules tr[data-rule="lab/guard"]')
    assert row.locator('[data-field="action"]').inner_text() == "rollback to the version before"
    assert row.locator('[data-field="fired"]').inner_text() == "0"  # refused: nothing fired
    first = page.locator(f'#actions tr[data-event="{actions[0].event_id}"]')
    assert "rejected: pipeline 'p' has no deployed version older than 1" in first.locator(
        '[data-field="outcome"]').inner_text()
    cause = first.locator('[data-field="cause"]').inner_text()
    assert cause == describe(actions[0].payload["cause"])
    assert cause.startswith(f"{actions[0].payload['cause']['status']} of assay drift-")
    screenshot(page, "rules")


# -- a secured platform (tests/test_console.py's): a viewer sees only lab ----------------------


@browser_test
def test_a_viewer_sees_no_other_workspace_on_these_pages(secured, page) -> None:
    url = secured["url"]
    olga = secured["users"]["olga"]
    olga.create_assay("secret-drift", pipeline="secretws-pipe", model="secretws-model",
                      field="probabilities", baseline_values=[0.1, 0.5],
                      first_window_start=datetime.now(UTC), width=timedelta(hours=1))
    sign_in(page, url, "vera", secured["read_key"])
    page.wait_for_url(url + "/")
    for name, path in PAGES.items():
        page.goto(url + path)
        text = page.inner_text("body")
        assert "secret" not in text, f"{name} shows another workspace"
        assert "vera (API key of lab)" in text
        screenshot(page, f"pages-secured-viewer-{name}")
    page.goto(url + "/assays")
    assert page.locator("#assays tbody tr").count() == 0
    page.goto(url + "/logs")
    assert page.locator("#pipelines a").all_inner_texts() == ["lab/lab-pipe"]
    for path in ("/logs?workspace=secretws&pipeline=secretws-pipe",
                 "/logs/export?workspace=secretws&pipeline=secretws-pipe",
                 "/dead-letters?workspace=secretws&pipeline=secretws-pipe",
                 "/assays?workspace=secretws&assay=secret-drift",
                 "/assays/data?workspace=secretws&assay=secret-drift",
                 "/runs?workspace=secretws"):
        answer = page.request.get(url + path)
        assert answer.status == 404, path
        assert "secret-drift" not in answer.text() and "secretws-pipe" not in answer.text()
