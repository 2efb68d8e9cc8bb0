"""Stage output directories: published whole or not at all, and measured.

A stage builds each directory as `<name>.partial` and publishes it with one rename, so a
crash never leaves a half-written model where the next stage (or a resumed run) would
trust it. Standard library only: the control plane (`maap run`'s summary) uses it too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def publish(staging: Path, final: Path) -> None:
    """Move the finished `staging` directory to `final`, replacing what was there.

    The old copy is renamed aside first and deleted after, so `final` is missing only
    between two renames, never while a large tree is deleted.
    """
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)  # left by a publish that crashed after its first rename
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    if old.exists():
        shutil.rmtree(old)


def file_sizes(directory: Path) -> dict[str, int]:
    """Size in bytes of each file under `directory`, by its relative path."""
    return {
        f.relative_to(directory).as_posix(): f.stat().st_size
        for f in sorted(directory.rglob("*"))
        if f.is_file()
    }


def directory_size(directory: Path) -> int:
    """Total size in bytes of the files under `directory`."""
    return sum(file_sizes(directory).values())
