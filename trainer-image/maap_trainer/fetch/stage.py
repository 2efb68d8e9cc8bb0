"""The fetch stage: data files downloaded, checked and validated; the base model cached.

Data first (seconds, and a bad row or a wrong checksum fails before any model download),
then the model. `--model-only` is the per-cluster download Job: the model alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from maap_api.errors import ConfigError
from maap_api.results import write_result
from maap_api.stage_config import TrainerConfig
from maap_api.transfer_results import FETCH_FILE, CachedModelInfo, FetchResult

from maap_trainer.fetch import local_dataset_paths
from maap_trainer.fetch.datasets import fetch_dataset
from maap_trainer.fetch.models import ensure_cached_model, remote_model_location
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
    cfg: TrainerConfig, report: Callable[[str], None] | None = None
) -> CachedModelInfo | None:
    """The base model in the cache (downloaded unless complete); None for a local model."""
    from maap_trainer.model_prep import cache_root

    remote = remote_model_location(cfg.model)
    if remote is None:
        if cfg.model.path is not None and not (Path(cfg.model.path) / "config.json").is_file():
            raise ConfigError(
                f"model.path: {cfg.model.path} is not a checkpoint (no config.json in it)"
            )
        return None
    field, location = remote
    return ensure_cached_model(field, location, cfg.hub, cfg.s3, cache_root(), report)


def run_fetch(cfg: TrainerConfig, model_only: bool = False) -> FetchResult | CachedModelInfo:
    output_dir = Path(cfg.output_dir)
    report = _reporter(output_dir)
    if model_only:
        model = fetch_model(cfg, report)
        if model is None:
            raise ConfigError(
                f"model: {cfg.model.display_name} is not remote (hf://, s3:// or a preset "
                "with a hub id): there is nothing for --model-only to fetch"
            )
        return model
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
    model = fetch_model(cfg, report)
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
