#!/usr/bin/env bash
# The lease run: everything one short GPU lease (15 minutes of device time, start-up included) should measure, in
# priority order, each step under its own timeout, with every result bundled where the device tool brings it back.
#
#   bash benchmarks/lease.sh                     run it (on the device machine the tool sets $OUT)
#   bash benchmarks/lease.sh --dry-run           print the plan, each step's budget and the total (runs anywhere)
#   bash benchmarks/lease.sh --unpack FILE [DIR] put a fetched results.tgz into benchmarks/results/<device>/ (or DIR)
#   LEASE_SIMULATE=1 OUT=DIR bash benchmarks/lease.sh
#                                                the CPU rehearsal: the whole plan at CPU sizes (CI runs it)
#
# What comes back: only plain files directly under $OUT (the device tool takes at most 8, 16 MiB each), so after
# every step this script rewrites exactly three there: SUMMARY.md (device, versions, commit, date, the step table and
# every benchmark's markdown table), steps.tsv (one line per step) and results.tgz (every JSON, markdown file and log
# the run wrote, under one top folder; logs are dropped first if it would exceed 15 MiB). A lease cut off at any
# point keeps what finished. The results themselves are written to a working directory ($LEASE_RESULTS_DIR, default
# a fresh temporary one), never to a variable named OUT.
#
# Budget: the clock starts at the top of this script. The core steps sum to at most 480 s of LEASE_BUDGET_S (540);
# the extra steps run after them only while time is left. A step that no longer fits is recorded as skipped. The
# first step measures the device's peaks (benchmarks.probe: every "% of roofline" column divides by them); the
# second compiles every Triton variant the timed steps launch, in parallel, into Triton's on-disk cache; autotune
# results persist (TRITON_CACHE_AUTOTUNING=1) and so do the measured implementation choices (XLMRXL_TUNING_CACHE),
# so no step compiles or tunes what an earlier one did. The C++ extension builds in the background from the start
# (MAX_JOBS=16, sm_90) and is installed atomically; the "build" step only waits for it.
set -u -o pipefail
T0=$(date +%s)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-python3}"
SIM="${LEASE_SIMULATE:-0}"
[ "$SIM" = 0 ] && SLACK=1 || SLACK=4 # the rehearsal's CPU steps get 4x their budget as a timeout
TOTAL="${LEASE_BUDGET_S:-540}"
CORE_LIMIT=$((TOTAL - 60))
[ "$CORE_LIMIT" -gt 480 ] && CORE_LIMIT=480

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

unpack() { # FILE [DIR]
  local file="$1" dest="${2:-}"
  [ -f "$file" ] || { echo "lease.sh --unpack: no such file: $file" >&2; return 2; }
  "$PY" - "$file" "$dest" "$ROOT/benchmarks/results" <<'PYEOF'
import json, shutil, sys, tarfile, tempfile
from pathlib import Path

src, dest, results = sys.argv[1], sys.argv[2], Path(sys.argv[3])
try:
    tar = tarfile.open(src, "r:gz")
except (tarfile.TarError, OSError) as exc:
    sys.exit(f"lease.sh --unpack: {src} is not a results.tgz from a lease ({exc})")
with tempfile.TemporaryDirectory() as tmp, tar:
    tar.extractall(tmp, filter="data")  # no absolute paths, no links out, no devices
    tops = [p for p in Path(tmp).iterdir()]
    if len(tops) != 1 or not tops[0].is_dir():
        sys.exit(f"lease.sh --unpack: {src} should hold one top folder, not {sorted(p.name for p in tops)}")
    top = tops[0]
    device = None
    for name in ("probe.json", "environment.json"):
        try:
            device = device or json.loads((top / name).read_text()).get("device")
        except (OSError, ValueError):
            pass
    if not dest:
        if not device:
            sys.exit("lease.sh --unpack: the bundle does not say which device ran it; give the folder: --unpack FILE DIR")
        slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
        dest = results / slug
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(top.rglob("*")):
        if f.is_file():
            target = dest / f.relative_to(top)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            n += 1
    print(f"unpacked {n} files into {dest}" + (f" (device: {device})" if device else ""))
PYEOF
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  --unpack) shift; [ $# -ge 1 ] || { echo "usage: lease.sh --unpack FILE [DIR]" >&2; exit 2; }; unpack "$@"; exit $? ;;
  --dry-run | "") ;;
  *) echo "lease.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
