"""Classify images with a checkpoint: `python -m alexnet.predict --checkpoint CKPT IMAGE ...`.

Each image (any mode, any size) is prepared as for evaluation: the shorter side rescaled to S,
the central S x S crop, then the central crop of the network's input size, minus the same crop
of the training set's mean image that the checkpoint stores. Prints the most probable classes
of each image with their softmax probabilities: a class's readable name, and its folder name
(the WordNet id on ImageNet) in brackets where the two differ. A folder stands for every image
below it; a folder without images is refused, and so is a URL (nothing is downloaded). An
image that cannot be read is named with the reason and skipped; the exit status is then 1.
Predictions go to stdout, everything else to stderr; a reader that stops early (`| head`) ends
the command quietly.
"""
import argparse
import os
import sys

import numpy

import minigrad
from alexnet import checkpoint, data
from alexnet.cli import CHECKPOINT_HELP, Parser, devices_list, run_command, whole
from alexnet.evaluate import softmax


def parse_args(argv=None):
    p = Parser(prog="python -m alexnet.predict", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...), "
                   "or folders of them")
    p.add_argument("--top", type=whole(1), default=5, metavar="K",
                   help="classes to show per image (default 5)")
    p.add_argument("--devices", type=devices_list, help="devices of towers a and b, e.g. '0,1', "
                   "'0,0', 'cpu,cpu' (default: two GPUs, one GPU twice, or the CPU)")
    return p.parse_args(argv)


def image_files(arguments):
    """The image files that the IMAGE arguments name: a file as it is, a folder as every image
    below it. A URL, or a folder without images, is refused in one sentence before any work."""
    paths = []
    for path in arguments:
        if "://" in path:
            raise ValueError(f"{path} is a URL, and predict reads only local files: download it "
                             "first (e.g. curl -O URL) and pass the file")
        found = data.images_below(path) if os.path.isdir(path) else [path]
        if not found:
            raise ValueError(f"no images found under {path} (extensions: "
                             f"{', '.join(data.IMAGE_EXTENSIONS)}); pass image files or folders "
                             "that hold some")
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
    failed = 0
    for path in paths:
        try:
            image = data.load_image(path, S)                                   # (3, S, S) uint8
        except Exception as error:  # any unreadable or undecodable file: name it and go on
            print(f"{path}: cannot be read ({type(error).__name__}: {error}); skipped",
                  file=sys.stderr, flush=True)
            failed += 1
            continue
        with minigrad.no_grad():
            probs = softmax(model(data.center_crop(image[None], aug.mean, size)))[0]
        print(path)
        for k in numpy.argsort(-probs)[:args.top]:
            print(f"  {probs[k]:7.2%}  {labels[k]}")
        sys.stdout.flush()
    if failed:
        print(f"{failed} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None):
    args = parse_args(argv)
    return run_command(lambda: run(args), "the images printed above are classified, the others "
                       "are not")


if __name__ == "__main__":
    sys.exit(main())
