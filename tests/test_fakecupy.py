"""tests/fakecupy refuses what CuPy 14.2 refuses: without that, the GPU tests run on the fake GPUs
would pass code that fails on a real one. Run with PYTHONPATH=tests/fakecupy (skipped without)."""
import numpy
import pytest

from conftest import FAKE_GPUS
from minigrad import backend

pytestmark = pytest.mark.skipif(not FAKE_GPUS, reason="the fake CuPy is not in use "
                                "(PYTHONPATH=tests/fakecupy)")


@pytest.fixture
def cupy():
    return backend.cupy


@pytest.mark.parametrize("call", [
    lambda cp, a: cp.add(a, a, where=a > 0),                   # a ufunc
    lambda cp, a: cp.max(a, initial=0),                        # a module function
    lambda cp, a: a.sum(where=a > 0),                          # an array method
    lambda cp, a: numpy.max(a, initial=0),                     # NumPy's, dispatched to CuPy's
    lambda cp, a: numpy.add(a, a, where=a > 0),
], ids=["ufunc", "function", "method", "numpy-function", "numpy-ufunc"])
def test_arguments_cupy_does_not_take_are_refused(cupy, call):
    with pytest.raises(TypeError, match="does not take these arguments: got an unexpected "
                                        "keyword argument"):
        call(cupy, cupy.ones((2, 3), numpy.float32))


def test_arguments_cupy_takes_pass(cupy):
    a = cupy.arange(6, dtype=numpy.float32).reshape(2, 3)
    assert a.sum(axis=1, keepdims=True).shape == (2, 1)
    assert cupy.concatenate([a, a], axis=0).shape == (4, 3)
    assert numpy.sum(a, axis=0).shape == (3,)
    assert cupy.multiply(a, 2, out=a) is not None


def test_names_cupy_lacks_are_refused(cupy):
    with pytest.raises(AttributeError, match="module 'cupy' has no attribute 'insert'"):
        cupy.insert                                            # NumPy has it, CuPy 14.2 not
    with pytest.raises(AttributeError, match="'cupy.ndarray' object has no attribute 'resize'"):
        cupy.ones(3).resize


def test_devices_and_numpy_do_not_mix(cupy):
    with cupy.cuda.Device(0):
        a = cupy.ones(3)
    with cupy.cuda.Device(1):
        b = cupy.ones(3)
        with pytest.raises(ValueError, match="was given arrays on device"):
            a + b
    with pytest.raises(TypeError, match="does not mix|Unsupported type"):
        a + numpy.ones(3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        numpy.asarray(a)


def test_a_reduction_is_a_0d_array(cupy):
    total = cupy.ones(3).sum()
    assert isinstance(total, cupy.ndarray) and total.shape == ()


def test_tf32_on_a_gpu_without_it_is_one_sentence(cupy, monkeypatch):
    monkeypatch.setattr(cupy, "_COMPUTE_CAPABILITY", "75")        # a Turing GPU: no TF32
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"compute capability 7\.5\) "
                                                  "has no TF32.*run without --tf32"):
        backend.set_tf32(True)
    assert backend.set_tf32(False) is False
