"""An OpenAI fine-tuning job is a FineTuneJob: the manifest one creates, and the job object
a FineTuneJob reads as. Pure functions over dicts, shared by the cluster and the local
backend, so both answer the same for the same job.

The OpenAI fields that have no place in the spec (the file ids, the suffix, the asked
hyperparameters, metadata) ride along as annotations; cancel is an annotation plus
`spec.suspend` (the pipeline stops, the object and its history stay).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from maap_api.finetunejob import API_VERSION, KIND, FineTuneJob
from maap_api.history import JobHistory
from maap_api.presets import PRESETS
from maap_api.stage_config import MethodSpec, TrainingSpec
from pydantic import ValidationError

from maap.gateway.errors import APIError
from maap.gateway.requests import CreateFineTuningJob, Hyperparameters

PREFIX = "maap.dev/openai-"
TRAINING_FILE = PREFIX + "training-file"
VALIDATION_FILE = PREFIX + "validation-file"
SUFFIX = PREFIX + "suffix"
HYPERPARAMETERS = PREFIX + "hyperparameters"
METADATA = PREFIX + "metadata"
# Creation time to the microsecond: lists are newest first, and creationTimestamp has seconds.
CREATED = PREFIX + "created"
CANCELLED = "maap.dev/cancelled"
GATEWAY_LABEL = "maap.dev/gateway"
JOB_ID_PREFIX = "ftjob-"
BASE_LEARNING_RATE = TrainingSpec.model_fields["learning_rate"].default
DEFAULT_METHOD = MethodSpec.model_fields["type"].default


def new_job_id() -> str:
    """`ftjob-` and 12 hex digits: an OpenAI-looking id that is also a DNS label."""
    return JOB_ID_PREFIX + secrets.token_hex(6)


@dataclass(frozen=True)
class DataLocation:
    """Where the stages read a stored file: a path (local) or a URL, with its digest."""

    path: str
    sha256: str | None = None


def fine_tunable_models() -> dict[str, str]:
    """The base models the API offers, by every name a client may use for them."""
    names: dict[str, str] = {}
    for preset in PRESETS.values():
        if preset.kind == "causal-lm":
            names[preset.name] = preset.name
            names[preset.display_name.lower()] = preset.name
            if preset.hub_id:
                names[preset.hub_id.lower()] = preset.name
    return names


def resolve_base_model(name: str) -> str:
    preset = fine_tunable_models().get(name.lower())
    if preset is None:
        offered = ", ".join(sorted({p for p in fine_tunable_models().values()}))
        raise APIError(
            400,
            f"model: {name!r} is not a base model this platform fine-tunes; choose one of: "
            f"{offered}",
            param="model",
            code="model_not_available",
        )
    return preset


def build_finetunejob(
    request: CreateFineTuningJob,
    job_id: str,
    namespace: str,
    training: DataLocation,
    validation: DataLocation | None,
) -> dict[str, Any]:
    """The FineTuneJob manifest of a create request, validated as `kubectl apply` would."""
    preset = resolve_base_model(request.model)
    if request.method is not None and request.hyperparameters is not None:
        raise APIError(
            400,
            "hyperparameters: set them in method.supervised.hyperparameters or at the top "
            "level (deprecated), not both",
            param="hyperparameters",
        )
    asked = request.chosen_hyperparameters()
    spec: dict[str, Any] = {
        "model": {"preset": preset},
        "dataset": {"path": training.path},
        "method": {"type": "lora"},
        "training": _training_section(asked, request.seed),
        # A LoRA fine-tune is also exported as an adapter, so one server per base model
        # serves every LoRA fine-tune of it.
        "export": {"adapter": True},
    }
    if training.sha256:
        spec["dataset"]["sha256"] = training.sha256
    if validation is not None:
        spec["dataset"]["evalPath"] = validation.path
        if validation.sha256:
            spec["dataset"]["evalSha256"] = validation.sha256
    if request.maap:
        spec = _merged(spec, request.maap)
        if spec.get("method", {}).get("type") not in ("lora", "qlora"):
            spec.setdefault("export", {})["adapter"] = False
    annotations = {
        TRAINING_FILE: request.training_file,
        HYPERPARAMETERS: asked.model_dump_json(),
        CREATED: f"{time.time():.6f}",
    }
    if request.validation_file:
        annotations[VALIDATION_FILE] = request.validation_file
    if request.suffix:
        annotations[SUFFIX] = request.suffix
    if request.metadata:
        annotations[METADATA] = json.dumps(request.metadata)
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": job_id,
            "namespace": namespace,
            "labels": {GATEWAY_LABEL: "true", "app.kubernetes.io/managed-by": "maap-gateway"},
            "annotations": annotations,
        },
        "spec": spec,
    }
    try:
        FineTuneJob.model_validate(manifest)
    except ValidationError as exc:
        from maap_api.field_errors import format_validation_error

        message = format_validation_error(exc, FineTuneJob)
        raise APIError(400, f"maap: {message}", param="maap") from None
    return manifest


def _training_section(asked: Hyperparameters, seed: int | None) -> dict[str, Any]:
    section: dict[str, Any] = {}
    if asked.n_epochs != "auto":
        section["epochs"] = asked.n_epochs
    if asked.batch_size != "auto":
        section["batchSize"] = asked.batch_size
    if asked.learning_rate_multiplier != "auto":
        section["learningRate"] = BASE_LEARNING_RATE * float(asked.learning_rate_multiplier)
    if seed is not None:
        section["seed"] = seed
    return section


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


# -- reading a FineTuneJob as an OpenAI job ---------------------------------------------------


def openai_status(obj: dict[str, Any]) -> str:
    meta, spec = obj.get("metadata", {}), obj.get("spec", {})
    phase = (obj.get("status") or {}).get("phase")
    if phase == "Failed":
        return "failed"
    if phase == "Succeeded" or (phase == "Serving" and _serving_ready(obj)):
        return "succeeded"
    if (meta.get("annotations") or {}).get(CANCELLED):
        return "cancelled"
    if spec.get("suspend"):
        return "paused"
    if phase in ("Training", "Exporting", "Publishing", "Serving"):
        return "running"
    if phase == "Fetching":
        return "validating_files"
    return "queued"


def _finished_at(status: dict[str, Any]) -> int | None:
    """When the job ended: completionTime, or once serving, when its server became ready
    (the operator sets completionTime only on Succeeded and Failed)."""
    if status.get("completionTime"):
        return unix_time(status["completionTime"])
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "ServingReady"]
    return unix_time(ready[0].get("lastTransitionTime")) if ready else None


def _serving_ready(obj: dict[str, Any]) -> bool:
    """The fine-tuned model answers: what `succeeded` means to an OpenAI client."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "ServingReady" and c.get("status") == "True" for c in conditions)


TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def short_id(job_id: str) -> str:
    return job_id.removeprefix(JOB_ID_PREFIX)


def fine_tuned_model_name(obj: dict[str, Any]) -> str:
    """`ft:<base>:<org>:<suffix>:<id>`, the OpenAI form; the org is the namespace."""
    meta = obj["metadata"]
    base = obj["spec"]["model"].get("preset") or "model"
    suffix = (meta.get("annotations") or {}).get(SUFFIX, "")
    return f"ft:{base}:{meta.get('namespace') or 'default'}:{suffix}:{short_id(meta['name'])}"


def parse_fine_tuned_model(name: str) -> tuple[str, str] | None:
    """(namespace, job id) of an `ft:` model name, or None if it is not one."""
    parts = name.split(":")
    if len(parts) != 5 or parts[0] != "ft" or not parts[2] or not parts[4]:
        return None
    return parts[2], JOB_ID_PREFIX + parts[4]


def created_order(obj: dict[str, Any]) -> tuple[float, str]:
    """The key that sorts jobs by creation, to the microsecond."""
    meta = obj["metadata"]
    created = (meta.get("annotations") or {}).get(CREATED)
    at = float(created) if created else float(unix_time(meta.get("creationTimestamp")) or 0)
    return at, meta["name"]


def unix_time(timestamp: str | None) -> int | None:
    if not timestamp:
        return None
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())


