"""Kopf handlers: thin. Wake the reconcile of a FineTuneJob when it or one of its children
changes; the reconcile reads both from the watch caches (maap.watches), never polls.

A timer remains only where time itself matters: jobs waiting on something no watched
object shows (a pod that cannot be created), jobs whose TTL runs, and a slow full resync
as a safety net. Passes over one job are serialised; passes over different jobs run on
worker threads side by side.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from maap_api.finetunejob import GROUP, PLURAL, VERSION

from maap import metrics
from maap.kube import Kube, load_config
from maap.objectmeta import JOB_LABEL
from maap.progress_api import start_progress_server
from maap.reconcile import Memory, reconcile
from maap.settings import OperatorConfig
from maap.watches import CHILD_KINDS, OwnerKey, configure_selectors, owner_body, snapshot

log = logging.getLogger("maap.operator")
_locks: dict[OwnerKey, asyncio.Lock] = {}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.setdefault("config", OperatorConfig())
    # Keep kopf's bookkeeping under our own prefix, out of `status`.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="maap.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="maap.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "maap.dev/finalizer"
    settings.posting.level = logging.INFO
    settings.background.cancellation_polling = 2
    configure_selectors(settings)
    load_config()
    memo.kube = Kube()
    memo.memory = Memory()
    memo.executor = ThreadPoolExecutor(config.max_workers, thread_name_prefix="reconcile")
    metrics.start_server(config.metrics_port)
    if config.progress_port:
        memo.progress_server = await start_progress_server(memo.kube.api, config.progress_port)


@kopf.on.cleanup()
async def stop_servers(memo: kopf.Memo, **_: Any) -> None:
    runner = memo.get("progress_server")
    if runner is not None:
        await runner.cleanup()
    executor = memo.get("executor")
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)


async def wake(memo: kopf.Memo, indexes: Mapping[str, Any], key: OwnerKey) -> None:
    """Reconcile one FineTuneJob from the caches, one pass at a time per job.

    `indexes`: a handler's keyword arguments, where Kopf hands every index by its name."""
    lock = _locks.setdefault(key, asyncio.Lock())
    async with lock:
        body = owner_body(indexes, key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        seen = snapshot(indexes, key)  # on the loop's thread, where kopf updates indexes
        config: OperatorConfig = memo.config
        started = time.monotonic()
        try:
            # In a copy of this context: kopf's Event posting lives in contextvars.
            await asyncio.get_running_loop().run_in_executor(
                memo.executor, contextvars.copy_context().run,
                reconcile, memo.kube, config.workloads, body, seen, memo.memory,
            )  # fmt: skip
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(namespace: str, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    await wake(memo, kwargs, (namespace, name))


def _child_handler(group: str, version: str, plural: str) -> None:
    @kopf.on.event(group, version, plural, labels={JOB_LABEL: kopf.PRESENT}, id=f"{plural}-event")
    async def on_child_event(
        namespace: str, labels: Mapping[str, str], memo: kopf.Memo, **kwargs: Any
    ) -> None:
        await wake(memo, kwargs, (namespace, labels[JOB_LABEL]))


for _group, _version, _plural in CHILD_KINDS.values():
    if _plural != "configmaps":  # only maap writes them; nothing to react to
        _child_handler(_group, _version, _plural)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Children go with the FineTuneJob through ownerReferences; only our records remain.
    meta = body["metadata"]
    metrics.forget(meta.get("namespace", ""), meta["name"])
    memory: Memory | None = memo.get("memory")
    if memory is not None:
        memory.forget(meta["uid"])
    _locks.pop((meta.get("namespace", ""), meta["name"]), None)


def _waiting(status: Mapping[str, Any], spec: Mapping[str, Any], **_: Any) -> bool:
    """Time matters: a stage waits on something no watch shows, or a TTL is running."""
    phase = status.get("phase")
    if phase in (None, "Pending", "Exporting"):
        return True
    return phase in ("Succeeded", "Failed") and spec.get("ttlSecondsAfterFinished") is not None


def configure_timers(config: OperatorConfig) -> None:
    """Register the timers with the intervals of this run (called by `maap operator`)."""

    @kopf.timer(
        GROUP, VERSION, PLURAL, id="wait-check", when=_waiting,
        interval=config.wait_check_seconds, initial_delay=config.wait_check_seconds,
        sharp=False,
    )  # fmt: skip
    async def on_wait_check(namespace: str, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
        await wake(memo, kwargs, (namespace, name))

    @kopf.timer(
        GROUP, VERSION, PLURAL, id="resync",
        interval=config.resync_seconds, initial_delay=config.resync_seconds, sharp=False,
    )  # fmt: skip
    async def on_resync(namespace: str, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
        await wake(memo, kwargs, (namespace, name))
