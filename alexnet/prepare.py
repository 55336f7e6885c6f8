"""Decode an image folder once, train from it many times: `python -m alexnet.prepare`.

    python -m alexnet.prepare --data DIR --out CACHE [--size 256] [--workers N]
    python -m alexnet.prepare --val-labels LOC_val_solution.csv --data VALDIR [--dry-run]

The first form decodes every image under DIR/train/<class>/ and DIR/val/<class>/ once, as the
paper prepares ImageNet (section 2: the shorter side rescaled to --size, then the central
square), into a cache folder that training maps into memory instead of reading it into RAM:

    manifest.json       size, class names, source folder, whether mean.npy and pca.npz are
                        made (statistics), and per split: files, images, skipped, complete,
                        bad (path and reason of each skipped file) and bad_rows (their rows)
    classes.txt         the class names in label order (the sorted folder names), one a line
    train_images.npy    uint8 (files, 3, S, S), memory-mapped; the first `images` rows are used
    train_labels.npy    int64 (images,): the labels of those rows
    train_files.txt     path (below DIR/train) TAB label TAB size in bytes of every file
                        found, in decoding order
    val_*               the same for the validation split
    mean.npy            float32 (3, S, S): the per-pixel mean image of the training set
    pca.npz             eigenvalues (3,) and eigenvectors (3, 3) of its RGB covariance
    bad_files.txt       path TAB reason for every file that could not be decoded
    prepare.lock        empty: the process preparing the cache holds a lock on it (lockf), so
                        that a second one at the same time waits for it

Every image Pillow can decode is used, whatever its mode (data.load_image): every file with an
extension of a format it reads (data.IMAGE_EXTENSIONS); the other files are counted in one
note. A file that cannot be decoded (truncated, empty, not an image) is skipped and listed. It
leaves no hole: when a split is complete, the last good rows are copied into the rows of the
failed files, so the good images are exactly the first `images` rows. That costs one row copy
per bad file, whatever the size of the split, and a reader needs no mask: it takes
images[:len(labels)].

The work is shared by --workers processes that write straight into the memory-mapped array. An
interrupted run resumes: <split>_done.npy marks the rows written so far (saved every few seconds,
after the image file is synced to disk), and the same command decodes only the missing rows.

The second form sorts a flat validation folder into class folders from a list of (file, class)
pairs: ImageNet's LOC_val_solution.csv (ImageId,PredictionString; the class is the first word of
PredictionString, the file is ImageId with whatever extension it has in the folder), the
devkit's ILSVRC2012_validation_ground_truth.txt (class numbers, read with the meta.mat beside
it: alexnet.devkit) or any list of `file class` lines separated by spaces or a comma.
"""
import argparse
import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import itertools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from shlex import quote

import numpy
from numpy.lib.format import open_memmap

from alexnet import data, devkit
from alexnet.checkpoint import write_atomically
from alexnet.cli import Parser, format_time, run_command, whole
from alexnet.model import PRESETS, auto_preset

SPLITS = ("train", "val")
MANIFEST = "manifest.json"
CHUNK = 32              # images per task handed to a worker process
SAVE_EVERY = 10.0       # seconds between saves of the done mask
PROGRESS_EVERY = 5.0    # seconds between progress lines


def default_cache(data_dir, size):
    """Where training prepares DIR when no --cache is given: a hidden folder inside DIR."""
    return os.path.join(data_dir, f".alexnet-cache-{size}")


def is_cache(path):
    return os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(cache):
    with open(os.path.join(cache, MANIFEST)) as f:
        return json.load(f)


def is_complete(manifest):
    """Both splits decoded and the training set's mean and PCA stored."""
    return bool(manifest.get("statistics")) and \
        all(manifest["splits"].get(split, {}).get("complete") for split in SPLITS)


# The cache's text files hold file names as the file system gives them: a name that is not
# UTF-8 (Latin-1 from an old zip or a Windows share) is written back as its own bytes
# (surrogateescape, as os.fsencode does), and a "\r" in a name stays one.
def write_text(path, text):
    write_atomically(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


def read_text(path):
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.read()


# ---- decoding (in worker processes) -----------------------------------------------------------

_worker_images = None   # a worker process's own mapping of the array being filled


def _start_worker(images_path, parent):
    """A decoding worker: Ctrl-C and SIGTERM are the parent's to handle (it saves what is done),
    and the worker ends with the parent, however that ends (kill -9 too: a worker left waiting
    for work that never comes held its mapping of the images for ever)."""
    global _worker_images
    for sent in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sent, signal.SIG_IGN)
    if sys.platform.startswith("linux"):             # prctl(PR_SET_PDEATHSIG, SIGKILL)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:                       # the parent died before that
        os._exit(1)
    _worker_images = numpy.load(images_path, mmap_mode="r+")


