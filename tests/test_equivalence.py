"""Paths that must agree: k micro-batches and one batch k times larger, a run stopped and resumed
and the run never stopped, decoding batched, cached, greedy however asked, step by step at long
lengths, and evaluation at any batch size and in training. Each in float64 where it can be, so
that a disagreement is a bug, not rounding."""

import json

import numpy as np
import pytest
import torch
from helpers import run
from safetensors.torch import load_file

from attnlab.data.palette import Palette
from attnlab.data.text import sequential_windows
from attnlab.evaluation.evaluate import evaluate_language_model
from attnlab.generation import complete_images, generate
from attnlab.layers.hyena import Hyena, HyenaOptions
from attnlab.layers.mamba import Mamba, MambaOptions
from attnlab.layers.recurrent import RecurrentMixer
from attnlab.models.bert import BertConfig, BertForMaskedLM
from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.image_gpt import ImageGPT, ImageGPTConfig
from attnlab.tokenizers import CharTokenizer
from attnlab.training.sources import IGNORE_INDEX
from attnlab.training.trainer import TrainConfig, Trainer

F64 = dict(rtol=0, atol=1e-12)
V, PAD = 20, 0


class Rows:
    """The rows of fixed tensors, `rows` at a time, in order."""

    unit = "token"

    def __init__(self, tensors: tuple[torch.Tensor, ...], rows: int):
        self.tensors, self.rows, self.start = tensors, rows, 0

    def next(self):
        part = slice(self.start, self.start + self.rows)
        self.start += self.rows
        return tuple(t[part] for t in self.tensors)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def one_step(tmp_path, model, batch, micro_batches):
    """The loss of one optimizer step of `micro_batches` micro-batches over the rows of
    `batch`, and the gradients the optimizer received."""
    config = TrainConfig(max_iters=1, gradient_accumulation=micro_batches, grad_clip=0.0,
                         precision="fp32", device="cpu", cpu_kernels=False)  # fmt: skip
    rows = len(batch[0]) // micro_batches
    trainer = Trainer(model.double(), config, Rows(batch, rows), {}, out_dir=tmp_path)
    seen = []
    trainer.optimizer.step = lambda: seen.append([p.grad.clone() for p in model.parameters()])
    return trainer.train_step()["train_loss"], seen[0]


def masked_lm_batch():
    """Rows with from 1 to 10 masked positions, and padding, in every micro-batch split."""
    ids = torch.randint(4, V, (8, 12))
    ids[5:, 7:] = PAD
    chosen = (torch.rand(ids.shape) < torch.linspace(0.05, 0.9, 8)[:, None]) & (ids != PAD)
    chosen[:, 1] = True
    model = BertForMaskedLM(BertConfig(vocab_size=V, context_length=16, n_layers=1, n_heads=2,
                                       d_model=16, dropout=0.0, pad_id=PAD))  # fmt: skip
    return model, (ids, torch.where(chosen, ids, IGNORE_INDEX))


def translation_batch():
    """Sources and targets of 1 to 8 tokens, the rest padding."""
    src, tgt_in, tgt_out = (torch.randint(3, V, (8, n)) for n in (10, 9, 9))
    for row in range(8):
        src[row, 2 + row :] = PAD
        tgt_in[row, 1 + row :], tgt_out[row, 1 + row :] = PAD, IGNORE_INDEX
    config = EncoderDecoderConfig(vocab_size=V, max_length=16, n_encoder_layers=1,
                                  n_decoder_layers=1, n_heads=2, d_model=16, d_ff=32,
                                  dropout=0.0, pad_id=PAD, bos_id=1, eos_id=2)  # fmt: skip
    return EncoderDecoder(config), (src, tgt_in, tgt_out)


@pytest.mark.parametrize("make", [masked_lm_batch, translation_batch])
@pytest.mark.parametrize("micro_batches", [2, 4])
def test_micro_batches_of_uneven_scored_targets_step_like_one_batch(tmp_path, make, micro_batches):
    """A masked LM's micro-batches score different numbers of masked positions, a
    translation's of real target tokens: each weighs in by its count, not as a mean of means."""
    model, batch = make()
    scored = [(t != IGNORE_INDEX).sum() for t in batch[-1].chunk(micro_batches)]
    assert len(set(map(int, scored))) == micro_batches  # uneven: a mean of means would differ
    state = {k: v.clone() for k, v in model.state_dict().items()}
    whole_loss, whole = one_step(tmp_path, model, batch, 1)
    model.load_state_dict(state)
    loss, accumulated = one_step(tmp_path, model, batch, micro_batches)
    assert loss == pytest.approx(whole_loss, rel=1e-6)  # the step's loss is summed in fp32
    assert max(g.abs().max() for g in whole) > 1e-2
    for mine, theirs in zip(accumulated, whole, strict=True):
        torch.testing.assert_close(mine, theirs, **F64)


