"""Greedy and beam-search decoding for encoder–decoder models, batched, with a KV cache.

Dimensions: B sentences, K beams per sentence, N = B·K hypothesis rows, S source positions,
t target positions so far, V vocabulary size.

Any model with the encoder–decoder contract works: ``encode(src) -> (memory, src_mask)``,
``decode(tgt_in, memory, src_mask, cache=None) -> logits (B, T, V)``, ``new_cache()`` and a
config with pad_id, bos_id, eos_id and max_length.

Incremental decoding. The source is encoded once. Each step feeds only the newest target token;
the decoder's self-attention reads earlier keys and values from the cache, and each cross
attention projects the memory to keys and values at the first step and reuses them. Beam search
reorders the cache rows after every step (``DecodingCache.reorder``) so each surviving
hypothesis keeps its own history, and drops the rows of sentences whose search has ended.

Beam search (Sutskever et al. 2014; GNMT, Wu et al. 2016, section 7). Hypotheses are ranked by
their summed log-probability while they grow; a hypothesis that ends with </s> is scored by
log P(Y|X) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^α with |Y| counting its tokens and </s>, so α > 0
favours longer outputs (α = 0: raw log-probability; the paper uses α = 0.6, with beam size 4).
Each step keeps the 2K best extensions: those ending in </s> among the best K are finished, the
best K others live on. A sentence's search ends when it has K finished hypotheses or reaches its
length limit, where </s> is forced; decoding stops when every sentence has ended.

Length limit. At most ⌊a·|X| + b⌋ tokens are generated for a source of |X| tokens (its </s>
included), </s> included, and never more than the model's max_length: a = 1, b = 50 by default.

Against Hugging Face's ``generate(num_beams=K)``: the same search as its ``early_stopping=True``
(2K candidates a step, only </s> among the best K ends a hypothesis, a sentence stops at K
finished), so with α = 0 (its ``length_penalty=0``) both find the same hypotheses. It differs
in three ways: its length penalty is |Y|^α, not GNMT's; at the length limit it keeps the
unfinished beams, scored without </s>, where this search forces </s>; and here <pad> and <s>
are never chosen, the other tokens keeping their log-probabilities (not renormalized). Only the
best hypothesis is returned, without its score (``Beams.ranked`` holds them all).

The search itself (``Beams``) does not depend on the model: beam_decoding.py runs it for
decoder-only models, where a hypothesis ends at a stop id and, at the length limit, the live
hypotheses end as they are rather than with a forced end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from attnlab.errors import UserError
from attnlab.layers.contracts import eval_mode
from attnlab.layers.embedding import trusted_ids
from attnlab.models.registry import TRANSLATE, check_capable
from attnlab.progress import progress_bar


def max_target_lengths(
    src: torch.Tensor, model: nn.Module, factor: float = 1.0, offset: int = 50
) -> torch.Tensor:
    """(B,) most tokens to generate per sentence: ⌊factor·|X| + offset⌋, within [1, max_length]."""
    source_lengths = (src != model.config.pad_id).sum(-1)
    limits = (factor * source_lengths.double() + offset).clamp(1, model.config.max_length)
    return limits.floor().long()  # clamped first: a huge factor must not overflow the integers


def _next_log_probs(model, tokens, memory, src_mask, cache) -> torch.Tensor:
    """Log-probabilities (N, V) of the token after `tokens` (N, t): only the newest token goes
    through the decoder with a cache, the whole prefix without one (the test of the cache).
    <pad> and <s> never follow in a target, so they are never chosen."""
    with trusted_ids():  # <s> and the ids chosen
        if cache is not None:
            logits = model.decode(tokens[:, -1:], memory, src_mask, cache)
        else:
            logits = model.decode(tokens, memory, src_mask)
    log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (N, V)
    log_probs[:, [model.config.pad_id, model.config.bos_id]] = float("-inf")
    return log_probs


def _force_end(log_probs: torch.Tensor, at_limit: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Rows at their length limit may only choose </s>. log_probs (..., V), at_limit (...)."""
    only_end = torch.full_like(log_probs, float("-inf"))
    only_end[..., eos_id] = log_probs[..., eos_id]
    return torch.where(at_limit[..., None], only_end, log_probs)


