"""The CUDA kernels of minigrad/kernels/*.cu against the NumPy reference, minigrad/reference.py.

Every case runs three ways, the `runner`:
    emulated           the .cu file compiled by g++ for the CPU (tests/cuda_emulator.py), from the
                       same plan (grid, block, arguments) that minigrad.cuda launches on a GPU;
    emulated-shuffled  the same with the blocks in a shuffled order and a grid of only 3 blocks,
                       so that every thread's grid-stride loop goes round many times;
    gpu                minigrad.cuda on CuPy arrays (skipped without a GPU).
Beside them: every .cu file compiles with NVRTC, the compiler CuPy uses, with the flags CuPy
adds, for compute_80 and compute_90 (needs only the nvidia-cuda-nvrtc wheel, no GPU), and the
pre-launch check refuses arguments that do not match the kernel's C signature.
"""
import ctypes
import dataclasses
import importlib.util
import inspect
import itertools
import pathlib
import shutil

import numpy
import pytest

import cuda_emulator
from minigrad import backend, cuda, optim, reference
from minigrad.tensor import Tensor

TOLERANCE = {  # relative, per runner and dtype
    "emulated": {numpy.float32: 1e-5, numpy.float64: 1e-12},
    "gpu": {numpy.float32: 1e-4, numpy.float64: 1e-10},
}
FLOATS = pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["float32", "float64"])
NO_GPU = pytest.mark.skipif(backend.gpu_count() == 0, reason="no GPU")


def skip_without_gpp():
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: the CPU emulation of the kernels compiles them with it")


@pytest.fixture(params=["emulated", "emulated-shuffled", pytest.param("gpu", marks=NO_GPU)])
def runner(request, monkeypatch):
    if request.param != "gpu":
        skip_without_gpp()
    if request.param == "emulated-shuffled":
        monkeypatch.setattr(cuda, "MAX_BLOCKS", 3)
    return request.param


def check_kernel(function, arrays, params, runner, rtol=None):
    """Call `function` of minigrad.reference and of the CUDA kernels (run by `runner`) on the same
    arrays and parameters, and compare every output (rtol: TOLERANCE unless given)."""
    expected = getattr(reference, function)(*arrays, *params)
    expected = expected if isinstance(expected, tuple) else (expected,)
    if runner == "gpu":
        cupy = backend.cupy
        actual = getattr(cuda, function)(*(cupy.asarray(a) for a in arrays), *params)
        actual = [cupy.asnumpy(a) for a in (actual if isinstance(actual, tuple) else (actual,))]
    else:
        plan = getattr(cuda, "plan_" + function)(*arrays, *params)
        actual = cuda_emulator.run(plan, "shuffled" if runner == "emulated-shuffled" else "natural")
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
        if want.dtype == numpy.int32:                                   # argmax: exactly the same pixel
            numpy.testing.assert_array_equal(got, want)
        else:
            tolerance = rtol or TOLERANCE["gpu" if runner == "gpu" else "emulated"][want.dtype.type]
            # Sums that cancel to near 0 are compared relative to the output's largest entry.
            numpy.testing.assert_allclose(got, want, rtol=tolerance,
                                          atol=tolerance * numpy.nanmax(numpy.abs(want)))


def random_array(rng, shape, dtype, values="normal"):
    """normal: N(0, 1); ties: the integers 0, 1, 2 (many equal maxima); nan: N(0, 1) with 5% NaN;
    wide: N(0, 1) times 10^-3 ... 10^3 at random, as activations after a few layers can be."""
    x = rng.integers(0, 3, shape) if values == "ties" else rng.standard_normal(shape)
    if values == "nan":
        x[rng.random(shape) < 0.05] = numpy.nan
    if values == "wide":
        x *= 10.0 ** rng.integers(-3, 4, shape)
    return x.astype(dtype)


# ---- im2col / col2im ----------------------------------------------------------------------------

