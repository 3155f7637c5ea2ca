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

// Forward step of one row. gx: [4H] input projection (x W_ih^T); bias: [4H] (b_ih + b_hh, or
// zeros; added here rather than to the whole gx buffer, which would cost a pass over it);
// rec: [4H] recurrent part (h W_hh^T); c: [H] cell state, updated in place; h: [H] new hidden
// state; out: [H] the output row. When SAVE, the activated gates overwrite gx and the new
// cell state is copied to cell_save (what backward needs).
template <bool SAVE, class T>
KDFAST_INLINE void lstm_fwd_row(T* __restrict gx, const T* __restrict bias,
                                const T* __restrict rec, T* __restrict c,
                                T* __restrict h, T* __restrict out, T* __restrict cell_save,
                                int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid_acc(gx[j] + bias[j] + rec[j]);
    const T f = sigmoid_acc(gx[H + j] + bias[H + j] + rec[H + j]);
    const T g = tanh_acc(gx[2 * H + j] + bias[2 * H + j] + rec[2 * H + j]);
    const T o = sigmoid_acc(gx[3 * H + j] + bias[3 * H + j] + rec[3 * H + j]);
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
// GEMM) and da_save (its place in the [2, B*T, 4H] buffer of the GEMMs after the loop), and adds
// it to db [4H] (the bias gradient, summed here instead of in another pass over da_save).
template <class T>
KDFAST_INLINE void lstm_bwd_row(const T* __restrict gates, const T* __restrict c,
                                const T* __restrict c_prev, const T* __restrict dout,
                                const T* __restrict dh, T* __restrict dc, T* __restrict da,
                                T* __restrict da_save, T* __restrict db, int64_t H) {
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
    db[j] += dai;
    db[H + j] += daf;
    db[2 * H + j] += dag;
    db[3 * H + j] += dao;
  }
}

// The per-step recurrent GEMM, C[n, N] = A[n, K] @ B[K, N], with B packed once per call into
// column panels of NB = 128 bytes: panel p holds B[k][p*NB + j] at Bp[(p*K + k)*NB + j], zero
// past N. C has room for whole panels (ldc >= panels * NB).
// Register block: MR rows x 2 vectors V of accumulators over a strip of 2 vectors of a panel,
// the panel (K x 128 bytes: 19 KiB at K = 150) streamed from L1. The block must fit the vector
// registers, so the caller picks V and MR per ISA (bilstm.cpp): with 64-byte vectors (one strip
// per panel) on Zen 4, 103-114 GFLOP/s for the step shapes of H = 150 and 300 standalone.
template <class T>
constexpr int64_t panel_width() { return 2 * 64 / static_cast<int64_t>(sizeof(T)); }

template <class T>
inline void pack_panels(const T* src, int64_t K, int64_t N, bool src_is_nk, T* dst) {
  // src is B ([K, N], row-major) or, with src_is_nk, B^T ([N, K], row-major).
  constexpr int64_t NB = panel_width<T>();
  const int64_t panels = (N + NB - 1) / NB;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < NB; ++j) {
        const int64_t col = p * NB + j;
        dst[(p * K + k) * NB + j] = col >= N ? T(0) : (src_is_nk ? src[col * K + k] : src[k * N + col]);
      }
}

// C[MR, 2L] = A[MR, K] @ strip, where the strip's row k is at bp + k * NB.
template <int MR, class T, class V>
KDFAST_INLINE void gemm_micro(const T* __restrict a, int64_t lda, const T* __restrict bp, int64_t K,
                              T* __restrict c, int64_t ldc) {
  constexpr int64_t L = sizeof(V) / sizeof(T), NB = panel_width<T>();
  V acc[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V b0, b1;
    std::memcpy(&b0, bp + k * NB, sizeof(V));
    std::memcpy(&b1, bp + k * NB + L, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const T x = a[r * lda + k];
      acc[r][0] += x * b0;
      acc[r][1] += x * b1;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    std::memcpy(c + r * ldc, &acc[r][0], sizeof(V));
    std::memcpy(c + r * ldc + L, &acc[r][1], sizeof(V));
  }
}

// The last m < M rows of a strip.
template <int M, class T, class V>
KDFAST_INLINE void gemm_rest(int64_t m, const T* a, int64_t lda, const T* bp, int64_t K, T* c,
                             int64_t ldc) {
  if constexpr (M > 0) {
    if (m == M)
      gemm_micro<M, T, V>(a, lda, bp, K, c, ldc);
    else
      gemm_rest<M - 1, T, V>(m, a, lda, bp, K, c, ldc);
  }
}

template <class T, class V, int MR>
KDFAST_INLINE void gemm_packed(int64_t n, int64_t K, int64_t panels, const T* a, int64_t lda,
                               const T* bp, T* c, int64_t ldc) {
  constexpr int64_t NB = panel_width<T>(), strip = 2 * sizeof(V) / sizeof(T);
  static_assert(NB % strip == 0, "a panel is a whole number of strips");
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t j = 0; j < NB; j += strip) {
      const T* panel = bp + p * K * NB + j;
      T* cp = c + p * NB + j;
      int64_t r = 0;
      for (; r + MR <= n; r += MR) gemm_micro<MR, T, V>(a + r * lda, lda, panel, K, cp + r * ldc, ldc);
      gemm_rest<MR - 1, T, V>(n - r, a + r * lda, lda, panel, K, cp + r * ldc, ldc);
    }
}

}  // namespace kdfast::cpu
