"""Structured outputs, tools, log probabilities, n and the repetition penalty, through the
`openai` client against a real SmolLM2 int4 export: what llama.cpp's and vLLM's servers
give an application, checked on every answer, streaming and not."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from tests.export_fixtures import ExportRun
from tests.serving import Server, running_server

pytestmark = pytest.mark.slow

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {
            "type": "array",
            "items": {"type": "string", "maxLength": 16},
            "maxItems": 3,
        },
        "role": {"enum": ["engineer", "teacher", "pilot"]},
    },
    "required": ["name", "age", "languages", "role"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 32},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 32}},
            "required": ["timezone"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.fixture(scope="module")
def server(int4_export: ExportRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("features") / "serve.log"
    with running_server(int4_export.onnx, log, "--model-name", "smol") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=300)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def collect(stream: Any) -> tuple[dict[int, str], dict[int, list[dict[str, str]]], dict]:
    """Streamed choices: text per index, tool calls per index (arguments joined), reasons."""
    texts: dict[int, str] = {}
    calls: dict[int, dict[int, dict[str, str]]] = {}
    reasons: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            texts[choice.index] = texts.get(choice.index, "") + (delta.content or "")
            for call in delta.tool_calls or []:
                slot = calls.setdefault(choice.index, {}).setdefault(
                    call.index, {"name": "", "arguments": ""}
                )
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    ordered = {i: [c[k] for k in sorted(c)] for i, c in calls.items()}
    return texts, ordered, reasons


# -- structured outputs ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_parse_and_validate_every_time(
    client: openai.OpenAI, stream: bool
) -> None:
    prompts = [
        "Describe a person who flies planes.",
        "Invent a teacher from Peru.",
        "Who are you?",
        "Write a poem about the sea.",
    ]
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    for i, prompt in enumerate(prompts):
        sampled = {"temperature": 0.9, "seed": 7 + i} if i % 2 else {"temperature": 0}
        reply = client.chat.completions.create(
            model="smol",
            messages=user(prompt),
            max_tokens=160,
            stream=stream,
            response_format=response_format,
            **sampled,
        )
        if stream:
            texts, _, reasons = collect(reply)
            text, reason = texts[0], reasons[0]
        else:
            text, reason = reply.choices[0].message.content or "", reply.choices[0].finish_reason
        assert reason == "stop", (prompt, text)
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_is_an_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smol",
        messages=user("What is the capital of France? Answer with a JSON object with a key city."),
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


# -- tools -------------------------------------------------------------------------------


def check_calls(calls: list[dict[str, str]], names: set[str]) -> None:
    assert calls, "no tool call"
    for call in calls:
        assert call["name"] in names, call
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_required_and_named_tool_calls_have_valid_arguments(client: openai.OpenAI) -> None:
    for choice, names in [
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
    ]:
        reply = client.chat.completions.create(
            model="smol",
            messages=user("What is the weather in Paris right now?"),
            tools=[WEATHER, TIME],
            tool_choice=choice,
            max_tokens=120,
            temperature=0,
        )
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
        assert all(c.id.startswith("call_") and c.type == "function" for c in message.tool_calls)
        check_calls([c.function.model_dump() for c in message.tool_calls], names)


def test_streamed_tool_calls_assemble_to_valid_calls(client: openai.OpenAI) -> None:
    def streamed(parallel: bool) -> tuple[dict, dict, dict]:
        return collect(
            client.chat.completions.create(
                model="smol", messages=user("Weather in Oslo and Lima, please."),
                tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=parallel,
                max_tokens=200, temperature=0, stream=True,
            )
        )  # fmt: skip

    texts, calls, reasons = streamed(parallel=False)
    assert texts[0] == "" and reasons[0] == "tool_calls" and len(calls[0]) == 1
    check_calls(calls[0], {"get_weather", "get_time"})
    # Parallel calls: each goes out whole as it closes. A 135M model may go on calling
    # until max_tokens; every call it finished is still a valid one.
    texts, calls, reasons = streamed(parallel=True)
    assert texts[0] == "" and reasons[0] in ("tool_calls", "length")
    check_calls(calls[0], {"get_weather", "get_time"})


def test_auto_answers_text_or_valid_calls_and_takes_the_results_back(
    client: openai.OpenAI,
) -> None:
    messages: list[dict[str, Any]] = user("What is the weather in Rome in celsius?")
    reply = client.chat.completions.create(
        model="smol", messages=messages, tools=[WEATHER], max_tokens=120, temperature=0
    )
    message = reply.choices[0].message
    if message.tool_calls:
        check_calls([c.function.model_dump() for c in message.tool_calls], {"get_weather"})
    else:
        assert message.content and "<tool_call>" not in message.content
    # A finished round trip: the call, its result (role tool), then the answer in text.
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'},
    }
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    answer = client.chat.completions.create(
        model="smol",
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=40,
        temperature=0,
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


# -- log probabilities, n, penalties -------------------------------------------------------


def test_chat_logprobs_are_those_of_the_chosen_tokens(client: openai.OpenAI) -> None:
    question = user("Name three primary colors.")
    plain = client.chat.completions.create(
        model="smol", messages=question, max_tokens=24, temperature=0
    )
    reply = client.chat.completions.create(
        model="smol",
        messages=question,
        max_tokens=24,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert choice.message.content == plain.choices[0].message.content, "same greedy answer"
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one, with the same log probability.
        assert t.top_logprobs[0].token == t.token
        assert math.isclose(t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-5)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert bytes(t.bytes or []).decode("utf-8", "replace") == t.token
    streamed = client.chat.completions.create(
        model="smol",
        messages=question,
        max_tokens=24,
        temperature=0,
        logprobs=True,
        stream=True,
    )
    tokens = [
        t
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.token for t in tokens] == [t.token for t in content]
    assert all(
        math.isclose(a.logprob, b.logprob, abs_tol=1e-5)
        for a, b in zip(tokens, content, strict=True)
    )


def test_completion_logprobs_line_up_with_the_text(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == 8
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    assert all(
        len(top) <= 2 and max(top.values()) >= chosen - 1e-5
        for top, chosen in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )


def test_n_choices_streaming_and_not(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smol",
        messages=user("Give me a name for a cat."),
        max_tokens=16,
        n=3,
        temperature=1.0,
        seed=11,
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert all(texts) and len(set(texts)) > 1, texts
    again = client.chat.completions.create(
        model="smol",
        messages=user("Give me a name for a cat."),
        max_tokens=16,
        n=3,
        temperature=1.0,
        seed=11,
    )
    assert [c.message.content for c in again.choices] == texts, "seeded: reproducible"
    assert 3 <= reply.usage.completion_tokens <= 3 * 16, "every choice's tokens, summed"
    streamed, _, reasons = collect(
        client.chat.completions.create(
            model="smol",
            messages=user("Give me a name for a cat."),
            max_tokens=16,
            n=3,
            temperature=1.0,
            seed=11,
            stream=True,
        )
    )
    assert [streamed[i] for i in range(3)] == texts and set(reasons) == {0, 1, 2}


def test_repetition_penalties_change_a_greedy_answer(client: openai.OpenAI) -> None:
    question = user("Repeat the word 'ship' twenty times.")
    plain = client.chat.completions.create(
        model="smol", messages=question, max_tokens=40, temperature=0
    )
    penalised = client.chat.completions.create(
        model="smol",
        messages=question,
        max_tokens=40,
        temperature=0,
        extra_body={"repetition_penalty": 1.8},
    )
    presence = client.chat.completions.create(
        model="smol", messages=question, max_tokens=40, temperature=0, presence_penalty=1.2
    )
    a, b = plain.choices[0].message.content, penalised.choices[0].message.content
    c = presence.choices[0].message.content
    assert a and b and c and a != b and a != c, (a, b, c)


def test_a_bad_schema_is_a_400_streaming_too(server: Server) -> None:
    import httpx

    body = {
        "messages": user("hi"),
        "stream": True,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "nope"}},
        },
    }
    response = httpx.post(f"{server.api}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format.json_schema.schema", error
    assert error["message"].startswith("response_format.json_schema.schema: not a grammar")
