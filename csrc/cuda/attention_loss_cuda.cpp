// Torch glue for the CUDA attention-map losses (kernels in attention_loss.cu): checks,
// allocation, the current stream and the CUDA registration of kdfast::attention_loss (the
// schema is declared in csrc/cpu/attention_loss.cpp). Type-checked by tests/test_cuda_compile.py.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <vector>

#include "kdfast/attention_loss_cuda.h"
#include "kdfast/cuda_dtype_torch.h"
#include "kdfast/attention_loss_torch.h"

namespace kdfast::cuda {
namespace {

std::tuple<at::Tensor, std::vector<at::Tensor>> attention_loss_cuda(
    at::TensorList student, at::TensorList teacher, const std::optional<at::Tensor>& mask,
    const at::Tensor& scale, int64_t kind, double temperature, bool compute_grad) {
  const auto acc_type = check_attention_loss_args(student, teacher, mask, scale, kind, temperature);
  const auto dtype = student[0].scalar_type();
  const auto shape = student[0].sizes();
  const c10::cuda::CUDAGuard guard(student[0].device());
  std::vector<at::Tensor> s, t, g;
  std::vector<const void*> sp, tp;
  std::vector<void*> gp;
  for (size_t l = 0; l < student.size(); ++l) {
    s.push_back(student[l].contiguous());
    t.push_back(teacher[l].contiguous());
    sp.push_back(s.back().const_data_ptr());
    tp.push_back(t.back().const_data_ptr());
    if (compute_grad) {
      g.push_back(at::empty_like(s.back()));
      gp.push_back(g.back().mutable_data_ptr());
    }
  }
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  const auto sc = scale.contiguous();
  const int64_t n = static_cast<int64_t>(s.size());
  const int64_t B = shape[0], H = shape[1], L = shape[2];
  if (s[0].numel() == 0) return {at::zeros({n}, s[0].options().dtype(acc_type)), g};
  const int64_t blocks = attention_loss_blocks(B * H * L);
  auto partial = at::empty({n, blocks}, s[0].options().dtype(acc_type));
  const int err = attention_loss_launch(
      cuda_dtype(dtype, "attention_loss"), n, sp.data(), tp.data(), compute_grad ? gp.data() : nullptr,
      m.defined() ? m.const_data_ptr() : nullptr, sc.const_data_ptr(), partial.mutable_data_ptr(),
      B, H, L, static_cast<int>(kind), 1.0 / temperature, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "attention_loss: CUDA launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  return {partial.sum(1), g};
}

}  // namespace
}  // namespace kdfast::cuda

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) { m.impl("attention_loss", &kdfast::cuda::attention_loss_cuda); }
