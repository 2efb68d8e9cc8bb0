"""Data-plane entrypoint, the same in a pod and under `maap run`.

    python -m maap_trainer prepare-model --config config.json
    python -m maap_trainer train         --config config.json
    python -m maap_trainer export        --config config.json
    python -m maap_trainer serve         --model-dir DIR [--host H] [--port P]

A user error exits 2 with one line on stderr and in the termination log; anything else
exits 1 with the traceback in the log and its last line in the termination message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from maap_trainer.config import TrainerConfig
from maap_trainer.errors import ConfigError, UserError, write_termination_message

EXIT_USER_ERROR = 2


def _load_config(path: Path) -> TrainerConfig:
    try:
        return TrainerConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maap_trainer")
    sub = parser.add_subparsers(dest="stage", required=True)
    for stage in ("prepare-model", "train", "export"):
        p = sub.add_parser(stage)
        p.add_argument("--config", type=Path, required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--model-dir", type=Path, required=True)
    serve.add_argument("--model-name", default=None)
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-tokens-limit", type=int, default=1024)
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.stage == "serve":
        from maap_trainer.serve.server import serve

        serve(
            args.model_dir,
            host=args.host,
            port=args.port,
            model_name=args.model_name,
            max_tokens_limit=args.max_tokens_limit,
        )
        return
    cfg = _load_config(args.config)
    if args.stage == "prepare-model":
        from maap_trainer.model_prep import prepare_base_model

        print(json.dumps({"model": prepare_base_model(cfg.model)}))
    elif args.stage == "train":
        from maap_trainer.distributed import is_worker, rank
        from maap_trainer.launch import run_train_stage

        metrics = run_train_stage(cfg, args.config)
        if not is_worker() or rank() == 0:
            print(json.dumps(metrics))
    elif args.stage == "export":
        from maap_trainer.export import run_export

        print(json.dumps(run_export(cfg)))


def _report_to_launcher(message: str) -> None:
    """A training worker's user error goes back to the launcher, which exits 2 with it."""
    from maap_trainer.distributed import WORKER_ERROR_ENV

    target = os.environ.get(WORKER_ERROR_ENV)
    if target:
        with contextlib.suppress(OSError):
            Path(target).write_text(message, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except UserError as exc:
        message = str(exc)
        print(f"error: {message}", file=sys.stderr)
        write_termination_message(message)
        _report_to_launcher(message)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        traceback.print_exc()
        write_termination_message(f"{args.stage} failed: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
