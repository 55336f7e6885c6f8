// Just enough CUDA for g++ to compile minigrad/kernels/*.cu for the CPU, so that the tests run
// the kernels' own code without a GPU (tests/cuda_emulator.py includes this, then the .cu file).
//
// The emulator calls the kernel once per thread, one thread after the other, after setting
// blockIdx and threadIdx. That is faithful for kernels whose threads never wait for each other
// (no __shared__ memory, no __syncthreads), which is all of minigrad's.
#pragma once

#include <algorithm>
#include <cmath>

#define __global__
#define __device__
#define __forceinline__ inline
// __restrict__ is a g++ keyword already.

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// CUDA's built-in variables; the launcher sets them before each call.
static dim3 gridDim, blockDim, blockIdx, threadIdx;

// CUDA's multiplications that round their product (never fused into a multiply-add); g++ with
// -std=c++17 contracts nothing either.
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }

// CUDA has these for int, float and double in device code without any include.
using std::isnan;
using std::min;
using std::pow;