esac
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

if [ "$DRY" = 1 ]; then
  RES='$RES' # printed as is
else
  RES="${LEASE_RESULTS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/xlmrxl-lease.XXXXXX")/lease-results}"
fi
BUNDLE="${OUT:-$(dirname "$RES")/bundle}"

# the core gpu tests: bf16 at head dims 80 and 128, varlen (inside xl_shapes), decode, the GEMM epilogues, int4 at
# M 1 / 64 / 2048, the CUDA-graph tests; the rest of the gpu tests run at the end if time is left
GPU_FILES="tests/test_attention.py tests/test_linear_gelu.py tests/test_int4.py tests/test_cuda_graphs.py"
# (dtype1 is bf16 in these files' parametrize order: float16, bfloat16)
GPU_CORE='(dtype1 and (xl_shapes or linear_gelu or [1- or [64- or [2048-)) or decode_gpu or cuda_'
PYTEST="$PY -m pytest -q -p no:cacheprovider -m gpu"
E2E_PEERS="--peers hf-sdpa xlmrxl hf+xlmrxl.accelerate"

# name | budget s | core/extra | script that must exist (-: none) | device command | CPU rehearsal command
PLAN=(
  "probe|20|core|-|$PY -m benchmarks.probe --out $RES|$PY -m benchmarks.probe --tiny --out $RES"
  "precompile|45|core|-|$PY -m benchmarks.compile_sm90 --lease --jobs 16 --deadline-s 35 --out $RES|$PY -m benchmarks.compile_sm90 --lease --limit 2 --jobs 2 --out $RES"
  "build|15|core|-|wait_build|wait_build"
  "e2e|150|core|-|$PY -m benchmarks.bench_e2e --quick --no-int4 $E2E_PEERS --out $RES|$PY -m benchmarks.bench_e2e --tiny --quick --no-int4 $E2E_PEERS --out $RES"
  "choices|10|core|-|$PY -m benchmarks.bench_choices --out $RES|$PY -m benchmarks.bench_choices --out $RES"
  "gpu-tests|45|core|-|$PYTEST --junitxml=$RES/gpu-tests.xml -k '$GPU_CORE' $GPU_FILES|$PYTEST --junitxml=$RES/gpu-tests.xml -k '$GPU_CORE' $GPU_FILES"
  "attention|30|core|-|$PY -m benchmarks.bench_attention --quick --dtypes bf16 --out $RES|$PY -m benchmarks.bench_attention --tiny --quick --out $RES"
  "linear-gelu|30|core|-|$PY -m benchmarks.bench_linear_gelu --quick --no-compile --dtypes bf16 --out $RES|$PY -m benchmarks.bench_linear_gelu --tiny --quick --out $RES"
  "add-layernorm|15|core|-|$PY -m benchmarks.bench_add_layernorm --quick --no-compile --dtypes bf16 --out $RES|$PY -m benchmarks.bench_add_layernorm --tiny --quick --out $RES"
  "int4|30|core|-|$PY -m benchmarks.bench_int4 --quick --out $RES|$PY -m benchmarks.bench_int4 --tiny --quick --out $RES"
  "cache-update|10|core|-|$PY -m benchmarks.bench_cache_update --quick --models XL --out $RES|$PY -m benchmarks.bench_cache_update --tiny --quick --models XL --out $RES"
  "decode|15|core|-|$PY -m benchmarks.bench_decode --quick --out $RES|$PY -m benchmarks.bench_decode --tiny --quick --out $RES"
  "host-overhead|15|core|benchmarks/bench_host_overhead.py|$PY -m benchmarks.bench_host_overhead --quick --out $RES|$PY -m benchmarks.bench_host_overhead --tiny --quick --out $RES"
  "comet|20|core|benchmarks/bench_comet.py|$PY -m benchmarks.bench_comet --quick --out $RES|$PY -m benchmarks.bench_comet --tiny --quick --out $RES"
  "corpus|15|core|benchmarks/bench_corpus.py|$PY -m benchmarks.bench_corpus --quick --no-ray --out $RES|$PY -m benchmarks.bench_corpus --tiny --quick --no-ray --out $RES"
  "kernel-resources|10|core|-|$PY -m benchmarks.kernel_resources --out $RES|$PY -m benchmarks.kernel_resources --out $RES"
  "serve|60|extra|benchmarks/bench_serve.py|$PY -m benchmarks.bench_serve --quick --layers 6 --out $RES|$PY -m benchmarks.bench_serve --tiny --quick --out $RES"
  "int4-methods|15|extra|benchmarks/bench_int4_methods.py|$PY -m benchmarks.bench_int4_methods --quick --layers 2 --out $RES|$PY -m benchmarks.bench_int4_methods --tiny --quick --out $RES"
  "e2e-compile|60|extra|-|$PY -m benchmarks.bench_e2e --quick --batches mixed --peers hf-sdpa hf-sdpa-compile --name e2e_compile --out $RES|$PY -m benchmarks.bench_e2e --tiny --quick --batches mixed --peers hf-sdpa --name e2e_compile --out $RES"
  "gpu-tests-rest|60|extra|-|$PY -m pytest -q -p no:cacheprovider -m gpu --junitxml=$RES/gpu-tests-rest.xml -k 'not ($GPU_CORE)' tests|$PY -m pytest -q -p no:cacheprovider -m gpu --junitxml=$RES/gpu-tests-rest.xml -k 'not ($GPU_CORE)' $GPU_FILES"
)

