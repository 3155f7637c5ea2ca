// Relation losses straight from the projections (attention KL / TinyBERT MSE from Q and K,
// MiniLM(v2) value / Q-Q / K-K relations), CPU: the op schema for every backend and its CPU
// implementation. No L x L map is ever stored.
//
// relation_loss(student[A_s, B_s], teacher[A_t, B_t], mask?, scale, kind, compute_grad)
//   -> (loss[1], grads [dA_s, dB_s] or [])
// A_s, B_s: contiguous [B, R, L, ds]; A_t, B_t: contiguous [B, R, L, dt]; mask: [B, L] 0/1 in the
// accumulation dtype; scale: the 1-element normaliser; kind: 0 TinyBERT MSE, 1 masked MSE, 2 KL
// (kdfast/reference/kinds.py). S = A B^T / sqrt(d) per (b, r); definition in
// kdfast/reference/relation.py.
//
// Scheme (flash-attention style, fp32 accumulation, fp64 for fp64):
//  loop 1, parallel over (b*r, query blocks of BQ rows): the block's A rows and the plane's B
//    (packed, O(L*d) per task) stay in scratch; key tiles of BK keys are streamed. KL: pass 1
//    keeps the running max and exp-sum of both rows (lse), pass 2 adds
//    sum_k p_t (log p_t - log p_s) and dA += c_s * dS B_s with dS = w_q (p_s - p_t); MSE: one
//    pass. The rows' lse go to an O(B*R*L) buffer.
//  loop 2 (only for the gradient), parallel over (b*r, key blocks of BK keys): recomputes the
//    score tiles of every query tile against the block and accumulates dB = c_s * dS^T A_s.
//  By plane instead, when there are at least two planes per thread and a gradient: one task
//    per plane runs loop 1 over its query blocks and accumulates dB^T of the whole plane too
//    (O(L*d) per thread), so nothing is recomputed.
// Score tiles and both gradient products are register-blocked GEMMs (score_tile.h).
// Extra memory: O(L*d) per thread + O(B*R*L); every output row is written by one task (no
// atomics, deterministic).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kdfast/cpu_codec_torch.h"
#include "kdfast/relation_torch.h"
#include "kdfast/score_tile.h"

