"""Run by tests/test_distributed.py under `mpiexec -n K`: K ranks at batch B/K each against one
process at batch B, on every rank. Rank 0 prints "K of K ranks ok" when every rank passed every
check."""
import sys
import time

import numpy

import minigrad
from alexnet import AlexNet
from minigrad import distributed, optim
from minigrad import functional as F

group = distributed.init()
assert group.size > 1, "run this under mpiexec -n 2 (or more)"
B = 4 * group.size
rng = numpy.random.default_rng(0)                      # the same batches on every rank
batches = [(rng.standard_normal((B, 3, 35, 35)) * 60, rng.integers(0, 10, B)) for _ in range(3)]


def replica(dtype, seed):
    """The tiny network, dropout off (eval mode) so that both runs see the same function."""
    minigrad.manual_seed(seed)
    return AlexNet(10, devices=("cpu", "cpu"), preset="tiny", dtype=dtype).eval()


# Gradients in float64: the mean of the ranks' shares equals the whole batch's to 1e-12.
whole, shared = replica(numpy.float64, 0), replica(numpy.float64, group.rank)
group.broadcast(shared.parameters())                   # seed 0, rank 0's, everywhere
x, labels = batches[0]
F.cross_entropy(whole(x), labels).backward()
F.cross_entropy(shared(x[group.rank::group.size]), labels[group.rank::group.size]).backward()
group.average_gradients(shared.parameters())
for (name, p), q in zip(whole.named_parameters(), shared.parameters()):
    assert numpy.array_equal(p.data, q.data), f"{name}: broadcast left different weights"
    error = numpy.abs(p.grad - q.grad).max() / numpy.abs(p.grad).max()
    assert error < 1e-12, f"{name}: averaged gradient off by {error:.1e} (relative)"

# Three SGD steps in float32: the same parameters to float32 rounding, and bit for bit the
# same parameters on every rank.
whole, shared = replica(numpy.float32, 0), replica(numpy.float32, 0)
sgd_whole, sgd_shared = optim.SGD(whole.parameters(), 0.01), optim.SGD(shared.parameters(), 0.01)
for x, labels in batches:
    x = x.astype(numpy.float32)
    for net, sgd, share in ((whole, sgd_whole, slice(None)),
                            (shared, sgd_shared, slice(group.rank, None, group.size))):
        sgd.zero_grad()
        F.cross_entropy(net(x[share]), labels[share]).backward()
        if net is shared:
            group.average_gradients(net.parameters())
        sgd.step()
for (name, p), q in zip(whole.named_parameters(), shared.parameters()):
    numpy.testing.assert_allclose(q.data, p.data, rtol=1e-4, atol=1e-6, err_msg=name)
    mine = q.data.copy()
    group.broadcast([minigrad.Tensor(q.data)])           # rank 0's copy into q.data's buffer
    assert numpy.array_equal(mine, q.data), f"{name}: the replicas differ"
# A rank that waits at the barrier while rank 0 works (prepares a data cache, say) sleeps: it
# leaves the cores to rank 0 (MPI's own Barrier keeps one busy for as long as it waits).
if group.rank == 0:
    time.sleep(1.0)
used, waited = time.process_time(), time.perf_counter()
group.barrier()
used, waited = time.process_time() - used, time.perf_counter() - waited
assert group.rank == 0 or waited > 0.5, f"rank {group.rank} passed the barrier in {waited:.2f} s"
assert used < 0.25, f"rank {group.rank} used {used:.2f} s of CPU waiting 1 s at the barrier"

passed = group.allreduce_sum(1)                        # every rank got here
if group.rank == 0:
    print(f"{passed} of {group.size} ranks ok", flush=True)
sys.exit(0)
