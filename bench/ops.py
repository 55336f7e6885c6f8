"""Forward and backward time of AlexNet's conv, LRN and pooling layers: minigrad beside PyTorch.

    python bench/ops.py                          # minigrad on NumPy, batch 16
    python bench/ops.py --device 0               # minigrad on CuPy, GPU 0, batch 128
    python bench/ops.py --layers conv,lrn1 --repeat 10 --json ops.json

Every layer runs at one tower's shape from PAPER.md, on the same float32 input, parameters and
output gradient in both libraries, in the same process. One run is a forward pass and a backward
pass, each timed on its own, with the device synchronized before every clock read; a time is the
median over --repeat runs after --warmup runs.

    speed vs torch = torch (fwd + bwd) / minigrad (fwd + bwd)     above 1: minigrad is faster
    fwd err = max |minigrad - torch| / max |torch| over the output
    bwd err = the same over every input gradient (gx, and gW, gb for a convolution), the largest

The paper's LRN does not divide alpha by n and PyTorch's does, so PyTorch runs
local_response_norm(size=5, alpha=5 * 1e-4, beta=0.75, k=2), the same layer (PAPER.md, 3.3).
Without PyTorch only minigrad's columns are printed. A warning follows the table when other
processes kept the CPU busy while a layer ran: on a shared machine those times are not reliable.
"""
import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy

from minigrad import backend
from minigrad import functional as F
from minigrad.tensor import Tensor

try:
    import torch
    import torch.nn.functional as TF
    TORCH_DEFAULTS = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
except Exception:  # not installed, or a CUDA build missing a library: no comparison columns
    torch = TORCH_DEFAULTS = None

LRN_N, LRN_K, LRN_ALPHA, LRN_BETA = 5, 2.0, 1e-4, 0.75      # paper section 3.3


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str                  # "conv", "lrn" or "pool"
    in_shape: tuple            # (C, H, W) of one image
    out_channels: int = 0      # conv only
    kernel: int = 1
    stride: int = 1
    padding: int = 0

    def describe(self):
        if self.kind == "conv":
            return f"{self.name} {self.kernel}x{self.kernel} s{self.stride} p{self.padding}"
        if self.kind == "lrn":
            return f"{self.name} n{LRN_N}"
        return f"{self.name} {self.kernel}x{self.kernel} s{self.stride}"


LAYERS = (
    Layer("conv1", "conv", (3, 227, 227), 48, kernel=11, stride=4),
    Layer("conv2", "conv", (48, 27, 27), 128, kernel=5, padding=2),
    Layer("conv3", "conv", (256, 13, 13), 192, kernel=3, padding=1),
    Layer("conv4", "conv", (192, 13, 13), 192, kernel=3, padding=1),
    Layer("conv5", "conv", (192, 13, 13), 128, kernel=3, padding=1),
    Layer("lrn1", "lrn", (48, 55, 55)),
    Layer("lrn2", "lrn", (128, 27, 27)),
    Layer("pool1", "pool", (48, 55, 55), kernel=3, stride=2),
    Layer("pool2", "pool", (128, 27, 27), kernel=3, stride=2),
    Layer("pool5", "pool", (128, 13, 13), kernel=3, stride=2),
)


def make_arrays(layer, batch, rng):
    """The layer's inputs as float32 NumPy arrays: x, and W, b for a convolution."""
    x = rng.standard_normal((batch, *layer.in_shape), dtype=numpy.float32)
    if layer.kind != "conv":
        return [x]
    C = layer.in_shape[0]
    fan_in = C * layer.kernel * layer.kernel
    W = rng.standard_normal((layer.out_channels, C, layer.kernel, layer.kernel),
                            dtype=numpy.float32)
    W *= numpy.float32(numpy.sqrt(2.0 / fan_in))            # outputs of order 1, as in training
    b = rng.standard_normal(layer.out_channels, dtype=numpy.float32)
    return [x, W, b]


def minigrad_op(layer):
    if layer.kind == "conv":
        return lambda x, W, b: F.conv2d(x, W, b, layer.stride, layer.padding)
    if layer.kind == "lrn":
        return lambda x: F.lrn(x, LRN_N, LRN_K, LRN_ALPHA, LRN_BETA)
    return lambda x: F.max_pool2d(x, layer.kernel, layer.stride)


