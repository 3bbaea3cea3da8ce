"""The core invariants again on a CUDA device: `pytest -m gpu` where one is present.

The CPU suite proves the functions; these prove the device paths that only a GPU takes: torch's
CUDA attention kernels, bf16 autocast, fused AdamW on CUDA, compiled training through Triton, and
checkpoints moving between devices.
"""

import dataclasses
import math

import pytest
import torch

from attnlab.generation import generate
from attnlab.layers.attention import scaled_dot_product_attention
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.training.checkpoints import load_checkpoint, save_checkpoint
from tests.helpers import MUST_COMPILE
from tests.test_training import MODEL, TOKENIZER, make_trainer

pytestmark = [
    pytest.mark.gpu,
    MUST_COMPILE,  # compiled decoding and training must compile, not fall back to eager
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
CUDA = torch.device("cuda")
NO_DROPOUT = dataclasses.replace(MODEL, dropout=0.0)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("kv_heads", [4, 1])
def test_fused_attention_equals_the_equation_on_cuda(dtype, tolerance, kv_heads):
    q = torch.randn(2, 4, 37, 64, device=CUDA, dtype=dtype)
    k, v = (torch.randn(2, kv_heads, 37, 64, device=CUDA, dtype=dtype) for _ in range(2))
    fused = scaled_dot_product_attention(q, k, v, causal=True)
    eager, _ = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    reference, _ = scaled_dot_product_attention(
        q.double(), k.double(), v.double(), causal=True, return_weights=True
    )
    for out in (fused, eager):
        assert (out.double() - reference).abs().max() < tolerance


def cuda_gpt(positional: str) -> tuple[GPT, torch.Tensor]:
    """A small random GPT on the GPU (context 16) and three 5-token prompts."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=50, context_length=16, n_layers=2, n_heads=4, d_model=64, positional=positional
    )
    return GPT(config).to(CUDA).eval(), torch.randint(0, 50, (3, 5))


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_cached_generation_equals_recompute_on_cuda(positional):
    model, prompts = cuda_gpt(positional)
    cached = generate(model, prompts, 30, temperature=0)
    recomputed = generate(model, prompts, 30, temperature=0, use_cache=False)
    assert cached == recomputed
    sampled = [generate(model, prompts, 30, temperature=1.0, seed=7) for _ in range(2)]
    assert sampled[0] == sampled[1]


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_compiled_decoding_equals_eager_on_cuda(positional):
    """CUDA graphs replaying one-token steps over static caches, then (learned) full windows."""
    model, prompts = cuda_gpt(positional)
    eager = generate(model, prompts, 40, temperature=0)
    assert generate(model, prompts, 40, temperature=0, compile=True) == eager
    assert generate(model, prompts, 40, temperature=0, compile=True) == eager  # replayed


def test_bf16_training_on_cuda_lowers_the_loss(tmp_path):
    backends = torch.backends.cuda.matmul, torch.backends.cudnn
    tf32 = [backend.allow_tf32 for backend in backends]
    trainer = make_trainer(
        tmp_path,
        max_iters=60,
        eval_interval=60,
        learning_rate=3e-3,
        device="cuda",
        precision="auto",
    )
    assert trainer.dtype == torch.bfloat16
    result = trainer.fit()
    assert result.last_eval["val_loss"] < math.log(TOKENIZER.vocab_size) - 1
    # TF32 for the trainer's steps only: the fp32 tests after this one, and a notebook's own
    # fp32 work after training, keep full fp32 (it turned TF32 on for the whole process)
    assert [backend.allow_tf32 for backend in backends] == tf32


def test_compiled_training_follows_eager_on_cuda(tmp_path):
    """Without dropout: compiled code draws its dropout masks from a different generator."""
    runs = {}
    for compiled in (False, True):
        trainer = make_trainer(
            tmp_path / str(compiled), 6, model=NO_DROPOUT, device="cuda", compile=compiled
        )
        trainer.fit()
        assert compiled == bool(trainer.compiled and trainer.compiled.active)  # no fallback
        runs[compiled] = [trainer.train_step()["train_loss"] for _ in range(3)]
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_a_checkpoint_trained_on_cuda_loads_on_the_cpu(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=4, eval_interval=4, device="cuda")
    trainer.fit()
    model = load_checkpoint(tmp_path, device="cpu").model
    idx = torch.randint(0, TOKENIZER.vocab_size, (2, 16))
    on_cpu, _ = model(idx)
    on_cuda, _ = trainer.model.eval()(idx.to(CUDA))
    assert (on_cpu - on_cuda.cpu()).abs().max() < 1e-4
    save_checkpoint(tmp_path / "again", model, {"tokenizer": TOKENIZER})
    again = load_checkpoint(tmp_path / "again", device="cuda").model
    assert (again(idx.to(CUDA))[0] - on_cuda).abs().max() < 1e-6
