// One row of the fused softmax-distillation loss family, CPU version (plain C++).
//
// For student logits s and teacher logits t of one row (length V), temperature T:
//   kind KL      : soft = KL(softmax(t/T) || softmax(s/T))
//   kind SOFT_CE : soft = -sum softmax(t/T) * log_softmax(s/T)
//   kind MSE     : soft = sum (s - t)^2                 (s == t counts 0, also for -inf)
//   hard         : log_softmax(s)[label] negated (temperature 1), used when wh != 0
// The row returns ws * soft + wh * hard and, when g is given, writes its gradient w.r.t. s:
//   ws * (softmax(s/T) - softmax(t/T)) / T  (or ws * 2 (s - t))  +  wh * (softmax(s) - onehot).
// A row whose student or teacher logits are all -inf is treated as masked (0 and 0 grad).
// Terms with teacher probability 0 count 0, so -inf in both s and t is finite.
#pragma once

#include "kdfast/cpu_math.h"

namespace kdfast::cpu {

enum KdKind : int { KD_KL = 0, KD_SOFT_CE = 1, KD_MSE = 2 };

template <class C>
KDFAST_INLINE typename C::Acc kd_row(const typename C::T* __restrict s, const typename C::T* __restrict t,
                                     typename C::T* __restrict g, int64_t V, int kind,
                                     typename C::Acc temperature, int64_t label,
                                     typename C::Acc ws, typename C::Acc wh,
                                     typename C::Acc* __restrict es, typename C::Acc* __restrict et) {
  using Acc = typename C::Acc;
  const Acc zero = 0;
  auto write_zero_grad = [&] {
    if (g) {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) g[j] = C::store(zero);
    }
  };
  if (ws == zero && wh == zero) {
    write_zero_grad();
    return zero;
  }
  const bool hard = wh != zero;
  const Acc inv_t = Acc(1) / temperature;

  Acc smax = neg_inf<Acc>(), tmax = neg_inf<Acc>();
#pragma omp simd reduction(max : smax, tmax)
  for (int64_t j = 0; j < V; ++j) {
    const Acc a = C::load(s[j]), b = C::load(t[j]);
    smax = a > smax ? a : smax;
    tmax = b > tmax ? b : tmax;
  }
  if (smax == neg_inf<Acc>() || (kind != KD_MSE && tmax == neg_inf<Acc>())) {
    write_zero_grad();
    return zero;
  }

  Acc soft = 0, z1 = 0;
  // Student softmax at temperature 1 for the hard term; shares the exps when T == 1.
  const bool separate_hard_exp = hard && (kind == KD_MSE || inv_t != Acc(1));
  if (separate_hard_exp) {
#pragma omp simd reduction(+ : z1)
    for (int64_t j = 0; j < V; ++j) z1 += exp_acc(C::load(s[j]) - smax);
  }

  Acc zs = 0, zt = 0;
  if (kind == KD_MSE) {
#pragma omp simd reduction(+ : soft)
    for (int64_t j = 0; j < V; ++j) {
      const Acc a = C::load(s[j]), b = C::load(t[j]);
      const Acc d = a == b ? zero : a - b;
      soft += d * d;
    }
  } else {
    const Acc ms = smax * inv_t, mt = tmax * inv_t;
    Acc dot = 0;
    const bool kl = kind == KD_KL;
#pragma omp simd reduction(+ : zs, zt, dot)
    for (int64_t j = 0; j < V; ++j) {
      const Acc a = C::load(s[j]) * inv_t - ms;  // log of unnormalised student prob, <= 0
      const Acc b = C::load(t[j]) * inv_t - mt;
      const Acc ea = exp_acc(a), eb = exp_acc(b);
      es[j] = ea;
      et[j] = eb;
      zs += ea;
      zt += eb;
      const Acc term = kl ? eb * (b - a) : -eb * a;
      dot += eb > zero ? term : zero;
    }
    const Acc log_zs = std::log(zs), log_zt = std::log(zt);
    soft = kl ? dot / zt + log_zs - log_zt : dot / zt + log_zs;
  }
  if (!separate_hard_exp && hard) z1 = zs;

  Acc hard_loss = 0;
  if (hard) hard_loss = std::log(z1) + smax - C::load(s[label]);
  const Acc loss = ws * soft + (hard ? wh * hard_loss : zero);

  if (g) {
    const Acc inv_z1 = hard ? Acc(1) / z1 : zero;
    if (kind == KD_MSE) {
      const Acc two_ws = 2 * ws;
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        const Acc a = C::load(s[j]), b = C::load(t[j]);
        Acc gj = two_ws * (a == b ? zero : a - b);
        if (hard) gj += wh * (exp_acc(a - smax) * inv_z1 - (j == label ? Acc(1) : zero));
        g[j] = C::store(gj);
      }
    } else {
      const Acc cs = ws * inv_t / zs, ct = ws * inv_t / zt;
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        Acc gj = cs * es[j] - ct * et[j];
        if (hard) {
          const Acc p1 = separate_hard_exp ? exp_acc(C::load(s[j]) - smax) * inv_z1 : es[j] * inv_z1;
          gj += wh * (p1 - (j == label ? Acc(1) : zero));
        }
        g[j] = C::store(gj);
      }
    }
  }
  return loss;
}

}  // namespace kdfast::cpu
