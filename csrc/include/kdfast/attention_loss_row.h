// One query row of the fused attention-map loss family, CPU version (plain C++).
// See kdfast/reference/attention.py for the definition. For a row s, t of length L (keys),
// key weights wk (nullptr = all 1) and the row factor c = scale * mask[b, q]:
//   kind 0 (TinyBERT MSE): x <= -100 -> 0 in s and t, loss c * sum wk (s - t)^2
//   kind 1 (MSE):          loss c * sum wk (s - t)^2            (equal entries count 0)
//   kind 2 (KL):           loss c * KL(softmax(t/T) || softmax(s/T)) over keys with wk != 0
// and, when g is given, the gradient w.r.t. s in the same pass.
#pragma once

#include "kdfast/cpu_math.h"

namespace kdfast::cpu {

enum AttnKind : int { ATTN_TINYBERT_MSE = 0, ATTN_MSE = 1, ATTN_KL = 2 };

template <class C>
KDFAST_INLINE void attn_zero_grad(typename C::T* __restrict g, int64_t L) {
  if (!g) return;
#pragma omp simd
  for (int64_t j = 0; j < L; ++j) g[j] = C::store(typename C::Acc(0));
}

template <class C>
KDFAST_INLINE typename C::Acc attn_mse_row(const typename C::T* __restrict s,
                                           const typename C::T* __restrict t,
                                           typename C::T* __restrict g,
                                           const typename C::Acc* __restrict wk, int64_t L,
                                           bool clamp, typename C::Acc c) {
  using Acc = typename C::Acc;
  const Acc zero = 0, thr = -100, two_c = 2 * c;
  Acc sum = 0;
  if (c == zero) {
    attn_zero_grad<C>(g, L);
    return zero;
  }
  // The loops are written once per (clamp, wk, g) case so that each vectorises cleanly.
#define KDFAST_ATTN_MSE_BODY(CLAMP, WK, GRAD)                              \
  _Pragma("omp simd reduction(+ : sum)") for (int64_t j = 0; j < L; ++j) { \
    Acc a = C::load(s[j]), b = C::load(t[j]);                              \
    const bool live = CLAMP ? a > thr : true;                              \
    if (CLAMP) {                                                           \
      a = live ? a : zero;                                                 \
      b = b > thr ? b : zero;                                              \
    }                                                                      \
    Acc d = a == b ? zero : a - b;                                         \
    const Acc w = WK ? wk[j] : Acc(1);                                     \
    const Acc wd = WK ? (w != zero ? w * d : zero) : d; /* 0 * inf -> 0 */  \
    sum += wd * d;                                                         \
    if (GRAD) g[j] = C::store(live ? two_c * wd : zero);                   \
  }
  if (clamp) {
    if (g) {
      if (wk) { KDFAST_ATTN_MSE_BODY(true, true, true) } else { KDFAST_ATTN_MSE_BODY(true, false, true) }
    } else {
      if (wk) { KDFAST_ATTN_MSE_BODY(true, true, false) } else { KDFAST_ATTN_MSE_BODY(true, false, false) }
    }
  } else {
    if (g) {
      if (wk) { KDFAST_ATTN_MSE_BODY(false, true, true) } else { KDFAST_ATTN_MSE_BODY(false, false, true) }
    } else {
      if (wk) { KDFAST_ATTN_MSE_BODY(false, true, false) } else { KDFAST_ATTN_MSE_BODY(false, false, false) }
    }
  }
#undef KDFAST_ATTN_MSE_BODY
  return c * sum;
}

// KL(softmax(t/T) || softmax(s/T)) over the keys with wk != 0. es, et: scratch of length L.
// WK: whether key weights are given (a template flag so that each version vectorises).
template <class C, bool WK>
KDFAST_INLINE typename C::Acc attn_kl_row_impl(const typename C::T* __restrict s,
                                          const typename C::T* __restrict t,
                                          typename C::T* __restrict g,
                                          const typename C::Acc* __restrict wk, int64_t L,
                                          typename C::Acc inv_t, typename C::Acc c,
                                          typename C::Acc* __restrict es,
                                          typename C::Acc* __restrict et) {
  using Acc = typename C::Acc;
  const Acc zero = 0, ninf = neg_inf<Acc>();
  if (c == zero) {
    attn_zero_grad<C>(g, L);
    return zero;
  }
  Acc smax = ninf, tmax = ninf;
#pragma omp simd reduction(max : smax, tmax)
  for (int64_t j = 0; j < L; ++j) {
    const bool real = WK ? wk[j] != zero : true;
    const Acc a = real ? C::load(s[j]) : ninf, b = real ? C::load(t[j]) : ninf;
    smax = a > smax ? a : smax;
    tmax = b > tmax ? b : tmax;
  }
  if (smax == ninf || tmax == ninf) {  // no real key (or an all -inf row): counts 0
    attn_zero_grad<C>(g, L);
    return zero;
  }
  const Acc ms = smax * inv_t, mt = tmax * inv_t;
  Acc zs = 0, zt = 0, dot = 0;
#pragma omp simd reduction(+ : zs, zt, dot)
  for (int64_t j = 0; j < L; ++j) {
    const bool real = WK ? wk[j] != zero : true;
    const Acc a = real ? C::load(s[j]) * inv_t - ms : ninf;  // <= 0
    const Acc b = real ? C::load(t[j]) * inv_t - mt : ninf;
    const Acc ea = exp_acc(a), eb = exp_acc(b);
    es[j] = ea;
    et[j] = eb;
    zs += ea;
    zt += eb;
    dot += eb > zero ? eb * (b - a) : zero;
  }
  const Acc loss = dot / zt + std::log(zs) - std::log(zt);
  if (g) {
    const Acc cs = c * inv_t / zs, ct = c * inv_t / zt;
#pragma omp simd
    for (int64_t j = 0; j < L; ++j) g[j] = C::store(cs * es[j] - ct * et[j]);
  }
  return c * loss;
}

template <class C>
KDFAST_INLINE typename C::Acc attn_kl_row(const typename C::T* __restrict s,
                                          const typename C::T* __restrict t,
                                          typename C::T* __restrict g,
                                          const typename C::Acc* __restrict wk, int64_t L,
                                          typename C::Acc inv_t, typename C::Acc c,
                                          typename C::Acc* __restrict es,
                                          typename C::Acc* __restrict et) {
  return wk ? attn_kl_row_impl<C, true>(s, t, g, wk, L, inv_t, c, es, et)
            : attn_kl_row_impl<C, false>(s, t, g, wk, L, inv_t, c, es, et);
}

}  // namespace kdfast::cpu
