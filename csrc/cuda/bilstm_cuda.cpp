// Torch glue of the BiLSTM CUDA kernels: checks, allocation, the stream, the GEMMs (cuBLAS
// through ATen) and TORCH_LIBRARY_IMPL(kdfast, CUDA). The schemas are in csrc/cpu/bilstm.cpp;
// the recurrences are the persistent kernels of csrc/cuda/bilstm.cu.
// Built wherever torch has CUDA; on a CPU-only torch, tests/test_cuda_compile.py type-checks it.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kdfast/bilstm_cuda.h"
#include "kdfast/bilstm_torch.h"
#include "kdfast/cuda_dtype_torch.h"

namespace kdfast::cuda {
namespace {

// No float64 kernel: the recurrence keeps fp32 state and math on fp32/bf16/fp16 storage.
Dtype bilstm_dtype(at::ScalarType t) {
  TORCH_CHECK(t != at::kDouble,
              "bilstm_layer (CUDA): dtype must be float32, bfloat16 or float16, got ", t);
  return cuda_dtype(t, "bilstm_layer (CUDA)");
}

void check_layer(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& lengths,
                 const at::Tensor& h0, const at::Tensor& c0) {
  check_bilstm_layer(x, w_ih, w_hh, bias, lengths, h0, c0);
  // The kernels index with 32-bit ints.
  const int64_t B = x.size(0), steps = x.size(1), H = w_hh.size(2);
  TORCH_CHECK(B * steps * 8 * H < (int64_t(1) << 31) && 20 * B * H < (int64_t(1) << 31),
              "bilstm_layer (CUDA): tensors too large for 32-bit indexing");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilstm_layer_cuda(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& lengths,
    const at::Tensor& h0, const at::Tensor& c0, bool train) {
  check_layer(x, w_ih, w_hh, bias, lengths, h0, c0);
  const Dtype dtype = bilstm_dtype(x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), steps = x.size(1), I = x.size(2), H = w_hh.size(2);
  const auto opt = x.options();
  // Input projection of both directions and all timesteps in one GEMM (cuBLAS).
  const auto x2 = x.reshape({B * steps, I});
  const auto w2 = w_ih.reshape({8 * H, I});
  auto gx = bias.has_value() ? at::addmm(bias->reshape({8 * H}), x2, w2.t()) : at::mm(x2, w2.t());
  gx = gx.contiguous();
  auto out = lengths.has_value() ? at::zeros({B, steps, 2 * H}, opt) : at::empty({B, steps, 2 * H}, opt);
  // Padded positions of cells are zeroed too: every output is deterministic (opcheck).
  auto cells = !train ? at::empty({0}, opt.dtype(at::kFloat))
               : lengths.has_value() ? at::zeros({B, steps, 2 * H}, opt.dtype(at::kFloat))
                                     : at::empty({B, steps, 2 * H}, opt.dtype(at::kFloat));
  auto hn = at::empty({2, B, H}, opt), cn = at::empty({2, B, H}, opt);
  at::Tensor lens;
  if (lengths.has_value()) lens = lengths->to(x.device(), at::kLong).contiguous();
  auto work = at::empty({static_cast<int64_t>(bilstm_forward_workspace(B, H))}, opt.dtype(at::kFloat));
  const auto whh = w_hh.contiguous(), h0c = h0.contiguous(), c0c = c0.contiguous();
  BilstmForwardArgs a{};
  a.B = static_cast<int>(B);
  a.T = static_cast<int>(steps);
  a.H = static_cast<int>(H);
  a.lengths = lens.defined() ? lens.const_data_ptr<int64_t>() : nullptr;
  a.gx = gx.mutable_data_ptr();
  a.w_hh = whh.const_data_ptr();
  a.h0 = h0c.const_data_ptr();
  a.c0 = c0c.const_data_ptr();
  a.out = out.mutable_data_ptr();
  a.cells = train ? cells.mutable_data_ptr<float>() : nullptr;
  a.hn = hn.mutable_data_ptr();
  a.cn = cn.mutable_data_ptr();
  a.work = work.mutable_data_ptr<float>();
  const int err = bilstm_forward(a, dtype, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "bilstm_layer (CUDA): ", bilstm_error_string(err));
  auto gates = train ? gx.view({B, steps, 8 * H}) : at::empty({0}, opt);
  return {out, hn, cn, gates, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
bilstm_layer_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad_hn,
                           const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& w_ih,
                           const at::Tensor& w_hh, const std::optional<at::Tensor>& lengths,
                           const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& out,
                           const at::Tensor& gates, const at::Tensor& cells, bool need_dx,
                           bool need_dbias) {
  check_layer(x, w_ih, w_hh, std::nullopt, lengths, h0, c0);
  const Dtype dtype = bilstm_dtype(x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), steps = x.size(1), I = x.size(2), H = w_hh.size(2);
  TORCH_CHECK(gates.sizes() == at::IntArrayRef({B, steps, 8 * H}) &&
                  cells.sizes() == at::IntArrayRef({B, steps, 2 * H}) &&
                  cells.scalar_type() == at::kFloat,
              "bilstm_layer_backward: the forward did not save its state (train=False)");
  TORCH_CHECK(grad_out.sizes() == out.sizes() && grad_hn.sizes() == h0.sizes() &&
                  grad_cn.sizes() == c0.sizes(),
              "bilstm_layer_backward: gradient shapes do not match the outputs");
  const auto opt = x.options();
  // Direction-major, so that each direction's GEMM operands below are contiguous.
  auto dgates = lengths.has_value() ? at::zeros({2, B * steps, 4 * H}, opt) : at::empty({2, B * steps, 4 * H}, opt);
  auto hprev = lengths.has_value() ? at::zeros({2, B * steps, H}, opt) : at::empty({2, B * steps, H}, opt);
  auto dh0 = at::empty({2, B, H}, opt), dc0 = at::empty({2, B, H}, opt);
  at::Tensor lens;
  if (lengths.has_value()) lens = lengths->to(x.device(), at::kLong).contiguous();
  auto work = at::empty({static_cast<int64_t>(bilstm_backward_workspace(B, H))}, opt.dtype(at::kFloat));
  const auto g = gates.contiguous(), whh = w_hh.contiguous(), h0c = h0.contiguous(),
             c0c = c0.contiguous(), o = out.contiguous(), dout = grad_out.to(x.scalar_type()).contiguous(),
             dhn = grad_hn.to(x.scalar_type()).contiguous(), dcn = grad_cn.to(x.scalar_type()).contiguous(),
             cl = cells.contiguous();
  BilstmBackwardArgs a{};
  a.B = static_cast<int>(B);
  a.T = static_cast<int>(steps);
  a.H = static_cast<int>(H);
  a.lengths = lens.defined() ? lens.const_data_ptr<int64_t>() : nullptr;
  a.gates = g.const_data_ptr();
  a.cells = cl.const_data_ptr<float>();
  a.w_hh = whh.const_data_ptr();
  a.h0 = h0c.const_data_ptr();
  a.c0 = c0c.const_data_ptr();
  a.out = o.const_data_ptr();
  a.dout = dout.const_data_ptr();
  a.dhn = dhn.const_data_ptr();
  a.dcn = dcn.const_data_ptr();
  a.dgates = dgates.mutable_data_ptr();
  a.hprev = hprev.mutable_data_ptr();
  a.dh0 = dh0.mutable_data_ptr();
  a.dc0 = dc0.mutable_data_ptr();
  a.work = work.mutable_data_ptr<float>();
  const int err = bilstm_backward(a, dtype, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "bilstm_layer_backward (CUDA): ", bilstm_error_string(err));
  // Weight and input gradients: large GEMMs over all (b, t), no per-step atomics.
  const auto x2 = x.reshape({B * steps, I});
  const auto dgt = dgates.transpose(1, 2);  // [2, 4H, B*T]
  auto dw_ih = at::bmm(dgt, x2.expand({2, B * steps, I}));
  auto dw_hh = at::bmm(dgt, hprev);
  at::Tensor dx = at::empty({0}, opt);
  if (need_dx) {
    dx = at::mm(dgates[0], w_ih[0]);
    dx.addmm_(dgates[1], w_ih[1]);
    dx = dx.view({B, steps, I});
  }
  auto db = need_dbias ? dgates.sum(1, false, at::kFloat).to(x.scalar_type()) : at::empty({0}, opt);
  return {dx, dw_ih, dw_hh, db, dh0, dc0};
}

}  // namespace
}  // namespace kdfast::cuda

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) {
  m.impl("bilstm_layer", &kdfast::cuda::bilstm_layer_cuda);
  m.impl("bilstm_layer_backward", &kdfast::cuda::bilstm_layer_backward_cuda);
}
