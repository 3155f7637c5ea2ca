// Torch-side argument handling of kd_loss shared by the CPU and CUDA glue (.cpp files only).
// The Python layer validates user input; these checks guard direct calls of the op.
#pragma once

#include <torch/extension.h>

namespace kdfast {

struct KdLossArgs {
  at::Tensor student, teacher, soft_weight, labels, hard_weight;  // contiguous; last two optional
  at::ScalarType acc_type;
};

inline KdLossArgs check_kd_loss_args(const at::Tensor& student, const at::Tensor& teacher,
                                     const std::optional<at::Tensor>& labels,
                                     const at::Tensor& soft_weight,
                                     const std::optional<at::Tensor>& hard_weight, int64_t kind,
                                     double temperature) {
  TORCH_CHECK(student.dim() == 2 && teacher.sizes() == student.sizes(),
              "kd_loss: student and teacher must be [N, V] of equal shape");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "kd_loss: dtype mismatch");
  TORCH_CHECK(kind >= 0 && kind <= 2, "kd_loss: kind must be 0 (kl), 1 (soft_ce) or 2 (mse)");
  TORCH_CHECK(temperature > 0, "kd_loss: temperature must be > 0");
  KdLossArgs a;
  a.acc_type = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t N = student.size(0);
  TORCH_CHECK(soft_weight.scalar_type() == a.acc_type && soft_weight.numel() == N,
              "kd_loss: soft_weight must be [N] of the accumulation dtype");
  if (hard_weight.has_value()) {
    TORCH_CHECK(labels.has_value(), "kd_loss: hard_weight needs labels");
    a.hard_weight = hard_weight->contiguous();
    a.labels = labels->contiguous();
    TORCH_CHECK(a.hard_weight.scalar_type() == a.acc_type && a.hard_weight.numel() == N,
                "kd_loss: hard_weight must be [N] of the accumulation dtype");
    TORCH_CHECK(a.labels.scalar_type() == at::kLong && a.labels.numel() == N,
                "kd_loss: labels must be int64 [N]");
  }
  a.student = student.contiguous();
  a.teacher = teacher.contiguous();
  a.soft_weight = soft_weight.contiguous();
  return a;
}

}  // namespace kdfast
