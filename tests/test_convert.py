"""`attnlab convert`: a Hugging Face GPT-2 folder as a checkpoint that every command reads, and
a checkpoint back as a folder transformers loads, the tokenizer with it where the ids agree."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import (
    assert_refused_writing_nothing,
    loaded_modules,
    one_line_error,
    run,
    tiny_gpt,
)

transformers = pytest.importorskip("transformers")
import huggingface_hub.constants  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast  # noqa: E402

from attnlab.models.vision_transformer import VisionTransformer, ViTConfig  # noqa: E402
from attnlab.tokenizers import ByteTokenizer, CharTokenizer  # noqa: E402
from attnlab.tokenizers.bpe import BPETokenizer  # noqa: E402
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "c"), ("a", "t")]
END = 256 + len(MERGES)  # <|endoftext|>
PROMPT = "the cat sat on the mat"
TEXT = "The cat, the hat: naïve ünïcode 🙂, don't   stop\n\n\tthe end 1234"


def gpt2_byte_characters() -> list[str]:
    """GPT-2's byte table in its vocabulary's order: the printable Latin-1 bytes stand for
    themselves and come first; the other bytes follow as U+0100, U+0101, ..."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(0x100 + i) for i in range(len(others))]


def gpt2_folder(folder, seed=0) -> GPT2LMHeadModel:
    """A tiny random GPT-2 saved as save_pretrained writes it, with vocab.json and merges.txt
    in GPT-2's format: 256 byte tokens, a few merges and <|endoftext|>."""
    folder.mkdir(parents=True)
    vocab = {character: i for i, character in enumerate(gpt2_byte_characters())}
    vocab |= {left + right: 256 + i for i, (left, right) in enumerate(MERGES)}
    vocab["<|endoftext|>"] = END
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = "".join(f"{left} {right}\n" for left, right in MERGES)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    config = GPT2Config(vocab_size=END + 1, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=END,
                        eos_token_id=END)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every weight random and large enough that greedy choices are clear
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(the Hugging Face folder, its model, the checkpoint `attnlab convert` made of it)."""
    root = tmp_path_factory.mktemp("convert")
    model = gpt2_folder(root / "hf")
    from attnlab.cli import main

    assert main(["convert", str(root / "hf"), "--out", str(root / "checkpoint")]) == 0
    return root / "hf", model, root / "checkpoint"


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits if hasattr(model, "generation_config") else model(ids)[0]


def test_the_checkpoint_computes_and_tokenizes_as_the_hugging_face_model(converted):
    folder, hf, checkpoint = converted
    ours = load_checkpoint(checkpoint)
    ids = torch.randint(0, END + 1, (2, 32))
    assert (logits(ours.model, ids) - logits(hf, ids)).abs().max() < 1e-5
    assert (
        ours.tokenizer.encode(TEXT) == GPT2TokenizerFast.from_pretrained(folder)(TEXT)["input_ids"]
    )
    assert ours.tokenizer.special_tokens == {"<|endoftext|>": END}


def test_greedy_sampling_prints_what_transformers_generates(converted, capsys):
    folder, hf, checkpoint = converted
    tokenizer = GPT2TokenizerFast.from_pretrained(folder)
    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        new = hf.generate(prompt, max_new_tokens=14, do_sample=False, pad_token_id=END)
    new = new[0, prompt.shape[1] :].tolist()
    new = new[: new.index(END)] if END in new else new
    assert len(new) >= 4  # a continuation to compare, not an end at once
    argv = ["sample", str(checkpoint), "--prompt", PROMPT, "--temperature", "0"]
    code, out, err = run([*argv, "--max-new-tokens", "14"], capsys)
    assert code == 0, err
    assert out == PROMPT + tokenizer.decode(new, clean_up_tokenization_spaces=False) + "\n"


def test_a_checkpoint_goes_back_to_transformers_with_its_tokenizer(converted, tmp_path, capsys):
    folder, hf, checkpoint = converted
    out = tmp_path / "hf"
    code, _, err = run(["convert", str(checkpoint), "--to", "hf", "--out", str(out)], capsys)
    assert code == 0 and "note" not in err, err
    back = GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.randint(0, END + 1, (2, 32))
    assert (logits(back, ids) - logits(hf, ids)).abs().max() < 1e-5
    assert back.config.eos_token_id == back.generation_config.eos_token_id == END
    tokenizer = GPT2TokenizerFast.from_pretrained(out)
    assert tokenizer(TEXT)["input_ids"] == load_checkpoint(checkpoint).tokenizer.encode(TEXT)
    vocab, merges = (json.loads((f / "vocab.json").read_text()) for f in (out, folder)), []
    assert next(vocab) == next(vocab)  # GPT-2's files, as they came
    for f in (out, folder):
        merges.append([line for line in (f / "merges.txt").read_text().splitlines()[1:] if line])
    assert merges[0] == merges[1]
    again = tmp_path / "again"  # and round again: the same weights
    assert run(["convert", str(out), "--out", str(again)], capsys)[0] == 0
    first, second = (
        safetensors.torch.load_file(p / "model.safetensors") for p in (checkpoint, again)
    )
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def tokenizer_named(name: str):
    text = "the cat sat on the mat with the hat, and then the bat sat too. " * 20
    return {
        "byte": lambda: ByteTokenizer(),
        "byte with specials": lambda: ByteTokenizer(["<|endoftext|>", "<pad>"]),
        "bpe": lambda: BPETokenizer.train(text, 300, special_tokens=["<|endoftext|>"]),
        "char": lambda: CharTokenizer.from_text(text),
        "bpe, gpt4 splitting": lambda: BPETokenizer.train(text, 300, pattern="gpt4"),
        # "abc" is a token of its own to attnlab; Hugging Face merges a with b first, then stops
        "bpe, merge order": lambda: BPETokenizer([(b"a", b"b"), (b"b", b"c"), (b"a", b"bc")]),
    }[name]()


@pytest.mark.parametrize(
    "name, written",
    [("byte", True), ("byte with specials", True), ("bpe", True), ("char", False),
     ("bpe, gpt4 splitting", False), ("bpe, merge order", False)],
)  # fmt: skip
def test_a_tokenizer_goes_along_only_where_transformers_gives_the_same_ids(
    name, written, tmp_path, capsys
):
    tokenizer = tokenizer_named(name)
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    save_checkpoint(tmp_path / "checkpoint", model, {"tokenizer": tokenizer})
    out = tmp_path / "hf"
    code, _, err = run(
        ["convert", str(tmp_path / "checkpoint"), "--to", "hf", "--out", str(out)], capsys
    )
    assert code == 0, err
    ids = torch.randint(0, tokenizer.vocab_size, (1, 16))
    assert (
        logits(GPT2LMHeadModel.from_pretrained(out), ids) - logits(model, ids)
    ).abs().max() < 1e-5
    if written:
        hf = GPT2TokenizerFast.from_pretrained(out)
        assert len(hf) == tokenizer.vocab_size and "note" not in err
        assert hf(TEXT)["input_ids"] == tokenizer.encode(TEXT)
    else:
        assert "attnlab: note: the tokenizer is left out" in err
        assert not {"vocab.json", "merges.txt", "tokenizer.json"} & {p.name for p in out.iterdir()}


def test_training_starts_from_a_converted_checkpoint(converted, tmp_path, capsys):
    _, _, checkpoint = converted
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat, and the hat sat on the cat.\n" * 100)
    argv = ["train", "gpt", "--init", str(checkpoint), "--data", str(corpus), "--out",
            str(tmp_path / "run"), "--max-iters", "2", "--eval-interval", "2", "--eval-iters",
            "1", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert f"started from {checkpoint}; new: none" in out + err
    trained, start = load_checkpoint(tmp_path / "run"), load_checkpoint(checkpoint)
    assert trained.tokenizer == start.tokenizer
    weights = trained.model.token_embedding.weight
    assert weights.shape == start.model.token_embedding.weight.shape
    assert not torch.equal(weights, start.model.token_embedding.weight)


def test_a_hub_name_converts_from_transformers_cache(converted, tmp_path, monkeypatch, capsys):
    folder, _, checkpoint = converted
    repo = tmp_path / "hub" / "models--attnlab-test--tiny-gpt2"
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network call
    out = tmp_path / "checkpoint"
    code, _, err = run(["convert", "attnlab-test/tiny-gpt2", "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() != b""
    first, second = (
        safetensors.torch.load_file(p / "model.safetensors") for p in (checkpoint, out)
    )
    assert all(torch.equal(first[k], second[k]) for k in first)
    code, _, err = run(["convert", "attnlab-test/elsewhere", "--out", str(tmp_path / "x")], capsys)
    assert "attnlab-test/elsewhere, nor in transformers' cache" in one_line_error(code, err)


def refusal(case: str, converted, tmp_path):
    """The command line of a conversion refused, and the words its one line says."""
    folder, _, checkpoint = converted
    out = str(tmp_path / "out")
    if case == "out holds a checkpoint":
        return ["convert", str(folder), "--out", str(checkpoint)], "already holds a checkpoint"
    if case == "out holds other files":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("mine")
        return ["convert", str(folder), "--out", out], "holds files (notes.txt)"
    if case in ("no merges.txt", "no tokenizer"):
        shutil.copytree(folder, tmp_path / "hf")
        gone = ["merges.txt"] if case == "no merges.txt" else ["merges.txt", "vocab.json"]
        for name in gone:
            (tmp_path / "hf" / name).unlink()
        missing = "no merges.txt (" if gone == ["merges.txt"] else "no vocab.json and no merges.txt"
        return ["convert", str(tmp_path / "hf"), "--out", out], missing
    if case in ("damaged weights", "damaged vocab.json"):
        shutil.copytree(folder, tmp_path / "hf")
        name = case.split()[1].replace("weights", "model.safetensors")
        (tmp_path / "hf" / name).write_bytes((folder / name).read_bytes()[:200])
        return ["convert", str(tmp_path / "hf"), "--out", out], "transformers cannot load"
    if case == "mistral":
        (tmp_path / "mistral").mkdir()
        config = {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}
        (tmp_path / "mistral" / "config.json").write_text(json.dumps(config))
        argv = ["convert", str(tmp_path / "mistral"), "--out", out]
        return argv, "reads GPT-2, Llama, Mamba and BERT"
    if case == "checkpoint without --to hf":
        return ["convert", str(checkpoint), "--out", out], "add --to hf"
    if case == "folder with --to hf":
        return ["convert", str(folder), "--to", "hf", "--out", out], "leave --to hf out"
    if case == "alibi":
        save_checkpoint(tmp_path / "alibi", tiny_gpt(positional="alibi"))
        return ["convert", str(tmp_path / "alibi"), "--to", "hf", "--out", out], "GPT-2-shaped"
    if case == "vit":
        vit = ViTConfig(image_size=4, patch_size=2, channels=1, n_layers=1, n_heads=2, d_model=8)
        save_checkpoint(tmp_path / "vit", VisionTransformer(vit))
        argv = ["convert", str(tmp_path / "vit"), "--to", "hf", "--out", out]
        return argv, "writes gpt, bert and classifier checkpoints"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["out holds a checkpoint", "out holds other files", "no merges.txt", "no tokenizer",
     "damaged weights", "damaged vocab.json", "mistral",
     "checkpoint without --to hf", "folder with --to hf", "alibi", "vit"],
)  # fmt: skip
def test_refusals_are_one_line_and_write_nothing(case, converted, tmp_path, capsys):
    argv, words = refusal(case, converted, tmp_path)
    assert_refused_writing_nothing(argv, words, converted[2], tmp_path, capsys)


def test_without_transformers_it_says_how_to_install_it(converted, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # an import of it fails
    code, _, err = run(["convert", str(converted[0]), "--out", str(tmp_path / "out")], capsys)
    assert "pip install transformers" in one_line_error(code, err)
    assert not (tmp_path / "out").exists()


def test_its_help_loads_neither_torch_nor_transformers():
    code = (
        "import contextlib\nfrom attnlab.cli import main\n"
        "with contextlib.suppress(SystemExit):\n    main(['convert', '--help'])"
    )
    loaded = loaded_modules(code)
    assert "attnlab.cli.convert" in loaded and not {"torch", "transformers"} & loaded


@pytest.mark.parametrize("given", ["the working folder", "a link to it"])
def test_an_empty_out_folder_stays_the_folder_it_is(given, tmp_path, monkeypatch, capsys):
    """--out ., or a link: the files appear in that folder (not in a new one put in its place,
    which a shell in the old one, or the link's target, would never see)."""
    model = tiny_gpt(vocab_size=256)
    save_checkpoint(tmp_path / "checkpoint", model, {"tokenizer": ByteTokenizer()})
    (tmp_path / "mine").mkdir()
    before = (tmp_path / "mine").stat().st_ino
    monkeypatch.chdir(tmp_path / "mine")
    out = "."
    if given == "a link to it":
        (tmp_path / "link").symlink_to(tmp_path / "mine")
        out = str(tmp_path / "link")
    argv = ["convert", str(tmp_path / "checkpoint"), "--to", "hf", "--out", out]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "mine").iterdir())
    assert "model.safetensors" in written and "vocab.json" in written
    assert sorted(p.name for p in Path(".").iterdir()) == written  # what the shell sees
    assert (tmp_path / "mine").stat().st_ino == before
    assert given != "a link to it" or (tmp_path / "link").is_symlink()
    ids = torch.randint(0, 256, (1, 16))
    assert (
        logits(GPT2LMHeadModel.from_pretrained("."), ids) - logits(model, ids)
    ).abs().max() < 1e-5
