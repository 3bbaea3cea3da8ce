"""Generation: logit filters and sampling (sampling), decoding loops with a KV cache (decoding)."""

from attnlab.generation.decoding import (
    StopScanner,
    generate,
    generate_text,
    make_generator,
    start_ids,
    stream,
    stream_batch,
    stream_text,
)
from attnlab.generation.sampling import (
    SamplingConfig,
    apply_temperature,
    repetition_penalty,
    sample_next,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "SamplingConfig",
    "StopScanner",
    "apply_temperature",
    "generate",
    "generate_text",
    "make_generator",
    "repetition_penalty",
    "sample_next",
    "start_ids",
    "stream",
    "stream_batch",
    "stream_text",
    "top_k_filter",
    "top_p_filter",
]
