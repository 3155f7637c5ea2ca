// One row of the fused softmax-distillation loss family, CPU version (plain C++).
// The definition, edges included, is kdfast/reference/softmax_kd.py; in short, for student
// logits s and teacher logits t of one row (length V), temperature T:
//   kind KL      : soft = KL(softmax(t/T) || softmax(s/T))
//   kind SOFT_CE : soft = -sum softmax(t/T) * log_softmax(s/T)
//   kind MSE     : soft = sum (s - t)^2                 (s == t counts 0, also for +-inf)
//   hard         : log_softmax(s)[label] negated (temperature 1), used when wh != 0
// The row returns ws * soft + wh * hard (a term whose weight is 0 is skipped) and, when g is
// given, writes its gradient w.r.t. s:
//   ws * (softmax(s/T) - softmax(t/T)) / T  (or ws * 2 (s - t))  +  wh * (softmax(s) - onehot).
// Edges: a row whose student logits are all -inf, or (softmax kinds with ws != 0) whose
// teacher logits are all -inf, is masked (0 and 0 grad); NaN is never mistaken for -inf, it
// propagates. A row holding +inf puts its softmax mass uniformly on the +inf entries; the
// student softmax is then locally constant (zero gradient through it). The row maximum is
// subtracted before scaling by 1/T, so logits near the float limit do not overflow.
#pragma once

#include "kdfast/cpu_math.h"

namespace kdfast::cpu {

// Keep in step with kdfast/reference/kinds.py (tests/test_hostile_losses.py checks it).
enum KdKind : int { KD_KL = 0, KD_SOFT_CE = 1, KD_MSE = 2 };

// x - m with +inf - +inf taken as 0 (the +inf entries of a row whose maximum is +inf).
template <class Acc>
KDFAST_INLINE Acc shift_by_max(Acc x, Acc m) {
  return x == m ? Acc(0) : x - m;
}

// Whether every entry is -inf (NaN is not): the exact test behind "an all -inf row is masked".
template <class C>
inline bool all_neg_inf(const typename C::T* __restrict x, int64_t V) {
  for (int64_t j = 0; j < V; ++j)
    if (!(C::load(x[j]) == neg_inf<typename C::Acc>())) return false;
  return true;
}

template <class C>
KDFAST_INLINE typename C::Acc kd_row(const typename C::T* __restrict s, const typename C::T* __restrict t,
                                     typename C::T* __restrict g, int64_t V, int kind,
                                     typename C::Acc temperature, int64_t label,
                                     typename C::Acc ws, typename C::Acc wh,
                                     typename C::Acc* __restrict es, typename C::Acc* __restrict et) {
  using Acc = typename C::Acc;
  const Acc zero = 0, ninf = neg_inf<Acc>(), pinf = -neg_inf<Acc>();
  auto write_zero_grad = [&] {
    if (g) {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) g[j] = C::store(zero);
    }
  };
  const bool use_soft = ws != zero, hard = wh != zero;
  if (!use_soft && !hard) {
    write_zero_grad();
    return zero;
  }
  const Acc inv_t = Acc(1) / temperature;

  // Row maxima; NaN compares false, so it never becomes the maximum (it propagates below).
  Acc smax = ninf, tmax = ninf;
#pragma omp simd reduction(max : smax, tmax)
  for (int64_t j = 0; j < V; ++j) {
    const Acc a = C::load(s[j]), b = C::load(t[j]);
    smax = a > smax ? a : smax;
    tmax = b > tmax ? b : tmax;
  }
  const bool s_dead = smax == ninf && all_neg_inf<C>(s, V);
  const bool t_dead = use_soft && kind != KD_MSE && tmax == ninf && all_neg_inf<C>(t, V);
  if (s_dead || t_dead) {
    write_zero_grad();
    return zero;
  }
  const bool s_inf = smax == pinf;  // the student softmax is locally constant: no gradient

  Acc soft = 0, z1 = 0, zs = 0, zt = 0;
  // Student softmax at temperature 1 for the hard term; shares the exps when T == 1.
  const bool separate_hard_exp = hard && (!use_soft || kind == KD_MSE || inv_t != Acc(1));
  if (separate_hard_exp) {
#pragma omp simd reduction(+ : z1)
    for (int64_t j = 0; j < V; ++j) z1 += exp_acc(shift_by_max(C::load(s[j]), smax));
  }

  if (use_soft && kind == KD_MSE) {
#pragma omp simd reduction(+ : soft)
    for (int64_t j = 0; j < V; ++j) {
      const Acc a = C::load(s[j]), b = C::load(t[j]);
      const Acc d = a == b ? zero : a - b;
      soft += d * d;
    }
  } else if (use_soft) {
    Acc dot = 0;
    const bool kl = kind == KD_KL;
#pragma omp simd reduction(+ : zs, zt, dot)
    for (int64_t j = 0; j < V; ++j) {
      // log of the unnormalised probabilities, <= 0: shift first, then scale by 1/T
      const Acc a = shift_by_max(C::load(s[j]), smax) * inv_t;
      const Acc b = shift_by_max(C::load(t[j]), tmax) * inv_t;
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

  Acc loss = use_soft ? ws * soft : zero;
  if (hard) loss += wh * (std::log(z1) - shift_by_max(C::load(s[label]), smax));

  if (g) {
    const Acc inv_z1 = hard ? Acc(1) / z1 : zero;
    // the softmax parts of the gradient; zero where the student softmax is constant (+inf)
    const Acc whs = s_inf ? zero : wh;
    if (!use_soft || kind == KD_MSE) {
      const Acc two_ws = use_soft ? 2 * ws : zero;
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        const Acc a = C::load(s[j]), b = C::load(t[j]);
        Acc gj = use_soft ? two_ws * (a == b ? zero : a - b) : zero;
        if (hard && !s_inf) gj += whs * (exp_acc(shift_by_max(a, smax)) * inv_z1 - (j == label ? Acc(1) : zero));
        g[j] = C::store(gj);
      }
    } else {
      const Acc cs = s_inf ? zero : ws * inv_t / zs, ct = s_inf ? zero : ws * inv_t / zt;
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        Acc gj = s_inf ? zero : cs * es[j] - ct * et[j];
        if (hard && !s_inf) {
          const Acc p1 = separate_hard_exp ? exp_acc(shift_by_max(C::load(s[j]), smax)) * inv_z1
                                           : es[j] * inv_z1;
          gj += whs * (p1 - (j == label ? Acc(1) : zero));
        }
        g[j] = C::store(gj);
      }
    }
  }
  return loss;
}

}  // namespace kdfast::cpu
