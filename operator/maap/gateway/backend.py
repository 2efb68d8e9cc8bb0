"""What the gateway needs from wherever jobs run: the cluster or this machine.

Every method takes the tenant's namespace first, and an object of another namespace is
never returned (the routes answer 404, never 403, so ids do not leak across tenants).
Methods are blocking; the routes call them from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from maap_api.history import JobHistory

from maap.gateway.jobs import DataLocation


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job, as its Events (or the local runner) tell it."""

    time: float
    level: str  # info | warn | error
    message: str


@dataclass(frozen=True)
class ServedModel:
    """A model the inference endpoint can route to."""

    name: str  # what clients send as `model`
    upstream: str  # base URL of the server, e.g. http://10.0.0.5:8000
    upstream_model: str  # the `model` that server knows it by
    token: str | None = None  # the server's bearer token, if it requires one
    owned_by: str = "maap"
    parent: str | None = None  # the base model of a fine-tune
    created: int = 0


class JobBackend(Protocol):
    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the FineTuneJob; returns it as stored (metadata.creationTimestamp set)."""

    def get(self, namespace: str, job_id: str) -> dict[str, Any] | None: ...

    def list(self, namespace: str) -> list[dict[str, Any]]:
        """The gateway's jobs in that namespace (label maap.dev/gateway), any order."""

    def set_suspend(self, namespace: str, job_id: str, suspend: bool) -> dict[str, Any]:
        """Pause (the training pod saves a checkpoint and stops) or resume from it."""

    def cancel(self, namespace: str, job_id: str) -> dict[str, Any]:
        """Stop for good: suspended, annotated maap.dev/cancelled."""

    def events(self, namespace: str, job_id: str) -> list[JobEvent]: ...

    def history(self, namespace: str, job_id: str) -> JobHistory: ...

    def served_models(self, namespace: str) -> list[ServedModel]:
        """Every tuned model of the namespace that is serving now."""

    def data_location(self, namespace: str, file_id: str, sha256: str) -> DataLocation:
        """Where the stages read a stored file from (a path here, a URL in a cluster)."""

    def namespaces(self) -> list[str]:
        """Every namespace that has gateway jobs (for the webhook watcher)."""
