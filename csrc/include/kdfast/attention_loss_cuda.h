// Plain-C++ interface between the CUDA attention-loss kernels (csrc/cuda/attention_loss.cu)
// and their torch glue (csrc/cuda/attention_loss_cuda.cpp). No torch and no CUDA headers.
#pragma once

#include <cstdint>

#include "kdfast/cuda_dtype.h"

typedef struct CUstream_st* cudaStream_t;

namespace kdfast::cuda {

// Query rows handled by one block (one warp per row).
constexpr int kAttnRowsPerBlock = 8;
// Layers per launch: the per-layer pointers travel in the kernel's parameter struct.
constexpr int kAttnMaxLayers = 64;

inline int64_t attention_loss_blocks(int64_t rows_per_layer) {
  return (rows_per_layer + kAttnRowsPerBlock - 1) / kAttnRowsPerBlock;
}

// Writes partial[l * blocks + i] (accumulation dtype: double for kFloat64, else float) for every
// layer l and row block i, and the student gradient g[l] when g is not null. mask: [B, L] 0/1
// in the accumulation dtype or null; scale: one element of the accumulation dtype (device).
// Returns 0 or the cudaError_t value of the first failed launch.
int attention_loss_launch(Dtype dtype, int64_t n_layers, const void* const* s, const void* const* t,
                          void* const* g, const void* mask, const void* scale, void* partial,
                          int64_t B, int64_t H, int64_t L, int kind, double inv_t,
                          cudaStream_t stream);

}  // namespace kdfast::cuda
