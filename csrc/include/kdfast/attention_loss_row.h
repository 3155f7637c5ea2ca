// One query row of the fused attention-map loss family, CPU version (plain C++).
// See kdfast/reference/attention.py for the definition. For a row s, t of length L (keys),
// key weights wk (nullptr = all 1) and the row factor c = scale * mask[b, q]:
//   kind 0 (TinyBERT MSE): x <= -100 -> 0 in s and t (NaN is kept), loss c * sum wk (s - t)^2
//   kind 1 (MSE):          loss c * sum wk (s - t)^2            (equal entries count 0)
//   kind 2 (KL):           loss c * KL(softmax(t/T) || softmax(s/T)) over keys with wk != 0
// and, when g is given, the gradient w.r.t. s in the same pass.
#pragma once

#include "kdfast/cpu_math.h"

namespace kdfast::cpu {

// Keep in step with kdfast/reference/kinds.py (tests/test_hostile_losses.py checks it).
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
    const bool live = CLAMP ? !(a <= thr) : true; /* NaN stays live */     \
    if (CLAMP) {                                                           \
      a = live ? a : zero;                                                 \
      b = b <= thr ? zero : b;                                             \
    }                                                                      \
    const Acc w = WK ? wk[j] : Acc(1);                                     \
    /* masked entries (w == 0) count 0 whatever they hold, NaN and inf too */ \
    const Acc d = (a == b || (WK && w == zero)) ? zero : a - b;            \
    const Acc wd = WK ? w * d : d;                                         \
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

// Whether every real key (wk != 0; all keys without wk) of the row is -inf (NaN is not).
template <class C>
inline bool attn_all_neg_inf(const typename C::T* __restrict x, const typename C::Acc* __restrict wk,
                             int64_t L) {
  using Acc = typename C::Acc;
  for (int64_t j = 0; j < L; ++j)
    if ((!wk || wk[j] != Acc(0)) && !(C::load(x[j]) == neg_inf<Acc>())) return false;
  return true;
}

// KL(softmax(t/T) || softmax(s/T)) over the keys with wk != 0. es, et: scratch of length L.
// WK: whether key weights are given (a template flag so that each version vectorises).
// Edges as kd_row (softmax_kd_row.h): a row whose real student or teacher entries are all
// -inf counts 0; +inf entries take the row's mass (zero gradient through a student row holding
// +inf); NaN propagates; the maximum is subtracted before scaling by 1/T. Masked keys get an
// exact 0 gradient, also in a NaN row.
template <class C, bool WK>
KDFAST_INLINE typename C::Acc attn_kl_row_impl(const typename C::T* __restrict s,
                                          const typename C::T* __restrict t,
                                          typename C::T* __restrict g,
                                          const typename C::Acc* __restrict wk, int64_t L,
                                          typename C::Acc inv_t, typename C::Acc c,
                                          typename C::Acc* __restrict es,
                                          typename C::Acc* __restrict et) {
  using Acc = typename C::Acc;
  const Acc zero = 0, ninf = neg_inf<Acc>(), pinf = -neg_inf<Acc>();
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
  if ((smax == ninf && attn_all_neg_inf<C>(s, wk, L)) ||
      (tmax == ninf && attn_all_neg_inf<C>(t, wk, L))) {  // no real key (or all -inf): counts 0
    attn_zero_grad<C>(g, L);
    return zero;
  }
  const bool s_inf = smax == pinf;
  Acc zs = 0, zt = 0, dot = 0;
#pragma omp simd reduction(+ : zs, zt, dot)
  for (int64_t j = 0; j < L; ++j) {
    const bool real = WK ? wk[j] != zero : true;
    const Acc sa = C::load(s[j]), tb = C::load(t[j]);
    const Acc a = real ? (sa == smax ? zero : sa - smax) * inv_t : ninf;  // <= 0
    const Acc b = real ? (tb == tmax ? zero : tb - tmax) * inv_t : ninf;
    const Acc ea = exp_acc(a), eb = exp_acc(b);
    es[j] = ea;
    et[j] = eb;
    zs += ea;
    zt += eb;
    dot += eb > zero ? eb * (b - a) : zero;
  }
  const Acc loss = dot / zt + std::log(zs) - std::log(zt);
  if (g) {
    if (s_inf) {
      attn_zero_grad<C>(g, L);
    } else {
      const Acc cs = c * inv_t / zs, ct = c * inv_t / zt;
#pragma omp simd
      for (int64_t j = 0; j < L; ++j) {
        const bool real = WK ? wk[j] != zero : true;
        g[j] = C::store(real ? cs * es[j] - ct * et[j] : zero);
      }
    }
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
