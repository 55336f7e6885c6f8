"""Every differentiable op, forward and backward side by side.

Each op is a `Function` subclass (its forward saves on `self` only what its backward needs) and
a lower-case function that is the public way to call it. The code runs unchanged on NumPy and
CuPy: `xp` is the array module of the inputs. The three layers with hand-written CUDA kernels
(conv2d's im2col/col2im, max_pool2d, lrn) call `_kernels(x)`: minigrad.reference (NumPy) on the
CPU, minigrad.cuda (the .cu kernels) on a GPU, with the same functions and signatures. One
exception: on the CPU conv2d orders its columns batch-last (reference.im2col_images_last, see
Conv2d), so reference.im2col and col2im serve only as the specification the kernels are tested
against.
"""
import builtins

import numpy

from minigrad import backend, reference
from minigrad import random as mg_random
from minigrad.tensor import Function, Tensor


def _kernels(x):
    if backend.get_array_module(x) is numpy:
        return reference
    from minigrad import cuda
    return cuda


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _as_tensor_like(value, like):
    """A Python number or array as a Tensor on `like`'s device, of `like`'s dtype unless that
    cannot hold it: NumPy's rule for a Python number (float32 * 0.5 stays float32, int64 * 0.5
    is float64), and a float array or NumPy scalar with an integer or bool tensor."""
    if isinstance(value, Tensor):
        return value
    dtype = like.dtype
    if type(value) in (bool, int, float):
        dtype = numpy.result_type(dtype, value)
    elif dtype.kind in "biu" and hasattr(value, "dtype"):      # a float32 tensor stays float32
        dtype = numpy.result_type(dtype, value.dtype)
    with backend.device_scope(like.device):
        return Tensor(like.xp.asarray(value, dtype=dtype))


def _binary(fn, a, b):
    if not isinstance(a, Tensor):
        a = _as_tensor_like(a, b)
    b = _as_tensor_like(b, a)
    return fn.apply(a, b)


def unbroadcast(g, shape):
    """Sum g over the axes that broadcasting added or stretched, so that it has `shape`."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=stretched, keepdims=True) if stretched else g


# ---- elementwise arithmetic (NumPy broadcasting rules) ------------------------------------------

class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        return unbroadcast(gy, self.shapes[0]), unbroadcast(gy, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        return unbroadcast(gy, self.shapes[0]), unbroadcast(-gy, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        return unbroadcast(gy * self.b, self.a.shape), unbroadcast(gy * self.a, self.b.shape)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga = gy / self.b
        return unbroadcast(ga, self.a.shape), unbroadcast(-ga * self.a / self.b, self.b.shape)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


def add(a, b): return _binary(Add, a, b)
def sub(a, b): return _binary(Sub, a, b)
def mul(a, b): return _binary(Mul, a, b)
def div(a, b): return _binary(Div, a, b)
def neg(x): return Neg.apply(x)


class Exp(Function):
    def forward(self, x):
        self.y = backend.get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class ReLU(Function):
    """y = max(x, 0); the gradient passes where x > 0."""

    def forward(self, x):
        self.positive = x > 0
        return backend.get_array_module(x).maximum(x, 0)     # NaN stays NaN, -inf becomes 0

    def backward(self, gy):
        return gy * self.positive


def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def relu(x): return ReLU.apply(x)


# ---- matrix product ---------------------------------------------------------------------------

class MatMul(Function):
    """y = a @ b for arrays of two or more dimensions (leading dimensions broadcast)."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul needs arrays of 2 or more dimensions, got shapes {a.shape} "
                             f"and {b.shape}; reshape vectors to (1, n) or (n, 1)")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not fit: the first's "
                             f"last dimension must equal the second's next to last")
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        ga = gy @ self.b.swapaxes(-1, -2)
        gb = self.a.swapaxes(-1, -2) @ gy
        return unbroadcast(ga, self.a.shape), unbroadcast(gb, self.b.shape)


def matmul(a, b): return MatMul.apply(a, b)


