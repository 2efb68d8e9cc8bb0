"""Real HTTP servers on 127.0.0.1 for the fetch tests: a file server and a small hub.

FileServer serves bytes by path (and 404 for the rest). LocalHub speaks the part of the
Hugging Face hub's HTTP API that huggingface_hub's download functions use:

    GET  /api/{models,datasets}/{org}/{name}/revision/{rev}   repo info: commit and files
    GET  /api/{models,datasets}/{org}/{name}/tree/{rev}[/dir]  the file listing
    HEAD /[datasets/]{org}/{name}/resolve/{rev}/{path}         X-Repo-Commit, ETag, length
    GET  /[datasets/]{org}/{name}/resolve/{rev}/{path}         the bytes (Range honoured)

with the hub's error headers (X-Error-Code: RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo) and a bearer-token check, so huggingface_hub raises what it raises against the
real hub. Each server counts the requests it answers, so a test can prove a download
happened once. Below them: running a stage as a pod does (`run_stage`) and a tiny
checkpoint to serve (`tiny_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a killed pod) is expected here, not a traceback."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread; a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = _HTTPServer(("127.0.0.1", 0), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def count(self, key: str) -> None:
        with self.lock:
            self.requests[key] += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def send_bytes(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# -- a plain file server ----------------------------------------------------------------------


class _FileHandler(_Quiet):
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.owner.count(path)
        body = self.owner.files.get(path)
        if body is None:
            self.send_bytes(404, b"not here\n")
            return
        self.send_bytes(200, body, {"Content-Type": "application/octet-stream"})


class FileServer(_Server):
    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(_FileHandler)
        self.files = {("/" + k.lstrip("/")): v for k, v in files.items()}

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"


# -- a hub ------------------------------------------------------------------------------------


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, bytes]
    repo_type: str = "model"
    token: str | None = None  # the bearer token it requires (a private or gated repo)
    gated: bool = False  # with the right token still 403 GatedRepo (terms not accepted)
    branch: str = "main"
    commit: str = field(default="")

    def __post_init__(self) -> None:
        if not self.commit:
            listing = json.dumps(
                sorted((k, hashlib.sha1(v).hexdigest()) for k, v in self.files.items())
            )
            self.commit = hashlib.sha1(f"{self.repo_id}{listing}".encode()).hexdigest()


_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _HubHandler(_Quiet):
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        self.send_bytes(status, body, {"Content-Type": "application/json", **headers})

    def _repo(self, repo_type: str, repo_id: str, revision: str) -> HubRepo | None:
        """The repo, after the checks the hub makes; None when an error was sent."""
        repo = self.owner.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            given = self.headers.get("Authorization") is not None
            message = (
                "Invalid credentials in Authorization header"
                if given
                else "Invalid username or password."
            )
            self._error(401, "RepoNotFound", message)
            return None
        if repo.gated:
            self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted.")
            return None
        if revision not in (repo.branch, repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.owner.count(f"{self.command} {path}")
        if match := _API.match(path):
            kind, repo_id, what, revision, sub = match.groups()
            repo = self._repo(kind[:-1], repo_id, revision)
            if repo is not None:
                self._api(repo, what, (sub or "").strip("/"))
        elif match := _RESOLVE.match(path):
            dataset, repo_id, revision, name = match.groups()
            repo = self._repo("dataset" if dataset else "model", repo_id, revision)
            if repo is not None:
                self._resolve(repo, name)
        else:
            self._error(404, "NotFound", f"no route {path}")

    def _api(self, repo: HubRepo, what: str, sub: str) -> None:
        if what == "revision":
            siblings = [
                {"rfilename": name, "size": len(body), "blobId": hashlib.sha1(body).hexdigest()}
                for name, body in sorted(repo.files.items())
            ]
            info = {
                "id": repo.repo_id,
                "sha": repo.commit,
                "siblings": siblings,
                "private": repo.token is not None,
            }
            self.send_bytes(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
            return
        entries = [
            {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
            for name, body in sorted(repo.files.items())
            if not sub or name.startswith(sub + "/")
        ]
        self.send_bytes(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo: HubRepo, name: str) -> None:
        body = repo.files.get(name)
        if body is None:
            self._error(404, "EntryNotFound", f"{name} does not exist on {repo.commit}")
            return
        headers = {
            "X-Repo-Commit": repo.commit,
            "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if self.command == "GET":
            self.owner.count_download(repo.repo_id, name)
            time.sleep(self.owner.delay_seconds.get(name, 0.0))  # a big file, slowly
        status, range_header = 200, self.headers.get("Range")
        if range_header and (m := re.fullmatch(r"bytes=(\d+)-", range_header)):
            start = int(m.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            body, status = body[start:], 206
        self.send_bytes(status, body, headers)


class LocalHub(_Server):
    """A hub on 127.0.0.1: add repos, point spec.hub.endpoint at `base_url`."""

    def __init__(self) -> None:
        super().__init__(_HubHandler)
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.downloads: Counter[tuple[str, str]] = Counter()
        self.delay_seconds: dict[str, float] = {}  # file name -> seconds before its bytes

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[(repo.repo_type, repo.repo_id)] = repo
        return repo

    def count_download(self, repo_id: str, name: str) -> None:
        with self.lock:
            self.downloads[(repo_id, name)] += 1


# -- running a stage --------------------------------------------------------------------------

# Credentials a test did not ask for must not leak in from the environment.
_SCRUBBED = ("AWS_", "HF_TOKEN", "HF_ENDPOINT", "MAAP_CACHE_DIR", "MAAP_TERMINATION_LOG")


def stage_config(workdir: Path, dataset: dict[str, Any], **sections: Any) -> Path:
    """A TrainerConfig for the fetch/publish stages (a local preset model unless given)."""
    config = {
        "jobName": "fetch-test",
        "model": {"preset": "smollm2-135m-instruct"},
        "dataset": dataset,
        "outputDir": str(workdir / "out"),
        **sections,
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@dataclass
class StageRun:
    returncode: int
    stdout: str
    stderr: str
    termination_message: str

    @property
    def error_line(self) -> str:
        """The one line a failed stage prints (after `error: `)."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, self.stderr
        return lines[0].removeprefix("error: ")

    def json(self) -> Any:
        return json.loads(self.stdout)