namespace kdfast::cpu {
namespace {

constexpr int64_t BQ = 32;  // query rows per loop-1 task / per loop-2 query tile
enum RelKind { REL_TINYBERT_MSE = 0, REL_MSE = 1, REL_KL = 2 };

template <class C>
struct RelArgs {
  using T = typename C::T;
  using Acc = typename C::Acc;
  const T* as;
  const T* bs;
  const T* at;
  const T* bt;
  T* ga;  // nullptr: no gradient
  T* gb;
  const Acc* mask;  // [B, L] or nullptr
  Acc scale;
  int64_t R, L, ds, dt;
  int kind;
  Acc* lse;  // [B*R*L, 2] (KL only)
};

// Loads rows [r0, r0 + n) of a [L, d] plane into dst [n, d] (accumulation dtype).
template <class C>
KDFAST_INLINE void load_rows(const typename C::T* src, int64_t r0, int64_t n, int64_t d,
                             typename C::Acc* dst) {
  for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
    for (int64_t e = 0; e < d; ++e) dst[i * d + e] = C::load(src[(r0 + i) * d + e]);
  }
}

// Packs rows [r0, r0 + n) of a [L, d] plane transposed into dst [d, ld] at columns [0, n);
// columns [n, pad) are zeroed.
template <class C>
KDFAST_INLINE void pack_t(const typename C::T* src, int64_t r0, int64_t n, int64_t pad, int64_t d,
                          int64_t ld, typename C::Acc* dst) {
  for (int64_t e = 0; e < d; ++e) {
    for (int64_t j = 0; j < n; ++j) dst[e * ld + j] = C::load(src[(r0 + j) * d + e]);
    for (int64_t j = n; j < pad; ++j) dst[e * ld + j] = 0;
  }
}

// Per-entry dS for a tile row (MSE kinds) and its loss; wk: key weights of the tile.
template <class Acc>
KDFAST_INLINE Acc mse_row(const Acc* __restrict s, const Acc* __restrict t,
                          const Acc* __restrict wk, bool tinybert, Acc cq, Acc* __restrict g) {
  Acc loss = 0;
#pragma omp simd reduction(+ : loss)
  for (int j = 0; j < BK; ++j) {
    Acc a = s[j], b = t[j];
    const bool live = !(a <= Acc(-100)) || !tinybert;
    if (tinybert) {
      a = live ? a : Acc(0);
      b = b <= Acc(-100) ? Acc(0) : b;
    }
    const Acc diff = (wk[j] == Acc(0) || a == b) ? Acc(0) : a - b;
    loss += diff * diff;
    g[j] = live ? Acc(2) * cq * diff : Acc(0);
  }
  return cq * loss;
}

// dS of a KL tile row from the row's lse; returns the row's loss contribution.
template <class Acc>
KDFAST_INLINE Acc kl_row(const Acc* __restrict s, const Acc* __restrict t, Acc lse_s, Acc lse_t,
                         Acc cq, Acc* __restrict g) {
  Acc loss = 0;
  // A teacher probability of 0 (a masked key) contributes 0; a NaN one (NaN in the teacher's
  // row: its lse is NaN) contributes NaN, as in the reference. Only a dead teacher row (lse
  // -inf, every key -inf) is skipped.
  const bool live = lse_t != neg_inf<Acc>();
#pragma omp simd reduction(+ : loss)
  for (int j = 0; j < BK; ++j) {
    const Acc ls = s[j] - lse_s, lt = t[j] - lse_t;  // -inf for masked keys
    const Acc ps = exp_acc(ls), pt = exp_acc(lt);
    loss += live && pt != Acc(0) ? pt * (lt - ls) : Acc(0);
    g[j] = cq * (ps - pt);
  }
  return cq * loss;
}

// dS of a score tile's rows into g [nq, BK] and their loss. ss, st: the tile's student and
// teacher scores (KL: masked keys are set to -inf in place); wk: the tile's key weights; cq:
// the rows' weights (0: the row does not count, dS = 0); KL: the rows' lse are
// lse_s[i * lse_stride], lse_t[i * lse_stride].
template <class Acc>
KDFAST_INLINE Acc tile_ds(Acc* ss, Acc* st, const Acc* wk, const Acc* cq, int64_t nq, int kind,
                          const Acc* lse_s, const Acc* lse_t, int64_t lse_stride, Acc* g) {
  const Acc ninf = neg_inf<Acc>();
  Acc total = 0;
  for (int64_t i = 0; i < nq; ++i, g += BK) {
    if (cq[i] == Acc(0)) {
      std::fill_n(g, BK, Acc(0));
      continue;
    }
    Acc* s = ss + i * BK;
    Acc* t = st + i * BK;
    if (kind == REL_KL) {
#pragma omp simd
      for (int j = 0; j < BK; ++j) {
        s[j] = wk[j] != Acc(0) ? s[j] : ninf;
        t[j] = wk[j] != Acc(0) ? t[j] : ninf;
      }
      total += kl_row(s, t, lse_s[i * lse_stride], lse_t[i * lse_stride], cq[i], g);
    } else {
      total += mse_row(s, t, wk, kind == REL_TINYBERT_MSE, cq[i], g);
    }
  }
  return total;
}

template <class Acc>
struct Scratch1 {
  std::vector<Acc> buf;
  Acc *qs, *qt, *kst, *ks, *ktt, *wk, *ss, *st, *g, *dq, *qst, *dkt;
  int64_t plane = -1;
  Scratch1(int64_t L, int64_t Lp, int64_t ds, int64_t dt, bool by_plane) {
    buf.resize(BQ * ds + BQ * dt + 2 * ds * Lp + dt * Lp + Lp + 3 * BQ * BK + BQ * ds +
               (by_plane ? BQ * ds + ds * Lp : 0));
    qs = buf.data();
    qt = qs + BQ * ds;
    kst = qt + BQ * dt;
    ks = kst + ds * Lp;
    ktt = ks + ds * Lp;
    wk = ktt + dt * Lp;
    ss = wk + Lp;
    st = ss + BQ * BK;
    g = st + BQ * BK;
    dq = g + BQ * BK;
    qst = dq + BQ * ds;
    dkt = by_plane ? qst + BQ * ds : nullptr;
    (void)L;
  }
};

// A_s^T [d, BQ] of a query block, rows that do not count zeroed (no 0 * NaN in dB).
template <class Acc>
KDFAST_INLINE void transpose_rows(const Acc* q, int64_t nq, int64_t d, const Acc* cq, Acc* qt) {
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t e = 0; e < d; ++e) qt[e * BQ + i] = cq[i] == Acc(0) ? Acc(0) : q[i * d + e];
}

