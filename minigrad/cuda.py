"""The hand-written CUDA kernels of minigrad/kernels/*.cu, called on CuPy arrays.

The six functions at the top are minigrad/reference.py's, with the same signatures, for CuPy
arrays (float32 or float64; argmax int32), and the same results up to rounding (argmax is
exact; LRN's power and the sums of col2im and pooling's backward round differently);
minigrad.functional calls them on a GPU.
The seventh, sgd_update, is minigrad.optim.SGD's update of one parameter, in one kernel.

A call goes in three steps, kept apart so that the first two can be tested without a GPU:

1. plan_<function>(...) allocates the outputs (with the input's array module) and returns a
   Launch: the kernel, grid and block sizes, and the arguments in the kernel's parameter order,
   every scalar already of the kernel's C type (numpy.int32 for int, numpy.float32 for float).
2. check_launch(plan) compares every argument with the kernel's C signature, which is parsed
   out of the .cu file itself: the source is the one statement of what a kernel takes.
3. launch(plan) compiles the .cu file (once; CuPy keeps the binary per device) and runs it.

tests/cuda_emulator.py runs the same plans through the same kernels compiled for the CPU.
Every kernel is a `template <typename T> __global__ void` with T = float or double, so a
launch names a template instance such as "im2col<float>".
"""
import functools
import math
import pathlib
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy

from minigrad import backend
from minigrad.reference import conv_output_size

KERNEL_DIR = pathlib.Path(__file__).parent / "kernels"
BLOCK = 256           # threads per block
MAX_BLOCKS = 4096     # blocks per grid at most; the kernels' grid-stride loops cover the rest
INT_MAX = 2**31 - 1   # the kernels index with 32-bit ints

C_TYPES = {"int": numpy.dtype(numpy.int32), "float": numpy.dtype(numpy.float32),
           "double": numpy.dtype(numpy.float64)}
ELEMENT_TYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}


# ---- the six kernels, as in minigrad/reference.py -----------------------------------------------

def im2col(x, kh, kw, sy, sx, ph, pw):
    """reference.im2col on the GPU: x (N, C, H, W) -> col (C*kh*kw, N*OH*OW)."""
    return _run(plan_im2col, x, kh, kw, sy, sx, ph, pw)[0]


def col2im(col, x_shape, kh, kw, sy, sx, ph, pw):
    """reference.col2im on the GPU: col (C*kh*kw, N*OH*OW) -> gx (N, C, H, W)."""
    return _run(plan_col2im, col, x_shape, kh, kw, sy, sx, ph, pw)[0]


def max_pool_forward(x, kh, kw, sy, sx):
    """reference.max_pool_forward on the GPU: x (N, C, H, W) -> y, argmax (N, C, OH, OW)."""
    return _run(plan_max_pool_forward, x, kh, kw, sy, sx)


def max_pool_backward(gy, argmax, x_shape, kh, kw, sy, sx):
    """reference.max_pool_backward on the GPU: gy, argmax (N, C, OH, OW) -> gx (N, C, H, W)."""
    return _run(plan_max_pool_backward, gy, argmax, x_shape, kh, kw, sy, sx)[0]


def lrn_forward(x, n, k, alpha, beta):
    """reference.lrn_forward on the GPU: x (N, C, H, W) -> y, scale (N, C, H, W)."""
    return _run(plan_lrn_forward, x, n, k, alpha, beta)


def lrn_backward(gy, x, y, scale, n, alpha, beta):
    """reference.lrn_backward on the GPU: gy, x, y, scale (N, C, H, W) -> gx (N, C, H, W)."""
    return _run(plan_lrn_backward, gy, x, y, scale, n, alpha, beta)[0]


def sgd_update(w, g, v, momentum, decay_lr, lr):
    """SGD._update on the GPU: v <- momentum*v - decay_lr*w - lr*g, w <- w + v, in place, with
    the same bits; w and v must be C-contiguous."""
    _run(plan_sgd_update, w, g, v, momentum, decay_lr, lr)


def _run(plan_function, x, *args):
    """Plan and launch on the GPU that holds x; returns the outputs of the plan."""
    with backend.device_scope(backend.device_of(x)):
        return launch(plan_function(x, *args))


