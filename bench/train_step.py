"""Images per second of a whole AlexNet training step: minigrad beside PyTorch.

    python bench/train_step.py                           # paper network on NumPy, batch 16
    python bench/train_step.py --device 0                # on CuPy, GPU 0, batch 128
    python bench/train_step.py --preset small --batch 128 --steps 5 --json step.json

A step is what training does for one batch (PAPER.md, section 5): the forward pass, the mean
softmax cross-entropy, the backward pass and SGD with momentum 0.9 and weight decay 5e-4. Both
networks run on the same device in float32, in the same process, on the same images and labels,
taking turns step by step (the order flips every step) so that both see the same machine. A
time is the median over --steps timed steps after --warmup untimed ones; a step ends when the
device has finished it (one synchronization, at the end, as in training).

    images/s = batch / median step time
    ratio    = minigrad images/s / torch images/s       above 1: minigrad is faster

On a GPU each framework also runs with TF32 tensor cores, taking turns with the others:
minigrad with its opt-in mode (minigrad.backend.set_tf32) and PyTorch with its defaults (TF32
in cuDNN's convolutions); the plain float32 runs have TF32 off in both. Three ratios: float32
to float32, TF32 to TF32, and minigrad's float32 to PyTorch's defaults.

minigrad's step is also split into forward (network and loss), backward (zero_grad and
loss.backward()) and update (SGD.step()), by clock reads on the CPU and CUDA events on a GPU.

PyTorch runs the same two-tower network as one set of layers (same parameter count, asserted):
a tower's kernels are one half of each layer's, "groups=2" keeps conv2, conv4 and conv5 inside
their towers, and LRN runs on each tower's half of the channels alone. PyTorch divides LRN's
alpha by n and the paper does not, so PyTorch gets alpha = 5 * 1e-4 (PAPER.md, 3.3). PyTorch
starts from minigrad's initial weights, and before timing both networks compute the logits of
the first batch in evaluation mode (no dropout): the printed difference shows they are the
same function.

Peak memory is measured in one more, untimed, step of each. CPU: the growth of the process's
peak resident set (getrusage ru_maxrss) during the step, above the resident set just before it.
It is process-wide (NumPy, PyTorch and Python alike); before each step glibc hands freed memory
back (malloc_trim) and the peak is lowered to the current RSS (Linux /proc/self/clear_refs), and
what was allocated before the step (parameters, momentum) is not in it. (tracemalloc would miss
what BLAS and PyTorch allocate.) GPU: the peak of bytes in use and the bytes held, of CuPy's
memory pool for minigrad and of PyTorch's caching allocator for PyTorch; then the bytes in use
after each of --memory-steps more steps, which must not grow.
"""
import argparse
import ctypes
import ctypes.util
import functools
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections import OrderedDict

import numpy

from alexnet.model import PIXEL_STD, PRESETS, AlexNet, parameter_count
from minigrad import backend, optim, parallel
from minigrad import functional as F
from ops import (TORCH_DEFAULTS, blas_info, checked_device, cpu_counters, cpu_name,
                 other_cores, relative_error, torch, torch_device_for, torch_tf32)

PAPER_PARAMETERS = 60_965_224           # section 3 and PAPER.md, with 1000 classes
NUM_CLASSES = 1000
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
MiB = 2 ** 20


# ---- PyTorch's network ------------------------------------------------------------------------

def torch_alexnet(preset, num_classes):
    """The two-tower AlexNet of `preset` as PyTorch layers, both towers in each layer
    (tower a's half of the channels first)."""
    nn = torch.nn

    class TowerLRN(nn.Module):
        """LRN over each tower's half of the channels: a window never spans both towers."""

        def __init__(self):
            super().__init__()
            self.lrn = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)

        def forward(self, x):
            N, C, H, W = x.shape
            return self.lrn(x.reshape(2 * N, C // 2, H, W)).reshape(N, C, H, W)

    c1, c2, c3, c4, c5 = (2 * w for w in preset.widths)     # both towers
    fc, side = 2 * preset.fc_width, preset.feature_size()
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, c1, preset.conv1_kernel, stride=preset.conv1_stride)),
        ("relu1", nn.ReLU()), ("lrn1", TowerLRN()), ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(c1, c2, 5, padding=2, groups=2)),
        ("relu2", nn.ReLU()), ("lrn2", TowerLRN()), ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(c2, c3, 3, padding=1)), ("relu3", nn.ReLU()),  # reads both towers
        ("conv4", nn.Conv2d(c3, c4, 3, padding=1, groups=2)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(c4, c5, 3, padding=1, groups=2)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, 2)),
        ("flatten", nn.Flatten()),                     # (N, c5 * side * side): tower a, then b
        ("fc6", nn.Linear(c5 * side * side, fc)), ("relu6", nn.ReLU()), ("drop6", nn.Dropout(0.5)),
        ("fc7", nn.Linear(fc, fc)), ("relu7", nn.ReLU()), ("drop7", nn.Dropout(0.5)),
        ("fc8", nn.Linear(fc, num_classes)),
    ]))


