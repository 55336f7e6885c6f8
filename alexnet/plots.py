"""Pictures of a training run, drawn with Pillow alone: learning curves and the conv1 filters.

Both functions write their PNG atomically (to a temporary file, then os.replace), so a viewer
that reloads the file while training runs never sees half an image.
"""
import math
import os

import numpy
from PIL import Image, ImageDraw, ImageFont

from alexnet.checkpoint import write_atomically
from minigrad.backend import to_device

_TRAIN, _VAL, _VAL_TOP5 = (31, 119, 180), (255, 127, 14), (44, 160, 44)
_AXIS, _GRID, _TEXT, _MARK = (60, 60, 60), (225, 225, 225), (20, 20, 20), (120, 120, 120)


def _font(size):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def _save(image, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: image.save(f, format="PNG"))


def _nice_ticks(lo, hi, count=5):
    """Round tick values (steps of 1, 2 or 5 times a power of ten) from below lo to above hi."""
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _label(value):
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.0e}"


def _finite_runs(points):
    """The points split wherever x or y is not finite, so a NaN breaks the line."""
    runs, run = [], []
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y):
            run.append((x, y))
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs


def _panel(draw, box, title, x_label, series, marks=()):
    """One line chart in box = (left, top, right, bottom) pixels.

    series: list of (name, colour, points) with points a list of (x, y); names of empty series
    still appear in the legend, so its layout does not jump when the first point arrives.
    marks: (x, label) pairs drawn as dashed vertical lines, labelled halfway up on their left.
    """
    font, small = _font(14), _font(12)
    left, top, right, bottom = box
    plot = (left + 52, top + 26, right - 10, bottom - 38)  # room for tick labels and title
    px0, py0, px1, py1 = plot

    finite = [p for _, _, points in series for run in _finite_runs(points) for p in run]
    xs = [x for x, _ in finite] + [x for x, _ in marks]
    ys = [y for _, y in finite]
    x_lo, x_hi = (min(0.0, min(xs)), max(xs)) if xs else (0.0, 1.0)
    y_lo, y_hi = (min(0.0, min(ys)), max(ys)) if ys else (0.0, 1.0)
    if x_hi - x_lo < 1e-12:
        x_hi = x_lo + 1.0
    if y_hi - y_lo < 1e-12:
        y_hi = y_lo + 1.0
    x_ticks, y_ticks = _nice_ticks(x_lo, x_hi), _nice_ticks(y_lo, y_hi)
    x_lo, x_hi, y_lo, y_hi = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    inset = 6  # keeps points on the edge of the range off the frame

    def to_pixel(x, y):
        return (px0 + inset + (x - x_lo) / (x_hi - x_lo) * (px1 - px0 - 2 * inset),
                py1 - inset - (y - y_lo) / (y_hi - y_lo) * (py1 - py0 - 2 * inset))

    draw.text(((px0 + px1) / 2, top + 4), title, fill=_TEXT, font=font, anchor="ma")
    for x in x_ticks:
        px, _ = to_pixel(x, y_lo)
        draw.line([(px, py0), (px, py1)], fill=_GRID)
        draw.line([(px, py1), (px, py1 + 4)], fill=_AXIS)
        draw.text((px, py1 + 6), _label(x), fill=_TEXT, font=small, anchor="ma")
    for y in y_ticks:
        _, py = to_pixel(x_lo, y)
        draw.line([(px0, py), (px1, py)], fill=_GRID)
        draw.line([(px0 - 4, py), (px0, py)], fill=_AXIS)
        draw.text((px0 - 6, py), _label(y), fill=_TEXT, font=small, anchor="rm")
    draw.rectangle(plot, outline=_AXIS)
    draw.text(((px0 + px1) / 2, bottom - 4), x_label, fill=_TEXT, font=small, anchor="md")
    if not finite:
        draw.text(((px0 + px1) / 2, (py0 + py1) / 2), "no data yet", fill=_AXIS, font=font,
                  anchor="mm")

    for x, _ in marks:                  # learning-rate reductions, the stop: dashed lines
        px, _ = to_pixel(x, y_lo)
        for y in range(int(py0), int(py1), 8):
            draw.line([(px, y), (px, min(y + 4, py1))], fill=_MARK)

    for _, colour, points in series:
        runs = _finite_runs(points)
        markers = sum(len(run) for run in runs) <= 40  # a few points: show each one
        for run in runs:
            pixels = [to_pixel(x, y) for x, y in run]
            if len(pixels) > 1:
                draw.line(pixels, fill=colour, width=2, joint="curve")
            if markers or len(pixels) == 1:
                for px, py in pixels:
                    draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)

    for x, label in marks:   # labelled halfway up, left of the line: late in training the
        px, _ = to_pixel(x, y_lo)          # curves are low there and the legend is above
        draw.text((px - 3, (py0 + py1) / 2), label, fill=_MARK, font=small, anchor="rm")

    # Legend in the top right corner, on a white box over the grid.
    rows = [(name, colour) for name, colour, _ in series]
    width = max(draw.textlength(name, font=small) for name, _ in rows) + 34
    lx1, ly0 = px1 - 6, py0 + 6
    lx0, ly1 = lx1 - width, ly0 + 16 * len(rows) + 6
    draw.rectangle([lx0, ly0, lx1, ly1], fill=(255, 255, 255), outline=_GRID)
    for i, (name, colour) in enumerate(rows):
        y = ly0 + 11 + 16 * i
        draw.line([(lx0 + 6, y), (lx0 + 24, y)], fill=colour, width=3)
        draw.text((lx0 + 30, y), name, fill=_TEXT, font=small, anchor="lm")


