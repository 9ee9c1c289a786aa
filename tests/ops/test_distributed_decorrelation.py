"""Global-batch decorrelation penalty across two gloo processes on CPU (float64).

Each rank's loss must equal the single-process loss on the concatenated batch and each rank's
gradient must equal its slice of the single-process gradient (1e-6 relative), for both modes,
both routes (natural and forced), groups, both reductions, uneven and empty slices, and
(N, C, H, W) input. A two-process DistributedDataParallel training step under torchrun checks
the DDP gradient scaling documented in sdecor.ops.decorrelation.distributed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sdecor import DecorrelationLoss, decorrelation_loss
from sdecor.ops.decorrelation.distributed import communication_volume
from sdecor.ops.decorrelation.reference import decorrelation_reference

RTOL = 1e-6

# (per-rank sample counts, feature shape after N, groups, forced route or None)
CASES = [
    ((9, 7), (6,), 1, None),  # global n=16 >= g=6: route D
    ((3, 2), (12,), 1, None),  # global n=5 < g=12: route N
    ((3, 2), (12,), 2, None),  # g=6 > n=5: route N, groups
    ((10, 6), (12,), 3, None),  # g=4 <= n=16: route D, groups
    ((6, 0), (8,), 1, None),  # an empty rank, route N
    ((9, 0), (4,), 2, None),  # an empty rank, route D
    ((4, 5), (8,), 1, "D"),  # forced D with n > g ... and below
    ((2, 3), (8,), 1, "D"),
    ((9, 8), (8,), 2, "N"),
    ((2, 1), (3, 2, 2), 1, None),  # (N, C, H, W): n = 12 samples of C=3 features
]


def _worker(rank, world, init_file, out_prefix):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from sdecor.ops.decorrelation.distributed import distributed_decorrelation_loss

    rows = []
    gen = torch.Generator().manual_seed(1234)
    for sizes, feat_shape, groups, route in CASES:
        X = torch.randn((sum(sizes),) + feat_shape, dtype=torch.float64, generator=gen)
        X[:, 1] += 0.7 * X[:, 0]  # some correlation to penalise
        start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        for mode in ("correlation", "covariance"):
            for reduction in ("mean", "sum"):
                Xf = X.clone().requires_grad_()
                ref = decorrelation_reference(Xf, mode=mode, reduction=reduction, groups=groups, route=route)
                ref.backward()
                xr = X[start:stop].clone().requires_grad_()
                if route is None:
                    loss = decorrelation_loss(
                        xr, mode=mode, reduction=reduction, groups=groups, process_group=dist.group.WORLD
                    )
                else:
                    loss = distributed_decorrelation_loss(
                        xr, dist.group.WORLD, mode=mode, reduction=reduction, groups=groups, route=route
                    )
                loss.backward()
                # ddp_grad: same value, W times the gradient
                xd = X[start:stop].clone().requires_grad_()
                loss_ddp = distributed_decorrelation_loss(
                    xd, dist.group.WORLD, mode=mode, reduction=reduction, groups=groups, route=route, ddp_grad=True
                )
                loss_ddp.backward()
                rows.append(
                    dict(
                        case=(sizes, feat_shape, groups, route, mode, reduction),
                        loss=loss.detach(),
                        ref=ref.detach(),
                        loss_ddp=loss_ddp.detach(),
                        grad=xr.grad,
                        ref_grad=Xf.grad[start:stop],
                        grad_ddp=xd.grad,
                    )
                )
    # the module form
    module = DecorrelationLoss(weight=2.0, process_group=dist.group.WORLD)
    X = torch.randn(10, 5, dtype=torch.float64, generator=gen)
    rows.append(dict(module=module(X[rank * 5 : rank * 5 + 5]).detach(), module_ref=2.0 * decorrelation_reference(X)))
    torch.save(rows, f"{out_prefix}.{rank}")
    dist.destroy_process_group()


def _rel(a, b):
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) / scale


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, str(d / "init"), str(d / "res")), nprocs=2, join=True)
    return [torch.load(d / f"res.{r}") for r in range(2)]


def test_loss_and_gradient_equal_single_process(two_rank_results):
    checked = 0
    for rank, rows in enumerate(two_rank_results):
        for row in rows:
            if "case" not in row:
                continue
            case = row["case"]
            assert _rel(row["loss"], row["ref"]) < RTOL, (rank, case)
            assert _rel(row["loss_ddp"], row["ref"]) < RTOL, (rank, case)
            if row["ref_grad"].numel():
                assert _rel(row["grad"], row["ref_grad"]) < RTOL, (rank, case)
                assert _rel(row["grad_ddp"], 2.0 * row["ref_grad"]) < RTOL, (rank, case)
            else:
                assert row["grad"].numel() == 0
            checked += 1
    assert checked == 2 * len(CASES) * 4


def test_module_form_with_process_group(two_rank_results):
    for rows in two_rank_results:
        row = rows[-1]
        assert _rel(row["module"], row["module_ref"]) < RTOL


def test_routes_cover_both():
    # the unforced cases exercise both routes (chosen by the GLOBAL n)
    routes = {
        communication_volume(sum(s), f[0], groups=g)["route"] for s, f, g, r in CASES if r is None and len(f) == 1
    }
    assert routes == {"D", "N"}
    vol = communication_volume(1024, 256, groups=4, world_size=2)
    assert vol == {"route": "D", "elements": 256 + 4 * 64 * 65 // 2, "counts": 2}
    vol = communication_volume(32, 256, groups=1, world_size=4)
    assert vol["route"] == "N" and vol["elements"] == 32 * 256


def test_process_group_without_init_is_value_error():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="not initialised"):
        decorrelation_loss(torch.randn(8, 4), process_group=object())


DDP_SCRIPT = textwrap.dedent(
    """
    import copy, json, os, sys
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from sdecor import decorrelation_loss
    from sdecor.ops.decorrelation.distributed import distributed_decorrelation_loss

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh())
            self.head = torch.nn.Linear(12, 3)

        def forward(self, x):
            feats = self.body(x)
            return self.head(feats), feats

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = Net().double()
    single = copy.deepcopy(model)
    ddp = DDP(model)
    gen = torch.Generator().manual_seed(7)
    X = torch.randn(16, 6, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    lam = 0.5
    sl = slice(rank * 8, rank * 8 + 8)

    def rel_err(grads, ref_model):
        return max(float((a - b.grad).abs().max() / b.grad.abs().max()) for a, b in zip(grads, ref_model.parameters()))

    # one DDP step on this rank's half; global-batch penalty with the DDP gradient scaling
    logits, feats = ddp(X[sl])
    pen = distributed_decorrelation_loss(feats, dist.group.WORLD, ddp_grad=True)
    (F.cross_entropy(logits, y[sl]) + lam * pen).backward()
    grads = [p.grad.clone() for p in ddp.parameters()]
    # the single-process objective on the concatenated batch
    logits, feats = single(X)
    ref_pen = decorrelation_loss(feats)
    (F.cross_entropy(logits, y) + lam * ref_pen).backward()
    err = rel_err(grads, single)
    # without ddp_grad, DDP's averaging weights the penalty W times too little (documented)
    ddp.zero_grad()
    logits, feats = ddp(X[sl])
    (F.cross_entropy(logits, y[sl]) + lam * decorrelation_loss(feats, process_group=dist.group.WORLD)).backward()
    naive = [p.grad.clone() for p in ddp.parameters()]
    single.zero_grad()
    logits, feats = single(X)
    (F.cross_entropy(logits, y) + (lam / world) * decorrelation_loss(feats)).backward()
    err_naive = rel_err(naive, single)
    # an optimizer step runs and keeps the replicas equal
    ddp.zero_grad()
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    logits, feats = ddp(X[sl])
    pen = distributed_decorrelation_loss(feats, dist.group.WORLD, ddp_grad=True)
    (F.cross_entropy(logits, y[sl]) + lam * pen).backward()
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in ddp.parameters()])
    other = flat.clone()
    dist.broadcast(other, src=0)
    if rank == 0:
        pen_err = abs(float(pen) - float(ref_pen)) / float(ref_pen)
        print(json.dumps({"err": err, "err_naive": err_naive, "pen_err": pen_err,
                          "replica_diff": float((flat - other).abs().max())}))
    dist.barrier()
    dist.destroy_process_group()
    # Even after destroy_process_group, gloo's C++ threads sometimes abort a rank during
    # interpreter teardown ("terminate called without an active exception", a known c10d/gloo
    # exit race; about 1 run in 20 here). Every result is out: leave without static destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
    """
)


def test_ddp_training_step_under_torchrun(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    res = json.loads(line)
    assert res["err"] < RTOL, res
    assert res["err_naive"] < RTOL, res
    assert res["pen_err"] < RTOL, res
    assert res["replica_diff"] == 0.0
