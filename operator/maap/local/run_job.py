"""The job of a `maap run`, as the gateway reads jobs: for the console `maap run` serves.

`RunJob` is the FineTuneJob object of this run (metadata, spec, status), written as the
runner goes stage by stage, with the functions `maap gateway --local` writes its jobs'
status with. `RunBackend` is the gateway's job backend over that one job: the console and
the OpenAI job routes read it (the live progress and the loss history come from the run's
output directory, as they come from a local gateway job's), the inference endpoint routes
to the run's own server once it is ready. It creates, pauses and cancels nothing: that is
`maap gateway --local`'s.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

from maap_api.finetunejob import FineTuneJob
from maap_api.history import JobHistory, read_history

from maap.gateway import jobs
from maap.gateway.backend import JobEvent, ServedModel
from maap.gateway.errors import APIError
from maap.gateway.local_status import (
    STAGE_STATUS,
    complete,
    fail,
    finish_stage,
    new_status,
    set_condition,
    set_phase,
    with_live_progress,
)
from maap.gateway.tenancy import DEFAULT_TENANT
from maap.pipeline import now

READ_ONLY = (
    "this console shows the job of one `maap run`; it creates, pauses and cancels none: "
    "run `maap gateway --local` for the fine-tuning API"
)


class RunJob:
    """The run's FineTuneJob object, in the default tenant's namespace, and its events."""

    def __init__(self, job: FineTuneJob, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.lock = threading.Lock()
        manifest = job.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.obj: dict[str, Any] = {
            "apiVersion": manifest.get("apiVersion"),
            "kind": manifest.get("kind"),
            "metadata": {"name": job.metadata.name, "namespace": DEFAULT_TENANT,
                         "creationTimestamp": now(), "generation": 1},
            "spec": manifest["spec"],
            "status": new_status(),
        }  # fmt: skip
        self.happened: list[JobEvent] = []
        self.served: ServedModel | None = None

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.obj)

    def events(self) -> list[JobEvent]:
        with self.lock:
            return list(self.happened)

    def _event(self, level: str, message: str) -> None:
        self.happened.append(JobEvent(time.time(), level, message))

    # -- what the runner reports --------------------------------------------------------

    def stage_started(self, stage: str) -> None:
        phase, condition = STAGE_STATUS[stage]
        with self.lock:
            set_phase(self.obj, phase, condition, "Running")
            if stage == "train":
                self._event("info", "Fine-tuning job started")

    def stage_finished(self, stage: str, summary_key: str | None, summary: Any = None) -> None:
        """The stage's condition, summary and artifacts (local_status.finish_stage)."""
        with self.lock:
            finish_stage(self.obj, stage, self.output_dir, summary_key, summary)

    def failed(self, reason: str, message: str) -> None:
        with self.lock:
            fail(self.obj, reason, message)
            self._event("error", f"Fine-tuning job failed: {message}")

    def succeeded(self) -> None:
        """Done, and not served (`--no-serve`, or serving off in the spec)."""
        with self.lock:
            set_phase(self.obj, "Succeeded", "Succeeded", "Completed")
            complete(self.obj)
            self._event("info", "The job has successfully completed")

    def serving_starting(self) -> None:
        with self.lock:
            set_phase(self.obj, "Serving", "ServingReady", "Starting")

    def serving_ready(self, upstream: str, token: str | None) -> None:
        """The run's server answers at `upstream` (its base URL, without /v1)."""
        with self.lock:
            self.obj["status"]["phase"] = "Serving"
            set_condition(self.obj, "ServingReady", "True", "Ready", f"serving at {upstream}")
            complete(self.obj)
            self.served = ServedModel(
                name=jobs.fine_tuned_model_name(self.obj), upstream=upstream,
                upstream_model=self.name, token=token, created=int(time.time()),
            )  # fmt: skip
            self._event("info", f"New fine-tuned model {self.served.name} served at {upstream}")
            self._event("info", "The job has successfully completed")


class RunBackend:
    """The gateway's JobBackend over one `maap run` (see maap.gateway.backend)."""

    def __init__(self, run: RunJob) -> None:
        self.run = run

    def _mine(self, namespace: str, job_id: str) -> bool:
        return namespace == DEFAULT_TENANT and job_id == self.run.name

    def get(self, namespace: str, job_id: str) -> dict[str, Any] | None:
        if not self._mine(namespace, job_id):
            return None
        return with_live_progress(self.run.snapshot(), self.run.output_dir)

    def list(self, namespace: str) -> list[dict[str, Any]]:
        found = self.get(namespace, self.run.name)
        return [found] if found is not None else []

    def events(self, namespace: str, job_id: str) -> list[JobEvent]:
        return self.run.events() if self._mine(namespace, job_id) else []

    def history(self, namespace: str, job_id: str) -> JobHistory:
        if not self._mine(namespace, job_id):
            return JobHistory()
        return read_history(self.run.output_dir)

    def served_models(self, namespace: str) -> list[ServedModel]:
        served = self.run.served
        return [served] if served is not None and namespace == DEFAULT_TENANT else []

    def namespaces(self) -> list[str]:
        return [DEFAULT_TENANT]

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        raise APIError(405, READ_ONLY, code="read_only")

    def set_suspend(self, namespace: str, job_id: str, suspend: bool) -> dict[str, Any]:
        raise APIError(405, READ_ONLY, code="read_only")

    def cancel(self, namespace: str, job_id: str) -> dict[str, Any]:
        raise APIError(405, READ_ONLY, code="read_only")

    def data_location(self, namespace: str, file_id: str, sha256: str) -> jobs.DataLocation:
        raise APIError(405, READ_ONLY, code="read_only")
