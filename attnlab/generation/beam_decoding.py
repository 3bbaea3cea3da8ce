"""Beam search for decoder-only models (GPT with any mixer, lstm_lm): the most likely
continuation of a prompt, with the KV cache or recurrent state reordered per beam.

Dimensions: K beams, T prompt positions, V vocabulary size.

The search is beam_search.py's (``Beams``): K hypotheses grow together as one batch of K rows;
each step ranks the K·V extensions by summed log-probability and keeps the best K that do not
end. A hypothesis ends at an id of ``stop_ids`` (not returned, as with ``generate``), and is
then ranked by GNMT's length-normalized score, log P / ((5 + |Y|) / 6)^α, |Y| counting its new
tokens and the stop id; the search ends once K have ended (Hugging Face's
``early_stopping=True``) or at max_new_tokens, where the K live hypotheses end as they are.
With no stop ids every hypothesis has max_new_tokens tokens, so α changes nothing and the
result is the sequence of highest summed log-probability that the beam found. beam_size 1 is
greedy decoding (``generate(..., temperature=0)``).

The prompt is prefilled once in each of the K rows (a recurrent state cannot grow rows later),
then every step feeds one token per row and reorders the rows of the decoding state
(``DecodingState.reorder``) so that each hypothesis keeps its own history. The window past the
context slides as ``generate``'s does (decoding.py), use_cache=False recomputes it from
scratch and crop_to is taken the same way. Ids from vocab_limit on are never chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.generation.beam_search import Beams
from attnlab.generation.decoding import _check_prompts, _device, _ids, _Window
from attnlab.generation.sampling import SamplingConfig
from attnlab.layers.contracts import eval_mode
from attnlab.layers.embedding import trusted_ids


class _Continuation(Beams):
    def __init__(self, prompt, beam_size, alpha, max_new_tokens, stop_ids, window, limit):
        tokens = prompt.repeat(beam_size, 1)  # (K, T)
        limits = torch.tensor([max_new_tokens], device=prompt.device)
        super().__init__(tokens, beam_size, alpha, limits, stop_ids)
        self.window, self.vocab_limit = window, limit

    def next_log_probs(self) -> torch.Tensor:
        with trusted_ids():  # the prompt was checked; the rest are the model's own ids
            _, logits = self.window.next_ids(self.tokens, self.tokens.size(1))  # (K, V)
        if self.vocab_limit is not None:
            logits[:, self.vocab_limit :] = float("-inf")
        return torch.log_softmax(logits, dim=-1)

    def reorder_state(self, rows: torch.Tensor) -> None:
        cache = self.window.cache  # None: the window recomputes from the tokens
        if cache is None:
            return
        try:
            cache.reorder(rows)
        except (AttributeError, NotImplementedError) as error:
            raise UserError(
                f"beam search reorders the decoding state per beam, and this model's cannot "
                f"({type(error).__name__}: {error}); search with use_cache=False (--no-cache)"
            ) from None


@torch.no_grad()
def beam_hypotheses(
    model: nn.Module,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    stop_ids: Iterable[int] = (),
    vocab_limit: int | None = None,
    use_cache: bool = True,
    crop_to: int | None = None,
) -> list[tuple[float, list[int]]]:
    """The hypotheses a beam search of the continuations of `prompt` (one sequence of ids)
    finished, best first (see the module docstring): (summed log-probability, new ids) each,
    without the stop id; at least one, often about beam_size."""
    if isinstance(prompt, torch.Tensor) and prompt.dim() != 1:
        raise UserError(f"a prompt is one sequence of ids (T,), got shape {tuple(prompt.shape)}")
    if not hasattr(beam_size, "__index__") or beam_size < 1:
        raise UserError(f"beam size must be an integer >= 1, got {beam_size!r}")
    if not 0 <= length_penalty < float("inf"):
        raise UserError(f"length penalty must be a number >= 0, got {length_penalty}")
    # the window's step also picks the greedy id (unused here) and checks vocab_limit
    greedy = SamplingConfig(temperature=0, vocab_limit=vocab_limit)
    prompts = torch.tensor([_ids(prompt)], dtype=torch.long, device=_device(model))
    _check_prompts(model, prompts, max_new_tokens)
    stop_ids = _ids(stop_ids, "stop_ids")
    if max_new_tokens == 0:
        return [(0.0, [])]
    with eval_mode(model):
        window = _Window(model, greedy, use_cache, crop_to, compile=False)
        search = _Continuation(
            prompts, beam_size, length_penalty, max_new_tokens, stop_ids, window, vocab_limit
        )
        search.run()
    return search.ranked()[0]


def beam_generate(model: nn.Module, prompt, max_new_tokens: int, **options) -> list[int]:
    """The best continuation of `prompt` by beam search: its new ids, without the stop id.
    Options are `beam_hypotheses`'s (beam_size, length_penalty, stop_ids, vocab_limit,
    use_cache, crop_to)."""
    return beam_hypotheses(model, prompt, max_new_tokens, **options)[0][1]
