"""The CachedModel API: one base model in a namespace's shared model cache.

The operator creates one when a FineTuneJob needs a base model and the cache is on; its
download Job fills the cache once, whatever number of jobs wait for it; `kubectl get
cachedmodels` says what is there. Never owned by a FineTuneJob: the cache outlives jobs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from maap_api.camel import CamelModel
from maap_api.stage_config import ModelSource
from maap_api.storage_access import HubAccess, S3Access

KIND = "CachedModel"
PLURAL = "cachedmodels"
SINGULAR = "cachedmodel"
SHORT_NAMES = ["cmodel"]

CachePhase = Literal["Pending", "Downloading", "Ready", "Failed"]


class CachedModelSpec(CamelModel):
    model: ModelSource = Field(description="The base model: a preset or a location.")
    s3: S3Access = Field(default_factory=S3Access)
    hub: HubAccess = Field(default_factory=HubAccess)


class CachedModelStatus(CamelModel):
    phase: CachePhase | None = None
    message: str | None = None
    path: str | None = Field(default=None, description="Its directory on the cache volume.")
    revision: str | None = Field(default=None, description="The commit a hub revision named.")
    files: int | None = None
    bytes: int | None = None
    size: str | None = Field(default=None, description="bytes, for people (1.2 GiB).")
    claim: str | None = Field(default=None, description="The cache's PersistentVolumeClaim.")
    last_transition_time: str | None = None
