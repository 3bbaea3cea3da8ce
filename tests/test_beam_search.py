import dataclasses
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers import Terminal, caches_made
from torch import nn

from attnlab.errors import UserError
from attnlab.generation.beam_search import (
    beam_search,
    encode_sources,
    gnmt_length_penalty,
    greedy_search,
    max_target_lengths,
    translate,
)
from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig

PAD, BOS, EOS, V = 0, 1, 2, 40
SEARCHES = (greedy_search, beam_search)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    config = EncoderDecoderConfig(
        vocab_size=V,
        max_length=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        n_heads=2,
        d_model=16,
        d_ff=32,
        dropout=0.0,
        share_embeddings=False,
    )
    model = EncoderDecoder(config).eval()
    # Sharper distributions and a bias towards </s>, so that hypotheses end at varied lengths
    # before the limit and beam search disagrees with greedy: a random model rarely ends.
    with torch.no_grad():
        model.output_projection.weight.mul_(4)
        model.output_projection.bias = nn.Parameter(torch.zeros(V))
        model.output_projection.bias[EOS] = 2.0
    return model


def sources(lengths=(5, 9, 3, 7, 1)):
    src = torch.full((len(lengths), max(lengths)), PAD)
    for row, length in enumerate(lengths):
        src[row, : length - 1] = torch.randint(3, V, (length - 1,))
        src[row, length - 1] = EOS
    return src


def test_beam_size_one_is_greedy(model):
    src = sources()
    greedy = greedy_search(model, src, max_length_offset=12)
    assert beam_search(model, src, beam_size=1, max_length_offset=12) == greedy
    limits = max_target_lengths(src, model, offset=12).tolist()
    assert any(
        len(ids) < limit - 1 for ids, limit in zip(greedy, limits, strict=True)
    )  # some ended early
    assert beam_search(model, src, beam_size=4, max_length_offset=12) != greedy


def test_searches_run_a_training_model_without_dropout_and_give_it_back(model):
    src = sources()
    expected = {search: search(model, src, max_length_offset=12) for search in SEARCHES}
    dropping = EncoderDecoder(dataclasses.replace(model.config, dropout=0.5))
    dropping.output_projection.bias = nn.Parameter(torch.zeros(V))  # as the fixture's
    dropping.load_state_dict(model.state_dict())
    dropping.train()
    for search in SEARCHES:
        assert search(dropping, src, max_length_offset=12) == expected[search]
        assert dropping.training


def test_cached_decoding_equals_full_recompute(model, monkeypatch):
    src, made = sources(), caches_made(monkeypatch, model)
    for search, options in ((greedy_search, {}), (beam_search, {"beam_size": 4})):
        cached = search(model, src, max_length_offset=12, **options)
        assert made
        made.clear()
        assert search(model, src, max_length_offset=12, use_cache=False, **options) == cached
        assert not made


def test_padding_does_not_change_outputs(model):
    src = sources()
    together = beam_search(model, src, beam_size=3, max_length_offset=12)
    for row in range(src.size(0)):
        alone = src[row : row + 1, : int((src[row] != PAD).sum())]
        assert beam_search(model, alone, beam_size=3, max_length_offset=12) == [together[row]]
    wider = torch.nn.functional.pad(src, (0, 5), value=PAD)
    assert beam_search(model, wider, beam_size=3, max_length_offset=12) == together


def test_length_limit(model):
    src = sources()
    limits = max_target_lengths(src, model, factor=0.5, offset=2)
    assert limits.tolist() == [4, 6, 3, 5, 2]  # floor(0.5 * |X| + 2), </s> included
    for search in (greedy_search, beam_search):
        outputs = search(model, src, max_length_factor=0.5, max_length_offset=2)
        assert all(
            len(ids) <= limit - 1 for ids, limit in zip(outputs, limits.tolist(), strict=True)
        )
        assert search(model, src, max_length_factor=0.0, max_length_offset=0) == [[]] * 5
    long = max_target_lengths(src, model, factor=100.0, offset=0)
    assert long.max() == model.config.max_length


def test_gnmt_length_penalty():
    assert gnmt_length_penalty(1, 0.6) == 1.0
    assert math.isclose(gnmt_length_penalty(7, 1.0), 2.0)
    assert gnmt_length_penalty(30, 0.0) == 1.0


class HistoryCache:
    """The fake model's decoding state: the target tokens so far, reordered by beam search."""

    def __init__(self):
        self.history = None

    def append(self, tokens):
        self.history = tokens if self.history is None else torch.cat([self.history, tokens], 1)
        return self.history

    def reorder(self, index):
        self.history = self.history[index]


