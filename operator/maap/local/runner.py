"""`maap run`: the whole pipeline on this machine, stage by stage, like the operator.

Each stage runs the data-plane entrypoint (`python -m maap_trainer STAGE`) in a child
process, exactly as a pod would, with the same config file and the same progress file
and termination log. The control plane never imports torch; it watches files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_trainer.config import TrainerConfig
from maap_trainer.data import load_examples
from maap_trainer.errors import TERMINATION_LOG_ENV, UserError
from maap_trainer.outdirs import directory_size
from maap_trainer.progress import read_progress
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from maap.api import FineTuneJob

CONFIG_FILE = "config.json"


class StageFailed(Exception):
    """A stage exited non-zero; the message is its one-line reason."""


@dataclass
class StageTiming:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class RunReport:
    output_dir: Path
    timings: list[StageTiming] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)


def resolve_trainer_config(
    job: FineTuneJob, manifest_dir: Path, output_root: Path
) -> TrainerConfig:
    """The data-plane config for a local run: absolute paths, output under output_root."""
    dataset = Path(job.spec.dataset.path).expanduser()
    if not dataset.is_absolute():
        dataset = (manifest_dir / dataset).resolve()
    if not dataset.is_file():
        raise UserError(f"spec.dataset.path: {dataset}: no such file")
    output_dir = (output_root / job.metadata.name).resolve()
    cfg = job.spec.trainer_config(job.metadata.name, str(output_dir))
    cfg.dataset = cfg.dataset.model_copy(update={"path": str(dataset)})
    if cfg.model.path is not None:
        model_path = Path(cfg.model.path).expanduser()
        if not model_path.is_absolute():
            model_path = (manifest_dir / model_path).resolve()
        cfg.model = cfg.model.model_copy(update={"path": str(model_path)})
    return cfg


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class LocalRunner:
    def __init__(self, cfg: TrainerConfig, console: Console) -> None:
        self.cfg = cfg
        self.console = console
        self.output_dir = Path(cfg.output_dir)
        self.report = RunReport(self.output_dir)

    # -- stages -------------------------------------------------------------------------

    def check_inputs(self) -> None:
        """Fail in seconds on what would otherwise fail after minutes of training."""
        load_examples(Path(self.cfg.dataset.path), self.cfg.dataset.format)

    def run_pipeline(self) -> RunReport:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.output_dir / CONFIG_FILE
        config_path.write_text(json.dumps(self.cfg.to_json_dict(), indent=2), encoding="utf-8")
        self._stage("prepare-model", "Preparing the base model", config_path)
        self._stage("train", "Training", config_path)
        self.report.metrics = json.loads((self.output_dir / "metrics.json").read_text())
        if self.cfg.export.enabled:
            self._stage("export", f"Exporting ONNX ({self.cfg.export.precision})", config_path)
            self.report.export = json.loads((self.output_dir / "export.json").read_text())
        return self.report

    def _stage(self, stage: str, title: str, config_path: Path) -> None:
        command = [sys.executable, "-m", "maap_trainer", stage, "--config", str(config_path)]
        started = time.monotonic()
        self._run_child(stage, title, command)
        self.report.timings.append(StageTiming(title, time.monotonic() - started))

    def _run_child(self, stage: str, title: str, command: list[str]) -> None:
        log_path = self.output_dir / f"{stage}.log"
        termination = self.output_dir / f"{stage}.error"
        termination.unlink(missing_ok=True)
        env = {**os.environ, TERMINATION_LOG_ENV: str(termination), "PYTHONUNBUFFERED": "1"}
        columns = [
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with (
            log_path.open("w", encoding="utf-8") as log,
            Progress(*columns, console=self.console, transient=False) as bar,
        ):
            task = bar.add_task(title, total=None, detail="")
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                while child.poll() is None:
                    self._update_bar(bar, task, stage)
                    time.sleep(0.5)
            except KeyboardInterrupt:
                child.send_signal(signal.SIGINT)
                child.wait(timeout=30)
                raise
            if child.returncode == 0:
                total = bar.tasks[0].total or 1
                bar.update(task, total=total, completed=total)
        if child.returncode != 0:
            reason = termination.read_text().strip() if termination.is_file() else ""
            raise StageFailed(reason or f"{stage} failed (exit {child.returncode}); see {log_path}")

    def _update_bar(self, bar: Progress, task: Any, stage: str) -> None:
        if stage != "train":
            return
        report = read_progress(self.output_dir)
        if report is None:
            return
        if report.stage == "training" and report.total_steps:
            parts = []
            if report.loss is not None:
                parts.append(f"loss {report.loss:.3f}")
            if report.tokens_per_second:
                parts.append(f"{report.tokens_per_second:.0f} tok/s")
            bar.update(
                task, total=report.total_steps, completed=report.step, detail=" ".join(parts)
            )
        else:
            bar.update(task, detail=report.message or report.stage)

    # -- serving ------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Start the server, wait until it answers, print how to call it, run until Ctrl-C."""
        model_dir = self.output_dir / "onnx"
        command = [
            sys.executable, "-m", "maap_trainer", "serve",
            "--model-dir", str(model_dir), "--model-name", self.cfg.job_name,
            "--host", host, "--port", str(port),
            "--max-tokens-limit", str(self.cfg.serving.max_tokens_limit),
            # The job's serving section: batch size, queue, auth, shutdown grace.
            "--config", str(self.output_dir / CONFIG_FILE),
        ]  # fmt: skip
        termination = self.output_dir / "serve.error"
        termination.unlink(missing_ok=True)
        env = {**os.environ, TERMINATION_LOG_ENV: str(termination), "PYTHONUNBUFFERED": "1"}
        log_path = self.output_dir / "serve.log"
        with log_path.open("w", encoding="utf-8") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            base = f"http://{host}:{port}"
            try:
                with self.console.status(f"Loading the model into ONNX Runtime at {base}"):
                    while not _ready(f"{base}/readyz"):
                        if child.poll() is not None:
                            reason = (
                                termination.read_text().strip() if termination.is_file() else ""
                            )
                            raise StageFailed(reason or f"the server exited; see {log_path}")
                        time.sleep(0.3)
                self._print_serving(base)
                return child.wait()
            except KeyboardInterrupt:
                self.console.print("Stopping the server…")
                child.send_signal(signal.SIGTERM)
                child.wait(timeout=60)
                return 0
            finally:
                if child.poll() is None:
                    child.kill()

    def _print_serving(self, base: str) -> None:
        body = json.dumps(
            {"model": self.cfg.job_name,
             "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        )  # fmt: skip
        self.console.print(
            f"[bold green]Serving[/] {self.cfg.job_name} at {base}/v1 (Ctrl-C to stop)"
        )
        self.console.print(
            f"  curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'",
            soft_wrap=True,
        )

    # -- summary ------------------------------------------------------------------------

    def print_summary(self) -> None:
        metrics, export = self.report.metrics, self.report.export
        table = Table(title=f"FineTuneJob {self.cfg.job_name}", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value")
        before, after = metrics.get("evalLossBefore"), metrics.get("evalLossAfter")
        if before is not None and after is not None:
            table.add_row("eval loss", f"{before:.3f} -> {after:.3f} ({after - before:+.3f})")
        table.add_row(
            "training",
            f"{self.cfg.method.type}, {metrics.get('steps')} steps, "
            f"{metrics.get('trainRows')} train / {metrics.get('evalRows')} eval rows, "
            f"{metrics.get('tokensPerSecond')} tok/s, "
            f"{metrics.get('trainableParameters', 0):,} trainable parameters",
        )
        for timing in self.report.timings:
            table.add_row(f"time: {timing.name}", f"{timing.seconds:.1f} s")
        if export:
            table.add_row(
                "export",
                f"{export['precision']} on {export['executionProvider']}, "
                f"{human_size(export.get('sizeBytes', 0))}, {export.get('seconds', 0):.0f} s build",
            )
            if parity := export.get("parity"):
                table.add_row("parity", parity_line(parity))
            if adapter := export.get("adapter"):
                table.add_row(
                    "adapter",
                    f"{adapter['modules']} LoRA modules, {human_size(adapter['sizeBytes'])}"
                    + (f"; {parity_line(adapter['parity'])}" if adapter.get("parity") else ""),
                )
        self.console.print(table)
        # Paths go outside the table, unwrapped, so they can be copied whole.
        for name in ("adapter", "merged", "onnx", "onnx-base", "adapters"):
            path = self.output_dir / name
            if path.is_dir():
                self.console.print(
                    f"{name:>8}: {path} ({human_size(directory_size(path))})",
                    soft_wrap=True,
                    highlight=False,
                )


def parity_line(parity: dict[str, Any]) -> str:
    """The export's parity gate in one line (export.json's `parity`)."""
    if parity.get("skipped"):
        return f"skipped: {parity['skipped']}"
    ppl = parity["perplexity"]
    return (
        f"{parity['exactMatches']}/{parity['prompts']} greedy answers identical, "
        f"{parity['tokenAgreement']:.1%} token agreement, perplexity {ppl['pytorch']:.2f} -> "
        f"{ppl['onnx']:.2f} ({ppl['relativeIncrease']:+.1%}) vs PyTorch"
    )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
