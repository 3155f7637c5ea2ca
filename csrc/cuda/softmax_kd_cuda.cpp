// Torch glue for the fused softmax-distillation CUDA kernel: checks, allocation, the current
// stream and the dispatcher registration. The kernel itself is in softmax_kd.cu.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kdfast/softmax_kd_params.h"

namespace kdfast::cuda {
cudaError_t launch_kd_loss(const KdLossParams& p, cudaStream_t stream);

namespace {

Dtype dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kDouble: return Dtype::kFloat64;
    case at::kBFloat16: return Dtype::kBFloat16;
    case at::kHalf: return Dtype::kFloat16;
    default: TORCH_CHECK(false, "kd_loss: unsupported dtype ", t);
  }
}

std::tuple<at::Tensor, at::Tensor> kd_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                const std::optional<at::Tensor>& labels,
                                                const at::Tensor& soft_weight,
                                                const std::optional<at::Tensor>& hard_weight,
                                                int64_t kind, double temperature, bool compute_grad) {
  TORCH_CHECK(student.dim() == 2 && teacher.sizes() == student.sizes(),
              "kd_loss: student and teacher must be [N, V] of equal shape");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "kd_loss: dtype mismatch");
  TORCH_CHECK(kind >= 0 && kind <= 2, "kd_loss: kind must be 0 (kl), 1 (soft_ce) or 2 (mse)");
  TORCH_CHECK(temperature > 0, "kd_loss: temperature must be > 0");
  const c10::cuda::CUDAGuard guard(student.device());
  const auto acc_type = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t N = student.size(0);
  TORCH_CHECK(soft_weight.scalar_type() == acc_type && soft_weight.numel() == N,
              "kd_loss: soft_weight must be [N] of the accumulation dtype");
  at::Tensor lab, wh;
  if (hard_weight.has_value()) {
    TORCH_CHECK(labels.has_value(), "kd_loss: hard_weight needs labels");
    lab = labels->contiguous();
    wh = hard_weight->contiguous();
    TORCH_CHECK(wh.scalar_type() == acc_type && wh.numel() == N, "kd_loss: bad hard_weight");
    TORCH_CHECK(lab.scalar_type() == at::kLong && lab.numel() == N, "kd_loss: labels must be int64 [N]");
  }
  const auto s = student.contiguous(), t = teacher.contiguous(), ws = soft_weight.contiguous();
  auto loss = at::empty({N}, student.options().dtype(acc_type));
  auto grad = compute_grad ? at::empty_like(s) : at::empty({0}, student.options());

  KdLossParams p{};
  p.student = s.const_data_ptr();
  p.teacher = t.const_data_ptr();
  p.grad = compute_grad ? grad.mutable_data_ptr() : nullptr;
  p.labels = lab.defined() ? lab.const_data_ptr<int64_t>() : nullptr;
  p.soft_weight = ws.const_data_ptr();
  p.hard_weight = wh.defined() ? wh.const_data_ptr() : nullptr;
  p.loss = loss.mutable_data_ptr();
  p.rows = N;
  p.cols = s.size(1);
  p.kind = static_cast<int>(kind);
  p.temperature = temperature;
  p.dtype = dtype_of(s.scalar_type());
  const cudaError_t err = launch_kd_loss(p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "kd_loss: CUDA launch failed: ", cudaGetErrorString(err));
  return {loss, grad};
}

}  // namespace
}  // namespace kdfast::cuda

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) { m.impl("kd_loss", &kdfast::cuda::kd_loss_cuda); }
