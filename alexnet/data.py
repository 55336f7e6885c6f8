"""Images in, batches out: the paper's preprocessing and augmentation (sections 2 and 4.1).

A data set here is a split held as uint8 images (N, 3, S, S) with S = 256 for the paper (the
shorter side rescaled to S, then the central S x S crop) and int64 labels. Training batches are

    random crop of input_size x input_size, mirrored with probability 1/2   (section 4.1)
    minus the per-pixel mean image of the training set (3, S, S), cropped the same way (section 2)
    plus the PCA colour shift  sum_i p_i * a_i * sqrt(lambda_i),  a_i ~ N(0, 0.1)   (section 4.1)

The paper writes lambda_i, the eigenvalues of the RGB covariance, in that shift; taken literally
on 0..255 pixel values it moves colours by hundreds of levels. We scale by sqrt(lambda_i), the
standard deviation along p_i (60 levels or more along p_1 for ImageNet, so a shift of about 6),
as the common reimplementations do.

Evaluation batches are the central crop, mean subtracted. Every batch is a pure function of
(seed, epoch, batch index), so a resumed run sees exactly the batches it would have seen, and
the ranks of a data-parallel run, each making its part of every batch, together see exactly
the batches of one process. A batch is made on the device the network reads it on: the uint8
images go there, and the crops, mirrors and colour shifts are computed there from random draws
made on the CPU.
"""
import collections
import concurrent.futures
import os
import stat
import threading
import unicodedata
from dataclasses import dataclass, replace
from shlex import quote

import numpy
from PIL import EpsImagePlugin, Image, ImageFile, ImageOps

from alexnet import devkit
from minigrad import backend


def decoded_extensions():
    """The extensions (lower case) of every file format this Pillow decodes, from its own
    registry (PIL.Image.registered_extensions): .jpg, .png, .avif, .pgm, .tga, .jp2, ...
    Left out: formats it only writes (.pdf, .palm); those it recognizes but cannot decode
    without a handler of one's own (its stubs: .h5, .grib, .bufr, .wmf); MPEG (.mpg, .mpeg),
    which it identifies but never loads ("cannot load this image"); and EPS and PostScript
    (.eps, .ps) unless Ghostscript, which draws them for it, is installed. The common photo
    formats come first, as a message that lists them should begin."""
    def decodes(format):
        if format == "MPO":                  # a multi-picture JPEG: the JPEG plugin opens it
            return True
        if format == "MPEG":
            return False
        if format == "EPS":
            return EpsImagePlugin.has_ghostscript()
        opener = Image.OPEN.get(format, (None,))[0]
        return opener is not None and not (isinstance(opener, type) and
                                           issubclass(opener, ImageFile.StubImageFile))
    common = [".jpg", ".jpeg", ".png", ".webp"]
    found = [extension for extension, format in Image.registered_extensions().items()
             if decodes(format)]
    return tuple(common + sorted(set(found) - set(common)))


IMAGE_EXTENSIONS = decoded_extensions()
SOME_EXTENSIONS = f"{', '.join(IMAGE_EXTENSIONS[:4])} and {len(IMAGE_EXTENSIONS) - 4} more"
_IMAGE_EXTENSIONS = frozenset(IMAGE_EXTENSIONS)     # one lookup a name (ImageNet: 1.28M names)
# Files that a file manager leaves in a folder; like hidden files, they go unmentioned.
SYSTEM_FILES = ("thumbs.db", "desktop.ini")


@dataclass
class Split:
    images: numpy.ndarray      # (N, 3, S, S) uint8
    labels: numpy.ndarray      # (N,) int64

    def __len__(self):
        return len(self.labels)


def mean_image(images, chunk=1024):
    """The per-pixel mean (3, S, S) float32 of uint8 images (N, 3, S, S), summed in float64."""
    total = numpy.zeros(images.shape[1:], numpy.float64)
    for start in range(0, len(images), chunk):
        total += images[start:start + chunk].sum(axis=0, dtype=numpy.float64)
    return (total / len(images)).astype(numpy.float32)


