// Torch glue for the CUDA relation losses (kernels in relation.cu): checks, allocation, the
// current stream and the CUDA registration of kdfast::relation_loss (the schema is declared in
// csrc/cpu/relation.cpp). Type-checked by tests/test_cuda_compile.py.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <vector>

#include "kdfast/cuda_dtype_torch.h"
#include "kdfast/relation_cuda.h"
#include "kdfast/relation_torch.h"

namespace kdfast::cuda {
namespace {

std::tuple<at::Tensor, std::vector<at::Tensor>> relation_loss_cuda(
    at::TensorList student, at::TensorList teacher, const std::optional<at::Tensor>& mask,
    const at::Tensor& scale, int64_t kind, bool compute_grad) {
  const auto acc_type = check_relation_loss_args(student, teacher, mask, scale, kind);
  TORCH_CHECK(student[0].size(3) <= kRelMaxDim && teacher[0].size(3) <= kRelMaxDim,
              "relation_loss: head dims must be <= ", kRelMaxDim, " on CUDA");
  const c10::cuda::CUDAGuard guard(student[0].device());
  const at::Tensor as = student[0].contiguous(), bs = student[1].contiguous();
  const at::Tensor at_ = teacher[0].contiguous(), bt = teacher[1].contiguous();
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  const auto sc = scale.contiguous();
  std::vector<at::Tensor> g;
  if (compute_grad) {
    g.push_back(at::empty_like(as, at::MemoryFormat::Contiguous));
    g.push_back(at::empty_like(bs, at::MemoryFormat::Contiguous));
  }
  const auto acc = as.options().dtype(acc_type);
  if (as.numel() == 0) {
    for (auto& x : g) x.zero_();
    return {at::zeros({1}, acc), g};
  }
  const int64_t B = as.size(0), R = as.size(1), L = as.size(2);
  auto partial = at::empty({B * R * relation_blocks(L)}, acc);
  const at::Tensor lse = kind == 2 && compute_grad ? at::empty({B * R * L * 2}, acc) : at::Tensor();
  const int err = relation_loss_launch(
      cuda_dtype(as.scalar_type(), "relation_loss"), as.const_data_ptr(), bs.const_data_ptr(), at_.const_data_ptr(),
      bt.const_data_ptr(), compute_grad ? g[0].mutable_data_ptr() : nullptr,
      compute_grad ? g[1].mutable_data_ptr() : nullptr, m.defined() ? m.const_data_ptr() : nullptr,
      sc.const_data_ptr(), partial.mutable_data_ptr(), lse.defined() ? lse.mutable_data_ptr() : nullptr,
      B, R, L, as.size(3), at_.size(3), static_cast<int>(kind), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == 0, "relation_loss: CUDA launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  return {partial.sum().reshape({1}), g};
}

}  // namespace
}  // namespace kdfast::cuda

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) { m.impl("relation_loss", &kdfast::cuda::relation_loss_cuda); }
