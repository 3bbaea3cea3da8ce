"""Known answers for the evaluation metrics: perplexity, bits per byte, accuracy and F1, and a
whole evaluation of a model whose predictions are uniform."""

import itertools
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import Terminal, outside_the_figure
from matplotlib.backends.backend_agg import FigureCanvasAgg

from attnlab.cli.reports import plot_confusion, plot_losses
from attnlab.data.images import ImageSet, Normalization
from attnlab.data.shapes import SHAPES
from attnlab.data.translation import TokenBatches, fixed_batches, read_lines
from attnlab.evaluation import evaluate
from attnlab.evaluation.bleu import corpus_scores
from attnlab.evaluation.classification import evaluate_classifier
from attnlab.evaluation.evaluate import evaluate_language_model
from attnlab.evaluation.metrics import bits_per_byte, classification_scores, perplexity
from attnlab.generation import generate
from attnlab.interpretability.induction import induction_scores
from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.vision_transformer import VisionTransformer, ViTConfig
from attnlab.tokenizers import CharTokenizer
from attnlab.training.sources import IGNORE_INDEX, token_loss
from attnlab.training.trainer import TrainConfig, Trainer


def test_perplexity_of_a_uniform_choice_is_the_number_of_choices():
    assert perplexity(math.log(7)) == pytest.approx(7)
    assert perplexity(0.0) == 1.0


def test_bits_per_byte_known_answers():
    # 2 bits per token (loss ln 4), 6 tokens over 12 bytes: 1 bit per byte
    assert bits_per_byte(math.log(4), 6, 12) == pytest.approx(1.0)
    # one byte per token: bits per token
    assert bits_per_byte(math.log(256), 10, 10) == pytest.approx(8.0)


def test_classification_scores_known_answer():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    # per class (tp, predicted, actual): 0 (2, 2, 3), 1 (1, 2, 2), 2 (1, 2, 1)
    f1 = [2 * 2 / (2 + 3), 2 * 1 / (2 + 2), 2 * 1 / (2 + 1)]
    scores = classification_scores(predicted, labels, 4)  # class 3: never seen, left out
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["f1"] == pytest.approx(sum(f1) / 3)


@pytest.mark.parametrize("text, bytes_per_char", [("abcdefgh " * 20, 1), ("éàüö " * 30, 1.8)])
def test_evaluating_uniform_predictions(text, bytes_per_char, monkeypatch):
    """A model whose head is zero predicts every token with probability 1/V: its loss is ln V,
    its perplexity V, and its bits per byte log2(V) per character over the bytes per character.
    Every token but the first is a target once, those after the last full window of the
    context (3 and 5 here) in a shorter one."""
    tokenizer = CharTokenizer.from_text(text)
    vocab = tokenizer.vocab_size
    config = GPTConfig(
        vocab_size=vocab, context_length=16, n_layers=1, n_heads=2, d_model=8, tie_weights=False
    )
    model = GPT(config)
    torch.nn.init.zeros_(model.output_head.weight)
    tokens = np.array(tokenizer.encode(text), dtype=np.uint16)
    tokenizer.decode = None  # bytes are counted without decoding, a piece at a time
    monkeypatch.setattr(evaluate, "PIECE", 7)
    result = evaluate_language_model(model, tokens, tokenizer, batch_size=3)
    targets = len(tokens) - 1
    assert targets % 16  # a last window shorter than the context
    evaluated = text[1:]
    assert result["tokens"] == targets
    assert result["bytes"] == len(evaluated.encode("utf-8"))
    assert result["bytes"] / targets == pytest.approx(bytes_per_char, abs=0.05)
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    expected_bits = math.log2(vocab) * targets / result["bytes"]
    assert result["bits_per_byte"] == pytest.approx(expected_bits, rel=1e-6)


def test_procedures_run_a_model_in_eval_mode_and_give_it_back_in_its_own(monkeypatch):
    """Evaluation, generation and inspection switch dropout off for their work only: a model a
    user is training stays in training mode."""
    text = "abcdefgh " * 20
    tokenizer = CharTokenizer.from_text(text)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, n_heads=2, d_model=8,
        dropout=0.5,
    )  # fmt: skip
    model = GPT(config).train()
    tokens = np.array(tokenizer.encode(text), dtype=np.uint16)
    first = evaluate_language_model(model, tokens, tokenizer)
    assert model.training
    assert evaluate_language_model(model, tokens, tokenizer) == first  # no dropout noise
    for shown in (False, True):  # a bar on a terminal when asked for; the same figures
        monkeypatch.setattr("sys.stderr", Terminal())
        assert evaluate_language_model(model, tokens, tokenizer, progress=shown) == first
        assert ("scoring: 100%" in sys.stderr.getvalue()) == shown
    generate(model, torch.tensor([[1, 2]]), 3)
    induction_scores(model, n_sequences=2, length=4)
    assert model.training


