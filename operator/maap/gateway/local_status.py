"""How a job run on this machine writes its status, as the operator's pipeline would.

`maap gateway --local` and `maap run` both keep their jobs as the objects a cluster holds
(metadata, spec, status): these functions change such an object in place, so the OpenAI
mapping and the console read a local job exactly as a cluster one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maap_api.results import ArtifactPaths
from maap_trainer.progress import read_progress

from maap.pipeline import now
from maap.progress_api import status_progress

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


def finish_stage(
    obj: dict[str, Any], stage: str, folder: Path, summary_key: str | None, summary: Any
) -> None:
    """A stage completed: its condition, its summary (status.metrics, status.export) and
    the artifacts its output folder holds so far (status.artifacts)."""
    _, condition = STAGE_STATUS[stage]
    set_condition(obj, condition, "True", "Completed", f"{stage} completed")
    if summary_key is not None and summary is not None:
        obj["status"][summary_key] = summary.to_json_dict()
    found = ArtifactPaths.found_in(folder, obj["metadata"]["name"]).to_json_dict()
    obj["status"]["artifacts"] = found or None


def with_live_progress(obj: dict[str, Any], folder: Path) -> dict[str, Any]:
    """While it trains, the job's progress is the train stage's newest report in its
    output folder (the operator gets the same report posted)."""
    if obj["status"].get("phase") == "Training":
        report = read_progress(folder)
        if report is not None and report.stage == "training":
            obj["status"]["progress"] = status_progress(report)
    return obj


def complete(obj: dict[str, Any]) -> None:
    """The job ended (or started serving): the completion time once, no progress left."""
    obj["status"].setdefault("completionTime", now())
    obj["status"].pop("progress", None)


def fail(obj: dict[str, Any], reason: str, message: str) -> None:
    set_phase(obj, "Failed", "Failed", reason, "True")
    set_condition(obj, "Failed", "True", reason, message)
    complete(obj)
