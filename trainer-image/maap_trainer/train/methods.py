"""Build the model a method trains: LoRA, QLoRA, DoRA or full, for any task head.

The PEFT options (rsLoRA, PiSSA/LoftQ initialisation, target modules, modules to save)
map one to one onto peft's LoraConfig.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from maap_api.errors import ConfigError
from maap_api.stage_config import TrainerConfig


@dataclass(frozen=True)
class TaskHead:
    """What a task loads: the transformers auto class, peft's task type, head settings."""

    auto_class: str
    peft_task_type: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    head_modules: tuple[str, ...] = ()


CAUSAL_LM = TaskHead("AutoModelForCausalLM", "CAUSAL_LM")


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_base(base: str, head: TaskHead, precision: str, quantize_4bit: bool = False) -> Any:
    """The base model in the training precision, in 4-bit NF4 for QLoRA."""
    import transformers

    dtype = torch_dtype(precision)
    kwargs: dict[str, Any] = {"dtype": dtype, **head.model_kwargs}
    if quantize_4bit:
        import torch

        if torch.cuda.is_available():
            # 4-bit weights are placed at load time: on this rank's own GPU.
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    auto_class = getattr(transformers, head.auto_class)
    return auto_class.from_pretrained(base, **kwargs)


def lora_config(cfg: TrainerConfig, head: TaskHead) -> Any:
    from peft import LoftQConfig, LoraConfig

    lora = cfg.method.lora
    targets: str | list[str] = (
        "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    )
    init: bool | str = {"default": True, "gaussian": "gaussian", "pissa": "pissa"}.get(
        lora.init, lora.init
    )
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=lora.modules_to_save or None,
        use_rslora=lora.rslora,
        use_dora=cfg.method.type == "dora",
        init_lora_weights=init,
        loftq_config=LoftQConfig(loftq_bits=4, loftq_iter=1) if lora.init == "loftq" else {},
        task_type=head.peft_task_type,
        # A classification head is trained in full (peft adds it to modules_to_save); an
        # adapter on it as well would be refused.
        exclude_modules=list(head.head_modules) or None,
    )


def build_model(cfg: TrainerConfig, base: str, head: TaskHead, precision: str) -> Any:
    """The model the Trainer trains: the base itself (full) or a peft model around it."""
    method = cfg.method.type
    model = load_base(base, head, precision, quantize_4bit=method == "qlora")
    if method == "full":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        return get_peft_model(model, lora_config(cfg, head))
    except ValueError as exc:
        # peft names the module it could not find or adapt.
        raise ConfigError(f"method.lora: {exc}") from None


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total), counting ZeRO-3 partitioned parameters at full size."""

    def numel(p: Any) -> int:
        return int(getattr(p, "ds_numel", 0) or p.numel())

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    return trainable, total