CONV_CASES = [  # x shape (N, C, H, W), geometry (kh, kw, sy, sx, ph, pw)
    pytest.param((1, 1, 5, 5), (3, 3, 1, 1, 0, 0), id="3x3"),
    pytest.param((2, 3, 7, 6), (3, 2, 2, 1, 1, 0), id="odd-3x2-stride2x1-pad1x0"),
    pytest.param((1, 2, 5, 7), (5, 5, 2, 3, 2, 1), id="5x5-stride2x3-pad2x1"),
    pytest.param((3, 2, 4, 4), (1, 1, 1, 1, 0, 0), id="1x1"),
    pytest.param((1, 1, 3, 3), (5, 5, 1, 1, 2, 2), id="window-larger-than-image"),
    pytest.param((2, 1, 9, 9), (3, 3, 3, 3, 0, 0), id="non-overlapping"),
    pytest.param((1, 2, 8, 8), (2, 2, 3, 3, 0, 0), id="stride-beyond-window"),
    pytest.param((2, 3, 227, 227), (11, 11, 4, 4, 0, 0), id="alexnet-conv1"),
    pytest.param((2, 48, 27, 27), (5, 5, 1, 1, 2, 2), id="alexnet-conv2"),
    pytest.param((1, 256, 13, 13), (3, 3, 1, 1, 1, 1), id="alexnet-conv3"),
]


@FLOATS
@pytest.mark.parametrize("shape, geometry", CONV_CASES)
def test_im2col(shape, geometry, dtype, runner, rng):
    check_kernel("im2col", (random_array(rng, shape, dtype),), geometry, runner)


@FLOATS
@pytest.mark.parametrize("shape, geometry", CONV_CASES)
def test_col2im(shape, geometry, dtype, runner, rng):
    N, C, H, W = shape
    kh, kw, sy, sx, ph, pw = geometry
    OH, OW = reference.conv_output_size(H, kh, sy, ph), reference.conv_output_size(W, kw, sx, pw)
    col = random_array(rng, (C * kh * kw, N * OH * OW), dtype)
    check_kernel("col2im", (col,), (shape, *geometry), runner)


def test_im2col_layout():
    """The layout of col, entry by entry, that Conv2d's single GEMM and the CUDA kernels rely on:
    col[(c*kh + i)*kw + j, (n*OH + oy)*OW + ox] = x_padded[n, c, oy*sy + i, ox*sx + j]."""
    N, C, H, W = 2, 3, 4, 5
    kh, kw, sy, sx, ph, pw = 2, 3, 2, 1, 1, 0
    OH, OW = 3, 3  # (H + 2*ph - kh)//sy + 1, (W + 2*pw - kw)//sx + 1
    x = numpy.arange(1.0, N * C * H * W + 1).reshape(N, C, H, W)  # all distinct, none 0
    x_padded = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = reference.im2col(x, kh, kw, sy, sx, ph, pw)
    assert col.shape == (C * kh * kw, N * OH * OW)
    for n, c, i, j, oy, ox in itertools.product(*map(range, (N, C, kh, kw, OH, OW))):
        pixel = x_padded[n, c, oy * sy + i, ox * sx + j]
        assert col[(c * kh + i) * kw + j, (n * OH + oy) * OW + ox] == pixel


@pytest.mark.parametrize("shape, geometry", CONV_CASES)
def test_col2im_is_the_adjoint_of_im2col(shape, geometry, rng):
    """<im2col(x), col> = <x, col2im(col)> for any x and col: col2im reads the same layout."""
    x = rng.standard_normal(shape)
    col = rng.standard_normal(reference.im2col(x, *geometry).shape)
    numpy.testing.assert_allclose(numpy.sum(reference.im2col(x, *geometry) * col),
                                  numpy.sum(x * reference.col2im(col, shape, *geometry)), rtol=1e-10)


