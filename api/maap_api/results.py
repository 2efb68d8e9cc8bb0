"""What the stages leave behind, typed once: `metrics.json`, `export.json`, artifact paths.

Each file model extends the summary the stage reports to the operator (the final progress
report), so `status.metrics`, `status.export` and `status.artifacts` in the cluster and what
`maap run` prints come from the same fields. Pydantic only: the control plane reads these
without torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError

from maap_api.field_errors import format_validation_error
from maap_api.stage_config import CamelModel

METRICS_FILE = "metrics.json"
EXPORT_FILE = "export.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
ONNX_DIR = "onnx"
ONNX_BASE_DIR = "onnx-base"
ONNX_ADAPTERS_DIR = "adapters"
ONNX_ADAPTER_SUFFIX = ".onnx_adapter"

Model = TypeVar("Model", bound=CamelModel)


# -- train stage ----------------------------------------------------------------------------


class TrainedMetrics(CamelModel):
    """The train stage's summary (`status.metrics` in the cluster)."""

    eval_loss_before: float | None = Field(default=None, description="Eval loss of the base model.")
    eval_loss_after: float | None = Field(default=None, description="Eval loss after training.")
    eval_accuracy_before: float | None = None
    eval_accuracy_after: float | None = None
    eval_f1_before: float | None = None
    eval_f1_after: float | None = None
    train_loss: float | None = Field(default=None, description="Mean training loss.")
    train_runtime_seconds: float | None = Field(
        default=None, description="The training loop alone (no loading, evaluating, saving)."
    )
    steps: int | None = None
    train_rows: int | None = None
    eval_rows: int | None = None
    train_tokens: int | None = Field(
        default=None, description="Tokens trained on (not padding), every rank together."
    )
    tokens_per_second: float | None = Field(
        default=None, description="Trained tokens per second of the training loop."
    )
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    peak_training_memory_bytes: int | None = Field(
        default=None, description="Training loop's peak: resident set on CPU, allocated on GPU."
    )

    def summary(self) -> TrainedMetrics:
        return _project(self, TrainedMetrics)


class RankReport(CamelModel):
    """What one training rank saw: the evidence that ZeRO shards (callbacks.rank_report)."""

    rank: int
    world_size: int
    trainer_world_size: int
    accelerator_processes: int
    steps: int
    parameters_partitioned: bool
    local_parameter_elements: int
    full_parameter_elements: int
    local_optimizer_state_elements: int | None = None


class DistributedSummary(CamelModel):
    world_size: int
    deepspeed: bool
    zero_stage: int | None = None
    backend: str
    precision: str
    ranks: list[RankReport] = Field(default_factory=list)


class TrainMetrics(TrainedMetrics):
    """`metrics.json`: the summary and what only a reader of the output directory needs."""

    task: str
    method: str
    base_model: str
    dataset_format: str
    seconds_per_step: float | None = None
    steps_per_epoch: int | None = None
    truncated_rows: int | None = None
    dropped_rows: int | None = None
    packed_from_rows: int | None = None
    labels: list[str] | None = None
    peak_training_memory_kind: str | None = None
    resumed_from_step: int | None = None
    distributed: DistributedSummary | None = None


# -- export stage ---------------------------------------------------------------------------


class PerplexityFigures(CamelModel):
    pytorch: float
    onnx: float
    relative_increase: float
    tokens: int
    source: str


class ParityFigures(CamelModel):
    """The export's parity gate: PyTorch against ONNX Runtime on the same inputs."""

    passed: bool | None = Field(default=None, description="None when the gate was skipped.")
    failure: str | None = None
    skipped: str | None = None
    seconds: float | None = None
    # Generative models: greedy answers and perplexity.
    prompts: int | None = None
    max_new_tokens: int | None = None
    exact_matches: int | None = Field(
        default=None, description="Prompts whose greedy answer is identical token for token."
    )
    prefix_agreement: float | None = None
    token_agreement: float | None = None
    first_mismatch: str | None = None
    tokenizer_matches: bool | None = None
    perplexity: PerplexityFigures | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)
    # Classifiers: predicted labels and logits.
    texts: int | None = None
    label_agreement: float | None = None
    max_logit_difference: float | None = None


