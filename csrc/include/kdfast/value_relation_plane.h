// One (batch, relation head) plane of MiniLM's value-relation KL, CPU version (plain C++).
// For the plane's values Vs [L, ds] and Vt [L, dt] (row stride Ds / Dt in storage), each
// real query row q builds its relation rows rs[k] = Vs[q].Vs[k] / sqrt(ds), rt likewise, in
// a scratch row (the L x L relation matrices are never stored), adds
// c * KL(softmax(rt) || softmax(rs)) over real keys, and, when gs is given, accumulates the
// gradient dVs = (G + G^T) Vs / sqrt(ds) with G[q, k] = c * (softmax(rs) - softmax(rt))[k].
#pragma once

#include <type_traits>

#include "kdfast/attention_loss_row.h"

namespace kdfast::cpu {

template <class C>
KDFAST_INLINE typename C::Acc value_relation_plane(
    const typename C::T* __restrict vs, const typename C::T* __restrict vt,
    typename C::T* __restrict gs, const typename C::Acc* __restrict wk, int64_t L, int64_t ds,
    int64_t dt, int64_t Ds, int64_t Dt, typename C::Acc scale, typename C::Acc* __restrict work) {
  using Acc = typename C::Acc;
  using AccCodec = std::conditional_t<std::is_same_v<Acc, double>, F64, F32>;
  const Acc zero = 0;
  // work: Vs [L*ds] | Vt [L*dt] | dVs [L*ds] | rs [L] | rt [L] | G [L] | es [L] | et [L]
  Acc* as = work;
  Acc* at = as + L * ds;
  Acc* dv = at + L * dt;
  Acc* rs = dv + L * ds;
  Acc* rt = rs + L;
  Acc* G = rt + L;
  Acc* es = G + L;
  Acc* et = es + L;
  for (int64_t i = 0; i < L; ++i) {
#pragma omp simd
    for (int64_t j = 0; j < ds; ++j) as[i * ds + j] = C::load(vs[i * Ds + j]);
#pragma omp simd
    for (int64_t j = 0; j < dt; ++j) at[i * dt + j] = C::load(vt[i * Dt + j]);
  }
  if (gs) {
    for (int64_t i = 0; i < L * ds; ++i) dv[i] = zero;
  }
  const Acc inv_ss = Acc(1) / std::sqrt(Acc(ds)), inv_st = Acc(1) / std::sqrt(Acc(dt));
  Acc total = 0;
  for (int64_t q = 0; q < L; ++q) {
    const Acc c = wk ? scale * wk[q] : scale;
    if (c == zero) continue;
    const Acc* sq = as + q * ds;
    const Acc* tq = at + q * dt;
    for (int64_t k = 0; k < L; ++k) {
      const Acc* sk = as + k * ds;
      const Acc* tk = at + k * dt;
      Acc a = 0, b = 0;
#pragma omp simd reduction(+ : a)
      for (int64_t j = 0; j < ds; ++j) a += sq[j] * sk[j];
#pragma omp simd reduction(+ : b)
      for (int64_t j = 0; j < dt; ++j) b += tq[j] * tk[j];
      rs[k] = a * inv_ss;
      rt[k] = b * inv_st;
    }
    total += attn_kl_row<AccCodec>(rs, rt, gs ? G : nullptr, wk, L, Acc(1), c, es, et);
    if (gs) {
      Acc* dq = dv + q * ds;
      for (int64_t k = 0; k < L; ++k) {
        const Acc gk = G[k] * inv_ss;
        if (gk == zero) continue;
        const Acc* sk = as + k * ds;
        Acc* dk = dv + k * ds;
#pragma omp simd
        for (int64_t j = 0; j < ds; ++j) {
          dq[j] += gk * sk[j];
          dk[j] += gk * sq[j];
        }
      }
    }
  }
  if (gs) {
    for (int64_t i = 0; i < L; ++i) {
#pragma omp simd
      for (int64_t j = 0; j < ds; ++j) gs[i * Ds + j] = C::store(dv[i * ds + j]);
    }
  }
  return total;
}

}  // namespace kdfast::cpu
