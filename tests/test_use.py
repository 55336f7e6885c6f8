"""python -m alexnet.evaluate, alexnet.predict and alexnet.filters on a tiny checkpoint, and how
they and alexnet.show end: a user's mistake, Ctrl-C, a closed pipe."""
import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy
import pytest
from PIL import Image

from alexnet import (checkpoint, cli, data, evaluate, filters, plots, predict, prepare, show,
                     synthetic, train)
from alexnet.model import PRESETS, AlexNet
from minigrad import backend

SIZE = PRESETS["tiny"].input_size                      # 35
STORED = PRESETS["tiny"].stored_size()            # 39


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """64 drawn training images, 32 validation images, one epoch."""
    return tiny_run(64, 32, epochs=1)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """DIR/val/<class>/*.png: 30 drawn images of another size than the stored one."""
    root = tmp_path_factory.mktemp("images")
    synthetic.write_folder(str(root), 30, 30, size=48, seed=1, extension=".png")
    return root


@pytest.fixture(scope="module")
def image(image_dir):
    """One image file of image_dir."""
    return str(sorted((image_dir / "val").glob("*/*.png"))[0])


def counts(output, name):
    """(errors, images) of the line 'top-1 error 12.34% (4 of 32)'."""
    errors, images = re.search(rf"{name} error [\d.]+% \((\d+) of (\d+)\)", output).groups()
    return int(errors), int(images)


# ---- views ------------------------------------------------------------------------------------

def test_ten_views_are_the_center_the_corners_and_their_mirrors():
    images = numpy.arange(2 * 3 * 6 * 6, dtype=numpy.uint8).reshape(2, 3, 6, 6)
    mean = numpy.random.default_rng(0).random((3, 6, 6)).astype(numpy.float32)
    views = data.ten_views(images, mean, 4)
    assert views.shape == (10, 2, 3, 4, 4) and views.dtype == numpy.float32
    windows = [(1, 1), (0, 0), (0, 2), (2, 0), (2, 2)]          # (top, left): center, corners
    expected = [images[:, :, t:t + 4, l:l + 4] - mean[:, t:t + 4, l:l + 4] for t, l in windows]
    expected += [view[..., ::-1] for view in expected]          # the horizontal reflections
    for i, view in enumerate(expected):
        numpy.testing.assert_array_equal(views[i], view, err_msg=f"view {i}")
    numpy.testing.assert_array_equal(data.center_crop(images, mean, 4), expected[0])
    split = data.Split(images, numpy.arange(2))
    numpy.testing.assert_array_equal(data.center_batch(split, numpy.arange(2),
                                                       data.Augmentation.of(images), 4)[0],
                                     data.center_crop(images, data.mean_image(images), 4))


def test_checkpoint_stores_the_training_sets_mean_image(run_dir):
    aug = checkpoint.load_augmentation(str(run_dir / "last.npz"))
    train_images = synthetic.make_splits(64, 32, STORED, seed=0)["train"][0]
    expected = data.Augmentation.of(train_images)
    assert aug.mean.shape == (3, STORED, STORED)
    numpy.testing.assert_array_equal(aug.mean, expected.mean)
    numpy.testing.assert_array_equal(aug.eigenvalues, expected.eigenvalues)
    numpy.testing.assert_array_equal(aug.eigenvectors, expected.eigenvectors)


# ---- evaluate ---------------------------------------------------------------------------------

def test_one_view_agrees_with_the_training_loops_evaluation(run_dir, image_dir, tmp_path, capsys):
    ckpt = str(run_dir / "last.npz")
    assert evaluate.main(["--checkpoint", ckpt, "--data", str(image_dir), "--batch-size", "16",
                          "--out", str(tmp_path)]) == 0
    output, progress = capsys.readouterr()
    assert re.search(r"classifying: 30/30 images, \d+ img/s, ETA 0m00s\n", progress)
    model, meta = checkpoint.load_model(ckpt)
    paths, labels, _ = data.find_images(str(image_dir / "val"), meta["classes"])
    split = data.Split(data.decode_files(paths, STORED)[0], labels)
    _, top1, top5, _ = train.evaluate(model, split, checkpoint.load_augmentation(ckpt), SIZE, 16)
    assert len(split) == 30 and counts(output, "top-1") == (round(top1 * 30), 30)
    assert counts(output, "top-5") == (round(top5 * 30), 30)
    rows = list(csv.DictReader(open(tmp_path / "per_class.csv")))
    assert sum(round(float(r["top1_accuracy"]) * int(r["images"])) for r in rows) == \
        30 - round(top1 * 30)


def test_a_folder_is_read_a_chunk_at_a_time(run_dir, image_dir, tmp_path, monkeypatch, capsys):
    """Not the whole folder in memory (ImageNet's val: 9.8 GB): the same counts in chunks of 7,
    an unreadable file named and left out."""
    argv = ["--checkpoint", str(run_dir), "--out", str(tmp_path)]
    assert evaluate.main(argv + ["--data", str(image_dir)]) == 0
    whole = capsys.readouterr().out
    shutil.copytree(image_dir / "val", tmp_path / "val")
    broken = tmp_path / "val" / sorted(os.listdir(tmp_path / "val"))[0] / "broken.png"
    broken.write_bytes(b"not an image")
    decode, sizes = data.decode_files, []
    monkeypatch.setattr(evaluate, "FOLDER_CHUNK", 7)
    monkeypatch.setattr(data, "decode_files", lambda paths, *a: sizes.append(len(paths)) or
                        decode(paths, *a))
    assert evaluate.main(argv + ["--data", str(tmp_path / "val")]) == 0
    out, err = capsys.readouterr()
    assert sizes == [7, 7, 7, 7, 3]                                   # 31 files
    assert [counts(out, k) for k in ("top-1", "top-5")] == [counts(whole, k) for k in
                                                             ("top-1", "top-5")]
    assert f"skipped {broken}: UnidentifiedImageError" in err and "31/31 images" in err


