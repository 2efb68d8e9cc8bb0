"""How a job run on this machine writes its status, as the operator's pipeline would.

`maap gateway --local` and `maap run` both keep their jobs as the objects a cluster holds
(metadata, spec, status): these functions change such an object in place, so the OpenAI
mapping and the console read a local job exactly as a cluster one.
"""

from __future__ import annotations

from typing import Any

from maap.pipeline import now

# The phase and the condition each stage reports, as the operator's pipeline names them.
STAGE_STATUS = {
    "fetch": ("Fetching", "Fetched"),
    "train": ("Training", "Trained"),
    "export": ("Exporting", "Exported"),
    "publish": ("Publishing", "Published"),
}


def new_status() -> dict[str, Any]:
    return {"phase": "Pending", "conditions": []}


def set_condition(obj: dict[str, Any], kind: str, status: str, reason: str, message: str) -> None:
    """Replace the condition of that type (one per type, as the operator keeps them)."""
    conditions = [c for c in obj["status"].get("conditions", []) if c["type"] != kind]
    conditions.append({
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": now(),
        "observedGeneration": obj["metadata"].get("generation"),
    })  # fmt: skip
    obj["status"]["conditions"] = conditions


def set_phase(
    obj: dict[str, Any], phase: str, condition: str, reason: str, status: str = "False"
) -> None:
    """Enter a phase: the phase, the start time once, and the phase's condition."""
    obj["status"]["phase"] = phase
    obj["status"].setdefault("startTime", now())
    set_condition(obj, condition, status, reason, phase)


def complete(obj: dict[str, Any]) -> None:
    """The job ended (or started serving): the completion time once, no progress left."""
    obj["status"].setdefault("completionTime", now())
    obj["status"].pop("progress", None)


def fail(obj: dict[str, Any], reason: str, message: str) -> None:
    set_phase(obj, "Failed", "Failed", reason, "True")
    set_condition(obj, "Failed", "True", reason, message)
    complete(obj)
