"""The base-build cache's key: what makes two base builds the same build (fast, no builder)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from maap_trainer.export.base_cache import build_key
from maap_trainer.export.genai_build import BuildRequest


def checkpoint(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    return root


def test_the_key_follows_the_checkpoint_files_and_every_build_setting(tmp_path: Path) -> None:
    base = BuildRequest(checkpoint(tmp_path / "ckpt"), tmp_path / "out-a", "int4", "cpu")
    key = build_key(base)
    # Where the build goes is not part of what it is.
    assert build_key(replace(base, output=tmp_path / "out-b")) == key
    for changed in (
        replace(base, precision="int8"),
        replace(base, execution_provider="cuda"),
        replace(base, quantization="rtn"),
        replace(base, extra_options=("fuse_qkv=false",)),
    ):
        assert build_key(changed) != key, changed
    weights = base.checkpoint / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\1" * 64)  # rewritten in place, same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert build_key(base) != key
