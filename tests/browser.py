"""Browser tests of the web console: headless Chromium driven by Playwright, and the console
itself as a process of its own.

A test module imports the fixtures and helpers it uses:

    from tests.browser import browser_fixture, page_fixture, console_at, screenshot  # noqa: F401

`secured` is a secured platform with a console (root, ann owning lab with vera a viewer, olga
owning secretws), `sign_in` signs a page in, `browser_test` marks a test browser, kafka, slow.
`page` fails its test on any console error or uncaught page error; `screenshot(page, name)`
writes `<artifacts>/<name>.png`, where artifacts is $INFERSTREAM_ARTIFACTS/console, else
test-artifacts/console in the repository (ignored by git), which CI keeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import pytest

from control.client import Client
from control.config import Settings
from control.local.demo_models import build_onnx_classifier
from control.registrar import Registrar

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: Playwright's own download cannot run
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]


def artifacts() -> Path:
    """Where screenshots go: $INFERSTREAM_ARTIFACTS/console, else test-artifacts/console."""
    base = os.environ.get("INFERSTREAM_ARTIFACTS")
    folder = Path(base) / "console" if base else ROOT / "test-artifacts" / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Any, name: str) -> Path:
    """A full-page PNG of what the page shows now, named for the test that took it."""
    path = artifacts() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    """Headless Chromium for the module; skipped without it, except under CI, where it fails."""
    if not CHROMIUM.exists():
        why = f"no browser at {CHROMIUM}: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(name="page")
def page_fixture(browser: Any) -> Iterator[Any]:
    """A fresh browser context and page; the test fails on any console error or page error.

    `page.problems` lists them so far (to check midway); a test that means to get an HTTP error
    status (a refused sign-in) adds the URL's path to `page.expected_statuses`.
    """
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.expected_statuses = []

    def console(message: Any) -> None:
        if message.type != "error":
            return
        url = str(message.location.get("url", ""))
        if message.text.startswith("Failed to load resource") and any(
                urlsplit(url).path == path for path in page.expected_statuses):
            return
        problems.append(f"console {message.type}: {message.text} ({url})")

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.problems = problems
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()
    assert not problems, "the browser reported errors:\n" + "\n".join(problems)


def console_env(settings: Settings) -> dict[str, str]:
    """The environment a console process of this platform needs (plain settings only)."""
    env = {**os.environ, "INFERSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "INFERSTREAM_NAMESPACE": settings.namespace, "INFERSTREAM_DATA_DIR":
           str(settings.data_dir), "INFERSTREAM_DELIVERY": settings.delivery}
    if settings.clickhouse_url:
        env["INFERSTREAM_CLICKHOUSE_URL"] = settings.clickhouse_url
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def console_at(settings: Settings, log_dir: Path, timeout: float = 90.0) -> Iterator[str]:
    """`python -m control.console` for the platform of `settings` on a free loopback port, as
    `inferstream up` starts it; yields its base URL once /healthz answers, stops it on leaving."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "console.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "control.console", "--bind", "127.0.0.1", "--port", str(port)],
            env=console_env(settings), stdout=log, stderr=subprocess.STDOUT,
            cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"the console exited with {proc.returncode}:\n"
                                         + log_path.read_text(errors="replace")[-4000:])
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("the console did not answer /healthz within "
                                         f"{timeout:g}s:\n" + log_path.read_text()[-4000:])
                time.sleep(0.1)  # polling a starting process: no condition to wait on instead
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def browser_test(test: Any) -> Any:
    """A test in Chromium against a real broker: marked browser, kafka and slow."""
    return pytest.mark.browser(pytest.mark.kafka(pytest.mark.slow(test)))


# -- a secured platform ----------------------------------------------------------------------


@pytest.fixture(scope="module", name="secured")
def secured_fixture(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """root (admin) secures the platform; ann owns lab, where vera is a viewer; olga owns
    secretws. Each owner uploads a model and deploys a pipeline. No worker: the pages read
    the registry and the statuses."""
    tmp = tmp_path_factory.mktemp("console-secured")
    settings = Settings(bootstrap_servers=broker.bootstrap, namespace=f"cs{uuid4().hex[:8]}",
                        data_dir=tmp / "data", credentials_file=tmp / "credentials.json")
    registrar = Registrar(settings).start()
    root = Client(settings, user="root")
    root.bootstrap_admin("root", key_file=tmp / "root.key")
    users = {"root": root}
    for name in ("ann", "vera", "olga"):
        root.create_user_with_key(name, key_file=tmp / f"{name}.key")
        users[name] = Client(settings, user=name, key=tmp / f"{name}.key")
    clf = build_onnx_classifier(tmp / "clf.onnx")
    for owner, ws in (("ann", "lab"), ("olga", "secretws")):
        c = users[owner]
        c.workspace = ws
        c.create_workspace(ws)
        c.upload_model(f"{ws}-model", clf)
        c.create_pipeline(f"{ws}-pipe")
        c.create_pipeline_version(f"{ws}-pipe", [{"model": f"{ws}-model"}])
        c.deploy(f"{ws}-pipe")
    users["ann"].add_member("vera", "viewer")
    _, read_key = users["ann"].create_api_key("console", ("read",))
    _, infer_key = users["ann"].create_api_key("infer-only", ("infer",))
    try:
        with console_at(settings, tmp / "console") as url:
            yield {"url": url, "users": users, "read_key": read_key, "infer_key": infer_key,
                   "settings": settings}
    finally:
        for c in users.values():
            c.close()
        registrar.stop()


def sign_in(page: Any, url: str, user: str, credential: str) -> None:
    page.goto(url + "/")
    assert page.url.startswith(url + "/login")
    page.fill('input[name="user"]', user)
    page.fill('input[name="credential"]', credential)
    page.click('button[type="submit"]')
