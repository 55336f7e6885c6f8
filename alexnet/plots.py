"""Pictures of a training run, drawn with Pillow alone: learning curves, the conv1 filters,
top-5 predictions, nearest neighbours, the confusion matrix and every layer's activations.

Every function writes its PNG atomically (to a temporary file, then os.replace), so a viewer
that reloads the file while training runs never sees half an image.
"""
import functools
import math
import os

import numpy
from PIL import Image, ImageDraw, ImageFont

from alexnet.checkpoint import write_atomically
from alexnet.cli import counted
from minigrad.backend import to_device

_TRAIN, _VAL, _VAL_TOP5 = (31, 119, 180), (255, 127, 14), (44, 160, 44)
_AXIS, _GRID, _TEXT, _MARK = (60, 60, 60), (225, 225, 225), (20, 20, 20), (120, 120, 120)


# TrueType fonts that draw more than ASCII, widest coverage first, by file name: for a bare name
# ImageFont.truetype searches the system's font folders (/usr/share/fonts and
# ~/.local/share/fonts, macOS's Library/Fonts, Windows' Fonts).
_FONTS = ("NotoSansCJK-Regular.ttc",    # Latin, Greek, Cyrillic, Chinese, Japanese, Korean
          "Arial Unicode.ttf",          # macOS: much the same
          "DejaVuSans.ttf",             # most Linux systems: Latin, Greek, Cyrillic, symbols
          "NotoSans-Regular.ttf",
          "arial.ttf")                  # Windows: Latin, Greek, Cyrillic


@functools.lru_cache(maxsize=None)
def _font_file():
    """The path of the first of _FONTS on this machine, or None (searched once: a search walks
    the font folders)."""
    for name in _FONTS:
        try:
            return ImageFont.truetype(name, 12).path
        except (OSError, ImportError):     # not on this machine, or Pillow without FreeType
            continue
    return None


@functools.lru_cache(maxsize=None)
def _font(size):
    """The font of text `size` pixels high: a TrueType font of _FONTS, so that class names such
    as "café" (and "日本" with a CJK font) are drawn, not shown as empty boxes; else Pillow's own
    (from Pillow 10.1 with FreeType: a TrueType font of ASCII only), else its fixed-size bitmap
    font."""
    if _font_file():
        return ImageFont.truetype(_font_file(), size)
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def missing_glyphs(names):
    """The characters of `names` that the pictures' font has no glyph for, in order of first
    use: each is drawn as the box that U+E000 (private use: in no font) is drawn as."""
    font = _font(12)

    def pixels(text):
        image = Image.new("L", (32, 32))
        try:
            ImageDraw.Draw(image).text((4, 4), text, fill=255, font=font)
        except UnicodeEncodeError:     # Pillow's bitmap font: Latin-1 only
            return None
        return image.tobytes()
    box = pixels("\ue000")
    return [c for c in dict.fromkeys("".join(names)) if not c.isspace() and pixels(c) == box]


def font_note(names):
    """A sentence for the class names that the pictures would draw with boxes, else None."""
    missing = missing_glyphs(names)
    if not missing:
        return None
    example = next(name for name in names if set(name) & set(missing))
    font = os.path.basename(_font_file()) if _font_file() else "Pillow's own font"
    return (f"note: the pictures' font ({font}) draws boxes for "
            f"{len(missing)} character{'s' * (len(missing) > 1)} of the class names "
            f"({''.join(missing[:10])}{'...' * (len(missing) > 10)}, as in {example!r}); they "
            f"use the first of {', '.join(_FONTS)} found on this machine: install one that has "
            "them (for Chinese, Japanese and Korean: apt install fonts-noto-cjk)")


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