def torch_op(layer):
    if layer.kind == "conv":
        return lambda x, W, b: TF.conv2d(x, W, b, layer.stride, layer.padding)
    if layer.kind == "lrn":                                  # PyTorch divides alpha by the size
        return lambda x: TF.local_response_norm(x, LRN_N, LRN_ALPHA * LRN_N, LRN_BETA, LRN_K)
    return lambda x: TF.max_pool2d(x, layer.kernel, layer.stride)


def measure(make_inputs, forward, backward, sync, warmup, repeat):
    """Median seconds of forward(*inputs) and of backward(y) over `repeat` runs after `warmup`.

    Each run starts from fresh leaf inputs, so gradients are assigned, never accumulated.
    Returns the two medians, the last output and the last inputs (which hold the gradients).
    """
    forward_times, backward_times = [], []
    for run in range(warmup + repeat):
        inputs = make_inputs()
        sync()
        t0 = time.perf_counter()
        y = forward(*inputs)
        sync()
        t1 = time.perf_counter()
        backward(y)
        sync()
        t2 = time.perf_counter()
        if run >= warmup:
            forward_times.append(t1 - t0)
            backward_times.append(t2 - t1)
    return statistics.median(forward_times), statistics.median(backward_times), y, inputs


def time_minigrad(layer, arrays, gy, device, warmup, repeat):
    arrays = [backend.to_device(a, device) for a in arrays]
    gy = backend.to_device(gy, device)
    sync = (lambda: None) if device == "cpu" else backend.cupy.cuda.Device(device).synchronize
    fwd, bwd, y, inputs = measure(lambda: [Tensor(a, requires_grad=True) for a in arrays],
                                  minigrad_op(layer), lambda y: y.backward(gy), sync,
                                  warmup, repeat)
    return fwd, bwd, y.numpy(), [backend.to_device(t.grad, "cpu") for t in inputs]


def time_torch(layer, arrays, gy, torch_device, warmup, repeat):
    arrays = [torch.tensor(a, device=torch_device) for a in arrays]
    gy = torch.tensor(gy, device=torch_device)
    sync = torch.cuda.synchronize if torch_device.type == "cuda" else (lambda: None)
    fwd, bwd, y, inputs = measure(lambda: [a.detach().requires_grad_() for a in arrays],
                                  torch_op(layer), lambda y: y.backward(gy), sync, warmup, repeat)
    return fwd, bwd, y.detach().cpu().numpy(), [t.grad.cpu().numpy() for t in inputs]


def relative_error(ours, theirs):
    """max |ours - theirs| / max |theirs|: elementwise ratios blow up where theirs is near 0."""
    scale = float(numpy.abs(theirs).max()) or 1.0
    return float(numpy.abs(ours.astype(numpy.float64) - theirs).max()) / scale


def run_layer(layer, batch, device, torch_device, warmup, repeat, rng):
    arrays = make_arrays(layer, batch, rng)
    C, H, W = layer.in_shape
    out_shape = minigrad_op(layer)(*[Tensor(a) for a in arrays]).shape    # (N, C', H', W')
    gy = rng.standard_normal(out_shape, dtype=numpy.float32)
    fwd, bwd, y, grads = time_minigrad(layer, arrays, gy, device, warmup, repeat)
    result = {"layer": layer.name, "op": layer.describe(),
              "shape": f"{C}x{H}x{W} -> {'x'.join(map(str, out_shape[1:]))}",
              "minigrad_fwd_ms": 1e3 * fwd, "minigrad_bwd_ms": 1e3 * bwd}
    if torch_device is not None:
        torch_fwd, torch_bwd, torch_y, torch_grads = time_torch(layer, arrays, gy, torch_device,
                                                                warmup, repeat)
        result.update(torch_fwd_ms=1e3 * torch_fwd, torch_bwd_ms=1e3 * torch_bwd,
                      speed_vs_torch=(torch_fwd + torch_bwd) / (fwd + bwd),
                      fwd_err=relative_error(y, torch_y),
                      bwd_err=max(relative_error(g, tg) for g, tg in zip(grads, torch_grads)))
    return result


# ---- what ran where, and what else was running ------------------------------------------------

