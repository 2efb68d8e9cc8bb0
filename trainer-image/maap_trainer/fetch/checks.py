"""What makes a fetched data file trusted: its SHA-256, and every row through the
validator `maap validate` uses (file and line in the error, shown as the URI)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from maap_api.errors import DatasetError
from maap_api.sources import shown_location

from maap_trainer.fetch.errors import fetch_error


def sha256_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def validate_rows(field: str, path: Path, fmt: str, shown: str) -> tuple[int, str]:
    """Every row through the validator; errors name `shown` (the URI) and the line."""
    from maap_trainer.train.data import load_examples

    shown = shown_location(shown)
    try:
        examples, detected = load_examples(path, fmt)
    except DatasetError as exc:
        message = str(exc).replace(str(path), shown).removeprefix("dataset.path: ")
        raise DatasetError(f"{field}: {message}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{field}: {shown}: not UTF-8 text (at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{field}: {shown}: cannot read it ({exc.strerror})") from None
    return len(examples), detected


def check_sha256(sha_field: str, shown: str, expected: str | None, actual: str) -> None:
    if expected is not None and actual != expected.lower():
        raise fetch_error(
            sha_field, shown, f"checksum mismatch (expected {expected}, got {actual})"
        )