@torch.no_grad()
def greedy_search(
    model: nn.Module,
    src: torch.Tensor,
    *,
    max_length_factor: float = 1.0,
    max_length_offset: int = 50,
    use_cache: bool = True,
) -> list[list[int]]:
    """The most likely next token at every step. src: (B, S) right-padded source ids.

    Returns each sentence's target ids, without <s> and </s>.
    """
    check_capable(model, "greedy search", TRANSLATE)
    c = model.config
    limits = max_target_lengths(src, model, max_length_factor, max_length_offset)
    tokens = torch.full((src.size(0), 1), c.bos_id, dtype=torch.long, device=src.device)
    ended = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    with eval_mode(model):
        memory, src_mask = model.encode(src)
        cache = model.new_cache() if use_cache else None
        for step in range(int(limits.max())):
            log_probs = _next_log_probs(model, tokens, memory, src_mask, cache)  # (B, V)
            next_token = _force_end(log_probs, step + 1 >= limits, c.eos_id).argmax(-1)  # (B,)
            next_token = next_token.masked_fill(ended, c.pad_id)
            ended |= next_token == c.eos_id
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
            if ended.all():
                break
    return [_strip(row, c) for row in tokens[:, 1:].tolist()]


def _strip(ids: list[int], config) -> list[int]:
    """Ids up to the first </s> (or padding)."""
    for i, token in enumerate(ids):
        if token in (config.eos_id, config.pad_id):
            return ids[:i]
    return ids


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^α."""
    return ((5 + length) / 6) ** alpha


def _rank(log_prob: float, length: int, alpha: float) -> float:
    """A finished hypothesis's rank: ordered as log P / lp(Y) is (log P <= 0), but taken in
    logarithms, -log(-log P) + α·log((5 + |Y|) / 6), so that no α overflows lp."""
    if log_prob >= 0:  # certain
        return math.inf
    return -math.log(-log_prob) + alpha * math.log((5 + length) / 6)


class Beams:
    """The state of a batched beam search, whatever the model: B searches of K beams each, N =
    B·K rows, and their hypotheses (see the module docstring). A subclass gives the model's
    log-probabilities of the next token for every row (`next_log_probs`, (N, V)) and keeps its
    decoding state in step with the rows (`reorder_state`); it may extend `drop_sentences`.

    tokens: (N, t) the ids every row starts from (<s>, or a prompt); what follows is generated.
    limits: (B,) tokens each search generates at most. end_ids: the ids that finish a hypothesis
    (none: only the limit does). force_end: the id forced at the limit (translation's </s>);
    None: the K live hypotheses finish there as they are, scored without an end.
    """

    def __init__(self, tokens, beam_size, alpha, limits, end_ids=(), force_end=None):
        self.k, self.alpha, self.limits, self.force_end = beam_size, alpha, limits, force_end
        self.tokens, self.start = tokens, tokens.size(1)  # (N, t)
        self.end_ids = torch.tensor(sorted(set(end_ids)), dtype=torch.long, device=tokens.device)
        batch = limits.numel()
        # Only beam 0 starts alive, so the first step's K beams are K different tokens.
        self.scores = torch.full((batch, beam_size), float("-inf"), device=tokens.device)
        self.scores[:, 0] = 0.0  # (B, K) summed log-probabilities
        self.active = list(range(batch))  # original index of each searching sentence
        # each search's finished hypotheses: (rank, summed log-probability, ids)
        self.finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(batch)]

    def next_log_probs(self) -> torch.Tensor:
        raise NotImplementedError

    def reorder_state(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, step: int) -> None:
        k, n = self.k, len(self.active)
        log_probs = self.next_log_probs().view(n, k, -1)  # (B, K, V)
        at_limit = step + 1 >= self.limits  # (B,)
        if self.force_end is not None:
            log_probs = _force_end(log_probs, at_limit[:, None], self.force_end)
        vocab = log_probs.size(-1)
        candidates = (self.scores[:, :, None] + log_probs).view(n, k * vocab)  # (B, K·V)
        # Enough candidates that K of them do not end even when every beam's ends are among
        # them: 2K for one end id (GNMT, Hugging Face), all K·V at most.
        width = min(k * vocab, k * (1 + max(1, self.end_ids.numel())))
        top_scores, top_index = candidates.topk(width, dim=1)  # (B, W), best first
        beam, token = top_index // vocab, top_index % vocab
        is_end = torch.isin(token, self.end_ids)
        self._finish(step, beam, top_scores, is_end)
        # The K best extensions that do not end: ranks of ending ones are pushed past W.
        rank = torch.arange(width, device=token.device) + is_end.long() * width  # (B, W)
        keep = rank.topk(k, dim=1, largest=False).indices  # (B, K), best first
        self.scores = top_scores.gather(1, keep)
        parent = torch.arange(n, device=token.device)[:, None] * k + beam.gather(1, keep)
        self._select_rows(parent.view(-1))
        self.tokens = torch.cat([self.tokens, token.gather(1, keep).view(-1, 1)], dim=1)
        if self.force_end is None:
            self._finish_live(step, at_limit)
        ended = [len(self.finished[self.active[r]]) >= k or bool(at_limit[r]) for r in range(n)]
        if any(ended):
            self.drop_sentences([r for r in range(n) if not ended[r]])

    def _finish(self, step, beam, top_scores, is_end) -> None:
        """Store the hypotheses ending among the K best candidates, length-normalized."""
        finite = top_scores > float("-inf")
        for r, j in (is_end[:, : self.k] & finite[:, : self.k]).nonzero().tolist():
            row = r * self.k + int(beam[r, j])
            ids = self.tokens[row, self.start :].tolist()  # the end id is not stored
            self._store(r, float(top_scores[r, j]), step + 1, ids)

    def _finish_live(self, step, at_limit) -> None:
        """At the limit, the live hypotheses finish as they are (without an end)."""
        for r in at_limit.nonzero().flatten().tolist():
            for j in range(self.k):
                if self.scores[r, j] > float("-inf"):
                    ids = self.tokens[r * self.k + j, self.start :].tolist()
                    self._store(r, float(self.scores[r, j]), step + 1, ids)

    def _store(self, r, log_prob, length, ids) -> None:
        rank = _rank(log_prob, length, self.alpha)
        self.finished[self.active[r]].append((rank, log_prob, ids))

    def _select_rows(self, rows: torch.Tensor) -> None:
        self.tokens = self.tokens[rows]
        self.reorder_state(rows)

    def drop_sentences(self, keep: list[int]) -> torch.Tensor | None:
        """Stop decoding the sentences not in `keep`: their rows leave the batch and the state.
        Returns the rows kept; None when no search is left (then nothing is reordered: a
        recurrent state cannot shrink, and no step follows)."""
        if not keep:
            self.active = []
            return None
        index = torch.tensor(keep, dtype=torch.long, device=self.tokens.device)
        rows = (index[:, None] * self.k + torch.arange(self.k, device=index.device)).view(-1)
        self._select_rows(rows)
        self.scores, self.limits = self.scores[index], self.limits[index]
        self.active = [self.active[r] for r in keep]
        return rows

    def run(self) -> None:
        step = 0
        while self.active:
            self.step(step)
            step += 1

    def ranked(self) -> list[list[tuple[float, list[int]]]]:
        """Each search's finished hypotheses, best first: (summed log-probability, ids)."""
        return [
            [(log_prob, ids) for _, log_prob, ids in sorted(hyps, key=lambda h: -h[0])]
            for hyps in self.finished
        ]

    def best(self) -> list[list[int]]:
        return [hyps[0][1] if hyps else [] for hyps in self.ranked()]


class _Search(Beams):
    """Beam search of an encoder-decoder: the source encoded once, the target from <s>."""

    def __init__(self, model, src, beam_size, alpha, limits, use_cache):
        self.model, c = model, model.config
        memory, src_mask = model.encode(src)
        rows = torch.arange(src.size(0), device=src.device).repeat_interleave(beam_size)
        self.memory, self.src_mask = memory[rows], src_mask[rows]  # (N, S, D), (N, 1, 1, S)
        self.cache = model.new_cache() if use_cache else None
        tokens = torch.full((rows.numel(), 1), c.bos_id, dtype=torch.long, device=src.device)
        super().__init__(tokens, beam_size, alpha, limits, [c.eos_id], force_end=c.eos_id)

    def next_log_probs(self) -> torch.Tensor:
        return _next_log_probs(self.model, self.tokens, self.memory, self.src_mask, self.cache)

    def reorder_state(self, rows: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(rows)

    def drop_sentences(self, keep: list[int]) -> torch.Tensor | None:
        rows = super().drop_sentences(keep)
        if rows is not None:
            self.memory, self.src_mask = self.memory[rows], self.src_mask[rows]
        return rows


@torch.no_grad()
def beam_search(
    model: nn.Module,
    src: torch.Tensor,
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_length_factor: float = 1.0,
    max_length_offset: int = 50,
    use_cache: bool = True,
) -> list[list[int]]:
    """Batched beam search (see the module docstring). src: (B, S) right-padded source ids.

    Returns each sentence's best target ids, without <s> and </s>. beam_size 1 is greedy search.
    """
    check_capable(model, "beam search", TRANSLATE)
    vocab_size = model.config.vocab_size
    if not 1 <= beam_size <= vocab_size // 2:
        raise UserError(
            f"beam size must be between 1 and {vocab_size // 2} (half the vocabulary: each step "
            f"ranks twice the beam's extensions), got {beam_size}"
        )
    limits = max_target_lengths(src, model, max_length_factor, max_length_offset)
    with eval_mode(model):
        search = _Search(model, src, beam_size, length_penalty, limits, use_cache)
        search.run()
    return search.best()


def encode_sources(sentences: Sequence[str], tokenizer, model: nn.Module) -> torch.Tensor:
    """(B, S) right-padded source ids: each sentence's BPE ids and </s>, cut to max_length."""
    c = model.config
    ids = [tokenizer.encode(s)[: c.max_length - 1] + [c.eos_id] for s in sentences]
    src = torch.full((len(ids), max(map(len, ids))), c.pad_id, dtype=torch.long)
    for row, sentence in enumerate(ids):
        src[row, : len(sentence)] = torch.tensor(sentence)
    return src


def translate(
    model: nn.Module,
    tokenizer,
    sentences: Sequence[str],
    *,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    batch_size: int = 32,
    max_length_factor: float = 1.0,
    max_length_offset: int = 50,
    progress: bool = False,
) -> list[str]:
    """Detokenized translations of `sentences`, in order, each on one line; a blank sentence's
    is blank (nothing to translate). Sentences are decoded in batches of similar length (less
    padding); a source longer than the model's max_length is cut to fit. progress: a bar on
    stderr when it is a terminal."""
    check_capable(model, "translation", TRANSLATE)
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    written = (i for i in range(len(sentences)) if sentences[i].strip())
    order = sorted(written, key=lambda i: len(sentences[i]))
    results: list[str] = [""] * len(sentences)
    bar = progress_bar(progress, total=len(order), desc="translating", unit=" sentences")
    with eval_mode(model), bar:
        for first in range(0, len(order), batch_size):
            chosen = order[first : first + batch_size]
            src = encode_sources([sentences[i] for i in chosen], tokenizer, model).to(device)
            outputs = beam_search(
                model,
                src,
                beam_size=beam_size,
                length_penalty=length_penalty,
                max_length_factor=max_length_factor,
                max_length_offset=max_length_offset,
            )
            for i, ids in zip(chosen, outputs, strict=True):
                # One line per translation: any line break or whitespace run (a byte-level
                # model can emit them) becomes one space.
                results[i] = " ".join(tokenizer.decode(ids).split())
            bar.update(len(chosen))
    return results