# ---- step 1: plans (no CuPy needed) -------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    """One kernel launch, everything but the GPU."""
    module: str       # the .cu file it lives in, e.g. "pooling"
    kernel: str       # the template instance, e.g. "max_pool_forward<float>"
    grid: tuple       # blocks per grid, (blocks,)
    block: tuple      # threads per block, (BLOCK,)
    args: tuple       # arrays and numpy scalars, in the kernel's parameter order
    outputs: tuple    # the arrays among args that the kernel writes, returned by launch()


def plan_im2col(x, kh, kw, sy, sx, ph, pw):
    """im2col<T>: one thread per window (n, c, oy, ox), numbered so that a warp writes contiguously."""
    xp = backend.get_array_module(x)
    N, C, H, W = x.shape
    OH, OW = conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)
    x = xp.ascontiguousarray(x)
    col = xp.empty((C * kh * kw, N * OH * OW), x.dtype)                 # (C*kh*kw, N*OH*OW)
    args = (x, col, *_c_ints(N, C, H, W, kh, kw, sy, sx, ph, pw, OH, OW))
    return _plan("im2col", "im2col", x.dtype, N * C * OH * OW, args, (col,))


def plan_col2im(col, x_shape, kh, kw, sy, sx, ph, pw):
    """col2im<T>: one thread per input pixel (n, c, iy, ix), gathering from the columns."""
    xp = backend.get_array_module(col)
    N, C, H, W = x_shape
    OH, OW = conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)
    _require_shape("col", col, (C * kh * kw, N * OH * OW))
    col = xp.ascontiguousarray(col)
    gx = xp.empty((N, C, H, W), col.dtype)                              # (N, C, H, W)
    args = (col, gx, *_c_ints(N, C, H, W, kh, kw, sy, sx, ph, pw, OH, OW))
    return _plan("im2col", "col2im", col.dtype, N * C * H * W, args, (gx,))


def plan_max_pool_forward(x, kh, kw, sy, sx):
    """max_pool_forward<T>: one thread per output (n, c, oy, ox)."""
    xp = backend.get_array_module(x)
    N, C, H, W = x.shape
    OH, OW = conv_output_size(H, kh, sy, 0), conv_output_size(W, kw, sx, 0)
    x = xp.ascontiguousarray(x)
    y = xp.empty((N, C, OH, OW), x.dtype)                               # (N, C, OH, OW)
    argmax = xp.empty((N, C, OH, OW), numpy.int32)                      # (N, C, OH, OW)
    args = (x, y, argmax, *_c_ints(N, C, H, W, kh, kw, sy, sx, OH, OW))
    return _plan("pooling", "max_pool_forward", x.dtype, N * C * OH * OW, args, (y, argmax))


def plan_max_pool_backward(gy, argmax, x_shape, kh, kw, sy, sx):
    """max_pool_backward<T>: one thread per input pixel (n, c, iy, ix), gathering from the windows."""
    xp = backend.get_array_module(gy)
    N, C, H, W = x_shape
    OH, OW = conv_output_size(H, kh, sy, 0), conv_output_size(W, kw, sx, 0)
    _require_shape("gy", gy, (N, C, OH, OW))
    _require_shape("argmax", argmax, gy.shape)
    gy, argmax = xp.ascontiguousarray(gy), xp.ascontiguousarray(argmax)
    gx = xp.empty((N, C, H, W), gy.dtype)                               # (N, C, H, W)
    args = (gy, argmax, gx, *_c_ints(N, C, H, W, kh, kw, sy, sx, OH, OW))
    return _plan("pooling", "max_pool_backward", gy.dtype, N * C * H * W, args, (gx,))


def plan_lrn_forward(x, n, k, alpha, beta):
    """lrn_forward<T>: one thread per pixel (image, iy, ix), walking down the channels."""
    xp = backend.get_array_module(x)
    N, C, H, W = x.shape
    x = xp.ascontiguousarray(x)
    y, scale = xp.empty_like(x), xp.empty_like(x)                       # (N, C, H, W) each
    T = x.dtype.type
    args = (x, y, scale, *_c_ints(N, C, H, W, n), T(k), T(alpha), T(beta))
    return _plan("lrn", "lrn_forward", x.dtype, N * H * W, args, (y, scale))