@pytest.mark.parametrize("shape, geometry", CONV_CASES)
def test_images_last_columns_are_im2cols_in_another_order(shape, geometry, rng):
    """The CPU's layout (reference.im2col_images_last): the same columns, (oy, ox, n) for
    (n, oy, ox); and its col2im is col2im of the same columns."""
    x = rng.standard_normal(shape)
    col = reference.im2col(x, *geometry)                                # (K, N*OH*OW)
    N, K = shape[0], col.shape[0]
    reorder = lambda c: c.reshape(K, N, -1).transpose(0, 2, 1).reshape(K, -1)  # noqa: E731
    numpy.testing.assert_array_equal(reference.im2col_images_last(x, *geometry), reorder(col))
    g = rng.standard_normal(col.shape)
    numpy.testing.assert_allclose(reference.col2im_images_last(reorder(g), shape, *geometry),
                                  reference.col2im(g, shape, *geometry), rtol=1e-12, atol=1e-12)


# ---- max pooling --------------------------------------------------------------------------------

POOL_CASES = [  # x shape (N, C, H, W), window (kh, kw, sy, sx), values
    pytest.param((1, 1, 5, 5), (3, 3, 2, 2), "normal", id="3x3-stride2"),
    pytest.param((2, 3, 7, 8), (3, 3, 2, 2), "ties", id="3x3-stride2-ties"),
    pytest.param((2, 2, 7, 7), (3, 3, 2, 2), "nan", id="3x3-stride2-nan"),
    pytest.param((2, 2, 6, 6), (2, 2, 2, 2), "normal", id="2x2-stride2"),
    pytest.param((1, 2, 7, 7), (2, 2, 2, 2), "ties", id="2x2-stride2-odd-ties"),
    pytest.param((1, 1, 4, 6), (1, 3, 1, 2), "normal", id="1x3-stride1x2"),
    pytest.param((2, 2, 9, 8), (3, 2, 2, 1), "normal", id="3x2-stride2x1"),
    pytest.param((1, 2, 8, 9), (2, 3, 1, 2), "ties", id="2x3-stride1x2-ties"),
    pytest.param((1, 3, 8, 8), (3, 3, 2, 2), "normal", id="3x3-stride2-last-row-col-in-no-window"),
    pytest.param((1, 2, 8, 8), (2, 2, 3, 3), "normal", id="2x2-stride3-gaps"),
    pytest.param((1, 2, 6, 6), (3, 3, 1, 1), "ties", id="3x3-stride1-ties"),
    pytest.param((2, 48, 55, 55), (3, 3, 2, 2), "normal", id="alexnet-pool1"),
    pytest.param((2, 128, 27, 27), (3, 3, 2, 2), "normal", id="alexnet-pool2"),
    pytest.param((2, 128, 13, 13), (3, 3, 2, 2), "ties", id="alexnet-pool5-ties"),
]


@FLOATS
@pytest.mark.parametrize("shape, window, values", POOL_CASES)
def test_max_pool_forward(shape, window, values, dtype, runner, rng):
    check_kernel("max_pool_forward", (random_array(rng, shape, dtype, values),), window, runner)


@FLOATS
@pytest.mark.parametrize("shape, window, values", POOL_CASES)
def test_max_pool_backward(shape, window, values, dtype, runner, rng):
    y, argmax = reference.max_pool_forward(random_array(rng, shape, dtype, values), *window)
    gy = random_array(rng, y.shape, dtype)
    check_kernel("max_pool_backward", (gy, argmax), (shape, *window), runner)


@FLOATS
def test_max_pool_backward_is_deterministic(dtype, rng):
    """The gradients of up to four overlapping windows meet on one pixel: whatever order the blocks
    run in, gx must be the same to the last bit. (A scatter with atomicAdd, one thread per output,
    gives a few pixels a different last bit here in every shuffled order tried.)"""
    skip_without_gpp()
    shape, window = (2, 16, 27, 27), (3, 3, 2, 2)
    y, argmax = reference.max_pool_forward(random_array(rng, shape, dtype), *window)
    gy = random_array(rng, y.shape, dtype)
    runs = [cuda_emulator.run(cuda.plan_max_pool_backward(gy, argmax, shape, *window), order, seed)[0]
            for order, seed in (("natural", 0), ("shuffled", 1), ("shuffled", 2))]
    for gx in runs[1:]:
        assert gx.tobytes() == runs[0].tobytes()


