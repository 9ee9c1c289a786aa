"""pytest-benchmark form of the ``decorrelation`` benchmark suite (sdecor/benchmarks/decorrelation.py).

Small sizes (the suite's ``quick`` groups): on CPU the eager and compiled references (the Triton
interpreter is no performance path); on a CUDA machine also the Triton kernels and the cuBLAS
matmul floor. Run: ``pytest bench/test_bench_decorrelation.py --benchmark-only``; compare
entries of one ``benchmark.group`` (one input setting) with each other.
"""

import pytest
import torch

from sdecor.benchmarks import decorrelation as suite

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_GROUPS = None


def _groups():
    global _GROUPS
    if _GROUPS is None:
        _GROUPS = suite.run(DEVICE, quick=True)
    return _GROUPS


def _label(params: dict) -> str:
    return f"{params['dtype']}-N{params['N']}-D{params['D']}"


CASES = [
    (i, name) for i in range(len(suite.QUICK_SIZES)) for name in ("reference", "compiled", "triton", "matmul_floor")
]
IDS = ["N{}-D{}-{}".format(*suite.QUICK_SIZES[i], name) for i, name in CASES]


@pytest.mark.parametrize("index,impl_name", CASES, ids=IDS)
def test_decorrelation_forward_backward(benchmark, pedantic, index, impl_name):
    groups = [g for g in _groups() if g.params["dtype"] == "fp32"]
    group = groups[index]
    impls = {impl.name: impl for impl in group.impls}
    if impl_name not in impls:
        pytest.skip(group.skipped.get(impl_name, f"{impl_name} is timed on CUDA only"))
    rounds = 5 if impl_name == "compiled" else 10
    pedantic(benchmark, impls[impl_name].fn, DEVICE, _label(group.params), group.params, rounds, warmup_rounds=1)
