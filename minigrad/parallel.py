"""Independent branches of a network side by side on the CPU's cores.

The paper trained its two towers on two GPUs at once (section 3.2): between the layers where
they meet, neither waits for the other. On a CPU they can run at once too, each tower on its
own core(s): NumPy and BLAS release Python's global interpreter lock inside their loops, so two
Python threads doing array work really run in parallel. `side_by_side(*calls)` is the one place
that does it; AlexNet.forward runs its two convolutional stages of each tower through it.

Threads: on a machine with 2 or more cores, branches() calls (2: the towers) run at once, each
with cores // branches() BLAS threads; outside side_by_side, BLAS uses every core. So the cores
are neither idle nor oversubscribed. set_branches(1) runs the branches in turn. (threadpoolctl
sets BLAS's thread count; without it BLAS keeps its own.)

Only the forward pass goes side by side. Measured on 2 cores, each tower's convolutions with
one BLAS thread, side by side against in turn with two (small preset, batch 128; paper preset,
batch 16): forward 110 against 143 ms and 250 against 291 ms, but backward 150 against 108 ms
and 500 against 378 ms. The backward pass is two GEMMs per convolution and little else, and
OpenBLAS runs one GEMM on two threads faster than two GEMMs on one thread each; the forward
pass's im2col copies are where one core per tower pays. So Tensor.backward() walks the graph in
turn, every op with all BLAS threads.

The results do not depend on whether the branches overlap: within one_at_a_time() they take
turns with the same BLAS threads each (BLAS's sums, and so their last bits, depend on its
thread count), and tests/test_parallel.py checks that training steps agree bit for bit. Code
run side by side must not draw random numbers from a shared generator (dropout), whose order
would then depend on timing: AlexNet runs its fully connected layers (with dropout) in order.
Only NumPy work goes side by side; CuPy work stays in one thread (one CUDA stream per tower is
the GPU's version of the same idea).
"""
import concurrent.futures
import contextlib
import os

import numpy

try:
    import threadpoolctl
except ImportError:     # optional: without it BLAS keeps its own thread count
    threadpoolctl = None

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_branches = min(2, CORES)
_serial = False              # one_at_a_time(): branches take turns, BLAS threads unchanged
_pool = None                 # created on first use
_controller = None


def branches():
    """How many branches run at once on the CPU."""
    return _branches


def set_branches(count):
    """Run at most `count` branches at once (1: one after the other, BLAS on every core);
    returns the previous count."""
    global _branches
    if count < 1:
        raise ValueError(f"set_branches needs a count of 1 or more, got {count}")
    previous, _branches = _branches, int(count)
    return previous


@contextlib.contextmanager
def one_at_a_time():
    """Within this block branches take turns in the calling thread, each with the BLAS threads
    it would have had side by side: the reference that side by side must equal bit for bit
    (BLAS's sums, and so its last bits, depend on its thread count)."""
    global _serial
    previous, _serial = _serial, True
    try:
        yield
    finally:
        _serial = previous


def concurrent_on(devices):
    """How many branches work on `devices` is shared out among: branches() when all are the
    CPU, else 1 (GPU work stays in one thread)."""
    return _branches if all(d == "cpu" for d in devices) else 1


@contextlib.contextmanager
def blas_threads_per_branch(count):
    """BLAS threads shared out among `count` branches, within the block."""
    if count <= 1 or threadpoolctl is None:
        yield
        return
    with _blas_limit(max(1, CORES // count)):
        yield


def use_cores(count):
    """Work on `count` of the machine's cores: the share of one process when several train on
    it (the ranks of a data-parallel run, minigrad.distributed). Branches go side by side only
    with a core each, and BLAS keeps to `count` threads from now on: two processes with two
    BLAS threads each on two cores would take turns on them at every GEMM."""
    global CORES, _branches
    CORES = max(1, int(count))
    _branches = min(_branches, CORES)
    if threadpoolctl is not None:
        _blas_limit(CORES)


def _blas_limit(threads):
    """BLAS limited to `threads` threads: from now on, or within a `with` block on it."""
    global _controller
    if _controller is None:
        _controller = threadpoolctl.ThreadpoolController()
    return _controller.limit(limits=threads, user_api="blas")


def _executor():
    global _pool
    if _pool is None or _pool._max_workers < _branches:
        _pool = concurrent.futures.ThreadPoolExecutor(_branches, thread_name_prefix="branch")
    return _pool


def _as_caller(call):
    """call, wrapped to run on another thread under this thread's NumPy error settings
    (numpy.errstate holds for the thread that set it only)."""
    settings = numpy.geterr()

    def run():
        with numpy.errstate(**settings):
            return call()
    return run


def side_by_side(*calls, devices=("cpu",)):
    """[call() for call in calls], the calls running at once (each a branch) when `devices`
    allow it: the first in this thread, the others on worker threads."""
    count = min(len(calls), concurrent_on(devices))
    if count <= 1:
        return [call() for call in calls]
    with blas_threads_per_branch(count):
        if _serial:
            return [call() for call in calls]
        others = [_executor().submit(_as_caller(call)) for call in calls[1:]]
        first = calls[0]()
        return [first] + [future.result() for future in others]
