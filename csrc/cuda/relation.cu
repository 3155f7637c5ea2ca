// CUDA kernels for the projection-level relation losses (see kdfast/reference/relation.py):
// attention KL / TinyBERT MSE from Q and K and the MiniLM(v2) relations, without ever storing
// an L x L map. The scheme of the CPU and Triton kernels (csrc/cpu/relation.cpp,
// kdfast/triton/relation.py), in SIMT form:
//  rel_fwd, grid (planes, query blocks of kRelRows): the block's A_s, A_t rows sit in shared
//    memory, key tiles of 32 (lane j <-> key j) stream through it; each warp owns
//    kRelRowsPerWarp query rows. KL: pass 1 keeps each row's running max and exp-sum (lse),
//    pass 2 adds sum_k p_t (log p_t - log p_s); MSE kinds: one pass. With a gradient,
//    dA_s = c_s dS B_s accumulates in registers (a lane owns dims lane + 32 i; dS reaches
//    every lane by warp shuffles) and the rows' lse go to an O(planes * L) buffer.
//  rel_bwd (gradient only), grid (planes, key blocks of kRelRows): the block's B rows stay,
//    query tiles of 32 stream through, the score tiles are recomputed and
//    dB_s = c_s dS^T A_s accumulates the same way.
// Rows and keys that do not count load as 0, so no 0 * NaN reaches a product. Each block
// writes one partial loss; the glue sums them (deterministic, no atomics). CUDA headers and
// kdfast headers only.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kdfast/cuda_math.cuh"
#include "kdfast/relation_cuda.h"

namespace kdfast::cuda {
namespace {

constexpr int kTile = 32;  // streamed rows per tile: one per lane
constexpr int kChunks = kRelMaxDim / 32;  // head dims a lane accumulates
constexpr int kRows = kRelRowsPerWarp;
enum Kind { TINYBERT_MSE = 0, MSE = 1, KL = 2 };

template <class T, class Acc>
struct Args {
  const T *a_s, *b_s, *a_t, *b_t;  // [planes, L, d] each
  T *ga, *gb;  // dA_s, dB_s or null
  const Acc* mask;  // [B, L] or null
  const Acc* scale;
  Acc* partial;
  Acc* lse;  // [planes, L, 2] (KL with a gradient) or null
  int64_t R, L, ds, dt;
  Acc cs, ct;  // 1 / sqrt(d)
};

// A query row's weight: scale (times its mask entry, except for TinyBERT's MSE, which counts
// padded query rows); 0 past the end.
template <int KIND, class T, class Acc>
__device__ __forceinline__ Acc query_weight(const Args<T, Acc>& a, int64_t b, int64_t q, Acc scale) {
  if (q >= a.L) return Acc(0);
  return a.mask && KIND != TINYBERT_MSE ? scale * a.mask[b * a.L + q] : scale;
}

template <class T, class Acc>
__device__ __forceinline__ bool is_key(const Args<T, Acc>& a, int64_t b, int64_t k) {
  return k < a.L && (!a.mask || a.mask[b * a.L + k] != Acc(0));
}

// Rows [r0, r0 + n) of a [L, d] plane into shared memory (row stride ld) in the accumulation
// type; rows past L or with keep(row) false load as 0.
template <class Acc, class T, class Keep>
__device__ __forceinline__ void load_rows(const T* plane, int64_t r0, int n, int64_t d, int64_t ld,
                                          int64_t L, Keep keep, Acc* dst) {
  for (int64_t idx = threadIdx.x; idx < n * d; idx += blockDim.x) {
    const int64_t i = idx / d, e = idx % d, row = r0 + i;
    dst[i * ld + e] = row < L && keep(row) ? Acc(to_acc(plane[row * d + e])) : Acc(0);
  }
}

// s[r] = c * X[r] . Y[lane] for the warp's rows X (stride d) and the tile Y (stride d + 1,
// so that the lanes' rows fall in different banks).
template <class Acc>
__device__ __forceinline__ void scores(const Acc* x, const Acc* y, int64_t d, Acc c, Acc (&s)[kRows]) {
  const Acc* yl = y + (threadIdx.x % 32) * (d + 1);
#pragma unroll
  for (int r = 0; r < kRows; ++r) s[r] = 0;
  for (int64_t e = 0; e < d; ++e) {
    const Acc v = yl[e];
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r] += x[r * d + e] * v;
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) s[r] *= c;
}

// One score entry: its loss and dS (g), as _grad_tile of the Triton kernel. cq: the query's
// weight; key: whether the key counts.
template <int KIND, class Acc>
__device__ __forceinline__ Acc entry(Acc s, Acc t, Acc cq, bool key, Acc lse_s, Acc lse_t, Acc& g) {
  const Acc zero = 0;
  if (KIND == KL) {
    const Acc ninf = -INFINITY;
    const Acc ls = key ? s - lse_s : ninf, lt = key ? t - lse_t : ninf;
    const Acc ps = exp_acc(ls), pt = exp_acc(lt);
    g = key && cq != zero ? cq * (ps - pt) : zero;
    return pt != zero && lse_t != ninf ? pt * (lt - ls) : zero;  // NaN propagates, as the CPU
  }
  bool live = key;
  if (KIND == TINYBERT_MSE) {  // entries <= -100 count 0 with zero gradient (NaN stays live)
    live = !(s <= Acc(-100));
    s = live ? s : zero;
    t = t <= Acc(-100) ? zero : t;
  }
  const Acc diff = key && s != t ? s - t : zero;
  g = live && cq != zero ? Acc(2) * cq * diff : zero;
  return diff * diff;
}

// Online log-sum-exp over the warp's 32 entries v (NaN never becomes the max; it propagates
// through the sum).
template <class Acc>
__device__ __forceinline__ void online(Acc& m, Acc& z, Acc v) {
  const Acc ninf = -INFINITY;
  const Acc nm = fmax(m, warp_max(v));
  const Acc u = nm == ninf ? Acc(0) : nm;
  z = (m == ninf ? Acc(0) : z * exp_acc(m - u)) + warp_sum(exp_acc(v - u));
  m = nm;
}

// acc[r][i] += sum_j g_j[r] * Y[j][lane + 32 i]: the gradient product of one tile.
template <class Acc>
__device__ __forceinline__ void accumulate(const Acc (&g)[kRows], const Acc* y, int64_t d,
                                           Acc (&acc)[kRows][kChunks]) {
  const int lane = threadIdx.x % 32;
  for (int j = 0; j < kTile; ++j) {
    Acc gj[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) gj[r] = __shfl_sync(0xffffffffu, g[r], j);
    const Acc* yj = y + j * (d + 1);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t e = lane + 32 * i;
      if (e < d) {
        const Acc v = yj[e];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r][i] += gj[r] * v;
      }
    }
  }
}

