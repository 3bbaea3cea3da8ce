"""BERT: parity with Hugging Face transformers, masking statistics, the classifier's data."""

import itertools

import pytest
import torch

from attnlab.data.classification import encode_example, hold_out, pad_batch, read_tsv
from attnlab.data.masked_lm import (
    IGNORE_INDEX,
    MASK,
    SPECIALS,
    MaskedLMDataConfig,
    Masking,
    masked_lm_training_data,
    pack_sentences,
)
from attnlab.errors import ConfigError, UserError
from attnlab.evaluation.predict import _filler, masked_ids
from attnlab.interop.huggingface import from_hf, to_hf
from attnlab.models.bert import PRESETS, BertClassifier, BertConfig, BertForMaskedLM
from attnlab.models.vision_transformer import ViTConfig
from attnlab.tokenizers import CharTokenizer
from attnlab.tokenizers.bpe import BPETokenizer
from attnlab.training.config import TrainConfig
from attnlab.training.sources import DataRequest

transformers = pytest.importorskip("transformers")

HF_CONFIGS = [
    dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
         intermediate_size=64, max_position_embeddings=24),
    dict(vocab_size=61, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
         intermediate_size=40, max_position_embeddings=16, hidden_act="relu", type_vocab_size=3,
         layer_norm_eps=1e-6, num_labels=5),
]  # fmt: skip
PAD = 0


def random_hf(cls_name: str, fields: dict):
    config = transformers.BertConfig(
        **fields, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD
    )
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # HF zero-initialises biases and norms: randomise all for a real check
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def padded_batch(fields: dict, seed: int = 0):
    """Ids (3, T) with padding at the end of two rows, and random segment ids."""
    generator = torch.Generator().manual_seed(seed)
    length = fields["max_position_embeddings"] - 3
    ids = torch.randint(1, fields["vocab_size"], (3, length), generator=generator)
    ids[1, length - 4 :] = PAD
    ids[2, 5:] = PAD
    segments = torch.randint(0, fields.get("type_vocab_size", 2), ids.shape, generator=generator)
    return ids, segments, (ids != PAD).long()


@pytest.mark.parametrize("fields", HF_CONFIGS)
def test_hidden_states_and_pooler_match_hf_bert_model(fields):
    hf = random_hf("BertModel", fields)
    ours = from_hf(hf).eval()
    ids, segments, attention_mask = padded_batch(fields)
    expected = hf(input_ids=ids, token_type_ids=segments, attention_mask=attention_mask)
    hidden = ours.encoder(ids, segments)
    real = attention_mask.bool()
    torch.testing.assert_close(hidden[real], expected.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    pooled = torch.tanh(ours.pooler(hidden[:, 0]))
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fields", HF_CONFIGS)
def test_masked_lm_logits_match_and_round_trip(fields):
    hf = random_hf("BertForMaskedLM", fields)
    ours = from_hf(hf).eval()
    assert isinstance(ours, BertForMaskedLM)
    ids, segments, attention_mask = padded_batch(fields, seed=1)
    expected = hf(input_ids=ids, token_type_ids=segments, attention_mask=attention_mask).logits
    logits, _ = ours(ids, segments=segments)
    real = attention_mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=1e-5)
    chosen = real & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.3)
    targets = torch.where(chosen, ids, IGNORE_INDEX)
    picked, loss = ours(ids, targets, segments)  # the head on the selected rows (padded)
    labels = hf(
        input_ids=ids, token_type_ids=segments, attention_mask=attention_mask, labels=targets
    )
    torch.testing.assert_close(picked, expected[chosen], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, labels.loss, atol=1e-5, rtol=1e-5)
    back = to_hf(ours).eval()
    again = back(input_ids=ids, token_type_ids=segments, attention_mask=attention_mask).logits
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)
    assert back.cls.predictions.decoder.weight is back.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("fields", HF_CONFIGS)
