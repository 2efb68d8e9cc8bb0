"""What each stage's children should be, and which of them differ from what is there.

Pure: spec + what the watches saw -> the list of writes that brings the cluster to what
the builders say. Objects the API server lets change (ConfigMap, Services, Deployment) are
server-side applied whenever the observed object does not already hold every field the
builder sets; Jobs (their pod template is immutable), the claim and the token Secrets are
created once and left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from maap_api.finetunejob import FineTuneJob

from maap import builders, cache_builders, transfer_builders
from maap.objectmeta import Names
from maap.pipeline import JobState, Stage
from maap.podspec import OperatorSettings
from maap.watches import Children

Verb = Literal["apply", "create", "delete"]
# Secrets carry a random token: built only when they are about to be created.
TokenFactory = Callable[[int], str]


@dataclass(frozen=True)
class Write:
    verb: Verb
    kind: str
    name: str
    body: dict[str, Any] | None = None


def covers(observed: Any, desired: Any) -> bool:
    """True if `observed` holds everything `desired` sets (the server adds defaults)."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            key in observed and covers(observed[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(covers(o, d) for o, d in zip(observed, desired, strict=True))
        )
    # Quantities come back as strings (cpu: 4 -> "4").
    return observed == desired or str(observed) == str(desired)


def _progress_secret(
    job: FineTuneJob, uid: str, settings: OperatorSettings, token: TokenFactory
) -> dict[str, Any] | None:
    """Every stage pod reads its progress token from this Secret, so the first stage that
    runs a pod (fetch, or train when there is nothing to fetch) creates it."""
    if not settings.progress_url:
        return None
    return builders.build_progress_secret(job, uid, token(24))


def _stage_bodies(
    stage: Stage, job: FineTuneJob, uid: str, settings: OperatorSettings, token: TokenFactory
) -> list[tuple[Verb, dict[str, Any] | None]]:
    """The children of one stage, in the order they must exist (mounts before pods)."""
    if stage == "fetch":
        return [
            ("apply", builders.build_config_map(job, uid)),
            ("create", builders.build_pvc(job, uid)),
            ("create", _progress_secret(job, uid, settings, token)),
            ("create", transfer_builders.build_fetch_job(job, uid, settings)),
        ]
    if stage == "cache":
        if settings.model_cache is None:
            return []
        namespace = job.metadata.namespace or "default"
        return [
            ("create", cache_builders.build_cache_claim(settings.model_cache, namespace)),
            ("create", cache_builders.build_cached_model(job)),
        ]
    if stage == "publish":
        return [("create", transfer_builders.build_publish_job(job, uid, settings))]
    if stage == "train":
        return [
            ("apply", builders.build_config_map(job, uid)),
            ("create", builders.build_pvc(job, uid)),
            ("apply", builders.build_headless_service(job, uid)),
            ("create", _progress_secret(job, uid, settings, token)),
            ("create", builders.build_training_job(job, uid, settings)),
        ]
    if stage == "export":
        return [("create", builders.build_export_job(job, uid, settings))]
    return [
        ("create", builders.build_serving_auth_secret(job, uid, token(32))),
        ("apply", builders.build_serving_deployment(job, uid, settings)),
        ("apply", builders.build_serving_service(job, uid)),
    ]


def plan(
    job: FineTuneJob,
    uid: str,
    settings: OperatorSettings,
    stages: list[Stage],
    seen: Children,
    created: set[str],
    token: TokenFactory,
) -> list[Write]:
    """The writes that make the children of `stages` what the builders say.

    `created`: names of create-once objects this process already created or found
    (their content never follows the spec, so one create is enough).
    """
    writes: list[Write] = []
    for stage in stages:
        for verb, body in _stage_bodies(stage, job, uid, settings, token):
            if body is None:
                continue
            kind, name = body["kind"], body["metadata"]["name"]
            if verb == "create":
                watched = {"Job": seen.jobs, "CachedModel": seen.cachedmodels}.get(kind, {})
                planned = any(w.kind == kind and w.name == name for w in writes)
                if name not in created and name not in watched and not planned:
                    writes.append(Write("create", kind, name, body))
            elif not covers(seen.of_kind(kind).get(name), body):
                writes.append(Write("apply", kind, name, body))
    if not job.spec.serving.enabled:
        # Serving switched off: the server goes, so status can say Succeeded truthfully.
        server = Names(job.metadata.name).server
        writes += [
            Write("delete", kind, server)
            for kind in ("Deployment", "Service")
            if server in seen.of_kind(kind)
        ]
    return writes


def suspend_patches(job: FineTuneJob, seen: Children) -> list[tuple[str, bool]]:
    """(Job name, spec.suspend) for each unfinished stage Job that spec.suspend can pause
    (fetch, train) whose suspend differs from the FineTuneJob's."""
    names = Names(job.metadata.name)
    patches = []
    for name in (names.fetch, names.train):
        stage = seen.jobs.get(name)
        if stage is None:
            continue
        state = JobState.from_job(stage)
        if not (state.succeeded or state.failed) and state.suspended != job.spec.suspend:
            patches.append((name, job.spec.suspend))
    return patches
