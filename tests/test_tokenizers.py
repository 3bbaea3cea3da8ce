import itertools
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlab.data import corpus
from attnlab.data.corpus import Corpus
from attnlab.data.text import tokenize_cached, tokenizer_cached
from attnlab.errors import UserError
from attnlab.tokenizers import ByteTokenizer, CharTokenizer, build_tokenizer, char, load_tokenizer


@given(st.text())
def test_byte_tokenizer_round_trips_any_unicode(text):
    tokenizer = ByteTokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(st.text(min_size=1))
def test_char_tokenizer_round_trips_its_alphabet(text):
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text) and max(ids) < tokenizer.vocab_size
    assert tokenizer.decode(ids) == text


@given(st.lists(st.integers(0, 255)))
def test_byte_decode_never_fails(ids):
    assert isinstance(ByteTokenizer().decode(ids), str)


def test_special_tokens_come_after_the_vocabulary(tmp_path):
    tokenizer = CharTokenizer.from_text("<pad>", special_tokens=["<|endoftext|>", "<pad>"])
    assert tokenizer.vocab_size == 7
    assert tokenizer.special_tokens == {"<|endoftext|>": 5, "<pad>": 6}
    assert tokenizer.decode([0, 5, 1]) == "<<|endoftext|>>"
    assert tokenizer.encode("<pad>") == [0, 4, 2, 3, 1]  # plain text never becomes a special token
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([7])


@pytest.mark.parametrize("spec", ["char", "byte", "bpe:300"])
def test_byte_lengths_count_the_bytes_of_the_text(spec):
    text = "naïve café ✓ 🙂 <eot> " * 8
    tokenizer = build_tokenizer(spec, [text], special_tokens=["<eot>"])
    ids = [*tokenizer.encode(text), tokenizer.special_tokens["<eot>"]]
    lengths = tokenizer.byte_lengths()
    assert lengths.shape == (tokenizer.vocab_size,)
    assert lengths[ids].sum() == len(tokenizer.decode(ids).encode("utf-8"))
    if spec == "byte":  # a token that holds part of a character counts that part, not U+FFFD
        assert lengths[tokenizer.encode("🙂")].tolist() == [1, 1, 1, 1]


def test_unseen_characters_are_named():
    with pytest.raises(UserError, match="'z'"):
        CharTokenizer.from_text("abc").encode("abz")


def test_text_in_another_unicode_form_than_the_training_texts_is_told_so():
    """The text typed decomposed (C, e and combining marks) where the training text is
    composed: the marks are shown escaped (alone, one would sit on its quote), with the cure."""
    tokenizer = CharTokenizer.from_text("Ça été très")
    with pytest.raises(UserError) as error:
        tokenizer.encode("C\u0327a e\u0301te\u0301")
    line = str(error.value)
    assert "'C' 'e' '\\u0301' '\\u0327'; in Unicode's NFC form the text has only" in line
    assert "unicodedata.normalize('NFC', text)" in line
    for trained, typed, form in [("e\u0301te\u0301", "été", "NFD"), ("fi A", "ﬁ Ａ", "NFKC")]:
        with pytest.raises(UserError, match=f"in Unicode's {form} form the text has only"):
            CharTokenizer.from_text(trained).encode(typed)  # decomposed; a ligature, full width


def test_a_tokens_own_text_is_its_bytes_or_its_special_name():
    tokenizer = ByteTokenizer(["<pad>"])
    assert [tokenizer.token_text(i) for i in (97, 0xFF, 256)] == ["a", "\\xff", "<pad>"]
    tokenizer = CharTokenizer.from_text("ab", ["<|eot|>"])
    assert [tokenizer.token_text(i) for i in range(3)] == ["a", "b", "<|eot|>"]


