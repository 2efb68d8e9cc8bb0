"""ONNX export with the GenAI builder and the parity gate, on the real SmolLM2 checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.export_fixtures import TEST_PARITY, ExportRun, export_base

# -- spec and command line (fast) -------------------------------------------------------


def test_fp16_on_cpu_is_refused_with_the_field_named() -> None:
    from maap_api.stage_config import ExportSpec

    with pytest.raises(ValidationError, match="precision: fp16 needs executionProvider cuda"):
        ExportSpec(precision="fp16")
    assert ExportSpec(precision="fp16", execution_provider="cuda").precision == "fp16"


def test_quantization_only_for_integer_precisions() -> None:
    from maap_api.stage_config import ExportSpec

    with pytest.raises(ValidationError, match="quantization: k_quant applies to precision int4"):
        ExportSpec(precision="fp32", quantization="k_quant")


@pytest.mark.parametrize(
    ("precision", "provider", "quantization", "algorithm"),
    [
        ("int4", "cpu", "auto", "k_quant_mixed"),
        ("int8", "cpu", "auto", "default"),
        ("int4", "cuda", "k_quant", "k_quant"),
        ("fp16", "cuda", "auto", None),
        ("fp32", "cpu", "auto", None),
    ],
)
def test_builder_command_passes_precision_provider_and_recipe(
    precision: str, provider: str, quantization: str, algorithm: str | None
) -> None:
    from maap_trainer.export.genai_build import BUILDER_MODULE, BuildRequest, builder_command

    command = builder_command(
        BuildRequest(Path("/m"), Path("/o"), precision, provider, quantization), Path("/c")
    )
    assert command[:3] == [sys.executable, "-m", BUILDER_MODULE]
    assert command[command.index("--precision") + 1] == precision
    assert command[command.index("--execution_provider") + 1] == provider
    options = command[command.index("--extra_options") + 1 :]
    assert "hf_token=false" in options
    assert [o for o in options if o.startswith("algo_config=")] == (
        [f"algo_config={algorithm}"] if algorithm else []
    )


def test_judge_names_the_threshold_that_failed() -> None:
    from maap_api.stage_config import ParitySpec
    from maap_trainer.export.parity import ParityResult, judge

    def result(precision: str, exact: int, agreement: float, ppl: float) -> ParityResult:
        return ParityResult(precision, 4, 16, exact, 0.5, agreement, True, 10.0, ppl, 100, "t", 1)

    spec = ParitySpec(min_token_agreement=0.8, max_perplexity_increase=0.1)
    assert judge(result("fp32", 4, 1.0, 10.0), spec).passed
    failed = judge(result("fp32", 3, 1.0, 10.0), spec)
    assert not failed.passed and "token for token" in (failed.failure or "")
    low = judge(result("int4", 0, 0.5, 10.0), spec)
    assert not low.passed and (low.failure or "").startswith("export.parity.minTokenAgreement")
    worse = judge(result("int4", 0, 0.9, 11.5), spec)
    assert not worse.passed
    assert (worse.failure or "").startswith("export.parity.maxPerplexityIncrease")
    assert judge(result("int4", 0, 0.9, 10.9), spec).passed


# -- real exports (slow) ----------------------------------------------------------------


@pytest.mark.slow
def test_fp32_export_matches_pytorch_token_for_token(base_model_dir: Path, tmp_path: Path) -> None:
    run = export_base(base_model_dir, tmp_path, {"precision": "fp32", "parity": TEST_PARITY})
    parity = run.info["parity"]
    assert parity["passed"] is True and parity["exactMatches"] == parity["prompts"] == 3
    assert parity["tokenAgreement"] == 1.0 and parity["prefixAgreement"] == 1.0
    assert parity["tokenizerMatches"] is True
    assert abs(parity["perplexity"]["relativeIncrease"]) < 1e-3
    assert parity["perplexity"]["source"].startswith("eval split")
    # fp32 weights: 134.5M parameters at 4 bytes, in model.onnx.data.
    assert run.info["files"]["model.onnx.data"] > 4 * 130_000_000
    on_disk = json.loads((tmp_path / "export.json").read_text())
    assert on_disk["parity"] == parity and on_disk["precision"] == "fp32"


@pytest.mark.slow
def test_int4_export_keeps_tokenizer_and_reports_parity(int4_export: ExportRun) -> None:
    onnx, info = int4_export.onnx, int4_export.info
    for name in ("genai_config.json", "model.onnx", "tokenizer.json", "chat_template.jinja"):
        assert (onnx / name).is_file(), name
    assert "chat_template.jinja" in info["tokenizerFiles"]
    assert info["sizeBytes"] == sum(info["files"].values())
    # int4 (k_quant_mixed): far below fp32's ~540 MB.
    assert 40_000_000 < info["sizeBytes"] < 200_000_000
    parity = info["parity"]
    assert parity["passed"] is True
    assert parity["thresholds"] == {"minTokenAgreement": 0.7, "maxPerplexityIncrease": 0.25}
    assert 0.7 <= parity["tokenAgreement"] <= 1.0
    assert parity["perplexity"]["relativeIncrease"] <= 0.25
    assert not (int4_export.output_dir / "onnx.partial").exists()


def just_failing(parity: dict) -> tuple[dict, str]:
    """Thresholds a hair stricter than what this (deterministic) export measured."""
    if parity["tokenAgreement"] < 1.0:
        threshold = {"minTokenAgreement": parity["tokenAgreement"] + 1e-6}
        return {**TEST_PARITY, **threshold}, "export.parity.minTokenAgreement: int4"
    increase = parity["perplexity"]["relativeIncrease"]
    assert increase > 0, "int4 that equals PyTorch everywhere: the gate cannot be shown failing"
    threshold = {"maxPerplexityIncrease": increase / 2}
    return {**TEST_PARITY, **threshold}, "export.parity.maxPerplexityIncrease: int4"


@pytest.mark.slow
def test_a_strict_gate_rejects_the_export_exit_2_and_one_line_in_the_termination_log(
    base_model_dir: Path,
    tmp_path: Path,
    int4_export: ExportRun,
) -> None:
    import os
    import subprocess

    from tests.export_fixtures import job_config

    (tmp_path / "merged").symlink_to(base_model_dir)
    strict, expected = just_failing(int4_export.info["parity"])
    cfg = job_config(tmp_path, {"precision": "int4", "parity": strict})
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg.to_json_dict()))
    termination = tmp_path / "export.error"
    done = subprocess.run(
        [sys.executable, "-m", "maap_trainer", "export", "--config", str(config)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "MAAP_TERMINATION_LOG": str(termination)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    reason = termination.read_text().strip()
    assert reason.startswith(expected) and "\n" not in reason
    assert "Traceback" not in done.stderr
    # Rejected: never published, kept aside for inspection, the failure recorded.
    assert not (tmp_path / "onnx").exists(), "a rejected export is never published"
    assert (tmp_path / "onnx.rejected" / "genai_config.json").is_file()
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["parity"]["passed"] is False and info["parity"]["failure"] == reason