def test_classifier_logits_match_and_round_trip(fields):
    hf = random_hf("BertForSequenceClassification", fields)
    ours = from_hf(hf).eval()
    assert isinstance(ours, BertClassifier) and ours.config.n_classes == hf.config.num_labels
    ids, segments, attention_mask = padded_batch(fields, seed=2)
    expected = hf(input_ids=ids, token_type_ids=segments, attention_mask=attention_mask).logits
    logits, _ = ours(ids, segments=segments)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    back = to_hf(ours).eval()
    state, original = back.state_dict(), hf.state_dict()
    assert state.keys() == original.keys()
    for name, value in original.items():
        torch.testing.assert_close(state[name], value, msg=name)


def test_a_silu_bert_converts_and_an_untied_masked_lm_is_refused():
    fields = {**HF_CONFIGS[0], "hidden_act": "silu"}
    hf = random_hf("BertForSequenceClassification", fields)
    ids, segments, attention_mask = padded_batch(fields, seed=4)
    expected = hf(input_ids=ids, token_type_ids=segments, attention_mask=attention_mask).logits
    back = to_hf(from_hf(hf)).eval()
    assert back.config.hidden_act == "silu"
    again = back(input_ids=ids, token_type_ids=segments, attention_mask=attention_mask).logits
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)
    untied = random_hf("BertForMaskedLM", {**HF_CONFIGS[0], "tie_word_embeddings": False})
    with pytest.raises(ValueError, match="not its word embeddings"):
        from_hf(untied)


@pytest.mark.parametrize(
    "cls_name, fields, message",
    [
        ("BertForMaskedLM", {"is_decoder": True}, "a BERT decoder"),
        ("BertModel", {"is_decoder": True, "add_cross_attention": True}, "a BERT decoder"),
        ("BertForMaskedLM", {"pad_token_id": None}, "without pad_token_id"),
        ("BertForSequenceClassification", {"num_labels": 1}, "single-label classification"),
        ("BertForSequenceClassification", {"problem_type": "multi_label_classification"},
         "single-label classification"),
    ],
)  # fmt: skip
def test_berts_that_would_compute_something_else_are_refused(cls_name, fields, message):
    config = transformers.BertConfig(**{**HF_CONFIGS[0], "pad_token_id": PAD, **fields})
    with pytest.raises(ValueError, match=message):
        from_hf(getattr(transformers, cls_name)(config))


def test_a_classifier_needs_two_classes():
    for config in (BertConfig, ViTConfig):
        with pytest.raises(ConfigError, match="n_classes must be at least 2"):
            config(n_classes=1)


@pytest.mark.parametrize(
    "field", [dict(prenorm=True), dict(positional="rope"), dict(pooling="mean")]
)
def test_to_hf_rejects_models_bert_cannot_express(field):
    config = BertConfig(vocab_size=20, context_length=8, n_layers=1, n_heads=1, d_model=8, **field)
    with pytest.raises(ValueError, match="BERT-shaped"):
        to_hf(BertClassifier(config))


@pytest.mark.parametrize(
    "positional,pooling", [("learned", "cls"), ("rope", "cls"), ("rope", "mean")]
)
def test_padding_is_never_attended_to(positional, pooling):
    config = BertConfig(vocab_size=50, context_length=16, n_layers=2, n_heads=2, d_model=16,
                        dropout=0.0, positional=positional, pooling=pooling)  # fmt: skip
    model, ids = BertClassifier(config).eval(), torch.tensor([[3, 7, 9, 11]])
    logits = model(torch.tensor([[3, 7, 9, 11, 0, 0, 0], [0] * 7]))[0]  # and a row of padding
    torch.testing.assert_close(model(ids)[0], logits[:1], atol=1e-6, rtol=1e-6)
    if pooling == "mean":  # the mean of the text's states; of padding alone 0, not 0/0 (NaN)
        mean = torch.stack([model.encoder(ids)[0].mean(0), torch.zeros(16)])
        torch.testing.assert_close(logits, model.classifier(torch.tanh(model.pooler(mean))))
    # positions matter: 11 at position 3 sees 7 and 9 reordered; wide weights show rotations
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 0.3)
    reordered = torch.tensor([[3, 9, 7, 11]])
    last, last_reordered = model.encoder(ids)[0, 3], model.encoder(reordered)[0, 3]
    assert (last - last_reordered).abs().max() > 1e-2