def _decode_in_worker(indices, paths, size):
    return data.decode_into(_worker_images, indices, paths, size)


def decode_rows(images, images_path, todo, paths, size, workers, on_chunk):
    """Decode the rows `todo` in chunks of CHUNK, calling on_chunk(written, failed) as each
    chunk finishes: in this process for workers=1, else in a pool of worker processes that keeps
    a few chunks per worker queued."""
    chunks = [todo[start:start + CHUNK] for start in range(0, len(todo), CHUNK)]
    if workers == 1:
        for chunk in chunks:
            on_chunk(*data.decode_into(images, chunk, [paths[i] for i in chunk], size))
        return
    others = set(multiprocessing.active_children())
    pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_start_worker,
                                                  initargs=(images_path, os.getpid()))
    try:
        pending, queued = set(), iter(chunks)

        def submit(count):
            for chunk in itertools.islice(queued, count):
                pending.add(pool.submit(_decode_in_worker, chunk, [paths[i] for i in chunk], size))

        submit(4 * workers)
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                try:
                    result = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    raise ChildProcessError(
                        "a decoding worker process ended abruptly (killed, perhaps for want of "
                        "memory); what was decoded is saved: run the same command to go on, "
                        "with fewer --workers if memory is short") from None
                on_chunk(*result)
            submit(len(finished))
    except BaseException:
        # Ctrl-C, SIGTERM or an error: the chunks in flight are not counted done, so they need
        # not be waited for; a worker reading a file that never ends (a named pipe) would be
        # waited for for ever, as workers leave Ctrl-C and SIGTERM to this process.
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in set(multiprocessing.active_children()) - others:
            worker.kill()
            worker.join()
        raise
    pool.shutdown(wait=True)


# ---- one split --------------------------------------------------------------------------------

class Progress:
    """The done mask of a split, saved every SAVE_EVERY seconds, and a progress line every
    PROGRESS_EVERY seconds: images done/total, images/s, ETA."""

    def __init__(self, name, done, todo, images_path, done_path, log):
        self.name, self.done, self.todo, self.log = name, done, todo, log
        self.images_path, self.done_path = images_path, done_path
        self.failed = []                              # (index, reason), this run
        self.decoded = 0                              # files tried in this run
        self.started = self.saved = self.shown = time.perf_counter()

    def __call__(self, written, failed):
        self.done[written] = True
        self.failed += failed
        self.decoded += len(written) + len(failed)
        now = time.perf_counter()
        if now - self.saved >= SAVE_EVERY:
            self.save()
        if now - self.shown >= PROGRESS_EVERY or self.decoded == self.todo:
            self.shown = now
            rate = self.decoded / max(now - self.started, 1e-9)
            seconds_left = (self.todo - self.decoded) / max(rate, 1e-9)
            self.log(f"  {self.name}: {int(self.done.sum()) + len(self.failed)}/{len(self.done)} "
                     f"images  {rate:.0f} images/s  ETA {format_time(seconds_left)}")

    def save(self):
        """Sync the image rows to disk first, then the mask that vouches for them."""
        with open(self.images_path, "rb") as f:
            os.fsync(f.fileno())
        write_atomically(self.done_path, lambda f: numpy.save(f, self.done))
        self.saved = time.perf_counter()


def find_sources(data_dir, log=print):
    """The image files of data_dir/train and data_dir/val: {split: (root, paths, labels)} and
    the classes (train's folders). log: told of the files left out for their extension."""
    train_root, val_root = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
    if not os.path.isdir(train_root):
        raise FileNotFoundError(f"{data_dir} has no train/ folder: {layout_hint(data_dir)}")
    if not os.path.isdir(val_root):
        renames = split_renames(data_dir)
        raise FileNotFoundError(
            f"{data_dir} has train/ but no val/ folder, which training measures itself on: " +
            (f"rename {renames[0]}" if renames else f"make {val_root}/<class>/ for each class "
             "and move some of its images (a tenth, say) from train/<class>/ there"))
    train_paths, train_labels, classes = data.find_images(train_root, log=log)
    val_paths, val_labels, _ = data.find_images(val_root, classes, log=log)
    if len(classes) < 2:
        raise ValueError(f"{train_root} has one class folder ({classes[0]}); a classifier needs "
                         "two or more: one folder of images for each class")
    return {"train": (train_root, train_paths, train_labels),
            "val": (val_root, val_paths, val_labels)}, classes