def rgb_pca(images, max_pixels=1_000_000, seed=0):
    """Eigenvalues (3,) descending and eigenvectors (3, 3) as columns of the covariance of RGB
    values over the pixels of `images` (a random sample of at most max_pixels of them)."""
    N, _, H, W = images.shape
    if N * H * W <= max_pixels:
        pixels = images.transpose(0, 2, 3, 1).reshape(-1, 3).astype(numpy.float64)  # (N*H*W, 3)
    else:
        rng = numpy.random.default_rng(seed)
        n, y, x = (rng.integers(0, size, max_pixels) for size in (N, H, W))
        pixels = images[n, :, y, x].astype(numpy.float64)                   # (max_pixels, 3)
    eigenvalues, eigenvectors = numpy.linalg.eigh(numpy.cov(pixels, rowvar=False))
    # A variance is never negative, but rounding makes the zero ones of grey images (R = G = B:
    # a covariance of rank 1) come out as -1e-12, and the colour shift's sqrt would be NaN.
    eigenvalues = numpy.maximum(eigenvalues, 0.0)
    order = eigenvalues.argsort()[::-1]
    return eigenvalues[order].astype(numpy.float32), eigenvectors[:, order].astype(numpy.float32)


@dataclass
class Augmentation:
    """What the training set says about colour: its mean image and RGB principal components."""
    mean: numpy.ndarray            # (3, S, S) float32
    eigenvalues: numpy.ndarray     # (3,)
    eigenvectors: numpy.ndarray    # (3, 3), columns

    @classmethod
    def of(cls, images):
        return cls(mean_image(images), *rgb_pca(images))


def crop(images, mean, tops, lefts, size, flips):
    """float32 crops (B, 3, size, size) of uint8 images (B, 3, S, S) at (tops[b], lefts[b]),
    mirrored where flips[b], minus the same crop of the mean image (3, S, S).

    images and mean are NumPy or CuPy arrays (the gather runs where they live); tops, lefts and
    flips are NumPy arrays, so the same random draws give the same crops on either device."""
    xp = backend.get_array_module(images)
    B = len(images)
    rows = tops[:, None] + numpy.arange(size)                                 # (B, size)
    cols = lefts[:, None] + numpy.arange(size)
    cols = numpy.where(flips[:, None], cols[:, ::-1], cols)                    # mirror
    channel = numpy.arange(3)[None, :, None, None]
    index = tuple(xp.asarray(i) for i in (channel, rows[:, None, :, None], cols[:, None, None, :]))
    out = images[(xp.arange(B)[:, None, None, None],) + index].astype(numpy.float32)
    return out - mean[index]                                                   # (B, 3, size, size)


def train_batch(split, indices, aug, size, rng, device="cpu", rows=slice(None)):
    """One augmented training batch: random crops, mirrors and PCA colour shifts, made on
    `device` from the uint8 images (a quarter of the float32 bytes cross the bus). The random
    draws come from `rng` on the CPU, so both devices make the same batch.

    `rows`: the part of the batch `indices` to make here (a rank's share in data-parallel
    training). The draws are made for the whole batch, so that each image is cropped, mirrored
    and shifted the same however the batch is shared out."""
    S = split.images.shape[-1]
    B = len(indices)
    tops, lefts = rng.integers(0, S - size + 1, B), rng.integers(0, S - size + 1, B)
    flips = rng.random(B) < 0.5
    alphas = rng.normal(0.0, 0.1, (B, 3)).astype(numpy.float32)
    indices, tops, lefts, flips, alphas = (a[rows] for a in (indices, tops, lefts, flips, alphas))
    shift = (alphas * numpy.sqrt(aug.eigenvalues)) @ aug.eigenvectors.T      # (b, 3) RGB
    with backend.device_scope(device):  # whatever the calling thread's current GPU
        images = backend.to_device(split.images[indices], device)        # (b, 3, S, S) uint8
        mean = backend.to_device(aug.mean, device)                      # (3, S, S)
        x = crop(images, mean, tops, lefts, size, flips)
        x += backend.to_device(shift, device)[:, :, None, None]
    return x, split.labels[indices]


def center_batch(split, indices, aug, size, device="cpu"):
    """The central crop of each image, mean subtracted (evaluation), made on `device`."""
    with backend.device_scope(device):  # whatever the calling thread's current GPU
        images = backend.to_device(split.images[indices], device)             # (B, 3, S, S) uint8
        x = center_crop(images, backend.to_device(aug.mean, device), size)
    return x, split.labels[indices]


