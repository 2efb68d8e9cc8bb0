"""How to reach the stores a job reads from and writes to: S3, the Hugging Face hub.

One block per store and per job, shared by every location of the job that uses it
(dataset, evalPath, model, output). Credentials never appear in the spec: in a cluster
they come from a Secret in the job's namespace (its keys are the variables' names, so
the same credentials work on a laptop from the environment, for `maap run`).
"""

from __future__ import annotations

from pydantic import Field

from maap_api.camel import CamelModel
from maap_api.sources import MAX_LOCATION_LENGTH

# The Secret keys (and, for `maap run`, the environment variables) each store reads.
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_SECRET_KEYS = ("AWS_SESSION_TOKEN",)
HUB_SECRET_KEY = "HF_TOKEN"
URL_PATTERN = r"^https?://[^\s/]+(/[^\s]*)?$"
SECRET_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class S3Access(CamelModel):
    """An S3-compatible store (AWS S3, SeaweedFS, Ceph RGW, ...)."""

    endpoint: str | None = Field(
        default=None,
        max_length=MAX_LOCATION_LENGTH,
        pattern=URL_PATTERN,
        description="The store's URL, e.g. http://seaweedfs.storage.svc:8333; unset: AWS S3.",
    )
    region: str = Field(default="us-east-1", min_length=1, max_length=64)
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=SECRET_NAME,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally "
        "AWS_SESSION_TOKEN); unset: anonymous access (a public bucket).",
    )


class HubAccess(CamelModel):
    """The Hugging Face hub (or a mirror of it)."""

    endpoint: str | None = Field(
        default=None,
        max_length=MAX_LOCATION_LENGTH,
        pattern=URL_PATTERN,
        description="A hub mirror's URL (HF_ENDPOINT); unset: https://huggingface.co.",
    )
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=SECRET_NAME,
        description="Secret with HF_TOKEN, for gated or private repositories.",
    )


class OutputSpec(CamelModel):
    """Where a finished job copies its models, for other clusters and pipelines."""

    rules_section = "output"

    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LOCATION_LENGTH,
        description="An S3 prefix (s3://bucket/prefix/, using spec.s3): the merged model, "
        "the ONNX export and the adapter are copied below it when the job succeeds.",
    )

    @property
    def enabled(self) -> bool:
        return self.path is not None
