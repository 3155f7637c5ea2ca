// Fused softmax-distillation losses on CUDA (same contract as csrc/cpu/softmax_kd.cpp).
//
// One block per row. Pass 1 reads the row once: every thread keeps an online softmax state
// (running max and exp-sum) for student/T, teacher/T and, for the hard term, student at
// temperature 1, plus the teacher-weighted dot product rescaled alongside; the block then
// merges the states. Pass 2, only when a gradient is wanted, re-reads the row (mostly from
// L2) and writes the gradient. No host synchronisation, no atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kdfast/cuda_convert.cuh"
#include "kdfast/softmax_kd_params.h"

namespace kdfast::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

// Loads go through the read-only cache; conversions are shared with the other kernels.
template <class T>
struct Codec {
  using Acc = decltype(to_acc(T()));
  static __device__ __forceinline__ Acc load(const T* p) { return to_acc(__ldg(p)); }
  static __device__ __forceinline__ T store(Acc v) { return from_acc<T>(v); }
};

template <class Acc> __device__ __forceinline__ Acc exp_(Acc x);
template <> __device__ __forceinline__ float exp_(float x) { return expf(x); }
template <> __device__ __forceinline__ double exp_(double x) { return exp(x); }
template <class Acc> __device__ __forceinline__ Acc log_(Acc x) { return log(x); }
template <> __device__ __forceinline__ float log_(float x) { return logf(x); }

template <class Acc> __device__ __forceinline__ Acc neg_inf() { return -INFINITY; }

// Running softmax statistics of a stream of values: max m and sum of exp(x - m).
template <class Acc>
struct Online {
  Acc m = neg_inf<Acc>();
  Acc z = 0;
  // Adds x; returns the factor the previous sum was rescaled by (for companion sums).
  __device__ __forceinline__ Acc add(Acc x, Acc& ex) {
    if (x > m) {
      const Acc alpha = m == neg_inf<Acc>() ? Acc(0) : exp_(m - x);
      z = z * alpha + Acc(1);
      m = x;
      ex = Acc(1);
      return alpha;
    }
    ex = x == neg_inf<Acc>() ? Acc(0) : exp_(x - m);
    z += ex;
    return Acc(1);
  }
};

// Folds the softmax state (m2, z2, c2) into (m, z, c); c is a companion sum scaled like z.
template <class Acc>
__device__ __forceinline__ void combine(Acc& m, Acc& z, Acc& c, Acc m2, Acc z2, Acc c2) {
  const Acc mn = m > m2 ? m : m2;
  const Acc a = mn == neg_inf<Acc>() ? Acc(0) : exp_(m - mn);
  const Acc b = mn == neg_inf<Acc>() ? Acc(0) : exp_(m2 - mn);
  z = z * a + z2 * b;
  c = c * a + c2 * b;
  m = mn;
}

// Merges (m, z, companion) triples across the block. Returns the block-wide result in all threads.
template <class Acc>
__device__ void merge_block(Acc& m, Acc& z, Acc& c, Acc* sm) {
  for (int off = 16; off > 0; off >>= 1) {
    combine(m, z, c, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, z, off),
            __shfl_xor_sync(0xffffffffu, c, off));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) {
    sm[warp] = m;
    sm[kWarps + warp] = z;
    sm[2 * kWarps + warp] = c;
  }
  __syncthreads();
  m = neg_inf<Acc>();
  z = 0;
  c = 0;
  // every thread merges the few warp results itself
  for (int w = 0; w < kWarps; ++w) combine(m, z, c, sm[w], sm[kWarps + w], sm[2 * kWarps + w]);
}

template <class Acc>
__device__ Acc sum_block(Acc v, Acc* sm) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();
  if (threadIdx.x % 32 == 0) sm[threadIdx.x / 32] = v;
  __syncthreads();
  Acc total = 0;
  for (int w = 0; w < kWarps; ++w) total += sm[w];
  return total;
}

