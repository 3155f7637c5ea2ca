// Device helpers shared by the CUDA loss kernels: stores from the accumulation type, fast
// exp/log per accumulation type, and warp-wide (32-lane) sums and maxima.
#pragma once

#include <cuda_runtime.h>

#include "kdfast/cuda_convert.cuh"

namespace kdfast::cuda {

template <class T, class Acc>
__device__ __forceinline__ void store(T* p, Acc v) { *p = from_acc<T>(v); }
template <>
__device__ __forceinline__ void store<double, double>(double* p, double v) { *p = v; }

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return __logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

template <class Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class Acc>
__device__ __forceinline__ Acc warp_max(Acc v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace kdfast::cuda
