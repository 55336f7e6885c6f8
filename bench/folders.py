"""Image folders of known difficulty, written as a person would bring them to
`python -m alexnet.train --data DIR`: DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg.

    python bench/folders.py OUT --kind flat --classes 10 --train 120 --val 30 --size 256x256
    python bench/folders.py OUT --kind cluttered --classes 20 --train 100 --val 25 --size 320x240
    python bench/folders.py OUT --kind embedded --train 300 --val 50 --size 128x128

Kinds:
    flat        one shape (filled, or outlined from class 10 on) on a flat background
    cluttered   the same shapes on a colour gradient with pixel noise, crossed by random lines
                and outlines of other shapes
    embedded    alexnet.synthetic's ten classes (the embedded data set), as JPEG files

The shape, its size, place, rotation and colours are drawn per image; only the shape (and for
classes 10-19 whether it is outlined) says the class. Objects stay in the central square of a
non-square image, where the training crops look.
"""
import argparse
import math
import os

import numpy
from PIL import Image, ImageDraw

from alexnet import synthetic


def _polar(*corners):
    return [(r * math.cos(math.radians(a)), -r * math.sin(math.radians(a))) for a, r in corners]


def _arc(start, stop, count=32):
    return _polar(*((start + (stop - start) * k / (count - 1), 1.0) for k in range(count)))


# Each shape as the corners of a polygon around (0, 0), radius about 1.
SHAPES = {
    "disk": _arc(0, 360)[:-1],
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": _polar(*((90 + 120 * k, 1.0) for k in range(3))),
    "star": _polar(*((90 + 36 * k, 1.0 if k % 2 == 0 else 0.42) for k in range(10))),
    "plus": [(0.25, -1.0), (0.25, -0.25), (1.0, -0.25), (1.0, 0.25), (0.25, 0.25), (0.25, 1.0),
             (-0.25, 1.0), (-0.25, 0.25), (-1.0, 0.25), (-1.0, -0.25), (-0.25, -0.25),
             (-0.25, -1.0)],
    "bar": [(-1.0, -0.22), (1.0, -0.22), (1.0, 0.22), (-1.0, 0.22)],
    "arrow": [(1.0, 0.0), (0.15, 0.65), (0.15, 0.25), (-1.0, 0.25), (-1.0, -0.25),
              (0.15, -0.25), (0.15, -0.65)],
    "semicircle": _arc(0, 180) + [(1.0, 0.0)],
    "L": [(-0.7, -1.0), (-0.2, -1.0), (-0.2, 0.5), (0.8, 0.5), (0.8, 1.0), (-0.7, 1.0)],
    "hourglass": [(-0.8, -1.0), (0.8, -1.0), (0.12, 0.0), (0.8, 1.0), (-0.8, 1.0), (-0.12, 0.0)],
}


def polygon(shape, cx, cy, radius, rotation):
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos))
            for x, y in SHAPES[shape]]


def colour(rng):
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def distinct_colours(rng, min_distance=120):
    """Two colours at least min_distance apart in RGB, so the object stays visible."""
    while True:
        a, b = rng.integers(0, 256, (2, 3))
        if numpy.linalg.norm(a - b) >= min_distance:
            return tuple(map(int, a)), tuple(map(int, b))


def draw(label, width, height, rng, cluttered):
    """One image of class `label` (0-19) as a Pillow RGB image."""
    names = list(SHAPES)
    shape, outlined = names[label % len(names)], label >= len(names)
    side = min(width, height)
    fg, bg = distinct_colours(rng)
    if cluttered:
        ramp = numpy.linspace(-1, 1, width)[None, :, None] * rng.uniform(-50, 50, 3)
        noise = rng.normal(0, rng.uniform(4, 14), (height, width, 3))
        pixels = numpy.array(bg, float) + ramp + noise
        image = Image.fromarray(numpy.clip(pixels, 0, 255).astype(numpy.uint8))
    else:
        image = Image.new("RGB", (width, height), bg)
    pen = ImageDraw.Draw(image)
    if cluttered:
        for _ in range(rng.integers(3, 8)):        # lines and outlines of other shapes
            x0, y0, x1, y1 = rng.uniform(0, 1, 4) * (width, height, width, height)
            pen.line([(x0, y0), (x1, y1)], fill=colour(rng), width=int(rng.integers(1, 4)))
            other = names[rng.integers(len(names))]
            pen.polygon(polygon(other, rng.uniform(0, width), rng.uniform(0, height),
                                rng.uniform(0.04, 0.1) * side, rng.uniform(0, 360)),
                        outline=colour(rng))
    radius = rng.uniform(0.18, 0.3) * side
    cx = width / 2 + rng.uniform(-1, 1) * (side / 2 - radius)
    cy = height / 2 + rng.uniform(-1, 1) * (side / 2 - radius)
    points = polygon(shape, cx, cy, radius, rng.uniform(0, 360))
    if outlined:
        pen.line(points + points[:1], fill=fg, width=max(2, int(side / 40)), joint="curve")
    else:
        pen.polygon(points, fill=fg)
    return image


def class_names(kind, classes):
    if kind == "embedded":
        return list(synthetic.CLASSES)
    names = list(SHAPES) + [f"{name}_outline" for name in SHAPES]
    if not 2 <= classes <= len(names):
        raise SystemExit(f"--classes {classes}: between 2 and {len(names)}")
    return names[:classes]


def write(out, kind, classes, train, val, width, height, seed, quality=90):
    names = class_names(kind, classes)
    for split, count, split_seed in (("train", train, seed), ("val", val, seed + 1)):
        rng = numpy.random.default_rng(split_seed)
        if kind == "embedded":
            pictures, labels = synthetic.make_images(count * len(names), width, split_seed)
            images = (Image.fromarray(p.transpose(1, 2, 0)) for p in pictures)
        else:
            labels = numpy.arange(count * len(names)) % len(names)
            images = (draw(int(k), width, height, rng, kind == "cluttered") for k in labels)
        for i, (label, image) in enumerate(zip(labels, images)):
            folder = os.path.join(out, split, names[label])
            os.makedirs(folder, exist_ok=True)
            image.save(os.path.join(folder, f"{i:06d}.jpg"), quality=quality)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--kind", choices=["flat", "cluttered", "embedded"], default="flat")
    p.add_argument("--classes", type=int, default=10, help="2-20 (embedded: always 10)")
    p.add_argument("--train", type=int, default=120, help="training images per class")
    p.add_argument("--val", type=int, default=30, help="validation images per class")
    p.add_argument("--size", default="256x256", help="WIDTHxHEIGHT (embedded: square)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    width, height = map(int, args.size.lower().split("x"))
    write(args.out, args.kind, args.classes, args.train, args.val, width, height, args.seed)


if __name__ == "__main__":
    main()
