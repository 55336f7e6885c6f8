"""A small image classification data set drawn on the fly, so that AlexNet can be trained without
a download.

Each image shows one object on a cluttered background; the label says which of ten shapes it is:

    disk                a filled circle
    ring                an annulus (inner radius 0.6 of the outer)
    square              a filled square, any rotation
    triangle            a filled equilateral triangle, any rotation
    plus                a plus sign with arms a third as wide as they are long, any rotation
    star                a five-pointed star, any rotation
    horizontal_stripes  a round patch of stripes, tilted at most 15 degrees from horizontal
    vertical_stripes    the same, at most 15 degrees from vertical
    diagonal_stripes    the same, within 10 degrees of either diagonal
    checkerboard        a round patch of checks, tilted at most 15 degrees

Every image draws its own position, size, rotation, stripe period and phase, and its own
foreground and background colours. The foreground and background colours are a pair drawn from
one symmetric distribution (uniform in RGB, at least 90 apart, so the shape stays visible) and
independently of the label; so the expected colour of every pixel, and of the image as a whole,
is the same mid grey for every class, and neither colour nor brightness says anything about the
label. The shape sizes are chosen so that every class covers about the same area in the mean
(a texture patch is twice as large as a disk, since half of it is foreground). On top come the
nuisances a network has to learn to ignore: a linear colour gradient across the background, a
soft blob of a random colour behind the object, and Gaussian pixel noise of a random strength.

A nearest-class-mean classifier on raw pixels, or on the mean colour of each image, stays near
chance (10%); tests/test_synthetic.py checks this. The labels live only in the shapes.

Everything is drawn with NumPy on coordinate grids, chunk by chunk, with a soft one-pixel edge
computed from a signed distance to each shape's boundary (positive inside, in pixels). The
chunks are drawn on all cores at once (NumPy's loops let go of Python's lock); their random
numbers come from one generator, in chunk order, so the images do not depend on the core count.
"""
import collections
import concurrent.futures
import os
import sys
from shlex import quote

import numpy

from alexnet.cli import Parser, counted, whole
from minigrad import parallel

_CHUNK_BYTES = 16 * 2 ** 20  # the float32 canvas of one chunk: 16 MB (269 images of 72x72)


def _disk(u, v, r, s, period, phase):
    return s - r


def _ring(u, v, r, s, period, phase):
    outer = 1.25 * s  # area pi*(1 - 0.6**2)*outer**2 = pi*s**2
    return numpy.minimum(outer - r, r - 0.6 * outer)


def _square(u, v, r, s, period, phase):
    half = 0.886 * s  # (2*half)**2 = pi*s**2
    return numpy.minimum(half - numpy.abs(u), half - numpy.abs(v))


def _triangle(u, v, r, s, period, phase):
    inradius = 0.778 * s  # 3*sqrt(3)*inradius**2 = pi*s**2
    sd = None
    for k in range(3):  # inside all three edges; edge k faces the direction 90 + 120k degrees
        angle = numpy.pi / 2 + k * 2 * numpy.pi / 3
        edge = inradius - (u * numpy.cos(angle) + v * numpy.sin(angle))
        sd = edge if sd is None else numpy.minimum(sd, edge)
    return sd


def _plus(u, v, r, s, period, phase):
    arm = 1.189 * s  # half length; width 2*arm/3, area 20/9*arm**2 = pi*s**2
    width = arm / 3
    across = numpy.minimum(arm - numpy.abs(u), width - numpy.abs(v))
    upright = numpy.minimum(width - numpy.abs(u), arm - numpy.abs(v))
    return numpy.maximum(across, upright)