class Linear(Function):
    """y = x @ W.T + b, with x (N, in), W (out, in), b (out,)."""

    def forward(self, x, W, b=None):
        if x.ndim != 2 or x.shape[1] != W.shape[1]:
            raise ValueError(f"linear: input of shape {x.shape} does not fit a weight of shape "
                             f"{W.shape}; the input must be (N, {W.shape[1]})")
        if b is not None and b.shape != W.shape[:1]:
            raise ValueError(f"linear: a bias of shape {b.shape} does not fit a weight of shape "
                             f"{W.shape}; it must be ({W.shape[0]},)")
        self.x, self.W = x, W
        y = x @ W.T                                               # (N, out)
        return y if b is None else y + b

    def backward(self, gy):
        gb = gy.sum(axis=0) if len(self.needs_grad) == 3 else None   # (out,), when there is a bias
        return gy @ self.W, gy.T @ self.x, gb


def linear(x, W, b=None):
    return Linear.apply(x, W) if b is None else Linear.apply(x, W, b)


# ---- shapes -----------------------------------------------------------------------------------

class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, gy):
        return gy.reshape(self.shape)


class Transpose(Function):
    def forward(self, x, axes):
        self.axes = None if axes is None else tuple(a % x.ndim for a in axes)   # no negatives
        return x.transpose(self.axes)

    def backward(self, gy):
        if self.axes is None:
            return gy.transpose()
        return gy.transpose(tuple(int(a) for a in numpy.argsort(self.axes)))   # the inverse


class GetItem(Function):
    """y = x[index]; the gradient is scattered back (added, so repeated indices accumulate)."""

    def forward(self, x, index):
        self.shape, self.index = x.shape, index
        return x[index]

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        parts = self.index if isinstance(self.index, tuple) else (self.index,)
        if all(isinstance(i, (int, numpy.integer, slice, type(None), type(Ellipsis)))
               for i in parts):
            gx[self.index] = gy            # basic indexing picks each element at most once
        else:
            xp.add.at(gx, self.index, gy)  # an index array may repeat an element: add, in turn
        return gx


def reshape(x, shape):
    return Reshape.apply(x, shape=(shape,) if isinstance(shape, int) else tuple(shape))


def transpose(x, axes=None):
    return Transpose.apply(x, axes=None if axes is None else tuple(axes))


def getitem(x, index):
    """x[index]; an index array may be given as a Tensor."""
    parts = index if isinstance(index, tuple) else (index,)
    parts = tuple(i.data if isinstance(i, Tensor) else i for i in parts)
    return GetItem.apply(x, index=parts if isinstance(index, tuple) else parts[0])


def flatten(x, start_dim=1):
    """Merge the dimensions from start_dim on: (N, C, H, W) -> (N, C*H*W)."""
    return reshape(x, x.shape[:start_dim] + (-1,))


# ---- reductions -------------------------------------------------------------------------------

class Sum(Function):
    def forward(self, x, axis, keepdims):
        self.shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if self.axis is not None and not self.keepdims:
            gy = xp.expand_dims(gy, self.axis)                    # put the summed axes back as 1s
        return xp.broadcast_to(gy, self.shape).copy()


def sum(x, axis=None, keepdims=False):
    """Over `axis`: None (all), an int, or a tuple or list of ints."""
    axis = tuple(axis) if isinstance(axis, list) else axis          # NumPy takes no list
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    shape = x.shape
    axes = range(len(shape)) if axis is None else ((axis,) if isinstance(axis, int) else axis)
    count = int(numpy.prod([shape[a] for a in axes]))
    return sum(x, axis, keepdims) * (1.0 / count)


# ---- devices, joining and splitting (the two towers meet through to_device and concat) ---------

class ToDevice(Function):
    crosses_devices = True

    def forward(self, x, device):
        self.source = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, gy):
        return backend.to_device(gy, self.source)


