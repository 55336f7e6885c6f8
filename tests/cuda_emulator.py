"""Run minigrad's CUDA kernels on the CPU, to test them without a GPU.

g++ compiles each minigrad/kernels/<module>.cu, unchanged, under cuda_emulation.h, together with
one generated C launcher per kernel instance that calls the kernel once for every thread of the
grid, block after block. run() takes the very Launch that minigrad.cuda's plan_* functions make
(with NumPy arrays in place of CuPy ones), checks it with minigrad.cuda.check_launch, and runs it:

    plan = cuda.plan_im2col(x, 3, 3, 1, 1, 1, 1)      # x a NumPy array
    col, = run(plan, block_order="shuffled")

Blocks run in their natural order or shuffled: a kernel whose result depends on the order of its
blocks has a race on a GPU.
"""
import atexit
import ctypes
import functools
import pathlib
import shutil
import subprocess
import tempfile

import numpy

from minigrad import cuda

HEADER = pathlib.Path(__file__).with_name("cuda_emulation.h")
SCALAR_TYPES = {"int": ctypes.c_int, "float": ctypes.c_float, "double": ctypes.c_double}


def run(plan, block_order="natural", seed=0):
    """Run `plan` on the CPU; returns plan.outputs. block_order: "natural" or "shuffled"."""
    cuda.check_launch(plan)
    (blocks,), (threads,) = plan.grid, plan.block                  # the kernels use 1-D launches
    order = numpy.arange(blocks, dtype=numpy.uint32)
    if block_order == "shuffled":
        numpy.random.default_rng(seed).shuffle(order)
    launcher = getattr(_library(plan.module), _launcher_name(plan.kernel))
    args = [arg.ctypes.data_as(ctypes.c_void_p) if parameter.pointer else SCALAR_TYPES[parameter.c_type](arg)
            for parameter, arg in zip(cuda.signature(plan.module, plan.kernel), plan.args)]
    launcher(ctypes.c_uint(blocks), ctypes.c_uint(threads), order.ctypes.data_as(ctypes.c_void_p), *args)
    return plan.outputs


def _launcher_name(kernel):
    """"im2col<float>" -> "launch_im2col_float"."""
    return "launch_" + kernel.replace("<", "_").rstrip(">")


def _launcher_source(module):
    """C++ of the .cu file followed by an extern "C" launcher for each of its kernel instances,
    e.g. launch_im2col_float(blocks, threads, block_order, float* x, float* col, int N, ...)."""
    lines = [f'#include "{HEADER}"', f'#include "{cuda.KERNEL_DIR / module}.cu"']
    for kernel in cuda.kernel_instances(module):
        parameters = cuda.signature(module, kernel)
        declarations = ", ".join(f"{p.c_type}{'*' if p.pointer else ''} {p.name}" for p in parameters)
        names = ", ".join(p.name for p in parameters)
        lines += [
            f'extern "C" void {_launcher_name(kernel)}(unsigned blocks, unsigned threads, '
            f'const unsigned* block_order, {declarations})',
            "{",
            "    gridDim.x = blocks;",
            "    blockDim.x = threads;",
            "    for (unsigned b = 0; b < blocks; ++b) {",
            "        blockIdx.x = block_order[b];",
            "        for (threadIdx.x = 0; threadIdx.x < threads; ++threadIdx.x) {",
            f"            {kernel}({names});",
            "        }",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


@functools.cache
def _build_dir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="minigrad-cuda-emulator-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def _library(module):
    """The compiled shared library of <module>.cu, built once per test session."""
    source = _build_dir() / f"{module}.cpp"
    library = _build_dir() / f"{module}.so"
    source.write_text(_launcher_source(module))
    command = ["g++", "-std=c++17", "-O2", "-Wall", "-Werror", "-shared", "-fPIC",
               "-o", str(library), str(source)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"g++ could not compile {module}.cu for the CPU emulation:\n{result.stderr}")
    return ctypes.CDLL(str(library))
