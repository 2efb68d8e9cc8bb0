"""The model servers of `maap gateway --local`: one per base model for LoRA fine-tunes.

A LoRA fine-tune exported with `export.adapter` is added to the running server of its base
model (the same preset, precision and execution provider) through that server's admin API:
no restart, and N fine-tunes cost one base model's memory plus N small adapters. The first
such fine-tune starts the server on its own `onnx-base/` export. Any other fine-tune (full,
DoRA, or an adapter the shared base refuses) gets a server of its own on `onnx/`.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from maap_api.results import ONNX_ADAPTER_SUFFIX, ONNX_ADAPTERS_DIR, ONNX_BASE_DIR, ONNX_DIR
from maap_trainer.ports import free_port

from maap.gateway.backend import ServedModel
from maap.gateway.jobs import fine_tuned_model_name
from maap.local.serving import CONFIG_FILE
from maap.stages import serve_command

log = logging.getLogger("maap.gateway.serving")
ADMIN_TOKEN_ENV = "MAAP_ADMIN_TOKEN"
READY_TIMEOUT_SECONDS = 300.0


class ServingError(Exception):
    """A server would not start or refused the model; the message says why, in one line."""


@dataclass
class ModelServer:
    process: subprocess.Popen[bytes]
    url: str
    model_name: str
    log_path: Path
    admin_token: str | None = None
    # job id -> the fine-tuned model's public name (adapters of a shared server).
    adapters: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise ServingError(f"the model server exited ({' '.join(tail)})")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise ServingError(f"the model server at {self.url} was not ready in {timeout:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def adapter_file(output_dir: Path, job_id: str) -> Path:
    return output_dir / ONNX_ADAPTERS_DIR / f"{job_id}{ONNX_ADAPTER_SUFFIX}"


def base_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    """Fine-tunes with the same key can share one base model in one server."""
    spec = obj["spec"]
    export = spec.get("export") or {}
    base = spec["model"].get("preset") or spec["model"].get("path") or ""
    return base, export.get("precision", "int4"), export.get("executionProvider", "cpu")


class ServingPool:
    def __init__(self, log_dir: Path, host: str = "127.0.0.1") -> None:
        self.log_dir, self.host = log_dir, host
        self.lock = threading.Lock()
        self.shared: dict[tuple[str, str, str], ModelServer] = {}
        self.dedicated: dict[str, ModelServer] = {}  # job id -> its own server
        self.owner: dict[str, str] = {}  # job id -> namespace

    def _start(
        self, model_dir: Path, name: str, config: Path | None, admin: bool, label: str
    ) -> ModelServer:
        port = free_port(self.host)
        argv = serve_command(config, model_dir, name, self.host, port, python=sys.executable)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        token = None
        if admin:
            token = secrets.token_urlsafe(24)
            argv += ["--admin-token-env", ADMIN_TOKEN_ENV]
            env[ADMIN_TOKEN_ENV] = token
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"serve-{label}.log"
        with log_path.open("w") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        server = ModelServer(process, f"http://{self.host}:{port}", name, log_path, token)
        try:
            server.wait_ready()
        except ServingError:
            server.stop()
            raise
        return server

    def add(self, obj: dict[str, Any], output_dir: Path) -> str:
        """Serve a succeeded job; returns how (shared base or own server), for its events."""
        job_id, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        public = fine_tuned_model_name(obj)
        adapter = adapter_file(output_dir, job_id)
        with self.lock:
            self.owner[job_id] = namespace
            if adapter.is_file() and (output_dir / ONNX_BASE_DIR).is_dir():
                key = base_key(obj)
                server = self.shared.get(key)
                if server is None or server.process.poll() is not None:
                    server = self._start(
                        output_dir / ONNX_BASE_DIR, key[0], None, True, f"{key[0]}-{key[1]}"
                    )
                    self.shared[key] = server
                problem = _load_adapter(server, job_id, adapter)
                if problem is None:
                    server.adapters[job_id] = public
                    return f"served as an adapter by the shared {key[0]} server at {server.url}"
                log.warning("%s: the shared base refused the adapter (%s); own server", job_id,
                            problem)  # fmt: skip
            config = output_dir / CONFIG_FILE
            server = self._start(
                output_dir / ONNX_DIR, job_id, config if config.is_file() else None, False, job_id
            )
            server.adapters[job_id] = public
            self.dedicated[job_id] = server
            return f"served by its own server at {server.url}"

    def served(self, namespace: str) -> list[ServedModel]:
        out = []
        with self.lock:
            for key, server in self.shared.items():
                if server.process.poll() is not None:
                    continue
                mine = {j: n for j, n in server.adapters.items() if self.owner[j] == namespace}
                if mine:
                    out.append(ServedModel(key[0], server.url, server.model_name,
                                           created=server.created))  # fmt: skip
                for job_id, name in mine.items():
                    out.append(ServedModel(name, server.url, job_id, parent=key[0],
                                           created=server.created))  # fmt: skip
            for job_id, server in self.dedicated.items():
                if self.owner[job_id] == namespace and server.process.poll() is None:
                    out.append(ServedModel(server.adapters[job_id], server.url, job_id,
                                           created=server.created))  # fmt: skip
        return out

    def serves(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.dedicated or any(
                job_id in server.adapters for server in self.shared.values()
            )

    def servers(self) -> list[ModelServer]:
        with self.lock:
            return [*self.shared.values(), *self.dedicated.values()]

    def close(self) -> None:
        for server in self.servers():
            server.stop()


def _load_adapter(server: ModelServer, job_id: str, path: Path) -> str | None:
    """None once the server serves the adapter as `job_id`, else the server's reason."""
    try:
        answer = httpx.post(
            f"{server.url}/admin/adapters",
            json={"name": job_id, "path": str(path.resolve())},
            headers={"Authorization": f"Bearer {server.admin_token}"},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if answer.status_code in (200, 201) or (
        answer.status_code == 409 and job_id in server.adapters
    ):
        return None
    try:
        return str(answer.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {answer.status_code}"
