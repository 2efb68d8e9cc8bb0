"""Writing a FineTuneJob's status: only what changed, and Events for what a user must see.

The reconcile owns phase, observedGeneration, conditions, endpoint, authSecret, the
artifact location and the start/completion times; the progress API owns progress,
metrics, export and the artifact paths. Both merge-patch their own keys (artifacts is
merged), so neither overwrites the other.
"""

from __future__ import annotations

from typing import Any

import kopf

from maap import metrics
from maap.kube import Kube
from maap.pipeline import ConditionUpdate, merge_conditions, now

TERMINAL = {"Succeeded", "Failed"}


def _same_conditions(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def strip(items: list[dict[str, Any]]) -> list[tuple]:
        return sorted(
            (c["type"], c["status"], c["reason"], c.get("message", ""), c.get("observedGeneration"))
            for c in items
        )

    return strip(a) == strip(b)


def _holds(old: Any, new: Any) -> bool:
    """`old` already says what `new` says (objects: every key of `new`, recursively)."""
    if isinstance(new, dict):
        return isinstance(old, dict) and all(_holds(old.get(k), v) for k, v in new.items())
    return old == new


class StatusWriter:
    def __init__(self, k: Kube, body: dict[str, Any], written: dict[str, Any] | None) -> None:
        self.k, self.body = k, body
        meta = body["metadata"]
        self.namespace, self.name = meta["namespace"], meta["name"]
        self.generation = meta.get("generation")
        # The cache may lag behind our own last patch: what we wrote last wins.
        merged = {**(body.get("status") or {}), **(written or {})}
        self.old: dict[str, Any] = {k: v for k, v in merged.items() if v is not None}
        self.current: dict[str, Any] = dict(self.old)

    def info(self, reason: str, message: str) -> None:
        kopf.info(self.body, reason=reason, message=message)

    def write(
        self,
        phase: str,
        updates: list[ConditionUpdate],
        extra: dict[str, Any] | None = None,
    ) -> None:
        old = self.old
        conditions = merge_conditions(list(old.get("conditions") or []), updates, self.generation)
        new: dict[str, Any] = {
            "phase": phase,
            "observedGeneration": self.generation,
            "conditions": conditions,
            **(extra or {}),
        }
        if not old.get("startTime"):
            new["startTime"] = now()
        if phase in TERMINAL and not old.get("completionTime"):
            new["completionTime"] = now()
        changed: dict[str, Any] = {}
        for key, value in new.items():
            if value is None:
                if key in old:
                    changed[key] = None  # merge patch: remove what is no longer true
            elif not _holds(old.get(key), value):
                changed[key] = value
        # Rewriting identical conditions would only bump timestamps: compare without them.
        if _same_conditions(old.get("conditions") or [], conditions):
            changed.pop("conditions", None)
        if changed:
            self.k.patch_status(self.namespace, self.name, changed)
            for key, value in changed.items():
                if value is None:
                    self.current.pop(key, None)
                elif isinstance(value, dict) and isinstance(self.current.get(key), dict):
                    self.current[key] = {**self.current[key], **value}
                else:
                    self.current[key] = value
        metrics.record_phase(self.namespace, self.name, phase)
        self._post_events(old, phase, updates, conditions)

    def _post_events(
        self,
        old: dict[str, Any],
        phase: str,
        updates: list[ConditionUpdate],
        conditions: list[dict[str, Any]],
    ) -> None:
        previous = {c["type"]: c for c in old.get("conditions") or []}
        for update in updates:
            before = previous.get(update.type) or {}
            if update.warning and (before.get("reason"), before.get("message")) != (
                update.reason,
                update.message,
            ):
                kopf.warn(self.body, reason=update.reason, message=update.message)
        if old.get("phase") != phase:
            failed = next((c for c in conditions if c["type"] == "Failed"), None)
            if phase == "Failed" and failed:
                kopf.warn(self.body, reason=failed["reason"], message=failed["message"])
            else:
                kopf.info(self.body, reason=phase, message=_phase_message(phase, conditions))


def _phase_message(phase: str, conditions: list[dict[str, Any]]) -> str:
    latest = max(conditions, key=lambda c: c["lastTransitionTime"], default=None)
    return f"{phase}: {latest['message']}" if latest else phase
