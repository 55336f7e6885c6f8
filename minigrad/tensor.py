"""The autograd engine: a Tensor, the Function it was made by, and backward().

A Tensor wraps one NumPy or CuPy array. Every op is a `Function` subclass with `forward` and
`backward` side by side (minigrad/functional.py); `Function.apply` runs forward on the raw arrays
and, when a gradient will be needed, links the output Tensor to the Function, which keeps its
inputs and whatever it saved for backward. `Tensor.backward()` walks that graph once in reverse
topological order, calling each Function's backward and adding the gradients of its inputs.
"""
import contextlib

import numpy

from minigrad import backend

DEFAULT_DTYPE = numpy.float32
_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Within this block ops record no graph (evaluation, parameter updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


class Tensor:
    """An n-dimensional array with an optional gradient.

    data:  the numpy.ndarray or cupy.ndarray
    grad:  an array of the same shape, device and dtype, filled in by backward() (None before)
    requires_grad: whether backward() should compute `grad` for this tensor
    """

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if backend.get_array_module(data) is numpy and not isinstance(data, numpy.ndarray):
            from_python = not isinstance(data, numpy.generic)
            data = numpy.asarray(data)
            if from_python and dtype is None and data.dtype == numpy.float64:
                dtype = DEFAULT_DTYPE           # Python floats and lists become float32
        if dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        if requires_grad and data.dtype.kind != "f":         # its gradient would be rounded
            raise ValueError(f"requires_grad needs a floating-point tensor, not {data.dtype}; "
                             "pass dtype=numpy.float32 (or float64)")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._ctx = None                     # the Function that produced this tensor, if any

    # ---- array facts -----------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def device(self):
        """"cpu" or the integer id of the GPU holding the data."""
        return backend.device_of(self.data)

    @property
    def xp(self):
        return backend.get_array_module(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device!r}{grad})"

    def numpy(self):
        """The data as a NumPy array (copied from the GPU when needed)."""
        return backend.to_device(self.data, "cpu")

    def item(self):
        return self.numpy().item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    # ---- autograd --------------------------------------------------------------------------
    def backward(self, gy=None):
        """Add d(self)/d(t) * gy into t.grad for every tensor t with requires_grad in the graph.

        gy defaults to 1 for a scalar. Gradients accumulate across calls (the optimizer's or
        module's zero_grad() clears them).
        The graph is freed as it is walked, so backward() runs once per forward pass: a second
        one through any part of it raises (add the losses and call backward() once instead).
        """
        if self._ctx is None and not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no parameter "
                               "or input with requires_grad=True took part in computing it")
        if isinstance(gy, Tensor):
            gy = gy.data
        if gy is not None and tuple(gy.shape) != self.shape:
            raise ValueError(f"backward(gy): gy has shape {tuple(gy.shape)} but the tensor has "
                             f"shape {self.shape}; they must be equal")
        if gy is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar, not shape "
                                   f"{self.shape}; pass gy of the same shape, or reduce first")
            with backend.device_scope(self.device):
                gy = self.xp.ones_like(self.data)
        grads = {id(self): gy}
        held = {id(gy)}                   # the caller's gy and the leaves' gradients so far
        for t in reversed(_topological_order(self)):
            g = grads.pop(id(t), None)
            if g is None:                                              # no gradient flowed here
                continue
            if t._ctx is None:                                         # a leaf: keep its gradient
                # t.grad is scaled in place (clip_grad_norm, the average over ranks), so it must
                # be an array of its own: a backward may give one array to two inputs (a + b
                # gives gy to both), or a view of one (reshape)
                shared = id(g) in held or g.base is not None
                held.add(id(g))
                with backend.device_scope(t.device):
                    # float32 weights used with a float64 input get a float32 gradient, and a
                    # 0-d one an array (0-d ops give NumPy scalars) that can be scaled in place
                    g = t.xp.asarray(g, dtype=t.dtype)
                    if t.grad is not None:
                        t.grad = t.grad + g
                    else:
                        t.grad = g.copy() if shared else g
                continue
            if t._ctx is _FREED:
                raise RuntimeError("backward() reached a part of the graph that an earlier "
                                   "backward() has freed; run the forward pass again, or add "
                                   "the losses and call backward() once")
            ctx, t._ctx = t._ctx, _FREED
            with backend.device_scope(t.device):
                parent_grads = ctx.backward(g)
            if not isinstance(parent_grads, tuple):
                parent_grads = (parent_grads,)
            for parent, pg in zip(ctx.parents, parent_grads):
                if pg is None or not _needs_grad(parent):
                    continue
                assert pg.shape == parent.shape, (type(ctx).__name__, pg.shape, parent.shape)
                if id(parent) not in grads:
                    grads[id(parent)] = pg
                else:                           # on the parent's device: tower b adds on GPU 1
                    with backend.device_scope(parent.device):
                        grads[id(parent)] = grads[id(parent)] + pg

    # ---- operators: each calls the op of the same name in minigrad.functional ----------------
    __array_ufunc__ = None      # array * tensor: NumPy leaves it to __rmul__ below (else it would
                                # take the tensor for a scalar and make an array of tensors)

    def __add__(self, other): return F.add(self, other)
    def __radd__(self, other): return F.add(other, self)
    def __sub__(self, other): return F.sub(self, other)
    def __rsub__(self, other): return F.sub(other, self)
    def __mul__(self, other): return F.mul(self, other)
    def __rmul__(self, other): return F.mul(other, self)
    def __truediv__(self, other): return F.div(self, other)
    def __rtruediv__(self, other): return F.div(other, self)
    def __neg__(self): return F.neg(self)
    def __iadd__(self, other): return self._augmented("+=", F.add, other)
    def __isub__(self, other): return self._augmented("-=", F.sub, other)
    def __imul__(self, other): return self._augmented("*=", F.mul, other)
    def __itruediv__(self, other): return self._augmented("/=", F.div, other)
    def __matmul__(self, other): return F.matmul(self, other)
    def __rmatmul__(self, other): return F.matmul(other, self)
    def __getitem__(self, index): return F.getitem(self, index)

    def reshape(self, *shape): return F.reshape(self, shape[0] if len(shape) == 1 else shape)
    def flatten(self, start_dim=1): return F.flatten(self, start_dim)
    def transpose(self, *axes):
        return F.transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list))
                           else axes or None)
    @property
    def T(self): return F.transpose(self)
    def sum(self, axis=None, keepdims=False): return F.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return F.mean(self, axis, keepdims)
    def relu(self): return F.relu(self)
    def exp(self): return F.exp(self)
    def log(self): return F.log(self)
    def to(self, device): return F.to_device(self, device)

    def _augmented(self, symbol, op, other):
        """x += y is x = x + y, a new tensor (the graph may still need the old one's values);
        on a parameter that leaves the module's own unchanged, so it is refused."""
        if self.requires_grad and self._ctx is None:
            raise TypeError(f"x {symbol} y on a tensor that requires grad makes a new tensor and "
                            f"leaves this one unchanged; update a parameter's array in place, "
                            f"as in p.data -= lr * p.grad")
        return op(self, other)