def plan_lrn_backward(gy, x, y, scale, n, alpha, beta):
    """lrn_backward<T>: one thread per pixel (image, iy, ix), walking down the channels."""
    xp = backend.get_array_module(gy)
    N, C, H, W = x.shape
    for name, array in (("gy", gy), ("y", y), ("scale", scale)):
        _require_shape(name, array, x.shape)
    gy, x, y, scale = (xp.ascontiguousarray(a) for a in (gy, x, y, scale))
    gx = xp.empty_like(gy)                                              # (N, C, H, W)
    T = gy.dtype.type
    args = (gy, x, y, scale, gx, *_c_ints(N, C, H, W, n), T(alpha), T(beta))
    return _plan("lrn", "lrn_backward", gy.dtype, N * H * W, args, (gx,))


def plan_sgd_update(w, g, v, momentum, decay_lr, lr):
    """sgd_update<T>: one thread per value. w and v are updated in place, so they are passed as
    they are (check_launch refuses them if not C-contiguous: a contiguous copy would take the
    update and be thrown away)."""
    xp = backend.get_array_module(w)
    _require_shape("g", g, w.shape)
    _require_shape("v", v, w.shape)
    g = xp.ascontiguousarray(g)
    T = w.dtype.type
    args = (w, g, v, *_c_ints(w.size), T(momentum), T(decay_lr), T(lr))
    return _plan("sgd", "sgd_update", w.dtype, w.size, args, (w, v))


def _plan(module, kernel, dtype, count, args, outputs):
    """The Launch of kernel<T> (T from dtype) with one thread per item of `count`."""
    if dtype not in ELEMENT_TYPES:
        raise TypeError(f"the CUDA {kernel} runs on float32 and float64 arrays, not {dtype}; "
                        f"convert with .astype(numpy.float32)")
    blocks = min(max(1, math.ceil(count / BLOCK)), MAX_BLOCKS)
    return Launch(module, f"{kernel}<{ELEMENT_TYPES[dtype]}>", (blocks,), (BLOCK,), args, outputs)


def _c_ints(*values):
    """The values as C ints (numpy.int32), refusing any that 32 bits cannot hold."""
    for value in values:
        if not -INT_MAX - 1 <= value <= INT_MAX:
            raise ValueError(f"{value} does not fit the 32-bit int of the CUDA kernels; "
                             f"use a smaller batch or image")
    return tuple(numpy.int32(value) for value in values)


def _require_shape(name, array, shape):
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)} but the kernel needs {tuple(shape)}")


# ---- step 2: checking a plan against the kernel's C signature -----------------------------------

class Parameter(NamedTuple):
    """One kernel parameter: `const T* __restrict__ x` is Parameter("x", "T", True)."""
    name: str
    c_type: str       # "int", "float", "double" or the template parameter "T"
    pointer: bool


_KERNEL = re.compile(r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(([^)]*)\)")


def kernel_source(module):
    """The text of minigrad/kernels/<module>.cu."""
    return (KERNEL_DIR / f"{module}.cu").read_text()


@functools.cache
def kernel_templates(module):
    """{kernel name: [Parameter, ...]} for every `template <typename T> __global__ void` kernel."""
    templates = {}
    for name, parameter_list in _KERNEL.findall(kernel_source(module)):
        parameters = []
        for declaration in parameter_list.split(","):
            words = [w for w in declaration.replace("*", " * ").split() if w not in ("const", "__restrict__")]
            parameter = Parameter(words[-1], words[0], "*" in words)
            if parameter.c_type not in (*C_TYPES, "T"):
                raise TypeError(f"parameter {parameter.name!r} of {name} in {module}.cu has type "
                                f"{parameter.c_type}; minigrad.cuda passes only {', '.join(C_TYPES)} and T")
            parameters.append(parameter)
        templates[name] = parameters
    return templates


