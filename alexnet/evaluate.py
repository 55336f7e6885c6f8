"""Evaluate a checkpoint: `python -m alexnet.evaluate --checkpoint CKPT --data DIR`.

Reports the top-1 and top-5 error (section 6 of the paper; top-5 with more than 5 classes only,
as every class is in the top 5 of fewer) of DIR/val/<class>/* (or of
DIR/<class>/* when DIR has no val folder, or of the val split when DIR is a prepared cache). A
folder is read 1,024 images at a time, never whole. Images are prepared as for training: the
shorter side rescaled to S, the central S x S crop, minus the TRAINING set's mean image, which
the checkpoint stores. --views 1 classifies the central crop, as the training loop's evaluation
does; --views 10 averages the softmax over the paper's ten views (section 4.1): the four corner
crops and the central crop, and their horizontal reflections.

Also prints the ten (true, predicted) class pairs that are confused most often, and writes
per_class.csv (class, name, images, top1_accuracy, and top5_accuracy with more than 5 classes),
replacing the one of an earlier evaluation in the same folder (the last line says so). Progress
goes to stderr, the report to stdout.
"""
import argparse
import csv
import os
import sys

import numpy

import minigrad
from alexnet import checkpoint, data, prepare
from alexnet.cli import (CHECKPOINT_HELP, Parser, Progress, counted, devices_list, run_command,
                         whole, writable_folder)


FOLDER_CHUNK = 1024     # images of a folder decoded at a time (200 MB at 256x256)


def parse_args(argv=None):
    p = Parser(prog="python -m alexnet.evaluate", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument("--data", required=True, metavar="DIR", help="image folder with "
                   "val/<class>/*, a folder of class folders itself, or a cache made by "
                   "python -m alexnet.prepare (its val split)")
    p.add_argument("--views", type=int, choices=[1, 10], default=1, help="1: the central crop; "
                   "10: the paper's ten views, softmax averaged (default 1)")
    p.add_argument("--batch-size", type=whole(1), default=128, help="images per forward pass "
                   "(default 128; with --views 10 each view of a batch is one pass)")
    p.add_argument("--devices", type=devices_list, help="devices of towers a and b, e.g. '0,1', "
                   "'0,0', 'cpu,cpu' (default: two GPUs, one GPU twice, or the CPU)")
    p.add_argument("--out", metavar="DIR", help="where per_class.csv goes (default: the "
                   "checkpoint's folder)")
    return p.parse_args(argv)


def image_folder(root, classes):
    """DIR/val when it exists, else DIR itself (a folder of class folders). What is not such a
    folder is named for what it is, with what to pass instead: a file, a run directory (a
    checkpoint), a data set with train/ but no val/, the folder of one of the checkpoint's
    `classes` (the data reader would take its images for a flat folder such as ImageNet's val,
    and point to sorting them with ImageNet's CSV)."""
    wanted = "pass a folder with val/<class>/<images>, or one with <class>/<images>"
    if os.path.isfile(root):
        raise ValueError(f"data folder {root} is a file; {wanted} (python -m alexnet.predict "
                         "classifies single images)")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root} does not exist; {wanted}")
    val = os.path.join(root, "val")
    if os.path.isdir(val):
        return val
    if any(os.path.isfile(os.path.join(root, name)) for name in ("best.npz", "last.npz")):
        raise ValueError(f"{root} is a run directory of alexnet.train, a checkpoint (for "
                         f"--checkpoint), not data; {wanted}")
    found = data.class_folders(root)
    if "train" in found and "train" not in classes:
        raise ValueError(f"{root} has a train/ folder but no val/ folder; pass a folder with "
                         f"val/<class>/<images>, or {os.path.join(root, 'train')} to evaluate "
                         "on the training images")
    name = os.path.basename(os.path.normpath(root))
    if name in classes and not set(found) & set(classes):
        raise ValueError(f"{root} is the folder of one class ({name}); pass the folder above "
                         "it, which holds a folder per class: "
                         f"{os.path.dirname(os.path.normpath(root)) or '.'}")
    return root


