"""`attnlab convert` of Hugging Face BERT folders: a masked LM becomes a bert checkpoint that
fills masks as transformers' model does and that a classifier fine-tunes from, a sequence
classifier a classifier checkpoint that classifies as it does; BERT's special-token ids are
renumbered (after the ordinary ones) without changing what the model computes."""

import copy
import json
import shutil

import pytest
import torch
from helpers import (
    BERT_SPECIALS,
    assert_refused_writing_nothing,
    bert_tokenizer_folder,
    bert_vocab,
    run,
)

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
import huggingface_hub.constants  # noqa: E402
from transformers import BertConfig, BertTokenizerFast  # noqa: E402

from attnlab.training.checkpoints import load_checkpoint  # noqa: E402

TEXTS = ["the movie was great !", "A terrible , boring film .", "naïve café owners in zürich"]


def hf_config(vocab_size: int, **more) -> BertConfig:
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=48, pad_token_id=0)  # fmt: skip
    return BertConfig(vocab_size=vocab_size, **{**shape, **more})


def randomized(model):
    """Every weight random and large enough that the model's choices are clear."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def save_folder(model, folder, vocab, lowercase=True, tokenizer_json=True):
    """save_pretrained's folder: vocab.txt and tokenizer_config.json as Google's BERT folders
    have them, or the tokenizer.json and tokenizer_config.json transformers writes."""
    tokenizer = bert_tokenizer_folder(folder.parent / f"{folder.name}-vocab", vocab, lowercase)
    model.save_pretrained(folder)
    if tokenizer_json:
        BertTokenizerFast.from_pretrained(tokenizer).save_pretrained(folder)
    else:
        for file in tokenizer.iterdir():
            shutil.copy(file, folder)
    return BertTokenizerFast.from_pretrained(folder)


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory):
    """(transformers' tokenizer, its BertForMaskedLM, the checkpoint convert made of its folder)."""
    root = tmp_path_factory.mktemp("bert")
    vocab = bert_vocab()
    model = randomized(transformers.BertForMaskedLM(hf_config(len(vocab))))
    tokenizer = save_folder(model, root / "hf", vocab)
    code = transformers_free_main(["convert", str(root / "hf"), "--out", str(root / "bert")])
    assert code == 0
    return tokenizer, model, root / "bert"


def transformers_free_main(argv):
    from attnlab.cli import main

    return main(argv)


def our_order(tokenizer, ours) -> list[int]:
    """Hugging Face's id of each of our ids: the same token's."""
    vocab = tokenizer.get_vocab()
    return [vocab[ours.decode([i])] for i in range(ours.vocab_size)]


def test_the_checkpoint_computes_as_the_hugging_face_model(masked_lm):
    tokenizer, hf, checkpoint = masked_lm
    ours = load_checkpoint(checkpoint)
    order = our_order(tokenizer, ours.tokenizer)
    assert sorted(ours.tokenizer.special_tokens.values())[0] == len(order) - 5  # specials last
    assert [order[ours.tokenizer.special_tokens[t]] for t in BERT_SPECIALS] == [0, 3, 4, 5, 6]
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # padded: pad_id renumbered too
    ids = torch.tensor([[order.index(i) for i in row] for row in batch["input_ids"].tolist()])
    specials = ours.tokenizer.special_tokens
    assert [[specials["[CLS]"], *ours.tokenizer.encode(text), specials["[SEP]"]] for text in TEXTS
            ] == [row[row != specials["[PAD]"]].tolist() for row in ids]  # fmt: skip
    with torch.no_grad():  # in float64: the same float32 weights, without float32's rounding
        theirs = copy.deepcopy(hf).double()(**batch).logits[..., order]
        logits, _ = ours.model.double()(ids)
    real = batch["attention_mask"].bool()
    assert (logits[real] - theirs[real]).abs().max() < 1e-5


def test_fill_mask_prints_the_fillers_transformers_predicts(masked_lm, capsys):
    tokenizer, hf, checkpoint = masked_lm
    text = "the [MASK] was good ."
    code, out, err = run(["fill-mask", str(checkpoint), text, "--top-k", "4"], capsys)
    assert code == 0, err
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**batch).logits[0, batch["input_ids"][0] == tokenizer.mask_token_id][0]
    logits[tokenizer.all_special_ids] = float("-inf")  # fillers are words
    top = logits.softmax(-1).topk(4)
    rows = [line.split() for line in out.splitlines()]
    assert [token for _, token in rows] == tokenizer.convert_ids_to_tokens(top.indices)
    assert torch.allclose(torch.tensor([float(p) for p, _ in rows]), top.values, atol=1e-4)


