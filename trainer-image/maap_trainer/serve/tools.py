"""Function calling: tools in the prompt, the calls constrained by a grammar, parsed back.

Every chat template gets the same protocol (the Hermes / Qwen one): the tools are described
in a system turn, the model answers either text or one or more
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, and earlier calls and their
results are rendered back as text in that form. The answer is constrained by a Lark grammar
(llguidance, through ONNX Runtime GenAI's guidance) whose call bodies are each function's
JSON schema, so a call always parses and its arguments always validate.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from maap_trainer.serve.errors import APIError
from maap_trainer.serve.structured import enforced

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
ANY_OBJECT: dict[str, Any] = {"type": "object"}


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionSpec


class NamedChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    class Name(BaseModel):
        model_config = ConfigDict(extra="ignore")
        name: str

    type: Literal["function"]
    function: Name


ToolChoice = Literal["none", "auto", "required"] | NamedChoice


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str = "{}"

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"arguments must be a JSON object: {exc.msg}") from None
        if not isinstance(parsed, dict):
            raise ValueError("arguments must be a JSON object")
        return value


class ToolCall(BaseModel):
    """A call in an earlier assistant turn, as the client sends it back."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


@dataclass(frozen=True)
class ToolUse:
    """What a request asks of the tools: which the model may call, and must it."""

    tools: tuple[ToolSpec, ...]
    mode: Literal["auto", "required"]
    parallel: bool

    def system_prompt(self) -> str:
        described = [t.function.model_dump(exclude_none=True) for t in self.tools]
        lines = [
            "You may call functions to help with the user's request. The functions are:",
            json.dumps(described, ensure_ascii=False),
            f"To call one, answer with {CALL_OPEN}"
            '{"name": <function name>, "arguments": <arguments as a JSON object>}'
            f"{CALL_CLOSE}"
            + (", one such block per call." if self.parallel else ", for one call only."),
        ]
        if self.mode == "auto":
            lines.append("If no function is needed, answer the user directly.")
        return "\n".join(lines)

    def grammar(self) -> str:
        """A Lark grammar (llguidance's dialect): the answer, text or calls."""
        rules = []
        names = []
        for i, tool in enumerate(self.tools):
            schema = {
                "type": "object",
                "properties": {
                    "name": {"const": tool.function.name},
                    "arguments": tool.function.parameters or ANY_OBJECT,
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            rules.append(f"fn{i}: %json {json.dumps(enforced(schema), ensure_ascii=False)}")
            names.append(f"fn{i}")
        call = f'call: "{CALL_OPEN}" ({" | ".join(names)}) "{CALL_CLOSE}"'
        calls = 'calls: call ("\\n" call)*' if self.parallel else "calls: call"
        if self.mode == "required":
            start = "start: calls"
        else:
            # Text that is not the start of a call (llguidance's & and ~ on lexemes).
            start = f"start: calls | TEXT\nTEXT: /(?s:.+)/ & ~/(?s:{_regex_escape(CALL_OPEN)}.*)/"
        return "\n".join([start, calls, call, *rules])


def tool_use(
    tools: list[ToolSpec] | None, choice: ToolChoice | None, parallel: bool | None
) -> ToolUse | None:
    """What the request's tools / tool_choice / parallel_tool_calls ask; None: no tools."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice: needs tools to choose from", "tool_choice")
        return None
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, "tools: two functions have the same name", "tools")
    if choice == "none":
        return None
    if isinstance(choice, NamedChoice):
        chosen = [t for t in tools if t.function.name == choice.function.name]
        if not chosen:
            raise APIError(
                400,
                f"tool_choice: no tool is named {choice.function.name!r} (the tools: "
                f"{', '.join(names)})",
                "tool_choice",
            )
        return ToolUse(tuple(chosen), "required", parallel=False)
    mode: Literal["auto", "required"] = "required" if choice == "required" else "auto"
    return ToolUse(tuple(tools), mode, parallel=parallel is not False)


def call_text(name: str, arguments: str) -> str:
    """An earlier call, rendered back into the conversation as the model would write it."""
    body = {"name": name, "arguments": json.loads(arguments)}
    return f"{CALL_OPEN}{json.dumps(body, ensure_ascii=False)}{CALL_CLOSE}"


def result_text(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"


def parse_calls(text: str) -> list[dict[str, Any]] | None:
    """The tool calls in an answer, in OpenAI's shape; None when the answer is text."""
    stripped = text.strip()
    if not stripped.startswith(CALL_OPEN):
        return None
    calls = []
    for block in stripped.split(CALL_OPEN)[1:]:
        body, closed, _ = block.partition(CALL_CLOSE)
        if not closed:  # cut off by max_tokens: not a call the client can make
            break
        parsed = json.loads(body)
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": parsed["name"],
                    "arguments": json.dumps(parsed["arguments"], ensure_ascii=False),
                },
            }
        )
    return calls


class CallStream:
    """Streams an answer that may be tool calls: text goes out as it comes, unless it is
    (still possibly) the start of a call; each call goes out whole once it is closed."""

    def __init__(self) -> None:
        self.buffer = ""
        self.is_calls: bool | None = None  # None: not decided yet
        self.calls_sent = 0

    def feed(self, piece: str) -> tuple[str, list[dict[str, Any]]]:
        """Text to send now, and the calls completed by this piece."""
        if self.is_calls is False:
            return piece, []
        self.buffer += piece
        if self.is_calls is None:
            head = self.buffer.lstrip()
            if head.startswith(CALL_OPEN):
                self.is_calls = True
            elif not head or CALL_OPEN.startswith(head):
                return "", []
            else:
                self.is_calls = False
                text, self.buffer = self.buffer, ""
                return text, []
        return "", self._completed()

    def flush(self) -> tuple[str, list[dict[str, Any]]]:
        if self.is_calls:
            return "", self._completed()
        text, self.buffer = self.buffer, ""
        return text, []

    def _completed(self) -> list[dict[str, Any]]:
        calls = parse_calls(self.buffer) or []
        fresh = calls[self.calls_sent :]
        self.calls_sent = len(calls)
        return fresh


def _regex_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in r"\/.^$*+?()[]{}|" else c for c in text)
