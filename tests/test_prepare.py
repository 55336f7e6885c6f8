"""Preparing an image folder into a memory-mapped cache (alexnet/prepare.py), sorting a flat
validation folder, training from the cache, and the batches made on either device."""
import fcntl
import io
import multiprocessing
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from shlex import quote

import numpy
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from alexnet import data, prepare, synthetic, train
from alexnet.model import PRESETS
from minigrad import backend

SIZE = PRESETS["tiny"].stored_size()        # 39
BAD = {"truncated.jpg", "empty.jpg", "text.jpg", "broken.jpg"}


def noise(mode, size, seed):
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = numpy.random.default_rng(seed).integers(0, 256, (size[1], size[0], bands), numpy.uint8)
    return Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels).convert(mode)


def halves(size, first, second):
    """An RGB image whose left half is `first` and right half `second`."""
    image = Image.new("RGB", size, second)
    image.paste(first, (0, 0, size[0] // 2, size[1]))
    return image


def write_awkward_folder(root):
    """train/{cat,dog} and val/{cat,dog} with every image mode, name and breakage we accept or
    must reject; hidden files and folders that must be ignored."""
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    for folder in (cat, dog, root / "val" / "cat", root / "val" / "dog",
                   root / "train" / ".hidden_class", cat / ".thumbnails"):
        folder.mkdir(parents=True)
    noise("RGB", (50, 40), 0).save(cat / "rgb.jpg")
    noise("L", (40, 50), 1).save(cat / "gray.JPG")
    noise("P", (30, 30), 2).save(cat / "palette.gif")
    noise("RGBA", (30, 30), 3).save(cat / "rgba.png")
    Image.new("LA", (30, 30), (100, 255)).save(cat / "la.png")
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(cat / "cmyk.jpeg")
    gradient = numpy.tile(numpy.linspace(0, 65535, 64).astype(numpy.uint16), (48, 1))
    Image.fromarray(gradient).save(cat / "deep.png")                  # 16-bit grey, mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6                                                  # Orientation: rotate 90 CW
    halves((40, 20), (255, 0, 0), (0, 0, 255)).save(cat / "rotated.jpg", exif=exif)
    noise("RGB", (30, 30), 4).save(cat / "png_named.JPEG", format="PNG")
    Image.new("RGB", (1, 1), (9, 99, 199)).save(cat / "tiny.png")
    noise("RGB", (2000, 10), 5).save(cat / "wide.png")
    whole = io.BytesIO()
    noise("RGB", (64, 64), 6).save(whole, "JPEG", quality=95)
    (cat / "truncated.jpg").write_bytes(whole.getvalue()[:len(whole.getvalue()) // 2])
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "text.jpg").write_text("this is not an image\n")
    (cat / ".hidden.jpg").write_text("ignored")
    (cat / ".thumbnails" / "thumb.jpg").write_text("ignored")
    (cat / "notes.txt").write_text("ignored")
    (root / "train" / ".hidden_class" / "a.jpg").write_text("ignored")
    for i in range(4):
        noise("RGB", (40 + i, 36), 10 + i).save(dog / f"dog{i}.jpg")
    for i, cls in enumerate(("cat", "cat", "dog", "dog")):
        noise("RGB", (45, 45), 20 + i).save(root / "val" / cls / f"v{i}.png")
    (root / "val" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nothing more")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_awkward_folder(root)
    return root


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    """The folder prepared in one go by two worker processes: (cache, log lines)."""
    cache, messages = str(tmp_path_factory.mktemp("cache")), []
    prepare.prepare(str(folder), cache, SIZE, workers=2, log=messages.append)
    return cache, messages


def cache_arrays(cache):
    """Every file of a cache that holds data, as arrays (rows beyond the good ones excluded)."""
    opened = prepare.open_cache(cache)
    return {"train_images": numpy.asarray(opened.train.images), "train_labels": opened.train.labels,
            "val_images": numpy.asarray(opened.val.images), "val_labels": opened.val.labels,
            "mean": opened.aug.mean, "eigenvalues": opened.aug.eigenvalues,
            "eigenvectors": opened.aug.eigenvectors}


def assert_same_cache(a, b):
    for name, value in cache_arrays(a).items():
        numpy.testing.assert_array_equal(value, cache_arrays(b)[name], err_msg=name)


# ---- decoding ---------------------------------------------------------------------------------

def test_awkward_images_decode_to_what_they_show(folder):
    cat = folder / "train" / "cat"
    deep = data.load_image(cat / "deep.png", SIZE)               # 16 bits scaled, not clipped
    assert abs(deep.mean() - 127.5) < 5 and deep[0, 0, 0] < 60 and deep[0, 0, -1] > 195
    rotated = data.load_image(cat / "rotated.jpg", SIZE)         # the left half turned to the top
    assert rotated[0, :3].mean() > 200 and rotated[2, :3].mean() < 50
    assert rotated[2, -3:].mean() > 200 and rotated[0, -3:].mean() < 50
    gray = data.load_image(cat / "gray.JPG", SIZE)
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()
    assert tuple(data.load_image(cat / "la.png", SIZE)[:, 5, 5]) == (100, 100, 100)
    red = data.load_image(cat / "cmyk.jpeg", SIZE).reshape(3, -1).mean(axis=1)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert tuple(data.load_image(cat / "tiny.png", SIZE)[:, 20, 20]) == (9, 99, 199)
    assert data.load_image(cat / "wide.png", SIZE).shape == (3, SIZE, SIZE)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(OSError):
        data.load_image(cat / "truncated.jpg", SIZE)


def test_a_float_image_of_0_to_1_is_as_bright_as_its_16_bit_twin(folder, tmp_path):
    """A float TIFF (mode F) holding 0..1, as scientific and HDR tools write them, is scaled
    as a 16-bit one holding 0..65535; Pillow's own conversion gives black."""
    deep = Image.open(folder / "train" / "cat" / "deep.png")
    Image.fromarray(numpy.asarray(deep, numpy.float32) / 65535).save(tmp_path / "unit.tif")
    unit = data.load_image(tmp_path / "unit.tif", SIZE).astype(int)
    assert numpy.abs(unit - data.load_image(folder / "train" / "cat" / "deep.png", SIZE)).max() <= 1


def test_huge_images_are_decoded_quietly_and_pillow_keeps_its_guard_elsewhere(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)       # as 89 megapixels are
    noise("RGB", (100, 100), 0).save(tmp_path / "scan.jpg")      # over twice: an error
    noise("RGB", (40, 30), 1).save(tmp_path / "photo.png")       # over once: a warning
    paths = [str(tmp_path / "scan.jpg"), str(tmp_path / "photo.png")] * 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, good, bad = data.decode_files(paths, SIZE, workers=4)
    assert good.all() and not bad
    assert Image.MAX_IMAGE_PIXELS == 1000                        # put back for other code
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "scan.jpg")


def test_only_the_central_crop_is_resampled_and_it_matches_rescaling_then_cropping(
        tmp_path, monkeypatch):
    """A strip of 2x20000 pixels rescaled whole to a shorter side of 32 would be 32x320000
    (256x15 million at 1x60000: gigabytes); the crop's box alone is resampled. Ordinary images
    come out as rescaled whole and cropped, to 1 level."""
    noise("RGB", (20000, 2), 0).save(tmp_path / "strip.png")
    sizes, resize = [], Image.Image.resize

    def spied(image, size, *args, **kwargs):
        sizes.append(size)
        return resize(image, size, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "resize", spied)
    assert data.load_image(tmp_path / "strip.png", 32).shape == (3, 32, 32)
    assert sizes == [(32, 32)]
    for n, (w, h, size) in enumerate([(300, 200, 112), (97, 301, 39), (640, 480, 256)]):
        image = noise("RGB", (w, h), n)
        image.save(tmp_path / f"{n}.png")
        scale = size / min(w, h)
        whole = resize(image, (max(size, round(w * scale)), max(size, round(h * scale))),
                       Image.BILINEAR)
        left, top = (whole.width - size) // 2, (whole.height - size) // 2
        expected = numpy.asarray(whole.crop((left, top, left + size, top + size)), int)
        got = data.load_image(tmp_path / f"{n}.png", size).transpose(1, 2, 0)
        assert numpy.abs(got - expected).max() <= 1


def test_a_named_pipe_is_skipped_as_not_a_regular_file(tmp_path):
    """Reading a named pipe waits for a writer for ever: it is a bad file, named."""
    noise("RGB", (40, 30), 0).save(tmp_path / "photo.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    paths = [str(tmp_path / "pipe.jpg"), str(tmp_path / "photo.png")]

    def end_of_pipe():               # where the pipe is read, it ends (empty) within 10 s
        for _ in range(100):
            try:
                return os.close(os.open(paths[0], os.O_WRONLY | os.O_NONBLOCK))
            except OSError:          # no reader (yet)
                time.sleep(0.1)
    threading.Thread(target=end_of_pipe, daemon=True).start()
    _, good, bad = data.decode_files(paths, 12, workers=1)
    assert good.tolist() == [False, True]
    assert bad == [(paths[0], "ValueError: not a regular file (a named pipe, socket or device)")]


def _stuck_or_dead(images, indices, paths, size):
    """decode_into for the tests below, in a worker process (forked: the patch carries over)."""
    if "stuck" in paths[0]:
        time.sleep(60)
    if "dead" in paths[0]:
        os._exit(9)                               # as the OOM killer ends a process
    return list(indices), []


def test_an_interrupt_does_not_wait_for_a_worker_that_is_stuck(tmp_path, monkeypatch):
    """Ctrl-C while a worker reads a file that never ends: the work in flight is not counted
    done, so the workers are ended at once rather than waited for."""
    monkeypatch.setattr(data, "decode_into", _stuck_or_dead)
    numpy.save(tmp_path / "images.npy", numpy.zeros((2 * prepare.CHUNK, 3, 4, 4), numpy.uint8))
    paths = ["stuck"] * prepare.CHUNK + ["fine"] * prepare.CHUNK

    def on_chunk(written, failed):
        raise KeyboardInterrupt
    before = set(multiprocessing.active_children())       # an earlier test's, still ending
    tick = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        prepare.decode_rows(None, str(tmp_path / "images.npy"), numpy.arange(len(paths)), paths,
                            4, 2, on_chunk)
    assert time.perf_counter() - tick < 30              # not the stuck worker's 60 s
    # Killed, the workers are gone at once; the pool's own thread may reap one a moment later.
    for _ in range(100):
        if set(multiprocessing.active_children()) <= before:
            break
        time.sleep(0.1)
    assert set(multiprocessing.active_children()) <= before


def test_a_worker_that_dies_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "decode_into", _stuck_or_dead)
    numpy.save(tmp_path / "images.npy", numpy.zeros((prepare.CHUNK, 3, 4, 4), numpy.uint8))
    with pytest.raises(ChildProcessError, match="^a decoding worker process ended abruptly "
                       r"\(killed, perhaps for want of memory\); what was decoded is saved: run "
                       "the same command to go on, with fewer --workers if memory is short$"):
        prepare.decode_rows(None, str(tmp_path / "images.npy"), numpy.arange(prepare.CHUNK),
                            ["dead"] * prepare.CHUNK, 4, 2, lambda written, failed: None)


def test_an_image_of_more_pixels_than_memory_allows_is_skipped_by_name(tmp_path, monkeypatch):
    """A gigapixel is the most (data.MAX_PIXELS): here 1,000 pixels. A JPEG is counted after
    its draft (1/8 of 200x200 here), so a big photo still decodes."""
    monkeypatch.setattr(data, "MAX_PIXELS", 1000)
    noise("RGB", (40, 30), 0).save(tmp_path / "huge.png")
    noise("RGB", (200, 200), 1).save(tmp_path / "photo.jpg")
    paths = [str(tmp_path / "huge.png"), str(tmp_path / "photo.jpg")]
    _, good, bad = data.decode_files(paths, 12, workers=1)
    assert good.tolist() == [False, True]
    assert bad == [(paths[0], "ValueError: 40x30 pixels, more than the 0.001 megapixels an image may "
                    "have (a corrupt header, or an image to scale down)")]


def test_a_big_jpeg_is_drafted_to_twice_the_size_and_decodes_near_a_full_decode(tmp_path,
                                                                               monkeypatch):
    y, x = numpy.mgrid[0:240, 0:320]
    waves = numpy.stack([128 + 100 * numpy.sin(x / 14), 128 + 100 * numpy.cos(y / 8),
                         128 + 60 * numpy.sin((x + y) / 4)], -1)               # (240, 320, 3)
    Image.fromarray(waves.astype(numpy.uint8)).save(tmp_path / "big.jpg", quality=90)
    noise("RGB", (70, 60), 0).save(tmp_path / "small.jpg")
    draft, drafted = JpegImagePlugin.JpegImageFile.draft, []

    def spied(image, mode, size):
        result = draft(image, mode, size)
        drafted.append(image.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spied)
    quick = data.load_image(tmp_path / "big.jpg", SIZE).astype(int)
    data.load_image(tmp_path / "small.jpg", SIZE)
    assert drafted == [(160, 120), (70, 60)]       # 1/2 keeps 2 * 39; 70 x 60 is not drafted
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda image, mode, size: None)
    whole = data.load_image(tmp_path / "big.jpg", SIZE).astype(int)
    # Measured: 3 at most, 0.54 on average (a draft to 39 itself, 80 x 60 resized: 4 and 0.93).
    assert numpy.abs(quick - whole).max() <= 3 and numpy.abs(quick - whole).mean() < 0.7


def test_good_images_are_used_and_bad_ones_listed_by_name(folder, prepared):
    cache, messages = prepared
    manifest = prepare.read_manifest(cache)
    assert manifest["classes"] == ["cat", "dog"] and manifest["size"] == SIZE
    train_entry, val_entry = manifest["splits"]["train"], manifest["splits"]["val"]
    assert (train_entry["files"], train_entry["images"], train_entry["skipped"]) == (18, 15, 3)
    assert (val_entry["files"], val_entry["images"], val_entry["skipped"]) == (5, 4, 1)
    assert train_entry["complete"] and val_entry["complete"]
    assert not os.path.exists(os.path.join(cache, "train_done.npy"))
    with open(os.path.join(cache, "bad_files.txt")) as f:
        listed = [line.split("\t") for line in f.read().splitlines()]
    assert {os.path.basename(path) for path, _ in listed} == BAD and all(r for _, r in listed)
    with open(os.path.join(cache, "classes.txt")) as f:
        assert f.read() == "cat\ndog\n"
    assert any("19 images, 4 skipped (see" in m and "bad_files.txt" in m for m in messages)
    assert f"note: 1 file under {folder / 'train'} is not an image by its extension and was left " \
        "out (.txt: 1); give an image its format's extension (.jpg, .png, ...) to use it" in messages

    # The rows are the good files, each decoded as load_image does, with its own label; a bad
    # file's row was filled with a good one, so no row is blank.
    opened = prepare.open_cache(cache)
    paths, labels, _ = data.find_images(str(folder / "train"))
    expected = sorted((data.load_image(p, SIZE).tobytes(), int(label))
                      for p, label in zip(paths, labels) if os.path.basename(p) not in BAD)
    found = sorted((row.tobytes(), int(label))
                   for row, label in zip(opened.train.images, opened.train.labels))
    assert found == expected
    assert isinstance(opened.train.images, numpy.memmap)


def test_mean_and_pca_of_the_cache_equal_direct_numpy(prepared):
    opened = prepare.open_cache(prepared[0])
    images = numpy.asarray(opened.train.images)
    numpy.testing.assert_allclose(opened.aug.mean, images.mean(axis=0), rtol=1e-6)
    covariance = numpy.cov(images.transpose(0, 2, 3, 1).reshape(-1, 3).astype(numpy.float64),
                           rowvar=False)
    for value, vector in zip(opened.aug.eigenvalues, opened.aug.eigenvectors.T):
        numpy.testing.assert_allclose(covariance @ vector, value * vector, rtol=1e-4, atol=1e-3)


# ---- resuming ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_an_interrupted_preparation_resumes_with_the_missing_rows_only(folder, prepared, tmp_path,
                                                                         monkeypatch, stop):
    monkeypatch.setattr(prepare, "CHUNK", 4)
    monkeypatch.setattr(prepare, "SAVE_EVERY", 0.0)
    load_image, decoded = data.load_image, []

    def interrupted_after_ten(path, size):
        if len(decoded) == 10:
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)                 # a time limit, Slurm, kill
        decoded.append(os.path.basename(path))
        return load_image(path, size)

    cache = str(tmp_path / "cache")
    monkeypatch.setattr(data, "load_image", interrupted_after_ten)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(str(folder), cache, SIZE, workers=1, log=lambda message: None)
    assert signal.getsignal(signal.SIGTERM) is handler               # given back
    done = numpy.load(os.path.join(cache, "train_done.npy"))
    paths = data.find_images(str(folder / "train"))[0]
    first = [os.path.basename(p) for p in numpy.array(paths)[done]]
    assert len(first) == 8 - len(BAD & set(decoded[:8]))      # two whole chunks of four

    def counted(path, size):
        decoded.append(os.path.basename(path))
        return load_image(path, size)

    decoded.clear()
    monkeypatch.setattr(data, "load_image", counted)
    prepare.prepare(str(folder), cache, SIZE, workers=1, log=lambda message: None)
    assert not set(decoded) & set(first)                         # nothing decoded twice
    assert len(decoded) == 18 - len(first) + 5                   # the rest of train, all of val
    assert_same_cache(cache, prepared[0])


