"""Train AlexNet: `python -m alexnet.train [--data DIR] ...` (see --help).

With no arguments it trains on an embedded data set of drawn shapes (alexnet/synthetic.py), the
paper preset on a GPU and the small preset on a CPU. With --data DIR it reads DIR/train/<class>/*
and DIR/val/<class>/* (decoded once into a memory-mapped cache: alexnet/prepare.py) and follows
the paper's recipe (section 5): SGD with momentum 0.9 and weight decay 0.0005, batch 128,
learning rate 0.01 divided by 10 when the validation error stops improving, dropout 0.5, random
227 crops and mirrors of 256x256 images, PCA colour shifts, per-pixel mean subtraction.

Everything a run produces goes into its run directory: config.json, metrics.jsonl, classes.txt,
last.npz / best.npz checkpoints, curves.png, conv1.png and (if any image was unreadable)
bad_files.txt.
"""
import argparse
import json
import math
import os
import signal
import sys
import time

import numpy

import minigrad
from alexnet import checkpoint, data, plots, prepare, synthetic
from alexnet.model import PRESETS, AlexNet
from minigrad import backend, optim
from minigrad import functional as F
from minigrad import random as mg_random

# Settings that define a run; on --resume they come from the checkpoint, not the command line.
RUN_SETTINGS = ("data", "cache", "preset", "batch_size", "lr", "momentum", "weight_decay", "init",
                "seed", "synthetic_train", "synthetic_val", "lr_patience")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m alexnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="image folder with train/<class>/* and "
                   "val/<class>/*, or a cache made from one by python -m alexnet.prepare; "
                   "default: the embedded shapes data set, drawn on the fly")
    p.add_argument("--cache", metavar="DIR", help="where the images of --data are decoded to on "
                   "first use (default DIR/.alexnet-cache-<size>)")
    p.add_argument("--preset", choices=["auto"] + list(PRESETS), default="auto",
                   help="network size: 'paper' (227x227 input, 61M parameters) or 'small' "
                   "(99x99, same structure, narrower); auto: paper on a GPU, small on a CPU")
    p.add_argument("--epochs", type=int, help="passes over the training set (default: 90 with "
                   "--data, as in the paper; 8 on the embedded data set)")
    p.add_argument("--batch-size", type=int, default=128, help="images per SGD step (default 128)")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate (default 0.01)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 0.0005)")
    p.add_argument("--lr-patience", type=int, default=3, help="evaluations without improvement "
                   "of the validation top-1 error before the learning rate is divided by 10")
    p.add_argument("--init", choices=["auto", "paper", "kaiming"], default="auto",
                   help="'paper': N(0, 0.01^2) weights, biases 1 in conv2,4,5 fc6,7; 'kaiming': "
                   "He-normal weights, zero biases; auto: paper with --data, kaiming on the "
                   "embedded data set (the paper's recipe can sit at chance on small data)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialization, shuffling, "
                   "augmentation and dropout (default 0)")
    p.add_argument("--devices", help="devices of towers a and b, e.g. '0,1', '0,0', 'cpu,cpu' "
                   "(default: two GPUs, one GPU twice, or the CPU)")
    p.add_argument("--run-dir", help="where logs, checkpoints and plots go (default "
                   "runs/<date>-<time>, or the resumed run's directory)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (.npz) or a run "
                   "directory (its last.npz) exactly where it stopped")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate on the validation set and "
                   "save checkpoints every N epochs (default 1)")
    p.add_argument("--log-every", type=int, default=10, help="progress line every N steps")
    p.add_argument("--workers", type=int, default=1, help="threads preparing batches ahead")
    p.add_argument("--max-steps", type=int, help="stop (and save last.npz) after this many "
                   "steps in total")
    p.add_argument("--synthetic-train", type=int, default=12800,
                   help="images in the embedded training set (default 12800)")
    p.add_argument("--synthetic-val", type=int, default=2000,
                   help="images in the embedded validation set (default 2000)")
    return p.parse_args(argv)


