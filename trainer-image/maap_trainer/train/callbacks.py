"""Trainer callbacks: progress for the operator, the training history, eval-before capture,
per-rank evidence."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from maap_api.history import (
    REPORT_TAIL,
    CheckpointPoint,
    JobHistory,
    LogPoint,
    append_history,
    read_history,
    write_history,
)

from maap_trainer.progress import ProgressReport, attach_history, read_progress, write_progress
from maap_trainer.train.checkpoints import COMPLETE_MARKER

log = logging.getLogger("maap.history")

RANKS_DIR = "ranks"


class Throughput:
    """Tokens per second of this process's training: after a resume, the steps restored
    from the checkpoint took no time here, and the eval on start is not training time."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first_step = 0
        self.first_tokens = 0

    def begin(self, state: Any) -> None:
        self.started = time.monotonic()
        self.first_step = state.global_step
        self.first_tokens = _tokens_seen(state)

    def evaluated(self, state: Any) -> None:
        if state.global_step == self.first_step:
            self.started = time.monotonic()  # the eval on start is not training time

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    def tokens_per_second(self, state: Any) -> float | None:
        # Tokens of every rank (the Trainer gathers the count).
        tokens = _tokens_seen(state) - self.first_tokens
        return round(tokens / self.elapsed(), 1) if tokens > 0 else None


def _tokens_seen(state: Any) -> int:
    return int(getattr(state, "num_input_tokens_seen", 0) or 0)


def progress_callback(output_dir: Path) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Mirror the Trainer's state into progress.json (rank 0 only).

        Rates and the ETA count only the steps of this process (see Throughput).
        """

        def __init__(self) -> None:
            self.rate = Throughput()
            self.loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.rate.begin(state)

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.rate.evaluated(state)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero:
                return
            elapsed = self.rate.elapsed()
            step, total = state.global_step, state.max_steps
            done = step - self.rate.first_step
            eta = int(elapsed / done * (total - step)) if done > 0 else None
            write_progress(
                output_dir,
                ProgressReport(
                    stage="training",
                    step=step,
                    total_steps=total,
                    loss=self.loss,
                    tokens_per_second=self.rate.tokens_per_second(state),
                    eta_seconds=eta,
                    resumed_from_step=self.rate.first_step or None,
                ),
            )

    return ProgressCallback()


class HistoryRecorder:
    """Rank 0's training history: each entry is appended to history.jsonl at once, and the
    newest ones ride on every progress report written to the output directory.

    A fresh run (step 0) starts a fresh file: what an earlier run in that directory logged
    is not this run's. A resumed run keeps what was logged up to its checkpoint's step and
    drops the rest, which it trains and logs again."""

    def __init__(self, output_dir: Path, resumed_at_step: int) -> None:
        self.output_dir = output_dir
        kept = JobHistory()
        if resumed_at_step > 0:
            kept = read_history(output_dir).up_to(resumed_at_step)
        write_history(output_dir, kept)
        self.newest_train_loss = _newest(kept.points, "train_loss")
        self.newest_valid_loss = _newest(kept.points, "valid_loss")
        self.history = kept.tail(REPORT_TAIL)
        attach_history(output_dir, self.tail)

    def tail(self) -> JobHistory:
        return self.history.tail(REPORT_TAIL)

    def add_point(self, point: LogPoint) -> None:
        if point.train_loss is not None:
            self.newest_train_loss = point.train_loss
        if point.valid_loss is not None:
            self.newest_valid_loss = point.valid_loss
        append_history(self.output_dir, point=point)
        self._keep(self.history.merged([point], []))

    def add_checkpoint(self, step: int, path: str) -> CheckpointPoint:
        checkpoint = CheckpointPoint(
            step=step,
            time=time.time(),
            path=path,
            train_loss=self.newest_train_loss,
            valid_loss=self.newest_valid_loss,
        )
        append_history(self.output_dir, checkpoint=checkpoint)
        self._keep(self.history.merged([], [checkpoint]))
        return checkpoint

    def _keep(self, history: JobHistory) -> None:
        # In memory, only what the reports carry: a long run's history stays on disk.
        self.history = history.tail(REPORT_TAIL)

    def resend(self) -> None:
        """Write the newest progress report again, now with the newest tail."""
        current = read_progress(self.output_dir)
        if current is not None:
            fresh = current.model_copy(update={"history": [], "checkpoints": []})
            write_progress(self.output_dir, fresh)

    def close(self) -> None:
        attach_history(self.output_dir, None)


def _newest(points: list[LogPoint], field: str) -> float | None:
    values = [getattr(p, field) for p in points if getattr(p, field) is not None]
    return values[-1] if values else None


def history_callback(output_dir: Path) -> Any:
    """Record the training history (maap_api.history) on rank 0: a point per Trainer log
    with a training loss, a point per evaluation (the eval on start at step 0 included:
    the "before" point, and the eval after training), and each checkpoint once it is
    complete. Register it after the checkpoint marker's callback, which marks a
    checkpoint complete in the same on_save."""
    from transformers import TrainerCallback

    class HistoryCallback(TrainerCallback):
        def __init__(self) -> None:
            self.rate = Throughput()
            self.recorder: HistoryRecorder | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.rate.begin(state)
            if state.is_world_process_zero and self.recorder is None:
                self.recorder = HistoryRecorder(output_dir, int(state.global_step))

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw):
            self.rate.evaluated(state)
            loss = (metrics or {}).get("eval_loss")
            if self.recorder is not None and loss is not None:
                self.recorder.add_point(
                    LogPoint(
                        step=state.global_step,
                        time=time.time(),
                        valid_loss=float(loss),
                        epoch=_epoch(state.epoch),
                    )
                )

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            if self.recorder is None or not logs or "loss" not in logs:
                return
            self.recorder.add_point(
                LogPoint(
                    step=state.global_step,
                    time=time.time(),
                    train_loss=float(logs["loss"]),
                    learning_rate=_number(logs.get("learning_rate")),
                    epoch=_epoch(logs.get("epoch", state.epoch)),
                    tokens_per_second=self.rate.tokens_per_second(state),
                )
            )

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.recorder is None:
                return
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not (path / COMPLETE_MARKER).is_file():
                log.warning("%s has no completion marker: not recorded in the history", path)
                return
            try:
                shown = str(path.relative_to(output_dir))
            except ValueError:  # extraArgs moved the checkpoints out of the output directory
                shown = str(path)
            self.recorder.add_checkpoint(int(state.global_step), shown)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            # The last step's report went out before its log and its checkpoint.
            if self.recorder is not None:
                self.recorder.resend()

    return HistoryCallback()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _epoch(value: Any) -> float | None:
    number = _number(value)
    return round(number, 4) if number is not None else None


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
