"""Data parallelism over processes: every process (rank) holds a replica of the model, takes its
share of each batch, and averages the gradients with the others before every update.

    group = distributed.init()                 # under mpiexec: one rank of many; else alone
    group.broadcast(model.parameters())        # every replica starts from rank 0's weights
    share = slice(group.rank * B // group.size, (group.rank + 1) * B // group.size)
    loss = F.cross_entropy(model(x[share]), labels[share])   # this rank's B/K of the batch
    loss.backward()
    group.average_gradients(model.parameters())
    sgd.step()                                  # the same update on every rank

Why the average: the loss of a batch of B images is the mean of B per-image losses, so its
gradient is the mean of the gradients of K equal shares of B/K images (one per rank). Averaged
across ranks, every replica then takes exactly the step one process would take on the whole
batch, and the replicas stay identical.

MPI (mpi4py) starts the processes and carries what lives in host memory: Allreduce, the sum
over all ranks, in place. Gradients on a GPU are summed by NCCL (cupy.cuda.nccl) from GPU to GPU
without a copy to the host; NCCL's communicators are made once, from a unique id that rank 0
creates and MPI broadcasts. On a GPU the gradients of each device go in one flat buffer (a
"bucket"), so that there is one NCCL call per step and device: how ChainerMN and Horovod do it
(PyTorch's DDP uses several buckets, overlapped with the backward pass). In host memory each
gradient is summed where it lies, one call per parameter: packing AlexNet's 30 gradients into a
bucket copies 61M values (45 ms on 2 cores, page faults aside) to save 29 calls of microseconds
each; measured in training, the paper network's average took 10% of a step instead of 13%.
The average starts when the backward pass has ended: handing each gradient to a thread as soon
as it was final, to overlap the two, made steps 1-9% slower on a CPU, where the same cores do
both (bench/results/2026-11-29-data-parallel.md). A plain `python` run (not under mpiexec)
gets a group of one process whose calls do nothing, and needs no MPI installed.
"""
import os
import time
import zlib

import numpy

from minigrad import backend


class Alone:
    """A group of one process: rank 0 of 1. Its calls change nothing."""
    rank, size, local_rank, local_size = 0, 1, 0, 1

    def broadcast(self, params, root=0):
        pass

    def average_gradients(self, params):
        pass

    def allreduce_sum(self, value):
        return value

    def replicas_agree(self, params):
        return True

    def allgather(self, value):
        return [value]

    def barrier(self):
        pass

    def abort(self, code=1):
        pass


