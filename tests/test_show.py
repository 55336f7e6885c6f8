"""python -m alexnet.show (Figure 4, confusion matrix, activations) on a tiny checkpoint."""
import csv
import errno
import json
import os

import numpy
import pytest
from PIL import Image, ImageDraw, ImageFont

import minigrad
from alexnet import checkpoint, data, plots, prepare, show, synthetic, train
from alexnet.evaluate import scores
from alexnet.model import PRESETS

SIZE = PRESETS["tiny"].input_size                      # 35
STORED = PRESETS["tiny"].stored_size()                 # 39


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """96 training images, 40 validation images, two epochs."""
    return tiny_run(96, 40, epochs=2)


@pytest.fixture(scope="module")
def shown(run_dir, tmp_path_factory):
    """Every picture of alexnet.show, with 7 neighbours streamed in batches of 16 (96 is not a
    multiple of 7, and the best 7 must survive from batch to batch)."""
    out = tmp_path_factory.mktemp("show")
    assert show.main(["--checkpoint", str(run_dir / "last.npz"), "--out", str(out),
                      "--neighbours", "7", "--queries", "3", "--batch-size", "16",
                      "--seed", "4"]) == 0
    return out


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def the_run(run_dir):
    """(model, augmentation, train Split, val Split, classes) of the tiny run."""
    model, meta = checkpoint.load_model(str(run_dir / "last.npz"))
    splits = synthetic.make_splits(96, 40, STORED, seed=0)
    return (model, checkpoint.load_augmentation(str(run_dir / "last.npz")),
            data.Split(*splits["train"]), data.Split(*splits["val"]), meta["classes"])


def fc7(model, images, aug):
    """fc7 features (N, 2 * fc_width) of uint8 images, one forward pass, in float64."""
    trace = {}
    with minigrad.no_grad():
        model(data.center_crop(images, aug.mean, SIZE), trace=trace)
    return numpy.concatenate([trace["fc7a"].numpy(), trace["fc7b"].numpy()], axis=1).astype(float)


# ---- neighbours -------------------------------------------------------------------------------

def test_neighbours_are_the_brute_force_nearest_training_images(run_dir, shown):
    model, aug, train_split, val, classes = the_run(run_dir)
    result = json.load(open(shown / "neighbours.json"))
    assert result["dimensions"] == 2 * PRESETS["tiny"].fc_width
    assert len(result["queries"]) == 3
    train_features = fc7(model, train_split.images, aug)
    for query in result["queries"]:
        row = query["val_row"]
        assert query["file"] == f"val[{row}]" and query["class"] == classes[val.labels[row]]
        q = fc7(model, val.images[row:row + 1], aug)
        distances = numpy.sqrt(((train_features - q) ** 2).sum(axis=1))     # every image
        order = numpy.argsort(distances, kind="stable")[:7]
        assert [n["train_row"] for n in query["neighbours"]] == order.tolist()
        # float32 features from batches of other sizes differ in the last bits (BLAS blocking)
        numpy.testing.assert_allclose([n["distance"] for n in query["neighbours"]],
                                      distances[order], rtol=1e-5)
        assert [n["class"] for n in query["neighbours"]] == \
            [classes[k] for k in train_split.labels[order]]
    # Figure 4 right: 3 rows of a 112-pixel query and 7 neighbours.
    assert png_size(shown / "neighbours.png") == (112 + 28 + 7 * 120 + 16, 52 + 3 * 154 + 8)


@pytest.mark.parametrize("batch", [1, 3, 50, 200])
def test_streamed_nearest_equals_sorting_all_distances(batch):
    rng = numpy.random.default_rng(batch)
    queries = rng.standard_normal((4, 6))
    rows = rng.standard_normal((120, 6))
    rows[17] = rows[90] = queries[2]                 # a tie at distance 0: the lower row first
    batches = ((s, rows[s:s + batch]) for s in range(0, len(rows), batch))
    distances, nearest = show.nearest(queries.astype(numpy.float32), batches, k=5)
    for q in range(4):
        exact = numpy.sqrt(((rows - queries[q].astype(numpy.float32)) ** 2).sum(axis=1))
        order = numpy.argsort(exact, kind="stable")[:5]
        assert nearest[q].tolist() == order.tolist()
        numpy.testing.assert_allclose(distances[q], exact[order], rtol=1e-9, atol=1e-6)
    assert nearest[2, :2].tolist() == [17, 90]


