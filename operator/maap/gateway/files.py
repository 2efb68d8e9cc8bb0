"""The Files API's store: uploaded JSONL files on a volume, one folder per tenant.

A file is checked on upload with the row validator `maap validate` and the stages use, so
a malformed row is refused with its line number before any job is created. Each file is
written to a temp name and renamed once checked: a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from maap_api.errors import UserError
from maap_trainer.train.data import load_examples

from maap.gateway.errors import APIError, not_found

FILE_ID_PREFIX = "file-"
PURPOSE = "fine-tune"
MAX_FILE_BYTES = 512 * 1024 * 1024
_CHUNK = 1024 * 1024
_FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")


@dataclass(frozen=True)
class StoredFile:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    sha256: str
    rows: int
    format: str

    def openai(self) -> dict[str, object]:
        return {
            "object": "file",
            "id": self.id,
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


class FileStore:
    def __init__(self, root: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def _folder(self, namespace: str) -> Path:
        return self.root / namespace

    def path(self, namespace: str, file_id: str) -> Path:
        return self._folder(namespace) / f"{file_id}.jsonl"

    def add(self, namespace: str, filename: str, purpose: str, data: BinaryIO) -> StoredFile:
        if purpose != PURPOSE:
            raise APIError(
                400,
                f"purpose: {purpose!r} is not accepted here; upload training and validation "
                f"files with purpose {PURPOSE!r}",
                param="purpose",
            )
        if not filename.lower().endswith(".jsonl"):
            raise APIError(
                400,
                f"file: {filename!r}: fine-tuning files are JSON Lines; name the file *.jsonl",
                param="file",
                code="invalid_file_format",
            )
        folder = self._folder(namespace)
        folder.mkdir(parents=True, exist_ok=True)
        file_id = FILE_ID_PREFIX + secrets.token_hex(12)
        staging = folder / f".{file_id}.partial.jsonl"
        try:
            size, digest = self._copy(data, staging)
            rows, fmt = self._check(staging, filename)
            stored = StoredFile(
                file_id, size, int(time.time()), filename, purpose, digest, rows, fmt
            )
            meta = folder / f"{file_id}.json"
            meta.write_text(json.dumps(asdict(stored)), encoding="utf-8")
            os.replace(staging, self.path(namespace, file_id))
            return stored
        finally:
            staging.unlink(missing_ok=True)

    def _copy(self, data: BinaryIO, target: Path) -> tuple[int, str]:
        size, digest = 0, hashlib.sha256()
        with target.open("wb") as out:
            while chunk := data.read(_CHUNK):
                size += len(chunk)
                if size > self.max_bytes:
                    raise APIError(
                        413,
                        f"file: larger than this gateway's limit of {self.max_bytes} bytes",
                        param="file",
                        code="file_too_large",
                    )
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise APIError(400, "file: the file is empty", param="file", code="invalid_file")
        return size, digest.hexdigest()

    @staticmethod
    def _check(path: Path, filename: str) -> tuple[int, str]:
        try:
            examples, fmt = load_examples(path)
        except UserError as exc:
            # The validator names the path it read: name the file the client sent.
            message = str(exc).replace(str(path), filename)
            message = message.removeprefix("dataset.path: ")
            line = re.compile(rf"^{re.escape(filename)}:(\d+):")
            message = line.sub(lambda m: f"{filename}, line {m.group(1)}:", message)
            raise APIError(400, f"file: {message}", param="file", code="invalid_file") from None
        return len(examples), fmt

    def get(self, namespace: str, file_id: str) -> StoredFile:
        if not _FILE_ID.match(file_id):
            raise not_found("file", file_id, "file_id")
        meta = self._folder(namespace) / f"{file_id}.json"
        try:
            return StoredFile(**json.loads(meta.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise not_found("file", file_id, "file_id") from None

    def list(self, namespace: str) -> list[StoredFile]:
        folder = self._folder(namespace)
        if not folder.is_dir():
            return []
        found = [self.get(namespace, p.stem) for p in folder.glob("file-*.json")]
        return sorted(found, key=lambda f: (f.created_at, f.id), reverse=True)

    def chunks(self, namespace: str, file_id: str) -> Iterator[bytes]:
        self.get(namespace, file_id)
        with self.path(namespace, file_id).open("rb") as source:
            while chunk := source.read(_CHUNK):
                yield chunk

    def delete(self, namespace: str, file_id: str) -> None:
        self.get(namespace, file_id)
        self.path(namespace, file_id).unlink(missing_ok=True)
        (self._folder(namespace) / f"{file_id}.json").unlink(missing_ok=True)
