"""Progress reports leave the training step at once: a slow operator never stalls training.

A real HTTP server on 127.0.0.1 that takes a second per request stands in for the
operator's progress API; the trainer's real step callback reports to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from maap_api.results import TrainedMetrics
from maap_trainer import progress
from maap_trainer.progress import (
    PROGRESS_TOKEN_ENV,
    PROGRESS_URL_ENV,
    ProgressReport,
    RemoteReporter,
    read_progress,
    write_progress,
)

REPO = Path(__file__).resolve().parents[1]
DELAY = 1.0  # seconds the slow server takes to answer each report


@dataclass
class SlowServer:
    url: str
    received: list[dict] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def stages(self) -> list[str]:
        return [r["stage"] for r in self.received]


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    state = SlowServer("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(DELAY)
            state.received.append(json.loads(body))
            state.tokens.append(self.headers.get("Authorization", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/v1/progress/team-a/demo"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def reporting_to(slow_server: SlowServer, monkeypatch: pytest.MonkeyPatch) -> SlowServer:
    monkeypatch.setenv(PROGRESS_URL_ENV, slow_server.url)
    monkeypatch.setenv(PROGRESS_TOKEN_ENV, "t0k3n")
    return slow_server


def test_step_callback_never_waits_for_a_slow_operator(
    reporting_to: SlowServer, tmp_path: Path
) -> None:
    from maap_trainer.train.callbacks import progress_callback
    from transformers import TrainerControl, TrainerState

    callback = progress_callback(tmp_path)
    state = TrainerState(max_steps=20, is_world_process_zero=True)
    callback.on_train_begin(None, state, TrainerControl())
    slowest = 0.0
    for step in range(1, 21):
        state.global_step = step
        started = time.monotonic()
        callback.on_step_end(None, state, TrainerControl())
        slowest = max(slowest, time.monotonic() - started)
    # A synchronous POST would make the first step wait the server's full second.
    assert slowest < DELAY / 4, f"a step waited {slowest:.2f} s for the progress report"
    assert read_progress(tmp_path).step == 20, "progress.json is written at once"

    metrics = TrainedMetrics(eval_loss_before=2.0, eval_loss_after=1.0, train_tokens=640)
    write_progress(tmp_path, ProgressReport(stage="trained", step=20, total_steps=20,
                                            metrics=metrics))  # fmt: skip
    assert progress.close_progress(timeout=10 * DELAY), "the final report was not delivered"
    received = reporting_to.received
    # 21 reports, coalesced: an early step's went out, the newer ones replaced each other
    # while it was in flight, and the stage change sent the final one without waiting.
    assert 2 <= len(received) <= 3, reporting_to.stages()
    assert received[0]["stage"] == "training" and received[0]["step"] < 20
    assert received[-1]["stage"] == "trained"
    assert received[-1]["metrics"]["trainTokens"] == 640
    assert set(reporting_to.tokens) == {"Bearer t0k3n"}


def test_reports_of_one_stage_are_spaced_and_only_the_newest_is_sent(
    reporting_to: SlowServer,
) -> None:
    reporter = RemoteReporter(min_interval=0.0)
    for step in range(1, 51):
        reporter.send(ProgressReport(stage="training", step=step, total_steps=50))
    assert reporter.close(timeout=10 * DELAY)
    steps = [r["step"] for r in reporting_to.received]
    assert steps[-1] == 50, steps
    assert len(steps) <= 3 and steps == sorted(steps), steps
    assert reporter.posted == len(steps)


def test_close_is_bounded_when_the_operator_is_slow(reporting_to: SlowServer) -> None:
    reporter = RemoteReporter(min_interval=0.0)
    reporter.send(ProgressReport(stage="exported", step=1, total_steps=1))
    assert reporter.close(timeout=0.05) is False, "the report was still in flight"
    assert reporter.close(timeout=10 * DELAY) is True
    assert reporting_to.stages() == ["exported"]


def test_the_final_report_is_delivered_when_the_process_exits(reporting_to: SlowServer) -> None:
    script = (
        "from pathlib import Path; import tempfile\n"
        "from maap_trainer.progress import ProgressReport, write_progress\n"
        "out = Path(tempfile.mkdtemp())\n"
        "for step in range(1, 6):\n"
        "    write_progress(out, ProgressReport(stage='training', step=step, total_steps=5))\n"
        "write_progress(out, ProgressReport(stage='trained', step=5, total_steps=5))\n"
        # No explicit close: the exit handler flushes.
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert reporting_to.stages()[-1] == "trained", reporting_to.stages()
    assert len(reporting_to.received) <= 3


def test_no_url_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROGRESS_URL_ENV, raising=False)
    reporter = RemoteReporter()
    reporter.send(ProgressReport(stage="training"))
    assert reporter.close(timeout=0.01) and reporter.posted == 0
    assert reporter._thread is None


def test_an_unreachable_operator_is_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from maap_trainer.ports import free_port

    monkeypatch.setenv(PROGRESS_URL_ENV, f"http://127.0.0.1:{free_port()}/v1/progress/a/b")
    reporter = RemoteReporter(min_interval=0.0)
    reporter.send(ProgressReport(stage="trained"))
    assert reporter.close(timeout=10)
    assert reporter.posted == 1
    assert "could not report progress (trained)" in caplog.text
