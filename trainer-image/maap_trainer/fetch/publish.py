"""The publish stage: copy a finished job's models to spec.output.path (an S3 prefix).

    <prefix>merged/...                 the tuned checkpoint (transformers)
    <prefix>onnx/...                   the ONNX export the server loads
    <prefix>adapter/...                the PEFT adapter
    <prefix>onnx-base/...              export.adapter: the base model with LoRA inputs
    <prefix>adapters/<job>.onnx_adapter  and this fine-tune as an ONNX Runtime adapter
    <prefix>publish.json               written last: everything above is complete

Big files go up in parallel multipart parts (boto3's upload_file). A re-run uploads again
(same keys), so a publish that died halfway is finished by the next one.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from maap_api.errors import ConfigError
from maap_api.results import ArtifactPaths, write_result
from maap_api.sources import parse_location
from maap_api.stage_config import TrainerConfig
from maap_api.transfer_results import PUBLISH_FILE, PublishResult

from maap_trainer.fetch.meter import TransferMeter
from maap_trainer.fetch.s3 import upload_files

log = logging.getLogger("maap.publish")
FIELD = "output.path"


def _files(path: Path, output_dir: Path) -> list[tuple[Path, str]]:
    """(file, key suffix) for a file or every file of a directory, relative to output_dir."""
    found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(p, p.relative_to(output_dir).as_posix()) for p in found]


def run_publish(cfg: TrainerConfig) -> PublishResult:
    output_dir = Path(cfg.output_dir)
    if cfg.output.path is None:
        log.info("output.path is not set: nothing to publish")
        result = PublishResult()
        write_result(output_dir / PUBLISH_FILE, result)
        return result
    target = parse_location(cfg.output.path)
    if target.scheme != "s3" or not target.is_prefix:
        raise ConfigError(f"{FIELD}: {cfg.output.path}: not an S3 prefix (s3://bucket/prefix/)")
    found = ArtifactPaths.found_in(output_dir, cfg.job_name)
    chosen = {
        "merged_model": found.merged_model,
        "onnx_model": found.onnx_model,
        "adapter": found.adapter,
        "onnx_base_model": found.onnx_base_model,
        "onnx_adapter": found.onnx_adapter,
    }
    present = {name: Path(path) for name, path in chosen.items() if path is not None}
    if not present:
        raise ConfigError(
            f"{FIELD}: {output_dir} holds no model to publish (no merged/, onnx/ or adapter/): "
            "the train and export stages run first"
        )
    uploads: list[tuple[Path, str]] = []
    uris: dict[str, str] = {}
    for name, path in present.items():
        relative = path.relative_to(output_dir).as_posix()
        uris[name] = f"s3://{target.bucket}/{target.key}{relative}" + ("/" if path.is_dir() else "")
        uploads += [(file, target.key + suffix) for file, suffix in _files(path, output_dir)]
    total = sum(file.stat().st_size for file, _ in uploads)
    meter = TransferMeter(f"{FIELD} {cfg.output.path}", total, verb="uploaded")
    upload_files(FIELD, cfg.s3, target.bucket, uploads, meter)
    meter.finish()
    result = PublishResult(**uris, files=len(uploads), bytes=total)
    _upload_manifest(cfg, target.bucket, target.key, result)
    write_result(output_dir / PUBLISH_FILE, result)
    return result


def _upload_manifest(cfg: TrainerConfig, bucket: str, prefix: str, result: PublishResult) -> None:
    """publish.json under the prefix, last: a reader that finds it finds every file."""
    from maap_api.results import result_json

    with tempfile.TemporaryDirectory(prefix="maap-publish-") as tmp:
        manifest = Path(tmp) / PUBLISH_FILE
        manifest.write_text(json.dumps(result_json(result), indent=2), encoding="utf-8")
        meter = TransferMeter(f"{FIELD} {cfg.output.path}", verb="uploaded")
        upload_files(FIELD, cfg.s3, bucket, [(manifest, prefix + PUBLISH_FILE)], meter)
