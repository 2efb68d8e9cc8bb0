"""Errors a user can fix, and how a stage reports them.

A stage that fails writes one line to its termination log (in a pod,
/dev/termination-log, which Kubernetes surfaces in the Pod status; locally, a file the
runner reads), so the operator and the CLI can show the reason without a traceback.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class UserError(Exception):
    """Bad input: the message names the field or file and says what would be valid."""


class DatasetError(UserError):
    pass


class ConfigError(UserError):
    pass


class TrainingPreempted(Exception):
    """The stage was stopped (SIGTERM) and saved what it could: the next pod resumes.

    Not a failure: the stage exits with preemption.EXIT_PREEMPTED, which the training
    Job's podFailurePolicy does not count against its backoffLimit."""


TERMINATION_LOG_ENV = "MAAP_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


def write_termination_message(message: str) -> None:
    target = os.environ.get(TERMINATION_LOG_ENV)
    path = Path(target) if target else DEFAULT_TERMINATION_LOG
    if not target and not path.parent.exists():
        return
    # Kubernetes keeps at most 4096 bytes of it.
    with contextlib.suppress(OSError):
        path.write_text(message[:4000] + "\n", encoding="utf-8")
