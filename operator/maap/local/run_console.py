"""The console of a `maap run`: the gateway's app over the run's own job, in a thread.

It starts before training, so the loss curve can be watched as it grows, and stays up
while the run serves; its playground talks to the run's server through the gateway's
inference endpoint. When the job's server requires a bearer token, the console's API key
is that same token (the console never opens what the server keeps closed).
"""

from __future__ import annotations

import errno
import logging
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from rich.console import Console

from maap.gateway.app import GatewaySettings, create_app
from maap.gateway.console import PREFIX
from maap.gateway.files import FileStore
from maap.gateway.tenancy import DEFAULT_TENANT, KeyRing, OpenAccess, StaticKeys
from maap.local.run_job import RunBackend, RunJob
from maap.local.runner import LocalRunner
from maap.local.serving import connect_host

START_TIMEOUT_SECONDS = 15.0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `port`, or on any free port when that one is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in (port, 0):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or candidate == 0:
                raise
            continue
        sock.listen(128)
        return sock
    raise AssertionError("unreachable: port 0 always binds or raises")


class RunConsole:
    """Serves the console of one run until `stop()`."""

    def __init__(self, run: RunJob, token: str | None) -> None:
        self.run = run
        keys: KeyRing = StaticKeys({token: DEFAULT_TENANT}) if token else OpenAccess()
        self.files_dir = tempfile.TemporaryDirectory(prefix="maap-run-console-")
        files = FileStore(Path(self.files_dir.name))
        settings = GatewaySettings(file_secret=secrets.token_bytes(32), run_backend=False)
        self.app = create_app(RunBackend(run), keys, files, settings)
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""

    def start(self, host: str, port: int) -> str:
        """Listen (on `port`, or any free one if it is taken); returns the console's URL."""
        sock = bind(host, port)
        shown = connect_host(host)
        self.url = f"http://{shown}:{sock.getsockname()[1]}{PREFIX}/"
        # The run prints its own progress; the console's access log would only garble it.
        config = uvicorn.Config(self.app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="run-console", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the console did not start on {self.url}")
            time.sleep(0.05)
        logging.getLogger("maap.run").debug("console at %s", self.url)
        return self.url

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
        self.files_dir.cleanup()


def start_run_console(runner: LocalRunner, host: str, port: int, out: Console) -> RunConsole:
    """The run's console, up before training so the curve can be watched growing; its key
    is the serving token when the job's server will require one."""
    if runner.job is None:
        raise ValueError("the runner reports to no RunJob: set runner.job first")
    shown = RunConsole(runner.job, runner.serving_token())
    url = shown.start(host, port)
    key = " (API key: the serving token)" if runner.cfg.serving.auth_token_env else ""
    out.print(f"Console: {url}{key}", soft_wrap=True, highlight=False)
    return shown