def test_a_second_process_preparing_the_same_cache_waits_for_the_first(folder, tmp_path):
    """Two runs started at once on one folder: the second waited for nothing, and the two wrote
    the same files at once (one failed renaming the other's manifest.json.tmp)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / "prepare.lock", "a") as lock:      # as the first process holds it
        fcntl.lockf(lock, fcntl.LOCK_EX)
        second = subprocess.Popen([sys.executable, "-m", "alexnet.prepare", "--data", str(folder),
                                   "--out", str(cache), "--size", str(SIZE), "--workers", "1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = second.stdout.readline()
        while line.startswith("note: "):                  # the folder holds a notes.txt
            line = second.stdout.readline()
        assert line == f"waiting for another process that prepares {cache}\n"
        assert second.poll() is None
    output = second.communicate(timeout=60)[0]
    assert second.returncode == 0, output
    assert prepare.is_complete(prepare.read_manifest(str(cache)))


def test_the_lock_ends_with_its_process_not_with_the_workers_it_forked(folder, tmp_path):
    """A preparation killed (kill -9, out of memory) leaves its decoding workers orphaned for a
    while: the lock must not pass to them, or the next preparation waits for ever."""
    cache = tmp_path / "cache"
    cache.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"""if True:
        import os, sys, time
        from alexnet import prepare
        with prepare.locked({str(cache)!r}, print):
            worker = os.fork()
            if worker == 0:                          # a worker: it outlives its parent
                time.sleep(60)
                os._exit(0)
            print(worker, flush=True)
            time.sleep(60)"""], stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    holder.kill()
    holder.wait()
    try:                                      # a time limit: waiting for ever is the bug
        said = subprocess.run([sys.executable, "-m", "alexnet.prepare", "--data", str(folder),
                               "--out", str(cache), "--size", str(SIZE), "--workers", "1"],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.kill(worker, signal.SIGKILL)
    assert said.returncode == 0 and "waiting" not in said.stdout, said.stdout


def test_phone_and_raw_photos_are_told_to_be_converted(tmp_path):
    """A HEIC or raw file is an image Pillow does not read: renaming it would not help."""
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            noise("RGB", (20, 20), 1).save(folder / "a.png")
    (tmp_path / "train" / "cat" / "IMG_1.HEIC").write_bytes(b"not decoded")
    said = []
    prepare.find_sources(str(tmp_path), said.append)
    assert said == [f"note: 1 file under {tmp_path / 'train'} is not an image by its extension "
                    "and was left out (.heic: 1); convert the .heic images, which Pillow does "
                    "not read, to JPEG or PNG"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_decoding_worker_ends_with_its_parent_even_a_killed_one(tmp_path):
    """kill -9 of a preparation left its workers, which ignore SIGINT and SIGTERM, waiting for
    work for ever, each holding its mapping of the images."""
    images = tmp_path / "images.npy"
    numpy.save(images, numpy.zeros((2, 3, 4, 4), numpy.uint8))
    parent = subprocess.Popen([sys.executable, "-c", f"""if True:
        import os, time
        from alexnet import prepare
        worker = os.fork()
        if worker == 0:
            prepare._start_worker({str(images)!r}, os.getppid())
            time.sleep(60)
            os._exit(0)
        print(worker, flush=True)
        time.sleep(60)"""], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(0.5)                                  # the worker has set itself up
    parent.kill()
    parent.wait()

    def alive(pid):                                  # a zombie is not (nobody may reap it here)
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    deadline = time.time() + 10
    while alive(worker) and time.time() < deadline:
        time.sleep(0.05)
    still = alive(worker)
    if still:
        os.kill(worker, signal.SIGKILL)
    assert not still


def test_limit_stops_early_and_the_same_command_goes_on(folder, prepared, tmp_path, capsys):
    command = ["--data", str(folder), "--out", str(tmp_path / "cache"), "--size", str(SIZE),
               "--workers", "1"]
    assert prepare.main(command + ["--limit", "5"]) == 0
    assert "run the same command again" in capsys.readouterr().out
    manifest = prepare.read_manifest(str(tmp_path / "cache"))
    assert not manifest["splits"]["train"]["complete"] and not prepare.is_complete(manifest)
    with pytest.raises(ValueError, match="unfinished"):
        prepare.open_cache(str(tmp_path / "cache"))
    assert prepare.main(command) == 0
    assert "resuming, 4 of 18 images" in capsys.readouterr().out   # the 5 tried, less empty.jpg
    assert_same_cache(str(tmp_path / "cache"), prepared[0])
    assert prepare.main(command) == 0                            # a finished cache: no work
    assert f"cache: up to date with {folder} (19 images, 4 skipped); nothing to decode" in \
        capsys.readouterr().out


def test_an_up_to_date_cache_is_not_written_and_a_stale_read_only_one_says_so(
        folder, tmp_path, monkeypatch, capsys):
    """Nothing is written to a cache that is up to date, so one on a read-only file system
    (a shared data set) passes too; one that would need writing says what to do."""
    raw = tmp_path / "raw"
    shutil.copytree(folder, raw)
    command = ["--data", str(raw), "--out", str(tmp_path / "cache"), "--size", str(SIZE),
               "--workers", "1"]
    assert prepare.main(command) == 0

    def written(path, *args):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(prepare, "write_text", written)
    monkeypatch.setattr(prepare, "write_atomically", written)
    assert prepare.main(command) == 0
    assert "up to date" in capsys.readouterr().out
    (raw / "train" / "extra").mkdir()              # a class more: the cache would be rewritten
    shutil.copy(next((raw / "val").rglob("*.jpg")), raw / "train" / "extra" / "1.jpg")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert prepare.main(command) == 1
    assert capsys.readouterr().err == f"error: cannot write to the cache folder " \
        f"{tmp_path / 'cache'} (read-only), and it is not up to date with {raw}; pass a " \
        "writable folder with --out\n"


def test_a_size_no_preset_takes_is_refused_and_the_default_is_trains(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare.main(["--data", str(tmp_path), "--size", "99999"])    # was 2.7 TB of zeros
    assert "argument --size: 99999 is not a preset's size: use 256 (--preset paper), 112 " \
        "(--preset small), 39 (--preset tiny)" in capsys.readouterr().err
    expected = PRESETS["paper" if backend.gpu_count() else "small"].stored_size()
    assert prepare.parse_args(["--data", str(tmp_path)]).size == expected


def test_prepare_ends_with_the_training_command_that_reads_its_cache(folder, tmp_path, capsys):
    assert prepare.main(["--data", str(folder), "--out", str(tmp_path / "my cache"), "--size",
                         str(SIZE), "--workers", "1"]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == f"train on it with python -m alexnet.train --data {folder} --cache " \
        f"'{tmp_path / 'my cache'}' --preset tiny"
    assert prepare.main(["--data", str(folder), "--limit", "1", "--size", str(SIZE), "--out",
                         str(tmp_path / "part")]) == 0
    assert "train on it" not in capsys.readouterr().out          # not finished: nothing to read


def test_the_training_command_names_class_names_kaggle_keeps_above_the_data(tmp_path, capsys):
    """Kaggle's LOC_synset_mapping.txt is three folders above ILSVRC/Data/CLS-LOC, where
    training does not look for it."""
    data_dir = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    synthetic.write_folder(str(data_dir), 8, 4, size=48, seed=1, extension=".png")
    (tmp_path / "LOC_synset_mapping.txt").write_text("disk a disk\n")
    assert prepare.main(["--data", str(data_dir), "--size", str(SIZE), "--workers", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f" --preset tiny --class-names {tmp_path / 'LOC_synset_mapping.txt'}")


def test_dry_run_without_val_labels_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare.main(["--data", str(tmp_path), "--dry-run"])
    assert "--dry-run previews the moves of --val-labels" in capsys.readouterr().err


def test_a_val_class_missing_from_train_is_one_sentence(tmp_path, capsys):
    for split, cls in (("train", "cat"), ("val", "cat"), ("val", "bird")):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        noise("RGB", (20, 20), 0).save(tmp_path / split / cls / "a.png")
    assert prepare.main(["--data", str(tmp_path), "--out", str(tmp_path / "c")]) == 1
    error = capsys.readouterr().err
    assert "bird" in error and "training set lacks" in error and error.count("\n") == 1


def test_a_val_class_in_another_unicode_normalization_is_named_as_such(tmp_path, capsys):
    nfc, nfd = "caf\u00e9", "cafe\u0301"                         # as macOS writes the second
    for split, cls in (("train", nfc), ("train", "dog"), ("val", nfd), ("val", "dog")):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        noise("RGB", (20, 20), 0).save(tmp_path / split / cls / "a.png")
    assert prepare.main(["--data", str(tmp_path), "--out", str(tmp_path / "c")]) == 1
    error = capsys.readouterr().err
    val = tmp_path / "val"
    assert error == f"error: the class folder {val / nfd} (NFD) differs from the training set's " \
        f"{nfc} (NFC) only in Unicode normalization: 'cafe\\u0301' and 'caf\\xe9'; rename it as " \
        "the training folder is written: python -c " \
        f"{quote(f'import os; os.rename({ascii(str(val / nfd))}, {ascii(str(val / nfc))})')}\n"


def test_the_rename_command_for_another_normalization_runs_in_a_shell_whatever_the_path(tmp_path):
    """A path holding ' (ascii() then writes the name in double quotes, closing the shell's), $
    or a backquote broke the pasted command; it must rename the folder as printed."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    root = tmp_path / "it's $HOME `date`" / "val"
    (root / nfd).mkdir(parents=True)
    message = data.spelled_otherwise(str(root), [nfd], [nfc, "dog"])
    command = message.split("rename it as the training folder is written: ")[1]
    assert command.startswith("python -c ")
    subprocess.run(["sh", "-c", quote(sys.executable) + command[len("python"):]], check=True)
    assert os.listdir(root) == [nfc]