core_sum=0
for step in "${PLAN[@]}"; do
  IFS='|' read -r _ budget tier _ <<<"$step"
  [ "$tier" = core ] && core_sum=$((core_sum + budget))
done

if [ "$DRY" = 1 ]; then
  echo "lease plan (budget ${TOTAL} s; core steps in this order, each under its own timeout, then extras while time is left):"
  for step in "${PLAN[@]}"; do
    IFS='|' read -r name budget tier need cmd _ <<<"$step"
    opt=""
    [ "$need" != "-" ] && opt=" (if $need exists)"
    [ "$tier" = extra ] && opt="$opt [extra: only if time is left]"
    printf '  %-16s %4d s  %s%s\n' "$name" "$budget" "$cmd" "$opt"
  done
  echo "core total ${core_sum} s of ${TOTAL} s (at most ${CORE_LIMIT} s: 60 s of slack)"
  [ "$core_sum" -le "$CORE_LIMIT" ] || { echo "the plan exceeds the budget: ${core_sum} s > ${CORE_LIMIT} s" >&2; exit 1; }
  exit 0
fi

[ "$SIM" = 0 ] || TOTAL=$((TOTAL * SLACK))
mkdir -p "$RES" "$BUNDLE" || exit 1
export XLMRXL_TUNING_CACHE="$RES/tuning.json" LEASE_PEAKS_JSON="$RES/probe.json"
export TRITON_CACHE_AUTOTUNING=1 PYTHONUNBUFFERED=1
STEPS="$RES/steps.tsv"
printf 'step\tstatus\tseconds\tbudget\tstarted_at_s\n' >"$STEPS"

# the environment, without starting torch (seconds): the device, versions, commit, date
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${LEASE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "mode: $([ "$SIM" = 0 ] && echo "device run" || echo "CPU rehearsal (LEASE_SIMULATE=1): numbers mean nothing")"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
  "$PY" - <<'PYEOF' 2>/dev/null
import platform
from importlib import metadata
print("python:", platform.python_version())
for d in ("torch", "triton", "transformers", "safetensors", "numpy"):
    try:
        print(f"{d}: {metadata.version(d)}")
    except metadata.PackageNotFoundError:
        print(f"{d}: not installed")
PYEOF
  echo "nproc: $(nproc 2>/dev/null)"
} >"$RES/environment.txt"

