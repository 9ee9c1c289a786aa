"""Peak memory of the fused decorrelation penalty (forward + autograd.grad, the returned gradient
included), measured with torch's profiler on CPU under the Triton interpreter.

The bound: N x D elements of x's dtype (the gradient, which the forward makes and backward hands
over) plus min(n, D)^2 (the Gram matrix of one route), plus O(D + n) fp32 vectors (column
statistics, loss partials, r partials)."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import sdecor
from sdecor.ops import decorrelation_triton as DT

pytestmark = pytest.mark.skipif(
    not DT.can_run(torch.zeros(2, 2))[0], reason="Triton cannot run on CPU here (not importable, or no interpreter)"
)


def peak_bytes(fn) -> int:
    """Peak of the running sum of every CPU allocation and free the profiler records while ``fn``
    runs (what is alive before ``fn`` starts counts as zero); the tensors ``fn`` returns stay alive."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e for e in prof.events() if e.name == "[memory]"), key=lambda e: e.time_range.start)
    running = peak = 0
    for e in events:
        running += e.cpu_memory_usage
        peak = max(peak, running)
    del out
    return peak


def _bound(x: torch.Tensor, groups: int = 1) -> tuple[int, int]:
    """(bound bytes, O(D + n) fp32 slack bytes) of x (N, C, *spatial)."""
    n = x.shape[0] * (x[0, 0].numel() if x.ndim > 2 else 1)
    D = x.shape[1]
    bound = (x.numel() + min(n, D) ** 2) * x.element_size()
    slack = 16 * (n + D) * 4  # loss partials, mean/scale/diag, r partials, diag(K')
    return bound, slack


def _loss_and_grad(x):
    loss = sdecor.decorrelation_loss(x, backend="triton")
    (grad,) = torch.autograd.grad(loss, x)
    return loss, grad


@pytest.mark.parametrize("shape", [(256, 512), (1024, 128), (300, 96), (64, 32, 4, 4)])
def test_peak_memory_within_bound(shape):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen) + 2.0).requires_grad_(True)
    _loss_and_grad(x)  # first call: plan, interpreter warm-up
    peak = peak_bytes(lambda: _loss_and_grad(x))
    bound, slack = _bound(x)
    # the gradient itself is N x D: anything less means the measurement missed it
    assert peak >= x.numel() * x.element_size()
    assert peak <= bound + slack, f"peak {peak} B = {peak / bound:.3f} x the bound {bound} B"


def test_backward_hands_over_the_forward_gradient_without_a_copy():
    x = torch.randn(40, 24).requires_grad_(True)
    loss = sdecor.decorrelation_loss(x, backend="triton")
    ref = torch.autograd.grad(sdecor.decorrelation_loss(x, backend="triton"), x)[0]
    (g,) = torch.autograd.grad(loss * 2.5, x)
    torch.testing.assert_close(g, 2.5 * ref, rtol=1e-6, atol=0)


def test_second_backward_through_the_same_graph_raises():
    x = torch.randn(30, 12).requires_grad_(True)
    loss = sdecor.decorrelation_loss(x, backend="triton")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