// Rows r0 + warp * kRows + r of a [L, d] gradient plane := c * acc.
template <class T, class Acc>
__device__ __forceinline__ void store_rows(T* plane, int64_t r0, int64_t L, int64_t d, Acc c,
                                           const Acc (&acc)[kRows][kChunks]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = r0 + warp * kRows + r;
    if (row >= L) break;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t e = lane + 32 * i;
      if (e < d) store<T, Acc>(plane + row * d + e, c * acc[r][i]);
    }
  }
}

template <class Acc>
struct Smem {  // own rows X (s, t), then the streamed tile Y (s, t)
  Acc *xs, *xt, *ys, *yt;
  __device__ Smem(Acc* base, int64_t ds, int64_t dt)
      : xs(base), xt(base + kRelRows * ds), ys(xt + kRelRows * dt), yt(ys + kTile * (ds + 1)) {}
};

template <class T, class Acc, int KIND>
__global__ void __launch_bounds__(32 * kRelWarps) rel_fwd(Args<T, Acc> a, int64_t n_qb) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  __shared__ Acc warp_loss[kRelWarps];
  const int64_t ds = a.ds, dt = a.dt, L = a.L;
  const Smem<Acc> sm(reinterpret_cast<Acc*>(smem_bytes), ds, dt);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t p = blockIdx.x, b = p / a.R, q0 = static_cast<int64_t>(blockIdx.y) * kRelRows;
  const Acc scale = *a.scale, zero = 0, ninf = -INFINITY;
  const T *as = a.a_s + p * L * ds, *bs = a.b_s + p * L * ds;
  const T *at = a.a_t + p * L * dt, *bt = a.b_t + p * L * dt;
  auto counts = [&](int64_t q) { return query_weight<KIND>(a, b, q, scale) != zero; };
  auto key_of = [&](int64_t k) { return is_key(a, b, k); };
  load_rows<Acc>(as, q0, kRelRows, ds, ds, L, counts, sm.xs);
  load_rows<Acc>(at, q0, kRelRows, dt, dt, L, counts, sm.xt);
  const Acc* xs = sm.xs + warp * kRows * ds;
  const Acc* xt = sm.xt + warp * kRows * dt;
  Acc cq[kRows], lse_s[kRows], lse_t[kRows], row_loss[kRows], s[kRows], t[kRows], g[kRows];
  Acc acc[kRows][kChunks] = {};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    cq[r] = query_weight<KIND>(a, b, q0 + warp * kRows + r, scale);
    lse_s[r] = lse_t[r] = row_loss[r] = zero;
  }
  auto load_tile = [&](int64_t k0) {
    __syncthreads();  // the previous tile is consumed (and the own rows are loaded)
    load_rows<Acc>(bs, k0, kTile, ds, ds + 1, L, key_of, sm.ys);
    load_rows<Acc>(bt, k0, kTile, dt, dt + 1, L, key_of, sm.yt);
    __syncthreads();
    scores(xs, sm.ys, ds, a.cs, s);
    scores(xt, sm.yt, dt, a.ct, t);
    return is_key(a, b, k0 + lane);
  };
  if (KIND == KL) {
    Acc ms[kRows], mt[kRows], zs[kRows], zt[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) ms[r] = mt[r] = ninf, zs[r] = zt[r] = zero;
    for (int64_t k0 = 0; k0 < L; k0 += kTile) {
      const bool key = load_tile(k0);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        online(ms[r], zs[r], key ? s[r] : ninf);
        online(mt[r], zt[r], key ? t[r] : ninf);
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      lse_s[r] = ms[r] + log_acc(zs[r]);
      lse_t[r] = mt[r] + log_acc(zt[r]);
      const int64_t q = q0 + warp * kRows + r;
      if (a.lse && lane == 0 && q < L) {
        a.lse[(p * L + q) * 2] = lse_s[r];
        a.lse[(p * L + q) * 2 + 1] = lse_t[r];
      }
    }
  }
  for (int64_t k0 = 0; k0 < L; k0 += kTile) {
    const bool key = load_tile(k0);
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      row_loss[r] += entry<KIND>(s[r], t[r], cq[r], key, lse_s[r], lse_t[r], g[r]);
    if (a.ga) accumulate(g, sm.ys, ds, acc);
  }
  Acc total = 0;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const Acc l = warp_sum(row_loss[r]);
    total += cq[r] != zero ? cq[r] * l : zero;
  }
  if (lane == 0) warp_loss[warp] = total;
  if (a.ga) store_rows(a.ga + p * L * ds, q0, L, ds, a.cs, acc);
  __syncthreads();
  if (threadIdx.x == 0) {
    Acc sum = 0;
#pragma unroll
    for (int w = 0; w < kRelWarps; ++w) sum += warp_loss[w];
    a.partial[p * n_qb + blockIdx.y] = sum;
  }
}