def center_crop(images, mean, size):
    """float32 central crops (B, 3, size, size) of uint8 images (B, 3, S, S), minus the mean's."""
    return ten_views(images, mean, size, count=1)[0]


def central(images, size):
    """The central size x size window of uint8 images (N, 3, S, S): what evaluation shows the
    network, before the mean is subtracted."""
    m = (images.shape[-1] - size) // 2
    return images[:, :, m:m + size, m:m + size]


def ten_views(images, mean, size, count=10):
    """The paper's test-time views (section 4.1) of uint8 images (B, 3, S, S): the central crop,
    the four corner crops, then the same five mirrored, each minus the same crop of the mean
    image (3, S, S): float32 (count, B, 3, size, size). count=1 gives the central crop alone."""
    xp = backend.get_array_module(images)
    B, S = len(images), images.shape[-1]
    middle, far = (S - size) // 2, S - size
    windows = [(top, left, flip) for flip in (False, True)
               for top, left in ((middle, middle), (0, 0), (0, far), (far, 0), (far, far))]
    return xp.stack([crop(images, mean, numpy.full(B, top), numpy.full(B, left), size,
                          numpy.full(B, flip)) for top, left, flip in windows[:count]])


def batch_count(split, batch_size, train):
    """Training drops the last incomplete batch (every step sees batch_size images)."""
    return len(split) // batch_size if train else -(-len(split) // batch_size)


# What a random stream of the data is for, in its key (random_stream).
SHUFFLE, AUGMENT = 1, 2


def random_stream(seed, *key):
    """A generator of `seed` for the use `key` names, e.g. (AUGMENT, epoch, batch index): a
    stream of its own. Not default_rng([seed, epoch, i]): numpy pads a short key with zeros, so
    [seed, epoch] and [seed, epoch, 0] are one stream, and at epoch 0 also minigrad's
    manual_seed(seed) (initial weights, dropout). A spawn key comes after that padding."""
    return numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=key))


def batches(split, aug, size, batch_size, train, seed=0, epoch=0, start=0, workers=1, prefetch=4,
            device="cpu", share=(0, 1)):
    """Yield (x float32 (B, 3, size, size) on `device`, labels (B,)) from batch `start` of
    `epoch` on.

    Training shuffles with a generator of (seed, epoch) and augments each batch with one of
    (seed, epoch, batch index), each a stream of its own (random_stream). share=(rank, ranks):
    yield only the rank-th of `ranks` equal parts of every training batch (data-parallel
    training; batch_size must be a multiple of ranks); each image is augmented as it would be
    in the whole batch. `workers` threads prepare up to `prefetch` batches ahead of the consumer
    (NumPy releases the GIL in the copies that dominate here). On a GPU a worker's copies and
    kernels go to CuPy's legacy default stream, which every thread shares, so they are done
    before the training step's kernels that read the batch (not so with
    CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1).
    """
    order = random_stream(seed, SHUFFLE, epoch).permutation(len(split)) if train \
        else numpy.arange(len(split))
    aug = replace(aug, mean=backend.to_device(aug.mean, device))   # one copy for every batch
    rank, ranks = share
    part = batch_size // ranks
    rows = slice(rank * part, (rank + 1) * part)

    def make(i):
        indices = order[i * batch_size:(i + 1) * batch_size]
        if train:
            return train_batch(split, indices, aug, size,
                               random_stream(seed, AUGMENT, epoch, i), device, rows)
        return center_batch(split, indices, aug, size, device)

    todo = range(start, batch_count(split, batch_size, train))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(make, i) for i in todo[:prefetch]]
        for i in todo[prefetch:]:
            done = pending.pop(0).result()
            pending.append(pool.submit(make, i))
            yield done
        for future in pending:
            yield future.result()


# ---- image folders ----------------------------------------------------------------------------

# The most pixels load_image decodes (after a JPEG's draft): a gigapixel, 3 GB as RGB. Above
# it the file is skipped as bad: a corrupt header can claim 65535 x 65535 pixels, and allocating
# that would end the decoding hours in (out of memory) rather than skip one file.
MAX_PIXELS = 1 << 30


