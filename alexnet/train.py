"""Train AlexNet: `python -m alexnet.train [--data DIR] ...` (see --help).

With no arguments it trains on an embedded data set of drawn shapes (alexnet/synthetic.py), the
paper preset on a GPU and the small preset on a CPU. With --data DIR it reads DIR/train/<class>/*
and DIR/val/<class>/* (decoded once into a memory-mapped cache: alexnet/prepare.py).

The recipe is the paper's (section 5): SGD with momentum 0.9 and weight decay 0.0005, batch 128,
learning rate 0.01 divided by 10 when the validation error stops improving, three times, then
stop; dropout 0.5, random 227 crops and mirrors of 256x256 images, PCA colour shifts, per-pixel
mean subtraction. Three choices differ by default, measured on folders of 25 to 300 images a
class (README, Results):

  --init kaiming   He-normal weights. The paper's N(0, 0.01^2) weights and biases of 1 (--init
                   paper) leave the loss flat at ln(classes) on a small folder or a narrow
                   network (measured: at chance through 5-minute runs on two folders); Caffe's
                   fix (--init caffe: biases 0.1, fc6 and fc7 weights N(0, 0.005^2)) stalls
                   the same way on the small preset.
  small folders    an epoch of a few batches is too little training to judge anything by. The
                   batch is halved (down to 16) until an epoch has 16 steps; evaluation waits
                   for at least 10,000 training images (--eval-every); a plateau is judged over
                   3 times that (--lr-patience); and the run is long enough for the schedule to
                   finish (--epochs). On ImageNet all four are the paper's: batch 128, an
                   evaluation every epoch, patience 3 epochs, at most 90 epochs.
  --clip-norm      below batch 128, the gradients are scaled down to a norm of at most 20
                   (CLIP_NORMS). On drawn shapes, flat or cluttered, the small preset never
                   reached it (norms under 18 in up to 1,500 steps), the paper preset in its
                   first 3 or 4 steps only; a folder learned within a few steps can, where one
                   step of norm 20 to 260 (the median step: 1 to 4) starts a runaway to NaN.

A run that has not begun to learn after its first evaluations says so, with what to try.

Data parallel: `mpiexec -n K python -m alexnet.train ...` trains K replicas, one per process
(rank), as one run (minigrad/distributed.py). --batch-size stays the images of one SGD step over
all ranks, so the recipe and its learning rate do not change with K: each rank makes its B/K
part of every batch, the gradients are averaged across ranks before every update, and the
replicas stay identical. Rank 0 alone prints and writes the run directory.

Everything a run produces goes into its run directory: config.json, metrics.jsonl, classes.txt,
last.npz / best.npz checkpoints, curves.png, conv1.png, predictions.png, confusion.png, (if
any image was unreadable) bad_files.txt, and train.lock: the process training it holds a lock on
it, so that a second training into the same folder (a requeued job while the old one still runs)
is refused.
"""
import argparse
import contextlib
import io
import json
import math
import os
import signal
import sys
import time
import traceback
import zlib
from shlex import quote

import numpy

import minigrad
from alexnet import checkpoint, data, plots, prepare, synthetic
from alexnet.cli import (Parser, adopt_made_folders, counted, devices_list, existing_path,
                         format_time, made_folders, make_folders, real, undo_made_folders, whole,
                         writable_folder)
from alexnet.evaluate import confusion, measures_top5, softmax, top_k_hits
from alexnet.model import INITS, PRESETS, AlexNet, auto_preset
from minigrad import backend, distributed, optim, parallel
from minigrad import functional as F
from minigrad import random as mg_random

# Settings that define a run; on --resume they come from the checkpoint, not the command line.
RUN_SETTINGS = ("data", "cache", "preset", "batch_size", "lr", "momentum", "weight_decay", "init",
                "dropout", "seed", "synthetic_train", "synthetic_val", "lr_patience", "lr_drops",
                "eval_every", "clip_norm")
DATA_PATHS = ("data", "cache")  # of those, the ones a resume may point at the data moved elsewhere
# Of those, the ones added later, with the value that runs made before them trained with.
ADDED_SETTINGS = {"clip_norm": 0.0}


def saved_setting(config, key):
    """A run's setting `key` from its config.json (as its checkpoints keep it)."""
    return config.get(key, ADDED_SETTINGS.get(key))

# How the recipe adapts to the size of the training set (the module docstring says why).
PAPER_BATCH, SMALLEST_BATCH, STEPS_PER_EPOCH = 128, 16, 16
EVAL_IMAGES = 10_000            # the least training between two evaluations (auto --eval-every)
# Auto --clip-norm below a batch of PAPER_BATCH, per preset: above the gradient norms of the
# preset's steps on realistic folders but its first few (measured: README, Results); the tiny
# preset, the tests' network, is not clipped.
CLIP_NORMS = {"small": 20.0, "paper": 20.0}
PATIENCE_EVALS = 3              # a plateau: this many evaluation intervals without improvement
PAPER_EPOCHS, RUN_IMAGES = 90, 600_000     # auto --epochs: 90, or as many as hold RUN_IMAGES
SYNTHETIC_EPOCHS = 8
SHOWN = 8                       # validation images in predictions.png
INTERRUPTED = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)",
               signal.SIGHUP: "hangup (SIGHUP)"}      # the terminal or ssh session closed


def clip_defaults():
    """CLIP_NORMS in words: '20 for the small and paper presets'."""
    by_norm = {}
    for preset, norm in CLIP_NORMS.items():
        by_norm.setdefault(norm, []).append(preset)
    return "; ".join(f"{norm:g} for the {' and '.join(presets)} preset" +
                     ("s" if len(presets) > 1 else "") for norm, presets in by_norm.items())