# ---- confusion, predictions, activations ------------------------------------------------------

def test_confusion_counts_every_validation_image_once(run_dir, shown):
    model, aug, _, val, classes = the_run(run_dir)
    _, _, _, logits = train.evaluate(model, val, aug, SIZE, 16)
    expected = scores(logits, val.labels, len(classes))[3]
    table = list(csv.reader(open(shown / "confusion.csv")))
    assert table[0] == ["true \\ predicted"] + classes
    assert [row[0] for row in table[1:]] == classes
    counts = numpy.array([[int(v) for v in row[1:]] for row in table[1:]])
    numpy.testing.assert_array_equal(counts, expected)
    assert counts.sum() == 40


def test_confusion_picture_colours_each_cell_by_its_share_of_the_row(tmp_path):
    counts = numpy.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    path = tmp_path / "confusion.png"
    plots.confusion_matrix(counts, ["cat", "dog", "eel"], str(path))
    pixels = numpy.asarray(Image.open(path))
    width, height = png_size(path)
    cell = 40                                                          # the largest cell
    top = height - 20 - 3 * cell                                       # the matrix's corner
    left = top - 24                              # 30 and 54 past the class names' labels

    def colour(t, p):                     # a corner of cell (t, p), away from the printed share
        return pixels[top + t * cell + 3, left + p * cell + 3].tolist()

    assert colour(0, 0) == plots._blend(numpy.array(0.75), plots._TRAIN).tolist()
    assert colour(0, 1) == plots._blend(numpy.array(0.25), plots._TRAIN).tolist()
    assert colour(2, 2) == plots._blend(numpy.array(0.5), plots._TRAIN).tolist()
    assert colour(0, 2) == [255, 255, 255]                            # never predicted
    assert colour(1, 1) == list(plots._GRID)                           # no images of "dog"


def test_confusion_picture_is_as_wide_as_its_heading(tmp_path):
    """Two classes of short names make a matrix narrower than the heading above it, which was
    cut at both ends."""
    path = tmp_path / "confusion.png"
    plots.confusion_matrix(numpy.array([[4, 12], [12, 4]]), ["a", "b"], str(path))
    heading = numpy.asarray(Image.open(path).convert("L"))[:30]       # the heading's band
    inked = numpy.flatnonzero((heading < 128).any(axis=0))
    assert len(inked) and inked[0] >= 5 and inked[-1] < heading.shape[1] - 5


def drawn(text, font):
    """The pixels of `text` drawn in white on black."""
    image = Image.new("L", (160, 24))
    ImageDraw.Draw(image).text((2, 2), text, fill=255, font=font)
    return numpy.asarray(image)


def test_accented_class_names_are_drawn_not_boxed():
    """Pillow's own TrueType font has ASCII only: "café" came out as "caf" and the box of a
    missing glyph. The pictures draw with a font of the system's that has the letter."""
    if plots._font_file() is None:
        pytest.skip(f"none of {', '.join(plots._FONTS)} on this machine: Pillow's own font is used")
    box = drawn("caf\ue000", plots._font(12))             # U+E000: private use, in no font
    assert not numpy.array_equal(drawn("café", plots._font(12)), box)


def test_without_a_system_font_pillows_own_draws(monkeypatch):
    monkeypatch.setattr(plots, "_FONTS", ("no-such-font.ttf",))
    plots._font_file.cache_clear()
    plots._font.cache_clear()
    try:
        assert plots._font_file() is None and drawn("cat", plots._font(12)).any()
    finally:                                     # the next test finds the system's font again
        plots._font_file.cache_clear()
        plots._font.cache_clear()


