"""A run killed mid-way resumes from its newest complete checkpoint, at that checkpoint's step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from maap_trainer.train.checkpoints import COMPLETE_MARKER

from tests.trainer_helpers import (
    metrics_of,
    run_stage,
    short_chat_rows,
    trainer_config,
    write_jsonl,
)

pytestmark = pytest.mark.slow

MAX_STEPS = 6


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "short.jsonl", short_chat_rows(30))
    config, output = trainer_config(
        tmp_path, data, "resume",
        training={"maxSteps": MAX_STEPS, "checkpointSteps": 2, "batchSize": 2},
    )  # fmt: skip
    checkpoints = output / "checkpoints"
    first = subprocess.Popen(
        [sys.executable, "-m", "maap_trainer", "train", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not (checkpoints / "checkpoint-2" / COMPLETE_MARKER).is_file():
            assert first.poll() is None, "the first run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # like a node going away: no clean shutdown
        first.wait()
    complete = sorted(
        p.name for p in checkpoints.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()
    )
    assert not (output / "metrics.json").exists(), "the run was killed before it finished"
    base_eval = json.loads((checkpoints / "eval-before.json").read_text())["eval_loss"]
    newest = max(int(name.split("-")[1]) for name in complete)
    assert newest < MAX_STEPS
    # A checkpoint a crash left half-written must be neither used nor kept.
    torn = checkpoints / f"checkpoint-{newest + 1}"
    torn.mkdir(exist_ok=True)
    (torn / "adapter_model.safetensors").write_bytes(b"truncated")

    done = run_stage(config)
    assert done.returncode == 0, done.stderr[-5000:]
    metrics = metrics_of(output)
    print("resume", {k: metrics[k] for k in ("resumedFromStep", "steps", "evalLossBefore",
                                             "evalLossAfter", "secondsPerStep")})  # fmt: skip
    assert metrics["resumedFromStep"] == newest
    assert metrics["steps"] == MAX_STEPS
    assert f"resuming from {checkpoints / f'checkpoint-{newest}'}" in done.stderr
    assert not torn.exists(), "the torn checkpoint is removed"
    state = json.loads((checkpoints / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    # Eval loss before is the base model's, from the first run, not the resumed model's.
    assert metrics["evalLossBefore"] == base_eval
    assert metrics["evalLossAfter"] < metrics["evalLossBefore"]


def _progress_step(output: Path) -> int:
    try:
        report = json.loads((output / "progress.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(report.get("step") or 0) if report.get("stage") == "training" else 0


def test_sigterm_saves_a_checkpoint_at_the_current_step_and_the_next_run_resumes_there(
    tmp_path: Path,
) -> None:
    """A pod being stopped (SIGTERM, as the kubelet sends it) loses no finished step: the
    run saves where it is, although no periodic checkpoint is due, and exits 75."""
    data = write_jsonl(tmp_path / "short.jsonl", short_chat_rows(40))
    config, output = trainer_config(
        tmp_path, data, "preempt",
        training={"maxSteps": 8, "checkpointSteps": 100, "batchSize": 2},
    )  # fmt: skip
    termination_log = tmp_path / "termination-log"
    env = {**os.environ, "MAAP_TERMINATION_LOG": str(termination_log)}
    first = subprocess.Popen(
        [sys.executable, "-m", "maap_trainer", "train", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while _progress_step(output) < 2:
            assert first.poll() is None, f"the run ended before step 2:\n{first.stderr.read()}"
            assert time.monotonic() < deadline, "no second step within 10 minutes"
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 75, stderr[-3000:]
    checkpoints = output / "checkpoints"
    saved = [p for p in checkpoints.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    assert len(saved) == 1, saved
    step = int(saved[0].name.split("-")[1])
    assert 2 <= step < 8, "saved at the step it was stopped at, before the end"
    assert not (output / "metrics.json").exists()
    message = termination_log.read_text().strip()
    assert (
        message
        == f"preempted at step {step}: checkpoint-{step} saved; the next pod resumes from it"
    )
    assert json.loads((output / "progress.json").read_text())["stage"] == "preempted"

    done = run_stage(config)
    assert done.returncode == 0, done.stderr[-5000:]
    metrics = metrics_of(output)
    assert metrics["resumedFromStep"] == step
    assert metrics["steps"] == 8
    assert metrics["evalLossAfter"] < metrics["evalLossBefore"]
