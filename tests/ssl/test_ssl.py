"""med-moco pieces: effective rank, linear probe, augmentations, patch correspondence, MoCo, `sdecor ssl`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sdecor.ssl import (
    SSLConfig,
    effective_rank,
    linear_probe,
    local_patch_contrastive_loss,
    mean_squared_correlation,
    train_moco,
)
from sdecor.ssl.augment import AugmentConfig, apply_theta, augment
from sdecor.ssl.moco import MoCo, corresponding_points, info_nce
from sdecor.ssl.recipe import build_encoder, evaluate, format_table, run_comparison

F64 = torch.float64


def _embeddings(n, d, singular_values, seed=0, offset=3.0):
    """(n, d) embeddings whose centred matrix has exactly the given singular values."""
    gen = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    A = torch.randn(n, k, dtype=F64, generator=gen)
    U, _ = torch.linalg.qr(A - A.mean(0))  # columns orthonormal and orthogonal to the ones vector
    V, _ = torch.linalg.qr(torch.randn(d, k, dtype=F64, generator=gen))
    E = U @ torch.diag(torch.tensor(singular_values, dtype=F64)) @ V.T
    return E + offset * torch.randn(1, d, dtype=F64, generator=gen)  # a common offset


@pytest.mark.parametrize("rank", [1, 3, 7, 16])
def test_effective_rank_of_known_rank(rank):
    E = _embeddings(200, 16, [2.5] * rank)
    assert effective_rank(E) == pytest.approx(rank, rel=1e-9)
    assert effective_rank(E.float()) == pytest.approx(rank, rel=1e-4)


def test_effective_rank_unequal_spectrum_and_uncentred():
    s = [4.0, 2.0, 1.0, 1.0]
    p = torch.tensor(s, dtype=F64) / sum(s)
    expected = math.exp(float(-(p * p.log()).sum()))
    assert effective_rank(_embeddings(100, 10, s)) == pytest.approx(expected, rel=1e-9)
    # without centring the common offset adds a direction
    E = _embeddings(100, 10, [1.0] * 3, offset=0.0)
    assert effective_rank(E, center=False) == pytest.approx(3, rel=1e-9)
    shifted = _embeddings(100, 10, [1.0] * 3, offset=5.0)
    assert effective_rank(shifted) == pytest.approx(3, rel=1e-9)
    assert abs(effective_rank(shifted, center=False) - 3) > 0.5  # the offset dominates the spectrum
    assert effective_rank(torch.zeros(5, 4)) == 1.0
    with pytest.raises(ValueError):
        effective_rank(torch.randn(3, 4, 5))


def test_mean_squared_correlation():
    x = torch.randn(4000, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert mean_squared_correlation(x) < 1e-3
    y = torch.cat([x[:, :1], x[:, :1] * 2], 1)
    assert mean_squared_correlation(y) == pytest.approx(1.0, rel=1e-6)


def test_linear_probe_separable_and_chance():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=gen) * 5
    y = torch.arange(400) % 4
    X = centres[y] + torch.randn(400, 8, generator=gen)
    res = linear_probe(X[:300], y[:300], X[300:], y[300:])
    assert res["test_accuracy"] == 1.0 and res["train_accuracy"] == 1.0
    noise = torch.randn(400, 8, generator=gen)
    res = linear_probe(noise[:300], y[:300], noise[300:], y[300:])
    assert res["test_accuracy"] < 0.5  # chance is 0.25


def test_augment_shapes_range_determinism():
    x = torch.rand(6, 3, 16, 16)
    v1, t1 = augment(x, generator=torch.Generator().manual_seed(3))
    v2, t2 = augment(x, generator=torch.Generator().manual_seed(3))
    assert v1.shape == x.shape and t1.shape == (6, 2, 3)
    assert torch.equal(v1, v2) and torch.equal(t1, t2)
    assert v1.min() >= 0 and v1.max() <= 1
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(6, 2, 3)
    torch.testing.assert_close(apply_theta(x, identity), x)
    # crops stay inside the image: |scale| + |offset| <= 1
    _, theta = augment(torch.rand(500, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert (theta[:, 0, 0].abs() + theta[:, 0, 2].abs() <= 1 + 1e-6).all()
    assert (theta[:, 1, 1].abs() + theta[:, 1, 2].abs() <= 1 + 1e-6).all()


def test_patch_correspondence_finds_the_same_image_location():
    # an "image" whose two channels are its own x and y coordinates: every view shows, at each
    # point, which image location it samples; corresponding points must read the same values
    H = W = 32
    ys, xs = torch.meshgrid((torch.arange(H) * 2 + 1) / H - 1, (torch.arange(W) * 2 + 1) / W - 1, indexing="ij")
    coords = torch.stack([xs, ys]).unsqueeze(0).expand(64, 2, H, W).contiguous()
    gen = torch.Generator().manual_seed(1)
    cfg = AugmentConfig(flip_p=0.5)
    from sdecor.ssl.augment import random_crop_theta

    tq, tk = random_crop_theta(64, cfg, gen), random_crop_theta(64, cfg, gen)
    vq, vk = apply_theta(coords, tq), apply_theta(coords, tk)
    u, v, valid = corresponding_points(tq, tk, grid=3)
    from sdecor.ssl.moco import _sample

    a, b = _sample(vq, u)[valid], _sample(vk, v)[valid]
    assert valid.sum() > 100
    err = (a - b).abs()
    # bilinear resampling error only: well under a pixel (2 / 32) everywhere, tiny on average
    assert float(err.max()) < 0.05 and float(err.mean()) < 0.005, (float(err.max()), float(err.mean()))
    # a wrong correspondence (the key view's own grid) is far off
    assert float((_sample(vk, u)[valid] - b).abs().mean()) > 0.1


def test_local_loss_prefers_true_correspondence():
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(8, 16, 8, 8, generator=gen)
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(8, 2, 3)
    matched = local_patch_contrastive_loss(feat, feat, theta, theta, tau=0.1)
    shuffled = local_patch_contrastive_loss(feat, feat[torch.randperm(8, generator=gen)], theta, theta, tau=0.1)
    assert matched < shuffled
    q = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen), dim=1)
    assert info_nce(q, q, queue, 0.2) < info_nce(q, queue[:4], queue, 0.2)


def test_moco_queue_and_momentum():
    cfg = SSLConfig(width=8, dim=8, hidden=16, local_dim=4)
    model = MoCo(build_encoder("plain", cfg), build_encoder("plain", cfg), queue_size=10, momentum=0.9)
    for pq, pk in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        assert torch.equal(pq, pk) and not pk.requires_grad
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.encoder_k.parameters()]
    model.momentum_update()
    for b, pk, pq in zip(before, model.encoder_k.parameters(), model.encoder_q.parameters()):
        torch.testing.assert_close(pk, 0.9 * b + 0.1 * pq)
    keys = torch.arange(7 * 8, dtype=torch.float32).view(7, 8)
    model.enqueue(keys)
    model.enqueue(keys)
    assert int(model.queue_ptr) == 4
    torch.testing.assert_close(model.queue[:4], keys[3:])
    torch.testing.assert_close(model.queue[4:7], keys[4:7] * 0 + keys[4:7])


def _tiny_data(n=48, size=16, seed=0):
    """A tiny labelled image set for smoke tests (class = position of a bright square)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen) * 0.3
    y = torch.arange(n) % 4
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        x[i, :, r * 8 : r * 8 + 6, c * 8 : c * 8 + 6] += 0.6
    return x.clamp(0, 1), y