def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_counters():
    """(core-seconds used by every process, core-seconds used by this one, wall clock), or None
    where /proc/stat is missing (not Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    own = os.times()
    busy = sum(ticks) - ticks[3] - ticks[4]                             # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()


def other_cores(before, after):
    """How many cores other processes kept busy, on average, between two cpu_counters()."""
    if before is None or after is None:
        return None
    (busy0, own0, t0), (busy1, own1, t1) = before, after
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)


def blas_info():
    """The BLAS NumPy calls and its thread count (threadpoolctl), or its build name without it."""
    try:
        import threadpoolctl
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        pools = [p for p in blas if "numpy" in p["filepath"]] or blas     # not torch's own BLAS
        return ", ".join(f"{p['internal_api']} {p['version']} ({p['num_threads']} threads, "
                         f"{p.get('architecture', '?')})" for p in pools) or "none found"
    except ImportError:
        pass
    try:
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return (f"{blas['name']} {blas.get('version', '')} "
                "(thread count unknown: pip install threadpoolctl)")
    except (TypeError, KeyError):
        return "unknown (pip install threadpoolctl to see it)"


def header_lines(args, device, torch_device, torch_note):
    where = f"cpu ({cpu_name()}, {os.cpu_count()} cores)" if device == "cpu" else \
        f"GPU {device} ({backend.cupy.cuda.runtime.getDeviceProperties(device)['name'].decode()})"
    lines = [
        "minigrad vs PyTorch: forward and backward of AlexNet's layers (one tower, PAPER.md)",
        f"device: {where}   batch: {args.batch}   dtype: float32   "
        f"median of {args.repeat} runs after {args.warmup} warmup",
        f"minigrad on {'NumPy' if device == 'cpu' else 'CuPy'}: numpy {numpy.__version__}, "
        f"BLAS {blas_info()}",
    ]
    if torch_device is None:
        lines.append(f"PyTorch: {torch_note}; showing minigrad's columns only")
    else:
        threads = f"{torch.get_num_threads()} threads (torch.set_num_threads(os.cpu_count()))"
        extra = "TF32 off (plain float32, as in CuPy)" if torch_device.type == "cuda" else threads
        lines.append(f"PyTorch {torch.__version__} on {torch_device}: {extra}")
        lines.append("speed vs torch = torch (fwd+bwd) / minigrad (fwd+bwd): "
                     "above 1 minigrad is faster, below 1 slower")
        lines.append("err = max|minigrad - torch| / max|torch|; fwd: the output, bwd: the largest "
                     "over every input gradient")
    lines.append("times in ms; shape is C x H x W of one image, input -> output")
    return lines


def table(results, with_torch):
    """The results as aligned text columns, with a total row when there are torch columns."""
    columns = [("layer", "op", "<", "{}"), ("shape", "shape", "<", "{}"),
               ("minigrad fwd", "minigrad_fwd_ms", ">", "{:.2f}"),
               ("minigrad bwd", "minigrad_bwd_ms", ">", "{:.2f}")]
    if with_torch:
        columns += [("torch fwd", "torch_fwd_ms", ">", "{:.2f}"),
                    ("torch bwd", "torch_bwd_ms", ">", "{:.2f}"),
                    ("speed vs torch", "speed_vs_torch", ">", "{:.2f}x"),
                    ("fwd err", "fwd_err", ">", "{:.1e}"), ("bwd err", "bwd_err", ">", "{:.1e}")]
    total = {"op": "total"}
    for key in ("minigrad_fwd_ms", "minigrad_bwd_ms", "torch_fwd_ms", "torch_bwd_ms"):
        if with_torch or key.startswith("minigrad"):
            total[key] = sum(r[key] for r in results)
    if with_torch:
        total["speed_vs_torch"] = (total["torch_fwd_ms"] + total["torch_bwd_ms"]) / \
            (total["minigrad_fwd_ms"] + total["minigrad_bwd_ms"])
    cells = [[fmt.format(r[key]) if key in r else "" for _, key, _, fmt in columns]
             for r in results + [total]]
    widths = [max(len(title), *(len(row[i]) for row in cells))
              for i, (title, *_) in enumerate(columns)]

    def line(values):
        return " | ".join(f"{value:{align}{width}}"
                          for value, (_, _, align, _), width in zip(values, columns, widths))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line([title for title, *_ in columns]), rule, *map(line, cells[:-1]), rule,
                      line(cells[-1])])


# ---- command line -----------------------------------------------------------------------------

def select_layers(spec):
    """Layers named in a comma list; a name also selects the layers it begins ("conv": all five)."""
    if spec is None:
        return list(LAYERS)
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(layer.name.startswith(w) for layer in LAYERS)]
    if unknown:
        raise ValueError(f"unknown layer(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(layer.name for layer in LAYERS)} (or conv, lrn, pool)")
    return [layer for layer in LAYERS if any(layer.name.startswith(w) for w in wanted)]


def torch_tf32(enabled):
    """PyTorch's TF32 switches: all off (plain float32, as minigrad by default), or PyTorch's
    defaults (TF32 in cuDNN's convolutions; matrix products stay float32 unless changed)."""
    torch.backends.cudnn.allow_tf32 = enabled and TORCH_DEFAULTS[0]
    torch.backends.cuda.matmul.allow_tf32 = enabled and TORCH_DEFAULTS[1]


def torch_device_for(device):
    """PyTorch's device matching minigrad's, with None and the reason when there is none."""
    if torch is None:
        return None, "not installed (pip install torch)"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count())
        return torch.device("cpu"), ""
    if not torch.cuda.is_available() or device >= torch.cuda.device_count():
        return None, f"PyTorch {torch.__version__} cannot reach GPU {device} (a CPU-only build?)"
    torch_tf32(False)                                # the same float32 arithmetic as minigrad
    return torch.device(f"cuda:{device}"), ""


