"""WordPiece, BERT's tokenizer: the same ids as Hugging Face's BertTokenizer (the fast one, and
the Python one where it is installed) on a vocabulary their `tokenizers` library learns, the
same text back from decode, and its special tokens after the ordinary ones."""

import pickle
import string

import pytest
from helpers import BERT_SPECIALS, BERT_TEXT, bert_tokenizer_folder, bert_vocab
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attnlab.errors import UserError
from attnlab.tokenizers import load_tokenizer, tokenizer_from_dict
from attnlab.tokenizers.wordpiece import WordPieceTokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TEXTS = [
    BERT_TEXT,
    "UNBELIEVABLE Thinking! THE MOVIE, the Movie; naÏVE Café ZÜRICH",  # case and accents
    "東京の夜は美しい北京欢迎你。中文abc字符",  # CJK ideographs are words; kana are not
    "tabs\tand\nlines\r\nand\u00a0no-break\u3000ideographic spaces\u2028and a line separator",
    "controls\x00\x07\x1b[0m gone, zero\u200bwidth\ufeffjoined, \ufffd replacement",
    "unknown characters ☃ 🙂 ﬁ ①, words no pieces cover: qqq xyzzy",
    "x" * 99 + " " + "thinking" * 12 + " " + "wonderful" * 11 + " " + "a" * 101,  # 100 and over
    'punctuation!!! ... ?! ¿¡ «»—–‐ $^`~|\\ @#%&*()[]{}<>+=_ 3.14 don\'t "quoted"',
    "[unused0] ##ing: the names of ordinary tokens are plain text",
    "",
    "   \n\t  ",
]
ALPHABET = st.sampled_from(
    list("the movie was good aeiou THE") + list("ïéüÉÜçñ東京の夜美,.!?'-$^\"") +
    ["e\u0301", "\u00a0", "\t", "\n", "\x00", "\x07", "\u200b", "\ufffd", "☃", "🙂", "ﬁ"]
)  # fmt: skip


# for the fast path against the per-character one: ASCII's letters, digits, punctuation,
# whitespace and controls (\x0b \x0c \x1c are whitespace to str.split, controls to BERT), and
# the non-ASCII sorts that words_reference treats apart
MIXED = st.sampled_from(
    ["the", "Movie", "DON'T", "3.14", "a", "Z", "0", *string.punctuation, *" \t\r\n\x0b\x0c",
     "\x00", "\x01", "\x1c", "\x1f", "\x7f", "\x85", "\u200b", "\ufeff", "\ufffd", "\xa0",
     "\u3000", "\u2028", "é", "Ï", "ñ", "e\u0301", "İ", "ß", "東", "京", "の", "한", "🙂", "☃",
     "ﬁ", "¿", "—", "«", "①"]
)  # fmt: skip


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def tokenizers(request, tmp_path_factory):
    """(ours, the order of our ids in vocab.txt, BertTokenizerFast, the Python BertTokenizer)
    for the vocabulary of bert_vocab, lowercased (uncased) or not."""
    lowercase = request.param
    vocab = bert_vocab(lowercase)
    folder = bert_tokenizer_folder(tmp_path_factory.mktemp("wordpiece"), vocab, lowercase)
    ours, order = WordPieceTokenizer.from_vocab(vocab, lowercase=lowercase)
    fast = transformers.BertTokenizerFast.from_pretrained(folder)
    # the Python one: BertTokenizerLegacy in transformers 5, BertTokenizer before
    python = getattr(transformers, "BertTokenizerLegacy", transformers.BertTokenizer)
    return ours, order, fast, python.from_pretrained(folder)


