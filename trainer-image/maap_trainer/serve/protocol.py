"""The OpenAI wire format: request bodies, error bodies, response and SSE chunk shapes.

Parameters that change what a client gets back (n > 1, logprobs, penalties, tools, echo)
are refused with a 400 naming them rather than silently ignored; other unknown fields
(user, metadata, ...) are accepted and ignored, as OpenAI clients send them freely.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


def error_body(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise ValueError(f"only text content parts are supported (got {kind!r})")
        return value

    def as_template_message(self) -> dict[str, str]:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        # Chat templates know system, not OpenAI's newer name for it.
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


_UNSUPPORTED = {
    "logprobs": "log probabilities are not returned by this server",
    "top_logprobs": "log probabilities are not returned by this server",
    "tools": "function calling is not supported by this server",
    "functions": "function calling is not supported by this server",
    "echo": "echoing the prompt is not supported by this server",
    "suffix": "suffixes (insertion) are not supported by this server",
    "logit_bias": "logit bias is not supported by this server",
}


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
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Any = None
    top_logprobs: Any = None
    tools: Any = None
    functions: Any = None
    logit_bias: Any = None

    @model_validator(mode="after")
    def _supported(self) -> SamplingRequest:
        if self.n != 1:
            raise APIError(400, f"n: only 1 choice per request is supported (got {self.n})", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name}: penalties are not supported by this server", name)
        for name, why in _UNSUPPORTED.items():
            if getattr(self, name, None) not in (None, False, 0, "", [], {}):
                raise APIError(400, f"{name}: {why}", name)
        return self

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
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ChatCompletionRequest:
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise APIError(
                400,
                f"response_format: only type 'text' is supported (got "
                f"{self.response_format.get('type')!r})",
                "response_format",
            )
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
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
