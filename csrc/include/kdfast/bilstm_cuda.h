// Plain-pointer launchers of the BiLSTM CUDA kernels (csrc/cuda/bilstm.cu). No torch or CUDA
// headers here: the torch glue (csrc/cuda/bilstm_cuda.cpp) includes this and passes raw
// pointers, sizes and the stream (as void*, a cudaStream_t).
//
// Layouts (row-major, batch-first, both directions side by side, as the CPU kernel):
//   gx     [B, T, 8H]  x W_ih^T + b of both directions (gate order i, f, g, o per direction);
//                      with save, overwritten by the activated gates (what backward reads)
//   w_hh   [2, 4H, H]  out [B, T, 2H]   cells [B, T, 2H] (fp32)   h0/c0/h_n/c_n [2, B, H]
//   lengths [B] int64 on the device, or null (every row has length T)
// Storage dtype of gx/w_hh/out/h/c: fp32, bf16 or fp16 (no fp64 kernel); state and math are
// fp32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kdfast/cuda_dtype.h"

namespace kdfast::cuda {

struct BilstmForwardArgs {
  int B, T, H;
  const int64_t* lengths;  // [B] or null
  void* gx;                // [B, T, 8H]
  const void* w_hh;        // [2, 4H, H]
  const void* h0;          // [2, B, H]
  const void* c0;          // [2, B, H]
  void* out;               // [B, T, 2H]; zeroed by the caller when lengths is given
  float* cells;            // [B, T, 2H], or null (inference: gates are not saved either)
  void* hn;                // [2, B, H]
  void* cn;                // [2, B, H]
  float* work;             // bilstm_forward_workspace(B, H) floats
};

struct BilstmBackwardArgs {
  int B, T, H;
  const int64_t* lengths;  // [B] or null
  const void* gates;       // [B, T, 8H] saved by the forward
  const float* cells;      // [B, T, 2H]
  const void* w_hh;        // [2, 4H, H]
  const void* h0;          // [2, B, H]
  const void* c0;          // [2, B, H]
  const void* out;         // [B, T, 2H]
  const void* dout;        // [B, T, 2H]
  const void* dhn;         // [2, B, H]
  const void* dcn;         // [2, B, H]
  void* dgates;            // [2, B, T, 4H] (direction-major); zeroed by the caller with lengths
  void* hprev;             // [2, B, T, H] h_{t-1} of each step (for dW_hh); zeroed likewise
  void* dh0;               // [2, B, H]
  void* dc0;               // [2, B, H]
  float* work;             // bilstm_backward_workspace(B, H) floats
};

size_t bilstm_forward_workspace(int B, int H);
size_t bilstm_backward_workspace(int B, int H);

// Each returns 0 on success, else a cudaError_t value (bilstm_error_string explains it).
int bilstm_forward(const BilstmForwardArgs& args, Dtype dtype, void* stream);
int bilstm_backward(const BilstmBackwardArgs& args, Dtype dtype, void* stream);
const char* bilstm_error_string(int code);

}  // namespace kdfast::cuda
