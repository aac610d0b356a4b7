"""The web console in headless Chromium against real platforms: an open one with a worker serving
real models, and a secured one with members of two workspaces. Every page loads without a
browser error, shows what the CLI shows, and is screenshotted (tests/browser.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.heartbeat import Heartbeat
from control.cli import main
from control.config import Settings
from control.console.app import warn_if_exposed
from control.console.feeds import Rate, rates_of
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
from tests.worker_platform import Platform, json_records, serving

PAGES = {"overview": "/", "models": "/models", "pipelines": "/pipelines", "audit": "/audit"}
HOSTILE = '<img src=x onerror="document.title=1">'  # must show as text, never as markup


def beat(seconds: float, **totals: tuple[int, int, int]) -> Heartbeat:
    return Heartbeat("w1", datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds), 1.0,
                     True, True, metrics={name: {"in": i, "out": o, "dead": d}
                                          for name, (i, o, d) in totals.items()})


def test_rates_are_the_growth_between_two_heartbeats_per_second() -> None:
    first, second = beat(0, **{"lab/p": (10, 10, 0)}), beat(2, **{"lab/p": (30, 28, 2)})
    assert rates_of([(first, second)]) == {"lab/p": Rate(10.0, 9.0, 1.0)}
    # Two workers add up; a restarted one (totals from zero) is no negative rate; a worker
    # seen once, or twice at one time, has no rate yet.
    restarted = (beat(0, **{"lab/p": (500, 500, 0)}), beat(1, **{"lab/p": (4, 4, 0)}))
    assert rates_of([(first, second), restarted, (None, second), (second, second)]) == {
        "lab/p": Rate(10.0, 9.0, 1.0)}


@pytest.fixture(scope="module")
def open_platform(broker, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[Platform, str]]:
    """A worker serving lab/p (clf v1, then v2) and lab/chain (a split and a shadow), some
    records inferred and one dead-lettered, and the console; heartbeats every second."""
    tmp = tmp_path_factory.mktemp("console-open")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFERSTREAM_HEARTBEAT_S", "1")
        with serving(broker.bootstrap, tmp, "con", keras=False) as platform:
            c = platform.client
            c.create_pipeline("p", description=HOSTILE)
            c.create_pipeline_version("p", [{"model": "clf", "version": 1}])
            c.create_pipeline_version("p", [{"model": "clf", "version": 2}])
            platform.deploy("p", 1)
            platform.pipeline("chain", [
                {"random_split": {"routes": [{"weight": 0.7, "model": "clf", "version": 1},
                                             {"weight": 0.3, "model": "clf", "version": 2}]}},
            ])
            c.create_pipeline_version("chain", [{"shadow": {
                "champion": {"model": "clf", "version": 1},
                "challengers": [{"model": "clf", "version": 2}]}}])
            replies = c.infer("p", [*json_records(20), {"id": "bad", "float_input": [1.0]}])
            assert sum(not r.ok for r in replies) == 1
            with console_at(platform.settings, tmp / "console") as url:
                yield platform, url


def cli_json(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """`inferstream --json` output of a command, as the CLI prints it (any exit code)."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--bootstrap-servers", settings.bootstrap_servers, "--namespace",
              settings.namespace, "--user", "ann", "--workspace", "lab", *args, "--json"])
        raise SystemExit(0)
    return json.loads(capsys.readouterr().out)


def row_figures(page: Any, deployment: str) -> dict[str, str]:
    row = page.locator(f'#deployments tr[data-deployment="{deployment}"]')
    return {f: row.locator(f'td[data-field="{f}"]').inner_text() for f in
            ("in", "out", "dead", "lag")}


def test_an_open_console_beyond_loopback_warns_loudly(capsys) -> None:
    for bind, secured, warned in [("0.0.0.0", False, True), ("192.0.2.7", False, True),
                                  ("127.0.0.1", False, False), ("localhost", False, False),
                                  ("::1", False, False), ("0.0.0.0", True, False)]:
        warn_if_exposed(bind, secured)
        assert ("OPEN" in capsys.readouterr().err) == warned, (bind, secured)