def layout_hint(data_dir):
    """What a folder without train/ looks like instead, and what to do about it."""
    expected = "expected DIR/train/<class>/<images> and DIR/val/<class>/<images>"
    if not os.path.exists(data_dir):
        return f"{data_dir} does not exist; {expected}"
    if not os.path.isdir(data_dir):
        return f"{data_dir} is a file; pass the folder that holds train/ and val/"
    if os.path.basename(os.path.normpath(data_dir)) in ("train", "val"):
        parent = os.path.dirname(os.path.normpath(data_dir)) or "."
        return f"it looks like a split itself; pass its parent, {parent}"
    split = os.path.dirname(os.path.abspath(data_dir))
    if os.path.basename(split) in ("train", "val"):
        return f"it looks like a class folder of {split}; pass {os.path.dirname(split)}"
    renames = split_renames(data_dir)
    if renames:
        return f"rename {' and '.join(renames)}; {expected}"
    if os.path.isdir(os.path.join(data_dir, "val")):
        return (f"it has val/ but no train/: make {os.path.join(data_dir, 'train')}/<class>/ for "
                "each class, with its training images")
    folders = data.class_folders(data_dir)
    if any(data.images_below(os.path.join(data_dir, name)) for name in folders[:3]):
        return (f"its folders ({', '.join(folders[:3])}, ...) hold images: "
                "move each class folder into train/ and some of its images into val/<class>/")
    return expected


def split_renames(data_dir):
    """The renames that would give data_dir its train/ and val/ from folders named otherwise
    (Train, training, Validation, valid, ...): ["Train/ to train/", ...]."""
    folders = {name.lower(): name for name in data.class_folders(data_dir)}
    renames = []
    for split, names in (("train", ("train", "training")), ("val", ("val", "validation", "valid"))):
        found = next((folders[name] for name in names if name in folders), None)
        if found and found != split:
            renames.append(f"{found}/ to {split}/")
    return renames


def listing(root, paths, labels):
    """What <split>_files.txt holds: each file's path under root, its label and its size in
    bytes (-1 if it cannot be read), a line each. The size tells a file replaced under the same
    name from the one decoded (an image exported again is another size but for a few bytes in a
    billion); unlike a time of change it survives a copy of the folder."""
    return "".join(f"{os.path.relpath(path, root)}\t{label}\t{file_size(path)}\n"
                   for path, label in zip(paths, labels))


def file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def same_files(cache, split, root, paths, labels):
    """Whether the cache's split was made from exactly these files and labels."""
    files_path = os.path.join(cache, f"{split}_files.txt")
    images_path = os.path.join(cache, f"{split}_images.npy")
    if not (os.path.exists(files_path) and os.path.exists(images_path)):
        return False
    made, now = read_text(files_path), listing(root, paths, labels)
    if made.count("\t") == made.count("\n"):     # one tab a line: made before sizes were listed
        now = "".join(line.rsplit("\t", 1)[0] + "\n" for line in now.split("\n")[:-1])
    return made == now


