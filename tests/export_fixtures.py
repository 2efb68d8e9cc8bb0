"""Real exports of the base SmolLM2 checkpoint, shared by the export and server tests.

The base checkpoint is a valid "merged" model, so a job directory whose `merged/` points
at it exports like a fine-tune would, without training first. Registered once in
tests/conftest.py, so each is built once per run (a fixture imported into several test
modules would be built once per module).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.serving import TEST_PARITY

__all__ = ["TEST_PARITY", "ExportRun", "export_base", "int4_export", "job_config"]


@dataclass
class ExportRun:
    output_dir: Path
    info: dict[str, Any]
    seconds: float

    @property
    def onnx(self) -> Path:
        return self.output_dir / "onnx"


def job_config(output_dir: Path, export: dict[str, Any]) -> Any:
    from maap_api.stage_config import TrainerConfig

    return TrainerConfig.model_validate(
        {
            "jobName": "base",
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": str(_pirate_data() / "train.jsonl")},
            "export": export,
            "outputDir": str(output_dir),
        }
    )


def export_base(base_model_dir: Path, output_dir: Path, export: dict[str, Any]) -> ExportRun:
    from maap_trainer.export import run_export

    output_dir.mkdir(parents=True, exist_ok=True)
    merged = output_dir / "merged"
    if not merged.exists():
        os.symlink(base_model_dir, merged)
    started = time.monotonic()
    info = run_export(job_config(output_dir, export))
    return ExportRun(output_dir, info, time.monotonic() - started)


@pytest.fixture(scope="session")
def int4_export(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
    # Each test module that imports this fixture gets its own copy of it; the directory
    # in the session's base temp makes them share one export.
    out = tmp_path_factory.getbasetemp() / "export-int4"
    if (out / "export.json").is_file() and (out / "onnx").is_dir():
        return ExportRun(out, json.loads((out / "export.json").read_text()), 0.0)
    run = export_base(base_model_dir, out, {"precision": "int4", "parity": TEST_PARITY})
    assert json.loads((out / "export.json").read_text())["precision"] == "int4"
    return run


def _pirate_data() -> Path:
    # Imported when called: conftest registers this module's fixtures, so importing it at
    # the top would be circular.
    from tests.conftest import PIRATE_DATA

    return PIRATE_DATA
