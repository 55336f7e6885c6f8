"""minigrad.distributed and alexnet.train under mpiexec: K ranks at batch B/K train exactly like
one process at batch B; only rank 0 writes; resume and faults."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

import minigrad
from alexnet import AlexNet, checkpoint, data, prepare, synthetic, train
from minigrad import backend, distributed

ROOT = Path(__file__).parent.parent
# The tiny network on 512 embedded images: random crops, mirrors and PCA colour shifts on,
# dropout off (so that one process and two see the same function), batch 32, 16 steps an epoch,
# on the CPU also where there is a GPU (two processes cannot share one GPU).
TINY = ["--preset", "tiny", "--synthetic-train", "512", "--synthetic-val", "64", "--batch-size",
        "32", "--dropout", "0", "--lr", "0.05", "--eval-every", "1", "--log-every", "4",
        "--devices", "cpu,cpu"]
# The processes find the project, and the fake CuPy where the tests run on it (tests/fakecupy).
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(ROOT)] + [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                   if p]))


def mpiexec():
    """mpiexec beside this Python (pip's mpich), else on the PATH; skip the test without it."""
    pytest.importorskip("mpi4py", reason="pip install -e '.[distributed]' for the MPI tests")
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec: pip install -e '.[distributed]' (mpi4py and mpich)")
    return found


def launch(ranks, args, cwd, script=("-m", "alexnet.train"), timeout=300):
    """Run alexnet.train (or a script) in `ranks` processes (1: a plain python, no mpiexec)."""
    command = [sys.executable, *script, *args]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks)] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=ENV)


def weights(path):
    params, _, meta = checkpoint.load(path)
    return params, meta


def initial_weights():
    """The tiny network's weights before training (seed 0), as train.Run makes them."""
    minigrad.manual_seed(0)
    return dict(AlexNet(10, devices=("cpu", "cpu"), init="kaiming",
                        preset="tiny").state_dict())


def test_two_ranks_average_to_the_gradient_of_the_whole_batch():
    done = launch(2, [], ROOT, script=(str(Path(__file__).with_name("distributed_check.py")),))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "2 of 2 ranks ok", done.stdout


@pytest.mark.parametrize("devices", [
    "cpu,cpu", pytest.param("0,0", marks=pytest.mark.skipif(
        backend.gpu_count() < 2, reason="two GPUs: one for each rank's towers"))],
    ids=["cpu", "gpus"])
