// Max pooling (paper section 3.4: overlapping 3x3 windows, stride 2), forward and backward.
// The NumPy versions in minigrad/reference.py are the specification.
//
//   x, gx        (N, C, H, W)
//   y, gy        (N, C, OH, OW),  OH = (H - kh) / sy + 1, OW = (W - kw) / sx + 1   (no padding)
//   argmax       (N, C, OH, OW) int, the flat index iy*W + ix in x[n, c] of the window's maximum
//
// Both kernels are grid-stride loops: thread t of the grid handles items t, t + (threads in the
// grid), ... so any grid size covers any problem size. Indices are 32-bit ints; minigrad/cuda.py
// refuses arrays too large for them.

template <typename T>
__global__ void max_pool_forward(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax,
                                 int N, int C, int H, int W, int kh, int kw,
                                 int sy, int sx, int OH, int OW)
{
    // One thread per output (n, c, oy, ox):
    //   y[n, c, oy, ox] = max_{i < kh, j < kw} x[n, c, oy*sy + i, ox*sx + j]
    // scanning the window row by row and keeping the FIRST maximum (strict >), as numpy.argmax
    // does. As there, a NaN counts as the largest value, so a diverged network shows NaN.
    const int count = N * C * OH * OW;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < count;
         index += blockDim.x * gridDim.x) {
        const int ox = index % OW;
        const int oy = (index / OW) % OH;
        const int nc = index / (OW * OH);                                 // n*C + c
        const T* x_plane = x + nc * H * W;                                // x[n, c]  (H, W)
        int best = oy * sy * W + ox * sx;                                 // the window's top-left pixel
        T best_value = x_plane[best];
        for (int i = 0; i < kh; ++i) {
            for (int j = 0; j < kw; ++j) {
                const int p = (oy * sy + i) * W + ox * sx + j;
                const T value = x_plane[p];
                if (value > best_value || (isnan(value) && !isnan(best_value))) {
                    best = p;
                    best_value = value;
                }
            }
        }
        y[index] = best_value;
        argmax[index] = best;
    }
}

template <typename T>
__global__ void max_pool_backward(const T* __restrict__ gy, const int* __restrict__ argmax,
                                  T* __restrict__ gx, int N, int C, int H, int W, int OH, int OW)
{
    // One thread per output (n, c, oy, ox): sends its gradient to the pixel that was the maximum,
    //   gx[n, c, argmax[n, c, oy, ox]] += gy[n, c, oy, ox],   gx zeroed before the launch.
    // Overlapping windows can choose the same pixel, so the add is atomic (at most
    // ceil(kh/sy) * ceil(kw/sx) adds meet on one pixel, 4 for AlexNet's 3x3 stride 2; their
    // order, and so the last bit of a float sum, can vary from run to run). A gather, one thread
    // per input pixel as in col2im, would need the window size and stride, which
    // max_pool_backward(gy, argmax, x_shape) does not receive.
    const int count = N * C * OH * OW;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < count;
         index += blockDim.x * gridDim.x) {
        const int nc = index / (OW * OH);                                 // n*C + c
        atomicAdd(&gx[nc * H * W + argmax[index]], gy[index]);
    }
}
