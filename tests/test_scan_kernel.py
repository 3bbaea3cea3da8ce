"""attnlab's selective-scan kernel (attnlab/kernels/scan.cpp) against Mamba's recurrence written
out in float64, and where the Mamba layer takes it."""

import pytest
import torch

from attnlab.kernels import cpu as kernel
from attnlab.layers.mamba import Mamba, MambaOptions, sequential_scan


@pytest.fixture(scope="module", autouse=True)
def _enabled():
    assert kernel.load(), "the CPU kernels did not build"
    with kernel.enabled():
        yield


def scan_inputs(batch, length, inner, n):
    """Float32 leaves that want gradients; Δ in the range Mamba's initialisation gives."""
    u = torch.randn(batch, length, inner)
    dt = torch.rand(batch, length, inner) * 0.5
    A = -torch.rand(inner, n) * 4
    B, C = torch.randn(2, batch, length, n)
    return [x.requires_grad_() for x in (u, dt, A, B, C)]


# channels beyond a vector's lanes and not a multiple of them; lengths across several chunks of
# kept states, and not a multiple of one; a single position
@pytest.mark.parametrize("shape", [(2, 70, 37, 16), (1, 1, 8, 4), (3, 32, 16, 8), (1, 100, 5, 64)])
def test_output_and_gradients_match_the_sequential_loop_in_float64(shape):
    inputs = scan_inputs(*shape)
    y = kernel.selective_scan(*inputs)
    grad = torch.randn_like(y)
    y.backward(grad)
    reference = [x.detach().double().requires_grad_() for x in inputs]
    y_ref, _ = sequential_scan(*reference)
    y_ref.backward(grad.double())
    mine_all, theirs_all = [y] + [x.grad for x in inputs], [y_ref] + [x.grad for x in reference]
    for mine, theirs in zip(mine_all, theirs_all, strict=True):
        scale = theirs.abs().max().clamp(min=1e-3)
        assert theirs.abs().max() > 1e-3 or shape[1] == 1  # (A's is 0 for one position)
        torch.testing.assert_close(mine.double() / scale, theirs / scale, rtol=0, atol=1e-5)


def test_the_ops_registrations_agree_with_the_kernel():
    """Fake shapes for torch.compile, autograd, and schema checks (torch.library.opcheck)."""
    torch.library.opcheck(
        torch.ops.attnlab.selective_scan.default, (*scan_inputs(2, 40, 20, 8), kernel.SCAN_CHUNK)
    )


def test_results_do_not_depend_on_the_thread_count():
    inputs = scan_inputs(3, 50, 40, 16)
    results, threads = [], torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for x in inputs:
                x.grad = None
            y = kernel.selective_scan(*inputs)
            y.square().sum().backward()
            results.append([y] + [x.grad for x in inputs])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_the_mamba_layer_trains_through_the_kernel_with_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    layer, x = Mamba(MambaOptions(), d_model=24), torch.randn(2, 45, 24)
    calls = []
    scan = kernel.selective_scan
    monkeypatch.setattr(kernel, "selective_scan", lambda *a: calls.append(1) or scan(*a))

    def gradients():
        layer.zero_grad()
        layer(x.clone().requires_grad_()).square().mean().backward()
        return [p.grad.clone() for p in layer.parameters()]

    fused = gradients()
    assert calls == [1]
    with kernel.enabled(False):  # the parallel scan in PyTorch
        plain = gradients()
    assert calls == [1]
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # inference keeps to PyTorch
        layer(x)
    assert calls == [1]


def test_a_state_larger_than_the_kernel_holds_trains_through_pytorchs_scan(monkeypatch):
    """The kernel holds at most SCAN_MAX_STATE states per channel; a larger d_state trains
    through the parallel scan instead of failing inside the kernel."""
    torch.manual_seed(0)
    layer = Mamba(MambaOptions(d_state=kernel.SCAN_MAX_STATE + 1), d_model=8)
    monkeypatch.setattr(kernel, "selective_scan", lambda *a: pytest.fail("the kernel was called"))
    layer(torch.randn(1, 5, 8, requires_grad=True)).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