class Group(Alone):
    """The processes of an MPI communicator (default: all of them)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        # The processes of this machine: which GPU(s) a rank takes, how many cores it has.
        node = comm.Split_type(_mpi().COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        self.nccl = None        # whether GPU buckets go through NCCL: decided at the first
                                # average of GPU gradients (None until then)
        self._communicators = {}        # place of a bucket -> its NCCL communicator

    def broadcast(self, params, root=0):
        """Overwrite every parameter with rank `root`'s values."""
        for p in params:
            host = numpy.ascontiguousarray(backend.to_device(p.data, "cpu"))
            self.comm.Bcast(host, root=root)
            with backend.device_scope(p.device):           # copied on its GPU's own stream
                p.data[...] = backend.to_device(host, p.device)

    def average_gradients(self, params):
        """p.grad = the mean of p.grad over all ranks, for every parameter that has one: summed
        across ranks (MPI for host memory, NCCL on a GPU), then divided by the number of ranks.
        On a GPU the gradients of each device are packed into one buffer (a "bucket") for one
        NCCL call; in host memory each is summed where it lies, one MPI call per parameter."""
        buckets = {}                     # (device, dtype) -> parameters, in order of appearance
        for p in params:
            if p.grad is not None:
                buckets.setdefault((p.device, p.grad.dtype), []).append(p)
        for place, ((device, _), group) in enumerate(buckets.items()):
            if device == "cpu":
                for p in group:
                    p.grad = numpy.ascontiguousarray(p.grad)
                    self.comm.Allreduce(_mpi().IN_PLACE, p.grad, op=_mpi().SUM)
                    p.grad /= self.size
                continue
            with backend.device_scope(device):
                xp = backend.module_for(device)
                bucket = xp.concatenate([p.grad.ravel() for p in group])    # (total size,)
                self._allreduce_on_gpu(bucket, place, device)
                bucket /= self.size
                start = 0
                for p in group:
                    p.grad = bucket[start:start + p.grad.size].reshape(p.grad.shape)
                    start += p.grad.size

    def _allreduce_on_gpu(self, bucket, place, device):
        """Sum a CuPy array over all ranks in place: NCCL's all-reduce on the current stream,
        or through host memory and MPI where CuPy has no NCCL. `place`: which of this rank's
        buckets it is, the same on every rank (rank 1's towers may sit on GPUs 2 and 3 where
        rank 0's sit on 0 and 1), so that one communicator joins the same bucket of every rank."""
        if self.nccl is None:           # first call: every rank must take the same road
            self.nccl = bool(self.comm.allreduce(_nccl_loads(), op=_mpi().MIN))
            if not self.nccl and self.rank == 0:
                print("note: CuPy has no NCCL here (pip install nvidia-nccl-cu12 or -cu13); GPU "
                      "gradients are averaged through host memory", flush=True)
        if not self.nccl:
            host = backend.to_device(bucket, "cpu")
            self.comm.Allreduce(_mpi().IN_PLACE, host, op=_mpi().SUM)
            bucket[...] = backend.to_device(host, device)
            return
        from cupy.cuda import nccl
        if place not in self._communicators:
            uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
            self._communicators[place] = nccl.NcclCommunicator(self.size, uid, self.rank)
        dtype = {numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32,
                 numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64}[bucket.dtype]
        self._communicators[place].allReduce(bucket.data.ptr, bucket.data.ptr, bucket.size,
                                             dtype, nccl.NCCL_SUM,
                                             backend.cupy.cuda.get_current_stream().ptr)

    def replicas_agree(self, params):
        """Whether every rank holds the same parameters, bit for bit (a checksum of each rank's
        compared): what data parallelism promises, checked where it is cheap to."""
        checksum = 0
        for p in params:
            checksum = zlib.crc32(numpy.ascontiguousarray(backend.to_device(p.data, "cpu")),
                                  checksum)
        return len(set(self.allgather(checksum))) == 1

    def allreduce_sum(self, value):
        """The sum over all ranks of a number or a NumPy array (losses, counts, flags)."""
        return self.comm.allreduce(value, op=_mpi().SUM)

    def allgather(self, value):
        """[every rank's value], in rank order, on every rank (any picklable value)."""
        return self.comm.allgather(value)

    def barrier(self):
        """Wait until every rank is here. MPI's own Barrier keeps a core busy for as long as it
        waits (MPICH polls), minutes while rank 0 prepares a data cache with every core: this
        one asks every 10 ms and sleeps in between."""
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(0.01)

    def abort(self, code=1):
        """End every rank's process at once: what a rank does when it cannot go on, so that
        the others do not wait forever for it in their next collective call."""
        self.comm.Abort(code)


def _nccl_loads():
    """Whether CuPy's NCCL binding and library load in this process."""
    try:
        from cupy.cuda import nccl
        nccl.get_version()
        return True
    except Exception:           # ImportError, or the library missing at run time
        return False


def _mpi():
    from mpi4py import MPI
    return MPI


def launched_by_mpi():
    """Whether this process was started by mpiexec / mpirun (MPICH, Open MPI, Intel MPI)."""
    return any(name in os.environ for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK",
                                               "PMI_SIZE", "MPI_LOCALRANKID"))


def launched_as():
    """(rank, size) as mpiexec told them to this process in its environment, without MPI:
    (0, 1) where it did not say (MPICH and Open MPI do)."""
    def told(*names, default):
        return int(next((os.environ[name] for name in names if name in os.environ), default))
    return (told("PMI_RANK", "OMPI_COMM_WORLD_RANK", default=0),
            told("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", default=1))


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