def test_a_prepared_cache_evaluates_like_its_image_folder(run_dir, image_dir, tmp_path, capsys):
    synthetic.write_folder(str(tmp_path / "raw"), 30, 30, size=48, seed=1, extension=".png")
    assert prepare.main(["--data", str(tmp_path / "raw"), "--out", str(tmp_path / "cache"),
                         "--size", str(STORED), "--workers", "1"]) == 0
    ckpt = str(run_dir / "last.npz")
    results, last_lines = [], []
    for source in (tmp_path / "cache", image_dir):
        capsys.readouterr()
        assert evaluate.main(["--checkpoint", ckpt, "--data", str(source), "--out", str(tmp_path)]) == 0
        output = capsys.readouterr().out
        results.append((counts(output, "top-1"), counts(output, "top-5")))
        last_lines.append(output.splitlines()[-1])
    assert results[0] == results[1] and results[0][0][1] == 30
    path = tmp_path / "per_class.csv"              # the second evaluation replaces the first's
    assert last_lines == [f"per-class accuracy: {path}",
                          f"per-class accuracy: {path} (replaced the earlier one)"]


def test_evaluate_says_how_long_the_checkpoint_trained_as_train_does(tmp_path):
    meta = {"step": 21, "epoch": 2, "batch": 1, "train_images": 100,
            "config": {"batch_size": 16}}              # 6 steps an epoch: 2 and 1/6 epochs
    assert evaluate.trained(meta) == "step 21, 2.17 epochs"
    assert evaluate.trained({"step": 3, "epoch": 0, "batch": 3}) == "step 3, epoch 1"


def test_per_class_csv_has_no_top5_column_with_5_classes_or_fewer(tmp_path):
    ones = numpy.ones(5, int)
    evaluate.write_per_class(tmp_path / "five.csv", list("abcde"), list("abcde"), ones, ones, ones)
    assert (tmp_path / "five.csv").read_text().splitlines()[:2] == [
        "class,name,images,top1_accuracy", "a,a,1,1.0000"]
    six = numpy.ones(6, int)
    evaluate.write_per_class(tmp_path / "six.csv", list("abcdef"), list("abcdef"), six, six, six)
    assert (tmp_path / "six.csv").read_text().splitlines()[0].endswith(",top5_accuracy")


def test_ten_views_run_and_write_per_class_csv(run_dir, image_dir, capsys):
    # DIR may also be the folder of class folders itself; --out defaults to the checkpoint's.
    assert evaluate.main(["--checkpoint", str(run_dir), "--data", str(image_dir / "val"),
                          "--views", "10"]) == 0
    output = capsys.readouterr().out
    assert "10 views" in output and counts(output, "top-5")[1] == 30
    assert "most confused" in output or "no image was confused" in output
    rows = list(csv.DictReader(open(run_dir / "per_class.csv")))
    assert [r["class"] for r in rows] == list(synthetic.CLASSES)
    assert sum(int(r["images"]) for r in rows) == 30
    assert all(0 <= float(r["top1_accuracy"]) <= float(r["top5_accuracy"]) <= 1 for r in rows)


def test_ten_view_probabilities_are_the_mean_of_the_views(run_dir):
    model, _ = checkpoint.load_model(str(run_dir))
    images = synthetic.make_images(3, size=STORED, seed=2)[0]
    mean = checkpoint.load_augmentation(str(run_dir)).mean
    probs = evaluate.probabilities(model, images, mean, SIZE, views=10)
    per_view = [evaluate.softmax(model(view)) for view in data.ten_views(images, mean, SIZE)]
    numpy.testing.assert_allclose(probs, numpy.mean(per_view, axis=0), rtol=1e-12)
    numpy.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_scores_count_ties_and_small_class_counts_as_argmax_does():
    probs = evaluate.softmax(numpy.array([[0.0, 0.0, 0.0], [1.0, 3.0, 2.0], [5.0, 1.0, 5.0]]))
    numpy.testing.assert_allclose(probs.sum(axis=1), 1.0)
    e = numpy.exp([1.0, 3.0, 2.0])
    numpy.testing.assert_allclose(probs[1], e / e.sum(), rtol=1e-12)     # float64, not float32
    labels = numpy.array([1, 2, 2])
    images, hits1, hits5, counts = evaluate.scores(probs, labels, 3)
    # row 0: a tie between all three goes to class 0, as argmax says; row 2: class 0 over 2
    numpy.testing.assert_array_equal(hits1, [0, 0, 0])
    numpy.testing.assert_array_equal(hits5, [0, 1, 2])           # top-5 of 3 classes: all
    numpy.testing.assert_array_equal(images, [0, 1, 2])
    numpy.testing.assert_array_equal(counts.diagonal(), hits1)
    numpy.testing.assert_array_equal(evaluate.top_k_hits(probs, labels, 2), [True, True, True])
    assert train.top_k_errors(probs, labels) == [1.0, 0.0]


