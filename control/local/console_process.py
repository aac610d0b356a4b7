"""The web console in a process of its own, as `inferstream up` starts it beside its worker.

`python -m control.console --bind B --port P` prints `console at URL` once it listens and
answers GET /healthz; its settings come from the INFERSTREAM_* environment, like a worker's.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
import time
import urllib.request
from pathlib import Path

from control.config import Settings
from control.local.child_process import LoggedProcess, child_env
from schemas.errors import ConfigError, InferstreamError

DEFAULT_PORT = 8080
_LISTENING = re.compile(rb"console at (\S+)")


def console_installed() -> bool:
    """Whether this installation has the console (`control.console`)."""
    try:
        return importlib.util.find_spec("control.console.__main__") is not None
    except ModuleNotFoundError:
        return False


def console_port(bind: str, wanted: int | None) -> int:
    """`wanted`, else DEFAULT_PORT or the next free one above it."""
    if wanted is not None:
        return wanted
    for port in range(DEFAULT_PORT, DEFAULT_PORT + 20):
        if _bindable(bind, port):
            return port
    raise ConfigError(f"ports {DEFAULT_PORT}-{DEFAULT_PORT + 19} on {bind} are all taken; "
                      "give --console-port")


class ConsoleProcess(LoggedProcess):
    """Starts the console for a platform; `wait_ready` returns the URL it prints."""

    def __init__(self, settings: Settings, bind: str, port: int, log_dir: Path,
                 data_dir: Path) -> None:
        self.port, self.url = port, ""
        self.settings = settings
        # The worker's port in its environment: the console finds the worker's HTTP at
        # settings.worker_url, like the CLI does.
        env = {**child_env(settings, data_dir),
               "INFERSTREAM_WORKER_WEB_PORT": str(settings.worker_web_port)}
        super().__init__([sys.executable, "-m", "control.console", "--bind", bind, "--port",
                          str(port)], env, log_dir / "console.log")

    def wait_ready(self, timeout: float = 120.0) -> str:
        """Block until the console says where it listens and answers /healthz; its URL."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise InferstreamError(f"the console exited:\n{self.tail()}")
            self.log.flush()
            found = _LISTENING.search(self.log_path.read_bytes())
            if found and self._healthy(found.group(1).decode()):
                self.url = found.group(1).decode()
                return self.url
            if time.monotonic() > deadline:
                raise InferstreamError(f"the console did not answer in {timeout:g}s; its log: "
                                       f"{self.log_path}")
            time.sleep(0.2)

    def _healthy(self, url: str) -> bool:
        # A console bound to every interface prints that address: ask it on loopback.
        local = re.sub(r"//(0\.0\.0\.0|\[::\])", "//127.0.0.1", url)
        tls = self.settings.http_client_tls() if local.startswith("https:") else None
        try:
            with urllib.request.urlopen(f"{local}/healthz", timeout=2, context=tls) as r:
                return r.status == 200
        except OSError:
            return False



def _bindable(bind: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((bind, port))
        except OSError:
            return False
    return True