def prepare_split(cache, manifest, split, root, paths, labels, same, workers, limit, log):
    """Decode one split into the cache, going on from where an earlier run stopped; at most
    `limit` files now. `same`: whether the cache's split was made from these files (same_files).
    Updates and saves the manifest; returns the number of files tried."""
    size = manifest["size"]
    prefix = os.path.join(cache, split)
    files_path, images_path = f"{prefix}_files.txt", f"{prefix}_images.npy"
    labels_path, done_path = f"{prefix}_labels.npy", f"{prefix}_done.npy"
    entry = manifest["splits"].get(split, {})
    if same and entry.get("complete"):
        log(f"  {split}: prepared before ({entry['images']} images, {entry['skipped']} skipped)")
        return 0
    if same and os.path.exists(done_path):
        images = open_memmap(images_path, mode="r+")
        done = numpy.load(done_path)
        log(f"  {split}: resuming, {int(done.sum())} of {len(paths)} images were done before")
    else:
        if entry:
            log(f"  {split}: the files under {root} changed since the cache was made; "
                "preparing them again")
        if split == "train":
            manifest["statistics"] = False
        # A new file, not the old one cut short: a training that maps the old one (another run
        # on this folder) keeps reading it until it ends; rewritten in place, its next read of
        # a row past the new end was a bus error, and the rows before it other images.
        with contextlib.suppress(FileNotFoundError):
            os.remove(images_path)
        images = open_memmap(images_path, mode="w+", dtype=numpy.uint8,
                             shape=(len(paths), 3, size, size))
        done = numpy.zeros(len(paths), bool)
        write_atomically(done_path, lambda f: numpy.save(f, done))
        write_text(files_path, listing(root, paths, labels))  # last: says the two above belong
    manifest["splits"][split] = {"files": len(paths), "complete": False}
    write_manifest(cache, manifest)

    todo = numpy.flatnonzero(~done)
    finishing = limit is None or limit >= len(todo)
    todo = todo if finishing else todo[:limit]
    progress = Progress(split, done, len(todo), images_path, done_path, log)
    try:
        decode_rows(images, images_path, todo, paths, size, workers, progress)
    finally:
        progress.save()
    if not finishing:
        log(f"  {split}: stopped after {limit} images (--limit); {int(done.sum())} of "
            f"{len(paths)} done; run the same command again to go on")
        return len(todo)

    count = int(done.sum())
    bad = sorted([paths[i], reason] for i, reason in progress.failed)
    if count == 0:
        manifest["splits"][split]["bad"] = bad
        write_manifest(cache, manifest)
        raise ValueError(f"none of the {len(paths)} files under {root} could be decoded "
                         f"(see {os.path.join(cache, 'bad_files.txt')})")
    # Every row is written or failed. Sources and targets of the filling never overlap, so a
    # crash here is repaired by rerunning.
    holes, tails = filling(done)
    for hole, tail in zip(holes, tails):
        images[hole] = images[tail]
    images.flush()
    labels = labels.copy()
    labels[holes] = labels[tails]
    write_atomically(labels_path, lambda f: numpy.save(f, labels[:count]))
    manifest["splits"][split] = {"files": len(paths), "images": count, "skipped": len(bad),
                                 "complete": True, "bad": bad,
                                 "bad_rows": sorted(int(i) for i, _ in progress.failed)}
    write_manifest(cache, manifest)
    os.remove(done_path)
    return len(todo)


def write_manifest(cache, manifest):
    write_text(os.path.join(cache, MANIFEST), json.dumps(manifest, indent=1))
    bad = [pair for split in SPLITS for pair in manifest["splits"].get(split, {}).get("bad", [])]
    write_text(os.path.join(cache, "bad_files.txt"), "".join(f"{p}\t{r}\n" for p, r in bad))


def store_statistics(cache, manifest, log):
    """mean.npy and pca.npz of the training images, read chunk by chunk from the memmap."""
    train = open_split(cache, "train")
    log(f"  train: mean image and RGB principal components of {len(train)} images")
    aug = data.Augmentation.of(train.images)
    write_atomically(os.path.join(cache, "mean.npy"), lambda f: numpy.save(f, aug.mean))
    write_atomically(os.path.join(cache, "pca.npz"), lambda f: numpy.savez(
        f, eigenvalues=aug.eigenvalues, eigenvectors=aug.eigenvectors))
    manifest["statistics"] = True
    write_manifest(cache, manifest)


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """Within this block SIGTERM (a time limit, Slurm, kill) raises KeyboardInterrupt, as Ctrl-C
    does, so that the rows decoded so far are saved. Only Python's main thread sets handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def locked(cache, log):
    """The cache folder to this process alone within the block: a second process that prepares
    it at the same time (two runs started at once on one folder) waits here, then finds done
    what the first did. A POSIX record lock (lockf) on cache/prepare.lock: it belongs to this
    process alone, not to the decoding workers it forks (an flock would pass to them, and a
    killed preparation's orphaned workers would hold it), and the system releases it when the
    process ends, however. Where it cannot be had (a read-only cache, a file system without
    locks) the work goes on without it."""
    try:
        lock = open(os.path.join(cache, "prepare.lock"), "a")
    except OSError:                 # read-only: nothing will be written to compete for
        yield
        return
    with lock:
        if not lock_now(lock, cache, "two runs preparing it at once would write over each "
                        "other", log):
            log(f"waiting for another process that prepares {cache}")
            fcntl.lockf(lock, fcntl.LOCK_EX)
        yield


def lock_now(lock, folder, risk, log):
    """Take a POSIX record lock (lockf) on the open file `lock` without waiting: False where
    another process holds it. On a file system without locks (ENOLCK, EOPNOTSUPP) `log` is told
    the `risk` of going on without, and the work does (True)."""
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):         # held by another process
            return False
        log(f"note: {folder} cannot be locked ({error.strerror}): {risk}")
    return True


def prepare(data_dir, cache, size=256, workers=None, limit=None, log=print, found=None,
            option="--out"):
    """Prepare (or go on preparing) the cache of data_dir/train and data_dir/val at size x size;
    returns the manifest. limit: decode at most this many files now (a later call goes on).
    found: what find_sources(data_dir) returned, when the caller has listed the folder. option:
    the calling command's option that chooses the cache folder, named when it cannot be made."""
    sources, classes = found or find_sources(data_dir, log)
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the cache folder {cache} ({error.strerror}); "
                      f"pass a writable folder with {option}") from None
    with locked(cache, log):
        return prepare_locked(data_dir, cache, sources, classes, size, workers, limit, log,
                              option)


