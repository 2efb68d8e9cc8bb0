"""Where data sets, base models and outputs live: one grammar of locations, both planes.

A location is a path (on the job's volume, or on this machine for `maap run`) or a URI:

    https://host/path/file.jsonl        (http:// too: an in-cluster mirror)
    s3://bucket/key                     an object; s3://bucket/prefix/ (ends in /) a prefix
    hf://org/name[@revision]            a Hugging Face model repository
    hf://datasets/org/name[@revision][/path/in/repo]

The patterns below are the whole grammar: pydantic and the CRD's CEL rules both match them
(maap_api.source_rules), so `maap validate` and `kubectl apply` accept the same strings;
RE2 (CEL) and Python's re read them alike. Where a fetched copy lands is a pure function
of the location, so the fetch stage that writes it and the stages that read it agree.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Scheme = Literal["path", "http", "s3", "hf"]

MAX_LOCATION_LENGTH = 2048
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REVISION = r"(@[A-Za-z0-9][A-Za-z0-9._-]*)?"
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
HTTP_PATTERN = r"^https?://[^/\s]+/[^\s]+$"
S3_OBJECT_PATTERN = rf"^s3://{_BUCKET}/[^\s]+$"
S3_PREFIX_PATTERN = rf"^s3://{_BUCKET}/([^\s]*/)?$"
HF_DATASET_PATTERN = rf"^hf://datasets/{_NAME}/{_NAME}{_REVISION}(/[^\s]+)?$"
HF_MODEL_PATTERN = rf"^hf://{_NAME}/{_NAME}{_REVISION}$"

DATASET_PATTERNS = (HTTP_PATTERN, S3_OBJECT_PATTERN, HF_DATASET_PATTERN)
MODEL_PATTERNS = (HF_MODEL_PATTERN, S3_PREFIX_PATTERN)
OUTPUT_PATTERNS = (S3_PREFIX_PATTERN,)

DATASET_FORMS = (
    "a path on the job's volume, https://host/file, s3://bucket/key or "
    "hf://datasets/org/name[@revision][/file]"
)
MODEL_FORMS = (
    "a checkpoint directory on the job's volume, hf://org/name[@revision] or "
    "s3://bucket/prefix/ (ending in /)"
)
OUTPUT_FORMS = "s3://bucket/prefix/ (ending in /)"


def is_uri(location: str) -> bool:
    return "://" in location


def shown_location(location: str) -> str:
    """A location as logs and error messages show it: an http(s) URL without its query
    string, which may carry a credential (a signed link such as the gateway's)."""
    scheme, sep, rest = location.partition("://")
    if sep and scheme.lower() in ("http", "https") and "?" in rest:
        return f"{scheme}://{rest.split('?', 1)[0]}?<query hidden>"
    return location


def matches_any(location: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p.strip("^$"), location) for p in patterns)


def valid_location(location: str | None, patterns: tuple[str, ...], paths: bool = True) -> bool:
    """A URI of one of the forms `patterns` allow, or (`paths`) a path: the rules' Python
    half."""
    if location is None or (paths and not is_uri(location)):
        return True
    return matches_any(location, patterns)


def cel_valid_location(field: str, patterns: tuple[str, ...], paths: bool = True) -> str:
    """The same check in CEL, for the field `field` of the rule's section."""
    alternatives = " || ".join(f"self.{field}.matches({_cel_string(p)})" for p in patterns)
    path = f" || !self.{field}.contains('://')" if paths else ""
    return f"!has(self.{field}){path} || {alternatives}"


def _cel_string(pattern: str) -> str:
    # A CEL raw string: no escapes to double, and the patterns hold no single quote.
    assert "'" not in pattern
    return f"r'{pattern}'"


@dataclass(frozen=True)
class Location:
    """A parsed location. Only `valid_location` strings parse."""

    uri: str
    scheme: Scheme
    # s3: bucket and key (a prefix ends in /); hf: repo id, type, revision and file.
    bucket: str = ""
    key: str = ""
    repo_id: str = ""
    repo_type: Literal["model", "dataset"] = "model"
    revision: str = "main"
    file: str = ""

    @property
    def remote(self) -> bool:
        return self.scheme != "path"

    @property
    def is_prefix(self) -> bool:
        return self.scheme == "s3" and (self.key == "" or self.key.endswith("/"))

    @property
    def basename(self) -> str:
        """A file name for the local copy of a single-file source."""
        tail = {"http": self.uri.split("?", 1)[0], "s3": self.key, "hf": self.file}.get(
            self.scheme, self.uri
        )
        return Path(tail).name or "data.jsonl"

    @property
    def canonical(self) -> str:
        """One spelling per location: hf://org/name and hf://org/name@main are one model."""
        if self.scheme != "hf":
            return self.uri
        kind = "datasets/" if self.repo_type == "dataset" else ""
        return f"hf://{kind}{self.repo_id}@{self.revision}" + (f"/{self.file}" if self.file else "")

    def slug(self) -> str:
        """A readable, collision-free directory name for this location."""
        canonical = self.canonical
        # Without the query (it may be a signed link's credential); the digest keeps it.
        address = canonical.split("://", 1)[-1].split("?", 1)[0]
        readable = re.sub(r"[^a-z0-9]+", "-", address.lower()).strip("-")
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
        return f"{self.scheme}-{readable[:60].strip('-')}-{digest}"


def parse_location(location: str) -> Location:
    """Split a location into its parts (a path, or a URI the grammar allows)."""
    if not is_uri(location):
        return Location(uri=location, scheme="path")
    scheme, rest = location.split("://", 1)
    if scheme in ("http", "https"):
        return Location(uri=location, scheme="http")
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        return Location(uri=location, scheme="s3", bucket=bucket, key=key)
    if scheme == "hf":
        repo_type: Literal["model", "dataset"] = "model"
        if rest.startswith("datasets/"):
            repo_type, rest = "dataset", rest.removeprefix("datasets/")
        org, name, *path = rest.split("/")
        name, _, revision = name.partition("@")
        return Location(
            uri=location,
            scheme="hf",
            repo_id=f"{org}/{name}",
            repo_type=repo_type,
            revision=revision or "main",
            file="/".join(path),
        )
    raise ValueError(f"{location}: unknown scheme {scheme!r}")


def fetched_dataset_path(location: str, inputs_dir: str | Path) -> Path:
    """Where the fetch stage leaves a remote data file, and training reads it."""
    parsed = parse_location(location)
    name = parsed.basename if parsed.file or parsed.scheme != "hf" else "rows.jsonl"
    return Path(inputs_dir) / parsed.slug() / name


def cached_model_dir(location: str, cache_root: str | Path) -> Path:
    """A remote base model's directory in the model cache (one per location)."""
    return Path(cache_root) / "models" / parse_location(location).slug()


def preset_location(hub_id: str) -> str:
    """A preset that names a hub repository resolves through the same path as hf://."""
    return f"hf://{hub_id}"