def check_classes(folder, classes, checkpoint_path, found=None):
    """Every class of the data (default: folder's class folders) must be one of the
    checkpoint's classes (missing ones are allowed)."""
    if found is None:
        _, _, found = data.find_images(folder)
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise ValueError(
            f"{folder} has classes that checkpoint {checkpoint_path} was not trained on "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}; it knows "
            f"{', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): evaluate it on "
            "images of its own classes")


def probabilities(model, images, mean, size, views=1, batch_size=128, progress=None):
    """Softmax (N, classes) of uint8 images (N, 3, S, S), averaged over `views` views of each
    (data.ten_views: 1 is the central crop), with `mean` (3, S, S) subtracted; progress(done)
    after each batch (default: a progress line)."""
    model.eval()
    batches = []
    progress = progress or Progress("classifying", len(images))
    with minigrad.no_grad():
        for start in range(0, len(images), batch_size):
            crops = data.ten_views(images[start:start + batch_size], mean, size, count=views)
            batches.append(sum(softmax(model(x)) for x in crops) / views)   # (B, classes)
            progress(start + len(batches[-1]))
    return numpy.concatenate(batches) if batches else numpy.zeros((0, model.fc8.weight.shape[0]))


def folder_probabilities(model, paths, labels, mean, size, views, batch_size, stored):
    """probabilities() of image files, decoded FOLDER_CHUNK at a time (a folder is never in
    memory whole: ImageNet's validation set would be 9.8 GB at 256); returns them with the
    labels of the files that could be read, and the (path, reason) of those that could not."""
    progress = Progress("reading and classifying", len(paths))
    parts, kept, bad = [], [], []
    for start in range(0, len(paths), FOLDER_CHUNK):
        images, good, failed = data.decode_files(paths[start:start + FOLDER_CHUNK], stored)
        parts.append(probabilities(model, images[good], mean, size, views, batch_size,
                                   lambda done: progress(start + done)))
        kept.append(labels[start:start + FOLDER_CHUNK][good])
        bad += failed
        progress(start + len(good))              # files that could not be read count as done
    return numpy.concatenate(parts), numpy.concatenate(kept), sorted(bad)


def softmax(logits):
    """Probabilities (N, classes) of logits (a Tensor or an array, on any device), in float64 on
    the CPU: float32 could round two close probabilities to one value and change which class
    ranks first."""
    z = minigrad.Tensor(logits).numpy().astype(numpy.float64)
    e = numpy.exp(z - z.max(axis=1, keepdims=True))           # exp of at most 0: no overflow
    return e / e.sum(axis=1, keepdims=True)


def measures_top5(classes):
    """Whether top-5 error says anything: with 5 classes or fewer every class is in the top 5,
    and the error is 0 by definition (so it is neither printed, recorded nor drawn)."""
    return len(classes) > 5


def top_k_hits(scores, labels, k):
    """Per row of scores (N, classes): is its label among the k highest? Ties go to the lower
    class index, as with argmax (a network that has died gives every class the same score)."""
    order = numpy.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def scores(probs, labels, num_classes):
    """Per class: images, top-1 hits and top-5 hits; and the confusion counts (true, predicted)
    of the top-1 predictions."""
    images = numpy.bincount(labels, minlength=num_classes)
    hits1, hits5 = (numpy.bincount(labels, weights=top_k_hits(probs, labels, k),
                                   minlength=num_classes).astype(int) for k in (1, 5))
    return images, hits1, hits5, confusion(labels, probs.argmax(axis=1), num_classes)


def confusion(labels, predicted, num_classes):
    """Counts (num_classes, num_classes): row true class, column predicted class."""
    return numpy.bincount(labels * num_classes + predicted,
                          minlength=num_classes ** 2).reshape(num_classes, num_classes)


def most_confused(confusion, count=10):
    """The `count` largest off-diagonal entries as (true, predicted, images), largest first."""
    off = confusion * (1 - numpy.eye(len(confusion), dtype=confusion.dtype))
    flat = numpy.argsort(-off, axis=None, kind="stable")[:count]
    pairs = [(*divmod(int(i), len(confusion)), int(off.flat[i])) for i in flat]
    return [pair for pair in pairs if pair[2] > 0]


