#!/usr/bin/env bash
# Everything that needs a GPU, run on a fresh machine, with the results collected in OUTDIR:
#   env.json         device, driver, CUDA runtime, CuPy, NumPy and PyTorch versions, whether
#                    CuPy compiles a kernel (where it finds the CUDA headers), whether PyTorch
#                    sees the GPU and NCCL loads, git commit, date
#   pytest.log       the test suite, the tests that need a GPU first (pytest --gpu-first: a
#                    time limit cuts the others, most of which CPU-only CI runs too), with the
#                    reasons for skips
#   report.md        bench/report.py: kernels against a copy, training step and layers beside
#                    PyTorch, loader (report/*.json: the raw results)
#   nccl.log         bench/allreduce.py: the paper network's gradients averaged through NCCL
#   train.log        two epochs of the paper network on the embedded data set (curves.png and
#                    metrics.jsonl beside it; the 0.5 GB checkpoints stay in a temporary folder)
#   summary.txt      one line per step (added to, when OUTDIR is used again)
# The machine needs python3 with cupy, numpy, torch, pillow and pytest installed; no network.
# Nothing is installed: the steps run from this source tree (PYTHONPATH).
# A failing step does not stop the others; the exit status is 1 when any failed. Each step has a
# time limit (seconds, below), so that one that hangs leaves time for the others: it is sent
# SIGINT (pytest still writes its summary, bench/report.py renders what it measured), and
# killed 5 s later.
#
#   bash bench/gpu_run.sh OUTDIR [tests] [report] [train] [nccl]    (no step named: all four)
#
# All four, in that order, take at most 30 + 180 + 180 + 90 + 45 s plus 5 s each to stop:
# 9 min 10 s, inside one call of 10 minutes, so that a lease of 15 minutes pays for one machine
# start only. The tests come first: they compile CuPy's kernels into the empty cache, so the
# report then times warm kernels. TESTS_LIMIT, REPORT_LIMIT and TRAIN_LIMIT change the limits.
set -u

if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_run.sh OUTDIR [tests] [report] [train] [nccl]" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
shift
STEPS=" ${*:-tests report train nccl} "
for name in $STEPS; do
    case $name in tests|report|train|nccl) ;; *)
        echo "unknown step '$name': the steps are tests, report, train and nccl" >&2; exit 2 ;;
    esac
done
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
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
    timeout --signal=INT --kill-after=5 "$limit" "$@" > "$OUT/$log" 2>&1
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

step environment env.log 30 "$PY" - "$OUT/env.json" <<'EOF'
import datetime, json, os, platform, subprocess, sys

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
    # The device gets a copy of the tree without .git: COMMIT=<hash> names the commit then.
    "git_commit": run("git", "rev-parse", "HEAD") or os.environ.get("COMMIT"),
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
if "gpu_error" not in env:  # CuPy compiles every kernel, its own too, against the CUDA headers
    try:
        from cuda import pathfinder
        env["cuda_headers"] = pathfinder.find_nvidia_header_directory("cudart")
    except Exception as error:
        env["cuda_headers"] = f"not found ({type(error).__name__}: {error})"
    try:
        env["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as error:
        env["nvrtc"] = f"not loaded ({type(error).__name__}: {error})"
    try:
        from minigrad import cuda
        image = cupy.arange(6, dtype=cupy.float32).reshape(1, 1, 2, 3)
        env["kernels_compile"] = float(cupy.sum(image * 2)) == 30.0 and \
            float(cuda.im2col(image, 1, 1, 1, 1, 0, 0).sum()) == 15.0
        if not env["kernels_compile"]:
            env["gpu_error"] = "a compiled kernel computed a wrong sum"
    except Exception as error:
        env["gpu_error"] = f"compiling a kernel: {type(error).__name__}: {error}"
try:                        # without a CUDA build of PyTorch the report has no ratios
    import torch
    env.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available())
except Exception as error:
    env["torch_error"] = f"{type(error).__name__}: {error}"
from minigrad import distributed
env["nccl_loads"] = distributed._nccl_loads()
with open(sys.argv[1], "w") as f:
    json.dump(env, f, indent=2)
print(json.dumps(env, indent=2))
sys.exit("gpu_error" in env)
EOF

case $STEPS in *" tests "*)
    # The full-size test trains the paper network for minutes: a run of its own, another time.
    step tests pytest.log "${TESTS_LIMIT:-180}" "$PY" -m pytest -q -rs --durations=15 \
        --gpu-first -m "not full_size" ;; esac
case $STEPS in *" report "*)
    step report report.log "${REPORT_LIMIT:-180}" "$PY" bench/report.py --device 0 \
        --out "$OUT/report.md" ;; esac
case $STEPS in *" train "*)
    # The whole GPU training path end to end: the paper network on the embedded data set.
    RUN=$(mktemp -d)
    step train train.log "${TRAIN_LIMIT:-90}" "$PY" -m alexnet.train --preset paper \
        --synthetic-train 5120 --synthetic-val 1000 --epochs 2 --run-dir "$RUN"
    cp "$RUN/curves.png" "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null ;;
esac
case $STEPS in *" nccl "*)
    # Data parallel's GPU road: the paper network's gradients averaged by NCCL (a group of one).
    step nccl nccl.log 45 "$PY" bench/allreduce.py --preset paper --devices 0,0 --repeat 5 \
        --require-nccl ;; esac

echo "== summary (also in $OUT/summary.txt)"
printf '%s\n' "${SUMMARY[@]}" | tee -a "$OUT/summary.txt"
exit $FAILED
