"""Data pipeline, training loop, checkpoints and resume, on the tiny preset (seconds on a CPU)."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types

import numpy
import pytest
from PIL import Image

import minigrad
from minigrad import backend
from alexnet import checkpoint, data, evaluate, synthetic, train
from conftest import FAKE_GPUS

TINY = ["--preset", "tiny", "--synthetic-train", "64", "--synthetic-val", "32", "--batch-size", "16",
        "--log-every", "1", "--eval-every", "1"]
E2E_EPOCHS = "34"          # 600 images, batch 32: an evaluation every 17 epochs


# ---- data -------------------------------------------------------------------------------------

def test_crop_takes_the_right_window_mirrors_and_subtracts_the_mean():
    images = numpy.arange(2 * 3 * 6 * 6, dtype=numpy.uint8).reshape(2, 3, 6, 6)
    mean = numpy.random.default_rng(0).random((3, 6, 6)).astype(numpy.float32)
    x = data.crop(images, mean, numpy.array([1, 2]), numpy.array([0, 3]), 3, numpy.array([False, True]))
    numpy.testing.assert_array_equal(x[0], images[0, :, 1:4, 0:3] - mean[:, 1:4, 0:3])
    numpy.testing.assert_array_equal(x[1], (images[1, :, 2:5, 3:6] - mean[:, 2:5, 3:6])[:, :, ::-1])


def test_mean_image_and_pca_equal_direct_numpy():
    images = numpy.random.default_rng(0).integers(0, 256, (50, 3, 8, 8)).astype(numpy.uint8)
    numpy.testing.assert_allclose(data.mean_image(images, chunk=7), images.mean(axis=0), rtol=1e-6)
    eigenvalues, eigenvectors = data.rgb_pca(images, max_pixels=10**9)
    pixels = images.transpose(0, 2, 3, 1).reshape(-1, 3).astype(numpy.float64)
    covariance = numpy.cov(pixels, rowvar=False)
    assert list(eigenvalues) == sorted(eigenvalues, reverse=True)
    for value, vector in zip(eigenvalues, eigenvectors.T):
        numpy.testing.assert_allclose(covariance @ vector, value * vector, rtol=1e-4, atol=1e-3)


def test_a_training_batch_is_the_papers_augmentation_drawn_by_hand():
    """Crop at (top, left), mirror, minus the mean's same crop, plus
    sum_i p_i * alpha_i * sqrt(lambda_i): rebuilt from the same draws in plain NumPy."""
    rng = numpy.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (64, 3, 12, 12)).astype(numpy.uint8),
                       numpy.arange(64) % 4)
    aug = data.Augmentation.of(split.images)
    indices = numpy.arange(64)
    x, labels = data.train_batch(split, indices, aug, 8, numpy.random.default_rng(5))
    draws = numpy.random.default_rng(5)                          # the same draws, in order
    tops, lefts = draws.integers(0, 5, 64), draws.integers(0, 5, 64)
    flips = draws.random(64) < 0.5
    alphas = draws.normal(0.0, 0.1, (64, 3)).astype(numpy.float32)
    for b in range(64):
        window = (slice(None), slice(tops[b], tops[b] + 8), slice(lefts[b], lefts[b] + 8))
        expected = split.images[b][window].astype(numpy.float32) - aug.mean[window]
        if flips[b]:
            expected = expected[:, :, ::-1]
        shift = aug.eigenvectors @ (alphas[b] * numpy.sqrt(aug.eigenvalues))     # (3,) RGB
        numpy.testing.assert_allclose(x[b], expected + shift[:, None, None], atol=1e-4)
    assert 16 < flips.sum() < 48 and set(tops) == set(lefts) == set(range(5))
    numpy.testing.assert_array_equal(labels, split.labels)


def test_grey_images_have_no_negative_variance_and_finite_batches():
    grey = numpy.random.default_rng(0).integers(0, 256, (20, 1, 16, 16)).astype(numpy.uint8)
    split = data.Split(numpy.repeat(grey, 3, axis=1), numpy.arange(20) % 2)      # R = G = B
    aug = data.Augmentation.of(split.images)
    assert (aug.eigenvalues >= 0).all() and aug.eigenvalues[1:].max() < 1e-6
    x, _ = next(data.batches(split, aug, 12, 8, train=True))
    assert numpy.isfinite(x).all()


def test_training_batches_are_a_function_of_seed_epoch_and_index():
    rng = numpy.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (40, 3, 12, 12)).astype(numpy.uint8), numpy.arange(40) % 4)
    aug = data.Augmentation.of(split.images)
    every = list(data.batches(split, aug, 10, 8, train=True, seed=1, epoch=2, workers=2))
    assert len(every) == 5 and every[0][0].shape == (8, 3, 10, 10)
    resumed = list(data.batches(split, aug, 10, 8, train=True, seed=1, epoch=2, start=3))
    assert len(resumed) == 2                                        # batches 3 and 4
    for (x, y), (rx, ry) in zip(every[3:], resumed):
        numpy.testing.assert_array_equal(x, rx)
        numpy.testing.assert_array_equal(y, ry)
    other_epoch = next(data.batches(split, aug, 10, 8, train=True, seed=1, epoch=3))
    assert not numpy.array_equal(every[0][1], other_epoch[1])
    val = list(data.batches(split, aug, 10, 16, train=False))
    assert [len(y) for _, y in val] == [16, 16, 8]                  # evaluation keeps every image


def test_every_random_stream_of_the_data_is_its_own(monkeypatch):
    """numpy pads a short seed key with zeros: default_rng([seed, epoch]) (the shuffle) and
    default_rng([seed, epoch, 0]) (the first batch's crops, mirrors and colour shifts) were one
    stream, and at epoch 0 also minigrad.manual_seed(seed)'s (the initial weights, dropout):
    over 1,500 seeds the first batch's crop offsets correlated 0.1 with the first initial
    weights. Every generator batches() makes starts a stream of its own, none minigrad's."""
    made, default_rng = [], numpy.random.default_rng

    def recording(seed=None):
        made.append(tuple(default_rng(seed).bit_generator.random_raw(4).tolist()))
        return default_rng(seed)
    rng = default_rng(0)
    split = data.Split(rng.integers(0, 256, (24, 3, 12, 12)).astype(numpy.uint8), numpy.arange(24))
    aug = data.Augmentation.of(split.images)
    monkeypatch.setattr(numpy.random, "default_rng", recording)
    for epoch in range(3):
        list(data.batches(split, aug, 10, 8, train=True, seed=3, epoch=epoch))
    monkeypatch.undo()
    assert len(made) == 3 * (1 + 3) and len(set(made)) == len(made)
    state = minigrad.random.get_state()
    try:       # one process; ranks 1 and 2; a resume at step 1 with another number of ranks
        for seed in (3, [3, 1], [3, 2], [3, 1, 1], [3, 2, 1]):
            minigrad.manual_seed(seed)
            assert tuple(minigrad.random.generator().bit_generator.random_raw(4).tolist()) \
                not in made
    finally:
        minigrad.random.set_state(state)


def test_a_batch_is_the_same_on_every_device(device):
    """Crops, mirrors, colour shifts and the mean are applied where the batch is used, with the
    CPU's random draws: a GPU makes the CPU's batch, to float32 rounding of the colour shift."""
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 256, (12, 3, 12, 12)).astype(numpy.uint8)
    split = data.Split(images, numpy.arange(12) % 3)
    aug = data.Augmentation.of(split.images)
    indices = numpy.array([7, 2, 9, 4, 0, 11])
    for make in (lambda d: data.train_batch(split, indices, aug, 10, numpy.random.default_rng(5),
                                            d),
                 lambda d: data.center_batch(split, indices, aug, 10, d)):
        (x_cpu, y_cpu), (x, y) = make("cpu"), make(device)
        assert backend.device_of(x) == device and x.dtype == numpy.float32
        numpy.testing.assert_allclose(backend.to_device(x, "cpu"), x_cpu, rtol=1e-6, atol=1e-4)
        numpy.testing.assert_array_equal(y, y_cpu)


