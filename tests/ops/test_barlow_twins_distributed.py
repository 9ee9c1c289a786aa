"""Global-batch Barlow Twins loss across two gloo processes on CPU (float64).

Each rank's loss must equal the single-process loss on the concatenated batch and each rank's
gradients (both views) must equal its slice of the single-process gradients, for both routes
(natural and forced), uneven and empty slices, and the module form.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sdecor.ops import BarlowTwinsLoss, barlow_twins_loss, barlow_twins_reference

RTOL = 1e-10

# (per-rank sample counts, D, forced route or None)
CASES = [
    ((9, 7), 6, None),  # global n = 16 >= D: route D
    ((3, 2), 12, None),  # n = 5 < D: route N
    ((6, 0), 8, None),  # an empty rank, route N
    ((9, 0), 4, None),  # an empty rank, route D
    ((1, 1), 3, None),  # one sample per rank
    ((4, 5), 8, "D"),  # forced D with n > D ... and with n < D
    ((2, 3), 8, "D"),
    ((9, 8), 8, "N"),
]


def _worker(rank, world, init_file, out_prefix):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from sdecor.ops.barlow_twins.distributed import distributed_barlow_twins_loss

    rows = []
    gen = torch.Generator().manual_seed(4321)
    for sizes, D, route in CASES:
        Z1 = torch.randn(sum(sizes), D, dtype=torch.float64, generator=gen) * 2 + 1
        Z2 = 0.7 * Z1 + torch.randn(sum(sizes), D, dtype=torch.float64, generator=gen)
        start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        for lambd in (0.0051, 0.5):
            F1, F2 = Z1.clone().requires_grad_(), Z2.clone().requires_grad_()
            ref = barlow_twins_reference(F1, F2, lambd=lambd)
            ref.backward()
            a1, a2 = Z1[start:stop].clone().requires_grad_(), Z2[start:stop].clone().requires_grad_()
            if route is None:
                loss = barlow_twins_loss(a1, a2, lambd=lambd, process_group=dist.group.WORLD)
            else:
                loss = distributed_barlow_twins_loss(a1, a2, dist.group.WORLD, lambd=lambd, route=route)
            loss.backward()
            rows.append(
                dict(
                    case=(sizes, D, route, lambd),
                    loss=loss.detach(),
                    ref=ref.detach(),
                    grads=(a1.grad, a2.grad),
                    ref_grads=(F1.grad[start:stop], F2.grad[start:stop]),
                )
            )
    module = BarlowTwinsLoss(lambd=0.2, process_group=dist.group.WORLD)
    Z1 = torch.randn(10, 5, dtype=torch.float64, generator=gen)
    Z2 = Z1 + torch.randn(10, 5, dtype=torch.float64, generator=gen)
    half = slice(rank * 5, rank * 5 + 5)
    rows.append(dict(module=module(Z1[half], Z2[half]).detach(), module_ref=barlow_twins_reference(Z1, Z2, 0.2)))
    torch.save(rows, f"{out_prefix}.{rank}")
    dist.destroy_process_group()


def _rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("bt_dist")
    mp.spawn(_worker, args=(2, str(d / "init"), str(d / "res")), nprocs=2, join=True)
    return [torch.load(d / f"res.{r}") for r in range(2)]


def test_loss_and_gradients_equal_single_process(two_rank_results):
    checked = 0
    for rank, rows in enumerate(two_rank_results):
        for row in rows:
            if "case" not in row:
                continue
            assert _rel(row["loss"], row["ref"]) < RTOL, (rank, row["case"])
            for g, r in zip(row["grads"], row["ref_grads"]):
                if r.numel():
                    assert _rel(g, r) < RTOL, (rank, row["case"])
                else:
                    assert g is None or g.numel() == 0
            checked += 1
    assert checked == 2 * len(CASES) * 2


def test_module_form_with_process_group(two_rank_results):
    for rows in two_rank_results:
        assert _rel(rows[-1]["module"], rows[-1]["module_ref"]) < RTOL


def test_triton_backend_is_refused_with_a_process_group():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="not initialised"):
        barlow_twins_loss(z, z, backend="triton", process_group=object())
