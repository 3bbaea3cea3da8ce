"""Byte-level BPE: known answer, trainer against a naive recount, GPT-2 parity with tiktoken."""

import hashlib
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import regex
import tiktoken
import tiktoken.load
from helpers import assert_same_tokens
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.data.corpus import Corpus
from attnlab.errors import UserError
from attnlab.tokenizers import bpe, bpe_training, load_tokenizer
from attnlab.tokenizers.bpe import PATTERNS, BPETokenizer, resolve_pattern
from attnlab.tokenizers.bpe_training import count_words, train_merges

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("ATTNLAB_DATA", REPO.parent / "shared" / "data"))
GPT2_DIR = DATA / "gpt2-bpe"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"

# Text that stresses pre-tokenization and byte merges: emoji, CJK, combining marks, control and
# format characters, long and odd whitespace runs, contractions, digits, plus arbitrary Unicode.
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x85\u00a0\u1680\u2003\u2028\u3000"
unicode_texts = st.lists(
    st.one_of(
        st.text(),
        st.text(alphabet=st.sampled_from(WHITESPACE), min_size=1, max_size=300),
        st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)),
        st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)),
        st.text(alphabet=st.characters(categories=["Mn", "Mc", "Me"])),
        st.text(alphabet=st.characters(categories=["Cc", "Cf", "Co", "Zs"])),
        st.sampled_from(
            ["'s", "'LL", " don't", "1234567", " hello", "\n\n", "  world", "é", "👍🏽"]
        ),
    ),
    max_size=10,
).map("".join)


def own_sources() -> list[str]:
    """A hermetic corpus: this repository's Python files."""
    return [p.read_text(encoding="utf-8") for p in sorted((REPO / "attnlab").rglob("*.py"))]


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    return BPETokenizer.train(own_sources(), 600, special_tokens=["<|endoftext|>", "<pad>"])