def test_masking_statistics():
    generator = torch.Generator().manual_seed(0)
    n_ordinary, pad, cls, sep, mask = 1000, 1000, 1001, 1002, 1003
    ids = torch.randint(0, n_ordinary, (64, 512), generator=generator)
    ids[:, 0], ids[:, -1], ids[:8, 400:] = cls, sep, pad
    masking = Masking(mask, n_ordinary, 0.15)
    inputs, targets = masking(ids, generator)
    selected = targets != IGNORE_INDEX
    special = ids >= n_ordinary
    assert not (selected & special).any()  # specials and padding never selected
    assert (inputs[special] == ids[special]).all()
    rate = selected.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.005
    assert (targets[selected] == ids[selected]).all()
    n = selected.sum()
    masked = (inputs[selected] == mask).sum() / n
    unchanged = (inputs[selected] == ids[selected]).sum() / n
    assert abs(masked - 0.8) < 0.01
    # unchanged: the 10% kept plus random draws that hit the same token (1 in 1000)
    assert abs(unchanged - 0.1) < 0.01
    assert abs(1 - masked - unchanged - 0.1) < 0.01  # replaced by a random token
    assert (inputs[selected & (inputs != mask)] < n_ordinary).all()  # random ones are ordinary
    again, _ = masking(ids, generator)
    assert not torch.equal(again, inputs)  # a fresh mask every batch


def test_a_mask_probability_of_zero_is_refused_not_one_token_a_batch():
    with pytest.raises(ConfigError, match="must be above 0"):
        MaskedLMDataConfig(mask_probability=0.0)
    assert MaskedLMDataConfig(mask_probability=1.0).mask_probability == 1.0


def test_packing_keeps_sentences_whole_and_in_order():
    sentences = [[5, 6, 7], [8, 9], [10, 11, 12, 13], list(range(20, 31))]
    tokens = torch.tensor([t for s in sentences for t in s]).numpy()
    starts = torch.tensor([0, 3, 5, 9, 20]).numpy()
    rows = pack_sentences(tokens, starts, 8, cls=1, sep=2, pad=0)
    assert rows.tolist() == [
        [1, 5, 6, 7, 8, 9, 2, 0],  # the third sentence would not fit: next row
        [1, 10, 11, 12, 13, 2, 0, 0],
        [1, 20, 21, 22, 23, 24, 25, 2],  # a long sentence in pieces of 6
        [1, 26, 27, 28, 29, 30, 2, 0],
    ]
    exact = pack_sentences(tokens, torch.tensor([0, 3, 6]).numpy(), 8, cls=1, sep=2, pad=0)
    assert exact.tolist() == [[1, 5, 6, 7, 8, 9, 10, 2]]  # 3 + 3 tokens fill a row exactly


def test_tsv_and_folds(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"text {i}\t{i % 2}\n" for i in range(20)))
    texts, labels = read_tsv(path)
    assert len(texts) == 20 and labels[:3] == [0, 1, 0]
    train, dev = hold_out((texts, labels), folds=10, fold=3)
    assert len(dev[0]) == 2 and sorted(dev[1]) == [0, 1]
    assert not set(train[0]) & set(dev[0])
    folds = [hold_out((texts, labels), 10, k)[1][0] for k in range(10)]
    assert sorted(t for fold in folds for t in fold) == sorted(texts)  # each example once


