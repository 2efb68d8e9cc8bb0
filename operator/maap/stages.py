"""The command line of each data-plane stage, in one place: pods, `maap run`, `maap serve`.

Every stage is `python -m maap_trainer STAGE --config config.json`: its settings come from
the job's config file only, so the pods and a local run cannot disagree on them. The
command carries only what differs per place: the paths, and where a local server listens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maap_api.stage_config import TrainerConfig

POD_PYTHON = "python"
ENTRYPOINT = ("-m", "maap_trainer")

PathLike = str | Path


def _stage(stage: str, config_path: PathLike, python: str) -> list[str]:
    return [python, *ENTRYPOINT, stage, "--config", str(config_path)]


def fetch_command(
    config_path: PathLike, *, python: str = POD_PYTHON, data_only: bool = False
) -> list[str]:
    """Download (remote) and validate the data set, and the base model unless the shared
    cache's download Job brings it (`data_only`)."""
    return _stage("fetch", config_path, python) + (["--data-only"] if data_only else [])


def fetch_model_command(model_config_path: PathLike, *, python: str = POD_PYTHON) -> list[str]:
    """Fill the model cache with one base model (a CachedModel's download Job)."""
    return [python, *ENTRYPOINT, "fetch-model", "--config", str(model_config_path)]


def publish_command(config_path: PathLike, *, python: str = POD_PYTHON) -> list[str]:
    """Copy the finished job's models to spec.output."""
    return _stage("publish", config_path, python)


def train_command(config_path: PathLike, *, python: str = POD_PYTHON) -> list[str]:
    return _stage("train", config_path, python)


def export_command(config_path: PathLike, *, python: str = POD_PYTHON) -> list[str]:
    return _stage("export", config_path, python)


def serve_command(
    config_path: PathLike | None,
    model_dir: PathLike,
    model_name: str,
    host: str | None = None,
    port: int | None = None,
    *,
    python: str = POD_PYTHON,
) -> list[str]:
    """The server: port, batching, queue, limits and the token's source come from the
    config's `serving` section; `host`/`port` override where it listens (a local run).
    No config (`maap serve` of a bare exported model): the server's defaults."""
    if config_path is None:
        argv = [python, *ENTRYPOINT, "serve"]
    else:
        argv = _stage("serve", config_path, python)
    argv += ["--model-dir", str(model_dir), "--model-name", model_name]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    return argv


def pipeline_commands(
    cfg: TrainerConfig, config_path: PathLike, *, python: str = POD_PYTHON
) -> list[tuple[str, list[str]]]:
    """The stages one machine runs for a job, in order, by name: fetch and train, then
    export and publish when the config turns them on (`maap run`, `maap gateway --local`)."""
    stages = [("fetch", fetch_command(config_path, python=python)),
              ("train", train_command(config_path, python=python))]  # fmt: skip
    if cfg.export.enabled:
        stages.append(("export", export_command(config_path, python=python)))
    if cfg.output.enabled:
        stages.append(("publish", publish_command(config_path, python=python)))
    return stages


# The stages a Job runs, by the container name podspec gives them.
JOB_STAGES: dict[str, Callable[..., list[str]]] = {
    "fetch": fetch_command,
    "publish": publish_command,
    "train": train_command,
    "export": export_command,
}
