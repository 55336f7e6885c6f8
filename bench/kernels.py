"""Time every CUDA kernel of minigrad at AlexNet's batch-128 shapes and compare the memory
bandwidth it reaches with a device-to-device copy's, measured in the same run, and the GPU's peak.

    python bench/kernels.py [--repeat 30] [--json PATH]

Shapes are one tower's (PAPER.md), float32; the SGD update's is fc6's weights, and it is also
timed as the six CuPy array operations it replaced. A kernel is timed alone: its plan is made
once and the compiled kernel launched `--inner` times between two CUDA events, so neither
allocation nor the Python around a call is counted; the table gives the median over `--repeat`
such timings. Bandwidth = bytes of every array the kernel takes (inputs read, outputs written,
each counted once; twice for the arrays SGD updates in place) / time. That is the traffic no
kernel can avoid; im2col reads each pixel up to kh*kw times and can still come near the peak
because the repeats hit the cache. The yardstick is the
bandwidth of cudaMemcpy from device to device (COPY_BYTES read and as many written), timed the
same way: what a kernel that only moves its bytes reaches in practice (goal: 80% of it).

Without a GPU it prints one line saying so and exits with status 0.
"""
import argparse
import json
import statistics
import sys

from minigrad import backend, cuda, optim
from minigrad.tensor import Tensor

BATCH = 128
CONVS = [  # name, input shape, (kh, kw, sy, sx, ph, pw)
    ("conv1", (BATCH, 3, 227, 227), (11, 11, 4, 4, 0, 0)),
    ("conv2", (BATCH, 48, 27, 27), (5, 5, 1, 1, 2, 2)),
    ("conv3", (BATCH, 256, 13, 13), (3, 3, 1, 1, 1, 1)),
]
POOLS = [("pool1", (BATCH, 48, 55, 55)), ("pool2", (BATCH, 128, 27, 27)), ("pool5", (BATCH, 128, 13, 13))]
LRNS = [("lrn1", (BATCH, 48, 55, 55)), ("lrn2", (BATCH, 128, 27, 27))]
LRN = dict(n=5, k=2.0, alpha=1e-4, beta=0.75)
FC6_WEIGHTS = (2048, 9216)          # one tower's fc6: the largest parameter, 31% of all of them
SGD = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
# CUDA runtime device attributes: cudaDevAttrMemoryClockRate (kHz), cudaDevAttrGlobalMemoryBusWidth (bits)
MEMORY_CLOCK_KHZ, MEMORY_BUS_BITS = 36, 37
COPY_BYTES = 256 * 2 ** 20


def plans(cupy):
    """(layer, plan) of every kernel at every AlexNet shape, made one at a time to bound memory."""
    rng = cupy.random.default_rng(0)

    def normal(shape):
        return rng.standard_normal(shape, dtype=cupy.float32)

    for layer, shape, geometry in CONVS:
        x = normal(shape)
        yield layer, cuda.plan_im2col(x, *geometry)
        yield layer, cuda.plan_col2im(cuda.im2col(x, *geometry), shape, *geometry)
    for layer, shape in POOLS:
        x = normal(shape)
        yield layer, cuda.plan_max_pool_forward(x, 3, 3, 2, 2)
        y, argmax = cuda.max_pool_forward(x, 3, 3, 2, 2)
        yield layer, cuda.plan_max_pool_backward(normal(y.shape), argmax, shape, 3, 3, 2, 2)
    for layer, shape in LRNS:
        x = normal(shape)
        yield layer, cuda.plan_lrn_forward(x, **LRN)
        y, scale = cuda.lrn_forward(x, **LRN)
        yield layer, cuda.plan_lrn_backward(normal(shape), x, y, scale, LRN["n"], LRN["alpha"], LRN["beta"])
    w, g, v = sgd_arrays(cupy)
    yield "fc6", cuda.plan_sgd_update(w, g, v, SGD["momentum"], SGD["weight_decay"] * SGD["lr"],
                                      SGD["lr"])


def sgd_arrays(cupy):
    """Weights, gradient and momentum of one tower's fc6."""
    rng = cupy.random.default_rng(1)
    return (rng.standard_normal(FC6_WEIGHTS, dtype=cupy.float32) for _ in range(3))


