"""`fetch-model` (a CachedModel's download Job) and `fetch --data-only` (a job's fetch Job
when the shared cache brings the model), as subprocesses, the way the pods run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from maap_api.transfer_results import MODEL_COMPLETE_MARKER, CachedModelInfo, FetchResult

from tests.fetch_servers import model_spec, run_stage, stage_config


def _rows(path: Path) -> Path:
    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [{"messages": turn} for _ in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_data_only_leaves_the_model_to_the_cache(tmp_path: Path) -> None:
    # A remote model that nothing serves: fetching it would fail; --data-only never tries.
    config = stage_config(tmp_path, {"path": str(_rows(tmp_path / "rows.jsonl"))},
                          model={"path": "hf://acme/absent"},
                          hub={"endpoint": "http://127.0.0.1:1"})  # fmt: skip
    run = run_stage("fetch", config, tmp_path / "cache", "--data-only")
    assert run.returncode == 0, run.stderr
    result = FetchResult.model_validate(run.json())
    assert result.dataset.rows == 3 and result.model is None
    assert not (tmp_path / "cache" / "models").exists()


def test_fetch_model_refuses_a_path_on_a_jobs_volume(tmp_path: Path) -> None:
    config = stage_config(tmp_path, {"path": "x.jsonl"}, model={"path": str(tmp_path)})
    run = run_stage("fetch-model", model_spec(config), tmp_path / "cache")
    assert run.returncode == 2
    assert run.error_line.startswith(f"model.path: {tmp_path}: a path on a job's volume")


def test_fetch_model_reports_a_malformed_spec_naming_the_field(tmp_path: Path) -> None:
    spec = tmp_path / "model.json"
    spec.write_text(json.dumps({"model": {"preset": "smollm2-135m-instruct", "path": "/m"}}))
    run = run_stage("fetch-model", spec, tmp_path / "cache")
    assert run.returncode == 2
    assert "model: set exactly one of model.preset or model.path" in run.error_line


@pytest.mark.slow
def test_fetch_model_converts_a_packaged_preset_into_the_cache_once(tmp_path: Path) -> None:
    config = stage_config(tmp_path, {"path": "x.jsonl"})
    cache = tmp_path / "cache"
    first = run_stage("fetch-model", model_spec(config), cache, timeout=300)
    assert first.returncode == 0, first.stderr
    info = CachedModelInfo.model_validate_json(first.termination_message)
    directory = Path(info.path)
    assert directory.parent == cache / "models" and (directory / "config.json").is_file()
    assert (directory / MODEL_COMPLETE_MARKER).is_file()
    assert info.files >= 4 and info.bytes > 100 * 2**20  # SmolLM2-135M, fp32 safetensors
    second = run_stage("fetch-model", model_spec(config), cache, timeout=60)
    assert second.returncode == 0, second.stderr
    assert CachedModelInfo.model_validate_json(second.termination_message).path == info.path
