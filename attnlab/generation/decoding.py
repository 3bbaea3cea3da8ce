"""Autoregressive decoding: token ids with a KV cache, streamed, stopped by ids (text: text.py).

Dimensions: B batch, T positions, N positions of prompt + new tokens, V vocabulary size.

Any model keeping the GPT contract works: ``forward(idx) -> (logits (B, T, V), _)``,
``config.vocab_size`` and ``config.context_length`` (absent or None: no limit, so the window
never slides; a model's own ``context_limit``, if it has one, goes first: None for a recurrent
model, whose state carries the whole sequence). Optionally a decoding state: ``new_cache()``
(``new_cache(static=True)`` for compile=True) and ``forward(idx, cache=...)``; a model without
new_cache decodes as ``use_cache=False`` does. And ``sliding_cache`` (True: its cache slides).

KV cache. The prompt is prefilled in one forward; each later step feeds only the newest token and
attention reads the earlier keys and values from the cache.

Past the context. A model reads at most context_length positions, so the window slides.
- Relative or no positions (RoPE, ALiBi, none): the model's cache slides by itself
  (``GPT.new_cache``): each new token attends to the last context_length cached positions of
  every layer, i.e. sliding-window attention (as Mistral's rolling cache), and no step re-runs a
  window. The deeper layers' cached states were computed from their own windows, so this is not
  the same function as re-running the last context_length tokens from scratch.
- Absolute positions (learned, sinusoidal), ``crop_to`` given, or ``use_cache=False``: when the
  sequence would pass the context it is cropped to its last ``crop_to`` tokens and a fresh cache
  is prefilled with them (cached keys cannot be shifted when each depends on where it sat). With
  the default ``crop_to = context_length`` every step past the context sees exactly the last
  context_length tokens, as nanoGPT's sampler does, but each such step re-runs the whole window.
  A smaller ``crop_to`` re-prefills once every context_length - crop_to steps and decodes with
  the cache in between, at the price of the model seeing between crop_to and context_length
  tokens. ``use_cache=False`` recomputes the same windows from scratch each step, so both paths
  give the same logits; that is the test of the cache.

Compiled decoding. ``compile=True`` compiles the calls whose shapes never change: each
one-token step, with static caches (``StaticKVCache``: fixed buffers, positions as tensors) in
place of growing ones, and full-window recomputes. A step is the model and the choice of the
next ids; the random draws come in as an input and the repetition penalty reads a (B, V) mask
of the tokens so far, so every step has the same shapes. The prompt runs eagerly. On a CPU the
steps are compiled ahead of time into a library kept on disk for the next run; on a GPU they
replay as CUDA graphs (see compiled.py). Compiling takes seconds to tens of seconds, so it pays
off for long generations or repeated runs; the results equal the eager ones up to
floating-point rounding.

Batches. With absolute positions, prompts of different lengths cannot share a batch without
position ids (left padding shifts every position; right padding puts pads inside the sequence),
so ``generate`` groups the prompts by length and decodes each group as one batch. Greedy results
are therefore the same batched or one by one.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import operator
import sys
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.generation.compiled import compiled_step, decoding_step
from attnlab.generation.sampling import SamplingConfig, seen_mask
from attnlab.layers.contracts import eval_mode
from attnlab.layers.embedding import check_token_ids, trusted_ids
from attnlab.models.registry import GENERATE, GENERATE_IMAGE, check_capable


class _Window:
    """Feeds the model the tokens it has not seen yet, sliding the window past the context."""

    def __init__(
        self,
        model: nn.Module,
        sampling: SamplingConfig,
        use_cache: bool,
        crop_to: int | None,
        compile: bool,
    ):
        self.model = model
        self.eager = functools.partial(decoding_step, model, sampling)
        # compiled: the one-token steps (with static caches) and the full-window recomputes,
        # whose shapes never change; prompts, of any length, run eagerly
        self.compiled = compiled_step(model, sampling) if compile else None
        check_crop_to(model, crop_to)
        # A model without a context limit (a recurrent one, say) never slides.
        limit = context_limit(model)
        self.context_length = limit if limit is not None else sys.maxsize
        self.keep = crop_to if crop_to is not None else self.context_length
        self.use_cache = use_cache and hasattr(model, "new_cache")  # none: nothing to cache
        # A sliding cache keeps the window itself (see the module docstring) unless cropping
        # was asked for.
        self.cache_slides = (
            self.use_cache and crop_to is None and getattr(model, "sliding_cache", False)
        )
        self.start = 0  # first sequence position the model sees
        self.cache = None
        self.fed = 0  # sequence positions already in the cache

    def next_ids(
        self,
        tokens: torch.Tensor,
        length: int,
        seen: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, N), of which the first `length` are real; seen, noise: for the sampler
        (SamplingConfig.choose). Returns the next ids (B,) and their logits (B, V)."""
        if self.cache_slides:
            if self.cache is None:  # a prompt longer than the context prefills its last window
                self.start = max(0, length - self.context_length)
            return self._feed(tokens, length, seen, noise)
        if length - self.start > self.context_length:
            self.start = length - self.keep
            self.cache = None  # positions moved: every cached key is stale
        # Once a full-context window slides every step, a cache would be dropped right after
        # being filled: skip it and save the copies.
        sliding_every_step = self.start > 0 and self.keep == self.context_length
        if not self.use_cache or sliding_every_step:
            window = tokens[:, self.start : length]
            if self.compiled is not None and window.size(1) == self.context_length:
                return self.compiled(_fresh(window), None, seen, noise)  # see _feed
            return self.eager(window, None, seen, noise)
        return self._feed(tokens, length, seen, noise)

    def _feed(self, tokens, length, seen, noise):
        prompt = self.cache is None  # the first call: the prompt, run eagerly
        if prompt:
            self.cache = self.model.new_cache(static=self.compiled is not None)
            self.fed = self.start
            if self.compiled is not None:
                _check_static(self.cache)
        new = tokens[:, self.fed : length]
        if prompt or self.compiled is None:
            result = self.eager(new, self.cache, seen, noise)
        else:
            result = self.compiled(_fresh(new), self.cache, seen, noise)
        if prompt and self.compiled is not None and _device(self.model).type == "cuda":
            # CUDA graphs update tensors in place only at fixed addresses
            for buffer in self.cache.buffers():  # allocated by the prompt
                torch._dynamo.mark_static_address(buffer)
        self.fed = length
        return result


