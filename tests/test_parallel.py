"""Branches side by side (minigrad/parallel.py): they really run at once, and training gives
bit for bit the results of running them one after the other."""
import contextlib
import threading

import numpy
import pytest

import minigrad
from alexnet import AlexNet
from minigrad import functional as F
from minigrad import optim, parallel


def test_side_by_side_runs_the_calls_at_once():
    meeting = threading.Barrier(2, timeout=10)     # each call waits for the other to arrive
    previous = parallel.set_branches(2)
    try:
        assert parallel.side_by_side(lambda: meeting.wait() * 0 + 1,
                                     lambda: meeting.wait() * 0 + 2) == [1, 2]
    finally:
        parallel.set_branches(previous)


def test_one_branch_runs_the_calls_in_order_in_this_thread():
    seen = []
    with parallel.one_at_a_time():
        parallel.side_by_side(lambda: seen.append(threading.current_thread()),
                              lambda: seen.append(threading.current_thread()))
    assert seen == [threading.main_thread()] * 2


def test_branches_share_the_blas_threads_out_and_give_them_back():
    threadpoolctl = pytest.importorskip("threadpoolctl")    # optional for minigrad itself

    def blas_threads():
        controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
        return [library["num_threads"] for library in controller.info()]

    before = blas_threads()
    previous = parallel.set_branches(2)
    try:
        inside = parallel.side_by_side(blas_threads, blas_threads)
    finally:
        parallel.set_branches(previous)
    share = max(1, parallel.CORES // 2)
    assert inside == [[share] * len(before)] * 2 and blas_threads() == before


def test_gpu_work_is_not_sent_to_threads():
    assert parallel.concurrent_on(["cpu", 0]) == 1


def train_steps(serial, steps=2):
    """Parameters after `steps` SGD steps of the small preset, dropout on, with two branches
    side by side, or taking turns (serial)."""
    previous = parallel.set_branches(2)
    try:
        with parallel.one_at_a_time() if serial else contextlib.nullcontext():
            minigrad.manual_seed(3)
            net = AlexNet(10, devices=("cpu", "cpu"), preset="small", init="kaiming")
            sgd = optim.SGD(net.parameters(), lr=0.01)
            rng = numpy.random.default_rng(0)
            for _ in range(steps):
                x = (rng.standard_normal((24, 3, 99, 99)) * 60).astype(numpy.float32)
                loss = F.cross_entropy(net(x), rng.integers(0, 10, 24))
                sgd.zero_grad()
                loss.backward()
                sgd.step()
        return {name: value.copy() for name, value in net.state_dict().items()}
    finally:
        parallel.set_branches(previous)


def test_two_towers_side_by_side_train_bit_for_bit_like_one_after_the_other(monkeypatch):
    """Bit for bit needs every random draw (dropout) in the calling thread, in a fixed order:
    a draw from a branch thread would race for the one generator and only sometimes differ."""
    uniform = minigrad.random.uniform

    def in_main_thread(*args):
        assert threading.current_thread() is threading.main_thread(), \
            "a random draw was made in a branch thread"
        return uniform(*args)

    monkeypatch.setattr(minigrad.random, "uniform", in_main_thread)
    one, two = train_steps(serial=True), train_steps(serial=False)
    assert list(one) == list(two)
    for name in one:
        assert numpy.array_equal(one[name], two[name]), name
