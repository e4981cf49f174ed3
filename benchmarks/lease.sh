#!/usr/bin/env bash
# The lease-sized GPU run: on a fresh H100/H200 (cold caches, no network, no pip) build the extension, run a chosen
# subset of the gpu tests, then the benchmarks in priority order, each under its own timeout, in <= 540 s in all.
#
#   bash benchmarks/lease.sh            run it (from the repository root or anywhere)
#   bash benchmarks/lease.sh --dry-run  print the plan and each step's time budget (runs on CPU, in CI)
#   LEASE_BUDGET_S=300 bash benchmarks/lease.sh   a shorter lease: steps that no longer fit are skipped
#
# Results land in benchmarks/results/<device>/ (device slug from benchmarks.harness): every benchmark writes its own
# JSON + markdown there (--out), each step's log goes to lease/<step>.log, lease/steps.tsv gets one line per finished
# step (so a killed run keeps everything finished so far), and lease/SUMMARY.md (device, versions, commit, date, the
# step table) is rewritten after every step. Measured implementation choices go to tuning.json there
# (XLMRXL_TUNING_CACHE); `python -m xlmrxl_kernels.tuning merge <that file>` copies them into the shipped defaults.
# A step whose budget no longer fits in what is left of LEASE_BUDGET_S is skipped (recorded as such); a step whose
# script does not exist (bench_host_overhead.py, bench_comet.py, bench_corpus.py are added by other work) is
# recorded as absent. bench_host_overhead measures graphs off and on (emulated / replay-stubbed) in one run.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
TOTAL="${LEASE_BUDGET_S:-540}"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

# name | budget (s) | script that must exist ("-": none) | command
PLAN=(
  "build|75|-|$PY setup.py build_ext --inplace"
  "gpu-tests|45|-|$PY -m pytest -q --maxfail=5 -p no:cacheprovider -m gpu tests/test_attention.py::test_xl_shapes_gpu tests/test_attention.py::test_decode_gpu tests/test_tuning.py tests/test_linear_gelu.py tests/test_add_layernorm.py tests/test_cache_update.py"
  "e2e|130|-|$PY -m benchmarks.bench_e2e --quick --no-int4 --out \$OUT"
  "e2e-compile|70|-|$PY -m benchmarks.bench_e2e --peers hf-sdpa hf-sdpa-compile --name e2e_compile --out \$OUT"
  "attention|30|-|$PY -m benchmarks.bench_attention --quick --out \$OUT"
  "linear-gelu|30|-|$PY -m benchmarks.bench_linear_gelu --quick --no-compile --dtypes bf16 --out \$OUT"
  "add-layernorm|15|-|$PY -m benchmarks.bench_add_layernorm --quick --out \$OUT"
  "int4|30|-|$PY -m benchmarks.bench_int4 --quick --out \$OUT"
  "int4-methods|15|benchmarks/bench_int4_methods.py|$PY -m benchmarks.bench_int4_methods --quick --layers 2 --out \$OUT"
  "kernel-resources|10|-|$PY -m benchmarks.kernel_resources --out \$OUT"
  "host-overhead|15|benchmarks/bench_host_overhead.py|$PY -m benchmarks.bench_host_overhead --quick --out \$OUT"
  "cache-update|10|-|$PY -m benchmarks.bench_cache_update --quick --out \$OUT"
  "decode|15|-|$PY -m benchmarks.bench_decode --quick --out \$OUT"
  "comet|25|benchmarks/bench_comet.py|$PY -m benchmarks.bench_comet --quick --out \$OUT"
  "corpus|25|benchmarks/bench_corpus.py|$PY -m benchmarks.bench_corpus --quick --out \$OUT"
)

sum=0
for step in "${PLAN[@]}"; do
  IFS='|' read -r _ budget _ _ <<<"$step"
  sum=$((sum + budget))
done

if [ "$DRY" = 1 ]; then
  echo "lease plan (budget ${TOTAL} s; steps run in this order, each under its own timeout):"
  for step in "${PLAN[@]}"; do
    IFS='|' read -r name budget need cmd <<<"$step"
    opt=""
    [ "$need" != "-" ] && opt=" (if $need exists)"
    printf '  %-14s %4d s  %s%s\n' "$name" "$budget" "$cmd" "$opt"
  done
  echo "total ${sum} s of ${TOTAL} s"
  [ "$sum" -le "$TOTAL" ] || { echo "the plan exceeds the budget" >&2; exit 1; }
  exit 0
fi

START=$(date +%s)
# cold machine: Triton's cache and our tuning cache start empty; results and logs go to the results directory.
# One Python start for the device, versions and commit (each start imports torch: seconds).
OUT="$($PY - <<'PYEOF'
import json
from benchmarks import harness
out = harness.RESULTS / harness.device_slug()
(out / "lease").mkdir(parents=True, exist_ok=True)
env = harness.environment()
(out / "lease" / "environment.json").write_text(json.dumps(env, indent=1, default=str) + "\n")
print(out)
PYEOF
)" || { echo "cannot start Python with torch" >&2; exit 1; }
mkdir -p "$OUT/lease"
export OUT
export XLMRXL_TUNING_CACHE="$OUT/tuning.json"
export PYTHONUNBUFFERED=1
STEPS="$OUT/lease/steps.tsv"
printf 'step\tstatus\tseconds\tbudget\n' >"$STEPS"

summary() {
  {
    echo "# Lease run"
    echo
    echo '```'
    cat "$OUT/lease/environment.json"
    echo '```'
    echo
    echo "started $(date -u -d @"$START" +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - START )) s so far"
    echo
    echo "| step | status | s | budget |"
    echo "|---|---|---|---|"
    tail -n +2 "$STEPS" | while IFS=$'\t' read -r a b c d; do echo "| $a | $b | $c | $d |"; done
    echo
    for md in "$OUT"/*.md; do
      [ -e "$md" ] && [ "$(basename "$md")" != SUMMARY.md ] && { cat "$md"; echo; }
    done
  } >"$OUT/lease/SUMMARY.md" 2>/dev/null
}

for step in "${PLAN[@]}"; do
  IFS='|' read -r name budget need cmd <<<"$step"
  left=$((TOTAL - ($(date +%s) - START)))
  if [ "$need" != "-" ] && [ ! -e "$need" ]; then
    status="absent"
    secs=0
  elif [ "$budget" -gt "$left" ]; then
    status="skipped (${left} s left)"
    secs=0
  else
    echo "== $name (budget ${budget} s, ${left} s left)"
    t0=$(date +%s)
    # SIGINT first (Python unwinds and can write partial results), KILL 5 s later
    timeout --signal=INT --kill-after=5 "$budget" bash -c "$cmd" >"$OUT/lease/$name.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    case $rc in
      0) status="ok" ;;
      124|130|137) status="timeout" ;;
      *) status="failed (rc $rc)" ;;
    esac
    tail -n 5 "$OUT/lease/$name.log" | sed 's/^/   /'
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$budget" >>"$STEPS"
  summary
done

echo
column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
echo "results in $OUT (summary: $OUT/lease/SUMMARY.md), $(( $(date +%s) - START )) s in all"