@browser_test
def test_every_page_loads_with_the_figures_the_cli_shows(open_platform, page, capsys) -> None:
    platform, url = open_platform
    for path in PAGES.values():
        page.goto(url + path)
        assert "Open platform" in page.locator(".open-banner").inner_text()
        assert page.locator("h1").inner_text() in ("Overview", "Models", "Pipelines",
                                                   "Audit log")
    # Overview: live, and the same totals as `inferstream status`, once the heartbeats carry
    # all the records (the page refreshes itself: no reload here).
    page.goto(url + "/")
    updated = page.locator("#live p.muted").inner_text()
    wait_until(lambda: page.locator("#live p.muted").inner_text() != updated, 10,
               "the Overview refreshes itself")

    def same() -> dict | None:
        cli = next(d for d in cli_json(platform.settings, capsys, "status")["deployments"]
                   if d["pipeline"] == "p")
        shown = row_figures(page, "lab/p")
        want = {"in": str(cli["records_in"]), "out": str(cli["records_out"]),
                "dead": str(cli["dead_lettered"]),
                "lag": "-" if cli["lag"] is None else str(cli["lag"])}
        return cli if shown == want and cli["records_in"] == 21 else None

    cli = wait_until(same, 30, "the Overview shows the totals of `inferstream status`")
    assert cli["dead_lettered"] == 1 and cli["serving"] == ["w1"]
    row = page.locator('#deployments tr[data-deployment="lab/p"]')
    assert "w1" in row.inner_text() and "v1" in row.inner_text()
    assert page.locator('#workers tr[data-worker="w1"]').inner_text().count("fresh") == 1
    screenshot(page, "overview")

    # Models: what `models get` says of every version.
    page.goto(f"{url}/models?workspace=lab&model=clf")
    model = cli_json(platform.settings, capsys, "models", "get", "clf")
    versions = model["versions"] if isinstance(model, dict) else model
    assert len(versions) == 2
    for v in versions:
        cells = page.locator(f'tr[data-version="{v["version"]}"]').inner_text()
        assert v["framework"] in cells and v["created_by"] in cells
        assert v["artifact"]["sha256"][:12] in cells
        assert all(s["name"] in cells for s in v["inputs"] + v["outputs"])
    screenshot(page, "models")

    # Pipelines: chains with their branches, and user text shown as text.
    page.goto(f"{url}/pipelines?workspace=lab")
    assert page.locator("main img").count() == 0 and HOSTILE in page.inner_text("main")
    chain = page.locator("#pipeline-lab-chain")
    assert chain.locator(".link-random-split .branch").count() == 2
    assert chain.locator(".link-shadow .branch.shadow").count() == 1
    assert "deployed v1" in page.locator("#pipeline-lab-p h2").inner_text()
    screenshot(page, "pipelines")

    page.goto(f"{url}/audit?workspace=lab&type=Deploy")
    assert page.locator('#audit tr[data-type="Deploy"]').count() == 1
    screenshot(page, "audit")


@browser_test
def test_a_rollback_shows_in_the_history_and_the_audit_log_within_seconds(
        open_platform, page) -> None:
    platform, url = open_platform
    page.goto(f"{url}/pipelines?workspace=lab&pipeline=p")
    platform.deploy("p", 2)
    platform.client.rollback("p")
    with pytest.raises(Exception, match="no deployed version older"):
        platform.client.rollback("p")  # rejected: v1 is the oldest, and the audit says why

    def history() -> list[str]:
        page.reload()
        rows = page.locator("#pipeline-lab-p table.history tbody tr").all_inner_texts()
        return rows if rows and rows[0].split("\t")[1:3] == ["Rollback", "v1"] else []

    rows = wait_until(history, 10, "the rollback in the deployment history")
    assert [r.split("\t")[1:3] for r in rows[:3]] == [["Rollback", "v1"], ["Deploy", "v2"],
                                                       ["Deploy", "v1"]]
    screenshot(page, "pipelines-after-rollback")

    def audited() -> bool:
        page.goto(f"{url}/audit?workspace=lab&type=Rollback")
        return page.locator("#audit tbody tr").count() == 2

    wait_until(audited, 10, "both rollbacks in the audit log")
    rejected = page.locator('#audit tr[data-outcome="rejected"]')
    assert "no deployed version older" in rejected.inner_text()
    page.goto(f"{url}/audit?outcome=rejected&q=older")
    assert page.locator("#audit tbody tr").count() == 1
    screenshot(page, "audit-rollback")


