"""The DeepSpeed config for a run, generated from the spec (or the user's raw one).

Batch sizes, gradient clipping, optimizer hyperparameters and the precision are 'auto':
the transformers integration fills them in from TrainingArguments, so the spec stays the
single place they are set. Precision follows the device: bf16/fp16 on GPU, fp32 on CPU.
"""

from __future__ import annotations

import copy
from typing import Any

from maap_api.stage_config import DeepSpeedSpec


def build_deepspeed_config(spec: DeepSpeedSpec, on_gpu: bool) -> dict[str, Any]:
    if spec.config is not None:
        return copy.deepcopy(spec.config)
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if spec.zero_stage == 3:
        zero.update(
            {
                # The merged model must be a full checkpoint, not rank shards.
                "stage3_gather_16bit_weights_on_model_save": True,
                "reduce_bucket_size": "auto",
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
            }
        )
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if spec.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,  # the Trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if spec.offload_optimizer:
        # DeepSpeed's own AdamW becomes its fused CPU Adam (cpu_adam op) when offloading;
        # a torch optimizer would step on CPU without it, several times slower.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def zero_stage_of(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))