@pytest.mark.parametrize(
    "tokenizer", [CharTokenizer.from_text("hello, wörld ✓", ["<|eot|>"]), ByteTokenizer(["<pad>"])]
)
def test_save_load_round_trip(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert type(loaded) is type(tokenizer) and loaded.to_dict() == tokenizer.to_dict()
    assert loaded.encode("hello") == tokenizer.encode("hello")


@pytest.mark.parametrize("spec", ["bpe:x", "bpe:-5", "bpe:"])
def test_a_bpe_size_that_is_no_number_is_named(spec):
    with pytest.raises(UserError, match=f"'{spec}': the N of bpe:N is a vocabulary size"):
        build_tokenizer(spec, ["some text"])


def test_bad_tokenizer_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"type": "sentencepiece"}')
    with pytest.raises(UserError, match="unknown type") as refused:
        load_tokenizer(tmp_path / "odd.json")
    assert "Hugging Face" not in str(refused.value)
    (tmp_path / "hf.json").write_text('{"version": "1.0", "added_tokens": [], "model": {}}')
    with pytest.raises(UserError, match="a Hugging Face tokenizer: `attnlab convert` its model"):
        load_tokenizer(tmp_path / "hf.json")  # transformers' tokenizer.json
    for fields, message in [
        ('"type": "char", "chars": "aa"', "a character more than once"),
        ('"type": "char", "chars": ""', "one or more single characters"),
        ('"type": "byte", "special_tokens": "ab"', "a list of strings, not the string"),
        ('"type": "byte", "special_tokens": ["<a>", ""]', "a non-empty string, got ''"),
        ('"type": "byte", "special_tokens": ["<a>", "<a>"]', "'<a>' given more than once"),
        ('"type": "byte", "special_tokens": ["\\ud800"]', "UTF-8 can encode, got '\\\\ud800'"),
        ('"type": "char", "chars": "a\\udc80"', "holds '\\\\udc80', which UTF-8 cannot"),
        (
            '"type": "bpe", "version": 1, "pattern": "gpt2", "merges": [], "byte_order": 5',
            "malformed: byte_order must be a string, got 5",
        ),
    ]:
        (tmp_path / "odd.json").write_text("{" + fields + "}")
        with pytest.raises(UserError, match=message):
            load_tokenizer(tmp_path / "odd.json")


def test_a_tokenizer_file_without_a_field_its_type_needs_names_the_field(tmp_path):
    import json

    from attnlab.tokenizers.bpe import BPETokenizer

    path = tmp_path / "nomerges.json"
    saved = BPETokenizer.train(["low lower lowest"], 260).to_dict()
    path.write_text(json.dumps({k: v for k, v in saved.items() if k != "merges"}))
    with pytest.raises(UserError) as error:
        load_tokenizer(path)
    assert str(error.value) == f"tokenizer file {path} is malformed: it lacks 'merges'"


def test_a_lone_surrogate_encodes_as_the_replacement_character_everywhere():
    from attnlab.tokenizers.bpe import BPETokenizer

    replaced = "a\ufffdb".encode()
    assert bytes(ByteTokenizer().encode("a\ud800b")) == replaced
    bpe = BPETokenizer.train(["a\ud800b " * 20], 270)  # trained as encoding sees the text
    assert all(b"\xed\xa0" not in left + right for left, right in bpe.merges)
    assert bpe.decode_bytes(bpe.encode("a\ud800b")) == replaced


