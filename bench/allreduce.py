"""Time minigrad.distributed's gradient average for the paper network's 61M parameters.

    mpiexec -n 2 python bench/allreduce.py [--repeat 5] [--preset paper]

Every rank builds the network (float32, on the CPU), fills every gradient with random values
and times group.average_gradients(model.parameters()) (pack into one buffer, one Allreduce,
unpack); rank 0 prints the median, the bytes reduced and the rate. On one machine MPI moves the
buffer through shared memory, so this is the floor of what a step pays for data parallelism
here; between machines the network sets it.
"""
import argparse
import statistics
import time

import numpy

from alexnet.model import AlexNet, parameter_count
from minigrad import distributed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--preset", default="paper", choices=["paper", "small"])
    args = parser.parse_args()
    group = distributed.init()
    net = AlexNet(1000, devices=("cpu", "cpu"), preset=args.preset)
    rng = numpy.random.default_rng(group.rank)
    params = net.parameters()
    times = []
    for _ in range(args.repeat + 1):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(numpy.float32)
        group.barrier()
        start = time.perf_counter()
        group.average_gradients(params)
        times.append(time.perf_counter() - start)
    if group.size == 1:
        print("one rank: nothing to average (run under mpiexec -n 2 or more)")
    elif group.rank == 0:
        seconds = statistics.median(times[1:])
        size = parameter_count(net) * 4
        print(f"{group.size} rank(s), {args.preset} preset: {parameter_count(net):,} parameters, "
              f"{size / 2**20:.0f} MiB of float32 gradients: average_gradients "
              f"{seconds * 1000:.0f} ms (median of {args.repeat}), "
              f"{size / seconds / 2**30:.2f} GiB/s")


if __name__ == "__main__":
    main()
