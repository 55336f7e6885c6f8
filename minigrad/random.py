"""Random numbers for initialization and dropout, seeded in one place.

On the CPU one numpy.random.Generator serves every draw, so a run is reproducible bit for bit
and its state can be saved in a checkpoint (`get_state` / `set_state`). On a GPU, dropout masks
come from CuPy's per-device generator, seeded by `manual_seed` as well.
"""
import json

import numpy

from minigrad import backend

_generator = numpy.random.default_rng()


def manual_seed(seed):
    """Seed the CPU generator and, when there are GPUs, each GPU's generator."""
    global _generator
    _generator = numpy.random.default_rng(seed)
    for device in range(backend.gpu_count()):
        with backend.device_scope(device):
            backend.cupy.random.seed(seed + device)


def generator():
    """The numpy.random.Generator behind every CPU draw."""
    return _generator


def uniform(shape, dtype, device):
    """Samples of U[0, 1) of `shape` and `dtype` on `device`."""
    if device == "cpu":
        return _generator.random(shape, dtype=dtype)
    with backend.device_scope(device):
        return backend.cupy.random.random(shape, dtype=dtype)


def get_state():
    """The CPU generator's state as a JSON string (fits in an .npz without pickling)."""
    return json.dumps(_generator.bit_generator.state)


def set_state(state):
    """Restore what get_state() returned."""
    _generator.bit_generator.state = json.loads(state)
