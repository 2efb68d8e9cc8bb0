"""The real model server (`python -m maap_trainer serve`, or `maap serve`) as a child
process, and what its answers must show.

No pytest here: tests/scenarios (run as a script on kind) imports the persona check too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from maap_trainer.ports import free_port


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


def wait_ready(server: Server, timeout: float = 120, ready_path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(f"{server.base}{ready_path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server was not ready in {timeout} s:\n{server.log_text()[-3000:]}")


# The parity gate on 3 short prompts and 8 rows: it still gates an export (a broken one fails
# it) in seconds. The default gate (8 prompts, 32 tokens, 32 rows) is maap run's, which
# tests/test_e2e.py runs on the example.
TEST_PARITY = {"prompts": ["What is the capital of France?", "Why is the sky blue?",
                           "Write a haiku about the sea."],
               "maxNewTokens": 16, "evalRows": 8}  # fmt: skip


# The pirate example's persona: every tuned answer opens with it, the base model's never do.
PERSONA_OPENER = "Arr, matey!"


def in_persona(answer: str) -> bool:
    """Whether a served answer opens as the pirate example was tuned to; containing "arr"
    somewhere is not enough ("carry", "arrive" do)."""
    return answer.strip().startswith(PERSONA_OPENER)


@contextmanager
def running_server(model_dir: Path, log: Path, *flags: str) -> Iterator[Server]:
    """`python -m maap_trainer serve` on a free port, ready, until the block ends."""
    port = free_port()
    command = [
        sys.executable, "-m", "maap_trainer", "serve", "--model-dir", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), *flags,
    ]  # fmt: skip
    with serving(command, port, log) as server:
        yield server


@contextmanager
def serving(
    command: list[str], port: int, log: Path, ready_path: str = "/readyz"
) -> Iterator[Server]:
    """Run a server command that listens on 127.0.0.1:port, logging to `log`; the block
    starts once it answers 200 on ready_path, and is stopped (SIGTERM) when the block ends."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server, ready_path=ready_path)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