template <class T, class Acc, int KIND>
__global__ void __launch_bounds__(32 * kRelWarps) rel_bwd(Args<T, Acc> a) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  const int64_t ds = a.ds, dt = a.dt, L = a.L;
  const Smem<Acc> sm(reinterpret_cast<Acc*>(smem_bytes), ds, dt);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t p = blockIdx.x, b = p / a.R, k0 = static_cast<int64_t>(blockIdx.y) * kRelRows;
  const Acc scale = *a.scale, zero = 0;
  const T *as = a.a_s + p * L * ds, *bs = a.b_s + p * L * ds;
  const T *at = a.a_t + p * L * dt, *bt = a.b_t + p * L * dt;
  auto counts = [&](int64_t q) { return query_weight<KIND>(a, b, q, scale) != zero; };
  auto key_of = [&](int64_t k) { return is_key(a, b, k); };
  load_rows<Acc>(bs, k0, kRelRows, ds, ds, L, key_of, sm.xs);
  load_rows<Acc>(bt, k0, kRelRows, dt, dt, L, key_of, sm.xt);
  const Acc* xs = sm.xs + warp * kRows * ds;
  const Acc* xt = sm.xt + warp * kRows * dt;
  bool key[kRows];
  Acc s[kRows], t[kRows], g[kRows];
  Acc acc[kRows][kChunks] = {};
