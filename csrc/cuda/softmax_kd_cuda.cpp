// Torch glue for the fused softmax-distillation CUDA kernel: checks, allocation, the current
// stream and the dispatcher registration. The kernel itself is in softmax_kd.cu.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kdfast/cuda_dtype_torch.h"
#include "kdfast/softmax_kd_params.h"
#include "kdfast/softmax_kd_torch.h"

namespace kdfast::cuda {
cudaError_t launch_kd_loss(const KdLossParams& p, cudaStream_t stream);

namespace {

std::tuple<at::Tensor, at::Tensor> kd_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                const std::optional<at::Tensor>& labels,
                                                const at::Tensor& soft_weight,
                                                const std::optional<at::Tensor>& hard_weight,
                                                int64_t kind, double temperature, bool compute_grad) {
  const c10::cuda::CUDAGuard guard(student.device());
  auto a = check_kd_loss_args(student, teacher, labels, soft_weight, hard_weight, kind, temperature);
  const auto &s = a.student, &t = a.teacher, &ws = a.soft_weight, &lab = a.labels, &wh = a.hard_weight;
  const int64_t N = s.size(0);
  auto loss = at::empty({N}, s.options().dtype(a.acc_type));
  auto grad = compute_grad ? at::empty_like(s) : at::empty({0}, s.options());

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
  p.dtype = cuda_dtype(s.scalar_type(), "kd_loss");
  const cudaError_t err = launch_kd_loss(p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "kd_loss: CUDA launch failed: ", cudaGetErrorString(err));
  return {loss, grad};
}

}  // namespace
}  // namespace kdfast::cuda

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) { m.impl("kd_loss", &kdfast::cuda::kd_loss_cuda); }
