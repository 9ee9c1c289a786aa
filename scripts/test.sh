#!/usr/bin/env bash
# Install sdecor with its test extras (CPU torch on a machine without torch), lint, and run the tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q "torch==2.13.0" 2>/dev/null || python -c "import torch" # keep a preinstalled torch (GPU machines)
# --no-build-isolation builds with the setuptools installed here: the SPDX license field needs >= 77
python -m pip install -q "setuptools>=77" wheel
python -m pip install -q --no-build-isolation -e ".[test]"
# Captum and Quantus: the references the saliency-method and metric tests compare against
# (--no-deps keeps them from touching torch; Quantus needs these four at import time).
python -m pip install -q --no-deps "captum==0.9.0" "quantus==0.6.0" \
  && python -m pip install -q pandas scikit-learn scikit-image opencv-python-headless \
  || echo "captum/quantus not installed: their comparison tests will be skipped"
if command -v nvcc >/dev/null 2>&1 && [ -d csrc/cuda ]; then
  echo "nvcc compile check of csrc/cuda"
  for f in csrc/cuda/*.cu; do nvcc -std=c++17 -O2 -arch=sm_90 -c "$f" -o "/tmp/$(basename "$f").o"; done
fi
echo "lint: ruff check, ruff format --check, lint-imports (the layer and no-cycle contracts in pyproject.toml)"
ruff check .
ruff format --check .
lint-imports
python -m pytest -q "$@"