class PixelLimitLifted:
    """A context in which Pillow decodes an image of any number of pixels (load_image keeps its
    own MAX_PIXELS). Pillow's guard against decompression bombs (Image.MAX_IMAGE_PIXELS: a
    warning on stderr above 89 megapixels, an error above 179) is for images from strangers; a
    user's own folder is trusted, and a 187-megapixel scan is an image to learn from. Pillow
    reads one global, so it is lifted while any thread of this process is in the context and put
    back when the last one leaves: other code keeps its guard outside our decoding."""

    def __init__(self):
        self.lock, self.inside, self.limit = threading.Lock(), 0, None

    def __enter__(self):
        with self.lock:
            if self.inside == 0:
                self.limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            self.inside += 1

    def __exit__(self, *error):
        with self.lock:
            self.inside -= 1
            if self.inside == 0:
                Image.MAX_IMAGE_PIXELS = self.limit


any_number_of_pixels = PixelLimitLifted()


def load_image(path, size):
    """The image at `path` as uint8 (3, size, size): any mode to RGB, EXIF rotation applied,
    the shorter side rescaled to `size`, then the central size x size crop (section 2). Images
    of up to MAX_PIXELS are decoded (any_number_of_pixels).

    A JPEG at least 4 times `size` on its shorter side is decoded at 1/2, 1/4 or 1/8 of its
    size (Pillow's draft mode: an inverse DCT of fewer coefficients; 4000x3000 to 256 in 57 ms,
    not 177), the smallest scale that keeps 2 * size, so that the resizing below still halves
    it at least and smooths the draft's own filtering away: pixels within 3 levels of a full
    decode's, where a draft to `size` itself, barely resized after, differs by up to 9.

    A file Pillow cannot decode completely raises (OSError, ValueError, ...): a truncated JPEG
    is an error, not an image with a grey bottom, as long as ImageFile.LOAD_TRUNCATED_IMAGES
    keeps its default False. The file type comes from its content, not its name."""
    if not stat.S_ISREG(os.stat(path).st_mode):      # reading a named pipe waits for ever
        raise ValueError("not a regular file (a named pipe, socket or device)")
    with any_number_of_pixels, Image.open(path) as image:
        image.draft(None, (2 * size, 2 * size))
        w, h = image.size
        if w * h > MAX_PIXELS:
            raise ValueError(f"{w}x{h} pixels, more than the {MAX_PIXELS / 1e6:,.4g} megapixels "
                             "an image may have (a corrupt header, or an image to scale down)")
        image.load()
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        # The central crop of the image rescaled to a shorter side of `size`, resampled from
        # its box in the image: the whole rescaled image is never made (a 1x60000 strip would
        # be 256 x 15 million pixels). The same pixels as rescaling then cropping, to 1 level.
        w, h = image.size
        scale = size / min(w, h)
        W, H = max(size, round(w * scale)), max(size, round(h * scale))   # the rescaled size
        left, top = (W - size) // 2, (H - size) // 2
        box = (left * w / W, top * h / H, (left + size) * w / W, (top + size) * h / H)
        image = image.resize((size, size), Image.BILINEAR, box=box)
        return numpy.asarray(image, dtype=numpy.uint8).transpose(2, 0, 1)


def to_rgb(image):
    """A Pillow image of any mode as RGB. Grey images of more than 8 bits (16-bit PNG or TIFF:
    modes I;16*, I, F) are scaled from 0..65535 to 0..255; Pillow's own conversion clips them,
    so that anything above 255 turns white. A float image (F) whose values stay within 0..1 is
    scaled from there (Pillow's conversion leaves it black); other I and F images whose values
    stay within 0..255 are taken as 8-bit values."""
    if image.mode.startswith("I") or image.mode == "F":
        values = numpy.asarray(image, numpy.float64)
        if image.mode.startswith("I;16") or values.max() > 255:
            values = values / 257                                   # 65535 -> 255
        elif image.mode == "F" and values.max() <= 1:
            values = values * 255                                   # 1.0 -> 255
        image = Image.fromarray(numpy.clip(numpy.rint(values), 0, 255).astype(numpy.uint8))
    return image.convert("RGB")