@pytest.fixture(scope="module")
def trained_gpt4() -> BPETokenizer:
    return BPETokenizer.train(own_sources(), 400, pattern="gpt4")


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    if not GPT2_DIR.is_dir():
        pytest.skip(f"GPT-2 vocabulary not found at {GPT2_DIR} (set ATTNLAB_DATA)")
    return BPETokenizer.from_gpt2_files(GPT2_DIR / "vocab.bpe", GPT2_DIR / "encoder.json")


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2) -> tiktoken.Encoding:
    """tiktoken's own GPT-2 encoding, built by tiktoken's own constructor (its pattern, its
    special tokens), with the two files it would download read from GPT2_DIR instead. Nothing of
    attnlab's goes into it: a change to attnlab's PATTERNS["gpt2"] shows as a difference."""
    from tiktoken_ext import openai_public

    load_ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks

    def from_local_files(vocab_bpe_file, encoder_json_file, vocab_bpe_hash, **hashes):
        assert (Path(vocab_bpe_file).name, Path(encoder_json_file).name) == (
            "vocab.bpe",
            "encoder.json",
        )
        merges = (GPT2_DIR / "vocab.bpe").read_bytes()
        # the merges file tiktoken publishes; encoder.json is re-serialised (see its README)
        assert hashlib.sha256(merges).hexdigest() == vocab_bpe_hash
        return load_ranks(str(GPT2_DIR / "vocab.bpe"), str(GPT2_DIR / "encoder.json"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", from_local_files)
        patch.setenv("TIKTOKEN_CACHE_DIR", "")  # local paths are read directly, nothing cached
        encoding = tiktoken.Encoding(**openai_public.gpt2())
    assert encoding.n_vocab == 50257
    return encoding


def assert_same_as_tiktoken(ours: BPETokenizer, theirs: tiktoken.Encoding, text: str) -> None:
    expected = theirs.encode_ordinary(text)
    assert_same_tokens(ours.encode(text), expected)
    assert_same_tokens(ours.encode_reference(text), expected)


# ---- training ----


def test_known_answer_aaabdaaabac():
    # aaabdaaabac -> ZabdZabac (Z=aa) -> ZYdZYac (Y=ab wins the tie with Za) -> XdXac (X=ZY)
    tokenizer = BPETokenizer.train(["aaabdaaabac"], vocab_size=259)
    assert tokenizer.merges == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab")]
    Z, Y, X = 256, 257, 258
    assert tokenizer.token_bytes(Z) == b"aa" and tokenizer.token_bytes(Y) == b"ab"
    expected = [X, ord("d"), X, ord("a"), ord("c")]
    assert tokenizer.encode("aaabdaaabac") == expected
    assert tokenizer.encode_reference("aaabdaaabac") == expected
    assert tokenizer.decode(expected) == "aaabdaaabac"


def naive_merges(word_counts: dict[bytes, int], num_merges: int) -> list[tuple[bytes, bytes]]:
    """The lecture algorithm: recount every pair after every merge, same tie rule."""
    words = [(list(w), n) for w, n in word_counts.items()]
    token_bytes = [bytes([b]) for b in range(256)]
    merges = []
    while len(merges) < num_merges:
        counts = Counter()
        for word, n in words:
            for pair in zip(word, word[1:], strict=False):
                counts[pair] += n
        if not counts:
            break
        a, b = min(counts, key=lambda pair: (-counts[pair], pair))
        merged = token_bytes[a] + token_bytes[b]
        if merged in token_bytes:
            new = token_bytes.index(merged)
        else:
            new = len(token_bytes)
            token_bytes.append(merged)
            merges.append((token_bytes[a], token_bytes[b]))
        for word, _ in words:
            i = 0
            while i < len(word) - 1:
                if word[i] == a and word[i + 1] == b:
                    word[i : i + 2] = [new]
                i += 1
    return merges


@settings(deadline=None, max_examples=150)
@given(
    st.dictionaries(
        st.text("abc", min_size=1, max_size=12).map(str.encode),
        st.integers(1, 5),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 40),
)
def test_incremental_trainer_matches_a_full_recount(word_counts, num_merges):
    # A three-letter alphabet makes ties and two paths to the same bytes ((ab)c, a(bc)) common.
    assert train_merges(word_counts, num_merges) == naive_merges(word_counts, num_merges)


def test_trainer_matches_a_full_recount_on_real_text():
    counts = count_words(own_sources()[:5], PATTERNS["gpt2"])
    assert train_merges(counts, 60) == naive_merges(counts, 60)


def test_special_tokens_are_cut_out_before_counting():
    counts = count_words(["ab<|endoftext|>ab<pad>"], PATTERNS["gpt2"], ["<|endoftext|>", "<pad>"])
    assert counts == {b"ab": 2}


def test_two_workers_count_like_one(monkeypatch):
    texts = own_sources()
    monkeypatch.setattr(bpe_training, "JOB_CHARACTERS", 50_000)  # several jobs per worker
    assert count_words(texts, PATTERNS["gpt2"], workers=2) == count_words(texts, PATTERNS["gpt2"])
    monkeypatch.setattr(bpe_training, "JOB_CHARACTERS", 1 << 30)  # one job: no pool is started
    monkeypatch.setattr(bpe_training, "_process_pool", lambda workers: pytest.fail("forked"))
    assert count_words(texts, PATTERNS["gpt2"], workers=2) == count_words(texts, PATTERNS["gpt2"])


def test_vocab_size_and_specials(trained):
    assert trained.vocab_size == 600
    assert trained.special_tokens == {"<|endoftext|>": 598, "<pad>": 599}
    assert 598 not in trained.encode("<|endoftext|>")  # plain text never makes a special token
    assert trained.decode([598, 104]) == "<|endoftext|>h"


def test_training_stops_when_pairs_run_out():
    tokenizer = BPETokenizer.train(["abcd abcd"], vocab_size=1000)
    # pre-tokens "abcd" and " abcd": merges ab, abc, abcd, " abcd", then every word is one token
    assert tokenizer.vocab_size == 256 + 4
    assert tokenizer.encode("abcd abcd") == [258, 259]
    assert BPETokenizer.train("abcd abcd", vocab_size=1000).merges == tokenizer.merges  # one text


@pytest.mark.parametrize("vocab_size, specials", [(255, []), (257, ["<a>", "<b>"])])
def test_too_small_vocab_is_a_user_error(vocab_size, specials):
    with pytest.raises(UserError, match="too small"):
        BPETokenizer.train(["abc"], vocab_size, special_tokens=specials)


def test_invalid_pattern_is_a_user_error():
    with pytest.raises(UserError, match="invalid pre-tokenization pattern"):
        BPETokenizer.train(["abc"], 300, pattern="(unclosed")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pattern_that_skips_characters_is_refused_not_lossy(workers):
    with pytest.raises(UserError, match=r"skips characters of the corpus \(' ' first\)"):
        BPETokenizer.train(["one two", "three"], 270, pattern=r"\w+", workers=workers)


def test_custom_pattern(trained):
    tokenizer = BPETokenizer.train(["one two three four"], 270, pattern=r"\S+|\s+")
    assert tokenizer.pre_tokenize("a  b") == ["a", "  ", "b"]
    assert tokenizer.encode("one two") == tokenizer.encode_reference("one two")


# ---- encoding ----


@settings(deadline=None, max_examples=200)
@given(unicode_texts)
def test_reference_equals_fast_path_on_trained(trained, trained_gpt4, text):
    assert trained.encode_reference(text) == trained.encode(text)
    assert trained_gpt4.encode_reference(text) == trained_gpt4.encode(text)


def test_reference_equals_fast_path_on_a_corpus(trained):
    text = "\n".join(own_sources())
    assert_same_tokens(trained.encode_reference(text), trained.encode(text))


@settings(deadline=None, max_examples=200)
@given(unicode_texts)
def test_round_trip(trained, trained_gpt4, text):
    for tokenizer in (trained, trained_gpt4):
        assert tokenizer.decode(tokenizer.encode(text)) == text


@given(st.lists(st.integers(0, 599)))
def test_decoding_any_ids_gives_text(trained, ids):
    assert isinstance(trained.decode(ids), str)


def test_unknown_id_is_a_value_error(trained):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trained.decode([600])


def test_partial_characters_decode_to_replacement(trained):
    assert trained.decode(list("é".encode())[:1]) == "\ufffd"


def test_lone_surrogates_are_replaced_like_tiktoken(trained):
    text = "a\ud800b"
    assert trained.encode_reference(text) == trained.encode(text) == trained.encode("a\ufffdb")


def test_long_whitespace_runs_are_cut_alike_by_both_encoders(trained, monkeypatch):
    monkeypatch.setattr(bpe, "SPACE_RUN", 7)  # the reference encoder is slow on 100,000
    for text in ("a" + " " * 30 + "b", "\n" * 15, " \t" * 9 + "x\n\n", "ab  c" + " " * 8):
        ids = trained.encode(text)
        assert ids == trained.encode_reference(text) == trained.encode_array(text).tolist()
        assert trained.decode(ids) == text


# ---- GPT-2's vocabulary ----


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.encode_reference("hello world") == [31373, 995]
    assert gpt2.vocab_size == 50257 and gpt2.special_tokens == {"<|endoftext|>": 50256}
    assert gpt2.decode([31373, 50256, 995]) == "hello<|endoftext|> world"


def test_gpt2_encodes_a_million_blank_lines(gpt2):  # tiktoken's regex engine alone gives up
    text = "a" + "\n" * 1_000_000 + " b"
    ids = gpt2.encode(text)
    assert gpt2.decode(ids) == text and gpt2.encode_array(text).tolist() == ids


def test_gpt2_matches_tiktoken_on_tiny_shakespeare(gpt2, tiktoken_gpt2):
    if not SHAKESPEARE.is_file():
        pytest.skip(f"tiny Shakespeare not found at {SHAKESPEARE} (set ATTNLAB_DATA)")
    assert_same_as_tiktoken(gpt2, tiktoken_gpt2, SHAKESPEARE.read_text(encoding="utf-8"))


def test_gpt2_matches_tiktoken_on_the_whole_stdlib(gpt2, tiktoken_gpt2):
    # About 12 MB of Python: 7-12 s on 2 cores, so it stays in the default run.
    for text in Corpus("stdlib"):  # a piece at a time
        assert_same_as_tiktoken(gpt2, tiktoken_gpt2, text)


@settings(deadline=None, max_examples=300)
@given(unicode_texts)
def test_gpt2_matches_tiktoken_on_unicode(gpt2, tiktoken_gpt2, text):
    assert_same_as_tiktoken(gpt2, tiktoken_gpt2, text)
    assert gpt2.decode(gpt2.encode(text)) == text


@settings(deadline=None, max_examples=300)
@given(unicode_texts)
def test_gpt2_pattern_splits_as_tiktokens_own(text):
    """Hermetic (no vocabulary files): our GPT-2 pre-tokens are the matches of the pattern
    tiktoken itself ships for GPT-2 (an equivalent, faster form of GPT-2's released one)."""
    from tiktoken_ext.openai_public import r50k_pat_str

    assert BPETokenizer([], "gpt2").pre_tokenize(text) == regex.findall(r50k_pat_str, text)


def test_gpt2_files_must_agree(tmp_path, gpt2):
    encoder = tmp_path / "encoder.json"
    encoder.write_text('{"!": 1}')
    with pytest.raises(UserError):
        BPETokenizer.from_gpt2_files(GPT2_DIR / "vocab.bpe", encoder)
    with pytest.raises(UserError, match="not found"):
        BPETokenizer.from_gpt2_files(tmp_path / "missing.bpe", encoder)


# ---- saving ----


def test_save_load_round_trip(tmp_path, trained):
    path = tmp_path / "tok.json"
    trained.save(path)
    loaded = load_tokenizer(path)
    assert loaded == trained and isinstance(loaded, BPETokenizer)
    assert BPETokenizer.load(path) == trained
    text = "def f(x):\n    return x  # ünïcode"
    assert loaded.encode(text) == trained.encode(text)


def test_saved_file_is_readable(tmp_path, trained):
    path = tmp_path / "tok.json"
    trained.save(path)
    text = path.read_text(encoding="utf-8")
    assert '"type": "bpe"' in text and '"Ġ ' in text  # merges in GPT-2's printable form


def test_gpt2_save_load_round_trip(tmp_path, gpt2):
    gpt2.save(tmp_path / "gpt2.json")
    loaded = load_tokenizer(tmp_path / "gpt2.json")
    assert loaded == gpt2 and loaded.encode("hello world") == [31373, 995]


@pytest.mark.parametrize(
    "change",
    [
        {"version": 99},
        {"merges": ["a"]},
        {"merges": ["a b", "a b"]},
        {"merges": [5]},
        {"merges": ["\t a"]},  # a Latin-1 character that stands for no byte
        {"merges": ["\u20ac a"]},  # one past Latin-1
        {"byte_order": "abc"},
        {"pattern": "("},
    ],
)
def test_malformed_files_are_user_errors(tmp_path, trained, change):
    path = tmp_path / "tok.json"
    BPETokenizer(trained.merges[:2], trained.pattern).save(path)
    data = load_tokenizer(path).to_dict() | change
    path.write_text(json.dumps(data))
    with pytest.raises(UserError):
        load_tokenizer(path)


def test_the_counting_workers_leave_ctrl_c_to_the_parent_and_end_on_sigterm():
    # a handler that raises, as a torchrun rank's does: forked workers inherit it, and the
    # SIGTERM with which the pool ends them was a traceback from each
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with bpe_training._process_pool(2) as pool:  # no tracebacks from each worker on Ctrl-C
            assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
            assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    "pattern, refused",
    [
        (r"\p{L}+", False),  # a class, then a greedy quantifier
        (r" ?\p{L}+| ?\p{N}+|\s+", False),
        (r"\d{1,3}| ?\P{L}+", False),
        (r"\p{L}++", True),  # possessive
        (r"a{2}+", True),
        (r"\p{L}+(?=\s)", True),  # look-ahead
    ],
)
def test_a_pattern_of_ones_own_is_refused_only_where_it_needs_backtracking(pattern, refused):
    if refused:
        with pytest.raises(UserError, match="backtracking"):
            resolve_pattern(pattern)
    else:
        assert resolve_pattern(pattern) == pattern
