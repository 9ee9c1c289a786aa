"""Host time per call of the fused decorrelation penalty, with every Triton launch stubbed out.

    python bench/host_time.py [--calls 200] [--repeats 7] [--settings 256x512,256x2048,256x8192,256x64x8x8]

Runs ``sdecor.decorrelation_loss(x, backend="triton")`` forward + backward on ``meta`` tensors
(no data: allocations and elementwise ops cost only their host-side dispatch) with the GPU tile
selection (``select_config(..., interpret=False)``, 132 SMs) and every kernel launch replaced
by a no-op: what remains is the host's share of a call (validation, launch planning, buffer
set-up, autograd, the backward's scaling), the part that bounds small problems on a GPU. Times
are process CPU seconds (``time.process_time``), so other processes on a busy machine do not
count. Prints the median and best microseconds per call over ``--repeats`` rounds and the
launches per call. Not a GPU timing: triton's own per-launch cost and the CUDA allocator's
come on top.
"""

import argparse
import functools
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # lets CPU tensors through can_run; nothing is interpreted
ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/host_time.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200, help="calls per round (default 200)")
    p.add_argument("--repeats", type=int, default=7, help="rounds (default 7)")
    p.add_argument("--settings", default="256x512,256x2048,256x8192,256x64x8x8", help="comma list of NxD[xHxW]")
    p.add_argument(
        "--launcher",
        action="store_true",
        help="time the kernels' launcher (decorrelation_forward_backward) alone, not the whole op",
    )
    args = p.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import torch

    import sdecor
    from sdecor.ops.decorrelation import triton as DT

    K = DT._kernels
    launches = [0]

    class Stub:
        def __getitem__(self, grid):
            def run(*a, **k):
                launches[0] += 1

            return run

    for name in [n for n in vars(K) if n.startswith("_") and n.endswith("_kernel")]:
        setattr(K, name, Stub())
    K._sm_count = lambda device: 132
    K.select_config = functools.partial(K.select_config, interpret=False)
    DT.can_run = lambda x: (True, "")  # meta tensors stand in for CUDA ones
    torch.set_num_threads(1)
    print("| shape | host us/call (median) | best | launches/call |")
    print("|---|---|---|---|")
    for text in args.settings.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        x = torch.empty(shape, device="meta").requires_grad_(True)
        if args.launcher:
            xd, grad = x.detach(), torch.empty(shape, device="meta")
            ncs = (shape[0], shape[1], math.prod(shape[2:]))
            st = (xd.stride(0), xd.stride(1), 1 if len(shape) > 2 else 0)
            opts = dict(correlation=True, mean_reduction=True, correction=1, groups=1, eps=1e-5)

            def call(xd=xd, grad=grad, ncs=ncs, st=st, opts=opts):
                K.decorrelation_forward_backward(xd, ncs, st, grad, st, **opts)

        else:

            def call(x=x):
                x.grad = None
                sdecor.decorrelation_loss(x, backend="triton").backward()

        for _ in range(20):
            call()
        rounds = []
        for _ in range(args.repeats):
            launches[0] = 0
            t0 = time.process_time()
            for _ in range(args.calls):
                call()
            rounds.append((time.process_time() - t0) / args.calls * 1e6)
        print(
            f"| {text} | {statistics.median(rounds):.1f} | {min(rounds):.1f} | {launches[0] / args.calls:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
