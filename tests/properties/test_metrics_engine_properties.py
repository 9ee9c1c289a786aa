"""Property-based tests of the metrics' batched engine (``sdecor.metrics``).

The perturbation curves evaluate every (step, sample) pair in chunks of ``batch_size`` built by
one fused masking pass; the map scores run in chunks of samples. For random small inputs
(per-pixel and per-element attributions with heavy ties and signed zeros), steps, substrates
and chunk sizes:

* every curve equals a naive loop over the steps (one ``sdecor.mask_features`` selection per
  step on the reference backend, the substrate written with ``torch.where``, one model call);
* the curves and map scores do not depend on ``batch_size`` nor on the other samples of the batch;
* the inputs and attributions are never modified;
* invalid arguments raise ``ValueError`` / ``TypeError`` whose message names the argument.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st
from property_helpers import assert_unmodified, budget, snapshot, tensors
from torch import nn

import sdecor
from sdecor import metrics

CLASSES = 3


def linear_model(features: int, seed: int, dtype=torch.float64) -> nn.Module:
    """A fixed linear classifier on the flattened input (exact enough to compare in float64)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, CLASSES)).to(dtype)
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(CLASSES, features, generator=g, dtype=dtype))
        model[1].bias.copy_(torch.randn(CLASSES, generator=g, dtype=dtype))
    return model.eval()


@st.composite
def curve_cases(draw):
    b = draw(st.integers(1, 4))
    c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(tensors((b, c, h, w), torch.float64, kinds=("noise", "ties", "constant")))
    a_shape = draw(st.sampled_from([(b, c, h, w), (b, 1, h, w), (b, h, w)]))
    a = draw(tensors(a_shape, torch.float64, kinds=("ties", "noise", "specials")))
    positions = math.prod(a_shape[1:])
    return dict(
        x=x,
        a=a,
        pixel=a_shape != (b, c, h, w),
        step=draw(st.integers(1, positions + 1)),
        substrate=draw(st.sampled_from(["zero", "black", "white", "blur", "mean", "uniform", "number", "tensor"])),
        batch_size=draw(st.none() | st.integers(1, 3 * b + 2)),
        model_seed=draw(st.integers(0, 2**16)),
        seed=draw(st.integers(0, 2**16)),
        output=draw(st.sampled_from(["probability", "logit"])),
    )


def substrate_of(case):
    """(the substrate argument, its values as a tensor broadcastable to x)."""
    x, spec, b = case["x"], case["substrate"], case["x"].shape[0]
    if spec == "zero":
        return spec, torch.zeros(())
    if spec == "number":
        return -0.75, torch.tensor(-0.75, dtype=x.dtype)
    if spec == "tensor":
        t = torch.randn(x.shape, generator=torch.Generator().manual_seed(case["seed"]), dtype=x.dtype)
        return t, t
    if spec in ("black", "white"):
        flat = x.reshape(b, -1)
        v = flat.amin(1) if spec == "black" else flat.amax(1)
        return spec, v.view(b, 1, 1, 1)
    if spec == "blur":
        return spec, metrics.rise_blur(x)
    # "mean" / "uniform": the per-channel fills of mask_features applied to everything, drawn once
    gen = torch.Generator().manual_seed(case["seed"])
    full, _ = sdecor.mask_features(x, torch.zeros(x.shape, dtype=x.dtype), x[0].numel(), fill=spec, generator=gen)
    return spec, full


def naive_curve(model, x, a, pixel, ks, largest, fill_values, start, targets, output):
    """One mask_features selection and one model call per step; (B, steps + 1)."""
    rows = []
    for k in ks.tolist():
        _, mask = sdecor.mask_features(torch.zeros(a.shape), a, k, largest=largest, fill=0.0, backend="reference")
        on_x = mask.reshape(x.shape[0], 1, *x.shape[2:]).expand(x.shape) if pixel else mask
        perturbed = torch.where(on_x, fill_values.to(x.dtype).expand(x.shape), start)
        logits = model(perturbed)
        if output == "probability":
            logits = torch.softmax(logits.float(), dim=1)
        rows.append(logits.gather(1, targets[:, None]).squeeze(1))
    return torch.stack(rows, dim=1)


def step_counts(positions: int, step: int) -> torch.Tensor:
    n = math.ceil(positions / step)
    return torch.clamp(torch.arange(n + 1) * step, max=positions)


