"""The memory a masked LM's data takes: what is kept grows with the corpus only as its ids do
(the packing, the cached lines), and evaluation batches are made as they are read."""

import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch
from helpers import read_only

from attnlab.data.masked_lm import (
    MaskedLMDataConfig,
    encode_lines_cached,
    masked_lm_training_data,
    pack_sentences,
)
from attnlab.errors import UserError
from attnlab.tokenizers import build_tokenizer
from attnlab.training.config import TrainConfig
from attnlab.training.sources import DataRequest


def peak_bytes(function, *args):
    """(result, the most bytes Python and numpy held at once while `function` ran)."""
    tracemalloc.start()
    try:
        return function(*args), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_packing_holds_little_beside_the_packed_rows():
    """200,000 tokens: Python lists of every row held 5 times the packed array's bytes."""
    rng = np.random.default_rng(0)
    starts = np.concatenate([[0], np.cumsum(rng.integers(1, 40, 10_000))])
    tokens = rng.integers(300, 8000, starts[-1]).astype(np.int32)
    rows, peak = peak_bytes(pack_sentences, tokens, starts, 64, 1, 2, 0)
    assert peak < 1.5 * rows.nbytes
    assert (rows[:, 0] == 1).all() and (rows == 2).sum(1).tolist() == [1] * len(rows)
    assert rows[(rows > 2)].tolist() == tokens.tolist()  # every token once, in order


def test_cached_lines_are_written_without_a_copy_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    tokenizer = build_tokenizer("char", ["ab \n"], special_tokens=["[PAD]"])
    pieces = ["ab ba a b\n" * 500] * 200  # 1M characters, a piece at a time
    (tokens, starts), peak = peak_bytes(encode_lines_cached, pieces, tokenizer)
    assert len(tokens) == 1_000_000 and len(starts) == 100_001
    assert peak < 3 * tokens.nbytes  # the pieces' ids and their concatenation; not 4 times


def test_a_read_only_cache_is_one_line_before_the_lines_are_encoded(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    read_only(monkeypatch, tmp_path)
    tokenizer = build_tokenizer("char", ["ab \n"], special_tokens=["[PAD]"])
    monkeypatch.setattr(tokenizer, "encode", None)  # never reached
    with pytest.raises(UserError, match=r"cannot write to .*lines \(the cache; ATTNLAB_CACHE"):
        encode_lines_cached(["ab ba\n"], tokenizer)


@pytest.mark.parametrize("evaluate", ["", "all"])
def test_evaluation_batches_are_masked_as_read_the_same_each_time(tmp_path, evaluate):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"line {i} of a small corpus\n" for i in range(200)))
    train = TrainConfig(batch_size=4, eval_iters=2)
    request = DataRequest(MaskedLMDataConfig(str(corpus), "char"), {"context_length": 16}, train,
                          None, evaluate=evaluate)  # fmt: skip
    batches = masked_lm_training_data(request).eval["val"]
    first = batches()
    assert not isinstance(first, list | tuple)  # not every batch of the data at once
    for a, b in zip(first, batches(), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_text_only_to_score_is_scored_whole_however_short(tmp_path):
    """Data the model never saw (evaluate="all") has no tenth to hold out: fewer than ten
    sequences are scored, all of them, where training would need ten."""
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"line {i} of a small corpus\n" for i in range(6)))
    train = TrainConfig(batch_size=4, eval_iters=1)
    request = DataRequest(MaskedLMDataConfig(str(corpus), "char"), {"context_length": 32}, train,
                          None, evaluate="all")  # fmt: skip
    rows = sum(len(ids) for ids, _ in masked_lm_training_data(request).eval["val"]())
    assert rows == 6  # a line a sequence
    with pytest.raises(UserError, match="at least 10 are needed"):
        masked_lm_training_data(dataclasses.replace(request, evaluate=""))


def test_throughput_counts_the_tokens_of_a_batch_not_the_padding_of_its_rows(tmp_path):
    """Sentences are packed whole: a row ends in padding where the next sentence does not fit
    (18% of tiny Shakespeare's in rows of 128), which tokens/s and MFU leave out."""
    from attnlab.models.bert import BertConfig, BertForMaskedLM
    from attnlab.training.trainer import Trainer

    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"line {i} of a small corpus\n" for i in range(200)))
    train = TrainConfig(batch_size=4, precision="fp32", cpu_kernels=False, device="cpu")
    request = DataRequest(MaskedLMDataConfig(str(corpus), "char"), {"context_length": 40}, train)
    data = masked_lm_training_data(request)
    state = data.train.state_dict()
    ids, _ = data.train.next()
    data.train.load_state_dict(state)  # the step draws this batch again
    fields = data.model_fields
    shape = {"context_length": 40, "n_layers": 1, "n_heads": 2, "d_model": 16}
    model = BertForMaskedLM(BertConfig(**fields, **shape))
    trainer = Trainer(model, train, data.train, data.eval, out_dir=tmp_path / "run")
    record = trainer.train_step()
    tokens = int((ids != fields["pad_id"]).sum())
    assert tokens < ids.numel()
    assert record["tokens_per_s"] * record["elapsed_s"] == pytest.approx(tokens)