def _star(u, v, r, s, period, phase):
    tip = 1.541 * s  # 5*tip*inner*sin(36 deg) = pi*s**2
    inner = 0.45 * tip
    # Fold the plane into the half-sector between a tip (angle 0) and the next inner corner
    # (36 degrees); there the boundary is the one edge from (tip, 0) to the inner corner.
    sector = 2 * numpy.pi / 5
    angle = numpy.mod(numpy.arctan2(v, u), sector)
    angle = numpy.minimum(angle, sector - angle)
    x, y = r * numpy.cos(angle), r * numpy.sin(angle)
    dx, dy = inner * numpy.cos(sector / 2) - tip, inner * numpy.sin(sector / 2)
    return (dx * y - dy * (x - tip)) / numpy.sqrt(dx * dx + dy * dy)


def _stripes_along(w, period, phase):
    """Signed distance to stripes half a period wide, constant along the other axis than w."""
    t = numpy.mod(w / period + phase, 1.0) - 0.5  # in [-0.5, 0.5), 0 at a stripe's centre
    return period * (0.25 - numpy.abs(t))


def _stripes(u, v, r, s, period, phase):
    window = 1.414 * s  # half of the patch is foreground: pi*window**2 / 2 = pi*s**2
    return numpy.minimum(window - r, _stripes_along(v, period, phase))


def _checkerboard(u, v, r, s, period, phase):
    window = 1.414 * s
    across, along = _stripes_along(u, period, phase), _stripes_along(v, period, phase)
    checks = numpy.sign(across * along) * numpy.minimum(numpy.abs(across), numpy.abs(along))
    return numpy.minimum(window - r, checks)


# name: (signed distance, rotation centres in degrees, rotation spread either side)
_SHAPES = {
    "disk": (_disk, (0,), 0),
    "ring": (_ring, (0,), 0),
    "square": (_square, (45,), 45),
    "triangle": (_triangle, (60,), 60),
    "plus": (_plus, (45,), 45),
    "star": (_star, (36,), 36),
    "horizontal_stripes": (_stripes, (0,), 15),
    "vertical_stripes": (_stripes, (90,), 15),
    "diagonal_stripes": (_stripes, (45, 135), 10),
    "checkerboard": (_checkerboard, (0,), 15),
}
CLASSES = tuple(_SHAPES)


def _colour_pairs(rng, count, min_distance=90.0):
    """Foreground and background colours (count, 3) each, uniform in RGB and min_distance apart.

    The condition is symmetric in the two colours, so both have the same distribution.
    """
    fg, bg = rng.uniform(0, 255, (2, count, 3))
    close = numpy.linalg.norm(fg - bg, axis=1) < min_distance
    while close.any():
        fg[close], bg[close] = rng.uniform(0, 255, (2, close.sum(), 3))
        close = numpy.linalg.norm(fg - bg, axis=1) < min_distance
    return fg, bg


def _draw_parameters(rng, labels, size):
    """Every random choice of every image except its pixel noise, as arrays of length count."""
    count = len(labels)
    params = {}
    params["centre"] = rng.uniform(0.35 * size, 0.65 * size, (count, 2))
    params["scale"] = rng.uniform(0.12 * size, 0.2 * size, count)  # radius of a disk of equal area
    params["period"] = rng.uniform(0.09 * size, 0.14 * size, count)
    params["phase"] = rng.uniform(0, 1, count)
    params["angle"] = numpy.empty(count)
    spread = rng.uniform(-1, 1, count)
    pick = rng.integers(0, 2, count)
    for k, (_, centres, half_width) in enumerate(_SHAPES.values()):
        mine = labels == k
        centre = numpy.take(centres, pick[mine], mode="wrap")  # diagonal: one of two
        params["angle"][mine] = centre + half_width * spread[mine]
    params["angle"] = numpy.deg2rad(params["angle"])
    params["fg"], params["bg"] = _colour_pairs(rng, count)
    params["gradient"] = rng.uniform(-60, 60, (count, 3))  # colour change across the whole image
    params["gradient_angle"] = rng.uniform(0, 2 * numpy.pi, count)
    params["blob_colour"] = rng.uniform(0, 255, (count, 3))
    params["blob_centre"] = rng.uniform(0, size, (count, 2))
    params["blob_sigma"] = rng.uniform(0.04 * size, 0.09 * size, count)
    params["blob_alpha"] = rng.uniform(0.3, 0.8, count)
    params["noise"] = rng.uniform(3, 15, count)  # standard deviation of the pixel noise
    return params


