"""Generation: logit filters and sampling (sampling), decoding loops with a KV cache (decoding),
beam search (beam_search: encoder-decoders; beam_decoding: decoder-only models), and text (text)
and images (images) on top of them."""

from attnlab.generation.beam_decoding import beam_generate, beam_hypotheses
from attnlab.generation.decoding import generate, make_generator, stream, stream_batch
from attnlab.generation.images import complete_images
from attnlab.generation.sampling import (
    SamplingConfig,
    apply_temperature,
    repetition_penalty,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from attnlab.generation.text import (
    StopScanner,
    beam_text,
    generate_text,
    start_ids,
    stream_text,
)

__all__ = [
    "SamplingConfig",
    "StopScanner",
    "apply_temperature",
    "beam_generate",
    "beam_hypotheses",
    "beam_text",
    "complete_images",
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
