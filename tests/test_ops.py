"""Every op: backward against float64 central differences, forward against a plain loop.

All gradient checks go through `check_grad`; every test runs on NumPy and, with a GPU, on CuPy.
"""
import math

import numpy
import pytest

import minigrad
from minigrad import backend
from minigrad import functional as F
from minigrad.tensor import Tensor


def tensors(arrays, device, requires_grad=True):
    return [Tensor(backend.to_device(numpy.asarray(a, dtype=numpy.float64), device),
                   requires_grad=requires_grad) for a in arrays]


def check_grad(fn, arrays, device, **tolerances):
    """gradcheck fn on float64 copies of `arrays` placed on `device`."""
    assert minigrad.gradcheck(fn, tensors(arrays, device), **tolerances)


def forward(fn, arrays, device, dtype=numpy.float64):
    """fn applied to `arrays` (as `dtype` on `device`), returned as NumPy."""
    inputs = [Tensor(backend.to_device(numpy.asarray(a, dtype=dtype), device)) for a in arrays]
    return fn(*inputs).numpy()


def distinct(rng, shape, spacing=0.01):
    """Values at least `spacing` apart and away from 0: no ties for max, no ReLU kink."""
    count = int(numpy.prod(shape))
    values = (rng.permutation(count) - (count - 1) / 2 + 0.25) * spacing   # never 0
    return values.reshape(shape)


# ---- plain-loop references --------------------------------------------------------------------

def conv2d_loop(x, W, b, stride, pad):
    N, C, H, Wd = x.shape
    O, _, kh, kw = W.shape
    sy, sx = stride
    ph, pw = pad
    xp = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OH, OW = (H + 2 * ph - kh) // sy + 1, (Wd + 2 * pw - kw) // sx + 1
    y = numpy.zeros((N, O, OH, OW))
    for n in range(N):
        for o in range(O):
            for oy in range(OH):
                for ox in range(OW):
                    window = xp[n, :, oy * sy:oy * sy + kh, ox * sx:ox * sx + kw]
                    y[n, o, oy, ox] = (window * W[o]).sum() + b[o]
    return y


def max_pool_loop(x, k, s):
    N, C, H, W = x.shape
    OH, OW = (H - k[0]) // s[0] + 1, (W - k[1]) // s[1] + 1
    y = numpy.zeros((N, C, OH, OW))
    for oy in range(OH):
        for ox in range(OW):
            y[:, :, oy, ox] = x[:, :, oy * s[0]:oy * s[0] + k[0], ox * s[1]:ox * s[1] + k[1]].max(axis=(2, 3))
    return y


def lrn_loop(x, n, k, alpha, beta):
    C = x.shape[1]
    y = numpy.zeros_like(x)
    for c in range(C):
        window = x[:, max(0, c - n // 2):min(C - 1, c + n // 2) + 1]
        y[:, c] = x[:, c] / (k + alpha * (window ** 2).sum(axis=1)) ** beta
    return y


# ---- elementwise, matmul, shapes, reductions --------------------------------------------------

BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 3), (1, 4, 3)), ((5,), (1,))]


@pytest.mark.parametrize("op", [F.add, F.sub, F.mul, F.div])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES)
def test_arithmetic_broadcasting(op, shapes, device, rng):
    a, b = (rng.uniform(0.5, 2.0, s) for s in shapes)              # b away from 0 for div
    check_grad(op, [a, b], device)
    expected = {F.add: a + b, F.sub: a - b, F.mul: a * b, F.div: a / b}[op]
    numpy.testing.assert_allclose(forward(op, [a, b], device), expected, rtol=1e-12)


def test_operators_and_python_scalars(device, rng):
    check_grad(lambda a: 2.0 * a - 1 + a / 4.0 - (3 / a) * -a, [rng.uniform(1, 2, (3, 2))], device)
    x = Tensor(backend.to_device(numpy.ones(3, numpy.float32), device))
    assert (x * 2.5).dtype == numpy.float32 and (1 - x).device == device
    assert (x * numpy.float64(2.5)).dtype == numpy.float32         # a NumPy scalar: x's dtype
    counts = Tensor(backend.to_device(numpy.arange(4), device))
    numpy.testing.assert_array_equal((counts * 0.5).numpy(), [0.0, 0.5, 1.0, 1.5])  # not 0s
    numpy.testing.assert_array_equal((counts * numpy.float64(0.5)).numpy(), [0.0, 0.5, 1.0, 1.5])
    assert (counts + 1).dtype == counts.dtype


