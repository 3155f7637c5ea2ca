// Fused softmax-distillation losses on CUDA (same contract and edges as
// csrc/include/kdfast/softmax_kd_row.h, the CPU row; kdfast/reference/softmax_kd.py defines them).
//
// One block per row, three passes over the row (the later ones mostly from L2): pass 1 finds
// the student and teacher maxima (NaN ignored) and counts the -inf entries (a row of only
// -inf is masked; NaN is not -inf); pass 2 sums the exponentials with the final maxima,
// shifted BEFORE scaling by 1/T so that logits near the float limit do not overflow; pass 3,
// only when a gradient is wanted, writes it. No host synchronisation, no atomics.
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

// x - m, with +inf - +inf taken as 0 (the +inf entries of a row whose maximum is +inf).
template <class Acc>
__device__ __forceinline__ Acc shift(Acc x, Acc m) { return x == m ? Acc(0) : x - m; }

// NaN-ignoring maximum (a NaN operand never wins).
template <class Acc>
__device__ __forceinline__ Acc max_(Acc a, Acc b) { return b > a ? b : a; }

// Block-wide sum / max; every thread gets the result. sm: kWarps entries of shared memory.
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

template <class Acc>
__device__ Acc max_block(Acc v, Acc* sm) {
  for (int off = 16; off > 0; off >>= 1) v = max_(v, __shfl_xor_sync(0xffffffffu, v, off));
  __syncthreads();
  if (threadIdx.x % 32 == 0) sm[threadIdx.x / 32] = v;
  __syncthreads();
  Acc m = neg_inf<Acc>();
  for (int w = 0; w < kWarps; ++w) m = max_(m, sm[w]);
  return m;
}

template <class T>
__global__ void __launch_bounds__(kThreads) kd_loss_kernel(KdLossParams p) {
  using C = Codec<T>;
  using Acc = typename C::Acc;
  __shared__ Acc sm[kWarps];
  const int64_t row = blockIdx.x;
  const int64_t V = p.cols;
  const T* s = static_cast<const T*>(p.student) + row * V;
  const T* t = static_cast<const T*>(p.teacher) + row * V;
  T* g = p.grad ? static_cast<T*>(p.grad) + row * V : nullptr;
  const Acc ws = static_cast<const Acc*>(p.soft_weight)[row];
  const bool has_hard = p.labels != nullptr;
  const Acc wh = has_hard ? static_cast<const Acc*>(p.hard_weight)[row] : Acc(0);
  const int64_t label = has_hard ? p.labels[row] : -1;
  const Acc inv_t = Acc(1) / static_cast<Acc>(p.temperature);
  const bool mse = p.kind == 2, kl = p.kind == 0;
  const bool use_soft = ws != Acc(0), hard = wh != Acc(0);
  const Acc ninf = neg_inf<Acc>(), pinf = -neg_inf<Acc>();

  // pass 1: maxima (NaN ignored) and the -inf counts
  Acc ms = ninf, mt = ninf, s_ninf = 0, t_ninf = 0;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    const Acc a = C::load(s + j), b = C::load(t + j);
    ms = max_(ms, a);
    mt = max_(mt, b);
    s_ninf += a == ninf ? Acc(1) : Acc(0);
    t_ninf += b == ninf ? Acc(1) : Acc(0);
  }
  ms = max_block(ms, sm);
  mt = max_block(mt, sm);
  s_ninf = sum_block(s_ninf, sm);
  t_ninf = sum_block(t_ninf, sm);
  const bool s_dead = s_ninf == static_cast<Acc>(V);
  const bool t_dead = use_soft && !mse && t_ninf == static_cast<Acc>(V);
  const bool skip = s_dead || t_dead || (!use_soft && !hard);
  const bool s_inf = ms == pinf;  // the student softmax is constant there: no gradient through it

  // pass 2: sums with the final maxima
  const bool separate_hard = hard && (!use_soft || mse || inv_t != Acc(1));
  Acc zs = 0, zt = 0, dot = 0, z1 = 0, sq = 0;
  if (!skip) {
    for (int64_t j = threadIdx.x; j < V; j += kThreads) {
      const Acc sa = C::load(s + j), tb = C::load(t + j);
      if (use_soft && mse) {
        const Acc d = sa == tb ? Acc(0) : sa - tb;
        sq += d * d;
      } else if (use_soft) {
        const Acc a = shift(sa, ms) * inv_t, b = shift(tb, mt) * inv_t;
        const Acc ea = exp_(a), eb = exp_(b);
        zs += ea;
        zt += eb;
        const Acc term = kl ? eb * (b - a) : -eb * a;
        dot += eb > Acc(0) ? term : Acc(0);
      }
      if (separate_hard) z1 += exp_(shift(sa, ms));
    }
  }
  zs = sum_block(zs, sm);
  zt = sum_block(zt, sm);
  dot = sum_block(dot, sm);
  z1 = sum_block(z1, sm);
  sq = sum_block(sq, sm);
  if (!separate_hard) z1 = zs;
  if (threadIdx.x == 0) {
    Acc loss = 0;
    if (!skip) {
      if (use_soft) loss = ws * (mse ? sq : (kl ? dot / zt + log_(zs) - log_(zt) : dot / zt + log_(zs)));
      if (hard) loss += wh * (log_(z1) - shift(C::load(s + label), ms));
    }
    static_cast<Acc*>(p.loss)[row] = loss;
  }
  if (!g) return;
  // exp(x - m) / z rounds once less than exp(x - lse): keep the shift and the sum apart.
  const Acc inv_zs = Acc(1) / zs, inv_zt = Acc(1) / zt, inv_z1 = Acc(1) / z1;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    Acc gj = 0;
    if (!skip) {
      const Acc a = C::load(s + j), b = C::load(t + j);
      if (use_soft && mse) {
        gj = Acc(2) * ws * (a == b ? Acc(0) : a - b);
      } else if (use_soft && !s_inf) {
        gj = ws * inv_t * (exp_(shift(a, ms) * inv_t) * inv_zs - exp_(shift(b, mt) * inv_t) * inv_zt);
      }
      if (hard && !s_inf) gj += wh * (exp_(shift(a, ms)) * inv_z1 - (j == label ? Acc(1) : Acc(0)));
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
