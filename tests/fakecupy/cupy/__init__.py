"""A stand-in for CuPy on NumPy, to run minigrad's GPU code paths on a machine without a GPU.

    PYTHONPATH=tests/fakecupy python -m pytest          # the whole suite, on two fake GPUs

It is not a GPU. What it checks is what goes wrong first when code written for NumPy meets
CuPy, with the rules CuPy 14 enforces:

- Arrays live on a device. Every operation runs on the current device (cupy.cuda.Device, one
  per host thread), makes its result there, and refuses an operand that lives on another
  device (CuPy needs peer access for that, and with it a kernel crawls over the interconnect).
- CuPy never converts implicitly: a NumPy array as an operand, numpy.asarray of a device array,
  or a NumPy array assigned into one raise TypeError. NumPy functions called on device arrays
  dispatch to the device version (NEP 13 and 18), as they do with CuPy.
- A reduction returns a 0-d array, not a NumPy scalar.
- Only what CuPy has: a NumPy function or array method that CuPy 14.2 lacks is an
  AttributeError, and a call with arguments CuPy's function does not take (NumPy's `where=`,
  `initial=`, ...) is a TypeError. names.json holds dir(cupy) and dir(cupy.ndarray) of
  cupy-cuda13x 14.2.0, and the signatures of their functions (tests/fakecupy/make_names.py).
- RawModule compiles minigrad's .cu files: here tests/cuda_emulator.py runs them on the CPU,
  checked against their C signatures.

The number of devices is MINIGRAD_FAKE_GPUS (default 2). Arrays are NumPy arrays underneath,
so views share memory as on a GPU. Where CuPy's function gives another result than NumPy's of
the same name (another dtype, say), it is not caught; timing (Event) is the host clock; there is
no NCCL.
"""
import functools
import importlib.util
import inspect
import json
import operator
import os
import pathlib
import sys
import threading
import time
import types

import numpy

__version__ = "14.2.0+fake"              # the CuPy whose names.json it keeps to
_DEVICES = int(os.environ.get("MINIGRAD_FAKE_GPUS", "2"))
_COMPUTE_CAPABILITY = "90"              # an H100's or H200's; a test may set an older one
_TESTS = pathlib.Path(__file__).resolve().parents[2]
_current = threading.local()            # CUDA's current device is per host thread
_NAMES = json.loads(pathlib.Path(__file__).with_name("names.json").read_text())
_MODULE_NAMES, _METHODS = set(_NAMES["module"]), set(_NAMES["ndarray"])


@functools.cache
def _signature(kind, name):
    """inspect.Signature of cupy.<name> (kind "module") or of cupy.ndarray.<name> ("ndarray"),
    from names.json; None where it is not known."""
    text = _NAMES[f"{kind}_signatures"].get(name)
    if text is None:
        return None
    scope = {}
    exec(f"def function{text}: pass", scope)
    return inspect.signature(scope["function"])


def _check_arguments(kind, name, args, kwargs):
    """A TypeError, as CuPy would raise, when CuPy's function does not take these arguments."""
    signature = _signature(kind, name)
    try:
        if signature is not None:
            signature.bind(*args, **kwargs)
    except TypeError as error:
        owner = "cupy" if kind == "module" else "cupy.ndarray"
        raise TypeError(f"{owner}.{name}{signature} does not take these arguments: {error}") \
            from None


def _device():
    return getattr(_current, "id", 0)


# ---- arrays -------------------------------------------------------------------------------------

class ndarray:
    """A NumPy array on fake device `device`."""
    __slots__ = ("_a", "_device")
    __hash__ = None

    def __init__(self, array, device):
        self._a, self._device = array, device

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T, self._device))
    device = property(lambda self: cuda.Device(self._device))
    data = property(lambda self: _MemoryPointer(self))

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "__call__":
            _check_arguments("module", ufunc.__name__, inputs, kwargs)
        return _call(getattr(ufunc, method) if method != "__call__" else ufunc, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        _check_arguments("module", func.__name__, args, kwargs)
        return _call(func, args, kwargs)

    def get(self):
        return self._a.copy()

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(row, self._device) for row in self._a)

    def __bool__(self):
        return bool(self._a)

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __repr__(self):
        return f"fakecupy.ndarray({self._a!r}, device={self._device})"

    def __getitem__(self, key):
        parts = key if isinstance(key, tuple) else (key,)
        if all(isinstance(k, (int, slice, type(None), type(Ellipsis))) for k in parts):
            return _wrap(self._a[key], self._device)       # a view: no kernel, no device
        return _call(operator.getitem, (self, key), {}, indexing=True)

    def __setitem__(self, key, value):
        if isinstance(value, numpy.ndarray) and value.ndim:
            raise TypeError("cupy: assignment from a NumPy array (CPU memory) is refused; copy it "
                            "with cupy.asarray first")
        _call(operator.setitem, (self, key, value), {}, indexing=True)

    def __getattr__(self, name):
        if name not in _METHODS:       # also __array_interface__, which would hand NumPy the memory
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        attribute = getattr(self._a, name)
        if not callable(attribute):
            return _wrap(attribute, self._device)

        def method(*args, **kwargs):
            _check_arguments("ndarray", name, args, kwargs)
            if name in _VIEWS:                   # no kernel: the view stays where its base is
                return _wrap(attribute(*args, **kwargs), self._device)
            return _call(getattr(numpy.ndarray, name), (self,) + args, kwargs)
        return method