class _Freed:
    """What a tensor's _ctx becomes once backward() has used its Function (and let it go)."""
    parents = ()


_FREED = _Freed()


def _needs_grad(t):
    return t.requires_grad or t._ctx is not None


def _topological_order(root):
    """Every tensor that root depends on through a recorded op, each after its inputs."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:                       # iterative depth-first search: deep graphs need no recursion
        t, inputs_done = stack.pop()
        if inputs_done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t._ctx is not None:
            stack.extend((p, False) for p in t._ctx.parents if _needs_grad(p) and id(p) not in visited)
    return order


class Function:
    """One differentiable op. Subclasses define

        forward(self, *arrays, **options) -> array    (saves on self what backward needs)
        backward(self, gy) -> one gradient array per forward input (None where there is none)

    and are called through `apply`, which handles Tensors, devices and the graph. A backward
    may skip an expensive gradient whose input has needs_grad False (e.g. a network's input).
    """
    crosses_devices = False        # only ops that move data between devices set this


    def __init__(self):
        self.parents = ()
        self.needs_grad = ()     # per input: will backward's gradient for it be used?

    @classmethod
    def apply(cls, *inputs, **options):
        tensors = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
        devices = {t.device for t in tensors}
        if len(devices) > 1 and not cls.crosses_devices:
            raise ValueError(f"{cls.__name__.lower()}: inputs are on different devices "
                             f"{sorted(map(str, devices))}; move them with .to(device) first")
        fn = cls()
        fn.needs_grad = tuple(_grad_enabled and _needs_grad(t) for t in tensors)
        with backend.device_scope(tensors[0].device):
            y = fn.forward(*(t.data for t in tensors), **options)
        out = Tensor(y)
        if any(fn.needs_grad):
            fn.parents = tensors
            out._ctx = fn
        return out


from minigrad import functional as F  # noqa: E402  (functional imports Tensor and Function)
