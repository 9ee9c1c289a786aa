"""Triton kernels of the Barlow Twins loss and its gradient (both views), in one forward pass.

Plain-tensor launch helpers only: nothing here imports from ``sdecor``. The entry point is
:func:`barlow_twins_forward_backward`, which returns the loss (a 0-dim fp32 tensor, no host sync)
and, when asked, writes dL/dZ1 and dL/dZ2 into gradient buffers.

Notation (see sdecor/ops/barlow_twins/reference.py): Z1, Z2 are (n, D), read through their two
strides (any layout); A = (Z1 - mu1) * s1 and B = (Z2 - mu2) * s2 with s = (biased var + eps)^-1/2
are standardised *on load* in every kernel (never stored); C = A^T B / n; gamma_i = 2 (1 - lambd)
C_ii - 2; Gamma = 2 lambd C + diag(gamma);

    L = sum_i (1 - C_ii)^2 - lambd sum_i C_ii^2 + lambd ||C||_F^2,
    W1 = dL/dA = B Gamma^T / n,  W2 = dL/dB = A Gamma / n,
    dL/dZ1 = s1 * (W1 - A * t1),  t1_i = mean_k W1_ki A_ki   (likewise for view 2).

Kernels:

1. ``_stats_kernel`` (one program per feature tile, two passes over the rows): mu, s of both
   views, C_ii, and the loss partial sum_i (1 - C_ii)^2 - lambd C_ii^2 of the tile.
2. ``||C||_F^2``: route D (n >= D) ``_cross_kernel`` forms the D x D tiles of C (stored in fp32
   for the gradient) and their partials lambd * sum C_ij^2; route N (n < D) ``_gram_kernel``
   forms the upper-triangle tiles of K_A = A A^T and K_B = B B^T together (stored in fp32, both
   halves) and the partials lambd <K_A, K_B> / n^2 (off-diagonal tiles counted twice).
3. ``_grad_d_kernel`` / ``_grad_n_kernel`` (per view): W tiles (route D: the other view's tile
   times Gamma built on load from C; route N: 2 lambd K_other A / n^2 + other * gamma / n), written
   to an fp32 workspace with the per-row-tile partial column sums of W * A.
4. ``_finish_kernel``: t from the partials (fixed order), s * (W - A t) in the output dtype.

The loss is the sum of the partials buffer (fixed order: deterministic). Dots accumulate in fp32:
the Gram / cross dots take fp16/bf16 tiles for half inputs (standardised values are at most
sqrt(n) in size), 3xTF32 for fp32 input; the gradient dots read the fp32 C or K and use 3xTF32.
Under the Triton interpreter (TRITON_INTERPRET=1) tiles are cast to fp32 before tl.dot.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["barlow_twins_forward_backward", "select_config", "INTERPRET"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _mma(a, b, acc, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, CAST_FP32: tl.constexpr):
    if CAST_FP32:  # interpreter
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=PRECISION)


@triton.jit
def _std_tile(ptr, rows, rmask, cols, cmask, stride_n, stride_d, mean, scale):
    """[rows, cols] tile of (Z - mean) * scale in fp32, zero outside the masks."""
    mask = rmask[:, None] & cmask[None, :]
    off = rows.to(tl.int64)[:, None] * stride_n + cols.to(tl.int64)[None, :] * stride_d
    v = tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, (v - mean[None, :]) * scale[None, :], 0.0)


@triton.jit
def _upper_tile(t):
    """(p, q) with p <= q for t = q (q + 1) / 2 + p."""
    q = ((tl.sqrt(8.0 * t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    q = tl.where((q + 1) * (q + 2) // 2 <= t, q + 1, q)
    q = tl.where(q * (q + 1) // 2 > t, q - 1, q)
    return t - q * (q + 1) // 2, q


# --------------------------------------------------------------------------------------------
# 1. statistics and the diagonal of C
# --------------------------------------------------------------------------------------------
@triton.jit
def _stats_kernel(
    z1_ptr,
    z2_ptr,
    s1n,
    s1d,
    s2n,
    s2d,
    mean1_ptr,
    scale1_ptr,
    mean2_ptr,
    scale2_ptr,
    diag_ptr,
    loss_part_ptr,
    n,
    D,
    inv_n,
    eps,
    lambd,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < D
    zero = tl.zeros((BLOCK_C,), tl.float32)
    one = zero + 1.0
    sum1 = tl.zeros((BLOCK_C,), tl.float32)
    sum2 = tl.zeros((BLOCK_C,), tl.float32)
    for k0 in range(0, n, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        rmask = rows < n
        sum1 += tl.sum(_std_tile(z1_ptr, rows, rmask, cols, cmask, s1n, s1d, zero, one), axis=0)
        sum2 += tl.sum(_std_tile(z2_ptr, rows, rmask, cols, cmask, s2n, s2d, zero, one), axis=0)
    mean1 = sum1 * inv_n
    mean2 = sum2 * inv_n
    m2_1 = tl.zeros((BLOCK_C,), tl.float32)
    m2_2 = tl.zeros((BLOCK_C,), tl.float32)
    cross = tl.zeros((BLOCK_C,), tl.float32)
    for k0 in range(0, n, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        rmask = rows < n
        c1 = _std_tile(z1_ptr, rows, rmask, cols, cmask, s1n, s1d, mean1, one)
        c2 = _std_tile(z2_ptr, rows, rmask, cols, cmask, s2n, s2d, mean2, one)
        m2_1 += tl.sum(c1 * c1, axis=0)
        m2_2 += tl.sum(c2 * c2, axis=0)
        cross += tl.sum(c1 * c2, axis=0)
    scale1 = 1.0 / tl.sqrt(m2_1 * inv_n + eps)
    scale2 = 1.0 / tl.sqrt(m2_2 * inv_n + eps)
    diag = cross * scale1 * scale2 * inv_n
    tl.store(mean1_ptr + cols, mean1, mask=cmask)
    tl.store(scale1_ptr + cols, scale1, mask=cmask)
    tl.store(mean2_ptr + cols, mean2, mask=cmask)
    tl.store(scale2_ptr + cols, scale2, mask=cmask)
    tl.store(diag_ptr + cols, diag, mask=cmask)
    part = tl.where(cmask, (1.0 - diag) * (1.0 - diag) - lambd * diag * diag, 0.0)
    tl.store(loss_part_ptr + pid, tl.sum(part, axis=0))


# --------------------------------------------------------------------------------------------
# 2. ||C||_F^2: route D (C tiles) and route N (K_A, K_B tiles)
# --------------------------------------------------------------------------------------------
@triton.jit
def _cross_kernel(
    z1_ptr,
    z2_ptr,
    s1n,
    s1d,
    s2n,
    s2d,
    mean1_ptr,
    scale1_ptr,
    mean2_ptr,
    scale2_ptr,
    c_ptr,
    loss_part_ptr,
    part0,
    n,
    D,
    inv_n,
    lambd,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    num_j = tl.cdiv(D, BLOCK)
    pid_i = pid // num_j
    pid_j = pid % num_j
    i = pid_i * BLOCK + tl.arange(0, BLOCK)
    j = pid_j * BLOCK + tl.arange(0, BLOCK)
    imask = i < D
    jmask = j < D
    mu1 = tl.load(mean1_ptr + i, mask=imask, other=0.0)
    sc1 = tl.load(scale1_ptr + i, mask=imask, other=0.0)
    mu2 = tl.load(mean2_ptr + j, mask=jmask, other=0.0)
    sc2 = tl.load(scale2_ptr + j, mask=jmask, other=0.0)
    acc = tl.zeros((BLOCK, BLOCK), tl.float32)
    for k0 in range(0, n, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        rmask = rows < n
        a = _std_tile(z1_ptr, rows, rmask, i, imask, s1n, s1d, mu1, sc1)
        b = _std_tile(z2_ptr, rows, rmask, j, jmask, s2n, s2d, mu2, sc2)
        acc = _mma(tl.trans(a), b, acc, DOT_DTYPE, PRECISION, CAST_FP32)
    c = acc * inv_n
    mask = imask[:, None] & jmask[None, :]
    tl.store(c_ptr + i.to(tl.int64)[:, None] * D + j[None, :], c, mask=mask)
    tl.store(loss_part_ptr + part0 + pid, lambd * tl.sum(tl.sum(c * c, axis=1), axis=0))


@triton.jit
def _gram_kernel(
    z1_ptr,
    z2_ptr,
    s1n,
    s1d,
    s2n,
    s2d,
    mean1_ptr,
    scale1_ptr,
    mean2_ptr,
    scale2_ptr,
    ka_ptr,
    kb_ptr,
    loss_part_ptr,
    part0,
    n,
    D,
    inv_n,
    lambd,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_p, pid_q = _upper_tile(pid)
    p = pid_p * BLOCK + tl.arange(0, BLOCK)
    q = pid_q * BLOCK + tl.arange(0, BLOCK)
    pmask = p < n
    qmask = q < n
    ka = tl.zeros((BLOCK, BLOCK), tl.float32)
    kb = tl.zeros((BLOCK, BLOCK), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < D
        mu1 = tl.load(mean1_ptr + cols, mask=cmask, other=0.0)
        sc1 = tl.load(scale1_ptr + cols, mask=cmask, other=0.0)
        mu2 = tl.load(mean2_ptr + cols, mask=cmask, other=0.0)
        sc2 = tl.load(scale2_ptr + cols, mask=cmask, other=0.0)
        ap = _std_tile(z1_ptr, p, pmask, cols, cmask, s1n, s1d, mu1, sc1)
        aq = _std_tile(z1_ptr, q, qmask, cols, cmask, s1n, s1d, mu1, sc1)
        ka = _mma(ap, tl.trans(aq), ka, DOT_DTYPE, PRECISION, CAST_FP32)
        bp = _std_tile(z2_ptr, p, pmask, cols, cmask, s2n, s2d, mu2, sc2)
        bq = _std_tile(z2_ptr, q, qmask, cols, cmask, s2n, s2d, mu2, sc2)
        kb = _mma(bp, tl.trans(bq), kb, DOT_DTYPE, PRECISION, CAST_FP32)
    mask = pmask[:, None] & qmask[None, :]
    off = p.to(tl.int64)[:, None] * n + q[None, :]
    tl.store(ka_ptr + off, ka, mask=mask)
    tl.store(kb_ptr + off, kb, mask=mask)
    if pid_p != pid_q:  # the mirrored tile (a diagonal tile holds both halves already)
        off_t = q.to(tl.int64)[None, :] * n + p[:, None]
        tl.store(ka_ptr + off_t, ka, mask=mask)
        tl.store(kb_ptr + off_t, kb, mask=mask)
    weight = tl.where(pid_p == pid_q, 1.0, 2.0) * lambd * inv_n * inv_n
    tl.store(loss_part_ptr + part0 + pid, weight * tl.sum(tl.sum(ka * kb, axis=1), axis=0))


# --------------------------------------------------------------------------------------------
# 3. W = dL/d(standardised view) tiles, and the partial column sums of W * A
# --------------------------------------------------------------------------------------------
@triton.jit
def _store_w(
    w,
    rows,
    rmask,
    feats,
    fmask,
    self_ptr,
    sn,
    sd,
    mean,
    scale,
    w_ptr,
    tpart_ptr,
    pid_m,
    D,
):
    a = _std_tile(self_ptr, rows, rmask, feats, fmask, sn, sd, mean, scale)
    mask = rmask[:, None] & fmask[None, :]
    tl.store(w_ptr + rows.to(tl.int64)[:, None] * D + feats[None, :], w, mask=mask)
    tl.store(tpart_ptr + pid_m.to(tl.int64) * D + feats, tl.sum(tl.where(mask, w * a, 0.0), axis=0), mask=fmask)


@triton.jit
def _grad_d_kernel(
    self_ptr,
    sn,
    sd,
    self_mean_ptr,
    self_scale_ptr,
    other_ptr,
    on,
    od,
    other_mean_ptr,
    other_scale_ptr,
    c_ptr,
    c_s_self,
    c_s_other,
    diag_ptr,
    w_ptr,
    tpart_ptr,
    n,
    D,
    inv_n,
    lambd,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_J: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
):
    """W[k, i] = sum_j other[k, j] Gamma[i, j] / n (i: this view's feature, j: the other's)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n
    fmask = feats < D
    gamma = 2.0 * (1.0 - lambd) * tl.load(diag_ptr + feats, mask=fmask, other=0.0) - 2.0
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for j0 in range(0, D, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J)
        jmask = js < D
        omu = tl.load(other_mean_ptr + js, mask=jmask, other=0.0)
        osc = tl.load(other_scale_ptr + js, mask=jmask, other=0.0)
        ot = _std_tile(other_ptr, rows, rmask, js, jmask, on, od, omu, osc)
        gmask = jmask[:, None] & fmask[None, :]
        g_off = js.to(tl.int64)[:, None] * c_s_other + feats.to(tl.int64)[None, :] * c_s_self
        gt = 2.0 * lambd * tl.load(c_ptr + g_off, mask=gmask, other=0.0)  # [j, i] = 2 lambd C[i, j]
        gt = tl.where(js[:, None] == feats[None, :], gt + gamma[None, :], gt)
        acc = _mma(ot, gt, acc, tl.float32, PRECISION, CAST_FP32)
    mean = tl.load(self_mean_ptr + feats, mask=fmask, other=0.0)
    scale = tl.load(self_scale_ptr + feats, mask=fmask, other=0.0)
    _store_w(acc * inv_n, rows, rmask, feats, fmask, self_ptr, sn, sd, mean, scale, w_ptr, tpart_ptr, pid_m, D)


