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

from maap_api.errors import TERMINATION_LOG_ENV, UserError
from maap_api.finetunejob import FineTuneJob
from maap_api.results import (
    EXPORT_FILE,
    METRICS_FILE,
    ONNX_DIR,
    ExportResult,
    Model,
    ResultError,
    TrainMetrics,
    read_result,
)
from maap_api.sources import is_uri
from maap_api.stage_config import TrainerConfig
from maap_api.transfer_results import FETCH_FILE, PUBLISH_FILE, FetchResult, PublishResult
from maap_api.units import human_size
from maap_trainer.model_prep import cache_root
from maap_trainer.outdirs import directory_size
from maap_trainer.progress import read_progress
from maap_trainer.train.data import load_examples
from rich.console import Console
from rich.markup import escape
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

from maap.local.run_job import RunJob
from maap.local.serving import CONFIG_FILE, LocalServer, connect_host, local_server
from maap.local.summary import summary_rows
from maap.stages import pipeline_commands


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
    fetch: FetchResult | None = None
    metrics: TrainMetrics | None = None
    export: ExportResult | None = None
    publish: PublishResult | None = None


def resolve_trainer_config(
    job: FineTuneJob, manifest_dir: Path, output_root: Path
) -> TrainerConfig:
    """The data-plane config for a local run: absolute paths, output under output_root,
    remote data files fetched into this machine's cache (as into a job's volume)."""
    output_dir = (output_root / job.metadata.name).resolve()
    cfg = job.spec.trainer_config(job.metadata.name, str(output_dir))
    cfg.inputs_dir = str(cache_root() / "inputs")  # the cache the stages themselves read
    if not is_uri(job.spec.dataset.path):
        dataset = Path(job.spec.dataset.path).expanduser()
        if not dataset.is_absolute():
            dataset = (manifest_dir / dataset).resolve()
        if not dataset.is_file():
            raise UserError(f"spec.dataset.path: {dataset}: no such file")
        cfg.dataset = cfg.dataset.model_copy(update={"path": str(dataset)})
    if cfg.model.path is not None and not is_uri(cfg.model.path):
        model_path = Path(cfg.model.path).expanduser()
        if not model_path.is_absolute():
            model_path = (manifest_dir / model_path).resolve()
        cfg.model = cfg.model.model_copy(update={"path": str(model_path)})
    return cfg


def write_trainer_config(cfg: TrainerConfig, path: Path) -> Path:
    """The stages' config file, as the pods get it from the job's ConfigMap."""
    path.write_text(json.dumps(cfg.to_json_dict(), indent=2), encoding="utf-8")
    return path


