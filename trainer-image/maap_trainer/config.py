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
DatasetFormat = Literal["auto", "chat", "alpaca", "prompt-completion", "text"]
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


class DatasetSpec(CamelModel):
    path: str = Field(
        min_length=1,
        description="Data file (JSONL). Relative paths resolve against the manifest's directory "
        "for `maap run`.",
    )
    format: DatasetFormat = Field(
        default="auto",
        description="Row format: chat `messages`, alpaca `instruction`/`input`/`output`, "
        "`prompt`/`completion`, plain `text`, or auto-detected from the first row.",
    )
    eval_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Fraction of rows held out for evaluation (at least one row when > 0).",
    )


class LoraSpec(CamelModel):
    r: int = Field(default=16, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(default=32, ge=1, description="Adapter scaling (lora_alpha).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="Module names to adapt; `all-linear` adapts every linear layer but the head.",
    )


class MethodSpec(CamelModel):
    type: Method = Field(default="lora", description="lora | qlora | dora | full.")
    lora: LoraSpec = Field(default_factory=LoraSpec)


class TrainingSpec(CamelModel):
    epochs: float = Field(default=2.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float = Field(default=2e-4, gt=0, lt=1)
    batch_size: int = Field(default=8, ge=1, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_seq_length: int = Field(default=512, ge=16, description="Longer rows are truncated.")
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    seed: int = 42
    logging_steps: int = Field(default=5, ge=1)
    assistant_only_loss: bool = Field(
        default=True, description="Compute the loss on assistant/completion tokens only."
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed through to transformers TrainingArguments as is.",
    )


class DeepSpeedSpec(CamelModel):
    enabled: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_parameters: bool = False


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
