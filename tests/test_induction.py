"""Induction heads (interpretability/induction.py): known answers for the scores, the phase
change in a tiny attention-only GPT trained on repeated random tokens, and the Trainer's probe."""

import json
import math

import pytest
import torch
from helpers import one_line_error, run
from torch import nn

from attnlab.errors import UserError
from attnlab.interpretability.induction import (
    induction_scores,
    prefix_matching,
    repeated_random_tokens,
)
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.training.probes import parse_probes
from attnlab.training.trainer import TrainConfig


def test_repeated_random_tokens():
    tokens = repeated_random_tokens(5, 8, 20, torch.Generator().manual_seed(0))
    assert tokens.shape == (5, 16) and torch.equal(tokens[:, :8], tokens[:, 8:])
    assert all(len(set(row[:8].tolist())) == 8 for row in tokens)  # distinct within a copy
    assert repeated_random_tokens(2, 8, 3).max() < 3  # fewer tokens than positions: repeats


def test_prefix_matching_known_answers():
    tokens = torch.tensor([[5, 6, 7, 5, 6, 7]])  # L = 3
    induction = torch.zeros(1, 2, 6, 6)
    for t in range(3, 6):
        induction[0, 0, t, t - 2] = 1.0  # head 0: the token after the earlier occurrence
        induction[0, 1, t, t - 3] = 1.0  # head 1: the earlier occurrence itself
    induction[0, :, :3, 0] = 1.0
    assert prefix_matching(induction, tokens, 3).tolist() == [1.0, 0.0]


class NoFeedForward(nn.Module):
    """Adds nothing to the residual stream: an attention-only model (Olsson et al. study
    attention-only transformers to isolate induction heads)."""

    def forward(self, x):
        return torch.zeros_like(x)


