#!/usr/bin/env bash
# GPU validation of issue 7 on the device machine (H100/H200, no network; torch, triton, ninja,
# pytest preinstalled). One call of this script = one device call of at most ~9 minutes.
#
#   bash scripts/gpu_validate.sh [STEP ...]        (run from anywhere; works in the repo root)
#
# Steps, run in the order given (default: all of them, which does not fit in one call):
#   build            SDECOR_BUILD_CUDA=1 pip install --no-deps --no-build-isolation -e . ; checks
#                    that the CUDA kernels of the extension load
#   tests            python -m pytest -q -m cuda tests/
#   targets          bench/targets.py --run: only the settings issue 7's targets are stated at
#                    (decorrelation, masking, train): the figures first, cheap insurance
#   decorrelation    the full decorrelation suite, as 3 parts (decorrelation:1/3 .. 3/3), one
#                    process and one JSON each, so a time limit loses one part, not the suite
#   masking          the full masking suite, as 2 parts (masking:1/2, masking:2/2)
#   metrics, train   the full metrics / train suite
#   SUITE:I/K        one part of decorrelation or masking (e.g. to finish one in a later call)
#   tune             bench/tune_decorrelation.py: the Triton kernels' tile-size sweep at the 8
#                    decorrelation target settings (no build needed), ~6 minutes; its JSON and
#                    Markdown go to "$OUT" as tune.json and tune.md (SDECOR_TUNE_ARGS: extra args)
# The calls of docs/gpu_validation.md:
#   bash scripts/gpu_validate.sh tune                 (optional, first: tile sizes; alone in its call)
#   bash scripts/gpu_validate.sh build targets decorrelation
#   bash scripts/gpu_validate.sh build tests masking metrics train
#
# Every step runs under `timeout`, capped by its own limit and by what is left of the call's
# budget; a failing step does not stop the next one. At the end: the JSONs of this call merged
# (bench/targets.py --merge) with the issue 7 targets table, a summary, and everything copied to
# "$OUT" when it is set (5 files: summary.txt, results.json = this call's merged results,
# results.md, targets.md, and all.tar.gz with every log, step JSON and table; the tune step adds
# tune.json and tune.md). Exit status 1 if
# any step failed or was not run for lack of time, else 0.
#
# Environment:
#   SDECOR_GPU_BUDGET_S  seconds for the whole call (default 540)
#   SDECOR_GPU_DRY=1     dry run on a CPU machine: build and tests are skipped, benchmarks run in
#                        quick mode on the CPU (tune: the interpreter on tiny shapes)
#   SDECOR_TUNE_ARGS     extra arguments of the tune step (e.g. "--context full --settings 256x512")
#   SDECOR_RUN_DIR       work folder (default /tmp/sdecor-gpu-validate, emptied first)
#   PYTHON               interpreter (default python3)
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
BUDGET=${SDECOR_GPU_BUDGET_S:-540}
DRY=${SDECOR_GPU_DRY:-0}
RUN=${SDECOR_RUN_DIR:-/tmp/sdecor-gpu-validate}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=25  # seconds kept for the merge and the copy to $OUT
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

rm -rf "$RUN" && mkdir -p "$RUN/logs" || exit 2
SUMMARY="$RUN/summary.txt"
: >"$SUMMARY"
FAILED=0
JSONS=()  # "name path" of the results each benchmark step wrote

if [ "$DRY" = 1 ]; then
  BENCH_MODE=(--quick --device cpu)
else
  BENCH_MODE=(--device cuda)
fi

note() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME CAP_SECONDS COMMAND...: log to $RUN/logs/NAME.log, record status and time
run_step() {
  local name=$1 cap=$2
  shift 2
  local now left limit t0 rc log="$RUN/logs/${name//[:\/]/-}.log"
  now=$(date +%s)
  left=$((DEADLINE - RESERVE - now))
  limit=$((left < cap ? left : cap))
  if [ "$limit" -lt 30 ]; then
    note "$(printf '%-22s NOT RUN (%ss left of the %ss budget)' "$name" "$left" "$BUDGET")"
    FAILED=1
    return 1
  fi
  echo "=== $name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout -k 15 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0))
  tail -n 12 "$log"
  if [ "$rc" -eq 0 ]; then
    note "$(printf '%-22s ok      %4ss' "$name" "$took")"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note "$(printf '%-22s TIMEOUT %4ss (limit %ss)' "$name" "$took" "$limit")"
    FAILED=1
  else
    note "$(printf '%-22s FAILED  %4ss (exit %s)' "$name" "$took" "$rc")"
    FAILED=1
  fi
  return "$rc"
}