def plot_curves(records, path, title="AlexNet training", top5=True):
    """Loss and error against epoch, from the records of a metrics.jsonl, as a 900x400 PNG.

    records: dicts with "kind" ("train" or "eval"), "epoch" and the measured values ("loss",
    "top1_error", and for eval also "top5_error"); records of kind "lr" (a learning-rate
    reduction, with the new "lr") and "stop" are drawn as dashed vertical lines; other kinds and
    missing or NaN values are skipped. The left panel shows training and validation loss, the
    right one training top-1 and validation top-1 and top-5 error (not top5: with 5 classes or
    fewer, where it is 0 by definition).
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
    errors = [("train top-1", _TRAIN, points("train", "top1_error")),
              ("val top-1", _VAL, points("eval", "top1_error"))]
    if top5:
        errors.append(("val top-5", _VAL_TOP5, points("eval", "top5_error")))
    _panel(draw, (450, 30, 900, 400), "error", "epoch", errors, marks)
    _save(image, path)


def _tiles(weights, columns, scale, gap):
    """One block of filters: each (3, kh, kw) filter stretched to [0, 255] on its own."""
    weights = numpy.nan_to_num(to_device(weights, "cpu").astype(numpy.float64))
    if weights.ndim != 4 or weights.shape[1] != 3 or len(weights) == 0:
        raise ValueError(f"filter_grid needs conv1 weights of shape (out, 3, kh, kw) with out > 0, "
                         f"got {weights.shape}")
    lo = weights.min(axis=(1, 2, 3), keepdims=True)
    hi = weights.max(axis=(1, 2, 3), keepdims=True)
    tiles = (weights - lo) / numpy.maximum(hi - lo, 1e-12) * 255  # a flat filter comes out black
    tiles = tiles.transpose(0, 2, 3, 1)  # (out, kh, kw, 3)
    return _grid(tiles, columns, scale, gap)


def _grid(tiles, columns, scale, gap):
    """Tiles (count, h, w) or (count, h, w, 3) of 0..255 values, each enlarged `scale` times,
    `columns` to a row, `gap` white pixels apart: one uint8 block."""
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # (count, h*scale, w*scale, ...)
    count, th, tw = tiles.shape[:3]
    rows = -(-count // columns)
    block = numpy.full((rows * (th + gap) - gap, columns * (tw + gap) - gap) + tiles.shape[3:],
                       255, numpy.uint8)
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


# ---- looking inside: Figure 4, the confusion matrix, feature maps -----------------------------

_RED, _BAR_BACK = (214, 39, 40), (235, 235, 235)      # red: the true class, a wrong neighbour


def _fit(draw, text, font, width):
    """text, cut with an ellipsis to at most `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _photo(image, side):
    """uint8 (3, h, w) as a Pillow image scaled to side x side: nearest neighbour when enlarged
    by a whole factor (the pixels stay visible), smooth otherwise."""
    picture = Image.fromarray(numpy.ascontiguousarray(to_device(image, "cpu").transpose(1, 2, 0)))
    h = picture.height
    smooth = side < h or side % h
    return picture.resize((side, side), Image.BILINEAR if smooth else Image.NEAREST)


def _percent(p):
    """p as a whole percentage, "<1%" for a share above 0 that would print as 0%."""
    text = f"{p:.0%}"
    return "<1%" if p > 0 and text == "0%" else text


def _bars(draw, x, y, width, rows, font):
    """Horizontal probability bars, one row of 17 pixels per (name, probability, marked): the
    name on the left, the bar in the middle, the percentage on the right; a marked row (the
    true class) in red."""
    name_w, pct_w = int(width * 0.5), 40
    bar_w = width - name_w - pct_w - 8
    for i, (name, p, marked) in enumerate(rows):
        top, colour = y + 17 * i, _RED if marked else _TRAIN
        draw.text((x, top + 8), _fit(draw, name, font, name_w - 4), fill=_RED if marked
                  else _TEXT, font=font, anchor="lm")
        bx = x + name_w
        draw.rectangle([bx, top + 3, bx + bar_w, top + 13], fill=_BAR_BACK)
        if p > 0:
            draw.rectangle([bx, top + 3, bx + max(1, round(bar_w * p)), top + 13], fill=colour)
        draw.text((x + width, top + 8), _percent(p), fill=_TEXT, font=font, anchor="rm")


def prediction_grid(images, probs, labels, classes, path, columns=4, top=5):
    """Figure 4 (left) of the paper: each image with the `top` classes the network finds most
    probable as bars. The true class is written under the image and its bar is red; when it is
    not among the `top`, the line below the bars gives its rank and probability.

    images: uint8 (N, 3, h, w), what the network saw; probs (N, classes); labels (N,).
    """
    probs = numpy.asarray(probs, numpy.float64)
    count, top = len(images), min(top, len(classes))
    side, width, pad = 140, 240, 14
    height = side + 22 + 17 * top + 20
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    image = Image.new("RGB", (columns * (width + pad) + pad, rows * (height + pad) + pad + 28),
                      (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(12)
    draw.text((image.width / 2, 8), f"top-{top} predictions (true class in red)", fill=_TEXT,
              font=_font(16), anchor="ma")
    for n in range(count):
        r, c = divmod(n, columns)
        x, y = pad + c * (width + pad), 28 + pad + r * (height + pad)
        image.paste(_photo(images[n], side), (x + (width - side) // 2, y))
        truth = int(labels[n])
        draw.text((x + width / 2, y + side + 4), _fit(draw, classes[truth], font, width),
                  fill=_RED, font=font, anchor="ma")
        order = numpy.argsort(-probs[n], kind="stable")
        _bars(draw, x, y + side + 22, width,
              [(classes[k], probs[n, k], k == truth) for k in order[:top]], small)
        rank = int(numpy.flatnonzero(order == truth)[0]) + 1
        if rank > top:
            draw.text((x, y + side + 24 + 17 * top), f"true class: rank {rank}, "
                      f"{_percent(probs[n, truth])}", fill=_RED, font=small, anchor="la")
    _save(image, path)


def neighbour_grid(queries, query_labels, neighbours, neighbour_labels, distances, classes,
                   path, title="nearest training images by fc7 features"):
    """Figure 4 (right) of the paper: each query image in the first column, then the training
    images nearest to it in feature space, nearest first, each with its class and distance.
    A neighbour of the query's class has a green frame, one of another class a red one.

    queries: uint8 (Q, 3, h, w); neighbours: uint8 (Q, K, 3, h, w); distances (Q, K).
    """
    Q, K = len(queries), neighbours.shape[1]
    side, gap, split, label_h = 112, 8, 28, 34
    width = side + split + K * (side + gap) + 2 * gap
    image = Image.new("RGB", (width, 52 + Q * (side + label_h + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    small = _font(12)
    draw.text((width / 2, 8), title, fill=_TEXT, font=_font(16), anchor="ma")
    draw.text((gap + side / 2, 34), "query", fill=_TEXT, font=small, anchor="ma")
    first = gap + side + split
    draw.text((first + (K * (side + gap) - gap) / 2, 34), "nearest first", fill=_TEXT,
              font=small, anchor="ma")
    for q in range(Q):
        y = 52 + q * (side + label_h + gap)
        image.paste(_photo(queries[q], side), (gap, y))
        draw.text((gap + side / 2, y + side + 3), _fit(draw, classes[int(query_labels[q])],
                                                       small, side), fill=_TEXT, font=small,
                  anchor="ma")
        for k in range(K):
            x = first + k * (side + gap)
            same = int(neighbour_labels[q, k]) == int(query_labels[q])
            draw.rectangle([x - 3, y - 3, x + side + 2, y + side + 2],
                           fill=_VAL_TOP5 if same else _RED)
            image.paste(_photo(neighbours[q, k], side), (x, y))
            draw.text((x + side / 2, y + side + 3), _fit(draw, classes[int(neighbour_labels[q, k])],
                                                         small, side), fill=_TEXT, font=small,
                      anchor="ma")
            draw.text((x + side / 2, y + side + 18), f"distance {distances[q, k]:.3g}",
                      fill=_MARK, font=small, anchor="ma")
        line_x = gap + side + split / 2
        draw.line([(line_x, y), (line_x, y + side)], fill=_GRID, width=2)
    _save(image, path)


def _vertical_text(text, font, colour):
    """text turned 90 degrees counter-clockwise, on a transparent image, to paste."""
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    box = probe.textbbox((0, 0), text, font=font)
    label = Image.new("RGBA", (box[2] + 2, box[3] + 2), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((0, 0), text, fill=colour, font=font)
    return label.rotate(90, expand=True)


def _blend(values, colour):
    """values in [0, 1] (any shape) -> uint8 RGB (..., 3) from white (0) to `colour` (1)."""
    white, colour = numpy.array([255.0] * 3), numpy.array(colour, numpy.float64)
    return numpy.rint(white + values[..., None] * (colour - white)).astype(numpy.uint8)


def confusion_matrix(counts, classes, path, max_named=50):
    """The confusion matrix as a picture: row t, column p is the share of the images of true
    class t that the network put in class p (each row sums to 100%; a class without images is
    a grey row). Class names label the axes when there are at most `max_named` classes, the
    shares are written in the cells when there are at most 12.

    counts: integer (classes, classes), rows true, columns predicted.
    """
    counts = numpy.asarray(counts)
    C = len(counts)
    totals = counts.sum(axis=1, keepdims=True)
    share = counts / numpy.maximum(totals, 1)
    cell = max(1, min(40, 720 // C))
    named = C <= max_named
    font, small = _font(14), _font(12)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    names = [_fit(probe, name, small, 200) for name in classes] if named else []
    label_w = int(max(probe.textlength(n, font=small) for n in names)) + 10 if named else 0
    left, top = 30 + label_w, 54 + label_w
    side = C * cell
    errors = 1 - numpy.trace(counts) / max(1, counts.sum())
    heading = f"confusion matrix: {counted(int(counts.sum()), 'image')}, top-1 error {errors:.2%}"
    # As wide as the heading too: a few classes with short names make a matrix narrower than it.
    width = max(left + side + 90, int(probe.textlength(heading, font=_font(16))) + 20)
    image = Image.new("RGB", (width, top + side + 20), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((image.width / 2, 8), heading, fill=_TEXT, font=_font(16), anchor="ma")
    pixels = _blend(share, _TRAIN)                                  # (C, C, 3)
    pixels[totals[:, 0] == 0] = _GRID
    image.paste(Image.fromarray(pixels.repeat(cell, 0).repeat(cell, 1)), (left, top))
    draw.rectangle([left - 1, top - 1, left + side, top + side], outline=_AXIS)
    draw.text((left + side / 2, 30), "predicted class", fill=_TEXT, font=font, anchor="ma")
    title = _vertical_text("true class", font, _TEXT)
    image.paste(title, (4, top + (side - title.height) // 2), title)
    for i, name in enumerate(names):
        centre = i * cell + cell / 2
        draw.text((left - 5, top + centre), name, fill=_TEXT, font=small, anchor="rm")
        label = _vertical_text(name, small, _TEXT)
        image.paste(label, (int(left + centre - label.width / 2), top - 5 - label.height), label)
    if C <= 12:
        for t in range(C):
            for p in range(C):
                if counts[t, p]:
                    draw.text((left + p * cell + cell / 2, top + t * cell + cell / 2),
                              _percent(share[t, p]), font=small, anchor="mm",
                              fill=(255, 255, 255) if share[t, p] > 0.5 else _TEXT)
    # The colour scale: 0% to 100% of a row.
    bx = left + side + 24
    scale = _blend(numpy.linspace(1, 0, side)[:, None].repeat(16, 1), _TRAIN)
    image.paste(Image.fromarray(scale), (bx, top))
    draw.rectangle([bx - 1, top - 1, bx + 16, top + side], outline=_AXIS)
    for value in (0.0, 0.5, 1.0):
        draw.text((bx + 20, top + (1 - value) * (side - 1)), f"{value:.0%}", fill=_TEXT,
                  font=small, anchor="lm")
    _save(image, path)


def _maps(values, lo, hi, width):
    """Feature maps (C, H, W), or a vector (D,) cut into rows of 64, as one greyscale grid
    that fits `width` pixels: each map scaled from lo (black) to hi (white)."""
    values = to_device(values, "cpu").astype(numpy.float64)
    if values.ndim == 1:              # a fully connected layer: its units in rows of 64
        D = len(values)
        values = numpy.concatenate([values, numpy.full(-D % 64, lo)]).reshape(1, -1, 64) \
            if D > 64 else values.reshape(1, 1, D)
        scale = max(1, min(6, width // values.shape[2]))
        gap, columns = 0, 1
    else:
        C, H, W = values.shape
        gap = 1
        columns = min(C, math.ceil(math.sqrt(2 * C)))
        while columns > 1 and columns * (W + gap) > width:
            columns = max(1, width // (W + gap))
        scale = max(1, min(8, (width // columns - gap) // W))
    grey = numpy.clip((values - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    return Image.fromarray(_grid(grey, columns, scale, gap))


def activation_grid(image, layers, top, path, title="activations"):
    """Every layer's output for one image, tower a on the left and tower b on the right.

    image: uint8 (3, h, w), the input as the network saw it. layers: list of (name, maps of
    tower a, maps of tower b), each (C, H, W) feature maps or (D,) units; both towers of a
    layer share one scale, from 0 (black) to the layer's largest value (white). top: list of
    (class name, probability), drawn as bars at the end (fc8 after the softmax).
    """
    panel, pad, label_h = 420, 16, 20
    font, small = _font(14), _font(12)
    blocks = []
    for name, a, b in layers:
        a, b = to_device(a, "cpu"), to_device(b, "cpu")
        lo = min(0.0, float(a.min()), float(b.min()))
        hi = max(float(a.max()), float(b.max()))
        blocks.append((name, a.shape, _maps(a, lo, hi, panel), _maps(b, lo, hi, panel), hi))
    side = max(128, image.shape[-1])
    width = 2 * panel + 3 * pad
    height = 36 + side + label_h + pad + sum(label_h + max(pa.height, pb.height) + pad
                                             for _, _, pa, pb, _ in blocks) + 24 + 17 * len(top)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, 8), title, fill=_TEXT, font=_font(16), anchor="ma")
    y = 36
    canvas.paste(_photo(image, side), (pad, y))
    draw.text((pad + side + pad, y), f"input {image.shape[-1]}x{image.shape[-1]}, as the "
              "network sees it (before the mean is subtracted)", fill=_TEXT, font=small)
    draw.text((pad + side + pad, y + 20), "each layer: its output after ReLU (and LRN and "
              "pooling for pool1, pool2, pool5),", fill=_MARK, font=small)
    draw.text((pad + side + pad, y + 36), "black 0, white the layer's largest value in either "
              "tower", fill=_MARK, font=small)
    y += side + label_h
    for name, shape, pa, pb, hi in blocks:
        dims = "x".join(str(d) for d in shape)
        for x, tower, picture in ((pad, "a", pa), (2 * pad + panel, "b", pb)):
            draw.text((x, y), f"{name}{tower}  {dims}", fill=_TEXT, font=font)
            canvas.paste(picture, (x, y + label_h))
        draw.text((width - pad, y), f"max {hi:.3g}", fill=_MARK, font=small, anchor="ra")
        y += label_h + max(pa.height, pb.height) + pad
    draw.text((pad, y), "fc8 + softmax: the most probable classes", fill=_TEXT, font=font)
    _bars(draw, pad, y + 22, panel, [(n, p, False) for n, p in top], small)
    _save(canvas, path)
