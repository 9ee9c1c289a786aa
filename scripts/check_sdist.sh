#!/usr/bin/env bash
# Packaging check, done as a new user would: build the sdist, install it into a fresh venv with
# `pip install --no-build-isolation`, and use it from outside the source tree.
#
#   bash scripts/check_sdist.sh            (run from anywhere; exit 0 when every check passes)
#
# 1. A fresh venv with torch (TORCH_SPEC, default torch==2.13.0: a local wheel where one is on
#    pip's find-links), setuptools, wheel and build.
# 2. `python -m build --sdist --no-isolation` in it (with SDECOR_NO_EXTENSION=1, which skips
#    importing torch: the sdist's files come from MANIFEST.in and the packages, not from the
#    extension list); every file git tracks under csrc/ and kernels/ must be in the tarball.
# 3. The sdist installed with a compiler that fails (CC=false CXX=false): the install must succeed
#    with a warning, `import sdecor` work without sdecor._C, and mask_features run its reference.
# 4. The sdist installed again with the real compiler: sdecor._C must load and mask_features run
#    through its compiled ops (backend="cpp"), agreeing with the reference on the mask.
#
# Environment: PYTHON (the interpreter that makes the venv; default python3), TORCH_SPEC,
# SDECOR_SDIST_KEEP=1 keeps the work folder (/tmp/sdecor-sdist.*).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1
WORK=$(mktemp -d /tmp/sdecor-sdist.XXXXXX)
[ "${SDECOR_SDIST_KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
T0=$(date +%s)
step() { echo "check_sdist [$(($(date +%s) - T0))s] $*"; }

step "1/4 fresh venv with $TORCH_SPEC, setuptools, wheel and build"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q "$TORCH_SPEC" setuptools wheel build >"$WORK/venv.log" 2>&1 || {
  tail -n 20 "$WORK/venv.log"
  exit 1
}

step "2/4 sdist"
SDECOR_NO_EXTENSION=1 "$VPY" -m build --sdist --no-isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || {
  tail -n 30 "$WORK/build.log"
  exit 1
}
SDIST=$(ls "$WORK"/dist/sdecor-*.tar.gz)
tar -tzf "$SDIST" | sed 's|^[^/]*/||' | sort >"$WORK/in_sdist.txt"
missing=$(git ls-files csrc kernels | sort | comm -23 - "$WORK/in_sdist.txt")
if [ -n "$missing" ]; then
  echo "check_sdist: FAILED: the sdist lacks:"
  echo "$missing"
  exit 1
fi
step "    $(basename "$SDIST"): $(wc -l <"$WORK/in_sdist.txt") files, every tracked csrc/ and kernels/ file in it"

# import and run from outside the source tree, so the installed package is the one used
check() {
  (cd "$WORK" && "$VPY" -W always -c "$1")
}

step "3/4 install with a failing compiler (CC=false CXX=false): must warn and install the Python package"
CC=false CXX=false "$VPY" -m pip install -v --no-build-isolation "$SDIST" >"$WORK/install-nocc.log" 2>&1 || {
  tail -n 30 "$WORK/install-nocc.log"
  echo "check_sdist: FAILED: the install aborted when the extension could not be built"
  exit 1
}
grep -q "WARNING: sdecor: sdecor._C" "$WORK/install-nocc.log" || {
  echo "check_sdist: FAILED: no build warning in the install log"
  exit 1
}
check "
import warnings, torch, sdecor
from sdecor.ops.masking import extension as _extension
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    assert not _extension.available(), 'sdecor._C loaded although its build failed'
assert any('sdecor._C is not available' in str(m.message) for m in w), [str(m.message) for m in w]
from sdecor.ops import mask_features
out, mask = mask_features(torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8), 0.5)
assert mask.view(2, -1).sum(1).tolist() == [32, 32]
print('    pure-Python install: sdecor', sdecor.__file__, '- mask_features on the reference')
"

step "4/4 install with the compiler (builds sdecor._C)"
"$VPY" -m pip install -v --no-build-isolation --no-deps --force-reinstall "$SDIST" >"$WORK/install.log" 2>&1 || {
  tail -n 30 "$WORK/install.log"
  exit 1
}
if grep -q "WARNING: sdecor:" "$WORK/install.log"; then
  grep -B 5 "WARNING: sdecor:" "$WORK/install.log" | tail -n 40
  echo "check_sdist: FAILED: the extension build warned"
  exit 1
fi
check "
import torch, sdecor
from sdecor.ops import mask_features
from sdecor.ops.masking import extension as _extension
assert _extension.has_cpu(), _extension.load_error()
x, s = torch.randn(3, 3, 9, 7), torch.rand(3, 9, 7)
out, mask = mask_features(x, s, 0.4, backend='cpp', generator=torch.Generator().manual_seed(0))
ref, ref_mask = mask_features(x, s, 0.4, backend='reference', generator=torch.Generator().manual_seed(0))
assert torch.equal(mask, ref_mask) and torch.equal(out, ref)
print('    compiled install:', sdecor._C.__file__, '- mask_features(backend=\"cpp\") equals the reference')
"
step "ok"
