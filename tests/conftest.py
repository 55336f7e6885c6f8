"""Every op test runs once per backend: NumPy always, CuPy when a GPU is present.

With PYTHONPATH=tests/fakecupy the GPU tests run on two fake GPUs instead (tests/fakecupy: CuPy's
rules on NumPy, the kernels through the CPU emulator); tests marked full_size are skipped there.
`--gpu-only` runs just the tests that use a GPU whatever the machine (tests/test_selection.py
checks the choice), `--gpu-first` runs them before the others (which on a GPU machine put the
network on the GPU too).
"""
import numpy
import pytest

from minigrad import backend

FAKE_GPUS = getattr(backend.cupy, "__version__", "").endswith("+fake")


def pytest_addoption(parser):
    parser.addoption("--gpu-only", action="store_true", help="run only the tests that use a GPU "
                     "whatever the machine (those skipped without one)")
    parser.addoption("--gpu-first", action="store_true", help="run those first, then the rest "
                     "(on a GPU machine many of them use it too): a time limit cuts the rest")


def uses_gpu(item):
    """Whether a test runs on a GPU: a device parameter that is a GPU id (the `device` fixture,
    a layout of the towers), the kernel runner "gpu", or a skip mark for machines without one."""
    if any("GPU" in mark.kwargs.get("reason", "") for mark in item.iter_markers("skipif")):
        return True
    params = item.callspec.params if hasattr(item, "callspec") else {}
    if params.get("runner") == "gpu":
        return True
    devices = params.get("device", params.get("devices", "cpu"))
    return any(type(d) is int for d in (devices if isinstance(devices, tuple) else (devices,)))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--gpu-only"):
        gpu = [uses_gpu(item) for item in items]
        config.hook.pytest_deselected(items=[item for item, g in zip(items, gpu) if not g])
        items[:] = [item for item, g in zip(items, gpu) if g]
    elif config.getoption("--gpu-first"):
        items.sort(key=lambda item: not uses_gpu(item))        # stable: each part in its order
    if not FAKE_GPUS:
        return
    skip = pytest.mark.skip(reason="full-size training: hours with the fake GPUs' emulated kernels")
    for item in items:
        if "full_size" in item.keywords:
            item.add_marker(skip)


def _backend_params():
    gpu = pytest.mark.skipif(backend.gpu_count() == 0, reason="no GPU: CuPy with a CUDA device is needed")
    return [pytest.param("cpu", id="numpy"), pytest.param(0, id="cupy", marks=gpu)]


@pytest.fixture(params=_backend_params())
def device(request):
    """"cpu" or GPU 0: where the test's arrays live."""
    return request.param


@pytest.fixture
def rng():
    return numpy.random.default_rng(12345)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """run(train_images, val_images, epochs): the folder of a run of the tiny preset on the
    embedded data set, batch 16 (seconds on a CPU)."""
    from alexnet import train

    def run(train_images, val_images, epochs):
        path = tmp_path_factory.mktemp("run")
        assert train.main(["--preset", "tiny", "--synthetic-train", str(train_images),
                           "--synthetic-val", str(val_images), "--batch-size", "16",
                           "--epochs", str(epochs), "--run-dir", str(path)]) == 0
        return path
    return run
