"""`maap gateway --local`: the job backend over this machine's local runner.

Jobs are queued and run one at a time by a worker thread, stage by stage, with the
data-plane commands `maap run` uses (`python -m maap_trainer fetch|train|export|publish`).
The job's status is written as the operator would write it (phase, conditions, progress,
metrics), so the OpenAI mapping reads a local job exactly as a cluster one.
Pause sends the training process SIGTERM (it saves a checkpoint and exits); resume queues
the job again, and training continues from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maap_api.errors import TERMINATION_LOG_ENV
from maap_api.finetunejob import FineTuneJob
from maap_api.history import JobHistory, read_history
from maap_api.results import (
    EXPORT_FILE,
    METRICS_FILE,
    ExportResult,
    TrainMetrics,
    read_result,
)

from maap.gateway import jobs
from maap.gateway.backend import JobEvent, ServedModel
from maap.gateway.files import FileStore
from maap.gateway.local_serving import ServingError, ServingPool
from maap.gateway.local_status import (
    STAGE_STATUS,
    complete,
    fail,
    finish_stage,
    set_condition,
    set_phase,
    with_live_progress,
)
from maap.gateway.local_store import LocalJobStore
from maap.local.runner import resolve_trainer_config, write_trainer_config
from maap.local.serving import CONFIG_FILE
from maap.pipeline import now
from maap.podspec import EXIT_PREEMPTED
from maap.stages import pipeline_commands

log = logging.getLogger("maap.gateway.local")


@dataclass
class Stage:
    name: str
    phase: str
    condition: str
    command: list[str]


class Stopped(Exception):
    """The job was paused or cancelled while a stage ran."""


class StageFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LocalBackend:
    def __init__(self, state_dir: Path, files: FileStore, serve: bool = True) -> None:
        self.files = files
        self.store = LocalJobStore(state_dir / "jobs")
        self.pool = ServingPool(state_dir / "serving")
        self.serve = serve
        self.queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.running: tuple[str, str] | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.child_lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="gateway-jobs", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Pick up where a previous gateway stopped: queue unfinished jobs, serve finished."""
        for namespace in self.store.namespaces():
            for obj in sorted(self.store.list(namespace), key=_created):
                state = jobs.openai_status(obj)
                unfinished = state in ("queued", "validating_files", "running")
                if unfinished or (state == "succeeded" and self.serve):
                    self.queue.put((namespace, obj["metadata"]["name"]))
        self.worker.start()

    def close(self) -> None:
        self.queue.put(None)
        self._signal_child(signal.SIGTERM)
        self.pool.close()

    # -- JobBackend ---------------------------------------------------------------------

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        obj = self.store.create(manifest)
        job_id = obj["metadata"]["name"]
        self.store.add_event(namespace, job_id, "info", "Created fine-tuning job")
        self.store.add_event(namespace, job_id, "info", "Validating training file")
        self.queue.put((namespace, job_id))
        return obj

    def get(self, namespace: str, job_id: str) -> dict[str, Any] | None:
        obj = self.store.get(namespace, job_id)
        return (
            None if obj is None else with_live_progress(obj, self.store.folder(namespace, job_id))
        )

    def list(self, namespace: str) -> list[dict[str, Any]]:
        return [o for o in (self.get(namespace, j["metadata"]["name"])
                            for j in self.store.list(namespace)) if o]  # fmt: skip

    def set_suspend(self, namespace: str, job_id: str, suspend: bool) -> dict[str, Any]:
        obj = self.store.update(namespace, job_id, lambda o: o["spec"].update(suspend=suspend))
        if suspend:
            self.store.add_event(namespace, job_id, "info", "Fine-tuning job paused")
            if self.running == (namespace, job_id):
                self._signal_child(signal.SIGTERM)  # training checkpoints, then exits
        else:
            self._condition(namespace, job_id, "Suspended", "False", "Resumed", "resumed")
            self.store.add_event(namespace, job_id, "info", "Fine-tuning job resumed")
            self.queue.put((namespace, job_id))
        return obj

    def cancel(self, namespace: str, job_id: str) -> dict[str, Any]:
        def mark(obj: dict[str, Any]) -> None:
            obj["metadata"].setdefault("annotations", {})[jobs.CANCELLED] = now()
            obj["spec"]["suspend"] = True
            obj["status"]["completionTime"] = now()

        obj = self.store.update(namespace, job_id, mark)
        self.store.add_event(namespace, job_id, "info", "Fine-tuning job cancelled")
        if self.running == (namespace, job_id):
            self._signal_child(signal.SIGTERM)
        return obj

    def events(self, namespace: str, job_id: str) -> list[JobEvent]:
        return self.store.events(namespace, job_id)

    def history(self, namespace: str, job_id: str) -> JobHistory:
        return read_history(self.store.folder(namespace, job_id))

    def served_models(self, namespace: str) -> list[ServedModel]:
        return self.pool.served(namespace)

    def data_location(self, namespace: str, file_id: str, sha256: str) -> jobs.DataLocation:
        return jobs.DataLocation(str(self.files.path(namespace, file_id).resolve()), sha256)

    def namespaces(self) -> list[str]:
        return self.store.namespaces()

    # -- the worker ---------------------------------------------------------------------

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            namespace, job_id = item
            obj = self.store.get(namespace, job_id)
            if obj is None:
                continue
            state = jobs.openai_status(obj)
            try:
                if state in ("queued", "validating_files", "running"):
                    self.running = item
                    self._run(obj)
                elif state == "succeeded" and self.serve and not self.pool.serves(job_id):
                    self._serve(obj)
            except Exception as exc:  # a bug must fail the job, never kill the worker
                log.exception("job %s/%s", namespace, job_id)
                self._fail(namespace, job_id, "InternalError", f"{type(exc).__name__}: {exc}")
            finally:
                self.running = None

    def _run(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        namespace, job_id = meta["namespace"], meta["name"]
        folder = self.store.folder(namespace, job_id)
        job = FineTuneJob.model_validate(obj)
        cfg = resolve_trainer_config(job, folder, folder.parent)
        config = folder / CONFIG_FILE
        write_trainer_config(cfg, config)
        stages = [
            Stage(name, *STAGE_STATUS[name], command)
            for name, command in pipeline_commands(cfg, config, python=sys.executable)
        ]
        try:
            for stage in stages:
                self._stage(namespace, job_id, folder, stage)
        except Stopped:
            self._stopped(namespace, job_id)
            return
        except StageFailed as exc:
            self._fail(namespace, job_id, exc.reason, str(exc))
            return
        self._finished(namespace, job_id, folder, serving=cfg.export.enabled and self.serve)

    def _stage(self, namespace: str, job_id: str, folder: Path, stage: Stage) -> None:
        obj = self.store.get(namespace, job_id)
        if obj is None or obj["spec"].get("suspend"):
            raise Stopped
        self._set_phase(namespace, job_id, stage.phase, stage.condition, "Running")
        if stage.name == "train":
            self.store.add_event(namespace, job_id, "info", "Fine-tuning job started")
        termination = folder / f"{stage.name}.error"
        termination.unlink(missing_ok=True)
        env = {**os.environ, TERMINATION_LOG_ENV: str(termination), "PYTHONUNBUFFERED": "1"}
        with (folder / f"{stage.name}.log").open("w") as out, self.child_lock:
            self.child = subprocess.Popen(stage.command, stdout=out, stderr=subprocess.STDOUT,
                                          env=env)  # fmt: skip
        code = self.child.wait()
        with self.child_lock:
            self.child = None
        now = self.store.get(namespace, job_id) or {}
        if (now.get("spec") or {}).get("suspend"):
            raise Stopped
        if code == EXIT_PREEMPTED:
            raise StageFailed("Preempted", f"{stage.name} was stopped by a signal")
        if code != 0:
            reason = termination.read_text().strip() if termination.is_file() else ""
            failed = f"{stage.name.capitalize()}Failed"
            raise StageFailed(failed, reason or f"{stage.name} failed (exit {code})")
        summaries = {"train": ("metrics", METRICS_FILE, TrainMetrics),
                     "export": ("export", EXPORT_FILE, ExportResult)}  # fmt: skip
        key, summary = None, None
        if stage.name in summaries:
            key, name, model = summaries[stage.name]
            summary = read_result(folder / name, model).summary()
        self.store.update(namespace, job_id,
                          lambda o: finish_stage(o, stage.name, folder, key, summary))  # fmt: skip

    def _finished(self, namespace: str, job_id: str, folder: Path, serving: bool) -> None:
        if not serving:
            self._set_phase(namespace, job_id, "Succeeded", "Succeeded", "Completed")
            self._complete(namespace, job_id)
            self.store.add_event(namespace, job_id, "info", "The job has successfully completed")
            return
        self._set_phase(namespace, job_id, "Serving", "ServingReady", "Starting", "False")
        obj = self.store.get(namespace, job_id)
        if obj is not None:
            self._serve(obj)

    def _serve(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        namespace, job_id = meta["namespace"], meta["name"]
        try:
            how = self.pool.add(obj, self.store.folder(namespace, job_id))
        except ServingError as exc:
            self._fail(namespace, job_id, "ServingFailed", str(exc))
            return
        first = obj["status"].get("completionTime") is None
        self._condition(namespace, job_id, "ServingReady", "True", "Ready", how)
        self._complete(namespace, job_id)
        if first:
            self.store.add_event(namespace, job_id, "info", f"New fine-tuned model {how}")
            self.store.add_event(namespace, job_id, "info", "The job has successfully completed")

    # -- status -------------------------------------------------------------------------

    def _condition(self, namespace: str, job_id: str, kind: str, status: str, reason: str,
                   message: str) -> None:  # fmt: skip
        self.store.update(namespace, job_id,
                          lambda o: set_condition(o, kind, status, reason, message))  # fmt: skip

    def _set_phase(self, namespace: str, job_id: str, phase: str, condition: str, reason: str,
                   status: str = "False") -> None:  # fmt: skip
        self.store.update(namespace, job_id,
                          lambda o: set_phase(o, phase, condition, reason, status))  # fmt: skip

    def _complete(self, namespace: str, job_id: str) -> None:
        self.store.update(namespace, job_id, complete)

    def _fail(self, namespace: str, job_id: str, reason: str, message: str) -> None:
        self.store.update(namespace, job_id, lambda o: fail(o, reason, message))
        self.store.add_event(namespace, job_id, "error", f"Fine-tuning job failed: {message}")

    def _stopped(self, namespace: str, job_id: str) -> None:
        obj = self.store.get(namespace, job_id) or {}
        if jobs.openai_status(obj) == "paused":
            self._set_phase(namespace, job_id, "Suspended", "Suspended", "Paused", "True")

    def _signal_child(self, sig: int) -> None:
        with self.child_lock:
            if self.child is not None and self.child.poll() is None:
                self.child.send_signal(sig)


def _created(obj: dict[str, Any]) -> str:
    return obj["metadata"].get("creationTimestamp", "")
