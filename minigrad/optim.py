"""Stochastic gradient descent with the paper's exact update, and its learning-rate schedule."""
from minigrad import backend


class SGD:
    """Minibatch SGD with momentum and weight decay, exactly as in section 5 of the paper:

        v <- momentum * v - weight_decay * lr * w - lr * dL/dw
        w <- w + v

    Weight decay applies to every parameter given, biases included, as the paper's formula
    does; to exempt some, give them to a second SGD with weight_decay=0.
    """

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=5e-4):
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
                v = self.velocity[i]
                # In place, term by term, in the formula's order (no temporaries of size w).
                v *= self.momentum
                v -= (self.weight_decay * self.lr) * p.data
                v -= self.lr * p.grad
                p.data += v

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
                backend.to_device(v.astype(p.dtype, copy=True), p.device)


class ReduceLROnPlateau:
    """Divide the learning rate by 10 when a watched validation metric stops improving
    (the paper: "divide the learning rate by 10 when the validation error rate stopped
    improving"; three times over its 90 epochs).

    step(metric) is called after each evaluation. The metric (lower is better, e.g. top-1 error)
    improves when it falls below best * (1 - threshold); after `patience` evaluations in a row
    without improvement, lr is multiplied by `factor`, never below min_lr.
    """

    def __init__(self, optimizer, factor=0.1, patience=3, threshold=1e-3, min_lr=0.0):
        self.optimizer = optimizer
        self.factor, self.patience, self.threshold, self.min_lr = factor, patience, threshold, min_lr
        self.best = float("inf")
        self.bad_evals = 0

    def step(self, metric):
        """Record one evaluation; returns True when the learning rate was reduced."""
        if metric < self.best * (1 - self.threshold):
            self.best, self.bad_evals = metric, 0
            return False
        self.bad_evals += 1
        if self.bad_evals < self.patience or self.optimizer.lr <= self.min_lr:
            return False
        self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
        self.bad_evals = 0
        return True

    def state_dict(self):
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.bad_evals = int(state["bad_evals"])
