// Fused softmax-distillation losses (KL, soft cross-entropy, logit MSE, plus a hard-label CE
// term) on the CPU: the op schema for every backend, and its CPU implementation.
//
// kd_loss(student[N,V], teacher[N,V], labels[N]?, soft_weight[N], hard_weight[N]?, kind,
//         temperature, compute_grad) -> (row_loss[N], grad_student[N,V] or [0])
// Row i's loss is soft_weight[i] * soft_i + hard_weight[i] * hard_i: the Python layer folds
// the mask, the reduction and alpha into the weights, so no host sync is ever needed. The
// gradient is computed in the same pass; backward only scales it by grad_output.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <vector>

#include "kdfast/softmax_kd_row.h"

namespace kdfast::cpu {
namespace {

// One entry point per storage type, each cloned per ISA (see cpu_math.h).
#define KDFAST_KD_ROWS(NAME, CODEC)                                                            \
  KDFAST_CPU_CLONES void NAME(const CODEC::T* s, const CODEC::T* t, CODEC::T* g,               \
                              const int64_t* labels, const CODEC::Acc* ws, const CODEC::Acc* wh, \
                              CODEC::Acc* loss, int64_t row_begin, int64_t row_end, int64_t V, \
                              int kind, CODEC::Acc temperature, CODEC::Acc* scratch) {         \
    for (int64_t i = row_begin; i < row_end; ++i) {                                            \
      loss[i] = kd_row<CODEC>(s + i * V, t + i * V, g ? g + i * V : nullptr, V, kind,          \
                              temperature, labels ? labels[i] : 0, ws[i], wh ? wh[i] : 0,      \
                              scratch, scratch + V);                                           \
    }                                                                                          \
  }
KDFAST_KD_ROWS(kd_rows_f32, F32)
KDFAST_KD_ROWS(kd_rows_f64, F64)
KDFAST_KD_ROWS(kd_rows_bf16, BF16)
KDFAST_KD_ROWS(kd_rows_f16, F16)
#undef KDFAST_KD_ROWS

template <class CODEC, class Fn>
void launch(Fn rows, const at::Tensor& student, const at::Tensor& teacher, at::Tensor& grad,
            const at::Tensor& labels, const at::Tensor& ws, const at::Tensor& wh, at::Tensor& loss,
            int64_t kind, double temperature, bool compute_grad) {
  using T = typename CODEC::T;
  using Acc = typename CODEC::Acc;
  const int64_t N = student.size(0), V = student.size(1);
  const T* s = reinterpret_cast<const T*>(student.const_data_ptr());
  const T* t = reinterpret_cast<const T*>(teacher.const_data_ptr());
  T* g = compute_grad ? reinterpret_cast<T*>(grad.mutable_data_ptr()) : nullptr;
  const int64_t* lab = labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr;
  const Acc* w_soft = ws.const_data_ptr<Acc>();
  const Acc* w_hard = wh.defined() ? wh.const_data_ptr<Acc>() : nullptr;
  Acc* out = loss.mutable_data_ptr<Acc>();
  // Rows are independent; a row's two scratch vectors (V each) stay in L2 between passes.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<Acc> scratch(2 * V);
    rows(s, t, g, lab, w_soft, w_hard, out, begin, end, V, static_cast<int>(kind),
         static_cast<Acc>(temperature), scratch.data());
  });
}

std::tuple<at::Tensor, at::Tensor> kd_loss_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                               const std::optional<at::Tensor>& labels,
                                               const at::Tensor& soft_weight,
                                               const std::optional<at::Tensor>& hard_weight,
                                               int64_t kind, double temperature, bool compute_grad) {
  // The Python layer validates user input; these checks guard direct calls of the op.
  TORCH_CHECK(student.dim() == 2 && teacher.sizes() == student.sizes(),
              "kd_loss: student and teacher must be [N, V] of equal shape");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "kd_loss: dtype mismatch");
  TORCH_CHECK(kind >= 0 && kind <= 2, "kd_loss: kind must be 0 (kl), 1 (soft_ce) or 2 (mse)");
  TORCH_CHECK(temperature > 0, "kd_loss: temperature must be > 0");
  const auto acc_type = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t N = student.size(0);
  TORCH_CHECK(soft_weight.scalar_type() == acc_type && soft_weight.numel() == N,
              "kd_loss: soft_weight must be [N] of the accumulation dtype");
  at::Tensor lab, wh;
  if (hard_weight.has_value()) {
    TORCH_CHECK(labels.has_value(), "kd_loss: hard_weight needs labels");
    wh = hard_weight->contiguous();
    lab = labels->contiguous();
    TORCH_CHECK(wh.scalar_type() == acc_type && wh.numel() == N, "kd_loss: bad hard_weight");
    TORCH_CHECK(lab.scalar_type() == at::kLong && lab.numel() == N, "kd_loss: labels must be int64 [N]");
    if (N > 0) {
      const auto [lo, hi] = at::aminmax(lab);
      TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < student.size(1),
                  "kd_loss: labels out of range [0, V)");
    }
  }
  const auto s = student.contiguous(), t = teacher.contiguous(), ws = soft_weight.contiguous();
  auto loss = at::empty({N}, student.options().dtype(acc_type));
  auto grad = compute_grad ? at::empty_like(s) : at::empty({0}, student.options());
  switch (student.scalar_type()) {
    case at::kFloat: launch<F32>(kd_rows_f32, s, t, grad, lab, ws, wh, loss, kind, temperature, compute_grad); break;
    case at::kDouble: launch<F64>(kd_rows_f64, s, t, grad, lab, ws, wh, loss, kind, temperature, compute_grad); break;
    case at::kBFloat16: launch<BF16>(kd_rows_bf16, s, t, grad, lab, ws, wh, loss, kind, temperature, compute_grad); break;
    case at::kHalf: launch<F16>(kd_rows_f16, s, t, grad, lab, ws, wh, loss, kind, temperature, compute_grad); break;
    default: TORCH_CHECK(false, "kd_loss: unsupported dtype ", student.scalar_type());
  }
  return {loss, grad};
}

}  // namespace
}  // namespace kdfast::cpu

TORCH_LIBRARY_FRAGMENT(kdfast, m) {
  m.def(
      "kd_loss(Tensor student, Tensor teacher, Tensor? labels, Tensor soft_weight, "
      "Tensor? hard_weight, int kind, float temperature, bool compute_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("kd_loss", &kdfast::cpu::kd_loss_cpu); }
