"""Does the default recipe learn on folders a person would bring? Generates image folders of
several kinds (bench/folders.py), trains each with nothing but `--data` (and a time limit), and
writes a markdown table: classes, images, preset, minutes, validation top-1 error, minutes to 90%
accuracy, why the run stopped.

    python bench/learning.py OUT                      # every folder, 12 minutes each at most
    python bench/learning.py OUT --only flat-10 --minutes 5 -- --init paper

Arguments after `--` go to every `python -m alexnet.train` (to compare recipes on the same
folders). The table goes to OUT/learning.md and is printed.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import folders  # noqa: E402  (bench/folders.py, beside this file)

# name: (kind, classes, train per class, val per class, WIDTHxHEIGHT, seed, minutes at most)
FOLDERS = {
    "flat-10": ("flat", 10, 120, 30, "256x256", 1, 12),
    "cluttered-20": ("cluttered", 20, 100, 25, "320x240", 2, 12),
    "embedded-jpeg": ("embedded", 10, 300, 50, "128x128", 3, 12),
    "flat-5-640x480": ("flat", 5, 50, 10, "640x480", 4, 6),
}


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def summary(records):
    """(best val top-1 error, minutes to 90% accuracy or None, minutes in all, stop reason,
    warnings)."""
    evals = [r for r in records if r["kind"] == "eval"]
    best = min((r["top1_error"] for r in evals), default=float("nan"))
    to_90 = next((r["time"] / 60 for r in evals if r["top1_error"] <= 0.10), None)
    stop = next((r for r in reversed(records) if r["kind"] == "stop"), {})
    warnings = sum(r["kind"] == "warning" for r in records)
    return best, to_90, stop.get("time", float("nan")) / 60, stop.get("reason", "?"), warnings


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--only", nargs="+", choices=list(FOLDERS), default=list(FOLDERS))
    p.add_argument("--minutes", type=float, help="time limit for every run (default: per folder)")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    rows = []
    for name in args.only:
        kind, classes, train, val, size, seed, minutes = FOLDERS[name]
        minutes = args.minutes or minutes
        folder = os.path.join(args.out, name)
        if not os.path.isdir(folder):
            width, height = map(int, size.split("x"))
            folders.write(folder, kind, classes, train, val, width, height, seed)
        run_dir = os.path.join(args.out, f"run-{name}")
        shutil.rmtree(run_dir, ignore_errors=True)      # an earlier run's: train would refuse it
        command = [sys.executable, "-m", "alexnet.train", "--data", folder, "--run-dir", run_dir,
                   "--max-minutes", str(minutes), "--log-every", "50", *extra]
        print("$", " ".join(command), flush=True)
        started = time.perf_counter()
        with open(os.path.join(args.out, f"{name}.log"), "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
        wall = (time.perf_counter() - started) / 60
        best, to_90, trained, reason, warnings = summary(read_metrics(run_dir))
        rows.append(f"| {name} | {kind} | {classes} | {classes * train:,} / {classes * val:,} | "
                    f"{size} | {trained:.1f} ({wall:.1f}) | {best:.2%} | "
                    f"{'-' if to_90 is None else f'{to_90:.1f}'} | {warnings} | {reason} |")
        print(rows[-1], flush=True)

    table = "\n".join([
        f"Default recipe{' with ' + ' '.join(extra) if extra else ''}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}",
        "",
        "| folder | kind | classes | train / val images | image size | minutes trained "
        "(wall, with decoding) | best val top-1 error | minutes to 90% accuracy | warnings | "
        "stopped because |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|", *rows])
    with open(os.path.join(args.out, "learning.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