# ---- local response normalization ---------------------------------------------------------------

LRN_CASES = [  # x shape (N, C, H, W), n, k, alpha, beta, values
    # alpha = k = 1, so that a window one channel too wide or narrow shows (see PAPER.md);
    # channel counts below, at and above the window.
    *(pytest.param((2, C, 3, 2), n, 1.0, 1.0, 0.75, "normal", id=f"C{C}-n{n}-alpha1")
      for C in (1, 3, 5, 7) for n in (1, 3, 5)),
    pytest.param((2, 3, 3, 2), 9, 1.0, 1.0, 0.75, "normal", id="C3-n9-past-both-sides"),
    pytest.param((2, 7, 3, 3), 5, 2.0, 1e-4, 0.75, "normal", id="C7-paper"),
    pytest.param((1, 16, 4, 4), 7, 0.5, 0.5, 0.5, "normal", id="C16-n7-beta0.5"),
    pytest.param((1, 16, 4, 4), 5, 1.0, 1.0, 0.75, "wide", id="C16-alpha1-wide-range"),
    pytest.param((2, 48, 55, 55), 5, 2.0, 1e-4, 0.75, "normal", id="alexnet-lrn1"),
    pytest.param((1, 128, 27, 27), 5, 2.0, 1e-4, 0.75, "normal", id="alexnet-lrn2"),
    pytest.param((1, 48, 55, 55), 5, 1.0, 1.0, 0.75, "normal", id="alexnet-lrn1-alpha1"),
]


@FLOATS
@pytest.mark.parametrize("shape, n, k, alpha, beta, values", LRN_CASES)
def test_lrn_forward(shape, n, k, alpha, beta, values, dtype, runner, rng):
    # The kernel's running window sum (a double) keeps the rounding error of every square it has
    # added and subtracted, about 1e-16 of the largest: with values 10^6 apart, 1e-10 of a small one.
    rtol = 1e-9 if values == "wide" and dtype is numpy.float64 else None
    check_kernel("lrn_forward", (random_array(rng, shape, dtype, values),), (n, k, alpha, beta), runner, rtol)


@FLOATS
@pytest.mark.parametrize("shape, n, k, alpha, beta, values", LRN_CASES)
def test_lrn_backward(shape, n, k, alpha, beta, values, dtype, runner, rng):
    x = random_array(rng, shape, dtype, values)
    y, scale = reference.lrn_forward(x, n, k, alpha, beta)
    gy = random_array(rng, shape, dtype)
    check_kernel("lrn_backward", (gy, x, y, scale), (n, alpha, beta), runner)


# ---- the SGD update ------------------------------------------------------------------------------

@FLOATS
@pytest.mark.parametrize("shape", [(1,), (96, 3, 11, 11), (4096,)], ids=["one", "conv1", "fc-bias"])
def test_sgd_update_is_sgds_own_bit_for_bit(shape, dtype, runner, rng):
    """The kernel against optim.SGD._update (its specification) on the same arrays, with values
    from 10^-3 to 10^3 and a learning rate whose products round."""
    sgd = optim.SGD([Tensor(numpy.zeros(1))], lr=0.0123, momentum=0.9, weight_decay=0.0005)
    w, g, v = (random_array(rng, shape, dtype, "wide") for _ in range(3))
    expected_w, expected_v = w.copy(), v.copy()
    sgd._update(expected_w, g, expected_v)
    arguments = (sgd.momentum, sgd.weight_decay * sgd.lr, sgd.lr)
    if runner == "gpu":
        cupy = backend.cupy
        w, g, v = (cupy.asarray(a) for a in (w, g, v))
        cuda.sgd_update(w, g, v, *arguments)
        w, v = cupy.asnumpy(w), cupy.asnumpy(v)
    else:
        plan = cuda.plan_sgd_update(w, g, v, *arguments)
        assert cuda_emulator.run(plan, "shuffled" if runner == "emulated-shuffled" else "natural") \
            == (w, v)                                                   # in place
    numpy.testing.assert_array_equal(w, expected_w)
    numpy.testing.assert_array_equal(v, expected_v)


