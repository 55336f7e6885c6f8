"""Look inside a trained network: `python -m alexnet.show --checkpoint CKPT [--data DIR] [--out DIR]`.

Writes four pictures, the first two as in Figure 4 of the paper (section 6.1):

  predictions.png   validation images, each with the five classes the network finds most
                    probable as bars; the true class is written under the image, its bar red
  neighbours.png    validation images in the first column, and in each row the training images
                    whose fc7 features (the units of the last hidden layer, both towers: 2 x 2048
                    in the paper preset) are nearest in Euclidean distance. The paper: "If two
                    images produce feature activation vectors with a small Euclidean
                    separation, we can say that the higher levels of the neural network
                    consider them to be similar."
                    neighbours.json lists every neighbour's file (or row) and distance.
  confusion.png     which class the network gives the images of each class (rows: true class,
                    normalised; columns: predicted), and confusion.csv with the counts
  activations.png   the output of every layer of both towers for one image (--image, else the
                    first image of predictions.png)

Images are classified as in evaluation: the central crop, minus the training set's mean image.
--data is an image folder with train/<class>/* and val/<class>/* (decoded into the same cache
as training uses), or a prepared cache; by default the data the checkpoint was trained on. The
training set is streamed in batches for the neighbours, keeping only the best K of each query,
so that ImageNet's 1.2 million images need no more memory than a batch.
"""
import argparse
import csv
import json
import os
import sys

import numpy

import minigrad
from alexnet import checkpoint, data, plots, prepare
from alexnet.evaluate import check_classes, confusion, softmax
from alexnet.cli import (CHECKPOINT_HELP, Parser, Progress, counted, devices_list, run_command,
                         whole, writable_folder)
from alexnet.train import load_data
from minigrad import backend

PICTURES = ("predictions", "neighbours", "confusion", "activations")
FEATURES = ("fc7a", "fc7b")          # the last hidden layer: the paper's 4096-dimensional vector
ACTIVATIONS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6",
               "fc7")                # the layers of both towers in model.forward's trace


