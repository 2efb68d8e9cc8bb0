"""The fetch and publish stages: data and models from where users keep them, and back.

    python -m maap_trainer fetch --config config.json [--data-only]
    python -m maap_trainer fetch-model --config cachedmodel-spec.json
    python -m maap_trainer publish --config config.json

This module is what the other stages need (cheap to import: no boto3, no hub client):
where the fetched copy of each data file is. The stages live in stage.py and publish.py.
"""

from __future__ import annotations

from pathlib import Path

from maap_api.errors import DatasetError
from maap_api.sources import fetched_dataset_path, parse_location
from maap_api.stage_config import TrainerConfig

__all__ = ["local_dataset_paths"]


def local_dataset_paths(cfg: TrainerConfig, require: bool = True) -> tuple[Path, str | None]:
    """(training file, evaluation file or None) as local paths, for `load_dataset`.

    A remote location reads its fetched copy (absolute, so load_dataset does not resolve it
    against the training file's directory); a local evalPath stays as the spec gives it
    (relative to the training file), unless the training file is remote, where it is taken
    from the working directory. With `require`, a remote file not fetched yet is an error.
    """
    dataset = cfg.dataset
    train = _local(cfg, "dataset.path", dataset.path, require)
    if dataset.eval_path is None:
        return train, None
    if parse_location(dataset.eval_path).remote:
        return train, str(_local(cfg, "dataset.evalPath", dataset.eval_path, require))
    if parse_location(dataset.path).remote:
        return train, str(Path(dataset.eval_path).absolute())
    return train, dataset.eval_path


def _local(cfg: TrainerConfig, field: str, location: str, require: bool) -> Path:
    if not parse_location(location).remote:
        return Path(location)
    path = fetched_dataset_path(location, cfg.fetched_inputs_dir).absolute()
    if require and not path.is_file():
        raise DatasetError(
            f"{field}: {location}: not fetched yet (no {path}); the fetch stage "
            "(python -m maap_trainer fetch) downloads and checks it before training"
        )
    return path
