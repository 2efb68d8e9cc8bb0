"""The fetch stage over http(s): a real HTTP server on 127.0.0.1, the stage in a subprocess."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from maap_api.sources import fetched_dataset_path
from maap_api.stage_config import TrainerConfig, load_trainer_config
from maap_api.transfer_results import FetchResult
from maap_trainer.fetch import local_dataset_paths
from maap_trainer.train.data import load_dataset

from tests.fetch_servers import FileServer, run_stage, stage_config

ROWS = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    for i in range(6)
]
GOOD = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
BAD = GOOD + b'{"messages": [{"role": "user", "content": "x"}\n'  # line 7: cut short


@pytest.fixture()
def files():
    with FileServer({"data/train.jsonl": GOOD, "data/bad.jsonl": BAD, "eval.jsonl": GOOD}) as s:
        yield s


def leftovers(root: Path) -> list[str]:
    """Anything of a download in progress (or a file that was not checked)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if ".partial" in p.name or p.suffix == ".jsonl"
    )


def test_a_url_is_downloaded_checked_validated_and_reported(tmp_path: Path, files) -> None:
    url = files.url("data/train.jsonl")
    digest = hashlib.sha256(GOOD).hexdigest()
    config = stage_config(tmp_path, {"path": url, "sha256": digest})
    run = run_stage("fetch", config, tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    cfg = load_trainer_config(config)
    local = fetched_dataset_path(url, cfg.fetched_inputs_dir)
    assert local.read_bytes() == GOOD
    result = FetchResult.model_validate(run.json())
    assert result.dataset.path == str(local.absolute())
    assert (result.dataset.rows, result.dataset.sha256, result.dataset.bytes) == (
        6,
        digest,
        len(GOOD),
    )
    assert result.model is None  # a packaged preset: nothing remote to fetch
    on_disk = json.loads((Path(cfg.output_dir) / "fetch.json").read_text())
    assert FetchResult.model_validate(on_disk) == result
    assert leftovers(tmp_path / "out") == [local.relative_to(tmp_path / "out").as_posix()]

    # The next stages read the fetched copy, never the URL.
    train, eval_path = local_dataset_paths(cfg)
    assert (train, eval_path) == (local.absolute(), None)
    splits = load_dataset(train, "auto", 0.2, 0, eval_path)
    assert splits.counts == {"rows": 6, "train": 5, "eval": 1}

    # A re-run (a restarted pod) trusts the checked copy and downloads nothing.
    before = files.requests["/data/train.jsonl"]
    again = run_stage("fetch", config, tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert files.requests["/data/train.jsonl"] == before == 1
    assert "already fetched and checked" in again.stderr


def test_a_remote_eval_file_is_fetched_beside_the_training_file(tmp_path: Path, files) -> None:
    config = stage_config(
        tmp_path, {"path": files.url("data/train.jsonl"), "evalPath": files.url("eval.jsonl")}
    )
    run = run_stage("fetch", config, tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    result = FetchResult.model_validate(run.json())
    assert result.eval is not None and result.eval.rows == 6
    train, eval_path = local_dataset_paths(load_trainer_config(config))
    assert eval_path == result.eval.path and Path(eval_path).read_bytes() == GOOD
    assert load_dataset(train, "auto", 0.2, 0, eval_path).counts["eval"] == 6


def test_a_checksum_mismatch_fails_and_leaves_no_file(tmp_path: Path, files) -> None:
    url = files.url("data/train.jsonl")
    wrong = "ab" * 32
    run = run_stage("fetch", stage_config(tmp_path, {"path": url, "sha256": wrong}), tmp_path / "c")
    assert run.returncode == 2
    actual = hashlib.sha256(GOOD).hexdigest()
    assert run.error_line == (
        f"dataset.sha256: {url}: checksum mismatch (expected {wrong}, got {actual})"
    )
    assert run.termination_message == run.error_line
    assert leftovers(tmp_path / "out") == []


def test_a_malformed_row_names_the_url_and_line_and_leaves_no_file(tmp_path: Path, files) -> None:
    url = files.url("data/bad.jsonl")
    run = run_stage("fetch", stage_config(tmp_path, {"path": url}), tmp_path / "c")
    assert run.returncode == 2
    assert run.error_line.startswith(f"dataset.path: {url}:7: invalid JSON"), run.error_line
    assert leftovers(tmp_path / "out") == []


def test_a_missing_file_is_the_servers_404(tmp_path: Path, files) -> None:
    url = files.url("data/nowhere.jsonl")
    run = run_stage("fetch", stage_config(tmp_path, {"path": url}), tmp_path / "c")
    assert (run.returncode, run.error_line) == (2, f"dataset.path: {url}: 404 Not Found")
    assert leftovers(tmp_path / "out") == []


def test_an_unreachable_host_is_one_line(tmp_path: Path) -> None:
    from maap_trainer.ports import free_port

    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/train.jsonl"
    config = stage_config(tmp_path, {"path": "train.jsonl", "evalPath": url})
    (tmp_path / "train.jsonl").write_bytes(GOOD)
    run = run_stage("fetch", config, tmp_path / "c", cwd=tmp_path)
    assert run.returncode == 2
    assert run.error_line == (
        f"dataset.evalPath: {url}: cannot reach 127.0.0.1:{port} (connection refused)"
    )


def test_a_local_file_is_validated_where_it_lies(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_bytes(BAD)
    run = run_stage("fetch", stage_config(tmp_path, {"path": str(data)}), tmp_path / "c")
    assert run.returncode == 2
    assert run.error_line.startswith(f"dataset.path: {data}:7: invalid JSON"), run.error_line
    data.write_bytes(GOOD)
    run = run_stage("fetch", stage_config(tmp_path, {"path": str(data)}), tmp_path / "c")
    assert run.returncode == 0, run.stderr
    assert FetchResult.model_validate(run.json()).dataset.path == str(data)


def test_the_train_stage_says_when_a_remote_file_was_not_fetched(tmp_path: Path) -> None:
    from maap_api.errors import DatasetError

    cfg = TrainerConfig.model_validate(
        {
            "jobName": "j",
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": "https://example.invalid/rows.jsonl"},
            "outputDir": str(tmp_path),
        }
    )
    with pytest.raises(
        DatasetError, match=r"^dataset.path: https://example.invalid/rows.jsonl: not fetched yet"
    ):
        local_dataset_paths(cfg)


@pytest.mark.slow
def test_the_train_stage_trains_on_the_fetched_copy(tmp_path: Path, files) -> None:
    """fetch, then train: the train stage reads the fetched copy of the URL."""
    from tests.trainer_helpers import metrics_of, trainer_config
    from tests.trainer_helpers import run_stage as run_train

    url = files.url("data/train.jsonl")
    config, output = trainer_config(
        tmp_path, Path("unused"), "fetched", dataset={"path": url}, training={"maxSteps": 1}
    )
    fetched = run_stage("fetch", config, tmp_path / "cache")
    assert fetched.returncode == 0, fetched.stderr
    trained = run_train(config)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = metrics_of(output)
    assert (metrics["trainRows"], metrics["evalRows"]) == (5, 1)
    assert files.requests["/data/train.jsonl"] == 1  # training never went to the URL


def test_a_signed_links_query_never_reaches_logs_or_errors(tmp_path: Path, files) -> None:
    """A link's query may be its credential (the gateway's signed file links): the stage's
    log lines and one-line errors show the URL without it; the download uses it whole."""
    secret = "sig=0123456789abcdef0123456789abcdef"
    url = files.url("data/train.jsonl") + f"?expires=9999999999&{secret}"
    run = run_stage("fetch", stage_config(tmp_path, {"path": url}), tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    assert "rows of" in run.stderr and "?<query hidden>" in run.stderr
    assert secret not in run.stderr and secret not in run.stdout
    bad = files.url("data/bad.jsonl") + f"?{secret}"
    (tmp_path / "b").mkdir()
    failed = run_stage("fetch", stage_config(tmp_path / "b", {"path": bad}), tmp_path / "c")
    assert failed.returncode == 2 and ":7: invalid JSON" in failed.error_line
    assert secret not in failed.error_line and "?<query hidden>" in failed.error_line
