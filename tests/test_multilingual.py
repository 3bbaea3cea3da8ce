"""Text in other scripts end to end: BLEU on references written without spaces (against
sacreBLEU's own tokenizers), fill-mask fillers that hold part of a character, tokens that
are a combining mark alone."""

import pytest
import sacrebleu
import torch

from attnlab.cli import main
from attnlab.data.masked_lm import SPECIALS
from attnlab.evaluation.bleu import auto_tokenizer, corpus_scores
from attnlab.evaluation.predict import fill_mask
from attnlab.models.bert import BertConfig, BertForMaskedLM
from attnlab.tokenizers import CharTokenizer
from attnlab.tokenizers.base import visible
from attnlab.tokenizers.bpe import BPETokenizer

CHINESE = ["我喜欢吃苹果。", "今天天气很好。", "他在学校学习中文。", "猫在桌子上睡觉。"]
GUESSES = ["我喜欢吃香蕉。", "今天天气很好。", "他在家学习中文。", "狗在桌子上睡觉。"]


def test_bleu_of_chinese_counts_characters_as_sacrebleu_zh_does():
    """13a reads each unspaced Chinese sentence as one word: BLEU 0 for near misses. auto takes
    sacreBLEU's zh tokenizer, and its score is sacreBLEU's own with tokenize="zh"."""
    scores = corpus_scores(GUESSES, CHINESE)
    expected = sacrebleu.corpus_bleu(GUESSES, [CHINESE], tokenize="zh")
    assert scores["bleu"] == pytest.approx(expected.score) and scores["bleu"] > 30
    assert "tok:zh" in scores["bleu_signature"] and "Chinese" in scores["bleu_note"]
    assert corpus_scores(CHINESE, CHINESE)["bleu"] == pytest.approx(100)
    chosen = corpus_scores(GUESSES, CHINESE, tokenize="13a")  # as asked, with no note
    assert chosen["bleu"] == pytest.approx(sacrebleu.corpus_bleu(GUESSES, [CHINESE]).score)
    assert "tok:13a" in chosen["bleu_signature"] and not chosen["bleu_note"]


def test_auto_bleu_tokenizer_follows_the_references_script():
    assert auto_tokenizer(["A man rides a bike.", "Der Mann fährt 東京."]) == ("13a", "")
    assert auto_tokenizer(["한국어 문장입니다."]) == ("13a", "")  # Korean has spaces
    assert auto_tokenizer(["สวัสดีชาวโลก"])[0] == "char"
    japanese = auto_tokenizer(["東京は大きい都市です。", "私は猫が好きです。"])[0]
    assert japanese in ("ja-mecab", "char")


def test_evaluate_refuses_a_bleu_tokenizer_whose_package_is_missing(tmp_path, capsys):
    if _installed("MeCab"):
        pytest.skip("MeCab is installed")
    for name in ("src.txt", "ref.txt"):
        (tmp_path / name).write_text("東京は大きい。\n", encoding="utf-8")
    args = ["evaluate", str(tmp_path / "no-run"), "--src", str(tmp_path / "src.txt")]
    assert main([*args, "--ref", str(tmp_path / "ref.txt"), "--bleu-tokenize", "ja-mecab"]) != 0
    err = capsys.readouterr().err
    assert "pip install 'sacrebleu[ja]'" in err and len(err.strip().splitlines()) == 1


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_fill_mask_shows_fillers_of_part_of_a_character_as_their_bytes():
    """A byte-level token of a CJK character's first bytes: decoded alone it is U+FFFD, the same
    for every such token; shown as \\xNN each filler is its own."""
    text = "我喜欢吃苹果。今天天气很好。"
    tokenizer = BPETokenizer.train([text] * 3, 270, special_tokens=SPECIALS)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, n_heads=2, d_model=16
    )
    torch.manual_seed(0)
    (fillers,) = fill_mask(BertForMaskedLM(config), tokenizer, "我喜欢[MASK]", top_k=300)
    shown = [text for text, _ in fillers]
    assert "\ufffd" not in "".join(shown) and len(set(shown)) == len(shown)
    assert "\\xe6" in shown  # the first byte of 我 (e6 88 91)


def test_tokenize_show_puts_a_combining_mark_of_its_own_on_a_dotted_circle(tmp_path, capsys):
    """A token that is a lone mark (Hindi's virama, a Thai vowel sign) would sit on the bar
    before it and look like no token: it is drawn on U+25CC, as Unicode's charts draw marks."""
    path = tmp_path / "char.json"
    CharTokenizer.from_text("नमस्ते สวัสดี").save(path)
    assert main(["tokenize", "show", "--tokenizer", str(path), "--no-color", "नमस्ते"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "न|म|स|◌्|त|◌े"
    assert visible("ัa\n") == "◌ัa\\n" and visible("aั") == "aั"  # a mark after a letter stays
