// Fused LSTM gate epilogues for one batch row, CPU version (plain C++, no torch headers).
//
// Gate order and formulas are those of torch.nn.LSTM: pre-activations a = [a_i, a_f, a_g, a_o]
// (4 blocks of H), i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o),
// c' = f * c + i * g, h' = o * tanh(c').
// The kernels that include this are compiled once per ISA (KDFAST_CPU_CLONES, cpu_math.h);
// the loops are branch-free so that GCC vectorises them.
#pragma once

#include "kdfast/cpu_math.h"

namespace kdfast::cpu {

KDFAST_INLINE float sigmoid_acc(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
KDFAST_INLINE double sigmoid_acc(double x) { return 1.0 / (1.0 + __builtin_exp(-x)); }
// tanh(x) = 1 - 2 / (1 + exp(2x)); saturates to +-1 exactly (fast_exp clamps its argument).
KDFAST_INLINE float tanh_acc(float x) { return 1.0f - 2.0f / (1.0f + fast_exp(2.0f * x)); }
KDFAST_INLINE double tanh_acc(double x) { return __builtin_tanh(x); }

// Forward step of one row. gx: [4H] input projection + bias (x W_ih^T + b_ih + b_hh);
// rec: [4H] recurrent part (h W_hh^T); c: [H] cell state, updated in place; h: [H] new hidden
// state; out: [H] the output row. When SAVE, the activated gates overwrite gx and the new
// cell state is copied to cell_save (what backward needs).
template <bool SAVE, class T>
KDFAST_INLINE void lstm_fwd_row(T* __restrict gx, const T* __restrict rec, T* __restrict c,
                                T* __restrict h, T* __restrict out, T* __restrict cell_save,
                                int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid_acc(gx[j] + rec[j]);
    const T f = sigmoid_acc(gx[H + j] + rec[H + j]);
    const T g = tanh_acc(gx[2 * H + j] + rec[2 * H + j]);
    const T o = sigmoid_acc(gx[3 * H + j] + rec[3 * H + j]);
    const T cn = f * c[j] + i * g;
    const T hn = o * tanh_acc(cn);
    c[j] = cn;
    h[j] = hn;
    out[j] = hn;
    if constexpr (SAVE) {
      gx[j] = i;
      gx[H + j] = f;
      gx[2 * H + j] = g;
      gx[3 * H + j] = o;
      cell_save[j] = cn;
    }
  }
}

// Backward step of one row. gates: [4H] saved activations (i, f, g, o); c: [H] this step's
// cell state; c_prev: [H] the previous one; dout: [H] gradient of this step's output;
// dh: [H] gradient reaching h from later steps (W_hh^T da of the next step, or dh_n);
// dc: [H] gradient reaching c from later steps, replaced by the one for c_prev.
// Writes the pre-activation gradient da [4H] to both da (contiguous scratch for the step's
// GEMM) and da_save (its place in the [B, T, 8H] buffer of the GEMMs after the loop).
template <class T>
KDFAST_INLINE void lstm_bwd_row(const T* __restrict gates, const T* __restrict c,
                                const T* __restrict c_prev, const T* __restrict dout,
                                const T* __restrict dh, T* __restrict dc, T* __restrict da,
                                T* __restrict da_save, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = gates[j], f = gates[H + j], g = gates[2 * H + j], o = gates[3 * H + j];
    const T tc = tanh_acc(c[j]);
    const T dhj = dh[j] + dout[j];
    const T dcj = dc[j] + dhj * o * (T(1) - tc * tc);
    const T dai = dcj * g * i * (T(1) - i);
    const T daf = dcj * c_prev[j] * f * (T(1) - f);
    const T dag = dcj * i * (T(1) - g * g);
    const T dao = dhj * tc * o * (T(1) - o);
    dc[j] = dcj * f;
    da[j] = dai;
    da[H + j] = daf;
    da[2 * H + j] = dag;
    da[3 * H + j] = dao;
    da_save[j] = dai;
    da_save[H + j] = daf;
    da_save[2 * H + j] = dag;
    da_save[3 * H + j] = dao;
  }
}

}  // namespace kdfast::cpu