def to_device(x, device):
    """x on `device` ("cpu" or a GPU id); the gradient goes back to x's device."""
    device = backend.parse_device(device)
    return x if isinstance(x, Tensor) and x.device == device else ToDevice.apply(x, device=device)


class Concat(Function):
    """Join along `axis`, gathering every operand onto `device` first. Backward slices the
    gradient and sends each piece back to the device of the operand it belongs to."""
    crosses_devices = True

    def forward(self, *arrays, axis, device):
        self.devices = [backend.device_of(a) for a in arrays]
        self.sizes = [a.shape[axis] for a in arrays]
        self.axis = axis
        with backend.device_scope(device):
            moved = [backend.to_device(a, device) for a in arrays]
            return backend.module_for(device).concatenate(moved, axis=axis)

    def backward(self, gy):
        bounds = numpy.cumsum([0] + self.sizes)
        index = [slice(None)] * gy.ndim
        grads = []
        for start, stop, device in zip(bounds[:-1], bounds[1:], self.devices):
            index[self.axis] = slice(start, stop)
            grads.append(backend.to_device(gy[tuple(index)], device))
        return tuple(grads)


def concat(tensors, axis=0, device=None):
    """Concatenate along `axis` on `device` (default: the first operand's device)."""
    tensors = list(tensors)
    device = backend.parse_device(device) if device is not None else Tensor(tensors[0]).device
    return Concat.apply(*tensors, axis=axis, device=device)


def split(x, sizes, axis=0):
    """Cut x along `axis` into pieces of the given sizes (an int: equal pieces of that size)."""
    length = x.shape[axis]
    if isinstance(sizes, int):
        if sizes < 1 or length % sizes:
            raise ValueError(f"split: axis {axis} of length {length} does not cut into pieces "
                             f"of {sizes}; give a size that divides it, or a list of sizes")
        sizes = [sizes] * (length // sizes)
    if builtins.sum(sizes) != length:
        raise ValueError(f"split: sizes {list(sizes)} add up to {builtins.sum(sizes)}, but axis "
                         f"{axis} has length {length}")
    pieces, start = [], 0
    for size in sizes:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + size)
        pieces.append(getitem(x, tuple(index)))
        start += size
    return pieces


# ---- convolution (section 3.5), normalization (3.3), overlapping pooling (3.4) -----------------

class Conv2d(Function):
    """2-D convolution (cross-correlation, as in every framework) by im2col and one GEMM.

        y[n, o, oy, ox] = b[o] + sum_{c,i,j} W[o, c, i, j] * x_pad[n, c, oy*sy + i, ox*sx + j]

    im2col turns every window of every image into a column, so the sum for the whole batch is
    one matrix product W (O, C*kh*kw) @ col (C*kh*kw, N*OH*OW): one large GEMM runs much faster
    than N small ones. Backward, with gy as a matrix (O, N*OH*OW): gW = gy @ col^T,
    gcol = W^T @ gy, and col2im adds every column entry back onto the pixel it came from.
    The order of the columns is free as long as gy's follows it: (n, oy, ox) on a GPU,
    (oy, ox, n) on the CPU, where it makes NumPy's copies faster.
    """

    def forward(self, x, W, b=None, *, stride, padding):
        N, _, H, _ = x.shape
        O, _, kh, kw = W.shape
        (sy, sx), (ph, pw) = stride, padding
        xp = backend.get_array_module(x)
        OH = reference.conv_output_size(H, kh, sy, ph)
        # On the CPU the columns go in (oy, ox, n) order, the batch innermost: NumPy copies
        # long runs instead of short ones (reference.im2col_images_last). The GEMM is the same.
        self.images_last = xp is numpy
        if self.images_last:
            col = reference.im2col_images_last(x, kh, kw, sy, sx, ph, pw)  # (C*kh*kw, OH*OW*N)
        else:
            col = _kernels(x).im2col(x, kh, kw, sy, sx, ph, pw)         # (C*kh*kw, N*OH*OW)
        y = W.reshape(O, -1) @ col                                 # (O, columns)
        if b is not None:
            y += b[:, None]
        self.col, self.W, self.x_shape = col, W, x.shape
        self.geometry = kh, kw, sy, sx, ph, pw
        if self.images_last:
            y = y.reshape(O, OH, -1, N).transpose(3, 0, 1, 2)      # (N, O, OH, OW) view
        else:
            y = y.reshape(O, N, OH, -1).transpose(1, 0, 2, 3)
        return xp.ascontiguousarray(y)                             # for the next layer; small next to col

    def backward(self, gy):
        O = gy.shape[1]
        order = (1, 2, 3, 0) if self.images_last else (1, 0, 2, 3)  # col's column order
        gy = gy.transpose(order).reshape(O, -1)                    # (O, columns)
        gW = gy @ self.col.T                                       # (O, C*kh*kw)
        gx = None
        if self.needs_grad[0]:                                     # not for a network's input
            gcol = self.W.reshape(O, -1).T @ gy                    # (C*kh*kw, columns)
            col2im = reference.col2im_images_last if self.images_last else _kernels(gy).col2im
            gx = col2im(gcol, self.x_shape, *self.geometry)
        gb = gy.sum(axis=1) if len(self.needs_grad) == 3 else None  # (O,), when there is a bias
        return gx, gW.reshape(self.W.shape), gb