def test_a_pre_training_folder_converts_as_its_masked_lm(masked_lm, tmp_path, capsys):
    tokenizer, _, _ = masked_lm
    vocab = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    hf = randomized(transformers.BertForPreTraining(hf_config(len(vocab))))
    save_folder(hf, tmp_path / "hf", vocab, tokenizer_json=False)  # vocab.txt alone
    code, out, err = run(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    assert "a bert checkpoint" in out
    ours = load_checkpoint(tmp_path / "c")
    order = our_order(tokenizer, ours.tokenizer)
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = hf(ids).prediction_logits[..., order]
        logits, _ = ours.model(torch.tensor([[order.index(i) for i in ids[0].tolist()]]))
    assert (logits - theirs).abs().max() < 1e-5


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """(transformers' tokenizer, its cased BertForSequenceClassification with named classes,
    the checkpoint convert made of a folder with vocab.txt, not tokenizer.json)."""
    root = tmp_path_factory.mktemp("classifier")
    vocab = bert_vocab(lowercase=False)
    config = hf_config(len(vocab), num_labels=3, id2label={0: "bad", 1: "fine", 2: "good"})
    model = randomized(transformers.BertForSequenceClassification(config))
    tokenizer = save_folder(model, root / "hf", vocab, lowercase=False, tokenizer_json=False)
    assert transformers_free_main(["convert", str(root / "hf"), "--out", str(root / "c")]) == 0
    return tokenizer, model, root / "c"


def test_a_classifier_classifies_as_the_hugging_face_model(classifier, capsys):
    tokenizer, hf, checkpoint = classifier
    assert not load_checkpoint(checkpoint).tokenizer.lowercase
    code, out, err = run(["classify", str(checkpoint), *TEXTS], capsys)
    assert code == 0, err
    with torch.no_grad():
        probabilities = hf(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    rows = [line.split("\t") for line in out.splitlines()]
    assert [label for label, *_ in rows] == [
        hf.config.id2label[i] for i in probabilities.argmax(-1).tolist()
    ]
    shown = torch.tensor([float(p) for _, p, _ in rows])
    assert torch.allclose(shown, probabilities.max(-1).values, atol=1e-4)


def test_a_classifier_fine_tunes_from_a_converted_bert(masked_lm, tmp_path, capsys):
    _, _, checkpoint = masked_lm
    rows = [f"{text}\t{i % 2}" for i, text in enumerate(TEXTS * 4)]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    argv = ["train", "classifier", "--init", str(checkpoint), "--data", str(tmp_path / "train.tsv"),
            "--out", str(tmp_path / "run"), "--max-iters", "2", "--eval-interval", "2",
            "--folds", "4", "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert "new: classifier.bias, classifier.weight, pooler.bias, pooler.weight" in err
    trained, start = load_checkpoint(tmp_path / "run"), load_checkpoint(checkpoint)
    assert trained.tokenizer == start.tokenizer
    assert trained.model.config.pad_id == start.model.config.pad_id == len(start.tokenizer.tokens)


def test_a_hub_name_converts_from_transformers_cache(masked_lm, tmp_path, monkeypatch, capsys):
    _, _, checkpoint = masked_lm
    repo = tmp_path / "hub" / "models--attnlab-test--tiny-bert"
    shutil.copytree(checkpoint.parent / "hf", repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network call
    code, out, err = run(
        ["convert", "attnlab-test/tiny-bert", "--out", str(tmp_path / "c")], capsys
    )
    assert code == 0 and not err.strip(), err
    first, second = (load_checkpoint(p) for p in (checkpoint, tmp_path / "c"))
    assert first.tokenizer == second.tokenizer
    weights = [m.state_dict() for m in (first.model, second.model)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def refusal(case: str, masked_lm, tmp_path):
    """The command line of a conversion refused, and the words its one line says."""
    tokenizer, _, checkpoint = masked_lm
    vocab = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    folder, out = tmp_path / "hf", str(tmp_path / "out")
    if case == "bert model":
        save_folder(transformers.BertModel(hf_config(len(vocab))), folder, vocab)
        return ["convert", str(folder), "--out", out], "holds a BertModel without a masked-LM head"
    if case == "weights of another model":
        save_folder(transformers.BertModel(hf_config(len(vocab))), folder, vocab)
        config = json.loads((folder / "config.json").read_text())
        config["architectures"] = ["BertForMaskedLM"]
        (folder / "config.json").write_text(json.dumps(config))
        return ["convert", str(folder), "--out", out], "lacks weights a BertForMaskedLM has (cls."
    if case == "no vocabulary":
        transformers.BertForMaskedLM(hf_config(len(vocab))).save_pretrained(folder)
        return ["convert", str(folder), "--out", out], "no vocab.txt (nor a tokenizer.json)"
    if case == "other vocabulary size":
        save_folder(transformers.BertForMaskedLM(hf_config(len(vocab) + 2)), folder, vocab)
        return ["convert", str(folder), "--out", out], f"{len(vocab) + 2} token rows"
    if case == "padding not [PAD]":
        config = hf_config(len(vocab), pad_token_id=1)
        save_folder(transformers.BertForMaskedLM(config), folder, vocab)
        return ["convert", str(folder), "--out", out], "pad_token_id 1 is not its [PAD] token (0)"
    if case == "no [MASK]":
        vocab = [t if t != "[MASK]" else "[unused9]" for t in vocab]
        save_folder(transformers.BertForMaskedLM(hf_config(len(vocab))), folder, vocab)
        return ["convert", str(folder), "--out", out], "lacks [MASK]"
    if case == "bert checkpoint to hf":
        return ["convert", str(checkpoint), "--to", "hf", "--out", out], "gpt checkpoints"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["bert model", "weights of another model", "no vocabulary", "other vocabulary size",
     "padding not [PAD]", "no [MASK]", "bert checkpoint to hf"],
)  # fmt: skip
def test_refusals_are_one_line_and_write_nothing(case, masked_lm, tmp_path, capsys):
    argv, words = refusal(case, masked_lm, tmp_path)
    assert_refused_writing_nothing(argv, words, masked_lm[2], tmp_path, capsys)


def test_the_vocabulary_keeps_bert_layout_in_the_folder(masked_lm):
    """The folder's tokenizer, as transformers reads it, numbers as vocab.txt (the test's
    premise: the special tokens among the ordinary ones, [PAD] first)."""
    tokenizer, _, _ = masked_lm
    assert tokenizer.convert_tokens_to_ids(BERT_SPECIALS) == [0, 3, 4, 5, 6]
    assert json.loads(tokenizer.backend_tokenizer.to_str())["normalizer"]["lowercase"]
