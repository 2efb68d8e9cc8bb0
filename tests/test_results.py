"""metrics.json, export.json and status: one typed definition, the same figures everywhere.

The export stage's own reporting (export._report) writes export.json and its final
progress report; the operator's status patch of that report must hold every figure
`maap run` prints.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from maap.local.runner import LocalRunner
from maap.local.summary import summary_rows
from maap.progress_api import status_patch
from maap_api.finetunejob import FineTuneJobStatus
from maap_api.results import (
    ExportResult,
    ParityFigures,
    ResultError,
    TrainMetrics,
    read_result,
    write_result,
)
from maap_api.stage_config import ParitySpec, TrainerConfig
from maap_trainer.export import _report
from maap_trainer.export.parity import ParityResult, judge
from maap_trainer.progress import PROGRESS_URL_ENV, ProgressReport, read_progress
from rich.console import Console

from tests.conftest import PIRATE_DATA


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a status merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def config(output_dir: Path, **export: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "jobName": "pirate",
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": str(PIRATE_DATA / "train.jsonl")},
            "export": {"adapter": True, **export},
            "outputDir": str(output_dir),
        }
    )


def outputs(root: Path) -> Path:
    """An output directory as the stages leave it (the files' contents do not matter)."""
    for name, marker in (("adapter", "adapter_config.json"), ("merged", "config.json"),
                         ("onnx", "genai_config.json"), ("onnx-base", "genai_config.json"),
                         ("adapters", "pirate.onnx_adapter")):  # fmt: skip
        (root / name).mkdir(parents=True)
        (root / name / marker).write_text("{}")
    return root


def parity(agreement: float, perplexity_onnx: float) -> dict[str, Any]:
    result = ParityResult("int4", 3, 16, 2, 0.8, agreement, True, 10.0, perplexity_onnx, 120,
                          "eval split (8 rows)", 4.2)  # fmt: skip
    return judge(result, ParitySpec()).to_json()


def export_info(out: Path, gate: dict[str, Any]) -> dict[str, Any]:
    """What run_export gathers for a generative model before it reports."""
    return {
        "precision": "int4",
        "executionProvider": "cpu",
        "quantization": "auto",
        "path": str(out / "onnx"),
        "seconds": 6.4,
        "tokenizerFiles": ["tokenizer.json", "chat_template.jinja"],
        "sizeBytes": 90_000_000,
        "files": {"model.onnx": 1_000, "model.onnx.data": 89_999_000},
        "parity": gate,
        "adapter": {
            "path": str(out / "adapters" / "pirate.onnx_adapter"),
            "sizeBytes": 3_500_000,
            "modules": 60,
            "rank": [16],
            "name": "pirate",
            "baseModel": str(out / "onnx-base"),
            "baseSizeBytes": 88_000_000,
            "baseSeconds": 6.1,
            "parity": gate,
        },
    }


def train_metrics() -> TrainMetrics:
    """A metrics.json as the train stage writes it (train._metrics and the rest)."""
    return TrainMetrics.model_validate(
        {
            "task": "causal-lm", "method": "lora", "evalLossBefore": 2.31,
            "evalLossAfter": 0.87, "trainLoss": 1.2, "trainRuntimeSeconds": 61.5,
            "secondsPerStep": 1.7, "trainTokens": 41_000, "tokensPerSecond": 666.7,
            "steps": 36, "stepsPerEpoch": 36, "trainRows": 288, "evalRows": 32,
            "datasetFormat": "chat", "trainableParameters": 1_843_200,
            "totalParameters": 136_358_208, "baseModel": "/cache/smollm2",
            "truncatedRows": 0, "droppedRows": 0, "peakTrainingMemoryBytes": 1_500_000_000,
            "peakTrainingMemoryKind": "rss", "resumedFromStep": None,
            "distributed": {"worldSize": 1, "deepspeed": False, "zeroStage": None,
                            "backend": "gloo", "precision": "fp32", "ranks": [
                                {"rank": 0, "worldSize": 1, "trainerWorldSize": 1,
                                 "acceleratorProcesses": 1, "steps": 36,
                                 "parametersPartitioned": False,
                                 "localParameterElements": 136_358_208,
                                 "fullParameterElements": 136_358_208}]},
        }
    )  # fmt: skip


@pytest.fixture(autouse=True)
def no_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROGRESS_URL_ENV, raising=False)