def prepare_locked(data_dir, cache, sources, classes, size, workers, limit, log, option):
    """prepare()'s work, by the one process that holds the cache's lock."""
    manifest = read_manifest(cache) if is_cache(cache) else {"splits": {}}
    if manifest.get("size", size) != size:
        raise ValueError(f"the cache {cache} holds {manifest['size']}x{manifest['size']} images, "
                         f"not {size}x{size}; choose another {option} for this size")
    # Each split's files compared once (a stat of every file): here and in prepare_split.
    same = {split: same_files(cache, split, *sources[split]) for split in SPLITS}
    if is_complete(manifest) and manifest["classes"] == classes and all(same.values()):
        # Nothing written: a cache on a read-only file system may be up to date too.
        splits = [manifest["splits"][split] for split in SPLITS]
        log(f"{cache}: up to date with {data_dir} ({sum(s['images'] for s in splits)} images, "
            f"{sum(s['skipped'] for s in splits)} skipped); nothing to decode")
        return manifest
    if not os.access(cache, os.W_OK):
        raise OSError(f"cannot write to the cache folder {cache} (read-only), and it is not up "
                      f"to date with {data_dir}; pass a writable folder with {option}")
    manifest.update(size=size, source=os.path.abspath(data_dir), classes=classes)
    write_text(os.path.join(cache, "classes.txt"), "".join(name + "\n" for name in classes))
    workers = workers or os.cpu_count()
    log(f"preparing {data_dir} into {cache}: {len(sources['train'][1])} train and "
        f"{len(sources['val'][1])} val files, {len(classes)} classes, {size}x{size}, {workers} "
        "worker process(es)")
    for root, _, _ in sources.values():
        loose = data.loose_images(root) if os.path.isdir(root) else []
        if loose:
            log(f"note: {len(loose)} image(s) directly in {root} ({', '.join(loose[:3])}"
                f"{', ...' if len(loose) > 3 else ''}) are in no class folder and are not used; "
                f"move each into {root}/<class>/")
    started, tried = time.perf_counter(), 0
    with sigterm_as_ctrl_c():
        for split, (root, paths, labels) in sources.items():
            left = None if limit is None else limit - tried
            tried += prepare_split(cache, manifest, split, root, paths, labels, same[split],
                                   workers, left, log)
    if manifest["splits"]["train"]["complete"] and not manifest.get("statistics"):
        store_statistics(cache, manifest, log)
    if is_complete(manifest):
        splits = [manifest["splits"][split] for split in SPLITS]
        seconds = time.perf_counter() - started
        skipped = sum(s['skipped'] for s in splits)
        listed = f" (see {os.path.join(cache, 'bad_files.txt')})" if skipped else ""
        log(f"{cache}: {sum(s['images'] for s in splits)} images, {skipped} skipped{listed}; "
            f"{tried} decoded now in {seconds:.1f}s")
    return manifest


# ---- reading a cache --------------------------------------------------------------------------

@dataclass
class Cache:
    train: data.Split
    val: data.Split
    classes: list
    aug: data.Augmentation       # what the training set says about colour
    bad: list                    # (path, reason) of the skipped files
    folder: str = None           # where the cache is (None: data drawn in memory)


def open_split(cache, split):
    """A split of the cache, its images memory-mapped (read from disk as they are used)."""
    prefix = os.path.join(cache, split)
    labels = numpy.load(f"{prefix}_labels.npy")
    images = numpy.load(f"{prefix}_images.npy", mmap_mode="r")[:len(labels)]   # good rows only
    return data.Split(images, labels)


