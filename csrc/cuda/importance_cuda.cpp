// Torch glue of the CUDA unit-importance reduction: checks, allocation, the current stream
// and the CUDA registration of kdfast::unit_taylor (schema in csrc/cpu/importance.cpp).
// Built only where torch has CUDA; tests/test_cuda_compile.py type-checks it elsewhere.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kdfast/cuda_dtype_torch.h"
#include "kdfast/importance_cuda.h"

namespace kdfast::cuda {
namespace {

at::Tensor unit_taylor_cuda(const at::Tensor& act, const at::Tensor& grad, int64_t units) {
  TORCH_CHECK(act.is_cuda() && grad.is_cuda(), "unit_taylor: act and grad must be CUDA tensors");
  TORCH_CHECK(act.device() == grad.device(), "unit_taylor: act and grad on different devices");
  TORCH_CHECK(act.dim() >= 1 && act.sizes() == grad.sizes(),
              "unit_taylor: act and grad must have the same shape [..., K]");
  TORCH_CHECK(act.scalar_type() == grad.scalar_type(), "unit_taylor: dtype mismatch");
  const int64_t K = act.size(-1);
  TORCH_CHECK(units >= 1 && K % units == 0, "unit_taylor: units must divide the last dim");
  const Dtype dtype = cuda_dtype(act.scalar_type(), "unit_taylor");
  const c10::cuda::CUDAGuard guard(act.device());
  const auto acc_type = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto a = act.contiguous(), g = grad.contiguous();
  const int64_t rows = K == 0 ? 0 : a.numel() / K;
  auto partial = at::empty({unit_taylor_chunks(rows) * K}, a.options().dtype(acc_type));
  auto out = at::zeros({units}, a.options().dtype(acc_type));
  const cudaError_t err = unit_taylor_launch(a.const_data_ptr(), g.const_data_ptr(),
                                             partial.mutable_data_ptr(), out.mutable_data_ptr(),
                                             rows, K, units, dtype,
                                             at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "unit_taylor: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace
}  // namespace kdfast::cuda

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) { m.impl("unit_taylor", &kdfast::cuda::unit_taylor_cuda); }
