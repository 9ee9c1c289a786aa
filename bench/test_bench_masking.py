"""pytest-benchmark form of the ``masking`` benchmark suite (sdecor/benchmarks/masking.py).

Small settings (3 x 32 x 32 images, and one 3 x 224 x 224 per-pixel case): ``ours``
(mask_features on the C++ / CUDA kernels), the vectorised ``topk_scatter`` baseline, our
pure-torch ``reference`` and the per-sample ``sgt_loop``. Run:
``pytest bench/test_bench_masking.py --benchmark-only``; compare the entries of one
``benchmark.group`` (one input setting) with each other. The full tables with ratios come from
``sdecor bench --suite masking``.
"""

import pytest
import torch

from sdecor.benchmarks import masking as suite

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SETTINGS = [
    (32, 32, 32, "pixel", 0.1),
    (32, 32, 32, "element", 0.5),
    (256, 32, 32, "pixel", 0.1),
    (32, 224, 224, "pixel", 0.1),
]
IMPLS = ("ours", "topk_scatter", "reference", "sgt_loop")
_GROUPS = None


def _groups():
    global _GROUPS
    if _GROUPS is None:
        _GROUPS = suite.run(DEVICE, quick=True, settings=SETTINGS)
    return _GROUPS


def _label(params: dict) -> str:
    return f"B{params['B']}-{params['image']}-{params['saliency']}-k{params['k']}"


CASES = [(i, name) for i in range(len(SETTINGS)) for name in IMPLS]
IDS = ["B{}-{}x{}-{}-k{}-{}".format(*SETTINGS[i][:4], int(SETTINGS[i][4] * 100), name) for i, name in CASES]


@pytest.mark.parametrize("index,impl_name", CASES, ids=IDS)
def test_masking(benchmark, pedantic, index, impl_name):
    group = _groups()[index]
    fn = {impl.name: impl for impl in group.impls}[impl_name].fn
    slow = SETTINGS[index][1] == 224 and impl_name in ("reference", "sgt_loop")
    pedantic(benchmark, fn, DEVICE, _label(group.params), group.params, rounds=3 if slow else 10)