def test_class_mismatch_is_one_sentence_naming_the_classes(run_dir, tmp_path, capsys):
    (tmp_path / "val" / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "val" / "cat" / "a.png")
    assert evaluate.main(["--checkpoint", str(run_dir / "best.npz"), "--data", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cat" in error and "was not trained on" in error
    assert synthetic.CLASSES[0] in error


def test_user_errors_are_one_sentence_without_traceback(run_dir, image_dir, image, tmp_path,
                                                        capsys):
    missing = str(tmp_path / "nope.npz")
    for main, argv in ((evaluate.main, ["--checkpoint", missing, "--data", str(image_dir)]),
                       (evaluate.main, ["--checkpoint", str(run_dir / "best.npz"), "--data",
                                        missing]),
                       (predict.main, ["--checkpoint", missing, image]),
                       (filters.main, ["--checkpoint", missing])):
        assert main(argv) == 1
        error = capsys.readouterr().err
        assert error.startswith("error: ") and "does not exist" in error and error.count("\n") == 1


def test_evaluate_names_what_its_data_is_instead_of_an_image_folder(run_dir, image_dir, image,
                                                                    tmp_path, capsys):
    """A file was called missing; a data set without val/ was said to have a class 'train'; a
    class folder and a run directory were told to be sorted with ImageNet's CSV."""
    shutil.copytree(image_dir / "val", tmp_path / "only-train" / "train")
    class_folder = os.path.dirname(image)
    for folder, said in ((image, f"data folder {image} is a file; pass a folder with "
                                 "val/<class>/<images>"),
                         (str(tmp_path / "only-train"), f"{tmp_path / 'only-train'} has a train/ "
                          "folder but no val/ folder; pass a folder with val/<class>/<images>, "
                          f"or {tmp_path / 'only-train' / 'train'} to evaluate"),
                         (class_folder, f"{class_folder} is the folder of one class "
                          f"({os.path.basename(class_folder)}); pass the folder above it, which "
                          f"holds a folder per class: {image_dir / 'val'}\n"),
                         (str(run_dir), f"{run_dir} is a run directory of alexnet.train, a "
                          "checkpoint (for --checkpoint), not data")):
        assert evaluate.main(["--checkpoint", str(run_dir / "best.npz"), "--data", folder]) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"error: {said}") and error.count("\n") == 1, error


def test_a_checkpoint_without_the_mean_image_says_so(run_dir, image_dir, tmp_path, capsys):
    params, _, meta = checkpoint.load(str(run_dir))
    old = str(tmp_path / "old.npz")
    numpy.savez(old, **{f"model.{k}": v for k, v in params.items()},
                meta=numpy.array(json.dumps(meta)))
    assert evaluate.main(["--checkpoint", old, "--data", str(image_dir)]) == 1
    assert "mean image" in capsys.readouterr().err


def test_progress_rewrites_one_line_at_most_four_times_a_second_on_a_terminal(monkeypatch,
                                                                              capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = cli.Progress("reading", 1000)
    for done in range(1, 1001):                    # far faster than 4 a second: only the last
        progress(done)
    line = capsys.readouterr().err
    assert line.startswith("\r  reading: 1,000/1,000 images, ") and line.endswith("\033[K\n")
    assert line.count("\r") == 1


def test_a_line_said_during_progress_on_a_terminal_is_not_written_into_it(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = cli.Progress("reading", 10)
    progress.last = 0                                   # long ago: the next count is drawn
    progress(1)
    progress.say("a.png: cannot be read")
    progress(2)                                         # at once: the line was erased
    lines = capsys.readouterr().err.split("\r")
    assert lines[1].startswith("  reading: 1/10 images") and lines[2] == "\033[Ka.png: cannot " \
        "be read\n" and lines[3].startswith("  reading: 2/10 images")
    hidden = cli.Progress("reading", 10, shown=False)
    hidden(10)
    hidden.say("b.png: cannot be read")
    assert capsys.readouterr().err == "b.png: cannot be read\n"


def refuse(*args, **kwargs):
    raise AssertionError("the network ran before the output folder was checked")


@pytest.mark.parametrize("command, argv", [
    (evaluate, lambda images: ["--data", str(images)]),
    (show, lambda images: []),
], ids=["evaluate", "show"])
def test_an_unwritable_out_is_refused_before_any_work(command, argv, run_dir, image_dir, tmp_path,
                                                      monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(AlexNet, "forward", refuse)
    assert command.main(["--checkpoint", str(run_dir), "--out", str(blocker)] +
                        argv(image_dir)) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (f"error: cannot write to {blocker} (a "
                                                        "file of that name is there); pass --out "
                                                        "with a writable folder")


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt            # what Ctrl-C raises in the middle of the work


@pytest.mark.parametrize("command, argv, said", [
    (evaluate, lambda images, out: ["--data", str(images), "--out", str(out)],
     "nothing was written"),
    (predict, lambda images, out: [str(images)], "the images printed above are classified"),
    (show, lambda images, out: ["--out", str(out)], "the pictures written so far stay"),
], ids=["evaluate", "predict", "show"])
def test_ctrl_c_is_one_line_and_status_130(command, argv, said, run_dir, image_dir, tmp_path,
                                           monkeypatch, capsys):
    monkeypatch.setattr(AlexNet, "forward", interrupt)
    try:
        status = command.main(["--checkpoint", str(run_dir)] + argv(image_dir, tmp_path))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended in a traceback")
    assert status == 130
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"interrupted: {said}")
    assert list(tmp_path.iterdir()) == []          # no per_class.csv, no picture, no .tmp file


# ---- predict and filters ----------------------------------------------------------------------

def test_predict_prints_top5_per_image_and_names_unreadable_files(run_dir, tmp_path, capsys):
    grey = tmp_path / "grey.png"
    Image.new("L", (90, 30), 128).save(grey)                    # another mode, another shape
    rgba = tmp_path / "shape.png"
    Image.fromarray(synthetic.make_images(1, size=60, seed=3)[0][0].transpose(1, 2, 0)) \
        .convert("RGBA").save(rgba)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert predict.main(["--checkpoint", str(run_dir), str(grey), str(broken), str(rgba)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if line in (str(grey), str(rgba))]
    assert [lines[i] for i in heads] == [str(grey), str(rgba)]
    for i in heads:                                              # "  12.34%  disk" five times
        names = [line.split()[-1] for line in lines[i + 1:i + 6]]
        assert all(line.startswith("  ") and line.split()[0].endswith("%")
                   for line in lines[i + 1:i + 6])
        assert len(set(names)) == 5 and set(names) <= set(synthetic.CLASSES)
    assert "broken.jpg" in err and "cannot be read" in err


def test_predict_batches_print_what_one_image_at_a_time_prints(run_dir, image_dir, tmp_path,
                                                                capsys):
    """--batch-size images per forward pass, the lines and their order as with one at a time;
    an unreadable file amid a batch is named and skipped, the others classified. More images
    than a batch show a progress line on stderr."""
    folder = tmp_path / "val"
    shutil.copytree(image_dir / "val", folder)
    broken = folder / sorted(os.listdir(folder))[1] / "broken.png"
    broken.write_bytes(b"not an image")
    outputs = []
    for batch in ("1", "7", "128"):
        assert predict.main(["--checkpoint", str(run_dir / "last.npz"), str(folder),
                             "--batch-size", batch]) == 1
        out, err = capsys.readouterr()
        outputs.append(out)
        assert f"{broken}: cannot be read (UnidentifiedImageError: " in err
        assert err.endswith("1 of 31 images could not be read\n")
        assert ("reading and classifying: 31/31 images" in err) == (batch != "128")
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0].count("\n") == 6 * 30 and str(broken) not in outputs[0]


def test_predict_takes_its_options_after_the_images(run_dir, image, capsys):
    assert predict.main([image, "--checkpoint", str(run_dir / "last.npz"), image, "--top",
                         "2"]) == 0
    assert capsys.readouterr().out.splitlines()[::3] == [image, image]


def test_predict_takes_every_argument_after_a_double_dash_as_an_image(run_dir, image, tmp_path,
                                                                     monkeypatch, capsys):
    """An image whose name starts with a dash goes after --; Python 3.11's intermixed parsing
    lost the -- and asked for an IMAGE when none came before it."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(image, "-weird.png")
    checkpoint_file = str(run_dir / "last.npz")
    assert predict.main(["--checkpoint", checkpoint_file, "--", "-weird.png"]) == 0
    assert capsys.readouterr().out.splitlines()[::6] == ["-weird.png"]
    assert predict.main([image, "--top", "2", "--checkpoint", checkpoint_file, "--",
                         "-weird.png"]) == 0
    assert capsys.readouterr().out.splitlines()[::3] == [image, "-weird.png"]
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--checkpoint", checkpoint_file, "--"])
    assert stopped.value.code == 2 and "the following arguments are required: IMAGE" in \
        capsys.readouterr().err


def test_predict_points_an_image_named_like_an_option_to_the_double_dash(capsys):
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--checkpoint", "x", "-dash.png"])
    assert stopped.value.code == 2 and capsys.readouterr().err.endswith(
        "error: unrecognized arguments: -dash.png (an image whose name starts with a dash goes "
        "after --: -- -dash.png) (see --help)\n")


def test_predict_refuses_a_missing_image_before_it_loads_the_checkpoint(run_dir, image, tmp_path,
                                                                        capsys):
    missing = str(tmp_path / "nope.jpg")
    assert predict.main(["--checkpoint", str(run_dir), image, missing]) == 1
    out, err = capsys.readouterr()                  # not even "using best.npz" came before it
    assert out == "" and err == f"error: no such file: {missing}; pass image files or folders " \
        "of them\n"


def test_predict_ends_quietly_when_its_reader_stops(run_dir, image_dir):
    read, write = os.pipe()
    os.close(read)                          # the reader is gone, as `| head` leaves it
    result = subprocess.run([sys.executable, "-m", "alexnet.predict", "--checkpoint", str(run_dir),
                             str(image_dir / "val")], stdout=write, stderr=subprocess.PIPE,
                            text=True)
    os.close(write)
    assert result.returncode == 141                          # 128 + SIGPIPE, as a shell says
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr


def test_predict_prints_only_predictions_on_stdout(run_dir, image):
    result = subprocess.run([sys.executable, "-m", "alexnet.predict", "--checkpoint", str(run_dir),
                             image], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.splitlines()[0] == image


def test_predict_refuses_a_folder_without_images_and_a_url(run_dir, tmp_path, capsys):
    url = "https://example.com/cat.jpg"
    for argument, message in (
            (str(tmp_path), f"no images found under {tmp_path} (extensions: .jpg, "),
            (url, f"{url} is a URL, and predict reads only local files: download it first")):
        assert predict.main(["--checkpoint", str(run_dir), argument]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_predict_tells_to_convert_heic_photos_as_training_does(run_dir, image, tmp_path, capsys):
    """A phone's .heic photo was an UnidentifiedImageError alone; a folder of them had 'no
    images', and beside other images they were left out without a word."""
    photo = tmp_path / "photos" / "IMG_0001.heic"
    photo.parent.mkdir()
    photo.write_bytes(b"\0\0\0\x18ftypheic")
    convert = "convert the .heic images, which Pillow does not read, to JPEG or PNG\n"
    assert predict.main(["--checkpoint", str(run_dir / "best.npz"), str(photo)]) == 1
    assert re.search(f"^{re.escape(str(photo))}: cannot be read \\(UnidentifiedImageError: .*\\); "
                     "skipped: convert it to JPEG or PNG, as Pillow does not read .heic images$",
                     capsys.readouterr().err, re.MULTILINE)
    assert predict.main(["--checkpoint", str(run_dir / "best.npz"), str(photo.parent)]) == 1
    assert capsys.readouterr().err == f"error: no images found under {photo.parent}: 1 file " \
        f"under {photo.parent} is not an image by its extension and was left out (.heic: 1); " \
        f"{convert}"
    shutil.copy(image, photo.parent)
    assert predict.main(["--checkpoint", str(run_dir / "best.npz"), str(photo.parent)]) == 0
    assert capsys.readouterr().err.startswith(f"note: 1 file under {photo.parent} is not an "
                                              "image by its extension and was left out (.heic: "
                                              f"1); {convert}")


def test_a_file_that_is_not_a_checkpoint_is_named_as_such(image, capsys):
    assert predict.main(["--checkpoint", image, image]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {image} is not a checkpoint written by alexnet.train (.npz): ")
    assert "pickle" not in error and error.count("\n") == 1


def test_a_run_directory_means_its_best_npz_named_on_stderr(run_dir, image, image_dir, tmp_path,
                                                            capsys):
    """predict and evaluate (show and filters too: one resolver) take a run directory's best.npz,
    the weights of its lowest validation error, or its last.npz before its first evaluation."""
    run = tmp_path / "run"
    run.mkdir()
    assert predict.main(["--checkpoint", str(run), image]) == 1            # neither: both named
    assert capsys.readouterr().err == (f"error: {run} has neither best.npz nor last.npz; pass a "
                                       "run directory of alexnet.train or one of its .npz "
                                       "files\n")
    for name in ("last.npz", "best.npz"):
        checkpoint.copy(str(run_dir / name), str(run / name))
    said = f"using {run / 'best.npz'}, the run's weights that did best on its validation set\n"
    assert predict.main([image, "--checkpoint", str(run)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(image) and err == said
    assert evaluate.main(["--checkpoint", str(run), "--data", str(image_dir)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{run / 'best.npz'} (step ") and err.startswith(said)
    os.remove(run / "best.npz")
    assert predict.main(["--checkpoint", str(run), image]) == 0
    assert capsys.readouterr().err == (f"using {run / 'last.npz'}: the run has no best.npz (it "
                                       "was not evaluated yet)\n")


def test_an_interrupted_atomic_write_leaves_neither_a_half_file_nor_its_temporary(tmp_path):
    path = tmp_path / "last.npz"
    path.write_bytes(b"the old checkpoint")

    def write(f):
        f.write(b"half of a new one")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.write_atomically(str(path), write)
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]
    assert path.read_bytes() == b"the old checkpoint"


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path):
    path = tmp_path / "last.npz"
    path.write_bytes(b"the old checkpoint")

    def write(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))       # what f.write raises

    with pytest.raises(OSError) as raised:
        checkpoint.write_atomically(str(path), write)
    assert str(raised.value) == f"cannot write {path} (No space left on device); the file it " \
        "would have replaced, if any, is as it was"
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]
    assert path.read_bytes() == b"the old checkpoint"

    def encode(f):
        raise OSError("encoder error -2 when writing image file")        # Pillow's, no errno

    with pytest.raises(OSError, match="^encoder error -2 when writing image file$"):
        checkpoint.write_atomically(str(path), encode)


# ---- readable class names ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    """A tiny run on an image folder that holds ImageNet's kind of class-name file, which names
    every class but the last and one class the folder lacks."""
    root = tmp_path_factory.mktemp("named")
    synthetic.write_folder(str(root / "images"), 40, 20, size=48, seed=2, extension=".png")
    classes = sorted(path.name for path in (root / "images" / "train").iterdir())
    # The first name holds U+E000, a private-use character that no font draws.
    names = [f"the {name}, a shape" for name in classes[:-1]]
    names[0] += " \ue000"
    (root / "images" / "LOC_synset_mapping.txt").write_text("\ufeff" +          # a BOM
        "".join(f"{folder} {name}\n" for folder, name in zip(classes, names)) + "n0000 a cat\n")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert train.main(["--preset", "tiny", "--data", str(root / "images"), "--batch-size",
                           "16", "--epochs", "1", "--run-dir", str(root / "run")]) == 0
    return root, classes, names + [classes[-1]], output.getvalue()


def test_class_names_are_found_in_the_data_folder_and_kept_in_the_checkpoint(named_run):
    root, classes, names, output = named_run
    assert f"class names: {len(classes) - 1} of {len(classes)} classes named by " \
        f"{root / 'images' / 'LOC_synset_mapping.txt'}" in output
    assert f"note: 1 of the {len(classes)} lines of {root / 'images' / 'LOC_synset_mapping.txt'} " \
        "name no class folder ('n0000') and are not used\n" in output
    _, _, meta = checkpoint.load(str(root / "run" / "last.npz"))
    assert meta["classes"] == classes and meta["class_names"] == names
    assert checkpoint.class_names({"classes": classes}) == classes    # an older checkpoint


def test_class_names_the_pictures_cannot_draw_are_said_once(named_run):
    _, _, names, output = named_run
    said = [line for line in output.splitlines() if "draws boxes" in line]
    assert len(said) == 1 and said[0].startswith("note: the pictures' font (") and \
        f"draws boxes for 1 character of the class names (\ue000, as in {names[0]!r})" in said[0]


def test_predict_and_evaluate_speak_the_class_names(named_run, tmp_path, capsys):
    root, classes, names, _ = named_run
    folder = root / "images" / "val" / classes[0]              # a folder: all its images
    assert predict.main(["--checkpoint", str(root / "run"), str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(sorted(folder.iterdir())[0])
    assert len(lines) == 6 * len(list(folder.iterdir()))
    shown = [line.split("%  ", 1)[1] for line in lines[1:6]]
    named = {f"{name} ({wnid})" for name, wnid in zip(names, classes) if name != wnid}
    assert len(shown) == 5 and set(shown) <= named | {classes[-1]}  # the last one has no name
    assert evaluate.main(["--checkpoint", str(root / "run" / "last.npz"), "--data",
                          str(root / "images"), "--out", str(tmp_path)]) == 0
    with open(tmp_path / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["class"], row["name"]) for row in rows] == list(zip(classes, names))


def test_a_class_name_file_for_other_classes_is_refused_in_one_sentence(named_run, tmp_path,
                                                                        capsys):
    root, _, _, _ = named_run
    other = tmp_path / "synset_words.txt"
    other.write_text("n01440764 tench, Tinca tinca\n")
    assert train.main(["--preset", "tiny", "--data", str(root / "images"), "--class-names",
                       str(other), "--epochs", "1", "--run-dir", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: class names {other} names none of the ") and \
        "give the file whose lines start with the class folders' names" in error


def test_a_class_name_file_found_in_the_data_for_other_classes_is_a_note(tmp_path, capsys):
    """Given with --class-names it is refused (above); found in --data, training goes on with
    the folder names."""
    synthetic.write_folder(str(tmp_path / "images"), 16, 8, size=48, extension=".png")
    (tmp_path / "images" / "synset_words.txt").write_text("n01440764 tench, Tinca tinca\n")
    assert train.main(["--preset", "tiny", "--data", str(tmp_path / "images"), "--max-steps",
                       "1", "--run-dir", str(tmp_path / "run")]) == 0
    assert f"note: class names {tmp_path / 'images' / 'synset_words.txt'} names none of the " \
        in capsys.readouterr().out
    classes = sorted(path.name for path in (tmp_path / "images" / "train").iterdir())
    assert checkpoint.load(str(tmp_path / "run" / "last.npz"))[2]["class_names"] == classes


def test_a_folder_name_with_spaces_is_followed_by_a_tab_and_unknown_lines_are_told(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("red circle\tRote Kreise\nblue square Blaue Quadrate\nn0000\ta cat\n\n")
    notes = []
    classes = ["blue square", "green", "red circle"]
    assert data.read_class_names(str(path), classes, notes.append) == ["blue square", "green",
                                                                       "Rote Kreise"]
    assert notes == [f"note: 2 of the 3 lines of {path} name no class folder ('blue', 'n0000') "
                     "and are not used; a folder name with spaces is followed by a tab, not a "
                     "space"]


def test_a_class_name_file_with_spaces_for_tabs_is_told_of_the_tab(tmp_path):
    """Every line of this file splits at the space inside its folder's name, so it names no
    class: the refusal is where the tab must be told of."""
    path = tmp_path / "names.txt"
    path.write_text("red circle Rote Kreise\nblue square Blaue Quadrate\n")
    with pytest.raises(ValueError) as raised:
        data.read_class_names(str(path), ["blue square", "red circle"])
    assert str(raised.value) == f"class names {path} names none of the 2 classes (the first " \
        "class folder is 'blue square'); give the file whose lines start with the class " \
        "folders' names (a folder name with spaces is followed by a tab, not a space)"
    path.write_text("n0000 a cat\n")
    with pytest.raises(ValueError) as raised:
        data.read_class_names(str(path), ["cat", "dog"])
    assert str(raised.value).endswith("(the first class folder is 'cat'); give the file whose "
                                      "lines start with the class folders' names")


def test_filters_writes_both_towers(run_dir, tmp_path, capsys):
    out = tmp_path / "conv1.png"
    assert filters.main(["--checkpoint", str(run_dir / "last.npz"), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as image:
        width, height = image.size
        drawn = numpy.asarray(image)
    assert image.format == "PNG" and height > width / 2      # two blocks, one above the other
    conv1, _ = checkpoint.read(str(run_dir / "last.npz"), "model.conv1")
    plots.filter_grid(conv1["a.weight"], conv1["b.weight"], str(tmp_path / "expected.png"))
    with Image.open(tmp_path / "expected.png") as expected:
        numpy.testing.assert_array_equal(drawn, numpy.asarray(expected))    # a above, b below


def test_filters_refuses_an_out_it_cannot_write_in_one_sentence(run_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for out, said in ((tmp_path, f"--out {tmp_path} is a folder; name the .png file to write"),
                      (tmp_path / "file" / "conv1.png", f"cannot write to {tmp_path / 'file'}"),
                      (tmp_path / "conv1.jpg", f"--out {tmp_path / 'conv1.jpg'}: the filters are "
                       "drawn as a PNG; name a .png file")):
        assert filters.main(["--checkpoint", str(run_dir), "--out", str(out)]) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"error: {said}") and error.count("\n") == 1, error


def test_the_modules_run_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "alexnet.predict", "--checkpoint",
                             str(tmp_path / "none.npz"), "a.png"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no such file: a.png" in result.stderr


@pytest.mark.skipif(backend.gpu_count() < 2, reason="needs two GPUs (PYTHONPATH=tests/fakecupy "
                    "gives two fake ones)")
def test_every_command_runs_with_tower_a_off_the_first_gpu(tmp_path, image_dir):
    """With --devices 1,0 the work around the network (a batch's error, crops, top-k) must run
    where tower a's output is, GPU 1, and not on GPU 0, each thread's current GPU at start."""
    run = str(tmp_path / "run")
    devices = ["--devices", "1,0"]
    assert train.main(["--preset", "tiny", "--synthetic-train", "64", "--synthetic-val", "32",
                       "--batch-size", "16", "--epochs", "1", "--run-dir", run] + devices) == 0
    image = next((image_dir / "val").glob("*/*.png"))
    for main, argv in ((evaluate.main, ["--data", str(image_dir), "--views", "10"]),
                       (predict.main, [str(image)]),
                       (show.main, ["--out", str(tmp_path / "show"), "--neighbours", "2",
                                    "--queries", "2"])):
        backend.use(0)                                     # as a new process starts
        assert main(["--checkpoint", run] + argv + devices) == 0, main.__module__


# ---- every command checks its options --------------------------------------------------------

@pytest.mark.parametrize("command, argv, message", [
    (prepare, ["--data", ".", "--size", "0"], "argument --size: 0 is too small"),
    (prepare, ["--data", ".", "--workers", "-1"], "argument --workers: -1 is too small"),
    (prepare, ["--data", ".", "--limit", "-3"], "argument --limit: -3 is too small"),
    (predict, ["--checkpoint", "x", "--top", "0", "a.png"], "argument --top: 0 is too small"),
    (predict, ["--checkpoint", "x", "--devices", "0", "a.png"], "argument --devices: '0' is not two"),
    (train, ["--devices", "cpu,7"], "argument --devices: device '7' is not available"),
    (evaluate, ["--checkpoint", "x", "--data", ".", "--batch-size", "0"],
     "argument --batch-size: 0 is too small"),
    (filters, ["--checkpoint", "x", "--columns", "0"], "argument --columns: 0 is too small"),
    (synthetic, ["--out", "x", "--train", "0"], "argument --train: 0 is too small"),
    (synthetic, ["--out", "x", "--classes", "11"], "argument --classes: the data set has 10"),
    (synthetic, ["--out", "x", "--classes", "1"], "argument --classes: 1 is too small: use 2"),
    (synthetic, ["--out", "x", "--train", "1", "--classes", "2"], "pass --train 2 or more (see"),
], ids=["prepare-size", "prepare-workers", "prepare-limit", "predict-top", "predict-devices",
        "train-devices", "evaluate-batch", "filters-columns", "synthetic-train", "synthetic-classes",
        "synthetic-one-class", "synthetic-one-image"])
def test_commands_refuse_bad_options_in_one_sentence(command, argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        command.main(argv)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and message in error and "usage:" not in error


@pytest.mark.parametrize("gpus, said", [
    (0, "no GPU was found (is CuPy installed and the driver working?); use 'cpu,cpu' (see"),
    (1, "only 1 GPU(s) were found; use '0,0' or 'cpu,cpu' (see"),
    (2, "only 2 GPU(s) were found; use GPU ids 0 to 1 (e.g. '0,1') or 'cpu,cpu' (see")],
    ids=["no-gpu", "one-gpu", "two-gpus"])
@pytest.mark.parametrize("command", [train, evaluate, predict, show])
def test_a_missing_gpu_is_refused_with_devices_that_option_takes(command, gpus, said,
                                                                 monkeypatch, capsys):
    """'use cpu' was the advice, and --devices cpu is refused: it is not two devices."""
    monkeypatch.setattr(backend, "gpu_count", lambda: gpus)
    argv = {train: [], evaluate: ["--checkpoint", "x", "--data", "."], show: ["--checkpoint", "x"],
            predict: ["--checkpoint", "x", "a.png"]}[command]
    with pytest.raises(SystemExit) as stopped:
        command.main(argv + ["--devices", "2,2"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and f"argument --devices: device '2' is not available: {said}" \
        in error and error.count("\n") == 1


def test_a_count_of_one_takes_its_noun_in_the_singular(capsys):
    """'1 images', '1 of 3 classes have': counts of 1 read as plural ones."""
    assert [cli.counted(n, "image") for n in (0, 1, 2, 1024)] == \
        ["0 images", "1 image", "2 images", "1,024 images"]
    assert cli.counted(1, "query", "queries") + cli.counted(3, "query", "queries") == \
        "1 query3 queries"
    with pytest.raises(SystemExit):
        synthetic.main(["--out", "x", "--train", "1", "--classes", "2"])
    assert "argument --train: 1 image cannot hold the 2 classes" in capsys.readouterr().err


def test_synthetic_names_a_folder_it_cannot_write_or_that_holds_files(tmp_path, capsys):
    """A folder with files in it is refused: an earlier set's images would stay among the new
    ones (10 class folders where 3 were asked for)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    small = ["--train", "2", "--val", "2", "--size", "16", "--classes", "2"]
    assert synthetic.main(["--out", str(blocker), *small]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot write {blocker}: ")
    assert synthetic.main(["--out", str(tmp_path / "a set"), *small]) == 0
    assert capsys.readouterr().out.endswith(f"--data '{tmp_path / 'a set'}'\n")
    assert synthetic.main(["--out", str(tmp_path / "a set"), *small]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'a set'} is not empty; pass --out " \
        "with a new folder\n"


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_refuses_fewer_images_than_classes(split, tmp_path, capsys):
    """5 images of 10 classes wrote 5 class folders under a line that said 10 classes: every
    class gets at least one image, or the command is refused."""
    counts = {"train": "10", "val": "10", split: "5"}
    argv = ["--out", str(tmp_path / "set"), "--train", counts["train"], "--val", counts["val"],
            "--size", "16"]
    with pytest.raises(SystemExit) as stopped:
        synthetic.main(argv)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.endswith(
        f"error: argument --{split}: 5 images cannot hold the 10 classes; pass --{split} 10 or "
        "more, or --classes 5 or fewer (see --help)\n") and error.count("\n") == 1
    assert not os.path.exists(tmp_path / "set")
    assert synthetic.main(argv + ["--classes", "5"]) == 0
    assert ", 5 classes; " in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "set" / split)) == 5


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("command", [evaluate, predict, show, filters, prepare, synthetic])
@pytest.mark.parametrize("options", ["work", "--help", "a bad option"])
def test_a_one_process_command_under_mpiexec_refuses_said_once(run_dir, tmp_path, capsys,
                                                               monkeypatch, rank, command, options):
    """mpiexec -n 2 python -m alexnet.evaluate: both would do the same work and write the same
    per_class.csv. Both refuse before reading their options (so that --help or a bad option is not
    said twice either); rank 0 says why."""
    monkeypatch.setenv("PMI_RANK", str(rank))
    monkeypatch.setenv("PMI_SIZE", "2")
    argv = {"work": ["--checkpoint", str(run_dir), "--data", str(tmp_path), "--out",
                     str(tmp_path)] if command is evaluate else ["--out", str(tmp_path)],
            "--help": ["--help"], "a bad option": ["--no-such-option"]}[options]
    with pytest.raises(SystemExit) as ended:
        command.main(argv)
    assert ended.value.code == 2
    said = "error: this command runs in one process: start it without mpiexec (only python -m " \
        "alexnet.train works over several)\n"
    assert capsys.readouterr() == ("", said if rank == 0 else "")
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_without_colour_statistics_is_told_how_to_rewrite_it(run_dir, tmp_path):
    """Checkpoints written before they carried the mean image and PCA: the message gives the
    command that rewrites last.npz with them, and for best.npz (what a run directory now
    means) to pass that last.npz after."""
    arrays, meta = checkpoint.read(str(run_dir / "last.npz"))
    old = tmp_path / "old run"
    old.mkdir()
    for name in ("last.npz", "best.npz"):
        numpy.savez(old / name, meta=numpy.array(json.dumps(meta)),
                    **{k: v for k, v in arrays.items() if not k.startswith("data.")})
    with pytest.raises(ValueError) as raised:
        checkpoint.load_augmentation(str(old / "last.npz"))
    assert str(raised.value).endswith(f"python -m alexnet.train --resume '{old}' --max-steps "
                                      f"{meta['step']}")
    with pytest.raises(ValueError) as raised:
        checkpoint.load_augmentation(str(old / "best.npz"))
    assert str(raised.value).endswith(f"--max-steps STEP (the step of that last.npz), then pass "
                                      f"--checkpoint '{old / 'last.npz'}' (the last step's "
                                      "weights: this best.npz keeps the old format)")


def test_a_command_that_fails_leaves_no_empty_folder_it_made(run_dir, tmp_path, capsys):
    """evaluate refusing a folder of other classes: the --out it made (and the folder above it,
    made for it) goes; a folder that was there stays."""
    other = tmp_path / "other"
    for split in ("train", "val"):
        (other / split / "zebra").mkdir(parents=True)
        Image.new("RGB", (40, 40), (10, 200, 10)).save(other / split / "zebra" / "z.png")
    out = tmp_path / "made" / "out"
    assert evaluate.main(["--checkpoint", str(run_dir), "--data", str(other),
                          "--out", str(out)]) == 1
    assert "has classes that checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "made").exists()
    (tmp_path / "there").mkdir()
    assert evaluate.main(["--checkpoint", str(run_dir), "--data", str(other),
                          "--out", str(tmp_path / "there")]) == 1
    assert (tmp_path / "there").is_dir()