// dB rows [k0, k0 + nk) of a plane from the accumulated dB^T [d, ld].
template <class C>
KDFAST_INLINE void store_db(typename C::T* out, const typename C::Acc* dkt, int64_t ld, int64_t nk,
                            int64_t d) {
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t e = 0; e < d; ++e) out[j * d + e] = C::store(dkt[e * ld + j]);
}

// Loop 1: one (plane, query block) task. With w.dkt (by plane), it also accumulates the
// block's share of the plane's dB^T, so that loop 2 is not needed.
template <class C, class Tile>
KDFAST_INLINE typename C::Acc fwd_task(const RelArgs<C>& a, int64_t task, Scratch1<typename C::Acc>& w) {
  using Acc = typename C::Acc;
  const int64_t L = a.L, ds = a.ds, dt = a.dt;
  const int64_t nqb = (L + BQ - 1) / BQ;
  const int64_t Lp = (L + BK - 1) / BK * BK;
  const int64_t p = task / nqb, q0 = (task % nqb) * BQ, nq = std::min<int64_t>(BQ, L - q0);
  const int64_t b = p / a.R;
  const Acc* m = a.mask ? a.mask + b * L : nullptr;
  const bool kl = a.kind == REL_KL, tiny = a.kind == REL_TINYBERT_MSE;
  const Acc cs = Acc(1) / std::sqrt(Acc(ds)), ct = Acc(1) / std::sqrt(Acc(dt));
  const Acc ninf = neg_inf<Acc>();
  Acc cq[BQ];
  bool any = false;
  for (int64_t i = 0; i < nq; ++i) {
    cq[i] = (m && !tiny) ? a.scale * m[q0 + i] : a.scale;
    any |= cq[i] != Acc(0);
  }
  if (a.ga) {
    for (int64_t i = 0; i < nq * ds; ++i) w.dq[i] = 0;
  }
  Acc total = 0;
  if (any) {
    if (w.plane != p) {  // pack the plane's keys once per thread and plane
      pack_t<C>(a.bs + p * L * ds, 0, L, Lp, ds, Lp, w.kst);
      pack_t<C>(a.bt + p * L * dt, 0, L, Lp, dt, Lp, w.ktt);
      for (int64_t k = 0; k < Lp; ++k) w.wk[k] = k < L ? (m ? (m[k] != Acc(0) ? Acc(1) : Acc(0)) : Acc(1)) : Acc(0);
      if (a.ga) {  // masked and padding keys zeroed: no 0 * NaN in dA
        load_rows<C>(a.bs + p * L * ds, 0, L, ds, w.ks);
        for (int64_t k = 0; k < Lp; ++k)
          if (w.wk[k] == Acc(0)) std::fill_n(w.ks + k * ds, ds, Acc(0));
      }
      w.plane = p;
    }
    load_rows<C>(a.as + p * L * ds, q0, nq, ds, w.qs);
    load_rows<C>(a.at + p * L * dt, q0, nq, dt, w.qt);
    if (w.dkt) transpose_rows(w.qs, nq, ds, cq, w.qst);
    Acc ms[BQ], zs[BQ], mt[BQ], zt[BQ], lse_s[BQ], lse_t[BQ];
    if (kl) {
      for (int64_t i = 0; i < nq; ++i) ms[i] = mt[i] = ninf, zs[i] = zt[i] = 0;
      for (int64_t k0 = 0; k0 < Lp; k0 += BK) {
        score_tile<Tile>(w.qs, nq, ds, w.kst + k0, Lp, cs, w.ss);
        score_tile<Tile>(w.qt, nq, dt, w.ktt + k0, Lp, ct, w.st);
        const Acc* wk = w.wk + k0;
        for (int64_t i = 0; i < nq; ++i) {
          if (cq[i] == Acc(0)) continue;
          Acc* s = w.ss + i * BK;
          Acc* t = w.st + i * BK;
          Acc mxs = ninf, mxt = ninf;
#pragma omp simd reduction(max : mxs, mxt)
          for (int j = 0; j < BK; ++j) {
            s[j] = wk[j] != Acc(0) ? s[j] : ninf;
            t[j] = wk[j] != Acc(0) ? t[j] : ninf;
            mxs = s[j] > mxs ? s[j] : mxs;
            mxt = t[j] > mxt ? t[j] : mxt;
          }
          if (mxs > ms[i]) {  // rescale the running sums (none when the new max is -inf)
            zs[i] = ms[i] == ninf ? Acc(0) : zs[i] * exp_acc(ms[i] - mxs);
            ms[i] = mxs;
          }
          if (mxt > mt[i]) {
            zt[i] = mt[i] == ninf ? Acc(0) : zt[i] * exp_acc(mt[i] - mxt);
            mt[i] = mxt;
          }
          if (ms[i] == ninf && mt[i] == ninf) continue;
          const Acc ms_i = ms[i] == ninf ? Acc(0) : ms[i], mt_i = mt[i] == ninf ? Acc(0) : mt[i];
          Acc es = 0, et = 0;
#pragma omp simd reduction(+ : es, et)
          for (int j = 0; j < BK; ++j) {
            es += exp_acc(s[j] - ms_i);
            et += exp_acc(t[j] - mt_i);
          }
          zs[i] += es;
          zt[i] += et;
        }
      }
      for (int64_t i = 0; i < nq; ++i) {
        lse_s[i] = ms[i] + std::log(zs[i]);
        lse_t[i] = mt[i] + std::log(zt[i]);
        if (a.lse) {
          a.lse[(p * L + q0 + i) * 2] = lse_s[i];
          a.lse[(p * L + q0 + i) * 2 + 1] = lse_t[i];
        }
      }
    }
    for (int64_t k0 = 0; k0 < Lp; k0 += BK) {
      score_tile<Tile>(w.qs, nq, ds, w.kst + k0, Lp, cs, w.ss);
      score_tile<Tile>(w.qt, nq, dt, w.ktt + k0, Lp, ct, w.st);
      total += tile_ds(w.ss, w.st, w.wk + k0, cq, nq, a.kind, lse_s, lse_t, 1, w.g);
      if (a.ga)  // dA += c_s * dS B_s over the tile's keys
        tile_gemm<Tile, true>(w.g, nq, BK, BK, w.ks + k0 * ds, ds, ds, cs, w.dq, ds);
      if (w.dkt)  // dB^T += c_s * A_s^T dS over the block's queries
        tile_gemm<Tile, true>(w.qst, ds, BQ, nq, w.g, BK, BK, cs, w.dkt + k0, Lp);
    }
  }
  if (a.ga) {
    typename C::T* out = a.ga + (p * L + q0) * ds;
    for (int64_t i = 0; i < nq * ds; ++i) out[i] = C::store(w.dq[i]);
  }
  return total;
}

