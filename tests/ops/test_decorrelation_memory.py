"""Memory of the fused decorrelation penalty (forward + autograd.grad, the returned gradient
included), measured with torch's profiler on CPU under the Triton interpreter by
bench/memory_check.py: everything the ops allocate, which bounds the peak from above.

The bound: N x D elements of x's dtype (the gradient, which the forward makes and backward hands
over) plus min(n, D)^2 (the Gram matrix of one route), plus O(D + n) fp32 vectors (column
statistics, loss partials, r partials)."""

import sys
from pathlib import Path

import pytest
import torch

import sdecor
from sdecor.ops.decorrelation import triton as DT

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
try:
    import memory_check
finally:
    sys.path.pop(0)

pytestmark = pytest.mark.skipif(
    not DT.can_run(torch.zeros(2, 2))[0], reason="Triton cannot run on CPU here (not importable, or no interpreter)"
)


# route N, route D, route D off the tile sizes, a feature map (small: the interpreter is slow;
# `python bench/memory_check.py` measures larger shapes the same way)
@pytest.mark.parametrize("shape", [(48, 128), (160, 40), (100, 36), (16, 32, 3, 3)])
def test_memory_within_bound(shape):
    total, bound = memory_check.measure(shape)
    n = shape[0] * (shape[2] * shape[3] if len(shape) > 2 else 1)
    slack = 16 * (n + shape[1]) * 4  # fp32 vectors: loss partials, mean/scale/diag, r partials, diag(K')
    numel = n * shape[1]
    # the gradient itself is N x D: anything less means the measurement missed it
    assert total >= numel * 4
    assert total <= bound + slack, f"allocated {total} B = {total / bound:.3f} x the bound {bound} B"


def test_backward_hands_over_the_forward_gradient():
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
