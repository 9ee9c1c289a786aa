"""Pure-torch reference of the Barlow Twins loss (any device, float64 included).

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction" (ICML 2021). Two views' embeddings Z1, Z2 (n, D) are standardised per feature over the
batch, as the original's ``nn.BatchNorm1d(D, affine=False)`` in training mode does (biased
variance, ``eps`` added to it):

    A = (Z1 - mean(Z1)) / sqrt(var(Z1) + eps),   B likewise from Z2        (n x D)
    C = A^T B / n                                                          (D x D cross-correlation)
    L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

Two equivalent routes, chosen by min(n, D):

* route "D" (n >= D): form the D x D matrix C;
* route "N" (n < D): ||C||_F^2 = ||A^T B||_F^2 / n^2 = <A A^T, B B^T>_F / n^2 needs only the two
  n x n Gram matrices, and the diagonal C_ii = sum_k A_ki B_ki / n is a column-wise dot product.
  With L = sum_i (1 - C_ii)^2 + lambd (||C||_F^2 - sum_i C_ii^2) nothing D x D is formed.

The gradient (what the fused kernels compute in their forward pass): with
Gamma = dL/dC = 2 lambd C + diag(2 (1 - lambd) C_ii - 2),

    dL/dA = B Gamma^T / n,   dL/dB = A Gamma / n
    (route N: B Gamma^T = 2 lambd K_B A / n + B * gamma, K_B = B B^T, gamma_i = 2 (1 - lambd) C_ii - 2)
    dL/dZ1 = s1 * (dL/dA - A * t),   t_i = mean_k (dL/dA)_ki A_ki,   s1 = (var(Z1) + eps)^-1/2

(the batch-norm backward; the mean of dL/dA over the batch is zero because B has zero column sums).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["barlow_twins_reference", "standardize", "select_route"]


def select_route(n: int, features: int) -> str:
    """``"D"`` (D x D cross-correlation) when n >= D, else ``"N"`` (two n x n Gram matrices)."""
    return "D" if n >= features else "N"


def standardize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """(z - mean) / sqrt(biased var + eps) per column of an (n, D) matrix: BatchNorm1d, affine=False, train mode
    (``F.batch_norm`` itself, whose fused backward is cheaper than autograd through the written-out formula)."""
    return F.batch_norm(z, None, None, training=True, eps=eps)


def barlow_twins_reference(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lambd: float = 0.0051,
    eps: float = 1e-5,
    route: str | None = None,
) -> torch.Tensor:
    """Barlow Twins loss of two (n, D) embeddings by plain torch ops (differentiable by autograd).

    Arguments are assumed validated (see :func:`sdecor.ops.barlow_twins_loss`). float16/bfloat16/
    float32 inputs are computed in float32 (returned scalar float32), float64 in float64.
    ``route`` forces ``"D"`` or ``"N"`` (tests use it to check that both agree).
    """
    compute = torch.float64 if z1.dtype == torch.float64 else torch.float32
    A = standardize(z1.to(compute), eps)
    B = standardize(z2.to(compute), eps)
    n, D = A.shape
    route = route or select_route(n, D)
    diag = (A * B).sum(dim=0) / n  # C_ii
    if route == "D":
        C = A.transpose(0, 1) @ B / n
        frob = C.square().sum()
    else:
        frob = ((A @ A.transpose(0, 1)) * (B @ B.transpose(0, 1))).sum() / (n * n)
    return (1.0 - diag).square().sum() + lambd * (frob - diag.square().sum())
