"""`attnlab convert` of a Hugging Face Mamba folder with GPT-NeoX's kind of tokenizer (NFC, its
special tokens first, runs of spaces as added tokens; interop/hf_neox.py): the checkpoint
computes, tokenizes and samples as transformers does, and what does not convert is refused.
The folder is built here: a byte-level BPE trained on a small text, beside a tiny random
MambaForCausalLM whose vocabulary is padded past the tokenizer's, as mamba-130m's is."""

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
    AutoTokenizer,
    BertTokenizerFast,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedTokenizerFast,
)

from attnlab.interop.hf_neox import byte_level_from_hf  # noqa: E402
from attnlab.training.checkpoints import load_checkpoint  # noqa: E402

END, PAD = "<|endoftext|>", "<|padding|>"
CORPUS = (
    "The cat sat on the mat.  The dog sat on the log.\n\tdef f(x):\n        return x  # ok\n"
    "Naïve café, crème brûlée; 東京の夜は静か。 emoji 🙂👍🏽!   Spaces   and\t\ttabs.\n"
)
SPACES = [" " * n for n in range(8, 1, -1)]  # as GPT-NeoX's: the longest run first
TEXTS = [
    "The cat sat on the mat.",
    "a  b   c    d     e      f       g        h         i",  # runs of 2 to 9 spaces
    " " * 30 + "thirty spaces, then\n\n\n\tthree newlines and a tab  \t \n",
    "café (NFC) and cafe\u0301 (NFD); Å and A\u030a; ﬁne ligature",
    "東京の夜は静か。 🙂👍🏽 emoji, and a ZWJ family 👨\u200d👩\u200d👧",
    "  leading and trailing spaces  ",
    "def f(x):\n        return x  # eight spaces\r\n",
    "",
]


def gpt_neox_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE shaped as GPT-NeoX's: NFC, <|endoftext|> and <|padding|> at ids 0 and 1,
    the bytes (but the 13 no UTF-8 text holds) and the merges after them, then runs of spaces as
    added tokens."""
    from tokenizers import normalizers
    from tokenizers import pre_tokenizers as split

    return byte_level_tokenizer(
        CORPUS, split.ByteLevel(add_prefix_space=False), [END, PAD], 420, normalizers.NFC(),
        SPACES, pad_token=PAD,
    )  # fmt: skip


def mamba_folder(folder, tokenizer, seed=0) -> MambaForCausalLM:
    """A tiny random Mamba saved beside `tokenizer`, its vocabulary padded to a multiple of 8."""
    folder.mkdir(parents=True)
    save_tokenizer(tokenizer, folder, "GPTNeoXTokenizer")  # as state-spaces/mamba-130m-hf's
    rows = -(-len(tokenizer) // 8) * 8
    config = MambaConfig(
        vocab_size=rows, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
        conv_kernel=4, time_step_rank=4, bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = MambaForCausalLM(config).eval()
    with torch.no_grad():  # weights moved well away from their start: clear greedy choices
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.uniform_(-2.3, 2.3)
            elif name.endswith("dt_proj.bias"):
                p.uniform_(-4.0, 1.0)
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.3)
        model.backbone.embeddings.weight[len(tokenizer) :] = 0  # padding: no token's row
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(the Hugging Face folder, its model, its tokenizer, the converted checkpoint, the order of
    the checkpoint's ids: ours i is Hugging Face's order[i])."""
    root = tmp_path_factory.mktemp("mamba")
    model = mamba_folder(root / "hf", gpt_neox_tokenizer())
    from attnlab.cli import main

    assert main(["convert", str(root / "hf"), "--out", str(root / "checkpoint")]) == 0
    theirs = AutoTokenizer.from_pretrained(root / "hf")
    _, order = byte_level_from_hf(theirs, "the folder")
    return root / "hf", model, theirs, root / "checkpoint", order


def test_the_tokenizer_is_gpt_neox_shaped(converted):
    """What makes it another tokenizer than GPT-2's, else the tests below prove little."""
    _, model, theirs, _, order = converted
    state = json.loads(theirs.backend_tokenizer.to_str())
    assert state["normalizer"]["type"] == "NFC"
    assert theirs.convert_tokens_to_ids([END, PAD]) == [0, 1]
    four = len(theirs) - len(SPACES) + SPACES.index(" " * 4)  # an added token
    assert theirs("a    b", add_special_tokens=False)["input_ids"][1] == four
    assert len(theirs) < model.config.vocab_size and order != sorted(order)
    assert "À" not in theirs.get_vocab() and "A" in theirs.get_vocab()  # byte 0xC0 left out
    assert len(load_checkpoint(converted[3]).tokenizer.byte_order) == 243


