// CUDA kernels for the fused attention-map loss family (see kdfast/reference/attention.py).
// One launch covers up to kAttnMaxLayers layers: the per-layer pointers are passed by value
// in the parameter struct, so the maps are read in place (no stacking copy). One warp per
// query row: MSE kinds read each element once and write its gradient in the same pass; KL
// runs an online softmax for student and teacher in one pass, then writes the gradient in a
// second pass over the row (an L1/L2 hit). Each block writes one partial loss per layer;
// the glue sums them (deterministic, no atomics). CUDA headers and kdfast headers only.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kdfast/attention_loss_cuda.h"
#include "kdfast/cuda_math.cuh"

namespace kdfast::cuda {
namespace {

template <class T>
struct Params {
  const T* s[kAttnMaxLayers];
  const T* t[kAttnMaxLayers];
  T* g[kAttnMaxLayers];
};

template <class T, class Acc, int KIND>
__global__ void __launch_bounds__(32 * kAttnRowsPerBlock)
    attention_loss_kernel(Params<T> p, const Acc* __restrict__ mask, const Acc* __restrict__ scale_ptr,
                          Acc* __restrict__ partial, int64_t rows_per_layer, int64_t HL, int64_t L,
                          int64_t blocks, Acc inv_t) {
  const int layer = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kAttnRowsPerBlock + warp;
  __shared__ Acc row_loss[kAttnRowsPerBlock];
  Acc loss = 0;
  if (row < rows_per_layer) {
    const int64_t b = row / HL, q = row % L;
    const Acc* wk = mask ? mask + b * L : nullptr;
    const Acc c = mask ? scale_ptr[0] * wk[q] : scale_ptr[0];
    const T* s = p.s[layer] + row * L;
    const T* t = p.t[layer] + row * L;
    T* g = p.g[layer] ? p.g[layer] + row * L : nullptr;
    const Acc zero = 0;
    if (c == zero) {
      if (g)
        for (int64_t j = lane; j < L; j += 32) store<T, Acc>(g + j, zero);
    } else if (KIND != 2) {  // MSE kinds: one pass, gradient written on the way
      Acc sum = 0;
      for (int64_t j = lane; j < L; j += 32) {
        Acc a = to_acc(s[j]), bb = to_acc(t[j]);
        bool live = true;
        if (KIND == 0) {  // TinyBERT: entries <= -100 count 0, with zero gradient (NaN stays)
          live = !(a <= Acc(-100));
          a = live ? a : zero;
          bb = bb <= Acc(-100) ? zero : bb;
        }
        const Acc w = wk ? wk[j] : Acc(1);
        // masked entries (w == 0) count 0 whatever they hold, NaN and inf too
        const Acc d = (a == bb || w == zero) ? zero : a - bb;
        const Acc wd = w * d;
        sum += wd * d;
        if (g) store<T, Acc>(g + j, live ? 2 * c * wd : zero);
      }
      loss = c * warp_sum(sum);
    } else {  // KL over real keys: maxima, then sums with them, then the gradient
      // Edges as the CPU row (attention_loss_row.h): all -inf real entries (NaN is not -inf)
      // count 0, +inf entries take the mass, NaN propagates, shift before scaling by 1/T.
      const Acc ninf = -INFINITY, pinf = INFINITY;
      Acc ms = ninf, mt = ninf, s_live = 0, t_live = 0;
      for (int64_t j = lane; j < L; j += 32) {
        if (wk && wk[j] == zero) continue;
        const Acc a = to_acc(s[j]), bb = to_acc(t[j]);
        ms = a > ms ? a : ms;  // NaN never wins
        mt = bb > mt ? bb : mt;
        s_live += a != ninf ? Acc(1) : zero;
        t_live += bb != ninf ? Acc(1) : zero;
      }
      ms = warp_max(ms);
      mt = warp_max(mt);
      s_live = warp_sum(s_live);
      t_live = warp_sum(t_live);
      const bool dead = s_live == zero || t_live == zero;
      const bool s_inf = ms == pinf;
      Acc zs = 0, zt = 0, dot = 0;  // dot = sum e^b (b - a)
      if (!dead) {
        for (int64_t j = lane; j < L; j += 32) {
          if (wk && wk[j] == zero) continue;
          const Acc sa = to_acc(s[j]), tb = to_acc(t[j]);
          const Acc a = (sa == ms ? zero : sa - ms) * inv_t, bb = (tb == mt ? zero : tb - mt) * inv_t;
          const Acc ea = exp_acc(a), eb = exp_acc(bb);
          zs += ea;
          zt += eb;
          dot += eb > zero ? eb * (bb - a) : zero;
        }
      }
      zs = warp_sum(zs);
      zt = warp_sum(zt);
      dot = warp_sum(dot);
      if (!dead) {
        loss = c * (dot / zt + log_acc(zs) - log_acc(zt));
        if (g) {
          const Acc cs = c * inv_t / zs, ct = c * inv_t / zt;
          for (int64_t j = lane; j < L; j += 32) {
            const bool real = wk ? wk[j] != zero : true;
            const Acc sa = to_acc(s[j]), tb = to_acc(t[j]);
            const Acc a = (sa == ms ? zero : sa - ms) * inv_t, bb = (tb == mt ? zero : tb - mt) * inv_t;
            const Acc gj = real && !s_inf ? cs * exp_acc(a) - ct * exp_acc(bb) : zero;
            store<T, Acc>(g + j, gj);
          }
        }
      } else if (g) {
        for (int64_t j = lane; j < L; j += 32) store<T, Acc>(g + j, zero);
      }
    }
  }
  if (lane == 0) row_loss[warp] = loss;
  __syncthreads();
  if (threadIdx.x == 0) {
    Acc total = 0;
#pragma unroll
    for (int i = 0; i < kAttnRowsPerBlock; ++i) total += row_loss[i];
    partial[layer * blocks + blockIdx.x] = total;
  }
}

template <class T, class Acc>
int launch_typed(int64_t n_layers, const void* const* s, const void* const* t, void* const* g,
                 const void* mask, const void* scale, void* partial, int64_t B, int64_t H,
                 int64_t L, int kind, double inv_t, cudaStream_t stream) {
  const int64_t rows = B * H * L;
  const int64_t blocks = attention_loss_blocks(rows);
  if (rows == 0 || blocks > 2147483647LL) return rows == 0 ? 0 : static_cast<int>(cudaErrorInvalidValue);
  for (int64_t first = 0; first < n_layers; first += kAttnMaxLayers) {
    const int64_t n = n_layers - first < kAttnMaxLayers ? n_layers - first : kAttnMaxLayers;
    Params<T> p{};
    for (int64_t l = 0; l < n; ++l) {
      p.s[l] = static_cast<const T*>(s[first + l]);
      p.t[l] = static_cast<const T*>(t[first + l]);
      p.g[l] = g ? static_cast<T*>(g[first + l]) : nullptr;
    }
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(n));
    const dim3 block(32 * kAttnRowsPerBlock);
    const Acc* m = static_cast<const Acc*>(mask);
    const Acc* sc = static_cast<const Acc*>(scale);
    Acc* out = static_cast<Acc*>(partial) + first * blocks;
    const Acc it = static_cast<Acc>(inv_t);
    if (kind == 0)
      attention_loss_kernel<T, Acc, 0><<<grid, block, 0, stream>>>(p, m, sc, out, rows, H * L, L, blocks, it);
    else if (kind == 1)
      attention_loss_kernel<T, Acc, 1><<<grid, block, 0, stream>>>(p, m, sc, out, rows, H * L, L, blocks, it);
    else
      attention_loss_kernel<T, Acc, 2><<<grid, block, 0, stream>>>(p, m, sc, out, rows, H * L, L, blocks, it);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}

}  // namespace

int attention_loss_launch(Dtype dtype, int64_t n_layers, const void* const* s, const void* const* t,
                          void* const* g, const void* mask, const void* scale, void* partial,
                          int64_t B, int64_t H, int64_t L, int kind, double inv_t,
                          cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return launch_typed<float, float>(n_layers, s, t, g, mask, scale, partial, B, H, L, kind, inv_t, stream);
    case Dtype::kFloat64: return launch_typed<double, double>(n_layers, s, t, g, mask, scale, partial, B, H, L, kind, inv_t, stream);
    case Dtype::kBFloat16: return launch_typed<__nv_bfloat16, float>(n_layers, s, t, g, mask, scale, partial, B, H, L, kind, inv_t, stream);
    case Dtype::kFloat16: return launch_typed<__half, float>(n_layers, s, t, g, mask, scale, partial, B, H, L, kind, inv_t, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace kdfast::cuda