def test_sgd_update_refuses_a_parameter_it_cannot_update_in_place():
    w = numpy.zeros((4, 6), numpy.float32)[:, ::2]                      # a view with gaps
    plan = cuda.plan_sgd_update(w, numpy.zeros_like(w), numpy.zeros(w.shape, numpy.float32),
                                0.9, 5e-6, 0.01)
    with pytest.raises(ValueError, match="argument 'w' of sgd_update<float> of sgd.cu must be "
                                         "C-contiguous"):
        cuda.check_launch(plan)


# ---- the interface ------------------------------------------------------------------------------

@pytest.mark.parametrize("function", ["im2col", "col2im", "max_pool_forward", "max_pool_backward",
                                      "lrn_forward", "lrn_backward"])
def test_same_signature_as_reference(function):
    assert inspect.signature(getattr(cuda, function)) == inspect.signature(getattr(reference, function))


def test_signature_is_parsed_from_the_source():
    assert cuda.signature("pooling", "max_pool_backward<double>") == [
        ("gy", "double", True), ("argmax", "int", True), ("gx", "double", True),
        *((name, "int", False) for name in ("N", "C", "H", "W", "kh", "kw", "sy", "sx", "OH", "OW"))]


def _lrn_plan():
    """A small valid plan of lrn_forward<float>: (x, y, scale, N, C, H, W, n, k, alpha, beta)."""
    return cuda.plan_lrn_forward(numpy.ones((1, 3, 2, 2), numpy.float32), 5, 2.0, 1e-4, 0.75)


def _with_arg(plan, index, value):
    return dataclasses.replace(plan, args=plan.args[:index] + (value,) + plan.args[index + 1:])


# A view that claims 2**31 floats over a single real one: only its size is ever looked at.
_HUGE = numpy.lib.stride_tricks.as_strided(numpy.zeros(1, numpy.float32), shape=(2**31,), strides=(4,))


@pytest.mark.parametrize("index, value, error, message", [
    pytest.param(3, 1, TypeError, "'N' .* must be numpy.int32 .*got int", id="python-int"),
    pytest.param(3, numpy.int64(1), TypeError, "must be numpy.int32 .*got numpy.int64", id="numpy-int64"),
    pytest.param(8, numpy.float64(2.0), TypeError, "'k' .* must be numpy.float32 .*got numpy.float64",
                 id="float64-scalar-for-float"),
    pytest.param(8, 2.0, TypeError, "must be numpy.float32 .*got float", id="python-float"),
    pytest.param(0, numpy.ones((1, 3, 2, 2)), TypeError,
                 "'x' .* must be an array of float32 .*got an array of float64",
                 id="float64-array-for-float*"),
    pytest.param(0, numpy.float32(1.0), TypeError, "must be an array of float32 .*got numpy.float32",
                 id="scalar-for-pointer"),
    pytest.param(1, numpy.ones((1, 3, 2, 4), numpy.float32)[..., ::2], ValueError, "must be C-contiguous",
                 id="non-contiguous"),
    pytest.param(2, _HUGE, ValueError, "32-bit kernel indices", id="beyond-int32"),
])
def test_check_refuses_wrong_arguments(index, value, error, message):
    plan = _with_arg(_lrn_plan(), index, value)
    with pytest.raises(error, match=message):
        cuda.check_launch(plan)
    with pytest.raises(error, match=message):                            # the emulator checks too
        cuda_emulator.run(plan)