def sgd_as_array_operations(cupy, repeat, inner):
    """Median time of optim.SGD's update of fc6 as CuPy array operations (SGD._update, what a
    GPU ran before minigrad/kernels/sgd.cu: six kernels, 15 passes over the arrays)."""
    w, g, v = sgd_arrays(cupy)
    sgd = optim.SGD([Tensor(w)], **SGD)
    return median_seconds(cupy, lambda: sgd._update(w, g, v), repeat, inner)


def median_seconds(cupy, launch, repeat, inner):
    """Median time of one launch(), by CUDA events around `inner` launches."""
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        for _ in range(inner):
            launch()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3 / inner)
    return statistics.median(times)


def kernel_seconds(cupy, plan, repeat, inner):
    """Median time of one launch of `plan`'s kernel, its plan made and its kernel compiled once."""
    cuda.launch(plan)                                                   # compiles, and checks the plan
    kernel = cuda.compiled_kernel(plan.module, plan.kernel)
    return median_seconds(cupy, lambda: kernel(plan.grid, plan.block, plan.args), repeat, inner)


def copy_bandwidth(cupy, repeat, inner):
    """Bytes per second of a device-to-device cudaMemcpy of COPY_BYTES (read + written)."""
    source, target = cupy.empty(COPY_BYTES, cupy.uint8), cupy.empty(COPY_BYTES, cupy.uint8)
    source.fill(1)
    seconds = median_seconds(cupy, lambda: target.data.copy_from_device_async(
        source.data, COPY_BYTES), repeat, inner)
    return 2 * COPY_BYTES / seconds


def peak_bandwidth(cupy, device):
    """Bytes per second the memory can move: 2 transfers per clock (DDR) times the bus width.
    Asked of cudaDeviceGetAttribute: CUDA 13 dropped the clock from cudaDeviceProp."""
    clock_hz = cupy.cuda.runtime.deviceGetAttribute(MEMORY_CLOCK_KHZ, device) * 1e3
    bus_bytes = cupy.cuda.runtime.deviceGetAttribute(MEMORY_BUS_BITS, device) / 8
    return 2 * clock_hz * bus_bytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timings per kernel; the median is reported")
    parser.add_argument("--inner", type=int, default=10, help="launches per timing")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    args = parser.parse_args(argv)
    if backend.gpu_count() == 0:
        print("no GPU: bench/kernels.py needs CuPy and a CUDA device, so there is nothing to time")
        return 0
    cupy = backend.cupy
    device = cupy.cuda.runtime.getDevice()
    name = cupy.cuda.runtime.getDeviceProperties(device)["name"].decode()
    peak = peak_bandwidth(cupy, device) or float("nan")      # 0 if the driver does not say
    copy = copy_bandwidth(cupy, args.repeat, args.inner)
    print(f"{name}: peak memory bandwidth {peak / 1e9:.0f} GB/s (2 x memory clock x bus width); "
          f"device-to-device copy {copy / 1e9:.0f} GB/s ({100 * copy / peak:.0f}% of peak)")
    print(f"{'kernel':<26}{'layer':<7}{'input':<16}{'time us':>10}{'MB':>9}{'GB/s':>9}{'% copy':>8}")
    results = []
    for layer, plan in plans(cupy):
        seconds = kernel_seconds(cupy, plan, args.repeat, args.inner)
        moved = sum(a.nbytes for a in plan.args if isinstance(a, cupy.ndarray))
        if plan.kernel.startswith("sgd_update"):         # w and v: read, then written in place
            moved += sum(a.nbytes for a in plan.outputs)
        shape = "x".join(map(str, plan.args[0].shape))
        results.append(dict(kernel=plan.kernel, layer=layer, input_shape=plan.args[0].shape,
                            seconds=seconds, bytes=moved, bandwidth=moved / seconds))
        print(f"{plan.kernel:<26}{layer:<7}{shape:<16}{seconds * 1e6:>10.1f}{moved / 1e6:>9.1f}"
              f"{moved / seconds / 1e9:>9.0f}{100 * moved / seconds / copy:>7.0f}%")
    fused = next(r["seconds"] for r in results if r["kernel"].startswith("sgd_update"))
    unfused = sgd_as_array_operations(cupy, args.repeat, args.inner)
    print(f"fc6's SGD update as six CuPy array operations: {unfused * 1e6:.1f} us, "
          f"{unfused / fused:.1f}x the sgd_update kernel's time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, peak_bandwidth=peak, copy_bandwidth=copy, batch=BATCH,
                           repeat=args.repeat, inner=args.inner, results=results,
                           sgd_as_array_operations_seconds=unfused), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