def test_an_image_classifiers_evaluation_is_its_plain_cross_entropy_and_confusion():
    """Loss: the mean cross-entropy of the logits, not the label-smoothed training loss;
    confusion[true, predicted]; accuracy its diagonal's share."""
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, channels=1, n_classes=3, n_layers=1,
                       n_heads=2, d_model=16, label_smoothing=0.3)  # fmt: skip
    model = VisionTransformer(config)
    torch.nn.init.normal_(model.head.weight, std=2.0)  # the head starts at zero: no predictions
    data = ImageSet(torch.randint(0, 256, (23, 1, 8, 8), dtype=torch.uint8), torch.arange(23) % 3)
    normalize = Normalization((0.5,), (0.25,))
    result = evaluate_classifier(model, data, normalize, batch_size=5)
    with torch.no_grad():
        logits, _ = model.eval()(normalize(data.images))
    predicted = logits.argmax(-1)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for true, guess in zip(data.labels.tolist(), predicted.tolist(), strict=True):
        expected[true, guess] += 1
    assert result["confusion"].equal(expected)
    assert result["accuracy"] == pytest.approx((predicted == data.labels).float().mean().item())
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, data.labels).item(), rel=1e-5)
    assert result["images"] == 23


def test_the_confusion_matrixs_class_names_never_overlap(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, png: drawn.append(fig) or png)
    for names in (SHAPES, [str(d) for d in range(10)], [f"class_{i}" for i in range(20)]):
        k = len(names)
        plot_confusion(torch.eye(k, dtype=torch.long), names, tmp_path / "c.png", "t")
        fig = drawn.pop()
        renderer = FigureCanvasAgg(fig).get_renderer()
        boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
        assert len(boxes) == k
        assert not any(a.overlaps(b) for a, b in itertools.pairwise(boxes)), names
        assert outside_the_figure(fig) == [], names


def test_the_confusion_matrix_of_few_classes_keeps_its_title_whole(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, png: drawn.append(fig) or png)
    title = "vit_cats_and_dogs: accuracy 85.00% on 2,000 held-out images"  # as evaluate's
    for k in (2, 3, 10):
        plot_confusion(torch.eye(k, dtype=torch.long), list("abcdefghij")[:k], tmp_path, title)
        assert outside_the_figure(drawn.pop()) == [], k


def test_the_loss_plot_of_a_one_step_run_shows_its_step(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, png: drawn.append(fig) or png)
    record = {"step": 1, "train_loss": 4.17, "tokens_per_s": 9.0, "val_loss": 4.18}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    ax = drawn[0].axes[0]
    train = ax.get_lines()[0]  # a line through one point draws nothing without a marker
    assert list(train.get_xdata()) == [1] and train.get_marker() not in ("", "None", None)
    low, high = ax.get_xlim()
    assert [t for t in ax.get_xticks() if low <= t <= high] == [1]  # not 0.96, 0.98, ...
    (tmp_path / "metrics.jsonl").write_text(json.dumps({**record, "val_accuracy": 0.5}) + "\n")
    plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")  # the scores below it
    assert [ax.get_xlabel() for ax in drawn[1].axes] == ["", "step"]  # the shared axis once


def test_the_loss_plot_of_many_evaluations_draws_lines_not_a_band_of_points(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, png: drawn.append(fig) or png)
    for evaluations, marker in ((3, "o"), (500, "None")):  # 500 points would hide the curves
        record = {"train_loss": 1.0, "tokens_per_s": 9.0, "val_loss": 1.0, "val_accuracy": 0.5}
        records = [json.dumps({"step": s, **record}) + "\n" for s in range(1, evaluations + 1)]
        (tmp_path / "metrics.jsonl").write_text("".join(records))
        plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
        losses, scores = drawn.pop().axes
        assert {losses.get_lines()[1].get_marker(), scores.get_lines()[0].get_marker()} == {marker}


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
def test_the_loss_and_its_gradient_are_torchs_label_smoothed_cross_entropy(smoothing):
    """Padding (IGNORE_INDEX) anywhere in a row, in float64: torch's loss, and the one written
    out, (1 - ε)·NLL + ε·mean over the vocabulary of -log p, averaged over scored targets."""
    logits = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (3, 5))
    targets[1, 2:], targets[2, 0] = IGNORE_INDEX, IGNORE_INDEX
    ours = token_loss(logits, targets, smoothing)
    theirs = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
        label_smoothing=smoothing,
    )  # fmt: skip
    scored = targets != IGNORE_INDEX
    log_p = logits[scored].log_softmax(-1)
    nll = -log_p.gather(-1, targets[scored][:, None])[:, 0]
    by_hand = ((1 - smoothing) * nll - smoothing * log_p.mean(-1)).mean()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=1e-12)
    (ours_grad,), (theirs_grad,) = (torch.autograd.grad(x, logits) for x in (ours, theirs))
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-12)


