"""Fetch a data file to where training reads it: downloaded, checked, validated, renamed.

A remote file is downloaded into a private `*.partial` directory beside its destination,
its SHA-256 checked when the spec gives one, every row validated with the validator
`maap validate` uses, and only then renamed into place: the file at the destination is
always a whole, checked one. A sidecar beside it records what was checked, so a re-run
(a restarted pod) skips the download. A local path is validated where it lies.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from maap_api.errors import DatasetError
from maap_api.sources import Location, fetched_dataset_path, parse_location, shown_location
from maap_api.stage_config import TrainerConfig
from maap_api.transfer_results import FetchedFile
from maap_api.units import human_size

from maap_trainer.fetch.checks import check_sha256, sha256_of, validate_rows
from maap_trainer.fetch.errors import fetch_error

log = logging.getLogger("maap.fetch")

SIDECAR_SUFFIX = ".fetched.json"
PARTIAL_SUFFIX = ".partial"
Report = Callable[[str], None]


def fetch_dataset(
    cfg: TrainerConfig,
    field: str,
    location: str,
    local_path: Path,
    expected_sha256: str | None,
    fmt: str,
    report: Report | None = None,
) -> tuple[FetchedFile, str]:
    """Fetch (or check in place) one data file; returns it and the rows' format.

    `local_path` is where training reads it (fetch.local_dataset_paths)."""
    sha_field = "dataset.evalSha256" if field == "dataset.evalPath" else "dataset.sha256"
    parsed = parse_location(location)
    if not parsed.remote:
        return _check_local(field, sha_field, location, local_path, expected_sha256, fmt)
    destination = fetched_dataset_path(location, cfg.fetched_inputs_dir).absolute()
    if (done := _verified_copy(destination, location, expected_sha256, fmt)) is not None:
        shown = shown_location(location)
        log.info("%s: %s: already fetched and checked (%s)", field, shown, destination)
        return done
    return _download_and_check(
        cfg, field, sha_field, parsed, destination, expected_sha256, fmt, report
    )


def _check_local(
    field: str, sha_field: str, location: str, path: Path, expected: str | None, fmt: str
) -> tuple[FetchedFile, str]:
    if not path.is_file():
        raise DatasetError(f"{field}: {path}: no such file")
    digest, size = sha256_of(path)
    check_sha256(sha_field, str(path), expected, digest)
    rows, detected = validate_rows(field, path, fmt, str(path))
    log.info("%s: %s: %d rows of %s, %s", field, path, rows, detected, human_size(size))
    return FetchedFile(
        location=shown_location(location), path=str(path), bytes=size, sha256=digest, rows=rows
    ), detected


def _download_and_check(
    cfg: TrainerConfig,
    field: str,
    sha_field: str,
    source: Location,
    destination: Path,
    expected: str | None,
    fmt: str,
    report: Report | None,
) -> tuple[FetchedFile, str]:
    from maap_trainer.fetch.sources import download_data

    location = source.uri
    try:
        # Whatever was there was checked for another spec: it goes before the download, so
        # a failure leaves nothing the next stage could trust.
        destination.unlink(missing_ok=True)
        _sidecar(destination).unlink(missing_ok=True)
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(
                prefix=f".{destination.name}.", suffix=PARTIAL_SUFFIX, dir=destination.parent
            )
        )
    except OSError as exc:
        raise fetch_error(field, location, f"cannot write {destination} ({exc})") from None
    try:
        staged = staging / destination.name
        rows, detected = download_data(cfg, field, source, staged, fmt, report)
        digest, size = sha256_of(staged)
        check_sha256(sha_field, location, expected, digest)
        if rows is None:  # a single file: validated here; a split was validated file by file
            rows, detected = validate_rows(field, staged, fmt, location)
        os.replace(staged, destination)
    except OSError as exc:
        raise fetch_error(field, location, f"cannot write {destination} ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fetched = FetchedFile(
        location=shown_location(location),
        path=str(destination),
        bytes=size,
        sha256=digest,
        rows=rows,
    )
    _write_sidecar(destination, fetched, fmt, detected)
    log.info(
        "%s: %s: %d rows of %s, %s -> %s",
        field,
        shown_location(location),
        rows,
        detected,
        human_size(size),
        destination,
    )
    return fetched, detected


def _sidecar(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}{SIDECAR_SUFFIX}")


def _write_sidecar(destination: Path, fetched: FetchedFile, requested: str, detected: str) -> None:
    document = {"file": fetched.to_json_dict(), "requestedFormat": requested, "format": detected}
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document), encoding="utf-8")
    os.replace(tmp, _sidecar(destination))


def _verified_copy(
    destination: Path, location: str, expected: str | None, fmt: str
) -> tuple[FetchedFile, str] | None:
    """The copy a previous run checked, if it is still there and was checked for this spec."""
    try:
        document = json.loads(_sidecar(destination).read_text(encoding="utf-8"))
        fetched = FetchedFile.model_validate(document["file"])
        size = destination.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = (
        # The results show a link without its query; the folder is already keyed by it whole.
        fetched.location == shown_location(location)
        and fetched.path == str(destination)
        and fetched.bytes == size
        and document.get("requestedFormat") == fmt
        and (expected is None or expected.lower() == fetched.sha256)
    )
    return (fetched, str(document.get("format", fmt))) if same else None
