#!/usr/bin/env bash
# The main job: install sdecor, then train and compare Standard, DeCov, SGT, SCAAT and
# SaliencyDecor on the embedded digits-in-clutter data (tables + results.json + PNG figures).
# Extra arguments go to `sdecor compare` (e.g. --epochs 8 --seeds 3 --out runs/compare).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0" 2>/dev/null || python -c "import torch" # keep a preinstalled torch (GPU machines)
# --no-build-isolation builds with the setuptools installed here: the SPDX license field needs >= 77
python -m pip install -q "setuptools>=77" wheel
python -m pip install -q --no-build-isolation -e .
sdecor compare --out runs/compare "$@"
