"""One generation's sampling options, as the engine and as a generator take them.

The two ONNX Runtime GenAI paths spell the same options differently: an `og.Engine` request
takes TurnOptions, an `og.Generator` takes search options and GeneratorParams.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from maap_trainer.serve.adapters import runtime_message
from maap_trainer.serve.generation import Generation, GuidanceRejected
from maap_trainer.serve.runtime import ModelRuntime
from maap_trainer.serve.structured import Guidance


def begin_turn(og: Any, engine: Any, generation: Generation) -> tuple[Any, int]:
    """A request on the engine with the generation's prompt and options: (request, turn)."""
    options = generation.options
    request = engine.create_request()
    turn_options = og.TurnOptions(request)
    turn_options.set_max_generated_tokens(options.max_tokens)
    if options.min_tokens:
        turn_options.set_min_generated_tokens(options.min_tokens)
    turn_options.set_do_sample(not options.greedy)
    if not options.greedy:
        turn_options.set_temperature(options.temperature)
        turn_options.set_top_p(options.top_p)
        turn_options.set_top_k(options.top_k)
        if options.seed is not None:
            turn_options.set_seed(options.seed)
    if options.repetition_penalty is not None:
        turn_options.set_repetition_penalty(options.repetition_penalty)
    if options.guidance is not None:
        guide(turn_options, options.guidance)
    with _grammar_errors(options.guidance):  # llguidance compiles the grammar here
        turn = request.begin_turn(np.asarray(generation.prompt_ids, dtype=np.int32), turn_options)
    return request, turn


def new_generator(og: Any, runtime: ModelRuntime, generation: Generation) -> Any:
    """A generator of its own for the generation, its prompt already appended; its KV
    cache is sized for this prompt and answer only (but never under a sliding window: the
    decoder stops the answer at max_tokens)."""
    options = generation.options
    needed = min(runtime.context_length, generation.prompt_tokens + options.max_tokens)
    search: dict[str, Any] = {
        "max_length": max(needed, runtime.kv_window),
        "do_sample": not options.greedy,
    }
    if options.min_tokens:
        search["min_length"] = generation.prompt_tokens + options.min_tokens
    if not options.greedy:
        search.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k)
        if options.seed is not None:
            search["random_seed"] = options.seed
    if options.repetition_penalty is not None:
        search["repetition_penalty"] = options.repetition_penalty
    params = og.GeneratorParams(runtime.model)
    params.set_search_options(**search)
    if options.guidance is not None:
        guide(params, options.guidance)
    with _grammar_errors(options.guidance):
        generator = og.Generator(runtime.model, params)
    if generation.adapter is not None:
        generator.set_active_adapter(runtime.adapters, generation.adapter)
    generator.append_tokens(np.asarray(generation.prompt_ids, dtype=np.int32))
    return generator


def guide(options: Any, guidance: Guidance) -> None:
    """Set a grammar on TurnOptions or GeneratorParams (compiled when the turn begins)."""
    with _grammar_errors(guidance):
        options.set_guidance(guidance.kind, guidance.text)


@contextmanager
def _grammar_errors(guidance: Guidance | None) -> Iterator[None]:
    """A grammar llguidance cannot compile is the request's fault, named by the parameter
    it came from; without a grammar an error is the runtime's."""
    try:
        yield
    except Exception as exc:
        if guidance is None:
            raise
        raise GuidanceRejected(guidance.param, runtime_message(exc)) from None