def filling(good):
    """How a split with the rows `good` (bool, False where a file failed) is made whole: the
    failed rows among the first good.sum() (`holes`) take the good rows after them (`tails`),
    so that the good images are the first rows."""
    count = int(good.sum())
    return numpy.flatnonzero(~good[:count]), count + numpy.flatnonzero(good[count:])


def row_files(cache, split):
    """The file (path below DIR/<split>) of every row of a split's images, as prepare_split
    left them: the files in listing order, the skipped ones dropped, and the rows of skipped
    files among the first `images` filled with the last good files. None for a cache that
    skipped files but predates the record of which rows they were."""
    # Lines end at "\n" only (a file name may hold "\u2028"); the path is what comes before the
    # last one or two tabs (label, and size since sizes are listed): it may hold a tab.
    listing = [line.rsplit("\t", 2)[0] for line in read_text(
        os.path.join(cache, f"{split}_files.txt")).split("\n")[:-1]]
    entry = read_manifest(cache)["splits"][split]
    if "bad_rows" not in entry and entry["skipped"]:
        return None
    good = numpy.ones(len(listing), bool)
    good[entry.get("bad_rows", [])] = False
    holes, tails = filling(good)
    rows = listing[:int(good.sum())]
    for hole, tail in zip(holes, tails):
        rows[hole] = listing[tail]
    return rows


def open_cache(cache, size=None, training=True, source=None):
    """The prepared splits (memory-mapped, nothing is loaded here), classes, mean and PCA;
    `size`: the side the caller needs, refused in one sentence when the cache holds another,
    which says what else to do when `training` (another preset) or not (evaluating a
    checkpoint: its image folder). `source`: the image folder the caller was given, which the
    commands its messages suggest name; by default the one the cache was made from, or where
    it is now (a moved folder keeps its cache)."""
    manifest = read_manifest(cache)
    source = source or manifest.get("source")
    if not (source and os.path.isdir(source)):
        above = os.path.dirname(os.path.abspath(cache))
        source = above if os.path.isdir(os.path.join(above, "train")) else None
    source = quote(source) if source else "DIR"
    if not is_complete(manifest):
        raise ValueError(f"the cache {cache} is unfinished; finish it with python -m "
                         f"alexnet.prepare --data {source} --out {quote(cache)}")
    stored = manifest["size"]
    if size is not None and stored != size:
        fits = [name for name, preset in PRESETS.items() if preset.stored_size() == stored]
        instead = ("or pass the image folder itself as --data, decoded at the checkpoint's size"
                   if not training else f"or train the preset of this cache's size (--preset "
                   f"{fits[0]})" if fits else f"no preset takes {stored}x{stored} images")
        raise ValueError(f"the cache {cache} holds {stored}x{stored} images but this network "
                         f"needs {size}x{size}: make a cache of that size beside it (python -m "
                         f"alexnet.prepare --data {source} --size {size} --out OTHER_FOLDER), "
                         f"{instead}")
    with numpy.load(os.path.join(cache, "pca.npz")) as pca:
        aug = data.Augmentation(numpy.load(os.path.join(cache, "mean.npy")),
                                pca["eigenvalues"], pca["eigenvectors"])
    bad = [tuple(pair) for split in SPLITS for pair in manifest["splits"][split]["bad"]]
    return Cache(open_split(cache, "train"), open_split(cache, "val"), manifest["classes"], aug,
                 bad, cache)


def cache_for(data_dir, size, cache=None, workers=None, log=print, may_prepare=True,
              compare=False):
    """The cache to train from: data_dir itself when it is one, else `cache` (default
    default_cache(data_dir, size)), prepared first unless a finished one is there (or refused
    in one sentence when not may_prepare: a process that must find it ready). With `compare`
    (a new training run) a finished cache is used only if it was made from the files data_dir
    holds now, else decoded again where it can be written; without, it is used as it is (a
    resumed run goes on with the data it was trained on)."""
    if is_cache(data_dir):
        return data_dir
    cache = cache or default_cache(data_dir, size)
    ready = is_cache(cache) and is_complete(read_manifest(cache))
    found = None
    if ready and compare:
        try:
            found = find_sources(data_dir, log)         # 1 s for 130,000 files
        except (OSError, ValueError) as error:          # the images deleted once decoded
            log(f"note: the cache {cache} is used as it is: {error}")
    if found:
        if not all(same_files(cache, split, *files) for split, files in found[0].items()):
            changed = f"the files under {data_dir} are not those the cache {cache} was made from"
            if os.access(cache, os.W_OK):
                log(f"data: {changed} (added, removed, renamed or replaced): decoding them again")
                ready = False
            else:
                log(f"note: {changed}, and it cannot be written: training on it as it is (pass "
                    "--cache with a writable folder to decode the files as they are now)")
    if ready:
        log(f"data: using the cache {cache}")
    elif not may_prepare:
        raise ValueError(f"the cache {cache} is not ready on this machine; keep {data_dir} on a "
                         "file system that every machine shares, or run python -m "
                         f"alexnet.prepare --data {quote(data_dir)} --out {quote(cache)} on each "
                         "machine first")
    else:
        prepare(data_dir, cache, size, workers, log=log, found=found,    # not listed twice
                option="--cache")                  # train's and show's option
    return cache


