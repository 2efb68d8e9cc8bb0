"""The OpenAI-compatible server over a real SmolLM2 int4 export, called over HTTP.

The `openai` client is the peer for the happy paths; raw httpx requests cover every bad
input, auth, 429, metrics and shutdown.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.export_fixtures import ExportRun
from tests.serving import Server, running_server

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Name three primary colors.",
    "What is a volcano?",
    "How do birds fly?",
    "What is 2 plus 2?",
]


@pytest.fixture(scope="module")
def server(int4_export: ExportRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("server")
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    with running_server(
        int4_export.onnx, work / "serve.log",
        "--model-name", "smol", "--auth-token-file", str(token_file),
        "--max-batch-size", "4", "--max-queue", "16", "--max-tokens-limit", "256",
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key=TOKEN, max_retries=0, timeout=120)


def ask(client: openai.OpenAI, question: str, max_tokens: int = 24, **extra) -> str:
    reply = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens, temperature=0, **extra,
    )  # fmt: skip
    return reply.choices[0].message.content or ""


# -- the OpenAI client as a peer --------------------------------------------------------


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["smol"]


def test_chat_completion_with_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smol", messages=[{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0,
    )  # fmt: skip
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "smol"
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    question = "Why is the sky blue?"
    expected = ask(client, question, max_tokens=32)
    stream = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": question}], max_tokens=32,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == expected and len(pieces) > 3
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens <= 32 and usage.prompt_tokens > 5


def test_text_completion_streaming_and_not(client: openai.OpenAI) -> None:
    prompt = "The three largest planets of the solar system are"
    reply = client.completions.create(model="smol", prompt=prompt, max_tokens=12, temperature=0)
    assert reply.object == "text_completion"
    text = reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert reply.choices[0].finish_reason == "length"
    streamed = client.completions.create(
        model="smol", prompt=prompt, max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text


def test_stop_sequence_cuts_before_it(client: openai.OpenAI) -> None:
    full = ask(client, "Why is the sky blue?", max_tokens=40)
    words = full.split()
    stop = words[len(words) // 2]
    expected = full[: full.index(stop)]
    reply = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=40, temperature=0, stop=[stop],
    )  # fmt: skip
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=40, temperature=0, stop=stop, stream=True,
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == expected, "a stop sequence split over tokens is never streamed"


def test_sampling_parameters_and_seed(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=24, temperature=1.2, top_p=0.95, seed=seed,
            extra_body={"top_k": 40},
        )  # fmt: skip
        return reply.choices[0].message.content or ""

    assert sample(7) == sample(7), "the same seed gives the same text"
    assert len({sample(seed) for seed in (1, 2, 3, 4)}) > 1, "sampling samples"


def test_max_tokens_and_min_tokens_are_honoured(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="smol", prompt="Count: one, two, three,", max_tokens=5, temperature=0
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"
    # The base model answers this in a few tokens; min_tokens keeps it from ending early.
    for extra in ({}, {"seed": 3, "temperature": 0.7}):  # the engine, and a seeded generator
        long = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=40, extra_body={"min_tokens": 40}, **{"temperature": 0, **extra},
        )  # fmt: skip
        assert long.usage is not None and long.usage.completion_tokens == 40, extra


def test_concurrent_clients_are_batched_and_get_their_own_answers(
    client: openai.OpenAI, server: Server
) -> None:
    sequential = {q: ask(client, q) for q in QUESTIONS}
    started = time.monotonic()
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        answers = pool.map(lambda q: ask(client, q), QUESTIONS)
        concurrent = dict(zip(QUESTIONS, answers, strict=True))
    elapsed = time.monotonic() - started
    assert concurrent == sequential, "batching must not mix up or change greedy answers"
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'maap_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics
    assert "maap_queue_depth 0.0" in metrics
    assert elapsed < 120


# -- raw HTTP: auth, bad input, limits --------------------------------------------------


def test_probes_and_metrics_are_open_the_api_needs_the_token(server: Server) -> None:
    assert httpx.get(f"{server.base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.base}/readyz").json() == {"status": "ready"}
    assert "maap_time_to_first_token_seconds_bucket" in httpx.get(f"{server.base}/metrics").text
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = httpx.get(f"{server.api}/models", headers=headers)
        assert response.status_code == 401, headers
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["message"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.api}/models", headers=AUTH).status_code == 200


def test_every_bad_request_gets_an_openai_error_naming_the_field(server: Server) -> None:
    user = [{"role": "user", "content": "hi"}]
    chat, completions = f"{server.api}/chat/completions", f"{server.api}/completions"
    cases = [
        (chat, {"messages": []}, 400, "messages"),
        (chat, {}, 400, "messages"),
        (chat, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        (chat, {"messages": [{"role": "user"}]}, 400, "messages.0.content"),
        (chat, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
         "messages.0.content"),
        (chat, {"messages": user, "max_tokens": 0}, 400, "max_tokens"),
        (chat, {"messages": user, "max_tokens": 257}, 400, "max_tokens"),
        (chat, {"messages": user, "max_completion_tokens": 10_000}, 400, "max_tokens"),
        (chat, {"messages": user, "temperature": 2.5}, 400, "temperature"),
        (chat, {"messages": user, "top_p": 0}, 400, "top_p"),
        (chat, {"messages": user, "top_k": 0}, 400, "top_k"),
        (chat, {"messages": user, "seed": -1}, 400, "seed"),
        (chat, {"messages": user, "max_tokens": 5, "min_tokens": 6}, 400, "min_tokens"),
        (chat, {"messages": user, "min_tokens": -1}, 400, "min_tokens"),
        (chat, {"messages": user, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        (chat, {"messages": user, "stop": [""]}, 400, "stop"),
        (chat, {"messages": user, "n": 9}, 400, "n"),
        (chat, {"messages": user, "top_logprobs": 21, "logprobs": True}, 400, "top_logprobs"),
        (chat, {"messages": user, "top_logprobs": 2}, 400, "top_logprobs"),
        (chat, {"messages": user, "tools": [{"type": "function"}]}, 400, "tools.0.function"),
        (chat, {"messages": user, "tools": [{"type": "function", "function": {"name": "a b"}}]},
         400, "tools.0.function.name"),
        (chat, {"messages": user, "tool_choice": "required"}, 400, "tool_choice"),
        (chat, {"messages": user, "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400,
         "tool_choice"),
        (chat, {"messages": user, "functions": [{"name": "f"}]}, 400, "functions"),
        (chat, {"messages": user, "presence_penalty": 2.5}, 400, "presence_penalty"),
        (chat, {"messages": user, "repetition_penalty": 0}, 400, "repetition_penalty"),
        (chat, {"messages": user, "response_format": {"type": "xml"}}, 400,
         "response_format.type"),
        (chat, {"messages": user, "response_format": {"type": "json_schema"}}, 400,
         "response_format"),
        (chat, {"messages": user, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}}},
         400, "response_format.json_schema.schema"),
        (chat, {"messages": [{"role": "tool", "tool_call_id": "c"}]}, 400, "messages.0.content"),
        (chat, {"messages": user, "stream": "yes please"}, 400, "stream"),
        (chat, {"model": "gpt-4", "messages": user}, 404, "model"),
        (chat, {"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 8},
         400, "messages"),
        (completions, {"prompt": ""}, 400, "prompt"),
        (completions, {"prompt": ["a", "b"]}, 400, "prompt"),
        (completions, {"prompt": [1, 2, 3]}, 400, "prompt"),
        (completions, {"prompt": "x", "echo": True}, 400, "echo"),
        (completions, {"prompt": "x", "best_of": 3}, 400, "best_of"),
        (completions, {"prompt": "x", "logprobs": 6}, 400, "logprobs"),
        (completions, {"max_tokens": 3}, 400, "prompt"),
        (completions, {"prompt": "word " * 8190, "max_tokens": 16}, 400, "prompt"),
    ]  # fmt: skip
    for url, body, status, param in cases:
        response = httpx.post(url, json=body, headers=AUTH, timeout=60)
        assert response.status_code == status, (body, response.text[:300])
        error = response.json()["error"]
        assert error["param"] == param, (body, error)
        assert error["type"] == "invalid_request_error" and error["message"], error
        if param != "model":
            assert error["message"].startswith(param.split(".")[0]), error["message"]
    garbled = httpx.post(chat, content=b"{not json", headers={**AUTH,
                         "Content-Type": "application/json"})  # fmt: skip
    assert garbled.status_code == 400
    assert "not valid JSON" in garbled.json()["error"]["message"]


def test_context_errors_say_how_long_the_prompt_is(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 8}
    error = httpx.post(f"{server.api}/chat/completions", json=body, headers=AUTH).json()["error"]
    assert error["code"] == "context_length_exceeded"
    # Served at the default 4096 of the model's 8192: the message says both, and the fix.
    assert "context (prompt plus answer) is 4096" in error["message"], error["message"]
    assert "serving.maxContextLength" in error["message"] and "8192" in error["message"]


def test_the_context_length_sizes_the_kv_cache_and_what_requests_may_ask(
    int4_export: ExportRun, tmp_path: Path
) -> None:
    """The engine allocates every request's KV cache for the served context up front: the
    model's whole 8192 tokens cost ~360 MiB a request for this 135M model."""

    def peak_rss_mib(context: int) -> float:
        flags = ("--max-context-length", str(context), "--max-tokens-limit", str(context),
                 "--max-batch-size", "4")  # fmt: skip
        with running_server(int4_export.onnx, tmp_path / f"serve-{context}.log", *flags) as srv:
            url = f"{srv.api}/chat/completions"
            body = {"messages": [{"role": "user", "content": "Name a colour."}],
                    "max_tokens": 8, "temperature": 0}  # fmt: skip
            with ThreadPoolExecutor(4) as pool:
                replies = list(
                    pool.map(lambda _: httpx.post(url, json=body, timeout=120), range(4))
                )
            assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
            too_long = httpx.post(url, json={**body, "max_tokens": context}, timeout=60)
            status = Path(f"/proc/{srv.process.pid}/status").read_text()
            peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
        assert f"context {context} tokens a request" in srv.log_text()
        error = too_long.json()["error"]
        assert too_long.status_code == 400 and error["code"] == "context_length_exceeded"
        assert f"this server's context is {context} tokens" in error["message"], error
        return peak

    small, whole = peak_rss_mib(256), peak_rss_mib(8192)
    # Four requests at 8192 tokens hold ~1.4 GiB more KV cache than at 256.
    assert whole - small > 800, (small, whole)