def test_two_ranks_train_like_one_process_and_only_rank_0_writes(tmp_path, devices):
    """20 steps (an evaluation at 16): two ranks of 16 images end with the weights of one
    process at batch 32, to float32 rounding of the updates; rank 1 prints and writes nothing.
    On GPUs rank r has GPU r for both towers, and the one process GPU 0. Gradient clipping,
    on the averaged gradients, clips the same steps."""
    mpiexec()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    settings = TINY + ["--max-steps", "20", "--run-dir", "run", "--devices", devices,
                       "--clip-norm", "0.2"]
    one = launch(1, settings, tmp_path / "one")
    two = launch(2, settings, tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    start = initial_weights()
    (a, _), (b, meta) = (weights(tmp_path / name / "run" / "last.npz") for name in ("one", "two"))
    for name in start:
        update_a, update_b = a[name] - start[name], b[name] - start[name]
        scale = numpy.abs(update_a).max()
        assert scale > 1e-4, f"{name} did not move: the comparison would prove nothing"
        assert numpy.abs(update_b - update_a).max() < 1e-3 * scale, name
    assert meta["ranks"] == 2 and len(meta["random_states"]) == 2
    # One voice: each line of the run once, in the order one process gives them.
    assert two.stdout.count("done: --max-steps 20 reached") == 1
    assert two.stdout.count("eval epoch 1:") == 1
    assert "data parallel: 2 processes (2 on this machine), 16 images of every batch" in two.stdout
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["run"]    # no runs/ of rank 1
    records = [json.loads(line) for line in open(tmp_path / "two" / "run" / "metrics.jsonl")]
    evals = [[json.loads(line) for line in open(tmp_path / name / "run" / "metrics.jsonl")
              if '"eval"' in line] for name in ("one", "two")]
    assert [r["top1_error"] for r in evals[0]] == [r["top1_error"] for r in evals[1]]
    assert abs(evals[0][0]["loss"] - evals[1][0]["loss"]) < 1e-5
    progress = [r for r in records if r["kind"] == "train"]
    assert len(progress) == 5 and all(0 <= r["averaging_share"] < 1 for r in progress)
    clipped = [[json.loads(line)["clipped_steps"] for line in open(tmp_path / name / "run" /
                "metrics.jsonl") if '"train"' in line] for name in ("one", "two")]
    assert clipped[0] == clipped[1] and 0 < sum(clipped[0]) < 20, clipped


def test_rank_0_prepares_a_folder_and_the_others_read_its_cache(tmp_path):
    mpiexec()
    synthetic.write_folder(tmp_path / "images", 64, 16, size=39)
    done = launch(2, ["--data", "images", "--preset", "tiny", "--batch-size", "16", "--max-steps",
                      "4", "--devices", "cpu,cpu", "--run-dir", "run"], tmp_path)
    assert done.returncode == 0, done.stderr
    images = tmp_path / "images"
    assert done.stdout.count(f"preparing {images} into {images / '.alexnet-cache-39'}") == 1
    assert (tmp_path / "run" / "last.npz").exists()


def test_a_process_that_must_find_the_cache_ready_says_how_to_make_it(tmp_path):
    synthetic.write_folder(tmp_path / "images", 8, 4, size=39)
    with pytest.raises(ValueError, match="is not ready on this machine; keep .* on a file system "
                       "that every machine shares, or run python -m alexnet.prepare"):
        prepare.cache_for(str(tmp_path / "images"), 39, may_prepare=False)


def test_a_rank_that_fails_before_training_leaves_no_empty_run_directory(tmp_path):
    """Rank 1's --data (a folder that is on its machine only) has no cache: every rank ends,
    and the runs/<date> rank 0 made for the run is gone again, as after a failure on rank 0."""
    mpiexec()
    for name in ("images", "elsewhere"):
        synthetic.write_folder(tmp_path / name, 8, 4, size=39)
    command = [sys.executable, "-m", "alexnet.train", "--preset", "tiny", "--batch-size", "4",
               "--devices", "cpu,cpu"]
    done = subprocess.run([mpiexec(), "-n", "1", *command, "--data", "images", ":", "-n", "1",
                           *command, "--data", "elsewhere"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=ENV)
    assert done.returncode != 0
    assert done.stderr.count("rank 1: error: ") == 1, done.stderr
    assert "is not ready on this machine" in done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("other, said", [
    ("more", "rank 1 sees 68 training / 12 validation images of 3 classes, rank 0 sees 48 / 12 "
             "of 3: give every machine the same data"),
    ("classes", "rank 1 sees 48 training / 12 validation images of 4 classes, rank 0 sees 48 / "
                "12 of 3: give every machine the same data"),
    ("renamed", "rank 1 sees other images than rank 0 (as many, 48 training / 12 validation, of "
                "the same classes, but other files or labels): give every machine the same data")])
def test_ranks_that_see_different_data_are_refused_before_training(tmp_path, other, said):
    """Rank 1's --data (its machine's copy) has more images, another class, or as many images
    under other names: said once, before the first step, instead of ranks that wait for each
    other for ever (or an MPI error)."""
    synthetic.write_folder(tmp_path / "images", 48, 12, size=39, classes=3)
    if other == "renamed":
        shutil.copytree(tmp_path / "images", tmp_path / "other")
        folder = next((tmp_path / "other" / "train").iterdir())
        first = sorted(folder.iterdir())[0]
        first.rename(first.with_name("renamed.jpg"))
    else:
        synthetic.write_folder(tmp_path / "other", 68 if other == "more" else 48, 12, size=39,
                               classes=3 if other == "more" else 4)
    for name in ("images", "other"):           # each machine's cache, ready before the run
        prepare.cache_for(str(tmp_path / name), 39, log=lambda line: None)
    command = [sys.executable, "-m", "alexnet.train", "--preset", "tiny", "--batch-size", "4",
               "--devices", "cpu,cpu", "--max-steps", "30", "--run-dir", "run"]
    done = subprocess.run([mpiexec(), "-n", "1", *command, "--data", "images", ":", "-n", "1",
                           *command, "--data", "other"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=ENV)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count(f"error: {said} (--data on a file system they share, or identical "
                             "copies)\n") == 1, done.stderr
    assert "step 1/" not in done.stdout and not (tmp_path / "run").exists()


def test_resume_with_the_same_and_another_number_of_ranks(tmp_path):
    """Two ranks stopped at step 20 and resumed to 40 equal two ranks run to 40 bit for bit,
    dropout on (each rank's own random stream restored); a resume by one process says what
    changes and goes on."""
    mpiexec()
    dropout = ["--dropout", "0.5"]
    whole = launch(2, TINY + dropout + ["--max-steps", "40", "--run-dir", "whole"], tmp_path)
    half = launch(2, TINY + dropout + ["--max-steps", "20", "--run-dir", "half"], tmp_path)
    assert whole.returncode == 0 and half.returncode == 0, whole.stderr + half.stderr
    resumed = launch(2, ["--resume", "half", "--max-steps", "40", "--devices", "cpu,cpu"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    (a, meta_a), (b, meta_b) = weights(tmp_path / "whole" / "last.npz"), \
        weights(tmp_path / "half" / "last.npz")
    assert meta_a["step"] == meta_b["step"] == 40
    assert len(set(meta_a["random_states"])) == 2          # each rank its own dropout masks
    for name in a:
        assert numpy.array_equal(a[name], b[name]), name
    other = launch(1, ["--resume", "half", "--max-steps", "44", "--devices", "cpu,cpu"], tmp_path)
    assert other.returncode == 0, other.stderr
    assert ("note: this run was trained by 2 processes and goes on with 1: the batch stays 32 "
            "images a step (32 per process, was 16)") in other.stdout
    assert weights(tmp_path / "half" / "last.npz")[1]["ranks"] == 1


def test_a_failure_on_one_rank_stops_every_rank_and_keeps_the_checkpoint(tmp_path):
    """Rank 1 alone raises at step 20: both processes end within seconds, the message names
    the rank and the error once, and last.npz of the evaluation at step 16 is whole."""
    mpiexec()
    tick = time.perf_counter()
    done = launch(2, TINY + ["--run-dir", "run"], tmp_path,
                  script=(str(Path(__file__).with_name("distributed_fault.py")), "raise"),
                  timeout=120)
    assert done.returncode != 0
    assert time.perf_counter() - tick < 60
    assert done.stderr.count("rank 1: error: RuntimeError: injected failure") == 1, done.stderr
    assert weights(tmp_path / "run" / "last.npz")[1]["step"] == 16


def test_a_ctrl_c_in_the_pause_before_the_abort_still_ends_every_rank(tmp_path):
    """Rank 1 fails at step 20 and gets a Ctrl-C a second later, while it waits for its
    message to pass before it ends every rank: the abort still comes (a KeyboardInterrupt out
    of the pause skipped it, and every rank waited for ever)."""
    mpiexec()
    done = launch(2, TINY + ["--run-dir", "run"], tmp_path,
                  script=(str(Path(__file__).with_name("distributed_fault.py")), "interrupt"),
                  timeout=60)
    assert done.returncode != 0
    assert done.stderr.count("rank 1: error: RuntimeError: injected failure") == 1, done.stderr


def test_replicas_that_drift_apart_are_caught_at_the_next_checkpoint(tmp_path):
    """Rank 1's weights moved at step 20: the checkpoint at step 32 is refused on every rank,
    and the one of step 16 stays."""
    mpiexec()
    done = launch(2, TINY + ["--run-dir", "run"], tmp_path,
                  script=(str(Path(__file__).with_name("distributed_fault.py")), "drift"),
                  timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("error: RuntimeError: the 2 processes' copies of the network differ "
                             "at step 32") == 1, done.stderr
    assert weights(tmp_path / "run" / "last.npz")[1]["step"] == 16


def test_a_nan_loss_stops_every_rank_with_one_message(tmp_path):
    mpiexec()
    done = launch(2, TINY + ["--lr", "1e6", "--run-dir", "run"], tmp_path, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("error: the loss became nan") == 1, done.stderr


def test_a_batch_that_does_not_split_over_the_ranks_is_one_sentence(tmp_path):
    mpiexec()
    done = launch(3, TINY + ["--run-dir", "run"], tmp_path, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("error: a batch of 32 images does not split into 3 equal parts, one "
                             "per process: start a number of processes that divides 32") == 1, \
        done.stderr
    assert "data: " not in done.stdout              # refused before the data set was drawn


def test_a_validation_set_smaller_than_the_ranks_is_one_sentence(tmp_path):
    mpiexec()
    done = launch(2, TINY + ["--synthetic-val", "1", "--run-dir", "run"], tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("error: the validation set has 1 image, fewer than the 2 processes: "
                             "add validation images or start fewer") == 1, done.stderr


def test_an_option_refused_on_one_rank_ends_every_rank_said_once(tmp_path):
    """A path that exists on one machine only: rank 1's --data is not there. argparse ends the
    process that meets an error where it stands; every rank now ends, and the refusal is said
    once, naming its rank. --help is printed once."""
    command = [sys.executable, "-m", "alexnet.train", *TINY, "--run-dir", "run"]
    done = subprocess.run([mpiexec(), "-n", "1", *command, ":", "-n", "1", *command, "--data",
                           "nowhere"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=ENV)
    assert done.returncode == 2
    assert done.stderr == "rank 1: python -m alexnet.train: error: argument --data: nowhere " \
        "does not exist (see --help)\n"
    assert not (tmp_path / "run").exists()
    helped = launch(2, ["--help"], tmp_path, timeout=60)
    assert helped.returncode == 0 and helped.stdout.count("usage: ") == 1, helped.stdout


def test_a_resumed_run_whose_batch_does_not_split_is_told_what_it_can_change():
    with pytest.raises(ValueError, match="start a number of processes that divides 16 "
                       r"\(a resumed run keeps its batch\)$"):
        train.check_batch_split(16, 3, resumed=True)


def test_ctrl_c_stops_every_rank_after_the_same_step(tmp_path):
    """SIGINT to mpiexec (which passes it to every rank): the run stops at one step on every
    rank, saves last.npz and says how to resume, once."""
    mpiexec()
    process = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "-m", "alexnet.train",
                                *TINY, "--epochs", "200", "--run-dir", "run"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ENV)
    for line in process.stdout:                   # wait for training to be under way
        if line.startswith("epoch 2/"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert out.count("interrupted at step") == 1, out
    assert "continue with mpiexec -n 2 python -m alexnet.train --resume run" in out
    step = int(out.split("interrupted at step ")[1].split(";")[0])
    assert weights(tmp_path / "run" / "last.npz")[1]["step"] == step


def test_sigterm_while_rank_0_prepares_the_data_ends_every_rank_said_once(tmp_path):
    """SIGTERM to mpiexec (which passes it to every rank) while rank 0 decodes the images and
    rank 1 waits for the cache: every rank ends as after a Ctrl-C, said once, and the run
    directory made for the run is gone (rank 1, without a handler, was killed by the signal,
    and mpiexec ended everything with BAD TERMINATION)."""
    mpiexec()
    synthetic.write_folder(tmp_path / "images", 16, 4, size=39)
    process = subprocess.Popen([mpiexec(), "-n", "2", sys.executable,
                                str(Path(__file__).with_name("distributed_fault.py")),
                                "slow-prepare", "--data", "images", "--preset", "tiny",
                                "--devices", "cpu,cpu", "--run-dir", "run"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in process.stdout:
        if line == "decoding\n":
            break
    time.sleep(1)                       # rank 1 is at its barrier by now
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert err.count("interrupted: checkpoints already written stay") == 1, err
    assert "BAD TERMINATION" not in out + err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(backend.gpu_count() == 0, reason="no GPU: NCCL needs one")
def test_one_rank_averages_gpu_gradients_through_nccl():
    """The NCCL road on one GPU (a group of one: one GPU cannot hold two NCCL ranks)."""
    loads = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True)
    if loads.returncode:
        pytest.skip("mpi4py without an MPI library: pip install -e '.[distributed]'")
    if not distributed._nccl_loads():
        pytest.skip("CuPy finds no NCCL library: pip install nvidia-nccl-cu13 (or -cu12)")
    done = subprocess.run([sys.executable, "bench/allreduce.py", "--preset", "small", "--devices",
                           "0,0", "--repeat", "2"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NCCL:" in done.stdout and "averages checked" in done.stdout, done.stdout


def test_mpiexec_without_mpi4py_is_one_sentence(monkeypatch, capsys):
    monkeypatch.setenv("PMI_RANK", "0")                      # as if started by mpiexec
    monkeypatch.setitem(sys.modules, "mpi4py", None)         # importing it fails
    assert train.main(TINY + ["--max-steps", "1"]) == 1
    assert capsys.readouterr().err == ("error: this process was started by mpiexec, but mpi4py "
                                       "is not installed: pip install -e \".[distributed]\" "
                                       "(mpi4py and mpich)\n")


def test_the_shares_of_a_batch_make_the_whole_batch():
    """Each rank's part of every training batch, put together, is the batch of one process,
    crops, mirrors and colour shifts included, bit for bit."""
    rng = numpy.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (40, 3, 20, 20), dtype=numpy.uint8),
                       rng.integers(0, 5, 40))
    aug = data.Augmentation.of(split.images)
    whole = list(data.batches(split, aug, 16, 12, train=True, seed=3, epoch=2, start=1))
    for ranks in (2, 3, 4):
        parts = [list(data.batches(split, aug, 16, 12, train=True, seed=3, epoch=2, start=1,
                                   share=(rank, ranks))) for rank in range(ranks)]
        for i, (x, labels) in enumerate(whole):
            assert numpy.array_equal(numpy.concatenate([p[i][0] for p in parts]), x)
            assert numpy.array_equal(numpy.concatenate([p[i][1] for p in parts]), labels)


@pytest.mark.parametrize("devices, local_rank, local_size, gpus, expected", [
    ("0,1", 3, 4, 8, (6, 7)),            # an 8-GPU machine: 4 replicas of two towers
    ("0,0", 5, 8, 8, (5, 5)),            # 8 replicas, both towers on one GPU
    (None, 1, 4, 8, (2, 3)),
    (None, 7, 8, 8, (7, 7)),
    (None, 1, 2, 0, ("cpu", "cpu")),
    ("cpu,cpu", 1, 2, 8, ("cpu", "cpu")),
    ("2,3", 1, 2, 8, (4, 5)),
])
def test_each_process_takes_its_own_gpus(monkeypatch, devices, local_rank, local_size, gpus,
                                         expected):
    monkeypatch.setattr(backend, "gpu_count", lambda: gpus)
    assert train.replica_devices(devices, local_rank, local_size) == expected


def test_too_many_processes_for_the_gpus_is_one_sentence(monkeypatch):
    monkeypatch.setattr(backend, "gpu_count", lambda: 4)
    with pytest.raises(ValueError, match="process 4 of 4 on this machine would put its towers on "
                       "GPUs 6,7 but the machine has 4: start at most 2 processes a machine"):
        train.replica_devices("0,1", 3, 4)
    with pytest.raises(ValueError, match="process 8 of 8 .* GPUs 7,7 but the machine has 4: "
                       "start at most 4 processes a machine"):
        train.replica_devices(None, 7, 8)            # not the CPU behind the user's back


def test_a_plain_run_is_a_group_of_one_without_mpi(monkeypatch):
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "MPI_LOCALRANKID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)        # importing it would fail
    group = distributed.init()
    assert (group.rank, group.size) == (0, 1)
    group.average_gradients([])                              # does nothing