@pytest.mark.parametrize("fn,low", [(F.exp, -2.0), (F.log, 0.5), (F.neg, -2.0)])
def test_unary(fn, low, device, rng):
    x = rng.uniform(low, low + 3.0, (4, 3))
    check_grad(fn, [x], device)
    expected = {F.exp: numpy.exp, F.log: numpy.log, F.neg: numpy.negative}[fn](x)
    numpy.testing.assert_allclose(forward(fn, [x], device), expected, rtol=1e-12)


def test_relu(device, rng):
    x = distinct(rng, (3, 5), spacing=0.1)
    check_grad(F.relu, [x], device)
    numpy.testing.assert_array_equal(forward(F.relu, [x], device), numpy.maximum(x, 0))
    at_zero = tensors([numpy.array([-1.0, 0.0, 2.0])], device)[0]
    F.relu(at_zero).sum().backward()                     # max(x, 0) has gradient 0 at x = 0
    numpy.testing.assert_array_equal(backend.to_device(at_zero.grad, "cpu"), [0.0, 0.0, 1.0])
    extremes = numpy.array([-numpy.inf, numpy.inf, numpy.nan, -1.0])
    numpy.testing.assert_array_equal(forward(F.relu, [extremes], device), [0, numpy.inf, numpy.nan, 0])


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((1, 1), (1, 7)), ((2, 3, 4), (4, 2)),
                                    ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul(shapes, device, rng):
    a, b = (rng.standard_normal(s) for s in shapes)
    check_grad(F.matmul, [a, b], device)
    numpy.testing.assert_allclose(forward(F.matmul, [a, b], device), a @ b, rtol=1e-12, atol=1e-12)


def test_matmul_explains_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 2\) do not fit"):
        Tensor(numpy.zeros((2, 3))) @ Tensor(numpy.zeros((4, 2)))


def test_tf32_is_opt_in_and_only_rounds_float32_products(device, rng):
    """Plain float32 products agree with float64 to ~1e-6; with TF32 (GPU only) the inputs are
    rounded to a 10-bit mantissa (~1e-3 each), and switching it off restores plain float32."""
    if device != "cpu" and int(backend.cupy.cuda.Device(device).compute_capability) < 80:
        pytest.skip("TF32 needs a GPU of compute capability 8.0 or newer")
    a, b = (rng.standard_normal((512, 512)) for _ in range(2))
    exact = a @ b

    def error():
        product = forward(F.matmul, [a, b], device, dtype=numpy.float32)
        return numpy.abs(product - exact).max() / numpy.abs(exact).max()

    plain = error()
    assert plain < 1e-5
    assert backend.set_tf32(True) is False                  # off by default
    try:
        tf32 = error()
    finally:
        assert backend.set_tf32(False) is (backend.gpu_count() > 0)    # one switch per process
    if device == "cpu":
        assert tf32 == plain                                 # NumPy has no TF32
    else:
        assert 1e-5 < tf32 < 1e-2, f"TF32 products' error {tf32:.1e} (plain {plain:.1e})"
    assert error() == plain


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N", [1, 5])
def test_linear(bias, N, device, rng):
    x, W, b = rng.standard_normal((N, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    if bias:
        check_grad(F.linear, [x, W, b], device)
        numpy.testing.assert_allclose(forward(F.linear, [x, W, b], device), x @ W.T + b, rtol=1e-12,
                                      atol=1e-12)
    else:
        check_grad(F.linear, [x, W], device)


def test_gradcheck_catches_a_wrong_or_missing_gradient():
    """Every backward test stands on gradcheck: it must refuse a backward that is off."""
    class Double(minigrad.Function):           # y = x * y2, backward claims 2 * gy for x
        def forward(self, x, y):
            self.x, self.y = x, y
            return x * y

        def backward(self, gy):
            return 2 * gy, gy * self.x

    class Half(Double):                         # forgets y's gradient
        def backward(self, gy):
            return gy * self.y, None

    x, y = (Tensor(numpy.full(3, 1.5), requires_grad=True) for _ in range(2))
    for wrong in (Double, Half):
        with pytest.raises(AssertionError, match="gradcheck: input [01] of shape"):
            minigrad.gradcheck(lambda a, b: wrong.apply(a, b), [x, y])
    assert minigrad.gradcheck(lambda a, b: a * b, [x, y]) is True


def test_gradcheck_asks_for_float64():
    """In float32 a correct backward failed: eps=1e-6 is below float32's resolution."""
    x = Tensor([[0.1, 0.2]], requires_grad=True)                      # float32, the default
    with pytest.raises(ValueError, match="gradcheck: input 0 is float32; .* need float64"):
        minigrad.gradcheck(F.exp, [x])


def test_shape_ops(device, rng):
    x = rng.standard_normal((2, 3, 4))
    check_grad(lambda t: t.reshape(4, 6), [x], device)
    check_grad(lambda t: F.flatten(t), [x], device)
    check_grad(lambda t: t.transpose(2, 0, 1), [x], device)
    check_grad(lambda t: t.transpose(-1, 0, 1), [x], device)
    check_grad(lambda t: t.T, [x], device)
    check_grad(lambda t: t[1:, ::2, 1], [x], device)
    check_grad(lambda t: t[..., None, -1], [x], device)
    check_grad(lambda t: t[numpy.int64(1), 1:], [x], device)
    repeated = numpy.array([0, 0, 1, 0])                 # the gradients of repeats add up
    check_grad(lambda t: t[repeated], [x], device)
    check_grad(lambda t: t[:, [2, 2, 0], 1:], [x], device)
    numpy.testing.assert_array_equal(forward(lambda t: t[repeated], [x], device), x[repeated])
    assert forward(lambda t: t.transpose(2, 0, 1), [x], device).shape == (4, 2, 3)


def test_an_index_may_be_a_tensor(device, rng):
    """x[labels] with labels a Tensor of integers: NumPy refused it."""
    x = rng.standard_normal((2, 3, 4))
    rows = Tensor(backend.to_device(numpy.array([1, 1, 0]), device))
    check_grad(lambda t: t[rows], [x], device)
    check_grad(lambda t: t[:, rows, 2], [x], device)


@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 2), False),
                                           (-1, True)])