def test_export_stage_reports_its_figures_and_artifacts(tmp_path: Path) -> None:
    out = outputs(tmp_path)
    written = _report(config(out), export_info(out, parity(0.9, 10.5)))
    on_disk = read_result(out / "export.json", ExportResult)
    assert json.loads((out / "export.json").read_text()) == written
    assert on_disk.build_seconds == 6.4 and written["seconds"] == 6.4
    assert on_disk.parity and on_disk.parity.exact_matches == 2

    report = read_progress(out)
    assert report is not None and report.stage == "exported"
    assert report.export == on_disk.summary()
    assert report.artifacts is not None
    assert report.artifacts.onnx_model == str(out / "onnx")
    assert report.artifacts.onnx_size_bytes == 90_000_000
    assert report.artifacts.merged_model == str(out / "merged")
    assert report.artifacts.onnx_adapter == str(out / "adapters" / "pirate.onnx_adapter")

    # What the operator makes of that report (sent as JSON, as the trainer posts it).
    sent = ProgressReport.model_validate_json(json.dumps(report.to_json_dict()))
    status = FineTuneJobStatus.model_validate(merge_patch({}, status_patch(sent)["status"]))
    assert status.export == on_disk.summary()
    assert status.export.parity and status.export.parity.token_agreement == 0.9
    assert status.artifacts and status.artifacts.onnx_model == str(out / "onnx")


def test_a_rejected_export_reports_its_figures_but_no_artifact(tmp_path: Path) -> None:
    out = outputs(tmp_path)
    gate = parity(0.5, 10.5)
    assert gate["passed"] is False
    _report(config(out), export_info(out, gate), rejected=True)
    report = read_progress(out)
    assert report is not None and report.stage == "rejected"
    assert report.message == gate["failure"]
    assert report.export and report.export.parity and report.export.parity.passed is False
    assert report.artifacts is None, "a rejected model is not an artifact to serve"


def test_status_shows_what_maap_run_prints(tmp_path: Path) -> None:
    out = outputs(tmp_path / "out" / "pirate")
    cfg = config(out)
    metrics = train_metrics()
    write_result(out / "metrics.json", metrics)
    _report(cfg, export_info(out, parity(0.9, 10.5)))
    exported = read_progress(out)
    trained = ProgressReport(stage="trained", step=36, total_steps=36, metrics=metrics.summary())

    # The cluster: the two final reports, merge-patched into status in turn.
    status: dict[str, Any] = {"artifacts": {"location": "pvc://pirate-artifacts/output"}}
    for report in (trained, exported):
        sent = ProgressReport.model_validate_json(json.dumps(report.to_json_dict()))
        status = merge_patch(status, status_patch(sent)["status"])
    typed = FineTuneJobStatus.model_validate(status)
    assert status["artifacts"]["location"] == "pvc://pirate-artifacts/output", "merged, kept"
    assert status["metrics"]["trainTokens"] == 41_000
    assert status["export"]["sizeBytes"] == 90_000_000

    # `maap run`: the files, read back through the same models, printed.
    runner = LocalRunner(cfg, Console(file=io.StringIO(), width=400))
    runner.report.metrics = runner._result("metrics.json", TrainMetrics)
    runner.report.export = runner._result("export.json", ExportResult)
    runner.print_summary()
    printed = runner.console.file.getvalue()  # type: ignore[attr-defined]

    rows = summary_rows("lora", typed.metrics, typed.export)
    assert rows == summary_rows("lora", runner.report.metrics.summary(),
                                runner.report.export.summary())  # fmt: skip
    for name, value in rows:
        assert name in printed and value in printed, (name, value)
    text = dict(rows)
    assert text["eval loss"] == "2.310 -> 0.870 (-1.440)"
    assert "41,000 tokens" in text["training"] and "667 tok/s" in text["training"]
    assert text["export"] == "int4 on cpu, 85.8 MiB, 6 s build"
    assert text["parity"].startswith("2/3 greedy answers identical, 90.0% token agreement")


def test_a_new_summary_replaces_the_old_one_whole() -> None:
    old = {"metrics": {"evalLossAfter": 0.5, "evalAccuracyAfter": 0.9, "trainTokens": 10}}
    report = ProgressReport(stage="trained", metrics=TrainMetrics.model_validate(
        {**train_metrics().model_dump(), "eval_accuracy_after": None}).summary())  # fmt: skip
    status = merge_patch(old, status_patch(report)["status"])
    assert "evalAccuracyAfter" not in status["metrics"], "no figure of an earlier run survives"
    assert status["metrics"]["trainTokens"] == 41_000


def test_classifier_parity_and_skipped_gates_are_typed_too() -> None:
    figures = {"texts": 5, "labelAgreement": 1.0, "maxLogitDifference": 2e-5, "passed": True}
    classifier = ParityFigures.model_validate(figures)
    assert classifier.label_agreement == 1.0
    skipped = ParityFigures.model_validate({"passed": None, "skipped": "no CUDA here"})
    assert skipped.passed is None and skipped.skipped == "no CUDA here"


def test_a_malformed_result_file_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    with pytest.raises(ResultError, match=r"metrics\.json: cannot read it"):
        read_result(path, TrainMetrics)
    path.write_text(json.dumps({**train_metrics().to_json_dict(), "steps": "many"}))
    with pytest.raises(ResultError, match=r"metrics\.json: steps: Input should be a valid int"):
        read_result(path, TrainMetrics)
    path.write_text(json.dumps({**train_metrics().to_json_dict(), "stepz": 3}))
    with pytest.raises(ResultError, match="stepz: unknown field"):
        read_result(path, TrainMetrics)
