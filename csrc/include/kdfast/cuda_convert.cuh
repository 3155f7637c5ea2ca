// Storage <-> accumulation conversions shared by the CUDA kernels: float, double, bfloat16
// and half load to float (double stays double); stores round to nearest even.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace kdfast::cuda {

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T from_acc(float x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }

template <class T>
__device__ __forceinline__ double from_acc(double x);
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }

}  // namespace kdfast::cuda