def model_spec(config: Path) -> Path:
    """The CachedModel spec (model, s3, hub) of a stage config, as its download Job's
    ConfigMap holds it (`python -m maap_trainer fetch-model --config` reads it)."""
    document = json.loads(config.read_text(encoding="utf-8"))
    spec = config.with_name("model.json")
    keys = ("model", "s3", "hub")
    spec.write_text(json.dumps({k: document[k] for k in keys if k in document}), encoding="utf-8")
    return spec


def run_stage(
    stage: str,
    config: Path,
    cache: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> StageRun:
    """`python -m maap_trainer <stage> --config C` in a subprocess, as a pod runs it."""
    termination = config.parent / f"termination-{stage}.log"
    termination.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    done = subprocess.run(
        [sys.executable, "-m", "maap_trainer", stage, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={
            **clean,
            "MAAP_CACHE_DIR": str(cache),
            "MAAP_TERMINATION_LOG": str(termination),
            **(env or {}),
        },
    )
    message = termination.read_text(encoding="utf-8").strip() if termination.exists() else ""
    return StageRun(done.returncode, done.stdout, done.stderr, message)


def tiny_checkpoint() -> dict[str, bytes]:
    """A tiny random Llama checkpoint (config.json, model.safetensors) as files, built with
    numpy (importing transformers costs ~10 s here); transformers loads it."""
    import numpy as np
    from safetensors.numpy import save

    hidden, inner, vocab = 16, 32, 64
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inner,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    rng = np.random.default_rng(0)
    layer = "model.layers.0."
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        **{f"{layer}self_attn.{p}_proj.weight": (hidden, hidden) for p in "qkvo"},
        f"{layer}mlp.gate_proj.weight": (inner, hidden),
        f"{layer}mlp.up_proj.weight": (inner, hidden),
        f"{layer}mlp.down_proj.weight": (hidden, inner),
        f"{layer}input_layernorm.weight": (hidden,),
        f"{layer}post_attention_layernorm.weight": (hidden,),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    tensors = {k: rng.standard_normal(v).astype(np.float32) * 0.02 for k, v in shapes.items()}
    return {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": save(tensors, metadata={"format": "pt"}),
    }
