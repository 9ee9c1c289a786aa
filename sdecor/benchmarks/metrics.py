"""Benchmark suite ``metrics``: sdecor.metrics against Quantus and against the forward-pass floor.

A perturbation metric cannot be faster than the model forward passes it needs, so every
perturbation group also times a **forward floor**: the bare model over the same number of
perturbed-input batches (same chunk size), nothing else. Goal: ours within 1.2x of the floor.

Groups (model: a small 2-conv CNN defined here, in eval mode; batch 32 x 3 x 32 x 32 in both
modes, since the per-call overhead is what the ratios measure and a smaller batch would inflate
it; 32-pixel steps; ``quick`` drops the equal-work pixel-flipping row and uses 4 noise draws):

* ``deletion``: RISE deletion curve, 32 pixels (all channels) per step = 33 evaluations of the
  batch; vs the floor; vs Quantus PixelFlipping with ``features_in_step=32`` (Quantus counts
  elements: 96 steps of 32 elements over the 3 x 1024 elements).
* ``pixel_flipping``: ours per pixel (32 pixels per step) vs the same floor vs the same Quantus
  run; and an equal-work row: ours per element (32 elements per step, 96 steps, exactly Quantus's
  perturbation sequence) vs its floor vs Quantus.
* ``max_sensitivity``: 10 noise draws of a gradient explanation; ours stacks the draws into one
  explain call, Quantus explains one draw at a time; floor: the gradient explanations the metric
  needs (the clean batch and the noisy copies) in one call, nothing else.
* ``sparseness`` / ``complexity`` / ``relevance_rank_accuracy``: the map-only metrics.

Baseline for the ratios: the Quantus implementation when importable, else the forward floor (or
our implementation for the map-only metrics). Quantus runs are skipped with a reason otherwise.
"""

from __future__ import annotations

import warnings

import torch

from .common import Group, Impl

__all__ = ["run", "SmallCNN"]

SUITE = "metrics"


class SmallCNN(torch.nn.Module):
    """Two 3x3 convolutions (3 -> 16 -> 32, the second with stride 2), global pooling, a linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.fc = torch.nn.Linear(32, classes)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean(dim=(2, 3)))


def _quantus():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import quantus
        return quantus, None
    except Exception as exc:  # ImportError or a broken optional dependency
        return None, f"quantus not importable ({type(exc).__name__}: {str(exc)[:80]}); pip install the compare extra"


def _floor(model, inputs: torch.Tensor, evaluations: int):
    """The bare forward passes: ``evaluations`` batches of ``inputs`` (the perturbed inputs' count)."""

    def fn():
        with torch.no_grad():
            for _ in range(evaluations):
                model(inputs)

    return fn


def _quiet(fn):
    def wrapped():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()

    return wrapped


def _gradient_explain(model, inputs, targets):
    inputs = inputs.detach().clone().requires_grad_(True)
    out = model(inputs)
    (grad,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), inputs)
    return grad.abs().sum(dim=1, keepdim=True)


