"""Preemption-safe training: SIGTERM saves a checkpoint at the next step boundary.

Kubernetes stops a pod (eviction, preemption, `kubectl delete pod`, a node drain) with
SIGTERM and kills it after its grace period. A run that only checkpoints every N steps
would lose up to N steps; instead the training loop finishes the step in progress, saves
a checkpoint, stops, and the process exits with EXIT_PREEMPTED. The training Job's
podFailurePolicy ignores that exit code (it does not count against backoffLimit), and the
replacement pod resumes from the checkpoint just written.

Every rank must stop at the same step (a save under DeepSpeed is collective), so the
flag is agreed on with an all-reduce at each step end when several processes train.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from maap_api.errors import TrainingPreempted

log = logging.getLogger("maap.preemption")

# EX_TEMPFAIL: "try again later". The operator's podFailurePolicy ignores this exit code.
EXIT_PREEMPTED = 75


class PreemptionWatch:
    """Turns SIGTERM into "save and stop at the end of this step".

    Before the training loop starts there is nothing to save: SIGTERM then ends the stage
    at once (TrainingPreempted), like the default action would, but with our exit code.
    """

    def __init__(self) -> None:
        self.requested = False
        self.in_loop = False
        self.stopped_at_step: int | None = None
        self._previous: Any = None

    def install(self) -> PreemptionWatch:
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.requested = True
        if not self.in_loop:
            raise TrainingPreempted("stopped (SIGTERM) before training began; nothing to save")
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")

    def callback(self) -> Any:
        from transformers import TrainerCallback

        watch = self

        class PreemptionCallback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                watch.in_loop = True

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if not _agreed(watch.requested):
                    return
                watch.requested = True  # another rank was told: this one stops too
                control.should_save = True
                control.should_training_stop = True
                watch.stopped_at_step = int(state.global_step)

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                watch.in_loop = False

        return PreemptionCallback()


def _agreed(local: bool) -> bool:
    """True on every rank as soon as one rank got SIGTERM (a MAX all-reduce)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
