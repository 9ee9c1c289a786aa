"""CUDA kernels of batched saliency masking against the CPU op and the reference.

Masks must equal the CPU op's bit for bit. The uniform fill on CUDA draws inside the kernel
(Philox4x32-10 of the generator's seed and offset, per element index), so its fill values differ
from the CPU op's; they are compared with a NumPy model of the same draws instead.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdecor.ops.masking import extension as _extension
from sdecor.ops.masking.dispatch import mask_features
from sdecor.ops.masking.reference import mask_select_reference

ROOT = str(pathlib.Path(__file__).resolve().parents[2])  # the repository root
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture
def dev():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not _extension.has_cuda():
        pytest.skip(f"sdecor._C built without its CUDA part ({_extension.load_error()})")
    return torch.device("cuda")


# ----------------------------------------------------------------------------- the draws' model

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_LOW = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """Philox4x32-10 on arrays of 32-bit words held in uint64: counter (4 arrays), key (2 arrays)."""
    c = [np.asarray(v, dtype=np.uint64) & _LOW for v in counter]
    k0, k1 = (np.asarray(v, dtype=np.uint64) & _LOW for v in key)
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _LOW, (k1 + _W1) & _LOW
        p0, p1 = _M0 * c[0], _M1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _LOW, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _LOW]
    return c


def kernel_draws(seed: int, offset: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The uniform draw of elements 0..n-1 for (seed, offset), as csrc/cuda/mask_kernels.h states."""
    e = np.arange(n, dtype=np.uint64)
    ctr = np.uint64(offset // 4)
    r = philox4x32_10(
        (np.full(n, ctr & _LOW), np.full(n, ctr >> np.uint64(32)), e & _LOW, e >> np.uint64(32)),
        (np.full(n, np.uint64(seed) & _LOW), np.full(n, np.uint64(seed) >> np.uint64(32))),
    )
    if dtype == torch.float64:
        bits = (r[0] << np.uint64(32)) | r[1]
        return torch.from_numpy((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53)
    return torch.from_numpy((r[0] >> np.uint64(8)).astype(np.float32) * np.float32(2.0**-24))


def test_philox_model_known_answers():
    """The model against Random123's known-answer vectors of Philox4x32-10."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        assert [int(v) for v in philox4x32_10(counter, key)] == list(expected)


def expected_uniform_fill(x: torch.Tensor, mask: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """x with masked elements replaced by lo + scale * u (op-math dtype, two roundings)."""
    x = x.detach().cpu()
    B = x.shape[0]
    C = x.shape[1] if x.ndim >= 3 else 1
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x.reshape(B, C, -1).to(opmath)
    lo, hi = rows.amin(dim=2, keepdim=True), rows.amax(dim=2, keepdim=True)
    u = kernel_draws(seed, offset, x.numel(), opmath).view(B, C, -1)
    fill = (lo + (hi - lo) * u).to(x.dtype)
    m = mask.cpu().reshape(B, 1, -1) if mask[0].numel() != x[0].numel() else mask.cpu().reshape(B, C, -1)
    return torch.where(m, fill, x.reshape(B, C, -1)).view(x.shape)


# ----------------------------------------------------------------------------- agreement


def tied(shape, dtype, seed=0, levels=3):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-levels, levels + 1, shape, generator=g).to(dtype)
    return torch.where((s == 0) & (torch.rand(shape, generator=g) < 0.5), torch.tensor(-0.0, dtype=dtype), s)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pixel", [True, False])
def test_masks_equal_cpu_and_fills_match_the_model(dev, dtype, pixel):
    B, C, H, W = 5, 3, 19, 23
    x = torch.randn(B, C, H, W, dtype=dtype)
    shape = (B, H, W) if pixel else (B, C, H, W)
    F = H * W if pixel else C * H * W
    for s in (tied(shape, dtype, seed=1), torch.rand(shape).to(dtype)):
        for largest in (False, True):
            for k in (0, 1, 0.3, F - 1, F, torch.tensor([0, 1, F // 2, F - 1, F])):
                kd = k.to(dev) if isinstance(k, torch.Tensor) else k
                ref_mask = mask_features(x, s, k, largest=largest, fill=0.25)[1]  # the CPU op
                for fill in (0.25, "mean"):  # the same torch expression on the same device
                    out, mask = mask_features(x.to(dev), s.to(dev), kd, largest=largest, fill=fill, backend="cuda")
                    assert torch.equal(mask.cpu(), ref_mask), (k, largest)
                    want = mask_features(x.to(dev), s.to(dev), kd, largest=largest, fill=fill, backend="reference")
                    assert torch.equal(out, want[0]), (k, fill)
                g = torch.Generator(device=dev).manual_seed(1234)
                seed, offset = g.initial_seed(), g.get_offset()
                out, mask = mask_features(x.to(dev), s.to(dev), kd, largest=largest, generator=g, backend="cuda")
                assert torch.equal(mask.cpu(), ref_mask)
                assert g.get_offset() == offset + 4  # one Philox increment per call
                assert torch.equal(out.cpu(), expected_uniform_fill(x, ref_mask, seed, offset)), (k, largest)


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("B", "F"),
    [
        (1, 150_528),  # one sample spread over many blocks
        (3, 50_176),
        (256, 50_176),  # more samples than groups in flight: the groups loop
        (2, 9_000_000),  # rows longer than the co-resident blocks can stage: the fallback kernel
    ],
)
def test_select_sizes_equal_reference(dev, B, F):
    g = torch.Generator(device=dev).manual_seed(B)
    s = torch.rand(B, F, device=dev, generator=g)
    s[B // 2 :] = torch.floor(s[B // 2 :] * 7)  # heavy ties in half of the rows
    k = torch.randint(0, F + 1, (B,), device=dev, generator=g)
    k[0] = F // 2
    for largest in (False, True):
        got = torch.ops.sdecor.mask_select(s, k, largest)
        assert torch.equal(got, mask_select_reference(s, k, largest))


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(1, 1, 3_000_000), (2, 3, 224, 224), (64, 3, 32, 32), (7, 100)])
def test_fill_sizes_match_the_model(dev, shape):
    """Fused path and, for (1, 1, 3e6) (more blocks per sample than fit at once), the fallback."""
    g = torch.Generator(device=dev).manual_seed(7)
    x = torch.randn(shape, device=dev, generator=g)
    mask = torch.rand(shape[0], x[0].numel(), device=dev, generator=g) < 0.5
    seed, offset = g.initial_seed(), g.get_offset()
    out = torch.ops.sdecor.mask_fill_random(x, mask, g)
    assert torch.equal(out.cpu(), expected_uniform_fill(x, mask, seed, offset))


@pytest.mark.cuda
def test_nan_in_x_propagates_to_its_channel(dev):
    x = torch.randn(2, 3, 8, 8, device=dev)
    x[1, 2, 3, 3] = float("nan")
    mask = torch.ones(2, 64, dtype=torch.bool, device=dev)
    out = torch.ops.sdecor.mask_fill_random(x, mask, None)
    assert torch.isnan(out[1, 2]).all() and not torch.isnan(out[0]).any() and not torch.isnan(out[1, :2]).any()


@pytest.mark.cuda
def test_generator_repeatability_and_gradient(dev):
    x = torch.randn(4, 3, 16, 16, device=dev, requires_grad=True)
    s = torch.rand(4, 16, 16, device=dev)
    a, mask = mask_features(x, s, 0.5, generator=torch.Generator(device=dev).manual_seed(3))
    b, _ = mask_features(x, s, 0.5, generator=torch.Generator(device=dev).manual_seed(3))
    c, _ = mask_features(x, s, 0.5, generator=torch.Generator(device=dev).manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert torch.equal(x.grad, (~mask).unsqueeze(1).float().expand_as(x))


@pytest.mark.cuda
def test_no_host_synchronisation(dev):
    x = torch.randn(8, 3, 32, 32, device=dev)
    s = torch.rand(8, 32, 32, device=dev)
    k = torch.randint(0, 1025, (8,), device=dev)
    mask_features(x, s, 0.5)  # load the extension and warm up first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kk in (100, 0.5, k):
            for fill in ("uniform", "mean", 0.0):
                mask_features(x, s, kk, fill=fill, backend="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.cuda
def test_opcheck(dev):
    from torch.library import opcheck

    s = torch.rand(3, 500, device=dev)
    opcheck(torch.ops.sdecor.mask_select.default, (s, torch.tensor([0, 17, 500], device=dev), False))
    x = torch.randn(3, 2, 10, 10, device=dev, requires_grad=True)
    mask = torch.rand(3, 100, device=dev) < 0.3
    opcheck(torch.ops.sdecor.mask_fill_random.default, (x, mask, None), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("s[1, 5] = float('nan')", "saliency must not contain NaN"),
        ("k = torch.tensor([1, 70], device='cuda')", "every k must lie in [0, F]"),
    ],
)
def test_device_side_checks(dev, code, message):
    """NaN saliency and out-of-range k tensors on CUDA fail as a device-side assertion, which
    surfaces at the next synchronising call (torch.cuda.synchronize() here) or, when the failure
    is already known by then, at the next launch (the fill kernel's)."""
    script = (
        "import torch\n"
        "from sdecor.ops import mask_features\n"
        "s = torch.rand(2, 64, device='cuda')\n"
        "k = torch.tensor([1, 2], device='cuda')\n"
        f"{code}\n"
        "try:\n"  # the fill's launch may already see the select kernel's failure
        "    mask_features(torch.randn(2, 64, device='cuda'), s, k, backend='cuda')\n"
        "    torch.cuda.synchronize()\n"
        "except RuntimeError as exc:\n"
        "    print('raised:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "raised:" in proc.stdout and "device-side assert" in proc.stdout, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
