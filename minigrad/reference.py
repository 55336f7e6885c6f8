"""The NumPy implementations of the three layers that get hand-written CUDA kernels.

These are the specification: `minigrad/kernels/*.cu` must compute exactly these functions, and
the tests compare them. They are vectorized (no Python loop over pixels or channels; the only
loops run over the offsets of a window: kh*kw for convolution and pooling, n for LRN) and kept
as plain as possible; they are also what the CPU trains with, so two of them trade some
plainness for speed where a comment says so (LRN's power, pooling's arithmetic select).

Layouts (N images, C channels, H x W pixels):
    im2col:   x (N, C, H, W)  ->  col (C*kh*kw, N*OH*OW), row (c*kh + i)*kw + j,
              column (n*OH + oy)*OW + ox: one matrix for the whole batch, so a convolution is
              one large GEMM rather than N small ones
    pooling:  argmax holds, for each output, the flat index y*W + x of the chosen input pixel
    LRN:      scale (N, C, H, W) = k + alpha * (sum of squares over the channel window)
"""
import numpy


def conv_output_size(size, kernel, stride, pad):
    """Output length of a window of `kernel` moved by `stride` over `size + 2*pad` (floor mode)."""
    if stride < 1 or pad < 0:
        raise ValueError(f"a window needs a stride at least 1 and a padding at least 0, got "
                         f"stride {stride} and padding {pad}")
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"a window of {kernel} with stride {stride} and padding {pad} does not fit "
                         f"an input of size {size}; use a larger input or a smaller window")
    return out


def _windows(x, kh, kw, sy, sx, OH, OW):
    """Read-only view (N, C, kh, kw, OH, OW) of every window position of x; no copy."""
    N, C, H, W = x.shape
    s = x.strides
    return numpy.lib.stride_tricks.as_strided(
        x, shape=(N, C, kh, kw, OH, OW),
        strides=(s[0], s[1], s[2], s[3], s[2] * sy, s[3] * sx), writeable=False)


def im2col(x, kh, kw, sy, sx, ph, pw):
    """Unfold every kh x kw window of x (zero padded by ph, pw) into a column.

    col[(c*kh + i)*kw + j, (n*OH + oy)*OW + ox] = x_padded[n, c, oy*sy + i, ox*sx + j]
    """
    N, C, H, W = x.shape
    OH, OW = conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)
    x_padded = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = _windows(x_padded, kh, kw, sy, sx, OH, OW)      # (N, C, kh, kw, OH, OW) view
    col = col.transpose(1, 2, 3, 0, 4, 5)                  # (C, kh, kw, N, OH, OW) view
    return col.reshape(C * kh * kw, N * OH * OW)           # the copy happens here


def col2im(col, x_shape, kh, kw, sy, sx, ph, pw):
    """The adjoint of im2col: add every column entry back onto the pixel it was read from."""
    N, C, H, W = x_shape
    OH, OW = conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)
    col = col.reshape(C, kh, kw, N, OH, OW)
    # Sum in col's own (C, N) order, so each += walks both arrays in memory order; one
    # transpose at the end gives (N, C, H, W).
    gx = numpy.zeros((C, N, H + 2 * ph, W + 2 * pw), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            gx[:, :, i:i + sy * OH:sy, j:j + sx * OW:sx] += col[:, i, j]   # (C, N, OH, OW)
    return gx[:, :, ph:ph + H, pw:pw + W].transpose(1, 0, 2, 3)


def im2col_images_last(x, kh, kw, sy, sx, ph, pw):
    """im2col with the columns in (oy, ox, n) order, the batch innermost (the layout in which
    cuda-convnet kept its images):

        col[(c*kh + i)*kw + j, (oy*OW + ox)*N + n] = x_padded[n, c, oy*sy + i, ox*sx + j]

    The same numbers as im2col. Each copy below moves runs of N values (OW*N with stride 1)
    where im2col's move runs of OW, and on small maps NumPy's loop overhead per run is what
    costs: 1.1 instead of 5.1 ms for conv3 of the small preset (2 cores, batch 128). minigrad's
    convolution uses this layout on the CPU; the CUDA kernels follow im2col.
    """
    N, C, H, W = x.shape
    OH, OW = conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)
    xt = numpy.zeros((C, H + 2 * ph, W + 2 * pw, N), x.dtype)     # padded, images last
    xt[:, ph:ph + H, pw:pw + W] = x.transpose(1, 2, 3, 0)
    col = numpy.empty((C, kh, kw, OH, OW, N), x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, i, j] = xt[:, i:i + sy * OH:sy, j:j + sx * OW:sx]   # (C, OH, OW, N)
    return col.reshape(C * kh * kw, OH * OW * N)