def _render(noise, labels, params, size):
    """Images (n, 3, size, size) float32 in [0, 255] for one chunk of params; `noise` holds
    standard normal values of that shape (the pixel noise before its scaling)."""
    n = len(labels)
    grid = numpy.arange(size, dtype=numpy.float32) + 0.5  # pixel centres
    ys, xs = grid[:, None], grid[None, :]  # (size, 1), (1, size)

    def column(values):  # (n,) -> (n, 1, 1), to broadcast against (size, size)
        return values.astype(numpy.float32)[:, None, None]

    def paint(canvas, colour, alpha):  # colour (n, 3), alpha (n, H, W) in [0, 1]
        return canvas + alpha[:, None] * (colour.astype(numpy.float32)[:, :, None, None] - canvas)

    ramp = ((xs - size / 2) * column(numpy.cos(params["gradient_angle"]))
            + (ys - size / 2) * column(numpy.sin(params["gradient_angle"]))) / size  # (n, H, W)
    canvas = params["bg"].astype(numpy.float32)[:, :, None, None] \
        + params["gradient"].astype(numpy.float32)[:, :, None, None] * ramp[:, None]  # (n, 3, H, W)

    blob_x, blob_y = column(params["blob_centre"][:, 0]), column(params["blob_centre"][:, 1])
    blob_r2 = (xs - blob_x) ** 2 + (ys - blob_y) ** 2
    sigma = column(params["blob_sigma"])
    blob = column(params["blob_alpha"]) * numpy.exp(-blob_r2 / (2 * sigma * sigma))
    canvas = paint(canvas, params["blob_colour"], blob)

    mask = numpy.empty((n, size, size), numpy.float32)
    for k, (signed_distance, _, _) in enumerate(_SHAPES.values()):
        mine = numpy.flatnonzero(labels == k)
        if len(mine) == 0:
            continue
        dx = xs - column(params["centre"][mine, 0])
        dy = ys - column(params["centre"][mine, 1])
        angle = params["angle"][mine]
        cos, sin = column(numpy.cos(angle)), column(numpy.sin(angle))
        u, v = dx * cos + dy * sin, dy * cos - dx * sin  # the shape's own axes
        r = numpy.sqrt(dx * dx + dy * dy)
        sd = signed_distance(u, v, r, column(params["scale"][mine]), column(params["period"][mine]),
                             column(params["phase"][mine]))
        mask[mine] = numpy.clip(sd + 0.5, 0, 1)  # antialiased: a one-pixel ramp at the edge
    canvas = paint(canvas, params["fg"], mask)

    canvas += column(params["noise"])[:, None] * noise
    return numpy.clip(canvas, 0, 255)


