"""Fused Triton kernels of the decorrelation penalty and its gradient.

Plain-tensor launch helpers only: nothing here imports from ``sdecor``. The entry point is
:func:`decorrelation_forward_backward`, which returns the penalty and writes dP/dX (already
multiplied by the reduction's factor) into a gradient buffer, in one forward pass.

Notation (see sdecor/ops/decorrelation_reference.py). X is n samples x D features, read
through three strides: sample k is (k // S, k % S) of an (N, C, S) view, so contiguous NCHW,
channels_last and strided 2-D inputs are all read in place (2-D input: S = 1). D = G groups of
g features, n' = n - correction, s_i = 1 (covariance) or (C_ii + eps)^-1/2 (correlation),
Z = (X - mean) * s, centred and scaled *on load* inside every kernel (X^T X - n mu mu^T is
never formed), M = Z^T Z / n' per group, P = sum_{i != j} M_ij^2, and

    dP/dX = (4 / n') * s * (Z Moff - Z * r),   r_i = sum_{j != i} M_ij^2 (correlation only).

Kernels (all groups in one launch: the group is a grid axis):

1. ``_col_stats_kernel`` (+ ``_col_stats_combine_kernel`` when the samples are split over
   programs): column mean and centred sum of squares in fp32 (two passes over each chunk,
   Chan's formula across chunks) -> mean, s, diag(M).
2. ``_gram_kernel``: the symmetric Gram matrix of Z tiles, upper-triangle tiles only.
   Route D (n >= g): M = Z^T Z / n' (g x g per group); route N (n < g): K' = Z Z^T / n'
   (n x n per group). Without split: the epilogue writes the P partial of the tile, the row
   sums of squared off-diagonals (route D, correlation), diag(K') (route N) and the Gram matrix
   with its diagonal zeroed, in the dot dtype. With a split of the reduction axis over programs
   (few tiles and enough work: small g in route D, small n in route N): fp32 atomics into a
   zeroed buffer, and ``_gram_finish_kernel`` does that epilogue afterwards.
3. Route D: ``_grad_d_kernel``: grad = c * s * (Z @ Moff - Z * r), epilogue fused.
   Route N: ``_kz_kernel``: W = K' Z - Z * diag(M) = Z Moff (diag(K') added back in fp32, not
   rounded), and r_i = sum_k Z_ki W_ki / n'. With ``kz_row_loop`` one program per feature tile
   walks all the rows, so it completes r itself and rewrites its W tiles as the final
   c * s * (W - Z * r); otherwise W and per-row-tile r partials go to the gradient buffer and
   ``_finish_n_kernel`` finishes in place. Covariance mode (r = 0, s = 1) writes c * W at once.

The loss is the sum of a small buffer of per-tile partials, added up in a fixed order by
program 0 of the last kernel (deterministic, no extra launch, no host sync). Dots
accumulate in fp32; fp16/bf16 tiles go to the tensor cores in their own dtype (bf16 for fp16
in covariance mode, where variances can leave fp16's range), fp32 tiles use 3xTF32.
Under the Triton interpreter (TRITON_INTERPRET=1) tiles are cast to fp32 before tl.dot.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["decorrelation_forward_backward", "select_config", "dot_dtype", "INTERPRET", "CONFIG_OVERRIDE"]

# Fixed when this module is imported, like triton.jit's own choice of the interpreter.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Entries merged over select_config()'s choice on every call (tests force splits and small
# tiles with it; tuning sessions can try block sizes without editing the code).
CONFIG_OVERRIDE: dict = {}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def _wide(x, OFF64: tl.constexpr):
    """int64 offsets only where some tensor spans 2^31 elements (they cost registers)."""
    if OFF64:
        return x.to(tl.int64)
    else:
        return x


@triton.jit
def _row_offsets(rows, S, stride_n, stride_s, OFF64: tl.constexpr):
    """Element offsets of samples ``rows`` = (rows // S, rows % S) of an (N, C, S) view."""
    return _wide(rows // S, OFF64) * stride_n + _wide(rows % S, OFF64) * stride_s


@triton.jit
def _z_tile(x_ptr, row_off, rmask, col_off, cmask, mean, scale):
    """[rows, cols] tile of Z = (X - mean) * scale in fp32, zero outside the masks."""
    mask = rmask[:, None] & cmask[None, :]
    v = tl.load(x_ptr + row_off[:, None] + col_off[None, :], mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, (v - mean[None, :]) * scale[None, :], 0.0)


@triton.jit
def _raw_tile(x_ptr, row_off, rmask, col_off, cmask):
    """[rows, cols] tile of X as stored (loaded one iteration ahead of its use: the software
    pipeliner does not prefetch loads that pass through registers on their way to tl.dot)."""
    return tl.load(x_ptr + row_off[:, None] + col_off[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def _to_z(raw, rmask, cmask, mean, scale):
    """Centre and scale a raw tile in fp32; zero outside the masks."""
    return tl.where(rmask[:, None] & cmask[None, :], (raw.to(tl.float32) - mean[None, :]) * scale[None, :], 0.0)


@triton.jit
def _mma(a, b, acc, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, CAST_FP32: tl.constexpr):
    if CAST_FP32:  # interpreter: its bf16 dot is wrong
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=PRECISION)


@triton.jit
def _tri_index(t):
    """(b, a) with b <= a for t = a (a + 1) / 2 + b: upper-triangle tile (row b, column a)."""
    a = ((tl.sqrt(8.0 * t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    a = tl.where((a + 1) * (a + 2) // 2 <= t, a + 1, a)
    a = tl.where(a * (a + 1) // 2 > t, a - 1, a)
    b = t - a * (a + 1) // 2
    return b, a


@triton.jit
def _swizzle(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped ordering of (pid_m, pid_n) tiles for L2 reuse."""
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def _sum_loss_parts(loss_part_ptr, n_parts, loss_ptr, BLOCK: tl.constexpr):
    """loss = sum of the per-tile partials (every earlier kernel of the stream wrote them)."""
    acc = tl.zeros((BLOCK,), tl.float32)
    for p0 in range(0, n_parts, BLOCK):
        idx = p0 + tl.arange(0, BLOCK)
        acc += tl.load(loss_part_ptr + idx, mask=idx < n_parts, other=0.0)
    tl.store(loss_ptr, tl.sum(acc, axis=0))


@triton.jit
def _finalize_stats(
    cols,
    cmask,
    mean,
    m2,
    mean_ptr,
    scale_ptr,
    diag_ptr,
    loss_part_ptr,
    part,
    inv_nprime,
    eps,
    loss_factor,
    CORR: tl.constexpr,
    DIAG_LOSS: tl.constexpr,
):
    var = m2 * inv_nprime
    if CORR:
        scale = 1.0 / tl.sqrt(var + eps)
        diag = var * scale * scale
    else:
        scale = tl.where(cmask, 1.0, 1.0)
        diag = var
    tl.store(mean_ptr + cols, mean, mask=cmask)
    tl.store(scale_ptr + cols, scale, mask=cmask)
    tl.store(diag_ptr + cols, diag, mask=cmask)
    if DIAG_LOSS:  # route N: P = ||K'||_F^2 - sum_i M_ii^2
        d = tl.where(cmask, diag, 0.0)
        tl.store(loss_part_ptr + part, -loss_factor * tl.sum(d * d, axis=0))


# --------------------------------------------------------------------------------------------
# 1. column statistics
# --------------------------------------------------------------------------------------------
@triton.jit
def _col_stats_kernel(
    x_ptr,
    pmean_ptr,
    pm2_ptr,
    mean_ptr,
    scale_ptr,
    diag_ptr,
    loss_part_ptr,
    n,
    D,
    S,
    stride_n,
    stride_s,
    stride_c,
    chunk,
    inv_nprime,
    eps,
    loss_factor,
    CORR: tl.constexpr,
    FUSED: tl.constexpr,
    DIAG_LOSS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    OFF64: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < D
    col_off = _wide(cols, OFF64) * stride_c
    start = split * chunk
    end = tl.minimum(start + chunk, n)
    count = (end - start).to(tl.float32)
    acc = tl.zeros((BLOCK_K, BLOCK_C), tl.float32)
    for k0 in range(start, end, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        mask = (rows < end)[:, None] & cmask[None, :]
        ptrs = x_ptr + _row_offsets(rows, S, stride_n, stride_s, OFF64)[:, None] + col_off[None, :]
        acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / count
    acc = tl.zeros((BLOCK_K, BLOCK_C), tl.float32)
    for k0 in range(start, end, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        mask = (rows < end)[:, None] & cmask[None, :]
        ptrs = x_ptr + _row_offsets(rows, S, stride_n, stride_s, OFF64)[:, None] + col_off[None, :]
        v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, v - mean[None, :], 0.0)
        acc += d * d
    m2 = tl.sum(acc, axis=0)
    if FUSED:
        _finalize_stats(
            cols,
            cmask,
            mean,
            m2,
            mean_ptr,
            scale_ptr,
            diag_ptr,
            loss_part_ptr,
            pid_c,
            inv_nprime,
            eps,
            loss_factor,
            CORR,
            DIAG_LOSS,
        )
    else:
        tl.store(pmean_ptr + split * D + cols, mean, mask=cmask)
        tl.store(pm2_ptr + split * D + cols, m2, mask=cmask)


@triton.jit
def _col_stats_combine_kernel(
    pmean_ptr,
    pm2_ptr,
    mean_ptr,
    scale_ptr,
    diag_ptr,
    loss_part_ptr,
    n,
    D,
    chunk,
    n_split,
    inv_nprime,
    eps,
    loss_factor,
    CORR: tl.constexpr,
    DIAG_LOSS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Chan's parallel combination of the per-chunk (mean, M2) of every column."""
    pid_c = tl.program_id(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < D
    total = tl.zeros((BLOCK_C,), tl.float32)
    for s in range(n_split):
        cnt = tl.minimum(chunk, n - s * chunk).to(tl.float32)
        total += cnt * tl.load(pmean_ptr + s * D + cols, mask=cmask, other=0.0)
    mean = total / n
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for s in range(n_split):
        cnt = tl.minimum(chunk, n - s * chunk).to(tl.float32)
        d = tl.load(pmean_ptr + s * D + cols, mask=cmask, other=0.0) - mean
        m2 += tl.load(pm2_ptr + s * D + cols, mask=cmask, other=0.0) + cnt * d * d
    _finalize_stats(
        cols,
        cmask,
        mean,
        m2,
        mean_ptr,
        scale_ptr,
        diag_ptr,
        loss_part_ptr,
        pid_c,
        inv_nprime,
        eps,
        loss_factor,
        CORR,
        DIAG_LOSS,
    )


# --------------------------------------------------------------------------------------------
# 2. symmetric Gram matrix of Z (route D: features x features; route N: samples x samples)
# --------------------------------------------------------------------------------------------
@triton.jit
def _gram_kernel(
    x_ptr,
    mean_ptr,
    scale_ptr,
    out_ptr,
    rpart_ptr,
    kdiag_ptr,
    loss_part_ptr,
    n,
    g,
    S,
    stride_n,
    stride_s,
    stride_c,
    T,
    chunk,
    inv_nprime,
    loss_factor,
    ROUTE_N: tl.constexpr,
    CORR: tl.constexpr,
    ATOMIC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    OFF64: tl.constexpr,
):
    tile = tl.program_id(0)
    split = tl.program_id(1)
    grp = tl.program_id(2)
    pid_i, pid_j = _tri_index(tile)
    col0 = grp * g
    if ROUTE_N:
        L = n
        R = g
    else:
        L = g
        R = n
    ci = pid_i * BLOCK + tl.arange(0, BLOCK)
    cj = pid_j * BLOCK + tl.arange(0, BLOCK)
    mi = ci < L
    mj = cj < L
    r_start = split * chunk
    r_end = tl.minimum(r_start + chunk, R)
    acc = tl.zeros((BLOCK, BLOCK), tl.float32)
    if ROUTE_N:
        # K' tile: samples ci x samples cj, reduced over the group's features
        roff_i = _row_offsets(ci, S, stride_n, stride_s, OFF64)
        roff_j = _row_offsets(cj, S, stride_n, stride_s, OFF64)
        cf = r_start + tl.arange(0, BLOCK_R)
        mf = cf < r_end
        coff = _wide((col0 + cf), OFF64) * stride_c
        a_raw = _raw_tile(x_ptr, roff_i, mi, coff, mf)
        b_raw = _raw_tile(x_ptr, roff_j, mj, coff, mf)
        mean_f = tl.load(mean_ptr + col0 + cf, mask=mf, other=0.0)
        scale_f = tl.load(scale_ptr + col0 + cf, mask=mf, other=0.0)
        for f0 in range(r_start, r_end, BLOCK_R):
            cf_nx = f0 + BLOCK_R + tl.arange(0, BLOCK_R)  # prefetch the next chunk of features
            mf_nx = cf_nx < r_end
            coff_nx = _wide((col0 + cf_nx), OFF64) * stride_c
            a_nx = _raw_tile(x_ptr, roff_i, mi, coff_nx, mf_nx)
            b_nx = _raw_tile(x_ptr, roff_j, mj, coff_nx, mf_nx)
            mean_nx = tl.load(mean_ptr + col0 + cf_nx, mask=mf_nx, other=0.0)
            scale_nx = tl.load(scale_ptr + col0 + cf_nx, mask=mf_nx, other=0.0)
            mf = (f0 + tl.arange(0, BLOCK_R)) < r_end
            a = _to_z(a_raw, mi, mf, mean_f, scale_f)
            b = _to_z(b_raw, mj, mf, mean_f, scale_f)
            acc = _mma(a, tl.trans(b), acc, DOT_DTYPE, PRECISION, CAST_FP32)
            a_raw = a_nx
            b_raw = b_nx
            mean_f = mean_nx
            scale_f = scale_nx
    else:
        # M tile: features ci x features cj, reduced over the samples
        mean_i = tl.load(mean_ptr + col0 + ci, mask=mi, other=0.0)
        scale_i = tl.load(scale_ptr + col0 + ci, mask=mi, other=0.0)
        mean_j = tl.load(mean_ptr + col0 + cj, mask=mj, other=0.0)
        scale_j = tl.load(scale_ptr + col0 + cj, mask=mj, other=0.0)
        coff_i = _wide((col0 + ci), OFF64) * stride_c
        coff_j = _wide((col0 + cj), OFF64) * stride_c
        rows = r_start + tl.arange(0, BLOCK_R)
        roff = _row_offsets(rows, S, stride_n, stride_s, OFF64)
        a_raw = _raw_tile(x_ptr, roff, rows < r_end, coff_i, mi)
        b_raw = _raw_tile(x_ptr, roff, rows < r_end, coff_j, mj)
        for k0 in range(r_start, r_end, BLOCK_R):
            rows_nx = k0 + BLOCK_R + tl.arange(0, BLOCK_R)  # prefetch the next chunk of samples
            roff_nx = _row_offsets(rows_nx, S, stride_n, stride_s, OFF64)
            a_nx = _raw_tile(x_ptr, roff_nx, rows_nx < r_end, coff_i, mi)
            b_nx = _raw_tile(x_ptr, roff_nx, rows_nx < r_end, coff_j, mj)
            mk = (k0 + tl.arange(0, BLOCK_R)) < r_end
            a = _to_z(a_raw, mk, mi, mean_i, scale_i)
            b = _to_z(b_raw, mk, mj, mean_j, scale_j)
            acc = _mma(tl.trans(a), b, acc, DOT_DTYPE, PRECISION, CAST_FP32)
            a_raw = a_nx
            b_raw = b_nx
    m = acc * inv_nprime
    base = out_ptr + _wide(grp, OFF64) * L * L
    p_ij = base + _wide(ci[:, None], OFF64) * L + cj[None, :]
    p_ji = base + _wide(cj[None, :], OFF64) * L + ci[:, None]
    valid = mi[:, None] & mj[None, :]
    if ATOMIC:
        tl.atomic_add(p_ij, m, mask=valid, sem="relaxed")
        if pid_i != pid_j:
            tl.atomic_add(p_ji, m, mask=valid, sem="relaxed")
    else:
        eq = ci[:, None] == cj[None, :]
        m = tl.where(valid, m, 0.0)
        off = tl.where(eq, 0.0, m)
        sq = off * off
        weight = 2.0 - (pid_i == pid_j).to(tl.float32)  # an off-diagonal tile stands for two
        p = tl.sum(tl.sum(sq, axis=1), axis=0) * weight
        if ROUTE_N:
            d = tl.sum(tl.where(eq, m, 0.0), axis=1)  # zero except on diagonal tiles
            p += tl.sum(d * d, axis=0)
            if pid_i == pid_j:
                tl.store(kdiag_ptr + grp * L + ci, d, mask=mi)
        else:
            if CORR:
                # slot of row block i in tile (i, j >= i) is j; of column block j in (i < j, j) is i
                rbase = rpart_ptr + _wide(grp, OFF64) * T * L
                tl.store(rbase + pid_j * L + ci, tl.sum(sq, axis=1), mask=mi)
                if pid_i != pid_j:
                    tl.store(rbase + pid_i * L + cj, tl.sum(sq, axis=0), mask=mj)
        tl.store(loss_part_ptr + grp * tl.num_programs(0) + tile, p * loss_factor)
        off = off.to(out_ptr.dtype.element_ty)
        tl.store(p_ij, off, mask=valid)
        if pid_i != pid_j:
            tl.store(p_ji, off, mask=valid)


@triton.jit
def _gram_finish_kernel(
    buf_ptr,
    rpart_ptr,
    kdiag_ptr,
    loss_part_ptr,
    L,
    loss_factor,
    ROUTE_N: tl.constexpr,
    CORR: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    OFF64: tl.constexpr,
):
    """After split (atomic) accumulation: P partials, r or diag(K'), zero the diagonal in place."""
    pid = tl.program_id(0)
    grp = tl.program_id(1)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    mr = rows < L
    base = buf_ptr + _wide(grp, OFF64) * L * L
    rsum = tl.zeros((BLOCK,), tl.float32)
    for c0 in range(0, L, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = mr[:, None] & (cols < L)[None, :]
        v = tl.load(base + _wide(rows[:, None], OFF64) * L + cols[None, :], mask=mask, other=0.0)
        v = tl.where(rows[:, None] == cols[None, :], 0.0, v)
        rsum += tl.sum(v * v, axis=1)
    dptr = base + _wide(rows, OFF64) * L + rows
    diag = tl.load(dptr, mask=mr, other=0.0)
    p = tl.sum(rsum, axis=0)
    if ROUTE_N:
        p += tl.sum(diag * diag, axis=0)
        tl.store(kdiag_ptr + grp * L + rows, diag, mask=mr)
    else:
        if CORR:
            tl.store(rpart_ptr + grp * L + rows, rsum, mask=mr)
    tl.store(loss_part_ptr + grp * tl.num_programs(0) + pid, p * loss_factor)
    tl.store(dptr, tl.zeros((BLOCK,), tl.float32), mask=mr)


# --------------------------------------------------------------------------------------------
# 3a. route D gradient: c * s * (Z @ Moff - Z * r)
# --------------------------------------------------------------------------------------------
@triton.jit
def _grad_d_kernel(
    x_ptr,
    grad_ptr,
    mean_ptr,
    scale_ptr,
    m_ptr,
    rpart_ptr,
    loss_part_ptr,
    n_parts,
    loss_ptr,
    n,
    g,
    S,
    stride_n,
    stride_s,
    stride_c,
    gstride_n,
    gstride_s,
    gstride_c,
    R_PARTS,
    coef,
    CORR: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_J: tl.constexpr,
    GROUP_M: tl.constexpr,
    OFF64: tl.constexpr,
):
    grp = tl.program_id(1)
    pid_m, pid_n = _swizzle(tl.program_id(0), tl.cdiv(n, BLOCK_M), tl.cdiv(g, BLOCK_N), GROUP_M)
    col0 = grp * g
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mr = rows < n
    roff = _row_offsets(rows, S, stride_n, stride_s, OFF64)
    cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = cn < g
    mbase = m_ptr + _wide(grp, OFF64) * g * g
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    cj = tl.arange(0, BLOCK_J)
    mj = cj < g
    z_raw = _raw_tile(x_ptr, roff, mr, _wide((col0 + cj), OFF64) * stride_c, mj)
    mt = _raw_tile(mbase, _wide(cj, OFF64) * g, mj, cn, mn)
    mean_j = tl.load(mean_ptr + col0 + cj, mask=mj, other=0.0)
    scale_j = tl.load(scale_ptr + col0 + cj, mask=mj, other=0.0)
    for j0 in range(0, g, BLOCK_J):
        cj_nx = j0 + BLOCK_J + tl.arange(0, BLOCK_J)  # prefetch the next Z and Moff tiles
        mj_nx = cj_nx < g
        z_nx = _raw_tile(x_ptr, roff, mr, _wide((col0 + cj_nx), OFF64) * stride_c, mj_nx)
        mt_nx = _raw_tile(mbase, _wide(cj_nx, OFF64) * g, mj_nx, cn, mn)
        mean_nx = tl.load(mean_ptr + col0 + cj_nx, mask=mj_nx, other=0.0)
        scale_nx = tl.load(scale_ptr + col0 + cj_nx, mask=mj_nx, other=0.0)
        z = _to_z(z_raw, mr, (j0 + tl.arange(0, BLOCK_J)) < g, mean_j, scale_j)
        acc = _mma(z, mt, acc, DOT_DTYPE, PRECISION, CAST_FP32)
        z_raw = z_nx
        mt = mt_nx
        mean_j = mean_nx
        scale_j = scale_nx
    if CORR:
        mean_n = tl.load(mean_ptr + col0 + cn, mask=mn, other=0.0)
        scale_n = tl.load(scale_ptr + col0 + cn, mask=mn, other=0.0)
        zn = _z_tile(x_ptr, roff, mr, _wide((col0 + cn), OFF64) * stride_c, mn, mean_n, scale_n)
        r = tl.zeros((BLOCK_N,), tl.float32)
        for t in range(R_PARTS):
            r += tl.load(rpart_ptr + _wide((grp * R_PARTS + t), OFF64) * g + cn, mask=mn, other=0.0)
        acc = (acc - zn * r[None, :]) * (scale_n * coef)[None, :]
    else:
        acc = acc * coef
    goff = _row_offsets(rows, S, gstride_n, gstride_s, OFF64)
    gptrs = grad_ptr + goff[:, None] + (_wide((col0 + cn), OFF64) * gstride_c)[None, :]
    tl.store(gptrs, acc.to(grad_ptr.dtype.element_ty), mask=mr[:, None] & mn[None, :])
    if (tl.program_id(0) == 0) & (grp == 0):
        _sum_loss_parts(loss_part_ptr, n_parts, loss_ptr, 256)


# --------------------------------------------------------------------------------------------
# 3b. route N: W = K' Z - Z diag(M) = Z Moff, r partials; then c * s * (W - Z r)
# --------------------------------------------------------------------------------------------
@triton.jit
def _kz_tile(
    x_ptr,
    k_ptr,
    kdiag_ptr,
    rows,
    mr,
    grp,
    n,
    S,
    stride_n,
    stride_s,
    coff,
    mf,
    mean_f,
    scale_f,
    dm,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_L: tl.constexpr,
    OFF64: tl.constexpr,
):
    """(W, Z) tiles [rows, features]: W = K' Z - Z diag(M) = Z Moff, with K' = Koff' + diag(K')."""
    kbase = k_ptr + _wide(grp, OFF64) * n * n
    acc = tl.zeros((BLOCK_M, BLOCK_F), tl.float32)
    krow = _wide(rows, OFF64) * n
    rl = tl.arange(0, BLOCK_L)
    z_raw = _raw_tile(x_ptr, _row_offsets(rl, S, stride_n, stride_s, OFF64), rl < n, coff, mf)
    kt = _raw_tile(kbase, krow, mr, rl, rl < n)
    for l0 in range(0, n, BLOCK_L):
        rl_nx = l0 + BLOCK_L + tl.arange(0, BLOCK_L)  # prefetch the next Z and K' tiles
        z_nx = _raw_tile(x_ptr, _row_offsets(rl_nx, S, stride_n, stride_s, OFF64), rl_nx < n, coff, mf)
        kt_nx = _raw_tile(kbase, krow, mr, rl_nx, rl_nx < n)
        z = _to_z(z_raw, (l0 + tl.arange(0, BLOCK_L)) < n, mf, mean_f, scale_f)
        acc = _mma(kt, z, acc, DOT_DTYPE, PRECISION, CAST_FP32)
        z_raw = z_nx
        kt = kt_nx
    zr = _z_tile(x_ptr, _row_offsets(rows, S, stride_n, stride_s, OFF64), mr, coff, mf, mean_f, scale_f)
    kd = tl.load(kdiag_ptr + grp * n + rows, mask=mr, other=0.0)
    return acc + zr * (kd[:, None] - dm[None, :]), zr


@triton.jit
def _kz_kernel(
    x_ptr,
    grad_ptr,
    mean_ptr,
    scale_ptr,
    diag_ptr,
    k_ptr,
    kdiag_ptr,
    rpart_ptr,
    loss_part_ptr,
    n_parts,
    loss_ptr,
    n,
    g,
    D,
    S,
    stride_n,
    stride_s,
    stride_c,
    gstride_n,
    gstride_s,
    gstride_c,
    inv_nprime,
    coef,
    CORR: tl.constexpr,
    ROW_LOOP: tl.constexpr,
    SUM_LOSS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_L: tl.constexpr,
    GROUP_M: tl.constexpr,
    OFF64: tl.constexpr,
):
    """Route N gradient. ROW_LOOP: one program per feature tile walks every row tile, so r is
    complete inside the program and the gradient is final (no second kernel); otherwise one
    program per (row tile, feature tile), W and the r partials go to ``_finish_n_kernel``."""
    grp = tl.program_id(1)
    if ROW_LOOP:
        pid_m = 0
        pid_f = tl.program_id(0)
    else:
        pid_m, pid_f = _swizzle(tl.program_id(0), tl.cdiv(n, BLOCK_M), tl.cdiv(g, BLOCK_F), GROUP_M)
    col0 = grp * g
    cf = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mf = cf < g
    coff = _wide((col0 + cf), OFF64) * stride_c
    gcoff = (_wide((col0 + cf), OFF64) * gstride_c)[None, :]
    mean_f = tl.load(mean_ptr + col0 + cf, mask=mf, other=0.0)
    scale_f = tl.load(scale_ptr + col0 + cf, mask=mf, other=0.0)
    dm = tl.load(diag_ptr + col0 + cf, mask=mf, other=0.0)
    if ROW_LOOP:
        r = tl.zeros((BLOCK_F,), tl.float32)
        for m0 in range(0, n, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            mr = rows < n
            w, zr = _kz_tile(
                x_ptr,
                k_ptr,
                kdiag_ptr,
                rows,
                mr,
                grp,
                n,
                S,
                stride_n,
                stride_s,
                coff,
                mf,
                mean_f,
                scale_f,
                dm,
                DOT_DTYPE,
                PRECISION,
                CAST_FP32,
                BLOCK_M,
                BLOCK_F,
                BLOCK_L,
                OFF64,
            )
            gptrs = grad_ptr + _row_offsets(rows, S, gstride_n, gstride_s, OFF64)[:, None] + gcoff
            if CORR:
                tl.store(gptrs, w.to(grad_ptr.dtype.element_ty), mask=mr[:, None] & mf[None, :])
                r += tl.sum(zr * w, axis=0)
            else:
                tl.store(gptrs, (w * coef).to(grad_ptr.dtype.element_ty), mask=mr[:, None] & mf[None, :])
        if CORR:
            r = r * inv_nprime
            tl.debug_barrier()  # this program's stores of W are visible to all its threads
            for m0 in range(0, n, BLOCK_M):
                rows = m0 + tl.arange(0, BLOCK_M)
                mr = rows < n
                mask = mr[:, None] & mf[None, :]
                gptrs = grad_ptr + _row_offsets(rows, S, gstride_n, gstride_s, OFF64)[:, None] + gcoff
                w = tl.load(gptrs, mask=mask, other=0.0).to(tl.float32)
                zr = _z_tile(x_ptr, _row_offsets(rows, S, stride_n, stride_s, OFF64), mr, coff, mf, mean_f, scale_f)
                out = (w - zr * r[None, :]) * (scale_f * coef)[None, :]
                tl.store(gptrs, out.to(grad_ptr.dtype.element_ty), mask=mask)
    else:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mr = rows < n
        w, zr = _kz_tile(
            x_ptr,
            k_ptr,
            kdiag_ptr,
            rows,
            mr,
            grp,
            n,
            S,
            stride_n,
            stride_s,
            coff,
            mf,
            mean_f,
            scale_f,
            dm,
            DOT_DTYPE,
            PRECISION,
            CAST_FP32,
            BLOCK_M,
            BLOCK_F,
            BLOCK_L,
            OFF64,
        )
        gptrs = grad_ptr + _row_offsets(rows, S, gstride_n, gstride_s, OFF64)[:, None] + gcoff
        mask = mr[:, None] & mf[None, :]
        if CORR:
            tl.store(gptrs, w.to(grad_ptr.dtype.element_ty), mask=mask)
            tl.store(rpart_ptr + _wide(pid_m, OFF64) * D + col0 + cf, tl.sum(zr * w, axis=0) * inv_nprime, mask=mf)
        else:
            tl.store(gptrs, (w * coef).to(grad_ptr.dtype.element_ty), mask=mask)
    if SUM_LOSS:  # the last kernel of the forward
        if (tl.program_id(0) == 0) & (grp == 0):
            _sum_loss_parts(loss_part_ptr, n_parts, loss_ptr, 256)


@triton.jit
def _finish_n_kernel(
    x_ptr,
    grad_ptr,
    mean_ptr,
    scale_ptr,
    rpart_ptr,
    loss_part_ptr,
    n_parts,
    loss_ptr,
    n,
    D,
    S,
    stride_n,
    stride_s,
    stride_c,
    gstride_n,
    gstride_s,
    gstride_c,
    R_PARTS,
    coef,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    OFF64: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mr = rows < n
    mc = cols < D
    r = tl.zeros((BLOCK_C,), tl.float32)
    for t in range(R_PARTS):
        r += tl.load(rpart_ptr + t * D + cols, mask=mc, other=0.0)
    mean = tl.load(mean_ptr + cols, mask=mc, other=0.0)
    scale = tl.load(scale_ptr + cols, mask=mc, other=0.0)
    z = _z_tile(
        x_ptr, _row_offsets(rows, S, stride_n, stride_s, OFF64), mr, _wide(cols, OFF64) * stride_c, mc, mean, scale
    )
    goff = _row_offsets(rows, S, gstride_n, gstride_s, OFF64)
    gptrs = grad_ptr + goff[:, None] + (_wide(cols, OFF64) * gstride_c)[None, :]
    mask = mr[:, None] & mc[None, :]
    w = tl.load(gptrs, mask=mask, other=0.0).to(tl.float32)
    out = (w - z * r[None, :]) * (scale * coef)[None, :]
    tl.store(gptrs, out.to(grad_ptr.dtype.element_ty), mask=mask)
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        _sum_loss_parts(loss_part_ptr, n_parts, loss_ptr, 256)


# --------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_SM_COUNT: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def dot_dtype(dtype: torch.dtype, correlation: bool, g: int) -> torch.dtype:
    """Tensor-core operand dtype: fp32 (3xTF32) for fp32; fp16 for fp16 in correlation mode
    (|Z| <= sqrt(n'), |M| <= 1, |K'| <= g all fit while g <= 16384); bf16 otherwise (bf16 data,
    or fp16 data whose covariances can leave fp16's range)."""
    if dtype == torch.float32:
        return torch.float32
    if dtype == torch.float16 and correlation and g <= 16384:
        return torch.float16
    return torch.bfloat16


def _split(total: int, tiles: int, block: int, target: int, min_len: int) -> tuple[int, int]:
    """(chunk, n_split): split ``total`` into chunks (multiples of ``block``, >= ``min_len``)
    so that ``tiles * n_split`` reaches about ``target`` programs."""
    want = max(1, min(triton.cdiv(target, max(tiles, 1)), total // max(min_len, 1)))
    chunk = triton.cdiv(triton.cdiv(total, want), block) * block
    return chunk, triton.cdiv(total, chunk)


def select_config(
    n: int, g: int, groups: int, dtype: torch.dtype, device: torch.device, interpret: bool = INTERPRET
) -> dict:
    """Tile sizes, warps, stages and split policy for one problem.

    Keys: ``stats_block_k/_c`` (rows x columns of the statistics tiles), ``gram_block`` (Gram
    tile edge), ``gram_block_r`` (reduction step of the Gram dot), ``grad_block_m/_n/_j``
    (rows, output features, reduction step of the gradient dot), ``fin_block`` (elementwise
    tiles), ``gram_warps``/``grad_warps``/``num_stages`` (the dot kernels), ``group_m`` (L2
    swizzle), ``target_programs`` (split the Gram reduction until about this many programs),
    ``stats_min_chunk`` and ``gram_min_chunk`` (shortest split), ``min_split_work`` (no Gram split
    below this many multiply-adds: small problems are launch bound), ``kz_row_loop`` (route N:
    one program per feature tile finishes the gradient itself). Also honoured: ``gram_split`` and
    ``stats_split`` (force that many chunks), ``off64`` (force 64-bit offsets); tests use them.

    The GPU defaults were chosen without a GPU at hand: every dot loop compiles for sm_90 with
    no register spills (checked with ptxas for 2-D row-major input); timings should decide next.
    """
    route_n = n < g
    half = dtype != torch.float32
    sms = _sm_count(device)
    if interpret:
        cfg = dict(
            stats_block_k=32,
            stats_block_c=32,
            gram_block=32,
            gram_block_r=32,
            gram_warps=4,
            grad_block_m=32,
            grad_block_n=32,
            grad_block_j=32,
            grad_warps=4,
            fin_block=32,
            num_stages=1,
            group_m=4,
            stats_min_chunk=64,
            gram_min_chunk=64,
            target_programs=4,
            min_split_work=0,
        )
    else:
        # Chosen so that no dot loop spills registers on sm_90 (ptxas, 2-D row-major input).
        L = n if route_n else g
        gb = 128 if L >= 2048 else 64
        if not route_n:
            gbr = 64 if half else 32
        else:
            gbr = 32 if half else (16 if gb == 128 else 32)
        cfg = dict(
            stats_block_k=64,
            stats_block_c=64,
            gram_block=gb,
            gram_block_r=gbr,
            gram_warps=8 if gb == 128 else 4,
            fin_block=64,
            num_stages=3,
            group_m=8,
            grad_warps=8,
            stats_min_chunk=512,
            gram_min_chunk=256,
            target_programs=2 * sms,
            min_split_work=1 << 26,
        )
        if route_n:  # K' Z: 64 sample rows x 128 features per program
            cfg.update(grad_block_m=64, grad_block_n=128 if g >= 128 else 64, grad_block_j=64 if half else 32)
        else:  # Z Moff: 128 x 128 output tiles
            cfg.update(
                grad_block_m=128 if n >= 128 else 64,
                grad_block_n=128 if g >= 128 else 64,
                grad_block_j=32 if half else 16,
            )
    bn = cfg["grad_block_n"]
    cfg["kz_row_loop"] = route_n and (n <= 256 or triton.cdiv(g, bn) * groups >= sms)
    return cfg


def decorrelation_forward_backward(
    x: torch.Tensor,
    ncs: tuple[int, int, int],
    strides: tuple[int, int, int],
    grad: torch.Tensor | None,
    grad_strides: tuple[int, int, int] | None,
    *,
    correlation: bool,
    mean_reduction: bool,
    correction: int,
    groups: int,
    eps: float,
    config: dict | None = None,
) -> torch.Tensor:
    """Penalty of the features of ``x`` and its gradient, in one pass.

    Args:
        x: the input tensor (its data pointer is the element (0, 0, 0)); fp32, fp16 or bf16.
        ncs: (N, C, S): x read as N x C x S elements; samples are the N * S pairs, C features.
        strides: element strides of the N, C and S axes of x (S: the merged spatial axis).
        grad: output buffer of x's dtype, written with dP/dX (times the reduction's factor);
            None: the loss alone (the gradient kernels are skipped).
        grad_strides: its (N, C, S) element strides (ignored when ``grad`` is None).
        correlation, mean_reduction, correction, groups, eps: the op's options.
        config: overrides of :func:`select_config` (tests use it to force splits and tiles).

    Returns:
        The penalty, a 0-dim float32 tensor on x's device (no host synchronisation).
    """
    N, C, S = ncs
    n = N * S
    D = C
    G = groups
    g = D // G
    nprime = n - correction
    device = x.device
    cfg = select_config(n, g, G, x.dtype, device)
    cfg.update(CONFIG_OVERRIDE)
    if config:
        cfg.update(config)
    route_n = n < g
    inv_nprime = 1.0 / nprime
    loss_factor = 1.0 / (G * g * (g - 1)) if mean_reduction else 1.0
    coef = 4.0 * inv_nprime * loss_factor
    ddt = dot_dtype(x.dtype, correlation, g)
    tl_dot = _TL_DTYPES[ddt]
    precision = "tf32x3" if ddt == torch.float32 else "tf32"  # the latter is ignored for 16-bit dots
    cast_fp32 = INTERPRET
    sn, sc, ss = strides
    gsn, gsc, gss = grad_strides if grad is not None else (0, 0, 0)
    f32 = dict(device=device, dtype=torch.float32)
    ns = cfg["num_stages"]
    dots = dict(DOT_DTYPE=tl_dot, PRECISION=precision, CAST_FP32=cast_fp32)

    # ---- Gram tiling and split of its reduction axis (R: samples in route D, features in N)
    L = n if route_n else g
    gb = cfg["gram_block"]
    T = triton.cdiv(L, gb)
    n_tri = T * (T + 1) // 2
    R = g if route_n else n
    if "gram_split" in cfg:
        chunk = triton.cdiv(triton.cdiv(R, cfg["gram_split"]), cfg["gram_block_r"]) * cfg["gram_block_r"]
        n_split = triton.cdiv(R, chunk)
    elif G * L * L * R < cfg["min_split_work"]:
        chunk, n_split = R, 1
    else:
        chunk, n_split = _split(R, n_tri * G, cfg["gram_block_r"], cfg["target_programs"], cfg["gram_min_chunk"])
    atomic = n_split > 1
    fin_block = cfg["fin_block"]

    # ---- int32 offsets unless some tensor spans 2^31 elements
    def span(shape, st):
        return 1 + sum((size - 1) * abs(stride) for size, stride in zip(shape, st))

    spans = [span(ncs, strides), G * L * L, (T + 1) * D, (triton.cdiv(n, cfg["grad_block_m"]) + 1) * D]
    if grad is not None:
        spans.append(span(ncs, grad_strides))
    off64 = bool(cfg.get("off64", max(spans) >= 2**31 - 1))

    # ---- loss partials: [-sum_i M_ii^2 per column block (route N) | Gram tiles or row blocks]
    sbc = cfg["stats_block_c"]
    n_stat_parts = triton.cdiv(D, sbc) if route_n else 0
    n_gram_parts = G * (triton.cdiv(L, fin_block) if atomic else n_tri)
    n_parts = n_stat_parts + n_gram_parts
    loss_parts = torch.empty(n_parts, **f32)

    # ---- 1. column statistics
    mean = torch.empty(D, **f32)
    scale = torch.empty(D, **f32)
    diag = torch.empty(D, **f32)
    if "stats_split" in cfg:
        s_chunk = triton.cdiv(triton.cdiv(n, cfg["stats_split"]), cfg["stats_block_k"]) * cfg["stats_block_k"]
        s_split = triton.cdiv(n, s_chunk)
    else:
        s_chunk, s_split = _split(
            n, triton.cdiv(D, sbc), cfg["stats_block_k"], cfg["target_programs"], cfg["stats_min_chunk"]
        )
    off64 = off64 or s_split * D >= 2**31 - 1
    fused = s_split == 1
    if fused:
        pmean = pm2 = mean
    else:
        pmean = torch.empty(s_split, D, **f32)
        pm2 = torch.empty(s_split, D, **f32)
    _col_stats_kernel[(triton.cdiv(D, sbc), s_split)](
        x,
        pmean,
        pm2,
        mean,
        scale,
        diag,
        loss_parts,
        n,
        D,
        S,
        sn,
        ss,
        sc,
        s_chunk,
        inv_nprime,
        eps,
        loss_factor,
        CORR=correlation,
        FUSED=fused,
        DIAG_LOSS=route_n,
        BLOCK_K=cfg["stats_block_k"],
        BLOCK_C=sbc,
        OFF64=off64,
        num_warps=4,
    )
    if not fused:
        _col_stats_combine_kernel[(triton.cdiv(D, sbc),)](
            pmean,
            pm2,
            mean,
            scale,
            diag,
            loss_parts,
            n,
            D,
            s_chunk,
            s_split,
            inv_nprime,
            eps,
            loss_factor,
            CORR=correlation,
            DIAG_LOSS=route_n,
            BLOCK_C=sbc,
            num_warps=4,
        )

    # ---- 2. Gram matrix (+ P partials, r / diag(K'))
    gram_parts = loss_parts[n_stat_parts:]
    if atomic:
        gram = torch.zeros(G, L, L, **f32)
    else:
        gram = torch.empty(G, L, L, device=device, dtype=ddt)
    r_parts = 0
    if route_n:
        kdiag = torch.empty(G, n, **f32)
        rpart = kdiag  # unused
    else:
        kdiag = mean  # unused
        r_parts = (1 if atomic else T) if correlation else 0
        rpart = torch.empty(G, r_parts, g, **f32) if correlation else mean
    _gram_kernel[(n_tri, n_split, G)](
        x,
        mean,
        scale,
        gram,
        rpart,
        kdiag,
        gram_parts,
        n,
        g,
        S,
        sn,
        ss,
        sc,
        T,
        chunk,
        inv_nprime,
        loss_factor,
        ROUTE_N=route_n,
        CORR=correlation,
        ATOMIC=atomic,
        **dots,
        BLOCK=gb,
        BLOCK_R=cfg["gram_block_r"],
        OFF64=off64,
        num_warps=cfg["gram_warps"],
        num_stages=ns,
    )
    if atomic:
        _gram_finish_kernel[(triton.cdiv(L, fin_block), G)](
            gram,
            rpart,
            kdiag,
            gram_parts,
            L,
            loss_factor,
            ROUTE_N=route_n,
            CORR=correlation,
            BLOCK=fin_block,
            BLOCK_C=fin_block,
            OFF64=off64,
            num_warps=4,
        )
    if grad is None:
        return loss_parts.sum()

    # ---- 3. gradient (its program 0 also sums the loss partials into `loss`)
    loss = torch.empty((), **f32)
    bm, bn = cfg["grad_block_m"], cfg["grad_block_n"]
    if not route_n:
        grid = (triton.cdiv(n, bm) * triton.cdiv(g, bn), G)
        _grad_d_kernel[grid](
            x,
            grad,
            mean,
            scale,
            gram,
            rpart,
            loss_parts,
            n_parts,
            loss,
            n,
            g,
            S,
            sn,
            ss,
            sc,
            gsn,
            gss,
            gsc,
            r_parts,
            coef,
            CORR=correlation,
            **dots,
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_J=cfg["grad_block_j"],
            GROUP_M=cfg["group_m"],
            OFF64=off64,
            num_warps=cfg["grad_warps"],
            num_stages=ns,
        )
        return loss
    row_loop = bool(cfg["kz_row_loop"])
    tm = triton.cdiv(n, bm)
    two_pass = correlation and not row_loop
    rpart_n = torch.empty(tm, D, **f32) if two_pass else mean
    grid = (triton.cdiv(g, bn) if row_loop else tm * triton.cdiv(g, bn), G)
    _kz_kernel[grid](
        x,
        grad,
        mean,
        scale,
        diag,
        gram,
        kdiag,
        rpart_n,
        loss_parts,
        n_parts,
        loss,
        n,
        g,
        D,
        S,
        sn,
        ss,
        sc,
        gsn,
        gss,
        gsc,
        inv_nprime,
        coef,
        CORR=correlation,
        ROW_LOOP=row_loop,
        SUM_LOSS=not two_pass,
        **dots,
        BLOCK_M=bm,
        BLOCK_F=bn,
        BLOCK_L=cfg["grad_block_j"],
        GROUP_M=cfg["group_m"],
        OFF64=off64,
        num_warps=cfg["grad_warps"],
        num_stages=ns,
    )
    if two_pass:
        _finish_n_kernel[(triton.cdiv(n, fin_block), triton.cdiv(D, fin_block))](
            x,
            grad,
            mean,
            scale,
            rpart_n,
            loss_parts,
            n_parts,
            loss,
            n,
            D,
            S,
            sn,
            ss,
            sc,
            gsn,
            gss,
            gsc,
            tm,
            coef,
            BLOCK_M=fin_block,
            BLOCK_C=fin_block,
            OFF64=off64,
            num_warps=4,
        )
    return loss