# -- a secured platform ----------------------------------------------------------------------


def token_of(settings: Settings, user: str, capsys: pytest.CaptureFixture[str],
             key: Path) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--bootstrap-servers", settings.bootstrap_servers, "--namespace",
              settings.namespace, "--user", user, "--key-file", str(key), "console", "--token"])
        raise SystemExit(0)
    return capsys.readouterr().out.strip()


@browser_test
def test_a_viewer_sees_no_other_workspace(secured, page) -> None:
    url = secured["url"]
    sign_in(page, url, "vera", secured["read_key"])
    page.wait_for_url(url + "/")
    for name, path in PAGES.items():
        page.goto(url + path)
        text = page.inner_text("body")
        assert "secretws" not in text, f"{name} shows another workspace"
        assert "Open platform" not in text and "vera (API key of lab)" in text
        screenshot(page, f"secured-viewer-{name}")
    page.goto(url + "/")
    assert page.locator('#deployments tr[data-deployment="lab/lab-pipe"]').count() == 1
    # Asked for by name, the other workspace is as unknown as one that does not exist (a
    # request of the page's session: a 404 page would be a console error of the browser).
    for ws in ("secretws", "nosuchws"):
        answer = page.request.get(f"{url}/models?workspace={ws}")
        assert answer.status == 404 and "secretws" not in answer.text().replace(ws, "")
    page.goto(url + "/audit")
    assert page.locator("#audit tbody tr").count() > 0
    assert set(page.locator("#audit tbody tr td:nth-child(3)").all_inner_texts()) == {"lab"}
    page.click("text=sign out")
    page.goto(url + "/models")
    assert page.url.startswith(url + "/login")


@browser_test
def test_sign_in_refuses_what_does_not_hold(secured, page) -> None:
    url = secured["url"]
    page.expected_statuses.append("/login")  # each refusal answers 401 or 403
    for user, credential, says in [
        ("vera", secured["infer_key"], "needs one with scope read"),
        ("olga", secured["read_key"], "may not read workspace 'lab'"),
        ("vera", "isk_0123456789abcdef_" + "x" * 43, "not known to this platform"),
        ("vera", "hunter2", "unknown credential"),
    ]:
        sign_in(page, url, user, credential)
        assert says in page.locator(".error").inner_text()
        page.context.clear_cookies()
    # Without a session, pages and live fragments send the browser to sign in.
    for path in ("/", "/fragments/overview", "/audit"):
        request = urllib.request.Request(url + path, headers={"HX-Request": "true"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 401
        assert refused.value.headers["HX-Redirect"].startswith("/login?next=")
    # A sign-in posted from another site is refused outright.
    request = urllib.request.Request(url + "/login", data=b"user=vera&credential=x",
                                     headers={"Origin": "http://evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 403


@browser_test
def test_a_signed_token_shows_every_workspace_the_user_may_read(secured, page,
                                                                capsys) -> None:
    url, settings = secured["url"], secured["settings"]
    folder = settings.credentials_file.parent  # where the module's fixture wrote the keys
    sign_in(page, url, "olga", token_of(settings, "olga", capsys, folder / "olga.key"))
    page.wait_for_url(url + "/")
    page.goto(url + "/pipelines")
    text = page.inner_text("main")
    assert "secretws/secretws-pipe" in text and "lab/" not in text
    page.context.clear_cookies()
    sign_in(page, url, "root", token_of(settings, "root", capsys, folder / "root.key"))
    page.wait_for_url(url + "/")
    page.goto(url + "/pipelines")
    text = page.inner_text("main")
    assert "secretws/secretws-pipe" in text and "lab/lab-pipe" in text
    screenshot(page, "secured-admin-pipelines")
