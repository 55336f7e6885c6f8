"""Independent branches of a network side by side on the CPU's cores.

The paper trained its two towers on two GPUs at once (section 3.2): between the layers where
they meet, neither waits for the other. On a CPU they can run at once too, each tower on its
own core(s): NumPy and BLAS release Python's global interpreter lock inside their loops, so two
Python threads doing array work really run in parallel. This file is the one place that decides
how: forward passes call `side_by_side`, and `Tensor.backward()` runs the ops whose gradients are
ready through `Workers`.

Threads: `branches()` of them (2, the towers, on a machine with 2 or more cores; set_branches()
changes it, 1 runs everything one after the other). BLAS gets cores // branches threads in each
branch while branches run side by side, and every core otherwise, so that the cores are neither
idle nor oversubscribed (threadpoolctl sets the count; without it BLAS keeps its own).

Only NumPy arrays go side by side; CuPy work stays in one thread (one CUDA stream per tower is
the GPU's version of the same idea).

The results do not depend on the number of branches: every op computes the same thing in any
thread, and the backward pass sums the gradients that meet at one tensor in a fixed order.
Code run side by side must not draw random numbers from a shared generator (dropout), whose
order would then depend on timing: AlexNet runs its convolutional stages side by side and its
fully connected ones (with dropout) in order.
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
    """BLAS threads shared out among `count` branches (a no-op for 1)."""
    global _controller
    if count <= 1 or threadpoolctl is None:
        yield
        return
    if _controller is None:
        _controller = threadpoolctl.ThreadpoolController()
    with _controller.limit(limits=max(1, CORES // count), user_api="blas"):
        yield


def _executor():
    global _pool
    if _pool is None or _pool._max_workers < _branches:
        _pool = concurrent.futures.ThreadPoolExecutor(_branches, thread_name_prefix="branch")
    return _pool


def _as_caller(call):
    """call, wrapped to run on another thread under this thread's NumPy error settings
    (numpy.errstate holds for the thread that set it only)."""
    settings = numpy.geterr()

    def run(*args):
        with numpy.errstate(**settings):
            return call(*args)
    return run


def side_by_side(*calls, devices=("cpu",)):
    """[call() for call in calls], the calls running at once (each a branch) when `devices`
    allow it: the first in this thread, the others on worker threads."""
    count = min(len(calls), concurrent_on(devices))
    with blas_threads_per_branch(count):
        if count <= 1 or _serial:
            return [call() for call in calls]
        others = [_executor().submit(_as_caller(call)) for call in calls[1:]]
        first = calls[0]()
        return [first] + [future.result() for future in others]


class Workers:
    """Runs submitted calls on up to `count` threads (at once in this thread for count 1 or
    within one_at_a_time()), with BLAS threads shared out among `count`.

        workers.submit(key, fn, *args)     start fn(*args)
        workers.finished()                 [(key, result)] of calls that have ended and were
                                           not collected yet, waiting for one if none has
        workers.busy                       whether some call has not been collected
    """

    def __init__(self, count):
        self.count = count                     # BLAS threads are shared out among `count`
        self.threads = 1 if _serial else count
        self.running = {}                      # future -> key
        self.done = []                         # (key, result) not collected yet

    def __enter__(self):
        self._limit = blas_threads_per_branch(self.count)
        self._limit.__enter__()
        return self

    def __exit__(self, *exc):
        for future in self.running:            # an error: let the others end before leaving
            future.cancel()
        concurrent.futures.wait(self.running)
        self._limit.__exit__(*exc)

    @property
    def busy(self):
        return bool(self.running or self.done)

    def submit(self, key, fn, *args):
        if self.threads <= 1:
            self.done.append((key, fn(*args)))
        else:
            self.running[_executor().submit(_as_caller(fn), *args)] = key

    def finished(self):
        if not self.done and self.running:
            ended, _ = concurrent.futures.wait(self.running,
                                               return_when=concurrent.futures.FIRST_COMPLETED)
            self.done = [(self.running.pop(future), future.result()) for future in ended]
        done, self.done = self.done, []
        return done