_VIEWS = {"reshape", "transpose", "swapaxes", "view", "squeeze", "ravel"}


def _operator(function):
    return lambda self, *others: _call(function, (self,) + others, {})


def _reflected(function):
    return lambda self, other: _call(function, (other, self), {})


def _in_place(function):
    def method(self, other):
        _call(function, (self, other), {})
        return self
    return method


def _matmul(a, b):
    """a @ b; float32 inputs rounded to TF32's 10-bit mantissa when set_compute_type says so."""
    if _linalg.get_compute_type(numpy.float32) == _linalg.COMPUTE_TYPE_TF32 and \
            a.dtype == b.dtype == numpy.float32:
        a, b = ((x.view(numpy.uint32) + 0x1000 & 0xFFFFE000).view(numpy.float32) for x in (a, b))
    return a @ b


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"):
    _function = _matmul if _name == "matmul" else \
        getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(ndarray, f"__{_name}__", _operator(_function))
    setattr(ndarray, f"__r{_name}__", _reflected(_function))
    setattr(ndarray, f"__i{_name}__", _in_place(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", _operator(getattr(operator, _name)))


def _unwrap(value, devices, indexing):
    """value with every device array replaced by its NumPy array (their devices into
    `devices`); a NumPy array is refused, as CuPy does, except as an index."""
    if isinstance(value, ndarray):
        devices.add(value._device)
        return value._a
    if isinstance(value, numpy.ndarray) and not indexing:
        raise TypeError("Unsupported type <class 'numpy.ndarray'>: cupy does not mix device "
                        "arrays with NumPy arrays; copy with cupy.asarray or cupy.asnumpy")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, devices, indexing) for v in value)
    return value


def _wrap(value, device):
    """NumPy results as device arrays on `device` (scalars as 0-d arrays, as CuPy returns)."""
    if isinstance(value, (numpy.ndarray, numpy.generic)):
        return ndarray(numpy.asarray(value), device)
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(v, device) for v in value)
    return value


def _call(function, args, kwargs, indexing=False):
    """function on the NumPy arrays under `args`, on the current device, which every operand
    must be on; the result on the current device."""
    devices = set()
    args = _unwrap(tuple(args), devices, indexing)
    kwargs = {key: _unwrap(value, devices, indexing) for key, value in kwargs.items()}
    here = _device()
    if devices - {here}:
        raise ValueError(f"cupy: an operation on device {here} was given arrays on device(s) "
                         f"{sorted(devices - {here})}; peer access is needed for that (move the "
                         "arrays, or run the operation under cupy.cuda.Device of their device)")
    return _wrap(function(*args, **kwargs), here)


class _MemoryPointer:
    def __init__(self, array):
        self.array = array

    def copy_from_device(self, source, size):
        """cudaMemcpy between devices: the bytes of `source`'s array into this one's."""
        target = self.array._a.reshape(-1).view(numpy.uint8)
        target[:size] = source.array._a.reshape(-1).view(numpy.uint8)[:size]

    copy_from_device_async = copy_from_device


# ---- module functions ---------------------------------------------------------------------------

def __getattr__(name):
    """Every NumPy function and ufunc that CuPy has, as a device function; types as they are."""
    if name not in _MODULE_NAMES:
        raise AttributeError(f"module 'cupy' has no attribute {name!r}")
    attribute = getattr(numpy, name)
    if isinstance(attribute, type) or not callable(attribute):
        return attribute
    if isinstance(attribute, numpy.ufunc):
        return _Ufunc(attribute, name)

    def function(*args, **kwargs):
        _check_arguments("module", name, args, kwargs)
        return _call(attribute, args, kwargs)
    return function


class _Ufunc:
    def __init__(self, ufunc, name):
        self.ufunc, self.name = ufunc, name

    def __call__(self, *args, **kwargs):
        _check_arguments("module", self.name, args, kwargs)
        return _call(self.ufunc, args, kwargs)

    def __getattr__(self, method):                   # reduce, at, accumulate, outer
        return lambda *args, **kwargs: _call(getattr(self.ufunc, method), args, kwargs,
                                             indexing=method == "at")


def asarray(a, dtype=None, order=None):
    """A device array: `a` itself when it is one on the current device, else a copy here."""
    if isinstance(a, ndarray) and a._device == _device():
        return a if dtype is None else a.astype(dtype, copy=False)
    return array(a, dtype)