def test_predictions_show_the_same_images_at_every_evaluation(run_dir, shown, tmp_path,
                                                             monkeypatch):
    width, height = png_size(shown / "predictions.png")
    assert (width, height) == (4 * 254 + 14, 2 * (267 + 14) + 14 + 28)    # 8 images, 4 a row
    assert png_size(run_dir / "predictions.png") == (width, height)       # written by training
    assert png_size(run_dir / "confusion.png") == png_size(shown / "confusion.png")
    drawn_images = []                            # what training's predictions.png shows each time
    grid = plots.prediction_grid
    monkeypatch.setattr(plots, "prediction_grid",
                        lambda images, *rest: (drawn_images.append(images.copy()), grid(images, *rest)))
    assert train.main(["--preset", "tiny", "--synthetic-train", "48", "--synthetic-val", "40",
                       "--batch-size", "16", "--epochs", "2", "--eval-every", "1",
                       "--run-dir", str(tmp_path / "run")]) == 0
    assert len(drawn_images) == 2
    for images in drawn_images[1:]:
        numpy.testing.assert_array_equal(images, drawn_images[0])


def test_pick_errors_shows_only_misclassified_images(run_dir, tmp_path):
    assert show.main(["--checkpoint", str(run_dir), "--out", str(tmp_path), "--pick", "errors",
                      "--only", "neighbours", "--queries", "4", "--neighbours", "2"]) == 0
    model, aug, _, val, _ = the_run(run_dir)
    _, _, _, logits = train.evaluate(model, val, aug, SIZE, 16)
    rows = [q["val_row"] for q in json.load(open(tmp_path / "neighbours.json"))["queries"]]
    assert len(set(rows)) == 4
    assert all(logits[r].argmax() != val.labels[r] for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neighbours.json", "neighbours.png"]


def test_fewer_images_than_asked_and_replaced_pictures_are_said(run_dir, tmp_path, capsys):
    (tmp_path / "predictions.png").write_bytes(b"the run's own picture")
    assert show.main(["--checkpoint", str(run_dir), "--out", str(tmp_path), "--pick", "correct",
                      "--only", "predictions", "neighbours", "--predictions", "60",
                      "--queries", "2", "--neighbours", "200"]) == 0
    out, err = capsys.readouterr()
    model, aug, _, val, _ = the_run(run_dir)
    _, _, _, logits = train.evaluate(model, val, aug, SIZE, 16)
    correct = int((logits.argmax(axis=1) == val.labels).sum())
    assert f"note: --predictions 60, but there are only {correct} correctly classified " \
        f"validation images: showing {correct}" in err
    assert "note: --neighbours 200, but there are only 96 training images: showing 96" in err
    assert "--queries" not in err
    assert out.splitlines() == [f"replaced {tmp_path / 'predictions.png'}",
                                f"wrote {tmp_path / 'neighbours.png'}",
                                f"wrote {tmp_path / 'neighbours.json'}"]


def test_activations_of_one_image_need_no_data(run_dir, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(synthetic.make_images(1, size=80, seed=3)[0][0].transpose(1, 2, 0)).save(image)
    assert show.main(["--checkpoint", str(run_dir), "--image", str(image), "--only",
                      "activations", "--out", str(tmp_path / "out")]) == 0
    assert "data:" not in capsys.readouterr().out
    width, _ = png_size(tmp_path / "out" / "activations.png")
    assert width == 2 * 420 + 3 * 16


def test_every_layer_of_both_towers_is_traced_for_activations(run_dir):
    model, aug, _, val, _ = the_run(run_dir)
    trace = {}
    model(data.center_crop(val.images[:1], aug.mean, SIZE), trace=trace)
    assert list(trace) == [f"{name}{t}" for name in show.ACTIVATIONS for t in "ab"] + ["fc8"]


@pytest.mark.parametrize("argv, message", [
    (["--indices", "3,x"], "is not a list of numbers"),
    (["--indices", "2,40"], "--indices 40 is not a row of the validation set, which has 40"),
    (["--data", "/no/such/folder"], "/no/such/folder does not exist"),
])
def test_bad_choices_are_one_sentence(run_dir, tmp_path, capsys, argv, message):
    try:
        status = show.main(["--checkpoint", str(run_dir), "--out", str(tmp_path)] + argv)
    except SystemExit as exit:                         # argparse
        status = exit.code
    assert status in (1, 2)
    error = capsys.readouterr().err
    said = [line for line in error.splitlines() if "error" in line]
    assert len(said) == 1 and message in said[0], said            # after progress lines only
    assert "classifying" not in error                             # refused before any work


# ---- a cache: rows named by their files -------------------------------------------------------

def test_cache_rows_are_named_by_their_files_even_after_skipped_files(tmp_path):
    synthetic.write_folder(str(tmp_path / "raw"), 24, 6, size=48, seed=5, extension=".png")
    disk = tmp_path / "raw" / "train" / synthetic.CLASSES[0]
    good = sorted(disk.iterdir())[0]
    # A broken file whose path ends with a good file's (class/deeper/class/0.png ends with
    # class/0.png): matched on the end of its path, the good one was taken for the broken one.
    broken = disk / "deeper" / synthetic.CLASSES[0] / good.name
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an image")
    assert prepare.main(["--data", str(tmp_path / "raw"), "--out", str(tmp_path / "cache"),
                         "--size", str(STORED), "--workers", "1"]) == 0
    files = prepare.row_files(str(tmp_path / "cache"), "train")
    images = prepare.open_cache(str(tmp_path / "cache")).train.images
    assert len(files) == len(images) == 24
    assert os.path.relpath(broken, disk.parent) not in files
    assert os.path.relpath(good, disk.parent) in files
    for row, name in enumerate(files):
        numpy.testing.assert_array_equal(
            images[row], data.load_image(tmp_path / "raw" / "train" / name, STORED))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    del manifest["splits"]["train"]["bad_rows"]         # a cache made before they were recorded
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    assert prepare.row_files(str(tmp_path / "cache"), "train") is None


def test_file_names_with_odd_characters_keep_their_rows_and_their_cache(tmp_path):
    """Names holding a tab, a carriage return or a Unicode line separator: rows named by their
    own files, and the cache used again as it is. A line break in a name is refused by name."""
    synthetic.write_folder(str(tmp_path / "raw"), 24, 6, size=48, seed=5, classes=4,
                           extension=".png")
    disk = tmp_path / "raw" / "train" / synthetic.CLASSES[0]
    odd = ["tab\there.png", "cr\rname.png", "line\u2028sep.png", "page\x0cfeed.png"]
    for name, file in zip(odd, sorted(disk.iterdir())):
        file.rename(disk / name)
    command = ["--data", str(tmp_path / "raw"), "--out", str(tmp_path / "cache"), "--size",
               str(STORED), "--workers", "1"]
    assert prepare.main(command) == 0
    files = prepare.row_files(str(tmp_path / "cache"), "train")
    images = prepare.open_cache(str(tmp_path / "cache")).train.images
    assert len(files) == len(images) == 24
    assert {os.path.join(synthetic.CLASSES[0], name) for name in odd} <= set(files)
    for row, name in enumerate(files):
        numpy.testing.assert_array_equal(
            images[row], data.load_image(tmp_path / "raw" / "train" / name, STORED))
    made = (tmp_path / "cache" / "train_images.npy").stat().st_mtime_ns
    assert prepare.main(command) == 0
    assert (tmp_path / "cache" / "train_images.npy").stat().st_mtime_ns == made   # not again
    (disk / odd[0]).rename(disk / "line\nbreak.png")
    with pytest.raises(ValueError, match=r"the file '.*line\\nbreak.png' has a line break in "
                       "its name; rename it"):
        data.find_images(str(tmp_path / "raw" / "train"))


def test_file_names_that_are_not_utf8_are_cached_and_class_folders_refused(tmp_path):
    """A Latin-1 file name (an old zip): decoded, named in the cache's lists by its own bytes,
    and the cache used again; a bad one is listed in bad_files.txt. A Latin-1 class folder is
    refused by name: its name goes into checkpoints and pictures."""
    synthetic.write_folder(str(tmp_path / "raw"), 12, 6, size=48, seed=5, classes=3,
                           extension=".png")
    disk = os.fsencode(tmp_path / "raw" / "train" / synthetic.CLASSES[0])
    os.rename(os.path.join(disk, b"0.png"), os.path.join(disk, b"caf\xe9.png"))
    with open(os.path.join(disk, b"d\xe9j\xe0.png"), "wb") as f:
        f.write(b"not an image")
    command = ["--data", str(tmp_path / "raw"), "--out", str(tmp_path / "cache"), "--size",
               str(STORED), "--workers", "1"]
    assert prepare.main(command) == 0
    assert os.path.join(synthetic.CLASSES[0], os.fsdecode(b"caf\xe9.png")) in \
        prepare.row_files(str(tmp_path / "cache"), "train")
    assert b"d\xe9j\xe0.png\t" in (tmp_path / "cache" / "bad_files.txt").read_bytes()
    said = []
    prepare.cache_for(str(tmp_path / "raw"), STORED, str(tmp_path / "cache"), log=said.append,
                      compare=True)
    assert said == [f"data: using the cache {tmp_path / 'cache'}"]
    assert train.main(["--data", str(tmp_path / "cache"), "--preset", "tiny", "--batch-size",
                       "4", "--max-steps", "1", "--run-dir", str(tmp_path / "run")]) == 0
    assert b"d\xe9j\xe0.png\t" in (tmp_path / "run" / "bad_files.txt").read_bytes()
    os.rename(disk, os.path.join(os.path.dirname(disk), b"n\xe4he"))
    with pytest.raises(ValueError, match=r"the class folder '.*n\\udce4he' has a name that is "
                       "not UTF-8"):
        data.find_images(str(tmp_path / "raw" / "train"))


def test_a_folder_of_other_classes_is_refused_before_it_is_decoded(run_dir, tmp_path, capsys):
    """Decoding a folder into its cache can take hours: its classes are checked first."""
    synthetic.write_folder(str(tmp_path / "other"), 4, 2, size=32, extension=".png")
    os.rename(tmp_path / "other" / "train" / synthetic.CLASSES[0], tmp_path / "other" / "train" /
              "zebra")
    assert show.main(["--checkpoint", str(run_dir / "last.npz"), "--data",
                      str(tmp_path / "other"), "--out", str(tmp_path / "out")]) == 1
    assert "has classes that checkpoint" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "other")) == ["train", "val"]   # no cache was made


