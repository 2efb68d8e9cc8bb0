"""export.adapter: the base model with LoRA slots, this fine-tune as an .onnx_adapter.

Checked right away like the merged export: the base export plus the adapter against PyTorch's
merged model, under the same parity thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maap_api.stage_config import TrainerConfig

from maap_trainer.export.base_cache import build_from_cache
from maap_trainer.export.genai_build import BuildRequest, ExportError, keep_tokenizer
from maap_trainer.export.lora_adapter import (
    ADAPTER_SUFFIX,
    BASE_BUILD_OPTIONS,
    add_lora_slots,
    read_peft_adapter,
    slots_for,
    write_adapter,
)
from maap_trainer.outdirs import directory_size, publish

BASE_DIR = "onnx-base"
ADAPTERS_DIR = "adapters"


def export_adapter(cfg: TrainerConfig, log_path: Path) -> dict[str, Any]:
    from maap_trainer.model_prep import cache_root, prepare_base_model

    output_dir = Path(cfg.output_dir)
    adapter_dir = output_dir / "adapter"
    has_adapter = (adapter_dir / "adapter_config.json").is_file()
    if cfg.method.type not in ("lora", "qlora") or not has_adapter:
        raise ExportError(
            f"export.adapter: method {cfg.method.type} leaves no LoRA adapter at {adapter_dir}; "
            "ONNX adapters come from method lora or qlora, so set export.adapter: false"
        )
    base_checkpoint = Path(prepare_base_model(cfg.model, cfg.hub, cfg.s3))
    weights = read_peft_adapter(base_checkpoint, adapter_dir)
    staging = output_dir / f"{BASE_DIR}.partial"
    request = BuildRequest(
        base_checkpoint,
        staging,
        cfg.export.precision,
        cfg.export.execution_provider,
        cfg.export.quantization,
        BASE_BUILD_OPTIONS,
    )
    # Every fine-tune of this base needs the same build: made once per model cache.
    base = build_from_cache(request, log_path, cache_root() / "exports")
    keep_tokenizer(base_checkpoint, staging)
    add_lora_slots(staging, slots_for(weights))
    final = output_dir / BASE_DIR
    publish(staging, final)
    target = output_dir / ADAPTERS_DIR / f"{cfg.job_name}{ADAPTER_SUFFIX}"
    adapter = write_adapter(weights, final, target)
    report: dict[str, Any] = {
        **adapter,
        "name": cfg.job_name,
        "baseModel": str(final),
        "baseSizeBytes": directory_size(final),
        "baseSeconds": round(base.seconds, 2),
        "baseReused": base.reused,
    }
    if cfg.export.parity.enabled and cfg.export.execution_provider == "cpu":
        from maap_trainer.export.gate import run_gate

        result = run_gate(cfg, output_dir / "merged", final, (target, cfg.job_name))
        report["parity"] = result.to_json()
        if not result.passed:
            raise ExportError(result.failure or "export.adapter: the adapter parity gate failed")
    return report