def train_attention_only(n_layers, steps=1200, vocab=32, length=10, seed=0):
    """An attention-only GPT trained on random tokens repeated twice. ALiBi: a one-layer model
    then cannot find the earlier copy by position (learned positions let one head attend a
    fixed distance back, which scores as prefix matching without being an induction head)."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab, context_length=2 * length, n_layers=n_layers,
                       n_heads=4, d_model=64, positional="alibi")  # fmt: skip
    model = GPT(config)
    for block in model.blocks:
        block.feedforward = NoFeedForward()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        first = torch.randint(vocab, (32, length), generator=generator)
        x = torch.cat([first, first], 1)
        _, loss = model(x[:, :-1], x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_two_layers_grow_an_induction_head_and_one_layer_does_not():
    two = induction_scores(train_attention_only(2), length=10, seed=1)
    one = induction_scores(train_attention_only(1), length=10, seed=1)
    layer, head, best = two.best
    print(f"2 layers: {two.prefix_matching.tolist()}, copying {two.copying.tolist()}")
    print(f"1 layer: {one.prefix_matching.tolist()}, copying {one.copying.tolist()}")
    assert layer == 1 and best > 0.5  # in the second layer, as the paper finds
    assert one.best[2] < 0.3
    assert two.copying[layer, head] > 0.7  # the head raises the token it attends to
    # Both predict the second copy better than the first (one layer learns that tokens already
    # seen come back), but the induction head predicts it far better.
    print(f"in-context scores: 2 layers {two.in_context_score}, 1 layer {one.in_context_score}")
    assert two.in_context_score < one.in_context_score - 0.5 < -0.5


def test_trainer_logs_the_induction_probe_and_plots_it(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefghij klmnopqrst uvwxyz. " * 60)
    out = tmp_path / "run"
    code, _, err = run(
        ["train", "gpt", "--data", str(corpus), "--out", str(out), "--context-length", "16",
         "--n-layers", "1", "--n-heads", "2", "--d-model", "16", "--batch-size", "4",
         "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--device", "cpu",
         "--probes", "induction", "--no-cpu-kernels"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 <= r["induction_score"] <= 1 and "in_context_score" in r for r in evals)
    assert (out / "loss.png").is_file()


def test_unknown_probes_are_refused():
    assert parse_probes(" induction, ") == ["induction"]
    with pytest.raises(Exception, match="unknown probe"):
        TrainConfig(probes="induction,telepathy")


@pytest.mark.parametrize(
    "kind, flags, message",
    [
        ("gpt", ["--mixer", "hyena"], "--probes induction: GPT has no self-attention layers to "
         "score (its hyena token mixers compute no attention weights)"),
        ("gpt", ["--context-length", "3"], "a context of 3 is too short"),
        ("bert", [], "need a causal language model, which bert is not"),
        ("lstm_lm", [], "--probes induction: RecurrentLM has no self-attention layers"),
    ],
)  # fmt: skip
def test_a_probe_that_cannot_score_the_model_stops_the_run_before_training(
    kind, flags, message, tmp_path, capsys
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefghij klmnopqrst uvwxyz.\n" * 60)
    out = tmp_path / "run"
    argv = ["train", kind, "--data", str(corpus), "--out", str(out), "--n-layers", "1",
            "--d-model", "16", "--batch-size", "4", "--max-iters", "4", "--eval-iters", "1",
            "--device", "cpu", "--tokenizer", "char", "--probes", "induction", *flags]  # fmt: skip
    if kind != "lstm_lm" and "--mixer" not in flags:  # attention's heads
        argv += ["--n-heads", "2"]
    assert message in one_line_error(*run(argv, capsys)[::2])
    assert not out.exists()  # nothing written: no run.json to trip the next run


def test_a_one_symbol_vocabulary_is_refused_not_scored_nan(tmp_path, capsys):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "run"
    corpus.write_text("a" * 200)  # one token, repeated: a copy is the same as any other
    argv = ["train", "gpt", "--data", str(corpus), "--out", str(out), "--n-layers", "1",
            "--n-heads", "1", "--d-model", "8", "--context-length", "8", "--max-iters", "2",
            "--device", "cpu", "--probes", "induction"]  # fmt: skip
    assert "2 or more token values" in one_line_error(*run(argv, capsys)[::2])
    assert not (out / "metrics.jsonl").exists()


def test_many_sequences_are_scored_a_chunk_at_a_time(monkeypatch):
    """Memory follows the chunk, not --sequences: 10 sequences in chunks of 4 are three passes
    of at most 4 rows, and a chunk's scores count by its rows (the last holds 2)."""
    import attnlab.interpretability.induction as induction

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, context_length=16, n_layers=2, n_heads=2, d_model=16))
    monkeypatch.setattr(induction, "CHUNK", 4)
    rows = []
    model.register_forward_pre_hook(lambda module, args: rows.append(args[0].size(0)))
    report = induction_scores(model, n_sequences=10, copying=False)
    assert rows == [4, 4, 2]
    generator = torch.Generator().manual_seed(0)
    parts = [repeated_random_tokens(n, 8, 30, generator) for n in (4, 4, 2)]
    with torch.no_grad():
        firsts = [induction.position_losses(model.eval()(t)[0], t)[:, :7].mean() for t in parts]
    expected = (4 * firsts[0] + 4 * firsts[1] + 2 * firsts[2]) / 10
    assert report.loss_first == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(n_tokens=31), "n_tokens must be 2 to the vocabulary size 30, got 31"),  # IndexError
        (dict(n_tokens=0), "n_tokens must be 2 to the vocabulary size 30, got 0"),  # all of it
        (dict(n_sequences=0), "n_sequences must be at least 1, got 0"),  # an IndexError
        (dict(n_tokens=1), "need 2 or more token values to draw from, got 1"),  # copying: NaN
    ],
)
def test_bad_numbers_of_tokens_or_sequences_are_named(options, message):
    model = GPT(GPTConfig(vocab_size=30, context_length=16, n_layers=1, n_heads=2, d_model=16))
    with pytest.raises(UserError, match=message):
        induction_scores(model, **options)


def test_two_token_values_are_enough_to_score():
    model = GPT(GPTConfig(vocab_size=30, context_length=16, n_layers=1, n_heads=2, d_model=16))
    report = induction_scores(model, n_sequences=2, n_tokens=2)
    assert math.isfinite(report.in_context_score) and report.prefix_matching.isfinite().all()
    assert report.copying is not None and report.copying.isfinite().all()
