"""Where arrays live: NumPy on the CPU, CuPy on a GPU.

Every op in minigrad is written once against an array module `xp` (numpy or cupy); the module of
its input arrays decides where it runs (Chainer's `get_array_module`). A device is the string
"cpu" or an integer GPU id. Importing minigrad never needs a GPU: without CuPy, or without a
working CUDA driver, `gpu_count()` is 0 and everything runs on NumPy.
"""
import contextlib
import ctypes
import ctypes.util
import time

import numpy

try:
    import cupy
except ImportError:  # CuPy is an optional extra: `pip install .[cuda]`
    cupy = None

_gpu_count = None


def gpu_count():
    """Number of usable CUDA devices (0 when CuPy or the driver is missing)."""
    global _gpu_count
    if _gpu_count is None:
        _gpu_count = 0
        if cupy is not None:
            try:
                _gpu_count = cupy.cuda.runtime.getDeviceCount()
            except Exception:  # CuPy installed, but no driver or no device
                _gpu_count = 0
    return _gpu_count


def get_array_module(array):
    """numpy or cupy, whichever `array` belongs to."""
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy
    return numpy


def module_for(device):
    """The array module that holds arrays on `device`."""
    return numpy if device == "cpu" else cupy


def device_of(array):
    """"cpu" for a NumPy array, the GPU id for a CuPy array."""
    if cupy is not None and isinstance(array, cupy.ndarray):
        return array.device.id
    return "cpu"


def parse_device(device):
    """Normalize "cpu", 0, "0", "cuda", "cuda:1", "gpu:1" to "cpu" or an int, and check it exists."""
    if device is None or device == "cpu":
        return "cpu"
    text = str(device).lower()
    for prefix in ("cuda:", "gpu:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if text in ("cuda", "gpu"):
        text = "0"
    if not text.isdigit():
        raise ValueError(f"unknown device {device!r}: use 'cpu' or a GPU id such as 0 or 'cuda:1'")
    index = int(text)
    if index >= gpu_count():
        raise ValueError(f"device {device!r} is not available: {gpus_found()}; use 'cpu' or a "
                         "smaller id")
    return index


def gpus_found():
    """What a missing GPU's error says was found: none (and why that may be), or how many."""
    return "no GPU was found (is CuPy installed and the driver working?)" if gpu_count() == 0 \
        else f"only {gpu_count()} GPU(s) were found"


def device_scope(device):
    """Context in which CuPy allocates and launches on `device` (a no-op for "cpu")."""
    if device == "cpu":
        return contextlib.nullcontext()
    return cupy.cuda.Device(device)


def use(device):
    """Make `device` this thread's current GPU from now on: CuPy allocates and launches there
    wherever no device_scope says otherwise (nothing changes for "cpu")."""
    if device != "cpu":
        cupy.cuda.Device(device).use()


def to_device(array, device):
    """`array` on `device`; the same object when it is already there."""
    device = parse_device(device)
    source = device_of(array)
    if source == device:
        return array
    if device == "cpu":
        with device_scope(source):
            return cupy.asnumpy(array)
    with device_scope(device):
        if source == "cpu":
            return cupy.asarray(array)
        # GPU to GPU: an explicit peer copy of a contiguous buffer (ascontiguousarray makes a
        # 0-d array 1-d, as NumPy's does: the copy takes the shape it had).
        shape = array.shape
        with device_scope(source):
            array = cupy.ascontiguousarray(array)
        out = cupy.empty(shape, array.dtype)
        out.data.copy_from_device(array.data, array.nbytes)
        return out


def synchronize(device):
    """Wait until the work queued on `device` is done (the CPU's is, always)."""
    if device != "cpu":
        cupy.cuda.Device(device).synchronize()


class Clock:
    """Time marks in the work queued on `device` that make no one wait: on the CPU the time of
    the call, on a GPU a CUDA event recorded in the current stream, which the GPU stamps when it
    gets there. Waiting for the GPU to time each piece of work would leave it idle while Python
    queues the next; the seconds between two marks are read later, when waiting costs nothing."""

    def __init__(self, device):
        self.device = device

    def mark(self):
        if self.device == "cpu":
            return time.perf_counter()
        with device_scope(self.device):
            event = cupy.cuda.Event()
            event.record()
        return event

    def seconds(self, start, end):
        """Seconds from mark `start` to mark `end` (waits until the GPU has passed `end`)."""
        if self.device == "cpu":
            return end - start
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3


def set_tf32(enabled):
    """Let float32 matrix products on GPUs (cuBLAS, through CuPy) use TF32 tensor cores, or not;
    returns the previous setting. Off by default: TF32 rounds the inputs of each product to a
    10-bit mantissa (float32 has 23) and sums in float32, several times faster on GPUs from
    Ampere (compute capability 8.0) on, with products accurate to about 1e-3 instead of 1e-6.
    Convolutions here are matrix products (functional.conv2d), so it covers them too; PyTorch
    uses TF32 in cuDNN's convolutions by default. One setting for every GPU of the process.
    Without a GPU nothing changes (NumPy has no TF32) and the previous setting is False.
    On a GPU older than Ampere CuPy refuses TF32 with a warning; this raises ValueError."""
    if gpu_count() == 0:
        return False
    linalg = cupy._core._routines_linalg
    previous = linalg.get_compute_type(numpy.float32) == linalg.COMPUTE_TYPE_TF32
    cupy._core.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_TF32 if enabled
                                else linalg.COMPUTE_TYPE_DEFAULT)
    if enabled and linalg.get_compute_type(numpy.float32) != linalg.COMPUTE_TYPE_TF32:
        capability = cupy.cuda.Device().compute_capability           # "75" for 7.5
        raise ValueError(f"GPU {cupy.cuda.Device().id} (compute capability "
                         f"{capability[:-1]}.{capability[-1]}) has no TF32: tensor cores do TF32 "
                         "from compute capability 8.0 (Ampere) on; run without --tf32")
    return previous


@contextlib.contextmanager
def tf32_products(enabled):
    """Within the block set_tf32(enabled); afterwards the setting from before it."""
    previous = set_tf32(enabled)
    try:
        yield
    finally:
        set_tf32(previous)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def reuse_freed_memory():
    """Have the C library keep freed memory for the next allocation; returns whether it could.

    A training step allocates and frees the same large arrays every time (im2col's columns:
    98 MB per tower for conv1 of the small preset at batch 128). By default glibc hands every
    block above 128 KB back to the kernel when it is freed, and the next allocation of it
    faults in fresh zeroed pages, one 4 KB page at a time; and each thread allocates from an
    arena of its own, whose blocks another thread cannot reuse. This keeps large blocks in one
    arena for reuse (what CuPy's memory pool does on a GPU): on 2 cores a training step took
    10-25% less time (paper and small presets). The process keeps its peak memory in return.
    Linux with glibc only; elsewhere nothing changes.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not glibc: musl, macOS, Windows
        return False
    return all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, 1 << 30),      # blocks up to 1 GB come from the heap...
        (_M_TRIM_THRESHOLD, (1 << 31) - 1),  # ...which is not given back to the kernel...
        (_M_ARENA_MAX, 1)))                 # ...and is one heap for every thread
