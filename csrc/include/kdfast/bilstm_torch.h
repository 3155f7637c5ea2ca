// Torch-side argument checks of the BiLSTM layer ops, shared by the CPU and CUDA glue (.cpp
// files only). The Python layer validates user input; these checks guard direct calls of the op.
#pragma once

#include <torch/extension.h>

namespace kdfast {

inline void check_bilstm_layer(const at::Tensor& x, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& lengths, const at::Tensor& h0,
                               const at::Tensor& c0) {
  TORCH_CHECK(x.dim() == 3, "bilstm_layer: x must be [B, T, I], got ", x.sizes());
  const int64_t B = x.size(0), steps = x.size(1), I = x.size(2);
  TORCH_CHECK(B >= 1 && steps >= 1, "bilstm_layer: x must have B >= 1 and T >= 1");
  TORCH_CHECK(w_ih.dim() == 3 && w_ih.size(0) == 2 && w_ih.size(2) == I && w_ih.size(1) % 4 == 0,
              "bilstm_layer: w_ih must be [2, 4H, I], got ", w_ih.sizes());
  const int64_t H = w_ih.size(1) / 4;
  TORCH_CHECK(w_hh.sizes() == at::IntArrayRef({2, 4 * H, H}), "bilstm_layer: w_hh must be [2, ",
              4 * H, ", ", H, "], got ", w_hh.sizes());
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({2, B, H}) && c0.sizes() == h0.sizes(),
              "bilstm_layer: h0 and c0 must be [2, ", B, ", ", H, "]");
  for (const at::Tensor* t : {&w_ih, &w_hh, &h0, &c0})
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "bilstm_layer: all tensors must share x's dtype and device");
  if (bias.has_value()) {
    TORCH_CHECK(bias->sizes() == at::IntArrayRef({2, 4 * H}), "bilstm_layer: bias must be [2, 4H]");
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                "bilstm_layer: bias must share x's dtype and device");
  }
  if (lengths.has_value())
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B &&
                    !at::isFloatingType(lengths->scalar_type()),
                "bilstm_layer: lengths must be an integer tensor [B]");
}

}  // namespace kdfast