def run(device: torch.device, quick: bool) -> list[Group]:
    import sdecor.metrics as M

    device = torch.device(device)
    quantus, why = _quantus()
    B = 32
    C, H, W, step = 3, 32, 32, 32
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SmallCNN().to(device).eval()
    x = torch.rand(B, C, H, W, generator=g).to(device)
    y = torch.randint(0, 10, (B,), generator=g).to(device)
    a_pix = torch.rand(B, 1, H, W, generator=g).to(device)
    a_el = torch.rand(B, C, H, W, generator=g).to(device)
    masks = (torch.rand(B, 1, H, W, generator=g) > 0.7).to(device)
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    qdev = "cuda" if device.type == "cuda" else "cpu"
    pix_steps = H * W // step  # 32 steps of 32 pixels
    el_steps = C * H * W // step  # 96 steps of 32 elements
    groups = []

    def quantus_pf(a, softmax):
        q = quantus.PixelFlipping(features_in_step=step, perturb_baseline="black", disable_warnings=True)
        a_np = a.cpu().numpy()
        return _quiet(
            lambda: q(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, softmax=softmax, device=qdev, batch_size=B)
        )

    def with_quantus(impls, skipped, name, make):
        if quantus is None:
            skipped[name] = why
        else:
            impls.append(Impl(name, make()))

    # ---- deletion (RISE): 33 evaluations of the batch
    impls = [
        Impl("sdecor deletion", lambda: M.deletion_curve(model, x, a_pix, step=step)),
        Impl("forward floor", _floor(model, x, pix_steps + 1)),
    ]
    skipped: dict = {}
    with_quantus(impls, skipped, "quantus PixelFlipping", lambda: quantus_pf(a_pix, True))
    groups.append(
        Group(
            SUITE,
            {
                "metric": "deletion",
                "batch": f"{B}x{C}x{H}x{W}",
                "step": f"{step} px (ours), {step} el (Quantus)",
                "evaluations": f"{pix_steps + 1} (ours), {el_steps} (Quantus)",
            },
            impls,
            "quantus PixelFlipping" if quantus else "forward floor",
            skipped,
            floor="forward floor",
        )
    )

    # ---- pixel flipping, per pixel (32-pixel steps)
    impls = [
        Impl("sdecor pixel_flipping", lambda: M.pixel_flipping(model, x, a_pix, y, step=step, output="logit")),
        Impl("forward floor", _floor(model, x, pix_steps + 1)),
    ]
    skipped = {}
    with_quantus(impls, skipped, "quantus PixelFlipping", lambda: quantus_pf(a_pix, False))
    groups.append(
        Group(
            SUITE,
            {
                "metric": "pixel_flipping",
                "batch": f"{B}x{C}x{H}x{W}",
                "step": f"{step} px (ours), {step} el (Quantus)",
                "evaluations": f"{pix_steps + 1} (ours), {el_steps} (Quantus)",
            },
            impls,
            "quantus PixelFlipping" if quantus else "forward floor",
            skipped,
            floor="forward floor",
        )
    )

    # ---- pixel flipping, equal work: per element, exactly Quantus's perturbation sequence
    impls = (
        []
        if quick
        else [
            Impl("sdecor pixel_flipping", lambda: M.pixel_flipping(model, x, a_el, y, step=step, output="logit")),
            Impl("forward floor", _floor(model, x, el_steps + 1)),
        ]
    )
    if not quick:
        skipped = {}
        with_quantus(impls, skipped, "quantus PixelFlipping", lambda: quantus_pf(a_el, False))
        groups.append(
            Group(
                SUITE,
                {
                    "metric": "pixel_flipping (equal work)",
                    "batch": f"{B}x{C}x{H}x{W}",
                    "step": f"{step} el",
                    "evaluations": f"{el_steps + 1} (ours), {el_steps} (Quantus)",
                },
                impls,
                "quantus PixelFlipping" if quantus else "forward floor",
                skipped,
                floor="forward floor",
            )
        )

    # ---- max-sensitivity: n draws of a gradient explanation
    n = 4 if quick else 10
    # the floor: the n + 1 explanations the metric needs (the clean batch and n noisy copies), one call
    noisy = x.repeat(n + 1, 1, 1, 1)
    y_rep = y.repeat(n + 1)
    impls = [
        Impl(
            "sdecor max_sensitivity",
            lambda: M.max_sensitivity(model, x, y, _gradient_explain, n_samples=n, batch_size=n * B),
        ),
        Impl("explain floor", lambda: _gradient_explain(model, noisy, y_rep)),
    ]
    skipped = {}

    def make_qms():
        q = quantus.MaxSensitivity(nr_samples=n, disable_warnings=True)

        def explain(model, inputs, targets, **kw):
            t = _gradient_explain(
                model, torch.as_tensor(inputs, device=device), torch.as_tensor(targets, device=device).long()
            )
            return t.cpu().numpy()

        return _quiet(
            lambda: q(model=model, x_batch=x_np, y_batch=y_np, explain_func=explain, device=qdev, batch_size=B)
        )

    with_quantus(impls, skipped, "quantus MaxSensitivity", make_qms)
    groups.append(
        Group(
            SUITE,
            {
                "metric": "max_sensitivity",
                "batch": f"{B}x{C}x{H}x{W}",
                "step": "-",
                "evaluations": f"{n} draws + clean",
            },
            impls,
            "quantus MaxSensitivity" if quantus else "explain floor",
            skipped,
            floor="explain floor",
        )
    )

    # ---- map-only metrics
    a_np, s_np = a_pix.cpu().numpy(), masks.cpu().numpy().astype("float32")
    for name, ours, qname, qkw in (
        ("sparseness", lambda: M.sparseness(a_pix), "Sparseness", {}),
        ("complexity", lambda: M.complexity(a_pix), "Complexity", {}),
        (
            "relevance_rank_accuracy",
            lambda: M.relevance_rank_accuracy(a_pix, masks),
            "RelevanceRankAccuracy",
            {"s_batch": s_np},
        ),
    ):
        impls = [Impl(f"sdecor {name}", ours)]
        skipped = {}

        def make_q(qname=qname, qkw=qkw):
            q = getattr(quantus, qname)(disable_warnings=True)
            return _quiet(lambda: q(model=None, x_batch=x_np, y_batch=y_np, a_batch=a_np.copy(), **qkw))

        with_quantus(impls, skipped, f"quantus {qname}", make_q)
        groups.append(
            Group(
                SUITE,
                {"metric": name, "batch": f"{B}x1x{H}x{W}", "step": "-", "evaluations": "-"},
                impls,
                f"quantus {qname}" if quantus else f"sdecor {name}",
                skipped,
            )
        )
    return groups