def make_images(count, size=72, seed=0, classes=len(CLASSES)):
    """`count` images and their labels, the same for the same (count, size, seed, classes).

    Returns images (count, 3, size, size) uint8 and labels (count,) int64 of the first `classes`
    classes of CLASSES; every class occurs count // classes or count // classes + 1 times, in
    random order. `seed` is an int or a numpy.random.SeedSequence.
    """
    if count < 0 or size < 16 or not 1 <= classes <= len(CLASSES):
        raise ValueError(f"make_images needs count >= 0, size >= 16 and 1 <= classes <= "
                         f"{len(CLASSES)}, got count={count}, size={size}, classes={classes}")
    rng = numpy.random.default_rng(seed)
    labels = rng.permutation(numpy.arange(count) % classes).astype(numpy.int64)
    params = _draw_parameters(rng, labels, size)
    images = numpy.empty((count, 3, size, size), numpy.uint8)

    def draw(chunk, noise):
        chunk_params = {name: values[chunk] for name, values in params.items()}
        images[chunk] = numpy.rint(_render(noise, labels[chunk], chunk_params, size))

    step = max(1, _CHUNK_BYTES // (3 * size * size * 4))
    threads = parallel.CORES
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        drawing = collections.deque()            # at most two chunks a thread in memory
        for start in range(0, count, step):
            chunk = slice(start, min(start + step, count))
            noise = rng.standard_normal((chunk.stop - start, 3, size, size), numpy.float32)
            drawing.append(pool.submit(draw, chunk, noise))
            if len(drawing) > 2 * threads:
                drawing.popleft().result()
        for future in drawing:
            future.result()
    return images, labels


def make_splits(train_count, val_count, size=72, seed=0, classes=len(CLASSES)):
    """A training set and a held-out validation set drawn from two independent seed streams.

    Returns dict(train=(images, labels), val=(images, labels), classes=list of class names).
    """
    train_seed, val_seed = numpy.random.SeedSequence(seed).spawn(2)
    return {
        "train": make_images(train_count, size, train_seed, classes),
        "val": make_images(val_count, size, val_seed, classes),
        "classes": list(CLASSES[:classes]),
    }


def write_folder(root, train, val, size=256, seed=0, classes=len(CLASSES), extension=".jpg"):
    """The data set as image files, the layout `python -m alexnet.train --data root` reads:
    root/train/<class>/<n>.jpg and root/val/<class>/<n>.jpg, `train` and `val` images in all."""
    from PIL import Image                 # only here: drawing in memory needs NumPy alone

    splits = make_splits(train, val, size, seed, classes)
    for split in ("train", "val"):
        for i, (image, label) in enumerate(zip(*splits[split])):
            folder = os.path.join(root, split, CLASSES[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(os.path.join(folder, f"{i}{extension}"))


def main(argv=None):
    p = Parser(prog="python -m alexnet.synthetic", description="Write the embedded shapes data "
               "set as an image folder, to try python -m alexnet.train --data on it.")
    p.add_argument("--out", required=True, help="the folder to write (train/ and val/ in it)")
    p.add_argument("--train", type=whole(1), default=3000, help="training images (default 3000)")
    p.add_argument("--val", type=whole(1), default=500, help="validation images (default 500)")
    p.add_argument("--size", type=whole(16), default=256, help="image side (default 256)")
    p.add_argument("--classes", type=whole(2), default=len(CLASSES),   # a classifier needs 2
                   help=f"the first N of the {len(CLASSES)} classes, 2 or more (default all)")
    p.add_argument("--seed", type=whole(0), default=0, help="seed of the drawing: the same seed "
                   "draws the same images (default 0)")
    args = p.parse_args(argv)
    if args.classes > len(CLASSES):
        p.error(f"argument --classes: the data set has {len(CLASSES)} classes; use 2 to "
                f"{len(CLASSES)}")
    for split in ("train", "val"):          # every class gets an image, as the summary claims
        count = getattr(args, split)
        if count < args.classes:            # --classes below 2 is no way out: it is refused
            fewer = f", or --classes {count} or fewer" if count >= 2 else ""
            p.error(f"argument --{split}: {counted(count, 'image')} cannot hold the {args.classes} "
                    f"classes; pass --{split} {args.classes} or more{fewer}")
    if os.path.isdir(args.out) and os.listdir(args.out):   # its files would stay among the new
        print(f"error: {args.out} is not empty; pass --out with a new folder", file=sys.stderr)
        return 1
    try:
        write_folder(args.out, args.train, args.val, args.size, args.seed, args.classes)
    except ValueError as error:
        p.error(str(error))
    except OSError as error:                        # --out is a file, or not writable
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {args.train} train and {args.val} val images of {args.size}x{args.size}, "
          f"{args.classes} classes; train on it with python -m alexnet.train --data "
          f"{quote(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
