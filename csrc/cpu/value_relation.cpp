// MiniLM value-relation KL on the CPU: the op schema for every backend, and its CPU
// implementation.
//
// value_relation(vs[B, L, Ds], vt[B, L, Dt], mask?, scale, heads, compute_grad)
//   -> (loss[1], grad_vs[B, L, Ds] or [0])
// Relation head a uses columns [a*ds, (a+1)*ds) of vs (ds = Ds / heads; likewise for vt).
// One (b, a) plane per task: the plane's relation rows live in a per-thread scratch, never
// in global memory; the gradient is accumulated in the same pass. mask: [B, L] 0/1 in the
// accumulation dtype; scale: the 1-element normaliser. See kdfast/reference/attention.py.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <vector>

#include "kdfast/cpu_codec_torch.h"
#include "kdfast/value_relation_plane.h"

namespace kdfast::cpu {
namespace {

#define KDFAST_VR_PLANES(CODEC)                                                                        \
  KDFAST_CPU_CLONES void vr_planes(const CODEC::T* vs, const CODEC::T* vt, CODEC::T* gs,               \
                              const CODEC::Acc* mask, CODEC::Acc scale, int64_t begin,                 \
                              int64_t end, int64_t A, int64_t L, int64_t Ds, int64_t Dt,               \
                              CODEC::Acc* plane_loss, CODEC::Acc* work) {                              \
    const int64_t ds = Ds / A, dt = Dt / A;                                                            \
    for (int64_t p = begin; p < end; ++p) {                                                            \
      const int64_t b = p / A, a = p % A;                                                              \
      plane_loss[p] = value_relation_plane<CODEC>(                                                     \
          vs + b * L * Ds + a * ds, vt + b * L * Dt + a * dt, gs ? gs + b * L * Ds + a * ds : nullptr, \
          mask ? mask + b * L : nullptr, L, ds, dt, Ds, Dt, scale, work);                              \
    }                                                                                                  \
  }
KDFAST_VR_PLANES(F32)
KDFAST_VR_PLANES(F64)
KDFAST_VR_PLANES(BF16)
KDFAST_VR_PLANES(F16)
#undef KDFAST_VR_PLANES

template <class C>
at::Tensor launch(const at::Tensor& vs, const at::Tensor& vt, at::Tensor& grad,
                  const at::Tensor& mask, const at::Tensor& scale, int64_t A, bool compute_grad) {
  using T = typename C::T;
  using Acc = typename C::Acc;
  const int64_t B = vs.size(0), L = vs.size(1), Ds = vs.size(2), Dt = vt.size(2);
  at::Tensor plane_loss = at::empty({B * A}, vs.options().dtype(c10::CppTypeToScalarType<Acc>::value));
  const T* s = reinterpret_cast<const T*>(vs.const_data_ptr());
  const T* t = reinterpret_cast<const T*>(vt.const_data_ptr());
  T* g = compute_grad ? reinterpret_cast<T*>(grad.mutable_data_ptr()) : nullptr;
  const Acc* m = mask.defined() ? mask.const_data_ptr<Acc>() : nullptr;
  const Acc sc = scale.const_data_ptr<Acc>()[0];
  Acc* out = plane_loss.mutable_data_ptr<Acc>();
  const int64_t ds = Ds / A, dt = Dt / A;
  at::parallel_for(0, B * A, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> work(L * (2 * ds + dt) + 5 * L);
    vr_planes(s, t, g, m, sc, begin, end, A, L, Ds, Dt, out, work.data());
  });
  return plane_loss.sum().reshape({1});
}

std::tuple<at::Tensor, at::Tensor> value_relation_cpu(const at::Tensor& student,
                                                      const at::Tensor& teacher,
                                                      const std::optional<at::Tensor>& mask,
                                                      const at::Tensor& scale, int64_t heads,
                                                      bool compute_grad) {
  TORCH_CHECK(student.dim() == 3 && teacher.dim() == 3 &&
                  student.size(0) == teacher.size(0) && student.size(1) == teacher.size(1),
              "value_relation: values must be [B, L, D] with equal B and L");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "value_relation: dtype mismatch");
  TORCH_CHECK(heads >= 1 && student.size(2) % heads == 0 && teacher.size(2) % heads == 0,
              "value_relation: heads must divide both widths");
  const auto acc_type = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto vs = student.contiguous(), vt = teacher.contiguous();
  at::Tensor m;
  if (mask.has_value()) {
    m = mask->contiguous();
    TORCH_CHECK(m.scalar_type() == acc_type && m.dim() == 2 && m.size(0) == vs.size(0) &&
                    m.size(1) == vs.size(1),
                "value_relation: mask must be [B, L] of the accumulation dtype");
  }
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == acc_type,
              "value_relation: scale must be one element of the accumulation dtype");
  const auto sc = scale.contiguous();
  auto grad = compute_grad ? at::empty_like(vs) : at::empty({0}, vs.options());
  if (vs.numel() == 0 || vt.numel() == 0) {
    if (compute_grad) grad.zero_();
    return {at::zeros({1}, vs.options().dtype(acc_type)), grad};
  }
  const auto loss = with_codec(vs.scalar_type(), "value_relation", [&](auto codec) {
    return launch<decltype(codec)>(vs, vt, grad, m, sc, heads, compute_grad);
  });
  return {loss, grad};
}

}  // namespace
}  // namespace kdfast::cpu

TORCH_LIBRARY_FRAGMENT(kdfast, m) {
  m.def(
      "value_relation(Tensor student, Tensor teacher, Tensor? mask, Tensor scale, int heads, "
      "bool compute_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("value_relation", &kdfast::cpu::value_relation_cpu); }
