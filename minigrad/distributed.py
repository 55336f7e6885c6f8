"""Data parallelism over processes: every process (rank) holds a replica of the model, takes its
share of each batch, and averages the gradients with the others before every update.

    group = distributed.init()                 # under mpiexec: one rank of many; else alone
    group.broadcast(model.parameters())        # every replica starts from rank 0's weights
    loss = F.cross_entropy(model(x[group.rank::group.size]), ...)   # this rank's share
    loss.backward()
    group.average_gradients(model.parameters())
    sgd.step()                                  # the same update on every rank

Why the average: the loss of a batch of B images is the mean of B per-image losses, so its
gradient is the mean of the gradients of K equal shares of B/K images (one per rank). Averaged
across ranks, every replica then takes exactly the step one process would take on the whole
batch, and the replicas stay identical.

MPI (mpi4py) starts the processes and carries the arrays (Allreduce, the sum over all ranks in
place); the gradients go in one flat buffer per dtype (a "bucket"), so there is one collective
call per step, not one per parameter. This is how ChainerMN and Horovod do it; PyTorch's DDP
does the same in several buckets overlapped with the backward pass. Without MPI installed,
init() gives a group of one process whose calls do nothing. GPU arrays travel through host
memory here; NCCL's all-reduce between GPUs (cupy.cuda.nccl) is yet to come.
"""
import os

import numpy

from minigrad import backend


class Alone:
    """A group of one process: rank 0 of 1. Its calls change nothing."""
    rank, size, local_rank = 0, 1, 0

    def broadcast(self, params, root=0):
        pass

    def average_gradients(self, params):
        pass

    def allreduce_sum(self, value):
        return value

    def barrier(self):
        pass


class Group(Alone):
    """The processes of an MPI communicator (default: all of them)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        # The rank among the processes of this machine: which GPU(s) to use.
        self.local_rank = comm.Split_type(_mpi().COMM_TYPE_SHARED).Get_rank()

    def broadcast(self, params, root=0):
        """Overwrite every parameter with rank `root`'s values."""
        for p in params:
            host = numpy.ascontiguousarray(backend.to_device(p.data, "cpu"))
            self.comm.Bcast(host, root=root)
            p.data[...] = backend.to_device(host, p.device)

    def average_gradients(self, params):
        """p.grad = the mean of p.grad over all ranks, for every parameter that has one. The
        gradients are packed into one buffer per dtype, summed across ranks by one Allreduce
        and divided by the number of ranks."""
        with_grad = [p for p in params if p.grad is not None]
        for dtype in sorted({p.grad.dtype for p in with_grad}, key=str):
            group = [p for p in with_grad if p.grad.dtype == dtype]
            bucket = numpy.concatenate([backend.to_device(p.grad, "cpu").ravel()
                                        for p in group])                # (total size,)
            self.comm.Allreduce(_mpi().IN_PLACE, bucket, op=_mpi().SUM)
            bucket /= self.size
            start = 0
            for p in group:
                part = bucket[start:start + p.grad.size].reshape(p.grad.shape)
                p.grad = backend.to_device(part, p.device)
                start += p.grad.size

    def allreduce_sum(self, value):
        """The sum of a number over all ranks (losses, counts of correct predictions)."""
        return self.comm.allreduce(value, op=_mpi().SUM)

    def barrier(self):
        self.comm.Barrier()


def _mpi():
    from mpi4py import MPI
    return MPI


def launched_by_mpi():
    """Whether this process was started by mpiexec / mpirun (MPICH, Open MPI, Intel MPI)."""
    return any(name in os.environ for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK",
                                               "PMI_SIZE", "MPI_LOCALRANKID"))


def init():
    """The group of processes started together: a Group under mpiexec, else Alone. A plain
    `python` run never imports mpi4py, so it needs no MPI installed."""
    if not launched_by_mpi():
        return Alone()
    try:
        _mpi()
    except ImportError:
        raise RuntimeError("this process was started by mpiexec, but mpi4py is not installed: "
                           "pip install -e \".[distributed]\" (mpi4py and mpich)") from None
    group = Group(_mpi().COMM_WORLD)
    return group if group.size > 1 else Alone()
