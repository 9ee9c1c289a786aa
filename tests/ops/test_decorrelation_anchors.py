"""DeCov, VICReg's covariance term and FedDecorr are settings of the one op.

Each is written here the way its paper or official code writes it, and compared with the
``decorrelation_loss`` call the README gives for it.
"""

import torch

import sdecor


def decov_original(h):
    """Cogswell et al. 2016: 0.5 * (||C||_F^2 - ||diag C||^2), C with 1/N."""
    centred = h - h.mean(0)
    cov = centred.T @ centred / h.shape[0]
    return 0.5 * (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum())


def vicreg_cov_original(z):
    """VICReg: off_diagonal(cov).pow(2).sum() / num_features, cov with 1/(N-1)."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / (n - 1)
    off = cov.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()
    return off.pow(2).sum() / d


def feddecorr_original(x, eps=1e-8):
    """FedDecorr (Shi et al. 2023): standardise, corr = z^T z, mean of squared off-diagonals / N."""
    n, d = x.shape
    x = x - x.mean(dim=0, keepdim=True)
    x = x / torch.sqrt(eps + x.var(dim=0, keepdim=True))
    corr = x.T @ x
    off = corr.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()
    return off.pow(2).mean() / n


def test_decov_setting():
    h = torch.randn(40, 9, dtype=torch.float64) * 3
    ours = 0.5 * sdecor.decorrelation_loss(h, mode="covariance", correction=0, reduction="sum")
    torch.testing.assert_close(ours, decov_original(h), rtol=1e-12, atol=0)


def test_vicreg_covariance_setting():
    z = torch.randn(33, 12, dtype=torch.float64)
    ours = sdecor.decorrelation_loss(z, mode="covariance", correction=1, reduction="sum") / z.shape[1]
    torch.testing.assert_close(ours, vicreg_cov_original(z), rtol=1e-12, atol=0)


def test_feddecorr_setting():
    n = 25
    x = torch.randn(n, 10, dtype=torch.float64) @ torch.randn(10, 10, dtype=torch.float64)
    ours = (n - 1) ** 2 / n * sdecor.decorrelation_loss(x, mode="correlation", correction=1, reduction="mean", eps=1e-8)
    torch.testing.assert_close(ours, feddecorr_original(x, eps=1e-8), rtol=1e-12, atol=0)
