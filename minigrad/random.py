"""Random numbers for initialization and dropout, seeded in one place.

One numpy.random.Generator serves every draw, on the CPU and for the GPU alike, so a run is
reproducible bit for bit and its whole random state fits in a checkpoint (`get_state` /
`set_state`).
"""
import json

import numpy

from minigrad import backend

_generator = numpy.random.default_rng()


def manual_seed(seed):
    """Start the generator from `seed`."""
    global _generator
    _generator = numpy.random.default_rng(seed)


def generator():
    """The numpy.random.Generator behind every CPU draw."""
    return _generator


def uniform(shape, dtype, device):
    """Samples of U[0, 1) of `shape` and `dtype` on `device`, drawn on the CPU and copied: the
    one generator's state then covers every draw, so a resumed run draws the same dropout
    masks on a GPU too (a mask of AlexNet's fc6/fc7 at batch 128 is 1 MB a layer)."""
    return backend.to_device(_generator.random(shape, dtype=dtype), device)


def get_state():
    """The CPU generator's state as a JSON string (fits in an .npz without pickling)."""
    return json.dumps(_generator.bit_generator.state)


def set_state(state):
    """Restore what get_state() returned."""
    _generator.bit_generator.state = json.loads(state)
