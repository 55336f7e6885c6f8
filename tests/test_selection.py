"""`pytest --gpu-only` (tests/conftest.py) runs just the tests that use a GPU whatever the machine,
the ones a CPU-only CI skips; `--gpu-first` runs them before the rest: on a lent GPU machine the
time goes first to what only it can check."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE_GPUS
from minigrad import backend


def test_gpu_only_selects_tests_that_all_skip_without_a_gpu_and_gpu_first_runs_them_first():
    if backend.gpu_count() and not FAKE_GPUS:
        pytest.skip("on a GPU machine the selected tests run")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(        # without the fake GPUs: none at all
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if "fakecupy" not in p))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--gpu-only", "tests"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    summary = done.stdout.strip().splitlines()[-1]
    counts = dict((word, int(n)) for n, word in re.findall(r"(\d+) (\w+)", summary))
    assert not set(counts) & {"passed", "failed", "error", "errors"}, summary  # all need a GPU
    assert counts["skipped"] > 250, summary                     # ops, kernels, towers, loader
    first, only = (collected(root, env, option) for option in ("--gpu-first", "--gpu-only"))
    assert first[:len(only)] == only and len(first) > len(only)    # the same tests, then the rest


def collected(root, env, option):
    """The test ids that `pytest --collect-only <option>` lists, in order."""
    listed = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p",
                             "no:cacheprovider", option, "tests"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300).stdout.splitlines()
    return [line for line in listed if "::" in line]
