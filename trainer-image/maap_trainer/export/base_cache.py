"""A base model's ONNX build, made once per cache and reused by every fine-tune of it.

Every LoRA fine-tune exported with `export.adapter` needs the same thing first: its base
model built by the GenAI builder (before the LoRA slots go in). That build is the slow part
of an adapter export (minutes for a 7B model) and depends only on the checkpoint and the
build settings, so it is kept in the model cache (MAAP_CACHE_DIR/exports; in a cluster the
volume every job of the namespace mounts) and copied from there.

The key is the checkpoint's files (name, size, modification time: a checkpoint written
again in place is a new key), the build settings and the builder's version. Entries are
written to a private directory and renamed, so concurrent exports never see half a build;
the cache is not pruned (an entry is about the size of one exported base). Where the cache
is read-only (stage pods mount the cluster's shared cache read-only), an entry is used if
there is one, and otherwise the base is built in place, uncached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from maap_trainer.export.genai_build import BuildRequest, build

log = logging.getLogger("maap.export")


@dataclass(frozen=True)
class CachedBuild:
    seconds: float  # the build's, 0 when reused
    reused: bool
    entry: Path


def build_key(request: BuildRequest) -> str:
    import onnxruntime_genai

    files = [
        (p.name, stat.st_size, stat.st_mtime_ns)
        for p in sorted(request.checkpoint.iterdir())
        if p.is_file() and (stat := p.stat())
    ]
    settings = {
        "files": files,
        "precision": request.precision,
        "provider": request.execution_provider,
        "quantization": request.quantization,
        "options": list(request.extra_options),
        "builder": onnxruntime_genai.__version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def build_from_cache(request: BuildRequest, log_path: Path, cache: Path) -> CachedBuild:
    """Fill request.output (replaced if present) with the build, from the cache if it has it."""
    entry = cache / f"{request.checkpoint.name}-{build_key(request)}"
    seconds, reused = 0.0, (entry / "genai_config.json").is_file()
    if reused:
        log.info("export: reusing the base build %s", entry)
    else:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=cache))
        except OSError as exc:
            # A cache this pod may only read (in a cluster, the CachedModel download Job is
            # the shared cache's one writer): build here, as if there were no cache.
            log.info("export: the base build is not cached (%s is not writable: %s)", cache, exc)
            return CachedBuild(build(request, log_path), False, request.output)
        try:
            seconds = build(replace(request, output=staging / "build"), log_path)
            try:
                os.rename(staging / "build", entry)
            except OSError:  # another export of the same base got there first
                if not (entry / "genai_config.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(request.output, ignore_errors=True)
    shutil.copytree(entry, request.output)
    return CachedBuild(seconds, reused, entry)
