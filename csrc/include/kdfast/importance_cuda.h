// Launchers of the CUDA unit-importance reduction (csrc/cuda/importance.cu), callable from the
// torch glue (csrc/cuda/importance_cuda.cpp) without CUDA half/bf16 types in the interface.
#pragma once

#include <cstdint>

#include "kdfast/cuda_dtype.h"

#include <cuda_runtime_api.h>

namespace kdfast::cuda {

// Rows per partial sum: at least 256, more when needed to keep the chunk count within the
// grid's y limit (65535). The glue allocates unit_taylor_chunks(rows) * K accumulators.
inline int64_t unit_taylor_rows_per_chunk(int64_t rows) {
  const int64_t need = (rows + 65534) / 65535;
  return need > 256 ? need : 256;
}
inline int64_t unit_taylor_chunks(int64_t rows) {
  const int64_t per = unit_taylor_rows_per_chunk(rows);
  return rows == 0 ? 0 : (rows + per - 1) / per;
}

// out[u] = sum_{t, j in unit u} a[t, k] * g[t, k] for contiguous a, g [rows, K].
// `partial` (chunks * K accumulators) and `out` (units) are float, or double for kFloat64.
// Deterministic: fixed-order reductions, no atomics.
cudaError_t unit_taylor_launch(const void* a, const void* g, void* partial, void* out,
                               int64_t rows, int64_t K, int64_t units, Dtype dtype,
                               cudaStream_t stream);

}  // namespace kdfast::cuda