def test_tsv_lines_end_at_line_feeds_and_labels_are_plain_digits(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("\ufeffgood\u2028movie\t1\r\nbad\x0cone\t0\n".encode())
    assert read_tsv(path) == (["good\u2028movie", "bad\x0cone"], [1, 0])
    path.write_text("\n\nsentence\tlabel\ngood\t1\n")  # a header after blank lines
    assert read_tsv(path) == (["good"], [1])
    path.write_text("good movie\t1\ngreat\t\u00b2\n")  # "²".isdigit(), but no label
    with pytest.raises(UserError, match="label '²' is not an integer >= 0"):
        read_tsv(path)


def test_class_folders_leave_out_hidden_empty_and_binary_files(tmp_path):
    from attnlab.data.classification import read_class_folders

    for path, content in [("pos/a.txt", b"good"), ("pos/.ipynb_checkpoints/a.txt", b"good"),
                          ("neg/b.txt", b"\xef\xbb\xbfbad"), ("neg/empty.txt", b" \n"),
                          ("neg/ls", b"\x7fELF\xff\xfe\x00")]:  # fmt: skip
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    notes = []
    assert read_class_folders(tmp_path, notes.append) == ((["bad", "good"], [0, 1]), ["neg", "pos"])
    assert notes == [f"warning: skipping {tmp_path / 'neg/empty.txt'}: empty",
                     f"warning: skipping {tmp_path / 'neg/ls'}: not UTF-8 text"]  # fmt: skip


def test_a_line_that_two_corpus_pieces_share_is_one_sentence(tmp_path, monkeypatch):
    from attnlab.data.masked_lm import encode_lines_cached

    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    tokenizer = char_tokenizer()
    pieces = ["the cat sat on", " the mat\r\na dog\n\nold\rmac\r", "\nlast line"]  # \r ends too
    tokens, starts = encode_lines_cached(pieces, tokenizer)
    lines = [tokenizer.decode(tokens[a:b].tolist()) for a, b in itertools.pairwise(starts)]
    assert lines == [" the cat sat on the mat", " a dog", " old", " mac", " last line"]


def char_tokenizer():
    from attnlab.tokenizers import build_tokenizer

    return build_tokenizer(
        "char",
        ["abcdefghijklmnopqrstuvwxyz "],
        special_tokens=["[PAD]", "[CLS]", "[SEP]", "[MASK]"],
    )


def test_long_text_keeps_head_and_tail():
    tokenizer = char_tokenizer()
    [ids] = encode_example(tokenizer, "abcdefghij", 8)
    assert tokenizer.decode(ids) == "[CLS] abhij[SEP]"  # 3 head, 3 tail tokens
    assert encode_example(tokenizer, "abcde", 8, "windows") == encode_example(tokenizer, "abcde", 8)


def test_long_text_in_windows_covers_it_all():
    tokenizer = char_tokenizer()
    text = "abcdefghijklmnopq"  # 18 tokens with the leading space: windows at 0, 6, 12
    windows = encode_example(tokenizer, text, 8, "windows")
    assert [tokenizer.decode(w) for w in windows] == [
        "[CLS] abcde[SEP]", "[CLS]fghijk[SEP]", "[CLS]lmnopq[SEP]"
    ]  # fmt: skip
    windows = encode_example(tokenizer, text + "r", 8, "windows")  # 19: a 4th ends the text
    assert [tokenizer.decode(w) for w in windows][2:] == ["[CLS]lmnopq[SEP]", "[CLS]mnopqr[SEP]"]
    assert {len(w) for w in windows} == {8}


def test_a_texts_logits_are_the_mean_of_its_windows():
    config = BertConfig(vocab_size=30, context_length=8, n_layers=1, n_heads=2, d_model=16,
                        dropout=0.0, positional="rope", long_text="windows")  # fmt: skip
    model = BertClassifier(config).eval()
    texts = [[[1, 5, 6, 7, 2], [1, 8, 9, 2], [1, 4, 4, 4, 4, 2]], [[1, 9, 3, 2], [1, 7, 2]]]
    batch = pad_batch(texts, PAD)
    assert batch.shape == (2, 3, 6)
    logits, _ = model(batch)
    for text, row in zip(texts, logits, strict=True):
        alone = torch.cat([model(torch.tensor([w]))[0] for w in text])
        torch.testing.assert_close(row, alone.mean(0), atol=1e-6, rtol=1e-6)
    assert pad_batch([[w] for w in texts[1]], PAD).shape == (2, 4)  # one window each: (B, T)


def test_presets_build():
    for name in ("tiny", "bert-tiny"):
        assert BertForMaskedLM(PRESETS[name]).config.n_layers == PRESETS[name].n_layers


def test_evaluating_scores_every_held_out_sequence_and_all_of_unseen_data(tmp_path):
    """Training evaluates eval_iters batches of the held-out tenth; `attnlab evaluate` all of
    it, or all of a corpus the model never trained on."""
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"line {i} of a small corpus\n" for i in range(400)))
    train = TrainConfig(batch_size=4, eval_iters=2)
    model = {"context_length": 16}
    rows = {}
    for evaluate in ("", "held_out", "all"):
        request = DataRequest(MaskedLMDataConfig(str(corpus), "char"), model, train, None,
                              evaluate=evaluate)  # fmt: skip
        batches = masked_lm_training_data(request).eval["val"]()
        rows[evaluate] = sum(len(batch[0]) for batch in batches)
    assert rows[""] == 2 * 4 and rows["all"] > rows["held_out"] > rows[""]
    assert rows["all"] == pytest.approx(10 * rows["held_out"], rel=0.1)