def copy_weights(net, torch_net):
    """minigrad's parameters into PyTorch's: a layer's are tower a's rows, then tower b's."""
    with torch.no_grad():
        for name, layer in torch_net.named_children():
            if not isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                continue
            towers = [net.fc8] if name == "fc8" else [getattr(net, name + t) for t in "ab"]
            for kind in ("weight", "bias"):
                value = numpy.concatenate([getattr(m, kind).numpy() for m in towers])
                getattr(layer, kind).copy_(torch.from_numpy(value))


# ---- one training step ------------------------------------------------------------------------

def minigrad_step(net, opt, x, labels, clock):
    """One step; returns its seconds (the device synchronized once, at the end), the seconds
    the host took to queue it, and those of its forward, backward and update phases, from the
    marks of a backend.Clock: clock reads on the CPU, CUDA events on a GPU (a synchronization
    between phases would idle the GPU while Python queues the next phase's first kernels).

    On a GPU the host only queues kernels, and the GPU runs behind it: when queueing takes
    nearly the whole step, the GPU waits for Python, and fewer launches would pay more than
    faster kernels."""
    start = time.perf_counter()
    marks = [clock.mark()]
    loss = F.cross_entropy(net(x), labels)
    marks.append(clock.mark())
    opt.zero_grad()
    loss.backward()
    marks.append(clock.mark())
    opt.step()
    marks.append(clock.mark())
    queued = time.perf_counter() - start
    phases = [clock.seconds(a, b) for a, b in zip(marks, marks[1:])]
    return time.perf_counter() - start, queued, phases


def torch_step(torch_net, opt, x, labels, sync):
    """One step; returns its seconds and the seconds the host took to queue it."""
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(torch_net(x), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    queued = time.perf_counter() - start
    sync()
    return time.perf_counter() - start, queued


def under(set_precision, enabled, step):
    """step, run with its framework's TF32 switch set as `enabled` says (the switches are
    global, and the variants take turns step by step)."""
    def run():
        set_precision(enabled)
        return step()
    return run


# ---- peak memory of one step ------------------------------------------------------------------

def reset_peak_rss():
    """Hand freed heap memory back to the OS, then lower the process's peak RSS to its current
    RSS; False where either is not possible (not Linux with glibc)."""
    gc.collect()
    try:
        # Without the trim, memory that glibc keeps after free() still counts as resident, and a
        # step that reuses it shows no growth at all.
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except (OSError, AttributeError):
        return False


def cpu_peak_growth(step):
    """Bytes by which the process's peak RSS rose above its RSS during step(), and whether the
    RSS and its peak could be reset first (if not, an earlier, higher peak hides this one)."""
    reset = reset_peak_rss()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss           # KiB on Linux
    step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) * 1024, reset


def minigrad_gpu_peak(step, device):
    """(peak bytes in use, bytes held) of CuPy's memory pool on `device` during step()."""
    cupy = backend.cupy
    pool = cupy.get_default_memory_pool()

    class PeakHook(cupy.cuda.MemoryHook):
        """Follows the pool's bytes in use through every malloc and free on `device`."""
        name = "PeakHook"

        def __init__(self):
            with backend.device_scope(device):
                self.used = self.peak = pool.used_bytes()

        def malloc_postprocess(self, **call):
            if call["device_id"] == device:
                self.used += call["mem_size"]
                self.peak = max(self.peak, self.used)

        def free_postprocess(self, **call):
            if call["device_id"] == device:
                self.used -= call["mem_size"]

    hook = PeakHook()
    with hook:
        step()
    with backend.device_scope(device):
        return hook.peak, pool.total_bytes()


