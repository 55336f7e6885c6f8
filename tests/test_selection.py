"""`pytest --gpu-only` (tests/conftest.py) runs just the tests that use a GPU, the ones a CPU-only
CI skips: on a lent GPU machine the time goes to what only it can check."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE_GPUS
from minigrad import backend


def test_gpu_only_selects_tests_that_all_skip_without_a_gpu():
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
    assert set(counts) == {"skipped", "deselected"}, summary    # not one ran: all need a GPU
    assert counts["skipped"] > 250, summary                     # ops, kernels, towers, loader
