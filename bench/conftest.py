"""pytest configuration of bench/: the ``pedantic`` fixture of the pytest-benchmark files
(bench/test_bench_*.py, run with ``pytest bench/test_bench_<suite>.py --benchmark-only``)."""

from collections.abc import Callable

import pytest
import torch


def _pedantic(
    benchmark,
    fn: Callable[[], object],
    device: torch.device,
    label: str,
    params: dict,
    rounds: int,
    warmup_rounds: int = 0,
) -> None:
    """Time ``fn`` with pytest-benchmark's ``benchmark`` fixture.

    One untimed call first (compilation, caches), then ``rounds`` timed calls, each followed by a
    device synchronisation on CUDA so queued kernels are counted; ``label`` groups the table rows.
    """
    fn()

    def timed():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.group = label
    benchmark.extra_info.update(params)
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds)


@pytest.fixture
def pedantic():
    """``pedantic(benchmark, fn, device, label, params, rounds, warmup_rounds=0)``: see :func:`_pedantic`."""
    return _pedantic
