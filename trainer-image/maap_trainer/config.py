"""The contract between control plane and data plane.

These models are embedded in the FineTuneJob spec (the CRD is generated from them) and
handed to the trainer, exporter and server as one JSON file. They import pydantic only,
so the operator can use them without pulling in torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from maap_trainer.presets import PRESETS

Method = Literal["lora", "qlora", "dora", "full"]
Task = Literal["causal-lm", "text-classification", "token-classification"]
DatasetFormat = Literal[
    "auto", "chat", "alpaca", "prompt-completion", "text", "classification", "ner"
]
LoraInit = Literal["default", "gaussian", "pissa", "loftq"]
TrainPrecision = Literal["auto", "fp32", "bf16", "fp16"]
Precision = Literal["fp32", "fp16", "int8", "int4"]
ExecutionProvider = Literal["cpu", "cuda"]


class CamelModel(BaseModel):
    """Kubernetes-style camelCase fields; unknown fields are an error, never ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ModelSource(CamelModel):
    """The base model: a preset from the catalogue, or a checkpoint directory."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.preset) != has(self.path)",
                    "message": "set exactly one of model.preset or model.path",
                }
            ]
        }
    )

    preset: str | None = Field(
        default=None,
        description="Name of a model preset, e.g. smollm2-135m-instruct.",
        json_schema_extra={"enum": sorted(PRESETS)},
    )
    path: str | None = Field(
        default=None,
        description="Directory with a transformers checkpoint (config.json, weights, tokenizer).",
        min_length=1,
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSource:
        if (self.preset is None) == (self.path is None):
            raise ValueError("set exactly one of model.preset or model.path")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; valid presets: {', '.join(sorted(PRESETS))}"
            )
        return self

    @property
    def display_name(self) -> str:
        return self.preset or self.path or ""


def _changed_fields(model: CamelModel) -> list[str]:
    """camelCase names of the fields whose value differs from the default."""
    return [
        info.alias or name
        for name, info in type(model).model_fields.items()
        if getattr(model, name) != info.get_default(call_default_factory=True)
    ]


class DatasetSpec(CamelModel):
    path: str = Field(
        min_length=1,
        description="Data file: .jsonl, .json (an array of rows), .csv or .parquet. Relative "
        "paths resolve against the manifest's directory for `maap run`.",
    )
    format: DatasetFormat = Field(
        default="auto",
        description="Row format: chat `messages`, alpaca `instruction`/`input`/`output`, "
        "`prompt`/`completion`, plain `text`; `text`/`label` (classification) or "
        "`tokens`/`tags` (ner); or auto-detected from the first row.",
    )
    eval_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Fraction of rows held out for evaluation (at least one row when > 0); "
        "ignored when evalPath is set.",
    )
    eval_path: str | None = Field(
        default=None,
        min_length=1,
        description="A separate evaluation file in the same format (relative paths resolve "
        "against the directory of path).",
    )


class LoraSpec(CamelModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.init) && self.init == 'loftq' && has(self.rslora) "
                    "&& self.rslora)",
                    "message": "LoftQ initialisation cannot be combined with rslora",
                }
            ]
        }
    )

    r: int = Field(default=16, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(default=32, ge=1, description="Adapter scaling (lora_alpha).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="Module names to adapt; `all-linear` adapts every linear layer but the head.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter (e.g. lm_head, "
        "embed_tokens). Classification heads are added automatically.",
    )
    rslora: bool = Field(
        default=False, description="Rank-stabilised LoRA: scale by alpha/sqrt(r), not alpha/r."
    )
    init: LoraInit = Field(
        default="default",
        description="Adapter initialisation: default (B=0), gaussian, pissa (principal "
        "singular vectors of each weight, which rewrites the base weights) or loftq "
        "(quantisation-aware, 4-bit).",
    )


class MethodSpec(CamelModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type != 'qlora' || !has(self.lora) || !has(self.lora.init) "
                    "|| self.lora.init == 'default' || self.lora.init == 'gaussian'",
                    "message": "qlora keeps the base in 4 bits, which pissa and loftq "
                    "initialisation rewrite; use type lora with lora.init pissa or loftq",
                }
            ]
        }
    )

    type: Method = Field(default="lora", description="lora | qlora | dora | full.")
    lora: LoraSpec = Field(default_factory=LoraSpec)

    @model_validator(mode="after")
    def _sensible_combination(self) -> MethodSpec:
        if self.type == "full":
            # Compared with the defaults, not with what was written: the API server fills
            # every default into a stored object.
            changed = _changed_fields(self.lora)
            if changed:
                names = ", ".join(f"lora.{f}" for f in changed)
                raise ValueError(
                    f"{names}: full fine-tuning trains every weight, so adapter settings "
                    "do not apply; remove them or pick type lora, qlora or dora"
                )
            return self
        if self.type == "qlora" and self.lora.init in ("pissa", "loftq"):
            raise ValueError(
                f"lora.init: {self.lora.init} rewrites the base weights, but qlora keeps them "
                f"in 4 bits; use type lora with init {self.lora.init} (loftq is itself a "
                "4-bit-aware initialisation)"
            )
        if self.lora.init == "loftq" and self.lora.rslora:
            raise ValueError(
                "lora.rslora: LoftQ initialisation assumes the standard alpha/r scaling; "
                "drop rslora or pick another init"
            )
        return self


class TrainingSpec(CamelModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.packing) || !self.packing || !has(self.task) "
                    "|| self.task == 'causal-lm'",
                    "message": "packing concatenates token sequences; it applies to task "
                    "causal-lm only",
                }
            ]
        }
    )

    task: Task = Field(
        default="causal-lm",
        description="causal-lm (generation: chat, QA, creative), text-classification or "
        "token-classification (NER) on an encoder.",
    )
    epochs: float = Field(default=2.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float = Field(default=2e-4, gt=0, lt=1)
    batch_size: int = Field(default=8, ge=1, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_seq_length: int = Field(default=512, ge=16, description="Longer rows are truncated.")
    packing: bool = Field(
        default=False,
        description="Pack several rows into each sequence of maxSeqLength tokens (position ids "
        "restart per row, so attention never crosses rows).",
    )
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    precision: TrainPrecision = Field(
        default="auto",
        description="auto: bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU.",
    )
    seed: int = 42
    logging_steps: int = Field(default=5, ge=1)
    checkpoint_steps: int = Field(
        default=100,
        ge=1,
        description="Save a checkpoint into the artifact directory every N optimizer steps.",
    )
    checkpoints_to_keep: int = Field(
        default=2,
        ge=2,
        le=100,
        description="Newest checkpoints kept; at least 2, so a crash while saving one leaves "
        "the previous one complete.",
    )
    resume: bool = Field(
        default=True,
        description="On restart, resume from the newest complete checkpoint (pods get "
        "rescheduled).",
    )
    assistant_only_loss: bool = Field(
        default=True, description="Compute the loss on assistant/completion tokens only."
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed through to transformers TrainingArguments as is.",
    )

    @model_validator(mode="after")
    def _packing_needs_causal_lm(self) -> TrainingSpec:
        if self.packing and self.task != "causal-lm":
            raise ValueError(
                f"packing: packing concatenates token sequences for causal-lm; task {self.task} "
                "classifies each row on its own"
            )
        return self


class DeepSpeedSpec(CamelModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.offloadParameters) || !self.offloadParameters "
                    "|| !has(self.zeroStage) || self.zeroStage == 3",
                    "message": "offloadParameters needs zeroStage 3 (only ZeRO-3 partitions "
                    "parameters)",
                },
                {
                    "rule": "!has(self.offloadOptimizer) || !self.offloadOptimizer "
                    "|| !has(self.zeroStage) || self.zeroStage >= 1",
                    "message": "offloadOptimizer needs zeroStage 1, 2 or 3",
                },
            ]
        }
    )

    enabled: bool = False
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=2,
        description="0: plain data parallel; 1: shard optimizer state; 2: + gradients; "
        "3: + parameters.",
    )
    offload_optimizer: bool = Field(
        default=False, description="Keep optimizer state (and the step) on CPU."
    )
    offload_parameters: bool = Field(
        default=False, description="Keep partitioned parameters on CPU (ZeRO-3)."
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="A raw DeepSpeed config used instead of the generated one ('auto' values "
        "are filled in from training); excludes zeroStage/offload*.",
    )

    @model_validator(mode="after")
    def _sensible_combination(self) -> DeepSpeedSpec:
        generated = {"zeroStage", "offloadOptimizer", "offloadParameters"}
        changed = generated & set(_changed_fields(self))
        if self.config is not None and changed:
            names = ", ".join(sorted(changed))
            raise ValueError(
                f"config: a raw DeepSpeed config replaces the generated one; remove {names} "
                "or the raw config"
            )
        if self.offload_parameters and self.zero_stage != 3:
            raise ValueError(
                f"offloadParameters: needs zeroStage 3 (got {self.zero_stage}); only ZeRO-3 "
                "partitions parameters"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offloadOptimizer: needs zeroStage 1, 2 or 3 (got 0)")
        return self


TASK_FORMATS: dict[str, set[str]] = {
    "causal-lm": {"auto", "chat", "alpaca", "prompt-completion", "text"},
    "text-classification": {"auto", "classification"},
    "token-classification": {"auto", "ner"},
}


def combination_problem(
    method: MethodSpec,
    training: TrainingSpec,
    deepspeed: DeepSpeedSpec,
    dataset: DatasetSpec,
    export_enabled: bool,
    serving_enabled: bool,
) -> str | None:
    """The first cross-section combination that makes no sense, as one line, or None."""
    task = training.task
    if dataset.format not in TASK_FORMATS[task]:
        valid = ", ".join(sorted(TASK_FORMATS[task]))
        return (
            f"dataset.format: {dataset.format} rows do not fit training.task {task} "
            f"(valid: {valid})"
        )
    if task != "causal-lm" and (export_enabled or serving_enabled):
        return (
            f"training.task: {task} trains a classifier; the ONNX GenAI export and the chat "
            "server are for causal-lm, so set export.enabled: false and serving.enabled: false"
        )
    if deepspeed.enabled and method.type == "qlora":
        return (
            "method.type: qlora keeps frozen 4-bit bitsandbytes weights that DeepSpeed ZeRO "
            "cannot partition or cast; use type lora or dora with deepspeed, or disable it"
        )
    if deepspeed.enabled and deepspeed.zero_stage == 3 and method.lora.init in ("pissa", "loftq"):
        return (
            f"method.lora.init: {method.lora.init} decomposes each full weight matrix, which "
            "ZeRO-3 partitions across ranks; use deepspeed.zeroStage 0-2 or init default"
        )
    return None


# The same rules as CEL, for the FineTuneJobSpec level of the CRD (the embedding API model
# attaches them; within one section the section's own rules apply).
SPEC_CEL_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.deepspeed) || !has(self.deepspeed.enabled) || !self.deepspeed.enabled "
        "|| !has(self.method) || !has(self.method.type) || self.method.type != 'qlora'",
        "message": "method.type qlora cannot run under deepspeed: ZeRO cannot partition 4-bit "
        "weights",
    },
    {
        "rule": "!has(self.training) || !has(self.training.task) "
        "|| self.training.task == 'causal-lm' || (has(self.export) && has(self.export.enabled) "
        "&& !self.export.enabled && has(self.serving) && has(self.serving.enabled) "
        "&& !self.serving.enabled)",
        "message": "classification tasks need export.enabled: false and serving.enabled: false",
    },
]


class ExportSpec(CamelModel):
    enabled: bool = True
    precision: Precision = Field(default="int4", description="ONNX weight precision.")
    execution_provider: ExecutionProvider = "cpu"


class ServingConfig(CamelModel):
    enabled: bool = True
    port: int = Field(default=8000, ge=1, le=65535)
    max_tokens_limit: int = Field(
        default=1024, ge=1, description="Largest max_tokens a request may ask for."
    )


class TrainerConfig(CamelModel):
    """Everything one pipeline run needs; written to `config.json` for each stage."""

    job_name: str
    model: ModelSource
    dataset: DatasetSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    output_dir: str = Field(description="Where every stage writes its artifacts.")

    @model_validator(mode="after")
    def _sensible_combination(self) -> TrainerConfig:
        problem = combination_problem(
            self.method,
            self.training,
            self.deepspeed,
            self.dataset,
            self.export.enabled,
            self.serving.enabled,
        )
        preset = PRESETS.get(self.model.preset or "")
        encoder = preset is not None and preset.kind == "encoder"
        if problem is None and encoder and self.training.task == "causal-lm":
            problem = (
                f"training.task: model.preset {self.model.preset} is an encoder, which cannot "
                "generate text; use task text-classification or token-classification"
            )
        if problem:
            # A ConfigError (not ValueError) passes through pydantic unchanged, so whoever
            # builds this config (CLI, operator, a stage) reports it as one user-error line.
            from maap_trainer.errors import ConfigError

            raise ConfigError(problem)
        return self
