"""Checkpoints: one .npz of plain arrays (no pickle), written atomically.

    model.<name>          every parameter, e.g. model.conv1a.weight
    optim.velocity.<i>    SGD's momentum buffers, in model.parameters() order
    data.<name>           what the training set says about colour (data.Augmentation): data.mean
                          (3, S, S), data.eigenvalues (3,), data.eigenvectors (3, 3); evaluation
                          and prediction subtract the TRAINING set's mean image, so it travels
                          with the weights
    meta                  a JSON string: preset, classes (their folder names) and
                          class_names (readable ones), train_images (the size of the training
                          set), epoch, batch (next in the epoch), step, best validation top-1
                          error, learning rate, schedule, seconds of training, the number of
                          processes (ranks) that trained it and the random state of each, the
                          run's settings
"""
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import zipfile
from shlex import quote

import numpy

from alexnet.data import Augmentation
from alexnet.model import AlexNet
from minigrad import backend


def save(path, model, optimizer, meta, extra_arrays=None):
    """extra_arrays: name -> array, stored as data.<name> (e.g. augmentation_arrays(aug))."""
    arrays = {f"model.{name}": value for name, value in model.state_dict().items()}
    for key, value in optimizer.state_dict().items():
        if key.startswith("velocity."):
            arrays[f"optim.{key}"] = value
    for name, value in (extra_arrays or {}).items():
        arrays[f"data.{name}"] = value
    arrays["meta"] = numpy.array(json.dumps(meta))
    write_atomically(path, lambda f: numpy.savez(f, **arrays))


def class_names(meta):
    """The classes' readable names (train --class-names), else their folder names."""
    return meta.get("class_names") or meta["classes"]


def write_atomically(path, write):
    """Write through write(file) to a temporary file beside `path`, then rename it over `path`:
    a crash leaves the old file, never half a new one; an error or Ctrl-C, not even the half."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):      # e.g. its folder made read-only: nothing made
            os.remove(tmp)
        # The error of a full disk names no file, that of a folder made read-only the .tmp.
        if isinstance(error, OSError) and error.errno:
            named = OSError(f"cannot write {path} ({error.strerror}); the file it would have "
                            "replaced, if any, is as it was")
            named.errno = error.errno
            raise named from error
        raise


def copy(source, path):
    """The checkpoint `source` copied to `path`, atomically."""
    with open(source, "rb") as f:
        write_atomically(path, lambda out: shutil.copyfileobj(f, out))


def resolve(path, best=False):
    """The .npz file a checkpoint argument names: a file, or a run directory's last.npz (where
    its training goes on from). With best (the commands that use a trained network: evaluate,
    predict, show, filters), a run directory's best.npz, the weights of its lowest validation
    error (last.npz may be from after they got worse, or from a run that diverged), or its
    last.npz where it has no best.npz yet (a run stopped before its first evaluation); which one
    is said in one line on stderr."""
    if os.path.isdir(path):
        last, best_path = (os.path.join(path, name) for name in ("last.npz", "best.npz"))
        if not best:
            path = last
        elif os.path.exists(best_path):
            print(f"using {best_path}, the run's weights that did best on its validation set",
                  file=sys.stderr)
            return best_path
        elif os.path.exists(last):
            print(f"using {last}: the run has no best.npz (it was not evaluated yet)",
                  file=sys.stderr)
            return last
        else:
            raise FileNotFoundError(f"{path} has neither best.npz nor last.npz; pass a run "
                                    "directory of alexnet.train or one of its .npz files")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .npz written by "
                                "alexnet.train (last.npz or best.npz) or its run directory")
    return path


def read(path, prefix=""):
    """(arrays whose key starts with `prefix`, the prefix removed; meta dict) of a checkpoint.
    Only those arrays are read from the file (an .npz is read member by member)."""
    path = resolve(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"         # an .npz is a zip archive
    if not is_zip:              # numpy.load would read it as a pickle and suggest doing so unsafely
        raise ValueError(f"{path} is not a checkpoint written by alexnet.train (.npz): it is not "
                         "an .npz archive; pass a run's last.npz or best.npz, or its directory")
    try:
        with numpy.load(path, allow_pickle=False) as npz:
            arrays = {key[len(prefix):]: npz[key] for key in npz.files
                      if key.startswith(prefix) and key != "meta"}
            meta = json.loads(str(npz["meta"]))
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as error:
        raise ValueError(f"checkpoint {path} cannot be read ({error}); it is truncated or not a "
                         "checkpoint: use another one, e.g. best.npz") from None
    return arrays, meta


def load(path):
    """(parameters: name -> array, velocities: key -> array, meta: dict) of a checkpoint."""
    arrays, meta = read(path)
    params = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    velocities = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
    return params, velocities, meta


def load_model(path, devices=None):
    """The AlexNet a checkpoint holds, in eval mode, and the checkpoint's meta. Tower a's GPU
    becomes the current device: the work around the network (crops, top-k) runs there."""
    params, meta = read(path, "model.")
    model = AlexNet(num_classes=len(meta["classes"]), devices=devices, preset=meta["preset"],
                    init=meta["config"]["init"])      # init decides the input scale
    model.load_state_dict(params)
    backend.use(model.devices[0])
    return model.eval(), meta


def augmentation_arrays(aug):
    """The arrays of an Augmentation by field name, for save(..., extra_arrays=...)."""
    return {field.name: getattr(aug, field.name) for field in dataclasses.fields(Augmentation)}


def load_augmentation(path):
    """The training set's mean image and RGB principal components stored in a checkpoint."""
    arrays, meta = read(path, "data.")
    names = [field.name for field in dataclasses.fields(Augmentation)]
    missing = [name for name in names if name not in arrays]
    if missing:
        path = resolve(path)
        last = os.path.basename(path) == "last.npz"
        raise ValueError(f"checkpoint {path} lacks the training set's mean image and colour "
                         f"statistics (data.{', data.'.join(missing)}): it was written before "
                         "checkpoints carried them; rewrite its run's last.npz with them, without "
                         "training, by python -m alexnet.train --resume "
                         f"{quote(os.path.dirname(path) or '.')} --max-steps "
                         f"{meta['step'] if last else 'STEP (the step of that last.npz)'}" +
                         ("" if last else ", then pass --checkpoint " +
                          quote(os.path.join(os.path.dirname(path), "last.npz")) +
                          " (the last step's weights: this best.npz keeps the old format)"))
    return Augmentation(**{name: arrays[name] for name in names})
