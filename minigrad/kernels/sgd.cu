// The paper's SGD update (section 5) of one parameter array, in one pass over its memory:
//
//   v <- momentum * v - (weight_decay * lr) * w - lr * g
//   w <- w + v
//
// minigrad/optim.py's SGD._update is the specification. On a GPU it is six array operations
// (each a kernel launch, each reading its arrays from memory and writing one back: 15 array
// passes); this kernel reads w, g and v once and writes w and v once (5 passes).
//
// The result is the same, bit for bit: the same six operations on every value (three products,
// two subtractions, one addition), each rounded to T, in the same order. The products go through
// mul(), CUDA's multiply that always rounds: written as a * b - c, the compiler may fuse a
// product and the subtraction after it into one multiply-add, rounded once instead of twice,
// which is closer to the exact value but no longer NumPy's float32 arithmetic.
// One exception: CuPy compiles every kernel, its own too, with -ftz=true, so a float32 result
// below 2^-126 (a subnormal number) becomes 0 on the GPU where NumPy keeps it. A weight or
// velocity that small changes nothing a network computes.
//
// One thread per value, grid-stride: thread t of the grid updates values t, t + (threads in the
// grid), ... Indices are 32-bit ints; minigrad/cuda.py refuses arrays too large for them.

__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__global__ void sgd_update(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ v,
                           int count, T momentum, T decay_lr, T lr)
{
    // One thread per value i:   v[i] = momentum * v[i] - decay_lr * w[i] - lr * g[i];   w[i] += v[i]
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += blockDim.x * gridDim.x) {
        T velocity = mul(v[i], momentum);
        velocity = velocity - mul(w[i], decay_lr);
        velocity = velocity - mul(g[i], lr);
        v[i] = velocity;
        w[i] = w[i] + velocity;
    }
}
