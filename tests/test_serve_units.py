"""Server pieces without a model: stop sequences, limits, request checks, auth, settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from maap_api.errors import ConfigError
from maap_trainer.serve.auth import check_bearer, load_token
from maap_trainer.serve.launch import add_serve_arguments, parse_adapters, serving_config
from maap_trainer.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest
from maap_trainer.serve.request_limits import sampling_options
from maap_trainer.serve.textstream import StopMatcher


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.flush(), matcher.stopped


@pytest.mark.parametrize(
    ("stops", "pieces", "text", "stopped"),
    [
        ([], ["Hello", " world"], "Hello world", False),
        (["END"], ["Hello", " E", "N", "D more"], "Hello ", True),
        (["END"], ["Hello E", "NOUGH"], "Hello ENOUGH", False),
        (["\n\n", "User:"], ["a\n", "\nb"], "a", True),
        (["ab", "b"], ["xa", "b"], "x", True),
        (["stop"], ["st"], "st", False),
    ],
)
def test_stop_matcher_holds_back_only_what_could_become_a_stop(
    stops: list[str], pieces: list[str], text: str, stopped: bool
) -> None:
    assert feed_all(stops, pieces) == (text, stopped)


def test_stop_matcher_never_emits_a_partial_stop_before_it_completes() -> None:
    matcher = StopMatcher(["<end>"])
    assert matcher.feed("answer <e") == "answer "
    assert matcher.feed("n") == ""
    assert matcher.feed("d>") == "" and matcher.stopped


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_sampling_options_limits() -> None:
    opts = sampling_options(chat(temperature=0, stop="x"), None, 10, 100, 50, "messages")
    assert opts.max_tokens == 50 and opts.greedy and opts.stop == ("x",)
    assert sampling_options(chat(), None, 90, 100, 50, "messages").max_tokens == 10
    with pytest.raises(APIError) as too_many:
        sampling_options(chat(), 60, 10, 100, 50, "messages")
    assert too_many.value.param == "max_tokens" and too_many.value.status == 400
    with pytest.raises(APIError) as too_long:
        sampling_options(chat(), 20, 90, 100, 50, "messages")
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.message == (
        "messages: this server's context is 100 tokens; the messages take 90, which leaves 10 "
        "for the answer, and max_tokens asks for 20: ask for at most 10, or shorten the messages"
    )


def test_a_prompt_over_the_context_says_what_to_do_not_a_negative_max_tokens() -> None:
    with pytest.raises(APIError) as full:
        sampling_options(chat(), None, 5000, 4096, 1024, "prompt", model_context_length=8192)
    message = full.value.message
    assert full.value.param == "prompt" and "-" not in message, message
    assert message.startswith("prompt: the prompt take 5000 tokens and this server's context")
    assert "shorten them" in message and "serving.maxContextLength" in message, message
    assert "the model takes 8192" in message
    with pytest.raises(APIError) as at_the_model_limit:
        sampling_options(chat(), None, 9000, 8192, 1024, "messages", model_context_length=8192)
    assert "maxContextLength" not in at_the_model_limit.value.message, "it cannot be raised"


def test_requests_refuse_what_they_cannot_honour() -> None:
    refused = [
        ({"function_call": "auto"}, "function_call"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
    ]
    for fields, param in refused:
        with pytest.raises(APIError) as caught:
            chat(**fields)
        assert caught.value.param == param
    assert chat(user="someone", metadata={"a": 1}).n == 1, "unknown fields are ignored"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    message = chat(messages=[{"role": "developer", "content": parts}]).messages[0]
    assert message.as_template_message() == {"role": "system", "content": "ab"}
    assert CompletionRequest.model_validate({"prompt": ["one"]}).text == "one"


def test_bearer_check() -> None:
    assert check_bearer("Bearer tok", "tok") is None
    assert check_bearer("bearer  tok ", "tok") is None
    assert "missing" in (check_bearer(None, "tok") or "")
    assert "Bearer" in (check_bearer("tok", "tok") or "")
    assert check_bearer("Bearer other", "tok") == "invalid bearer token"


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_token(None, None) is None
    monkeypatch.setenv("MAAP_TEST_TOKEN", " abc \n")
    assert load_token("MAAP_TEST_TOKEN", None) == "abc"
    with pytest.raises(ConfigError, match="--auth-token-env: the environment variable NOPE"):
        load_token("NOPE", None)
    (tmp_path / "t").write_text("xyz\n")
    assert load_token(None, tmp_path / "t") == "xyz"
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_token(None, tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(None, tmp_path / "missing")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(["--model-dir", "/m", *argv])


def test_flags_override_the_job_config(tmp_path: Path) -> None:
    import json

    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "jobName": "j", "model": {"preset": "smollm2-135m-instruct"},
        "dataset": {"path": "d.jsonl"}, "outputDir": "/o",
        "serving": {"port": 9000, "maxBatchSize": 2, "maxQueue": 5},
    }))  # fmt: skip
    cfg = serving_config(parse("--config", str(config), "--max-queue", "7"))
    assert (cfg.port, cfg.max_batch_size, cfg.max_queue) == (9000, 2, 7)
    assert serving_config(parse()).port == 8000
    with pytest.raises(ConfigError, match="--max-batch-size: Input should be greater"):
        serving_config(parse("--max-batch-size", "0"))
    with pytest.raises(ConfigError, match="--auth-token-file: set at most one"):
        serving_config(parse("--auth-token-env", "A", "--auth-token-file", "/f"))


def test_adapter_flags() -> None:
    assert parse_adapters(["a=/x.onnx_adapter", "b=/y"]) == {
        "a": Path("/x.onnx_adapter"), "b": Path("/y")}  # fmt: skip
    for bad in (["nameonly"], ["=path"], ["a=/x", "a=/y"]):
        with pytest.raises(ConfigError, match="--adapter"):
            parse_adapters(bad)


def test_openai_penalties_map_onto_the_engines_repetition_penalty() -> None:
    import math

    assert chat().engine_repetition_penalty is None
    assert math.isclose(chat(presence_penalty=1.0).engine_repetition_penalty, math.exp(0.5))
    both = chat(presence_penalty=0.5, frequency_penalty=0.5).engine_repetition_penalty
    assert math.isclose(both, math.exp(0.5))
    assert chat(frequency_penalty=-2).engine_repetition_penalty < 1, "negative: repeat more"
    assert chat(presence_penalty=2, repetition_penalty=1.1).engine_repetition_penalty == 1.1
    opts = sampling_options(chat(repetition_penalty=1.3, logprobs=True, top_logprobs=2), None,
                            10, 100, 50, "messages")  # fmt: skip
    assert opts.repetition_penalty == 1.3 and opts.logprobs == 2
    assert sampling_options(chat(), None, 10, 100, 50, "messages").logprobs is None


def test_tool_grammar_and_calls_round_trip() -> None:
    from maap_trainer.serve.tools import CallStream, ToolSpec, parse_calls, tool_use

    spec = ToolSpec.model_validate({"type": "function", "function": {"name": "f",
                                    "parameters": {"type": "object"}}})  # fmt: skip
    use = tool_use([spec], "required", None)
    assert use is not None and use.mode == "required" and use.parallel
    assert use.grammar().startswith("start: calls\n") and "%json" in use.grammar()
    assert tool_use([spec], "none", None) is None
    auto = tool_use([spec], None, False)
    assert auto is not None and "TEXT" in auto.grammar() and not auto.parallel
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n<tool_call>{"name"'
    calls = parse_calls(text)
    assert calls is not None and len(calls) == 1, "the cut-off second call is not a call"
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert parse_calls("Paris is the capital.") is None
    stream = CallStream()
    assert stream.feed("<tool") == ("", []) and stream.feed("_call>{") == ("", [])
    out, done = stream.feed('"name": "f", "arguments": {}}</tool_call>')
    assert out == "" and [c["function"]["name"] for c in done] == ["f"]
    text_stream = CallStream()
    assert text_stream.feed("<b>") == ("<b>", []) and text_stream.feed(" hi") == (" hi", [])
