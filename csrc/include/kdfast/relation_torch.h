// Torch-side argument checks of kdfast::relation_loss, shared by the CPU and CUDA glue (.cpp
// files only). The Python layer validates user input; these checks guard direct calls of the op.
#pragma once

#include <torch/extension.h>

namespace kdfast {

// Checks the pairs (student [A_s, B_s] [B, R, L, ds], teacher [A_t, B_t] [B, R, L, dt], one
// dtype, one device), the mask and the scale; returns the accumulation dtype (float64 for
// float64 inputs, float32 otherwise).
inline at::ScalarType check_relation_loss_args(at::TensorList student, at::TensorList teacher,
                                               const std::optional<at::Tensor>& mask,
                                               const at::Tensor& scale, int64_t kind) {
  TORCH_CHECK(student.size() == 2 && teacher.size() == 2,
              "relation_loss: student and teacher must be pairs [A, B]");
  TORCH_CHECK(kind >= 0 && kind <= 2, "relation_loss: kind must be 0, 1 or 2, got ", kind);
  const auto dtype = student[0].scalar_type();
  const auto device = student[0].device();
  for (const auto& x : {student[0], student[1], teacher[0], teacher[1]}) {
    TORCH_CHECK(x.dim() == 4, "relation_loss: inputs must be [B, R, L, d], got ", x.sizes());
    TORCH_CHECK(x.scalar_type() == dtype, "relation_loss: dtype mismatch");
    TORCH_CHECK(x.device() == device, "relation_loss: every input must be on ", device);
  }
  TORCH_CHECK(student[0].sizes() == student[1].sizes() && teacher[0].sizes() == teacher[1].sizes(),
              "relation_loss: A and B of a pair must have the same shape");
  TORCH_CHECK(student[0].size(0) == teacher[0].size(0) && student[0].size(1) == teacher[0].size(1) &&
                  student[0].size(2) == teacher[0].size(2),
              "relation_loss: student and teacher must share [B, R, L]");
  TORCH_CHECK(student[0].size(3) >= 1 && teacher[0].size(3) >= 1, "relation_loss: head dim >= 1");
  const auto acc_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  if (mask.has_value())
    TORCH_CHECK(mask->scalar_type() == acc_type && mask->dim() == 2 &&
                    mask->size(0) == student[0].size(0) && mask->size(1) == student[0].size(2) &&
                    mask->device() == device,
                "relation_loss: mask must be [B, L] of the accumulation dtype on ", device);
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == acc_type && scale.device() == device,
              "relation_loss: scale must be one element of the accumulation dtype on ", device);
  return acc_type;
}

}  // namespace kdfast
