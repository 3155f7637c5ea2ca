// Unit importance sums for ETD scoring (plain C++, no torch headers).
//
// For activations a[T, K] and their gradients g[T, K] (T rows = tokens, K units), the
// first-order Taylor score of every column is  col[k] = sum_t a[t, k] * g[t, k].  Summed
// over the K / units consecutive columns of a unit it gives the per-head score (context x
// d(context)), per-FFN-neuron and per-hidden-dimension Taylor sums: for a Linear, LayerNorm
// or Embedding these activation x gradient sums equal sum(W * dL/dW) over the parameter
// slice of that unit, so no weight gradient is ever formed.
#pragma once

#include "kdfast/cpu_math.h"

namespace kdfast::cpu {

// acc[k] += sum_{t in [row_begin, row_end)} a[t, k] * g[t, k]; rows are contiguous of length K.
template <class C>
KDFAST_INLINE void unit_taylor_rows(const typename C::T* __restrict a, const typename C::T* __restrict g,
                                    typename C::Acc* __restrict acc, int64_t row_begin,
                                    int64_t row_end, int64_t K) {
  for (int64_t t = row_begin; t < row_end; ++t) {
    const typename C::T* at = a + t * K;
    const typename C::T* gt = g + t * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) acc[k] += C::load(at[k]) * C::load(gt[k]);
  }
}

}  // namespace kdfast::cpu