#pragma unroll
  for (int r = 0; r < kRows; ++r) key[r] = is_key(a, b, k0 + warp * kRows + r);
  for (int64_t m0 = 0; m0 < L; m0 += kTile) {
    __syncthreads();
    load_rows<Acc>(as, m0, kTile, ds, ds + 1, L, counts, sm.ys);
    load_rows<Acc>(at, m0, kTile, dt, dt + 1, L, counts, sm.yt);
    __syncthreads();
    const int64_t q = m0 + lane;
    const Acc cq = query_weight<KIND>(a, b, q, scale);
    const Acc lse_s = KIND == KL && q < L ? a.lse[(p * L + q) * 2] : zero;
    const Acc lse_t = KIND == KL && q < L ? a.lse[(p * L + q) * 2 + 1] : zero;
    scores(xs, sm.ys, ds, a.cs, s);
    scores(xt, sm.yt, dt, a.ct, t);
#pragma unroll
    for (int r = 0; r < kRows; ++r) entry<KIND>(s[r], t[r], cq, key[r], lse_s, lse_t, g[r]);
    accumulate(g, sm.ys, ds, acc);
  }
  store_rows(a.gb + p * L * ds, k0, L, ds, a.cs, acc);
}

template <class Kernel, class... A>
cudaError_t launch(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, A... args) {
  if (smem > 48 * 1024) {  // above the default limit the kernel must opt in
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, dim3(32 * kRelWarps), smem, stream>>>(args...);
  return cudaGetLastError();
}

template <class T, class Acc>
int launch_typed(Args<T, Acc> a, int64_t planes, int kind, cudaStream_t stream) {
  const int64_t n_qb = relation_blocks(a.L);
  if (planes > 2147483647LL || n_qb > 65535) return static_cast<int>(cudaErrorInvalidValue);
  const dim3 grid(static_cast<unsigned>(planes), static_cast<unsigned>(n_qb));
  const size_t smem = sizeof(Acc) * (kRelRows * (a.ds + a.dt) + kTile * (a.ds + a.dt + 2));
  cudaError_t err = cudaErrorInvalidValue;
  switch (kind) {
#define KDFAST_REL_KIND(K)                                                  \
  case K:                                                                   \
    err = launch(rel_fwd<T, Acc, K>, grid, smem, stream, a, n_qb);          \
    if (err == cudaSuccess && a.gb) err = launch(rel_bwd<T, Acc, K>, grid, smem, stream, a); \
    break;
    KDFAST_REL_KIND(TINYBERT_MSE)
    KDFAST_REL_KIND(MSE)
    KDFAST_REL_KIND(KL)
#undef KDFAST_REL_KIND
  }
  return static_cast<int>(err);
}

template <class T, class Acc>
int launch_dtype(const void* a_s, const void* b_s, const void* a_t, const void* b_t, void* ga,
                 void* gb, const void* mask, const void* scale, void* partial, void* lse,
                 int64_t B, int64_t R, int64_t L, int64_t ds, int64_t dt, int kind,
                 cudaStream_t stream) {
  if (B * R * L == 0) return 0;
  if ((ga == nullptr) != (gb == nullptr) || ds > kRelMaxDim || dt > kRelMaxDim ||
      (kind == KL && ga && !lse))
    return static_cast<int>(cudaErrorInvalidValue);
  Args<T, Acc> a{static_cast<const T*>(a_s), static_cast<const T*>(b_s), static_cast<const T*>(a_t),
                 static_cast<const T*>(b_t), static_cast<T*>(ga), static_cast<T*>(gb),
                 static_cast<const Acc*>(mask), static_cast<const Acc*>(scale),
                 static_cast<Acc*>(partial), ga ? static_cast<Acc*>(lse) : nullptr, R, L, ds, dt,
                 static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(ds))),
                 static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(dt)))};
  return launch_typed(a, B * R, kind, stream);
}

}  // namespace

int relation_loss_launch(Dtype dtype, const void* a_s, const void* b_s, const void* a_t,
                         const void* b_t, void* ga, void* gb, const void* mask, const void* scale,
                         void* partial, void* lse, int64_t B, int64_t R, int64_t L, int64_t ds,
                         int64_t dt, int kind, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return launch_dtype<float, float>(a_s, b_s, a_t, b_t, ga, gb, mask, scale, partial, lse, B, R, L, ds, dt, kind, stream);
    case Dtype::kFloat64:
      return launch_dtype<double, double>(a_s, b_s, a_t, b_t, ga, gb, mask, scale, partial, lse, B, R, L, ds, dt, kind, stream);
    case Dtype::kBFloat16:
      return launch_dtype<__nv_bfloat16, float>(a_s, b_s, a_t, b_t, ga, gb, mask, scale, partial, lse, B, R, L, ds, dt, kind, stream);
    case Dtype::kFloat16:
      return launch_dtype<__half, float>(a_s, b_s, a_t, b_t, ga, gb, mask, scale, partial, lse, B, R, L, ds, dt, kind, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace kdfast::cuda
