"""The local server, for `maap run` and `maap serve` alike: one command, one token.

The serving settings (port, batching, queue, limits, where the token comes from) are the
job's config.json, as in the cluster (maap.stages builds the command for both). When that
config asks for a bearer token (`serving.authTokenEnv`, set when `serving.auth.enabled`),
the token comes from that environment variable if it is set, else from the job's token
file beside the config, which `maap run` creates once (mode 0600) and `maap serve` reuses.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from maap_api.errors import UserError
from maap_api.stage_config import load_trainer_config

from maap.stages import serve_command

CONFIG_FILE = "config.json"
SERVING_TOKEN_FILE = "serving-token"
# `maap run`'s web console (maap.local.run_console): the port `maap gateway` defaults to.
DEFAULT_CONSOLE_PORT = 8080


@dataclass
class LocalServer:
    argv: list[str]
    env: dict[str, str]
    model_name: str
    # How a client gets the token, for the printed curl line (None: no auth).
    token_hint: str | None = None


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def job_config_beside(model_dir: Path) -> Path | None:
    """The config.json `maap run` writes in the output directory, above MODEL_DIR."""
    candidate = _above(model_dir) / CONFIG_FILE
    return candidate if candidate.is_file() else None


def _above(model_dir: Path) -> Path:
    """MODEL_DIR/.. as written, not resolved: a linked export still belongs to its job."""
    return Path(os.path.abspath(model_dir)).parent


def _token(path: Path, create: bool) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UserError(f"{path}: cannot read the serving token: {exc.strerror}") from None
    if not create:
        return None
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token


def local_server(
    model_dir: Path,
    config_path: Path | None,
    host: str,
    port: int | None = None,
    model_name: str | None = None,
    *,
    create_token: bool = False,
) -> LocalServer:
    """The server's argv and environment for this job's config (or none: a bare model)."""
    cfg = load_trainer_config(config_path) if config_path is not None else None
    name = model_name or (cfg.job_name if cfg else _above(model_dir).name)
    env = dict(os.environ)
    hint = None
    token_env = cfg.serving.auth_token_env if cfg else None
    if token_env and config_path is not None:
        if env.get(token_env, "").strip():
            hint = f"${token_env}"
        else:
            token_file = config_path.resolve().parent / SERVING_TOKEN_FILE
            token = _token(token_file, create_token)
            if token is None:
                raise UserError(
                    f"{config_path}: serving.authTokenEnv: the server requires a bearer token "
                    f"from ${token_env}; set it, or put the token in {token_file}"
                )
            env[token_env] = token
            hint = f"$(cat {token_file})"
    argv = serve_command(config_path, model_dir, name, host, port, python=sys.executable)
    return LocalServer(argv, env, name, hint)