def trained(meta):
    """How long a checkpoint was trained, as train says it: "step 630, 70 epochs" (epochs with
    the fraction of the one under way, as train's evaluation lines give them)."""
    config = meta.get("config", {})
    if "train_images" not in meta or not config.get("batch_size"):   # an older checkpoint
        return f"step {meta['step']}, epoch {meta['epoch'] + 1}"
    steps = max(1, meta["train_images"] // config["batch_size"])     # as training counts them
    return f"step {meta['step']}, {round(meta['epoch'] + meta['batch'] / steps, 2):g} epochs"


def write_per_class(path, classes, names, images, hits1, hits5):
    """per_class.csv: each class's folder and readable name; accuracy columns are empty for a
    class without images. With 5 classes or fewer top-5 says nothing and has no column."""
    top5 = measures_top5(classes)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "name", "images", "top1_accuracy"] +
                        (["top5_accuracy"] if top5 else []))
        for folder, name, n, h1, h5 in zip(classes, names, images, hits1, hits5):
            writer.writerow([folder, name, n, f"{h1 / n:.4f}" if n else ""] +
                            ([f"{h5 / n:.4f}" if n else ""] if top5 else []))


def run(args):
    ckpt = checkpoint.resolve(args.checkpoint, best=True)
    out = writable_folder(args.out or os.path.dirname(ckpt) or ".")   # before hours of work
    aug = checkpoint.load_augmentation(ckpt)
    model, meta = checkpoint.load_model(ckpt, args.devices)
    classes = meta["classes"]
    S, size = model.preset.stored_size(), model.preset.input_size
    if prepare.is_cache(args.data):       # a prepared cache: its val split, memory-mapped
        folder, cache = args.data, prepare.open_cache(args.data, S, training=False)
        check_classes(folder, classes, args.checkpoint, cache.classes)
        to_checkpoint = numpy.array([classes.index(name) for name in cache.classes])
        labels = to_checkpoint[cache.val.labels]                                # same names
        probs = probabilities(model, cache.val.images, aug.mean, size, args.views,
                              args.batch_size)
    else:                                 # a folder of images, decoded a chunk at a time
        folder = image_folder(args.data, classes)
        check_classes(folder, classes, args.checkpoint)
        paths, labels, _ = data.find_images(folder, classes)
        probs, labels, bad = folder_probabilities(model, paths, labels, aug.mean, size,
                                                  args.views, args.batch_size, S)
        for path, reason in bad:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(labels) == 0:
        raise ValueError(f"no image under {folder} could be read; see the files named above")
    images, hits1, hits5, confusion = scores(probs, labels, len(classes))
    N = len(labels)
    print(f"{ckpt} ({trained(meta)}) "
          f"on {folder}: {counted(N, 'image')}, {counted(args.views, 'view')}")
    print(f"top-1 error {1 - hits1.sum() / N:.2%} ({N - hits1.sum()} of {N})")
    if measures_top5(classes):
        print(f"top-5 error {1 - hits5.sum() / N:.2%} ({N - hits5.sum()} of {N})")

    names = checkpoint.class_names(meta)
    pairs = most_confused(confusion)
    print("most confused (true -> predicted: images):" if pairs else "no image was confused")
    width = max((len(names[t]) for t, _, _ in pairs), default=0)
    for true, predicted, count in pairs:
        print(f"  {names[true]:<{width}} -> {names[predicted]}: {count}")
    path = os.path.join(out, "per_class.csv")
    replaced = os.path.exists(path)
    write_per_class(path, classes, names, images, hits1, hits5)
    print(f"per-class accuracy: {path}{' (replaced the earlier one)' if replaced else ''}")


def main(argv=None):
    args = parse_args(argv)
    return run_command(lambda: run(args), "nothing was written (per_class.csv comes at the end)")


if __name__ == "__main__":
    sys.exit(main())
