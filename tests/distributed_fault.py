"""Run by tests/test_distributed.py under `mpiexec -n 2`: alexnet.train whose rank 1 (alone)
raises at step FAIL_AT, to show that every rank stops and the last checkpoint stays whole."""
import sys

from alexnet import train

FAIL_AT = 20
step = train.Run.train_step


def failing_step(self, x, labels):
    if self.group.rank == 1 and self.step == FAIL_AT:
        raise RuntimeError("injected failure")
    return step(self, x, labels)


train.Run.train_step = failing_step
sys.exit(train.main())