def log_line(message):
    print(message, flush=True)


def load_data(args, size):
    """(train Split, val Split, class names, bad files, the training set's data.Augmentation
    when a prepared cache has it stored, else None)."""
    if args.data is None:
        log_line(f"data: embedded shapes data set, {args.synthetic_train} train / "
                 f"{args.synthetic_val} val images of {size}x{size}, drawn with seed {args.seed}")
        splits = synthetic.make_splits(args.synthetic_train, args.synthetic_val, size, args.seed)
        return data.Split(*splits["train"]), data.Split(*splits["val"]), splits["classes"], [], None
    folder = prepare.cache_for(args.data, size, args.cache, log=log_line)
    cache = prepare.open_cache(folder, size)
    log_line(f"data: {len(cache.train)} train / {len(cache.val)} val images of {size}x{size}, "
             f"memory-mapped from {folder}")
    return cache.train, cache.val, cache.classes, cache.bad, cache.aug


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


def top_k_errors(logits, labels, ks=(1, 5)):
    """Fraction of rows whose label is not among the k largest logits, for each k."""
    order = numpy.argsort(-logits, axis=1)
    return [float(1.0 - (order[:, :min(k, logits.shape[1])] == labels[:, None]).any(axis=1).mean())
            for k in ks]


def evaluate(model, split, aug, size, batch_size):
    """Loss, top-1 and top-5 error of the central crops of `split` (dropout off)."""
    model.eval()
    total_loss, logits_all = 0.0, []
    with minigrad.no_grad():
        for x, labels in data.batches(split, aug, size, batch_size, train=False,
                                      device=model.devices[0]):
            logits = model(x)
            total_loss += F.cross_entropy(logits, labels).item() * len(labels)
            logits_all.append(logits.numpy())
    model.train()
    top1, top5 = top_k_errors(numpy.concatenate(logits_all), split.labels)
    return total_loss / len(split), top1, top5