def extension(name):
    """A file name's extension in lower case (".jpeg" of "photo.JPEG"), "" when it has none."""
    stem, _, last = name.rpartition(".")
    return "." + last.lower() if stem else ""


def is_image_name(name):
    """A visible file with an image extension, in any case (photo.JPEG, not .photo.jpg)."""
    return not name.startswith(".") and extension(name) in _IMAGE_EXTENSIONS


# Files that give the classes (folder names) readable names, one "<folder> <name>" a line:
# ImageNet's, as its Kaggle copy ships it ("n01440764 tench, Tinca tinca"), and Caffe's.
CLASS_NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


def class_name_pair(line):
    """(folder, name) of a line of a class-name file: split at its tab if it has one (a folder
    name may hold spaces: "red circle<TAB>Rote Kreise"), else at its first run of spaces."""
    folder, tab, name = line.partition("\t")
    if not tab:
        folder, name = (line.split(maxsplit=1) + [""])[:2]
    return folder.strip(), name.strip()


def read_class_names(path, classes, log=print):
    """The readable name of each of `classes` from `path`, whose lines are "<folder> <name>",
    or "<folder><TAB><name>" for a folder name with spaces, or from ImageNet's devkit's meta.mat
    (its WNIDs and words); a class the file does not name keeps its folder name. log: told in
    one line of the lines that name no class folder."""
    try:
        if extension(path) == ".mat":
            pairs = devkit.class_names(path)
        else:
            with open(path, encoding="utf-8-sig") as f:     # -sig: a BOM is not a name
                pairs = [class_name_pair(line) for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"class names {path} cannot be read ({error}); give a text file of "
                         "'<class folder> <name>' lines") from None
    except ValueError as error:                             # devkit's: "meta.mat cannot be read"
        raise ValueError(f"class names {error}; give a text file of '<class folder> <name>' "
                         "lines") from None
    names = {folder: name for folder, name in pairs if name}
    spaced = any(" " in name for name in classes)
    tab = "a folder name with spaces is followed by a tab, not a space"
    if not any(name in names for name in classes):
        raise ValueError(f"class names {path} names none of the {len(classes)} classes (the "
                         f"first class folder is {classes[0]!r}); give the file whose lines "
                         "start with the class folders' names" + (f" ({tab})" if spaced else ""))
    known = set(classes)
    unknown = [folder for folder, _ in pairs if folder not in known]
    if unknown:
        log(f"note: {len(unknown)} of the {len(pairs)} lines of {path} name no class folder "
            f"({', '.join(map(repr, unknown[:3]))}{', ...' if len(unknown) > 3 else ''}) and are "
            "not used" + (f"; {tab}" if spaced else ""))
    return [names.get(name, name) for name in classes]


def find_class_names(folder):
    """The path of a file of class names (CLASS_NAME_FILES) in `folder`, or None."""
    paths = [os.path.join(folder, name) for name in CLASS_NAME_FILES]
    return next((path for path in paths if os.path.isfile(path)), None)


