"""End to end on CPU: `maap run --no-serve` on the bundled example, then serve the result.

Real model (SmolLM2-135M-Instruct), real LoRA training, real ONNX export, a real server
called over HTTP. The budget is cut (MAAP_TEST_STEPS optimizer steps) to keep it to
minutes; the persona must still show in answers to held-out questions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import EXAMPLE_MANIFEST, PIRATE_DATA, free_port
from tests.serving import in_persona, serving

pytestmark = pytest.mark.slow

STEPS = int(os.environ.get("MAAP_TEST_STEPS", "24"))


@dataclass
class TrainedRun:
    output_dir: Path
    stdout: str
    seconds: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    work = tmp_path_factory.mktemp("e2e")
    doc = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    doc["spec"]["dataset"]["path"] = str(PIRATE_DATA / "train.jsonl")
    doc["spec"]["training"]["maxSteps"] = STEPS
    manifest = work / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "maap.cli", "run", str(manifest), "--no-serve",
         "-o", str(work / "out")],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return TrainedRun(
        work / "out" / doc["metadata"]["name"], done.stdout, time.monotonic() - started
    )


def test_eval_loss_falls(trained: TrainedRun) -> None:
    metrics = json.loads((trained.output_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS
    assert metrics["evalRows"] == 32 and metrics["trainRows"] == 288
    assert metrics["evalLossAfter"] < 0.8 * metrics["evalLossBefore"], metrics
    assert 0 < metrics["trainableParameters"] < 0.05 * metrics["totalParameters"]


def test_artifacts_and_summary(trained: TrainedRun) -> None:
    out = trained.output_dir
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "merged" / "config.json").is_file()
    assert (out / "merged" / "tokenizer.json").is_file()
    onnx = out / "onnx"
    assert (onnx / "genai_config.json").is_file() and (onnx / "model.onnx").is_file()
    export = json.loads((out / "export.json").read_text())
    assert export["precision"] == "int4" and export["sizeBytes"] > 10_000_000
    assert export["parity"]["passed"] is True, export["parity"]  # the gate ran and passed
    assert not list(out.glob("*.partial")), "no half-written stage directory is left"
    for expected in ("eval loss", "time: Training", "time: Exporting ONNX (int4)", "parity"):
        assert expected in trained.stdout
    assert f"onnx: {onnx} (" in trained.stdout, "artifact paths are printed whole"


@pytest.fixture(scope="module")
def server(trained: TrainedRun) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "maap.cli", "serve", str(trained.output_dir / "onnx"),
        "--port", str(port), "--model-name", "pirate",
    ]  # fmt: skip
    with serving(command, port, trained.output_dir / "test-serve.log") as running:
        yield running.base
    assert running.process.returncode == 0, running.log_text()[-3000:]  # a clean SIGTERM exit


def heldout_questions() -> list[str]:
    rows = [json.loads(line) for line in (PIRATE_DATA / "heldout.jsonl").read_text().splitlines()]
    return [row["messages"][0]["content"] for row in rows]


def chat(base: str, question: str, **extra) -> dict:
    response = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "pirate", "messages": [{"role": "user", "content": question}],
              "max_tokens": 48, "temperature": 0, **extra},
        timeout=120,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def test_served_model_answers_held_out_prompts_in_persona(server: str) -> None:
    questions = heldout_questions()[:6]
    answers = [chat(server, q)["choices"][0]["message"]["content"] for q in questions]
    assert sum(map(in_persona, answers)) >= 5, answers


def test_non_streaming_response_shape(server: str) -> None:
    body = chat(server, "What is the capital of Italy?")
    assert body["object"] == "chat.completion" and body["model"] == "pirate"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 48
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_matches_non_streaming(server: str) -> None:
    question = "Why do stars twinkle?"
    expected = chat(server, question)["choices"][0]["message"]["content"]
    pieces, finish = [], None
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 48,
              "temperature": 0, "stream": True},
        timeout=120,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        chunk = json.loads(event.removeprefix("data: "))
        assert chunk["object"] == "chat.completion.chunk"
        delta = chunk["choices"][0]["delta"]
        pieces.append(delta.get("content", ""))
        finish = chunk["choices"][0]["finish_reason"] or finish
    assert "".join(pieces) == expected
    assert finish in ("stop", "length")


def test_openai_client_streams(server: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["pirate"]
    stream = client.chat.completions.create(
        model="pirate", messages=[{"role": "user", "content": "What is a volcano?"}],
        max_tokens=32, temperature=0, stream=True,
    )  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert in_persona(text), text


def test_bad_requests_get_openai_style_errors(server: str) -> None:
    url = f"{server}/v1/chat/completions"
    cases = [
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        (
            {"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 8},
            400,
            "messages",
        ),
    ]
    for body, status, param in cases:
        response = httpx.post(url, json=body, timeout=60)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["message"] and error["type"]


def test_base_model_does_not_have_the_persona(base_model_dir: Path) -> None:
    """The persona check above can fail: the untuned model never opens that way."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    for question in heldout_questions()[:6]:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )  # fmt: skip
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answer = tokenizer.decode(
            output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert not in_persona(answer), (question, answer)
