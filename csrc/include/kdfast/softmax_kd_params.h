// Parameters of the fused softmax-distillation CUDA kernel, shared by the torch-free .cu file
// and its torch glue. Pointers are raw device pointers; see csrc/cpu/softmax_kd.cpp for the
// meaning of every field (the CPU and CUDA kernels compute the same thing).
#pragma once

#include <cstdint>

#include "kdfast/cuda_dtype.h"

namespace kdfast {

struct KdLossParams {
  const void* student;        // [rows, cols], dtype
  const void* teacher;        // [rows, cols], dtype
  void* grad;                 // [rows, cols], dtype; nullptr when no gradient is wanted
  const int64_t* labels;      // [rows] or nullptr (no hard term)
  const void* soft_weight;    // [rows], accumulation dtype (double for kFloat64, else float)
  const void* hard_weight;    // [rows] or nullptr
  void* loss;                 // [rows], accumulation dtype
  int64_t rows;
  int64_t cols;
  int kind;                   // 0 KL, 1 soft cross-entropy, 2 MSE
  double temperature;
  Dtype dtype;
};

}  // namespace kdfast