def col2im_images_last(col, x_shape, kh, kw, sy, sx, ph, pw):
    """The adjoint of im2col_images_last: gx (N, C, H, W) from col (C*kh*kw, OH*OW*N)."""
    N, C, H, W = x_shape
    OH, OW = conv_output_size(H, kh, sy, ph), conv_output_size(W, kw, sx, pw)
    col = col.reshape(C, kh, kw, OH, OW, N)
    gx = numpy.zeros((C, H + 2 * ph, W + 2 * pw, N), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            gx[:, i:i + sy * OH:sy, j:j + sx * OW:sx] += col[:, i, j]     # (C, OH, OW, N)
    return gx[:, ph:ph + H, pw:pw + W].transpose(3, 0, 1, 2)


def max_pool_forward(x, kh, kw, sy, sx):
    """y[n, c, oy, ox] = max of the kh x kw window at (oy*sy, ox*sx); no padding, floor mode.

    Returns y and argmax, the flat index iy*W + ix of the first maximum in row-major window
    order (as numpy.argmax: a NaN counts as the largest value).
    """
    N, C, H, W = x.shape
    OH, OW = conv_output_size(H, kh, sy, 0), conv_output_size(W, kw, sx, 0)
    y, k = None, numpy.zeros((N, C, OH, OW), numpy.int32)   # k: offset i*kw + j of the maximum
    for i in range(kh):                                    # one strided view per window offset
        for j in range(kw):
            v = x[:, :, i:i + sy * (OH - 1) + 1:sy, j:j + sx * (OW - 1) + 1:sx]   # (N, C, OH, OW)
            if y is None:
                y = v.copy()
                continue
            better = ~(v <= y)                     # v > y, or v or y is NaN: strict, so the
            better &= y == y                       # first max stays; a NaN y is never replaced
            k += better * (numpy.int32(i * kw + j) - k)   # arithmetic, not a masked copy: faster
            numpy.maximum(y, v, out=y)             # NaN propagates, as in the choice above
    iy = numpy.arange(OH)[:, None] * sy + k // kw                      # (N, C, OH, OW)
    ix = numpy.arange(OW)[None, :] * sx + k % kw
    return y, (iy * W + ix).astype(numpy.int32)


def max_pool_backward(gy, argmax, x_shape, kh, kw, sy, sx):
    """gx[n, c, p] = sum of gy over the windows whose maximum was pixel p.

    argmax alone says where each gradient goes, so the window geometry (kh, kw, sy, sx) is unused
    here; the CUDA kernel needs it to gather, for each pixel, from only the windows over it.
    """
    N, C, H, W = x_shape
    plane = numpy.arange(N * C).reshape(N, C, 1, 1) * (H * W)         # offset of each (n, c) plane
    gx = numpy.bincount((plane + argmax).ravel(), weights=gy.ravel(), minlength=N * C * H * W)
    return gx.astype(gy.dtype).reshape(x_shape)


def _channel_window_sum(a, n):
    """s[:, c] = sum of a[:, j] for max(0, c - n//2) <= j <= min(C - 1, c + n//2)."""
    C = a.shape[1]
    s = numpy.zeros_like(a)
    reach = min(n // 2, C - 1)                    # offsets beyond the channels reach nothing
    for d in range(-reach, reach + 1):            # one shifted slice per window offset
        s[:, max(0, -d):C - max(0, d)] += a[:, max(0, d):C - max(0, -d)]
    return s


def lrn_forward(x, n, k, alpha, beta):
    """Local response normalization across channels, the paper's form (section 3.3):

        scale[c] = k + alpha * sum_{j = max(0, c - n//2)}^{min(C-1, c + n//2)} x[j]^2
        y[c]     = x[c] * scale[c] ** -beta

    Returns y and scale (which the backward pass reuses).
    """
    scale = k + alpha * _channel_window_sum(x * x, n)
    return x * _negative_power(scale, beta), scale


def _negative_power(s, beta):
    """s ** -beta, for s > 0. The paper's beta = 0.75 goes through two square roots,
    s ** -0.75 = 1 / (sqrt(s) * sqrt(sqrt(s))), which NumPy vectorizes: a quarter of the time of
    a general power (1.9 against 7.2 ms for 1.1M float32 values), within 4 ulps of it (equal in
    half of 2M values drawn from 1e-3 to 1e6)."""
    if beta == 0.75:
        root = numpy.sqrt(s)
        return 1 / (root * numpy.sqrt(root))
    return s ** -beta


def lrn_backward(gy, x, y, scale, n, alpha, beta):
    """dL/dx[c] = gy[c] * scale[c]**-beta
                  - 2 * alpha * beta * x[c] * sum_{j: c in window(j)} gy[j] * y[j] / scale[j]

    The window is symmetric, so "c in window(j)" is "j in window(c)": the same channel sum.
    """
    return gy * _negative_power(scale, beta) - \
        2 * alpha * beta * x * _channel_window_sum(gy * y / scale, n)
