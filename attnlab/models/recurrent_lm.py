"""A recurrent language model (Elman 1990; Mikolov et al. 2010; Zaremba et al. 2014): token
embedding -> stacked LSTM (or GRU, or tanh RNN) -> a linear head to the vocabulary, with no
blocks, attention or positions.

Dimensions: B batch, T positions, D width (embedding and hidden state), V vocabulary size.

It trains on the GPT's text data, on random windows of context_length tokens (truncated
backpropagation through time, each window from a zero state), and decodes one token at a time
from its hidden state: each new token costs the same however long the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnlab.config import check_choice, check_dropout, check_positive, check_types
from attnlab.data.text import TextDataConfig, text_training_data
from attnlab.layers import TokenEmbedding, initialize
from attnlab.layers.caches import RecurrentState
from attnlab.layers.dropout import dropout
from attnlab.layers.recurrent import CELLS, make_recurrence, recurrent_state, run_recurrence
from attnlab.models.registry import GENERATE, ModelKind, register_kind
from attnlab.training.sources import token_loss


@dataclass(frozen=True)
class RecurrentLMConfig:
    vocab_size: int = 256  # tokens in the vocabulary
    context_length: int = 64  # tokens per training window (backpropagation through time)
    cell: str = "lstm"  # lstm | gru | rnn (Elman, tanh)
    n_layers: int = 2  # stacked recurrent layers
    d_model: int = 256  # embedding and hidden-state width
    dropout: float = 0.0  # on embeddings, between layers and before the head (Zaremba et al.)
    tie_weights: bool = True  # output head shares the token embedding (Press & Wolf 2017)
    init_range: float = 0.1  # embedding and head uniform in ±init_range (Zaremba: 0.04-0.1)

    def __post_init__(self):
        check_types(self)
        name = "RecurrentLMConfig"
        check_positive(
            name,
            vocab_size=self.vocab_size,
            context_length=self.context_length,
            n_layers=self.n_layers,
            d_model=self.d_model,
            init_range=self.init_range,
        )
        check_choice(name, "cell", self.cell, CELLS)
        check_dropout(name, "dropout", self.dropout)


PRESETS: dict[str, RecurrentLMConfig] = {
    "tiny": RecurrentLMConfig(),
    # Zaremba et al. 2014's medium and large Penn Treebank LSTMs (35-step windows).
    "zaremba-medium": RecurrentLMConfig(
        vocab_size=10000, context_length=35, d_model=650, dropout=0.5, init_range=0.05
    ),
    "zaremba-large": RecurrentLMConfig(
        vocab_size=10000, context_length=35, d_model=1500, dropout=0.65, init_range=0.04
    ),
}


class RecurrentLM(nn.Module):
    def __init__(self, config: RecurrentLMConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = TokenEmbedding(c.vocab_size, c.d_model)
        self.recurrence = make_recurrence(c.cell, c.d_model, c.d_model, c.n_layers, c.dropout)
        self.output_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.output_head.weight = self.token_embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The embedding (and head) uniform in ±init_range; the recurrence keeps torch's
        initialisation (uniform in ±1/√D), as in PyTorch's word_language_model example; Zaremba
        et al. draw every weight in ±init_range."""
        r = self.config.init_range
        initialize(self, lambda weight, layer: nn.init.uniform_(weight, -r, r))

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: RecurrentState | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids; targets: (B, T) next-token ids (IGNORE_INDEX to skip).
        Returns logits (B, T, V) and the mean cross-entropy (None without targets). With a cache
        (new_cache), idx continues from the tokens it has seen."""
        p, training = self.config.dropout, self.training
        x = dropout(self.token_embedding(idx), p, training)  # (B, T, D)
        x = dropout(run_recurrence(self.recurrence, x, cache), p, training)  # (B, T, D)
        logits = self.output_head(x)  # (B, T, V)
        return logits, None if targets is None else token_loss(logits, targets)

    def new_cache(self, max_length: int | None = None, static: bool = False) -> RecurrentState:
        """The hidden state (and an LSTM's cell state) of every layer: fixed sizes, so the same
        state serves eager and compiled decoding, and decoding never stops at the context."""
        return recurrent_state()

    # Decoding reads the whole prompt and goes on from the hidden state: context_length is
    # only the training window (generation reads this).
    context_limit = None


register_kind(
    ModelKind(
        name="lstm_lm",
        config=RecurrentLMConfig,
        model=RecurrentLM,
        presets=PRESETS,
        data_config=TextDataConfig,
        build_data=text_training_data,
        data_fields={"vocab_size"},
        capabilities={GENERATE},
        description="a recurrent (LSTM, GRU or RNN) language model on a text corpus",
    )
)
