"""The metrics benchmark suite builds its groups (with and without Quantus) and its impls run."""

import torch

from sdecor.benchmarks import metrics as suite


def test_suite_groups_without_quantus(monkeypatch):
    monkeypatch.setattr(suite, "_quantus", lambda: (None, "quantus not importable (test)"))
    groups = suite.run(torch.device("cpu"), quick=True)
    names = [g.params["metric"] for g in groups]
    assert names[:3] == ["deletion", "pixel_flipping", "max_sensitivity"]
    for g in groups:
        impl_names = [i.name for i in g.impls]
        assert g.baseline in impl_names  # the ratio baseline is always measured
        assert all("quantus" not in n for n in impl_names)
        assert any("quantus" in k for k in g.skipped)
    deletion = groups[0]
    assert deletion.baseline == "forward floor"
    # the map-only impls are cheap: run them once
    for g in groups[3:]:
        for impl in g.impls:
            out = impl.fn()
            assert out.shape == (32,)


def test_full_mode_has_the_equal_work_row(monkeypatch):
    monkeypatch.setattr(suite, "_quantus", lambda: (None, "quantus not importable (test)"))
    names = [g.params["metric"] for g in suite.run(torch.device("cpu"), quick=False)]
    assert "pixel_flipping (equal work)" in names


def test_small_cnn_shapes():
    m = suite.SmallCNN()
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert len(convs) == 2