template <class Acc>
struct Scratch2 {
  std::vector<Acc> buf;
  Acc *kst, *ktt, *qs, *qt, *qst, *ss, *st, *g, *dkt;
  Scratch2(int64_t ds, int64_t dt) {
    buf.resize(ds * BK + dt * BK + 2 * BQ * ds + BQ * dt + 3 * BQ * BK + ds * BK);
    kst = buf.data();
    ktt = kst + ds * BK;
    qs = ktt + dt * BK;
    qt = qs + BQ * ds;
    qst = qt + BQ * dt;
    ss = qst + BQ * ds;
    st = ss + BQ * BK;
    g = st + BQ * BK;
    dkt = g + BQ * BK;
  }
};

// Loop 2: dB for one (plane, key block) task.
template <class C, class Tile>
KDFAST_INLINE void bwd_task(const RelArgs<C>& a, int64_t task, Scratch2<typename C::Acc>& w) {
  using Acc = typename C::Acc;
  const int64_t L = a.L, ds = a.ds, dt = a.dt;
  const int64_t nkb = (L + BK - 1) / BK;
  const int64_t p = task / nkb, k0 = (task % nkb) * BK, nk = std::min<int64_t>(BK, L - k0);
  const int64_t b = p / a.R;
  const Acc* m = a.mask ? a.mask + b * L : nullptr;
  const bool tiny = a.kind == REL_TINYBERT_MSE;
  const Acc cs = Acc(1) / std::sqrt(Acc(ds)), ct = Acc(1) / std::sqrt(Acc(dt));
  Acc wk[BK];
  bool any_key = false;
  for (int j = 0; j < BK; ++j) {
    wk[j] = j < nk ? (m ? (m[k0 + j] != Acc(0) ? Acc(1) : Acc(0)) : Acc(1)) : Acc(0);
    any_key |= wk[j] != Acc(0);
  }
  for (int64_t i = 0; i < ds * BK; ++i) w.dkt[i] = 0;
  if (any_key) {
    pack_t<C>(a.bs + p * L * ds, k0, nk, BK, ds, BK, w.kst);
    pack_t<C>(a.bt + p * L * dt, k0, nk, BK, dt, BK, w.ktt);
    for (int64_t q0 = 0; q0 < L; q0 += BQ) {
      const int64_t nq = std::min<int64_t>(BQ, L - q0);
      Acc cq[BQ];
      bool any = false;
      for (int64_t i = 0; i < nq; ++i) {
        cq[i] = (m && !tiny) ? a.scale * m[q0 + i] : a.scale;
        any |= cq[i] != Acc(0);
      }
      if (!any) continue;
      load_rows<C>(a.as + p * L * ds, q0, nq, ds, w.qs);
      load_rows<C>(a.at + p * L * dt, q0, nq, dt, w.qt);
      score_tile<Tile>(w.qs, nq, ds, w.kst, BK, cs, w.ss);
      score_tile<Tile>(w.qt, nq, dt, w.ktt, BK, ct, w.st);
      transpose_rows(w.qs, nq, ds, cq, w.qst);
      const Acc* lse = a.lse ? a.lse + (p * L + q0) * 2 : nullptr;  // KL: (lse_s, lse_t) pairs
      tile_ds(w.ss, w.st, wk, cq, nq, a.kind, lse, lse ? lse + 1 : nullptr, 2, w.g);
      // dB^T += c_s * A_s^T dS over the tile's queries
      tile_gemm<Tile, true>(w.qst, ds, BQ, nq, w.g, BK, BK, cs, w.dkt, BK);
    }
  }
  store_db<C>(a.gb + (p * L + k0) * ds, w.dkt, BK, nk, ds);
}