def test_image_folder_skips_unreadable_files_by_name(tmp_path):
    for cls, colour in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
        folder = tmp_path / "train" / cls
        folder.mkdir(parents=True)
        Image.new("RGB", (40, 30), colour).save(folder / "a.JPG")
        Image.new("L", (20, 50), 128).save(folder / "b.png")
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "train" / "dog" / "c.jpg").symlink_to(tmp_path / "moved.jpg")   # to nothing
    (tmp_path / "train" / ".hidden").mkdir()
    paths, labels, classes = data.find_images(str(tmp_path / "train"))
    images, good, bad = data.decode_files(paths, 16)
    assert classes == ["cat", "dog"] and list(good) == [True, True, True, True, False, False]
    assert images[good].shape == (4, 3, 16, 16) and list(labels[good]) == [0, 0, 1, 1]
    assert [os.path.basename(path) for path, _ in bad] == ["broken.jpg", "c.jpg"]
    assert bad[1][1] == f"broken link to {tmp_path / 'moved.jpg'}"


def test_linked_folders_are_followed_once(tmp_path):
    cat, elsewhere = tmp_path / "train" / "cat", tmp_path / "elsewhere"
    cat.mkdir(parents=True)
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(cat / "a.jpg")
    Image.new("RGB", (8, 8)).save(elsewhere / "b.jfif")          # a JPEG by another name
    (cat / "more").symlink_to(elsewhere)                          # followed, as a class link is
    (cat / "loop").symlink_to(cat)                                # seen before: not again
    assert [os.path.relpath(p, cat) for p in data.images_below(str(cat))] == ["a.jpg",
                                                                              "more/b.jfif"]


def test_every_format_pillow_decodes_is_read_and_other_files_are_named_once(tmp_path):
    cat = tmp_path / "train" / "cat"
    cat.mkdir(parents=True)
    formats = Image.registered_extensions()
    for name in ("a.avif", "b.PGM", "c.tga", "d.jpe", "e.jp2"):            # left out once
        Image.new("RGB", (20, 20), (200, 10, 10)).save(cat / name,
                                                       formats[os.path.splitext(name)[1].lower()])
    for name in ("notes.txt", "list.txt", "IMG_0001", ".DS_Store", "._a.jpg", "Thumbs.db",
                 "desktop.ini"):
        (cat / name).write_text("not an image")
    notes = []
    paths, _, _ = data.find_images(str(tmp_path / "train"), log=notes.append)
    assert [os.path.basename(p) for p in paths] == ["a.avif", "b.PGM", "c.tga", "d.jpe", "e.jp2"]
    assert list(data.decode_files(paths, 16)[1]) == [True] * 5
    assert notes == [f"note: 3 files under {tmp_path / 'train'} are not images by their "
                     "extension and were left out (.txt: 2, no extension: 1); give an image its "
                     "format's extension (.jpg, .png, ...) to use it"]
    assert ".pdf" not in data.IMAGE_EXTENSIONS and ".h5" not in data.IMAGE_EXTENSIONS
    for path in paths:
        os.remove(path)
    with pytest.raises(ValueError, match=r"^no images found under .*/train/<class>/: 3 files "):
        data.find_images(str(tmp_path / "train"))


def test_formats_pillow_identifies_but_cannot_load_are_not_images(monkeypatch):
    """Pillow opens an MPEG file but cannot load it ("cannot load this image"), and loads EPS
    and PostScript only through Ghostscript: such files would be skipped as bad one by one."""
    from PIL import EpsImagePlugin
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: False)
    found = data.decoded_extensions()
    assert ".jpg" in found and not {".mpg", ".mpeg", ".eps", ".ps"} & set(found)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    found = data.decoded_extensions()
    assert {".eps", ".ps"} <= set(found) and not {".mpg", ".mpeg"} & set(found)


def test_a_class_folder_with_a_line_break_is_refused(tmp_path):
    (tmp_path / "new\nline").mkdir()
    with pytest.raises(ValueError, match="has a line break or tab in its name; rename it"):
        data.find_images(str(tmp_path))


def test_missing_folder_is_one_clear_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.find_images(str(tmp_path / "nope"))


# ---- the training loop ------------------------------------------------------------------------

def run_training(tmp_path, name, *extra):
    run_dir = str(tmp_path / name)
    assert train.main(TINY + ["--run-dir", run_dir, *extra]) == 0
    return run_dir