def test_check_refuses_int64_argmax():
    x = numpy.ones((1, 1, 3, 3), numpy.float32)
    plan = cuda.plan_max_pool_backward(x[:, :, :1, :1], numpy.zeros((1, 1, 1, 1), numpy.int64), x.shape,
                                       3, 3, 2, 2)
    with pytest.raises(TypeError, match="'argmax' .* must be an array of int32 .*got an array of int64"):
        cuda.check_launch(plan)


def test_check_refuses_wrong_argument_count():
    plan = _lrn_plan()
    with pytest.raises(TypeError, match="takes 11 arguments but the launch passes 10"):
        cuda.check_launch(dataclasses.replace(plan, args=plan.args[:-1]))


def test_plans_refuse_unsupported_dtype_and_wrong_shapes():
    with pytest.raises(TypeError, match="float32 and float64 arrays, not float16"):
        cuda.plan_im2col(numpy.ones((1, 1, 4, 4), numpy.float16), 3, 3, 1, 1, 0, 0)
    with pytest.raises(ValueError, match=r"col has shape \(2, 4, 4\) but the kernel needs \(4, 8\)"):
        cuda.plan_col2im(numpy.ones((2, 4, 4), numpy.float32), (2, 1, 3, 3), 2, 2, 1, 1, 0, 0)


def test_numpy_arrays_are_refused():
    with pytest.raises((RuntimeError, TypeError), match="CuPy"):
        cuda.im2col(numpy.ones((1, 1, 4, 4), numpy.float32), 3, 3, 1, 1, 0, 0)


# ---- NVRTC: the sources compile for the GPU -----------------------------------------------------

@pytest.fixture(scope="module")
def nvrtc():
    """libnvrtc from the nvidia-cuda-nvrtc wheel, through ctypes."""
    spec = importlib.util.find_spec("nvidia")
    folders = [] if spec is None else spec.submodule_search_locations
    libraries = sorted(path for folder in folders for path in pathlib.Path(folder).glob("**/libnvrtc.so*"))
    if not libraries:
        pytest.skip("the nvidia-cuda-nvrtc wheel is not installed (pip install nvidia-cuda-nvrtc)")
    return ctypes.CDLL(str(libraries[-1]))


# What CuPy 14 adds to a RawModule's options (cupy/_core/core.pyx, cupy/cuda/compiler.py):
# -ftz=true flushes denormals to zero, which no kernel here may depend on.
CUPY_FLAGS = ("--std=c++17", "-ftz=true", "--device-as-default-execution-space")


def nvrtc_compile(nvrtc, module, arch):
    """Compile <module>.cu with every kernel instance, as cupy.RawModule does; returns (status,
    log, {instance: mangled name}), status 0 on success."""
    program = ctypes.c_void_p()
    source = cuda.kernel_source(module).encode()
    name = f"{module}.cu".encode()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, name, 0, None, None) == 0
    try:
        for instance in cuda.kernel_instances(module):
            nvrtc.nvrtcAddNameExpression(program, instance.encode())
        flags = [f"--gpu-architecture={arch}", *CUPY_FLAGS]
        options = (ctypes.c_char_p * len(flags))(*(flag.encode() for flag in flags))
        status = nvrtc.nvrtcCompileProgram(program, len(flags), options)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        mangled = {}
        for instance in cuda.kernel_instances(module) if status == 0 else ():
            lowered = ctypes.c_char_p()
            if nvrtc.nvrtcGetLoweredName(program, instance.encode(), ctypes.byref(lowered)) == 0:
                mangled[instance] = lowered.value.decode()
        return status, log.value.decode(), mangled
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("module", sorted(path.stem for path in cuda.KERNEL_DIR.glob("*.cu")))
def test_compiles_with_nvrtc(nvrtc, module, arch):
    status, log, mangled = nvrtc_compile(nvrtc, module, arch)
    assert status == 0, f"NVRTC could not compile {module}.cu for {arch}:\n{log}"
    assert "warning" not in log, f"NVRTC warns on {module}.cu for {arch}:\n{log}"
    assert sorted(mangled) == sorted(cuda.kernel_instances(module)), "a kernel instance was not compiled"
