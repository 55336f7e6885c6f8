"""Stochastic gradient descent with the paper's exact update, its learning-rate schedule, and
gradient norm clipping (not the paper's: a guard a run may opt into)."""
import numpy

from minigrad import backend, cuda
from minigrad.tensor import Tensor

SLICE = 1 << 16          # values updated at a time on the CPU: 256 KB of float32, in cache


class SGD:
    """Minibatch SGD with momentum and weight decay, exactly as in section 5 of the paper:

        v <- momentum * v - weight_decay * lr * w - lr * dL/dw
        w <- w + v

    Weight decay applies to every parameter given, biases included, as the paper's formula
    does; to exempt some, give them to a second SGD with weight_decay=0 (and divide its lr
    with the first's: ReduceLROnPlateau drives one optimizer).
    """

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=5e-4):
        if isinstance(params, Tensor):          # list() would give its rows, with no gradient
            raise TypeError("SGD takes an iterable of parameters such as model.parameters(), "
                            "not one Tensor; pass [tensor]")
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD got an empty parameter list; pass model.parameters()")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [None] * len(self.params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            with backend.device_scope(p.device):
                if self.velocity[i] is None:
                    self.velocity[i] = p.xp.zeros_like(p.data)
                if p.xp is numpy:
                    self._update_in_slices(p.data, p.grad, self.velocity[i])
                else:           # _update as one kernel: 5 passes over memory instead of 15
                    cuda.sgd_update(p.data, p.grad, self.velocity[i], self.momentum,
                                    self.weight_decay * self.lr, self.lr)

    def _update(self, w, g, v, scratch=None):
        """The update of w, g, v (arrays of one shape), in place, term by term in the formula's
        order; `scratch`, an array of their size, holds the products (a temporary if None).
        The specification of minigrad/kernels/sgd.cu, which gives the same bits on a GPU
        (float32 values below 2^-126 aside: CuPy's kernels flush them to 0)."""
        xp = backend.get_array_module(w)
        v *= self.momentum
        v -= xp.multiply(w, self.weight_decay * self.lr, out=scratch)
        v -= xp.multiply(g, self.lr, out=scratch)
        w += v

    def _update_in_slices(self, w, g, v):
        """_update on NumPy arrays, SLICE values at a time: its six operations over each slice
        then run in the CPU's cache, and main memory sees each of w, g, v once (measured on 2
        cores: 156 ms for the whole arrays, 71 ms in slices, for the paper network's 61M
        parameters). The same operations on every value, so the same bits."""
        if not (w.flags.c_contiguous and v.flags.c_contiguous):   # reshape(-1) would copy them
            return self._update(w, g, v)
        w, g, v = w.reshape(-1), g.reshape(-1), v.reshape(-1)
        scratch = numpy.empty(min(SLICE, w.size), w.dtype)
        for start in range(0, w.size, SLICE):
            part = slice(start, start + SLICE)
            self._update(w[part], g[part], v[part], scratch[:len(w[part])])

    def state_dict(self):
        """Hyper-parameters and the momentum buffers ("velocity.<i>" -> NumPy array)."""
        state = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}
        for i, v in enumerate(self.velocity):
            if v is not None:
                state[f"velocity.{i}"] = backend.to_device(v, "cpu")
        return state

    def load_state_dict(self, state):
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        for i, p in enumerate(self.params):
            v = state.get(f"velocity.{i}")
            if v is not None and tuple(v.shape) != p.shape:
                raise ValueError(f"SGD.load_state_dict: momentum buffer {i} has shape "
                                 f"{tuple(v.shape)} but parameter {i} has shape {p.shape}; "
                                 "the checkpoint belongs to another model")
            self.velocity[i] = None if v is None else \
                backend.to_device(numpy.array(v, p.dtype, order="C"), p.device)


def clip_grad_norm(params, max_norm):
    """Scale the gradients of `params` (tensors, or one tensor) by one factor, so that their norm
    (the L2 norm of all of them as one vector) is at most `max_norm`; a step whose gradients are
    within it is left as it is, to the last bit. Returns the norm before scaling, in float64 on
    the first gradient's device (a 0-d array on a GPU, not read back: that would wait for every
    kernel queued).

    Not in the AlexNet paper. A guard against the runaway of one step (Pascanu, Mikolov and
    Bengio 2013): a gradient a hundred times the usual, scaled down, cannot throw the weights
    far enough that the next gradient is larger still. The squares are summed in the gradients'
    dtype: a norm past float32's range is inf, which scales the gradients to 0 (momentum and
    weight decay still move the weights), and an inf gradient value to NaN; a NaN norm gives NaN
    gradients. A run's loss check stops it after those."""
    if isinstance(params, Tensor):       # one tensor, not its rows (which have no gradient)
        params = [params]
    on = {}                          # device -> its gradients (the two towers': two devices)
    for p in params:
        if p.grad is not None:
            on.setdefault(backend.device_of(p.grad), []).append(p.grad)
    if not on:
        return numpy.float64(0.0)
    first = next(iter(on))
    sums = []
    for device, grads in on.items():     # each device sums its own: one number goes across
        with backend.device_scope(device):
            xp = backend.get_array_module(grads[0])
            squares = xp.stack([g.reshape(-1).dot(g.reshape(-1)) for g in grads])
            sums.append(backend.to_device(squares.astype(numpy.float64).sum(), first))
    with backend.device_scope(first):
        xp = backend.get_array_module(sums[0])
        norm = xp.sqrt(xp.stack(sums).sum())
        if xp is numpy and norm <= max_norm:     # on a GPU, deciding would wait: scale by 1
            return norm
        scale = xp.minimum(1.0, max_norm / norm)
    for device, grads in on.items():     # and one number comes back
        with backend.device_scope(device):
            here = backend.to_device(scale, device)
            for g in grads:
                g *= here.astype(g.dtype)
    return norm


class ReduceLROnPlateau:
    """Divide the learning rate by 10 when a watched validation metric stops improving (the
    paper: "divide the learning rate by 10 when the validation error rate stopped improving
    with the current learning rate", "reduced three times prior to termination").

    step(metric, progress) is called after each evaluation, with `progress` the training done so
    far in any unit that grows (images, steps, epochs); `patience` is in the same unit, so a
    plateau is judged over an amount of training, not over a number of evaluations. The metric
    (lower is better, e.g. top-1 error) improves when it falls below best * (1 - threshold).
    When `patience` has passed since the last improvement (or the last reduction, whichever is
    later), lr is multiplied by `factor`; after `max_reductions` reductions the next such
    plateau finishes the schedule instead: training should stop.
    """

    def __init__(self, optimizer, factor=0.1, patience=3, threshold=1e-3, max_reductions=3):
        self.optimizer = optimizer
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.max_reductions = max_reductions
        self.best = float("inf")
        self.since = 0          # progress at the last improvement or reduction
        self.reductions = 0
        self.finished = False

    def step(self, metric, progress):
        """Record one evaluation; returns "improved", "reduced", "finished" or None."""
        if self.finished:
            return "finished"
        if metric < self.best * (1 - self.threshold):
            self.best, self.since = metric, progress
            return "improved"
        if progress - self.since < self.patience:
            return None
        self.since = progress
        if self.reductions == self.max_reductions:
            self.finished = True
            return "finished"
        self.optimizer.lr *= self.factor
        self.reductions += 1
        return "reduced"

    def state_dict(self):
        return {"best": self.best, "since": self.since, "reductions": self.reductions,
                "finished": self.finished}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.since = state["since"]
        self.reductions = int(state["reductions"])
        self.finished = bool(state["finished"])