class AdapterExport(CamelModel):
    """export.adapter: the base model with LoRA slots and this fine-tune as an adapter."""

    path: str
    size_bytes: int
    modules: int
    rank: list[int] = Field(default_factory=list)
    name: str | None = None
    base_model: str | None = None
    base_size_bytes: int | None = None
    base_seconds: float | None = None
    base_reused: bool | None = Field(
        default=None,
        description="The base build came from the model cache (another fine-tune of it made it).",
    )
    parity: ParityFigures | None = None


class ExportSummary(CamelModel):
    """The export stage's summary (`status.export` in the cluster)."""

    precision: str
    execution_provider: str
    quantization: str | None = None
    task: str | None = None
    size_bytes: int = Field(description="Bytes of the exported ONNX model directory.")
    build_seconds: float = Field(alias="seconds", description="Time the ONNX build took.")
    parity: ParityFigures | None = None
    adapter: AdapterExport | None = None

    def summary(self) -> ExportSummary:
        return _project(self, ExportSummary)


class ExportResult(ExportSummary):
    """`export.json`: the summary, where the model went and what it is made of."""

    path: str
    labels: list[str] | None = None
    tokenizer_files: list[str] | None = None
    files: dict[str, int] = Field(default_factory=dict)
    written_at: float | None = None


# -- artifacts ------------------------------------------------------------------------------


class ArtifactPaths(CamelModel):
    """Where each stage's outputs are, as the stage saw them (inside the pod: the claim is
    mounted at /workspace)."""

    adapter: str | None = Field(default=None, description="The PEFT adapter directory.")
    merged_model: str | None = Field(default=None, description="The full tuned checkpoint.")
    onnx_model: str | None = Field(default=None, description="What the server loads.")
    onnx_size_bytes: int | None = Field(default=None, description="Bytes of onnxModel.")
    onnx_base_model: str | None = Field(
        default=None, description="export.adapter: the base model with LoRA slots."
    )
    onnx_adapter: str | None = Field(default=None, description="This fine-tune as an adapter.")

    @classmethod
    def found_in(cls, output_dir: Path, job_name: str) -> ArtifactPaths:
        """The published artifacts present in an output directory (never `*.partial`)."""

        def path_if(path: Path, marker: str | None = None) -> str | None:
            present = (path / marker).is_file() if marker else path.exists()
            return str(path) if present else None

        return cls(
            adapter=path_if(output_dir / ADAPTER_DIR, "adapter_config.json"),
            merged_model=path_if(output_dir / MERGED_DIR, "config.json"),
            onnx_model=path_if(output_dir / ONNX_DIR),
            onnx_base_model=path_if(output_dir / ONNX_BASE_DIR),
            onnx_adapter=path_if(
                output_dir / ONNX_ADAPTERS_DIR / f"{job_name}{ONNX_ADAPTER_SUFFIX}"
            ),
        )


# -- files ----------------------------------------------------------------------------------


def result_json(result: CamelModel) -> dict[str, Any]:
    """A result file's document: every field, null when the stage had no value for it."""
    return result.model_dump(mode="json", by_alias=True)


def write_result(path: Path, result: CamelModel) -> None:
    """Atomically (temp file + rename): a reader never sees half a document."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result_json(result), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def read_result(path: Path, model: type[Model]) -> Model:
    """A stage's result file, validated; a missing or malformed one is an error naming it."""
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultError(f"{path}: cannot read it: {exc.strerror}") from None
    except ValidationError as exc:
        raise ResultError(f"{path}: {format_validation_error(exc, model)}") from None


class ResultError(Exception):
    """A result file a stage should have written is missing or malformed."""


def _project(value: CamelModel, model: type[Model]) -> Model:
    """The fields of `model` (a base class of value's) taken from `value`."""
    data: dict[str, Any] = {name: getattr(value, name) for name in model.model_fields}
    return model.model_validate(data)
