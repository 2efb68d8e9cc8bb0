"""`python -m maap_trainer serve`: settings from flags (and the job's config), then uvicorn.

The serving pod and `maap serve DIR` both end up here. Settings come from the job config's
`serving` section when `--config` is given; flags override it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from maap_api.errors import ConfigError
from maap_api.field_errors import format_validation_error
from maap_api.stage_config import ServingConfig

log = logging.getLogger("maap.serve")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the serve stage (kept free of heavy imports: the CLI builds every parser)."""
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model-name", default=None)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="A job config.json; its serving section gives the defaults.",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--max-tokens-limit", type=int, default=None)
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--max-queue", type=int, default=None)
    parser.add_argument("--max-context-length", type=int, default=None, metavar="TOKENS",
                        help="Longest prompt plus answer (default 4096, or the model's "
                        "context if shorter); each batch's KV cache is sized by it.")  # fmt: skip
    parser.add_argument(
        "--auth-token-env",
        default=None,
        help="Environment variable holding the bearer token clients must send.",
    )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="File holding the bearer token clients must send.",
    )
    parser.add_argument(
        "--admin-token-env",
        default=None,
        metavar="NAME",
        help="Turn on the admin API (/admin/adapters: load and unload LoRA adapters while "
        "serving) and take its bearer token from the environment variable NAME; it must "
        "differ from the clients' token. Without it /admin answers 404.",
    )
    parser.add_argument("--shutdown-grace-seconds", type=int, default=None)
    parser.add_argument("--threads", type=_positive, default=None, metavar="N",
                        help="ONNX Runtime intra-op threads (default: the CPUs this process "
                        "may use: its affinity, capped by a cgroup CPU limit).")  # fmt: skip
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="Serve an .onnx_adapter under NAME as well (repeatable).")  # fmt: skip


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def serving_config(args: argparse.Namespace) -> ServingConfig:
    """The job's serving section (or the defaults) with the flags that were given on top."""
    base = ServingConfig()
    if args.config is not None:
        base = _job_serving_config(args.config)
    overrides: dict[str, Any] = {
        "port": args.port,
        "max_tokens_limit": args.max_tokens_limit,
        "max_batch_size": args.max_batch_size,
        "max_queue": args.max_queue,
        "max_context_length": args.max_context_length,
        "auth_token_env": args.auth_token_env,
        "auth_token_file": str(args.auth_token_file) if args.auth_token_file else None,
        "shutdown_grace_seconds": args.shutdown_grace_seconds,
    }
    merged = {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    from pydantic import ValidationError

    try:
        return ServingConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, style="flag")) from None


def _job_serving_config(path: Path) -> ServingConfig:
    from maap_api.stage_config import TrainerConfig
    from pydantic import ValidationError

    try:
        return TrainerConfig.model_validate_json(path.read_text(encoding="utf-8")).serving
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, TrainerConfig)}") from None


def parse_adapters(values: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter: expected NAME=PATH, got {value!r}")
        if name in adapters:
            raise ConfigError(f"--adapter: the name {name!r} is given twice")
        adapters[name] = Path(path)
    return adapters


def run_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from maap_trainer.ports import ensure_port_free
    from maap_trainer.serve.auth import load_admin_token, load_token
    from maap_trainer.serve.common import DrainingServer
    from maap_trainer.serve.server import ServerSettings, create_app

    model_dir: Path = args.model_dir
    classifier = (model_dir / "maap_classifier.json").is_file()
    if not classifier and not (model_dir / "genai_config.json").is_file():
        raise ConfigError(
            f"--model-dir: {model_dir} has no exported ONNX model (genai_config.json, or "
            "maap_classifier.json for a classifier)"
        )
    cfg = serving_config(args)
    adapters = parse_adapters(args.adapter)
    for name, path in adapters.items():
        if not path.is_file():
            raise ConfigError(f"--adapter {name}={path}: no such file")
    token_file = Path(cfg.auth_token_file) if cfg.auth_token_file else None
    auth_token = load_token(cfg.auth_token_env, token_file)
    if classifier and args.admin_token_env:
        raise ConfigError(
            "--admin-token-env: the admin API loads LoRA adapters, which classifiers do not take"
        )
    settings = ServerSettings(
        model_dir=model_dir,
        model_name=args.model_name or model_dir.resolve().parent.name,
        max_tokens_limit=cfg.max_tokens_limit,
        max_batch_size=cfg.max_batch_size,
        max_queue=cfg.max_queue,
        max_context_length=cfg.max_context_length,
        auth_token=auth_token,
        adapters=adapters,
        admin_token=load_admin_token(args.admin_token_env, auth_token),
        shutdown_grace_seconds=cfg.shutdown_grace_seconds,
        threads=args.threads,
    )
    if name_clash := set(adapters) & {settings.model_name}:
        raise ConfigError(f"--adapter: {name_clash.pop()!r} is already the model's name")
    if classifier and adapters:
        raise ConfigError("--adapter: LoRA adapters are for generative models, not classifiers")
    ensure_port_free(args.host, cfg.port)
    if classifier:
        from maap_trainer.serve.classify import create_classifier_app

        app = create_classifier_app(settings)
    else:
        app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=cfg.port,
        log_level="info",
        timeout_graceful_shutdown=cfg.shutdown_grace_seconds,
    )
    server = DrainingServer(config, app.state.server.start_draining)
    server.run()
