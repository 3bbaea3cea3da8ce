"""`attnlab convert` of Hugging Face BERT folders: a masked LM becomes a bert checkpoint that
fills masks as transformers' model does and that a classifier fine-tunes from, a sequence
classifier a classifier checkpoint that classifies as it does; BERT's special-token ids are
renumbered (after the ordinary ones) without changing what the model computes. And back, with
--to hf: a folder that computes as the checkpoint does, its vocab.txt in attnlab's order."""

import copy
import json
import shutil

import pytest
import torch
from helpers import (
    BERT_SPECIALS,
    BERT_TEXT,
    assert_refused_writing_nothing,
    bert_tokenizer_folder,
    bert_vocab,
    run,
)

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
import huggingface_hub.constants  # noqa: E402
from transformers import BertConfig, BertTokenizerFast  # noqa: E402

from attnlab.models import bert  # noqa: E402
from attnlab.tokenizers import CharTokenizer  # noqa: E402
from attnlab.tokenizers.wordpiece import WordPieceTokenizer  # noqa: E402
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402

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
    if case in UNLIKE_BERT:
        model = bert.BertClassifier(ours_config(len(vocab), **UNLIKE_BERT[case]))
        save_checkpoint(tmp_path / "ours", model)
        return ["convert", str(tmp_path / "ours"), "--to", "hf", "--out", out], f"has {case}"
    raise AssertionError(case)


UNLIKE_BERT = {  # what Hugging Face's BERT does not compute: its words, and the config
    "pre-norm blocks": dict(prenorm=True),
    "rope positions": dict(positional="rope"),
    "mean pooling": dict(pooling="mean"),
}


