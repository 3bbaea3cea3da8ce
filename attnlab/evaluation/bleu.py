"""Translation quality: corpus BLEU and chrF by sacreBLEU, and scoring a model on a test set.

Scores are computed on detokenized, cased text (what the model outputs once its BPE is decoded)
against raw references, with sacreBLEU's own tokenization (13a) inside the metric, so they
compare with published sacreBLEU numbers (Post 2018, "A Call for Clarity in Reporting BLEU
Scores"). The signature returned with each score records exactly how it was computed.

13a splits words at spaces, so on text written without them (Chinese, Japanese, Thai) a whole
sentence is one "word" and BLEU reads 0 for all but identical sentences. The tokenizer "auto"
picks what sacreBLEU prescribes for such references: "zh" (each Chinese character a word) for
Chinese, "ja-mecab" (a Japanese word segmenter) for Japanese where it is installed, else "char"
(each character a word), as for Thai, Lao, Khmer and Burmese; 13a for any other text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import regex
from torch import nn

from attnlab.errors import UserError

# sacreBLEU's BLEU tokenizers that need no download (spm and flores fetch a model)
BLEU_TOKENIZERS = ("auto", "13a", "intl", "zh", "char", "ja-mecab", "ko-mecab", "none")
_LETTER = regex.compile(r"\p{L}")
_SCRIPTS = {  # scripts written without spaces between words
    "han": regex.compile(r"\p{Han}"),
    "kana": regex.compile(r"[\p{Hiragana}\p{Katakana}]"),
    "unspaced": regex.compile(r"[\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]"),
}


def auto_tokenizer(references: Sequence[str]) -> tuple[str, str]:
    """The sacreBLEU tokenizer for `references`, and why ("" for 13a): by the script of most of
    their letters (Japanese: a tenth of them kana, the rest mostly kanji)."""
    text = "".join(references)
    letters = len(_LETTER.findall(text)) or 1
    share = {name: len(pattern.findall(text)) / letters for name, pattern in _SCRIPTS.items()}
    if share["kana"] > 0.1 and share["kana"] + share["han"] > 0.5:
        try:
            import ipadic  # noqa: F401  (what sacreBLEU's ja-mecab needs: sacrebleu[ja])
            import MeCab  # noqa: F401
        except ImportError:
            return "char", "Japanese, and ja-mecab (pip install 'sacrebleu[ja]') is not installed"
        return "ja-mecab", "Japanese"
    if share["han"] > 0.5:
        return "zh", "Chinese"
    if share["unspaced"] > 0.5:
        return "char", "in a script written without spaces between words"
    return "13a", ""


def bleu_metric(tokenize: str, references: Sequence[str]):
    """sacreBLEU's BLEU with the tokenizer `tokenize` ("auto": auto_tokenizer's), and why it
    was picked ("" where it was given or is 13a)."""
    from sacrebleu.metrics import BLEU  # imported when a score is asked for

    if tokenize not in BLEU_TOKENIZERS:
        raise UserError(f"unknown BLEU tokenizer {tokenize!r}; choose {', '.join(BLEU_TOKENIZERS)}")
    reason = ""
    if tokenize == "auto":
        tokenize, reason = auto_tokenizer(references)
    try:
        return BLEU(tokenize=tokenize), reason
    except RuntimeError:  # its package is missing: sacreBLEU says so in many lines
        extra = tokenize.partition("-")[0]
        raise UserError(
            f"BLEU tokenizer {tokenize!r} needs packages that are not installed: "
            f"pip install 'sacrebleu[{extra}]'"
        ) from None


def corpus_scores(
    hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "auto"
) -> dict[str, Any]:
    """Corpus BLEU and chrF of hypotheses against one reference each, with their signatures,
    and the exact-match rate. tokenize: BLEU's tokenizer, one of BLEU_TOKENIZERS; "bleu_note"
    says why "auto" picked another than 13a ("" where it did not)."""
    from sacrebleu.metrics import CHRF  # imported when a score is asked for

    if len(hypotheses) != len(references):
        raise UserError(
            f"{len(hypotheses)} translations but {len(references)} references: "
            "they must pair up line by line"
        )
    if not references:
        raise UserError("nothing to score: no reference sentences")
    bleu, reason = bleu_metric(tokenize, references)
    chrf = CHRF()
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
        "bleu_note": reason
        and f"the references are {reason}: BLEU tokenized by sacreBLEU's "
        f"{bleu.tokenizer.signature()!r}, not 13a",
    }


def evaluate_translation(
    model: nn.Module,
    tokenizer,
    sources: Sequence[str],
    references: Sequence[str],
    bleu_tokenize: str = "auto",
    **decoding: Any,
) -> tuple[dict[str, Any], list[str]]:
    """Translate `sources` (keyword arguments go to generation.beam_search.translate) and score
    them against `references` (BLEU tokenized by `bleu_tokenize`, see corpus_scores). Returns
    the scores and the translations."""
    from attnlab.generation.beam_search import translate

    if len(sources) != len(references):
        raise UserError(
            f"{len(sources)} source sentences but {len(references)} references: "
            "they must pair up line by line"
        )
    hypotheses = translate(model, tokenizer, sources, **decoding)
    return corpus_scores(hypotheses, references, bleu_tokenize), hypotheses
