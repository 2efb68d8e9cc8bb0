"""A remote base model, downloaded once into the model cache and shared by every job.

The cache (MAAP_CACHE_DIR; in a cluster a ReadWriteMany volume that many pods mount at
once) holds one directory per location. A download goes into a staging directory beside
it and is renamed into place with its completion marker inside, under a lock file beside
it: two pods fetching one model at once download it once (the second waits for the lock,
then finds the marker). The lock is an flock, released by the kernel when its holder
dies, so a crashed download never blocks the next one, which resumes from its staging
directory. A download that fails with an error removes its staging directory.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from maap_api.presets import PRESETS
from maap_api.sources import Location, cached_model_dir, parse_location, preset_location
from maap_api.stage_config import ModelSource
from maap_api.storage_access import HubAccess, S3Access
from maap_api.transfer_results import MODEL_COMPLETE_MARKER, CachedModelInfo
from maap_api.units import human_size

from maap_trainer.fetch.errors import fetch_error
from maap_trainer.fetch.meter import DirectoryMeter, TransferMeter

log = logging.getLogger("maap.fetch")

LOCK_SUFFIX = ".lock"
STAGING_SUFFIX = ".partial"
WAIT_LOG_SECONDS = 30.0
# Never needed to train or export: other frameworks' weights, GGUF, the original release.
_NEVER = (
    "*.gguf",
    "original/*",
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.tflite",
    "flax_model*",
    "tf_model*",
    "rust_model*",
    "onnx/*",
    "openvino/*",
    "coreml/*",
    ".gitattributes",
)
_TORCH_PICKLES = ("*.bin", "*.pt", "*.pth")
Report = Callable[[str], None]


def remote_model_location(source: ModelSource) -> tuple[str, str] | None:
    """(field, location) of a model that must be fetched, or None for a local one."""
    if source.path is not None:
        return ("model.path", source.path) if parse_location(source.path).remote else None
    preset = PRESETS.get(source.preset or "")
    if preset is not None and preset.hub_id is not None:
        return "model.preset", preset_location(preset.hub_id)
    return None


def training_files(files: list[str]) -> list[str]:
    """The files a training run reads: safetensors over pickles where a repo has both."""
    kept = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in _NEVER)]
    if any(f.endswith(".safetensors") for f in kept):
        kept = [f for f in kept if not any(fnmatch.fnmatch(f, p) for p in _TORCH_PICKLES)]
        if any(f.startswith("model") and f.endswith(".safetensors") for f in kept):
            kept = [f for f in kept if not f.startswith("consolidated")]
    return sorted(kept)


def read_marker(directory: Path) -> CachedModelInfo | None:
    try:
        text = (directory / MODEL_COMPLETE_MARKER).read_text(encoding="utf-8")
        return CachedModelInfo.model_validate_json(text)
    except (OSError, ValueError):
        return None


def ensure_cached_model(
    field: str,
    location: str,
    hub: HubAccess,
    s3: S3Access,
    cache_root: Path,
    report: Report | None = None,
) -> CachedModelInfo:
    """The model's directory in the cache, downloading it first unless it is complete."""
    from filelock import FileLock, Timeout

    destination = cached_model_dir(location, cache_root).absolute()
    if (info := read_marker(destination)) is not None:
        return info
    # 0o666: pods of other jobs (other users) take the same lock on the shared volume.
    lock = FileLock(str(destination) + LOCK_SUFFIX, mode=0o666)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                lock.acquire(timeout=WAIT_LOG_SECONDS)
                break
            except Timeout:
                log.info("%s: %s: another pod is downloading it; waiting", field, location)
    except OSError as exc:
        raise fetch_error(field, location, f"cannot lock the model cache ({exc})") from None
    try:
        if (info := read_marker(destination)) is not None:
            log.info(
                "%s: %s: downloaded by another pod meanwhile (%s)", field, location, destination
            )
            return info
        return _download(field, parse_location(location), hub, s3, destination, report)
    finally:
        lock.release()


