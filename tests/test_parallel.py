"""Branches side by side (minigrad/parallel.py): they really run at once, and the results are
bit for bit those of running everything one after the other."""
import contextlib
import threading
import time

import numpy

import minigrad
from alexnet import AlexNet
from minigrad import functional as F
from minigrad import optim, parallel
from minigrad.tensor import Function


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


def test_gpu_work_is_not_sent_to_threads():
    assert parallel.concurrent_on(["cpu", 0]) == 1


class Meet(Function):
    """y = x; its backward waits until the backward of another Meet has begun."""
    meeting = None

    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        Meet.meeting.wait()
        return gy


def test_backward_runs_independent_branches_at_once():
    x = minigrad.Tensor(numpy.ones(3), requires_grad=True)
    Meet.meeting = threading.Barrier(2, timeout=10)
    previous = parallel.set_branches(2)
    try:
        (Meet.apply(x * 2.0) + Meet.apply(x * 3.0)).sum().backward()
    finally:
        parallel.set_branches(previous)
    numpy.testing.assert_array_equal(x.grad, [5.0, 5.0, 5.0])


class Jitter(Function):
    """y = x * factor, with a backward that takes a random time: branches finish in any order."""

    def forward(self, x, factor):
        self.factor = factor
        return x * factor

    def backward(self, gy):
        time.sleep(numpy.random.default_rng().random() * 0.01)
        return gy * self.factor


def test_gradients_meeting_at_one_tensor_are_summed_in_a_fixed_order():
    # Float addition is not associative: 1e8 + 1 - 1e8 is 0 in float32 in one order and 1 in
    # another. The sum must not depend on which branch finished first.
    factors = [1e8, 1.0, -1e8, 3.0, -1.0]
    results = set()
    previous = parallel.set_branches(2)
    for serial in (True, False, False, False, False, False):
        with parallel.one_at_a_time() if serial else contextlib.nullcontext():
            x = minigrad.Tensor(numpy.ones(4, numpy.float32), requires_grad=True)
            total = Jitter.apply(x, factor=factors[0])
            for f in factors[1:]:
                total = total + Jitter.apply(x, factor=f)
            total.sum().backward()
        results.add(x.grad.tobytes())
    parallel.set_branches(previous)
    assert len(results) == 1


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


def test_two_towers_side_by_side_train_bit_for_bit_like_one_after_the_other():
    one, two = train_steps(serial=True), train_steps(serial=False)
    assert list(one) == list(two)
    for name in one:
        assert numpy.array_equal(one[name], two[name]), name
