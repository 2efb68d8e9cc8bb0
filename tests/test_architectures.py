"""Every architecture we claim, end to end: a tiny random checkpoint of each is trained (a few
LoRA steps, the real train stage), merged, exported to ONNX in fp32 and int4 (the real export
stage and its parity gate) and served (the real server, over HTTP).

The fp32 gate demands PyTorch's greedy answers token for token, and the fp32 server's greedy
answer must be PyTorch's too, for a prompt longer than the tiny sliding windows: a model the
builder or the runtime gets wrong (a window ignored, a cache too short, the wrong RoPE) fails
here. int4 is held to the gate's agreement and perplexity thresholds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from maap_trainer.kv_window import kv_window

from tests.conftest import PIRATE_DATA
from tests.serving import TEST_PARITY, running_server
from tests.tiny_models import ARCHITECTURES, WINDOW, build_checkpoint, train_tokenizer
from tests.trainer_helpers import run_stage, short_chat_rows, write_jsonl

pytestmark = pytest.mark.slow

STEPS = 4
# Longer than WINDOW and than Phi-3 128k's tiny original context (64): the served answer is
# decoded past both.
LONG_QUESTION = (
    "The captain asked the crew to tell him, in plain words and without any delay, why the "
    "sea is salty, why the sky is blue, and how many legs a spider has on a calm day?"
)
ANSWER_TOKENS = 24
# A served context shorter than the window, long enough for "Hi" (61 tokens) and 4 more.
SHORT_CONTEXT = 80
# A random model's next-token margins are thin, so int4 rounding flips more of them than in
# a trained model: these exports agreed on 48-100% of tokens, perplexity -3%..+12%; the
# broken exports met on the way (a graph with the wrong layer as LM head) agreed on 0-16%.
INT4_PARITY = {**TEST_PARITY, "minTokenAgreement": 0.3, "maxPerplexityIncrease": 0.3}


@pytest.fixture(scope="module")
def tokenizer_dir(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = []
    for line in (PIRATE_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    return train_tokenizer(base_model_dir, texts, tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("tiny-data") / "chat.jsonl", short_chat_rows(16))


def job_config(output_dir: Path, base: Path, data: Path, export: dict[str, Any]) -> Any:
    from maap_api.stage_config import TrainerConfig

    return TrainerConfig.model_validate(
        {
            "jobName": output_dir.name,
            "model": {"path": str(base)},
            "dataset": {"path": str(data), "evalFraction": 0.25},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
            "training": {"maxSteps": STEPS, "batchSize": 4, "maxSeqLength": 96,
                         "learningRate": 2e-3, "loggingSteps": 1},
            "export": export,
            "serving": {"enabled": False},
            "outputDir": str(output_dir),
        }
    )  # fmt: skip


@dataclass
class Timings:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - started, 1)


def train(job: Any, timings: Timings) -> Path:
    output = Path(job.output_dir)
    output.mkdir(parents=True)
    config = output / "config.json"
    config.write_text(json.dumps(job.to_json_dict()), encoding="utf-8")
    with timings.stage("train"):
        done = run_stage(config, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == STEPS
    assert (output / "adapter" / "adapter_config.json").is_file()
    return output / "merged"


def export(job: Any, merged: Path, timings: Timings) -> dict[str, Any]:
    from maap_trainer.export import run_export

    output = Path(job.output_dir)
    output.mkdir(exist_ok=True)
    if not (output / "merged").exists():  # the int4 job exports the fp32 job's merge
        (output / "merged").symlink_to(merged)
    with timings.stage(f"export {job.export.precision}"):
        return run_export(job)


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def test_the_window_lies_between_the_gates_generators_and_the_served_prompt(
    tokenizer_dir: Path,
) -> None:
    """What makes the matrix exercise both sides of every sliding window."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    longest = max(len(chat_ids(tokenizer, p)) for p in TEST_PARITY["prompts"])
    assert longest + TEST_PARITY["maxNewTokens"] < WINDOW < len(chat_ids(tokenizer, LONG_QUESTION))


def pytorch_tokens(merged: Path, question: str, tokens: int) -> list[int]:
    """PyTorch's greedy answer, in token ids, up to (not including) the end of the turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    ids = torch.tensor([chat_ids(tokenizer, question)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             do_sample=False, top_p=None, top_k=None, temperature=None,
                             pad_token_id=tokenizer.eos_token_id,
                             eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    answer = out[0, ids.shape[1] :].tolist()
    end = tokenizer.eos_token_id
    return answer[: answer.index(end)] if end in answer else answer


def as_served(onnx: Path, ids: list[int]) -> str:
    """Token ids as the server writes them: through ONNX Runtime GenAI's streaming
    detokenizer, which drops the invalid UTF-8 a random model's byte tokens make (where
    transformers' decode writes U+FFFD)."""
    import onnxruntime_genai as og

    stream = og.Tokenizer(og.Model(str(onnx))).create_stream()
    return "".join(stream.decode(token) for token in ids)