// One version of each task loop per ISA (function multiversioning, cpu_math.h), with its tile.
#define KDFAST_REL_VERSION(ISA, TILE, CODEC)                                                        \
  ISA void rel_fwd(const RelArgs<CODEC>& a, int64_t begin, int64_t end, CODEC::Acc* task_loss) {    \
    const int64_t Lp = (a.L + BK - 1) / BK * BK;                                                    \
    Scratch1<CODEC::Acc> w(a.L, Lp, a.ds, a.dt, false);                                             \
    for (int64_t t = begin; t < end; ++t) task_loss[t] = fwd_task<CODEC, TILE>(a, t, w);            \
  }                                                                                                 \
  ISA void rel_planes(const RelArgs<CODEC>& a, int64_t begin, int64_t end, CODEC::Acc* task_loss) { \
    const int64_t Lp = (a.L + BK - 1) / BK * BK, nqb = (a.L + BQ - 1) / BQ;                         \
    Scratch1<CODEC::Acc> w(a.L, Lp, a.ds, a.dt, true);                                              \
    for (int64_t p = begin; p < end; ++p) {                                                         \
      std::fill_n(w.dkt, a.ds * Lp, CODEC::Acc(0));                                                 \
      for (int64_t t = p * nqb; t < (p + 1) * nqb; ++t)                                             \
        task_loss[t] = fwd_task<CODEC, TILE>(a, t, w);                                              \
      store_db<CODEC>(a.gb + p * a.L * a.ds, w.dkt, Lp, a.L, a.ds);                                 \
    }                                                                                               \
  }                                                                                                 \
  ISA void rel_bwd(const RelArgs<CODEC>& a, int64_t begin, int64_t end) {                           \
    Scratch2<CODEC::Acc> w(a.ds, a.dt);                                                             \
    for (int64_t t = begin; t < end; ++t) bwd_task<CODEC, TILE>(a, t, w);                           \
  }
#if KDFAST_ISA_VERSIONS
#define KDFAST_REL_TASKS(CODEC)                                                                 \
  KDFAST_REL_VERSION(KDFAST_ISA_AVX512, TileAvx512, CODEC)                                      \
  KDFAST_REL_VERSION(KDFAST_ISA_AVX2, TileAvx2, CODEC)                                          \
  KDFAST_REL_VERSION(KDFAST_ISA_BASE, TileBase, CODEC)
#else
#define KDFAST_REL_TASKS(CODEC) KDFAST_REL_VERSION(KDFAST_ISA_BASE, TileBase, CODEC)
#endif
KDFAST_REL_TASKS(F32)
KDFAST_REL_TASKS(F64)
KDFAST_REL_TASKS(BF16)
KDFAST_REL_TASKS(F16)
#undef KDFAST_REL_TASKS
#undef KDFAST_REL_VERSION

