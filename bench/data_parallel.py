"""Images/s of `python -m alexnet.train` in 1 process and in K processes (mpiexec), same run.

    python bench/data_parallel.py [--ranks 2] [--preset small] [--batch-size 128] [--steps 40]

Each run trains the preset on the embedded data set for --steps steps of the same global batch
(no evaluation in between) and reports, from its metrics.jsonl, the median over its progress
lines (the first, warm-up, left out) of the images/s of all processes together, the share of
step time spent waiting for data, and (K > 1) the share spent averaging gradients. On one
machine the K processes share its cores (alexnet.train gives each cores // K BLAS threads).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(ranks, args):
    """The progress records of one run in `ranks` processes."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "alexnet.train", "--preset", args.preset,
                   "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
                   "--synthetic-train", str(args.batch_size * args.steps),
                   "--synthetic-val", str(args.batch_size), "--eval-every", "1000",
                   "--log-every", "5", "--run-dir", folder]
        if ranks > 1:
            beside = Path(sys.executable).with_name("mpiexec")     # pip's mpich, else PATH's
            command = [str(beside) if beside.exists() else shutil.which("mpiexec"), "-n",
                       str(ranks)] + command
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                           filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))))
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            return [r for r in map(json.loads, f) if r["kind"] == "train"][1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--preset", default="small", choices=["paper", "small"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating")
    args = parser.parse_args()
    results = {1: [], args.ranks: []}
    for _ in range(args.rounds):
        for ranks in results:
            results[ranks].append(run(ranks, args))
    print(f"| processes | {args.preset} preset, batch {args.batch_size}: images/s (each run) "
          "| data share | averaging share |")
    print("|---:|---|---:|---:|")
    for ranks, runs in results.items():
        rates = [statistics.median(r["images_per_s"] for r in records) for records in runs]
        data = statistics.median(r["data_share"] for records in runs for r in records)
        averaging = statistics.median(r.get("averaging_share", 0.0) for records in runs
                                      for r in records)
        print(f"| {ranks} | {', '.join(f'{rate:.1f}' for rate in rates)} | {data:.0%} | "
              f"{averaging:.0%} |")


if __name__ == "__main__":
    main()