def parse_args(argv=None):
    p = Parser(prog="python -m alexnet.train", one_process=False, description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", type=existing_path, help="image folder with "
                   "train/<class>/* and val/<class>/*, or a cache made from one by python -m "
                   "alexnet.prepare; default: the embedded shapes data set, drawn on the fly")
    p.add_argument("--class-names", metavar="FILE", type=existing_path, help="readable names "
                   "of the classes for the pictures and predictions, one '<class folder> <name>' "
                   "a line, as ImageNet's LOC_synset_mapping.txt, or the ImageNet devkit's "
                   "meta.mat (default: such a file in --data: "
                   f"{' or '.join(data.CLASS_NAME_FILES)}; else the folder names)")
    p.add_argument("--cache", metavar="DIR", help="where the images of --data are decoded to on "
                   "first use (default DIR/.alexnet-cache-<size>)")
    p.add_argument("--preset", choices=["auto"] + list(PRESETS), default="auto",
                   help="network size: 'paper' (227x227 input, 61M parameters) or 'small' "
                   "(99x99, same structure, narrower), or 'tiny' (the tests'); auto: paper on "
                   "GPUs, small on a CPU (--devices with a tower on the CPU too)")
    p.add_argument("--epochs", type=whole(1), help="at most this many passes over the training "
                   f"set (default {PAPER_EPOCHS} with --data as in the paper, more for a folder of "
                   f"under {RUN_IMAGES // PAPER_EPOCHS:,} images: enough for {RUN_IMAGES:,} "
                   f"images; {SYNTHETIC_EPOCHS} on the embedded data set). The schedule usually "
                   "ends the run sooner")
    p.add_argument("--batch-size", type=whole(1), help=f"images per SGD step, over all "
                   f"processes under mpiexec (default "
                   f"{PAPER_BATCH}, halved down to {SMALLEST_BATCH} until an epoch has "
                   f"{STEPS_PER_EPOCH} steps)")
    p.add_argument("--lr", type=real(0.0, inclusive=False), default=0.01,
                   help="initial learning rate (default 0.01); with --resume and another value "
                   "than the run's, the learning rate from there on (after a run diverged, say)")
    p.add_argument("--momentum", type=real(0.0, below=1.0), default=0.9,
                   help="SGD momentum, 0 <= m < 1 (default 0.9)")
    p.add_argument("--weight-decay", type=real(0.0), default=5e-4,
                   help="weight decay (default 0.0005)")
    p.add_argument("--lr-patience", type=real(0.0, inclusive=False), metavar="EPOCHS",
                   help="divide the learning rate by 10 when the validation top-1 error has not "
                   "improved for this many epochs of training (default: 3 epochs, or at least "
                   f"{PATIENCE_EVALS * EVAL_IMAGES:,} images' worth on a smaller folder)")
    p.add_argument("--lr-drops", type=whole(0), default=3, help="divide the learning rate at "
                   "most this many times; at the next plateau training stops (default 3, as in "
                   "the paper)")
    p.add_argument("--init", choices=INITS, default="kaiming",
                   help="'kaiming' (default): He-normal weights, zero biases, learns on any "
                   "folder; 'paper': N(0, 0.01^2) weights, biases 1 in conv2,4,5 fc6,7; "
                   "'caffe': biases 0.1, fc6,7 weights N(0, 0.005^2). Both stall at chance on "
                   "small folders and on the small preset")
    p.add_argument("--clip-norm", type=real(0.0), metavar="N", help="scale each step's "
                   "gradients down to a norm of at most N, 0 for never (not in the paper; "
                   f"default: 0 at the paper's batch of {PAPER_BATCH} and above; below it, "
                   f"where a small folder's run could diverge, {clip_defaults()}, else 0)")
    p.add_argument("--dropout", type=real(0.0, below=1.0), default=0.5, metavar="P",
                   help="probability of dropping a unit of fc6 and fc7 in training, 0 <= P < 1 "
                   "(default 0.5, as in the paper)")
    p.add_argument("--seed", type=whole(0), default=0, help="seed for initialization, "
                   "shuffling, augmentation and dropout (default 0)")
    p.add_argument("--devices", type=devices_list, help="devices of towers a and b, e.g. '0,1', "
                   "'0,0', 'cpu,cpu' (default: two GPUs, one GPU twice, or the CPU). Under "
                   "mpiexec, those of each machine's first process; the next ones take the next "
                   "GPUs along")
    p.add_argument("--tf32", action="store_true", help="let the GPUs' matrix products "
                   "(convolutions and fully connected layers) use TF32 tensor cores: several "
                   "times faster from Ampere GPUs on, products to about 1e-3 instead of 1e-6 "
                   "(default: plain float32)")
    p.add_argument("--run-dir", help="where logs, checkpoints and plots go (default "
                   "runs/<date>-<time>, or the resumed run's directory); never another run's. "
                   "With --resume, a new folder branches the run: it starts with the run's "
                   "metrics up to the checkpoint and its best.npz (if not from later), and the "
                   "resumed run's folder is left as it is")
    p.add_argument("--resume", metavar="CKPT", type=existing_path, help="continue from a "
                   "checkpoint (.npz) or a run directory (its last.npz) exactly where it stopped, "
                   "in its run directory unless --run-dir names another")
    p.add_argument("--eval-every", type=whole(1), metavar="EPOCHS", help="evaluate on the "
                   "validation set and save checkpoints every N epochs (default 1, or as many as "
                   f"hold {EVAL_IMAGES:,} training images)")
    p.add_argument("--log-every", type=whole(1), default=10, help="progress line every N steps "
                   "(default 10)")
    p.add_argument("--workers", type=whole(1), default=1, help="threads preparing batches "
                   "ahead (default 1)")
    p.add_argument("--max-steps", type=whole(1), help="stop (and save last.npz) after this many "
                   "steps in total")
    p.add_argument("--max-minutes", type=real(0.0, inclusive=False), help="stop (and save "
                   "last.npz) after this many minutes of training in this process (a resumed "
                   "run gets them again: what a job with a time limit wants)")
    p.add_argument("--synthetic-train", type=whole(1), default=12800,
                   help="images in the embedded training set (default 12800)")
    p.add_argument("--synthetic-val", type=whole(1), default=2000,
                   help="images in the embedded validation set (default 2000)")
    args = p.parse_args(argv)
    for key in ("data", "cache", "class_names"):     # a resume may start in another folder
        if getattr(args, key) is not None:
            setattr(args, key, os.path.abspath(getattr(args, key)))
    if args.run_dir and os.path.exists(args.run_dir) and not os.path.isdir(args.run_dir):
        p.error(f"argument --run-dir: {args.run_dir} is a file; name a folder")
    args.new_lr = None          # not a setting: Run takes it off args before saving the config
    if args.resume:
        check_resume_options(p, args, argv)
    return args


def check_resume_options(parser, args, argv):
    """A resumed run goes on with its own settings (RUN_SETTINGS): refuse one typed with
    another value rather than ignore it. --data and --cache may name the same data elsewhere.
    --lr other than the last rate the run was given (its first, or one typed at an earlier
    resume: a job script retypes its command at every requeue) sets the learning rate from the
    checkpoint on (args.new_lr). --preset auto is the preset it stands for on this machine."""
    try:
        meta = checkpoint.read(args.resume, "meta")[1]
    except (OSError, ValueError) as error:
        parser.error(f"argument --resume: {error}")
    saved = meta["config"]
    for action in parser._actions:         # parse again, keeping only the options typed
        action.default = argparse.SUPPRESS
    typed = vars(parser.parse_args(argv))
    given = meta.get("lr_given", saved.get("lr"))
    lr = typed.pop("lr", given)
    if lr != given:
        args.new_lr = lr
    auto = typed.get("preset") == "auto"       # what the original command said: its meaning
    if auto:
        typed["preset"] = auto_preset(args.devices)
    for key in RUN_SETTINGS:
        value = saved_setting(saved, key)
        if key in typed and key not in DATA_PATHS and typed[key] != value:
            typed_value, value = (f"{v:g}" if isinstance(v, float) else v      # 5, not 5.0
                                  for v in (typed[key], value))
            if key == "preset" and auto:
                typed_value = f"auto ({typed_value} on this machine)"
            parser.error(f"argument --{key.replace('_', '-')}: {typed_value} is not the resumed "
                         f"run's {value}; --resume goes on with the run's settings: "
                         "leave the option out, or start a new run")


def fit_recipe(args, train_images):
    """Fill in the settings left to their defaults for a training set of `train_images`; returns
    a sentence per setting that differs from the paper's because the set is small."""
    said = []
    if args.batch_size is None:
        batch = PAPER_BATCH
        while batch > SMALLEST_BATCH and train_images < STEPS_PER_EPOCH * batch:
            batch //= 2
        args.batch_size = min(batch, train_images)
        if args.batch_size != PAPER_BATCH:
            steps = train_images // args.batch_size
            said.append(f"batch {args.batch_size}, so that an epoch has {counted(steps, 'step')}")
    elif args.batch_size > train_images:
        raise ValueError(f"the training set has {counted(train_images, 'image')}, fewer than one "
                         f"batch of {args.batch_size}; lower --batch-size or leave it out")
    if args.clip_norm is None:
        args.clip_norm = CLIP_NORMS.get(args.preset, 0.0) if args.batch_size < PAPER_BATCH else 0.0
        if args.clip_norm:
            said.append(f"gradients clipped to a norm of {args.clip_norm:g}")
    if args.epochs is None:
        if args.data is None:
            args.epochs = SYNTHETIC_EPOCHS
        else:
            args.epochs = max(PAPER_EPOCHS, math.ceil(RUN_IMAGES / train_images))
            if args.epochs > PAPER_EPOCHS:
                said.append(f"at most {args.epochs} epochs ({args.epochs * train_images:,} "
                            "images)")
    # Epochs between evaluations, and never more than the run has (a short run's one
    # evaluation comes at its end)
    interval = min(math.ceil(EVAL_IMAGES / train_images), args.epochs)
    if args.eval_every is None:
        args.eval_every = interval
        if interval > 1:
            said.append(f"an evaluation every {interval} epochs ({interval * train_images:,} "
                        "images)")
    if args.lr_patience is None:
        args.lr_patience = PATIENCE_EVALS * interval
        if interval > 1:
            said.append(f"learning-rate patience {args.lr_patience} epochs")
    return said


_speaking = True                # False on every rank of a data-parallel run but rank 0