def kernel_instances(module):
    """Every float and double instance of the kernels in <module>.cu, e.g. "im2col<float>"."""
    return tuple(f"{name}<{t}>" for name in kernel_templates(module) for t in ELEMENT_TYPES.values())


def signature(module, kernel):
    """The parameters of a kernel instance such as "im2col<float>", with T replaced by float."""
    name, element_type = re.fullmatch(r"(\w+)<(\w+)>", kernel).groups()
    return [p._replace(c_type=element_type if p.c_type == "T" else p.c_type)
            for p in kernel_templates(module)[name]]


def check_launch(plan):
    """Raise a TypeError or ValueError for any argument of `plan` its kernel cannot take as is."""
    parameters = signature(plan.module, plan.kernel)
    where = f"{plan.kernel} of {plan.module}.cu"
    if len(plan.args) != len(parameters):
        raise TypeError(f"{where} takes {len(parameters)} arguments but the launch passes {len(plan.args)}")
    # A thread's index moves on by the number of threads in the grid, and must stay an int.
    largest = INT_MAX - math.prod(plan.grid) * math.prod(plan.block)
    for parameter, arg in zip(parameters, plan.args):
        what = f"argument {parameter.name!r} of {where}"
        expected = C_TYPES[parameter.c_type]
        if parameter.pointer:
            if not _is_array(arg) or arg.dtype != expected:
                got = f"an array of {arg.dtype}" if _is_array(arg) else _type_name(arg)
                raise TypeError(f"{what} must be an array of {expected} (C {parameter.c_type}*), got {got}")
            if not arg.flags.c_contiguous:
                raise ValueError(f"{what} must be C-contiguous; pass xp.ascontiguousarray of it")
            if arg.size > largest:
                raise ValueError(f"{what} has {arg.size} elements, more than the {largest} that "
                                 f"32-bit kernel indices can reach; use a smaller batch")
        elif type(arg) is not expected.type:
            raise TypeError(f"{what} must be numpy.{expected} (C {parameter.c_type}), "
                            f"got {_type_name(arg)} {arg!r}")


def _is_array(value):
    return isinstance(value, numpy.ndarray) or backend.get_array_module(value) is not numpy


def _type_name(value):
    return f"numpy.{type(value).__name__}" if isinstance(value, numpy.generic) else type(value).__name__


# ---- step 3: running a plan on the GPU ----------------------------------------------------------

@functools.cache
def compiled_module(module):
    """cupy.RawModule of <module>.cu with every float and double kernel instance; CuPy compiles
    it on first use on each device and caches the binary, in memory and on disk."""
    return backend.cupy.RawModule(code=kernel_source(module), name_expressions=kernel_instances(module))


@functools.cache
def compiled_kernel(module, kernel):
    """cupy.RawKernel of one kernel instance, such as "im2col<float>". Kept: it holds the CUDA
    function of each device, which RawModule.get_function would look up again at every call."""
    return compiled_module(module).get_function(kernel)


def launch(plan):
    """Check `plan` against its kernel's signature and run it on the current GPU; returns
    plan.outputs (the launch is asynchronous, like every CuPy operation)."""
    if backend.cupy is None:
        raise RuntimeError("minigrad.cuda needs CuPy: pip install 'cupy-cuda13x[ctk]' "
                           "('cupy-cuda12x[ctk]' for CUDA 12 drivers)")
    check_launch(plan)
    if any(isinstance(arg, numpy.ndarray) for arg in plan.args):
        raise TypeError(f"{plan.kernel} was given NumPy arrays; minigrad.cuda runs on CuPy arrays "
                        f"(minigrad.reference is the NumPy version)")
    current = backend.cupy.cuda.runtime.getDevice()
    elsewhere = {arg.device.id for arg in plan.args if _is_array(arg)} - {current}
    if elsewhere:             # a kernel reading another GPU's memory is slow or crashes the context
        raise ValueError(f"{plan.kernel} runs on GPU {current} but was given arrays on GPU "
                         f"{sorted(elsewhere)}; move them with minigrad.backend.to_device first")
    compiled_kernel(plan.module, plan.kernel)(plan.grid, plan.block, plan.args)
    return plan.outputs