@pytest.mark.parametrize("spec", ["char", "byte", "bpe:300"])
def test_a_corpus_is_cached_as_the_ids_encode_gives(spec, tmp_path, monkeypatch):
    """tokenize_cached takes encode_array's array (no Python int per token; characters a slice
    at a time): the same ids, memory-mapped."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(char, "_SLICE", 7)  # slices that cut words and lines
    text = "Ünïcode text, with lines\nand 😀 emoji: the quick brown fox.\n" * 30
    tokenizer = build_tokenizer(spec, [text])
    tokens = tokenize_cached([text], tokenizer)
    assert isinstance(tokens, np.memmap) and tokens.tolist() == tokenizer.encode(text)
    with pytest.raises(TypeError, match="not one str"):  # its characters would be the texts
        tokenize_cached(text, tokenizer)
    assert tokenizer.encode_array("").tolist() == []


LINES = [
    "First Citizen:",
    "Before we proceed any further, hear me speak.",
    "",
    "  indented",
    "All:\tSpeak, speak.",
    "'s 're 123456 ... ?!",
    "Ünïcode 😀 \r\nline",
    "   ",
    "end.",
]


@pytest.mark.parametrize("spec", ["char", "byte", "bpe:300", "gpt4"])
def test_a_corpus_streamed_in_pieces_tokenizes_as_its_whole_text(spec, tmp_path, monkeypatch):
    """Pieces end before a line break that follows a letter or digit, else before a space that
    follows a word: no pre-token of the gpt2 or gpt4 pattern spans one, so the pieces' ids are
    the whole text's. Line breaks are the files' own (\r\n too)."""
    from attnlab.tokenizers.bpe import BPETokenizer

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus, "CHUNK", 200)
    rng = np.random.default_rng(0)
    for name in "ab":
        text = "\n".join(rng.choice(LINES, 60)) + rng.choice(["", "\n", "\n\n "])
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "c.txt").write_bytes(b"bad \xff bytes\n")
    (tmp_path / "d.txt").write_bytes(b"  an indented line, and no other.\r\n" * 20)
    texts = Corpus(str(tmp_path))
    pieces = list(texts)
    whole = "\n\n".join(
        p.read_bytes().decode("utf-8", errors="replace") for p in sorted(tmp_path.glob("*.txt"))
    )
    assert len(pieces) > 5 and "".join(pieces) == whole and "\r\n" in whole
    assert all(not a[-1].isspace() and b[0] in "\r\n " for a, b in itertools.pairwise(pieces))
    assert any(b[0] == " " for b in pieces[1:])  # the indented file: between words
    if spec == "gpt4":
        tokenizer = BPETokenizer.train(texts, 300, pattern="gpt4")
        assert tokenizer.merges == BPETokenizer.train([whole], 300, pattern="gpt4").merges
    else:
        tokenizer = tokenizer_cached(spec, texts)
        assert tokenizer.to_dict() == build_tokenizer(spec, [whole]).to_dict()
    assert tokenize_cached(texts, tokenizer).tolist() == tokenizer.encode(whole)


def test_a_large_corpus_is_never_held_whole(tmp_path, monkeypatch):
    """Learning the characters and tokenizing a 16 MB file holds one piece at a time."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus, "CHUNK", 1 << 16)
    line = "Speak, speak. You are all resolved rather to die than to famish?\n"
    path = tmp_path / "big.txt"
    path.write_text(line * (16_000_000 // len(line)))
    tracemalloc.start()
    try:
        tokenizer = tokenizer_cached("char", Corpus(str(path)))
        tokens = tokenize_cached(Corpus(str(path)), tokenizer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(tokens) == path.stat().st_size and tokenizer.decode(tokens[:65].tolist()) == line
    assert peak < 2_000_000, f"{peak / 1e6:.1f} MB held at once"


def test_a_damaged_cached_tokenizer_is_learned_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    texts = ["the cat sat on the mat, the cat sat. " * 20]
    learned = tokenizer_cached("bpe:270", texts).to_dict()
    (cached,) = (tmp_path / "cache" / "tokenizers").iterdir()
    for damage in ("", '{"type": "bpe"'):  # cut short, to nothing or midway
        cached.write_text(damage)
        assert tokenizer_cached("bpe:270", texts).to_dict() == learned
        assert json.loads(cached.read_text()) == learned


class ChangingTexts:
    """A corpus whose file is rewritten between two readings: each reading gives the next."""

    def __init__(self, *versions):
        self.versions = iter(versions)

    def __iter__(self):
        return iter(next(self.versions))


def test_data_that_changes_while_it_is_read_is_never_cached_under_the_wrong_name(
    tmp_path, monkeypatch
):
    from attnlab.data.masked_lm import encode_lines_cached

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    tokenizer = CharTokenizer.from_text("abcd \n")
    for encode in (tokenize_cached, encode_lines_cached):
        with pytest.raises(UserError, match="the data changed while it was read"):
            encode(ChangingTexts(["ab\ncd\n"], ["dc\nba\n"]), tokenizer)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert tokenize_cached(["ab\ncd\n"], tokenizer).tolist() == tokenizer.encode("ab\ncd\n")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],  # not whole ids
        lambda data: b"",
        lambda data: b"\xff" * len(data),  # ids past the vocabulary
        lambda data: b"garbage",
        lambda data: data[: len(data) // 2],  # cut short, whole ids left: was read as they were
        lambda data: data[2:4] + data[:2] + data[4:],  # two ids swapped, both in the vocabulary
    ],
)
def test_a_damaged_cache_file_is_encoded_again(tmp_path, monkeypatch, damage):
    from attnlab.data.masked_lm import encode_lines_cached

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    tokenizer = CharTokenizer.from_text("abcd \n")
    for encode, folder in [(tokenize_cached, "tokens"), (encode_lines_cached, "lines")]:
        expected = as_lists(encode(["ab\ncd\n"], tokenizer))
        (file,) = (tmp_path / "cache" / folder).iterdir()
        file.write_bytes(damage(file.read_bytes()))
        assert as_lists(encode(["ab\ncd\n"], tokenizer)) == expected


def as_lists(arrays):
    """A cache's arrays (one, or a tuple) as lists."""
    return [a.tolist() for a in (arrays if isinstance(arrays, tuple) else (arrays,))]


def test_lines_end_at_line_feeds_and_a_corpus_leaves_out_a_byte_order_mark(tmp_path):
    from attnlab.data.corpus import text_lines

    assert text_lines("a\x0cb\r\nc\u2028d\x85e\n\nf") == ["a\x0cb", "c\u2028d\x85e", "", "f"]
    assert text_lines("one\n") == ["one"] and text_lines("") == []
    (tmp_path / "bom.txt").write_bytes("\ufeffhello\r\n".encode())
    assert "".join(Corpus(str(tmp_path / "bom.txt"))) == "hello\r\n"


def test_a_folder_corpus_leaves_out_hidden_files_and_a_glob_is_a_folders(tmp_path):
    from attnlab.data.corpus import corpus_files

    for name in ("a.txt", ".notes.txt", ".git/b.txt", "sub/c.txt", ".hidden/d.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text\n")
    assert corpus_files(str(tmp_path)) == [tmp_path / "a.txt", tmp_path / "sub" / "c.txt"]
    assert corpus_files(f"{tmp_path}:.hidden/*.txt") == [tmp_path / ".hidden" / "d.txt"]
    for spec in (f"{tmp_path / 'a.txt'}:*.md", f"{tmp_path}:/etc/*"):
        with pytest.raises(UserError, match="a glob follows a folder, and is relative to it"):
            corpus_files(spec)


def test_a_corpus_warns_once_of_a_file_that_is_not_utf8_text(tmp_path):
    (tmp_path / "latin1.txt").write_bytes(
        "a café, then a long line of English\n".encode("latin-1") * 3
    )
    (tmp_path / "nul.txt").write_bytes(b"a line that ends in one NUL character\0\n" * 2)
    (tmp_path / "fine.txt").write_text("plain\n")
    notes = []
    texts = Corpus(str(tmp_path), notes.append)
    assert "".join(texts).count("\ufffd") == 3 and list(texts)  # read twice, told once
    assert notes == [
        f"warning: {tmp_path / 'latin1.txt'} holds 3 byte(s) that are not UTF-8 (read as "
        "U+FFFD); text is read as UTF-8",
        f"warning: {tmp_path / 'nul.txt'} holds NUL characters; text is read as UTF-8",
    ]