def log_line(message):
    if _speaking:
        try:
            print(message, flush=True)
        except OSError:
            # The reader of stdout is gone (`| head`: a broken pipe; a closed terminal: EIO).
            # Training goes on without its lines: the run directory holds all they say, and
            # stopping would throw away the work since the last checkpoint. Stdout is sent
            # to /dev/null, where Python's flush at exit of what is still buffered succeeds.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def load_data(args, size, may_prepare=True, compare=False, log=None):
    """The data of the settings `args` (data, cache, synthetic_train, synthetic_val, seed) as a
    prepare.Cache: the embedded data set drawn in memory when args.data is None (no augmentation
    statistics, no folder), else the cache of args.data, prepared first if need be (and if
    may_prepare; else refused when it is not ready; `compare`: prepare.cache_for). `log`: where
    its lines go (default log_line: stdout)."""
    log = log or log_line
    if args.data is None:
        log(f"data: embedded shapes data set, {args.synthetic_train} train / "
            f"{args.synthetic_val} val images of {size}x{size}, drawn with seed {args.seed}")
        splits = synthetic.make_splits(args.synthetic_train, args.synthetic_val, size, args.seed)
        return prepare.Cache(data.Split(*splits["train"]), data.Split(*splits["val"]),
                             splits["classes"], aug=None, bad=[])
    folder = prepare.cache_for(args.data, size, args.cache, log=log, may_prepare=may_prepare,
                               compare=compare)
    cache = prepare.open_cache(folder, size, source=None if folder == args.data else args.data)
    log(f"data: {len(cache.train)} train / {len(cache.val)} val images of {size}x{size}, "
        f"memory-mapped from {cache.folder}")
    return cache


def data_identity(loaded):
    """What tells a data set (a prepare.Cache) apart from another, cheaply: its image counts,
    its classes, and a checksum of its labels and, for a folder's cache, of its lists of files
    (train_files.txt, val_files.txt: names and sizes), which differ where other files of the
    same number were decoded."""
    checksum = 0
    for split in (loaded.train, loaded.val):
        checksum = zlib.crc32(numpy.ascontiguousarray(split.labels), checksum)
    for split in prepare.SPLITS if loaded.folder else ():
        with open(os.path.join(loaded.folder, f"{split}_files.txt"), "rb") as f:
            checksum = zlib.crc32(f.read(), checksum)
    return len(loaded.train), len(loaded.val), loaded.classes, checksum


def check_same_data(group, loaded):
    """Refuse, on every rank, data that differs from rank 0's (a folder that is not the same
    on every machine): the ranks would take different numbers of steps, or build networks of
    different sizes, and wait for each other for ever in their collective calls."""
    if group.size == 1:
        return
    seen = group.allgather(data_identity(loaded))
    other = next((rank for rank, identity in enumerate(seen) if identity != seen[0]), None)
    if other is None:
        return
    (train, val, classes, _), (train_0, val_0, classes_0, _) = seen[other], seen[0]
    if (train, val, classes) == (train_0, val_0, classes_0):
        differs = (f"rank {other} sees other images than rank 0 (as many, {train:,} training / "
                   f"{val:,} validation, of the same classes, but other files or labels)")
    else:
        renamed = len(classes) == len(classes_0) and classes != classes_0
        differs = (f"rank {other} sees {train:,} training / {val:,} validation images of "
                   f"{len(classes)} classes, rank 0 sees {train_0:,} / {val_0:,} of "
                   f"{len(classes_0)}{' (other class names)' if renamed else ''}")
    raise ValueError(f"{differs}: give every machine the same data (--data on a file system "
                     "they share, or identical copies)")


RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl")       # a folder with one of them holds a run


def resumed_folder(resume):
    """The run directory of a --resume: the folder itself, or the one holding the .npz."""
    return resume if os.path.isdir(resume) else os.path.dirname(os.path.abspath(resume))


def run_directory(args):
    """Where this run writes, created and checked writable: --run-dir, else the resumed run's
    folder, else runs/<date>-<time> (-2, -3, ... for runs started in the same second). A new
    run never writes into a folder that holds another run's checkpoints or metrics (a run
    writes its first checkpoint at its first evaluation, hours in on ImageNet)."""
    resumed = args.resume and resumed_folder(args.resume)
    path = args.run_dir or resumed
    if path is None:
        stamp = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
        for n in range(1, 1000):
            path = stamp if n == 1 else f"{stamp}-{n}"
            try:
                make_folders(path, exist_ok=False)     # not exist_ok: one folder for each run
                break
            except FileExistsError:
                continue
            except OSError as error:
                raise ValueError(f"cannot create the run directory {path} ({error.strerror}); "
                                 "pass --run-dir with a writable folder") from None
    held = [name for name in RUN_FILES if os.path.exists(os.path.join(path, name))]
    if held and not (resumed and os.path.samefile(path, resumed)):
        resume = path if "last.npz" in held else \
            os.path.join(path, "best.npz") if "best.npz" in held else None
        raise ValueError(f"{path} already holds a run ({', '.join(held)}): " +
                         (f"continue it with --resume {quote(resume)}, or pass another --run-dir"
                          if resume else "it may still be training (no checkpoint yet): pass "
                          "another --run-dir, or delete the folder if nothing writes to it any "
                          "more"))
    return writable_folder(path, "the run directory ", "--run-dir")   # before hours of caching


RUN_LOCK = "train.lock"


def lock_run_directory(path):
    """The open lock file of the run directory `path`, locked for as long as it stays open (the
    run's life): a second training into the same folder, started while the first prepares its
    data or trains, is refused in one sentence, instead of both writing there. A POSIX record
    lock (lockf), as prepare.locked takes: it belongs to this process alone, not to the workers
    it forks (an flock would pass to them and outlive the run in an orphaned one), and the
    system releases it when the process ends, however. The file says the process's id to the
    one refused. Where it cannot be had (a file system without locks) the run goes on without."""
    lock = open(os.path.join(path, RUN_LOCK), "a+")
    if not prepare.lock_now(lock, path, "nothing stops a second training from writing there at "
                            "the same time", log_line):
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        raise ValueError(f"another training is writing to {path}" +
                         (f" (process {holder})" if holder.isdigit() else "") +
                         ": wait for it, or pass another --run-dir")
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


@contextlib.contextmanager
def lock_removed_on_failure(path, made):
    """Within the block, the lock file of the run directory `path` goes if the block fails and
    this run made the folder (`made`: made_folders() of rank 0), so that undo_made_folders can
    remove it, empty, as before there was a lock."""
    try:
        yield
    except BaseException:
        if os.path.abspath(path) in made:
            with contextlib.suppress(OSError):      # another rank removed it first
                os.remove(os.path.join(path, RUN_LOCK))
        raise


def replica_devices(devices, local_rank, local_size):
    """The devices of the towers of the local_rank-th of local_size processes on one machine.
    `devices` ("a,b", see --devices) are the first process's; each next one takes the next GPUs
    along: with "0,1" process l has GPUs 2l and 2l+1 (an 8-GPU machine: 4 replicas of 2 towers),
    with "0,0" GPU l for both towers (8 replicas). Default: "0,1" when the machine has two GPUs
    for each process, else "0,0" (refused when it has fewer GPUs than processes); the CPU when
    it has no GPU."""
    gpus = backend.gpu_count()
    if devices is None:
        devices = "cpu,cpu" if gpus == 0 else "0,1" if gpus >= 2 * local_size else "0,0"
    parts = [part.strip() for part in devices.split(",")]
    used = len({part for part in parts if part != "cpu"})       # GPUs of one replica
    placed = tuple(part if part == "cpu" else int(part) + local_rank * used for part in parts)
    if used and max(d for d in placed if d != "cpu") >= gpus:
        raise ValueError(f"process {local_rank + 1} of {local_size} on this machine would put "
                         f"its towers on GPUs {placed[0]},{placed[1]} but the machine has {gpus}: "
                         f"start at most {counted(gpus // used, 'process', 'processes')} a "
                         "machine, or pass --devices 0,0 (both towers of a replica on one GPU)")
    return placed


def check_batch_split(batch_size, processes, resumed=False):
    """Data parallel: every process takes an equal part of each batch."""
    if batch_size % processes:
        other = "(a resumed run keeps its batch)" if resumed else \
            f"or pass a --batch-size that is a multiple of {processes}"
        raise ValueError(f"a batch of {counted(batch_size, 'image')} does not split into "
                         f"{processes} equal parts, one per process: start a number of "
                         f"processes that divides {batch_size} {other}")