def assert_close_curves(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to the rounding of the curves (float32) and of a float32 softmax."""
    assert got.shape == expected.shape
    expected = expected.detach().double()
    tol = 8 * torch.finfo(torch.float32).eps * max(1.0, expected.abs().max().item() if expected.numel() else 1.0)
    assert torch.allclose(got.double(), expected, rtol=0, atol=tol), (got, expected)


@settings(max_examples=budget(1.5))
@given(case=curve_cases(), curve=st.sampled_from(["deletion", "insertion", "pixel_flipping"]))
def test_curves_equal_a_naive_loop_over_the_steps(case, curve):
    x, a, pixel = case["x"], case["a"], case["pixel"]
    note(f"{curve}: x {tuple(x.shape)}, attributions {tuple(a.shape)}, {case}")
    model = linear_model(x[0].numel(), case["model_seed"])
    spec, fill_values = substrate_of(case)
    positions = a[0].numel()
    ks = step_counts(positions, case["step"])
    gen = torch.Generator().manual_seed(case["seed"])
    kwargs = dict(step=case["step"], output=case["output"], batch_size=case["batch_size"], generator=gen)
    snap = snapshot(x, a, fill_values if spec == "tensor" else None)
    if curve == "deletion":
        result = metrics.deletion_curve(model, x, a, substrate=spec, **kwargs)
    elif curve == "insertion":
        result = metrics.insertion_curve(model, x, a, substrate=spec, **kwargs)
    else:
        result = metrics.pixel_flipping(model, x, a, fill=spec, **kwargs)
    assert_unmodified(snap)
    targets = model(x).argmax(1)
    assert torch.equal(result.targets, targets)
    if curve == "insertion":  # the input shows through where the mask is, over the substrate
        start = fill_values.to(x.dtype).expand(x.shape)
        expected = naive_curve(model, x, a, pixel, ks, True, x, start, targets, case["output"])
    else:
        expected = naive_curve(model, x, a, pixel, ks, True, fill_values, x, targets, case["output"])
    assert_close_curves(result.curves, expected)
    assert torch.allclose(result.fractions.double(), ks.double() / positions)


@settings(max_examples=budget(0.75))
@given(case=curve_cases(), batch_sizes=st.tuples(st.integers(1, 7), st.integers(1, 7)))
def test_curves_do_not_depend_on_the_chunking_nor_on_the_other_samples(case, batch_sizes):
    x, a = case["x"], case["a"]
    model = linear_model(x[0].numel(), case["model_seed"])
    spec = case["substrate"] if case["substrate"] not in ("tensor", "number", "uniform") else "zero"
    runs = [metrics.deletion_curve(model, x, a, step=case["step"], substrate=spec, batch_size=bs) for bs in batch_sizes]
    assert_close_curves(runs[0].curves, runs[1].curves)
    one = metrics.deletion_curve(model, x[-1:], a[-1:], step=case["step"], substrate=spec)
    assert_close_curves(one.curves, runs[0].curves[-1:])


@settings(max_examples=budget(0.75))
@given(case=curve_cases(), fill=st.sampled_from(["mean", "zero", "number"]))
def test_masked_accuracy_curve_equals_a_naive_loop(case, fill):
    x, a, pixel = case["x"], case["a"], case["pixel"]
    model = linear_model(x[0].numel(), case["model_seed"])
    labels = torch.randint(0, CLASSES, (x.shape[0],), generator=torch.Generator().manual_seed(case["seed"]))
    fractions = (0.0, 0.3, 1.0, 0.5)
    arg = -0.75 if fill == "number" else fill
    _, fill_values = substrate_of({**case, "substrate": fill})
    snap = snapshot(x, a, labels)
    result = metrics.masked_accuracy_curve(
        model, x, a, labels, fractions=fractions, fill=arg, batch_size=case["batch_size"]
    )
    assert_unmodified(snap)
    positions = a[0].numel()
    ks = torch.tensor([math.floor(f * positions) for f in fractions])
    expected = []
    for k in ks.tolist():
        _, mask = sdecor.mask_features(torch.zeros(a.shape), a, k, largest=True, fill=0.0, backend="reference")
        on_x = mask.reshape(x.shape[0], 1, *x.shape[2:]).expand(x.shape) if pixel else mask
        expected.append(model(torch.where(on_x, fill_values.to(x.dtype).expand(x.shape), x)).argmax(1) == labels)
    assert torch.equal(result.correct, torch.stack(expected, dim=1))


@settings(max_examples=budget(0.75))
@given(
    a=st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 4)).flatmap(
        lambda s: tensors(s, torch.float64, kinds=("noise", "ties", "specials", "huge", "subnormal"))
    ),
    batch_size=st.integers(1, 6),
    abs_=st.booleans(),
    normalise=st.booleans(),
)
def test_map_scores_are_per_sample_whatever_the_chunking(a, batch_size, abs_, normalise):
    for score in (metrics.sparseness, metrics.complexity):
        snap = snapshot(a)
        whole = score(a, abs=abs_, normalise=normalise)
        chunked = score(a, abs=abs_, normalise=normalise, batch_size=batch_size)
        assert_unmodified(snap)
        assert whole.shape == (a.shape[0],)
        single = torch.cat([score(a[i : i + 1], abs=abs_, normalise=normalise) for i in range(a.shape[0])])
        assert torch.allclose(chunked, whole, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert torch.allclose(single, whole, rtol=1e-12, atol=1e-12, equal_nan=True)


# ----------------------------------------------------------------------------- bad input


def _nan_at_middle(t):
    """A copy of ``t`` (same layout) with a NaN at its middle element."""
    t = t.clone()
    t[torch.unravel_index(torch.tensor(t.numel() // 2), t.shape)] = float("nan")
    return t


# name -> (build(x, a) -> kwargs overriding the valid call, the argument the message must name)
CURVE_BAD = {
    "attributions NaN": (lambda x, a: {"attributions": _nan_at_middle(a)}, "attributions"),
    "attributions inf": (lambda x, a: {"attributions": a.clone().fill_(float("inf"))}, "attributions"),
    "attributions shape": (lambda x, a: {"attributions": a.reshape(a.shape[0], -1)[:, :1]}, "attributions"),
    "attributions batch": (lambda x, a: {"attributions": torch.cat([a, a])}, "attributions"),
    "attributions integer": (lambda x, a: {"attributions": a.long()}, "attributions"),
    "inputs NaN": (lambda x, a: {"inputs": _nan_at_middle(x)}, "inputs"),
    "inputs 1-D": (lambda x, a: {"inputs": x.reshape(-1)}, "inputs"),
    "inputs empty batch": (lambda x, a: {"inputs": x[:0], "attributions": a[:0]}, "inputs"),
    "batch_size zero": (lambda x, a: {"batch_size": 0}, "batch_size"),
    "batch_size float": (lambda x, a: {"batch_size": 2.0}, "batch_size"),
    "step zero": (lambda x, a: {"step": 0}, "step"),
    "step float": (lambda x, a: {"step": 1.5}, "step"),
    "substrate unknown": (lambda x, a: {"substrate": "grey"}, "substrate"),
    "substrate shape": (lambda x, a: {"substrate": torch.zeros(x.shape[0] + 1, *x.shape[1:])}, "substrate"),
    "substrate NaN": (lambda x, a: {"substrate": _nan_at_middle(x)}, "substrate"),
    "output unknown": (lambda x, a: {"output": "softmax"}, "output"),
    "targets shape": (lambda x, a: {"targets": torch.zeros(x.shape[0] + 1, dtype=torch.int64)}, "targets"),
    "targets negative": (lambda x, a: {"targets": torch.full((x.shape[0],), -1)}, "targets"),
    "targets too large": (lambda x, a: {"targets": torch.full((x.shape[0],), CLASSES)}, "targets"),
    "targets float": (lambda x, a: {"targets": torch.zeros(x.shape[0])}, "targets"),
    "generator type": (lambda x, a: {"generator": 1}, "generator"),
    "model not callable": (lambda x, a: {"model": "model"}, "model"),
}


@settings(max_examples=budget(1.0))
@given(case=curve_cases(), name=st.sampled_from(sorted(CURVE_BAD)))
def test_curves_reject_bad_input_naming_the_argument(case, name):
    x, a = case["x"], case["a"]
    call = dict(model=linear_model(x[0].numel(), case["model_seed"]), inputs=x, attributions=a, step=case["step"])
    build, argument = CURVE_BAD[name]
    call.update(build(x, a))
    snap = snapshot(x, a)
    with pytest.raises((ValueError, TypeError)) as info:
        metrics.deletion_curve(call.pop("model"), call.pop("inputs"), call.pop("attributions"), **call)
    assert argument in str(info.value), f"{name}: the message does not name {argument!r}: {info.value}"
    assert_unmodified(snap)
