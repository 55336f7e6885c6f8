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
                                  T* __restrict__ gx, int N, int C, int H, int W, int kh, int kw,
                                  int sy, int sx, int OH, int OW)
{
    // One thread per input pixel (n, c, iy, ix), gathering as col2im does from the windows over it:
    //   gx[n, c, iy, ix] = sum of gy[n, c, oy, ox] over the windows with argmax[n, c, oy, ox] == iy*W + ix,
    //   oy = (iy < kh ? 0 : (iy - kh) / sy + 1) ... min(iy / sy, OH - 1), and ox likewise.
    // Each gx entry is written by one thread only: no atomics, and the sum has a fixed order.
    const int count = N * C * H * W;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < count;
         index += blockDim.x * gridDim.x) {
        const int ix = index % W;
        const int iy = (index / W) % H;
        const int nc = index / (W * H);                                   // n*C + c
        const int oy_first = iy < kh ? 0 : (iy - kh) / sy + 1;
        const int oy_last = min(iy / sy, OH - 1);
        const int ox_first = ix < kw ? 0 : (ix - kw) / sx + 1;
        const int ox_last = min(ix / sx, OW - 1);
        const T* gy_plane = gy + nc * OH * OW;                            // gy[n, c]  (OH, OW)
        const int* argmax_plane = argmax + nc * OH * OW;                  // argmax[n, c]  (OH, OW)
        const int pixel = iy * W + ix;
        T sum = 0;
        for (int oy = oy_first; oy <= oy_last; ++oy) {
            for (int ox = ox_first; ox <= ox_last; ++ox) {
                if (argmax_plane[oy * OW + ox] == pixel) {
                    sum += gy_plane[oy * OW + ox];
                }
            }
        }
        gx[index] = sum;
    }
}
