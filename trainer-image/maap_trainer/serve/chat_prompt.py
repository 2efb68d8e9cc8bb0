"""The messages a chat template renders: the client's, plus what the server must tell the
model (the tools it may call, the JSON it must answer) in the leading system turn."""

from __future__ import annotations

from maap_trainer.serve.protocol import ChatCompletionRequest
from maap_trainer.serve.structured import Guidance, json_instruction
from maap_trainer.serve.tools import ToolUse


def with_instructions(body: ChatCompletionRequest, use: ToolUse | None) -> list[dict[str, str]]:
    messages = [m.as_template_message() for m in body.messages]
    instruction = use.system_prompt() if use else json_instruction(body.response_format)
    if instruction is None:
        return messages
    # Many templates take one system turn, first: the instruction joins it.
    if messages[0]["role"] == "system":
        first = messages[0]
        return [
            {"role": "system", "content": f"{first['content']}\n\n{instruction}"},
            *messages[1:],
        ]
    return [{"role": "system", "content": instruction}, *messages]


def tool_guidance(use: ToolUse) -> Guidance:
    return Guidance("lark_grammar", use.grammar(), "tools")
