// ETD importance scoring: the per-unit activation x gradient reduction on the CPU, and the
// op schema shared by every backend.
//
// unit_taylor(act[..., K], grad[..., K], units) -> [units]
//   out[u] = sum over all leading positions and over the K / units consecutive columns of
//   unit u of act * grad, accumulated in fp32 (fp64 for fp64 inputs). One read of both
//   tensors; no [T, K] product is materialised.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <vector>

#include "kdfast/cpu_codec_torch.h"
#include "kdfast/importance_rows.h"

namespace kdfast::cpu {
namespace {

#define KDFAST_UNIT_ROWS(CODEC)                                                                 \
  KDFAST_CPU_CLONES void unit_rows(const CODEC::T* a, const CODEC::T* g, CODEC::Acc* acc,       \
                              int64_t row_begin, int64_t row_end, int64_t K) {                  \
    unit_taylor_rows<CODEC>(a, g, acc, row_begin, row_end, K);                                  \
  }
KDFAST_UNIT_ROWS(F32)
KDFAST_UNIT_ROWS(F64)
KDFAST_UNIT_ROWS(BF16)
KDFAST_UNIT_ROWS(F16)
#undef KDFAST_UNIT_ROWS

template <class CODEC>
void launch(const at::Tensor& act, const at::Tensor& grad, at::Tensor& out, int64_t units) {
  using T = typename CODEC::T;
  using Acc = typename CODEC::Acc;
  const int64_t K = act.size(-1);
  const int64_t T_rows = K == 0 ? 0 : act.numel() / K;
  const T* a = reinterpret_cast<const T*>(act.const_data_ptr());
  const T* g = reinterpret_cast<const T*>(grad.const_data_ptr());
  // Each chunk of rows gets a private column accumulator; chunks are merged in a fixed order
  // so the result does not depend on the thread count.
  const int64_t grain = std::max<int64_t>(16, 65536 / std::max<int64_t>(K, 1));
  const int64_t chunks = T_rows == 0 ? 0 : (T_rows + grain - 1) / grain;
  std::vector<Acc> partial(static_cast<size_t>(chunks * K), Acc(0));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      unit_rows(a, g, partial.data() + c * K, c * grain, std::min(T_rows, (c + 1) * grain), K);
    }
  });
  Acc* o = out.mutable_data_ptr<Acc>();
  const int64_t per_unit = units == 0 ? 0 : K / units;
  for (int64_t u = 0; u < units; ++u) {
    Acc s = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const Acc* p = partial.data() + c * K + u * per_unit;
      for (int64_t j = 0; j < per_unit; ++j) s += p[j];
    }
    o[u] = s;
  }
}

at::Tensor unit_taylor_cpu(const at::Tensor& act, const at::Tensor& grad, int64_t units) {
  // The Python layer validates user input; these checks guard direct calls of the op.
  TORCH_CHECK(act.dim() >= 1 && act.sizes() == grad.sizes(),
              "unit_taylor: act and grad must have the same shape [..., K]");
  TORCH_CHECK(act.scalar_type() == grad.scalar_type(), "unit_taylor: dtype mismatch");
  const int64_t K = act.size(-1);
  TORCH_CHECK(units >= 1 && K % units == 0, "unit_taylor: units must divide the last dim");
  const auto acc_type = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out = at::empty({units}, act.options().dtype(acc_type));
  const auto a = act.contiguous(), g = grad.contiguous();
  with_codec(act.scalar_type(), "unit_taylor",
             [&](auto codec) { launch<decltype(codec)>(a, g, out, units); });
  return out;
}

}  // namespace
}  // namespace kdfast::cpu

TORCH_LIBRARY_FRAGMENT(kdfast, m) {
  m.def("unit_taylor(Tensor act, Tensor grad, int units) -> Tensor");
}

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("unit_taylor", &kdfast::cpu::unit_taylor_cpu); }
