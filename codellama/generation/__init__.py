"""The one generation path: batched, KV-cached decoding for evals, instruct data and the server.

- `protocol`: the request/result types, the `Sink` a caller listens with and the `Generator` interface;
- `hf`: `HFGenerator` on a local `LlamaForCausalLM` (continuous batching in `Decoder`);
- `engine`: the serving engine (queue, admission, cancellation) the HTTP server sits on;
- `remote`: `OpenAIGenerator`, the same interface over any OpenAI-compatible endpoint;
- `cache`, `sampling`, `stopping`: the prompt cache, token choice and stop rules.

A request with a `suffix` is an infilling request: locally it becomes Code Llama's PSM/SPM prompt and
stops at `<EOT>`; remotely it is sent as the completions API's `suffix`.
"""

from __future__ import annotations

import os

from codellama.generation.hf import Decoder, HFGenerator
from codellama.generation.protocol import (
    FINISH_REASONS,
    SEED_LIMIT,
    Completion,
    GenerationRequest,
    Generator,
    SamplingParams,
    Sink,
    truncate_at_stop,
)
from codellama.generation.remote import OpenAIGenerator
from codellama.generation.sampling import sample_next


def load_generator(
    model_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    *,
    endpoint_model: str | None = None,
    device: str = "cpu",
    dtype=None,
    batch_size: int = 8,
    max_context: int | None = None,
    overflow: str = "error",
) -> Generator:
    """A local model or a remote endpoint behind the same interface. `max_context` overrides the
    checkpoint's context limit (to measure extrapolation); `overflow` says what an over-long prompt
    gets (see HFGenerator)."""
    if (model_dir is None) == (endpoint is None):
        raise ValueError("give exactly one of a model directory or an endpoint URL")
    if endpoint is not None:
        return OpenAIGenerator(endpoint, model=endpoint_model)
    return HFGenerator.from_pretrained(
        model_dir, device=device, dtype=dtype, batch_size=batch_size, max_context=max_context, overflow=overflow
    )


__all__ = [
    "FINISH_REASONS",
    "SEED_LIMIT",
    "Completion",
    "Decoder",
    "GenerationRequest",
    "Generator",
    "HFGenerator",
    "OpenAIGenerator",
    "SamplingParams",
    "Sink",
    "load_generator",
    "sample_next",
    "truncate_at_stop",
]
