"""A hub data set named without a file: the files of one split, as one rows.jsonl.

Hub data sets keep a split in files named after it (`train.jsonl`, `data/train-00000-of-
00001.parquet`, `train/0000.parquet`, ...). Each is downloaded and validated on its own,
so an error names the file in the repository and its line or row, then its rows are
appended to one JSON-lines file that training reads like any other.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from maap_api.sources import Location
from maap_api.stage_config import TrainerConfig

from maap_trainer.fetch import hub
from maap_trainer.fetch.checks import validate_rows
from maap_trainer.fetch.errors import fetch_error

log = logging.getLogger("maap.fetch")

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def split_files(files: list[str], split: str) -> list[str]:
    """The repository's files holding `split`, in a stable order."""
    named = re.compile(
        rf"{re.escape(split)}([-._][^/]*)?\.({'|'.join(s[1:] for s in DATA_SUFFIXES)})"
    )
    found = []
    for name in files:
        parts = name.split("/")
        if any(p.startswith(".") for p in parts) or not name.lower().endswith(DATA_SUFFIXES):
            continue
        if named.fullmatch(parts[-1]) or split in parts[:-1]:
            found.append(name)
    return sorted(found)


def assemble_split(
    cfg: TrainerConfig,
    field: str,
    source: Location,
    snapshot: hub.RepoSnapshot,
    staged: Path,
    fmt: str,
) -> tuple[int, str]:
    """Download, validate and concatenate the split's files into `staged`; (rows, format)."""
    from maap_trainer.train.data_files import read_rows

    split = cfg.dataset.split
    chosen = split_files(sorted(snapshot.files), split)
    if not chosen:
        shown = ", ".join(sorted(snapshot.files)[:8]) or "none"
        raise fetch_error(
            field,
            source.uri,
            f"no files of split {split!r} (such as {split}.jsonl or data/{split}-*.parquet; "
            f"the repository has: {shown}); set dataset.split or name a file",
        )
    log.info("%s: split %r is %d file(s): %s", field, split, len(chosen), ", ".join(chosen))
    downloads = staged.parent / "hub"
    total = 0
    with staged.open("w", encoding="utf-8") as out:
        for name in chosen:
            path = hub.download_file(field, source, cfg.hub, snapshot.commit, name, downloads)
            shown = f"{source.canonical.split('@')[0]}@{snapshot.commit[:12]}/{name}"
            rows, fmt = validate_rows(field, path, fmt, shown)
            for _where, _line, row in read_rows(path):
                out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            total += rows
            path.unlink()
    return total, fmt