def top_k_errors(logits, labels, ks=(1, 5)):
    """Fraction of rows whose label is not among the k largest logits, for each k."""
    return [float(1.0 - top_k_hits(logits, labels, k).mean()) for k in ks]


def evaluate(model, split, aug, size, batch_size):
    """Loss, top-1 and top-5 error, and the logits (N, classes), of the central crops of
    `split` (dropout off)."""
    model.eval()
    total_loss, logits_all = 0.0, []
    with minigrad.no_grad():
        for x, labels in data.batches(split, aug, size, batch_size, train=False,
                                      device=model.devices[0]):
            logits = model(x)
            total_loss += F.cross_entropy(logits, labels).item() * len(labels)
            logits_all.append(logits.numpy())
    model.train()
    logits = numpy.concatenate(logits_all)
    top1, top5 = top_k_errors(logits, split.labels)
    return total_loss / len(split), top1, top5, logits


def json_line(record):
    """A record of metrics.jsonl as its line: a NaN or infinite value (the loss of an
    evaluation gone NaN) is written null, as JSON has no number for it (json.dumps would write a
    bare NaN, which jq and JavaScript refuse). Its readers (plots.plot_curves, a resume) take
    null for a value that is missing."""
    return json.dumps({key: None if isinstance(value, float) and not math.isfinite(value) else
                       value for key, value in record.items()}, allow_nan=False) + "\n"


class StopRequest:
    """The first Ctrl-C, SIGTERM (what timeout, Slurm and job schedulers send before they
    kill) or SIGHUP (the terminal or ssh session closed) asks the loop to stop after the current
    step and save; a second one aborts. A SIGHUP ignored when the process started (nohup) stays
    ignored: it was asked to outlive its terminal."""

    def __init__(self):
        self.requested = None          # the INTERRUPTED reason of the first signal

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in INTERRUPTED
                         if s != signal.SIGHUP or signal.getsignal(s) != signal.SIG_IGN}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = INTERRUPTED[signum]
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
        log_line(f"\n{self.requested}: stopping after this step ({again} to abort without "
                 "saving)")

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def missing_classes(split, classes):
    """Names of the classes that have no image in `split`."""
    counts = numpy.bincount(split.labels, minlength=len(classes))
    return [name for name, count in zip(classes, counts) if count == 0]


