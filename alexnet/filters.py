"""Draw a checkpoint's conv1 filters: `python -m alexnet.filters --checkpoint CKPT --out conv1.png`.

Like Figure 3 of the paper: every first-layer kernel as a small colour image, each stretched to
the full 0..255 range on its own, tower a's kernels in one block above tower b's. In the paper
the towers specialize: one learns mostly colourless edge detectors, the other colour blobs.
"""
import argparse
import os
import sys

from alexnet import checkpoint, plots
from alexnet.cli import CHECKPOINT_HELP, Parser, run_command, whole, writable_folder


def parse_args(argv=None):
    p = Parser(prog="python -m alexnet.filters", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument("--out", default="conv1.png", metavar="PNG", help="PNG to write (default conv1.png)")
    p.add_argument("--columns", type=whole(1), default=16, help="filters per row (default 16)")
    p.add_argument("--scale", type=whole(1), default=4, help="screen pixels per filter pixel "
                   "(default 4)")
    return p.parse_args(argv)


def run(args):
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a folder; name the .png file to write")
    if not args.out.lower().endswith(".png"):       # the bytes are PNG's, whatever the name
        raise ValueError(f"--out {args.out}: the filters are drawn as a PNG; name a .png file")
    writable_folder(os.path.dirname(args.out) or ".")
    ckpt = checkpoint.resolve(args.checkpoint, best=True)
    conv1, _ = checkpoint.read(ckpt, "model.conv1")                     # keys a.weight, b.bias...
    a, b = conv1["a.weight"], conv1["b.weight"]                         # (out, 3, kh, kw) each
    plots.filter_grid(a, b, args.out, columns=args.columns, scale=args.scale)
    count, _, kh, kw = a.shape
    print(f"wrote {args.out}: the {count} + {len(b)} conv1 filters ({kh}x{kw}) of {ckpt}, "
          "tower a above tower b")


def main(argv=None):
    args = parse_args(argv)
    return run_command(lambda: run(args), f"{args.out} was not written")


if __name__ == "__main__":
    sys.exit(main())