def checked_device(parser, args, count_option):
    """The device of --device, after checking --batch, --warmup and the count option `count_option`
    (--repeat or --steps), with args.batch defaulted: 16 on the CPU, 128 on a GPU. Every problem
    is one parser error, before any table starts."""
    try:
        device = backend.parse_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    count = getattr(args, count_option)
    if count < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        parser.error(f"--{count_option} and --batch must be at least 1, --warmup at least 0")
    if device != "cpu":
        try:
            from minigrad import cuda  # noqa: F401  (fail here, with one sentence, not mid-table)
        except Exception as error:
            parser.error(f"minigrad's CUDA kernels could not be loaded ({error}); "
                         "run with --device cpu")
    args.batch = args.batch or (16 if device == "cpu" else 128)
    return device


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (NumPy) or a GPU id such as 0 (CuPy)")
    parser.add_argument("--batch", type=int, help="images per batch (default: 16 on cpu, 128 on GPU)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per layer (median shown)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before them")
    parser.add_argument("--layers", help="comma list of layers, e.g. conv1,lrn (default: all)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = checked_device(parser, args, "repeat")
    backend.reuse_freed_memory()             # as alexnet.train does; PyTorch benefits too
    try:
        layers = select_layers(args.layers)
    except ValueError as error:
        parser.error(str(error))

    torch_device, torch_note = torch_device_for(device)
    print("\n".join(header_lines(args, device, torch_device, torch_note)), flush=True)
    rng = numpy.random.default_rng(args.seed)
    results = []
    for layer in layers:
        before = cpu_counters()
        results.append(run_layer(layer, args.batch, device, torch_device, args.warmup,
                                 args.repeat, rng))
        results[-1]["other_cores"] = other_cores(before, cpu_counters())
    print()
    print(table(results, torch_device is not None))
    disturbed = [r for r in results if (r["other_cores"] or 0) > 0.3]
    if disturbed:
        print("\nWARNING: other processes were using the CPU during "
              + ", ".join(f"{r['layer']} ({r['other_cores']:.1f} cores)" for r in disturbed)
              + f" of {os.cpu_count()}: those times, PyTorch's above all, are not reliable")
    if args.json:
        report = {"device": str(device), "batch": args.batch, "repeat": args.repeat,
                  "warmup": args.warmup, "numpy": numpy.__version__, "blas": blas_info(),
                  "torch": None if torch is None else torch.__version__,
                  "torch_device": None if torch_device is None else str(torch_device),
                  "torch_threads": None if torch is None else torch.get_num_threads(),
                  "results": results}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