class Run:
    """The state of one training run and its directory; `group`: the processes training it
    together (minigrad.distributed), a group of one by default."""

    def __init__(self, args, group=None):
        self.args = args
        self.new_lr = vars(args).pop("new_lr", None)        # --lr on --resume: not a setting
        self.lr_given = args.lr                # the last rate typed (--lr), resumes compare to
        self.group = group = group or distributed.Alone()
        self.writes = group.rank == 0             # the one process that writes the run directory
        resume = checkpoint.load(args.resume) if args.resume else None
        if resume:
            saved = resume[2]["config"]
            for key in RUN_SETTINGS:       # --data and --cache, if given, find the same data
                known = key in saved or key in ADDED_SETTINGS
                if known and not (key in DATA_PATHS and getattr(args, key)):
                    setattr(args, key, saved_setting(saved, key))
            if args.epochs is None:               # the same length unless --epochs says more
                args.epochs = saved.get("epochs")
            if args.data and not os.path.exists(args.data):     # a cache is made again
                raise ValueError(f"the data this run was trained on, {args.data}, is not there "
                                 "any more; pass --data with where it is now")
        if args.preset == "auto":
            args.preset = auto_preset(args.devices)
            why = "a GPU was found" if args.preset == "paper" else \
                "no GPU: the paper network would take days on a CPU" if not args.devices else \
                f"--devices {args.devices} puts a tower on the CPU, where the paper network " \
                "would take days"
            log_line(f"preset: {args.preset} ({why})")
        preset = PRESETS[args.preset]
        self.size = preset.input_size
        if args.batch_size is not None:           # before hours of preparing a cache
            check_batch_split(args.batch_size, group.size, bool(resume))
        # A run that never started leaves no empty folder it made (runs/<date>, runs/).
        with undo_made_folders():
            # Rank 0 makes the run directory (one name for every rank). A rank that fails
            # before training removes the empty folders rank 0 made, as rank 0 would have: rank
            # 0 waits for every rank (the barrier) before it writes there.
            chosen = None
            if self.writes:                 # locked for as long as this Run lives
                chosen = run_directory(args)
                self.lock = lock_run_directory(chosen)
            self.dir, made = group.allgather((chosen, made_folders()) if self.writes else None)[0]
            if not self.writes:
                adopt_made_folders(made)
            with lock_removed_on_failure(self.dir, made):
                self.open_data(resume, preset)
                self.build()
                self.epoch, self.batch, self.step, self.best = 0, 0, 0, float("inf")
                self.seconds = 0.0                # training time before this process (resume)
                self.records = []
                if resume:
                    self._restore(*resume)
                group.barrier()
        if self.writes:
            self.write("config.json", json.dumps(vars(args), indent=2))
            self.write("classes.txt", "".join(name + "\n" for name in self.classes))
            if self.bad:
                self.write("bad_files.txt",
                           "".join(f"{path}\t{reason}\n" for path, reason in self.bad))
        clip = f", gradients clipped to a norm of {args.clip_norm:g}" if args.clip_norm else ""
        tf32 = ", TF32 matrix products on the GPU" if args.tf32 and \
            any(device != "cpu" for device in self.model.devices) else ""
        log_line(f"model: AlexNet preset {args.preset}, {len(self.classes)} classes, init "
                 f"{args.init}, towers on {self.model.devices}{tf32}; batch {args.batch_size}, "
                 f"lr {self.optimizer.lr:g}{clip}; run directory {self.dir}")
        if group.size > 1:
            log_line(f"data parallel: {group.size} processes ({group.local_size} on this machine),"
                     f" {counted(args.batch_size // group.size, 'image')} of every batch each, "
                     "gradients averaged every step")

    def open_data(self, resume, preset):
        """The training and validation sets, their classes and augmentation statistics, and the
        recipe's settings for a set of that size (fit_recipe)."""
        args, group = self.args, self.group
        # Rank 0 prepares a folder's cache (once); the others open it when it is ready. The
        # embedded data set is drawn by every rank at once, each on its share of the cores.
        if group.rank == 0 or not args.data:
            loaded = load_data(args, preset.stored_size(), compare=not resume)
        if args.data:
            group.barrier()
            if group.rank > 0:
                loaded = load_data(args, preset.stored_size(), may_prepare=False)
        check_same_data(group, loaded)
        self.train, self.val, self.classes = loaded.train, loaded.val, loaded.classes
        if resume and resume[2]["classes"] != self.classes:
            theirs, ours = resume[2]["classes"], self.classes
            lacks, adds = ([c for c in a if c not in b][:3] for a, b in ((theirs, ours),
                                                                        (ours, theirs)))
            differ = "; ".join(([f"the data lacks {', '.join(lacks)}"] if lacks else []) +
                               ([f"has {', '.join(adds)}"] if adds else [])) or "in another order"
            again = "" if not args.data or loaded.folder == args.data else (
                f" (the data is its cache {loaded.folder}, which a resume reads as it is; if the "
                f"folder holds the run's classes now, decode it anew first: python -m "
                f"alexnet.prepare --data {quote(args.data)} --size {preset.stored_size()} "
                f"--out {quote(loaded.folder)})")
            raise ValueError(f"the checkpoint {args.resume} was trained on other classes than "
                             f"the data ({differ}); resume with the data it was trained on{again}")
        self.note_missing_classes()
        self.class_names = self.readable_names(resume)
        boxed = plots.font_note(self.class_names)
        if boxed:
            log_line(boxed)
        said = fit_recipe(args, len(self.train))
        if said:
            log_line(f"recipe for {len(self.train):,} training images: {'; '.join(said)}")
        check_batch_split(args.batch_size, group.size, bool(resume))    # the recipe's too
        if len(self.val) < group.size:
            raise ValueError(f"the validation set has {counted(len(self.val), 'image')}, fewer "
                             f"than the {group.size} processes: add validation images or start "
                             "fewer")
        self.steps_per_epoch = data.batch_count(self.train, args.batch_size, train=True)
        self.aug = loaded.aug if loaded.aug is not None else \
            data.Augmentation.of(self.train.images)
        self.bad = loaded.bad

    def build(self):
        """The network on its devices (this process's share of them under mpiexec), the same
        initial weights on every process, SGD and the divide-by-10 schedule."""
        args, group = self.args, self.group
        minigrad.manual_seed(args.seed)
        devices = args.devices if group.size == 1 else \
            replica_devices(args.devices, group.local_rank, group.local_size)
        if group.size > 1:
            # Each process's own GPU by default, so that none makes a CUDA context on GPU 0.
            backend.use(devices[0])
        self.model = AlexNet(len(self.classes), devices=devices, init=args.init,
                             preset=args.preset, dropout=args.dropout)
        # What runs outside the layers (a batch's top-1 error) runs on tower a's GPU, as fc8.
        backend.use(self.model.devices[0])
        self.clock = backend.Clock(self.model.devices[0])   # times the averaging of gradients
        group.broadcast(self.model.parameters())       # every replica starts from rank 0's
        if args.tf32 and "cpu" in self.model.devices:   # main() turns TF32 on for the run
            log_line("note: --tf32 changes nothing on the CPU, which computes in float32")
        if group.size > 1:                # each rank its own dropout masks, for its own images
            minigrad.manual_seed([args.seed, group.rank])
        self.optimizer = optim.SGD(self.model.parameters(), args.lr, args.momentum, args.weight_decay)
        # Patience in training images, so that a plateau means the same whatever --eval-every:
        # an epoch is steps_per_epoch full batches (the last, partial one is dropped).
        epoch_images = self.steps_per_epoch * args.batch_size
        self.schedule = optim.ReduceLROnPlateau(self.optimizer,
                                                patience=args.lr_patience * epoch_images,
                                                max_reductions=args.lr_drops)

    def readable_names(self, resume):
        """The classes' names for people: from --class-names or such a file in --data, else
        those of the checkpoint resumed, else the folder names."""
        path = self.args.class_names or (self.args.data and data.find_class_names(self.args.data))
        if path:
            try:
                names = data.read_class_names(path, self.classes, log_line)
                named = sum(name != folder for name, folder in zip(names, self.classes))
                log_line(f"class names: {named} of {len(self.classes)} classes named by {path}")
                return names
            except ValueError as error:
                if self.args.class_names:
                    raise
                # Found, not given: a file of another data set's names is no reason to stop.
                log_line(f"note: {str(error).split(';')[0]}, so the class folders' names are "
                         "used (--class-names FILE gives another file)")
        return checkpoint.class_names(resume[2]) if resume else self.classes

    def note_missing_classes(self):
        """One sentence for each class that some split lacks (prepare already refuses val
        classes that train lacks)."""
        for split, missing, consequence in (
                ("train", missing_classes(self.train, self.classes),
                 "the network can never predict them; add images or remove the folders"),
                ("val", missing_classes(self.val, self.classes),
                 "their accuracy is not measured; add images to val/<class>/")):
            if missing:
                names = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
                log_line(f"note: {len(missing)} of {len(self.classes)} classes "
                         f"{'has' if len(missing) == 1 else 'have'} no {split} "
                         f"images ({names}): {consequence}")

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, *names):
        """Write the checkpoint under each of `names` (rank 0; every rank calls this, for its
        random state and the check that the replicas agree); returns the first one's path."""
        states = self.group.allgather(mg_random.get_state())     # each rank's dropout draws
        if not self.group.replicas_agree(self.model.parameters()):
            raise RuntimeError(f"the {self.group.size} processes' copies of the network differ "
                               f"at step {self.step}, which data-parallel training must never "
                               "let happen; the last checkpoint is kept, not overwritten")
        paths = [os.path.join(self.dir, name) for name in names]
        if not self.writes:
            return paths[0]
        meta = {"preset": self.args.preset, "classes": self.classes,
                "class_names": self.class_names, "train_images": len(self.train),
                "epoch": self.epoch,
                "batch": self.batch, "step": self.step, "best_top1_error": self.best,
                "lr": self.optimizer.lr, "schedule": self.schedule.state_dict(),
                "seconds": self.elapsed(), "ranks": self.group.size, "random_states": states,
                "lr_given": self.lr_given, "config": vars(self.args)}
        # The training set's mean image goes along: evaluation must subtract the training
        # set's, not the val set's.
        with self.writing(names[0]):
            checkpoint.save(paths[0], self.model, self.optimizer, meta,
                            extra_arrays=checkpoint.augmentation_arrays(self.aug))
        for name, path in zip(names[1:], paths[1:]):    # the same bytes: copied, not written again
            with self.writing(name):
                checkpoint.copy(paths[0], path)
        return paths[0]

    def _restore(self, params, velocities, meta):
        self.model.load_state_dict(params)
        self.optimizer.load_state_dict({"lr": meta["lr"], "momentum": self.args.momentum,
                                        "weight_decay": self.args.weight_decay, **velocities})
        self.schedule.load_state_dict(meta["schedule"])
        self.lr_given = meta.get("lr_given", self.args.lr)
        if self.new_lr is not None:
            self.optimizer.lr = self.lr_given = self.new_lr
            log_line(f"learning rate {self.new_lr:g} from here on (--lr; the checkpoint's was "
                     f"{meta['lr']:g})")
        self.epoch, self.batch, self.step = meta["epoch"], meta["batch"], meta["step"]
        trained_on = meta.get("train_images", len(self.train))
        if trained_on != len(self.train):   # files added or removed, and the cache made again
            # Where the smaller epoch has no batch left, it ends at once (and is evaluated).
            ends = self.batch >= self.steps_per_epoch
            self.batch = min(self.batch, self.steps_per_epoch)
            log_line(f"note: the checkpoint was trained on {trained_on:,} training images and "
                     f"the data now has {len(self.train):,}: training goes on with the data as it "
                     "is (its mean image and colour statistics too), " +
                     ("from the next epoch" if ends else "the rest of the epoch in progress "
                      "drawn from the new set"))
        self.best = meta["best_top1_error"]
        self.seconds = meta.get("seconds", 0.0)
        ranks, K = meta.get("ranks", 1), self.group.size
        if ranks == K:
            mg_random.set_state(meta["random_states"][self.group.rank])
        else:
            mg_random.manual_seed([self.args.seed, self.group.rank, self.step])
            B = self.args.batch_size
            log_line(f"note: this run was trained by {counted(ranks, 'process', 'processes')} "
                     f"and goes on with {K}: "
                     f"the batch stays {counted(B, 'image')} a step ({B // K} per process, was "
                     f"{B // ranks}), and dropout masks come from a new random stream")
        # A resume into another --run-dir branches the run: the new folder starts as the run
        # up to the checkpoint (its metrics, and its best.npz where that is from no later), so
        # that its curves, the final line's best error and evaluate on the folder tell the
        # whole run. The resumed folder is left as it is.
        source = resumed_folder(self.args.resume)
        metrics = os.path.join(source, "metrics.jsonl")
        if os.path.exists(metrics):          # keep the lines up to the checkpoint, drop the rest
            with open(metrics) as f:          # and the stop of the process that wrote it
                lines = f.readlines()
            if lines and not lines[-1].endswith("\n"):   # a line cut off by a full disk, a crash
                lines.pop()
            self.records = [r for r in map(json.loads, lines)
                            if r["step"] <= self.step and r["kind"] != "stop"]
        self.group.barrier()                 # every rank has read it before rank 0 rewrites it
        if self.writes and os.path.exists(metrics):
            self.write("metrics.jsonl", "".join(map(json_line, self.records)))
        best = os.path.join(source, "best.npz")
        if self.writes and not os.path.samefile(source, self.dir) and os.path.exists(best) and \
                checkpoint.read(best, "meta")[1]["step"] <= self.step:
            with self.writing("best.npz") as path:
                checkpoint.copy(best, path)
        log_line(f"resumed from {self.args.resume}: epoch {self.epoch + 1}, step {self.step}")

    def record(self, kind, epoch, step, **fields):
        """One line of metrics.jsonl: its kind, where training was, and when (seconds)."""
        fields = dict(kind=kind, epoch=epoch, step=step, time=round(self.elapsed(), 2), **fields)
        self.records.append(fields)
        if self.writes:
            self.write("metrics.jsonl", json_line(fields), append=True)

    def write(self, name, text, append=False):
        """Write `text` into the run directory's file `name`, appended, or in place of the file
        as a whole (a failure keeps the old one: checkpoint.write_atomically)."""
        with self.writing(name) as path:
            if append:
                with open(path, "a") as f:
                    f.write(text)
            else:               # as the cache's file lists: a non-UTF-8 file name as its bytes
                prepare.write_text(path, text)

    @contextlib.contextmanager
    def writing(self, name):
        """Around the writes of the run directory's file `name` (its path is yielded): an
        OSError (a full disk, a folder made read-only) becomes one sentence naming the file and
        what to do, not a bare '[Errno 28] No space left on device'."""
        path = os.path.join(self.dir, name)
        try:
            yield path
        except OSError as error:
            said = str(error) if error.strerror is None else \
                f"cannot write {path} ({error.strerror})"       # None: already a sentence
            then = f"go on with {self.resume_command(self.dir)}" if \
                os.path.exists(os.path.join(self.dir, "last.npz")) else \
                "start the run again (it has no checkpoint to go on from)"
            raise OSError(f"{said}; make room on its disk or give this process write access to "
                          f"{self.dir}, then {then}") from None

    def elapsed(self):
        """Seconds of training in this run, over every process that worked on it."""
        return self.seconds + time.perf_counter() - self.started

    def images_trained(self):
        return self.step * self.args.batch_size

    def epochs_done(self):
        """Epochs trained, with the fraction of the current one."""
        return round(self.epoch + self.batch / self.steps_per_epoch, 4)

    # ---- the loop ---------------------------------------------------------------------------
    def train_step(self, x, labels):
        """One SGD step on this process's batch (its part of the batch, in data parallel).
        Returns [loss, top-1 error, 1 if the gradients were clipped else 0] of the batch as one
        array on the network's first device, and the clock marks (self.clock) before and after
        the gradients were averaged. Nothing is read back to the host here: reading a number of
        a GPU array waits until the GPU has done everything queued before it, and the host then
        has no step queued behind. Run.run reads the numbers of a window of steps at once, when
        it writes the progress line (read_window)."""
        logits = self.model(x)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad()
        loss.backward()
        averaging = [self.clock.mark()]
        self.group.average_gradients(self.model.parameters())
        averaging.append(self.clock.mark())
        xp = backend.get_array_module(logits.data)
        with backend.device_scope(logits.device):      # made there: no copy from the host
            clipped = xp.zeros((), xp.float64)
        if self.args.clip_norm:         # the same on every process: the gradients are averaged
            norm = optim.clip_grad_norm(self.model.parameters(), self.args.clip_norm)
            clipped = backend.to_device(norm > self.args.clip_norm, logits.device).astype(
                xp.float64)
        self.optimizer.step()
        wrong = logits.data.argmax(axis=1) != backend.to_device(labels, logits.device)
        return xp.stack((loss.data.astype(xp.float64), wrong.mean(dtype=xp.float64), clipped)), \
            averaging

    def read_window(self, numbers):
        """The [loss, top-1 error, clipped] of each step since the last reading (`numbers`, which
        is emptied), averaged over the processes (each has an equal part of the batch, so the
        mean of their losses is the loss of the whole batch) and checked, as a (steps, 3)
        array."""
        xp = backend.get_array_module(numbers[0])
        values = backend.to_device(xp.stack(numbers), "cpu")          # waits for the device
        if self.group.size > 1:
            values = self.group.allreduce_sum(values) / self.group.size
        for step, loss in enumerate(values[:, 0], self.step - len(numbers) + 1):
            self.check_loss(loss, step)
        numbers.clear()
        return values

    def resume_command(self, checkpoint_path, *options):
        """The command that goes on with this run from `checkpoint_path`, for the messages to
        give: under mpiexec as it was started, with the limits, devices and TF32 it was given
        (a resume would not keep them otherwise: they are this process's, not the run's
        settings) and `options`."""
        mpiexec = f"mpiexec -n {self.group.size} " if self.group.size > 1 else ""
        limits = [f"--{name.replace('_', '-')} {value:g}" for name in ("max_steps", "max_minutes")
                  if (value := getattr(self.args, name))]
        devices = [f"--devices {self.args.devices}"] if self.args.devices else []
        tf32 = ["--tf32"] if self.args.tf32 else []
        return " ".join([f"{mpiexec}python -m alexnet.train --resume {quote(checkpoint_path)}",
                         *limits, *devices, *tf32, *options])

    def check_loss(self, loss, step):
        if not math.isfinite(loss):
            lr = self.optimizer.lr
            best, last = (os.path.join(self.dir, name) for name in ("best.npz", "last.npz"))
            # A third of the rate, or of the last evaluation's where that is lower: a resume at
            # a far higher --lr that diverged is pointed below the rate its checkpoint trained
            # at, not to a third of a rate that may still be far too high.
            evaluated = [r["lr"] for r in self.records if r["kind"] == "eval"]
            lower = f"--lr {min([lr] + evaluated[-1:]) / 3:.2g}"
            if os.path.exists(best):           # last.npz may be from after the blow-up began
                then = "resume from the checkpoint of the best validation error with a lower " \
                    f"one: {self.resume_command(best, lower)}"
            elif os.path.exists(last):
                then = f"resume from the last checkpoint with a lower one: " \
                    f"{self.resume_command(last, lower)}"
            else:
                then = (f"start again with a lower --lr, such as {lr / 3:.2g}, and another "
                        "--run-dir (no checkpoint had been written yet)")
            raise FloatingPointError(f"the loss became {loss} at step {step}: the learning rate "
                                     f"{lr:g} is probably too high; {then}")
        # A guess's loss is ln(classes); twice that and more is no noise of the first batch.
        if step == 1 and loss > 2 * math.log(len(self.classes)) + 1:
            log_line(f"warning: the first loss {loss:.3f} is far above ln({len(self.classes)}) = "
                     f"{math.log(len(self.classes)):.3f}: the initial weights are too large")

    def run(self):
        """Train until a stop condition; returns the reason, as the final line gives it."""
        args = self.args
        total_steps = self.steps_per_epoch * args.epochs
        if args.max_steps:
            total_steps = min(total_steps, args.max_steps)
        window = dict.fromkeys(("images", "time", "data"), 0)
        numbers, averaging = [], []        # train_step's results since the last line
        self.started, steps_at_start = time.perf_counter(), self.step
        # Overflow shows up as a non-finite loss, which check_loss reports in one sentence.
        with StopRequest() as stop, numpy.errstate(over="ignore", invalid="ignore"):
            reason = self.stop_reason(stop)            # e.g. resuming a run that had finished
            while reason is None:
                batches = data.batches(self.train, self.aug, self.size, args.batch_size, train=True,
                                       seed=args.seed, epoch=self.epoch, start=self.batch,
                                       workers=args.workers, device=self.model.devices[0],
                                       share=(self.group.rank, self.group.size))
                tick = time.perf_counter()
                for x, labels in batches:
                    loaded = time.perf_counter()
                    step_numbers, marks = self.train_step(x, labels)
                    numbers.append(step_numbers)
                    averaging.append(marks)
                    self.step, self.batch = self.step + 1, self.batch + 1
                    line = self.step % args.log_every == 0 or self.batch == self.steps_per_epoch
                    if line:                   # before the clock: the wait for the device counts
                        values = self.read_window(numbers)
                    now = time.perf_counter()
                    for key, value in (("images", args.batch_size), ("time", now - tick),
                                       ("data", loaded - tick)):
                        window[key] += value
                    tick = now
                    if line:
                        window["averaging"] = sum(self.clock.seconds(*m) for m in averaging)
                        rate = (now - self.started) / (self.step - steps_at_start)
                        eta = (total_steps - self.step) * rate
                        if args.max_minutes:
                            eta = min(eta, 60 * args.max_minutes - (now - self.started))
                        self.log_progress(window, values, max(eta, 0.0))
                        window, averaging = dict.fromkeys(window, 0), []
                    reason = self.stop_reason(stop)
                    if reason:
                        break
                if self.batch == self.steps_per_epoch:      # its last step was read and checked
                    self.epoch, self.batch = self.epoch + 1, 0
                    if self.epoch % args.eval_every == 0 or self.epoch == args.epochs:
                        self.evaluate_and_save()
                    reason = reason or self.stop_reason(stop)
            if reason in INTERRUPTED.values():  # at the last step: the run is complete all the same
                reason = self.finished() or reason
            if numbers:                        # checked before they are saved
                self.read_window(numbers)
            self.save("last.npz")              # first: a job's kill may follow its SIGTERM
            evaluated = [r["step"] for r in self.records if r["kind"] == "eval"]
            final = reason not in INTERRUPTED.values() and evaluated[-1:] != [self.step]
            if self.group.allgather(final)[0]:      # rank 0's records decide for every rank
                self.evaluate_and_save(final=True)       # e.g. --max-minutes, mid-epoch
        self.record(kind="stop", epoch=self.epochs_done(), step=self.step, reason=reason)
        if reason in INTERRUPTED.values():
            log_line(f"{reason.split()[0]} at step {self.step}; saved "
                     f"{os.path.join(self.dir, 'last.npz')}; continue with "
                     f"{self.resume_command(self.dir)}")
        else:
            best = f"best validation top-1 error {self.best:.2%}" if math.isfinite(self.best) \
                else "no evaluation yet"
            log_line(f"done: {reason}; {counted(self.step, 'step')} in "
                     f"{format_time(self.elapsed())}; {best}; checkpoints in {self.dir}")
        self.draw()
        return reason

    def stop_reason(self, stop):
        """Why training must stop now, or None; the same on every process. Ctrl-C and the
        clock reach each process at its own moment, so the first (in rank order) that sees
        one of them speaks for all."""
        seen = None
        if stop.requested:
            seen = stop.requested
        elif self.args.max_minutes and \
                time.perf_counter() - self.started >= 60 * self.args.max_minutes:
            seen = f"--max-minutes {self.args.max_minutes:g} reached"
        if self.group.size > 1:
            seen = next(filter(None, self.group.allgather(seen)), None)
        return seen or self.finished()

    def finished(self):
        """Why training is complete, or None; the same on every process."""
        if self.args.max_steps and self.step >= self.args.max_steps:
            return f"--max-steps {self.args.max_steps} reached"
        if self.schedule.finished:
            return (f"the schedule finished: the validation error stopped improving after "
                    f"{counted(self.schedule.reductions, 'learning-rate reduction')}")
        if self.epoch >= self.args.epochs:
            every = "all " if self.args.epochs > 1 else ""
            return f"{every}{counted(self.args.epochs, 'epoch')} done"
        return None

    def log_progress(self, window, values, eta):
        """The progress line and its metrics record: `window` holds the sums of the steps'
        times and `values` their [loss, top-1 error, clipped] (read_window)."""
        loss, top1, _ = values.mean(axis=0)
        fields = dict(loss=float(loss), top1_error=float(top1), lr=self.optimizer.lr,
                      images_per_s=window["images"] / window["time"],
                      data_share=window["data"] / window["time"])
        clipped = ""
        if self.args.clip_norm:                 # how often the guard acted, when it is on
            count = fields["clipped_steps"] = int(round(values[:, 2].sum()))
            clipped = f"  clipped {count}/{len(values)}" if count else ""
        averaging = ""
        if self.group.size > 1:       # images/s: of all processes; averaging: rank 0's share
            fields["averaging_share"] = window["averaging"] / window["time"]
            averaging = f"  averaging {fields['averaging_share']:.0%}"
        self.record(kind="train", epoch=self.epochs_done(), step=self.step, **fields)
        log_line(f"epoch {self.epoch + 1}/{self.args.epochs}  "
                 f"step {self.batch}/{self.steps_per_epoch}  "
                 f"loss {fields['loss']:.4f}  top-1 err {fields['top1_error']:.1%}  "
                 f"{fields['images_per_s']:.0f} img/s  data {fields['data_share']:.0%}"
                 f"{averaging}{clipped}  lr {fields['lr']:g}  "
                 f"ETA {'<=' if self.args.data else ''}{format_time(eta)}")

    def evaluate_and_save(self, final=False):
        """Evaluate, move the schedule, save checkpoints and plots. The `final` evaluation of a
        run stopped between the regular ones (--max-steps, --max-minutes) leaves the schedule
        and the not-learning check alone, so that a resumed run goes on as if it had not
        happened."""
        tick = time.perf_counter()
        loss, top1, top5, logits = self.validate()
        top5 = top5 if measures_top5(self.classes) else None
        self.record(kind="eval", epoch=self.epochs_done(), step=self.step, loss=loss,
                    top1_error=top1, **({} if top5 is None else {"top5_error": top5}),
                    lr=self.optimizer.lr, **({"final": True} if final else {}))
        improved = top1 < self.best     # for best.npz any gain; the schedule asks 0.1% of it
        self.best = min(self.best, top1)
        top5 = f"  top-5 error {top5:.2%}" if top5 is not None else ""
        when = f"epoch {self.epoch}" if not final else \
            f"at the stop (epoch {round(self.epochs_done(), 2):g})"
        log_line(f"eval {when}: val loss {loss:.4f}  top-1 error {top1:.2%}{top5}  "
                 f"({counted(len(self.val), 'image')}, "
                 f"{time.perf_counter() - tick:.1f}s){'  best so far' if improved else ''}")
        if not final:
            said = self.schedule.step(top1, self.images_trained())
            if said == "reduced":
                self.record(kind="lr", epoch=self.epoch, step=self.step, lr=self.optimizer.lr,
                            reduction=self.schedule.reductions)
                log_line(f"validation error stopped improving: learning rate now "
                         f"{self.optimizer.lr:g} (reduction {self.schedule.reductions} of "
                         f"{self.args.lr_drops})")
            self.check_learning()
        if improved or not final:       # a stop saved last.npz just before: again for its best
            self.save("last.npz", *(["best.npz"] if improved else []))
        self.draw(logits)

    def draw(self, logits=None):
        """curves.png; after an evaluation (its logits) also conv1.png, predictions.png and
        confusion.png. A picture that cannot be drawn is a warning: it is not worth the run."""
        if not self.writes:
            return
        try:
            plots.plot_curves(self.records, os.path.join(self.dir, "curves.png"),
                              top5=measures_top5(self.classes))
            if logits is not None:
                plots.filter_grid(self.model.conv1a.weight.numpy(),
                                  self.model.conv1b.weight.numpy(),
                                  os.path.join(self.dir, "conv1.png"))
                self.draw_predictions(logits)
        except Exception as error:
            log_line(f"warning: a picture in {self.dir} could not be drawn ({type(error).__name__}"
                     f": {error})")

    def validate(self):
        """evaluate() of the validation set, each process classifying its share of it."""
        K, rank = self.group.size, self.group.rank
        if K == 1:
            return evaluate(self.model, self.val, self.aug, self.size, self.args.batch_size)
        start, end = (len(self.val) * r // K for r in (rank, rank + 1))
        share = data.Split(self.val.images[start:end], self.val.labels[start:end])
        loss, _, _, logits = evaluate(self.model, share, self.aug, self.size,
                                      self.args.batch_size // K)
        loss = self.group.allreduce_sum(loss * len(share)) / len(self.val)
        logits = numpy.concatenate(self.group.allgather(logits))          # in rank order
        return (loss, *top_k_errors(logits, self.val.labels), logits)

    def draw_predictions(self, logits):
        """predictions.png: the same SHOWN validation images at every evaluation, with their
        top-5 classes; confusion.png: the confusion matrix of the whole validation set."""
        rows = numpy.random.default_rng(self.args.seed).choice(
            len(self.val), min(SHOWN, len(self.val)), replace=False)
        probs = softmax(logits[rows])
        plots.prediction_grid(data.central(self.val.images[rows], self.size), probs,
                              self.val.labels[rows], self.class_names,
                              os.path.join(self.dir, "predictions.png"))
        counts = confusion(self.val.labels, logits.argmax(axis=1), len(self.classes))
        plots.confusion_matrix(counts, self.class_names, os.path.join(self.dir, "confusion.png"))

    def check_learning(self):
        """From the second evaluation on, warn once if the network has not begun to learn: its
        validation predictions are still those of a guess (top-1 error at chance and loss
        between 0.97 and 1.5 times ln(classes), the loss of a uniform guess), or so is its
        training loss over the second half of the interval since the previous evaluation. The
        validation loss falls before the top-1 error does: on 20 cluttered classes it had
        fallen by 10% at the second evaluation while the error was still 93.8% (chance: 95%).
        Two other failures are told apart: a training loss above 1.5 ln(classes) (the
        training diverges) and a training loss below half of ln(classes) with validation at
        chance (the network learns its training images by heart)."""
        evals = [r for r in self.records if r["kind"] == "eval" and not r.get("final")]
        if len(evals) < 2 or any(r["kind"] == "warning" for r in self.records):
            return
        classes = len(self.classes)
        chance = 1.0 - 1.0 / classes                    # the top-1 error of a guess
        guess, above = 0.97 * math.log(classes), 1.5 * math.log(classes)
        last = evals[-1]
        # At chance: no better than chance by 3 standard errors of a val set of this size.
        margin = 3 * math.sqrt(chance * (1 - chance) / len(self.val))
        at_chance = last["top1_error"] >= chance - margin
        error = (f"validation top-1 error {last['top1_error']:.1%} is at chance ({chance:.1%} "
                 f"± {margin:.1%} on {counted(len(self.val), 'image')})")
        halfway = (evals[-2]["step"] + self.step) / 2     # "still": the loss of late, not all
        recent = [r["loss"] for r in self.records if r["kind"] == "train" and r["step"] > halfway]
        recent_loss = numpy.mean(recent) if recent else 0.0
        lr, ln = self.optimizer.lr, f"ln({classes}) = {math.log(classes):.3f}"
        causes = [f"the learning rate (--lr {lr:g}; try {lr / 3:.2g} or {lr * 3:.2g})"]
        if self.args.data:                          # the embedded set's are right as drawn
            causes.append("labels that do not follow the images (look at a few files of each "
                          "train/<class> folder)")
        if self.args.init != "kaiming":
            causes.insert(0, f"the initialization (--init {self.args.init} is known to stall at "
                          "chance on small folders and narrow networks; try --init kaiming)")
        if recent_loss > above:             # first: a diverging run's val loss may look a guess's
            symptom = f"training loss {recent_loss:.3g} is above {ln}, that of a uniform guess"
            causes = [f"a learning rate too high for this data (--lr {lr:g}; start again with "
                      f"{lr / 3:.2g} or {lr / 10:.2g})"]
        elif at_chance and guess <= last["loss"] <= above:
            symptom = (f"{error} and its loss {last['loss']:.3f} near {ln}, the loss of a "
                       "uniform guess")
        elif recent_loss >= guess:
            symptom = f"training loss {recent_loss:.3f} is still near {ln}, the loss of a guess"
        elif at_chance and recent_loss < 0.5 * math.log(classes):
            symptom = (f"training loss is low ({recent_loss:.3f}) but the {error}: it learns "
                       "its training images by heart")
            causes = [f"too few training images ({len(self.train):,} for {classes} classes)",
                      "validation images unlike the training images (another source, or "
                      "other labels)"]
        else:
            return
        message = (f"the network is not learning: after {counted(self.step, 'step')} "
                   f"({counted(self.images_trained(), 'image')}) the {symptom}. Likely causes: "
                   f"{'; '.join(causes)}.")
        self.record(kind="warning", epoch=self.epoch, step=self.step, message=message)
        log_line(f"warning: {message}")


def parse_args_together(group, argv):
    """parse_args() on every process of the group. argparse ends a process where it finds an
    error (or --help), which would leave the others waiting for it forever, and every process
    would print it: here an error on any process ends them all, said once, by rank 0, in the
    words of the first process that met it ("rank 1: ..." when rank 0 did not: a path that
    exists on one machine only)."""
    if group.size == 1:
        return parse_args(argv)
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        try:
            args, code = parse_args(argv), None
        except SystemExit as exit:
            args, code = None, exit.code
        except Exception as error:              # e.g. a checkpoint without its settings
            args, code = None, 1
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    ends = group.allgather((code, said.getvalue()))
    first = next((rank for rank, (code, _) in enumerate(ends) if code is not None), 0)
    code, text = ends[first]
    if group.rank == 0 and text:
        prefix = f"rank {first}: " if first else ""
        print(prefix + text, end="", file=sys.stderr if code else sys.stdout)
    if code is not None:
        raise SystemExit(code)
    return args


def main(argv=None):
    global _speaking
    try:
        group = distributed.init()      # a group of one unless started by mpiexec
    except RuntimeError as error:       # started by mpiexec without mpi4py
        print(f"error: {error}", file=sys.stderr)
        return 1
    args = parse_args_together(group, argv)
    _speaking = group.rank == 0
    if group.size > 1 and parallel.CORES == os.cpu_count():     # not bound to cores by mpiexec
        parallel.use_cores(parallel.CORES // group.local_size)     # share the machine's
    backend.reuse_freed_memory()        # the same large arrays every step: keep them (CPU)
    try:
        # SIGTERM before and after the training loop (StopRequest's) ends the run as a Ctrl-C
        # does: a rank waiting for rank 0's data cache was killed by it, and mpiexec ended the
        # others with BAD TERMINATION before they could say anything or clean up.
        tf32 = backend.tf32_products(True) if args.tf32 else contextlib.nullcontext()
        with prepare.sigterm_as_ctrl_c(), hangup_as_sigterm(), tf32:
            reason = Run(args, group).run()
    except (OSError, ValueError, FloatingPointError) as error:   # OSError: e.g. no write access
        return fail(group, f"error: {error}", 1)
    except KeyboardInterrupt:    # before training started, or a second Ctrl-C during it
        return fail(group, "\ninterrupted: checkpoints already written stay, and a data cache "
                    "being prepared keeps what it has decoded; the same command goes on from "
                    "there", 130)
    except Exception as error:
        if group.size == 1:
            raise
        traceback.print_exc()
        return fail(group, f"error: {type(error).__name__}: {error} (traceback above)", 1)
    # Saved, but not done: 128 + the signal, as a shell reports it (`train && evaluate` stops).
    return next((128 + signum for signum, said in INTERRUPTED.items() if said == reason), 0)


@contextlib.contextmanager
def hangup_as_sigterm():
    """Within the block a SIGHUP (the terminal or ssh session closed) is handled as SIGTERM is
    (it killed the process, which left an empty run directory and a cache's last rows
    unsaved), unless it was ignored when the process started (nohup): it stays ignored."""
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGHUP, signal.getsignal(signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def fail(group, message, code):
    """Say `message` and return `code`. Among several processes, end them all (MPI_Abort), so
    that none waits forever for this one; checkpoints are written whole or not at all, so the
    last one stays intact. Rank 0 speaks at once and the others a moment later: an error that
    every rank meets at the same step (a NaN loss) is said once, before rank 0 ends them all.
    The pause after speaking lets mpiexec pass the message on before the processes end; a
    signal in the pauses is ignored."""
    if group.size > 1:
        # Nothing may skip the abort: a Ctrl-C or SIGTERM in the pauses (a KeyboardInterrupt
        # out of time.sleep) left this rank in MPI_Finalize and the others in a collective call
        # for ever. Every rank ends within seconds anyway.
        for signum in INTERRUPTED:
            signal.signal(signum, signal.SIG_IGN)
    if group.size > 1 and group.rank > 0:
        time.sleep(3)
        message = f"rank {group.rank}: {message.lstrip()}"
    print(message, file=sys.stderr, flush=True)
    if group.size > 1:
        time.sleep(1)
    group.abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
