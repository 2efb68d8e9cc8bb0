"""The fetch stage against a hub on 127.0.0.1 (tests/fetch_servers.LocalHub): huggingface_hub's
own download functions, pointed at it with spec.hub.endpoint. Nothing reaches huggingface.co."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from maap_api.sources import cached_model_dir, fetched_dataset_path
from maap_api.stage_config import load_trainer_config
from maap_api.transfer_results import MODEL_COMPLETE_MARKER, CachedModelInfo, FetchResult

from tests.fetch_servers import (
    HubRepo,
    LocalHub,
    model_spec,
    run_stage,
    stage_config,
    tiny_checkpoint,
)

TOKEN = "hf_local_test_token"
CHECKPOINT = tiny_checkpoint()
# What a real repo also holds and training never reads.
EXTRAS = {
    "model.Q4_K_M.gguf": b"gguf" * 10,
    "original/consolidated.00.pth": b"pickle",
    "pytorch_model.bin": b"pickle",
    "README.md": b"# tiny\n",
}


def rows(count: int, start: int = 0) -> list[dict[str, str]]:
    return [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(start, start + count)]


def jsonl(items: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in items).encode()


def parquet(items: list[dict[str, str]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(items), buffer)
    return buffer.getvalue()


@pytest.fixture()
def hub():
    with LocalHub() as server:
        server.add(HubRepo("org/tiny", {**CHECKPOINT, **EXTRAS}))
        server.add(HubRepo("org/private", dict(CHECKPOINT), token=TOKEN))
        server.add(HubRepo("org/gated", dict(CHECKPOINT), token=TOKEN, gated=True))
        server.add(
            HubRepo(
                "org/chats",
                {
                    "README.md": b"# data\n",
                    "data/train-00000-of-00002.parquet": parquet(rows(3)),
                    "data/train-00001-of-00002.parquet": parquet(rows(2, start=3)),
                    "data/test-00000-of-00001.parquet": parquet(rows(1, start=9)),
                    "extra/train.jsonl": jsonl(rows(2, start=5)),
                    "broken/validation.jsonl": jsonl(rows(2)) + b"{not json\n",
                },
                repo_type="dataset",
            )
        )
        yield server


def fetch_model(tmp_path: Path, hub: LocalHub, model: dict, *args: str, **env: str):
    config = stage_config(
        tmp_path, {"path": "unused.jsonl"}, model=model, hub={"endpoint": hub.base_url}
    )
    return config, run_stage("fetch-model", model_spec(config), tmp_path / "cache", *args, env=env)


def test_a_hub_model_is_cached_at_its_commit_without_what_training_never_reads(
    tmp_path: Path, hub: LocalHub
) -> None:
    config, run = fetch_model(tmp_path, hub, {"path": "hf://org/tiny"})
    assert run.returncode == 0, run.stderr
    info = CachedModelInfo.model_validate(run.json())
    assert run.termination_message == run.stdout.strip()
    directory = cached_model_dir("hf://org/tiny", tmp_path / "cache")
    assert info.path == str(directory) and info.location == "hf://org/tiny@main"
    assert info.revision == hub.repos[("model", "org/tiny")].commit
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    assert on_disk == {*CHECKPOINT, "README.md", MODEL_COMPLETE_MARKER}  # the card stays
    assert all((directory / name).read_bytes() == body for name, body in CHECKPOINT.items())
    assert (
        CachedModelInfo.model_validate_json((directory / MODEL_COMPLETE_MARKER).read_text()) == info
    )
    assert not list((tmp_path / "cache" / "models").glob(".*"))  # no staging left
    assert {name for _, name in hub.downloads} == {*CHECKPOINT, "README.md"}

    # The train stage's call finds the cache complete: not one request.
    before = sum(hub.requests.values())
    from maap_trainer.model_prep import prepare_base_model

    cfg = load_trainer_config(config)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAAP_CACHE_DIR", str(tmp_path / "cache"))
        assert prepare_base_model(cfg.model, cfg.hub, cfg.s3) == str(directory)
    assert sum(hub.requests.values()) == before


def test_a_preset_with_a_hub_id_resolves_through_the_same_path(
    tmp_path: Path, hub: LocalHub
) -> None:
    hub.add(HubRepo("microsoft/Phi-3-mini-4k-instruct", dict(CHECKPOINT)))
    _, run = fetch_model(tmp_path, hub, {"preset": "phi-3-mini-4k-instruct"})
    assert run.returncode == 0, run.stderr
    info = CachedModelInfo.model_validate(run.json())
    assert info.location == "hf://microsoft/Phi-3-mini-4k-instruct@main"
    assert info.path == str(
        cached_model_dir("hf://microsoft/Phi-3-mini-4k-instruct", tmp_path / "cache")
    )


def test_a_pinned_revision_is_fetched_at_that_commit(tmp_path: Path, hub: LocalHub) -> None:
    commit = hub.repos[("model", "org/tiny")].commit
    _, run = fetch_model(tmp_path, hub, {"path": f"hf://org/tiny@{commit}"})
    assert run.returncode == 0, run.stderr
    assert CachedModelInfo.model_validate(run.json()).revision == commit


@pytest.mark.parametrize(
    ("path", "env", "expected"),
    [
        (
            "hf://org/private",
            {},
            "401 Unauthorized: Invalid username or password: the repository is private or "
            "gated, or does not exist (no token was sent: set HF_TOKEN, from "
            "spec.hub.secretName)",
        ),
        (
            "hf://org/private",
            {"HF_TOKEN": "hf_wrong"},
            "401 Unauthorized: Invalid credentials in Authorization header: the repository is "
            "private or gated, or does not exist (the token in HF_TOKEN, from "
            "spec.hub.secretName, was refused)",
        ),
        (
            "hf://org/gated",
            {"HF_TOKEN": TOKEN},
            "403 gated repository: Access to model org/gated is restricted: accept its terms "
            "on the hub with the account whose token is HF_TOKEN",
        ),
        ("hf://org/nothing", {}, "404 no such repository"),
        ("hf://org/tiny@v9", {}, "404 no such revision 'v9'"),
    ],
)
def test_hub_refusals_are_one_line(
    tmp_path: Path, hub: LocalHub, path: str, env: dict[str, str], expected: str
) -> None:
    _, run = fetch_model(tmp_path, hub, {"path": path}, **env)
    assert run.returncode == 2, run.stderr
    assert run.error_line == f"model.path: {path}: {expected}"
    assert (
        not (tmp_path / "cache" / "models").exists()
        or not any((tmp_path / "cache" / "models").iterdir())
        or all(p.suffix == ".lock" for p in (tmp_path / "cache" / "models").iterdir())
    )


def test_the_right_token_opens_a_private_repo(tmp_path: Path, hub: LocalHub) -> None:
    _, run = fetch_model(tmp_path, hub, {"path": "hf://org/private"}, HF_TOKEN=TOKEN)
    assert run.returncode == 0, run.stderr


def test_an_unreachable_hub_is_one_line(tmp_path: Path) -> None:
    from maap_trainer.ports import free_port

    port = free_port()
    config = stage_config(
        tmp_path,
        {"path": "unused.jsonl"},
        model={"path": "hf://org/tiny"},
        hub={"endpoint": f"http://127.0.0.1:{port}"},
    )
    run = run_stage("fetch-model", model_spec(config), tmp_path / "cache")
    assert run.returncode == 2
    assert run.error_line == (
        f"model.path: hf://org/tiny: cannot reach 127.0.0.1:{port} (connection refused)"
    )


def test_a_hub_data_set_split_is_its_files_as_one_rows_file(tmp_path: Path, hub: LocalHub) -> None:
    uri = "hf://datasets/org/chats"
    config = stage_config(tmp_path, {"path": uri}, hub={"endpoint": hub.base_url})
    run = run_stage("fetch", config, tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    result = FetchResult.model_validate(run.json())
    local = fetched_dataset_path(uri, load_trainer_config(config).fetched_inputs_dir)
    assert local.name == "rows.jsonl" and result.dataset.path == str(local.absolute())
    got = [json.loads(line) for line in local.read_text().splitlines()]
    # data/train-0, data/train-1, then extra/train.jsonl (sorted), never the test split.
    assert got == rows(3) + rows(2, start=3) + rows(2, start=5)
    assert result.dataset.rows == 7
    assert not [
        p for p in local.parent.iterdir() if p.name != local.name and not p.name.startswith(".rows")
    ]


def test_one_file_of_a_hub_data_set(tmp_path: Path, hub: LocalHub) -> None:
    uri = "hf://datasets/org/chats/extra/train.jsonl"
    config = stage_config(
        tmp_path,
        {"path": uri, "evalPath": "hf://datasets/org/chats@main/data/test-00000-of-00001.parquet"},
        hub={"endpoint": hub.base_url},
    )
    run = run_stage("fetch", config, tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    result = FetchResult.model_validate(run.json())
    assert (result.dataset.rows, result.eval.rows if result.eval else None) == (2, 1)
    assert Path(result.dataset.path).read_bytes() == jsonl(rows(2, start=5))
    assert Path(result.eval.path).suffix == ".parquet" if result.eval else False


def test_hub_data_set_errors_name_the_file_and_line(tmp_path: Path, hub: LocalHub) -> None:
    commit = hub.repos[("dataset", "org/chats")].commit
    config = stage_config(
        tmp_path,
        {"path": "hf://datasets/org/chats", "split": "validation"},
        hub={"endpoint": hub.base_url},
    )
    run = run_stage("fetch", config, tmp_path / "cache")
    assert run.returncode == 2
    where = f"hf://datasets/org/chats@{commit[:12]}/broken/validation.jsonl:3"
    assert run.error_line.startswith(f"dataset.path: {where}: invalid JSON"), run.error_line

    config = stage_config(
        tmp_path,
        {"path": "hf://datasets/org/chats", "split": "dev"},
        hub={"endpoint": hub.base_url},
    )
    run = run_stage("fetch", config, tmp_path / "cache")
    assert run.returncode == 2
    assert run.error_line.startswith(
        "dataset.path: hf://datasets/org/chats: no files of split 'dev'"
    )
    assert run.error_line.endswith("set dataset.split or name a file")

    uri = "hf://datasets/org/chats/data/nothing.jsonl"
    run = run_stage(
        "fetch",
        stage_config(tmp_path, {"path": uri}, hub={"endpoint": hub.base_url}),
        tmp_path / "cache",
    )
    assert (
        run.error_line
        == f"dataset.path: {uri}: 404 no such file 'data/nothing.jsonl' in the repository"
    )
    assert not list((tmp_path / "out" / "inputs").rglob("*.jsonl"))


def test_two_pods_fetching_one_model_at_once_download_it_once(
    tmp_path: Path, hub: LocalHub
) -> None:
    """Two fetch processes on one cache (the shared volume): the second waits for the
    first's lock, then finds the model complete."""
    hub.delay_seconds["model.safetensors"] = 2.0
    cache = tmp_path / "cache"
    runs = []
    for pod in ("a", "b"):
        workdir = tmp_path / pod
        workdir.mkdir()
        config = stage_config(
            workdir,
            {"path": "unused.jsonl"},
            model={"path": "hf://org/tiny"},
            hub={"endpoint": hub.base_url},
        )
        runs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "maap_trainer",
                    "fetch-model",
                    "--config",
                    str(model_spec(config)),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={
                    **_clean_env(),
                    "MAAP_CACHE_DIR": str(cache),
                    "MAAP_TERMINATION_LOG": str(workdir / "t.log"),
                },
            )
        )
    started = time.monotonic()
    outputs = [proc.communicate(timeout=120) for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0], outputs
    infos = [CachedModelInfo.model_validate_json(out) for out, _ in outputs]
    assert infos[0] == infos[1]
    assert hub.downloads[("org/tiny", "model.safetensors")] == 1
    logs = "".join(err for _, err in outputs)
    # Proof they overlapped: one of them passed its first look before the other finished.
    assert "downloaded by another pod meanwhile" in logs, logs
    assert time.monotonic() - started < 60


