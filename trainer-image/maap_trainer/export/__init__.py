"""Export the merged model to ONNX with the ONNX Runtime GenAI model builder.

The builder writes the graph, weights, `genai_config.json`, tokenizer and chat template:
everything the server needs. Its (very long) log goes to `export.log`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from maap_trainer.config import TrainerConfig
from maap_trainer.errors import UserError
from maap_trainer.progress import ProgressReport, write_progress

EXPORT_LOG = "export.log"
EXPORT_INFO = "export.json"


class ExportError(UserError):
    pass


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def run_export(cfg: TrainerConfig) -> dict[str, Any]:
    output_dir = Path(cfg.output_dir)
    merged = output_dir / "merged"
    if not (merged / "config.json").is_file():
        raise ExportError(f"export: no merged model at {merged}; the training stage must run first")
    final = output_dir / "onnx"
    staging = output_dir / "onnx.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cache = output_dir / ".export-cache"
    log_path = output_dir / EXPORT_LOG
    precision = cfg.export.precision
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "--input",
        str(merged),
        "--output",
        str(staging),
        "--precision",
        precision,
        "--execution_provider",
        cfg.export.execution_provider,
        "--cache_dir",
        str(cache),
    ]
    write_progress(output_dir, ProgressReport(stage="exporting", message=f"ONNX {precision}"))
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0 or not (staging / "genai_config.json").is_file():
        raise ExportError(
            f"export: the ONNX model builder failed (exit {done.returncode}); "
            f"see {log_path}: {_tail(log_path)}"
        )
    shutil.rmtree(cache, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    info = {
        "precision": precision,
        "executionProvider": cfg.export.execution_provider,
        "path": str(final),
        "sizeBytes": directory_size(final),
        "seconds": round(seconds, 2),
    }
    (output_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    write_progress(output_dir, ProgressReport(stage="exported", step=1, total_steps=1))
    return info
