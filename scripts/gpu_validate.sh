#!/usr/bin/env bash
# GPU validation in one device command of at most 8 minutes (H100/H200, no network; torch,
# triton, ninja and pytest preinstalled):
#
#   bash scripts/gpu_validate.sh            (run from anywhere; works in the repository root)
#
# 1. build    started first, in the background: SDECOR_BUILD_CUDA=1 pip install --no-deps
#             --no-build-isolation -e . (the CUDA extension), then a check that its CUDA kernels
#             load (build.log).
# 2. tests    the CUDA tests (pytest -v -m cuda), one process per test file so the Triton JIT
#             compiles in parallel: the files that do not need the extension start at once,
#             beside the build; the masking files (and the rest) once the build is done
#             (tests.log: every process's log, in file order).
# 3. targets  the target settings (scripts/gpu_targets.py; masking and train first, one group each,
#             then decorrelation's eight): each group's result is written to
#             targets.json (the runner's results format), targets-results.md and targets.md (the
#             targets table) as soon as it is measured.
# No tuning sweep. Everything is copied to "$OUT" after every step and every 15 s while one runs,
# so a command killed at its limit still returns what it measured: at most 7 files, none in a
# folder: summary.txt (one line per step: ok, FAILED, TIMEOUT or NOT RUN, and its seconds),
# build.log, tests.log, targets.json, targets-results.md, targets.md, logs.tar.gz (everything).
# Exit status 1 if any step failed or did not run, else 0.
#
# Environment:
#   SDECOR_GPU_BUDGET_S  seconds for the whole command (default 450; the device call allows 480)
#   SDECOR_GPU_DRY=1     dry run on a CPU machine: no build (the extension in place is used), the
#                        tests collected and skipped as on a machine without CUDA, the targets in
#                        quick mode on the CPU
#   SDECOR_RUN_DIR       work folder (default /tmp/sdecor-gpu-validate, emptied first)
#   PYTHON               interpreter (default python3)
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
BUDGET=${SDECOR_GPU_BUDGET_S:-450}
DRY=${SDECOR_GPU_DRY:-0}
RUN=${SDECOR_RUN_DIR:-/tmp/sdecor-gpu-validate}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

rm -rf "$RUN" && mkdir -p "$RUN/logs" "$RUN/targets" || exit 2
SUMMARY="$RUN/summary.txt"
: >"$SUMMARY"
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((DEADLINE - $(date +%s))); }

# copy what there is to $OUT (flat: at most 7 files)
publish() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  cp "$SUMMARY" "$OUT/summary.txt" 2>/dev/null
  [ -f "$RUN/logs/build.log" ] && cp "$RUN/logs/build.log" "$OUT/build.log"
  local logs=("$RUN"/logs/tests-*.log)
  if [ -f "${logs[0]}" ]; then
    for f in "${logs[@]}"; do
      echo "===== $(basename "$f" .log)"
      cat "$f"
    done >"$OUT/.tests.log.$BASHPID" && mv -f "$OUT/.tests.log.$BASHPID" "$OUT/tests.log"
  fi
  local f
  for f in targets.json targets-results.md targets.md; do
    [ -f "$RUN/targets/$f" ] && cp "$RUN/targets/$f" "$OUT/$f"
  done
  tar -czf "$OUT/.logs.tar.gz.$BASHPID" -C "$RUN" . 2>/dev/null && mv -f "$OUT/.logs.tar.gz.$BASHPID" "$OUT/logs.tar.gz"
  return 0
}

# status NAME RC SECONDS LIMIT: one summary line
status() {
  local name=$1 rc=$2 took=$3 limit=$4
  if [ "$rc" -eq 0 ]; then
    note "$(printf '%-34s ok      %4ss' "$name" "$took")"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note "$(printf '%-34s TIMEOUT %4ss (limit %ss)' "$name" "$took" "$limit")"
    FAILED=1
  else
    note "$(printf '%-34s FAILED  %4ss (exit %s)' "$name" "$took" "$rc")"
    FAILED=1
  fi
}

# limit CAP: seconds a step may take (its cap, cut to the budget minus a reserve for the copy)
limit() {
  local cap=$1 l
  l=$(($(left) - 10))
  echo $((l < cap ? l : cap))
}

( while sleep 15; do publish; done ) &
PUBLISHER=$!
trap 'kill "$PUBLISHER" 2>/dev/null; publish' EXIT

