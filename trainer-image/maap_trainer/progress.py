"""The progress file: how a running stage tells the operator and the CLI where it is.

Written atomically (temp file + rename) so a reader never sees half a document.
Pydantic only, so the control plane can read it without torch.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import Field

from maap_trainer.config import CamelModel

PROGRESS_FILE = "progress.json"
PROGRESS_URL_ENV = "MAAP_PROGRESS_URL"
PROGRESS_TOKEN_ENV = "MAAP_PROGRESS_TOKEN"
log = logging.getLogger("maap.progress")


class TrainedMetrics(CamelModel):
    """The train stage's summary (`status.metrics` in the cluster): eval loss before and
    after training, train loss, runtime, trainable and total parameters."""

    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    train_loss: float | None = None
    train_runtime_seconds: float | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None


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
    updated_at: float = Field(default_factory=time.time)

    @property
    def percent(self) -> int:
        if self.total_steps <= 0:
            return 0
        return min(100, int(100 * self.step / self.total_steps))


def write_progress(directory: Path, report: ProgressReport) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{PROGRESS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(report.to_json_dict()), encoding="utf-8")
    os.replace(tmp, directory / PROGRESS_FILE)
    _REPORTER.send(report)


class RemoteReporter:
    """POSTs progress to the operator when it asked for it (MAAP_PROGRESS_URL/TOKEN).

    Best effort by design: a slow or absent operator must never stall training, so
    each call has a short timeout, failures are only logged, and reports are sent at
    most every `min_interval` seconds (stage changes always go out).
    """

    def __init__(self, min_interval: float = 2.0) -> None:
        self.min_interval = min_interval
        self._last_sent = 0.0
        self._last_stage = ""

    def send(self, report: ProgressReport) -> None:
        url = os.environ.get(PROGRESS_URL_ENV)
        if not url:
            return
        now = time.monotonic()
        if report.stage == self._last_stage and now - self._last_sent < self.min_interval:
            return
        self._last_sent, self._last_stage = now, report.stage
        request = urllib.request.Request(
            url,
            data=json.dumps(report.to_json_dict()).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {os.environ.get(PROGRESS_TOKEN_ENV, '')}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=2):
                pass
        except (urllib.error.URLError, OSError) as exc:
            log.warning("could not report progress to %s: %s", url, exc)


_REPORTER = RemoteReporter()


def read_progress(directory: Path) -> ProgressReport | None:
    try:
        return ProgressReport.model_validate_json((directory / PROGRESS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
