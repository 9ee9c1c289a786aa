"""Configuration of the benchmark-tool tests (bench/tests).

The tools are scripts in bench/, not a package: bench/ goes on ``sys.path`` so the tests import
them as ``targets`` and ``tune_decorrelation``. Without CUDA the Triton kernels run under the
interpreter, which must be chosen before triton is first imported, hence here, at collection.
"""

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH = str(Path(__file__).resolve().parents[1])
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
