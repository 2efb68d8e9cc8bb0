"""Trainer callbacks: progress for the operator, eval-before capture, per-rank evidence."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from maap_trainer.progress import ProgressReport, write_progress

RANKS_DIR = "ranks"


def progress_callback(output_dir: Path) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Mirror the Trainer's state into progress.json (rank 0 only).

        Rates and the ETA count only the steps of this process: after a resume, the
        steps restored from the checkpoint took no time here.
        """

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.first_step = 0
            self.first_tokens = 0
            self.loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started = time.monotonic()
            self.first_step = state.global_step
            self.first_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == self.first_step:
                self.started = time.monotonic()  # the eval on start is not training time

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero:
                return
            elapsed = max(time.monotonic() - self.started, 1e-6)
            step, total = state.global_step, state.max_steps
            done = step - self.first_step
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self.first_tokens
            eta = int(elapsed / done * (total - step)) if done > 0 else None
            write_progress(
                output_dir,
                ProgressReport(
                    stage="training",
                    step=step,
                    total_steps=total,
                    loss=self.loss,
                    # Tokens of every rank (the Trainer gathers the count).
                    tokens_per_second=round(tokens / elapsed, 1) if tokens > 0 else None,
                    eta_seconds=eta,
                    resumed_from_step=self.first_step or None,
                ),
            )

    return ProgressCallback()


def eval_recorder(first_eval_file: Path) -> Any:
    """Keep the metrics of every evaluation, in order. The first one (eval-on-start, the
    base model) is also written to `first_eval_file` at once, so a run killed later still
    reports the base model's eval after it resumes."""
    from transformers import TrainerCallback

    class EvalRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []
            self.train_started: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.train_started = time.monotonic()

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw):
            self.history.append(dict(metrics or {}))
            if len(self.history) == 1 and state.is_world_process_zero:
                first_eval_file.parent.mkdir(parents=True, exist_ok=True)
                first_eval_file.write_text(json.dumps(self.history[0]), encoding="utf-8")
            self.train_started = time.monotonic()  # training time starts after it

    return EvalRecorder()


def rank_report(trainer: Any, rank: int, world_size: int) -> dict[str, Any]:
    """What this rank saw: world size, steps, and how much of the model and optimizer
    state it holds, which is the evidence that ZeRO shards (parameters under ZeRO-3,
    optimizer state under ZeRO-1/2/3)."""
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    local = full = 0
    partitioned = False
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):
            partitioned = True
            local += p.ds_tensor.numel()
            full += p.ds_numel
        else:
            local += p.numel()
            full += p.numel()
    report = {
        "rank": rank,
        "worldSize": world_size,
        "trainerWorldSize": int(trainer.args.world_size),
        "acceleratorProcesses": int(trainer.accelerator.num_processes),
        "steps": int(trainer.state.global_step),
        "parametersPartitioned": partitioned,
        "localParameterElements": int(local),
        "fullParameterElements": int(full),
    }
    optimizer_state = _optimizer_partition_elements(trainer)
    if optimizer_state is not None:
        report["localOptimizerStateElements"] = optimizer_state
    return report


def _optimizer_partition_elements(trainer: Any) -> int | None:
    """fp32 master weights this rank's ZeRO optimizer holds (None outside DeepSpeed)."""
    engine = getattr(trainer, "deepspeed", None)
    optimizer = getattr(engine, "optimizer", None)
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        groups = getattr(optimizer, name, None)
        if groups:
            return int(sum(g.numel() for g in groups))
    return None


def write_rank_report(output_dir: Path, report: dict[str, Any]) -> None:
    folder = output_dir / RANKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{report['rank']}.json").write_text(json.dumps(report), encoding="utf-8")


def read_rank_reports(output_dir: Path) -> list[dict[str, Any]]:
    folder = output_dir / RANKS_DIR
    return [json.loads(p.read_text("utf-8")) for p in sorted(folder.glob("rank-*.json"))]


def _rss_high_water_mark() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def peak_memory_recorder() -> Any:
    """Peak memory of the training loop alone (not loading, evaluating first, or saving),
    what a pod's memory request must cover: the resident set's high-water mark on CPU
    (reset through /proc/self/clear_refs when training starts), allocated bytes on GPU."""
    from transformers import TrainerCallback

    class PeakMemory(TrainerCallback):
        def __init__(self) -> None:
            self.peak_bytes: int | None = None
            self.kind = "rss"
            self.first_step = 0

        def _reset(self) -> None:
            import torch

            if torch.cuda.is_available():
                self.kind = "cuda-allocated"
                torch.cuda.reset_peak_memory_stats()
                return
            try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.kind = "rss-since-start"  # cannot reset: includes loading

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.first_step = state.global_step
            self._reset()

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == self.first_step:
                self._reset()  # the eval on start is not training

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            import torch

            if self.kind == "cuda-allocated":
                self.peak_bytes = int(torch.cuda.max_memory_allocated())
            else:
                self.peak_bytes = _rss_high_water_mark()

    return PeakMemory()
