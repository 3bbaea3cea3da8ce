"""The contract every registered model kind and token mixer keeps (layers/contracts.py), checked
for each of them: the built-in ones and those test_platform.py registers from outside."""

import math

import pytest
import test_platform  # noqa: F401 - registers a model kind and a mixer from outside the package
import torch
from helpers import caches_made, step_logits
from torch import nn

from attnlab.config import config_from_dict, config_to_dict
from attnlab.data.text import TextDataConfig
from attnlab.generation.beam_search import greedy_search
from attnlab.layers import MIXERS
from attnlab.layers.contracts import MATRIX_LAYERS
from attnlab.models import KINDS
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.models.registry import (
    CLASSIFY,
    CLASSIFY_IMAGE,
    GENERATE,
    GENERATE_IMAGE,
    TRANSLATE,
    kind_of,
)
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint
from attnlab.training.sources import DataRequest
from attnlab.training.trainer import TrainConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "corpus.txt"
    path.write_text("It is a truth universally acknowledged, that a single man. " * 80)
    labelled = "".join(
        f"{'good' if i % 3 else 'bad'} film number {i}\t{i % 3 % 2}\n" for i in range(60)
    )
    (path.parent / "labelled.tsv").write_text(labelled)
    return path


def small_data(kind, corpus):
    """Small data settings for the built-in kinds: the text kinds read the small corpus; a kind
    not named here uses its defaults."""
    if kind.data_config is TextDataConfig:
        return {"data": str(corpus)}
    return {
        "bert": {"data": str(corpus), "tokenizer": "char"},
        "classifier": {"data": str(corpus.parent / "labelled.tsv"), "tokenizer": "char"},
        "translation": {"embedded_pairs": 300, "bpe_vocab_size": 300},
        "vit": {"embedded_images": 200},
        "igpt": {"embedded_images": 200},
    }.get(kind.name, {})


def build(kind, corpus):
    """A model of `kind` at its default preset, and a training batch from its own data builder."""
    settings = small_data(kind, corpus)
    base = config_to_dict(kind.presets[kind.default_preset])
    request = DataRequest(
        config_from_dict(kind.data_config, settings),
        base,
        TrainConfig(batch_size=3, eval_iters=1, device="cpu"),
    )
    data = kind.build_data(request)
    torch.manual_seed(0)
    model = kind.model(config_from_dict(kind.config, {**base, **data.model_fields}))
    return model.eval(), data


def mixer_model(name):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=11,
        context_length=16,
        n_layers=2,
        n_heads=2,
        d_model=16,
        mixer=name,
        positional="learned",
    )
    return GPT(config).eval()