def test_a_val_class_in_another_case_or_with_a_space_is_told_the_rename(tmp_path):
    """"Cat" or "cat " beside the training set's "cat": the pasted mv makes them one class."""
    root = tmp_path / "val"
    for name in ("Cat", "dog "):
        (root / name).mkdir(parents=True)
        message = data.spelled_otherwise(str(root), [name], ["cat", "dog"])
        known = name.strip().lower()
        assert message == f"the class folder {str(root / name)!r} differs from the training " \
            f"set's {known!r} only in upper and lower case or in spaces at its ends; rename it " \
            f"as the training folder is written: mv {quote(str(root / name))} " \
            f"{quote(str(root / known))}"
        subprocess.run(message.split("written: ")[1], shell=True, check=True)
    assert sorted(os.listdir(root)) == ["cat", "dog"]
    assert data.spelled_otherwise(str(root), ["bird"], ["cat", "dog"]) is None


def test_macos_zip_folders_are_no_class_and_links_to_nothing_are_told(tmp_path):
    """__MACOSX/ (macOS's zip) is not a class, at any depth; a class folder linked to an
    unmounted disk is named in a note, not dropped without a word."""
    for path in ("a", "b", "__MACOSX", "a/__MACOSX"):
        (tmp_path / path).mkdir()
        noise("RGB", (20, 20), 0).save(tmp_path / path / "1.png")
    (tmp_path / "c").symlink_to("/nowhere/c")
    notes = []
    paths, _, classes = data.find_images(str(tmp_path), log=notes.append)
    assert classes == ["a", "b"]
    assert paths == [str(tmp_path / "a" / "1.png"), str(tmp_path / "b" / "1.png")]
    assert notes == [f"note: {tmp_path} has links to nothing (c -> /nowhere/c), which are not "
                     "classes; mount or link again what they pointed to, to use them"]