template <class C>
at::Tensor launch(const std::vector<at::Tensor>& s, const std::vector<at::Tensor>& t, std::vector<at::Tensor>& g,
                  const at::Tensor& mask, const at::Tensor& scale, int64_t kind) {
  using T = typename C::T;
  using Acc = typename C::Acc;
  const auto acc_type = c10::CppTypeToScalarType<Acc>::value;
  const int64_t B = s[0].size(0), R = s[0].size(1), L = s[0].size(2);
  const int64_t P = B * R;
  const bool grad = !g.empty();
  // The gradient by plane (one pass, no recomputation in loop 2) when the planes keep every
  // thread busy: at least two per thread bounds the imbalance to 1.5x, less than the ~1.5-2x
  // of work that loop 2 adds.
  const bool by_plane = grad && P >= 2 * at::get_num_threads();
  at::Tensor lse;
  if (kind == REL_KL && grad && !by_plane)
    lse = at::empty({P * L * 2}, s[0].options().dtype(acc_type));
  RelArgs<C> a{reinterpret_cast<const T*>(s[0].const_data_ptr()),
               reinterpret_cast<const T*>(s[1].const_data_ptr()),
               reinterpret_cast<const T*>(t[0].const_data_ptr()),
               reinterpret_cast<const T*>(t[1].const_data_ptr()),
               grad ? reinterpret_cast<T*>(g[0].mutable_data_ptr()) : nullptr,
               grad ? reinterpret_cast<T*>(g[1].mutable_data_ptr()) : nullptr,
               mask.defined() ? mask.const_data_ptr<Acc>() : nullptr,
               scale.const_data_ptr<Acc>()[0],
               R, L, s[0].size(3), t[0].size(3), static_cast<int>(kind),
               lse.defined() ? lse.mutable_data_ptr<Acc>() : nullptr};
  const int64_t n1 = P * ((L + BQ - 1) / BQ);
  at::Tensor task_loss = at::empty({n1}, s[0].options().dtype(acc_type));
  Acc* tl = task_loss.mutable_data_ptr<Acc>();
  if (by_plane) {
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) { rel_planes(a, begin, end, tl); });
    return task_loss.sum().reshape({1});
  }
  at::parallel_for(0, n1, 1, [&](int64_t begin, int64_t end) { rel_fwd(a, begin, end, tl); });
  if (grad) {
    const int64_t n2 = P * ((L + BK - 1) / BK);
    at::parallel_for(0, n2, 1, [&](int64_t begin, int64_t end) { rel_bwd(a, begin, end); });
  }
  return task_loss.sum().reshape({1});
}

std::tuple<at::Tensor, std::vector<at::Tensor>> relation_loss_cpu(
    at::TensorList student, at::TensorList teacher, const std::optional<at::Tensor>& mask,
    const at::Tensor& scale, int64_t kind, bool compute_grad) {
  const auto acc_type = check_relation_loss_args(student, teacher, mask, scale, kind);
  const auto dtype = student[0].scalar_type();
  std::vector<at::Tensor> s{student[0].contiguous(), student[1].contiguous()};
  std::vector<at::Tensor> t{teacher[0].contiguous(), teacher[1].contiguous()};
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  const auto sc = scale.contiguous();
  std::vector<at::Tensor> g;
  if (compute_grad) {
    g.push_back(at::empty_like(s[0], at::MemoryFormat::Contiguous));
    g.push_back(at::empty_like(s[1], at::MemoryFormat::Contiguous));
  }
  if (s[0].numel() == 0) {
    for (auto& x : g) x.zero_();
    return {at::zeros({1}, s[0].options().dtype(acc_type)), g};
  }
  const auto loss = with_codec(dtype, "relation_loss", [&](auto codec) {
    return launch<decltype(codec)>(s, t, g, m, sc, kind);
  });
  return {loss, g};
}

}  // namespace
}  // namespace kdfast::cpu

TORCH_LIBRARY_FRAGMENT(kdfast, m) {
  m.def(
      "relation_loss(Tensor[] student, Tensor[] teacher, Tensor? mask, Tensor scale, int kind, "
      "bool compute_grad) -> (Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("relation_loss", &kdfast::cpu::relation_loss_cpu); }
