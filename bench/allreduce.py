"""Time minigrad.distributed's gradient average for the paper network's 61M parameters.

    mpiexec -n 2 python bench/allreduce.py [--repeat 5] [--preset paper] [--devices cpu,cpu]

Every rank builds the network (float32, towers on --devices), fills every gradient with random
values seeded by its rank and times group.average_gradients(model.parameters()) (in host
memory one in-place Allreduce per parameter; on a GPU one bucket per device through NCCL); then
it checks the result against the mean of every rank's values, which it draws again. Rank 0
prints the median, the bytes reduced and the rate. On one machine MPI moves a host buffer
through shared memory, so this is the floor of what a step pays for data parallelism here;
between machines the network sets it.

On GPUs the buckets go through NCCL. A single GPU cannot hold two NCCL ranks, so one process
with its towers on a GPU (`python bench/allreduce.py --devices 0,0`) runs a group of one
through NCCL all the same: the smoke test of that road.
"""
import argparse
import statistics
import sys
import time

import numpy

from alexnet.model import AlexNet, parameter_count
from minigrad import backend, distributed


def gradients(params, rank):
    """The random gradients rank `rank` averages (float32 on each parameter's device)."""
    rng = numpy.random.default_rng(rank)
    return [backend.to_device(rng.standard_normal(p.shape).astype(numpy.float32), p.device)
            for p in params]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--preset", default="paper", choices=["paper", "small", "tiny"])
    parser.add_argument("--devices", default="cpu,cpu", help="towers a,b (default cpu,cpu)")
    parser.add_argument("--require-nccl", action="store_true", help="on GPUs: fail, rather "
                        "than average through host memory, when NCCL cannot be loaded")
    args = parser.parse_args()
    group = distributed.init()
    net = AlexNet(1000, devices=args.devices, preset=args.preset)
    alone_on_gpu = group.size == 1 and set(net.devices) != {"cpu"}
    if alone_on_gpu:                      # the NCCL road in a group of one (MPI singleton)
        group = distributed.Group(distributed._mpi().COMM_WORLD)
    if args.require_nccl and set(net.devices) != {"cpu"} and not distributed._nccl_loads():
        return "NCCL cannot be loaded (pip install nvidia-nccl-cu13), so the GPU road of " \
            "minigrad.distributed was not measured"
    params = net.parameters()
    times = []
    for _ in range(args.repeat + 1):
        for p, g in zip(params, gradients(params, group.rank)):
            p.grad = g
        group.barrier()
        start = time.perf_counter()
        group.average_gradients(params)
        for device in set(net.devices):
            backend.synchronize(device)
        times.append(time.perf_counter() - start)
    every = [gradients(params, rank) for rank in range(group.size)]
    for i, p in enumerate(params):
        expected = sum(backend.to_device(g[i], "cpu") for g in every) / group.size
        numpy.testing.assert_allclose(backend.to_device(p.grad, "cpu"), expected, rtol=1e-5,
                                      atol=1e-6, err_msg=f"parameter {i}")
    if group.size == 1 and not alone_on_gpu:
        print("one process: nothing to average (run under mpiexec -n 2 or more)")
    elif group.rank == 0:
        seconds = statistics.median(times[1:])
        size = parameter_count(net) * 4
        road = "NCCL" if group.nccl else "MPI through host memory" if group.nccl is False \
            else "MPI"
        print(f"{group.size} rank(s), {args.preset} preset, towers on {net.devices}, {road}: "
              f"{parameter_count(net):,} parameters, {size / 2**20:.0f} MiB of float32 "
              f"gradients: average_gradients {seconds * 1000:.1f} ms (median of {args.repeat}), "
              f"{size / seconds / 2**30:.2f} GiB/s; averages checked")


if __name__ == "__main__":
    sys.exit(main())