def conv2d(x, W, b=None, stride=1, padding=0):
    """x (N, C, H, W), W (O, C, kh, kw), b (O,) -> (N, O, OH, OW)."""
    if x.ndim != 4 or W.ndim != 4:
        raise ValueError(f"conv2d needs a 4-D input (N, C, H, W) and weight (O, C, kh, kw), got "
                         f"shapes {x.shape} and {W.shape}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d: the input has {x.shape[1]} channels but the weight of shape "
                         f"{W.shape} expects {W.shape[1]}")
    if b is not None and tuple(b.shape) != W.shape[:1]:
        raise ValueError(f"conv2d: a bias of shape {tuple(b.shape)} does not fit a weight of shape "
                         f"{W.shape}; it must be ({W.shape[0]},)")
    inputs = (x, W) if b is None else (x, W, b)
    return Conv2d.apply(*inputs, stride=_pair(stride), padding=_pair(padding))


class MaxPool2d(Function):
    """y = the maximum of each kh x kw window, windows `stride` apart (no padding, floor mode).
    With window 3 and stride 2 the windows overlap (paper section 3.4). The gradient goes to the
    first maximal pixel of each window; a pixel in several windows collects from all of them."""

    def forward(self, x, *, kernel_size, stride):
        y, self.argmax = _kernels(x).max_pool_forward(x, *kernel_size, *stride)
        self.x_shape, self.kernel_size, self.stride = x.shape, kernel_size, stride
        return y

    def backward(self, gy):
        return _kernels(gy).max_pool_backward(gy, self.argmax, self.x_shape, *self.kernel_size, *self.stride)


def max_pool2d(x, kernel_size, stride=None):
    """x (N, C, H, W) -> (N, C, (H - kh) // sy + 1, (W - kw) // sx + 1); stride defaults to the window."""
    if x.ndim != 4:
        raise ValueError(f"max_pool2d needs a 4-D input (N, C, H, W), got shape {x.shape}")
    kernel_size = _pair(kernel_size)
    stride = kernel_size if stride is None else _pair(stride)
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride)


class LRN(Function):
    """Local response normalization across channels, the paper's form (section 3.3):

        y[c] = x[c] / (k + alpha * sum_{j=max(0, c-n//2)}^{min(C-1, c+n//2)} x[j]^2) ** beta

    alpha is NOT divided by n (Caffe and PyTorch divide: their alpha=5e-4, size 5 is this layer).
    """

    def forward(self, x, *, n, k, alpha, beta):
        y, scale = _kernels(x).lrn_forward(x, n, k, alpha, beta)
        self.saved = x, y, scale
        self.n, self.alpha, self.beta = n, alpha, beta
        return y

    def backward(self, gy):
        x, y, scale = self.saved
        return _kernels(gy).lrn_backward(gy, x, y, scale, self.n, self.alpha, self.beta)


