"""Measures of a learned representation: effective rank (dimensional collapse) and a linear probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_float_tensor, check_int, check_min_ndim

__all__ = ["effective_rank", "mean_squared_correlation", "linear_probe"]


def effective_rank(embeddings: torch.Tensor, *, center: bool = True, eps: float = 1e-12) -> float:
    """Effective rank of an (n, d) embedding matrix (Roy & Vetterli, 2007). Higher is better.

    ``exp(H(p))`` with ``p = sigma / sum(sigma)`` the normalised singular values and H the
    Shannon entropy (natural log; 0 log 0 = 0). It lies in [1, min(n, d)]: 1 when the embeddings
    span one direction, min(n, d) when all singular values are equal. ``center=True`` (default)
    subtracts the mean embedding first, so that a common offset does not count as a direction
    (the spectrum is then that of the covariance, as in the dimensional-collapse literature).
    Computed in float64.
    """
    check_float_tensor(embeddings, "embeddings")
    check_min_ndim(embeddings, "embeddings", 2, "(n, d)")
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {tuple(embeddings.shape)}")
    E = embeddings.detach().to(torch.float64)
    if center:
        E = E - E.mean(0, keepdim=True)
    s = torch.linalg.svdvals(E)
    total = s.sum()
    if total <= eps:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_squared_correlation(embeddings: torch.Tensor, eps: float = 1e-8) -> float:
    """Mean over i != j of the squared Pearson correlation between embedding dimensions (lower = more decorrelated)."""
    E = embeddings.detach().to(torch.float64)
    E = E - E.mean(0, keepdim=True)
    std = E.square().mean(0).add(eps).sqrt()
    R = (E / std).T @ (E / std) / E.shape[0]
    d = R.shape[0]
    off = R.square().sum() - torch.diagonal(R).square().sum()
    return float(off / max(d * (d - 1), 1))


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> dict:
    """Multinomial logistic regression on frozen features, fitted full-batch with L-BFGS. Higher is better.

    Features are standardised with the training set's mean and standard deviation; the L2 penalty
    ``weight_decay * ||W||^2`` regularises the weights (not the bias). Deterministic (zero init).
    Returns ``{"train_accuracy", "test_accuracy"}`` as fractions in [0, 1].
    """
    for name, t in (("train_features", train_features), ("test_features", test_features)):
        check_float_tensor(t, name)
        if t.ndim != 2:
            raise ValueError(f"{name} must be (n, d), got shape {tuple(t.shape)}")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_features.shape[1]} vs {test_features.shape[1]}"
        )
    check_int(max_iter, "max_iter", low=1)
    Xtr = train_features.detach().to(torch.float64)
    Xte = test_features.detach().to(torch.float64)
    ytr, yte = train_labels.long().to(Xtr.device), test_labels.long().to(Xte.device)
    mean, std = Xtr.mean(0, keepdim=True), Xtr.std(0, keepdim=True).clamp_min(1e-8)
    Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    num_classes = int(max(ytr.max(), yte.max())) + 1
    W = torch.zeros(Xtr.shape[1], num_classes, dtype=torch.float64, device=Xtr.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, device=Xtr.device, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Xtr @ W + b, ytr) + weight_decay * W.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = float(((Xtr @ W + b).argmax(1) == ytr).double().mean())
        test_acc = float(((Xte @ W + b).argmax(1) == yte).double().mean())
    return {"train_accuracy": train_acc, "test_accuracy": test_acc}
