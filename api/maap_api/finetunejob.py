"""The FineTuneJob API, v1alpha1: the single source of truth for the CRD and the CLI.

The data-plane contract (model, dataset, method, training, deepspeed, export, serving)
comes from `maap_api.stage_config`; this module adds what only the cluster needs
(replicas, serving auth, resources, placement) and the status. Rules across fields are
in `maap_api.rules`: pydantic enforces them here, the CRD carries them as CEL.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from maap_api.results import ArtifactPaths, ExportSummary, TrainedMetrics
from maap_api.stage_config import (
    CamelModel,
    DatasetSpec,
    DeepSpeedSpec,
    ExportSpec,
    MethodSpec,
    ModelSource,
    ServingConfig,
    ServingOptions,
    TrainerConfig,
    TrainingSpec,
)
from maap_api.storage_access import HubAccess, OutputSpec, S3Access
from maap_api.transfer_results import PublishResult

GROUP = "maap.dev"
# The serving pod's environment variable holding the clients' bearer token: the operator
# sets it from the auth Secret, and the pod config names it (serving.authTokenEnv).
SERVING_TOKEN_ENV = "MAAP_SERVING_TOKEN"
VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
API_VERSION = f"{GROUP}/{VERSION}"

Phase = Literal[
    "Pending",
    "Fetching",
    "Suspended",
    "Training",
    "Exporting",
    "Publishing",
    "Serving",
    "Succeeded",
    "Failed",
]
Quantity = int | str

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ServingAuthSpec(CamelModel):
    enabled: bool = Field(default=False, description="Require a bearer token from clients.")
    secret_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        description="Secret (key `token`) holding the token; by default the operator "
        "creates <name>-serving-auth with a random one.",
    )


class ServingSpec(ServingOptions):
    """Serving as a user asks for it; the operator turns it into the server's config."""

    rules_section = "serving"
    rules_plane = "api"

    replicas: int = Field(default=1, ge=0, le=100, description="Serving pods behind the Service.")
    auth: ServingAuthSpec = Field(default_factory=ServingAuthSpec)


class ResourcesSpec(CamelModel):
    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Per training pod, e.g. {cpu: 4, memory: 16Gi}."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict)
    gpus: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu per training pod.")
    nodes: int = Field(default=1, ge=1, le=64, description="Training pods (one per node).")
    processes_per_node: int = Field(
        default=1, ge=1, le=64, description="Training processes per pod (one per GPU on GPU)."
    )


class StorageSpec(CamelModel):
    """Where artifacts (checkpoints, merged model, ONNX export) live in the cluster."""

    size: str = Field(default="20Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$")
    storage_class_name: str | None = Field(
        default=None, description="StorageClass of the per-job claim (cluster default if unset)."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = Field(
        default="ReadWriteOnce",
        description="ReadWriteMany lets training, export and serving pods run on any node.",
    )
    existing_claim: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        description="Use this PersistentVolumeClaim instead of creating one per job.",
    )


class PlacementSpec(CamelModel):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(
        default_factory=dict, description="Added to every pod maap creates for this job."
    )
    pod_labels: dict[str, str] = Field(default_factory=dict)


def immutable(name: str) -> dict[str, Any]:
    """A CEL rule: the API server refuses to change this field once the job exists."""
    return {
        "x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": f"spec.{name} is immutable once created"}
        ]
    }


class FineTuneJobSpec(CamelModel):
    # Rules across sections (e.g. QLoRA under DeepSpeed) belong to the spec as a whole.
    rules_section = ""
    rules_plane = "api"

    # What was trained on, and how, cannot change under a running pipeline; serving,
    # suspend, deadlines and placement of future pods can.
    model: ModelSource = Field(json_schema_extra=immutable("model"))
    dataset: DatasetSpec = Field(json_schema_extra=immutable("dataset"))
    method: MethodSpec = Field(default_factory=MethodSpec, json_schema_extra=immutable("method"))
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, json_schema_extra=immutable("training")
    )
    deepspeed: DeepSpeedSpec = Field(
        default_factory=DeepSpeedSpec, json_schema_extra=immutable("deepspeed")
    )
    export: ExportSpec = Field(default_factory=ExportSpec, json_schema_extra=immutable("export"))
    serving: ServingSpec = Field(default_factory=ServingSpec)
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, json_schema_extra=immutable("resources")
    )
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    storage: StorageSpec = Field(
        default_factory=StorageSpec, json_schema_extra=immutable("storage")
    )
    s3: S3Access = Field(
        default_factory=S3Access,
        description="The S3 store that s3:// locations (dataset, model, output) use.",
    )
    hub: HubAccess = Field(
        default_factory=HubAccess,
        description="The Hugging Face hub that hf:// locations and hub presets use.",
    )
    output: OutputSpec = Field(default_factory=OutputSpec)
    suspend: bool = Field(default=False, description="Pause training (the Job is suspended).")
    backoff_limit: int = Field(
        default=2, ge=0, le=20, description="Retries of a failed training pod before Failed."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail training that runs longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the FineTuneJob (and its children) this long after it Succeeded "
        "or Failed. Serving jobs are never deleted.",
    )

    def trainer_config(self, job_name: str, output_dir: str) -> TrainerConfig:
        """The data-plane view of this spec, as handed to every stage.

        With serving.auth on, the server reads its token from the environment variable
        that the serving pod (and `maap run`) fill from the Secret."""

        options = self.serving.model_dump(include=set(ServingOptions.model_fields))
        token_env = SERVING_TOKEN_ENV if self.serving.auth.enabled else None
        return TrainerConfig(
            job_name=job_name,
            model=self.model,
            dataset=self.dataset,
            method=self.method,
            training=self.training,
            deepspeed=self.deepspeed,
            export=self.export,
            serving=ServingConfig(**options, auth_token_env=token_env),
            s3=self.s3,
            hub=self.hub,
            output=self.output,
            output_dir=output_dir,
        )


class Condition(CamelModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class Progress(CamelModel):
    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    percent: int | None = Field(default=None, ge=0, le=100)
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: int | None = None
    resumed_from_step: int | None = Field(
        default=None,
        description="The checkpoint step the running training resumed from, after its pod "
        "was stopped (preemption, eviction, node loss) and replaced.",
    )


class Artifacts(ArtifactPaths):
    """Where the artifacts are: the stages report their paths (as their pods see them)."""

    location: str | None = Field(
        default=None, description="The claim and directory holding them: pvc://CLAIM/PATH."
    )


class FineTuneJobStatus(CamelModel):
    phase: Phase | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    progress: Progress | None = None
    artifacts: Artifacts | None = None
    # The stages' summaries, as their final progress reports carry them (what `maap run`
    # prints at the end).
    metrics: TrainedMetrics | None = Field(
        default=None, description="The train stage's figures: eval loss, tokens, tokens/s."
    )
    export: ExportSummary | None = Field(
        default=None, description="The export stage's figures: size, build time, parity gate."
    )
    outputs: PublishResult | None = Field(
        default=None, description="Where the publish stage copied the models (spec.output)."
    )
    endpoint: str | None = None
    auth_secret: str | None = Field(
        default=None, description="Secret with the bearer token the server requires."
    )
    start_time: str | None = None
    completion_time: str | None = None


class ObjectMeta(BaseModel):
    """The part of metadata the API reads; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class FineTuneJob(CamelModel):
    api_version: Literal["maap.dev/v1alpha1"]
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
