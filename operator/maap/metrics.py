"""Prometheus metrics of the operator (Kopf has none of its own)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Suspended", "Training", "Exporting", "Serving", "Succeeded", "Failed")
FINETUNEJOBS = Gauge("maap_finetunejobs", "FineTuneJobs by phase", ["phase"])
# One series per job and phase, 1 for the phase it is in (as kube-state-metrics does for
# pods): an alert can name the job, and a dashboard can count by any label.
FINETUNEJOB_PHASE = Gauge(
    "maap_finetunejob_phase",
    "1 for the phase the FineTuneJob is in, 0 for the others",
    ["namespace", "name", "phase"],
)
RECONCILE_SECONDS = Histogram(
    "maap_reconcile_duration_seconds",
    "Time spent in one reconcile of a FineTuneJob",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("maap_reconcile_errors_total", "Reconciles that raised")

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def record_phase(namespace: str, name: str, phase: str) -> None:
    with _lock:
        _phases[(namespace, name)] = phase
        for each in PHASES:
            FINETUNEJOB_PHASE.labels(namespace, name, each).set(1 if each == phase else 0)
        _refresh()


def forget(namespace: str, name: str) -> None:
    with _lock:
        if _phases.pop((namespace, name), None) is not None:
            for each in PHASES:
                FINETUNEJOB_PHASE.remove(namespace, name, each)
        _refresh()


def _refresh() -> None:
    counts: dict[str, int] = {}
    for phase in _phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase in PHASES:
        FINETUNEJOBS.labels(phase=phase).set(counts.get(phase, 0))


def start_server(port: int) -> None:
    if port > 0:
        start_http_server(port)