def test_a_pod_killed_mid_download_is_resumed_by_the_next(tmp_path: Path, hub: LocalHub) -> None:
    """SIGKILL (no cleanup runs): the next fetch takes the lock, resumes from the staging
    directory (the files the first finished are not downloaded again), and completes."""
    hub.delay_seconds["model.safetensors"] = 30.0
    config = stage_config(
        tmp_path,
        {"path": "unused.jsonl"},
        model={"path": "hf://org/tiny"},
        hub={"endpoint": hub.base_url},
    )
    command = [
        sys.executable,
        "-m",
        "maap_trainer",
        "fetch-model",
        "--config",
        str(model_spec(config)),
    ]
    env = {**_clean_env(), "MAAP_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (
        hub.downloads[("org/tiny", "config.json")] == 0
        or hub.downloads[("org/tiny", "model.safetensors")] == 0
    ):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)  # config.json lands while model.safetensors waits
    first.kill()
    first.wait()
    staging = cached_model_dir("hf://org/tiny", tmp_path / "cache")
    assert not staging.exists()  # nothing trusted
    hub.delay_seconds.clear()
    run = run_stage("fetch-model", model_spec(config), tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    assert "resuming the download a stopped pod left" in run.stderr
    assert hub.downloads[("org/tiny", "config.json")] == 1  # kept from the killed pod
    assert hub.downloads[("org/tiny", "model.safetensors")] == 2
    info = CachedModelInfo.model_validate(run.json())
    assert (Path(info.path) / "model.safetensors").read_bytes() == CHECKPOINT["model.safetensors"]


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_", "MAAP_"))}


@pytest.mark.slow
def test_the_cached_hub_model_loads_with_transformers(tmp_path: Path, hub: LocalHub) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    _, run = fetch_model(tmp_path, hub, {"path": "hf://org/tiny"})
    assert run.returncode == 0, run.stderr
    model = AutoModelForCausalLM.from_pretrained(CachedModelInfo.model_validate(run.json()).path)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64)
