"""The export stage: merged model -> ONNX (GenAI builder), parity gate, optional LoRA adapter.

Writes into the output directory, each directory published atomically (built as
`*.partial`, renamed when complete):

- `onnx/`: the merged model, with tokenizer and chat template: what the server loads;
- `onnx-base/` + `adapters/<job>.onnx_adapter` (export.adapter): the base model with LoRA
  slots and this fine-tune as a loadable adapter;
- `export.json`: precision, provider, sizes, timings, parity figures;
- `export.log`: the builder's (long) log.

A rejected export (parity gate failed) is kept as `onnx.rejected/` for inspection.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from maap_api.results import (
    EXPORT_FILE,
    ArtifactPaths,
    ExportResult,
    result_json,
    write_result,
)
from maap_api.stage_config import TrainerConfig

from maap_trainer.export.genai_build import BuildRequest, ExportError, build, keep_tokenizer
from maap_trainer.outdirs import directory_size, file_sizes
from maap_trainer.outdirs import publish as _publish
from maap_trainer.progress import ProgressReport, write_progress

__all__ = ["EXPORT_INFO", "EXPORT_LOG", "ExportError", "run_export"]

log = logging.getLogger("maap.export")

EXPORT_LOG = "export.log"
EXPORT_INFO = EXPORT_FILE


def _progress(output_dir: Path, message: str) -> None:
    write_progress(output_dir, ProgressReport(stage="exporting", message=message))


def _can_run(execution_provider: str) -> bool:
    """Whether this machine can run a model exported for the provider (for the parity gate)."""
    if execution_provider == "cpu":
        return True
    import onnxruntime_genai as og

    return bool(og.is_cuda_available())


def run_export(cfg: TrainerConfig) -> dict[str, Any]:
    spec = cfg.export
    output_dir = Path(cfg.output_dir)
    merged = output_dir / "merged"
    if not (merged / "config.json").is_file():
        raise ExportError(f"export: no merged model at {merged}; the training stage must run first")
    log_path = output_dir / EXPORT_LOG
    log_path.write_text("", encoding="utf-8")
    if cfg.training.task != "causal-lm":
        return _run_classifier_export(cfg, merged, log_path)
    staging = output_dir / "onnx.partial"
    _progress(output_dir, f"ONNX {spec.precision}")
    seconds = build(
        BuildRequest(merged, staging, spec.precision, spec.execution_provider, spec.quantization),
        log_path,
    )
    info: dict[str, Any] = {
        "precision": spec.precision,
        "executionProvider": spec.execution_provider,
        "quantization": spec.quantization,
        "path": str(output_dir / "onnx"),
        "seconds": round(seconds, 2),
        "tokenizerFiles": keep_tokenizer(merged, staging),
        "sizeBytes": directory_size(staging),
        "files": file_sizes(staging),
    }
    if spec.parity.enabled:
        if _can_run(spec.execution_provider):
            _progress(output_dir, "parity gate: PyTorch vs ONNX")
            from maap_trainer.export.gate import run_gate

            result = run_gate(cfg, merged, staging)
            info["parity"] = result.to_json()
            if not result.passed:
                rejected = output_dir / "onnx.rejected"
                _publish(staging, rejected)
                info["path"] = str(rejected)
                _report(cfg, info, rejected=True)
                raise ExportError(result.failure or "export.parity: the gate failed")
        else:
            info["parity"] = {
                "passed": None,
                "skipped": f"this machine cannot run a {spec.execution_provider} model "
                "(onnxruntime-genai has no CUDA here); run the export on a GPU node to gate it",
            }
            log.warning("parity gate skipped: %s", info["parity"]["skipped"])
    _publish(staging, output_dir / "onnx")
    if spec.adapter:
        from maap_trainer.export.adapter_stage import export_adapter

        _progress(output_dir, "LoRA adapter")
        info["adapter"] = export_adapter(cfg, log_path)
    return _report(cfg, info)


def _run_classifier_export(cfg: TrainerConfig, merged: Path, log_path: Path) -> dict[str, Any]:
    from maap_trainer.export.classifier import classifier_parity, export_classifier

    spec, output_dir = cfg.export, Path(cfg.output_dir)
    if spec.adapter:
        raise ExportError(
            "export.adapter: ONNX adapters are for generative models; set it to false for "
            f"task {cfg.training.task}"
        )
    staging = output_dir / "onnx.partial"
    _progress(output_dir, f"ONNX {spec.precision} classifier")
    built = export_classifier(merged, staging, cfg.training.task, spec.precision, log_path)
    info: dict[str, Any] = {
        "precision": spec.precision,
        "executionProvider": spec.execution_provider,
        "task": cfg.training.task,
        "labels": built["labels"],
        "path": str(output_dir / "onnx"),
        "seconds": built["seconds"],
        "sizeBytes": directory_size(staging),
        "files": file_sizes(staging),
    }
    if spec.parity.enabled:
        _progress(output_dir, "parity gate: PyTorch vs ONNX")
        parity = classifier_parity(
            merged, staging, cfg.training.task, spec.precision, spec.parity,
            _classifier_texts(cfg),
        )  # fmt: skip
        info["parity"] = parity
        if not parity["passed"]:
            _publish(staging, output_dir / "onnx.rejected")
            info["path"] = str(output_dir / "onnx.rejected")
            _report(cfg, info, rejected=True)
            raise ExportError(parity["failure"])
    _publish(staging, output_dir / "onnx")
    return _report(cfg, info)


def _classifier_texts(cfg: TrainerConfig) -> list[str] | None:
    """Eval-split texts (NER rows are joined words), or None for the built-in texts."""
    from maap_api.errors import DatasetError

    from maap_trainer.export.gate import load_eval_split

    try:
        eval_rows = load_eval_split(cfg)
    except (DatasetError, OSError):
        return None
    texts = []
    for example in eval_rows[: cfg.export.parity.eval_rows]:
        text = getattr(example, "text", None)
        words = getattr(example, "tokens", None)
        if isinstance(text, str) and text:
            texts.append(text)
        elif isinstance(words, list) and words:
            texts.append(" ".join(str(w) for w in words))
    return texts or None


def _report(cfg: TrainerConfig, info: dict[str, Any], rejected: bool = False) -> dict[str, Any]:
    """export.json, typed, and the final progress report, which carries its summary (the
    operator's status.export) and, unless the gate rejected it, the published artifacts."""
    output_dir = Path(cfg.output_dir)
    result = ExportResult.model_validate({**info, "writtenAt": time.time()})
    write_result(output_dir / EXPORT_INFO, result)
    artifacts = None
    if not rejected:
        artifacts = ArtifactPaths.found_in(output_dir, cfg.job_name)
        artifacts.onnx_size_bytes = result.size_bytes
    parity = result.parity
    write_progress(
        output_dir,
        ProgressReport(
            stage="rejected" if rejected else "exported",
            step=1,
            total_steps=1,
            message=(parity.failure or "") if rejected and parity else "",
            export=result.summary(),
            artifacts=artifacts,
        ),
    )
    return result_json(result)