def torch_gpu_peak(step, torch_device):
    """(peak bytes allocated, peak bytes reserved) of PyTorch's allocator during step()."""
    torch.cuda.reset_peak_memory_stats(torch_device)
    step()
    return (torch.cuda.max_memory_allocated(torch_device),
            torch.cuda.max_memory_reserved(torch_device))


# ---- the benchmark ----------------------------------------------------------------------------

def make_batch(preset, batch, rng):
    """Mean-subtracted pixels of the paper's scale (N, 3, S, S) and labels (N,), on the CPU."""
    S = preset.input_size
    x = (rng.standard_normal((batch, 3, S, S), dtype=numpy.float32) * numpy.float32(PIXEL_STD))
    return x, rng.integers(0, NUM_CLASSES, batch)


def same_function_error(net, torch_net, x, torch_x):
    """max |minigrad - torch| / max |torch| of the logits, dropout off in both."""
    net.eval(), torch_net.eval()
    with torch.no_grad():
        theirs = torch_net(torch_x).cpu().numpy()
    ours = net(x).numpy()
    net.train(), torch_net.train()
    return relative_error(ours, theirs)


def run(args, device, torch_device):
    """Build both networks, time their steps, measure their memory; the results as a dict."""
    preset = PRESETS[args.preset]
    rng = numpy.random.default_rng(args.seed)
    x_cpu, labels_cpu = make_batch(preset, args.batch, rng)
    x = backend.to_device(x_cpu, device)
    net = AlexNet(num_classes=NUM_CLASSES, devices=(device, device), preset=args.preset,
                  init="paper")
    opt = optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    count = parameter_count(net)
    if args.preset == "paper":
        assert count == PAPER_PARAMETERS, f"minigrad's AlexNet has {count:,} parameters"
    result = {"preset": args.preset, "parameters": count, "batch": args.batch}
    # labels stay on the host, as alexnet.train gives them (cross_entropy checks them there)
    step = functools.partial(minigrad_step, net, opt, x, labels_cpu, backend.Clock(device))
    gpu = device != "cpu"
    # On a GPU each framework runs twice: in plain float32, and with TF32 as minigrad's opt-in
    # mode and PyTorch's defaults have it (the _tf32 variants).
    steps = {"minigrad": under(backend.set_tf32, False, step)}
    if gpu:
        steps["minigrad_tf32"] = under(backend.set_tf32, True, step)

    if torch_device is not None:
        torch_net = torch_alexnet(preset, NUM_CLASSES).to(torch_device)
        torch_count = sum(p.numel() for p in torch_net.parameters())
        assert torch_count == count, \
            f"PyTorch's network has {torch_count:,} parameters, minigrad's {count:,}"
        copy_weights(net, torch_net)
        torch_opt = torch.optim.SGD(torch_net.parameters(), lr=LR, momentum=MOMENTUM,
                                    weight_decay=WEIGHT_DECAY)
        torch_x = torch.from_numpy(x_cpu).to(torch_device)
        torch_labels = torch.from_numpy(labels_cpu).to(torch_device)
        torch_sync = torch.cuda.synchronize if gpu else (lambda: None)
        torch_tf32(False)
        result["logits_err"] = same_function_error(net, torch_net, x, torch_x)
        step = functools.partial(torch_step, torch_net, torch_opt, torch_x, torch_labels,
                                 torch_sync)
        steps["torch"] = under(torch_tf32, False, step)
        if gpu:
            steps["torch_tf32"] = under(torch_tf32, True, step)

    times = {name: [] for name in steps}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    before = cpu_counters()
    for i in range(args.steps):
        for name in (list(steps) if i % 2 == 0 else list(steps)[::-1]):
            times[name].append(steps[name]())
    result["other_cores"] = other_cores(before, cpu_counters())

    for name, measured in times.items():
        seconds, queued, *phases = zip(*measured)
        if phases:
            result[f"{name}_phase_ms"] = {
                phase: 1e3 * statistics.median(t)
                for phase, t in zip(("forward", "backward", "update"), zip(*phases[0]))}
        result[f"{name}_step_s"] = list(seconds)
        result[f"{name}_queue_ms"] = 1e3 * statistics.median(queued)
        result[f"{name}_images_per_s"] = args.batch / statistics.median(seconds)
    for key, ours, theirs in (("ratio", "minigrad", "torch"),
                              ("ratio_tf32", "minigrad_tf32", "torch_tf32"),
                              ("ratio_to_torch_defaults", "minigrad", "torch_tf32")):
        if ours in steps and theirs in steps:
            result[key] = result[f"{ours}_images_per_s"] / result[f"{theirs}_images_per_s"]

    if not gpu:
        for name, step in steps.items():
            result[f"{name}_rss_growth_bytes"], result["rss_peak_reset"] = cpu_peak_growth(step)
        result["process_peak_rss_bytes"] = \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return result
    result["minigrad_pool_peak_used_bytes"], result["minigrad_pool_total_bytes"] = \
        minigrad_gpu_peak(steps["minigrad"], device)
    if "torch" in steps:
        result["torch_max_allocated_bytes"], result["torch_max_reserved_bytes"] = \
            torch_gpu_peak(steps["torch"], torch_device)
    # Memory in use after each of --memory-steps more steps: it must not grow.
    pool = backend.cupy.get_default_memory_pool()
    in_use = {"minigrad": lambda: pool.used_bytes(),
              "torch": lambda: torch.cuda.memory_allocated(torch_device)}
    for name in ("minigrad", "torch"):
        if name in steps and args.memory_steps:
            with backend.device_scope(device):
                after = [(steps[name](), in_use[name]())[1] for _ in range(args.memory_steps)]
            result[f"{name}_in_use_after_steps_bytes"] = {
                "steps": args.memory_steps, "first": after[0], "last": after[-1],
                "max": max(after)}
    return result