def test_reductions(axis, keepdims, device, rng):
    x = rng.standard_normal((2, 3, 4))
    check_grad(lambda t: F.sum(t, axis, keepdims), [x], device)
    check_grad(lambda t: F.mean(t, axis, keepdims), [x], device)
    numpy.testing.assert_allclose(forward(lambda t: F.mean(t, axis, keepdims), [x], device),
                                  x.mean(axis=axis, keepdims=keepdims), rtol=1e-12)


def test_axes_may_be_a_list(device, rng):
    """x.sum(axis=[0, 2]): NumPy takes a tuple of axes, not a list."""
    x = rng.standard_normal((2, 3, 4))
    check_grad(lambda t: t.sum(axis=[0, 2]), [x], device)
    check_grad(lambda t: t.mean(axis=[0, 2], keepdims=True), [x], device)
    numpy.testing.assert_allclose(forward(lambda t: t.mean(axis=[0, 2]), [x], device),
                                  x.mean(axis=(0, 2)), rtol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_and_split(axis, device, rng):
    a, b, c = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    check_grad(lambda *t: F.concat(t, axis=axis), [a, b, c], device)
    check_grad(lambda t: F.split(t, {0: [1, 1], 1: [1, 2], -1: [3, 1]}[axis], axis=axis), [a], device)
    joined = forward(lambda *t: F.concat(t, axis=axis), [a, b, c], device)
    numpy.testing.assert_array_equal(joined, numpy.concatenate([a, b, c], axis=axis))
    pieces = F.split(Tensor(joined), a.shape[axis], axis=axis)
    assert len(pieces) == 3
    for piece, original in zip(pieces, (a, b, c)):
        numpy.testing.assert_array_equal(piece.numpy(), original)


def test_split_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="add up to 3"):
        F.split(Tensor(numpy.zeros((4, 2))), [1, 2])
    with pytest.raises(ValueError, match="axis 0 of length 5 does not cut into pieces of 2"):
        F.split(Tensor(numpy.zeros((5, 2))), 2)


# ---- convolution ------------------------------------------------------------------------------