@pytest.mark.parametrize("setting", ["plain", "decor", "iternorm"])
def test_train_moco_settings_smoke(setting):
    x, y = _tiny_data()
    cfg = SSLConfig(epochs=1, batch_size=16, queue_size=32, width=8, dim=16, hidden=32, local_dim=8)
    enc, hist = train_moco(setting, x, cfg, seed=0)
    assert len(hist["loss"]) == 1 and math.isfinite(hist["loss"][0])
    if setting == "decor":
        assert hist["decor"][0] > 0
    from sdecor.models.iternorm import IterNorm

    assert any(isinstance(m, IterNorm) for m in enc.modules()) == (setting == "iternorm")
    metrics = evaluate(enc, (x[:32], y[:32], x[32:], y[32:]))
    assert 1.0 <= metrics["erank_features"] <= 16
    assert 0.0 <= metrics["probe_test_accuracy"] <= 1.0


def test_run_comparison_table():
    x, y = _tiny_data(n=40)
    cfg = SSLConfig(epochs=1, batch_size=16, queue_size=32, width=8, dim=16, hidden=32, local_weight=0.0)
    report = run_comparison(
        cfg, settings=("plain", "decor"), seeds=(0, 1), data=(x[:32], y[:32], x[32:], y[32:]), log=None
    )
    assert [r["setting"] for r in report["results"]].count("decor") == 2
    table = format_table(report)
    assert "decor" in table and "random init" in table and "+-" in table and "higher is better" in table
    json.dumps(report, default=str)


def _ssl_command(argv):
    """Parse and run `sdecor ssl ARGV` through the command module (what sdecor.cli dispatches to)."""
    import argparse

    from sdecor.commands import ssl as ssl_command

    parser = argparse.ArgumentParser(prog="sdecor ssl")
    ssl_command.add_arguments(parser)
    return ssl_command.run(parser.parse_args(argv))


def test_ssl_command(tmp_path, capsys):
    rc = _ssl_command(
        [
            "--epochs",
            "1",
            "--n-train",
            "64",
            "--n-test",
            "32",
            "--batch-size",
            "32",
            "--queue-size",
            "64",
            "--width",
            "8",
            "--settings",
            "plain,iternorm",
            "--out",
            str(tmp_path),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "iternorm" in out and "probe acc" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert {r["setting"] for r in data["results"]} == {"random init", "plain", "iternorm"}
    with pytest.raises(ValueError, match="--settings"):
        _ssl_command(["--settings", "bogus"])
    with pytest.raises(ValueError, match="--epochs"):
        _ssl_command(["--epochs", "0"])
