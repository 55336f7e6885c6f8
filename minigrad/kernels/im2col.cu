// im2col and its adjoint col2im: the unfolding that turns a convolution into one matrix product
// (minigrad.functional.Conv2d). The NumPy versions in minigrad/reference.py are the specification.
//
//   x   (N, C, H, W)
//   col (C*kh*kw, N*OH*OW): one matrix for the whole batch, so that the convolution is one GEMM
//   col[(c*kh + i)*kw + j, (n*OH + oy)*OW + ox] = x[n, c, oy*sy - ph + i, ox*sx - pw + j]
//                                                 (0 where that pixel lies in the padding)
//
// Both kernels are grid-stride loops: thread t of the grid handles items t, t + (threads in the
// grid), t + 2*(threads in the grid), ... so any grid size covers any problem size. Indices are
// 32-bit ints; minigrad/cuda.py refuses arrays too large for them.

template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ col,
                       int N, int C, int H, int W, int kh, int kw,
                       int sy, int sx, int ph, int pw, int OH, int OW)
{
    // One thread per window (n, c, oy, ox), numbered c slowest, then n, oy, ox:
    //   index = c*N*OH*OW + (n*OH + oy)*OW + ox = c*columns + (the window's column of col).
    // It copies the window's kh*kw pixels into its column, rows (c*kh + i)*kw + j. Consecutive
    // threads (ox fastest, then oy, then n) have consecutive columns, so for each (i, j) a warp
    // writes contiguous entries of one row of col, across the boundaries between images too.
    const int columns = N * OH * OW;                                      // the length of a row of col
    const int count = C * columns;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < count;
         index += blockDim.x * gridDim.x) {
        const int ox = index % OW;
        const int oy = (index / OW) % OH;
        const int n = (index / (OW * OH)) % N;
        const int c = index / columns;
        const T* x_plane = x + (n * C + c) * H * W;                       // x[n, c]  (H, W)
        T* col_entry = col + c * kh * kw * columns + index % columns;     // col[c*kh*kw, (n*OH + oy)*OW + ox]
        for (int i = 0; i < kh; ++i) {
            for (int j = 0; j < kw; ++j) {
                const int iy = oy * sy - ph + i;
                const int ix = ox * sx - pw + j;
                const bool inside = 0 <= iy && iy < H && 0 <= ix && ix < W;
                *col_entry = inside ? x_plane[iy * W + ix] : T(0);
                col_entry += columns;                                     // the next row of col
            }
        }
    }
}

template <typename T>
__global__ void col2im(const T* __restrict__ col, T* __restrict__ gx,
                       int N, int C, int H, int W, int kh, int kw,
                       int sy, int sx, int ph, int pw, int OH, int OW)
{
    // One thread per input pixel (n, c, iy, ix): a gather of every column entry im2col copied
    // from that pixel,
    //   gx[n, c, iy, ix] = sum over the windows (oy, ox) that cover it of
    //                      col[(c*kh + i)*kw + j, (n*OH + oy)*OW + ox],
    //   with i = iy + ph - oy*sy, j = ix + pw - ox*sx.
    // Each gx entry is written by one thread only: no atomics, and the sum has a fixed order.
    // Consecutive threads take consecutive ix, so a warp's writes to gx are contiguous; with
    // stride 1 they also read neighbouring ox of the same row j at each step of the loop.
    const int columns = N * OH * OW;                                      // the length of a row of col
    const int count = N * C * H * W;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < count;
         index += blockDim.x * gridDim.x) {
        const int ix = index % W;
        const int iy = (index / W) % H;
        const int c = (index / (W * H)) % C;
        const int n = index / (W * H * C);
        const int py = iy + ph, px = ix + pw;                             // the pixel in the padded image
        // Window oy covers rows oy*sy ... oy*sy + kh - 1, so the windows over row py are
        // oy = ceil((py - kh + 1) / sy) ... floor(py / sy), clipped to 0 ... OH - 1.
        const int oy_first = py < kh ? 0 : (py - kh) / sy + 1;
        const int oy_last = min(py / sy, OH - 1);
        const int ox_first = px < kw ? 0 : (px - kw) / sx + 1;
        const int ox_last = min(px / sx, OW - 1);
        const T* col_rows = col + c * kh * kw * columns + n * OH * OW;    // col[c*kh*kw, n*OH*OW]
        T sum = 0;
        for (int oy = oy_first; oy <= oy_last; ++oy) {
            for (int ox = ox_first; ox <= ox_last; ++ox) {
                const int i = py - oy * sy, j = px - ox * sx;             // the pixel's place in that window
                sum += col_rows[(i * kw + j) * columns + oy * OW + ox];
            }
        }
        gx[index] = sum;
    }
}