def larger_weights(model):
    """Linear weights drawn wider than the models' initialisation, so greedy choices are not
    ties (position tables keep their scale: logits stay where fp32 rounds below 1e-5)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.1)
    return model


KIND_NAMES = sorted(KINDS)
MIXER_NAMES = sorted(MIXERS)


def check_initial_loss(model, batch):
    """A first loss near ln(outputs), the loss of a uniform guess over what the model can
    answer: V tokens, or K classes; an output whose logit is -inf (an image GPT's start token)
    is not an answer."""
    logits, loss = model(*batch)
    classifies = kind_of(model).capabilities & {CLASSIFY, CLASSIFY_IMAGE}
    outputs = model.config.n_classes if classifies else model.config.vocab_size
    assert logits.shape[-1] == outputs
    log_v = math.log(int(torch.isfinite(logits.flatten(0, -2)[0]).sum()))
    assert math.isfinite(loss.item()) and abs(loss.item() - log_v) < 0.2 * log_v, loss.item()


def check_own_initialisation(model):
    """Every layer's deterministic initialisation (norm gains, a mixer's dynamics) survived
    the model's: calling the layer's reset_parameters again changes nothing."""
    for name, module in model.named_modules():
        if module is model or isinstance(module, MATRIX_LAYERS):
            continue
        if not callable(getattr(module, "reset_parameters", None)):
            continue
        own = list(module.parameters(recurse=False))
        before = [p.detach().clone() for p in own]
        draws = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            module.reset_parameters()
            draws.append([p.detach().clone() for p in own])
        if all(torch.equal(a, b) for a, b in zip(*draws, strict=True)):  # deterministic
            for p, value in zip(before, draws[0], strict=True):
                assert torch.equal(p, value), f"{name}: the model changed what its layer set"
        with torch.no_grad():
            for p, value in zip(own, before, strict=True):
                p.copy_(value)


def check_round_trip(model, artifacts, batch, tmp_path):
    save_checkpoint(tmp_path, model, artifacts)
    loaded = load_checkpoint(tmp_path)
    assert type(loaded.model) is type(model) and loaded.artifacts.keys() == artifacts.keys()
    torch.testing.assert_close(loaded.model(*batch)[0], model(*batch)[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_kind_contract(name, corpus, tmp_path):
    kind = KINDS[name]
    model, data = build(kind, corpus)
    assert kind.data_fields <= data.model_fields.keys()  # no flag: the data sets them
    batch = data.train.next()
    with torch.no_grad():
        check_initial_loss(model, batch)
        check_own_initialisation(model)
        check_round_trip(model, data.artifacts, batch, tmp_path)
    assert data.eval and all(list(batches()) for batches in data.eval.values())


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_mixer_contract(name, tmp_path):
    model = mixer_model(name)
    batch = torch.randint(11, (3, 16)), torch.randint(11, (3, 16))
    with torch.no_grad():
        check_initial_loss(model, batch)
        check_own_initialisation(model)
        check_round_trip(model, {}, batch, tmp_path)


def causal_input(model):
    """Which forward argument is read causally, by what the model can do."""
    capabilities = next(k.capabilities for k in KINDS.values() if type(model) is k.model)
    return (
        0 if capabilities & {GENERATE, GENERATE_IMAGE} else 1 if TRANSLATE in capabilities else None
    )


@pytest.mark.parametrize(
    "name", [n for n in KIND_NAMES if KINDS[n].capabilities & {GENERATE, GENERATE_IMAGE, TRANSLATE}]
)
def test_kinds_that_decode_are_causal(name, corpus):
    model, data = build(KINDS[name], corpus)
    check_causal(model, data.train.next()[:-1], causal_input(model))


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_mixers_are_causal(name):
    check_causal(mixer_model(name), (torch.randint(11, (2, 16)),), 0)


@torch.no_grad()
def check_causal(model, inputs, index):
    """Changing position t of the causal input leaves the logits of positions < t unchanged."""
    ids = inputs[index]
    t = ids.size(1) // 2
    changed = ids.clone()
    changed[:, t:] = (changed[:, t:] + 1) % model.config.vocab_size
    before = model(*inputs)[0]
    after = model(*[changed if i == index else x for i, x in enumerate(inputs)])[0]
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, t:], before[:, t:])


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_mixers_decode_with_their_state_as_a_full_recompute(name):
    model = larger_weights(mixer_model(name))
    cached_ids, cached = step_logits(model, [1, 2, 3], 12, use_cache=True)
    full_ids, full = step_logits(model, [1, 2, 3], 12, use_cache=False)
    assert cached_ids == full_ids
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MIXER_NAMES)
@torch.no_grad()
def test_mixers_static_state_decodes_alike_and_moves_as_buffers(name):
    """new_cache(static=True), the state a compiled step takes as inputs, gives the logits of a
    full forward, and a copy made from its buffers() carries on identically."""
    model = larger_weights(mixer_model(name))
    ids = torch.randint(11, (2, 10))
    full = model(ids)[0]
    cache = model.new_cache(static=True)
    steps = [model(ids[:, :4], cache=cache)[0]]
    for t in range(4, 9):
        steps.append(model(ids[:, t : t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(steps, 1), full[:, :9], rtol=1e-5, atol=1e-5)
    copy = cache.with_buffers([b.clone() for b in cache.buffers()])
    torch.testing.assert_close(model(ids[:, 9:], cache=copy)[0], full[:, 9:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MIXER_NAMES)
@pytest.mark.parametrize("static", [False, True])
@torch.no_grad()
def test_mixers_state_reorders_its_rows_as_beam_search_needs(name, static):
    """reorder(index) keeps batch rows `index`: decoding goes on as if those rows' prompts
    had been read, in that order, from the start."""
    model = larger_weights(mixer_model(name))
    ids, index = torch.randint(11, (3, 6)), torch.tensor([2, 0, 0])
    cache = model.new_cache(static=static)
    model(ids[:, :5], cache=cache)
    cache.reorder(index)
    expected = model(ids[index])[0][:, 5:]
    torch.testing.assert_close(
        model(ids[index, 5:], cache=cache)[0], expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", [n for n in KIND_NAMES if GENERATE in KINDS[n].capabilities])
def test_text_kinds_decode_with_a_cache_as_a_full_recompute(name, corpus):
    model = larger_weights(build(KINDS[name], corpus)[0])
    cached_ids, cached = step_logits(model, [1, 2, 3], 20, use_cache=True)
    full_ids, full = step_logits(model, [1, 2, 3], 20, use_cache=False)
    assert cached_ids == full_ids
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in KIND_NAMES if TRANSLATE in KINDS[n].capabilities])
@torch.no_grad()
def test_translation_kinds_decode_with_a_cache_as_a_full_recompute(name, corpus, monkeypatch):
    model, data = build(KINDS[name], corpus)
    src, tgt_in, _ = data.train.next()
    memory, src_mask = model.encode(src)
    full = model.decode(tgt_in, memory, src_mask)
    cache = model.new_cache()
    steps = [
        model.decode(tgt_in[:, t : t + 1], memory, src_mask, cache) for t in range(tgt_in.size(1))
    ]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    model = larger_weights(model)
    made = caches_made(monkeypatch, model)
    cached = greedy_search(model, src, use_cache=True)
    assert len(made) == 1 and greedy_search(model, src, use_cache=False) == cached
    assert len(made) == 1  # the recompute made none
