"""Pure logit filters and next-token sampling.

Dimensions: B batch, V vocabulary size, S previous positions.

Every filter takes (B, V) logits and returns a new tensor; the input is never modified. Removed
tokens get a logit of -inf, so a later softmax gives them probability exactly zero. The order
`SamplingConfig.choose` applies them in is the usual one (as in Hugging Face's samplers):
repetition penalty, temperature, top-k, then top-p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnlab.config import check_positive, check_types
from attnlab.errors import ConfigError


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, V) logits / temperature: below 1 sharpens the distribution, above 1 flattens it.
    Each row's largest logit is first taken from the row (a softmax does not see the shift), so
    a tiny temperature leaves 0 there and -inf elsewhere: greedy, not the NaN of inf - inf."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature} (0 means greedy)")
    temperature = max(temperature, torch.finfo(logits.dtype).tiny)  # in the logits' precision
    logits = logits.clamp_max(torch.finfo(logits.dtype).max)  # +inf: the largest, not inf - inf
    return (logits - logits.amax(dim=-1, keepdim=True)) / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (B, V); the rest become -inf.

    Ties at the k-th value are broken by torch.topk, so exactly k survive even then (Hugging
    Face's TopKLogitsWarper keeps every token tied with the k-th).
    """
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    if k >= logits.size(-1):
        return logits.clone()
    values, indices = torch.topk(logits, k, dim=-1)  # (B, k)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2020, section 3.1): keep, per row, the smallest set of
    most likely tokens whose probability mass is at least p; the most likely token always stays.

    logits: (B, V); p in (0, 1], where 1 keeps everything. The same tokens as Hugging Face's
    TopPLogitsWarper, but for equally likely tokens at the edge of the nucleus: as many of them
    are kept as the mass needs, the lowest ids here (a stable sort), others there.
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1:
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    # A token is dropped when the tokens ranked above it already reach p: the mass *before* it
    # decides, so the token that crosses p is kept and the first token is never dropped.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Discourage tokens already in the sequence (Keskar et al. 2019, CTRL, section 4.1).

    logits: (B, V); seen: (B, S) token ids seen so far in each row, or a (B, V) boolean mask of
    them (decoding keeps one, so every step has the same shapes). The logit of every seen token
    is divided by `penalty` when positive and multiplied by it when negative, so with
    penalty > 1 a seen token always becomes less likely, whatever its sign (CTRL divides every
    seen logit, which raises a negative one; the sign rule is Hugging Face's). Each seen token is
    penalised once however often it occurred.
    """
    if penalty <= 0:
        raise ValueError(f"repetition penalty must be positive, got {penalty}")
    if seen.dtype != torch.bool:
        seen = seen_mask(seen, logits.size(-1))
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    top = torch.finfo(logits.dtype).max  # a tiny penalty overflows: the largest logit, not inf
    penalised = torch.nan_to_num(penalised, posinf=top, neginf=float("-inf"))
    return torch.where(seen, penalised, logits)


def seen_mask(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, S) token ids -> (B, V) boolean mask, True where a row holds the token."""
    mask = torch.zeros(ids.size(0), vocab_size, dtype=torch.bool, device=ids.device)
    return mask.scatter_(-1, ids, True)


def exponential_noise(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Independent Exp(1) draws for the exponential race of `sample_next`, never exactly 0 (a
    zero would make 0/0 of a filtered token)."""
    noise = torch.empty(shape, device=device).exponential_(generator=generator)
    return noise.clamp_min_(torch.finfo(noise.dtype).tiny)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one token id per row from (B, V) logits -> (B,) ids, on the logits' device.

    temperature 0 is greedy decoding (argmax, no randomness); top_k None and top_p None (or 1)
    switch those filters off. The randomness is `noise`, (B, V) from `exponential_noise`, drawn
    from `generator` when not given.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None and top_k < logits.size(-1):
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    if noise is None:
        noise = exponential_noise(probs.shape, probs.device, generator)
    # The exponential race: with E_i ~ Exp(1) independent, argmax p_i / E_i is token i with
    # probability p_i (the Gumbel-max trick in another form), in half the time of
    # torch.multinomial for one draw, and with the randomness drawn apart from the arithmetic,
    # so a compiled decoding step can take it as an input.
    return (probs / noise).argmax(dim=-1)


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the model's logits."""

    temperature: float = 1.0  # 0 = greedy (argmax); < 1 sharper, > 1 flatter
    top_k: int | None = None  # keep only the k most likely tokens; None = all
    top_p: float | None = None  # nucleus mass to keep, in (0, 1]; None or 1 = all
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the sequence
    # ids from here on are never chosen: a model's vocabulary padded past its tokenizer's
    # (to a multiple of 64, say) has ids no text decodes to; None = every id
    vocab_limit: int | None = None

    def __post_init__(self):
        check_types(self)
        name = "SamplingConfig"
        if not 0 <= self.temperature < math.inf:
            raise ConfigError(f"{name}.temperature must be a number >= 0, got {self.temperature!r}")
        check_positive(name, top_k=self.top_k)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"{name}.top_p must be in (0, 1], got {self.top_p!r}")
        check_positive(name, repetition_penalty=self.repetition_penalty)
        check_positive(name, vocab_limit=self.vocab_limit)

    def noise(
        self, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """The randomness `choose` needs for (B, V) logits: None when greedy."""
        return None if self.temperature == 0 else exponential_noise(shape, device, generator)

    def choose(
        self,
        logits: torch.Tensor,
        seen: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, V) logits -> (B,) next ids. seen: the tokens so far, as (B, S) ids or a (B, V)
        mask, for the repetition penalty; noise: from `noise`, else drawn from generator."""
        if self.vocab_limit is not None and self.vocab_limit < logits.size(-1):
            logits = logits.clone()
            logits[:, self.vocab_limit :] = float("-inf")
        if self.repetition_penalty != 1 and seen is not None:
            logits = repetition_penalty(logits, seen, self.repetition_penalty)
        return sample_next(
            logits,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            generator=generator,
            noise=noise,
        )
