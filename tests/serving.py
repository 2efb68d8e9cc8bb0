"""Start the real model server (`python -m maap_trainer serve`) as a child process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    log: Path

    @property
    def api(self) -> str:
        return f"{self.base}/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(f"{server.base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server was not ready in {timeout} s:\n{server.log_text()[-3000:]}")


@contextmanager
def running_server(model_dir: Path, log: Path, *flags: str) -> Iterator[Server]:
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "maap_trainer", "serve", "--model-dir", str(model_dir),
             "--host", "127.0.0.1", "--port", str(port), *flags],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
