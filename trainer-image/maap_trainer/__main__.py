"""Data-plane entrypoint, the same in a pod and under `maap run`.

    python -m maap_trainer fetch         --config config.json [--data-only]
    python -m maap_trainer fetch-model   --config cachedmodel-spec.json
    python -m maap_trainer prepare-model --config config.json
    python -m maap_trainer train         --config config.json
    python -m maap_trainer export        --config config.json
    python -m maap_trainer publish       --config config.json
    python -m maap_trainer serve         --model-dir DIR [--config config.json] [--port P] ...
    python -m maap_trainer export-adapter --adapter-dir D --base-checkpoint D --base-onnx D
                                          --output FILE.onnx_adapter

A user error exits 2 with one line on stderr and in the termination log; a training stage
stopped by SIGTERM saves a checkpoint and exits 75 (preemption.py); anything else exits 1
with the traceback in the log and its last line in the termination message.
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

from maap_api.errors import (
    TrainingPreempted,
    UserError,
    write_termination_message,
)
from maap_api.stage_config import load_trainer_config

from maap_trainer.serve.launch import add_serve_arguments

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maap_trainer")
    sub = parser.add_subparsers(dest="stage", required=True)
    for stage in ("prepare-model", "train", "export", "publish"):
        p = sub.add_parser(stage)
        p.add_argument("--config", type=Path, required=True)
    fetch = sub.add_parser("fetch", help="download and check the data set and the base model")
    fetch.add_argument("--config", type=Path, required=True)
    fetch.add_argument(
        "--data-only",
        action="store_true",
        help="only the data set: the shared model cache's download Job brings the model",
    )
    fetch_model = sub.add_parser("fetch-model", help="one base model into the model cache")
    fetch_model.add_argument(
        "--config", type=Path, required=True, help="a CachedModel's spec (model, s3, hub)"
    )
    add_serve_arguments(sub.add_parser("serve"))
    convert = sub.add_parser("export-adapter", help="LoRA adapter -> .onnx_adapter for a base")
    convert.add_argument("--adapter-dir", type=Path, required=True)
    convert.add_argument("--base-checkpoint", type=Path, required=True)
    convert.add_argument("--base-onnx", type=Path, required=True)
    convert.add_argument("--output", type=Path, required=True)
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.stage == "serve":
        from maap_trainer.serve.launch import run_serve

        run_serve(args)
        return
    if args.stage == "export-adapter":
        from maap_trainer.export.lora_adapter import convert_adapter

        report = convert_adapter(
            args.adapter_dir, args.base_checkpoint, args.base_onnx, args.output
        )
        print(json.dumps(report))
        return
    if args.stage == "fetch-model":
        _run_fetch_model(args.config)
        return
    cfg = load_trainer_config(args.config)
    if args.stage == "fetch":
        from maap_api.results import result_json

        from maap_trainer.fetch.stage import run_fetch

        print(json.dumps(result_json(run_fetch(cfg, args.data_only))))
    elif args.stage == "publish":
        from maap_api.results import result_json

        from maap_trainer.fetch.publish import run_publish

        document = json.dumps(result_json(run_publish(cfg)))
        print(document)
        # The publish pod's status carries the URIs to the operator (status.outputs).
        write_termination_message(document)
    elif args.stage == "prepare-model":
        from maap_trainer.model_prep import prepare_base_model

        print(json.dumps({"model": prepare_base_model(cfg.model, cfg.hub, cfg.s3)}))
    elif args.stage == "train":
        from maap_trainer.train.distributed import is_worker, rank
        from maap_trainer.train.launch import run_train_stage

        metrics = run_train_stage(cfg, args.config)
        if not is_worker() or rank() == 0:
            print(json.dumps(metrics))
    elif args.stage == "export":
        from maap_trainer.export import run_export

        print(json.dumps(run_export(cfg)))


def _run_fetch_model(config: Path) -> None:
    from maap_api.cachedmodel import CachedModelSpec
    from maap_api.errors import ConfigError
    from maap_api.field_errors import format_validation_error
    from maap_api.results import result_json
    from pydantic import ValidationError

    from maap_trainer.fetch.stage import run_fetch_model

    try:
        spec = CachedModelSpec.model_validate_json(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {config}: {exc.strerror}") from None
    except ValidationError as exc:
        raise ConfigError(f"{config}: {format_validation_error(exc, CachedModelSpec)}") from None
    document = json.dumps(result_json(run_fetch_model(spec)))
    print(document)
    # The download Job's pod status carries the CachedModelInfo to the operator.
    write_termination_message(document)


def _report_to_launcher(message: str) -> None:
    """A training worker's user error goes back to the launcher, which exits 2 with it."""
    from maap_trainer.train.distributed import WORKER_ERROR_ENV

    target = os.environ.get(WORKER_ERROR_ENV)
    if target:
        with contextlib.suppress(OSError):
            Path(target).write_text(message, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # httpx logs every request URL whole, a signed link's query included; ours log them
    # without it (maap_api.sources.shown_location).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except UserError as exc:
        message = str(exc)
        print(f"error: {message}", file=sys.stderr)
        write_termination_message(message)
        _report_to_launcher(message)
        return EXIT_USER_ERROR
    except TrainingPreempted as exc:
        from maap_trainer.train.preemption import EXIT_PREEMPTED

        print(f"maap: {exc}", file=sys.stderr)
        write_termination_message(str(exc))
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        traceback.print_exc()
        write_termination_message(f"{args.stage} failed: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
