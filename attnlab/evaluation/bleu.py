"""Translation quality: corpus BLEU and chrF by sacreBLEU, and scoring a model on a test set.

Scores are computed on detokenized, cased text (what the model outputs once its BPE is decoded)
against raw references, with sacreBLEU's own tokenization (13a) inside the metric, so they
compare with published sacreBLEU numbers (Post 2018, "A Call for Clarity in Reporting BLEU
Scores"). The signature returned with each score records exactly how it was computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from attnlab.errors import UserError


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF of hypotheses against one reference each, with their signatures,
    and the exact-match rate."""
    from sacrebleu.metrics import BLEU, CHRF  # imported when a score is asked for

    if len(hypotheses) != len(references):
        raise UserError(
            f"{len(hypotheses)} translations but {len(references)} references: "
            "they must pair up line by line"
        )
    if not references:
        raise UserError("nothing to score: no reference sentences")
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        # Share of translations identical to their reference, in percent: the score that
        # still means something for one-word outputs (BLEU needs 2- to 4-grams).
        "exact_match": 100
        * sum(h == r for h, r in zip(hypotheses, references, strict=True))
        / len(references),
        "bleu_detail": str(bleu_score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(references),
    }


def evaluate_translation(
    model: nn.Module,
    tokenizer,
    sources: Sequence[str],
    references: Sequence[str],
    **decoding: Any,
) -> tuple[dict[str, Any], list[str]]:
    """Translate `sources` (keyword arguments go to generation.beam_search.translate) and score
    them against `references`. Returns the scores and the translations."""
    from attnlab.generation.beam_search import translate

    if len(sources) != len(references):
        raise UserError(
            f"{len(sources)} source sentences but {len(references)} references: "
            "they must pair up line by line"
        )
    hypotheses = translate(model, tokenizer, sources, **decoding)
    return corpus_scores(hypotheses, references), hypotheses