@triton.jit
def _grad_n_kernel(
    self_ptr,
    sn,
    sd,
    self_mean_ptr,
    self_scale_ptr,
    other_ptr,
    on,
    od,
    other_mean_ptr,
    other_scale_ptr,
    k_other_ptr,
    diag_ptr,
    w_ptr,
    tpart_ptr,
    n,
    D,
    inv_n,
    lambd,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_J: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
):
    """W = 2 lambd K_other self / n^2 + other * gamma / n."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n
    fmask = feats < D
    mean = tl.load(self_mean_ptr + feats, mask=fmask, other=0.0)
    scale = tl.load(self_scale_ptr + feats, mask=fmask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for m0 in range(0, n, BLOCK_J):
        ms = m0 + tl.arange(0, BLOCK_J)
        mmask = ms < n
        kt = tl.load(
            k_other_ptr + rows.to(tl.int64)[:, None] * n + ms[None, :], mask=rmask[:, None] & mmask[None, :], other=0.0
        )
        at = _std_tile(self_ptr, ms, mmask, feats, fmask, sn, sd, mean, scale)
        acc = _mma(kt, at, acc, tl.float32, PRECISION, CAST_FP32)
    gamma = 2.0 * (1.0 - lambd) * tl.load(diag_ptr + feats, mask=fmask, other=0.0) - 2.0
    omu = tl.load(other_mean_ptr + feats, mask=fmask, other=0.0)
    osc = tl.load(other_scale_ptr + feats, mask=fmask, other=0.0)
    ot = _std_tile(other_ptr, rows, rmask, feats, fmask, on, od, omu, osc)
    w = (2.0 * lambd * inv_n * inv_n) * acc + ot * (gamma * inv_n)[None, :]
    _store_w(w, rows, rmask, feats, fmask, self_ptr, sn, sd, mean, scale, w_ptr, tpart_ptr, pid_m, D)


# --------------------------------------------------------------------------------------------
# 4. dL/dZ = s * (W - A t)
# --------------------------------------------------------------------------------------------
@triton.jit
def _finish_kernel(
    self_ptr,
    sn,
    sd,
    mean_ptr,
    scale_ptr,
    w_ptr,
    tpart_ptr,
    n_row_tiles,
    out_ptr,
    out_sn,
    out_sd,
    n,
    D,
    inv_n,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n
    fmask = feats < D
    t = tl.zeros((BLOCK_N,), tl.float32)
    for r in range(0, n_row_tiles):
        t += tl.load(tpart_ptr + r * D + feats, mask=fmask, other=0.0)
    t = t * inv_n
    mean = tl.load(mean_ptr + feats, mask=fmask, other=0.0)
    scale = tl.load(scale_ptr + feats, mask=fmask, other=0.0)
    a = _std_tile(self_ptr, rows, rmask, feats, fmask, sn, sd, mean, scale)
    mask = rmask[:, None] & fmask[None, :]
    w = tl.load(w_ptr + rows.to(tl.int64)[:, None] * D + feats[None, :], mask=mask, other=0.0)
    out = scale[None, :] * (w - a * t[None, :])
    off = rows.to(tl.int64)[:, None] * out_sn + feats.to(tl.int64)[None, :] * out_sd
    tl.store(out_ptr + off, out.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------------
def select_config(n: int, D: int, dtype: torch.dtype, interpret: bool = INTERPRET) -> dict:
    """Tile sizes: ``stats_block_k/_c`` (statistics), ``block`` and ``block_k`` (the cross / Gram
    tiles and their reduction step), ``grad_block_m/_n/_j`` (gradient tiles and reduction step),
    ``num_warps``, ``num_stages``. The GPU values were chosen without a GPU at hand."""
    if interpret:
        cfg = dict(
            stats_block_k=16,
            stats_block_c=16,
            block=16,
            block_k=16,
            grad_block_m=16,
            grad_block_n=16,
            grad_block_j=16,
            num_warps=4,
            num_stages=1,
        )
    else:
        cfg = dict(
            stats_block_k=64,
            stats_block_c=64,
            block=64,
            block_k=32,
            grad_block_m=64,
            grad_block_n=64,
            grad_block_j=32,
            num_warps=4,
            num_stages=3,
        )
    return cfg


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def barlow_twins_forward_backward(
    z1: torch.Tensor,
    z2: torch.Tensor,
    grad1: torch.Tensor | None,
    grad2: torch.Tensor | None,
    *,
    lambd: float,
    eps: float,
    route: str | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Loss of (n, D) views ``z1``, ``z2`` (same shape, dtype and device; any strides); writes
    dL/dZ1, dL/dZ2 into ``grad1``, ``grad2`` (same shape as the views, any strides) unless they
    are None. ``route`` forces "D" or "N" (tests); by default "D" when n >= D, else "N".
    ``config`` overrides entries of :func:`select_config`'s choice for this call (a key it does
    not have raises ``ValueError``). Returns a 0-dim float32 tensor."""
    n, D = z1.shape
    dev = z1.device
    cfg = select_config(n, D, z1.dtype)
    if config:
        unknown = sorted(set(config) - set(cfg))
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}; known: {sorted(cfg)}")
        cfg.update(config)
    route = route or ("D" if n >= D else "N")
    f32 = dict(dtype=torch.float32, device=dev)
    inv_n = 1.0 / n
    cast_fp32 = INTERPRET
    dot_dtype = _TL_DTYPES[z1.dtype]
    precision = "tf32x3" if z1.dtype == torch.float32 else "ieee"
    grad_precision = "tf32x3"
    s = (z1.stride(0), z1.stride(1), z2.stride(0), z2.stride(1))
    mean1, scale1, mean2, scale2, diag = (torch.empty(D, **f32) for _ in range(5))

    bc, bt = cfg["stats_block_c"], cfg["block"]
    n_stats = triton.cdiv(D, bc)
    if route == "D":
        n_tiles = triton.cdiv(D, bt) ** 2
    else:
        t = triton.cdiv(n, bt)
        n_tiles = t * (t + 1) // 2
    parts = torch.empty(n_stats + n_tiles, **f32)
    _stats_kernel[(n_stats,)](
        z1, z2, *s, mean1, scale1, mean2, scale2, diag, parts, n, D, inv_n, eps, lambd,
        BLOCK_K=cfg["stats_block_k"], BLOCK_C=bc,
    )  # fmt: skip
    stats = (mean1, scale1, mean2, scale2)
    dots = dict(DOT_DTYPE=dot_dtype, PRECISION=precision, CAST_FP32=cast_fp32)
    launch = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if route == "D":
        C = torch.empty((D, D), **f32)
        _cross_kernel[(n_tiles,)](
            z1, z2, *s, *stats, C, parts, n_stats, n, D, inv_n, lambd,
            BLOCK=bt, BLOCK_K=cfg["block_k"], **dots, **launch,
        )  # fmt: skip
    else:
        KA = torch.empty((n, n), **f32)
        KB = torch.empty((n, n), **f32)
        _gram_kernel[(n_tiles,)](
            z1, z2, *s, *stats, KA, KB, parts, n_stats, n, D, inv_n, lambd,
            BLOCK=bt, BLOCK_K=cfg["block_k"], **dots, **launch,
        )  # fmt: skip
    loss = parts.sum()
    if grad1 is None:
        return loss

    bm, bn, bj = cfg["grad_block_m"], cfg["grad_block_n"], cfg["grad_block_j"]
    grid = (triton.cdiv(n, bm), triton.cdiv(D, bn))
    W = torch.empty((n, D), **f32)
    tpart = torch.empty((grid[0], D), **f32)
    views = (
        (z1, s[0], s[1], mean1, scale1, z2, s[2], s[3], mean2, scale2, grad1, D, 1),
        (z2, s[2], s[3], mean2, scale2, z1, s[0], s[1], mean1, scale1, grad2, 1, D),
    )
    for index, (x, xn, xd, mu, sc, o, on, od, omu, osc, out, c_self, c_other) in enumerate(views):
        common = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_J=bj, PRECISION=grad_precision, CAST_FP32=cast_fp32, **launch)
        if route == "D":
            _grad_d_kernel[grid](
                x, xn, xd, mu, sc, o, on, od, omu, osc, C, c_self, c_other, diag, W, tpart, n, D, inv_n, lambd,
                **common,
            )  # fmt: skip
        else:
            k_other = KB if index == 0 else KA
            _grad_n_kernel[grid](
                x, xn, xd, mu, sc, o, on, od, omu, osc, k_other, diag, W, tpart, n, D, inv_n, lambd, **common
            )  # fmt: skip
        _finish_kernel[grid](
            x, xn, xd, mu, sc, W, tpart, grid[0], out, out.stride(0), out.stride(1), n, D, inv_n,
            BLOCK_M=bm, BLOCK_N=bn, num_warps=cfg["num_warps"],
        )  # fmt: skip
    return loss