def parse_args(argv=None):
    p = Parser(prog="python -m alexnet.show", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument("--data", metavar="DIR", help="image folder with train/<class>/* and "
                   "val/<class>/*, or a cache made by python -m alexnet.prepare (default: the "
                   "data the checkpoint was trained on)")
    p.add_argument("--cache", metavar="DIR", help="where the images of --data are decoded to "
                   "(default DIR/.alexnet-cache-<size>, as in training)")
    p.add_argument("--out", metavar="DIR", help="where the pictures go (default: the "
                   "checkpoint's folder, whose pictures of the run are replaced)")
    p.add_argument("--only", nargs="+", choices=PICTURES, default=PICTURES, metavar="PICTURE",
                   help=f"draw only these ({', '.join(PICTURES)}; default all)")
    p.add_argument("--predictions", type=whole(1), default=8, metavar="N",
                   help="validation images in predictions.png (default 8, as in the paper)")
    p.add_argument("--queries", type=whole(1), default=5, metavar="N",
                   help="query images in neighbours.png (default 5, as in the paper)")
    p.add_argument("--neighbours", type=whole(1), default=6, metavar="K",
                   help="training images shown for each query (default 6, as in the paper)")
    p.add_argument("--pick", choices=("random", "errors", "correct"), default="random",
                   help="which validation images to show: any, only misclassified ones, or "
                   "only correctly classified ones (default random)")
    p.add_argument("--indices", type=rows_list, metavar="I,J,...", help="show these validation images (rows "
                   "of the val split, as neighbours.json names them) instead of picking")
    p.add_argument("--seed", type=whole(0), default=0, help="seed of the random pick (default 0)")
    p.add_argument("--image", metavar="PATH", help="the image for activations.png (default: the "
                   "first of predictions.png)")
    p.add_argument("--batch-size", type=whole(1), default=128, help="images per forward pass "
                   "(default 128)")
    p.add_argument("--workers", type=whole(1), default=4, help="threads preparing batches")
    p.add_argument("--devices", type=devices_list, help="devices of towers a and b, e.g. '0,1', "
                   "'0,0', 'cpu,cpu' (default: two GPUs, one GPU twice, or the CPU)")
    return p.parse_args(argv)


def rows_list(text):
    """--indices: rows such as 3,17,42."""
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers such as 3,17,42") \
            from None


# ---- the network on many images -----------------------------------------------------------

def forward(model, x):
    """Logits (B, classes) on the CPU, and the trace of every layer, of float32 crops x."""
    trace = {}
    with minigrad.no_grad():
        logits = model(x, trace=trace)
    return logits.numpy(), trace


def features(model, trace):
    """The fc7 vectors (B, 2 * fc width: 4096 in the paper preset) of a trace, both towers
    joined on tower a's device."""
    a, b = (trace[name].data for name in FEATURES)
    with backend.device_scope(model.devices[0]):
        return backend.get_array_module(a).concatenate(
            [a, backend.to_device(b, model.devices[0])], axis=1)


def stream(model, split, aug, size, batch_size, workers, what):
    """Yield (first row, logits, trace) for the central crops of split, batch after batch."""
    model.eval()
    progress = Progress(what, len(split))
    start = 0
    for x, _ in data.batches(split, aug, size, batch_size, train=False, workers=workers,
                             device=model.devices[0]):
        logits, trace = forward(model, x)
        yield start, logits, trace
        start += len(logits)
        progress(start)


def nearest(queries, batches, k):
    """The k rows nearest to each query, nearest first: (distances (Q, k), rows (Q, k)).

    queries: (Q, D) on any device; batches: (first row, (B, D) features) pairs on the same
    device. Only the best k per query are kept between batches (ties go to the lower row), so
    memory does not grow with the number of rows. The squared distances are
    |q|^2 - 2 q.t + |t|^2, in float64 so that the cancellation stays far below the gaps."""
    best_d = numpy.empty((len(queries), 0))
    best_i = numpy.empty((len(queries), 0), numpy.int64)
    with backend.device_scope(backend.device_of(queries)):    # compute where the features are
        q = queries.astype(numpy.float64)
        q2 = (q * q).sum(axis=1)[:, None]                                   # (Q, 1)
        for start, t in batches:
            t = t.astype(numpy.float64)
            d2 = q2 - 2 * q @ t.T + (t * t).sum(axis=1)[None, :]             # (Q, B)
            d = numpy.sqrt(numpy.maximum(backend.to_device(d2, "cpu"), 0))
            rows = numpy.broadcast_to(start + numpy.arange(len(t)), d.shape)
            best_d = numpy.concatenate([best_d, d], axis=1)
            best_i = numpy.concatenate([best_i, rows], axis=1)
            order = numpy.lexsort((best_i, best_d), axis=1)[:, :k]         # by distance, then row
            best_d = numpy.take_along_axis(best_d, order, axis=1)
            best_i = numpy.take_along_axis(best_i, order, axis=1)
    return best_d, best_i


# ---- data -----------------------------------------------------------------------------------

class Source:
    """The train and val splits (labels in the checkpoint's class order) and how to name a
    row: its file below DIR/<split>/ for an image folder or cache, 'train[12]' otherwise."""

    def __init__(self, args, meta, stored_size):
        settings = dict(meta["config"])                 # the run's own data, unless --data
        if args.data is not None:
            settings.update(data=args.data, cache=args.cache)
        if settings["data"] is not None and not os.path.exists(settings["data"]):
            raise FileNotFoundError(f"data folder {settings['data']} does not exist; pass --data "
                                    "with the folder or cache the checkpoint was trained on")
        classes = meta["classes"]
        train = os.path.join(settings["data"] or "", "train")
        if settings["data"] and not prepare.is_cache(settings["data"]) and os.path.isdir(train):
            check_classes(settings["data"], classes, args.checkpoint,    # before decoding it
                          data.class_folders(train))
        loaded = load_data(argparse.Namespace(**settings), stored_size,     # progress: stderr
                           log=lambda line: print(line, file=sys.stderr))
        self.train, self.val, self.cache = loaded.train, loaded.val, loaded.folder
        check_classes(settings["data"] or "the embedded data set", classes, args.checkpoint,
                      loaded.classes)
        to_checkpoint = numpy.array([classes.index(name) for name in loaded.classes])
        for split in (self.train, self.val):
            split.labels = to_checkpoint[split.labels]
        self._files = {}

    def name(self, split, row):
        """The image's file below DIR/<split>, or split[row] where that is not known."""
        if self.cache is not None and split not in self._files:
            self._files[split] = prepare.row_files(self.cache, split)
        files = self._files.get(split)
        return f"{split}[{row}]" if files is None else files[row]


PICKED = {"random": "", "errors": "misclassified ", "correct": "correctly classified "}


def pick(args, count, predicted, labels):
    """Rows of the val split to show: --indices (check_indices), or `count` drawn with --seed
    among all rows, the misclassified or the correctly classified ones (--pick)."""
    N = len(labels)
    if args.indices is not None:
        return numpy.array(args.indices)
    rows = {"random": numpy.arange(N), "errors": numpy.flatnonzero(predicted != labels),
            "correct": numpy.flatnonzero(predicted == labels)}[args.pick]
    if len(rows) == 0:
        raise ValueError(f"no validation image is {PICKED[args.pick].strip()}; use --pick random")
    rng = numpy.random.default_rng(args.seed)
    return rng.choice(rows, min(count, len(rows)), replace=False)


def say_fewer(option, asked, found, what):
    """A note where a picture shows fewer images than `option` asked for."""
    if found < asked:
        print(f"note: {option} {asked}, but there {'is' if found == 1 else 'are'} only "
              f"{counted(found, what)}: showing {found}", file=sys.stderr)


def check_indices(indices, N):
    """--indices must be rows of a validation set of N images: said before classifying it."""
    bad = [i for i in indices or () if not 0 <= i < N]
    if bad:
        raise ValueError(f"--indices {bad[0]} is not a row of the validation set, which has "
                         f"{counted(N, 'image')} (rows 0 to {N - 1})")


def crops(model, images, aug, size):
    """The network's input for uint8 images (N, 3, S, S): central crops minus the mean's."""
    device = model.devices[0]
    return data.center_crop(backend.to_device(numpy.asarray(images), device),
                            backend.to_device(aug.mean, device), size)


# ---- the pictures ---------------------------------------------------------------------------

def run(args):
    """Draw the pictures; returns (path, whether it replaced a file) for each file written."""
    ckpt = checkpoint.resolve(args.checkpoint, best=True)
    out = writable_folder(args.out or os.path.dirname(ckpt) or ".")    # before the work
    there = set(os.listdir(out))     # the run's own predictions.png, confusion.png, ...
    return [(path, os.path.basename(path) in there) for path in draw(args, ckpt, out)]


def draw(args, ckpt, out):
    """The pictures of checkpoint `ckpt` in folder `out`: the paths written."""
    model, meta = checkpoint.load_model(ckpt, args.devices)
    aug = checkpoint.load_augmentation(ckpt)
    names = checkpoint.class_names(meta)           # readable; meta["classes"]: folders
    boxed = plots.font_note(names)
    if boxed:
        print(boxed, file=sys.stderr)
    wanted = set(args.only)
    written = []
    if wanted == {"activations"} and args.image:        # one image: no data set needed
        return draw_activations(model, aug, names, args.image, out)
    S, size = model.preset.stored_size(), model.preset.input_size
    source = Source(args, meta, S)
    val = source.val
    check_indices(args.indices, len(val))
    predicted = numpy.empty(len(val), numpy.int64)
    for start, logits, _ in stream(model, val, aug, size, args.batch_size, args.workers,
                                   "classifying the validation set"):
        predicted[start:start + len(logits)] = logits.argmax(axis=1)
    rows = pick(args, max(args.predictions, args.queries), predicted, val.labels)
    logits, trace = forward(model, crops(model, val.images[rows], aug, size))
    shown = data.central(val.images[rows], size)                   # what the network saw

    if "confusion" in wanted:
        counts = confusion(val.labels, predicted, len(names))
        written += [os.path.join(out, "confusion.png"), os.path.join(out, "confusion.csv")]
        plots.confusion_matrix(counts, names, written[-2])
        write_confusion_csv(written[-1], counts, meta["classes"])
    if "predictions" in wanted:
        n = min(args.predictions, len(rows))
        if args.indices is None:
            say_fewer("--predictions", args.predictions, n, PICKED[args.pick] + "validation image")
        written.append(os.path.join(out, "predictions.png"))
        plots.prediction_grid(shown[:n], softmax(logits[:n]),
                              val.labels[rows[:n]], names, written[-1])
    if "neighbours" in wanted:
        q = min(args.queries, len(rows))
        if args.indices is None:
            say_fewer("--queries", args.queries, q, PICKED[args.pick] + "validation image")
        written += draw_neighbours(args, model, aug, source, rows[:q], shown[:q],
                                   features(model, trace)[:q], names, out)
    if "activations" in wanted:
        written += draw_activations(model, aug, names, args.image, out,
                                    val.images[rows[:1]], source.name("val", int(rows[0])))
    return written


def draw_neighbours(args, model, aug, source, rows, shown, query, classes, out):
    """neighbours.png and neighbours.json for the val images `rows` (their crops `shown`, their
    fc7 features `query`): one pass over the training set."""
    size = model.preset.input_size
    k = min(args.neighbours, len(source.train))
    say_fewer("--neighbours", args.neighbours, k, "training image")
    found = ((start, features(model, trace)) for start, _, trace in stream(
        model, source.train, aug, size, args.batch_size, args.workers,
        f"fc7 features of the training set, {k} nearest to each of "
        f"{counted(len(rows), 'query', 'queries')}"))
    distances, neighbours = nearest(query, found, k)
    images = data.central(source.train.images[neighbours.ravel()], size)  # (Q*k, 3, size, size)
    paths = [os.path.join(out, "neighbours.png"), os.path.join(out, "neighbours.json")]
    plots.neighbour_grid(shown, source.val.labels[rows], images.reshape(len(rows), k, 3, size, size),
                         source.train.labels[neighbours], distances, classes, paths[0])
    write_neighbours_json(paths[1], source, rows, neighbours, distances, classes, query.shape[1])
    return paths


def draw_activations(model, aug, classes, image_path, out, image=None, name=None):
    """activations.png of the image file `image_path`, or else of `image` (1, 3, S, S) uint8
    called `name`."""
    S, size = model.preset.stored_size(), model.preset.input_size
    if image_path:
        try:
            image, name = data.load_image(image_path, S)[None], image_path    # (1, 3, S, S)
        except Exception as error:   # any undecodable file
            raise ValueError(f"--image {image_path} cannot be read ({type(error).__name__}: "
                             f"{error}); pass a JPEG, PNG or other image file") from None
    else:
        name = f"validation image {name}"
    logits, trace = forward(model, crops(model, image, aug, size))
    p = softmax(logits)[0]
    top = [(classes[k], p[k]) for k in numpy.argsort(-p, kind="stable")[:5]]
    layers = [(layer, trace[f"{layer}a"].numpy()[0], trace[f"{layer}b"].numpy()[0])
              for layer in ACTIVATIONS]
    path = os.path.join(out, "activations.png")
    plots.activation_grid(data.central(image, size)[0], layers, top, path,
                          title=f"activations of {name}")
    return [path]


def write_confusion_csv(path, counts, classes):
    """Counts: one row per true class, one column per predicted class, each headed by the
    class's folder name (names can repeat: ImageNet has two "crane" classes)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted"] + list(classes))
        for name, row in zip(classes, counts):
            writer.writerow([name] + [int(v) for v in row])


def write_neighbours_json(path, source, queries, neighbours, distances, classes, dimensions):
    folders = {split: os.path.join(prepare.read_manifest(source.cache)["source"], split)
               if source.cache else None for split in ("train", "val")}
    result = {"features": "fc7 (both towers)", "dimensions": int(dimensions),
              "distance": "euclidean", "train_folder": folders["train"],
              "val_folder": folders["val"], "queries": []}
    for q, row in enumerate(queries):
        result["queries"].append({
            "val_row": int(row), "file": source.name("val", int(row)),
            "class": classes[int(source.val.labels[row])],
            "neighbours": [{"train_row": int(i), "file": source.name("train", int(i)),
                            "class": classes[int(source.train.labels[i])], "distance": float(d)}
                           for i, d in zip(neighbours[q], distances[q])]})
    checkpoint.write_atomically(path, lambda f: f.write(json.dumps(result, indent=1).encode()))


def main(argv=None):
    args = parse_args(argv)

    def draw_all():
        for path, replaced in run(args):
            print(f"{'replaced' if replaced else 'wrote'} {path}")
    return run_command(draw_all, "the pictures written so far stay, the others are not drawn")


if __name__ == "__main__":
    sys.exit(main())
