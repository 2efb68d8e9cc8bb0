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
QuantAlgorithm = Literal["auto", "default", "k_quant", "k_quant_mixed"]


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
        description="auto: bf16 on GPUs that have it, else fp16 on GPU; on CPU, bf16 autocast "
        "over fp32 weights where the CPU has AVX512-BF16/AMX (not under DeepSpeed), else fp32.",
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
) -> str | None:
    """The first cross-section combination that makes no sense, as one line, or None."""
    task = training.task
    if dataset.format not in TASK_FORMATS[task]:
        valid = ", ".join(sorted(TASK_FORMATS[task]))
        return (
            f"dataset.format: {dataset.format} rows do not fit training.task {task} "
            f"(valid: {valid})"
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
]


class ParitySpec(CamelModel):
    """The gate after export: PyTorch (merged model) against ONNX on the same inputs."""

    enabled: bool = Field(
        default=True, description="Fail the export when ONNX and PyTorch disagree too much."
    )
    prompts: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="User messages decoded greedily by both models (default: 8 built-in "
        "general questions).",
    )
    max_new_tokens: int = Field(
        default=32, ge=1, le=512, description="Greedy tokens generated per prompt."
    )
    min_token_agreement: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="int8/int4: least fraction of PyTorch's greedy tokens that ONNX also "
        "predicts (teacher-forced along PyTorch's continuation). fp32 must match token for "
        "token.",
    )
    max_perplexity_increase: float = Field(
        default=0.25,
        ge=0.0,
        description="int8/int4: largest relative perplexity increase on the eval split "
        "(0.25: at most 25% above PyTorch's).",
    )
    eval_rows: int = Field(
        default=32, ge=1, le=10000, description="Eval-split rows used for the perplexity."
    )


class ExportSpec(CamelModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.precision) || self.precision != 'fp16' "
                    "|| (has(self.executionProvider) && self.executionProvider == 'cuda')",
                    "message": "precision fp16 needs executionProvider cuda (the ONNX Runtime "
                    "GenAI builder builds fp16 for CUDA only)",
                },
                {
                    "rule": "!has(self.quantization) || self.quantization == 'auto' "
                    "|| (has(self.precision) && (self.precision == 'int4' "
                    "|| self.precision == 'int8'))",
                    "message": "quantization applies to precision int4 or int8 only",
                },
            ]
        }
    )

    enabled: bool = True
    precision: Precision = Field(
        default="int4", description="ONNX weight precision: fp32, fp16 (CUDA only), int8, int4."
    )
    execution_provider: ExecutionProvider = Field(
        default="cpu", description="Where the exported model runs: cpu or cuda."
    )
    quantization: QuantAlgorithm = Field(
        default="auto",
        description="Weight-only quantization recipe for int4/int8: default (round to "
        "nearest), k_quant, k_quant_mixed (k_quant with the most sensitive layers and the "
        "head in int8), or auto (k_quant_mixed for int4, default for int8).",
    )
    adapter: bool = Field(
        default=False,
        description="Also export the LoRA adapter as an ONNX Runtime adapter file plus a base "
        "model with LoRA inputs, so one base model can serve several fine-tunes (lora and "
        "qlora only).",
    )
    parity: ParitySpec = Field(default_factory=ParitySpec)

    @model_validator(mode="after")
    def _valid_combination(self) -> ExportSpec:
        if self.precision == "fp16" and self.execution_provider != "cuda":
            raise ValueError(
                "precision: fp16 needs executionProvider cuda; the ONNX Runtime GenAI builder "
                "builds fp16 for CUDA only (on cpu use fp32, int8 or int4)"
            )
        if self.quantization != "auto" and self.precision not in ("int4", "int8"):
            raise ValueError(
                f"quantization: {self.quantization} applies to precision int4 or int8, "
                f"not {self.precision}"
            )
        return self


class ServingConfig(CamelModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.authTokenEnv) || !has(self.authTokenFile)",
                    "message": "set at most one of authTokenEnv or authTokenFile",
                }
            ]
        }
    )

    enabled: bool = True
    port: int = Field(default=8000, ge=1, le=65535)
    max_tokens_limit: int = Field(
        default=1024, ge=1, description="Largest max_tokens a request may ask for."
    )
    max_batch_size: int = Field(
        default=8, ge=1, le=256, description="Requests decoded together in one batch."
    )
    max_queue: int = Field(
        default=64,
        ge=0,
        le=100000,
        description="Requests that may wait for a batch slot; beyond that the server answers 429.",
    )
    auth_token_env: str | None = Field(
        default=None,
        min_length=1,
        description="Name of an environment variable holding the bearer token clients must "
        "send (Authorization: Bearer ...).",
    )
    auth_token_file: str | None = Field(
        default=None,
        min_length=1,
        description="File holding the bearer token clients must send (e.g. a mounted Secret).",
    )
    shutdown_grace_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="On SIGTERM, how long running requests may take to finish.",
    )

    @model_validator(mode="after")
    def _one_token_source(self) -> ServingConfig:
        if self.auth_token_env is not None and self.auth_token_file is not None:
            raise ValueError("authTokenFile: set at most one of authTokenEnv or authTokenFile")
        return self


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
