"""The ``barlow_twins`` bench suite: its implementations compute the same loss and gradients."""

from __future__ import annotations

import functools

import torch

from sdecor.benchmarks import barlow_twins as suite
from sdecor.benchmarks.runner import SUITES


def test_suite_is_registered_and_its_implementations_agree(monkeypatch):
    assert "barlow_twins" in SUITES
    monkeypatch.setattr(suite, "QUICK_SIZES", [(12, 20), (20, 6)])
    # aot_eager: the same graph capture without inductor's C++ compile (minutes on a small CPU)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    groups = suite.run(torch.device("cpu"), quick=True)
    assert [(g.params["N"], g.params["D"], g.params["route"]) for g in groups] == [(12, 20, "N"), (20, 6, "D")]
    for group in groups:
        assert group.baseline == "original" and "triton" in group.skipped
        results = {impl.name: impl.fn() for impl in group.impls}
        assert set(results) == {"original", "compiled", "ours"}
        for name in ("compiled", "ours"):
            for got, want in zip(results[name], results["original"]):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