# ---- sorting a flat validation folder ---------------------------------------------------------

def read_label_list(path):
    """[(file, class)] from LOC_val_solution.csv (header ImageId,PredictionString), from the
    devkit's ILSVRC2012_validation_ground_truth.txt (a class number a line, read with the
    meta.mat beside it: alexnet.devkit) or from lines `file class` separated by whitespace or a
    comma."""
    with open(path, encoding="utf-8-sig") as f:          # -sig: as a spreadsheet saves it
        lines = f.read().splitlines()
    if devkit.is_ground_truth(lines):
        return devkit.ground_truth(path, lines)
    loc = bool(lines) and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring")
    pairs = []
    for number, line in enumerate(lines[1:] if loc else lines, 2 if loc else 1):
        if not line.strip():
            continue
        if loc:
            name, _, prediction = line.partition(",")
            words = [name.strip()] + prediction.split()[:1]
        else:
            words = line.replace(",", " ").split()
        if len(words) != 2:
            raise ValueError(f"line {number} of {path} is not a 'file class' pair: {line!r}")
        name, label = words
        if label.startswith(".") or "/" in label or os.sep in label:
            raise ValueError(f"line {number} of {path} names the class {label!r}, which cannot "
                             "be a folder name")
        pairs.append((name, label))
    if not pairs:
        raise ValueError(f"{path} lists no files; expected 'file class' lines or ImageNet's "
                         "LOC_val_solution.csv")
    return pairs


def unknown_classes(labels_path, val_dir, labels):
    """Refuse, before anything is moved, a list whose classes are not folders of the train/
    beside val_dir (when there is one): numbers, as Caffe's val.txt gives them, would become
    classes of their own."""
    train = os.path.join(os.path.dirname(os.path.abspath(val_dir)), "train")
    known = set(data.class_folders(train)) if os.path.isdir(train) else set()
    unknown = sorted(labels - known)
    if not known or not unknown:
        return
    some = f"{', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}"
    if all(label.isdigit() for label in labels):
        script = "NR == FNR {name[NR - 1] = $1; next} {print $1, name[$2]}"
        fix = (f"; they are numbers: as in Caffe's val.txt, which counts the sorted WordNet ids "
               f"of its synsets.txt from 0, write them as names first with awk '{script}' "
               f"synsets.txt {quote(labels_path)} > val_labels.txt, and pass --val-labels "
               "val_labels.txt")
    else:
        fix = "; pass the list that names the training set's class folders"
    raise ValueError(f"{labels_path} names classes that {train} has no folder for ({some}); "
                     f"nothing was moved{fix}")


def sort_validation(labels_path, val_dir, dry_run=False, log=print):
    """Move the images of the flat folder val_dir into val_dir/<class>/ as labels_path says.
    Images already in their class folder are left there, so an interrupted sort can be rerun."""
    if not os.path.isdir(val_dir):
        raise FileNotFoundError(f"validation folder {val_dir} does not exist; pass the folder "
                                "of validation images as --data")
    if not os.path.isfile(labels_path):
        raise FileNotFoundError(f"label list {labels_path} does not exist")
    pairs = read_label_list(labels_path)
    unknown_classes(labels_path, val_dir, {label for _, label in pairs})

    def by_name_and_stem(names):                # LOC lists ImageId without its extension
        return {**{os.path.splitext(f)[0]: f for f in names}, **{f: f for f in names}}

    loose = by_name_and_stem(data.loose_images(val_dir))
    placed = {label: by_name_and_stem(data.loose_images(os.path.join(val_dir, label)))
              for label in {label for _, label in pairs}
              if os.path.isdir(os.path.join(val_dir, label))}
    moves, missing, in_place = [], [], 0
    for name, label in pairs:
        if name in loose:
            moves.append((loose[name], label))
        elif name in placed.get(label, {}):
            in_place += 1
        else:
            missing.append(name)
    if not loose and not in_place:
        raise ValueError(f"{val_dir} holds no images (extensions: {data.SOME_EXTENSIONS}); pass "
                         "the flat validation folder")
    if missing:
        raise FileNotFoundError(f"{len(missing)} files listed in {labels_path} are not in "
                                f"{val_dir} (e.g. {', '.join(missing[:3])}); pass the folder "
                                "that the list describes")
    for name, label in moves:
        if dry_run:
            log(f"would move {name} -> {label}/{name}")
        else:
            os.makedirs(os.path.join(val_dir, label), exist_ok=True)
            os.rename(os.path.join(val_dir, name), os.path.join(val_dir, label, name))
    unlisted = len(set(loose.values()) - {name for name, _ in moves})
    log(f"{'would move' if dry_run else 'moved'} {len(moves)} images into "
        f"{len({label for _, label in moves})} class folders of {val_dir}"
        f"{f'; {in_place} were in place already' if in_place else ''}"
        f"{f'; {unlisted} images are not in the list and stay where they are' if unlisted else ''}")