def test_a_mask_takes_the_space_before_it_only_where_tokens_carry_one():
    text = "the movie was good . " * 20
    char = CharTokenizer.from_text(text, special_tokens=SPECIALS)
    bpe = BPETokenizer.train([text], 300, special_tokens=SPECIALS)
    for tokenizer, spaced in ((char, False), (bpe, True)):
        ids = masked_ids(tokenizer, "the movie was [MASK] good")
        at = ids.index(tokenizer.special_tokens[MASK])
        before = tokenizer.decode(ids[1:at])  # after [CLS]
        assert before == (" the movie was" if spaced else " the movie was ")  # as if after a space
    assert [_filler(t) for t in (" good", " ", "\n")] == ["good", "␣", "\\n"]


def test_fill_mask_and_classify_run_a_training_model_without_dropout():
    """As generation does: a model just built or trained (train mode, dropout on) predicts as
    in eval mode, the same every call, and is left in train mode."""
    from attnlab.evaluation.predict import classify, fill_mask

    tokenizer = CharTokenizer.from_text("good bad movie", special_tokens=SPECIALS)
    config = dict(vocab_size=tokenizer.vocab_size, context_length=24, n_layers=1, n_heads=2)
    config.update(d_model=16, dropout=0.5, pad_id=tokenizer.special_tokens["[PAD]"])
    for model, predict in [
        (BertForMaskedLM(BertConfig(**config)), lambda m: fill_mask(m, tokenizer, "a [MASK]")),
        (BertClassifier(BertConfig(**config)), lambda m: classify(m, tokenizer, ["good"])),
    ]:
        first = predict(model)
        assert predict(model) == first if isinstance(first, list) else predict(model).equal(first)
        assert model.training
        model.eval()
        second = predict(model)
        assert second == first if isinstance(first, list) else second.equal(first)


def test_label_names_are_one_per_class_and_each_its_own():
    from attnlab.data.classification import _label_names

    assert _label_names("neg, pos", 2) == ["neg", "pos"] and _label_names("", 2) == ["0", "1"]
    with pytest.raises(UserError, match="gives 3 names for 2 classes"):
        _label_names("a,b,c", 2)
    with pytest.raises(UserError, match="names 'a' twice: one per class"):
        _label_names("a, a", 2)
    for names in ("good,", "a\tb,c"):  # classify prints label<TAB>probability<TAB>text
        with pytest.raises(UserError, match="cannot name a class"):
            _label_names(names, 2)


def test_folds_asked_for_beside_a_dev_file_are_noted_as_unused(tmp_path):
    from attnlab.data.classification import read_examples

    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\na good film\t1\na bad film\t0\n")
    notes = []
    read_examples(str(tmp_path), 10, 3, notes.append)
    assert notes == [f"note: {tmp_path} has a dev.tsv, which validates: "
                                       "--folds and --fold are unused"]  # fmt: skip
    notes.clear()
    read_examples(str(tmp_path), 10, 0, notes.append)
    assert notes == []
