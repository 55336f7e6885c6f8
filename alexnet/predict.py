"""Classify images with a checkpoint: `python -m alexnet.predict --checkpoint CKPT IMAGE ...`.

Each image (any mode, any size) is prepared as for evaluation: the shorter side rescaled to S,
the central S x S crop, then the central crop of the network's input size, minus the same crop
of the training set's mean image that the checkpoint stores. Prints the most probable classes
of each image with their softmax probabilities: a class's readable name, and its folder name
(the WordNet id on ImageNet) in brackets where the two differ. A folder stands for every image
below it; a folder without images is refused, and so is a URL (nothing is downloaded). An
image that cannot be read is named with the reason and skipped; the exit status is then 1. A
format Pillow does not read (a phone's .heic) is told to be converted, in a folder too.
Images are decoded (on every core) and classified --batch-size at a time, one forward pass per
batch, and printed in the order given. Options may come after the images too; an image whose
name starts with a dash goes after `--`.

Predictions go to stdout, everything else to stderr: the checkpoint file a run directory
stands for, and, for more images than one batch, a progress line (not when stdout is a
terminal, where the predictions show the progress). A reader that stops early (`| head`) ends
the command quietly.
"""
import argparse
import collections
import os
import sys
from shlex import quote

import numpy

import minigrad
from alexnet import checkpoint, data
from alexnet.cli import CHECKPOINT_HELP, Parser, Progress, devices_list, run_command, whole
from alexnet.evaluate import softmax


def parse_args(argv=None):
    """The options; every argument after "--" is an image, a name that starts with a dash too.
    Those are taken here, before argparse: Python 3.11's intermixed parsing loses the "--" and
    asks for an IMAGE when none comes before it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    argv, named = argv[:end], argv[end + 1:]
    p = Parser(prog="python -m alexnet.predict", description=__doc__,
               usage="%(prog)s [-h] --checkpoint CKPT [--top K] [--batch-size BATCH_SIZE]\n"
                     f"{'':33}[--devices DEVICES] [--] IMAGE [IMAGE ...]",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (JPEG, PNG, ...), "
                   "or folders of them; after --, names that start with a dash")
    p.add_argument("--top", type=whole(1), default=5, metavar="K",
                   help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=whole(1), default=128, help="images decoded and "
                   "classified at a time, in one forward pass (default 128)")
    p.add_argument("--devices", type=devices_list, help="devices of towers a and b, e.g. '0,1', "
                   "'0,0', 'cpu,cpu' (default: two GPUs, one GPU twice, or the CPU)")
    args, unknown = p.parse_known_intermixed_args(argv)    # options after the images too
    if unknown:                             # e.g. -dash.png, taken for an option
        p.error(f"unrecognized arguments: {' '.join(unknown)} (an image whose name starts with a "
                f"dash goes after --: -- {quote(unknown[0])})")
    args.images += named
    if not args.images:
        p.error("the following arguments are required: IMAGE")
    return args


def image_files(arguments):
    """The image files that the IMAGE arguments name: a file as it is, a folder as every image
    below it. A URL, a missing file or a folder without images is refused in one sentence
    before any work (a link to nothing is kept: decoding names where it points). The other
    files of a folder are told of as training tells of them (data.left_out: a phone's .heic
    photos are to be converted)."""
    paths = []
    for path in arguments:
        if "://" in path:
            raise ValueError(f"{path} is a URL, and predict reads only local files: download it "
                             "first (e.g. curl -O URL) and pass the file")
        if not os.path.lexists(path):
            raise ValueError(f"no such file: {path}; pass image files or folders of them")
        others = collections.Counter()
        found = data.images_below(path, others) if os.path.isdir(path) else [path]
        if not found and others:
            raise ValueError(f"no images found under {path}: {data.left_out(path, others)}")
        if not found:
            raise ValueError(f"no images found under {path} (extensions: "
                             f"{data.SOME_EXTENSIONS}); pass image files or folders that hold "
                             "some")
        if others:
            print(f"note: {data.left_out(path, others)}", file=sys.stderr)
        paths += found
    return paths


def run(args):
    paths = image_files(args.images)
    ckpt = checkpoint.resolve(args.checkpoint, best=True)
    aug = checkpoint.load_augmentation(ckpt)
    model, meta = checkpoint.load_model(ckpt, args.devices)
    names, folders = checkpoint.class_names(meta), meta["classes"]
    labels = [name if name == folder else f"{name} ({folder})"
              for name, folder in zip(names, folders)]
    S, size = model.preset.stored_size(), model.preset.input_size
    # On a terminal the predictions scrolling by are the progress; a progress line there would
    # be written into them.
    progress = Progress("reading and classifying", len(paths),
                        shown=len(paths) > args.batch_size and not sys.stdout.isatty())
    failed = 0
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start:start + args.batch_size]
        images, good, bad = data.decode_files(batch, S)       # (B, 3, S, S) uint8, threaded
        if good.any():
            with minigrad.no_grad():
                probs = iter(softmax(model(data.center_crop(images[good], aug.mean, size))))
        reasons = dict(bad)
        for path, readable in zip(batch, good):            # in the order given, as one by one
            if not readable:
                kind = data.extension(path)
                fix = f": convert it to JPEG or PNG, as Pillow does not read {kind} images" \
                    if kind in data.UNREAD_IMAGE_FORMATS else ""
                progress.say(f"{path}: cannot be read ({reasons[path]}); skipped{fix}")
                failed += 1
                continue
            p = next(probs)                                                       # (classes,)
            print(path)
            for k in numpy.argsort(-p)[:args.top]:
                print(f"  {p[k]:7.2%}  {labels[k]}")
        sys.stdout.flush()
        progress(start + len(batch))
    if failed:
        print(f"{failed} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None):
    args = parse_args(argv)
    return run_command(lambda: run(args), "the images printed above are classified, the others "
                       "are not")


if __name__ == "__main__":
    sys.exit(main())