def test_a_run_writes_everything_it_promises(tmp_path, capsys):
    run_dir = run_training(tmp_path, "run", "--epochs", "2")
    for name in ("config.json", "metrics.jsonl", "classes.txt", "last.npz", "best.npz",
                 "curves.png", "conv1.png"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [r["kind"] for r in records].count("eval") == 2
    assert {"loss", "top1_error", "images_per_s", "data_share", "lr"} <= set(records[0])
    out = capsys.readouterr().out
    assert "img/s" in out and "ETA" in out and "top-5 error" in out
    params, velocities, meta = checkpoint.load(os.path.join(run_dir, "last.npz"))
    assert meta["step"] == 8 and meta["epoch"] == 2 and len(meta["classes"]) == 10
    assert "conv1a.weight" in params and "velocity.0" in velocities


def test_resume_continues_bit_for_bit(tmp_path):
    # 4 steps per epoch: stop mid-epoch at 3, resume to 7 (crossing an evaluation), against 7 at once.
    straight = run_training(tmp_path, "straight", "--epochs", "3", "--max-steps", "7")
    first = run_training(tmp_path, "split", "--epochs", "3", "--max-steps", "3")
    assert train.main(["--resume", first, "--epochs", "3", "--max-steps", "7"]) == 0
    a_params, a_vel, a_meta = checkpoint.load(os.path.join(straight, "last.npz"))
    b_params, b_vel, b_meta = checkpoint.load(os.path.join(first, "last.npz"))
    assert a_meta["step"] == b_meta["step"] == 7
    for name in a_params:
        numpy.testing.assert_array_equal(a_params[name], b_params[name], err_msg=name)
    for name in a_vel:
        numpy.testing.assert_array_equal(a_vel[name], b_vel[name], err_msg=name)
    stops = [r["reason"] for r in records_of(first) if r["kind"] == "stop"]
    assert stops == ["--max-steps 7 reached"]             # the first process's stop is gone


def test_a_resume_into_another_run_dir_branches_the_whole_run(tmp_path, capsys):
    """The new folder starts with the run up to the checkpoint: its metrics (curves from the
    start) and its best.npz, which the final line's best error speaks of; the resumed run's
    folder is left as it was."""
    run_dir = run_training(tmp_path, "r4", "--max-steps", "8")
    before = {name: (tmp_path / "r4" / name).read_bytes() for name in os.listdir(run_dir)}
    branch = str(tmp_path / "r4new")
    capsys.readouterr()
    assert train.main(["--resume", run_dir, "--run-dir", branch, "--max-steps", "10"]) == 0
    assert {name: (tmp_path / "r4" / name).read_bytes() for name in os.listdir(run_dir)} == before
    kept = [r for r in records_of(run_dir) if r["kind"] != "stop"]
    assert records_of(branch)[:len(kept)] == kept
    assert records_of(branch)[len(kept)]["step"] > 8
    best = checkpoint.load(os.path.join(branch, "best.npz"))[2]
    assert f"best validation top-1 error {best['best_top1_error']:.2%}; checkpoints in {branch}" \
        in capsys.readouterr().out


def test_resume_after_a_reduction_keeps_the_schedule_bit_for_bit(tmp_path):
    """Stopped after the learning rate was divided (step 8) and resumed: the rate, the schedule,
    the best error and the parameters go on as in one run."""
    plateau = ["--epochs", "6", "--lr-patience", "1", "--lr", "0.001", "--lr-drops", "3"]
    straight = run_training(tmp_path, "straight", *plateau, "--max-steps", "15")
    split = run_training(tmp_path, "split", *plateau, "--max-steps", "10")
    assert checkpoint.load(os.path.join(split, "last.npz"))[2]["schedule"]["reductions"] >= 1
    assert train.main(["--resume", split, "--max-steps", "15"]) == 0
    a_params, _, a_meta = checkpoint.load(os.path.join(straight, "last.npz"))
    b_params, _, b_meta = checkpoint.load(os.path.join(split, "last.npz"))
    for key in ("step", "lr", "schedule", "best_top1_error"):
        assert a_meta[key] == b_meta[key], key
    for name in a_params:
        numpy.testing.assert_array_equal(a_params[name], b_params[name], err_msg=name)
    drops = [[(r["step"], r["lr"]) for r in records_of(run) if r["kind"] == "lr"]
             for run in (straight, split)]
    assert drops[0] == drops[1] and drops[0]


def test_a_run_made_before_a_setting_existed_resumes_with_its_old_value(tmp_path, capsys):
    """A run made before --clip-norm trained without clipping: its resume goes on without it
    (the small preset's recipe would clip), and --clip-norm 0 is its own value, not refused."""
    run_dir = str(tmp_path / "old")
    small = ["--preset", "small", "--synthetic-train", "64", "--synthetic-val", "16",
             "--batch-size", "16", "--log-every", "1", "--run-dir", run_dir]
    assert train.main(small + ["--max-steps", "1"]) == 0
    assert "gradients clipped to a norm of 20" in capsys.readouterr().out
    path = os.path.join(run_dir, "last.npz")
    arrays, meta = checkpoint.read(path)
    assert meta["config"].pop("clip_norm") == 20.0                  # as an older run's
    numpy.savez(path, meta=numpy.array(json.dumps(meta)), **arrays)
    assert train.main(["--resume", run_dir, "--max-steps", "2", "--clip-norm", "0"]) == 0
    assert checkpoint.read(path, "meta")[1]["config"]["clip_norm"] == 0.0
    assert "gradients clipped" not in capsys.readouterr().out


def test_a_resume_refuses_other_settings_and_other_data(tmp_path, monkeypatch, capsys):
    """Typed settings that differ from the run's are refused, not ignored; a relative --data
    is found again from another folder; other classes are refused; a training set of another
    size (files added or removed, and the cache made again by a later run) is trained on, said
    in a note: a smaller one whose epoch has no batch left at the checkpoint's place goes on
    from the next epoch (it made the loop wait forever for a batch past its end)."""
    monkeypatch.chdir(tmp_path)
    synthetic.write_folder("shapes", 40, 10, size=48, classes=3, extension=".png")
    first = ["--preset", "tiny", "--batch-size", "8", "--log-every", "1", "--eval-every", "1"]
    assert train.main(first + ["--data", "shapes", "--run-dir", "run", "--max-steps", "4"]) == 0
    evals = [r for r in records_of("run") if r["kind"] == "eval"]
    assert evals and not [r for r in evals if "top5_error" in r]     # 3 classes: always 0
    with pytest.raises(SystemExit):
        train.main(["--resume", "run", "--momentum", "0.5"])
    assert "argument --momentum: 0.5 is not the resumed run's 0.9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--resume", "run", "--lr-patience", "5"])
    assert "argument --lr-patience: 5 is not the resumed run's 750; " in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train.main(["--resume", "../run", "--lr", "0.01", "--max-steps", "5"]) == 0
    assert "from here on" not in capsys.readouterr().out     # the run's own value, retyped
    assert train.main(["--resume", "../run", "--lr", "0.003", "--max-steps", "6"]) == 0
    assert "learning rate 0.003 from here on (--lr; the checkpoint's was 0.01)" in \
        capsys.readouterr().out                     # --lr is the one setting a resume may change
    meta = checkpoint.load("../run/last.npz")[2]
    assert meta["step"] == 6 and meta["lr"] == 0.003 and meta["config"]["lr"] == 0.01
    assert "new_lr" not in meta["config"]
    assert train.main(["--resume", "../run", "--lr", "0.003", "--max-steps", "7"]) == 0
    assert "from here on" not in capsys.readouterr().out     # a requeued job script's --lr
    assert train.main(["--resume", "../run", "--lr", "0.01", "--max-steps", "7"]) == 0
    assert "learning rate 0.01 from here on" in capsys.readouterr().out     # back up: new
    synthetic.write_folder("fewer", 16, 10, size=48, classes=3, extension=".png")
    shutil.copytree("../run", "../copy")
    assert checkpoint.load("../copy/last.npz")[2]["batch"] == 2       # of 5; "fewer" has 2
    assert train.main(["--resume", "../copy", "--data", "fewer", "--max-steps", "9"]) == 0
    out = capsys.readouterr().out
    assert "note: the checkpoint was trained on 40 training images and the data now has 16: " \
        "training goes on with the data as it is (its mean image and colour statistics too), " \
        "from the next epoch" in out
    assert "eval epoch 2: " in out                # the epoch ended there is evaluated
    assert checkpoint.load("../copy/last.npz")[2]["step"] == 9
    synthetic.write_folder("more", 48, 10, size=48, classes=3, extension=".png")
    shutil.rmtree("../copy")
    shutil.copytree("../run", "../copy")
    assert train.main(["--resume", "../copy", "--data", "more", "--max-steps", "9"]) == 0
    assert "and the data now has 48: training goes on with the data as it is (its mean image " \
        "and colour statistics too), the rest of the epoch in progress drawn from the new set" \
        in capsys.readouterr().out
    shutil.copytree("../shapes", "renamed", ignore=shutil.ignore_patterns(".alexnet-cache-*"))
    classes = sorted(os.listdir("renamed/train"))
    for split in ("train", "val"):
        os.rename(f"renamed/{split}/{classes[-1]}", f"renamed/{split}/zebra")
    assert train.main(["--resume", "../run", "--data", "renamed", "--max-steps", "8"]) == 1
    assert f"other classes than the data (the data lacks {classes[-1]}; has zebra); resume " \
        "with the data it was trained on (the data is its cache " \
        f"{elsewhere / 'renamed' / '.alexnet-cache-39'}, which a resume reads as it is; if the " \
        "folder holds the run's classes now, decode it anew first: python -m alexnet.prepare " \
        f"--data {elsewhere / 'renamed'} --size 39 --out " \
        f"{elsewhere / 'renamed' / '.alexnet-cache-39'})" in capsys.readouterr().err
    os.rename("../shapes", "../moved")                    # the data moved: say where it went
    assert train.main(["--resume", "../run", "--max-steps", "8"]) == 1
    assert f"the data this run was trained on, {tmp_path / 'shapes'}, is not there any more; " \
        "pass --data with where it is now" in capsys.readouterr().err
    assert train.main(["--resume", "../run", "--data", "../moved", "--max-steps", "8"]) == 0
    assert checkpoint.load("../moved/../run/last.npz")[2]["step"] == 8