CONV_CASES = [  # (N, C, H, W), (O, kh, kw), stride, padding
    ((1, 1, 5, 5), (1, 3, 3), 1, 0),
    ((2, 3, 7, 6), (4, 3, 3), 1, 1),
    ((1, 2, 9, 9), (3, 5, 5), 2, 2),
    ((2, 3, 11, 11), (2, 3, 3), 2, 0),
    ((1, 3, 15, 15), (2, 11, 11), 4, 0),          # conv1's kernel and stride, small input
    ((3, 2, 6, 8), (3, 2, 3), (1, 2), (0, 1)),    # non-square everything
    ((1, 4, 3, 3), (5, 1, 1), 1, 0),              # 1x1
]


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CONV_CASES)
def test_conv2d(x_shape, w_shape, stride, padding, device, rng):
    O, kh, kw = w_shape
    x = rng.standard_normal(x_shape)
    W = rng.standard_normal((O, x_shape[1], kh, kw))
    b = rng.standard_normal(O)
    op = lambda x, W, b: F.conv2d(x, W, b, stride, padding)  # noqa: E731
    expected = conv2d_loop(x, W, b, F._pair(stride), F._pair(padding))
    numpy.testing.assert_allclose(forward(op, [x, W, b], device), expected, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(forward(op, [x, W, b], device, numpy.float32), expected,
                                  rtol=1e-4, atol=1e-5)
    check_grad(op, [x, W, b], device)


def test_conv2d_without_bias(device, rng):
    check_grad(lambda x, W: F.conv2d(x, W, padding=1), [rng.standard_normal((2, 2, 4, 4)),
                                                        rng.standard_normal((3, 2, 3, 3))], device)


def test_conv2d_explains_channel_mismatch():
    with pytest.raises(ValueError, match="input has 4 channels but the weight"):
        F.conv2d(Tensor(numpy.zeros((1, 4, 5, 5))), Tensor(numpy.zeros((2, 3, 3, 3))))


def test_conv2d_explains_window_too_large():
    with pytest.raises(ValueError, match="does not fit"):
        F.conv2d(Tensor(numpy.zeros((1, 3, 5, 5))), Tensor(numpy.zeros((2, 3, 11, 11))), stride=4)


def test_conv2d_and_linear_explain_a_wrong_bias():
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) does not fit .* must be \(2,\)"):
        F.conv2d(Tensor(numpy.zeros((1, 1, 4, 4))), Tensor(numpy.zeros((2, 1, 2, 2))),
                 Tensor(numpy.zeros(3)))
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) does not fit .* must be \(4,\)"):
        F.linear(Tensor(numpy.zeros((2, 3))), Tensor(numpy.zeros((4, 3))), Tensor(numpy.zeros(3)))


@pytest.mark.parametrize("stride,padding", [(0, 0), ((1, 0), 0), (1, -1)])
def test_windows_explain_a_bad_stride_or_padding(stride, padding):
    x, W = Tensor(numpy.zeros((1, 1, 4, 4))), Tensor(numpy.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="stride at least 1 and a padding at least 0"):
        F.conv2d(x, W, stride=stride, padding=padding)
    if padding == 0:
        with pytest.raises(ValueError, match="stride at least 1 and a padding at least 0"):
            F.max_pool2d(x, 2, stride)


# ---- max pooling ------------------------------------------------------------------------------

POOL_CASES = [  # (N, C, H, W), kernel, stride
    ((1, 1, 7, 7), 3, 2),            # overlapping 3/2, odd size: the last window ends on the border
    ((2, 3, 8, 8), 3, 2),            # even size: the last row/column is in no window (floor mode)
    ((1, 2, 13, 13), 3, 2),          # pool5: 13 -> 6
    ((2, 2, 6, 6), 2, 2),            # non-overlapping
    ((1, 3, 9, 10), (2, 3), (1, 2)),  # non-square window and stride
    ((1, 1, 3, 3), 3, 1),            # one window
]


@pytest.mark.parametrize("x_shape,kernel,stride", POOL_CASES)
def test_max_pool2d(x_shape, kernel, stride, device, rng):
    x = distinct(rng, x_shape)
    op = lambda t: F.max_pool2d(t, kernel, stride)  # noqa: E731
    expected = max_pool_loop(x, F._pair(kernel), F._pair(stride))
    numpy.testing.assert_array_equal(forward(op, [x], device), expected)
    check_grad(op, [x], device, eps=1e-4)


