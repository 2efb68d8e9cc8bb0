"""API requests the operator makes at steady state, from the API server's own audit log.

The test control plane writes one audit line per request (ControlPlane(audit_log=...)).
Requests of the cluster's own components (kube-apiserver, controller-manager, scheduler,
kwok) are told apart by their user agent; what is left in a window where the benchmark
itself sends nothing is the operator's. Watches are long-lived, one per kind for the whole
operator, not per job: they are counted apart.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

CLUSTER_AGENTS = ("kube-apiserver/", "kube-controller-manager/", "kube-scheduler/", "kwok/")


def _received(entry: dict) -> float:
    return datetime.fromisoformat(
        entry["requestReceivedTimestamp"].replace("Z", "+00:00")
    ).timestamp()


def client_requests(audit_log: Path, start: float, end: float) -> Counter[str]:
    """'verb resource[/subresource]' -> count, for requests not sent by the cluster itself."""
    counts: Counter[str] = Counter()
    for line in audit_log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("userAgent", "").startswith(CLUSTER_AGENTS):
            continue
        if not start <= _received(entry) <= end:
            continue
        ref = entry.get("objectRef") or {}
        resource = ref.get("resource") or entry.get("requestURI", "?").split("?")[0]
        if ref.get("subresource"):
            resource += f"/{ref['subresource']}"
        counts[f"{entry['verb']} {resource}"] += 1
    return counts


def requests_in_window(audit_log: Path, window_s: float) -> tuple[float, dict[str, int]]:
    """Requests per minute (watches excluded) over the next `window_s`, and the breakdown."""
    start = time.time()
    time.sleep(window_s)
    end = time.time()
    time.sleep(2)  # the audit backend writes in batches
    counts = client_requests(audit_log, start, end)
    total = sum(n for key, n in counts.items() if not key.startswith("watch "))
    return total * 60.0 / window_s, dict(counts.most_common())