# ----------------------------------------------------------------- resume
@pytest.fixture
def lines(tmp_path):
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "off"]
    picks = torch.randint(len(words), (300, 6)).tolist()
    path = tmp_path / "lines.txt"
    path.write_text("".join(" ".join(words[i] for i in row) + "\n" for row in picks))
    return path


SHAPES = {
    "bert": ["--context-length", "32", "--n-heads", "2", "--gradient-accumulation", "2"],
    "lstm_lm": ["--context-length", "16"],
    "igpt": ["--embedded-images", "64", "--pixels-per-token", "4", "--shift", "1"],
}


@pytest.mark.parametrize("kind", SHAPES)
def test_a_run_stopped_and_resumed_is_the_run_never_stopped(tmp_path, lines, kind, capsys):
    """Dropout, the data's random draws (masks, shifts) and the warmup go on where they were."""
    data = [] if kind == "igpt" else ["--data", str(lines), "--tokenizer", "char"]
    args = [*data, *SHAPES[kind], "--n-layers", "1", "--d-model", "16", "--batch-size", "4",
            "--eval-iters", "2", "--eval-interval", "2", "--dropout", "0.2", "--precision",
            "fp32", "--lr-schedule", "constant", "--warmup-iters", "5",
            "--no-cpu-kernels"]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run(["train", kind, "--out", str(whole), "--max-iters", "6", *args], capsys)[0] == 0
    assert run(["train", kind, "--out", str(part), "--max-iters", "3", *args], capsys)[0] == 0
    code, _, err = run(["train", kind, "--out", str(part), "--resume", "--max-iters", "6"], capsys)
    assert code == 0, err

    def records(out):  # but the evaluation that ended the first part, and the timings
        logged = [json.loads(line) for line in (out / "metrics.jsonl").open()]
        return [
            {k: v for k, v in r.items() if "_per_s" not in k and k not in ("elapsed_s", "mfu")}
            for r in logged
            if r["step"] != 3
        ]

    assert records(part) == records(whole) and len(records(whole)) == 5
    a, b = load_file(whole / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)


# ----------------------------------------------------------------- decoding
def image_gpt():
    palette = Palette(((0,), (255,)), pixels_per_token=2)
    config = ImageGPTConfig(vocab_size=palette.vocab_size + 1, context_length=32, n_layers=2,
                            n_heads=2, d_model=16, image_size=8)  # fmt: skip
    model = ImageGPT(config).eval()
    with torch.no_grad():  # wide weights: completions that differ from image to image
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return model, palette


def test_image_gpt_completions_are_greedy_however_asked_batched_or_alone_cached_or_not():
    model, palette = image_gpt()
    prompts = torch.randint(0, palette.vocab_size, (4, 16))  # the top halves
    greedy = complete_images(model, palette, prompts, temperature=0)
    assert len({tuple(row) for row in greedy[:, 16:].tolist()}) > 1
    alone = [complete_images(model, palette, row[None], temperature=0) for row in prompts]
    assert torch.equal(torch.cat(alone), greedy)
    for sampling in ({"top_k": 1}, {"temperature": 1e-6}, {"top_k": 1, "temperature": 3.0}):
        assert torch.equal(complete_images(model, palette, prompts, seed=1, **sampling), greedy)
    start = torch.full((4, 1), palette.start_token)
    uncached = generate(model, torch.cat([start, prompts], 1), 16, temperature=0, use_cache=False)
    assert uncached == greedy[:, 16:].tolist()


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_a_gpts_tiny_temperature_or_top_k_of_one_is_greedy_past_the_context(positional):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=V, context_length=8, n_layers=2, n_heads=2, d_model=16,
                       positional=positional)  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():  # wide weights: logits far from flat
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    prompts = [[1, 2, 3], [4, 5, 6]]
    greedy = generate(model, prompts, 20, temperature=0)
    for sampling in ({"top_k": 1}, {"temperature": 1e-6}, {"temperature": 1e-300}):
        assert generate(model, prompts, 20, seed=1, **sampling) == greedy


LAYERS = {
    "mamba": lambda: Mamba(MambaOptions(d_state=4), 8),
    "hyena": lambda: Hyena(HyenaOptions(order=2), 8, 1024),
    "lstm": lambda: RecurrentMixer("lstm", 8, hidden_size=5),
    "gru": lambda: RecurrentMixer("gru", 8, hidden_size=5),
}


