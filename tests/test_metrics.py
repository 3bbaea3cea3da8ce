"""Known answers for the evaluation metrics: perplexity, bits per byte, accuracy and F1, and a
whole evaluation of a model whose predictions are uniform."""

import math

import numpy as np
import pytest
import torch

from attnlab.evaluation import evaluate
from attnlab.evaluation.evaluate import evaluate_language_model
from attnlab.evaluation.metrics import bits_per_byte, classification_scores, perplexity
from attnlab.generation import generate
from attnlab.interpretability.induction import induction_scores
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers import CharTokenizer


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
    Every non-overlapping window of the context counts each target once."""
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
    targets = (len(tokens) - 1) // 16 * 16
    evaluated = text[1 : targets + 1]
    assert result["tokens"] == targets
    assert result["bytes"] == len(evaluated.encode("utf-8"))
    assert result["bytes"] / targets == pytest.approx(bytes_per_char, abs=0.05)
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    expected_bits = math.log2(vocab) * targets / result["bytes"]
    assert result["bits_per_byte"] == pytest.approx(expected_bits, rel=1e-6)


def test_procedures_run_a_model_in_eval_mode_and_give_it_back_in_its_own():
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
    generate(model, torch.tensor([[1, 2]]), 3)
    induction_scores(model, n_sequences=2, length=4)
    assert model.training
