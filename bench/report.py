"""Every benchmark in one markdown file: whole training steps, layers, CUDA kernels, data loading.

    python bench/report.py                     # CPU: bench/results/<date>-cpu.md
    python bench/report.py --device 0          # GPU 0: bench/results/<date>-h100.md, say
    python bench/report.py --quick --out /tmp/report.md
    python bench/report.py --from bench/results/<date>-cpu      # render saved results again

Each of bench/train_step.py (paper preset at batch 16 on CPU, 128 on GPU; small preset at 128),
bench/ops.py, bench/kernels.py (GPU only) and bench/loader.py runs in a fresh process, so that
one's memory and threads do not colour the next, and writes its JSON into a temporary folder.
The report is rendered from those files alone; they are kept in the folder named like the report
without ".md".
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from alexnet.model import PRESETS
from minigrad import backend
from ops import cpu_name

BENCH = Path(__file__).resolve().parent
MiB = 2 ** 20
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def git(*command):
    """git's answer, or "" where there is no git or no repository (a copied tree)."""
    try:
        done = subprocess.run(["git", *command], cwd=BENCH, capture_output=True, text=True)
    except OSError:
        return ""
    return done.stdout.strip()


def benchmarks(device, quick):
    """(name of its JSON, script, arguments) of every run the report is made of."""
    gpu = device != "cpu"
    on = ["--device", "0" if gpu else "cpu"]            # the one GPU they see (see gather)
    steps = ["--steps", "3", "--warmup", "1"] if quick else []
    steps += ["--memory-steps", "5"] if gpu and quick else []     # else train_step's 50
    # On a GPU the kernels first: no PyTorch to start, and a time limit cuts the last run.
    runs = [("kernels", "kernels.py", ["--repeat", "5"] if quick else [])] if gpu else []
    runs += [("step_paper", "train_step.py", on + ["--preset", "paper", "--batch",
                                                    "128" if gpu else "16"] + steps),
             ("step_small", "train_step.py", on + ["--preset", "small", "--batch", "128"] + steps),
             ("ops", "ops.py", on + (["--repeat", "2", "--warmup", "1"] if quick else []))]
    # The loader makes batches where training does: on the GPU when there is one.
    loader = on + (["--workers", "1", "2", "4"] if gpu else []) + \
        (["--epochs", "1"] if quick else [])
    return runs + [("loader", "loader.py", loader)]


def gather(device, quick, folder):
    """Run every benchmark with --json into `folder`, and write meta.json: what ran where."""
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": bool(git("status", "--porcelain", "--untracked-files=no")),
            "device": device, "cpu": cpu_name(), "cores": os.cpu_count(),
            "python": platform.python_version(), "quick": quick, "notes": [], "complete": True,
            "thread_variables": {v: os.environ.get(v, "unset") for v in THREAD_VARIABLES}}
    env = dict(os.environ)
    if device != "cpu":                 # kernels.py has no --device: every run sees just this GPU
        visible = env.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[device] if visible else str(device)
    command = "the first benchmark"
    try:
        for name, script, arguments in benchmarks(device, quick):
            script, command = BENCH / script, f"bench/{script} {' '.join(arguments)}".strip()
            if not script.exists() or "--json" not in script.read_text():
                meta["notes"].append(f"`bench/{script.name}` skipped: missing, or it has no --json")
                continue
            print(f"\n== {command}", flush=True)
            path = folder / f"{name}.json"
            status = subprocess.run([sys.executable, str(script), *arguments, "--json",
                                     str(path)], env=env).returncode
            if status != 0 or not path.exists():
                meta["complete"] = False
                meta["notes"].append(f"`{command}` failed (exit status {status}): no section")
    except KeyboardInterrupt:          # Ctrl-C or a time limit: report what was measured
        meta["complete"] = False
        meta["notes"].append(f"interrupted during `{command}`: the benchmarks after it did not "
                             "run (nor did it, unless its section is above)")
    if device != "cpu":                 # asked only now, so no CUDA context sat beside the runs
        meta["gpu"] = backend.cupy.cuda.runtime.getDeviceProperties(device)["name"].decode()
        meta["cupy"] = backend.cupy.__version__
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def short_name(meta):
    """"cpu", or the GPU's model in lower case: "NVIDIA H100 80GB HBM3" -> "h100"."""
    if meta["device"] == "cpu":
        return "cpu"
    words = re.split(r"[\s-]+", meta["gpu"].lower())
    return next((w for w in words if re.search(r"\d", w)), f"gpu{meta['device']}")


