"""A worker in a process of its own, as an operator would run it: `inferstream worker`.

`inferstream up` starts one this way, and so do the tests.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from control.config import Settings
from control.local.brokers import free_port
from control.local.child_process import LoggedProcess, child_env
from schemas.errors import InferstreamError


class WorkerProcess(LoggedProcess):
    """Starts `inferstream worker` for a platform and waits until it is ready."""

    def __init__(self, settings: Settings, name: str, log_dir: Path,
                 data_dir: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.settings = settings.model_copy(update={"worker_web_port": self.port})
        self.url = self.settings.worker_url
        self._tls = self.settings.http_client_tls() if self.url.startswith("https:") else None
        env = {**child_env(settings, data_dir or log_dir / name),
               "INFERSTREAM_WORKER_NAME": name, **(env or {})}
        super().__init__([sys.executable, "-m", "control.cli", "worker", "--web-port",
                          str(self.port), "--loglevel", "info"], env, log_dir / f"{name}.log")

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2,
                                        context=self._tls) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def wait_ready(self, serving: str | None = None, timeout: float = 90.0) -> dict:
        """Block until the worker has replayed the registry and takes records (and serves
        `serving`, e.g. 'ws/pipeline')."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise InferstreamError(f"worker {self.name} exited:\n{self.tail()}")
            h = self.health()
            # Replayed and live: a worker that refuses one version still serves the others.
            if h and h["replayed"] and h["live"] and (serving is None or serving in h["serving"]):
                return h
            if time.monotonic() > deadline:
                raise InferstreamError(
                    f"worker {self.name} not ready ({serving or 'any'}) in {timeout:g}s; "
                    f"its log: {self.log_path}")
            time.sleep(0.2)

    def post(self, path: str, body: bytes,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.url}{path}", data=body, method="POST",
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._tls) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.process.send_signal(sig)
        self.process.wait(30)

