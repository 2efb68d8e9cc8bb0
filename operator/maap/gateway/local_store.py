"""`maap gateway --local`'s jobs on disk: one folder per job, the FineTuneJob as JSON.

Each job is the object a cluster would hold (metadata, spec, status), kept in
`<state>/jobs/<namespace>/<id>/gateway-job.json` beside the stages' own output (the
folder is the job's output directory), plus `events.jsonl`: what the operator would
post as Events. Writes are atomic (temp file + rename) under one lock.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from maap.gateway.backend import JobEvent
from maap.gateway.local_status import new_status
from maap.pipeline import now

JOB_FILE = "gateway-job.json"
EVENTS_FILE = "events.jsonl"


class LocalJobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()

    def folder(self, namespace: str, job_id: str) -> Path:
        return self.root / namespace / job_id

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        obj = json.loads(json.dumps(manifest))
        obj["metadata"]["creationTimestamp"] = now()
        obj["metadata"]["generation"] = 1
        obj["status"] = new_status()
        with self.lock:
            self.folder(meta["namespace"], meta["name"]).mkdir(parents=True, exist_ok=False)
            self._write(obj)
        return obj

    def get(self, namespace: str, job_id: str) -> dict[str, Any] | None:
        path = self.folder(namespace, job_id) / JOB_FILE
        with self.lock:
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, NotADirectoryError):
                return None

    def list(self, namespace: str) -> list[dict[str, Any]]:
        folder = self.root / namespace
        if not folder.is_dir():
            return []
        found = (self.get(namespace, p.name) for p in folder.iterdir() if p.is_dir())
        return [obj for obj in found if obj is not None]

    def namespaces(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def update(self, namespace: str, job_id: str, change: Any) -> dict[str, Any]:
        """Apply `change(obj)` to the stored object atomically; returns the new object."""
        with self.lock:
            obj = self.get(namespace, job_id)
            if obj is None:
                raise KeyError(f"{namespace}/{job_id}")
            change(obj)
            self._write(obj)
            return obj

    def _write(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        path = self.folder(meta["namespace"], meta["name"]) / JOB_FILE
        tmp = path.with_name(f".{JOB_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    # -- events -------------------------------------------------------------------------

    def add_event(self, namespace: str, job_id: str, level: str, message: str) -> None:
        line = json.dumps({"time": time.time(), "level": level, "message": message})
        with self.lock, (self.folder(namespace, job_id) / EVENTS_FILE).open("a") as out:
            out.write(line + "\n")

    def events(self, namespace: str, job_id: str) -> list[JobEvent]:
        path = self.folder(namespace, job_id) / EVENTS_FILE
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
                out.append(JobEvent(float(entry["time"]), entry["level"], entry["message"]))
            except (ValueError, KeyError, TypeError):
                continue
        return out
