"""What a request may ask for: max_tokens against the server's limit and its context."""

from __future__ import annotations

from maap_trainer.serve.protocol import APIError, SamplingRequest
from maap_trainer.serve.scheduler import SamplingOptions


def sampling_options(
    body: SamplingRequest,
    requested: int | None,
    prompt_tokens: int,
    context_length: int,
    limit: int,
    prompt_param: str,
    model_context_length: int | None = None,
) -> SamplingOptions:
    if requested is not None and requested > limit:
        raise APIError(
            400,
            f"max_tokens: {requested} is above this server's limit of {limit}",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    room = context_length - prompt_tokens
    if room <= 0:
        raise APIError(
            400,
            f"{prompt_param}: the {prompt_param} take {prompt_tokens} tokens and this "
            f"server's context (prompt plus answer) is {context_length}: shorten them"
            + _raise_hint(context_length, model_context_length),
            param=prompt_param,
            code="context_length_exceeded",
        )
    max_tokens = requested if requested is not None else min(limit, room)
    if max_tokens > room:
        raise APIError(
            400,
            f"{prompt_param}: this server's context is {context_length} tokens; the "
            f"{prompt_param} take {prompt_tokens}, which leaves {room} for the answer, and "
            f"max_tokens asks for {max_tokens}: ask for at most {room}, or shorten the "
            f"{prompt_param}" + _raise_hint(context_length, model_context_length),
            param=prompt_param,
            code="context_length_exceeded",
        )
    if body.min_tokens > max_tokens:
        raise APIError(
            400,
            f"min_tokens: {body.min_tokens} is above max_tokens ({max_tokens})",
            param="min_tokens",
        )
    return SamplingOptions(
        max_tokens=max_tokens,
        min_tokens=body.min_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_sequences,
        repetition_penalty=body.engine_repetition_penalty,
        logprobs=body.requested_logprobs,
    )


def _raise_hint(context_length: int, model_context_length: int | None) -> str:
    if model_context_length is None or model_context_length <= context_length:
        return ""
    return (
        " (or serve with a longer serving.maxContextLength: the model takes "
        f"{model_context_length})"
    )
