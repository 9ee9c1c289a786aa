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
   Chan's formula across chunks) -> mean, s, diag(M). In correlation mode the sum of squares
   is taken in units of a power of two a of the column's largest |x| (exact scaling), so
   features beyond sqrt(max float) give s = rsqrt(C' + eps / a^2) / a instead of overflowing.
2. ``_gram_kernel``: the symmetric Gram matrix of Z tiles, upper-triangle tiles only.
   Route D (n >= g): M = Z^T Z / n' (g x g per group); route N (n < g): K' = Z Z^T / n'
   (n x n per group). Without split: the epilogue writes the P partial of the tile, the row
   sums of squared off-diagonals (route D, correlation), diag(K') (route N) and the Gram matrix
   with its diagonal zeroed, in the dot dtype. With a split of the reduction axis over programs
   (few tiles and enough work: small g in route D, small n in route N): fp32 atomics into a
   zeroed buffer, and ``_gram_finish_kernel`` does that epilogue afterwards.
3. Route D: ``_grad_d_kernel``: grad = c * s * (Z @ Moff - Z * r), epilogue fused.
   Route N: ``_kz_kernel``: W^T = Z^T K' - diag(M) Z^T (= (Z Moff)^T; K' is symmetric, so its
   tiles are the operand read straight from memory), held in fp32 registers and never stored:
   |W| reaches (g - 1) |Z|, beyond fp16's range. Correlation mode needs r_i = sum_k Z_ki W_ki / n'
   before the final c * s * (W - Z * r), so W is computed twice: with ``kz_row_loop`` one program
   per feature tile walks all the rows twice (r, then the gradient); otherwise a first launch
   (PASS 0) writes per-row-tile r partials and a second (PASS 1) recomputes W and writes the
   gradient. Covariance mode (r = 0, s = 1) writes c * W in one pass.

Every dot loop is a ``tl.range(..., num_stages=NUM_STAGES)`` over plain loads, which Triton's
software pipeliner stages through shared memory with async copies. In the route D Gram with
``RAW_B`` (x's dtype is the dot dtype) the second operand goes from memory to the tensor cores
unconverted and its centring is applied in the epilogue: sum_k a_ki (x_kj - mu_j) s_j =
(acc_ij - (sum_k a_ki) mu_j) s_j, with the column sums of the rounded first operand in fp32.

The host side caches a launch plan per (shape, strides, dtype, device, options, config): tiles,
grids, kernel arguments, and the layout of one fp32 workspace (loss, loss partials, column
statistics, r partials); a call allocates that workspace and the Gram matrix and launches.

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

__all__ = ["decorrelation_forward_backward", "select_config", "dot_dtype", "clear_plan_cache", "INTERPRET"]

# Fixed when this module is imported, like triton.jit's own choice of the interpreter.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    """[rows, cols] tile as stored, zero outside the masks (a dot operand read straight from
    memory: the software pipeliner stages it in shared memory with async copies)."""
    return tl.load(x_ptr + row_off[:, None] + col_off[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)


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
def _power_of_two_scale(max_abs):
    """The power of two a with a <= max_abs < 2a, clamped to [1, 2^126] (fp32), and 1/a, both exact
    (exponent bits only): correlation-mode statistics in units of a cannot overflow, and are the
    plain ones bit for bit wherever those do not."""
    m = tl.minimum(tl.maximum(max_abs, 1.0), 8.507059173023462e37)  # 2^126
    bits = m.to(tl.int32, bitcast=True) & 0x7F800000
    return bits.to(tl.float32, bitcast=True), (0x7F000000 - bits).to(tl.float32, bitcast=True)


@triton.jit
def _finalize_stats(
    cols,
    cmask,
    mean,
    m2,
    inv_unit,
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
    var = m2 * inv_nprime  # in units of a (1/a = inv_unit) squared in correlation mode, else plain
    if CORR:
        # s = rsqrt(var' + eps / a^2) / a; a constant column (var' = 0, where eps / a^2 may have
        # underflowed) keeps the plain s = rsqrt(eps), as without units
        varying = var > 0.0
        unit_scale = tl.where(varying, 1.0 / tl.sqrt(var + eps * inv_unit * inv_unit), 1.0 / tl.sqrt(var + eps))
        scale = tl.where(varying, unit_scale * inv_unit, unit_scale)
        diag = var * unit_scale * unit_scale
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
    punit_ptr,
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
    peak = tl.zeros((BLOCK_K, BLOCK_C), tl.float32)
    for k0 in range(start, end, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        mask = (rows < end)[:, None] & cmask[None, :]
        ptrs = x_ptr + _row_offsets(rows, S, stride_n, stride_s, OFF64)[:, None] + col_off[None, :]
        v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        acc += v
        if CORR:
            peak = tl.maximum(peak, tl.abs(v))
    mean = tl.sum(acc, axis=0) / count
    # correlation mode: the centred sum of squares in units of a power of two a (exact), which
    # cannot overflow for features beyond sqrt(max float); covariance mode: a = 1
    unit, inv_unit = _power_of_two_scale(tl.max(peak, axis=0))
    acc = tl.zeros((BLOCK_K, BLOCK_C), tl.float32)
    for k0 in range(start, end, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        mask = (rows < end)[:, None] & cmask[None, :]
        ptrs = x_ptr + _row_offsets(rows, S, stride_n, stride_s, OFF64)[:, None] + col_off[None, :]
        v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, (v - mean[None, :]) * inv_unit[None, :], 0.0)
        acc += d * d
    m2 = tl.sum(acc, axis=0)
    if FUSED:
        _finalize_stats(
            cols,
            cmask,
            mean,
            m2,
            inv_unit,
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
        if CORR:
            tl.store(punit_ptr + split * D + cols, unit, mask=cmask)


@triton.jit
def _col_stats_combine_kernel(
    pmean_ptr,
    pm2_ptr,
    punit_ptr,
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
    """Chan's parallel combination of the per-chunk (mean, M2) of every column; in correlation
    mode each chunk's M2 is in units of its own power of two a_s, brought to the largest, A."""
    pid_c = tl.program_id(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < D
    total = tl.zeros((BLOCK_C,), tl.float32)
    unit = tl.full((BLOCK_C,), 1.0, tl.float32)
    for s in range(n_split):
        cnt = tl.minimum(chunk, n - s * chunk).to(tl.float32)
        total += cnt * tl.load(pmean_ptr + s * D + cols, mask=cmask, other=0.0)
        if CORR:
            unit = tl.maximum(unit, tl.load(punit_ptr + s * D + cols, mask=cmask, other=1.0))
    mean = total / n
    _, inv_unit = _power_of_two_scale(unit)
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for s in range(n_split):
        cnt = tl.minimum(chunk, n - s * chunk).to(tl.float32)
        d = (tl.load(pmean_ptr + s * D + cols, mask=cmask, other=0.0) - mean) * inv_unit
        part = tl.load(pm2_ptr + s * D + cols, mask=cmask, other=0.0)
        if CORR:
            ratio = tl.load(punit_ptr + s * D + cols, mask=cmask, other=1.0) * inv_unit  # a_s / A, a power of two
            part = part * ratio * ratio
        m2 += part + cnt * d * d
    _finalize_stats(
        cols,
        cmask,
        mean,
        m2,
        inv_unit,
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
    RAW_B: tl.constexpr,
    NUM_STAGES: tl.constexpr,
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
        for f0 in tl.range(r_start, r_end, BLOCK_R, num_stages=NUM_STAGES):
            cf = f0 + tl.arange(0, BLOCK_R)
            mf = cf < r_end
            coff = _wide((col0 + cf), OFF64) * stride_c
            mean_f = tl.load(mean_ptr + col0 + cf, mask=mf, other=0.0)
            scale_f = tl.load(scale_ptr + col0 + cf, mask=mf, other=0.0)
            a = _z_tile(x_ptr, roff_i, mi, coff, mf, mean_f, scale_f)
            b = _z_tile(x_ptr, roff_j, mj, coff, mf, mean_f, scale_f)
            acc = _mma(a, tl.trans(b), acc, DOT_DTYPE, PRECISION, CAST_FP32)
    else:
        # M tile: features ci x features cj, reduced over the samples
        mean_i = tl.load(mean_ptr + col0 + ci, mask=mi, other=0.0)
        scale_i = tl.load(scale_ptr + col0 + ci, mask=mi, other=0.0)
        mean_j = tl.load(mean_ptr + col0 + cj, mask=mj, other=0.0)
        scale_j = tl.load(scale_ptr + col0 + cj, mask=mj, other=0.0)
        coff_i = _wide((col0 + ci), OFF64) * stride_c
        coff_j = _wide((col0 + cj), OFF64) * stride_c
        asum = tl.zeros((BLOCK,), tl.float32)
        for k0 in tl.range(r_start, r_end, BLOCK_R, num_stages=NUM_STAGES):
            rows = k0 + tl.arange(0, BLOCK_R)
            mk = rows < r_end
            roff = _row_offsets(rows, S, stride_n, stride_s, OFF64)
            a = _z_tile(x_ptr, roff, mk, coff_i, mi, mean_i, scale_i)
            if RAW_B:  # B straight from memory (no register pass: the wgmma stays asynchronous)
                b = _raw_tile(x_ptr, roff, mk, coff_j, mj)
                a = a.to(DOT_DTYPE)
                asum += tl.sum(a.to(tl.float32), axis=0)
                acc = _mma(tl.trans(a), b, acc, DOT_DTYPE, PRECISION, CAST_FP32)
            else:
                b = _z_tile(x_ptr, roff, mk, coff_j, mj, mean_j, scale_j)
                acc = _mma(tl.trans(a), b, acc, DOT_DTYPE, PRECISION, CAST_FP32)
        if RAW_B:  # sum_k a_ki (x_kj - mu_j) s_j = (acc_ij - asum_i mu_j) s_j
            acc = (acc - asum[:, None] * mean_j[None, :]) * scale_j[None, :]
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
    NUM_STAGES: tl.constexpr,
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
    for j0 in tl.range(0, g, BLOCK_J, num_stages=NUM_STAGES):
        cj = j0 + tl.arange(0, BLOCK_J)
        mj = cj < g
        mean_j = tl.load(mean_ptr + col0 + cj, mask=mj, other=0.0)
        scale_j = tl.load(scale_ptr + col0 + cj, mask=mj, other=0.0)
        z = _z_tile(x_ptr, roff, mr, _wide((col0 + cj), OFF64) * stride_c, mj, mean_j, scale_j)
        mt = _raw_tile(mbase, _wide(cj, OFF64) * g, mj, cn, mn)
        acc = _mma(z, mt, acc, DOT_DTYPE, PRECISION, CAST_FP32)
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
# 3b. route N: W = K' Z - Z diag(M) = Z Moff, r_i = sum_k Z_ki W_ki / n'; c * s * (W - Z r)
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
    NUM_STAGES: tl.constexpr,
    OFF64: tl.constexpr,
):
    """(W^T, Z^T) tiles [features, rows] in fp32: W^T = Z^T K' - diag(M) Z^T, computed as
    Z^T Koff' + (diag(K') - diag(M)) Z^T. K' is symmetric, so its tile [l, rows] is read straight
    from memory as the second dot operand and only Z^T passes through registers."""
    kbase = k_ptr + _wide(grp, OFF64) * n * n
    acc = tl.zeros((BLOCK_F, BLOCK_M), tl.float32)
    for l0 in tl.range(0, n, BLOCK_L, num_stages=NUM_STAGES):
        rl = l0 + tl.arange(0, BLOCK_L)
        ml = rl < n
        z = _z_tile(x_ptr, _row_offsets(rl, S, stride_n, stride_s, OFF64), ml, coff, mf, mean_f, scale_f)
        kt = _raw_tile(kbase, _wide(rl, OFF64) * n, ml, rows, mr)
        acc = _mma(tl.trans(z), kt, acc, DOT_DTYPE, PRECISION, CAST_FP32)
    zr = tl.trans(_z_tile(x_ptr, _row_offsets(rows, S, stride_n, stride_s, OFF64), mr, coff, mf, mean_f, scale_f))
    kd = tl.load(kdiag_ptr + grp * n + rows, mask=mr, other=0.0)
    return acc + zr * (kd[None, :] - dm[:, None]), zr


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
    R_PARTS,
    inv_nprime,
    coef,
    CORR: tl.constexpr,
    ROW_LOOP: tl.constexpr,
    PASS: tl.constexpr,
    SUM_LOSS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_L: tl.constexpr,
    GROUP_M: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    OFF64: tl.constexpr,
):
    """Route N gradient; W stays in fp32 registers (it can exceed the gradient dtype's range:
    |W| reaches (g - 1) |Z|), the gradient buffer only receives c * s * (W - Z r).

    ROW_LOOP: one program per feature tile walks every row tile, twice in correlation mode
    (r first, then W again and the final value). Otherwise one program per (row tile, feature
    tile): PASS 0 writes r partials per row tile (correlation mode), PASS 1 recomputes W and
    writes the gradient (covariance mode: PASS 1 alone, r = 0)."""
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
    gcoff = (_wide((col0 + cf), OFF64) * gstride_c)[:, None]
    mean_f = tl.load(mean_ptr + col0 + cf, mask=mf, other=0.0)
    scale_f = tl.load(scale_ptr + col0 + cf, mask=mf, other=0.0)
    dm = tl.load(diag_ptr + col0 + cf, mask=mf, other=0.0)
    fac = scale_f * coef if CORR else tl.where(mf, coef, 0.0)
    if ROW_LOOP:
        r = tl.zeros((BLOCK_F,), tl.float32)
        if CORR:
            for m0 in range(0, n, BLOCK_M):
                rows = m0 + tl.arange(0, BLOCK_M)
                w, zr = _kz_tile(
                    x_ptr, k_ptr, kdiag_ptr, rows, rows < n, grp, n, S, stride_n, stride_s, coff, mf, mean_f,
                    scale_f, dm, DOT_DTYPE, PRECISION, CAST_FP32, BLOCK_M, BLOCK_F, BLOCK_L, NUM_STAGES, OFF64,
                )  # fmt: skip
                r += tl.sum(zr * w, axis=1)
            r = r * inv_nprime
        for m0 in range(0, n, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            mr = rows < n
            w, zr = _kz_tile(
                x_ptr, k_ptr, kdiag_ptr, rows, mr, grp, n, S, stride_n, stride_s, coff, mf, mean_f,
                scale_f, dm, DOT_DTYPE, PRECISION, CAST_FP32, BLOCK_M, BLOCK_F, BLOCK_L, NUM_STAGES, OFF64,
            )  # fmt: skip
            out = (w - zr * r[:, None]) * fac[:, None]
            gptrs = grad_ptr + _row_offsets(rows, S, gstride_n, gstride_s, OFF64)[None, :] + gcoff
            tl.store(gptrs, out.to(grad_ptr.dtype.element_ty), mask=mf[:, None] & mr[None, :])
    else:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mr = rows < n
        w, zr = _kz_tile(
            x_ptr, k_ptr, kdiag_ptr, rows, mr, grp, n, S, stride_n, stride_s, coff, mf, mean_f,
            scale_f, dm, DOT_DTYPE, PRECISION, CAST_FP32, BLOCK_M, BLOCK_F, BLOCK_L, NUM_STAGES, OFF64,
        )  # fmt: skip
        if PASS == 0:
            tl.store(rpart_ptr + _wide(pid_m, OFF64) * D + col0 + cf, tl.sum(zr * w, axis=1) * inv_nprime, mask=mf)
        else:
            r = tl.zeros((BLOCK_F,), tl.float32)
            rp = rpart_ptr + col0 + cf
            for _ in range(R_PARTS):
                r += tl.load(rp, mask=mf, other=0.0)
                rp += D  # 64-bit pointer arithmetic: no int32 product of the part index and D
            out = (w - zr * r[:, None]) * fac[:, None]
            gptrs = grad_ptr + _row_offsets(rows, S, gstride_n, gstride_s, OFF64)[None, :] + gcoff
            tl.store(gptrs, out.to(grad_ptr.dtype.element_ty), mask=mf[:, None] & mr[None, :])
    if SUM_LOSS:  # the last kernel of the forward
        if (tl.program_id(0) == 0) & (grp == 0):
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


_OVERRIDE_ONLY = ("gram_split", "stats_split", "off64")


def select_config(
    n: int,
    g: int,
    groups: int,
    dtype: torch.dtype,
    device: torch.device,
    interpret: bool = INTERPRET,
    correlation: bool = True,
) -> dict:
    """Tile sizes, warps, stages and split policy for one problem (n samples, groups of g
    features, x's dtype).

    Keys: ``stats_block_k/_c`` (rows x columns of the statistics tiles), ``gram_block`` (Gram
    tile edge), ``gram_block_r`` (reduction step of the Gram dot), ``grad_block_m/_n/_j``
    (rows, output features, reduction step of the gradient dot), ``fin_block`` (elementwise
    tiles), ``gram_warps``/``grad_warps``/``num_stages`` (the dot kernels; ``num_stages`` is the
    software-pipelining depth of their loops), ``group_m`` (L2 swizzle), ``target_programs``
    (split the Gram reduction until about this many programs), ``stats_min_chunk`` and
    ``gram_min_chunk`` (shortest split), ``min_split_work`` (no Gram split below this many
    multiply-adds: small problems are launch bound), ``kz_row_loop`` (route N: one program per
    feature tile finishes the gradient itself), ``gram_maxnreg``/``grad_maxnreg`` (register cap per
    thread of the dot kernels, None: ptxas decides), ``raw_b`` (route D Gram: the second dot operand
    is read straight from memory and centred in the epilogue, so only the first passes through
    registers; only where x's dtype is the dot dtype). Accepted as overrides only (the
    ``config=`` argument of :func:`decorrelation_forward_backward`): ``gram_split`` and
    ``stats_split`` (force that many chunks), ``off64`` (force 64-bit offsets).

    Under the interpreter one small config serves every shape. On a GPU the rules key on the
    route (n < g), the Gram size and whether the data is 16-bit; every dot-loop variant they
    produce for the target shapes compiles for sm_90 without spills (bench/compile_check.py).
    """
    route_n = n < g
    half = dtype != torch.float32
    ddt = dot_dtype(dtype, correlation, g)
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
            raw_b=False,
            gram_maxnreg=None,
            grad_maxnreg=None,
        )
    else:
        L = n if route_n else g
        gb = 128 if L >= 2048 else 64
        cfg = dict(
            stats_block_k=64,
            stats_block_c=64,
            gram_block=gb,
            gram_block_r=64 if half else 32,
            gram_warps=8 if gb == 128 else 4,
            fin_block=64,
            num_stages=3 if half else 2,
            group_m=8,
            stats_min_chunk=512,
            gram_min_chunk=256,
            target_programs=2 * sms,
            min_split_work=1 << 26,
            raw_b=half and ddt == dtype,
            gram_maxnreg=None,
            grad_maxnreg=None,
        )
        if route_n:  # Z^T K': 64 features x 64 sample rows per program, one warpgroup (2-3 blocks per SM)
            cfg.update(grad_block_m=64, grad_block_n=64, grad_block_j=64 if half else 32, grad_warps=4)
        else:  # Z Moff: 128 x 128 output tiles on two warpgroups; 128 x 64 on one where g < 128
            wide = g >= 128
            cfg.update(
                grad_block_m=128 if n >= 128 else 64,
                grad_block_n=128 if wide else 64,
                grad_block_j=64 if half else 32,
                grad_warps=8 if wide else 4,
            )
    bn = cfg["grad_block_n"]
    cfg["kz_row_loop"] = route_n and (n <= 256 or triton.cdiv(g, bn) * groups >= sms)
    return cfg


class _Buf:
    """A placeholder in a launch plan: a slice of the per-call fp32 workspace (or the Gram buffer)."""

    __slots__ = ("name", "start", "shape")

    def __init__(self, name, start=0, shape=()):
        self.name, self.start, self.shape = name, start, shape


class _Plan:
    """Everything a call does that depends only on its key: buffer sizes and the launches."""

    __slots__ = ("ws_numel", "gram_shape", "gram_dtype", "gram_zero", "loss_at", "launches", "starts", "steps")

    def __init__(self):
        self.ws_numel = 0
        self.launches = []

    def buf(self, numel, shape=None):
        b = _Buf("ws", self.ws_numel, tuple(shape) if shape else (numel,))
        self.ws_numel += max(int(numel), 0)
        return b


_PLANS: dict = {}
_PLAN_CACHE_SIZE = 512


def clear_plan_cache() -> None:
    """Forget every cached launch plan (tests and tuning tools that patch the module use it)."""
    _PLANS.clear()


def _make_plan(ncs, strides, grad_strides, dtype, device, correlation, mean_reduction, correction, groups, eps, config):
    N, C, S = ncs
    n = N * S
    D = C
    G = groups
    g = D // G
    nprime = n - correction
    cfg = select_config(n, g, G, dtype, device, correlation=correlation)
    if config:
        unknown = sorted(set(config) - set(cfg) - set(_OVERRIDE_ONLY))
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; expected keys of select_config() or {_OVERRIDE_ONLY}")
        cfg.update(config)
    route_n = n < g
    inv_nprime = 1.0 / nprime
    loss_factor = 1.0 / (G * g * (g - 1)) if mean_reduction else 1.0
    coef = 4.0 * inv_nprime * loss_factor
    ddt = dot_dtype(dtype, correlation, g)
    precision = "tf32x3" if ddt == torch.float32 else "tf32"  # the latter is ignored for 16-bit dots
    sn, sc, ss = strides
    with_grad = grad_strides is not None
    gsn, gsc, gss = grad_strides if with_grad else (0, 0, 0)
    ns = cfg["num_stages"]
    dots = dict(DOT_DTYPE=_TL_DTYPES[ddt], PRECISION=precision, CAST_FP32=INTERPRET)
    plan = _Plan()
    X, GRAD, GRAM = _Buf("x"), _Buf("grad"), _Buf("gram")

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
    raw_b = bool(cfg["raw_b"]) and not route_n and ddt == dtype

    # ---- int32 offsets unless some tensor spans 2^31 elements
    def span(shape, st):
        return 1 + sum((size - 1) * abs(stride) for size, stride in zip(shape, st))

    bm, bn = cfg["grad_block_m"], cfg["grad_block_n"]
    tm = triton.cdiv(n, bm)
    spans = [span(ncs, strides), G * L * L, (T + 1) * D, (tm + 1) * D]
    if with_grad:
        spans.append(span(ncs, grad_strides))
    sbc = cfg["stats_block_c"]
    if "stats_split" in cfg:
        s_chunk = triton.cdiv(triton.cdiv(n, cfg["stats_split"]), cfg["stats_block_k"]) * cfg["stats_block_k"]
        s_split = triton.cdiv(n, s_chunk)
    else:
        s_chunk, s_split = _split(
            n, triton.cdiv(D, sbc), cfg["stats_block_k"], cfg["target_programs"], cfg["stats_min_chunk"]
        )
    spans.append(s_split * D)
    off64 = bool(cfg.get("off64", max(spans) >= 2**31 - 1))

    # ---- fp32 workspace: loss, loss partials, column statistics, r partials, diag(K')
    loss = plan.buf(1, ())
    plan.loss_at = loss.start
    n_stat_parts = triton.cdiv(D, sbc) if route_n else 0
    n_gram_parts = G * (triton.cdiv(L, fin_block) if atomic else n_tri)
    n_parts = n_stat_parts + n_gram_parts
    loss_parts = plan.buf(n_parts)
    gram_parts = _Buf("ws", loss_parts.start + n_stat_parts, (n_gram_parts,))
    mean, scale, diag = plan.buf(D), plan.buf(D), plan.buf(D)
    fused = s_split == 1
    pmean = pm2 = punit = mean
    if not fused:
        pmean, pm2 = plan.buf(s_split * D), plan.buf(s_split * D)
        punit = plan.buf(s_split * D) if correlation else mean
    r_parts = 0
    if route_n:
        kdiag = plan.buf(G * n)
        rpart = kdiag  # unused
    else:
        kdiag = mean  # unused
        r_parts = (1 if atomic else T) if correlation else 0
        rpart = plan.buf(G * r_parts * g) if correlation else mean
    row_loop = route_n and bool(cfg["kz_row_loop"])
    two_pass = with_grad and route_n and correlation and not row_loop
    rpart_n = plan.buf(tm * D) if two_pass else mean
    plan.gram_shape = (G, L, L)
    plan.gram_dtype = torch.float32 if atomic else ddt
    plan.gram_zero = atomic

    # register caps (ptxas .maxnreg) of the dot kernels, where the config sets one
    gram_regs = {"maxnreg": cfg["gram_maxnreg"]} if cfg.get("gram_maxnreg") and not INTERPRET else {}
    grad_regs = {"maxnreg": cfg["grad_maxnreg"]} if cfg.get("grad_maxnreg") and not INTERPRET else {}

    def launch(kernel, grid, *args, **kwargs):
        plan.launches.append((kernel, tuple(int(v) for v in grid), args, kwargs))

    # ---- 1. column statistics
    launch(
        "_col_stats_kernel",
        (triton.cdiv(D, sbc), s_split),
        X, pmean, pm2, punit, mean, scale, diag, loss_parts, n, D, S, sn, ss, sc, s_chunk, inv_nprime, eps, loss_factor,
        CORR=correlation, FUSED=fused, DIAG_LOSS=route_n, BLOCK_K=cfg["stats_block_k"], BLOCK_C=sbc, OFF64=off64,
        num_warps=4,
    )  # fmt: skip
    if not fused:
        launch(
            "_col_stats_combine_kernel",
            (triton.cdiv(D, sbc),),
            pmean, pm2, punit, mean, scale, diag, loss_parts, n, D, s_chunk, s_split, inv_nprime, eps, loss_factor,
            CORR=correlation, DIAG_LOSS=route_n, BLOCK_C=sbc, num_warps=4,
        )  # fmt: skip

    # ---- 2. Gram matrix (+ P partials, r / diag(K'))
    launch(
        "_gram_kernel",
        (n_tri, n_split, G),
        X, mean, scale, GRAM, rpart, kdiag, gram_parts, n, g, S, sn, ss, sc, T, chunk, inv_nprime, loss_factor,
        ROUTE_N=route_n, CORR=correlation, ATOMIC=atomic, **dots, BLOCK=gb, BLOCK_R=cfg["gram_block_r"],
        RAW_B=raw_b, NUM_STAGES=ns, OFF64=off64, num_warps=cfg["gram_warps"], num_stages=ns, **gram_regs,
    )  # fmt: skip
    if atomic:
        launch(
            "_gram_finish_kernel",
            (triton.cdiv(L, fin_block), G),
            GRAM, rpart, kdiag, gram_parts, L, loss_factor,
            ROUTE_N=route_n, CORR=correlation, BLOCK=fin_block, BLOCK_C=fin_block, OFF64=off64, num_warps=4,
        )  # fmt: skip
    if not with_grad:
        plan.loss_at = None  # the loss is the sum of the partials
        plan.launches.append(("sum", loss_parts))
        return plan

    # ---- 3. gradient (its program 0 also sums the loss partials into `loss`)
    if not route_n:
        launch(
            "_grad_d_kernel",
            (tm * triton.cdiv(g, bn), G),
            X, GRAD, mean, scale, GRAM, rpart, loss_parts, n_parts, loss, n, g, S, sn, ss, sc, gsn, gss, gsc,
            r_parts, coef,
            CORR=correlation, **dots, BLOCK_M=bm, BLOCK_N=bn, BLOCK_J=cfg["grad_block_j"], GROUP_M=cfg["group_m"],
            NUM_STAGES=ns, OFF64=off64, num_warps=cfg["grad_warps"], num_stages=ns, **grad_regs,
        )  # fmt: skip
        return plan
    grid = (triton.cdiv(g, bn) if row_loop else tm * triton.cdiv(g, bn), G)
    for pass_ in (0, 1) if two_pass else (1,):
        launch(
            "_kz_kernel",
            grid,
            X, GRAD, mean, scale, diag, GRAM, kdiag, rpart_n, loss_parts, n_parts, loss, n, g, D, S, sn, ss, sc,
            gsn, gss, gsc, tm if two_pass else 0, inv_nprime, coef,
            CORR=correlation, ROW_LOOP=row_loop, PASS=pass_, SUM_LOSS=pass_ == 1, **dots, BLOCK_M=bm, BLOCK_F=bn,
            BLOCK_L=cfg["grad_block_j"], GROUP_M=cfg["group_m"], NUM_STAGES=ns, OFF64=off64,
            num_warps=cfg["grad_warps"], num_stages=ns, **grad_regs,
        )  # fmt: skip
    return plan


def _compile_plan(plan: _Plan) -> None:
    """Turn the launches' placeholders into slots of one per-call buffer list: [x, grad, gram,
    then one workspace view per distinct offset] (kernels only use a buffer's data pointer)."""
    starts = sorted(
        {a.start for e in plan.launches if e[0] != "sum" for a in e[2] if a.__class__ is _Buf and a.name == "ws"}
    )
    slot_of = {s_: 3 + i for i, s_ in enumerate(starts)}
    fixed = {"x": 0, "grad": 1, "gram": 2}
    steps = []
    for entry in plan.launches:
        if entry[0] == "sum":
            b = entry[1]
            steps.append(("sum", b.start, b.shape[0], (), None))
            continue
        name, grid, args, kwargs = entry
        template = list(args)
        slots = []
        for i, a in enumerate(args):
            if a.__class__ is _Buf:
                slots.append((i, fixed[a.name] if a.name != "ws" else slot_of[a.start]))
                template[i] = None
        steps.append((name, grid, template, tuple(slots), kwargs))
    plan.starts = starts
    plan.steps = steps


def _run_plan(plan: _Plan, x: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    device = x.device
    ws = torch.empty(plan.ws_numel, device=device, dtype=torch.float32)
    shape, dtype = plan.gram_shape, plan.gram_dtype
    if plan.gram_zero:
        gram = torch.zeros(shape, device=device, dtype=dtype)
    else:
        gram = torch.empty(shape, device=device, dtype=dtype)
    bufs = [x, grad, gram]
    bufs += [ws[s_:] for s_ in plan.starts]
    module = globals()
    for name, grid, template, slots, kwargs in plan.steps:
        if name == "sum":  # loss only: the sum of the partials
            return ws.narrow(0, grid, template).sum()
        args = template.copy()
        for i, j in slots:
            args[i] = bufs[j]
        module[name][grid](*args, **kwargs)
    return ws[plan.loss_at]


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
        config: entries merged over :func:`select_config`'s choice for this call (tile sizes,
            forced splits; tests and tuning use it). Unknown keys raise ValueError.

    Returns:
        The penalty, a 0-dim float32 tensor on x's device (no host synchronisation).

    The launch plan (tiles, grids, buffer layout, kernel arguments) is cached per shape,
    strides, dtype, device, options and ``config``; a call then makes three allocations (an fp32
    workspace, the Gram matrix, nothing else besides the caller's ``grad``) and its launches.
    Launches run on x's device (a device guard switches to it when it is not the current one).
    """
    key = (
        tuple(ncs),
        tuple(strides),
        tuple(grad_strides) if grad is not None else None,
        x.dtype,
        x.device,
        bool(correlation),
        bool(mean_reduction),
        int(correction),
        int(groups),
        float(eps),
        tuple(sorted(config.items())) if config else (),
        select_config,  # tools that patch the tile rules or the SM count get fresh plans
        _sm_count,
    )
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _PLAN_CACHE_SIZE:
            _PLANS.clear()
        plan = _make_plan(
            ncs, strides, key[2], x.dtype, x.device, correlation, mean_reduction, correction, groups, eps, config
        )
        _compile_plan(plan)
        _PLANS[key] = plan
    device = x.device
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            return _run_plan(plan, x, grad)
    return _run_plan(plan, x, grad)
