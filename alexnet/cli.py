"""What the commands share: the help of --checkpoint, argparse types that refuse a bad value in
one sentence naming it and the fix, a parser that prints that sentence without the usage block,
how a command ends (an error, Ctrl-C, a closed pipe), its progress line on stderr, the check
that its output folder can be written, and a count's noun in the number it takes."""
import argparse
import contextlib
import math
import os
import sys
import tempfile
import time

from minigrad import backend, distributed


CHECKPOINT_HELP = (  # what checkpoint.resolve(path, best=True) accepts
    "a .npz written by alexnet.train (best.npz, last.npz) or a run directory (its best.npz, or "
    "its last.npz where it has no best.npz yet)")


def counted(n, noun, plural=None):
    """'1 image', '0 images', '1,024 images': a count with its noun in the number it takes
    (plural: where adding an s is not it, 'classes', 'queries')."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def whole(lowest):
    """An argparse type: an integer >= lowest, refused in one sentence otherwise."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{value} is too small: use {lowest} or more")
        return value
    return parse


def real(lowest=0.0, inclusive=True, below=math.inf):
    """An argparse type: a finite number >= lowest (> lowest unless inclusive) and < below."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low_ok = value >= lowest if inclusive else value > lowest
        if not (math.isfinite(value) and low_ok and value < below):
            allowed = f"{'at least' if inclusive else 'above'} {lowest:g}" + \
                (f" and below {below:g}" if math.isfinite(below) else "")
            raise argparse.ArgumentTypeError(f"{text} is not allowed: use a finite number "
                                             f"{allowed}")
        return value
    return parse


def devices_list(text):
    """--devices: two devices "a,b", each "cpu" or a GPU id that this machine has. A GPU it
    lacks is refused with values this option takes ('cpu,cpu', or the ids there are), not with
    backend.parse_device's advice for one device ('cpu', which is not two). Returns them
    without spaces ("0, 1" is "0,1"), as the network and config.json take them."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(part == "cpu" or part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not two devices: write e.g. '0,1', '0,0' "
                                         "or 'cpu,cpu' (tower a, tower b)")
    count = backend.gpu_count()
    missing = [part for part in parts if part != "cpu" and int(part) >= count]
    if missing:
        ids = {0: "", 1: "'0,0' or "}.get(count, f"GPU ids 0 to {count - 1} (e.g. '0,1') or ")
        raise argparse.ArgumentTypeError(f"device '{missing[0]}' is not available: "
                                         f"{backend.gpus_found()}; use {ids}'cpu,cpu'")
    return ",".join(parts)


def existing_path(text):
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option ends in its one sentence, without the usage block. A command
    that runs in one process (all but train: under mpiexec every process would do the same work
    and write the same files) refuses to start under mpiexec before it reads its options, so
    that neither the refusal, nor --help, nor a bad option is said once per process: rank 0
    says why, the others end quietly."""

    def __init__(self, *args, one_process=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.one_process = one_process

    def parse_known_args(self, args=None, namespace=None):
        self.refuse_mpiexec()
        return super().parse_known_args(args, namespace)

    def parse_known_intermixed_args(self, args=None, namespace=None):
        self.refuse_mpiexec()       # newer Pythons' intermixed parsing skips parse_known_args
        return super().parse_known_intermixed_args(args, namespace)

    def refuse_mpiexec(self):
        rank, size = distributed.launched_as()
        if self.one_process and size > 1:
            self.exit(2, "error: this command runs in one process: start it without mpiexec "
                      "(only python -m alexnet.train works over several)\n" if rank == 0 else None)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def format_time(seconds):
    """12m05s, or 3h07m from an hour on (hours go past 24)."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


