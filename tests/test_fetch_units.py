"""The fetch package's pieces: stalled and broken servers, file choices, paths, progress."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from maap_api.stage_config import TrainerConfig
from maap_trainer.fetch import http, local_dataset_paths
from maap_trainer.fetch.errors import FetchError
from maap_trainer.fetch.hub_datasets import split_files
from maap_trainer.fetch.meter import TransferMeter
from maap_trainer.fetch.models import training_files


def raw_server(reply: bytes, then_close: bool) -> Iterator[str]:
    """A socket on 127.0.0.1 that answers any request with `reply`, then stalls or closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(reply)
        if then_close:
            connection.close()
        else:
            done.wait(10)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/rows.jsonl"
    finally:
        done.set()
        thread.join(5)
        listener.close()


@pytest.fixture()
def stalled() -> Iterator[str]:
    yield from raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", then_close=False)


@pytest.fixture()
def cut_short() -> Iterator[str]:
    yield from raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", then_close=True)


def test_a_stalled_server_is_a_read_timeout_not_a_hang(
    tmp_path: Path, stalled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "READ_TIMEOUT_SECONDS", 1.0)
    with pytest.raises(FetchError) as caught:
        http.download_http("dataset.path", stalled, tmp_path / "rows.jsonl")
    assert str(caught.value) == f"dataset.path: {stalled}: read timed out (no data for 1 s)"


def test_a_body_cut_short_is_an_error(tmp_path: Path, cut_short: str) -> None:
    with pytest.raises(FetchError) as caught:
        http.download_http("dataset.path", cut_short, tmp_path / "rows.jsonl")
    message = str(caught.value)
    assert message.startswith(f"dataset.path: {cut_short}: ")
    assert "connection broken" in message or "truncated" in message, message


def test_split_files_follow_the_hubs_naming() -> None:
    files = [
        "README.md",
        "train.jsonl",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "data/test-00000-of-00001.parquet",
        "train/0000.parquet",
        "trainer_notes.jsonl",
        ".hidden/train.jsonl",
        "train.py",
    ]
    assert split_files(files, "train") == [
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "train.jsonl",
        "train/0000.parquet",
    ]
    assert split_files(files, "test") == ["data/test-00000-of-00001.parquet"]
    assert split_files(files, "validation") == []


def test_training_files_prefer_safetensors_and_skip_other_formats() -> None:
    repo = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "consolidated.safetensors",
        "original/consolidated.00.pth",
        "model.Q4_K_M.gguf",
        "tokenizer.json",
        "tokenizer.model",
        "onnx/model.onnx",
        "flax_model.msgpack",
        ".gitattributes",
    ]
    assert training_files(repo) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer.model",
    ]
    # Pickles only: they are the weights, and stay.
    assert training_files(["config.json", "pytorch_model.bin"]) == [
        "config.json",
        "pytorch_model.bin",
    ]


def config_with(tmp_path: Path, **dataset: str) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "jobName": "j",
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": dataset,
            "outputDir": str(tmp_path / "out"),
        }
    )


def test_local_dataset_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = config_with(tmp_path, path="data/train.jsonl", evalPath="eval.jsonl")
    # Both local: as the spec says (load_dataset resolves evalPath beside path).
    assert local_dataset_paths(local) == (Path("data/train.jsonl"), "eval.jsonl")
    remote = config_with(tmp_path, path="https://h/t.jsonl", evalPath="eval.jsonl")
    train, evaluation = local_dataset_paths(remote, require=False)
    assert train.is_absolute() and train.parent.parent == tmp_path / "out" / "inputs"
    assert evaluation == str(tmp_path / "eval.jsonl")  # from the working directory
    both = config_with(tmp_path, path="https://h/t.jsonl", evalPath="s3://bkt/e.jsonl")
    _, evaluation = local_dataset_paths(both, require=False)
    assert evaluation is not None and evaluation.endswith("/e.jsonl")
    assert Path(evaluation).parent != train.parent


def test_the_meter_logs_bytes_rate_and_share(caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    meter = TransferMeter("dataset.path s3://b/k", total=4096, on_report=lines.append, every=0)
    with caplog.at_level(logging.INFO, logger="maap.fetch"):
        meter.add(1024)
        meter.add(1024)
        meter.finish()
    assert lines[0].startswith("dataset.path s3://b/k: 1.0 KiB of 4.0 KiB (25%), ")
    assert lines[0].endswith("/s")
    assert lines[-1].startswith("dataset.path s3://b/k: fetched 2.0 KiB in ")
    assert [r.getMessage() for r in caplog.records] == lines