bundle() { # rewrite SUMMARY.md, steps.tsv, results.tgz under $BUNDLE (each via a temporary name and a rename)
  local parent top
  parent="$(dirname "$RES")"
  top="$(basename "$RES")"
  {
    echo "# Lease run"
    echo
    echo '```'
    cat "$RES/environment.txt"
    echo '```'
    echo
    echo "$(( $(date +%s) - T0 )) s since the script started (budget ${TOTAL} s)"
    echo
    echo "| step | status | s | budget | started at s |"
    echo "|---|---|---|---|---|"
    tail -n +2 "$STEPS" | while IFS=$'\t' read -r a b c d e; do echo "| $a | $b | $c | $d | $e |"; done
    echo
    for md in "$RES"/*.md; do
      [ -e "$md" ] && { cat "$md"; echo; }
    done
  } >"$BUNDLE/SUMMARY.md.part" 2>/dev/null
  mv -f "$BUNDLE/SUMMARY.md.part" "$BUNDLE/SUMMARY.md"
  cp "$STEPS" "$BUNDLE/steps.tsv.part" && mv -f "$BUNDLE/steps.tsv.part" "$BUNDLE/steps.tsv"
  tar -czf "$BUNDLE/results.tgz.part" -C "$parent" --exclude='ext-build' "$top" 2>/dev/null
  if [ "$(stat -c %s "$BUNDLE/results.tgz.part" 2>/dev/null || echo 0)" -gt $((15 * 1024 * 1024)) ]; then
    tar -czf "$BUNDLE/results.tgz.part" -C "$parent" --exclude='ext-build' --exclude='*.log' "$top" 2>/dev/null
  fi
  mv -f "$BUNDLE/results.tgz.part" "$BUNDLE/results.tgz"
}

# the extension builds in the background from the start; installed by a rename once it is whole
BUILD_RC="$RES/build.rc"
if [ "$SIM" = 0 ]; then
  (
    MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 "$PY" setup.py build_ext --build-lib "$RES/ext-build/lib" \
      --build-temp "$RES/ext-build/tmp" >"$RES/build.log" 2>&1
    rc=$?
    so="$(ls "$RES"/ext-build/lib/xlmrxl_kernels/_C*.so 2>/dev/null | head -n 1)"
    if [ "$rc" = 0 ] && [ -n "$so" ]; then
      cp "$so" "xlmrxl_kernels/.$(basename "$so").part" && mv -f "xlmrxl_kernels/.$(basename "$so").part" "xlmrxl_kernels/$(basename "$so")"
    fi
    echo "$rc" >"$BUILD_RC"
  ) &
else
  ("$PY" setup.py --name >"$RES/build.log" 2>&1; echo $? >"$BUILD_RC") & # the rehearsal checks setup.py only
fi
export BUILD_RC
wait_build='while [ ! -s "$BUILD_RC" ]; do sleep 1; done; cat "$RES/build.log" | tail -n 20; exit "$(cat "$BUILD_RC")"'
export RES

run_step() { # name budget cmd
  local name="$1" budget="$2" cmd="$3" t0 rc status
  [ "$cmd" = wait_build ] && cmd="$wait_build"
  echo "== $name (budget ${budget} s, $((TOTAL - ($(date +%s) - T0))) s left)"
  t0=$(date +%s)
  # SIGINT first (Python unwinds and writes partial results), KILL 5 s later
  timeout --signal=INT --kill-after=5 $((budget * SLACK)) bash -c "$cmd" >"$RES/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 130 | 137) status="timeout" ;;
    *) status="failed (rc $rc)" ;;
  esac
  tail -n 3 "$RES/$name.log" | sed 's/^/   /'
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$budget" "$((t0 - T0))" >>"$STEPS"
}

bundle
for tier in core extra; do
  for step in "${PLAN[@]}"; do
    IFS='|' read -r name budget t need dev_cmd sim_cmd <<<"$step"
    [ "$t" = "$tier" ] || continue
    left=$((TOTAL - ($(date +%s) - T0)))
    if [ "$need" != "-" ] && [ ! -e "$need" ]; then
      printf '%s\tabsent (%s)\t0\t%s\t-\n' "$name" "$need" "$budget" >>"$STEPS"
    elif [ $((budget * SLACK)) -gt "$left" ]; then
      printf '%s\tskipped (%s s left)\t0\t%s\t-\n' "$name" "$left" "$budget" >>"$STEPS"
    elif [ "$SIM" != 0 ] && [ "$tier" = extra ] && [ "${LEASE_SIM_EXTRAS:-0}" = 0 ]; then
      printf '%s\tskipped (rehearsal: extras run with LEASE_SIM_EXTRAS=1)\t0\t%s\t-\n' "$name" "$budget" >>"$STEPS"
    elif [ "$SIM" = 0 ]; then
      run_step "$name" "$budget" "$dev_cmd"
    else
      run_step "$name" "$budget" "$sim_cmd"
    fi
    bundle
  done
done

echo
column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
echo "results in $RES; bundle (SUMMARY.md, steps.tsv, results.tgz) in $BUNDLE; $(($(date +%s) - T0)) s in all"