def test_max_pool2d_overlap_sends_gradient_to_every_window(device):
    # One large pixel at (2, 2) is the maximum of all four overlapping 3x3/2 windows of a 5x5 map.
    x = numpy.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0
    t = tensors([x], device)[0]
    F.max_pool2d(t, 3, 2).sum().backward()
    assert backend.to_device(t.grad, "cpu")[0, 0, 2, 2] == 4.0


def test_max_pool2d_alexnet_sizes():
    for size, out in ((55, 27), (27, 13), (13, 6)):
        assert F.max_pool2d(Tensor(numpy.zeros((1, 1, size, size))), 3, 2).shape == (1, 1, out, out)


# ---- local response normalization -------------------------------------------------------------

LRN_CASES = [  # C, n: channels below (half the window reaching past them too), at and above it
    (1, 5), (3, 5), (5, 5), (7, 5), (8, 3), (6, 1), (9, 7), (3, 9), (2, 7)]


@pytest.mark.parametrize("C,n", LRN_CASES)
@pytest.mark.parametrize("k,alpha,beta", [(2.0, 1e-4, 0.75), (1.0, 1.0, 0.75), (1.0, 0.5, 1.5)])
def test_lrn(C, n, k, alpha, beta, device, rng):
    x = rng.standard_normal((2, C, 3, 2))
    op = lambda t: F.lrn(t, n, k, alpha, beta)  # noqa: E731
    expected = lrn_loop(x, n, k, alpha, beta)
    numpy.testing.assert_allclose(forward(op, [x], device), expected, rtol=1e-12)
    numpy.testing.assert_allclose(forward(op, [x], device, numpy.float32), expected, rtol=1e-5)
    check_grad(op, [x], device)


def test_lrn_window_width_is_visible_with_alpha_one(device):
    # With alpha=1, k=1 a window of 3 instead of 5 changes the output by far more than rounding.
    x = numpy.arange(1.0, 8.0).reshape(1, 7, 1, 1)
    five = forward(lambda t: F.lrn(t, 5, 1.0, 1.0, 0.75), [x], device)
    three = forward(lambda t: F.lrn(t, 3, 1.0, 1.0, 0.75), [x], device)
    numpy.testing.assert_allclose(five, lrn_loop(x, 5, 1.0, 1.0, 0.75), rtol=1e-12)
    assert numpy.abs(five - three).max() > 0.01
    # channel 3 sees channels 1..5: 1 + (4 + 9 + 16 + 25 + 36) = 91
    assert five[0, 3, 0, 0] == pytest.approx(4.0 / 91.0 ** 0.75, rel=1e-12)


def test_lrn_rejects_even_window():
    with pytest.raises(ValueError, match="odd"):
        F.lrn(Tensor(numpy.zeros((1, 4, 2, 2))), n=4)


# ---- dropout ----------------------------------------------------------------------------------

def test_dropout_is_inverted_and_its_gradient_uses_the_same_mask(device):
    minigrad.manual_seed(0)
    x = tensors([numpy.full((200, 100), 3.0)], device)[0]
    y = F.dropout(x, 0.5, training=True)
    values = y.numpy()
    assert set(numpy.unique(values)) == {0.0, 6.0}                  # kept units are scaled by 2
    assert abs((values == 0).mean() - 0.5) < 0.02
    g = numpy.random.default_rng(1).standard_normal(values.shape)
    y.backward(backend.to_device(g, device))
    numpy.testing.assert_array_equal(backend.to_device(x.grad, "cpu"), g * (values / 3.0))


def test_dropout_in_float16(device):
    x = Tensor(backend.to_device(numpy.ones((8, 8), numpy.float16), device), requires_grad=True)
    y = F.dropout(x, 0.5)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == numpy.float16
    assert set(numpy.unique(y.numpy())) <= {0.0, 2.0}


def test_dropout_is_identity_in_eval_and_rejects_bad_p(device):
    x = tensors([numpy.ones((4, 4))], device)[0]
    assert F.dropout(x, 0.5, training=False) is x
    with pytest.raises(ValueError, match="must be in"):
        F.dropout(x, 1.0)


# ---- softmax and loss -------------------------------------------------------------------------

def test_log_softmax(device, rng):
    x = rng.standard_normal((4, 6))
    check_grad(F.log_softmax, [x], device)
    expected = x - numpy.log(numpy.exp(x).sum(axis=1, keepdims=True))
    numpy.testing.assert_allclose(forward(F.log_softmax, [x], device), expected, rtol=1e-12)