# ---- printing ---------------------------------------------------------------------------------

def header_lines(args, device, torch_device, torch_note):
    preset = PRESETS[args.preset]
    where = f"cpu ({cpu_name()}, {os.cpu_count()} cores)" if device == "cpu" else \
        f"GPU {device} ({backend.cupy.cuda.runtime.getDeviceProperties(device)['name'].decode()})"
    lines = [
        "minigrad vs PyTorch: one AlexNet training step (forward, cross-entropy, backward, "
        "SGD momentum 0.9, weight decay 5e-4)",
        f"device: {where}   batch: {args.batch}   dtype: float32   preset: {args.preset} "
        f"({preset.input_size}x{preset.input_size} input)   median of {args.steps} steps "
        f"after {args.warmup} warmup",
        f"minigrad on {'NumPy' if device == 'cpu' else 'CuPy'}: numpy {numpy.__version__}, "
        f"BLAS {blas_info()}, {parallel.branches()} tower(s) at once on the CPU",
        "memory: freed blocks kept for reuse (minigrad.backend.reuse_freed_memory), for both"
        if args.reuse_freed_memory else "memory: glibc's default allocation policy",
    ]
    if torch_device is None:
        lines.append(f"PyTorch: {torch_note}; showing minigrad only")
    elif torch_device.type == "cuda":
        lines.append(f"PyTorch {torch.__version__} on {torch_device}: float32 with TF32 off, and "
                     f"its defaults (cudnn.allow_tf32 {TORCH_DEFAULTS[0]}, matmul.allow_tf32 "
                     f"{TORCH_DEFAULTS[1]}); cudnn.benchmark {torch.backends.cudnn.benchmark}")
    else:
        lines.append(f"PyTorch {torch.__version__} on {torch_device}: {torch.get_num_threads()} "
                     "threads (torch.set_num_threads(os.cpu_count()))")
    return lines