def context_limit(model: nn.Module) -> int | None:
    """The most positions the model reads at once; None: no limit (the window never slides)."""
    return getattr(model, "context_limit", getattr(model.config, "context_length", None))


def check_crop_to(model: nn.Module, crop_to: int | None, name: str = "crop_to") -> None:
    """crop_to (None: not given) must be a length the window can be cropped to; `name` is how
    the message calls it (the CLI: --crop-to)."""
    if crop_to is None:
        return
    limit = context_limit(model)
    if limit is None:
        raise UserError(
            f"{name} has no effect: this model has no context length (its state carries the "
            "whole text), so nothing is ever cropped"
        )
    if not 1 <= crop_to <= limit:
        raise UserError(f"{name} must be between 1 and the context length {limit}, got {crop_to}")


def _fresh(ids: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of a view of the token buffer: the view's strides depend on the
    buffer's length, and compiled code would recompile for every new length."""
    return ids.clone(memory_format=torch.contiguous_format)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_prompts(model: nn.Module, prompts: torch.Tensor, max_new_tokens: int) -> None:
    check_capable(model, "generation", GENERATE, GENERATE_IMAGE)
    if not hasattr(max_new_tokens, "__index__"):  # an int, not 3.0
        raise UserError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if prompts.dim() != 2:
        raise UserError(f"prompts must be (B, T) token ids, got shape {tuple(prompts.shape)}")
    if prompts.size(1) == 0:
        raise UserError("the prompt is empty: generation needs at least one token to start from")
    check_token_ids(prompts, getattr(model.config, "vocab_size", sys.maxsize))


def stream_batch(
    model: nn.Module,
    prompts: torch.Tensor,
    max_new_tokens: int,
    *,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    crop_to: int | None = None,
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """The decoding loop. prompts: (B, T) ids, every row the same length; yields each step's new
    ids, (B,), on the model's device. Stop conditions are the caller's: stop iterating."""
    sampling = sampling or SamplingConfig()
    prompts = torch.as_tensor(prompts, dtype=torch.long, device=_device(model))
    _check_prompts(model, prompts, max_new_tokens)
    window = _Window(model, sampling, use_cache, crop_to, compile)
    return _decode(model, window, prompts, max_new_tokens, sampling, generator)


@torch.inference_mode()
def _decode(model, window, prompts, max_new_tokens, sampling, generator):
    batch, prompt_length = prompts.shape
    # One buffer for the sequence, no per-step concatenation; it doubles when full, so asking
    # for a billion tokens and stopping after ten reserves room for tens, not a billion.
    tokens = _grown(prompts, prompt_length + min(max_new_tokens, _FIRST_ROOM))  # (B, N)
    shape = (batch, model.config.vocab_size)
    # The tokens so far as a (B, V) mask, for the repetition penalty: the same shape every step.
    seen = seen_mask(prompts, shape[1]) if sampling.repetition_penalty != 1 else None
    for length in range(prompt_length, prompt_length + max_new_tokens):
        if length == tokens.size(1):
            tokens = _grown(tokens, min(2 * length, prompt_length + max_new_tokens))
        noise = sampling.noise(shape, prompts.device, generator)
        # eval mode for each step, not for the whole stream: streams of one model may
        # interleave, and each must give the model back as it found it
        with eval_mode(model) if model.training else contextlib.nullcontext(), trusted_ids():
            next_ids, logits = window.next_ids(tokens, length, seen, noise)  # (B,), (B, V)
        # (on a GPU this check would wait for every step: there, a NaN row picks id 0)
        if logits.device.type == "cpu" and logits.isnan().any():
            raise UserError(
                f"the model's logits hold NaN at position {length}: its weights or inputs are "
                "not numbers (a diverged or damaged model?)"
            )
        tokens[:, length] = next_ids
        if seen is not None:
            seen.scatter_(1, next_ids[:, None], True)
        # the buffer's copy: a CUDA graph's output is overwritten by its next replay
        yield tokens[:, length]


_FIRST_ROOM = 256  # new tokens the buffer holds before it first grows


def _grown(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """A (B, length) buffer that starts with `tokens` (B, N), N <= length."""
    buffer = tokens.new_empty(tokens.size(0), length)
    buffer[:, : tokens.size(1)] = tokens
    return buffer


def make_generator(model: nn.Module, seed: int | None) -> torch.Generator | None:
    """A generator on the model's device seeded with `seed` (None: torch's global generator)."""
    if seed is None:
        return None
    return torch.Generator(device=_device(model)).manual_seed(seed)


def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    vocab_limit: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stop_ids: Iterable[int] = (),
    use_cache: bool = True,
    crop_to: int | None = None,
    compile: bool = False,
) -> list[list[int]]:
    """Continue each prompt by up to max_new_tokens tokens; returns only the new ids per prompt.

    prompts: a list of id lists (any lengths) or a (B, T) tensor. A row ends before the first id
    in stop_ids (which is not returned). temperature 0 is greedy; ids from vocab_limit on are
    never chosen (see SamplingConfig). seed (or a generator of your own) makes sampling
    reproducible. See the module docstring for crop_to, batching and compile.
    """
    sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty, vocab_limit)
    generator = generator or make_generator(model, seed)
    stop_ids = set(_ids(stop_ids, "stop_ids"))
    if isinstance(prompts, torch.Tensor) and prompts.dim() != 2:
        raise UserError(f"prompts must be (B, T) token ids, got shape {tuple(prompts.shape)}")
    prompts = prompts if isinstance(prompts, torch.Tensor | str) else list(prompts)
    if isinstance(prompts, str) or any(isinstance(row, numbers.Integral) for row in prompts):
        raise UserError(
            "prompts must be a list of prompts, each a list of token ids (not text): one "
            f"prompt is [[72, 105]]; got {repr(prompts)[:60]}"
        )
    rows = [_ids(row) for row in prompts]
    groups: dict[int, list[int]] = {}  # prompt length -> indices of the prompts that long
    for index, row in enumerate(rows):
        groups.setdefault(len(row), []).append(index)
    results: list[list[int]] = [[] for _ in rows]
    for indices in groups.values():
        batch = torch.tensor([rows[i] for i in indices], dtype=torch.long, device=_device(model))
        steps = stream_batch(
            model,
            batch,
            max_new_tokens,
            sampling=sampling,
            generator=generator,
            use_cache=use_cache,
            crop_to=crop_to,
            compile=compile,
        )
        for index, new_ids in zip(indices, _collect(steps, len(indices), stop_ids), strict=True):
            results[index] = new_ids
    return results


def _collect(steps: Iterator[torch.Tensor], batch: int, stop_ids: set[int]) -> list[list[int]]:
    """Run the steps until every row has met a stop id; each row's ids before its first stop."""
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long) if stop_ids else None
    done = torch.zeros(batch, dtype=torch.bool)
    columns = []
    for next_ids in steps:
        columns.append(next_ids)
        if stop is not None:
            done |= torch.isin(next_ids.cpu(), stop)
            if bool(done.all()):
                break
    if not columns:
        return [[] for _ in range(batch)]
    table = torch.stack(columns, dim=1).tolist()  # (B, steps), one transfer at the end
    return [_before_stop(row, stop_ids) for row in table]