# ---- rendering --------------------------------------------------------------------------------

def markdown_table(titles, rows):
    """Titles starting with "<" are left aligned, the others right aligned."""
    rule = ["---" if t.startswith("<") else "---:" for t in titles]
    lines = [[t.lstrip("<") for t in titles], rule, *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)


def number(result, key, form="{:.2f}", scale=1.0):
    """result[key] formatted, or a dash where it was not measured (no PyTorch, say)."""
    return form.format(result[key] * scale) if result.get(key) is not None else "–"


def busy(result):
    """True when other processes kept more than a third of a core busy while it was timed."""
    return (result.get("other_cores") or 0) > 0.3


def render_header(meta, found):
    some = found.get("step_paper") or found.get("ops") or {}
    commit = meta["commit"] + (" + uncommitted changes" if meta["uncommitted"] else "")
    where = f"{meta['cpu']}, {meta['cores']} cores" if meta["device"] == "cpu" else \
        f"GPU {meta['device']}, {meta['gpu']}, CuPy {meta['cupy']} (host: {meta['cpu']}, " \
        f"{meta['cores']} cores)"
    torch = f"PyTorch {some.get('torch')} on {some.get('torch_device')}, " \
        f"{some.get('torch_threads')} threads" if some.get("torch_device") else \
        f"PyTorch not measured ({some.get('torch') or 'not installed'})"
    variables = ", ".join(f"{k}={v}" for k, v in meta["thread_variables"].items())
    return [f"# minigrad benchmarks: {short_name(meta)}, {meta['date'][:10]}", "",
            f"- {meta['date']}, commit {commit}, "
            f"{'quick run (fewer repeats)' if meta['quick'] else 'full run'}",
            f"- device: {where}",
            f"- NumPy {some.get('numpy', '?')}, BLAS {some.get('blas', '?')}; "
            f"Python {meta['python']}",
            f"- {torch}; {variables}",
            f"- minigrad: {some.get('branches', 1)} tower(s) side by side on the CPU "
            "(minigrad.parallel); freed memory "
            f"{'reused' if some.get('reuse_freed_memory') else 'given back'} "
            "(minigrad.backend.reuse_freed_memory), in the training-step runs, for both",
            "- speed vs torch = minigrad's speed / PyTorch's: above 1, minigrad is faster"]


def render_steps(results, gpu):
    rows, notes = [], []   # notes: the lines under the table
    # On a GPU a second row per preset: minigrad's TF32 mode beside PyTorch's defaults.
    variants = [("", "float32")] + ([("_tf32", "TF32")] if gpu else [])
    for r in results:
        size = PRESETS[r["preset"]].input_size
        for suffix, precision in variants:
            if f"minigrad{suffix}_images_per_s" not in r:
                continue
            phases = r[f"minigrad{suffix}_phase_ms"]
            split = [f"{ms:.0f} ({100 * ms / sum(phases.values()):.0f}%)"
                     for ms in phases.values()]
            if gpu and suffix:
                memory = ["", ""]
            elif gpu:
                memory = [number(r, "minigrad_pool_peak_used_bytes", "{:.0f}", 1 / MiB),
                          number(r, "torch_max_allocated_bytes", "{:.0f}", 1 / MiB)]
            else:
                memory = [number(r, "minigrad_rss_growth_bytes", "+{:.0f}", 1 / MiB),
                          number(r, "torch_rss_growth_bytes", "+{:.0f}", 1 / MiB)]
            ratio = "ratio" + suffix
            rows.append([f"{r['preset']} ({size}x{size}, {r['parameters'] / 1e6:.1f}M parameters)",
                         r["batch"], precision, number(r, f"minigrad{suffix}_images_per_s"),
                         number(r, f"torch{suffix}_images_per_s"), f"**{number(r, ratio)}**",
                         *split, *memory, "" if suffix else number(r, "logits_err", "{:.0e}")])
        if "ratio_to_torch_defaults" in r:
            notes.append(f"- {r['preset']}: minigrad in float32 / PyTorch's defaults (TF32 "
                          f"convolutions): **{r['ratio_to_torch_defaults']:.2f}x**")
        if gpu:
            queued = [f"{name}{suffix.replace('_', ' ')} {r[f'{name}{suffix}_queue_ms']:.1f} "
                      f"of {1e3 * statistics.median(r[f'{name}{suffix}_step_s']):.1f} ms"
                      for suffix, _ in variants for name in ("minigrad", "torch")
                      if f"{name}{suffix}_queue_ms" in r]
            notes.append(f"- {r['preset']}: host time to queue a step (near the whole step: the "
                         f"GPU waits for Python): {', '.join(queued)}")
        for name in ("minigrad", "torch"):
            use = r.get(f"{name}_in_use_after_steps_bytes")
            if use:
                notes.append(f"- {r['preset']}, {name}: memory in use after each of "
                              f"{use['steps']} more steps from {use['first'] / MiB:.0f} MiB to "
                              f"{use['last'] / MiB:.0f} MiB (max {use['max'] / MiB:.0f} MiB)")
    memory = "CuPy pool's peak in use / torch.cuda.max_memory_allocated" if gpu else \
        "growth of the process's peak RSS"
    precision = "float32: TF32 off in both; TF32: minigrad's opt-in mode (--tf32) beside " \
        "PyTorch's defaults (TF32 in cuDNN's convolutions). " if gpu else ""
    lines = ["## Whole training step (forward, loss, backward, SGD)", "",
             markdown_table(["<preset", "batch", "<precision", "minigrad img/s", "torch img/s",
                             "speed vs torch", "forward ms", "backward ms", "update ms",
                             "minigrad MiB", "torch MiB", "logits err"], rows), "",
             f"Median of {results[0]['steps']} steps after {results[0]['warmup']} warmup; "
             f"forward/backward/update split minigrad's step. {precision}MiB: {memory}, in one "
             "step. Logits err: max|minigrad - torch| / max|torch| (same weights, no dropout)."]
    lines += [""] + notes if notes else []
    lines += [f"\n**Warning:** other processes kept {r['other_cores']:.1f} cores busy during "
              f"the {r['preset']} steps: those times are not reliable." for r in results if busy(r)]
    return lines


