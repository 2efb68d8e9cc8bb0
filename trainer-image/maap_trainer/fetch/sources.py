"""Download one data set location (http, s3 or hf) into a staged file."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from maap_api.sources import Location
from maap_api.stage_config import TrainerConfig

from maap_trainer.fetch.errors import fetch_error

log = logging.getLogger("maap.fetch")
Report = Callable[[str], None]


def download_data(
    cfg: TrainerConfig,
    field: str,
    source: Location,
    staged: Path,
    fmt: str,
    report: Report | None = None,
) -> tuple[int | None, str]:
    """Fill `staged` from `source`. Returns (rows, format) when it validated the rows while
    assembling them (a hub split of several files), else (None, fmt)."""
    if source.scheme == "http":
        from maap_trainer.fetch.http import download_http

        download_http(field, source.uri, staged, report)
        return None, fmt
    if source.scheme == "s3":
        from maap_trainer.fetch.s3 import download_object

        if source.is_prefix:
            raise fetch_error(
                field, source.uri, "a prefix, not an object: name the data file (s3://bucket/key)"
            )
        download_object(field, cfg.s3, source.bucket, source.key, staged, report)
        return None, fmt
    if source.scheme == "hf":
        return _download_hub(cfg, field, source, staged, fmt)
    raise fetch_error(field, source.uri, f"cannot fetch a {source.scheme} location")


def _download_hub(
    cfg: TrainerConfig, field: str, source: Location, staged: Path, fmt: str
) -> tuple[int | None, str]:
    from maap_trainer.fetch import hub
    from maap_trainer.fetch.hub_datasets import assemble_split

    if source.repo_type != "dataset":
        raise fetch_error(
            field, source.uri, "a model repository; a data set is hf://datasets/org/name"
        )
    snapshot = hub.resolve(field, source, cfg.hub)
    log.info("%s: %s is commit %s", field, source.uri, snapshot.commit)
    if not source.file:
        return assemble_split(cfg, field, source, snapshot, staged, fmt)
    if source.file not in snapshot.files:
        raise fetch_error(field, source.uri, f"404 no such file {source.file!r} in the repository")
    landed = hub.download_file(
        field, source, cfg.hub, snapshot.commit, source.file, staged.parent / "hub"
    )
    os.replace(landed, staged)
    return None, fmt
