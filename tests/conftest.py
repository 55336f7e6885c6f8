"""Every op test runs once per backend: NumPy always, CuPy when a GPU is present.

With PYTHONPATH=tests/fakecupy the GPU tests run on two fake GPUs instead (tests/fakecupy: CuPy's
rules on NumPy, the kernels through the CPU emulator); tests marked full_size are skipped there.
"""
import numpy
import pytest

from minigrad import backend

FAKE_GPUS = getattr(backend.cupy, "__version__", "").endswith("+fake")


def pytest_collection_modifyitems(config, items):
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