def test_a_resume_that_retypes_preset_auto_goes_on_where_auto_means_the_runs(
        tmp_path, monkeypatch, capsys):
    """A job script that types its command again at every requeue: --preset auto is the
    preset it stands for on this machine, accepted where that is the run's."""
    run_dir = run_training(tmp_path, "run", "--max-steps", "1")
    monkeypatch.setattr(train, "auto_preset", lambda devices=None: "tiny")
    assert train.main(["--resume", run_dir, "--preset", "auto", "--max-steps", "2"]) == 0
    monkeypatch.setattr(train, "auto_preset", lambda devices=None: "small")   # another machine
    with pytest.raises(SystemExit):
        train.main(["--resume", run_dir, "--preset", "auto", "--max-steps", "3"])
    assert "argument --preset: auto (small on this machine) is not the resumed run's tiny; " \
        "--resume goes on with the run's settings" in capsys.readouterr().err


def test_preset_auto_is_the_small_network_where_the_towers_run_on_the_cpu(tmp_path, monkeypatch,
                                                                          capsys):
    """--devices cpu,cpu on a machine with GPUs: auto took the paper network (\"a GPU was
    found\"), which would take days on the CPU; it goes by the towers' devices."""
    monkeypatch.setattr(backend, "gpu_count", lambda: 2)
    assert train.main(["--synthetic-train", "64", "--synthetic-val", "32", "--batch-size", "16",
                       "--devices", "cpu,cpu", "--max-steps", "1",
                       "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "preset: small (--devices cpu,cpu puts a tower on the CPU, where the paper network " \
        "would take days)" in out and "AlexNet preset small" in out
    assert [train.auto_preset(devices) for devices in ("0,1", "0,0", "0,cpu", None)] == \
        ["paper", "paper", "small", "paper"]


def test_patience_is_whole_epochs_when_the_batch_does_not_divide_the_set(tmp_path):
    """100 images in batches of 16: an epoch trains 96. A patience of one epoch reduces the
    rate at every evaluation that does not improve (it took two when counted as 100)."""
    run_dir = run_training(tmp_path, "patience", "--synthetic-train", "100", "--lr", "1e-9",
                           "--lr-patience", "1", "--epochs", "6")
    assert [r["epoch"] for r in records_of(run_dir) if r["kind"] == "lr"] == [2, 3, 4]
    assert all("time" in r for r in records_of(run_dir))


def test_a_diverging_run_stops_with_a_message(tmp_path, capsys):
    assert train.main(TINY + ["--run-dir", str(tmp_path / "nan"), "--lr", "1e8", "--epochs", "3"]) == 1
    error = capsys.readouterr().err
    assert "the loss became" in error and "learning rate" in error
    assert "no checkpoint had been written yet" in error and "last.npz" not in error


def test_a_resume_at_a_far_too_high_rate_is_pointed_below_the_checkpoints_rate(tmp_path,
                                                                              capsys):
    run_dir = run_training(tmp_path, "run", "--epochs", "1")
    assert train.main(["--resume", run_dir, "--lr", "1e8", "--epochs", "3"]) == 1
    error = capsys.readouterr().err
    assert "the learning rate 1e+08 is probably too high" in error
    assert f"--resume {os.path.join(run_dir, 'best.npz')} --lr 0.0033" in error


def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    """A GPU number read inside the step would make the host wait for the GPU every step. On
    (fake) GPUs every way from device memory to the host is closed during the step: Tensor's,
    backend.to_device's, and the device array's own. With gradient clipping too, which acts at
    every step here."""
    def read(*args, **kwargs):
        raise AssertionError("train_step read a number back from the device")

    step, to_device = train.Run.train_step, backend.to_device

    def to_device_no_reads(array, device):
        if device == "cpu" and backend.get_array_module(array) is not numpy:
            read()
        return to_device(array, device)

    def guarded(self, x, labels):
        with monkeypatch.context() as patch:
            patch.setattr(minigrad.Tensor, "item", read)
            patch.setattr(minigrad.Tensor, "numpy", read)
            patch.setattr(backend, "to_device", to_device_no_reads)
            if FAKE_GPUS:                  # the fake's array is a Python class: close its doors
                for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__"):
                    patch.setattr(backend.cupy.ndarray, name, read)
                patch.setattr(backend.cupy, "asnumpy", read)
            return step(self, x, labels)

    monkeypatch.setattr(train.Run, "train_step", guarded)
    run_training(tmp_path, "guarded", "--log-every", "5", "--epochs", "1", "--clip-norm", "1e-6")


@pytest.mark.parametrize("stop", ["--epochs=2", "--max-steps=9"], ids=["line", "stop"])
def test_a_nan_is_found_by_its_step_before_anything_is_saved(tmp_path, monkeypatch, capsys, stop):
    """Losses are read once per progress line: with 6 steps an epoch and a line every 5 steps,
    a NaN at step 8 shows up at step 10, or when training stops at step 9, by its own step
    number and before anything after it is saved."""
    step = train.Run.train_step

    def nan_at_8(self, x, labels):
        numbers, averaging = step(self, x, labels)
        return (numbers * numpy.nan if self.step + 1 == 8 else numbers), averaging

    monkeypatch.setattr(train.Run, "train_step", nan_at_8)
    run_dir = tmp_path / "nan"
    assert train.main(TINY + ["--run-dir", str(run_dir), "--synthetic-train", "96",
                              "--log-every", "5", stop]) == 1
    error = capsys.readouterr().err
    assert "the loss became nan at step 8" in error
    assert "the learning rate 0.01 is probably too high; resume from the checkpoint of the best " \
        f"validation error with a lower one: python -m alexnet.train --resume " \
        f"{run_dir / 'best.npz'}{' --max-steps 9' if stop == '--max-steps=9' else ''} " \
        "--lr 0.0033" in error
    assert checkpoint.load(str(run_dir / "last.npz"))[2]["step"] == 6      # epoch 1's save


def test_a_picture_that_cannot_be_drawn_does_not_end_the_run(tmp_path, capsys, monkeypatch):
    def broken(*args):
        raise ValueError("can't measure length of multiline text")

    monkeypatch.setattr(train.plots, "confusion_matrix", broken)
    run_dir = run_training(tmp_path, "drawn", "--epochs", "2")
    assert records_of(run_dir)[-1]["reason"] == "all 2 epochs done"
    assert capsys.readouterr().out.count(f"warning: a picture in {run_dir} could not be drawn "
                                         "(ValueError: can't measure length") == 2


def test_corrupt_checkpoint_is_reported_by_name(tmp_path):
    path = tmp_path / "last.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cannot be read"):
        checkpoint.load(str(path))


@pytest.mark.parametrize("sent, said", [(signal.SIGINT, "interrupted"),
                                        (signal.SIGTERM, "terminated"), (signal.SIGHUP, "hangup")],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_ctrl_c_or_sigterm_saves_last_checkpoint_and_exits(tmp_path, sent, said):
    """SIGTERM is what timeout and job schedulers send before they kill, SIGHUP what a closed
    terminal or ssh session sends: they save too. The command it gives can be pasted into a
    shell, a space in the path and all."""
    run_dir = tmp_path / "run interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "alexnet.train", *TINY, "--synthetic-train", "2000", "--epochs", "50",
         "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))   # were we nohup'ed
    lines = []
    for line in process.stdout:              # wait until training has started
        lines.append(line)
        if "img/s" in line:
            break
    process.send_signal(sent)
    output = "".join(lines) + process.communicate(timeout=60)[0]
    assert process.returncode == 128 + sent, output
    assert f"{said} at step" in output and f"--resume '{run_dir}'\n" in output
    _, _, meta = checkpoint.load(str(run_dir / "last.npz"))
    assert meta["step"] >= 1
    assert records_of(run_dir)[-1]["reason"] == train.INTERRUPTED[sent]


def test_a_sighup_while_the_data_is_prepared_ends_the_run_as_a_ctrl_c(tmp_path):
    """Before training too: said, status 130, and no empty run directory left (SIGHUP killed
    the process)."""
    synthetic.write_folder(tmp_path / "images", 16, 4, size=39)
    process = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "distributed_fault.py"),
         "slow-prepare", "--data", "images", "--preset", "tiny", "--run-dir", "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))   # were we nohup'ed
    for line in process.stdout:
        if line == "decoding\n":
            break
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert "interrupted: checkpoints already written stay" in err
    assert not (tmp_path / "run").exists()


def test_a_closed_stdout_or_an_ignored_sighup_does_not_stop_training(tmp_path):
    """`train | head -3`, and a SIGHUP to a run started under nohup: the run trains to its end
    all the same (a broken pipe ended it without a checkpoint, a SIGHUP ended it unsaved)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "alexnet.train", *TINY, "--max-steps", "12", "--run-dir", "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))        # nohup
    for _ in range(3):
        process.stdout.readline()
    process.stdout.close()                                                    # head -3 ends
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=120) == 0, process.stderr.read()
    assert checkpoint.load(str(tmp_path / "run" / "last.npz"))[2]["step"] == 12
    assert records_of(tmp_path / "run")[-1]["reason"] == "--max-steps 12 reached"


def test_a_nan_evaluation_loss_is_written_as_json_null_and_read_back(tmp_path, monkeypatch,
                                                                      capsys):
    """metrics.jsonl is JSON that jq and JavaScript read: null, not a bare NaN; a resume and
    the curves read it back."""
    def nan_loss(*args):
        return (float("nan"), *evaluate_images(*args)[1:])

    evaluate_images = train.evaluate
    monkeypatch.setattr(train, "evaluate", nan_loss)
    run_dir = run_training(tmp_path, "run", "--max-steps", "8")
    monkeypatch.undo()

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    records = [json.loads(line, parse_constant=refuse) for line in open(f"{run_dir}/metrics.jsonl")]
    assert [r["loss"] for r in records if r["kind"] == "eval"] == [None, None]
    capsys.readouterr()
    assert train.main(["--resume", run_dir, "--max-steps", "12"]) == 0
    assert "could not be drawn" not in capsys.readouterr().out            # curves.png
    evals = [r["loss"] for r in records_of(run_dir) if r["kind"] == "eval"]
    assert evals[:2] == [None, None] and evals[2] > 0


def test_a_new_run_never_writes_into_another_runs_folder(tmp_path, capsys, monkeypatch):
    run_dir = run_training(tmp_path, "a run", "--max-steps", "2")
    before = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
    assert train.main(TINY + ["--run-dir", run_dir, "--max-steps", "1"]) == 1
    assert f"{run_dir} already holds a run (last.npz, best.npz, metrics.jsonl): continue it " \
           f"with --resume '{run_dir}', or pass another --run-dir" in capsys.readouterr().err
    assert {name: os.path.getmtime(os.path.join(run_dir, name))
            for name in os.listdir(run_dir)} == before                     # nothing touched
    for name in ("last.npz", "best.npz"):               # a run before its first checkpoint
        os.remove(os.path.join(run_dir, name))
    assert train.main(TINY + ["--run-dir", run_dir, "--max-steps", "1"]) == 1
    assert f"{run_dir} already holds a run (metrics.jsonl): it may still be training (no " \
        "checkpoint yet): pass another --run-dir, or delete the folder if nothing writes to it " \
        "any more" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)                    # two runs started in the same second
    monkeypatch.setattr(train.time, "strftime", lambda pattern: "20261130-101500")
    args = train.parse_args([])
    assert [train.run_directory(args) for _ in range(3)] == [
        os.path.join("runs", name) for name in ("20261130-101500", "20261130-101500-2",
                                                "20261130-101500-3")]


class TwoRanks:
    """Rank 0 of two, rank 1 having parsed its options to `theirs` ((exit code, output))."""
    rank, size = 0, 2

    def __init__(self, theirs):
        self.theirs = theirs

    def allgather(self, value):
        return [value, self.theirs]


def test_a_second_training_into_a_run_directory_in_use_is_refused(tmp_path):
    """A resume of a run that still trains (a requeued job while the old one runs), and a new
    run into the folder of a run that has written nothing yet (still decoding its data: held
    there for a minute by tests/distributed_fault.py): both refused in one sentence naming the
    process, instead of two trainings writing there."""
    def start(until, *command):
        process = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                                   env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        for line in process.stdout:          # the lock is taken: the run directory is named
            if line.startswith(until):
                return process
        raise AssertionError(process.communicate()[0])

    assert train.main(TINY + ["--run-dir", str(tmp_path / "run"), "--max-steps", "2"]) == 0
    synthetic.write_folder(str(tmp_path / "images"), 16, 8, size=48, extension=".png")
    folder = ["--data", "images", "--preset", "tiny", "--batch-size", "4", "--run-dir", "new"]
    fault = os.path.join(os.path.dirname(__file__), "distributed_fault.py")
    running = [start("resumed from", "-m", "alexnet.train", "--resume", "run", "--max-steps",
                     "100000"),
               start("decoding", fault, "slow-prepare", *folder)]
    try:
        for process, options in zip(running, (["--resume", "run"], folder)):
            again = subprocess.run([sys.executable, "-m", "alexnet.train", *options,
                                    "--max-steps", "3"],
                                   capture_output=True, text=True, cwd=tmp_path, timeout=120)
            assert again.returncode == 1
            assert again.stderr == (f"error: another training is writing to {options[-1]} "
                                    f"(process {process.pid}): wait for it, or pass another "
                                    "--run-dir\n")
    finally:
        for process in running:       # SIGTERM: a SIGINT ignored by the shell that started the
            process.send_signal(signal.SIGTERM)    # tests stays ignored outside training
            process.communicate(timeout=60)
    assert not (tmp_path / "new").exists()       # interrupted before training: lock and all gone


def test_a_failed_write_into_the_run_directory_names_the_file_and_the_fix(
        tmp_path, monkeypatch, capsys):
    """A disk that fills up under metrics.jsonl, a folder made read-only under last.npz.tmp:
    one sentence naming the file and what to do, not a bare '[Errno 28] No space left on
    device'. Once room is made, the resume it says drops a metrics line the full disk cut off."""
    real_open, appends = open, []

    def full_disk(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and mode == "a":
            appends.append(path)
            if len(appends) == 7:          # after the evaluation at step 4 saved last.npz
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(train, "open", full_disk, raising=False)
    run_dir = str(tmp_path / "full")
    assert train.main(TINY + ["--run-dir", run_dir, "--max-steps", "8"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: cannot write {run_dir}/metrics.jsonl (No space left on device); make room on its "
        f"disk or give this process write access to {run_dir}, then go on with python -m "
        f"alexnet.train --resume {run_dir} --max-steps 8")
    monkeypatch.undo()

    def read_only(path, mode="r", *args, **kwargs):
        if str(path).endswith(".npz.tmp"):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)
        return real_open(path, mode, *args, **kwargs)

    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write('{"kind": "tr')                      # the line a full disk cut off
    assert train.main(["--resume", run_dir, "--max-steps", "9"]) == 0     # room made
    assert records_of(run_dir)[-1]["reason"] == "--max-steps 9 reached"

    monkeypatch.setattr(checkpoint, "open", read_only, raising=False)
    run_dir = str(tmp_path / "read-only")
    assert train.main(TINY + ["--run-dir", run_dir, "--max-steps", "2"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: cannot write {run_dir}/last.npz (Operation not permitted); the file it would "
        "have replaced, if any, is as it was; make room on its disk or give this process write "
        f"access to {run_dir}, then start the run again (it has no checkpoint to go on from)")


def test_an_option_error_on_another_rank_is_said_by_rank_0_and_ends_this_one(capsys):
    said = "python -m alexnet.train: error: argument --data: /node2 does not exist (see --help)\n"
    with pytest.raises(SystemExit) as ended:
        train.parse_args_together(TwoRanks((2, said)), TINY)
    assert ended.value.code == 2 and capsys.readouterr().err == "rank 1: " + said
    assert vars(train.parse_args_together(TwoRanks((None, "")), TINY)) == \
        vars(train.parse_args(TINY))


def test_an_exception_while_parsing_on_one_rank_ends_every_rank(monkeypatch, capsys):
    def broken(argv):
        raise KeyError("config")                     # a checkpoint without its settings

    monkeypatch.setattr(train, "parse_args", broken)
    with pytest.raises(SystemExit) as ended:
        train.parse_args_together(TwoRanks((None, "")), TINY)
    assert ended.value.code == 1 and capsys.readouterr().err == "error: KeyError: 'config'\n"


def test_a_run_that_never_started_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    synthetic.write_folder(str(tmp_path / "data"), 8, 2, size=40, classes=3, extension=".png")
    monkeypatch.chdir(tmp_path)
    assert train.main(["--data", "data", "--batch-size", "64"]) == 1     # more than the images
    assert "fewer than one batch of 64" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["data"]                 # neither runs/<date> nor runs/
    (tmp_path / "runs" / "older").mkdir(parents=True)
    assert train.main(["--data", "data", "--batch-size", "64"]) == 1
    assert os.listdir(tmp_path / "runs") == ["older"]         # a runs/ in use stays
    for run_dir in ("new", "made/new"):                # --run-dir: made, then removed, with
        assert train.main(["--data", "data", "--batch-size", "64", "--run-dir", run_dir]) == 1
        assert not os.path.exists(run_dir) and not os.path.exists("made")   # what it made above
    os.mkdir("kept")
    assert train.main(["--data", "data", "--batch-size", "64", "--run-dir", "kept/new"]) == 1
    assert os.listdir("kept") == []                          # there before: it stays


def test_a_run_directory_that_cannot_be_written_is_refused_before_the_data(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()                   # the data would be refused: it is not read
    assert train.main(["--data", str(tmp_path / "empty"), "--run-dir",
                       str(tmp_path / "file" / "run")]) == 1
    error = capsys.readouterr().err
    assert f"cannot write to the run directory {tmp_path / 'file' / 'run'} (Not a directory); " \
           "pass --run-dir with a writable folder" in error


# ---- options, the recipe for small folders, the schedule's stop, the not-learning warning -----

@pytest.mark.parametrize("option, value, says", [
    ("--batch-size", "0", "0 is too small: use 1 or more"),
    ("--log-every", "0", "0 is too small: use 1 or more"),
    ("--epochs", "-3", "-3 is too small: use 1 or more"),
    ("--eval-every", "0", "0 is too small: use 1 or more"),
    ("--lr", "-1", "-1 is not allowed: use a finite number above 0"),
    ("--clip-norm", "inf", "inf is not allowed: use a finite number at least 0"),
    ("--lr", "nan", "nan is not allowed"),
    ("--momentum", "1", "1 is not allowed: use a finite number at least 0 and below 1"),
    ("--weight-decay", "-0.1", "-0.1 is not allowed"),
    ("--lr-patience", "0", "0 is not allowed"),
    ("--lr-drops", "-1", "-1 is too small: use 0 or more"),
    ("--workers", "two", "'two' is not a whole number"),
    ("--devices", "0", "'0' is not two devices"),
    ("--data", "/no/such/folder", "/no/such/folder does not exist"),
])
def test_every_option_is_checked_before_any_work(option, value, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.main([option, value])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}: {says}" in error and "usage" not in error, error


def test_devices_are_taken_with_spaces_after_the_comma(tmp_path):
    """--devices "cpu, cpu" passed the option's check, then the network refused the device
    ' cpu' once the data had been read."""
    run_dir = run_training(tmp_path, "spaced", "--devices", "cpu, cpu", "--max-steps", "1")
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["devices"] == "cpu,cpu"


@pytest.mark.parametrize("images, batch, eval_every, patience, epochs, clip", [
    (1_281_167, 128, 1, 3, 90, 0),     # ImageNet: the paper's recipe
    (12_800, 128, 1, 3, 90, 0),
    (1_200, 64, 9, 27, 500, 20),       # 10 classes of 120 images
    (250, 16, 40, 120, 2400, 20),      # 5 classes of 50
    (10, 10, 1000, 3000, 60_000, 20),  # fewer images than the smallest batch
])
def test_the_recipe_fits_the_size_of_the_training_set(images, batch, eval_every, patience, epochs,
                                                      clip):
    args = train.parse_args(["--data", ".", "--preset", "small"])
    said = train.fit_recipe(args, images)
    assert (args.batch_size, args.eval_every, args.lr_patience, args.epochs, args.clip_norm) == \
        (batch, eval_every, patience, epochs, clip)
    assert ("gradients clipped to a norm of 20" in said) == bool(clip)
    paper = train.parse_args(["--data", ".", "--preset", "paper"])
    train.fit_recipe(paper, images)
    assert paper.clip_norm == clip
    tiny = train.parse_args(["--data", ".", "--preset", "tiny"])         # the tests' network
    train.fit_recipe(tiny, images)
    assert tiny.clip_norm == 0
    short = train.parse_args(["--data", ".", "--epochs", "3"])          # a run of 3 epochs
    train.fit_recipe(short, images)
    assert (short.eval_every, short.lr_patience) == (min(eval_every, 3), 3 * min(eval_every, 3))
    given = train.parse_args(["--data", ".", "--batch-size", "8", "--eval-every", "2",
                              "--lr-patience", "5", "--epochs", "7", "--clip-norm", "0"])
    assert train.fit_recipe(given, images) == []                    # what is given stays
    assert (given.batch_size, given.eval_every, given.lr_patience, given.epochs,
            given.clip_norm) == (8, 2, 5, 7, 0)


def test_clipping_acts_on_the_steps_and_is_counted(tmp_path, capsys):
    """A norm of 1e-9 clips every step: the weights end where a learning rate of 1e-20 leaves
    them (the initial ones), and each progress line counts the clipped steps (metrics.jsonl
    too); with clipping off nothing is counted."""
    same = ["--max-steps", "3", "--weight-decay", "0"]
    clipped = run_training(tmp_path, "clipped", *same, "--clip-norm", "1e-9")
    assert "  clipped 1/1  lr " in capsys.readouterr().out
    assert [r["clipped_steps"] for r in records_of(clipped) if r["kind"] == "train"] == [1, 1, 1]
    still = run_training(tmp_path, "still", *same, "--clip-norm", "0", "--lr", "1e-20")
    assert "clipped" not in capsys.readouterr().out
    assert all("clipped_steps" not in r for r in records_of(still))
    moved = checkpoint.load(os.path.join(clipped, "last.npz"))[0]
    for name, value in checkpoint.load(os.path.join(still, "last.npz"))[0].items():
        numpy.testing.assert_allclose(moved[name], value, rtol=0, atol=1e-8)


def test_one_image_is_said_in_the_singular(tmp_path, capsys):
    run_training(tmp_path, "run", "--synthetic-val", "1", "--max-steps", "4")
    assert "(1 image, " in capsys.readouterr().out
    with pytest.raises(ValueError, match="the training set has 1 image, fewer than one batch of 2"):
        train.fit_recipe(types.SimpleNamespace(batch_size=2), 1)


def test_a_batch_larger_than_the_training_set_is_one_sentence(tmp_path, capsys):
    assert train.main(TINY + ["--run-dir", str(tmp_path / "r"), "--batch-size", "65"]) == 1
    assert "the training set has 64 images, fewer than one batch of 65" in capsys.readouterr().err


def records_of(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def test_the_schedule_reduces_at_most_lr_drops_times_then_stops(tmp_path, capsys):
    # Patience of one epoch (64 images) on 32 val images: plateaus come fast.
    run_dir = run_training(tmp_path, "plateau", "--epochs", "60", "--lr-patience", "1",
                           "--lr-drops", "2", "--lr", "0.001")
    records = records_of(run_dir)
    drops = [r for r in records if r["kind"] == "lr"]
    assert [r["reduction"] for r in drops] == [1, 2]
    assert [r["lr"] for r in drops] == pytest.approx([1e-4, 1e-5])
    stop = records[-1]
    assert stop["kind"] == "stop" and stop["reason"].startswith("the schedule finished")
    assert stop["epoch"] < 60
    out = capsys.readouterr().out
    assert "learning rate now 0.0001 (reduction 1 of 2)" in out
    assert "done: the schedule finished" in out


def test_the_eta_counts_with_max_minutes(tmp_path, capsys):
    run_training(tmp_path, "clock", "--synthetic-train", "4000", "--epochs", "50",
                 "--max-minutes", "0.05")
    etas = re.findall(r"ETA <?=?(\d+)m(\d+)s", capsys.readouterr().out)
    assert etas and all(60 * int(m) + int(s) <= 3 for m, s in etas)     # 0.05 min = 3 s


def test_the_final_line_says_why_the_run_stopped(tmp_path, capsys):
    run_dir = run_training(tmp_path, "epochs", "--epochs", "2")
    assert records_of(run_dir)[-1]["reason"] == "all 2 epochs done"
    run_dir = run_training(tmp_path, "steps", "--epochs", "5", "--max-steps", "3")
    assert records_of(run_dir)[-1]["reason"] == "--max-steps 3 reached"
    out = capsys.readouterr().out
    assert "done: all 2 epochs done;" in out and "done: --max-steps 3 reached;" in out


def test_last_npz_is_saved_before_the_evaluation_at_a_stop(tmp_path, monkeypatch):
    def killed(self):
        raise KeyboardInterrupt                  # the kill that follows a job's SIGTERM

    monkeypatch.setattr(train.Run, "validate", killed)
    assert train.main(TINY + ["--run-dir", str(tmp_path / "run"), "--epochs", "5",
                              "--eval-every", "2", "--max-steps", "3"]) == 130
    assert checkpoint.load(str(tmp_path / "run" / "last.npz"))[2]["step"] == 3


def test_a_run_stopped_between_evaluations_is_evaluated_at_the_stop(tmp_path, capsys,
                                                                    monkeypatch):
    """--max-steps 3 of 4 steps an epoch, evaluations every 2 epochs: none had been made, so one
    is made at the stop and best.npz written; it leaves the schedule as it was."""
    run_dir = run_training(tmp_path, "steps", "--epochs", "5", "--eval-every", "2",
                           "--max-steps", "3")
    evals = [r for r in records_of(run_dir) if r["kind"] == "eval"]
    assert [(r["step"], r["epoch"]) for r in evals] == [(3, 0.75)]
    assert os.path.exists(os.path.join(run_dir, "best.npz"))
    out = capsys.readouterr().out
    assert "eval at the stop (epoch 0.75): val loss" in out
    assert f"best validation top-1 error {evals[0]['top1_error']:.2%}" in out
    _, _, meta = checkpoint.load(os.path.join(run_dir, "last.npz"))
    assert meta["best_top1_error"] == evals[0]["top1_error"]
    assert meta["schedule"] == {"best": float("inf"), "since": 0, "reductions": 0,
                                "finished": False}           # as a run that never evaluated
    ctrl_c_at_step_2(monkeypatch)
    stopped = str(tmp_path / "stopped")
    capsys.readouterr()
    assert train.main(TINY + ["--run-dir", stopped, "--epochs", "5", "--eval-every", "2",
                              "--max-steps", "15", "--max-minutes", "1.5"]) == 130
    assert records_of(stopped)[-1] == {**records_of(stopped)[-1], "step": 2,
                                       "reason": "interrupted (Ctrl-C)"}
    assert capsys.readouterr().out.endswith(   # the limits kept: a resume would drop them
        f"continue with python -m alexnet.train --resume {stopped} --max-steps 15 "
        "--max-minutes 1.5\n")
    last = str(tmp_path / "last")                 # Ctrl-C at the last step: complete all the same
    assert train.main(TINY + ["--run-dir", last, "--max-steps", "2"]) == 0
    assert records_of(last)[-1]["reason"] == "--max-steps 2 reached"
    assert not os.path.exists(os.path.join(stopped, "best.npz"))    # stopped now, not evaluated


def ctrl_c_at_step_2(monkeypatch):
    """Training gets a Ctrl-C (SIGINT) as its second step begins."""
    step = train.Run.train_step

    def ctrl_c_at_2(self, x, labels):
        if self.step + 1 == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, x, labels)

    monkeypatch.setattr(train.Run, "train_step", ctrl_c_at_2)


def test_the_resume_command_keeps_the_devices_and_tf32(tmp_path, capsys, monkeypatch):
    """A resume takes the default devices and plain float32: the command it is told to type
    after Ctrl-C keeps the towers where they were (not on GPUs 0 and 1 of a machine where the
    run was given others) and TF32, as it keeps the limits."""
    ctrl_c_at_step_2(monkeypatch)
    stopped = str(tmp_path / "stopped")
    assert train.main(TINY + ["--run-dir", stopped, "--devices", "cpu,cpu", "--tf32",
                              "--max-steps", "15"]) == 130
    assert capsys.readouterr().out.endswith(
        f"continue with python -m alexnet.train --resume {stopped} --max-steps 15 "
        "--devices cpu,cpu --tf32\n")


@pytest.mark.skipif(backend.gpu_count() == 0, reason="needs a GPU (or the fake GPUs)")
def test_tf32_is_said_in_the_model_line_and_off_again_after_the_run(tmp_path, capsys):
    run_training(tmp_path, "tf32", "--devices", "0,0", "--tf32", "--max-steps", "1")
    assert "towers on (0, 0), TF32 matrix products on the GPU; batch 16" in capsys.readouterr().out
    assert backend.set_tf32(False) is False          # not left on for what the process does next


def test_a_run_that_cannot_learn_says_so_once(tmp_path, capsys):
    run_dir = run_training(tmp_path, "stuck", "--epochs", "4", "--lr", "1e-9")
    warnings = [r for r in records_of(run_dir) if r["kind"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["step"] == 8          # at the second evaluation
    assert "the network is not learning" in warnings[0]["message"]
    assert "try 3.3e-10 or 3e-09" in warnings[0]["message"]
    assert "labels" not in warnings[0]["message"]         # the embedded set's are right as drawn
    assert capsys.readouterr().out.count("warning: the network is not learning") == 1


def test_a_class_without_validation_images_is_named(tmp_path, capsys):
    synthetic.write_folder(str(tmp_path / "data"), 24, 6, size=40, classes=3, extension=".png")
    shutil.rmtree(tmp_path / "data" / "val" / "disk")
    assert train.main(["--data", str(tmp_path / "data"), "--preset", "tiny", "--max-steps", "1",
                       "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "note: 1 of 3 classes has no val images (disk): their accuracy is not measured" in out
    assert "top-1 error" in out and "top-5" not in out        # 3 classes: always in the top 5
    assert evaluate.main(["--checkpoint", str(tmp_path / "run"), "--data",
                          str(tmp_path / "data"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "top-1 error" in out and "top-5" not in out


@pytest.mark.full_size          # the paper network when a GPU is present
def test_the_default_recipe_learns_on_a_folder_of_jpegs(tmp_path, capsys):
    """End to end, as a person would: JPEG files in class folders, nothing but --data (and a
    bound on the epochs: two evaluations of 10,200 images, about 50 s on 2 cores). Fails if the
    default recipe stops learning, or warns that it does not learn."""
    synthetic.write_folder(str(tmp_path / "shapes"), 600, 90, size=112, seed=1, classes=3)
    run_dir = str(tmp_path / "run")
    assert train.main(["--data", str(tmp_path / "shapes"), "--run-dir", run_dir,
                       "--epochs", E2E_EPOCHS]) == 0
    records = records_of(run_dir)
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert final["top1_error"] <= 0.4, capsys.readouterr().out      # chance: 66.7%
    assert not [r for r in records if r["kind"] == "warning"]


def test_resuming_a_finished_run_trains_no_further(tmp_path, capsys):
    run_dir = run_training(tmp_path, "finished", "--epochs", "2")
    assert train.main(["--resume", run_dir]) == 0
    _, _, meta = checkpoint.load(os.path.join(run_dir, "last.npz"))
    assert meta["step"] == 8 and "done: all 2 epochs done; 8 steps" in capsys.readouterr().out


def check_learning_on(evals, train_losses, classes=20, val_images=500, train_images=2000,
                      final_at=None):
    """The warnings check_learning gives for a run's records (steps as in a real run); the
    evaluation at step `final_at` is one made at a stop."""
    said = []
    run = types.SimpleNamespace(
        records=[dict(kind="eval", step=s, loss=l, top1_error=e, **({"final": True} if s ==
                 final_at else {})) for s, l, e in evals] +
        [dict(kind="train", step=s, loss=l) for s, l in train_losses],
        classes=[str(i) for i in range(classes)], val=range(val_images),
        train=range(train_images), step=evals[-1][0], epoch=10,
        optimizer=types.SimpleNamespace(lr=0.01),
        args=types.SimpleNamespace(lr=0.01, init="kaiming", data="photos"),
        images_trained=lambda: 19_840,
        record=lambda **fields: said.append(fields))
    train.Run.check_learning(run)
    return said


@pytest.mark.parametrize("val_error, val_loss, train_loss, says", [
    (0.68, 1.12, 1.10, "validation top-1 error 68.0% is at chance (66.7% ± 8.2% on 300 images) "
                       "and its loss 1.120 near ln(3) = 1.099, the loss of a uniform guess. Likely "
                       "causes: the learning rate (--lr 0.01; try 0.0033 or 0.03); labels that do "
                       "not follow the images (look at a few files of each train/<class> "
                       "folder)."),
    (0.66, 9e8, 394.0, "training loss 394 is above ln(3) = 1.099, that of a uniform guess. "
                       "Likely causes: a learning rate too high for this data (--lr 0.01; start "
                       "again with 0.0033 or 0.001)"),
    (0.66, 1.2, 3e8, "training loss 3e+08 is above ln(3) = 1.099"),  # val loss like a guess's
    (0.70, 3.39, 0.2, "training loss is low (0.200) but the validation top-1 error 70.0% is at "
                      "chance (66.7% ± 8.2% on 300 images): it learns its training images by "
                      "heart. Likely causes: too few training images (90 for 3 classes)"),
    (0.30, 0.80, 0.5, None),                                       # learning: nothing to say
], ids=["guessing", "diverging", "diverging-val-near-guess", "by-heart", "learning"])
def test_the_not_learning_warning_tells_its_causes_apart(val_error, val_loss, train_loss, says):
    said = check_learning_on([(10, 1.1, 0.66), (20, val_loss, val_error)], [(18, train_loss)],
                             classes=3, val_images=300, train_images=90)
    assert said == [] if says is None else says in said[0]["message"], said


def test_an_evaluation_at_a_stop_does_not_count_for_the_not_learning_warning():
    """Resumed after a --max-steps stop: its evaluation is in the records, but the warning
    still waits for the second regular one, as in a run that was never stopped."""
    guessing = [(10, 1.1, 0.68), (15, 1.1, 0.68)]
    assert check_learning_on(guessing, [(14, 1.1)], classes=3, final_at=15) == []
    assert check_learning_on(guessing, [(14, 1.1)], classes=3) != []


def test_early_learning_is_not_taken_for_a_stall():
    # 20 cluttered classes, default recipe, second evaluation: top-1 still 93.8% (chance 95%),
    # but the validation loss fell from 2.99 to 2.71 and the training loss from 3.00 to 2.65.
    late = [(248, 2.933), (250, 2.914), (279, 2.781), (300, 2.706), (310, 2.652)]
    assert check_learning_on([(155, 2.993, 0.946), (310, 2.710, 0.938)], late) == []
    stalled = check_learning_on([(155, 2.996, 0.95), (310, 2.995, 0.948)], late)
    assert len(stalled) == 1 and "at chance (95.0% ± 2.9% on 500 images) and its loss 2.995" \
        in stalled[0]["message"]
    flat = check_learning_on([(155, 2.99, 0.90), (310, 2.98, 0.88)], [(300, 2.99), (310, 2.98)])
    assert len(flat) == 1 and "training loss 2.985 is still near ln(20)" in flat[0]["message"]