def served_answer(onnx: Path, log: Path, question: str, tokens: int, *flags: str) -> dict[str, Any]:
    """A greedy chat answer from the real server, checked for the OpenAI shape."""
    request = {"messages": [{"role": "user", "content": question}], "max_tokens": tokens,
               "temperature": 0}  # fmt: skip
    with running_server(onnx, log, *flags) as server:
        url = f"{server.api}/chat/completions"
        reply = httpx.post(url, json=request, timeout=120)
        # logprobs run on a generator of the request's own (a KV cache sized for it, at
        # least the window), not the engine: the same greedy answer either way.
        generator_reply = httpx.post(url, json={**request, "logprobs": True}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert generator_reply.status_code == 200, generator_reply.text
    body = reply.json()
    by_generator = generator_reply.json()["choices"][0]
    assert by_generator["message"]["content"] == body["choices"][0]["message"]["content"]
    assert len(by_generator["logprobs"]["content"]) == body["usage"]["completion_tokens"]
    choice, usage = body["choices"][0], body["usage"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 < usage["completion_tokens"] <= tokens
    return body


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_train_merge_export_gate_and_serve(
    name: str, tokenizer_dir: Path, chat_data: Path, tmp_path: Path
) -> None:
    architecture = ARCHITECTURES[name]
    timings = Timings()
    with timings.stage("build"):
        base = build_checkpoint(architecture, tokenizer_dir, tmp_path / "base")

    fp32_job = job_config(tmp_path / "fp32", base, chat_data,
                          {"precision": "fp32", "parity": TEST_PARITY})  # fmt: skip
    merged = train(fp32_job, timings)
    merged_config = json.loads((merged / "config.json").read_text())
    assert merged_config["architectures"] == [architecture.model_class]

    fp32 = export(fp32_job, merged, timings)
    parity = fp32["parity"]
    assert parity["passed"] is True, parity
    assert parity["exactMatches"] == parity["prompts"] == len(TEST_PARITY["prompts"])
    assert parity["tokenizerMatches"] is True
    assert abs(parity["perplexity"]["relativeIncrease"]) < 1e-3, parity["perplexity"]

    int4_job = job_config(tmp_path / "int4", base, chat_data,
                          {"precision": "int4", "parity": INT4_PARITY})  # fmt: skip
    int4 = export(int4_job, merged, timings)
    assert int4["parity"]["passed"] is True, int4["parity"]
    assert int4["sizeBytes"] < fp32["sizeBytes"]

    # The fp32 server's greedy answer is PyTorch's, token for token, decoded past the window.
    reference = pytorch_tokens(merged, LONG_QUESTION, ANSWER_TOKENS)
    fp32_onnx = tmp_path / "fp32" / "onnx"
    with timings.stage("serve fp32"):
        served = served_answer(fp32_onnx, tmp_path / "fp32.log", LONG_QUESTION, ANSWER_TOKENS)
    assert served["usage"]["prompt_tokens"] > WINDOW
    assert served["usage"]["completion_tokens"] == len(reference)
    assert served["choices"][0]["message"]["content"] == as_served(fp32_onnx, reference)
    assert bool(kv_window(fp32_onnx)) == ("sliding_window" in architecture.settings)
    if kv_window(fp32_onnx):
        # A served context shorter than the window (serving.maxContextLength) still needs
        # a window-long cache: the engine failed on every request without one.
        short = served_answer(fp32_onnx, tmp_path / "short.log", "Hi", 4,
                              "--max-context-length", str(SHORT_CONTEXT))  # fmt: skip
        assert short["usage"]["prompt_tokens"] + 4 <= SHORT_CONTEXT < WINDOW
    with timings.stage("serve int4"):
        int4_onnx = tmp_path / "int4" / "onnx"
        served_answer(int4_onnx, tmp_path / "int4.log", LONG_QUESTION, ANSWER_TOKENS)
    figures = {k: int4["parity"][k] for k in ("tokenAgreement", "prefixAgreement")}
    figures["perplexityIncrease"] = int4["parity"]["perplexity"]["relativeIncrease"]
    total = sum(timings.seconds.values())
    print(f"{name}: {timings.seconds}, total {total:.1f} s; int4 {figures}")