def plot_curves(records, path, title="AlexNet training"):
    """Loss and error against epoch, from the records of a metrics.jsonl, as a 900x400 PNG.

    records: dicts with "kind" ("train" or "eval"), "epoch" and the measured values ("loss",
    "top1_error", and for eval also "top5_error"); records of kind "lr" (a learning-rate
    reduction, with the new "lr") and "stop" are drawn as dashed vertical lines; other kinds and
    missing or NaN values are skipped. The left panel shows training and validation loss, the
    right one training top-1 and validation top-1 and top-5 error.
    """
    def points(kind, key):
        return [(float(r["epoch"]), float(r[key])) for r in records
                if r.get("kind") == kind and r.get(key) is not None and "epoch" in r]

    marks = [(float(r["epoch"]), f"lr {_label(r['lr'])}" if r["kind"] == "lr" else "stop")
             for r in records if r.get("kind") in ("lr", "stop")]
    image = Image.new("RGB", (900, 400), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((450, 8), title, fill=_TEXT, font=_font(16), anchor="ma")
    _panel(draw, (0, 30, 450, 400), "loss", "epoch", [
        ("train", _TRAIN, points("train", "loss")),
        ("val", _VAL, points("eval", "loss")),
    ], marks)
    _panel(draw, (450, 30, 900, 400), "error", "epoch", [
        ("train top-1", _TRAIN, points("train", "top1_error")),
        ("val top-1", _VAL, points("eval", "top1_error")),
        ("val top-5", _VAL_TOP5, points("eval", "top5_error")),
    ], marks)
    _save(image, path)


def _tiles(weights, columns, scale, gap):
    """One block of filters: each (3, kh, kw) filter stretched to [0, 255] on its own."""
    weights = numpy.nan_to_num(to_device(weights, "cpu").astype(numpy.float64))
    if weights.ndim != 4 or weights.shape[1] != 3 or len(weights) == 0:
        raise ValueError(f"filter_grid needs conv1 weights of shape (out, 3, kh, kw) with out > 0, "
                         f"got {weights.shape}")
    count, _, kh, kw = weights.shape
    lo = weights.min(axis=(1, 2, 3), keepdims=True)
    hi = weights.max(axis=(1, 2, 3), keepdims=True)
    tiles = (weights - lo) / numpy.maximum(hi - lo, 1e-12) * 255  # a flat filter comes out black
    tiles = tiles.transpose(0, 2, 3, 1)  # (out, kh, kw, 3)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # (out, kh*scale, kw*scale, 3)
    rows = -(-count // columns)
    th, tw = kh * scale, kw * scale
    block = numpy.full((rows * (th + gap) - gap, columns * (tw + gap) - gap, 3), 255, numpy.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        block[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = \
            numpy.rint(tile)
    return block


def filter_grid(weights_a, weights_b, path, columns=16, scale=4):
    """The conv1 filters of both towers as one picture, like Figure 3 of the paper.

    weights_a, weights_b: (out, 3, kh, kw) arrays of the two towers. Each filter is stretched to
    the full 0..255 range independently and enlarged `scale` times (nearest neighbour); tower a
    fills a block on top, tower b a block below it, `columns` filters to a row.
    """
    gap, tower_gap, border = 2, 14, 6
    columns = max(1, min(columns, len(weights_a), len(weights_b)))
    a = _tiles(weights_a, columns, scale, gap)
    b = _tiles(weights_b, columns, scale, gap)
    width = max(a.shape[1], b.shape[1]) + 2 * border
    height = a.shape[0] + tower_gap + b.shape[0] + 2 * border
    canvas = numpy.full((height, width, 3), 255, numpy.uint8)
    canvas[border:border + a.shape[0], border:border + a.shape[1]] = a
    top = border + a.shape[0] + tower_gap
    canvas[top:top + b.shape[0], border:border + b.shape[1]] = b
    _save(Image.fromarray(canvas), path)
