"""Run by tests/test_distributed.py under `mpiexec -n 2`: alexnet.train with a fault on rank 1
alone at step FAIL_AT (after the evaluation at step 16): `raise` (an exception), `drift` (its
weights moved a little, so that the replicas differ) or `interrupt` (an exception, and a Ctrl-C
of its own a second later, within the pause before it ends every rank), to show that every rank
stops with one message and the last checkpoint stays whole. `slow-prepare`: rank 0 says
"decoding" and waits a minute before it decodes a folder's images, while rank 1 waits for its
cache (a signal sent then finds the ranks in those two places).

    mpiexec -n 2 python tests/distributed_fault.py raise|drift|interrupt|slow-prepare OPTIONS...
"""
import os
import signal
import sys
import threading
import time

from alexnet import prepare, train

FAIL_AT = 20
FAULT = sys.argv.pop(1)
step = train.Run.train_step


def failing_step(self, x, labels):
    if self.group.rank == 1 and self.step == FAIL_AT:
        if FAULT == "interrupt":
            threading.Timer(1, os.kill, (os.getpid(), signal.SIGINT)).start()
        if FAULT in ("raise", "interrupt"):
            raise RuntimeError("injected failure")
        self.model.fc8.bias.data += 1e-3
    return step(self, x, labels)


def slow_decoding(*args):
    print("decoding", flush=True)
    time.sleep(60)
    return decode(*args)


train.Run.train_step = failing_step
decode, prepare.decode_rows = prepare.decode_rows, slow_decoding
sys.exit(train.main())