def test_log_softmax_explains_a_wrong_shape():
    with pytest.raises(ValueError, match=r"log_softmax needs logits of shape \(N, classes\), got \(6,\)"):
        F.log_softmax(Tensor(numpy.zeros(6)))


@pytest.mark.parametrize("N,classes", [(1, 2), (5, 7)])
def test_cross_entropy(N, classes, device, rng):
    labels = backend.to_device(rng.integers(0, classes, N), device)
    check_grad(lambda x: F.cross_entropy(x, labels), [rng.standard_normal((N, classes))], device)


def test_cross_entropy_of_uniform_logits_is_log_classes(device):
    for classes in (2, 10, 1000):
        loss = forward(lambda x: F.cross_entropy(x, numpy.arange(3) % classes), [numpy.zeros((3, classes))],
                       device)
        assert float(loss) == pytest.approx(math.log(classes), rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits(device):
    x = numpy.array([[1000.0, 0.0, -1000.0], [0.0, 3000.0, 0.0]])
    loss = forward(lambda t: F.cross_entropy(t, numpy.array([0, 0])), [x], device, numpy.float32)
    assert numpy.isfinite(loss) and float(loss) == pytest.approx(1500.0)


def test_cross_entropy_explains_bad_labels():
    logits = Tensor(numpy.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        F.cross_entropy(logits, numpy.array([0, 3]))
    with pytest.raises(ValueError, match="integer labels"):
        F.cross_entropy(logits, numpy.array([0.0, 1.0]))


# ---- the engine -------------------------------------------------------------------------------

def test_backward_accumulates_and_handles_shared_inputs(device):
    x = tensors([numpy.array([2.0, 3.0])], device)[0]
    y = x * x + x                       # x reaches y along three paths
    y.sum().backward()
    (x * 4.0).sum().backward()          # a second backward adds to x.grad
    numpy.testing.assert_array_equal(backend.to_device(x.grad, "cpu"), [2 * 2 + 1 + 4, 2 * 3 + 1 + 4])


def test_no_grad_records_no_graph(device):
    x = tensors([numpy.ones(3)], device)[0]
    with minigrad.no_grad():
        y = (x * 2).sum()
    assert y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    assert minigrad.is_grad_enabled()


def test_backward_needs_scalar_or_gradient():
    x = Tensor(numpy.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="needs a scalar"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"gy has shape \(2,\) but the tensor has shape \(3,\)"):
        (x * 2).backward(numpy.ones(2))


def test_a_second_backward_through_a_freed_graph_is_refused():
    """Not a silent zero: h's Function is gone after the first backward, and a second
    backward through h would otherwise add nothing to w.grad."""
    w = Tensor(numpy.ones(3), requires_grad=True)
    h = w * 2
    first, second = h.sum(), (h * 3).sum()
    first.backward()
    for loss in (second, first):
        with pytest.raises(RuntimeError, match="an earlier backward\\(\\) has freed"):
            loss.backward()
    w.grad = None
    h = w * 2
    (h.sum() + (h * 3).sum()).backward()              # the way: add the losses first
    numpy.testing.assert_array_equal(w.grad, [8.0, 8.0, 8.0])


def test_a_parameters_gradient_has_its_dtype(device):
    """A float64 input through float32 weights: the weights' gradient is float32 still."""
    W = Tensor(backend.to_device(numpy.ones((2, 3), numpy.float32), device), requires_grad=True)
    x = Tensor(backend.to_device(numpy.ones((4, 3)), device))           # float64
    F.linear(x, W).sum().backward()
    assert W.grad.dtype == numpy.float32
    numpy.testing.assert_array_equal(backend.to_device(W.grad, "cpu"), numpy.full((2, 3), 4.0))


def test_transpose_takes_axes_as_arguments_or_one_tuple():
    x = Tensor(numpy.zeros((2, 3, 4)))
    assert x.transpose(2, 0, 1).shape == x.transpose((2, 0, 1)).shape == (4, 2, 3)
    assert x.transpose().shape == x.T.shape == (4, 3, 2)


def test_a_deep_chain_needs_no_recursion():
    x = Tensor(numpy.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    numpy.testing.assert_array_equal(x.grad, [1.0, 1.0])


def test_default_dtype_is_float32_and_float64_is_kept():
    assert Tensor([1.0, 2.0]).dtype == numpy.float32
    assert Tensor(numpy.zeros(2)).dtype == numpy.float64
    assert Tensor([1, 2]).dtype.kind == "i"
    x = Tensor(numpy.ones((1, 3, 8, 8), numpy.float32))
    W = Tensor(numpy.ones((2, 3, 3, 3), numpy.float32))
    assert F.lrn(F.max_pool2d(F.conv2d(x, W), 3, 2)).dtype == numpy.float32


def test_tensor_reports_its_device(device):
    t = Tensor(backend.to_device(numpy.zeros(2), device))
    assert t.device == device and t.to("cpu").device == "cpu"
    assert t.to(device) is t


def test_backward_skips_gradients_no_one_needs(device, rng):
    x = Tensor(backend.to_device(rng.standard_normal((1, 2, 5, 5)), device))   # no requires_grad
    W = tensors([rng.standard_normal((3, 2, 3, 3))], device)[0]
    y = F.conv2d(x, W)
    assert y._ctx.needs_grad == (False, True)
    y.sum().backward()
    assert x.grad is None and W.grad is not None


def test_a_scalar_parameters_gradient_is_an_array_that_clipping_scales(device):
    """0-d times 0-d gives a NumPy scalar, not an array: stored as the gradient, it could not
    be scaled in place, and clip_grad_norm left it as it was."""
    s = Tensor(backend.to_device(numpy.array(2.0), device), requires_grad=True)
    (s * s).backward()
    assert s.grad.shape == () and type(s.grad) is type(s.data)
    minigrad.optim.clip_grad_norm([s], 1.0)
    assert float(s.grad) == 1.0


def test_every_leaf_gets_a_gradient_of_its_own(device):
    """Add hands gy to both inputs, reshape a view of it: the leaves' gradients must still be
    separate arrays, apart from the caller's gy, since clip_grad_norm scales them in place."""
    a, b, c = tensors([numpy.ones(3), numpy.ones(3), numpy.ones((1, 3))], device)
    (a + b + c.reshape(3)).sum().backward()
    norm = minigrad.optim.clip_grad_norm([a, b, c], 1.0)
    assert float(norm) == pytest.approx(3.0)
    for t in (a, b, c):
        numpy.testing.assert_allclose(backend.to_device(t.grad, "cpu"), numpy.full(t.shape, 1 / 3))
    x = tensors([numpy.ones((2, 3))], device)[0]
    gy = backend.to_device(numpy.ones(6), device)
    x.reshape(6).backward(gy)
    x.grad *= 2.0
    numpy.testing.assert_array_equal(backend.to_device(gy, "cpu"), numpy.ones(6))


def test_only_floating_point_tensors_can_require_grad():
    """An integer leaf's gradient would be rounded to integers: 0.5 * x gave x.grad 0."""
    with pytest.raises(ValueError, match="requires_grad needs a floating-point tensor, not int"):
        Tensor([1, 2, 3], requires_grad=True)
    assert Tensor([1, 2, 3], requires_grad=True, dtype=numpy.float32).requires_grad


def test_a_numpy_array_on_the_left_gives_a_tensor():
    """NumPy would otherwise take the Tensor for a scalar and return an object array of them."""
    x = Tensor(numpy.ones(3), requires_grad=True)
    y = numpy.full(3, 2.0) * x + numpy.float64(1.0) - numpy.full(3, 2.0) / x
    assert isinstance(y, Tensor) and y.shape == (3,)
    y.sum().backward()
    numpy.testing.assert_array_equal(x.grad, [4.0, 4.0, 4.0])
    assert (numpy.ones((2, 3)) @ Tensor(numpy.ones((3, 1)))).shape == (2, 1)


def test_an_augmented_assignment_to_a_parameter_is_refused():
    """p -= lr * p.grad rebinds p to a new tensor: a hand-written update loop trained nothing."""
    w = Tensor(numpy.ones(3), requires_grad=True)
    with minigrad.no_grad(), pytest.raises(TypeError, match=r"p.data -= lr \* p.grad"):
        w -= 0.1 * w.data
    with pytest.raises(TypeError, match="a tensor that requires grad"):
        w *= 2.0
    loss = w * 2.0
    loss += w                                     # not a leaf: a new tensor, as loss + w
    loss.sum().backward()
    numpy.testing.assert_array_equal(w.grad, [3.0, 3.0, 3.0])
