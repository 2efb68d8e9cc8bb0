"""Final artifacts: the adapter, and the merged model with its tokenizer, published atomically.

Every rank takes part in saving (ZeRO-3 gathers the partitioned weights); rank 0 writes.
Where the trained weights cannot simply be merged in memory (4-bit QLoRA base, ZeRO-3
partitions), the adapter is merged into a freshly loaded full-precision base instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from maap_api.stage_config import TrainerConfig

from maap_trainer.outdirs import publish
from maap_trainer.train import distributed
from maap_trainer.train.checkpoints import CHECKPOINTS_DIR
from maap_trainer.train.deepspeed_config import zero_stage_of
from maap_trainer.train.methods import TaskHead, load_base

PISSA_INIT_DIR = "pissa-init"


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def _stop_partitioning_loads(zero3: bool) -> None:
    """After training, rank 0 loads models whole: under a live ZeRO-3 config,
    from_pretrained would partition them across ranks that have already finished and wait
    for them forever."""
    if zero3:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def save_artifacts(
    trainer: Any,
    cfg: TrainerConfig,
    base: str,
    head: TaskHead,
    tokenizer: Any,
    output_dir: Path,
    precision: str,
    ds_config: dict[str, Any] | None,
) -> None:
    import torch

    main = distributed.rank() == 0
    zero3 = ds_config is not None and zero_stage_of(ds_config) == 3
    method = cfg.method.type
    if method == "full":
        staging = output_dir / "merged.partial"
        if main:
            _fresh(staging)
        trainer.save_model(str(staging))  # collective under ZeRO-3
        if not main:
            return
        if precision != "fp32":
            # Export and serving expect fp32 weights, whatever the training precision.
            _stop_partitioning_loads(zero3)
            model = load_base(str(staging), head, "fp32")
            model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        publish(staging, output_dir / "merged")
        return

    staging = output_dir / "adapter.partial"
    pissa_init = output_dir / CHECKPOINTS_DIR / PISSA_INIT_DIR
    if main:
        _fresh(staging)
    if cfg.method.lora.init == "pissa":
        # A PiSSA adapter only fits the residual base it was trained on; save it converted
        # to a plain LoRA (of twice the rank) that fits the original base model.
        if main:
            trainer.model.save_pretrained(
                staging, path_initial_model_for_weight_conversion=str(pissa_init)
            )
    else:
        trainer.save_model(str(staging))  # collective under ZeRO-3
    if not main:
        return
    tokenizer.save_pretrained(staging)
    publish(staging, output_dir / "adapter")

    from peft import PeftModel

    if method == "qlora" or zero3:
        _stop_partitioning_loads(zero3)
        model = PeftModel.from_pretrained(load_base(base, head, "fp32"), output_dir / "adapter")
    else:
        # In memory: the only way that is right for PiSSA/LoftQ, whose base weights changed.
        model = trainer.accelerator.unwrap_model(trainer.model)
    merged = model.merge_and_unload().to(torch.float32)
    staging = _fresh(output_dir / "merged.partial")
    merged.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    publish(staging, output_dir / "merged")
