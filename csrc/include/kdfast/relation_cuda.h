// Plain-C++ interface between the CUDA relation-loss kernels (csrc/cuda/relation.cu) and their
// torch glue (csrc/cuda/relation_cuda.cpp). No torch and no CUDA headers.
#pragma once

#include <cstdint>

#include "kdfast/cuda_dtype.h"

typedef struct CUstream_st* cudaStream_t;

namespace kdfast::cuda {

constexpr int kRelRowsPerWarp = 4;  // rows a warp owns (queries forward, keys backward)
constexpr int kRelWarps = 4;
constexpr int kRelRows = kRelRowsPerWarp * kRelWarps;  // rows a block owns
constexpr int kRelMaxDim = 256;  // head dims: each lane accumulates dims lane + 32 i, i < 8

inline int64_t relation_blocks(int64_t L) { return (L + kRelRows - 1) / kRelRows; }

// The loss partials partial[plane * relation_blocks(L) + query block] (accumulation dtype:
// double for kFloat64, else float), and with ga/gb the student gradients dA_s, dB_s (the
// inputs' dtype). a_s, b_s: [planes, L, ds]; a_t, b_t: [planes, L, dt], contiguous; planes =
// B * R; mask: [B, L] 0/1 in the accumulation dtype or null; scale: one element (device);
// lse: scratch of planes * L * 2 accumulation-dtype elements (KL with a gradient only).
// Returns 0 or the cudaError_t value of the first failure.
int relation_loss_launch(Dtype dtype, const void* a_s, const void* b_s, const void* a_t,
                         const void* b_t, void* ga, void* gb, const void* mask, const void* scale,
                         void* partial, void* lse, int64_t B, int64_t R, int64_t L, int64_t ds,
                         int64_t dt, int kind, cudaStream_t stream);

}  // namespace kdfast::cuda
