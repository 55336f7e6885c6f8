#!/usr/bin/env bash
# Everything that needs a GPU, run on a fresh machine, with the results collected in OUTDIR:
#   env.json         device, driver, CUDA runtime, CuPy and NumPy versions, git commit, date
#   pytest.log       the whole test suite, with the reasons for skips
#   report.md        bench/report.py: training step, layers and kernels beside PyTorch, loader
#                    (report/*.json: the raw results)
#   train.log        two epochs of the paper network on the embedded data set (curves.png and
#                    metrics.jsonl beside it; the 0.5 GB checkpoints stay in a temporary folder)
#   nccl.log         bench/allreduce.py: the paper network's gradients averaged through NCCL
#   summary.txt      one line per step
# The machine needs python3 with cupy, numpy, torch, pillow and pytest installed; no network.
# A failing step does not stop the others; the exit status is 1 when any failed. Each step has a
# time limit (seconds, below), so that one that hangs leaves time for the others: it is sent
# SIGINT (pytest still writes its summary, bench/report.py renders what it measured), and
# killed 10 s later.
#
#   bash bench/gpu_run.sh OUTDIR [tests] [report] [nccl] [train]     (no step named: all four)
#
# Where one command may run only so long, run the steps as separate calls with the same OUTDIR:
# with 10 minutes a call, `tests nccl train` (at most 8 min 20 s with the limits below, which
# TESTS_LIMIT, REPORT_LIMIT and TRAIN_LIMIT change), then `report` (at most 3 min 30 s).
set -u

if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_run.sh OUTDIR [tests] [report] [nccl] [train]" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
shift
STEPS=" ${*:-tests report nccl train} "
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
SUMMARY=()
FAILED=0

# step NAME LOG LIMIT COMMAND...: run COMMAND for at most LIMIT seconds with its output in
# OUTDIR/LOG, and note how it went and how long it took.
step() {
    local name=$1 log=$2 limit=$3
    shift 3
    echo "== $name (log: $OUT/$log, at most ${limit} s)"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1
    local status=$? took=$((SECONDS - start))
    tail -n 3 "$OUT/$log"
    if [ $status -eq 0 ]; then
        SUMMARY+=("$(printf '%-12s ok      %4d s  %s' "$name" $took "$log")")
    elif [ $status -eq 124 ] || [ $status -eq 137 ]; then
        SUMMARY+=("$(printf '%-12s TIMEOUT %4d s  %s (limit %d s)' "$name" $took "$log" "$limit")")
        FAILED=1
    else
        SUMMARY+=("$(printf '%-12s FAILED  %4d s  %s (exit status %d)' "$name" $took "$log" $status)")
        FAILED=1
    fi
}

echo "== install (log: $OUT/install.log)"
if "$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1; then
    SUMMARY+=("$(printf '%-12s ok      %s' install install.log)")
else
    echo "pip install failed; using the source tree through PYTHONPATH instead"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    SUMMARY+=("$(printf '%-12s pip failed (install.log), so PYTHONPATH=%s' install "$PWD")")
fi

step environment env.log 60 "$PY" - "$OUT/env.json" <<'EOF'
import datetime, json, platform, subprocess, sys

import numpy


def run(*command):
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


env = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "numpy": numpy.__version__,
    "git_commit": run("git", "rev-parse", "HEAD"),
    "git_uncommitted_changes": bool(run("git", "status", "--porcelain")),
    "driver_version": run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
}
try:
    import cupy
    runtime = cupy.cuda.runtime
    env.update(cupy=cupy.__version__, device=runtime.getDeviceProperties(0)["name"].decode(),
               device_count=runtime.getDeviceCount(), driver_cuda_version=runtime.driverGetVersion(),
               cuda_runtime_version=runtime.runtimeGetVersion())
except Exception as error:  # no CuPy, no driver or no device: say which, and still write the file
    env["gpu_error"] = f"{type(error).__name__}: {error}"
with open(sys.argv[1], "w") as f:
    json.dump(env, f, indent=2)
print(json.dumps(env, indent=2))
sys.exit("gpu_error" in env)
EOF

case $STEPS in *" tests "*)
    step tests pytest.log "${TESTS_LIMIT:-300}" "$PY" -m pytest -q -rs --durations=15 ;; esac
case $STEPS in *" report "*)
    step report report.log "${REPORT_LIMIT:-210}" "$PY" bench/report.py --device 0 \
        --out "$OUT/report.md" ;; esac
case $STEPS in *" nccl "*)
    # Data parallel's GPU road: the paper network's gradients averaged by NCCL (a group of one).
    step nccl nccl.log 60 "$PY" bench/allreduce.py --preset paper --devices 0,0 --repeat 5 ;; esac
case $STEPS in *" train "*)
    # The whole GPU training path end to end: the paper network on the embedded data set.
    RUN=$(mktemp -d)
    step train train.log "${TRAIN_LIMIT:-120}" "$PY" -m alexnet.train --preset paper \
        --synthetic-train 5120 --synthetic-val 1000 --epochs 2 --run-dir "$RUN"
    cp "$RUN/curves.png" "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null ;;
esac

echo "== summary (also in $OUT/summary.txt)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit $FAILED
