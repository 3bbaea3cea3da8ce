"""`attnlab convert` of a Hugging Face Llama folder with SmolLM2's kind of tokenizer (a byte-level
BPE that cuts out each digit before GPT-2's regex, its special tokens first, the 13 bytes no
UTF-8 text holds left out; interop/hf_llama_folders.py): the checkpoint computes, tokenizes and
samples as transformers does, and what does not convert is refused in one line. The folders are
built here: a BPE trained on a small text beside tiny random LlamaForCausalLMs, one with a tied
head saved in bfloat16 (as SmolLM2-135M), one untied with grouped-query heads in float32."""

import json
import shutil

import pytest
import torch
from helpers import (
    assert_refused_writing_nothing,
    assert_samples_as_generate,
    assert_tokenizes_as,
    byte_level_tokenizer,
    run,
    save_tokenizer,
)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from attnlab.interop.hf_neox import byte_level_from_hf  # noqa: E402
from attnlab.tokenizers.bpe import PATTERNS, BPETokenizer  # noqa: E402
from attnlab.training.checkpoints import load_checkpoint  # noqa: E402

END = "<|endoftext|>"
SPECIALS = [END, "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>"]  # SmolLM2's first
CORPUS = (
    "The cat sat on the mat in 2024.  The dog sat on the log at 10:30, 1,234 times.\n"
    "\tdef f(x):\n        return x + 42  # ok\nNaïve café, crème brûlée; 東京の夜は静か。 "
    "emoji 🙂👍🏽!   Spaces   and\t\ttabs. Version 3.14159 and 1e-5 and x2 y10 ½ ² ٣.\n"
)
TEXTS = [
    "The cat sat on the mat in 2024.",
    "digits in runs: 1234567890 0001, 3.14159, 1e-5, x2y10z, 10:30 1,234",
    "a  1 and a 1 and a   12  b  3c   4 ",  # spaces before digits: each stretch on its own
    "numbers with spaces: 1 000 000, 12 345.67 and ½ ² ٣ (other number characters)",
    "def f(x):\n        return x + 42  # code\r\n\tif y == 0:\n\t\tpass\n",
    "東京の夜は静か。 🙂👍🏽 emoji, and a ZWJ family 👨\u200d👩\u200d👧",
    "café (NFC) and cafe\u0301 (NFD); Å and A\u030a; ﬁne ligature",
    "  leading and trailing spaces  \n\n\n",
    "",
]


def smollm2_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import pre_tokenizers as split

    digits = split.Digits(individual_digits=True)
    pre = split.Sequence([digits, split.ByteLevel(add_prefix_space=False)])
    return byte_level_tokenizer(CORPUS, pre, SPECIALS, 460)


def llama3_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    """Llama 3's kind: GPT-4's regex isolated, then ByteLevel without its own; with `bos`, its
    post-processor puts <|begin_of_text|> before every text."""
    from tokenizers import Regex, processors
    from tokenizers import pre_tokenizers as split

    pre = split.Sequence([
        split.Split(Regex(PATTERNS["gpt4"]), behavior="isolated", invert=False),
        split.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    first = "<|begin_of_text|>"
    post = processors.TemplateProcessing(single=f"{first} $A", special_tokens=[(first, 0)])
    specials = [first, "<|end_of_text|>"]
    return byte_level_tokenizer(CORPUS, pre, specials, 460, post_processor=post if bos else None)


def llama_folder(folder, tokenizer, tied: bool, seed=0) -> LlamaForCausalLM:
    """A tiny random Llama saved beside `tokenizer` (tied: its head the embedding, in bfloat16;
    else untied, grouped-query heads, float32); returned as transformers loads it in float32.
    RoPE's base is 10,000, whose angles attnlab's RoPE and transformers' round alike in float32
    (base ** -x there, 1 / base ** x here: with another base they differ by an ulp)."""
    folder.mkdir(parents=True)
    save_tokenizer(tokenizer, folder, "GPT2Tokenizer")  # as HuggingFaceTB/SmolLM2-135M's
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4 if tied else 2, max_position_embeddings=512,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        bos_token_id=0, eos_token_id=0, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights well away from their start: clear greedy choices
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0.0, 0.3)
    (model.to(torch.bfloat16) if tied else model).save_pretrained(folder)
    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=["tied", "untied"])
def converted(request, tmp_path_factory):
    """(the Hugging Face folder, its model, its tokenizer, the converted checkpoint, the order of
    the checkpoint's ids: ours i is Hugging Face's order[i])."""
    root = tmp_path_factory.mktemp(f"llama-{request.param}")
    model = llama_folder(root / "hf", smollm2_tokenizer(), tied=request.param == "tied")
    from attnlab.cli import main

    assert main(["convert", str(root / "hf"), "--out", str(root / "checkpoint")]) == 0
    # tokenizer.json as the tokenizers library runs it: transformers 5's AutoTokenizer gives a
    # GPT2Tokenizer (tokenizer_config's class), with GPT-2's pre-tokenizer instead of the file's
    theirs = PreTrainedTokenizerFast.from_pretrained(root / "hf")
    _, order = byte_level_from_hf(theirs, "the folder")
    return root / "hf", model, theirs, root / "checkpoint", order


