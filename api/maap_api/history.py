"""A job's training history: one point per logged step, and the checkpoints saved.

`status` must stay small, so the history lives beside it: the train stage appends to
`history.jsonl` in the output directory (read by `maap gateway --local`), and its progress
reports carry the newest points, which the operator merges into the job's history
ConfigMap (read by the gateway and the console in a cluster). Both keep at most
MAX_POINTS points: when full, every other old point is dropped, so a long run keeps its
whole shape at a coarser grain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field, ValidationError

from maap_api.camel import CamelModel

HISTORY_FILE = "history.jsonl"
HISTORY_CONFIGMAP_KEY = "history.json"
MAX_POINTS = 500
MAX_CHECKPOINTS = 50
# The newest points and checkpoints each progress report carries.
REPORT_TAIL = 20


class LogPoint(CamelModel):
    """What the Trainer logged at one step (train loss) or evaluated (valid loss)."""

    step: int = Field(ge=0)
    time: float = Field(description="Unix time of the log line.")
    train_loss: float | None = None
    valid_loss: float | None = None
    learning_rate: float | None = None
    epoch: float | None = None
    tokens_per_second: float | None = None


class CheckpointPoint(CamelModel):
    """A complete checkpoint and the figures at its step."""

    step: int = Field(ge=0)
    time: float
    path: str
    train_loss: float | None = None
    valid_loss: float | None = None


class JobHistory(CamelModel):
    points: list[LogPoint] = Field(default_factory=list)
    checkpoints: list[CheckpointPoint] = Field(default_factory=list)

    def merged(self, points: list[LogPoint], checkpoints: list[CheckpointPoint]) -> JobHistory:
        """This history with new entries: one entry per step (the later one's values fill
        the earlier one's gaps, so a step's train loss and its eval loss end in one point),
        in step order, bounded."""
        by_step = {p.step: p for p in self.points}
        for point in points:
            old = by_step.get(point.step)
            if old is None:
                by_step[point.step] = point
            else:
                fresh = point.model_dump(exclude_none=True)
                fresh["time"] = max(old.time, point.time)  # an entry sent again is no news
                by_step[point.step] = old.model_copy(update=fresh)
        saved = {c.step: c for c in self.checkpoints}
        saved.update({c.step: c for c in checkpoints})
        ordered = [by_step[s] for s in sorted(by_step)]
        kept = [saved[s] for s in sorted(saved)][-MAX_CHECKPOINTS:]
        return JobHistory(points=_thin(ordered, MAX_POINTS), checkpoints=kept)

    def up_to(self, step: int) -> JobHistory:
        """The entries at or before `step`: what a run resumed from that step's checkpoint
        keeps (the steps after it are trained, and logged, again)."""
        return JobHistory(
            points=[p for p in self.points if p.step <= step],
            checkpoints=[c for c in self.checkpoints if c.step <= step],
        )

    def tail(self, count: int = REPORT_TAIL) -> JobHistory:
        """The newest `count` points and checkpoints: what one progress report carries."""
        return JobHistory(points=self.points[-count:], checkpoints=self.checkpoints[-count:])


def _thin(points: list[LogPoint], limit: int) -> list[LogPoint]:
    """At most `limit` points: drop every other point of the older half until it fits.

    Evaluated points (valid loss) are rarer than logged ones and stay while there are
    train-only points to drop; the first point (the eval before training) always stays."""
    while len(points) > limit:
        half = len(points) // 2
        old, new = points[:half], points[half:]
        kept = [p for i, p in enumerate(old) if i % 2 == 0 or p.valid_loss is not None]
        if len(kept) == len(old):
            kept = old[::2]
        if len(kept) == len(old):  # too few points to halve (a limit below 4)
            return points[-limit:] if limit > 0 else []
        points = kept + new
    return points


# -- the history file (data plane writes, local readers read) ---------------------------------


def append_history(
    directory: Path, point: LogPoint | None = None, checkpoint: CheckpointPoint | None = None
) -> None:
    """One JSON line per entry; a reader tolerates a torn last line."""
    lines = []
    if point is not None:
        lines.append(json.dumps({"point": point.to_json_dict()}))
    if checkpoint is not None:
        lines.append(json.dumps({"checkpoint": checkpoint.to_json_dict()}))
    if not lines:
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HISTORY_FILE
    # A line torn by a kill mid-write must not swallow the first line appended after it.
    lead = "" if _ends_with_newline(path) else "\n"
    with path.open("a", encoding="utf-8") as out:
        out.write(lead + "\n".join(lines) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _ends_with_newline(path: Path) -> bool:
    """True for a missing or empty file too: nothing to close."""
    try:
        with path.open("rb") as existing:
            existing.seek(0, os.SEEK_END)
            if existing.tell() == 0:
                return True
            existing.seek(-1, os.SEEK_END)
            return existing.read(1) == b"\n"
    except OSError:
        return True


def write_history(directory: Path, history: JobHistory) -> None:
    """Replace the history file with `history` at once (temp file + rename): a resumed run
    drops what the run before it logged after its last checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"point": p.to_json_dict()}) for p in history.points]
    lines += [json.dumps({"checkpoint": c.to_json_dict()}) for c in history.checkpoints]
    tmp = directory / f".{HISTORY_FILE}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in lines))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, directory / HISTORY_FILE)


def read_history(directory: Path) -> JobHistory:
    """The history file of an output directory (empty when there is none yet)."""
    points: list[LogPoint] = []
    checkpoints: list[CheckpointPoint] = []
    try:
        text = (directory / HISTORY_FILE).read_text(encoding="utf-8")
    except OSError:
        return JobHistory()
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            if "point" in entry:
                points.append(LogPoint.model_validate(entry["point"]))
            elif "checkpoint" in entry:
                checkpoints.append(CheckpointPoint.model_validate(entry["checkpoint"]))
        except (ValueError, ValidationError, TypeError):
            continue  # a line torn by a kill mid-write
    return JobHistory().merged(points, checkpoints)


def history_configmap_data(history: JobHistory) -> dict[str, str]:
    """The `data` of a job's history ConfigMap."""
    return {HISTORY_CONFIGMAP_KEY: history.model_dump_json(by_alias=True, exclude_none=True)}


def parse_history_configmap(data: dict[str, str] | None) -> JobHistory:
    """The history a ConfigMap's `data` holds (empty when it holds none or nonsense)."""
    raw = (data or {}).get(HISTORY_CONFIGMAP_KEY)
    if not raw:
        return JobHistory()
    try:
        return JobHistory.model_validate_json(raw)
    except ValidationError:
        return JobHistory()
