"""Training in bf16 on a CPU: what a processor that emulates bf16 must still get right."""

import copy
import json

import numpy as np
import pytest
import torch
from helpers import run

from attnlab import devices
from attnlab.cli import checkpoint
from attnlab.data.text import TextSplits, language_model_data
from attnlab.layers.recurrent import make_recurrence, recurrent_state, run_recurrence
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.recurrent_lm import RecurrentLM, RecurrentLMConfig
from attnlab.tokenizers import CharTokenizer
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint
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
    peaks[(cpu, torch.bfloat16)] = 1e12  # a CPU with bf16 instructions: its own is faster
    record = trainer.train_step()
    expected = model.flops_per_token() * record["tokens_per_s"] / 1e12
    assert record["mfu"] == pytest.approx(expected, rel=1e-6)


def test_mfu_is_against_a_gpus_own_precision_and_a_cpus_faster_one(monkeypatch):
    """A GPU's bf16 is never slower than its fp32 (whose peak is not measured there); a CPU's
    emulated bf16 may be, so a CPU's peak is the faster of the two."""
    peaks = {("cuda", torch.bfloat16): 4e14, ("cuda", torch.float32): 5e14}
    peaks |= {("cpu", torch.bfloat16): 1e9, ("cpu", torch.float32): 1e11}
    monkeypatch.setattr(devices, "_PEAK_FLOPS", peaks)
    assert devices.mfu_peak_flops(torch.device("cuda"), torch.bfloat16) == 4e14
    assert devices.mfu_peak_flops(torch.device("cpu"), torch.bfloat16) == 1e11
    peaks[("cpu", torch.bfloat16)] = 3e11  # a CPU with bf16 instructions
    assert devices.mfu_peak_flops(torch.device("cpu"), torch.bfloat16) == 3e11


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


def test_a_gru_under_cpu_bf16_autocast_keeps_its_hidden_state_in_float32():
    """The LSTM's inputs are cast to bf16 for a kernel that runs on any CPU; a GRU runs as
    torch runs it, its hidden state carried in float32 (cast, it was rounded to bf16 at every
    step)."""
    recurrence = make_recurrence("gru", 16, 16)
    x = torch.randn(2, 24, 16)
    state = recurrent_state()
    with devices.autocast(torch.device("cpu"), torch.bfloat16):
        out = run_recurrence(recurrence, x, state)
        expected, hidden = recurrence(x)
    assert out.dtype == state.get("h").dtype == torch.float32
    assert torch.equal(out, expected) and torch.equal(state.get("h"), hidden)


def test_evaluate_scores_a_bf16_model_as_trained_in_fp32(tmp_path, capsys):
    """A masked LM (scored by the evaluation its training ran) in bf16 weights scores as the
    same weights widened to float32, as a language model's do."""
    from attnlab.data.masked_lm import SPECIALS
    from attnlab.models.bert import BertConfig, BertForMaskedLM

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT.replace(". ", ".\n"))
    tokenizer = CharTokenizer.from_text(TEXT, special_tokens=SPECIALS)
    pad = tokenizer.special_tokens["[PAD]"]
    config = BertConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1,
                        n_heads=2, d_model=16, pad_id=pad)  # fmt: skip
    narrow = BertForMaskedLM(config).to(torch.bfloat16)
    scores = []
    for name, weights in (("bf16", narrow), ("fp32", copy.deepcopy(narrow).float())):
        save_checkpoint(tmp_path / name, weights, {"tokenizer": tokenizer})
        argv = ["evaluate", str(tmp_path / name), "--data", str(corpus), "--json"]
        code, text, err = run(argv, capsys)
        assert code == 0, err
        scores.append(json.loads(text)["val_loss"])
    assert scores[0] == scores[1]


def test_widening_leaves_the_callers_random_state_and_gives_a_model_in_eval_mode(tmp_path):
    """Widened as loaded: the model built anew draws its first weights from no one's generator,
    and scores without dropout."""
    model = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, context_length=16, n_layers=1,
                          n_heads=2, d_model=16, dropout=0.5))  # fmt: skip
    save_checkpoint(tmp_path, model.to(torch.bfloat16), {"tokenizer": TOKENIZER})
    loaded, state = load_checkpoint(tmp_path), torch.random.get_rng_state()
    widened = checkpoint.widened(loaded)
    assert torch.equal(state, torch.random.get_rng_state()) and not widened.model.training
    assert next(widened.model.parameters()).dtype == torch.float32
