"""The Hugging Face hub (or a mirror at spec.hub.endpoint) through huggingface_hub.

A revision is resolved to its commit once, and every download then names that commit, so
the files of one fetch all come from one commit even while the branch moves. The token
is HF_TOKEN (in a pod, from spec.hub.secretName).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maap_api.sources import Location
from maap_api.storage_access import HUB_SECRET_KEY, HubAccess

from maap_trainer.fetch.errors import FetchError, fetch_error, one_line, unreachable

DEFAULT_ENDPOINT = "https://huggingface.co"
# Before huggingface_hub is imported (it reads its settings once): a pod reports nothing.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Seconds for the metadata request of each file (HEAD); the download's own read timeout
# is huggingface_hub's (HF_HUB_DOWNLOAD_TIMEOUT, 10 s between reads).
ETAG_TIMEOUT_SECONDS = 30.0
# The hub's own metadata and the local_dir bookkeeping huggingface_hub writes.
_BOOKKEEPING = ".cache"


@dataclass(frozen=True)
class RepoSnapshot:
    commit: str
    files: dict[str, int]  # path in the repo -> bytes (0 where the hub did not say)


def _token() -> str | None:
    return os.environ.get(HUB_SECRET_KEY) or None


def _endpoint(access: HubAccess) -> str:
    return (access.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _quiet() -> None:
    """No progress bars or per-request INFO lines: our meter logs the download."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    for name in ("httpx", "httpx2", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve(field: str, location: Location, access: HubAccess) -> RepoSnapshot:
    """The commit a revision names and the files there (one metadata request)."""
    from huggingface_hub import HfApi

    _quiet()
    api = HfApi(endpoint=_endpoint(access), token=_token())
    try:
        info = api.repo_info(
            location.repo_id,
            revision=location.revision,
            repo_type=location.repo_type,
            files_metadata=True,
        )
    except Exception as exc:
        raise hub_failure(field, location, access, exc) from None
    if not info.sha:
        raise fetch_error(field, location.uri, "the hub named no commit for this revision")
    files = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    return RepoSnapshot(commit=info.sha, files=files)


def download_snapshot(
    field: str,
    location: Location,
    access: HubAccess,
    snapshot: RepoSnapshot,
    files: list[str],
    target: Path,
) -> None:
    """Download `files` of the snapshot into `target` (then drop the hub's bookkeeping)."""
    from huggingface_hub import snapshot_download

    _quiet()
    try:
        snapshot_download(
            location.repo_id,
            repo_type=location.repo_type,
            revision=snapshot.commit,
            local_dir=target,
            cache_dir=target / _BOOKKEEPING / "hub",
            allow_patterns=[glob.escape(name) for name in files],
            endpoint=_endpoint(access),
            token=_token(),
            etag_timeout=ETAG_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        raise hub_failure(field, location, access, exc) from None
    _drop_bookkeeping(target)


def download_file(
    field: str, location: Location, access: HubAccess, commit: str, filename: str, target: Path
) -> Path:
    """One file of the repo into `target` (a directory); returns where it landed."""
    from huggingface_hub import hf_hub_download

    _quiet()
    try:
        path = hf_hub_download(
            location.repo_id,
            filename,
            repo_type=location.repo_type,
            revision=commit,
            local_dir=target,
            cache_dir=target / _BOOKKEEPING / "hub",
            endpoint=_endpoint(access),
            token=_token(),
            etag_timeout=ETAG_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        raise hub_failure(field, location, access, exc, filename) from None
    return Path(path)


def _drop_bookkeeping(target: Path) -> None:
    import shutil

    shutil.rmtree(target / _BOOKKEEPING, ignore_errors=True)


def hub_failure(
    field: str, location: Location, access: HubAccess, exc: BaseException, filename: str = ""
) -> FetchError:
    """A huggingface_hub failure as one line: the status, and what to do about it."""
    from huggingface_hub import errors

    if isinstance(exc, FetchError):
        return exc
    uri = location.uri
    status = _status(exc)
    secret = f"{HUB_SECRET_KEY}, from spec.hub.secretName"
    if _token():
        token_hint = f"the token in {secret}, was refused"
    else:
        token_hint = f"no token was sent: set {secret}"
    said = _server_message(exc)
    if isinstance(exc, errors.GatedRepoError):
        return fetch_error(
            field,
            uri,
            f"{status or 403} gated repository{said}: accept its terms on the hub with the "
            f"account whose token is {HUB_SECRET_KEY}" + ("" if _token() else f"; {token_hint}"),
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return fetch_error(field, uri, f"404 no such revision {location.revision!r}")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return fetch_error(field, uri, f"404 no such file {filename!r} in the repository")
    if isinstance(exc, errors.RepositoryNotFoundError):
        if status == 401:
            return fetch_error(
                field,
                uri,
                f"401 Unauthorized{said}: the repository is private or gated, or does not "
                f"exist ({token_hint})",
            )
        return fetch_error(field, uri, f"{status or 404} no such repository")
    if isinstance(exc, errors.HfHubHTTPError):
        reason = getattr(getattr(exc, "response", None), "reason_phrase", "") or "error"
        hint = f" ({token_hint})" if status in (401, 403) else ""
        return fetch_error(field, uri, f"{status} {reason}{said}{hint}")
    if _is_network(exc):
        return unreachable(field, uri, _endpoint(access), exc)
    return fetch_error(field, uri, f"{type(exc).__name__}: {exc}")


def _server_message(exc: BaseException) -> str:
    """The hub's own words (X-Error-Message), as `: ...`, or nothing."""
    response: Any = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    message = headers.get("X-Error-Message") if hasattr(headers, "get") else None
    return f": {one_line(message).rstrip('.')}" if message else ""


def _status(exc: BaseException) -> int | None:
    response: Any = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_network(exc: BaseException) -> bool:
    """A connection that failed (huggingface_hub may wrap it in LocalEntryNotFoundError)."""
    from huggingface_hub import errors

    current: BaseException | None = exc
    while current is not None:
        module = type(current).__module__.split(".")[0]
        if module in ("httpx", "httpx2", "httpcore", "httpcore2") or isinstance(
            current, (OSError, errors.LocalEntryNotFoundError)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
