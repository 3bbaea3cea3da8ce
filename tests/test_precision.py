"""Training in bf16 on a CPU: what a processor that emulates bf16 must still get right."""

import copy
import json

import numpy as np
import pytest
import torch
from helpers import run

from attnlab import devices
from attnlab.data.text import TextSplits, language_model_data
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.tokenizers import CharTokenizer
from attnlab.training.checkpoints import save_checkpoint
from attnlab.training.trainer import TrainConfig, Trainer

TEXT = "a stitch in time saves nine. " * 40
TOKENIZER = CharTokenizer.from_text(TEXT)


def test_mfu_is_against_the_fp32_peak_where_bf16_products_are_slower(tmp_path, monkeypatch):
    """A CPU without bf16 instructions multiplies large bf16 matrices some 70x slower than
    fp32 ones, and a small model's small products faster than that: against the bf16 peak its
    MFU came out above 1. The faster of the two peaks is what the hardware can do."""
    cpu = str(torch.device("cpu"))
    peaks = {(cpu, torch.float32): 1e11, (cpu, torch.bfloat16): 1e9}
    monkeypatch.setattr(devices, "_PEAK_FLOPS", peaks)
    config = TrainConfig(
        max_iters=2, batch_size=2, eval_iters=1, precision="bf16", device="cpu", cpu_kernels=False
    )
    model = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, context_length=16, n_layers=1,
                          n_heads=2, d_model=16))  # fmt: skip
    splits = TextSplits.from_tokens(np.array(TOKENIZER.encode(TEXT), dtype=np.uint16))
    train, evaluation = language_model_data(splits, 2, 16, config.seed, 1)
    trainer = Trainer(model, config, train, evaluation, out_dir=tmp_path)
    assert trainer.dtype == torch.bfloat16
    record = trainer.train_step()
    expected = model.flops_per_token() * record["tokens_per_s"] / 1e11
    assert record["mfu"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_recurrent_model_trains_under_cpu_bf16_autocast(cell):
    """Under autocast torch gave a float32 input to oneDNN's LSTM and cast it to bf16 there,
    which a CPU without bf16 instructions cannot run: `--precision bf16` ended in a
    RuntimeError ("could not create a primitive descriptor"). Its result is bf16's rounding of
    the float32 one."""
    model = RecurrentLM(RecurrentLMConfig(vocab_size=20, context_length=12, d_model=16, cell=cell))
    tokens = torch.randint(0, 20, (3, 12))
    reference, _ = model(tokens)
    cpu = torch.device("cpu")
    with devices.autocast(cpu, torch.bfloat16):
        logits, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    error = (logits.float() - reference[:, :-1]).abs().max()
    assert 0 < error < 0.02 * reference.abs().max()  # rounded as bf16 rounds, no more


def test_evaluate_scores_bf16_or_fp16_weights_in_fp32(tmp_path, capsys):
    """`attnlab evaluate` scores in fp32: weights saved in bf16 or fp16 (a model imported in
    them) score as the same weights widened to float32, not in their own precision."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, context_length=16, n_layers=1,
                          n_heads=2, d_model=16, positional="sinusoidal"))  # fmt: skip
    scores = {}
    for dtype in (torch.bfloat16, torch.float16):
        narrow = copy.deepcopy(model).to(dtype)
        for name, weights in ((dtype, narrow), (torch.float32, copy.deepcopy(narrow).float())):
            assert next(weights.parameters()).dtype == name
            out = tmp_path / f"{dtype}-{name}"
            save_checkpoint(out, weights, {"tokenizer": TOKENIZER})
            code, text, err = run(["evaluate", str(out), "--data", str(corpus), "--json"], capsys)
            assert code == 0, err
            scores[name] = json.loads(text)["loss"]
        assert scores[dtype] == scores[torch.float32]