def test_a_translation_models_validation_perplexity_is_exp_of_its_mean_nll_over_real_tokens(
    tmp_path,
):
    """Two padded batches with different numbers of real targets: the validation loss is the
    mean NLL over every real target (not a mean of batch means), perplexity its exp."""
    config = EncoderDecoderConfig(vocab_size=20, max_length=16, n_encoder_layers=1,
                                  n_decoder_layers=1, n_heads=2, d_model=8, d_ff=16,
                                  dropout=0.0, label_smoothing=0.0)  # fmt: skip
    model = EncoderDecoder(config).double()
    special = dict(pad_id=config.pad_id, bos_id=config.bos_id, eos_id=config.eos_id)
    examples = [([5, 6, 7, 2], [8, 9, 10, 11]), ([5, 2], [12]), ([3, 4, 2], [13, 14])]
    examples += [([6, 2], [15]), ([7, 8, 9, 10, 11, 2], [16, 17, 18])]
    batches = fixed_batches(examples, 12, special)  # (sentences x longest side) <= 12
    nll, count = 0.0, 0
    with torch.no_grad():
        for src, tgt_in, tgt_out in batches:
            log_p = model(src, tgt_in)[0].log_softmax(-1)
            real = tgt_out != IGNORE_INDEX
            nll -= log_p[real].gather(-1, tgt_out[real][:, None]).sum().item()
            count += int(real.sum())
    assert len(batches) > 1 and count == 5 + 2 + 3 + 2 + 4  # targets and </s>
    assert any((b[-1] == IGNORE_INDEX).any() for b in batches)  # padded targets
    train = TrainConfig(precision="fp32", device="cpu", cpu_kernels=False)
    source = TokenBatches(examples, 12, special, seed=0)
    trainer = Trainer(model, train, source, {"val": lambda: batches}, out_dir=tmp_path)
    loss = trainer.evaluate()["val_loss"]
    assert loss == pytest.approx(nll / count, rel=1e-12)
    assert perplexity(loss) == pytest.approx(math.exp(nll / count), rel=1e-12)


def test_bleu_and_chrf_are_sacrebleus_on_multi30k(shared_data):
    """The test set's references read as `evaluate --ref` reads them, against altered copies
    (words dropped, lowercased, rotated): sacreBLEU's corpus BLEU with its 13a tokenization,
    mixed case and exponential smoothing (the signature says so), and its chrF."""
    sacrebleu = pytest.importorskip("sacrebleu")
    references = read_lines(shared_data / "multi30k" / "test_2016_flickr.en.gz")
    assert len(references) == 1000

    def altered(i, line):
        words = line.split()
        words = words[::2] if i % 3 == 0 else words[1:] + words[:1] if i % 7 == 0 else words
        return " ".join(words).lower() if i % 5 == 0 else " ".join(words)

    hypotheses = [altered(i, line) for i, line in enumerate(references)]
    scores = corpus_scores(hypotheses, references)
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="13a", smooth_method="exp")
    assert scores["bleu"] == pytest.approx(bleu.score, rel=1e-12) and 40 < bleu.score < 90
    chrf = sacrebleu.corpus_chrf(hypotheses, [references], char_order=6, word_order=0, beta=2)
    assert scores["chrf"] == pytest.approx(chrf.score, rel=1e-12)
    assert "case:mixed|eff:no|tok:13a|smooth:exp" in scores["bleu_signature"]
    assert "nc:6|nw:0" in scores["chrf_signature"]
    expected_exact = 100 * sum(h == r for h, r in zip(hypotheses, references, strict=True)) / 1000
    assert scores["exact_match"] == pytest.approx(expected_exact)