template <class T>
__global__ void __launch_bounds__(kThreads) kd_loss_kernel(KdLossParams p) {
  using C = Codec<T>;
  using Acc = typename C::Acc;
  __shared__ Acc sm[3 * kWarps];
  const int64_t row = blockIdx.x;
  const int64_t V = p.cols;
  const T* s = static_cast<const T*>(p.student) + row * V;
  const T* t = static_cast<const T*>(p.teacher) + row * V;
  T* g = p.grad ? static_cast<T*>(p.grad) + row * V : nullptr;
  const Acc ws = static_cast<const Acc*>(p.soft_weight)[row];
  const bool hard = p.labels != nullptr;
  const Acc wh = hard ? static_cast<const Acc*>(p.hard_weight)[row] : Acc(0);
  const int64_t label = hard ? p.labels[row] : -1;
  const Acc inv_t = Acc(1) / static_cast<Acc>(p.temperature);
  const bool mse = p.kind == 2, kl = p.kind == 0;
  const bool separate_hard = hard && (mse || inv_t != Acc(1));

  Online<Acc> st, tt, s1;
  Acc dot = 0, sq = 0, unused = 0, ex;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    const Acc a = C::load(s + j), b = C::load(t + j);
    if (mse) {
      const Acc d = a == b ? Acc(0) : a - b;
      sq += d * d;
    } else {
      st.add(a * inv_t, ex);
      const Acc alpha = tt.add(b * inv_t, ex);
      const Acc d = kl ? (b - a) * inv_t : -a * inv_t;
      dot = dot * alpha + (ex > Acc(0) ? ex * d : Acc(0));
    }
    if (separate_hard) s1.add(a, ex);
  }
  bool dead = false;
  Acc soft = 0;
  if (mse) {
    soft = sum_block(sq, sm);
  } else {
    merge_block(st.m, st.z, unused, sm);
    merge_block(tt.m, tt.z, dot, sm);
    dead = st.m == neg_inf<Acc>() || tt.m == neg_inf<Acc>();
    soft = kl ? dot / tt.z + (log_(st.z) - log_(tt.z)) + (st.m - tt.m) : dot / tt.z + st.m + log_(st.z);
  }
  if (separate_hard) {
    unused = 0;
    merge_block(s1.m, s1.z, unused, sm);
    dead = dead || s1.m == neg_inf<Acc>();
  } else {
    s1 = st;
  }
  const bool skip = dead || (ws == Acc(0) && wh == Acc(0));
  if (threadIdx.x == 0) {
    Acc loss = ws * soft;
    if (hard) loss += wh * (s1.m + log_(s1.z) - C::load(s + label));
    static_cast<Acc*>(p.loss)[row] = skip ? Acc(0) : loss;
  }
  if (!g) return;
  // exp(x - m) / z rounds once less than exp(x - lse): keep the shift and the sum apart.
  const Acc inv_zs = Acc(1) / st.z, inv_zt = Acc(1) / tt.z, inv_z1 = Acc(1) / s1.z;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    Acc gj = 0;
    if (!skip) {
      const Acc a = C::load(s + j), b = C::load(t + j);
      if (mse) {
        gj = Acc(2) * ws * (a == b ? Acc(0) : a - b);
      } else {
        gj = ws * inv_t * (exp_(a * inv_t - st.m) * inv_zs - exp_(b * inv_t - tt.m) * inv_zt);
      }
      if (hard) gj += wh * (exp_(a - s1.m) * inv_z1 - (j == label ? Acc(1) : Acc(0)));
    }
    g[j] = C::store(gj);
  }
}

}  // namespace

cudaError_t launch_kd_loss(const KdLossParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.rows)), block(kThreads);
  switch (p.dtype) {
    case Dtype::kFloat32: kd_loss_kernel<float><<<grid, block, 0, stream>>>(p); break;
    case Dtype::kFloat64: kd_loss_kernel<double><<<grid, block, 0, stream>>>(p); break;
    case Dtype::kBFloat16: kd_loss_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(p); break;
    case Dtype::kFloat16: kd_loss_kernel<__half><<<grid, block, 0, stream>>>(p); break;
  }
  return cudaGetLastError();
}

}  // namespace kdfast::cuda