# ---- command line -----------------------------------------------------------------------------

SIZES = {name: preset.stored_size() for name, preset in PRESETS.items()}   # paper: 256, ...


def preset_size(text):
    """An argparse type: the stored size of one of the presets, refused in one sentence else."""
    size = whole(1)(text)
    if size not in SIZES.values():
        sizes = ", ".join(f"{s} (--preset {n})" for n, s in SIZES.items())
        raise argparse.ArgumentTypeError(f"{size} is not a preset's size: use {sizes}")
    return size


def parse_args(argv=None):
    p = Parser(prog="python -m alexnet.prepare", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", required=True, help="image folder with "
                   "train/<class>/* and val/<class>/*; with --val-labels: the flat folder of "
                   "validation images")
    p.add_argument("--out", metavar="CACHE", help="folder the cache is written to (default "
                   "DIR/.alexnet-cache-<size>, where training looks first)")
    p.add_argument("--size", type=preset_size, help="side of the stored images, a preset's: "
                   f"{', '.join(f'{s} ({n})' for n, s in SIZES.items())} (default: the one "
                   "python -m alexnet.train takes on this machine: 256 with a GPU, else 112)")
    p.add_argument("--workers", type=whole(1),
                   help="decoding processes (default: one per CPU core)")
    p.add_argument("--limit", type=whole(1), help="decode at most this many images now; the same "
                   "command goes on later")
    p.add_argument("--val-labels", metavar="FILE", help="sort the flat folder --data into class "
                   "folders from this list (LOC_val_solution.csv, the devkit's "
                   "ILSVRC2012_validation_ground_truth.txt or 'file class' lines)")
    p.add_argument("--dry-run", action="store_true", help="with --val-labels: print the moves only")
    args = p.parse_args(argv)
    if args.dry_run and not args.val_labels:
        p.error("--dry-run previews the moves of --val-labels; without it there is nothing to "
                "preview (prepare itself can be stopped and goes on where it stopped)")
    if args.size is None:
        args.size = SIZES[auto_preset()]
    return args


def class_names_above(folder):
    """' --class-names FILE' for a file of class names in a folder above `folder` (Kaggle's
    LOC_synset_mapping.txt, three levels above ILSVRC/Data/CLS-LOC), which training does not
    look for; '' when there is none, or when `folder` holds one itself (training finds that)."""
    if data.find_class_names(folder):
        return ""
    for up in range(1, 4):
        found = data.find_class_names(os.path.join(folder, *[os.pardir] * up))
        if found:
            return f" --class-names {quote(os.path.normpath(found))}"
    return ""


def run(args):
    if args.val_labels:
        sort_validation(args.val_labels, args.data, args.dry_run)
        return
    cache = args.out or default_cache(args.data, args.size)
    if is_complete(prepare(args.data, cache, args.size, args.workers, args.limit)):
        # Training looks for DIR's default cache only: another --out is named with --cache.
        where = "" if args.out is None else f" --cache {quote(cache)}"
        preset = next(name for name, size in SIZES.items() if size == args.size)
        preset = "" if preset == auto_preset() else f" --preset {preset}"
        print(f"train on it with python -m alexnet.train --data {quote(args.data)}{where}{preset}"
              f"{class_names_above(args.data)}")


def main(argv=None):
    args = parse_args(argv)
    return run_command(lambda: run(args), "the work done so far is saved: run the same "
                       "command to go on")


if __name__ == "__main__":
    sys.exit(main())