def openai_job(obj: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The `fine_tuning.job` object of a FineTuneJob."""
    meta, spec = obj["metadata"], obj["spec"]
    status = obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    state = openai_status(obj)
    asked = json.loads(annotations.get(HYPERPARAMETERS, "{}"))
    training = spec.get("training") or {}
    hyper = {
        "n_epochs": training.get("epochs", TrainingSpec.model_fields["epochs"].default),
        "batch_size": training.get("batchSize", TrainingSpec.model_fields["batch_size"].default),
        "learning_rate_multiplier": asked.get("learning_rate_multiplier", "auto"),
    }
    if isinstance(hyper["n_epochs"], float) and hyper["n_epochs"].is_integer():
        hyper["n_epochs"] = int(hyper["n_epochs"])
    if hyper["learning_rate_multiplier"] == "auto":
        hyper["learning_rate_multiplier"] = round(
            training.get("learningRate", BASE_LEARNING_RATE) / BASE_LEARNING_RATE, 6
        )
    progress = status.get("progress") or {}
    eta = progress.get("etaSeconds")
    metrics = status.get("metrics") or {}
    finished = _finished_at(status) if state in TERMINAL else None
    return {
        "object": "fine_tuning.job",
        "id": meta["name"],
        "created_at": unix_time(meta.get("creationTimestamp")) or 0,
        "finished_at": finished,
        "model": spec["model"].get("preset") or spec["model"].get("path"),
        "fine_tuned_model": fine_tuned_model_name(obj) if state == "succeeded" else None,
        "organization_id": meta.get("namespace") or "default",
        "status": state,
        "training_file": annotations.get(TRAINING_FILE, spec["dataset"]["path"]),
        "validation_file": annotations.get(VALIDATION_FILE),
        "result_files": [],
        "hyperparameters": hyper,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "seed": training.get("seed", TrainingSpec.model_fields["seed"].default),
        "trained_tokens": metrics.get("trainTokens") if state == "succeeded" else None,
        "estimated_finish": (
            int((now or time.time()) + eta) if state == "running" and eta is not None else None
        ),
        "error": _error(status) if state == "failed" else None,
        "user_provided_suffix": annotations.get(SUFFIX),
        "metadata": json.loads(annotations[METADATA]) if METADATA in annotations else None,
        "integrations": [],
        # maap's own view, for clients that want more than the OpenAI fields.
        "maap": {
            "phase": status.get("phase"),
            "method": (spec.get("method") or {}).get("type", DEFAULT_METHOD),
            "progress": progress or None,
            "metrics": metrics or None,
            "export": status.get("export"),
            "artifacts": status.get("artifacts"),
            "conditions": status.get("conditions") or [],
            "endpoint": status.get("endpoint"),
        },
    }


def history_object(job_id: str, history: JobHistory) -> dict[str, Any]:
    """A job's history as the API answers it: snake_case like the rest, unset figures left
    out."""
    return {
        "object": "fine_tuning.job.history",
        "fine_tuning_job_id": job_id,
        "points": [p.model_dump(mode="json", exclude_none=True) for p in history.points],
        "checkpoints": [c.model_dump(mode="json", exclude_none=True) for c in history.checkpoints],
    }


# The failure reasons that are a problem with an input file, and which file.
_FILE_REASONS = {"FetchFailed": "training_file", "InvalidDataset": "training_file"}


def _error(status: dict[str, Any]) -> dict[str, Any]:
    failed = next(
        (c for c in status.get("conditions", []) if c.get("type") == "Failed"), None
    ) or next((c for c in status.get("conditions", []) if c.get("status") == "False"), None)
    reason = (failed or {}).get("reason") or "Failed"
    message = (failed or {}).get("message") or "the fine-tuning job failed"
    param = _FILE_REASONS.get(reason)
    if param is None and "evalPath" in message:
        param = "validation_file"
    return {"code": _snake(reason), "message": message, "param": param}


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