def test_a_folder_without_val_is_told_to_make_one(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        noise("RGB", (20, 20), 0).save(tmp_path / "train" / cls / "a.png")
    with pytest.raises(FileNotFoundError) as raised:
        prepare.find_sources(str(tmp_path))
    assert str(raised.value) == f"{tmp_path} has train/ but no val/ folder, which training " \
        f"measures itself on: make {tmp_path / 'val'}/<class>/ for each class and move some of " \
        "its images (a tenth, say) from train/<class>/ there"
    (tmp_path / "Validation").mkdir()
    with pytest.raises(FileNotFoundError, match="no val/ folder, which training measures itself "
                       "on: rename Validation/ to val/$"):
        prepare.find_sources(str(tmp_path))


def test_a_folder_of_another_layout_is_told_what_to_change(tmp_path):
    for path in ("named/training/a", "named/validation/a", "flat/cat", "flat/dog", "d/train/a",
                 "caps/Train/a", "caps/Val/a", "onlyval/val/a"):
        (tmp_path / path).mkdir(parents=True)
    noise("RGB", (20, 20), 0).save(tmp_path / "flat" / "cat" / "a.png")
    (tmp_path / "file").write_text("")
    hints = {"named": "rename training/ to train/ and validation/ to val/",
             "caps": "rename Train/ to train/ and Val/ to val/",
             "onlyval": f"it has val/ but no train/: make {tmp_path / 'onlyval' / 'train'}/"
                        "<class>/ for each class, with its training images",
             "flat": "its folders (cat, dog, ...) hold images: move each class folder into "
                     "train/ and some of its images into val/<class>/",
             "file": f"{tmp_path / 'file'} is a file; pass the folder that holds train/ and val/",
             "d/train": f"it looks like a split itself; pass its parent, {tmp_path / 'd'}",
             "d/train/a": f"it looks like a class folder of {tmp_path / 'd' / 'train'}; pass "
                          f"{tmp_path / 'd'}",
             "nowhere": f"{tmp_path / 'nowhere'} does not exist"}
    for folder, hint in hints.items():
        with pytest.raises(FileNotFoundError) as raised:
            prepare.find_sources(str(tmp_path / folder))
        assert str(raised.value).startswith(f"{tmp_path / folder} has no train/ folder: {hint}")
    with pytest.raises(FileNotFoundError, match=f"pass its parent, {tmp_path / 'd'}$"):
        prepare.find_sources(f"{tmp_path / 'd' / 'train'}/")          # as a shell completes it


def test_a_single_class_is_refused_in_one_sentence(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        noise("RGB", (20, 20), 0).save(tmp_path / split / "cat" / "a.png")
    assert train.main(["--data", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'train'} has one class folder (cat); " \
        "a classifier needs two or more: one folder of images for each class\n"


# ---- sorting a flat validation folder ---------------------------------------------------------

def flat_val_folder(root):
    root.mkdir()
    for i, name in enumerate(("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG",
                              "c.png")):
        noise("RGB", (20, 20), i).save(root / name)
    return root


def test_loc_solution_csv_sorts_the_folder_and_dry_run_moves_nothing(tmp_path, capsys):
    val = flat_val_folder(tmp_path / "val")
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("\ufeffImageId,PredictionString\n"            # with a BOM, as Excel saves it
                      "ILSVRC2012_val_00000001,n01751748 10 20 30 40 n01751748 5 5 9 9 \n"
                      "ILSVRC2012_val_00000002,n09193705 1 2 3 4 \n")
    assert prepare.main(["--val-labels", str(labels), "--data", str(val), "--dry-run"]) == 0
    out = capsys.readouterr().out
    first = "ILSVRC2012_val_00000001.JPEG"
    assert f"would move {first} -> n01751748/{first}" in out
    assert sorted(os.listdir(val)) == ["ILSVRC2012_val_00000001.JPEG",
                                       "ILSVRC2012_val_00000002.JPEG", "c.png"]
    assert prepare.main(["--val-labels", str(labels), "--data", str(val)]) == 0
    assert "1 images are not in the list" in capsys.readouterr().out
    assert os.listdir(val / "n01751748") == ["ILSVRC2012_val_00000001.JPEG"]
    assert os.listdir(val / "n09193705") == ["ILSVRC2012_val_00000002.JPEG"]
    assert prepare.main(["--val-labels", str(labels), "--data", str(val)]) == 0   # rerun: no-op
    assert "2 were in place already" in capsys.readouterr().out


def test_plain_list_with_spaces_or_commas_sorts_the_folder(tmp_path):
    val = flat_val_folder(tmp_path / "val")
    labels = tmp_path / "labels.txt"
    labels.write_text("ILSVRC2012_val_00000001.JPEG  cat\nILSVRC2012_val_00000002.JPEG,dog\n\n"
                      "c.png\tcat\n")
    assert prepare.main(["--val-labels", str(labels), "--data", str(val)]) == 0
    assert sorted(os.listdir(val / "cat")) == ["ILSVRC2012_val_00000001.JPEG", "c.png"]
    assert os.listdir(val / "dog") == ["ILSVRC2012_val_00000002.JPEG"]


def test_val_labels_errors_are_one_sentence(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("a.jpg cat\nb.jpg cat\nc.jpg dog\nd.jpg dog\n")
    assert prepare.main(["--val-labels", str(labels), "--data", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert prepare.main(["--val-labels", str(labels), "--data", str(tmp_path / "empty")]) == 1
    assert "holds no images" in capsys.readouterr().err
    val = flat_val_folder(tmp_path / "val")
    assert prepare.main(["--val-labels", str(labels), "--data", str(val)]) == 1
    error = capsys.readouterr().err
    assert "4 files listed" in error and "a.jpg, b.jpg, c.jpg" in error and error.count("\n") == 1
    assert len(os.listdir(val)) == 3                              # nothing moved


def test_class_numbers_or_names_that_train_lacks_move_nothing(tmp_path, capsys):
    """Caffe's val.txt numbers the classes (the sorted synsets.txt from 0): sorted as they are,
    they would be classes 0, 1, ... that train/ has no folder for."""
    val = flat_val_folder(tmp_path / "val")
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
    (tmp_path / "synsets.txt").write_text("n01440764\nn01443537\n")
    labels = tmp_path / "val.txt"
    labels.write_text("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 0\n")
    assert prepare.main(["--val-labels", str(labels), "--data", str(val)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"names classes that {tmp_path / 'train'} has no folder " \
        "for (0, 1); nothing was moved; they are numbers" in error
    assert len(os.listdir(val)) == 3
    command = error.split(" write them as names first with ")[1].split(", and pass")[0]
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)     # as the user would
    assert (tmp_path / "val_labels.txt").read_text() == \
        "ILSVRC2012_val_00000001.JPEG n01443537\nILSVRC2012_val_00000002.JPEG n01440764\n"
    labels.write_text("ILSVRC2012_val_00000001.JPEG cat\n")
    assert prepare.main(["--val-labels", str(labels), "--data", str(val)]) == 1
    assert "(cat); nothing was moved; pass the list that names the training set's" in \
        capsys.readouterr().err


# ---- ImageNet's devkit: ILSVRC2012_validation_ground_truth.txt and meta.mat ------------------

def mat_element(kind, raw):
    """A MATLAB 5 data element: 4 bytes or fewer packed into the tag, else tag, data, padding."""
    if len(raw) <= 4:
        return struct.pack("<HH", kind, len(raw)) + raw.ljust(4, b"\0")
    return struct.pack("<II", kind, len(raw)) + raw + b"\0" * (-len(raw) % 8)


def mat_array(cls, dims, body, name=b""):
    """A MATLAB 5 array (miMATRIX) of class `cls`: flags, dimensions, name, then `body`."""
    return mat_element(14, mat_element(6, struct.pack("<II", cls, 0)) +
                       mat_element(5, struct.pack(f"<{len(dims)}i", *dims)) +
                       mat_element(1, name) + body)


def write_meta(path, synsets):
    """The devkit's meta.mat as MATLAB writes it: one compressed variable, `synsets`, a struct
    array whose whole numbers are stored in the smallest integer type (uint8, uint16), its WNIDs
    as UTF-16 and its words as UTF-8; `children` of a class is empty, written as nothing."""
    fields = (b"ILSVRC2012_ID", b"WNID", b"words", b"children")
    body = mat_element(5, struct.pack("<i", 32)) + \
        mat_element(1, b"".join(field.ljust(32, b"\0") for field in fields))
    for number, wnid, words in synsets:
        stored = (2, "u1") if number < 256 else (4, "<u2")
        number = numpy.array([number], stored[1]).tobytes()
        body += mat_array(6, (1, 1), mat_element(stored[0], number))
        body += mat_array(4, (1, len(wnid)), mat_element(4, wnid.encode("utf-16-le")))
        body += mat_array(4, (1, len(words)), mat_element(16, words.encode()))
        body += mat_element(14, b"")
    packed = zlib.compress(mat_array(2, (len(synsets), 1), body, b"synsets"))
    header = b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(116) + bytes(8) + b"\x00\x01IM"
    path.write_bytes(header + struct.pack("<II", 15, len(packed)) + packed)


DEVKIT_SYNSETS = [(1, "n02119789", "kit fox, Vulpes macrotis"),   # the devkit's order, not
                  (2, "n01440764", "tench, Tinca tinca"),         # the sorted one
                  (1001, "n00001740", "entity")]


def test_devkit_ground_truth_sorts_the_folder_in_meta_mat_order(tmp_path, capsys):
    val = flat_val_folder(tmp_path / "val")
    (tmp_path / "data").mkdir()
    truth = tmp_path / "data" / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("2\n1\n")                  # val_00000001 is class 2 of meta.mat, a tench
    write_meta(tmp_path / "data" / "meta.mat", DEVKIT_SYNSETS)
    assert prepare.main(["--val-labels", str(truth), "--data", str(val)]) == 0
    assert "moved 2 images into 2 class folders" in capsys.readouterr().out
    assert os.listdir(val / "n01440764") == ["ILSVRC2012_val_00000001.JPEG"]
    assert os.listdir(val / "n02119789") == ["ILSVRC2012_val_00000002.JPEG"]


def test_devkit_ground_truth_without_a_readable_meta_mat_says_what_to_do(tmp_path, capsys):
    val = flat_val_folder(tmp_path / "val")
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("2\n1\n")
    assert prepare.main(["--val-labels", str(truth), "--data", str(val)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "in the order of the devkit's meta.mat" in error and \
        "put ILSVRC2012_devkit_t12/data/meta.mat beside it" in error
    (tmp_path / "meta.mat").write_bytes(b"\x89HDF\r\n\x1a\n")      # MATLAB 7.3
    assert prepare.main(["--val-labels", str(truth), "--data", str(val)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "(it is a MATLAB 7.3 file (HDF5), not MATLAB 5)" in error \
        and "scipy.io.loadmat" in error and "--val-labels val_labels.txt" in error
    assert len(os.listdir(val)) == 3                              # nothing moved


def test_meta_mat_gives_the_class_names(tmp_path):
    """Its 1000 classes, not the synsets above them (entity), of which no note is made."""
    write_meta(tmp_path / "meta.mat", DEVKIT_SYNSETS)
    notes = []
    assert data.read_class_names(str(tmp_path / "meta.mat"), ["n01440764", "n02119789"],
                                 log=notes.append) == ["tench, Tinca tinca",
                                                       "kit fox, Vulpes macrotis"]
    assert notes == []
    (tmp_path / "meta.mat").write_bytes(b"MATLAB 4")
    with pytest.raises(ValueError, match=r"^class names .*meta.mat cannot be read \(it is not a "
                       r"little-endian MATLAB 5 file\); give a text file of"):
        data.read_class_names(str(tmp_path / "meta.mat"), ["n01440764"])
    write_meta(tmp_path / "meta.mat", DEVKIT_SYNSETS)                # a download cut short
    whole = (tmp_path / "meta.mat").read_bytes()
    variable = zlib.compress(zlib.decompress(whole[136:])[:-60])
    (tmp_path / "meta.mat").write_bytes(whole[:128] + struct.pack("<II", 15, len(variable)) +
                                        variable)
    with pytest.raises(ValueError, match=r"meta.mat cannot be read \(it ends inside an array\)"):
        data.read_class_names(str(tmp_path / "meta.mat"), ["n01440764"])


def test_class_tars_of_the_training_set_are_sent_to_tar(tmp_path, capsys):
    """ILSVRC2012_img_train.tar holds a tar per class, which are unpacked in turn."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    for wnid in ("n01440764", "n01443537"):
        (root / "train" / f"{wnid}.tar").write_bytes(b"")
    assert prepare.main(["--data", str(root), "--out", str(tmp_path / "cache")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "one tar file per class (n01440764.tar, n01443537.tar)" \
        in error and 'tar -xf "$f" -C "${f%.tar}"' in error


# ---- training from a cache --------------------------------------------------------------------

TINY = ["--preset", "tiny", "--batch-size", "4", "--epochs", "1", "--log-every", "1"]


def test_training_runs_on_a_prepared_cache_without_recomputing_the_mean(prepared, tmp_path,
                                                                          monkeypatch, capsys):
    def recomputed(images):
        raise AssertionError("the cache's mean and PCA should be used")

    monkeypatch.setattr(data.Augmentation, "of", recomputed)
    assert train.main(["--data", prepared[0], *TINY, "--run-dir", str(tmp_path / "run")]) == 0
    assert "15 train / 4 val images" in capsys.readouterr().out
    with open(tmp_path / "run" / "bad_files.txt") as f:
        assert {os.path.basename(line.split("\t")[0]) for line in f} == BAD


def test_training_on_a_raw_folder_prepares_its_cache_first(folder, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(folder, raw)
    assert train.main(["--data", str(raw), *TINY, "--run-dir", str(tmp_path / "run")]) == 0
    assert prepare.is_complete(prepare.read_manifest(str(raw / f".alexnet-cache-{SIZE}")))


def test_a_folder_changed_since_its_cache_was_made_is_decoded_again(folder, tmp_path,
                                                                     monkeypatch):
    """For a new run (compare): a resumed run and show use the cache as it is."""
    raw, messages = tmp_path / "raw", []
    shutil.copytree(folder, raw)
    cache = prepare.cache_for(str(raw), SIZE, log=messages.append, compare=True)
    for split, count in (("train", 3), ("val", 2)):                  # a new class, a file less
        (raw / split / "eel").mkdir()
        for i in range(count):
            noise("RGB", (40, 40), 50 + i).save(raw / split / "eel" / f"e{i}.png")
    os.remove(raw / "train" / "dog" / "dog0.jpg")
    assert prepare.cache_for(str(raw), SIZE, log=messages.append) == cache    # no compare
    assert prepare.open_cache(cache).classes == ["cat", "dog"]
    monkeypatch.setattr(prepare.os, "access", lambda path, mode: False)      # read-only
    prepare.cache_for(str(raw), SIZE, log=messages.append, compare=True)
    assert "and it cannot be written: training on it as it is" in messages[-2]
    assert prepare.open_cache(cache).classes == ["cat", "dog"]
    monkeypatch.undo()
    prepare.cache_for(str(raw), SIZE, log=messages.append, compare=True)
    assert any("are not those the cache" in m and "decoding them again" in m for m in messages)
    opened = prepare.open_cache(cache)
    assert opened.classes == ["cat", "dog", "eel"]
    assert len(opened.train) == 15 + 3 - 1 and len(opened.val) == 4 + 2
    fresh = str(tmp_path / "fresh")                      # as if made from the folder as it is
    prepare.prepare(str(raw), fresh, SIZE, log=messages.append)
    assert_same_cache(cache, fresh)
    for image in (raw / "val").glob("*/*"):              # the images deleted once decoded,
        image.unlink()                                   # their folders kept, then not
    for deleted in (lambda: None, lambda: shutil.rmtree(raw / "train")):
        deleted()
        assert prepare.cache_for(str(raw), SIZE, log=messages.append, compare=True) == cache
        assert messages[-2].startswith(f"note: the cache {cache} is used as it is: ")
        assert messages[-1] == f"data: using the cache {cache}"


def test_a_training_reading_a_cache_keeps_its_images_when_a_new_run_decodes_it_again(folder,
                                                                                  tmp_path):
    """A run that starts on a folder whose files changed decodes its cache again while another
    may be training on it (memory-mapped): the new images go to a new file, and the old
    mapping keeps reading the old ones (rewritten in place, it ended in a bus error)."""
    raw = tmp_path / "raw"
    shutil.copytree(folder, raw)
    cache = prepare.cache_for(str(raw), SIZE, log=lambda line: None, compare=True)
    training = prepare.open_cache(cache).train.images         # as a running training maps it
    before = numpy.array(training)
    inode = os.stat(os.path.join(cache, "train_images.npy")).st_ino
    os.remove(raw / "train" / "dog" / "dog0.jpg")
    prepare.cache_for(str(raw), SIZE, log=lambda line: None, compare=True)
    assert os.stat(os.path.join(cache, "train_images.npy")).st_ino != inode
    numpy.testing.assert_array_equal(training, before)
    assert len(prepare.open_cache(cache).train.images) == len(before) - 1


def test_a_cache_listed_before_sizes_were_is_not_decoded_again(folder, tmp_path):
    """A cache whose file lists have no sizes (made before they had) is compared by path and
    label: decoding ImageNet again would take hours for nothing."""
    raw, said = tmp_path / "raw", []
    shutil.copytree(folder, raw)
    cache = prepare.cache_for(str(raw), SIZE, log=said.append, compare=True)
    for split in ("train", "val"):
        listed = os.path.join(cache, f"{split}_files.txt")
        lines = open(listed).read().split("\n")[:-1]
        prepare.write_text(listed, "".join(line.rsplit("\t", 1)[0] + "\n" for line in lines))
    del said[:]
    assert prepare.cache_for(str(raw), SIZE, log=said.append, compare=True) == cache
    assert said[-1] == f"data: using the cache {cache}" and not any("again" in m for m in said)
    os.remove(raw / "train" / "dog" / "dog0.jpg")                 # a change is still seen
    prepare.cache_for(str(raw), SIZE, log=said.append, compare=True)
    assert any("decoding them again" in m for m in said)


def test_a_file_replaced_under_its_name_is_decoded_again_a_copied_folder_is_not(folder, tmp_path):
    """An image exported again under the same name (here cropped by a column) is another size
    in bytes: the cache is made again. A copy of the folder (new times of change, the same
    sizes) keeps its cache."""
    raw, messages = tmp_path / "raw", []
    shutil.copytree(folder, raw)
    cache = prepare.cache_for(str(raw), SIZE, log=messages.append, compare=True)
    replaced = raw / "val" / "cat" / "v0.png"
    Image.open(replaced).crop((1, 0, 45, 45)).save(replaced)
    assert prepare.cache_for(str(raw), SIZE, log=messages.append, compare=True) == cache
    assert any("renamed or replaced): decoding them again" in m for m in messages)
    fresh = str(tmp_path / "fresh")
    prepare.prepare(str(raw), fresh, SIZE, log=messages.append)
    assert_same_cache(cache, fresh)
    copied = tmp_path / "copied"
    shutil.copytree(raw, copied, copy_function=shutil.copyfile)        # times not kept
    del messages[:]
    prepare.cache_for(str(copied), SIZE, log=messages.append, compare=True)
    assert messages[0].startswith(f"note: 1 file under {copied / 'train'} is not an image")
    assert messages[1:] == [f"data: using the cache {copied / f'.alexnet-cache-{SIZE}'}"]


def test_a_cache_of_another_size_is_one_sentence(prepared, tmp_path, capsys, monkeypatch):
    """It names the preset that takes the cache's size (not always the paper's)."""
    assert train.main(["--data", prepared[0], "--preset", "small",
                       "--run-dir", str(tmp_path / "run")]) == 1
    assert f"holds {SIZE}x{SIZE} images but this network needs 112x112: make a cache of that " \
        "size beside it (python -m alexnet.prepare --data " in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"112 --out OTHER_FOLDER\), or train the preset of "
                       r"this cache's size \(--preset tiny\)$"):
        prepare.open_cache(prepared[0], 112)
    with pytest.raises(ValueError, match=r"or pass the image folder itself as --data, decoded at "
                       r"the checkpoint's size$"):
        prepare.open_cache(prepared[0], 256, training=False)
    monkeypatch.delitem(prepare.PRESETS, "tiny")
    with pytest.raises(ValueError, match=r"no preset takes 39x39 images$"):
        prepare.open_cache(prepared[0], 112)


def test_the_command_to_make_another_size_names_the_folder_where_it_is_now(folder, tmp_path):
    """A folder moved with its cache inside: the commands name it where it is now; a cache
    given with --cache: the --data typed."""
    shutil.copytree(folder, tmp_path / "before")
    prepare.prepare(str(tmp_path / "before"), str(tmp_path / "before" / "cache"), SIZE,
                    workers=1, log=lambda line: None)
    os.rename(tmp_path / "before", tmp_path / "after")
    with pytest.raises(ValueError, match=f"prepare --data {tmp_path / 'after'} --size 112"):
        prepare.open_cache(str(tmp_path / "after" / "cache"), 112)
    (tmp_path / "my photos").mkdir()
    with pytest.raises(ValueError) as raised:
        prepare.open_cache(str(tmp_path / "after" / "cache"), 112,
                           source=str(tmp_path / "my photos"))
    assert f"prepare --data {quote(str(tmp_path / 'my photos'))} --size 112" in str(raised.value)


# ---- batches on the device --------------------------------------------------------------------

def test_batches_on_a_device_equal_the_numpy_batches(device):
    rng = numpy.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (12, 3, 16, 16)).astype(numpy.uint8), numpy.arange(12))
    aug = data.Augmentation.of(split.images)
    for train_mode in (True, False):
        on_cpu = list(data.batches(split, aug, 13, 4, train=train_mode, seed=3, workers=2))
        on_device = list(data.batches(split, aug, 13, 4, train=train_mode, seed=3, workers=2,
                                      device=device))
        for (x, labels), (dx, dlabels) in zip(on_cpu, on_device, strict=True):
            assert backend.device_of(dx) == device and dx.dtype == numpy.float32
            numpy.testing.assert_allclose(backend.to_device(dx, "cpu"), x, rtol=1e-6, atol=1e-5)
            numpy.testing.assert_array_equal(dlabels, labels)


def test_a_flat_val_folder_is_sent_to_val_labels(tmp_path, capsys):
    root = tmp_path / "data"
    synthetic.write_folder(str(root), 6, 3, size=32, seed=0, extension=".png")
    flat = root / "val"
    for path in list(flat.glob("*/*.png")):
        path.rename(flat / f"{path.parent.name}-{path.name}")       # ImageNet's val: no classes
        if not any(path.parent.iterdir()):
            path.parent.rmdir()
    assert prepare.main(["--data", str(root), "--out", str(tmp_path / "cache")]) == 1
    error = capsys.readouterr().err
    assert f"the images in {flat} are not in class folders" in error
    assert "--val-labels LOC_val_solution.csv" in error
    assert "or ILSVRC2012_validation_ground_truth.txt (the devkit's)" in error


def test_images_outside_the_class_folders_are_named(tmp_path, capsys):
    root = tmp_path / "data"
    synthetic.write_folder(str(root), 6, 3, size=32, seed=0, extension=".png")
    for i in range(4):
        noise("RGB", (20, 20), i).save(root / "train" / f"stray{i}.jpg")
    assert prepare.main(["--data", str(root), "--out", str(tmp_path / "cache"),
                         "--size", str(SIZE)]) == 0
    out = capsys.readouterr().out
    assert f"note: 4 image(s) directly in {root / 'train'} (stray0.jpg, stray1.jpg, stray2.jpg, " \
        f"...) are in no class folder and are not used; move each into {root / 'train'}/<class>/" \
        in out
    assert "directly in " + str(root / "val") not in out
    assert "images, 0 skipped; " in out and "bad_files.txt" not in out     # nothing to look at