def render_layers(ops):
    results = ops["results"]
    keys = ("minigrad_fwd_ms", "minigrad_bwd_ms", "torch_fwd_ms", "torch_bwd_ms")
    total = {k: sum(r[k] for r in results) for k in keys if all(k in r for r in results)}
    minigrad_ms = total["minigrad_fwd_ms"] + total["minigrad_bwd_ms"]
    if "torch_fwd_ms" in total:
        total["speed_vs_torch"] = (total["torch_fwd_ms"] + total["torch_bwd_ms"]) / minigrad_ms
    rows = []
    for r in results:
        share = (r["minigrad_fwd_ms"] + r["minigrad_bwd_ms"]) / minigrad_ms
        rows.append([r["op"], r["shape"], *(number(r, k) for k in keys[:2]),
                     f"{100 * share:.0f}% {'█' * round(20 * share)}",
                     *(number(r, k) for k in keys[2:]), number(r, "speed_vs_torch"),
                     f"{number(r, 'fwd_err', '{:.0e}')} / {number(r, 'bwd_err', '{:.0e}')}"])
    rows.append(["**total**", "", *(f"**{number(total, k)}**" for k in keys[:2]), "100%",
                 *(number(total, k) for k in keys[2:]), f"**{number(total, 'speed_vs_torch')}**",
                 ""])
    lines = [f"## Layers: forward and backward (one tower, batch {ops['batch']})", "",
             markdown_table(["<layer", "<C x H x W", "minigrad fwd ms", "minigrad bwd ms",
                             "<share of minigrad", "torch fwd ms", "torch bwd ms",
                             "speed vs torch", "err fwd / bwd"], rows), "",
             f"Median of {ops['repeat']} runs after {ops['warmup']} warmup. Err: max|minigrad - "
             "torch| / max|torch| of the output, and the largest over the input gradients."]
    disturbed = [f"{r['layer']} ({r['other_cores']:.1f} cores)" for r in results if busy(r)]
    if disturbed:
        lines.append(f"\n**Warning:** other processes used the CPU during {', '.join(disturbed)}: "
                     "those times are not reliable.")
    return lines


