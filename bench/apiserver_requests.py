"""API requests the operator makes at steady state, counted by the API server itself.

The API server's `apiserver_request_total` counter, summed over the resources the
operator reads and writes, minus watches (long-lived, one per kind, not per job). Other
clients of the test cluster (controller-manager, scheduler, kwok) touch those resources
too: a window measured before the operator starts is their share, subtracted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

# What the operator touches (maap.rbac RULES), as the API server names them.
OPERATOR_RESOURCES = frozenset({
    "finetunejobs", "configmaps", "persistentvolumeclaims", "services", "secrets", "jobs",
    "deployments", "pods", "events",
})  # fmt: skip

Scrape = Callable[[], str]  # GET /metrics of the API server, as text


def request_count(metrics_text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "apiserver_request_total"
                and labels.get("resource") in OPERATOR_RESOURCES
                and labels.get("verb") != "WATCH"
            ):
                total += sample.value
    return total


def requests_per_minute(scrape: Scrape, window_s: float) -> float:
    """Requests per minute to the operator's resources over the next `window_s` seconds."""
    before = request_count(scrape())
    time.sleep(window_s)
    after = request_count(scrape())
    # The two scrapes are GETs of /metrics, not of these resources: nothing to subtract.
    return (after - before) * 60.0 / window_s
