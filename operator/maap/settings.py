"""The operator's own settings: built once by `maap operator` from flags and environment.

Flags win over environment variables (each option names its variable, as the Helm chart
sets them); handlers receive the result through Kopf's memo, never read the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from maap.podspec import OperatorSettings


@dataclass(frozen=True)
class OperatorConfig:
    # What the operator puts into the pods it creates (images, pull policy, progress URL).
    workloads: OperatorSettings = field(default_factory=OperatorSettings)
    # Watch only these namespaces (empty: the whole cluster).
    namespaces: tuple[str, ...] = ()
    liveness_port: int = 8080
    metrics_port: int = 9090
    # The progress API that training pods post to (0: off).
    progress_port: int = 8081
    # Handlers are synchronous and wait on the API server: threads, not CPU, bound them.
    max_workers: int = 40
    # How often a job that waits on something outside its children (a pod that cannot be
    # created, an expiring TTL) is looked at again. Changing children wake it at once.
    wait_check_seconds: float = 10.0
    # A full resync from the in-memory caches, as a safety net: no API requests unless a
    # child differs from what its builder says.
    resync_seconds: float = 600.0
    # High availability: the Kopf peering object replicas share (None: standalone).
    peering: str | None = None
    priority: int = 0
