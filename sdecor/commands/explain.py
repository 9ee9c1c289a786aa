"""``sdecor explain``: saliency maps of a saved checkpoint, written as PNG files.

    sdecor explain --checkpoint run/final.pt --images a.png b.png --method rectgrad --out maps/
    sdecor explain --checkpoint run/final.pt --dataset digits-in-clutter --n 8 --method gradient

Each PNG shows the image, its saliency map (the absolute attribution summed over channels,
scaled to its 99.5th percentile) and, for data with ground-truth masks, the map with the
digit's outline. The checkpoint is one written by ``sdecor.train.save_checkpoint`` / ``fit``
(it knows how to rebuild its model); images are resized to the model's input size
(``meta["data"]["image_shape"]`` in the checkpoint, else ``--size``).
"""

from __future__ import annotations

import argparse
import ast
import os

from ._args import positive_int

HELP = "saliency maps of a saved checkpoint for given images (or data-set samples), saved as PNG"


def _option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"option name {key!r} is not a valid identifier")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # keep it as a string
    return key, value


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by sdecor (fit / save_checkpoint)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", metavar="IMAGE", help="image files to explain")
    src.add_argument(
        "--dataset",
        metavar="NAME",
        help="take samples of a data set: digits-in-clutter, an image folder, or torchvision:NAME:ROOT",
    )
    parser.add_argument("--n", type=positive_int, default=8, help="number of data-set samples (default 8)")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="data-set split (default test)")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed (default 0)")
    parser.add_argument(
        "--method", default="gradient", help="saliency method (sdecor.saliency.METHODS; default gradient)"
    )
    parser.add_argument(
        "--option",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. --option n_samples=25 (repeatable; values parsed as Python literals)",
    )
    parser.add_argument(
        "--target",
        default="pred",
        help="class to explain: pred (predicted, default), label (true class), or an integer",
    )
    parser.add_argument(
        "--size", type=positive_int, default=None, help="input size when the checkpoint does not record it (default 32)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default="explain", help="output folder (default ./explain)")


def _load_inputs(args, image_shape):
    import torch

    from ..data import load_image, make_loaders

    c, h, w = image_shape
    if args.images:
        x = torch.stack([load_image(p, (h, w), channels=c) for p in args.images])
        names = [os.path.splitext(os.path.basename(p))[0] for p in args.images]
        return x, None, None, names
    if h != w:
        raise ValueError(f"--dataset needs a square model input, the checkpoint's is {h} x {w}")
    n = args.n
    train, test, info = make_loaders(
        args.dataset, batch_size=n, size=h, seed=args.seed, n_train=n, n_test=n, shuffle=False
    )
    loader = test if args.split == "test" else train
    if loader is None:
        raise ValueError(f"data set {args.dataset!r} has no {args.split} split")
    batch = next(iter(loader))
    x, y = batch[0], batch[1]
    masks = batch[2] if info.has_masks and len(batch) > 2 else None
    if x.shape[1] != c:
        raise ValueError(f"the data set has {x.shape[1]}-channel images but the model expects {c}")
    names = [f"{args.split}{i:03d}" for i in range(x.shape[0])]
    return x, y.long(), masks, names


def _resolve_target(text: str, logits, labels, num_classes: int):
    import torch

    if text == "pred":
        return logits.argmax(1)
    if text == "label":
        if labels is None:
            raise ValueError("--target label needs --dataset (image files have no labels)")
        return labels
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"--target must be pred, label or a class index, got {text!r}") from None
    if not 0 <= k < num_classes:
        raise ValueError(f"--target {k} is out of range for {num_classes} classes")
    return torch.full((logits.shape[0],), k, dtype=torch.long, device=logits.device)


def _save_figure(path, image, sal, mask, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    img = image.permute(1, 2, 0).numpy()
    if img.shape[2] == 1:
        img = img[..., 0]
    panels = 3 if mask is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels, 2.9))
    axes[0].imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(sal, cmap="inferno", vmin=0, vmax=1)
    axes[1].set_title("saliency", fontsize=9)
    if mask is not None:
        axes[2].imshow(sal, cmap="inferno", vmin=0, vmax=1)
        axes[2].contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
        axes[2].set_title("saliency + ground truth", fontsize=9)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    import torch

    from ..train import load_checkpoint, resolve_device

    try:
        from ..saliency import ATTRIBUTION_METHODS as METHODS
    except ImportError as exc:  # pragma: no cover - the package ships it
        raise ValueError(f"sdecor.saliency is not available: {exc}") from exc
    key = args.method.lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; choose from {', '.join(sorted(METHODS))}")
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, map_location=device)
    model.eval()

    data_meta = meta.get("data") or {}
    spec_kwargs = (meta.get("model") or {}).get("kwargs", {})
    if data_meta.get("image_shape"):
        image_shape = tuple(int(s) for s in data_meta["image_shape"])
        if args.size is not None:
            image_shape = (image_shape[0], args.size, args.size)
    else:
        s = args.size or 32
        image_shape = (int(spec_kwargs.get("in_channels", 3)), s, s)
    class_names = list(data_meta.get("class_names") or [])

    x, labels, masks, names = _load_inputs(args, image_shape)
    x = x.to(device)
    options = dict(args.option)
    if key == "dance" and "layer" not in options and getattr(model, "conv_feature_layer", None):
        options["layer"] = model.conv_feature_layer
    try:
        method = METHODS[key](model, **options)
    except TypeError as exc:
        raise ValueError(f"bad --option for {key}: {exc}") from exc
    with torch.no_grad():
        probs = model(x).float().softmax(1)
    target = _resolve_target(args.target, probs, labels.to(device) if labels is not None else None, probs.shape[1])
    attr = method.attribute(x, target=target).detach().float()
    sal = attr.abs().sum(1)
    scale = torch.quantile(sal.flatten(1), 0.995, dim=1).clamp_min(1e-12)
    sal = (sal / scale[:, None, None]).clamp(0, 1).cpu().numpy()

    os.makedirs(args.out, exist_ok=True)
    pred = probs.argmax(1).cpu()
    name_of = lambda k: class_names[k] if k < len(class_names) else str(k)  # noqa: E731
    written = []
    for i in range(x.shape[0]):
        p = int(pred[i])
        title = f"{key} | pred {name_of(p)} ({float(probs[i, p]):.2f}) | target {name_of(int(target[i]))}"
        if labels is not None:
            title += f" | label {name_of(int(labels[i]))}"
        path = os.path.join(args.out, f"{names[i]}_{key}.png")
        _save_figure(path, x[i].cpu(), sal[i], None if masks is None else masks[i, 0].numpy(), title)
        written.append(path)
    print(f"sdecor explain: wrote {len(written)} PNG file(s) to {args.out}")
    for path in written:
        print(path)
    return 0
