"""Checkpoints in the artifact directory, and which one a restarted run resumes from.

The Trainer writes `checkpoint-N/` piece by piece (weights, optimizer, then state), on
every rank under DeepSpeed. A pod killed half-way leaves a directory that looks like a
checkpoint but is not one, so a checkpoint counts only once every rank has finished it
and rank 0 has written a marker into it.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger("maap.checkpoints")

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = ".maap-complete"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Every checkpoint directory under root, complete or not, by step."""
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((step, p) for step, p in found if step is not None)


def newest_complete(root: Path) -> Path | None:
    complete = [p for _, p in list_checkpoints(root) if (p / COMPLETE_MARKER).is_file()]
    return complete[-1] if complete else None


def discard_incomplete(root: Path) -> list[Path]:
    """Remove half-written checkpoints (rank 0 only), so they are never mistaken for one."""
    removed = []
    for _, path in list_checkpoints(root):
        if not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.warning("removed incomplete checkpoints: %s", ", ".join(p.name for p in removed))
    return removed


def marker_callback() -> Any:
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """After a save, wait for every rank, then mark the checkpoint complete."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if path.is_dir():
                    (path / COMPLETE_MARKER).write_text(str(state.global_step), encoding="utf-8")

    return CheckpointMarker()
