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

#include "kdfast/cpu_codec_torch.h"
#include "kdfast/softmax_kd_row.h"
#include "kdfast/softmax_kd_torch.h"

namespace kdfast::cpu {
namespace {

// One entry point per storage codec (overloads of kd_rows), each cloned per ISA (cpu_math.h).
#define KDFAST_KD_ROWS(CODEC)                                                                    \
  KDFAST_CPU_CLONES void kd_rows(const CODEC::T* s, const CODEC::T* t, CODEC::T* g,              \
                              const int64_t* labels, const CODEC::Acc* ws, const CODEC::Acc* wh, \
                              CODEC::Acc* loss, int64_t row_begin, int64_t row_end, int64_t V,   \
                              int kind, CODEC::Acc temperature, CODEC::Acc* scratch) {           \
    for (int64_t i = row_begin; i < row_end; ++i) {                                              \
      loss[i] = kd_row<CODEC>(s + i * V, t + i * V, g ? g + i * V : nullptr, V, kind,            \
                              temperature, labels ? labels[i] : 0, ws[i], wh ? wh[i] : 0,        \
                              scratch, scratch + V);                                             \
    }                                                                                            \
  }
KDFAST_KD_ROWS(F32)
KDFAST_KD_ROWS(F64)
KDFAST_KD_ROWS(BF16)
KDFAST_KD_ROWS(F16)
#undef KDFAST_KD_ROWS

template <class CODEC>
void launch(const at::Tensor& student, const at::Tensor& teacher, at::Tensor& grad,
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
    kd_rows(s, t, g, lab, w_soft, w_hard, out, begin, end, V, static_cast<int>(kind),
         static_cast<Acc>(temperature), scratch.data());
  });
}

std::tuple<at::Tensor, at::Tensor> kd_loss_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                               const std::optional<at::Tensor>& labels,
                                               const at::Tensor& soft_weight,
                                               const std::optional<at::Tensor>& hard_weight,
                                               int64_t kind, double temperature, bool compute_grad) {
  auto a = check_kd_loss_args(student, teacher, labels, soft_weight, hard_weight, kind, temperature);
  const int64_t N = a.student.size(0);
  if (a.labels.defined() && N > 0) {  // CPU tensors: reading the range costs no device sync
    const auto [lo, hi] = at::aminmax(a.labels);
    TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < a.student.size(1),
                "kd_loss: labels out of range [0, V)");
  }
  auto loss = at::empty({N}, a.student.options().dtype(a.acc_type));
  auto grad = compute_grad ? at::empty_like(a.student) : at::empty({0}, a.student.options());
  // No madvise(MADV_HUGEPAGE) here (see attention_loss.cpp): direct-compaction stalls made
  // the time swing between calls; THP_MEM_ALLOC_ENABLE=1 gives torch's own huge-page allocator.
  const auto &s = a.student, &t = a.teacher, &ws = a.soft_weight, &lab = a.labels, &wh = a.hard_weight;
  with_codec(student.scalar_type(), "kd_loss", [&](auto codec) {
    launch<decltype(codec)>(s, t, grad, lab, ws, wh, loss, kind, temperature, compute_grad);
  });
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