@pytest.mark.parametrize("name", LAYERS)
@torch.no_grad()
def test_mixers_decode_step_by_step_as_their_full_pass_at_long_lengths(name):
    """1024 positions: Hyena's full pass convolves by FFT, Mamba's scans in parallel."""
    torch.manual_seed(0)
    layer = LAYERS[name]().double().eval()
    x = torch.randn(2, 1024, 8, dtype=torch.float64)
    state = layer.new_cache()
    steps = [layer(x[:, :7], cache=state)] + [layer(x[:, t : t + 1], cache=state)
                                              for t in range(7, 1024)]  # fmt: skip
    full = layer(x)
    torch.testing.assert_close(torch.cat(steps, 1) / full.abs().max(), full / full.abs().max(),
                               **F64)  # fmt: skip


# ----------------------------------------------------------------- evaluation
def test_evaluating_a_language_model_at_any_batch_size_is_the_training_loops_figure(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 12
    tokenizer = CharTokenizer.from_text(text)
    tokens = np.array(tokenizer.encode(text), dtype=np.uint16)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1,
                       n_heads=2, d_model=16)  # fmt: skip
    model = GPT(config).double()
    assert (len(tokens) - 1) % 16  # a last window shorter than the others
    figures = [evaluate_language_model(model, tokens, tokenizer, size) for size in (1, 5, 1000)]
    for figure in figures[1:]:
        assert figure["loss"] == pytest.approx(figures[0]["loss"], rel=1e-14)
        assert figure["tokens"] == figures[0]["tokens"] == len(tokens) - 1
    train = TrainConfig(max_iters=1, precision="fp32", device="cpu", cpu_kernels=False)
    windows = {"val": lambda: sequential_windows(tokens, 16, 3)}
    trainer = Trainer(model, train, Rows((), 1), windows, out_dir=tmp_path)
    assert trainer.evaluate()["val_loss"] == pytest.approx(figures[0]["loss"], rel=1e-14)


def _trained(capsys, out, kind: str, *flags: str) -> dict:
    """A one-layer model of `kind` trained 2 steps in fp32 into `out`, and its last record (an
    evaluation of all its held-out data)."""
    common = ["--n-layers", "1", "--d-model", "16", "--max-iters", "2", "--eval-interval", "2",
              "--eval-iters", "1000", "--precision", "fp32", "--no-cpu-kernels"]  # fmt: skip
    assert run(["train", kind, "--out", str(out), *common, *flags], capsys)[0] == 0
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def test_evaluate_gives_a_masked_lms_validation_loss_as_training_logged_it(tmp_path, lines, capsys):
    out = tmp_path / "run"
    flags = ["--data", str(lines), "--tokenizer", "char", "--context-length", "32"]
    flags += ["--n-heads", "2", "--batch-size", "4"]
    logged = _trained(capsys, out, "bert", *flags)["val_loss"]
    code, printed, err = run(["evaluate", str(out), "--json"], capsys)
    assert code == 0, err
    assert json.loads(printed)["val_loss"] == logged  # every held-out sequence, both times


def test_an_image_gpts_likelihood_is_the_same_at_any_batch_size_and_in_training(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--embedded-images", "64", "--batch-size", "8", "--pixels-per-token", "4"]
    logged = _trained(capsys, out, "igpt", *flags)
    for size in ("1", "7", "500"):
        code, printed, err = run(["evaluate", str(out), "--json", "--batch-size", size], capsys)
        assert code == 0, err
        figures = json.loads(printed)
        assert figures["nats_per_image"] == pytest.approx(logged["val_nats_per_image"], rel=1e-6)


def test_evaluate_gives_a_vits_plain_cross_entropy_and_says_so(tmp_path, capsys):
    """On the images and weights of the training's last evaluation (accuracy alike), whose
    val_loss is label-smoothed as training was (measured: 2.088 there, 2.058 here)."""
    out = tmp_path / "run"
    flags = ["--embedded-images", "64", "--batch-size", "8", "--label-smoothing", "0.3"]
    logged = _trained(capsys, out, "vit", *flags)
    code, printed, err = run(["evaluate", str(out), "--json"], capsys)
    assert code == 0, err
    figures = json.loads(printed)
    assert figures["images"] == 2000 and figures["accuracy"] == logged["val_accuracy"]
    with pytest.raises(SystemExit):
        run(["evaluate", "--help"], capsys)
    described = " ".join(capsys.readouterr().out.split())
    assert "loss (plain cross-entropy: the training log's val_loss is label-smoothed" in described