# -- capacity and shutdown: servers of their own ----------------------------------------


def _stream_lines(response: httpx.Response) -> Iterator[dict | str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield data if data == "[DONE]" else json.loads(data)


def test_full_queue_answers_429_and_a_dropped_stream_frees_its_slot(
    int4_export: ExportRun,
    tmp_path: Path,
) -> None:
    # Long enough that it is still generating when the second request comes, on a fast
    # machine too (200 tokens were once all generated before it: a 200, not a 429).
    long = {"prompt": "Once upon a time", "max_tokens": 1000, "min_tokens": 1000,
            "temperature": 0, "stream": True}  # fmt: skip
    with (
        running_server(int4_export.onnx, tmp_path / "serve.log",
                       "--max-batch-size", "1", "--max-queue", "0") as srv,
        httpx.Client(timeout=60) as http,
    ):  # fmt: skip
        with http.stream("POST", f"{srv.api}/completions", json=long) as first:
            assert first.status_code == 200
            head = next(_stream_lines(first))  # generating now: the only slot is taken
            refused = http.post(f"{srv.api}/completions", json={"prompt": "Hi", "max_tokens": 2})
            assert refused.status_code == 429, (head, refused.status_code, refused.text)
            error = refused.json()["error"]
            assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
        # The client hung up mid-stream: the server cancels that generation.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            again = http.post(f"{srv.api}/completions", json={"prompt": "Hi", "max_tokens": 2})
            if again.status_code == 200:
                break
            time.sleep(0.2)
        assert again.status_code == 200, again.text
        metrics = http.get(f"{srv.base}/metrics").text
        refusals = re.search(
            r'maap_request_errors_total\{endpoint="/v1/completions",status="429"\} (\S+)', metrics
        )
        assert refusals and float(refusals.group(1)) >= 1


def test_sigterm_finishes_the_running_stream_then_exits(
    int4_export: ExportRun,
    tmp_path: Path,
) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 96, "min_tokens": 96, "temperature": 0,
            "stream": True}  # fmt: skip
    with running_server(int4_export.onnx, tmp_path / "serve.log") as srv:
        events: list[dict | str] = []
        with httpx.stream("POST", f"{srv.api}/completions", json=body, timeout=60) as response:
            lines = _stream_lines(response)
            events.append(next(lines))
            srv.process.send_signal(signal.SIGTERM)
            refused = threading.Event()

            def try_new_request() -> None:
                try:
                    r = httpx.post(f"{srv.api}/completions", json={"prompt": "x"}, timeout=5)
                except httpx.HTTPError:
                    refused.set()  # the listening socket is closed
                    return
                if r.status_code == 503:
                    refused.set()

            time.sleep(0.3)
            try_new_request()
            events.extend(lines)
        assert refused.is_set(), "no new work once shutting down"
        assert events[-1] == "[DONE]"
        finals = [e for e in events[:-1] if isinstance(e, dict) and e["choices"]]
        assert finals[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert finals[-1]["choices"][0]["finish_reason"] == "length"
        assert sum(bool(e["choices"][0]["text"]) for e in finals) > 40, "it ran on after SIGTERM"
        assert srv.process.wait(timeout=60) == 0
        assert "shutting down" in srv.log_text()


def test_readyz_only_once_loaded_and_not_while_draining(
    int4_export: ExportRun,
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient
    from maap_trainer.serve.server import ServerSettings, create_app

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "genai_config.json").write_text('{"model": {}}')
    with TestClient(create_app(ServerSettings(broken, "x"))) as http:
        deadline = time.monotonic() + 30
        while http.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert http.get("/healthz").status_code == 200
        hello = {"messages": [{"role": "user", "content": "hi"}]}
        chat = http.post("/v1/chat/completions", json=hello)
        assert chat.status_code == 503 and chat.json()["error"]["message"]

    app = create_app(ServerSettings(int4_export.onnx, "smol"))
    with TestClient(app) as http:
        deadline = time.monotonic() + 60
        while (probe := http.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            assert probe.json()["status"] == "loading"
            time.sleep(0.1)
        assert probe.json() == {"status": "ready"}
        app.state.server.start_draining()
        assert http.get("/readyz").json() == {"status": "draining"}
        refused = http.post("/v1/completions", json={"prompt": "hi"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_shutting_down"