@pytest.mark.parametrize("text", TEXTS)
def test_it_encodes_and_decodes_as_transformers(text, converted):
    _, _, theirs, checkpoint, order = converted
    assert_tokenizes_as(theirs, load_checkpoint(checkpoint).tokenizer, order, text)


def test_the_checkpoint_computes_as_transformers(converted):
    folder, hf, theirs, checkpoint, order = converted
    ours = load_checkpoint(checkpoint)
    text = " ".join(TEXTS)
    ids, expected = ours.tokenizer.encode(text), theirs(text, add_special_tokens=False)
    assert ours.model.config.vocab_size == len(theirs) == len(order)
    with torch.no_grad():
        got = ours.model(torch.tensor([ids]))[0]
        full = hf(torch.tensor([expected["input_ids"]])).logits
    assert full.abs().max() > 1  # logits that are not flat
    torch.testing.assert_close(got, full[..., order], rtol=1e-5, atol=1e-5)
    # the padding rows left out: log-probabilities renormalised over the real tokens
    kept = full.softmax(-1)[..., order].sum(-1, keepdim=True)
    assert (kept < 1 - 1e-4).all()  # mass enough that renormalising shows beyond 1e-5
    mine = got.log_softmax(-1)
    torch.testing.assert_close(mine, full.log_softmax(-1)[..., order] - kept.log(), atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    assert ours.tokenizer.special_tokens == {END: len(order) - 2, PAD: len(order) - 1}


def test_greedy_sampling_prints_what_transformers_generates(converted, capsys):
    _, hf, theirs, checkpoint, _ = converted
    assert_samples_as_generate(hf, theirs, checkpoint, "The cat sat", capsys)


def test_convert_says_what_it_left_out_and_inspect_reads_it(converted, tmp_path, capsys):
    folder, hf, theirs, _, _ = converted
    code, out, err = run(["convert", str(folder), "--out", str(tmp_path / "again")], capsys)
    padding = hf.config.vocab_size - len(theirs)
    assert code == 0 and f"note: {padding} of the model's {hf.config.vocab_size} token rows" in err
    argv = ["inspect", "lens", str(tmp_path / "again"), "--text", "The cat  sat", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads(out)


def test_to_hf_writes_the_model_and_says_why_the_tokenizer_stays(converted, tmp_path, capsys):
    _, _, _, checkpoint, _ = converted
    out = tmp_path / "hf"
    code, _, err = run(["convert", str(checkpoint), "--to", "hf", "--out", str(out)], capsys)
    assert code == 0, err
    assert "the tokenizer is left out" in err and "added tokens (GPT-NeoX's kind)" in err
    assert not {"vocab.json", "merges.txt", "tokenizer.json"} & {p.name for p in out.iterdir()}
    ours = load_checkpoint(checkpoint).model
    back = MambaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ours(ids)[0], rtol=1e-5, atol=1e-5)


def refusal(case: str, converted, tmp_path):
    """The command line of a Mamba folder refused, and the words its one line says."""
    folder = tmp_path / "hf"
    shutil.copytree(converted[0], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    if case == "a WordPiece tokenizer":
        (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\n")
        BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(folder)
        words = "is no byte-level BPE of GPT-2's or GPT-NeoX's kind (a WordPiece model)"
    elif case == "no tokenizer":
        words = "lacks its tokenizer: no tokenizer.json"
    elif case == "more tokens than rows":
        tokenizer = gpt_neox_tokenizer()
        tokenizer.add_tokens([f"extra{i}" for i in range(20)])
        save_tokenizer(tokenizer, folder, "GPTNeoXTokenizer")
        words = "the tokenizer does not belong to these weights"
    return ["convert", str(folder), "--out", str(tmp_path / "out")], words


@pytest.mark.parametrize("case", ["a WordPiece tokenizer", "no tokenizer", "more tokens than rows"])
def test_refusals_are_one_line_and_write_nothing(case, converted, tmp_path, capsys):
    argv, words = refusal(case, converted, tmp_path)
    assert_refused_writing_nothing(argv, words, converted[0], tmp_path, capsys)


def test_the_hugging_face_folder_given_as_a_checkpoint_says_to_convert_it(converted, capsys):
    folder = converted[0]
    code, _, err = run(["sample", str(folder), "--max-new-tokens", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"a Hugging Face model's folder, which `attnlab convert {folder} --out DIR`" in err