def test_a_cache_whose_images_were_deleted_is_still_shown(run_dir, tmp_path):
    """The class check before decoding reads folder names only: a folder whose images were
    deleted once decoded (its class folders kept) is shown from its cache."""
    synthetic.write_folder(str(tmp_path / "raw"), 12, 4, size=48, seed=3, extension=".png")
    checkpoint_classes = checkpoint.read(str(run_dir / "last.npz"), "meta")[1]["classes"]
    assert sorted(os.listdir(tmp_path / "raw" / "train")) == sorted(checkpoint_classes)
    prepare.cache_for(str(tmp_path / "raw"), STORED, log=lambda line: None)
    for image in (tmp_path / "raw").glob("*/*/*.png"):
        image.unlink()
    assert show.main(["--checkpoint", str(run_dir / "last.npz"), "--data", str(tmp_path / "raw"),
                      "--out", str(tmp_path / "out"), "--only", "confusion"]) == 0


def test_a_cache_folder_it_cannot_make_is_refused_naming_show_s_own_option(run_dir, tmp_path,
                                                                        monkeypatch, capsys):
    """--out is show's pictures folder: the read-only data folder's advice named it, where
    --cache is what helps (prepare's own --out is named by prepare alone)."""
    synthetic.write_folder(str(tmp_path / "ro"), 12, 4, size=48, seed=3, extension=".png")
    makedirs = os.makedirs

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return makedirs(path, *args, **kwargs)
    monkeypatch.setattr(os, "makedirs", read_only)
    assert show.main(["--checkpoint", str(run_dir / "last.npz"), "--data", str(tmp_path / "ro"),
                      "--out", str(tmp_path / "out")]) == 1
    cache = prepare.default_cache(str(tmp_path / "ro"), STORED)
    assert capsys.readouterr().err.endswith(
        f"error: cannot create the cache folder {cache} (Read-only file system); pass a writable "
        "folder with --cache\n")
