"""The OpenAI wire format: request bodies, error bodies, response and SSE chunk shapes.

Parameters that change what a client gets back and that this server cannot honour (echo,
suffix, logit_bias, the legacy functions) are refused with a 400 naming them rather than
silently ignored; other unknown fields (user, metadata, ...) are accepted and ignored, as
OpenAI clients send them freely.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from maap_trainer.serve.errors import APIError, error_body
from maap_trainer.serve.structured import ResponseFormat
from maap_trainer.serve.tools import ToolCall, ToolChoice, ToolSpec, call_text, result_text

__all__ = ["APIError", "error_body"]  # re-exported: the handlers' one import for the wire


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # After role and tool_calls, so its check sees them; validated when absent too.
    content: str | list[TextPart] | None = Field(default=None, validate_default=True)

    @field_validator("tool_calls")
    @classmethod
    def _assistant_calls(cls, value: Any, info: ValidationInfo) -> Any:
        if value and info.data.get("role") != "assistant":
            raise ValueError("only an assistant turn makes calls")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and not (
            info.data.get("role") == "assistant" and info.data.get("tool_calls")
        ):
            raise ValueError("required (only an assistant turn with tool_calls may omit it)")
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise ValueError(f"only text content parts are supported (got {kind!r})")
        return value

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def as_template_message(self) -> dict[str, str]:
        """What the chat template renders. Calls and their results become text in the
        form tools.py teaches the model, so every template can carry them."""
        if self.role == "tool":
            return {"role": "user", "content": result_text(self.text)}
        text = self.text
        if self.tool_calls:
            calls = "\n".join(
                call_text(c.function.name, c.function.arguments) for c in self.tool_calls
            )
            text = f"{text}\n{calls}" if text else calls
        # Chat templates know system, not OpenAI's newer name for it.
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


_UNSUPPORTED = {
    "functions": "the legacy functions parameter is not supported; send tools instead",
    "function_call": "the legacy function_call parameter is not supported; send tool_choice",
    "echo": "echoing the prompt is not supported by this server",
    "suffix": "suffixes (insertion) are not supported by this server",
    "logit_bias": "logit bias is not supported by this server",
}
MAX_CHOICES = 8  # n: each choice is one more sequence in the batch
MAX_TOP_LOGPROBS = 20  # OpenAI's own bound


class SamplingRequest(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=0, ge=0, description="vLLM's: no end of sequence before.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=1, le=100000)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    # vLLM's and llama.cpp's name for the multiplicative (CTRL) penalty the engine has.
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    functions: Any = None
    function_call: Any = None
    logit_bias: Any = None

    @model_validator(mode="after")
    def _supported(self) -> SamplingRequest:
        for name, why in _UNSUPPORTED.items():
            if getattr(self, name, None) not in (None, False, 0, "", [], {}):
                raise APIError(400, f"{name}: {why}", name)
        return self

    @property
    def requested_logprobs(self) -> int | None:
        """Alternatives per token to return (0: the chosen token's only); None: none."""
        return None

    @property
    def engine_repetition_penalty(self) -> float | None:
        """The one repetition control ONNX Runtime GenAI has: a multiplicative (CTRL)
        penalty on every token already in the sequence. OpenAI's additive penalties map
        onto it as exp((presence_penalty + frequency_penalty) / 2), so 0 is none and 1 is
        1.65; repetition_penalty sets it directly and wins."""
        if self.repetition_penalty is not None:
            return self.repetition_penalty
        total = self.presence_penalty + self.frequency_penalty
        return math.exp(total / 2) if total else None

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"stop: at most 4 stop sequences (got {len(stops)})", "stop")
        if any(not s for s in stops):
            raise APIError(400, "stop: a stop sequence must not be empty", "stop")
        return tuple(stops)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _one_constraint(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs: true", "top_logprobs")
        wants_json = self.response_format is not None and self.response_format.type != "text"
        if wants_json and self.tools and self.tool_choice != "none":
            raise APIError(
                400,
                "response_format: a JSON response format and tools cannot both constrain the "
                "answer; send one of them (or tool_choice: none)",
                "response_format",
            )
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def requested_logprobs(self) -> int | None:
        """Alternatives per token to return (0: the chosen token's only); None: none."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)  # the legacy API's bound
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not isinstance(value[0], str):
            raise ValueError("token-id prompts are not supported; send the prompt as text")
        return value

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise APIError(
                400,
                f"prompt: exactly one prompt per request is supported (got {len(self.prompt)})",
                "prompt",
            )
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of: only 1 is supported", "best_of")
        if not self.text:
            raise APIError(400, "prompt: must not be empty", "prompt")
        return self

    @property
    def requested_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n"