def lrn(x, n=5, k=2.0, alpha=1e-4, beta=0.75):
    if x.ndim != 4:
        raise ValueError(f"lrn needs a 4-D input (N, C, H, W), got shape {x.shape}")
    if n < 1 or n % 2 == 0:
        raise ValueError(f"lrn: the window n={n} must be a positive odd number (the paper uses 5)")
    return LRN.apply(x, n=n, k=float(k), alpha=float(alpha), beta=float(beta))


# ---- dropout (paper section 4.2) --------------------------------------------------------------

class Dropout(Function):
    """Inverted dropout: in training each unit is kept with probability 1 - p and multiplied by
    1 / (1 - p); at test time the layer is the identity. The paper instead keeps outputs
    unscaled in training and multiplies them by 0.5 at test time. Both give every unit the same
    expected value in training as at test time, and a network trained one way is one of the
    other with the next layer's weights halved: the same functions. Not the same training,
    though: with the paper's learning rate and initialization, the weights after a dropout
    layer (fc7, fc8) get twice the gradient, a step four times the paper's in its terms, and
    start twice as wide. (PAPER.md lets either be used; minigrad's is the common one.)"""

    def forward(self, x, *, p):
        draw = numpy.float64 if x.dtype == numpy.float64 else numpy.float32  # no float16 draws
        keep = mg_random.uniform(x.shape, draw, backend.device_of(x)) >= p
        self.mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


def dropout(x, p=0.5, training=True):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p={p} must be in [0, 1)")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p=p)


# ---- losses -----------------------------------------------------------------------------------

def _log_softmax(x):
    xp = backend.get_array_module(x)
    z = x - x.max(axis=1, keepdims=True)                 # the largest logit becomes 0: no overflow
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


class LogSoftmax(Function):
    """y[n, i] = x[n, i] - log sum_j exp(x[n, j]); backward gx = gy - softmax * sum(gy)."""

    def forward(self, x):
        self.y = _log_softmax(x)
        return self.y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=1, keepdims=True)


def log_softmax(x):
    """Along the class axis 1 of x (N, classes)."""
    if x.ndim < 2:
        raise ValueError(f"log_softmax needs logits of shape (N, classes), got {x.shape}; "
                         f"reshape one sample's to (1, classes)")
    return LogSoftmax.apply(x)


class CrossEntropy(Function):
    """loss = -(1/N) sum_n log softmax(x)[n, label[n]]; gx = (softmax(x) - onehot(label)) / N."""

    def forward(self, x, labels):
        xp = backend.get_array_module(x)
        logp = _log_softmax(x)                                     # (N, classes)
        self.p, self.labels = xp.exp(logp), labels
        return -logp[xp.arange(x.shape[0]), labels].mean()

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        N = self.p.shape[0]
        gx = self.p.copy()
        gx[xp.arange(N), self.labels] -= 1
        return gx * (gy / N), None


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of logits (N, classes) against integer labels (N,)."""
    labels = labels.data if isinstance(labels, Tensor) else labels
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy needs logits of shape (N, classes), got {logits.shape}")
    if backend.get_array_module(labels) is numpy:
        labels = numpy.asarray(labels)     # checked here, on the host: no GPU sync per step
    if labels.shape != logits.shape[:1] or labels.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy needs integer labels of shape ({logits.shape[0]},), "
                         f"got {labels.dtype} of shape {labels.shape}")
    with backend.device_scope(backend.device_of(labels)):
        low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(f"cross_entropy: labels must lie in [0, {logits.shape[1]}), got values "
                         f"from {low} to {high}; is num_classes right?")
    logits = Tensor(logits) if not isinstance(logits, Tensor) else logits
    return CrossEntropy.apply(logits, backend.to_device(labels, logits.device))