def their_ids(hf, text: str) -> list[int]:
    return hf(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_are_bert_tokenizers(tokenizers, text):
    ours, order, fast, slow = tokenizers
    ids = [order[i] for i in ours.encode(text)]
    assert ids == their_ids(fast, text) == their_ids(slow, text)


@settings(max_examples=200, deadline=None)
@given(text=st.lists(ALPHABET, max_size=40).map("".join))
def test_ids_are_bert_tokenizers_on_any_text(tokenizers, text):
    ours, order, fast, _ = tokenizers
    assert [order[i] for i in ours.encode(text)] == their_ids(fast, text)


# where Hugging Face's two tokenizers differ, ours gives the fast one's ids: a word-final capital
# sigma lowercased to σ (str.lower makes it ς), unassigned code points kept (U+FFFE and
# U+10FFFE are noncharacters: [UNK]), U+2B820-U+2B91F not among the ideographs that are words
FAST_ONLY = ["ΟΔΟΣ, ΟΔΟΣ Σ σΣ", "x\ufffe y \U0010fffe", "a\U0002b820b a\U0002b920b"]


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
@pytest.mark.parametrize("text", FAST_ONLY)
def test_ids_are_the_fast_tokenizers_where_the_python_one_differs(tmp_path, lowercase, text):
    letters = ["a", "b", "x", "y", "ο", "δ", "σ", "ς", "Ο", "Δ", "Σ", "\U0002b820", "\U0002b920"]
    vocab = [*BERT_SPECIALS, ",", *letters, *("##" + c for c in letters)]
    folder = bert_tokenizer_folder(tmp_path, vocab, lowercase)
    fast = transformers.BertTokenizerFast.from_pretrained(folder)
    ours, order = WordPieceTokenizer.from_vocab(vocab, lowercase=lowercase)
    assert [order[i] for i in ours.encode(text)] == their_ids(fast, text)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_gives_bert_tokenizers_text(tokenizers, text):
    """As BertTokenizer decodes without its English clean-up of spaces (" ." to "."), special
    tokens included: the Python one's rule (the fast one always cleans up)."""
    ours, order, _, slow = tokenizers
    ids = [ours.special_tokens["[CLS]"], *ours.encode(text), ours.special_tokens["[SEP]"]]
    expected = slow.decode([order[i] for i in ids], clean_up_tokenization_spaces=False)
    assert ours.decode(ids) == expected
    assert "".join(ours.decode_stream(ids)) == expected
    if ours.special_tokens["[UNK]"] not in ids:  # "[UNK]" in a text is plain text
        assert ours.encode(ours.decode(ids[1:-1])) == ids[1:-1]


def test_pieces_are_longest_first_and_unknown_words_are_one_unk():
    ours = WordPieceTokenizer(["un", "unaff", "aff", "##aff", "##able", "##a", "##ble", "a"])
    tokens = lambda text: [ours.decode([i]) for i in ours.encode(text)]  # noqa: E731
    assert tokens("unaffable") == ["unaff", "##able"]
    assert tokens("Unaffable, un") == ["unaff", "##able", "[UNK]", "un"]  # "," is no token
    assert tokens("unx aff") == ["[UNK]", "aff"]  # a word no pieces cover whole is [UNK]
    assert tokens("a" * 100) == ["a"] + ["##a"] * 99 and tokens("a" * 101) == ["[UNK]"]
    assert ours.decode(ours.encode("unaffable aff")) == "unaffable aff"


def test_special_tokens_come_after_the_ordinary_ones():
    vocab = bert_vocab()
    ours, order = WordPieceTokenizer.from_vocab(vocab)
    assert list(ours.special_tokens) == BERT_SPECIALS
    assert sorted(ours.special_tokens.values()) == list(range(len(vocab) - 5, len(vocab)))
    assert [vocab[order[i]] for i in range(len(vocab))] == [
        *(t for t in vocab if t not in BERT_SPECIALS),
        *BERT_SPECIALS,
    ]
    assert ours.encode("[MASK] [CLS]") == ours.encode("[ mask ] [ cls ]")  # plain text
    with pytest.raises(ValueError, match=r"lacks \[MASK\]"):
        WordPieceTokenizer.from_vocab([t for t in vocab if t != "[MASK]"])


def test_save_and_load_give_the_same_tokenizer(tmp_path):
    ours, _ = WordPieceTokenizer.from_vocab(bert_vocab(False), lowercase=False)
    ours.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded == ours and loaded.encode(BERT_TEXT) == ours.encode(BERT_TEXT)
    saved = ours.to_dict()
    with pytest.raises(UserError, match="special tokens are"):
        tokenizer_from_dict({**saved, "special_tokens": ["[PAD]"]})
    with pytest.raises(UserError, match="lacks 'tokens'"):
        tokenizer_from_dict({k: v for k, v in saved.items() if k != "tokens"})
    with pytest.raises(UserError, match="a token twice"):
        tokenizer_from_dict({**saved, "tokens": ["a", "a"]})


def test_the_tokenizer_pickles_as_a_dataloader_worker_gets_it():
    """A DataLoader's workers and a process pool receive a tokenizer pickled, its cache too."""
    ours, _ = WordPieceTokenizer.from_vocab(bert_vocab())
    ids = ours.encode(BERT_TEXT)  # the cache filled
    copy = pickle.loads(pickle.dumps(ours))
    assert copy == ours and copy.encode(BERT_TEXT) == ids


@pytest.mark.parametrize("lowercase, strip_accents", [(True, None), (False, None), (False, True),
                                                      (True, False)])  # fmt: skip
@settings(max_examples=300, deadline=None)
@given(text=st.lists(MIXED, max_size=60).map("".join))
@example(text="caf\u00e9,x the\x1cend a\x0bb \x7fDEL\tÜber東京x\r\nyes")
@example(text="x" * 101 + "é " + "y" * 100)
def test_the_fast_path_gives_the_per_character_words(lowercase, strip_accents, text):
    """`words` (ASCII text whole, by regular expressions) against `words_reference` (one
    character at a time, BERT's way), and the ids of each."""
    letters = string.ascii_letters + string.digits + "éñ東京"
    vocab = ["the", "movie", "##ovie", *letters, *("##" + c for c in letters), *string.punctuation]
    ours = WordPieceTokenizer(vocab, lowercase, strip_accents)
    assert ours.words(text) == ours.words_reference(text)
    assert ours.encode(text) == ours.encode_reference(text)