class LocalRunner:
    def __init__(self, cfg: TrainerConfig, console: Console) -> None:
        self.cfg = cfg
        self.console = console
        self.output_dir = Path(cfg.output_dir)
        self.report = RunReport(self.output_dir)
        # The run as the console reads it (maap.local.run_console), when one is shown.
        self.job: RunJob | None = None

    # -- stages -------------------------------------------------------------------------

    def check_inputs(self) -> None:
        """Fail in seconds on what would otherwise fail after minutes of training (a remote
        data set is checked by the fetch stage, once downloaded)."""
        if not is_uri(self.cfg.dataset.path):
            load_examples(Path(self.cfg.dataset.path), self.cfg.dataset.format)

    @property
    def config_path(self) -> Path:
        return self.output_dir / CONFIG_FILE

    def write_config(self) -> Path:
        """The job's config.json, as the pods get it from the ConfigMap (paths local)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return write_trainer_config(self.cfg, self.config_path)

    def run_pipeline(self) -> RunReport:
        config = self.write_config()
        titles = {
            "fetch": "Fetching and checking the model and data",
            "train": "Training",
            "export": f"Exporting ONNX ({self.cfg.export.precision})",
            "publish": f"Publishing to {self.cfg.output.path}",
        }
        for stage, command in pipeline_commands(self.cfg, config, python=sys.executable):
            if self.job is not None:
                self.job.stage_started(stage)
            try:
                self._stage(stage, titles[stage], command)
                summary_key, summary = self._read_results(stage)
            except StageFailed as exc:
                if self.job is not None:
                    self.job.failed(f"{stage.capitalize()}Failed", str(exc))
                raise
            if self.job is not None:
                self.job.stage_finished(stage, summary_key, summary)
        return self.report

    def _read_results(self, stage: str) -> tuple[str | None, Any]:
        """Read the stage's result file into the report; returns the summary the job's
        status carries for it (status.metrics, status.export), if any."""
        if stage == "fetch":
            self.report.fetch = self._result(FETCH_FILE, FetchResult)
        elif stage == "train":
            self.report.metrics = self._result(METRICS_FILE, TrainMetrics)
            return "metrics", self.report.metrics.summary()
        elif stage == "export":
            self.report.export = self._result(EXPORT_FILE, ExportResult)
            return "export", self.report.export.summary()
        else:
            self.report.publish = self._result(PUBLISH_FILE, PublishResult)
        return None, None

    def _result(self, name: str, model: type[Model]) -> Model:
        try:
            return read_result(self.output_dir / name, model)
        except ResultError as exc:
            raise StageFailed(str(exc)) from None

    def _stage(self, stage: str, title: str, command: list[str]) -> None:
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
            task = bar.add_task(escape(title), total=None, detail="")
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

    def server(self, host: str, port: int) -> LocalServer:
        """The server of this job, as `maap serve` of its output directory would start it
        (creating the job's bearer token when its config asks for one)."""
        if not self.config_path.is_file():
            self.write_config()
        return local_server(
            self.output_dir / ONNX_DIR, self.config_path, host, port, self.cfg.job_name,
            create_token=True,
        )  # fmt: skip

    def serving_token(self) -> str | None:
        """The bearer token the job's server will require (created now if it asks for one
        and has none yet), so the console can ask for the same key from the start."""
        if not self.cfg.serving.auth_token_env:
            return None
        return self._token(self.server("127.0.0.1", self.cfg.serving.port))

    def _token(self, server: LocalServer) -> str | None:
        token_env = self.cfg.serving.auth_token_env
        return server.env.get(token_env) if token_env else None

    def serve(self, host: str, port: int) -> int:
        """Start the server, wait until it answers, print how to call it, run until Ctrl-C."""
        server = self.server(host, port)
        termination = self.output_dir / "serve.error"
        termination.unlink(missing_ok=True)
        env = {**server.env, TERMINATION_LOG_ENV: str(termination), "PYTHONUNBUFFERED": "1"}
        log_path = self.output_dir / "serve.log"
        with log_path.open("w", encoding="utf-8") as log:
            child = subprocess.Popen(server.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            base = f"http://{host}:{port}"
            if self.job is not None:
                self.job.serving_starting()
            try:
                with self.console.status(f"Loading the model into ONNX Runtime at {base}"):
                    while not _ready(f"{base}/readyz"):
                        if child.poll() is not None:
                            reason = (
                                termination.read_text().strip() if termination.is_file() else ""
                            )
                            message = reason or f"the server exited; see {log_path}"
                            if self.job is not None:
                                self.job.failed("ServingFailed", message)
                            raise StageFailed(message)
                        time.sleep(0.3)
                if self.job is not None:
                    upstream = f"http://{connect_host(host)}:{port}"
                    self.job.serving_ready(upstream, self._token(server))
                self._print_serving(base, server.token_hint)
                return child.wait()
            except KeyboardInterrupt:
                self.console.print("Stopping the server…")
                child.send_signal(signal.SIGTERM)
                child.wait(timeout=60)
                return 0
            finally:
                if child.poll() is None:
                    child.kill()

    def _print_serving(self, base: str, token_hint: str | None) -> None:
        body = json.dumps(
            {"model": self.cfg.job_name,
             "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        )  # fmt: skip
        self.console.print(
            f"[bold green]Serving[/] {self.cfg.job_name} at {base}/v1 (Ctrl-C to stop)"
        )
        auth = f' -H "Authorization: Bearer {token_hint}"' if token_hint else ""
        self.console.print(
            f"  curl -s {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d '{body}'",
            soft_wrap=True,
            highlight=False,
        )

    # -- summary ------------------------------------------------------------------------

    def print_summary(self) -> None:
        """The stages' summaries (what status.metrics and status.export hold in a cluster),
        the local stage timings, and where the artifacts are."""
        metrics, export = self.report.metrics, self.report.export
        table = Table(title=f"FineTuneJob {self.cfg.job_name}", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value")
        rows = summary_rows(
            self.cfg.method.type,
            metrics.summary() if metrics else None,
            export.summary() if export else None,
        )
        fetched = self.report.fetch
        if fetched is not None:
            for name, file in (("data", fetched.dataset), ("eval data", fetched.eval)):
                if file is not None:
                    table.add_row(name, f"{file.rows} rows, {human_size(file.bytes)}")
        for name, value in rows:
            table.add_row(name, value)
        for timing in self.report.timings:
            table.add_row(escape(f"time: {timing.name}"), f"{timing.seconds:.1f} s")
        self.console.print(table)
        # Paths go outside the table, unwrapped, so they can be copied whole.
        published = self.report.publish
        if published is not None:
            for name, uri in (("merged", published.merged_model), ("onnx", published.onnx_model),
                              ("adapter", published.adapter)):  # fmt: skip
                if uri:
                    self.console.print(escape(f"{'to ' + name:>10}: {uri}"), soft_wrap=True,
                                       highlight=False)  # fmt: skip
        for name in ("adapter", "merged", "onnx", "onnx-base", "adapters"):
            path = self.output_dir / name
            if path.is_dir():
                self.console.print(
                    escape(f"{name:>8}: {path} ({human_size(directory_size(path))})"),
                    soft_wrap=True,
                    highlight=False,
                )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
