"""The progress file: how a running stage tells the operator and the CLI where it is.

Written atomically (temp file + rename) so a reader never sees half a document.
Pydantic only, so the control plane can read it without torch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import Field

from maap_trainer.config import CamelModel

PROGRESS_FILE = "progress.json"


class ProgressReport(CamelModel):
    stage: str
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: int | None = None
    message: str = ""
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


def read_progress(directory: Path) -> ProgressReport | None:
    try:
        return ProgressReport.model_validate_json((directory / PROGRESS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
