"""Layers: modules that own their parameters and call minigrad.functional.

A Module finds its parameters and sub-modules among its attributes, in the order they were set,
so `named_parameters()` gives dotted names such as "features.0.weight" without any registration.
"""
import numpy

from minigrad import backend
from minigrad import functional as F
from minigrad import random as mg_random
from minigrad.tensor import DEFAULT_DTYPE, Tensor


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad is always on."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)


class Module:
    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def children(self):
        return [(name, m) for name, m in vars(self).items() if isinstance(m, Module)]

    def named_parameters(self, prefix=""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(prefix + name + ".")

    def parameters(self):
        """Each parameter once, in order, though a layer kept under two names reaches it twice
        in named_parameters(): an optimizer given it twice would step it twice."""
        return list({id(p): p for _, p in self.named_parameters()}.values())

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        """Training mode (dropout on) or, with mode=False, evaluation mode; returns self."""
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move every parameter (and its gradient) to `device`; returns self."""
        device = backend.parse_device(device)
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad = backend.to_device(p.grad, device)
        return self

    def state_dict(self):
        """name -> NumPy array (a copy, wherever the parameter lives)."""
        return {name: numpy.array(p.numpy()) for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy arrays (or Tensors) into the parameters of the same names, keeping each
        parameter's device and dtype. Missing, unexpected and mis-shaped keys are all named in
        one error."""
        state = {name: v.data if isinstance(v, Tensor) else v for name, v in state.items()}
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        misshaped = [f"{name} {tuple(numpy.shape(state[name]))} (expected {p.shape})"
                     for name, p in params.items()
                     if name in state and tuple(numpy.shape(state[name])) != p.shape]
        if missing or unexpected or misshaped:
            problems = [f"{label}: {', '.join(names)}" for label, names in
                        (("missing keys", missing), ("unexpected keys", unexpected),
                         ("wrong shapes", misshaped)) if names]
            raise ValueError(f"{type(self).__name__}.load_state_dict: {'; '.join(problems)}; "
                             "was the checkpoint saved from the same model and settings?")
        for name, p in params.items():          # a C-contiguous copy: training never writes
            value = numpy.array(backend.to_device(state[name], "cpu"), p.dtype, order="C")
            p.data = backend.to_device(value, p.device)                  # into the caller's


def _he_normal(shape, fan_in, dtype):
    """N(0, 2 / fan_in): He et al. 2015, keeps the variance of ReLU activations constant."""
    std = numpy.sqrt(2.0 / fan_in)
    return (mg_random.generator().standard_normal(shape) * std).astype(dtype)


class Conv2d(Module):
    """weight (out, in, kh, kw) He-normal, bias (out,) zero."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=DEFAULT_DTYPE):
        kh, kw = F._pair(kernel_size)
        self.stride, self.padding = stride, padding
        self.weight = Parameter(_he_normal((out_channels, in_channels, kh, kw),
                                           in_channels * kh * kw, dtype))
        self.bias = Parameter(numpy.zeros(out_channels, dtype)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class Linear(Module):
    """weight (out, in) He-normal, bias (out,) zero."""

    def __init__(self, in_features, out_features, bias=True, dtype=DEFAULT_DTYPE):
        self.weight = Parameter(_he_normal((out_features, in_features), in_features, dtype))
        self.bias = Parameter(numpy.zeros(out_features, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None):
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride)


class LRN(Module):
    """The paper's local response normalization (section 3.3); see functional.lrn."""

    def __init__(self, n=5, k=2.0, alpha=1e-4, beta=0.75):
        self.n, self.k, self.alpha, self.beta = n, k, alpha, beta

    def forward(self, x):
        return F.lrn(x, self.n, self.k, self.alpha, self.beta)


class Dropout(Module):
    """Inverted dropout with probability p in training mode, identity in eval mode."""

    def __init__(self, p=0.5):
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class Flatten(Module):
    def forward(self, x):
        return F.flatten(x, 1)


class Sequential(Module):
    """Modules applied in order; their parameters are named "0.weight", "1.bias", ..."""

    def __init__(self, *modules):
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __iter__(self):
        return iter(m for _, m in self.children())

    def __getitem__(self, i):
        """The i-th module; a slice gives a Sequential of those modules."""
        modules = [m for _, m in self.children()]
        return Sequential(*modules[i]) if isinstance(i, slice) else modules[i]

    def __len__(self):
        return len(self.children())

    def forward(self, x):
        for m in self:
            x = m(x)
        return x
