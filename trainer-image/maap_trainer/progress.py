"""The progress file: how a running stage tells the operator and the CLI where it is.

Written atomically (temp file + rename) so a reader never sees half a document, and, when
the operator asked for it (MAAP_PROGRESS_URL/TOKEN), posted to its progress API from a
background thread. Pydantic only, so the control plane can read it without torch.

While the train stage records a training history (maap_api.history), every report it
writes carries the newest points and checkpoints: the reporter sends only the newest
report, and that one then still holds every point logged since the one before.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from maap_api.history import CheckpointPoint, JobHistory, LogPoint
from maap_api.results import ArtifactPaths, ExportSummary, TrainedMetrics
from maap_api.stage_config import CamelModel
from pydantic import Field

__all__ = [
    "PROGRESS_FILE",
    "ProgressReport",
    "RemoteReporter",
    "TrainedMetrics",
    "attach_history",
    "close_progress",
    "read_progress",
    "write_progress",
]

PROGRESS_FILE = "progress.json"
PROGRESS_URL_ENV = "MAAP_PROGRESS_URL"
PROGRESS_TOKEN_ENV = "MAAP_PROGRESS_TOKEN"
# One POST may take this long; closing waits for the one in flight and the newest report.
REQUEST_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 2 * REQUEST_TIMEOUT_SECONDS + 1
log = logging.getLogger("maap.progress")


class ProgressReport(CamelModel):
    stage: str
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: int | None = None
    # The checkpoint step this run resumed from (after a preemption or a crash).
    resumed_from_step: int | None = None
    message: str = ""
    # Set once, on the final report of the train stage.
    metrics: TrainedMetrics | None = None
    # Set once, on the final report of the export stage (and on a rejected export).
    export: ExportSummary | None = None
    # The artifacts published so far, on each stage's final report.
    artifacts: ArtifactPaths | None = None
    # The newest training history (maap_api.history.REPORT_TAIL entries), while training.
    history: list[LogPoint] = Field(default_factory=list)
    checkpoints: list[CheckpointPoint] = Field(default_factory=list)
    updated_at: float = Field(default_factory=time.time)

    @property
    def percent(self) -> int:
        if self.total_steps <= 0:
            return 0
        return min(100, int(100 * self.step / self.total_steps))


# The history tail each output directory's reports carry (set by the train stage).
_HISTORY_TAILS: dict[Path, Callable[[], JobHistory]] = {}


def attach_history(directory: Path, tail: Callable[[], JobHistory] | None) -> None:
    """From now on, reports written to `directory` carry `tail()` (None: no longer)."""
    if tail is None:
        _HISTORY_TAILS.pop(Path(directory), None)
    else:
        _HISTORY_TAILS[Path(directory)] = tail


def write_progress(directory: Path, report: ProgressReport) -> None:
    tail = _HISTORY_TAILS.get(Path(directory))
    if tail is not None and not (report.history or report.checkpoints):
        newest = tail()
        report = report.model_copy(
            update={"history": newest.points, "checkpoints": newest.checkpoints}
        )
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{PROGRESS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(report.to_json_dict()), encoding="utf-8")
    os.replace(tmp, directory / PROGRESS_FILE)
    _REPORTER.send(report)


def read_progress(directory: Path) -> ProgressReport | None:
    try:
        return ProgressReport.model_validate_json((directory / PROGRESS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class _Outgoing:
    url: str
    token: str
    body: bytes
    stage: str


class RemoteReporter:
    """POSTs progress to the operator from a background thread: `send` never blocks.

    A one-slot mailbox: a report that arrives while another is still unsent replaces it,
    since only the newest matters (status.progress shows one). Reports of one stage go
    out at most every `min_interval` seconds; a stage change goes out as soon as the POST
    in flight is done. `close` waits, bounded, until the newest report is delivered:
    it runs at exit, so a stage's final report ("trained", "exported") is not lost.
    Best effort by design: failures are logged, never raised into training.
    """

    def __init__(
        self, min_interval: float = 2.0, request_timeout: float = REQUEST_TIMEOUT_SECONDS
    ) -> None:
        self.min_interval = min_interval
        self.request_timeout = request_timeout
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Condition()
        self._pending: _Outgoing | None = None
        self._in_flight = False
        self._hurry = False  # close() is waiting: skip the interval
        self._thread: threading.Thread | None = None
        self._last_sent = float("-inf")
        self._last_stage = ""
        self.posted = 0  # POSTs attempted (what coalescing saved is visible in tests)

    def send(self, report: ProgressReport) -> None:
        url = os.environ.get(PROGRESS_URL_ENV)
        if not url:
            return
        outgoing = _Outgoing(
            url,
            os.environ.get(PROGRESS_TOKEN_ENV, ""),
            json.dumps(report.to_json_dict()).encode(),
            report.stage,
        )
        with self._lock:
            self._pending = outgoing
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="maap-progress", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
        """Wait up to `timeout` s until nothing is pending or in flight; True if so."""
        with self._lock:
            self._hurry = True
            self._lock.notify_all()
            done = self._lock.wait_for(
                lambda: self._pending is None and not self._in_flight, timeout
            )
            self._hurry = False
            return done

    def _next(self) -> _Outgoing:
        with self._lock:
            while True:
                item = self._pending
                if item is not None:
                    wait = 0.0
                    if item.stage == self._last_stage and not self._hurry:
                        wait = self._last_sent + self.min_interval - time.monotonic()
                    if wait <= 0:
                        self._pending, self._in_flight = None, True
                        return item
                    self._lock.wait(wait)
                else:
                    self._lock.wait()

    def _run(self) -> None:
        while True:
            item = self._next()
            try:
                self._post(item)
            finally:
                with self._lock:
                    self._in_flight = False
                    self._last_sent, self._last_stage = time.monotonic(), item.stage
                    self.posted += 1
                    self._lock.notify_all()

    def _post(self, item: _Outgoing) -> None:
        request = urllib.request.Request(
            item.url,
            data=item.body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {item.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout):
                pass
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("could not report progress (%s) to %s: %s", item.stage, item.url, exc)


_REPORTER = RemoteReporter()
# A forked child (a data loader worker) has no reporter thread: start afresh there.
os.register_at_fork(after_in_child=_REPORTER._reset)


def close_progress(timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
    """Deliver the newest report before the process exits (bounded by `timeout`)."""
    return _REPORTER.close(timeout)


atexit.register(close_progress)
