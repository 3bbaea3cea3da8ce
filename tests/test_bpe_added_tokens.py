"""A byte-level BPE's added tokens and Unicode normalization (tokenizers/added_tokens.py), as
GPT-NeoX's tokenizer has them: the leftmost, longest added token cut out first, the stretches
between pre-tokenized on their own, the text normalized before; saved and loaded with the
tokenizer, and a tokenizer without them saved as before."""

import pytest

from attnlab.errors import UserError
from attnlab.tokenizers import tokenizer_from_dict
from attnlab.tokenizers.bpe import BPETokenizer

MERGES = [(b" ", b" "), (b" ", b"b"), (b"\xc3", b"\xa9"), (b"c", b"a"), (b"ca", b"f"),
          (b"caf", b"\xc3\xa9")]  # fmt: skip
CAFE = 256 + len(MERGES) - 1
RUNS = ["    ", "  ", "   "]  # ids 262, 263, 264: not by length, which matching goes by


def neox_like(**options) -> BPETokenizer:
    return BPETokenizer(MERGES, "gpt2", ["<|endoftext|>"], None, RUNS, "NFC", **options)


def test_ids_run_bytes_merges_added_tokens_then_specials():
    tokenizer = neox_like()
    assert tokenizer.vocab_size == 256 + 6 + 3 + 1
    assert [tokenizer.token_bytes(i) for i in (262, 263, 264)] == [r.encode() for r in RUNS]
    assert tokenizer.special_tokens == {"<|endoftext|>": 265}


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("a b", ["a", " b"]),  # one space: no added token, GPT-2's splitting
        ("a  b", ["a", "  ", "b"]),  # the b keeps no space: the run is cut out first
        ("a     b", ["a", "    ", " b"]),  # five: the longest run (4), then " b"
        ("a      b", ["a", "    ", "  ", "b"]),  # six: leftmost longest, 4 then 2
        ("a       b", ["a", "    ", "   ", "b"]),  # seven: 4 then 3
        ("cafe\u0301  ", ["café", "  "]),  # NFC first: e + U+0301 is é, a merge's token
        ("", []),
    ],
)
def test_added_tokens_are_cut_out_leftmost_longest_after_normalizing(text, pieces):
    tokenizer = neox_like()
    ids = tokenizer.encode(text)
    assert [tokenizer.decode([i]) for i in ids] == pieces
    assert ids == tokenizer.encode_reference(text) == tokenizer.encode_array(text).tolist()
    assert tokenizer.decode(ids) == "".join(pieces)


def test_normalization_alone_and_the_plain_tokenizer_unchanged():
    nfc, plain = (BPETokenizer(MERGES, normalization=n) for n in ("NFC", None))
    assert nfc.encode("cafe\u0301") == nfc.encode("café") == [CAFE]
    assert plain.encode("cafe\u0301") != plain.encode("café")
    assert plain.encode("a  b") == [ord("a"), ord(" "), 257]  # GPT-2: "a", " ", " b"


def test_saved_and_loaded_with_the_tokenizer(tmp_path):
    tokenizer = neox_like()
    saved = tokenizer.to_dict()
    assert saved["version"] == 2
    assert saved["added_tokens"] == RUNS and saved["normalization"] == "NFC"
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = BPETokenizer.load(tmp_path / "tokenizer.json")
    assert loaded == tokenizer and loaded.encode("a      b") == tokenizer.encode("a      b")
    plain = BPETokenizer(MERGES).to_dict()  # as older attnlab wrote and reads it
    assert plain["version"] == 1 and not {"added_tokens", "normalization"} & plain.keys()
    assert tokenizer_from_dict(plain) == BPETokenizer(MERGES)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"added_tokens": ["  ", "  "]}, "given more than once"),
        ({"added_tokens": [""]}, "non-empty"),
        ({"added_tokens": "  "}, "a list of strings"),
        ({"added_tokens": ["e\u0301"]}, "is not in NFC"),
        ({"added_tokens": ["<|endoftext|>"]}, "both an added token and a special token"),
        ({"normalization": "lowercase"}, "unknown normalization"),
    ],
)
def test_a_malformed_saved_tokenizer_is_refused(change, words):
    data = {**neox_like().to_dict(), **change}
    with pytest.raises(UserError, match="malformed") as error:
        tokenizer_from_dict(data)
    assert words in str(error.value)