# bench_step NAME CAP ARGS...: a bench/targets.py run into $RUN/NAME, its JSON kept for the merge
bench_step() {
  local name=$1 cap=$2
  shift 2
  local dir="$RUN/bench/${name//[:\/]/-}"
  mkdir -p "$dir"
  run_step "$name" "$cap" "$PY" bench/targets.py "$@" --out "$dir" "${BENCH_MODE[@]}"
  local json
  for json in "$dir"/*.json; do
    [ -f "$json" ] && JSONS+=("${name//[:\/]/-} $json")
  done
}

step_build() {
  if [ "$DRY" = 1 ]; then
    note "$(printf '%-22s skipped (dry run)' build)"
    return 0
  fi
  run_step build 360 env SDECOR_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install --no-deps --no-build-isolation -e . || return 1
  run_step build-check 60 "$PY" -c "import torch, sdecor
from sdecor.ops import _extension
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))
assert _extension.has_cuda(), 'sdecor._C has no CUDA kernels: ' + str(_extension.load_error())"
}

# tune: the sweep gets the step's limit minus a margin for start-up, the pool's exit and the writing
step_tune() {
  local dir="$RUN/tune" cap=360 now left limit budget
  mkdir -p "$dir"
  now=$(date +%s)
  left=$((DEADLINE - RESERVE - now))
  limit=$((left < cap ? left : cap))
  budget=$((limit - 50))
  [ "$budget" -lt 10 ] && budget=10
  if [ "$DRY" = 1 ]; then
    run_step tune "$cap" "$PY" bench/tune_decorrelation.py --quick --device cpu --budget-s "$budget" --out "$dir"
  else
    # shellcheck disable=SC2086  # SDECOR_TUNE_ARGS is a list of arguments
    run_step tune "$cap" "$PY" bench/tune_decorrelation.py --budget-s "$budget" --out "$dir" ${SDECOR_TUNE_ARGS:-}
  fi
  TUNE_DIR=$dir
}

step_tests() {
  if [ "$DRY" = 1 ]; then
    note "$(printf '%-22s skipped (dry run)' tests)"
    return 0
  fi
  run_step tests 330 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/
}

STEPS=("$@")
if [ ${#STEPS[@]} -eq 0 ]; then
  STEPS=(build tests targets decorrelation masking metrics train)
fi
note "gpu_validate: steps ${STEPS[*]}; budget ${BUDGET}s; dry=${DRY}; $(date -u '+%Y-%m-%d %H:%M UTC')"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda available', torch.cuda.is_available())" 2>&1 | tee -a "$SUMMARY"

for step in "${STEPS[@]}"; do
  case "$step" in
    build) step_build ;;
    tests) step_tests ;;
    targets) bench_step targets 300 --run ;;
    decorrelation) for i in 1 2 3; do bench_step "decorrelation:$i/3" 240 --suite decorrelation --part "$i/3"; done ;;
    masking) for i in 1 2; do bench_step "masking:$i/2" 240 --suite masking --part "$i/2"; done ;;
    decorrelation:*/* | masking:*/*) bench_step "$step" 300 --suite "${step%%:*}" --part "${step#*:}" ;;
    metrics | train) bench_step "$step" 240 --suite "$step" ;;
    tune) step_tune ;;
    *)
      note "unknown step '$step' (build tests targets decorrelation masking metrics train tune SUITE:I/K)"
      FAILED=1
      ;;
  esac
done

# merge this call's results (the targets run first: the full suites' records replace its ones)
if [ ${#JSONS[@]} -gt 0 ]; then
  mkdir -p "$RUN/merged"
  slug=$(basename "${JSONS[0]#* }" .json)
  inputs=()
  for entry in "${JSONS[@]}"; do inputs+=("${entry#* }"); done
  echo "=== merge + targets"
  if "$PY" bench/targets.py --merge "$RUN/merged/$slug.json" "${inputs[@]}" >"$RUN/logs/merge.log" 2>&1; then
    cat "$RUN/merged/$slug-targets.md"
    note "$(printf '%-22s ok' merge+targets)"
  else
    tail -n 20 "$RUN/logs/merge.log"
    note "$(printf '%-22s FAILED (see logs/merge.log)' merge+targets)"
    FAILED=1
  fi
fi

note "gpu_validate: $([ "$FAILED" = 0 ] && echo 'all steps ok' || echo 'some steps FAILED or did not run'); $(($(date +%s) - START))s"

# to $OUT (at most 8 files come back): the merged results of this call, its tables, the summary
# and everything in one archive; the step JSONs themselves only when the merge failed
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$SUMMARY" "$OUT/summary.txt"
  if [ -n "${slug:-}" ] && [ -f "$RUN/merged/$slug.json" ]; then
    cp "$RUN/merged/$slug.json" "$OUT/results.json"
    cp "$RUN/merged/$slug.md" "$OUT/results.md" 2>/dev/null
    cp "$RUN/merged/$slug-targets.md" "$OUT/targets.md" 2>/dev/null
  else
    n=0
    maxj=6
    [ -n "${TUNE_DIR:-}" ] && maxj=4  # at most 8 files come back; tune adds two
    for entry in "${JSONS[@]}"; do
      [ "$n" -lt "$maxj" ] && cp "${entry#* }" "$OUT/${entry%% *}.json" && n=$((n + 1))
    done
  fi
  if [ -n "${TUNE_DIR:-}" ]; then  # the sweep's results (tune-<device>.json / .md)
    for f in "$TUNE_DIR"/tune-*.json; do [ -f "$f" ] && cp "$f" "$OUT/tune.json"; done
    for f in "$TUNE_DIR"/tune-*.md; do [ -f "$f" ] && cp "$f" "$OUT/tune.md"; done
  fi
  tar -czf "$OUT/all.tar.gz" -C "$RUN" . 2>/dev/null || echo "could not pack $RUN"
  echo "copied to $OUT: $(ls "$OUT" | tr '\n' ' ')"
fi
exit "$FAILED"
