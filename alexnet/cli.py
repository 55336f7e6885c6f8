"""What the commands' option parsing shares: argparse types that refuse a bad value in one
sentence naming it and the fix, a parser that prints that sentence without the usage block, and
the time format of progress lines."""
import argparse
import math
import os

from minigrad import backend


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
            raise argparse.ArgumentTypeError(f"{text} is not allowed: use a number {allowed}")
        return value
    return parse


def devices_list(text):
    """--devices: two devices "a,b", each "cpu" or a GPU id that this machine has."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip() == "cpu" or p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not two devices: write e.g. '0,1', '0,0' "
                                         "or 'cpu,cpu' (tower a, tower b)")
    for part in parts:
        try:
            backend.parse_device(part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return text


def existing_path(text):
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option ends in its one sentence, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def format_time(seconds):
    """12m05s, or 3h07m from an hour on (hours go past 24)."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"