def report_lines(result, device):
    both = "both networks" if "ratio" in result else "minigrad's network"
    lines = [f"parameters: {result['parameters']:,} in {both}"]
    if "logits_err" in result:
        lines.append(f"same function: first batch's logits, max|minigrad - torch| / max|torch| "
                     f"= {result['logits_err']:.1e} (evaluation mode)")
    names = {"minigrad": "minigrad", "torch": "PyTorch", "minigrad_tf32": "minigrad TF32",
             "torch_tf32": "PyTorch defaults (TF32)"}
    for name, title in names.items():
        if f"{name}_images_per_s" in result:
            lines.append(f"{title + ':':25} {result[f'{name}_images_per_s']:8.2f} images/s  "
                         f"({1e3 * statistics.median(result[f'{name}_step_s']):.0f} ms/step)")
    for key, what in (("ratio", "minigrad / torch, float32"),
                      ("ratio_tf32", "minigrad / torch, TF32"),
                      ("ratio_to_torch_defaults", "minigrad float32 / torch defaults")):
        if key in result:
            lines.append(f"ratio {what}: {result[key]:.2f}x   (above 1: minigrad is faster)")
    phases = result["minigrad_phase_ms"]
    total = sum(phases.values())
    lines.append("minigrad step split: " + "   ".join(
        f"{name} {ms:.0f} ms ({100 * ms / total:.0f}%)" for name, ms in phases.items()))
    if device != "cpu":
        lines.append("host time to queue a step (Python and launches; the GPU runs behind it, "
                     "so a step near its queue time waits for the host): " + "   ".join(
                         f"{names[name]} {result[f'{name}_queue_ms']:.1f} of "
                         f"{1e3 * statistics.median(result[f'{name}_step_s']):.1f} ms"
                         for name in names if f"{name}_queue_ms" in result))
    lines.append("peak memory of one step:")

    def mib(key):
        return f"{result[key] / MiB:.0f} MiB"

    if device == "cpu":
        lines.append("  (process-wide peak RSS growth above the RSS before the step, "
                     "from getrusage ru_maxrss; parameters and momentum were already allocated)")
        for name in ("minigrad", "torch"):
            if f"{name}_rss_growth_bytes" in result:
                lines.append(f"  {name + ':':9} +{mib(f'{name}_rss_growth_bytes')}")
        lines.append(f"  process peak RSS so far: {mib('process_peak_rss_bytes')}")
        if not result["rss_peak_reset"]:
            lines.append("  (RSS and its peak could not be reset on this system: memory kept from "
                         "earlier steps hides growth, PyTorch's above all)")
    else:
        lines.append(f"  minigrad: CuPy pool peak used {mib('minigrad_pool_peak_used_bytes')}, "
                     f"held {mib('minigrad_pool_total_bytes')}")
        if "torch_max_allocated_bytes" in result:
            lines.append(f"  PyTorch:  max_memory_allocated {mib('torch_max_allocated_bytes')}, "
                         f"max_memory_reserved {mib('torch_max_reserved_bytes')}")
        for name in ("minigrad", "torch"):
            if f"{name}_in_use_after_steps_bytes" in result:
                use = result[f"{name}_in_use_after_steps_bytes"]
                lines.append(f"  {name} in use after each of {use['steps']} more steps: first "
                             f"{use['first'] / MiB:.0f} MiB, last {use['last'] / MiB:.0f} MiB, "
                             f"max {use['max'] / MiB:.0f} MiB")
    if (result["other_cores"] or 0) > 0.3:
        lines.append(f"WARNING: other processes kept {result['other_cores']:.1f} of "
                     f"{os.cpu_count()} cores busy while the steps were timed: the absolute "
                     "times are not reliable (the ratio less so: both shared the same machine)")
    return lines


# ---- command line -----------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (NumPy) or a GPU id such as 0 (CuPy)")
    parser.add_argument("--batch", type=int,
                        help="images per batch (default: 16 on cpu, 128 on GPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median shown)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--memory-steps", type=int, default=50, help="GPU: steps more of each, "
                        "with the memory in use read after each (it must not grow)")
    parser.add_argument("--preset", default="paper", choices=["paper", "small"],
                        help="network size (alexnet.model.PRESETS)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--branches", type=int, default=parallel.branches(),
                        help="minigrad's towers side by side on the CPU (default "
                        f"{parallel.branches()}; 1: one after the other)")
    parser.add_argument("--glibc-default", action="store_true", help="keep glibc's default "
                        "allocation policy (no minigrad.backend.reuse_freed_memory())")
    args = parser.parse_args(argv)
    device = checked_device(parser, args, "steps")
    parallel.set_branches(args.branches)
    args.reuse_freed_memory = not args.glibc_default and backend.reuse_freed_memory()

    torch_device, torch_note = torch_device_for(device)
    print("\n".join(header_lines(args, device, torch_device, torch_note)), flush=True)
    result = run(args, device, torch_device)
    print("\n".join(report_lines(result, device)))
    if args.json:
        report = {"device": str(device), "steps": args.steps, "warmup": args.warmup,
                  "branches": parallel.branches(), "reuse_freed_memory": args.reuse_freed_memory,
                  "numpy": numpy.__version__, "blas": blas_info(),
                  "torch": None if torch is None else torch.__version__,
                  "torch_device": None if torch_device is None else str(torch_device),
                  "torch_threads": None if torch is None else torch.get_num_threads(), **result}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