class StopRequest:
    """The first Ctrl-C asks the loop to stop after the current step; a second one aborts."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", flush=True)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


class Run:
    """The state of one training run and its directory."""

    def __init__(self, args):
        self.args = args
        resume = checkpoint.load(args.resume) if args.resume else None
        if resume:
            saved = resume[2]["config"]
            for key in RUN_SETTINGS:
                if key in saved:
                    setattr(args, key, saved[key])
        if args.preset == "auto":
            args.preset = "paper" if backend.gpu_count() else "small"
            why = "a GPU was found" if backend.gpu_count() else \
                "no GPU: the paper network would take days on a CPU"
            log_line(f"preset: {args.preset} ({why})")
        if args.init == "auto":
            args.init = "paper" if args.data else "kaiming"
        if args.epochs is None:
            args.epochs = 90 if args.data else 8
        preset = PRESETS[args.preset]
        self.size = preset.input_size
        self.train, self.val, self.classes, bad, aug = load_data(args, preset.stored_size())
        if resume and resume[2]["classes"] != self.classes:
            raise ValueError(f"the checkpoint {args.resume} was trained on other classes than "
                             f"the data ({len(resume[2]['classes'])} vs {len(self.classes)}); "
                             "resume with the data it was trained on")
        if len(self.train) < args.batch_size:
            raise ValueError(f"the training set has {len(self.train)} images, fewer than one batch "
                             f"of {args.batch_size}; lower --batch-size")
        self.aug = aug if aug is not None else data.Augmentation.of(self.train.images)

        if args.run_dir:
            self.dir = args.run_dir
        elif args.resume:
            self.dir = args.resume if os.path.isdir(args.resume) else \
                os.path.dirname(os.path.abspath(args.resume))
        else:
            self.dir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
        os.makedirs(self.dir, exist_ok=True)
        if bad:
            with open(os.path.join(self.dir, "bad_files.txt"), "w") as f:
                f.writelines(f"{path}\t{reason}\n" for path, reason in bad)

        minigrad.manual_seed(args.seed)
        self.model = AlexNet(len(self.classes), devices=args.devices, init=args.init, preset=args.preset)
        self.optimizer = optim.SGD(self.model.parameters(), args.lr, args.momentum, args.weight_decay)
        self.schedule = optim.ReduceLROnPlateau(self.optimizer, patience=args.lr_patience)
        self.epoch, self.batch, self.step, self.best = 0, 0, 0, float("inf")
        self.records = []
        if resume:
            self._restore(*resume)
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
        with open(os.path.join(self.dir, "classes.txt"), "w") as f:
            f.writelines(name + "\n" for name in self.classes)
        log_line(f"model: AlexNet preset {args.preset}, {len(self.classes)} classes, init "
                 f"{args.init}, towers on {self.model.devices}; run directory {self.dir}")

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, name):
        meta = {"preset": self.args.preset, "classes": self.classes, "epoch": self.epoch,
                "batch": self.batch, "step": self.step, "best_top1_error": self.best,
                "lr": self.optimizer.lr, "schedule": self.schedule.state_dict(),
                "random_state": mg_random.get_state(), "config": vars(self.args)}
        path = os.path.join(self.dir, name)
        # The training set's mean image goes along: evaluation must subtract it, not the val set's.
        checkpoint.save(path, self.model, self.optimizer, meta,
                        extra_arrays=checkpoint.augmentation_arrays(self.aug))
        return path

    def _restore(self, params, velocities, meta):
        self.model.load_state_dict(params)
        self.optimizer.load_state_dict({"lr": meta["lr"], "momentum": self.args.momentum,
                                        "weight_decay": self.args.weight_decay, **velocities})
        self.schedule.load_state_dict(meta["schedule"])
        self.epoch, self.batch, self.step = meta["epoch"], meta["batch"], meta["step"]
        self.best = meta["best_top1_error"]
        mg_random.set_state(meta["random_state"])
        metrics = os.path.join(self.dir, "metrics.jsonl")
        if os.path.exists(metrics):          # keep the lines up to the checkpoint, drop the rest
            with open(metrics) as f:
                self.records = [r for r in map(json.loads, f) if r["step"] <= self.step]
            with open(metrics, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)
        log_line(f"resumed from {self.args.resume}: epoch {self.epoch + 1}, step {self.step}")

    def record(self, **fields):
        self.records.append(fields)
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(fields) + "\n")

    # ---- the loop ---------------------------------------------------------------------------
    def train_step(self, x, labels):
        logits = self.model(x)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item(), top_k_errors(logits.numpy(), labels, ks=(1,))[0]

    def check_loss(self, loss):
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} at step {self.step}: the learning rate "
                f"{self.optimizer.lr:g} is probably too high; lower --lr, or resume from the last "
                f"good checkpoint {os.path.join(self.dir, 'last.npz')}")
        if self.step == 1 and loss > 2 * math.log(len(self.classes)) + 1:
            log_line(f"warning: the first loss {loss:.3f} is far above ln({len(self.classes)}) = "
                     f"{math.log(len(self.classes)):.3f}: the initial weights are too large")

    def run(self):
        args = self.args
        steps_per_epoch = data.batch_count(self.train, args.batch_size, train=True)
        total_steps = steps_per_epoch * args.epochs
        if args.max_steps:
            total_steps = min(total_steps, args.max_steps)
        window = {"images": 0, "time": 0.0, "data": 0.0, "loss": 0.0, "top1": 0.0, "steps": 0}
        started, steps_at_start = time.perf_counter(), self.step
        # Overflow shows up as a non-finite loss, which check_loss reports in one sentence.
        with StopRequest() as stop, numpy.errstate(over="ignore", invalid="ignore"):
            while self.epoch < args.epochs and self.step < total_steps and not stop.requested:
                batches = data.batches(self.train, self.aug, self.size, args.batch_size, train=True,
                                       seed=args.seed, epoch=self.epoch, start=self.batch,
                                       workers=args.workers, device=self.model.devices[0])
                tick = time.perf_counter()
                for x, labels in batches:
                    loaded = time.perf_counter()
                    loss, top1 = self.train_step(x, labels)
                    self.step, self.batch = self.step + 1, self.batch + 1
                    self.check_loss(loss)
                    now = time.perf_counter()
                    for key, value in (("images", len(labels)), ("time", now - tick),
                                       ("data", loaded - tick), ("loss", loss), ("top1", top1),
                                       ("steps", 1)):
                        window[key] += value
                    tick = now
                    if self.step % args.log_every == 0 or self.batch == steps_per_epoch:
                        rate = (now - started) / (self.step - steps_at_start)
                        self.log_progress(window, steps_per_epoch, (total_steps - self.step) * rate)
                        window = dict.fromkeys(window, 0)
                    if stop.requested or self.step >= total_steps:
                        break
                if self.batch == steps_per_epoch:
                    self.epoch, self.batch = self.epoch + 1, 0
                    if self.epoch % args.eval_every == 0 or self.epoch == args.epochs:
                        self.evaluate_and_save()
        path = self.save("last.npz")
        if stop.requested:
            log_line(f"interrupted at step {self.step}; saved {path}; continue with "
                     f"python -m alexnet.train --resume {self.dir}")
        else:
            best = f"best validation top-1 error {self.best:.2%}" if math.isfinite(self.best) \
                else "no evaluation yet"
            log_line(f"done: {self.step} steps in {format_time(time.perf_counter() - started)}; "
                     f"{best}; checkpoints in {self.dir}")
        return self

    def log_progress(self, window, steps_per_epoch, eta):
        n = window["steps"]
        fields = dict(kind="train", epoch=round(self.epoch + self.batch / steps_per_epoch, 4),
                      step=self.step, loss=window["loss"] / n, top1_error=window["top1"] / n,
                      lr=self.optimizer.lr, images_per_s=window["images"] / window["time"],
                      data_share=window["data"] / window["time"])
        self.record(**fields)
        log_line(f"epoch {self.epoch + 1}/{self.args.epochs}  step {self.batch}/{steps_per_epoch}  "
                 f"loss {fields['loss']:.4f}  top-1 err {fields['top1_error']:.1%}  "
                 f"{fields['images_per_s']:.0f} img/s  data {fields['data_share']:.0%}  "
                 f"lr {fields['lr']:g}  ETA {format_time(eta)}")

    def evaluate_and_save(self):
        tick = time.perf_counter()
        loss, top1, top5 = evaluate(self.model, self.val, self.aug, self.size, self.args.batch_size)
        self.record(kind="eval", epoch=self.epoch, step=self.step, loss=loss, top1_error=top1,
                    top5_error=top5, lr=self.optimizer.lr)
        improved = top1 < self.best
        self.best = min(self.best, top1)
        if self.schedule.step(top1):
            log_line(f"validation error stopped improving: learning rate now {self.optimizer.lr:g}")
        log_line(f"eval epoch {self.epoch}: val loss {loss:.4f}  top-1 error {top1:.2%}  top-5 "
                 f"error {top5:.2%}  ({len(self.val)} images, {time.perf_counter() - tick:.1f}s)"
                 f"{'  best so far' if improved else ''}")
        self.save("last.npz")
        if improved:
            self.save("best.npz")
        plots.plot_curves(self.records, os.path.join(self.dir, "curves.png"))
        plots.filter_grid(self.model.conv1a.weight.numpy(), self.model.conv1b.weight.numpy(),
                          os.path.join(self.dir, "conv1.png"))


def main(argv=None):
    args = parse_args(argv)
    try:
        Run(args).run()
    except (OSError, ValueError, FloatingPointError) as error:   # OSError: e.g. no write access
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:    # before training started, or a second Ctrl-C during it
        print("\ninterrupted: checkpoints already written stay, and a data cache being prepared "
              "keeps what it has decoded; the same command goes on from there", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