def _before_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position]
    return ids


def stream(
    model: nn.Module,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    vocab_limit: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stop_ids: Iterable[int] = (),
    use_cache: bool = True,
    crop_to: int | None = None,
    compile: bool = False,
) -> Iterator[int]:
    """Like `generate` for one prompt, yielding each new id as soon as it is chosen. Ends before
    the first id in stop_ids. Yields the same ids as ``generate(model, [prompt], ...)[0]``.
    Bad arguments raise here, not at the first ``next``."""
    if isinstance(prompt, torch.Tensor) and prompt.dim() != 1:
        raise UserError(f"a prompt is one sequence of ids (T,), got shape {tuple(prompt.shape)}")
    steps = stream_batch(
        model,
        torch.tensor([_ids(prompt)], dtype=torch.long),
        max_new_tokens,
        sampling=SamplingConfig(temperature, top_k, top_p, repetition_penalty, vocab_limit),
        generator=generator or make_generator(model, seed),
        use_cache=use_cache,
        crop_to=crop_to,
        compile=compile,
    )
    return _first_row(steps, set(_ids(stop_ids, "stop_ids")))


def _ids(values, name: str = "a prompt") -> list[int]:
    """Token ids as Python ints: integers only (a float would be cut, a string of digits read
    as ids)."""
    if isinstance(values, str):
        raise UserError(f"{name} is token ids, not text ({values[:20]!r}): encode it first")
    try:
        return [operator.index(i) for i in values]
    except TypeError:
        raise UserError(f"{name} must be token ids, integers; got {str(values)[:60]}") from None


def _first_row(steps: Iterator[torch.Tensor], stop_ids: set[int]) -> Iterator[int]:
    for next_ids in steps:
        token = int(next_ids[0])
        if token in stop_ids:
            return
        yield token


def _check_static(cache) -> None:
    """A compiled step reads and updates its decoding states' buffers(): a state without them
    (a plugin mixer's, say) is one line, not a failure inside the compiler."""
    try:
        cache.buffers()
    except AttributeError as error:
        raise UserError(
            f"a compiled decoding step needs each decoding state's buffers() and with_buffers() "
            f"(layers/contracts.py): {error}; sample without --compile"
        ) from None
