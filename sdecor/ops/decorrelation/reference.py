"""Pure-torch reference of the decorrelation penalty (any device, float64 included).

The math (see DESIGN.md section 3). Let X be (n, D) with D = G groups of g features, Xc the
column-centred X and n' = n - correction. With s_i = 1 (covariance mode) or
s_i = (C_ii + eps)^-1/2 (correlation mode, C = Xc^T Xc / n'), let Z = Xc * s. Then

    M = Z^T Z / n'                  (per group: a g x g block)
    P = sum over i != j of M_ij^2   (summed over the G diagonal blocks)

Two equivalent formulations, chosen by min(n, g):

* route "D" (n >= g): build the g x g blocks of M directly;
* route "N" (n < g):  ||M||_F^2 = ||Z Z^T||_F^2 / n'^2 with the n x n Gram K = Z Z^T, and
  sum_i M_ii^2 from the column sums of squares of Z.

Autograd differentiates either route; the closed-form gradient the fused kernels produce is

    dP/dX = (4 / n') * s * (Z Moff - Z * r),   r_i = sum_{j != i} M_ij^2 (correlation mode only)

(Moff = M with its diagonal zeroed). Centring changes nothing because Z has zero column sums.
"""

from __future__ import annotations

import torch

__all__ = ["decorrelation_reference", "as_sample_matrix", "select_route", "power_of_two_scale"]


def as_sample_matrix(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` as an (n, C) matrix of samples by features.

    (N, D) stays as is; (N, C, *spatial) becomes (N * prod(spatial), C). The reference may copy;
    the fused kernels read the feature map with strides instead.
    """
    if x.ndim == 2:
        return x
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def power_of_two_scale(max_abs: torch.Tensor) -> torch.Tensor:
    """The power of two a with a <= max_abs < 2a, and 1 where max_abs < 2 (elementwise, same dtype).

    Dividing by a is exact, so the correlation-mode statistics computed in units of a are the
    plain ones bit for bit wherever those do not overflow; a = 1 leaves values below 2 untouched.
    """
    _, exponent = torch.frexp(max_abs.clamp(min=1.0))  # max_abs = m * 2**e, 0.5 <= m < 1
    return torch.ldexp(torch.ones_like(max_abs), exponent - 1)


def select_route(n: int, group_size: int) -> str:
    """``"D"`` (g x g covariance blocks) when n >= g, else ``"N"`` (n x n Gram matrix)."""
    return "D" if n >= group_size else "N"


def decorrelation_reference(
    x: torch.Tensor,
    mode: str = "correlation",
    reduction: str = "mean",
    correction: int = 1,
    groups: int = 1,
    eps: float = 1e-5,
    route: str | None = None,
) -> torch.Tensor:
    """Decorrelation penalty of ``x`` by plain torch ops (differentiable by autograd).

    Arguments are assumed validated (see :func:`sdecor.decorrelation_loss`). fp16/bf16 inputs are
    computed in float32; the returned scalar is float32, or float64 for float64 input.
    ``route`` forces ``"D"`` or ``"N"`` (tests use it to check that both agree).
    """
    X = as_sample_matrix(x)
    compute_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
    X = X.to(compute_dtype)
    n, D = X.shape
    g = D // groups
    n_prime = n - correction
    Xc = X - X.mean(dim=0, keepdim=True)
    Xg = Xc.reshape(n, groups, g).transpose(0, 1)  # (G, n, g)
    if mode == "correlation":
        # var and eps in units of a power of two a >= 1 per feature (exact rescaling), so that
        # the squares of features beyond sqrt(max float) do not overflow: s = rsqrt(var' + eps') / a
        # (a constant column, var' = 0, keeps the plain rsqrt(eps): eps / a^2 may underflow)
        a = power_of_two_scale(Xg.abs().amax(dim=1, keepdim=True))  # (G, 1, g)
        var = (Xg / a).square().sum(dim=1, keepdim=True) / n_prime
        varying = var > 0
        in_units = torch.rsqrt(torch.where(varying, var, 1.0) + eps / (a * a)) / a
        Xg = Xg * torch.where(varying, in_units, torch.rsqrt(var + eps))
    route = route or select_route(n, g)
    if route == "D":
        M = Xg.transpose(1, 2) @ Xg / n_prime  # (G, g, g)
        penalty = M.square().sum() - torch.diagonal(M, dim1=1, dim2=2).square().sum()
    else:
        K = Xg @ Xg.transpose(1, 2)  # (G, n, n)
        diag_m = Xg.square().sum(dim=1) / n_prime  # (G, g)
        penalty = K.square().sum() / (n_prime * n_prime) - diag_m.square().sum()
    if reduction == "mean":
        penalty = penalty / (groups * g * (g - 1))
    return penalty