def render_kernels(kernels):
    peak, copy = kernels["peak_bandwidth"], kernels.get("copy_bandwidth")
    rows = [[k["kernel"], k["layer"], "x".join(map(str, k["input_shape"])),
             f"{k['seconds'] * 1e6:.1f}", f"{k['bytes'] / 1e6:.1f}", f"{k['bandwidth'] / 1e9:.0f}",
             f"{100 * k['bandwidth'] / copy:.0f}%" if copy else "–",
             f"{100 * k['bandwidth'] / peak:.0f}%"] for k in kernels["results"]]
    measured = f"a device-to-device copy {copy / 1e9:.0f} GB/s, " if copy else ""
    lines = [f"## CUDA kernels (batch {kernels['batch']})", "",
             markdown_table(["<kernel", "<layer", "<input", "time µs", "MB moved", "GB/s",
                             "of copy", "of peak"], rows), "",
             f"Bandwidth: bytes of the kernel's arrays / time. Yardsticks: {measured}peak "
             f"{peak / 1e9:.0f} GB/s (memory clock x bus width); median of {kernels['repeat']} "
             f"timings of {kernels['inner']} launches each."]
    unfused = kernels.get("sgd_as_array_operations_seconds")
    fused = [k["seconds"] for k in kernels["results"] if k["kernel"].startswith("sgd_update")]
    if unfused and fused:
        lines += ["", f"fc6's SGD update as the six CuPy array operations the kernel replaced: "
                  f"{unfused * 1e6:.1f} µs, **{unfused / fused[0]:.1f}x** the kernel's time."]
    return lines


def render_loader(loader):
    rates = ", ".join(f"**{r['images_per_s']:.0f}** images/s with {r['workers']} thread"
                      + "s" * (r["workers"] > 1) for r in loader["loader"])
    device = loader.get("device", "cpu")
    where = "CPU" if device == "cpu" else f"batches made on GPU {device}"
    return [f"## Data loading ({where})", "",
            f"- training loader: {rates} (batch {loader['batch']}, random "
            f"{loader['crop']}x{loader['crop']} crops, mirrors, PCA colour, mean subtracted; "
            f"median of {loader['epochs']} epochs of {loader['train_images']:,} cached images)",
            f"- preparing an image folder: {loader['prepare_images_per_s']:.0f} images/s "
            f"({loader['images']:,} JPEG files to {loader['size']}x{loader['size']}, "
            f"{loader['prepare_workers']} processes)"]


def render(folder):
    meta = json.loads((folder / "meta.json").read_text())
    found = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.stem != "meta"}
    gpu = meta["device"] != "cpu"
    steps = [found[name] for name in ("step_paper", "step_small") if name in found]
    no_kernels = [] if gpu else ["## CUDA kernels", "", "Not measured: they need a GPU "
                                 "(`python bench/report.py --device 0`)."]
    sections = [render_steps(steps, gpu) if steps else [],
                render_layers(found["ops"]) if "ops" in found else [],
                render_kernels(found["kernels"]) if "kernels" in found else no_kernels,
                render_loader(found["loader"]) if "loader" in found else [],
                ["## Notes", "", *(f"- {note}" for note in meta["notes"])] if meta["notes"] else []]
    lines = render_header(meta, found)
    for section in sections:
        lines += [""] + section if section else []
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (NumPy) or a GPU id such as 0 (CuPy)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (rough)")
    parser.add_argument("--out", type=Path,
                        help="markdown file (default: bench/results/<date>-<device>.md)")
    parser.add_argument("--from", dest="saved", type=Path, metavar="FOLDER",
                        help="render the JSON files of an earlier run instead of running anything")
    args = parser.parse_args(argv)
    if args.saved:
        if not (args.saved / "meta.json").exists():
            parser.error(f"{args.saved} has no meta.json: give a folder bench/report.py wrote")
        folder = args.saved
    else:
        try:
            device = backend.parse_device(args.device)
        except ValueError as error:
            parser.error(str(error))
        folder = Path(tempfile.mkdtemp(prefix="minigrad-report-"))
        gather(device, args.quick, folder)
    meta = json.loads((folder / "meta.json").read_text())
    out = args.out or BENCH / "results" / f"{meta['date'][:10]}-{short_name(meta)}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(folder))
    if not args.saved:                  # an earlier run's files of the same day make way
        shutil.rmtree(out.with_suffix(""), ignore_errors=True)
        shutil.move(folder, out.with_suffix(""))
    print(f"\nwrote {out}" + ("" if args.saved else f" and its JSON in {out.with_suffix('')}/"))
    return 0 if meta.get("complete", True) else 1       # a failed or interrupted benchmark: 1


if __name__ == "__main__":
    sys.exit(main())