def _download(
    field: str,
    source: Location,
    hub: HubAccess,
    s3: S3Access,
    destination: Path,
    report: Report | None,
) -> CachedModelInfo:
    # One staging directory per model, used only under the lock: what a killed pod left
    # there is resumed (huggingface_hub continues its *.incomplete files), never trusted.
    staging = destination.with_name(f".{destination.name}{STAGING_SUFFIX}")
    try:
        if destination.exists():  # no marker: not ours to trust (a rename always brings one)
            shutil.rmtree(destination)
        if staging.exists():
            log.info("%s: %s: resuming the download a stopped pod left", field, source.uri)
        staging.mkdir(mode=0o755, exist_ok=True)
        (staging / MODEL_COMPLETE_MARKER).unlink(missing_ok=True)
    except OSError as exc:
        raise fetch_error(field, source.uri, f"cannot write the model cache ({exc})") from None
    try:
        if source.scheme == "hf":
            revision = _from_hub(field, source, hub, staging, report)
        elif source.scheme == "s3":
            revision = _from_s3(field, source, s3, staging, report)
        else:
            raise fetch_error(field, source.uri, "a model is hf://org/name or s3://bucket/prefix/")
        if not (staging / "config.json").is_file():
            raise fetch_error(
                field, source.uri, "not a transformers checkpoint: it has no config.json"
            )
        files = [p for p in staging.rglob("*") if p.is_file()]
        info = CachedModelInfo(
            location=source.canonical,
            path=str(destination),
            revision=revision,
            files=len(files),
            bytes=sum(p.stat().st_size for p in files),
        )
        (staging / MODEL_COMPLETE_MARKER).write_text(info.model_dump_json(by_alias=True))
        staging.rename(destination)
    except OSError as exc:
        raise fetch_error(field, source.uri, f"cannot write the model cache ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "%s: %s: %d files, %s in %s",
        field,
        source.uri,
        info.files,
        human_size(info.bytes),
        destination,
    )
    return info


def _from_hub(
    field: str, source: Location, hub_access: HubAccess, staging: Path, report: Report | None
) -> str:
    from maap_trainer.fetch import hub

    snapshot = hub.resolve(field, source, hub_access)
    wanted = training_files(list(snapshot.files))
    if "config.json" not in wanted:
        raise fetch_error(field, source.uri, "not a transformers checkpoint: it has no config.json")
    total = sum(snapshot.files[name] for name in wanted)
    log.info(
        "%s: %s is commit %s: %d files, %s",
        field,
        source.uri,
        snapshot.commit,
        len(wanted),
        human_size(total),
    )
    meter = TransferMeter(f"{field} {source.uri}", total or None, on_report=report)
    with DirectoryMeter(meter, staging):
        hub.download_snapshot(field, source, hub_access, snapshot, wanted, staging)
    meter.finish()
    return snapshot.commit


def _from_s3(
    field: str, source: Location, access: S3Access, staging: Path, report: Report | None
) -> str | None:
    from maap_trainer.fetch.s3 import download_objects, list_prefix

    if not source.is_prefix:
        raise fetch_error(
            field, source.uri, "a model is a prefix: end it in / (s3://bucket/prefix/)"
        )
    listed = dict(list_prefix(field, access, source.bucket, source.key))
    relative = {key[len(source.key) :]: key for key in listed}
    if any(".." in name.split("/") for name in relative):
        raise fetch_error(
            field, source.uri, "an object key holds '..'; refusing to write outside the cache"
        )
    wanted = training_files(list(relative))
    if "config.json" not in wanted:
        found = "nothing" if not relative else ", ".join(sorted(relative)[:6])
        raise fetch_error(
            field,
            source.uri,
            f"not a transformers checkpoint: no config.json under the prefix (found {found})",
        )
    total = sum(listed[relative[name]] for name in wanted)
    meter = TransferMeter(f"{field} {source.uri}", total or None, on_report=report)
    download_objects(
        field, access, source.bucket, [(relative[n], staging / n) for n in wanted], meter
    )
    meter.finish()
    return None  # S3 keeps no commit
