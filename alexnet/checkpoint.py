"""Checkpoints: one .npz of plain arrays (no pickle), written atomically.

    model.<name>          every parameter, e.g. model.conv1a.weight
    optim.velocity.<i>    SGD's momentum buffers, in model.parameters() order
    meta                  a JSON string: preset, classes, epoch, step, learning rate, schedule,
                          random state, the run's settings
"""
import json
import os
import zipfile

import numpy

from alexnet.model import AlexNet


def save(path, model, optimizer, meta):
    arrays = {f"model.{name}": value for name, value in model.state_dict().items()}
    for key, value in optimizer.state_dict().items():
        if key.startswith("velocity."):
            arrays[f"optim.{key}"] = value
    arrays["meta"] = numpy.array(json.dumps(meta))
    write_atomically(path, arrays)


def write_atomically(path, arrays):
    """Write to a temporary file beside `path`, then rename it: a crash leaves the old file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        numpy.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path):
    """(parameters: name -> array, velocities: key -> array, meta: dict) of a checkpoint."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .npz written by "
                                "alexnet.train (last.npz or best.npz) or its run directory")
    try:
        with numpy.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as error:
        raise ValueError(f"checkpoint {path} cannot be read ({error}); it is truncated or not a "
                         "checkpoint: use another one, e.g. best.npz") from None
    params = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    velocities = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
    return params, velocities, meta


def load_model(path, devices=None):
    """The AlexNet a checkpoint holds, in eval mode, and the checkpoint's meta."""
    params, _, meta = load(path)
    model = AlexNet(num_classes=len(meta["classes"]), devices=devices, preset=meta["preset"],
                    init=meta["config"]["init"])      # init decides the input scale
    model.load_state_dict(params)
    return model.eval(), meta