@pytest.mark.parametrize(
    "case",
    ["bert model", "weights of another model", "no vocabulary", "other vocabulary size",
     "padding not [PAD]", "no [MASK]", *UNLIKE_BERT],
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


def ours_config(vocab_size: int, **more) -> bert.BertConfig:
    shape = dict(context_length=64, n_layers=2, n_heads=4, d_model=32, n_classes=3)
    return bert.BertConfig(vocab_size=vocab_size, **{**shape, **more})


def to_hf(checkpoint, out, capsys):
    """`attnlab convert CHECKPOINT --to hf --out OUT`, which succeeds: (its stderr, the folder's
    model, its tokenizer; None where it has none)."""
    code, _, err = run(["convert", str(checkpoint), "--to", "hf", "--out", str(out)], capsys)
    assert code == 0, err
    kind = json.loads((out / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, kind).from_pretrained(out).eval()
    written = (out / "vocab.txt").exists()
    return err, model, BertTokenizerFast.from_pretrained(out) if written else None


def test_a_converted_bert_goes_back_to_transformers_as_it_came(masked_lm, tmp_path, capsys):
    tokenizer, hf, checkpoint = masked_lm
    err, back, back_tokenizer = to_hf(checkpoint, tmp_path / "hf", capsys)
    ours = load_checkpoint(checkpoint)
    assert "note" not in err and type(back).__name__ == "BertForMaskedLM"
    assert back.config.pad_token_id == back_tokenizer.pad_token_id == ours.model.config.pad_id
    assert_same_outputs(hf, tokenizer, back, back_tokenizer, our_order(tokenizer, ours.tokenizer))
    code, _, err = run(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err  # and round again: the checkpoint it was
    again = load_checkpoint(tmp_path / "again")
    assert again.tokenizer == ours.tokenizer
    weights = [m.state_dict() for m in (ours.model, again.model)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_converted_classifier_goes_back_with_its_class_names(classifier, tmp_path, capsys):
    tokenizer, hf, checkpoint = classifier
    err, back, back_tokenizer = to_hf(checkpoint, tmp_path / "hf", capsys)
    assert "note" not in err and type(back).__name__ == "BertForSequenceClassification"
    assert back.config.id2label == {0: "bad", 1: "fine", 2: "good"}
    assert back.config.label2id == {"bad": 0, "fine": 1, "good": 2}
    order = our_order(tokenizer, load_checkpoint(checkpoint).tokenizer)
    assert_same_outputs(hf, tokenizer, back, back_tokenizer, order)


@pytest.mark.parametrize("names", [("x", "x"), ("good", "so\tso")])
def test_names_a_class_cannot_have_leave_the_classes_numbered(names, masked_lm, tmp_path, capsys):
    """id2label's names become the classes only where train's --label-names could give them
    (each its own, no tab: classify prints them as fields); else the classes are numbered, and
    the folder goes back to transformers all the same."""
    tokenizer, _, _ = masked_lm
    vocab = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    config = hf_config(len(vocab), id2label=dict(enumerate(names)))
    save_folder(transformers.BertForSequenceClassification(config), tmp_path / "hf", vocab)
    code, _, err = run(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    assert "classes" not in load_checkpoint(tmp_path / "c").artifacts
    to_hf(tmp_path / "c", tmp_path / "back", capsys)


def test_an_out_link_that_leads_nowhere_is_refused_by_name(masked_lm, tmp_path, capsys):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    argv = ["convert", str(masked_lm[2]), "--to", "hf", "--out", str(tmp_path / "out")]
    words = f"--out {tmp_path / 'out'} is a link that leads nowhere"
    assert_refused_writing_nothing(argv, words, masked_lm[2], tmp_path, capsys)


def assert_same_outputs(hf, tokenizer, back, back_tokenizer, order):
    """`back` and its tokenizer (a folder --to hf wrote) cut TEXTS into the same tokens as `hf`
    and its tokenizer do, and compute the same logits; back's id i is hf's id order[i]."""
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    back_batch = back_tokenizer(TEXTS, padding=True, return_tensors="pt")
    ids = batch["input_ids"].tolist()
    assert [[order[i] for i in row] for row in back_batch["input_ids"].tolist()] == ids
    with torch.no_grad():
        theirs, logits = hf(**batch).logits, back(**back_batch).logits
    expected = theirs[..., order] if theirs.dim() == 3 else theirs
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)  # large logits: relative


@pytest.mark.parametrize(
    "kind, lowercase, strip_accents, pooling",
    [("bert", True, None, "cls"), ("bert", True, False, "mean"),  # a masked LM pools nothing
     ("classifier", False, None, "cls"), ("classifier", False, True, "cls")],
)  # fmt: skip
def test_an_attnlab_bert_computes_the_same_in_transformers(
    kind, lowercase, strip_accents, pooling, tmp_path, capsys
):
    tokenizer = WordPieceTokenizer.from_vocab(bert_vocab(lowercase), lowercase, strip_accents)[0]
    specials = tokenizer.special_tokens
    config = ours_config(tokenizer.vocab_size, pad_id=specials["[PAD]"], pooling=pooling)
    model = randomized((bert.BertForMaskedLM if kind == "bert" else bert.BertClassifier)(config))
    save_checkpoint(tmp_path / "ours", model, {"tokenizer": tokenizer})
    err, hf, hf_tokenizer = to_hf(tmp_path / "ours", tmp_path / "hf", capsys)
    assert "note" not in err
    texts = [*BERT_TEXT.splitlines(), *TEXTS]
    batch = hf_tokenizer(texts, padding=True, return_tensors="pt")  # the same ids as ours:
    assert [[specials["[CLS]"], *tokenizer.encode(text), specials["[SEP]"]] for text in texts
            ] == [row[row != specials["[PAD]"]].tolist() for row in batch["input_ids"]]  # fmt: skip
    with torch.no_grad():
        theirs, (logits, _) = hf(**batch).logits, model(batch["input_ids"])
    real = batch["attention_mask"].bool() if kind == "bert" else slice(None)
    torch.testing.assert_close(logits[real], theirs[real], rtol=1e-5, atol=1e-5)  # large logits


@pytest.mark.parametrize(
    "tokenizer, why",
    [("char", "its char tokenizer is no WordPiece"),
     ("wordpiece, a token holding a line break", "encodes text to other ids than its")],
)  # fmt: skip
def test_another_tokenizer_is_left_out_with_a_note(tokenizer, why, tmp_path, capsys):
    if tokenizer == "char":
        tokenizer = CharTokenizer.from_text(BERT_TEXT, BERT_SPECIALS)
    else:  # vocab.txt's lines, read back, are others: its ids would not be the model's
        tokenizer = WordPieceTokenizer(["the", "movie", "a\nb", "##s", "good"])
    pad = tokenizer.special_tokens["[PAD]"]
    model = randomized(bert.BertForMaskedLM(ours_config(tokenizer.vocab_size, pad_id=pad)))
    save_checkpoint(tmp_path / "ours", model, {"tokenizer": tokenizer})
    err, hf, hf_tokenizer = to_hf(tmp_path / "ours", tmp_path / "hf", capsys)
    assert f"note: the tokenizer is left out of {tmp_path / 'hf'}: " in err and why in err
    written = {p.name for p in (tmp_path / "hf").iterdir()}
    assert not {"vocab.txt", "tokenizer.json", "tokenizer_config.json"} & written
    ids = torch.randint(0, pad, (1, 16))  # ordinary tokens: none of them padding
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=1e-5, atol=1e-5)
