// Torch-side argument checks of kdfast::attention_loss, shared by the CPU and CUDA glue (.cpp
// files only). The Python layer validates user input; these checks guard direct calls of the op.
#pragma once

#include <torch/extension.h>

namespace kdfast {

// Checks every map against student[0] (shape [B, H, L, L], dtype, device), the mask and the
// scale; returns the accumulation dtype (float64 for float64 maps, float32 otherwise).
inline at::ScalarType check_attention_loss_args(at::TensorList student, at::TensorList teacher,
                                                const std::optional<at::Tensor>& mask,
                                                const at::Tensor& scale, int64_t kind,
                                                double temperature) {
  TORCH_CHECK(!student.empty() && student.size() == teacher.size(),
              "attention_loss: student and teacher need the same number (>= 1) of layers");
  TORCH_CHECK(kind >= 0 && kind <= 2, "attention_loss: kind must be 0, 1 or 2");
  TORCH_CHECK(temperature > 0, "attention_loss: temperature must be > 0");
  const auto dtype = student[0].scalar_type();
  const auto acc_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto shape = student[0].sizes();
  const auto device = student[0].device();
  TORCH_CHECK(shape.size() == 4 && shape[2] == shape[3], "attention_loss: maps must be [B, H, L, L]");
  for (size_t l = 0; l < student.size(); ++l) {
    TORCH_CHECK(student[l].sizes() == shape && teacher[l].sizes() == shape,
                "attention_loss: every map must have the shape of student[0]");
    TORCH_CHECK(student[l].scalar_type() == dtype && teacher[l].scalar_type() == dtype,
                "attention_loss: every map must have the dtype of student[0]");
    TORCH_CHECK(student[l].device() == device && teacher[l].device() == device,
                "attention_loss: every map must be on ", device);
  }
  if (mask.has_value())
    TORCH_CHECK(mask->scalar_type() == acc_type && mask->dim() == 2 && mask->size(0) == shape[0] &&
                    mask->size(1) == shape[2] && mask->device() == device,
                "attention_loss: mask must be [B, L] of the accumulation dtype on ", device);
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == acc_type && scale.device() == device,
              "attention_loss: scale must be one element of the accumulation dtype on ", device);
  return acc_type;
}

}  // namespace kdfast
