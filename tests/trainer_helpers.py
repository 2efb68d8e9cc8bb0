"""Helpers for the trainer tests: tiny data sets and configs, and running a stage for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import PIRATE_DATA


def short_chat_rows(count: int) -> list[dict[str, Any]]:
    """Pirate rows with the answer cut to its first 8 words: ~50 tokens a row, so a training
    step takes seconds on CPU, while every answer still opens with the persona."""
    rows = []
    for line in (PIRATE_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[:count]:
        messages = json.loads(line)["messages"]
        user = next(m["content"] for m in messages if m["role"] == "user")
        answer = next(m["content"] for m in messages if m["role"] == "assistant")
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": " ".join(answer.split()[:8])},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def trainer_config(
    workdir: Path, data: Path, name: str, **sections: dict[str, Any]
) -> tuple[Path, Path]:
    """A causal-LM TrainerConfig for a short CPU run; returns (config file, output dir)."""
    output = workdir / name
    cfg = {
        "jobName": name,
        "model": {"preset": "smollm2-135m-instruct"},
        "dataset": {"path": str(data), "evalFraction": 0.2},
        "training": {"batchSize": 4, "maxSeqLength": 96, "loggingSteps": 1, "learningRate": 2e-3},
        "export": {"enabled": False},
        "serving": {"enabled": False},
        "outputDir": str(output),
    }
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(merge(cfg, sections)), encoding="utf-8")
    return path, output


def run_stage(
    config: Path, env: dict[str, str] | None = None, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maap_trainer", "train", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def metrics_of(output: Path) -> dict[str, Any]:
    return json.loads((output / "metrics.json").read_text(encoding="utf-8"))