note "gpu_validate: budget ${BUDGET}s; dry=${DRY}; $(date -u '+%Y-%m-%d %H:%M UTC')"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
"$PY" -c "import torch, setuptools; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| setuptools', setuptools.__version__)" 2>&1 | tee -a "$SUMMARY"
"$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tee -a "$SUMMARY"

# ---- 1. build, in the background
BUILD_T0=$(date +%s)
BUILD_LIMIT=$(limit 300)
if [ "$DRY" = 1 ]; then
  echo "dry run: no build; the extension in place: $("$PY" -c 'from sdecor.ops.masking import extension as e; print(e.available())' 2>&1 | tail -n 1)" >"$RUN/logs/build.log"
  BUILD_PID=
else
  (
    timeout -k 10 "$BUILD_LIMIT" env SDECOR_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" \
      "$PY" -m pip install --no-deps --no-build-isolation -v -e . >"$RUN/logs/build.log" 2>&1 || exit $?
    "$PY" - >>"$RUN/logs/build.log" 2>&1 <<'EOF'
import torch
from sdecor.ops.masking import extension as _extension
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
assert _extension.has_cuda(), "sdecor._C has no CUDA kernels: " + str(_extension.load_error())
print("sdecor._C loaded with its CUDA kernels")
EOF
  ) &
  BUILD_PID=$!
fi

# ---- 2. tests: one process per file; those that need no extension start now
NEED_EXT="tests/ops/test_mask_features.py tests/ops/test_mask_features_cuda.py tests/ops/test_ranked_masking.py"
NEED_EXT+=" tests/metrics/test_metrics.py tests/train/test_train.py"
mapfile -t CUDA_FILES < <(grep -rl --include='test_*.py' "mark.cuda" tests | sort)
declare -A TEST_PID=() TEST_T0=()
start_tests() {  # start_tests FILE...: one background pytest per file; its exit status and end time to files
  local f name
  for f in "$@"; do
    name=tests-$(basename "$f" .py)
    TEST_T0[$f]=$(date +%s)
    (
      timeout -k 10 "$(limit 360)" "$PY" -m pytest -v -m cuda -p no:cacheprovider "$f" >"$RUN/logs/$name.log" 2>&1
      echo $? >"$RUN/logs/$name.rc"
      date +%s >"$RUN/logs/$name.end"
    ) &
    TEST_PID[$f]=$!
  done
}
EARLY=()
LATE=()
for f in "${CUDA_FILES[@]}"; do
  case " $NEED_EXT " in
    *" $f "*) LATE+=("$f") ;;
    *) EARLY+=("$f") ;;
  esac
done
start_tests "${EARLY[@]}"

if [ -n "$BUILD_PID" ]; then
  wait "$BUILD_PID"
  rc=$?
  status build "$rc" $(($(date +%s) - BUILD_T0)) "$BUILD_LIMIT"
  tail -n 5 "$RUN/logs/build.log"
else
  note "$(printf '%-34s skipped (dry run)' build)"
fi
publish
start_tests "${LATE[@]}"
for f in "${CUDA_FILES[@]}"; do
  wait "${TEST_PID[$f]}"
  base="$RUN/logs/tests-$(basename "$f" .py)"
  rc=$(cat "$base.rc" 2>/dev/null || echo 1)
  end=$(cat "$base.end" 2>/dev/null || date +%s)
  status "tests $(basename "$f")" "$rc" $((end - ${TEST_T0[$f]})) "-"
  echo "    $(tail -n 1 "$base.log" | sed 's/=//g; s/^ *//; s/ *$//')" | tee -a "$SUMMARY"
done
publish

# ---- 3. targets, saved after every group
TLIMIT=$(limit 400)
if [ "$TLIMIT" -lt 30 ]; then
  note "$(printf '%-34s NOT RUN (%ss left of the %ss budget)' targets "$(left)" "$BUDGET")"
  FAILED=1
else
  if [ "$DRY" = 1 ]; then MODE=(--quick --device cpu); else MODE=(--device cuda); fi
  T0=$(date +%s)
  timeout -k 10 "$TLIMIT" "$PY" scripts/gpu_targets.py "$RUN/targets" "${MODE[@]}" >"$RUN/logs/targets.log" 2>&1
  rc=$?
  tail -n 25 "$RUN/logs/targets.log"
  status targets "$rc" $(($(date +%s) - T0)) "$TLIMIT"
fi

note "gpu_validate: $([ "$FAILED" = 0 ] && echo 'all steps ok' || echo 'some steps FAILED or did not run'); $(($(date +%s) - START))s"
publish
[ -n "${OUT:-}" ] && echo "copied to $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$FAILED"
