"""The location grammar (maap_api.sources) and where fetched copies land."""

from __future__ import annotations

import pytest
from maap_api.sources import (
    DATASET_PATTERNS,
    MODEL_PATTERNS,
    OUTPUT_PATTERNS,
    cached_model_dir,
    fetched_dataset_path,
    parse_location,
    valid_location,
)


@pytest.mark.parametrize(
    ("location", "ok"),
    [
        ("data/train.jsonl", True),
        ("/abs/train.jsonl", True),
        ("https://example.org/data/train.jsonl", True),
        ("http://mirror.svc:8080/train.jsonl?sig=abc", True),
        ("s3://my-bucket/pirate/train.jsonl", True),
        ("hf://datasets/acme/chat@v2/data/train.jsonl", True),
        ("hf://datasets/acme/chat", True),
        ("ftp://example.org/train.jsonl", False),
        ("gs://bucket/train.jsonl", False),
        ("s3://Bad_Bucket/train.jsonl", False),
        ("s3://bucket/", False),  # a prefix is no data file
        ("https://example.org", False),
        ("hf://acme/model", False),  # a model repo, not a data set
    ],
)
def test_dataset_locations(location: str, ok: bool) -> None:
    assert valid_location(location, DATASET_PATTERNS) is ok


@pytest.mark.parametrize(
    ("location", "ok"),
    [
        ("/models/mine", True),
        ("hf://microsoft/Phi-3-mini-4k-instruct", True),
        ("hf://acme/base@3f2a9c1", True),
        ("s3://models/base/", True),
        ("s3://models/base", False),  # a checkpoint is a prefix: end it in /
        ("hf://datasets/acme/chat", False),
        ("https://example.org/model.safetensors", False),
    ],
)
def test_model_locations(location: str, ok: bool) -> None:
    assert valid_location(location, MODEL_PATTERNS) is ok


def test_outputs_are_s3_prefixes_only() -> None:
    assert valid_location("s3://models/pirate/v3/", OUTPUT_PATTERNS)
    assert not valid_location("s3://models/pirate/v3", OUTPUT_PATTERNS)
    assert valid_location("/local/dir", OUTPUT_PATTERNS) is not False  # paths pass the grammar


def test_parsing_splits_each_scheme() -> None:
    hub = parse_location("hf://datasets/acme/chat@v2/data/train.jsonl")
    assert (hub.scheme, hub.repo_type, hub.repo_id, hub.revision, hub.file) == (
        "hf", "dataset", "acme/chat", "v2", "data/train.jsonl"
    )  # fmt: skip
    model = parse_location("hf://acme/base")
    assert (model.repo_type, model.revision, model.file) == ("model", "main", "")
    s3 = parse_location("s3://bucket/a/b.jsonl")
    assert (s3.bucket, s3.key, s3.is_prefix, s3.basename) == (
        "bucket",
        "a/b.jsonl",
        False,
        "b.jsonl",
    )
    assert parse_location("s3://bucket/base/").is_prefix
    assert parse_location("https://h/x/rows.csv?token=1").basename == "rows.csv"
    assert not parse_location("data/train.jsonl").remote


def test_one_model_has_one_cache_directory_whatever_its_spelling() -> None:
    assert cached_model_dir("hf://acme/base", "/c") == cached_model_dir("hf://acme/base@main", "/c")
    assert cached_model_dir("hf://acme/base@v1", "/c") != cached_model_dir("hf://acme/base", "/c")
    path = cached_model_dir("hf://acme/base", "/c")
    assert path.parent.as_posix() == "/c/models" and path.name.startswith("hf-acme-base-main-")


def test_fetched_data_lands_under_inputs_keeping_the_file_type() -> None:
    path = fetched_dataset_path("s3://bucket/pirate/train.parquet", "/workspace/inputs")
    assert path.parent.parent.as_posix() == "/workspace/inputs"
    assert path.name == "train.parquet"
    rows = fetched_dataset_path("hf://datasets/acme/chat", "/in")
    assert rows.name == "rows.jsonl"  # a split's files, concatenated
    other = fetched_dataset_path("s3://bucket/other/train.parquet", "/workspace/inputs")
    assert other != path, "two locations never share a local copy"