def test_the_tokenizer_is_smollm2_shaped(converted):
    """What makes it another tokenizer than GPT-2's, else the tests below prove little."""
    _, model, theirs, checkpoint, order = converted
    state = json.loads(theirs.backend_tokenizer.to_str())
    assert [p["type"] for p in state["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]
    assert state["normalizer"] is None
    assert theirs.convert_tokens_to_ids(SPECIALS) == list(range(len(SPECIALS)))
    assert "À" not in theirs.get_vocab() and order != sorted(order)
    # GPT-2's regex over the whole text would give " 1", and "a" then " " before it
    assert theirs.tokenize("a  1") == ["a", "ĠĠ", "1"]
    ours = load_checkpoint(checkpoint).tokenizer
    assert ours.split_digits and len(ours.byte_order) == 243
    assert ours.to_dict()["version"] == 3 and BPETokenizer.from_dict(ours.to_dict()) == ours
    first = len(order) - len(SPECIALS)
    assert ours.special_tokens == {token: first + i for i, token in enumerate(SPECIALS)}


@pytest.mark.parametrize("text", TEXTS)
def test_it_encodes_and_decodes_as_transformers(text, converted):
    _, _, theirs, checkpoint, order = converted
    assert_tokenizes_as(theirs, load_checkpoint(checkpoint).tokenizer, order, text)


def test_the_checkpoint_computes_as_transformers(converted):
    _, hf, theirs, checkpoint, order = converted
    ours = load_checkpoint(checkpoint)
    text = " ".join(TEXTS)
    ids, expected = ours.tokenizer.encode(text), theirs(text, add_special_tokens=False)
    assert ours.model.config.vocab_size == len(theirs) == len(order) == hf.config.vocab_size
    assert ours.model.config.tie_weights == hf.config.tie_word_embeddings
    assert next(ours.model.parameters()).dtype == torch.float32
    with torch.no_grad():
        got = ours.model(torch.tensor([ids]))[0]
        full = hf(torch.tensor([expected["input_ids"]])).logits
    assert full.abs().max() > 1 and len(ids) > 100  # logits that are not flat, past RoPE's start
    torch.testing.assert_close(got, full[..., order], rtol=1e-5, atol=1e-5)


def test_greedy_sampling_prints_what_transformers_generates(converted, capsys):
    _, hf, theirs, checkpoint, _ = converted
    assert_samples_as_generate(hf, theirs, checkpoint, "The cat sat in 2024", capsys)


def test_inspect_lens_reads_the_checkpoint(converted, capsys):
    argv = ["inspect", "lens", str(converted[3]), "--text", "The cat sat 12 times", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads(out)


@pytest.mark.parametrize("bos", [False, True])
def test_a_llama3_shaped_tokenizer_splits_with_gpt4s_pattern_and_a_bos_is_refused(
    bos, converted, tmp_path, capsys
):
    """Llama 3's kind of pre-tokenizer (a Split on GPT-4's regex) crosses as that pattern; the
    <|begin_of_text|> its post-processor adds is refused, which sample would not put first."""
    tokenizer = llama3_tokenizer(bos)
    ours, order = byte_level_from_hf(tokenizer, "the folder")
    assert ours.pattern == PATTERNS["gpt4"] and not ours.split_digits
    for text in TEXTS:
        ids = [order[i] for i in ours.encode(text)]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("x 12345")
    assert [p for p, _ in pieces] == ["x", "Ġ", "123", "45"]  # GPT-4's, not GPT-2's
    folder, out = tmp_path / "hf", tmp_path / "out"
    llama_folder(folder, tokenizer, tied=True)
    argv = ["convert", str(folder), "--out", str(out)]
    if bos:
        words = "puts <|begin_of_text|> before every text (its post-processor)"
        assert_refused_writing_nothing(argv, words, folder, tmp_path, capsys)
    else:
        code, _, err = run(argv, capsys)
        assert code == 0, err
        assert load_checkpoint(out).tokenizer.pattern == PATTERNS["gpt4"]


def refusal(case: str, converted, tmp_path):
    """The command line of a Llama folder refused, and the words its one line says."""
    from tokenizers import pre_tokenizers as split

    folder = tmp_path / "hf"
    shutil.copytree(converted[0], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    if case == "whitespace pre-tokenizer":
        tokenizer = byte_level_tokenizer(CORPUS, split.WhitespaceSplit(), SPECIALS, 460)
        save_tokenizer(tokenizer, folder, "GPT2Tokenizer")
        words = "its pre-tokenizer (WhitespaceSplit; "
    elif case == "a prefix space":
        tokenizer = byte_level_tokenizer(
            CORPUS, split.ByteLevel(add_prefix_space=True), SPECIALS, 460
        )
        save_tokenizer(tokenizer, folder, "GPT2Tokenizer")
        words = "its pre-tokenizer (ByteLevel; "
    elif case == "no tokenizer":
        words = "lacks its tokenizer: no tokenizer.json"
    elif case == "a LlamaModel":
        save_tokenizer(smollm2_tokenizer(), folder, "GPT2Tokenizer")
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaModel"]}))
        words = "holds a LlamaModel: such folders convert from LlamaForCausalLM"
    return ["convert", str(folder), "--out", str(tmp_path / "out")], words


@pytest.mark.parametrize(
    "case", ["whitespace pre-tokenizer", "a prefix space", "no tokenizer", "a LlamaModel"]
)
def test_refusals_are_one_line_and_write_nothing(case, converted, tmp_path, capsys):
    argv, words = refusal(case, converted, tmp_path)
    assert_refused_writing_nothing(argv, words, converted[0], tmp_path, capsys)
