"""Read a data file into rows, each with where it came from (file:line, or file:row N).

JSONL, JSON (an array of rows), CSV (a header line; cells holding JSON lists or objects,
such as chat `messages` or NER `tokens`, are parsed) and Parquet (via pyarrow).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from maap_api.errors import DatasetError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# CSV cells that hold structure rather than text.
_JSON_COLUMNS = {"messages", "tokens", "tags"}


def read_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    """Yield (location for errors, line or row number, parsed row)."""
    if not path.is_file():
        raise DatasetError(f"dataset.path: {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".csv":
        yield from _read_csv(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix in (".jsonl", ".ndjson", ""):
        yield from _read_jsonl(path)
    else:
        raise DatasetError(
            f"dataset.path: {path}: unknown file type {suffix!r}; use {', '.join(SUFFIXES)}"
        )


def _read_jsonl(path: Path) -> Iterator[tuple[str, int, Any]]:
    with path.open(encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield f"{path}:{lineno}", lineno, json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from None


def _read_json(path: Path) -> Iterator[tuple[str, int, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: a .json data set must be an array of rows")
    for index, row in enumerate(rows, start=1):
        yield f"{path}: row {index}", index, row


def _read_csv(path: Path) -> Iterator[tuple[str, int, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            return
        start = reader.line_num + 1
        try:
            for record in reader:
                where = f"{path}:{start}"
                if None in record:
                    raise DatasetError(f"{where}: more cells than header columns")
                row: dict[str, Any] = {}
                for key, cell in record.items():
                    if cell is None:
                        raise DatasetError(f"{where}: fewer cells than header columns")
                    row[key] = _csv_cell(key, cell, where)
                yield where, start, row
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DatasetError(f"{path}:{reader.line_num}: invalid CSV: {exc}") from None


def _csv_cell(key: str, cell: str, where: str) -> Any:
    if key not in _JSON_COLUMNS:
        return cell
    try:
        return json.loads(cell)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: column `{key}` must hold JSON ({exc.msg})") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"dataset.path: {path}: reading Parquet needs pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from None
    for index, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {index}", index, row