def images_below(folder, others=None):
    """Every image file below `folder` (none if it is missing), in sorted order, hidden files
    and folders left out. Linked folders are followed, as a linked class folder is, each real
    folder once (a link to a folder above would loop). others: a Counter to which the extension
    ("" for none) of every other visible file is added, save SYSTEM_FILES."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        if os.path.realpath(dirpath) in seen:
            dirnames[:] = []
            continue
        seen.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(d for d in dirnames if is_visible_folder(d))
        prefix = os.path.join(dirpath, "")     # "dir/": no os.path.join a file (0.5 us each)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            kind = extension(name)
            if kind in _IMAGE_EXTENSIONS:
                found.append(prefix + name)
            elif others is not None and name.lower() not in SYSTEM_FILES:
                others[kind] += 1
    return found


# Image formats of cameras and phones that Pillow does not decode (without plugins of its own):
# renaming would not help them, converting does.
UNREAD_IMAGE_FORMATS = frozenset((".heic", ".heif", ".svg", ".cr2", ".cr3", ".nef", ".arw",
                                  ".dng", ".orf", ".rw2", ".raf"))


def left_out(root, others):
    """What to say of the files counted by extension in `others` (images_below's), which were
    not read."""
    count = sum(others.values())
    kinds = ", ".join(f"{ext or 'no extension'}: {n}" for ext, n in others.most_common(4))
    files = f"{count} files under {root} are not images by their extension and were" \
        if count > 1 else f"1 file under {root} is not an image by its extension and was"
    unread = sorted(UNREAD_IMAGE_FORMATS & set(others))
    fix = (f"convert the {', '.join(unread)} images, which Pillow does not read, to JPEG or PNG"
           if unread else "give an image its format's extension (.jpg, .png, ...) to use it")
    return f"{files} left out ({kinds}{', ...' if len(others) > 4 else ''}); {fix}"


def loose_images(root):
    """The names of the image files directly in root (not in a folder below it), sorted."""
    return sorted(name for name in os.listdir(root)
                  if is_image_name(name) and os.path.isfile(os.path.join(root, name)))


def is_utf8(name):
    """Whether a name from the file system was valid UTF-8 (Python holds other bytes as lone
    surrogates, "\udce9" for Latin-1's é)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# Folders that archivers and systems make, never images of a class: macOS's zip writes the
# resource forks of the files it packs into __MACOSX/.
SYSTEM_FOLDERS = ("__MACOSX",)


def is_visible_folder(name):
    return not name.startswith(".") and name not in SYSTEM_FOLDERS


def class_folders(root):
    """The names of the folders in root, sorted, hidden and system ones left out: its
    classes."""
    return sorted(d for d in os.listdir(root)
                  if is_visible_folder(d) and os.path.isdir(os.path.join(root, d)))


def broken_links(root):
    """'name -> target' of each link in root to nothing (an unmounted disk), sorted."""
    return sorted(f"{name} -> {os.readlink(os.path.join(root, name))}" for name in os.listdir(root)
                  if os.path.islink(os.path.join(root, name))
                  and not os.path.exists(os.path.join(root, name)))


def find_images(root, classes=None, log=None):
    """(paths, labels, classes) of root/<class>/<image>; classes sorted by name unless given.
    Hidden files and folders are skipped; extensions match in any case. log: told in one line
    of the visible files that were left out for their extension (notes.txt, IMG_0001)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist; expected {root}/<class>/<images>")
    found = class_folders(root)
    lost = broken_links(root)
    if lost and log:
        log(f"note: {root} has links to nothing ({', '.join(lost[:3])}"
            f"{', ...' if len(lost) > 3 else ''}), which are not classes; mount or link again "
            "what they pointed to, to use them")
    for name in found:                     # classes.txt holds a name a line, files.txt a tab
        if "\n" in name or "\t" in name:
            raise ValueError(f"the class folder {os.path.join(root, name)!r} has a line break or "
                             "tab in its name; rename it")
        if not is_utf8(name):          # a class name goes into checkpoints, pictures, JSON
            raise ValueError(f"the class folder {os.path.join(root, name)!r} has a name that is "
                             "not UTF-8 (from an old zip or a Windows share); rename it, e.g. "
                             f"with convmv -f latin1 -t utf8 --notest {quote(root)}/*")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(spelled_otherwise(root, unknown, classes) or
                             f"{root} has classes that the training set lacks: "
                             f"{', '.join(unknown[:5])}; every val class needs a train folder")
    paths, labels, others = [], [], collections.Counter()
    for label, name in enumerate(classes):
        found = images_below(os.path.join(root, name), others)
        paths += found
        labels += [label] * len(found)
    broken = next((path for path in paths if "\n" in path), None)     # files.txt: a line each
    if broken:
        raise ValueError(f"the file {broken!r} has a line break in its name; rename it")
    if paths and others and log:
        log(f"note: {left_out(root, others)}")
    if not paths:
        if loose_images(root):
            raise ValueError(f"the images in {root} are not in class folders ({root}/<class>/"
                             "<image>); sort a flat folder such as ImageNet's val with python -m "
                             "alexnet.prepare --val-labels LOC_val_solution.csv (Kaggle's) or "
                             "ILSVRC2012_validation_ground_truth.txt (the devkit's) --data "
                             f"{quote(root)}")
        tars = sorted(name for name in os.listdir(root) if extension(name) == ".tar")
        if tars:                                    # ILSVRC2012_img_train.tar, unpacked once
            unpack = (f"cd {quote(root)} && for f in *.tar; do mkdir -p \"${{f%.tar}}\" && "
                      "tar -xf \"$f\" -C \"${f%.tar}\" && rm \"$f\"; done")
            raise ValueError(f"{root} holds one tar file per class ({', '.join(tars[:2])}"
                             f"{', ...' if len(tars) > 2 else ''}), as ImageNet's training tar "
                             f"unpacks, not their images: unpack each into its class folder "
                             f"with ({unpack})")
        if others:
            raise ValueError(f"no images found under {root}/<class>/: {left_out(root, others)}")
        raise ValueError(f"no images found under {root}/<class>/: no class folder holds a "
                         "file; put the images of each class in a folder of its own there")
    return paths, numpy.array(labels, numpy.int64), list(classes)


def spelled_otherwise(root, unknown, classes):
    """What to say when a folder of `unknown` is named as one of `classes` but for its Unicode
    normalization (an accent stored as one character, NFC, or as a letter and a combining mark,
    NFD, as macOS writes "café"), or its case or spaces at its ends ("Cat", "cat "): the names
    differ, so the folders would be two classes. None when none is."""
    by_form = {unicodedata.normalize("NFC", name): name for name in classes}
    for name in unknown:
        known = by_form.get(unicodedata.normalize("NFC", name))
        if known is not None:
            # ascii(): the accents as escapes, which survive a copy and paste that normalizes;
            # quote(): the code as one argument of the shell, whatever quotes or $ the path has.
            code = (f"import os; os.rename({ascii(os.path.join(root, name))}, "
                    f"{ascii(os.path.join(root, known))})")
            return (f"the class folder {os.path.join(root, name)} ({normal_form(name)}) differs "
                    f"from the training set's {known} ({normal_form(known)}) only in Unicode "
                    f"normalization: {ascii(name)} and {ascii(known)}; rename it as the training "
                    f"folder is written: python -c {quote(code)}")
    loosely = {unicodedata.normalize("NFC", name).casefold().strip(): name for name in classes}
    for name in unknown:
        known = loosely.get(unicodedata.normalize("NFC", name).casefold().strip())
        if known is not None:      # repr(): a space at the end shows
            return (f"the class folder {os.path.join(root, name)!r} differs from the training "
                    f"set's {known!r} only in upper and lower case or in spaces at its ends; "
                    f"rename it as the training folder is written: mv "
                    f"{quote(os.path.join(root, name))} {quote(os.path.join(root, known))}")
    return None


def normal_form(name):
    """NFC or NFD: how the accents of a name are stored (a name without any is both)."""
    return next((form for form in ("NFC", "NFD") if unicodedata.is_normalized(form, name)),
                "mixed")


def decode_into(images, indices, paths, size):
    """Decode paths[k] into images[indices[k]]: (indices written, [(index, reason)] of the files
    that could not be decoded: any file, skipped and recorded, never fatal)."""
    written, failed = [], []
    for i, path in zip(indices, paths):
        try:
            images[i] = load_image(path, size)
            written.append(i)
        except Exception as error:  # any undecodable file: record it and go on
            failed.append((i, why_not_decoded(path, error)))
    return written, failed


def why_not_decoded(path, error):
    """The reason bad_files.txt gives for a file that load_image could not decode: the error,
    or for a link to nothing (an image moved or deleted since the link was made) where it
    points, rather than FileNotFoundError on the link's own name."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"broken link to {os.readlink(path)}"
    return f"{type(error).__name__}: {error}"


def decode_files(paths, size, workers=None, on_read=None):
    """(images (N, 3, size, size) uint8, good (N,) bool, [(path, reason)] of the files that
    could not be read: their rows are not filled), decoded by `workers` threads; on_read(done)
    after each file."""
    images = numpy.empty((len(paths), 3, size, size), numpy.uint8)
    good = numpy.ones(len(paths), bool)
    bad = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        for done, (_, failed) in enumerate(pool.map(
                lambda i: decode_into(images, [i], [paths[i]], size), range(len(paths))), 1):
            for i, reason in failed:
                good[i] = False
                bad.append((paths[i], reason))
            if on_read:
                on_read(done)
    return images, good, bad
