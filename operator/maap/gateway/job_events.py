"""A job's events and checkpoints as the OpenAI API lists them, newest first, paginated.

Events are what happened (the FineTuneJob's Events or the local runner's transitions:
message events) and one metrics event per logged step of the training history (step,
train loss, valid loss). Ids are derived from what they describe, so a page boundary
(`after`) stays put while new events arrive.
"""

from __future__ import annotations

import hashlib
from typing import Any

from maap_api.history import JobHistory

from maap.gateway.backend import JobEvent
from maap.gateway.errors import APIError
from maap.gateway.jobs import short_id

MAX_LIMIT = 10000


def _event_id(job_id: str, key: str) -> str:
    return f"ftevent-{short_id(job_id)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def job_events(job_id: str, happened: list[JobEvent], history: JobHistory) -> list[dict[str, Any]]:
    """Every event of the job, newest first."""
    events: list[dict[str, Any]] = []
    for event in happened:
        events.append({
            "object": "fine_tuning.job.event",
            "id": _event_id(job_id, f"m/{event.time}/{event.message}"),
            "created_at": int(event.time),
            "level": event.level,
            "message": event.message,
            "data": {},
            "type": "message",
        })  # fmt: skip
    for point in history.points:
        data: dict[str, Any] = {"step": point.step}
        parts = [f"Step {point.step}"]
        if point.train_loss is not None:
            data["train_loss"] = point.train_loss
            parts.append(f"training loss={point.train_loss:.4f}")
        if point.valid_loss is not None:
            data["valid_loss"] = point.valid_loss
            parts.append(f"validation loss={point.valid_loss:.4f}")
        if point.learning_rate is not None:
            data["learning_rate"] = point.learning_rate
        if point.tokens_per_second is not None:
            data["tokens_per_second"] = point.tokens_per_second
        events.append({
            "object": "fine_tuning.job.event",
            "id": _event_id(job_id, f"s/{point.step}"),
            "created_at": int(point.time),
            "level": "info",
            "message": ": ".join([parts[0], ", ".join(parts[1:])]) if parts[1:] else parts[0],
            "data": data,
            "type": "metrics",
        })  # fmt: skip
    # Newest first; at one second, metrics by step, then messages in the order they came.
    order = {id(e): i for i, e in enumerate(events)}
    events.sort(key=lambda e: (e["created_at"], e["data"].get("step", -1), order[id(e)]))
    return events[::-1]


def job_checkpoints(job: dict[str, Any], model_name: str, history: JobHistory) -> list[dict]:
    """The trainer's complete checkpoints, newest first."""
    job_id = job["metadata"]["name"]
    out = []
    measured = {p.step: p for p in history.points}
    for checkpoint in reversed(history.checkpoints):
        metrics: dict[str, Any] = {"step": float(checkpoint.step)}
        at_step = measured.get(checkpoint.step)
        train_loss = at_step.train_loss if at_step else None
        if train_loss is None:
            train_loss = checkpoint.train_loss
        if train_loss is not None:
            metrics["train_loss"] = train_loss
        # Only a valid loss measured at this step: an older one would pass for this model's.
        if at_step is not None and at_step.valid_loss is not None:
            metrics["valid_loss"] = at_step.valid_loss
        out.append({
            "object": "fine_tuning.job.checkpoint",
            "id": f"ftckpt-{short_id(job_id)}-{checkpoint.step}",
            "created_at": int(checkpoint.time),
            "fine_tuned_model_checkpoint": f"{model_name}:ckpt-step-{checkpoint.step}",
            "fine_tuning_job_id": job_id,
            "metrics": metrics,
            "step_number": checkpoint.step,
            "maap": {"path": checkpoint.path},
        })  # fmt: skip
    return out


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """An OpenAI list page: the items after the one with id `after`, at most `limit`."""
    if not 1 <= limit <= MAX_LIMIT:
        raise APIError(400, f"limit: must be from 1 to {MAX_LIMIT}, got {limit}", "limit")
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(400, f"after: no item with id {after!r} in this list", "after")
        start = ids.index(after) + 1
    chosen = items[start : start + limit]
    return {
        "object": "list",
        "data": chosen,
        "has_more": start + limit < len(items),
        "first_id": chosen[0]["id"] if chosen else None,
        "last_id": chosen[-1]["id"] if chosen else None,
    }