def run_command(work, interrupted):
    """The exit status of work(), a command's whole job, ended the project's way: a user's
    mistake (OSError, ValueError) in one line `error: ...`, status 1; Ctrl-C in one line
    `interrupted: <interrupted>`, status 130 (128 + SIGINT, what a shell reports); a reader that
    closed stdout early (`| head`) quietly, status 141 (128 + SIGPIPE), as the note on SIGPIPE
    in Python's signal module documentation does it. A command that ends in an error or Ctrl-C
    leaves no empty folder that it made (undo_made_folders)."""
    try:
        with undo_made_folders():
            status = work() or 0
        sys.stdout.flush()                    # a pipe closed early shows here at the latest
        return status
    except BrokenPipeError:
        # Python flushes stdout once more at exit and would report the same error there.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, ValueError) as error:    # a missing file, a class mismatch, a full disk
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        return 130


_made = []      # the folders make_folders created within undo_made_folders, deepest first


def make_folders(path, exist_ok=True):
    """os.makedirs(path, exist_ok), noting the folders it creates for undo_made_folders."""
    missing, above = [], os.path.abspath(path)
    while not os.path.exists(above) and above != os.path.dirname(above):
        missing.append(above)
        above = os.path.dirname(above)
    os.makedirs(path, exist_ok=exist_ok)
    _made[:0] = missing


def made_folders():
    """The folders make_folders has created so far within undo_made_folders."""
    return list(_made)


def adopt_made_folders(paths):
    """Folders another process made (rank 0, a run directory) that this process's
    undo_made_folders removes too, if still empty, when it fails first: the process that made
    them is then ended (MPI_Abort) before its own undo could run."""
    _made[:0] = paths


@contextlib.contextmanager
def undo_made_folders():
    """Within the block, the folders make_folders creates (an --out, a run directory and the
    folders above it) are removed again, if still empty, when the block ends in an exception:
    a command that failed before writing leaves nothing behind."""
    _made.clear()
    try:
        yield
    except BaseException:
        for path in _made:
            try:
                os.rmdir(path)
            except OSError:                   # something was written there: it stays
                break
        raise
    finally:
        _made.clear()


def writable_folder(path, what="", option="--out"):
    """`path`, created if missing, once a file could be created and removed there: a command
    checks its output folder before the work, not after it. The error names `what` the folder
    is ("the run directory ") and the `option` that chooses another. The folders it makes go
    again if the command fails before it writes there (undo_made_folders)."""
    try:
        make_folders(path)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = "a file of that name is there" if os.path.isfile(path) else error.strerror
        raise OSError(f"cannot write to {what}{path} ({reason or error}); pass {option} with a "
                      "writable folder") from None
    return path


class Progress:
    """progress(done): images done of `total`, images/s and the time left, on stderr (stdout
    holds the results). On a terminal one line is rewritten in place, at most 4 times a second;
    elsewhere (a log file) a new line comes every 10 seconds. The last count ends the line; a
    call after it says nothing, and so does every call when not `shown`. progress.say(line)
    prints a line of its own on stderr, never into the progress line."""

    def __init__(self, what, total, shown=True):
        self.what, self.total = what, total
        self.live = sys.stderr.isatty()
        self.every = 0.25 if self.live else 10
        self.started = self.last = time.perf_counter()
        self.ended = not shown
        self.open = False                          # a live line drawn and not ended

    def __call__(self, done):
        now = time.perf_counter()
        if self.ended or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        line = (f"  {self.what}: {done:,}/{self.total:,} images, {rate:.0f} img/s, "
                f"ETA {format_time((self.total - done) / max(rate, 1e-9))}")
        if self.live:                              # back to the line's start, erase its rest
            line = f"\r{line}\033[K"
        print(line, end="\n" if done == self.total or not self.live else "", file=sys.stderr,
              flush=True)
        self.ended = done == self.total
        self.open = self.live and not self.ended

    def say(self, line):
        if self.open:                              # erase the progress; its next count redraws it
            line = f"\r\033[K{line}"
            self.last, self.open = 0, False
        print(line, file=sys.stderr, flush=True)
