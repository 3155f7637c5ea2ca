// ETD importance scoring on the GPU: out[u] = sum over rows and over the columns of unit u of
// act * grad (see csrc/include/kdfast/importance_rows.h for why these sums are the Taylor
// scores). Two kernels, both deterministic:
//   1. column partials: block (x: 128 columns, y: a chunk of >= 256 rows); each
//      thread walks its column down the chunk (coalesced across the warp) in fp32/fp64;
//   2. unit sums: one block per unit reduces its chunks x columns partials in a fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kdfast/importance_cuda.h"

namespace kdfast::cuda {
namespace {

template <class T>
struct Load;
template <>
struct Load<float> {
  using Acc = float;
  static __device__ __forceinline__ float f(float v) { return v; }
};
template <>
struct Load<double> {
  using Acc = double;
  static __device__ __forceinline__ double f(double v) { return v; }
};
template <>
struct Load<__nv_bfloat16> {
  using Acc = float;
  static __device__ __forceinline__ float f(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <>
struct Load<__half> {
  using Acc = float;
  static __device__ __forceinline__ float f(__half v) { return __half2float(v); }
};

constexpr int kCols = 128;
constexpr int kReduceThreads = 256;

template <class T>
__global__ void column_partials(const T* __restrict__ a, const T* __restrict__ g,
                                typename Load<T>::Acc* __restrict__ partial, int64_t rows,
                                int64_t K, int64_t per_chunk) {
  using Acc = typename Load<T>::Acc;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  if (k >= K) return;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * per_chunk;
  const int64_t r1 = r0 + per_chunk < rows ? r0 + per_chunk : rows;
  Acc s = 0;
  for (int64_t r = r0; r < r1; ++r) s += Load<T>::f(a[r * K + k]) * Load<T>::f(g[r * K + k]);
  partial[chunk * K + k] = s;
}

template <class Acc>
__global__ void unit_sums(const Acc* __restrict__ partial, Acc* __restrict__ out, int64_t chunks,
                          int64_t K, int64_t per_unit) {
  __shared__ Acc buf[kReduceThreads];
  const int64_t u = blockIdx.x;
  const int64_t n = chunks * per_unit;
  Acc s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t c = i / per_unit, j = i - c * per_unit;
    s += partial[c * K + u * per_unit + j];
  }
  buf[threadIdx.x] = s;
  __syncthreads();
  for (int stride = kReduceThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[u] = buf[0];
}

template <class T>
cudaError_t launch(const void* a, const void* g, void* partial, void* out, int64_t rows,
                   int64_t K, int64_t units, cudaStream_t stream) {
  using Acc = typename Load<T>::Acc;
  const int64_t chunks = unit_taylor_chunks(rows);
  Acc* p = static_cast<Acc*>(partial);
  if (chunks > 0 && K > 0) {
    const dim3 grid(static_cast<unsigned>((K + kCols - 1) / kCols), static_cast<unsigned>(chunks));
    column_partials<T><<<grid, kCols, 0, stream>>>(static_cast<const T*>(a),
                                                   static_cast<const T*>(g), p, rows, K,
                                                   unit_taylor_rows_per_chunk(rows));
  }
  if (units > 0) {
    unit_sums<Acc><<<static_cast<unsigned>(units), kReduceThreads, 0, stream>>>(
        p, static_cast<Acc*>(out), chunks, K, K / units);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t unit_taylor_launch(const void* a, const void* g, void* partial, void* out,
                               int64_t rows, int64_t K, int64_t units, Dtype dtype,
                               cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return launch<float>(a, g, partial, out, rows, K, units, stream);
    case Dtype::kFloat64: return launch<double>(a, g, partial, out, rows, K, units, stream);
    case Dtype::kBFloat16: return launch<__nv_bfloat16>(a, g, partial, out, rows, K, units, stream);
    case Dtype::kFloat16: return launch<__half>(a, g, partial, out, rows, K, units, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kdfast::cuda
