"""minigrad.distributed: K ranks at batch B/K train exactly like one process at batch B."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minigrad import distributed


def mpiexec():
    """mpiexec beside this Python (pip's mpich), else on the PATH; skip the test without it."""
    pytest.importorskip("mpi4py", reason="pip install -e '.[distributed]' for the MPI tests")
    beside = Path(sys.executable).with_name("mpiexec")
    if beside.exists():
        return str(beside)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if (Path(folder) / "mpiexec").exists():
            return str(Path(folder) / "mpiexec")
    pytest.skip("no mpiexec: pip install -e '.[distributed]' (mpi4py and mpich)")


def test_two_ranks_average_to_the_gradient_of_the_whole_batch():
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable,
                           str(Path(__file__).with_name("distributed_check.py"))],
                          capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "2 of 2 ranks ok", done.stdout


def test_a_plain_run_is_a_group_of_one_without_mpi(monkeypatch):
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "MPI_LOCALRANKID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)        # importing it would fail
    group = distributed.init()
    assert (group.rank, group.size) == (0, 1)
    group.average_gradients([])                              # does nothing
