import dataclasses
import io

import pytest
import torch

transformers = pytest.importorskip("transformers")
from helpers import tiny_gpt  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from attnlab.generation import (  # noqa: E402
    apply_temperature,
    generate,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from attnlab.interop.huggingface import from_hf, to_hf  # noqa: E402
from attnlab.models.bert import BertConfig, BertForMaskedLM  # noqa: E402
from attnlab.models.gpt import GPT, GPTConfig  # noqa: E402
from attnlab.models.image_gpt import ImageGPT, ImageGPTConfig  # noqa: E402
from attnlab.models.vision_transformer import VisionTransformer, ViTConfig  # noqa: E402

CONFIGS = [
    dict(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4),
    dict(
        vocab_size=61,
        n_positions=24,
        n_embd=32,
        n_layer=2,
        n_head=8,
        n_inner=80,
        activation_function="relu",
        tie_word_embeddings=False,
    ),
    dict(
        vocab_size=130,
        n_positions=40,
        n_embd=64,
        n_layer=1,
        n_head=2,
        activation_function="gelu",
        layer_norm_epsilon=1e-6,
    ),
]


def random_gpt2(fields: dict) -> GPT2LMHeadModel:
    config = GPT2Config(
        **fields,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF zero-initialises biases; randomise every weight for a real check
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


@pytest.mark.parametrize("fields", CONFIGS)
def test_from_hf_logits_match(fields):
    hf = random_gpt2(fields)
    ours = from_hf(hf).eval()
    idx = torch.randint(0, fields["vocab_size"], (3, fields["n_positions"]))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("fields", CONFIGS)
def test_greedy_continuations_are_identical(fields):
    """attnlab's generate, with and without its KV cache, against Hugging Face's, for prompts
    of several lengths (one token; up to the whole context) batched with left padding there."""
    hf = random_gpt2(fields)
    ours = from_hf(hf).eval()
    lengths, context = (1, 5, 5, 12), fields["n_positions"]
    prompts = [torch.randint(0, fields["vocab_size"], (n,)).tolist() for n in lengths]
    width, new = max(lengths), context - max(lengths)  # to the end of the context
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        expected = hf.generate(padded, attention_mask=mask, max_new_tokens=new, do_sample=False)
    for use_cache in (True, False):
        got = generate(ours, prompts, new, temperature=0, use_cache=use_cache)
        assert got == expected[:, width:].tolist()


def test_sampling_filters_match_hugging_faces_processors():
    """The distribution sampled from: repetition penalty (over the prompt and the new tokens),
    temperature, top-k and top-p, in that order, as Hugging Face's processors compute it."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    for penalty, temperature, k, p in [
        (1.3, 0.7, 10, 0.8),
        (0.8, 1.5, 3, 0.3),
        (2.0, 0.2, 30, 0.95),
    ]:
        logits, seen = torch.randn(4, 30, dtype=torch.float64) * 3, torch.randint(0, 30, (4, 9))
        hf = LogitsProcessorList(
            [
                RepetitionPenaltyLogitsProcessor(penalty),
                TemperatureLogitsWarper(temperature),
                TopKLogitsWarper(k),
                TopPLogitsWarper(p),
            ]
        )(seen, logits.clone())
        ours = apply_temperature(repetition_penalty(logits, seen, penalty), temperature)
        ours = top_p_filter(top_k_filter(ours, k), p)
        torch.testing.assert_close(ours.softmax(-1), hf.softmax(-1))


@pytest.mark.parametrize("fields", CONFIGS)
def test_round_trip_is_exact(fields):
    hf = random_gpt2(fields)
    back = to_hf(from_hf(hf))
    original, returned = hf.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for name, value in original.items():
        assert torch.equal(value, returned[name]), name


def test_to_hf_names_no_special_tokens_outside_the_vocabulary():
    model = GPT(GPTConfig(vocab_size=65, context_length=8, n_layers=1, n_heads=2, d_model=8,
                          positional="learned", bias=True, norm="layernorm"))  # fmt: skip
    config = to_hf(model).config
    assert config.bos_token_id is None and config.eos_token_id is None


def test_to_hf_rejects_models_gpt2_cannot_express():
    model = GPT(
        GPTConfig(
            vocab_size=10, context_length=8, n_layers=1, n_heads=2, d_model=8, positional="rope"
        )
    )
    with pytest.raises(ValueError, match="this GPT has positional 'rope': only GPT-2-shaped"):
        to_hf(model)
    shape = dict(n_kv_heads=1, d_ff=0, positional="learned", bias=True, norm="layernorm")
    model = GPT(
        GPTConfig(vocab_size=10, context_length=8, n_layers=1, n_heads=2, d_model=8, **shape)
    )
    with pytest.raises(
        ValueError, match=r"has grouped-query heads \(n_kv_heads 1\), no feed-forward"
    ):
        to_hf(model)


@pytest.mark.parametrize("positional, norm, activation, bias", [
    ("learned", "layernorm", "gelu_tanh", True), ("rope", "rmsnorm", "swiglu", False)])  # fmt: skip
def test_to_hf_refuses_a_post_norm_gpt_in_one_line(positional, norm, activation, bias):
    """GPT-2 and Llama are pre-norm: a post-norm GPT of their shape would convert wrong."""
    shape = dict(positional=positional, norm=norm, activation=activation, bias=bias)
    config = GPTConfig(vocab_size=10, context_length=8, n_layers=1, n_heads=2, d_model=8, **shape)
    to_hf(GPT(config))
    with pytest.raises(ValueError, match="a post-norm GPT .prenorm = false. does not convert") as e:
        to_hf(GPT(dataclasses.replace(config, prenorm=False)))
    assert "\n" not in str(e.value)


def test_conversions_keep_the_mode_and_refuse_a_subclass_hugging_face_would_not_be():
    hf = GPT2LMHeadModel(GPT2Config(**CONFIGS[0])).eval()
    ours = from_hf(hf)
    assert not ours.training and not to_hf(ours).training
    assert from_hf(hf.train()).training
    image_gpt = ImageGPT(
        ImageGPTConfig(vocab_size=3, context_length=16, n_layers=1, n_heads=2, d_model=16)
    )
    with pytest.raises(ValueError, match="to_hf supports GPT, .*got ImageGPT"):
        to_hf(image_gpt)
    with pytest.raises(ValueError, match="load a folder or hub name with transformers first"):
        from_hf("gpt2")


def test_a_gpt_with_gpt2s_activation_pickles():
    model = GPT(GPTConfig(vocab_size=10, context_length=8, n_layers=1, n_heads=2, d_model=8))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(again(ids)[0], model(ids)[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_from_hf_keeps_the_models_dtype_and_every_bit(dtype):
    hf = random_gpt2(CONFIGS[0]).to(dtype)
    ours = from_hf(hf)
    assert {p.dtype for p in ours.parameters()} == {dtype}
    theirs = hf.transformer.h[0].attn.c_attn.weight.t()  # (3D, D), as attnlab's qkv
    assert torch.equal(ours.blocks[0].token_mixer.qkv_projection.weight, theirs)
    assert torch.get_default_dtype() == torch.float32  # left as it was


TINY = dict(n_layers=1, n_heads=2, d_model=8)
LLAMA = dict(norm="rmsnorm", positional="rope", activation="swiglu", bias=False, n_kv_heads=1)
TINY_MODELS = [
    lambda: GPT(GPTConfig(vocab_size=11, context_length=8, **TINY)),
    lambda: GPT(GPTConfig(vocab_size=11, context_length=8, **TINY, **LLAMA, tie_weights=False)),
    lambda: BertForMaskedLM(BertConfig(vocab_size=11, context_length=8, **TINY)),
    lambda: VisionTransformer(ViTConfig(image_size=4, patch_size=2, channels=1, **TINY)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("build", TINY_MODELS)
def test_to_hf_keeps_the_models_dtype_every_bit_and_its_tie(build, dtype):
    """A float64 model is not rounded to float32 on its way out, nor a bf16 one widened."""
    ours = build().to(dtype)
    with torch.no_grad():  # bits that float32 would lose
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 1e-9)
    hf = to_hf(ours)
    assert {p.dtype for p in hf.parameters()} == {dtype}
    out, embeddings = hf.get_output_embeddings(), hf.get_input_embeddings()
    tied = getattr(ours.config, "tie_weights", True)
    assert out is None or (out.weight is embeddings.weight) == tied
    again = from_hf(hf)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert torch.get_default_dtype() == torch.float32


def test_class_names_become_id2label_and_come_back(tmp_path):
    """A classifier's names travel with it through Hugging Face's files (id2label), where its
    pipelines read them; placeholders (LABEL_0, ...) are no names."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    from attnlab.interop.huggingface import class_names
    from attnlab.models.bert import BertClassifier, BertConfig
    from attnlab.models.vision_transformer import VisionTransformer, ViTConfig
    from attnlab.training.artifacts import ClassNames

    bert = BertClassifier(BertConfig(vocab_size=40, context_length=8, n_layers=1, n_heads=2,
                                     d_model=16, n_classes=3, pad_id=0))  # fmt: skip
    vit = VisionTransformer(ViTConfig(image_size=8, patch_size=4, channels=1, n_classes=2,
                                      n_layers=1, n_heads=2, d_model=16))  # fmt: skip
    cases = [(bert, ("neg", "neutral", "pos"), AutoModelForSequenceClassification),
             (vit, ClassNames(("cat", "dog")), AutoModelForImageClassification)]  # fmt: skip
    for model, names, auto in cases:
        hf = to_hf(model, classes=names)
        hf.save_pretrained(tmp_path / type(model).__name__)
        loaded = auto.from_pretrained(tmp_path / type(model).__name__)
        expected = names if isinstance(names, ClassNames) else ClassNames(names)
        assert class_names(loaded) == expected
        assert loaded.config.label2id == {n: i for i, n in enumerate(expected.names)}
        assert class_names(to_hf(model)) is None
    for model, names in [(bert, ["a", "b"]), (bert, ["a", "a", "b"]), (tiny_gpt(), ["a", "b"])]:
        with pytest.raises(ValueError, match="names, each its own, for a classifier"):
            to_hf(model, classes=names)
    with pytest.raises(ValueError, match="for a classifier"):
        to_hf(vit, head=False, classes=["cat", "dog"])
    with pytest.raises(ValueError, match="not one string: got 'abc'"):  # not classes a, b, c
        to_hf(bert, classes="abc")
    for model in (bert, tiny_gpt()):  # converted with their heads, head=False unread
        with pytest.raises(ValueError, match=f"head=False: a {type(model).__name__} converts"):
            to_hf(model, head=False)


@pytest.mark.parametrize(
    "fields",
    [{"scale_attn_by_inverse_layer_idx": True}, {"reorder_and_upcast_attn": True},
     {"scale_attn_weights": False}, {"add_cross_attention": True},
     {"activation_function": "quick_gelu"}],
)  # fmt: skip
def test_a_gpt2_that_would_compute_something_else_is_refused(fields):
    hf = GPT2LMHeadModel(GPT2Config(**CONFIGS[0], **fields))
    with pytest.raises(ValueError, match="not supported|does not convert|unsupported"):
        from_hf(hf)
