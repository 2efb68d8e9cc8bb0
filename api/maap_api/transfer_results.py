"""What the fetch and publish stages leave behind: `fetch.json`, `publish.json`.

The fetch stage writes what it fetched and checked (the operator and `maap run` report it);
the publish stage writes the URIs it copied the models to (`status.outputs`).
"""

from __future__ import annotations

from pydantic import Field

from maap_api.camel import CamelModel

FETCH_FILE = "fetch.json"
PUBLISH_FILE = "publish.json"
# A completed model download in the cache holds this file (JSON: a CachedModelInfo).
MODEL_COMPLETE_MARKER = ".maap-complete"


class FetchedFile(CamelModel):
    location: str = Field(description="What the spec named (a path or a URI).")
    path: str = Field(description="The local copy the training stage reads.")
    bytes: int = Field(ge=0)
    sha256: str
    rows: int = Field(ge=0, description="Rows the validator accepted.")


class CachedModelInfo(CamelModel):
    """A base model in the cache: where it came from, and what is there."""

    location: str
    path: str
    revision: str | None = Field(default=None, description="The commit a hub revision named.")
    files: int = Field(ge=0)
    bytes: int = Field(ge=0)


class FetchResult(CamelModel):
    dataset: FetchedFile
    eval: FetchedFile | None = None
    model: CachedModelInfo | None = Field(
        default=None, description="Set when this stage fetched (or found) the base model."
    )


class PublishResult(CamelModel):
    """Where the finished job's models were copied (each None when it has none)."""

    merged_model: str | None = None
    onnx_model: str | None = None
    adapter: str | None = None
    onnx_base_model: str | None = Field(
        default=None, description="export.adapter: the base model the onnx adapter plugs into."
    )
    onnx_adapter: str | None = None
    files: int = Field(default=0, ge=0)
    bytes: int = Field(default=0, ge=0)