def test_bytes_no_utf8_text_holds_may_be_left_out_and_none_other():
    """GPT-NeoX's vocabulary lacks the 13 bytes of no UTF-8 text (0xC0, 0xC1, 0xF5-0xFF): the
    merges' ids follow the 243 it has, any text still encodes, and the tokenizer saves as
    version 2, which older attnlab refuses rather than misreads."""
    order = [b for b in range(256) if b not in (0xC0, 0xC1, *range(0xF5, 256))]
    tokenizer = BPETokenizer(MERGES, "gpt2", ["<|endoftext|>"], order)
    assert tokenizer.vocab_size == 243 + len(MERGES) + 1
    text = "café ÿ Ā 東京 🙂\x00"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("café") == [243 + len(MERGES) - 1]
    saved = tokenizer.to_dict()
    assert saved["version"] == 2 and tokenizer_from_dict(saved) == tokenizer
    with pytest.raises(ValueError, match="each byte value once"):
        BPETokenizer(MERGES, "gpt2", [], order[1:])  # byte 0 is needed
    with pytest.raises(ValueError, match="each byte value once"):
        BPETokenizer(MERGES, "gpt2", [], [*order, 0])


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("a  12 b3", ["a", "  ", "1", "2", " b", "3"]),  # "  " added; " " stays before "b"
        ("x 12", ["x", " ", "1", "2"]),  # GPT-2's regex alone: "x", " 12"
        ("½²٣", ["½", "²", "٣"]),  # Unicode's other number characters too
        ("", []),
    ],
)
def test_split_digits_cuts_each_number_character_out_after_the_added_tokens(text, pieces):
    """With merges of digits ("12", " 1"), which a pre-token holding two digits would use."""
    merges = [*MERGES, (b"1", b"2"), (b" ", b"1")]
    tokenizer = BPETokenizer(merges, "gpt2", [], None, RUNS, "NFC", split_digits=True)
    ids = tokenizer.encode(text)
    plain = BPETokenizer(merges, "gpt2", [], None, RUNS, "NFC")
    expected = [i for p in pieces for i in plain.encode(p)]
    assert ids == expected == tokenizer.encode_reference(text)
    assert "12" not in text or ids != plain.encode(text)  # the cut changes them
    assert ids == tokenizer.encode_array(text).tolist()


def test_split_digits_saves_as_version_3_past_what_readers_of_version_2_know():
    tokenizer = neox_like(split_digits=True)
    saved = tokenizer.to_dict()
    assert saved["version"] == 3 and saved["split_digits"] is True
    assert tokenizer_from_dict(saved) == tokenizer and tokenizer_from_dict(saved).split_digits
    assert "split_digits" not in neox_like().to_dict() and neox_like().to_dict()["version"] == 2
    with pytest.raises(ValueError, match="split_digits must be true or false"):
        BPETokenizer(MERGES, split_digits="yes")


@pytest.mark.parametrize("normalization", [None, "NFC"])
def test_a_surrogate_pair_is_cut_as_the_character_it_makes(normalization):
    """A pair of surrogates (as json or surrogatepass give text) is one character to encode,
    here the digit U+1D7CE, cut out with split_digits by every encoder alike."""
    tokenizer = BPETokenizer(MERGES, normalization=normalization, split_digits=True)
    pair, joined = "a  \ud835\udfce", "a  \U0001d7ce"
    ids = tokenizer.encode(joined)
    assert tokenizer.encode(pair) == ids == tokenizer.encode_reference(pair)
    assert tokenizer.encode_array(pair).tolist() == ids
