// Local response normalization across channels (paper section 3.3), forward and backward.
// The NumPy versions in minigrad/reference.py are the specification.
//
//   window(c) = max(0, c - n/2) ... min(C - 1, c + n/2)        (n odd, n/2 rounded down)
//   scale[c]  = k + alpha * sum_{j in window(c)} x[j]^2        (alpha NOT divided by n: the paper's form)
//   y[c]      = x[c] * scale[c]^-beta
//   x, y, scale, gy, gx  (N, C, H, W); channel c of pixel (image, iy, ix) is H*W elements after channel c-1.
//
// Both kernels give one thread a whole pixel column (image, iy, ix) and walk down its C channels,
// keeping the window sum current: add the channel that enters the window, subtract the one that
// leaves. The sum is kept in double: each add and subtract rounds, and in float those errors
// pile up along the channels; after one large activation the leftover of its square can swamp
// the small squares that follow. Neighbouring threads take neighbouring pixels, so every
// channel step of a warp reads contiguous memory.
//
// Both kernels are grid-stride loops: thread t of the grid handles items t, t + (threads in the
// grid), ... Indices are 32-bit ints; minigrad/cuda.py refuses arrays too large for them.

template <typename T>
__global__ void lrn_forward(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ scale,
                            int N, int C, int H, int W, int n, T k, T alpha, T beta)
{
    // One thread per pixel (image, iy, ix), for c = 0 ... C-1:
    //   scale[c] = k + alpha * sum_{j in window(c)} x[j]^2,   y[c] = x[c] * scale[c]^-beta
    const int count = N * H * W;
    const int half = n / 2;
    const int step = H * W;                                               // from channel c to c + 1
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < count;
         index += blockDim.x * gridDim.x) {
        const int image = index / step;
        const int first = image * C * step + index % step;                // x[image, 0, iy, ix]
        double window = 0;                                                // sum of x[j]^2, j in window(c)
        for (int j = 0; j < min(half, C); ++j) {                          // the part of window(0) below n/2
            const T v = x[first + j * step];
            window += v * v;
        }
        for (int c = 0; c < C; ++c) {
            const int enter = c + half, leave = c - half - 1;
            if (enter < C) {
                const T v = x[first + enter * step];
                window += v * v;
            }
            if (leave >= 0) {
                const T v = x[first + leave * step];
                window -= v * v;
            }
            const int at = first + c * step;                              // [image, c, iy, ix]
            const T s = k + alpha * T(window);
            scale[at] = s;
            y[at] = x[at] * pow(s, -beta);
        }
    }
}

template <typename T>
__global__ void lrn_backward(const T* __restrict__ gy, const T* __restrict__ x,
                             const T* __restrict__ y, const T* __restrict__ scale, T* __restrict__ gx,
                             int N, int C, int H, int W, int n, T alpha, T beta)
{
    // One thread per pixel (image, iy, ix), for c = 0 ... C-1:
    //   gx[c] = gy[c] * scale[c]^-beta - 2*alpha*beta * x[c] * sum_{j in window(c)} gy[j] * y[j] / scale[j]
    // The first term is y[c]'s direct dependence on x[c]; the sum collects y[j]'s dependence through
    // scale[j] for every j whose window holds c, and "c in window(j)" is "j in window(c)".
    const int count = N * H * W;
    const int half = n / 2;
    const int step = H * W;                                               // from channel c to c + 1
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < count;
         index += blockDim.x * gridDim.x) {
        const int image = index / step;
        const int first = image * C * step + index % step;                // [image, 0, iy, ix]
        double window = 0;                                                // sum of gy*y/scale over window(c)
        for (int j = 0; j < min(half, C); ++j) {                          // the part of window(0) below n/2
            const int at = first + j * step;
            window += gy[at] * y[at] / scale[at];
        }
        for (int c = 0; c < C; ++c) {
            const int enter = c + half, leave = c - half - 1;
            if (enter < C) {
                const int at = first + enter * step;
                window += gy[at] * y[at] / scale[at];
            }
            if (leave >= 0) {
                const int at = first + leave * step;
                window -= gy[at] * y[at] / scale[at];
            }
            const int at = first + c * step;                              // [image, c, iy, ix]
            gx[at] = gy[at] * pow(scale[at], -beta) - T(2) * alpha * beta * x[at] * T(window);
        }
    }
}