def array(a, dtype=None, copy=True, order="K"):
    if isinstance(a, ndarray):
        a = a._a
    return ndarray(numpy.array(a, dtype=dtype, order=order), _device())


def asnumpy(a, stream=None):
    return a.get() if isinstance(a, ndarray) else numpy.asarray(a)


class _MemoryPool:
    def used_bytes(self):
        return 0

    total_bytes = used_bytes


_pool = _MemoryPool()


def get_default_memory_pool():
    return _pool


# ---- random -------------------------------------------------------------------------------------

class _Generator:
    def __init__(self, seed):
        self.rng = numpy.random.default_rng(seed)

    def __getattr__(self, name):
        method = getattr(self.rng, name)
        return lambda *args, **kwargs: _wrap(method(*args, **kwargs), _device())


random = types.ModuleType("cupy.random")
random.default_rng = _Generator


# ---- cuda ---------------------------------------------------------------------------------------

class _Device:
    """cupy.cuda.Device: a device id, the current device within `with`, or from use() on."""

    def __init__(self, device=None):
        self.id = _device() if device is None else int(device)
        if not 0 <= self.id < _DEVICES:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")
        self._previous = []

    def __enter__(self):
        self._previous.append(_device())
        _current.id = self.id
        return self

    def __exit__(self, *exc):
        _current.id = self._previous.pop()

    def use(self):
        _current.id = self.id

    def synchronize(self):
        pass

    @property
    def compute_capability(self):
        return _COMPUTE_CAPABILITY

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class _Event:
    def __init__(self, *args, **kwargs):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


class _MemoryHook:
    """cupy.cuda.MemoryHook's interface: `with hook:`; the fake allocates no device memory,
    so no malloc or free is ever reported to it."""
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


runtime = types.SimpleNamespace(
    getDeviceCount=lambda: _DEVICES,
    getDevice=_device,
    getDeviceProperties=lambda device: {"name": f"fake GPU {device} (NumPy)".encode()},
    deviceGetAttribute=lambda attribute, device: 0,
    driverGetVersion=lambda: 13000,
    runtimeGetVersion=lambda: 13000)

cuda = types.ModuleType("cupy.cuda")
cuda.Device = _Device
cuda.runtime = runtime
cuda.Event = _Event
cuda.get_elapsed_time = lambda start, end: 1e3 * (end.time - start.time)
cuda.MemoryHook = _MemoryHook
sys.modules["cupy.cuda"] = cuda
sys.modules["cupy.random"] = random


# ---- kernels: the .cu files, run by tests/cuda_emulator.py --------------------------------------

def _emulator():
    spec = importlib.util.spec_from_file_location("cuda_emulator", _TESTS / "cuda_emulator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RawModule:
    def __init__(self, code=None, options=(), name_expressions=None, **kwargs):
        from minigrad import cuda as kernels
        self.module = next((path.stem for path in kernels.KERNEL_DIR.glob("*.cu")
                            if kernels.kernel_source(path.stem) == code), None)
        if self.module is None:
            raise ValueError("fakecupy runs minigrad's kernels only: this source is none of "
                             "minigrad/kernels/*.cu")
        self.name_expressions = tuple(name_expressions or ())

    def get_function(self, name):
        if name not in self.name_expressions:
            raise KeyError(f"{name} is not among the RawModule's name_expressions")
        return RawKernel(self.module, name)


class RawKernel:
    _run = None

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, grid, block, args, **kwargs):
        from minigrad import cuda as kernels
        if not (isinstance(grid, tuple) and isinstance(block, tuple) and isinstance(args, tuple)):
            raise TypeError("grid, block and args of a kernel launch must be tuples")
        if RawKernel._run is None:
            RawKernel._run = _emulator().run
        _call(lambda *arrays: RawKernel._run(kernels.Launch(
            self.module, self.name, grid, block, arrays, ())), args, {})


# ---- cuBLAS's compute type (minigrad.backend.set_tf32) ------------------------------------------

_linalg = types.SimpleNamespace(COMPUTE_TYPE_DEFAULT=1, COMPUTE_TYPE_TF32=7, types={})
_linalg.get_compute_type = lambda dtype: _linalg.types.get(numpy.dtype(dtype), 1)
_core = types.SimpleNamespace(_routines_linalg=_linalg)


def _set_compute_type(dtype, kind):
    """As CuPy: TF32 on a GPU older than compute capability 8.0 warns and keeps the default."""
    if kind == _linalg.COMPUTE_TYPE_TF32 and int(_COMPUTE_CAPABILITY) < 80:
        import warnings
        warnings.warn("TF32 compute type is not supported on this device; using default")
        kind = _linalg.COMPUTE_TYPE_DEFAULT
    _linalg.types[numpy.dtype(dtype)] = kind


_core.set_compute_type = _set_compute_type