class TableModel(nn.Module):
    """A fake encoder-decoder whose next-token probabilities depend only on the target prefix.

    Tokens 3 = A, 4 = B, 5 = X. After <s>: A 0.6, B 0.4. After A: X 0.4, </s> 0.3, B 0.3.
    After B: </s> 0.9, X 0.1. After A X: </s> 1. So greedy says A X (p = 0.24), while the most
    likely output is B (p = 0.36); a strong length penalty prefers the longer A X again.
    """

    NEXT = {
        (): {3: 0.6, 4: 0.4},
        (3,): {5: 0.4, EOS: 0.3, 4: 0.3},
        (4,): {EOS: 0.9, 5: 0.1},
        (3, 5): {EOS: 1.0},
    }

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(
            pad_id=PAD, bos_id=BOS, eos_id=EOS, vocab_size=6, max_length=10
        )
        self.weight = nn.Parameter(torch.zeros(1))

    def encode(self, src):
        return torch.zeros(src.size(0), src.size(1), 1), (src != PAD)[:, None, None, :]

    def new_cache(self):
        return HistoryCache()

    def decode(self, tokens, memory, src_mask, cache=None):
        if cache is not None:
            tokens = cache.append(tokens)
        logits = torch.full((tokens.size(0), tokens.size(1), 6), -30.0)
        for row, prefix in enumerate(tokens[:, 1:].tolist()):
            for token, p in self.NEXT.get(tuple(prefix), {EOS: 1.0}).items():
                logits[row, -1, token] = math.log(p)
        return logits


def test_beam_search_finds_what_greedy_misses():
    model, src = TableModel(), torch.tensor([[3, EOS]])
    assert greedy_search(model, src) == [[3, 5]]
    for use_cache in (True, False):
        assert beam_search(model, src, beam_size=2, length_penalty=0.0, use_cache=use_cache) == [
            [4]
        ]
    assert beam_search(model, src, beam_size=2, length_penalty=5.0) == [[3, 5]]
    # |Y| counts </s>: B </s> scores log 0.36 / (7/6)^α, A X </s> log 0.24 / (8/6)^α, and A X
    # wins from α = 2.50 on (from α = 2.17 were |Y| to leave </s> out)
    assert beam_search(model, src, beam_size=2, length_penalty=2.3) == [[4]]
    assert beam_search(model, src, beam_size=2, length_penalty=2.7) == [[3, 5]]


def test_pad_and_bos_are_never_chosen(monkeypatch):
    monkeypatch.setitem(TableModel.NEXT, (), {BOS: 0.5, PAD: 0.3, 3: 0.2})
    model, src = TableModel(), torch.tensor([[3, EOS]])
    assert greedy_search(model, src) == [[3, 5]]
    assert beam_search(model, src, beam_size=2, length_penalty=0.0) == [[3, 5]]


def test_bad_beam_size(model):
    with pytest.raises(UserError, match="beam size"):
        beam_search(model, sources(), beam_size=V)


class CharTokenizer:
    """Letters a..z as ids 3..28 (enough for translate's encode/decode)."""

    def encode(self, text):
        return [3 + ord(c) - ord("a") for c in text if c.isalpha()]

    def decode(self, ids):
        return "".join(chr(ord("a") + i - 3) for i in ids if 3 <= i < 29)


def test_translate_keeps_input_order(model, monkeypatch):
    sentences = ["abc", "hello there", "", "x", "a much longer sentence than the rest"]
    tokenizer = CharTokenizer()
    outputs = translate(model, tokenizer, sentences, beam_size=2, batch_size=2, max_length_offset=8)
    one_by_one = [
        translate(model, tokenizer, [s], beam_size=2, max_length_offset=8)[0] for s in sentences
    ]
    assert outputs == one_by_one and len(outputs) == len(sentences)
    monkeypatch.setattr("sys.stderr", Terminal())  # a bar counting the sentences written
    shown = translate(model, tokenizer, sentences, beam_size=2, batch_size=2, max_length_offset=8,
                      progress=True)  # fmt: skip
    assert shown == outputs
    assert "translating: 100%" in sys.stderr.getvalue() and "4/4 [" in sys.stderr.getvalue()
    src = encode_sources(sentences, tokenizer, model)
    assert src[2].tolist()[0] == EOS and (src[:, -1] != PAD).sum() == 1


def test_a_huge_length_penalty_ranks_as_a_large_one_without_overflowing():
    # ((5 + |Y|) / 6)^α overflows a float from α of a few thousand on: the ranking must not
    model, src = TableModel(), torch.tensor([[3, EOS]])
    for alpha in (1e4, 1e30):
        assert beam_search(model, src, beam_size=2, length_penalty=alpha) == [[3, 5]]


def test_a_certain_output_ranks_first_at_any_length_penalty(monkeypatch):
    # log P rounds to 0 in float32: the best a hypothesis can be, not a log of 0; the other
    # finished one (B </s>, P about 1e-13) is less likely at any α
    monkeypatch.setitem(TableModel.NEXT, (), {3: 1.0})
    monkeypatch.setitem(TableModel.NEXT, (3,), {EOS: 1.0})
    for alpha in (0.0, 1.0, 1e4):
        src = torch.tensor([[3, EOS]])
        assert beam_search(TableModel(), src, beam_size=2, length_penalty=alpha) == [[3]]
