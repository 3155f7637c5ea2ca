// Fused attention-map losses (TinyBERT attention MSE, masked MSE, MiniLM attention KL) on the
// CPU: the op schema for every backend, and its CPU implementation.
//
// attention_loss(student[], teacher[], mask?, scale, kind, temperature, compute_grad)
//   -> (layer_loss[n_layers], grad_student[] (n_layers tensors, or none))
// student[l], teacher[l]: [B, H, L, L] maps of one mapped layer pair; mask: [B, L] 0/1 in the
// accumulation dtype; scale: 1-element normaliser folded in by the Python layer (no host
// sync). All layers run in one parallel loop over query rows, reading each layer through its
// own pointer: the inputs are never copied into a stack. The gradient is computed in the same
// pass; backward only scales it. See kdfast/reference/attention.py for the definition.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <vector>

#include "kdfast/attention_loss_row.h"
#include "kdfast/cpu_codec_torch.h"
#include "kdfast/attention_loss_torch.h"

namespace kdfast::cpu {
namespace {

template <class C>
struct AttnArgs {
  const typename C::T* const* s;  // per-layer pointers
  const typename C::T* const* t;
  typename C::T* const* g;  // nullptr when no gradient is wanted
  const typename C::Acc* mask;  // [B, L] or nullptr
  typename C::Acc scale, inv_t;
  int64_t H, L, rows_per_layer;
  int kind;
};

// Rows [begin, end) of the flattened (layer, b, h, q) space; row_loss gets one value per row.
#define KDFAST_ATTN_ROWS(CODEC)                                                                 \
  KDFAST_CPU_CLONES void attn_rows(const AttnArgs<CODEC>& a, int64_t begin, int64_t end,        \
                              CODEC::Acc* row_loss, CODEC::Acc* scratch) {                      \
    using Acc = CODEC::Acc;                                                                     \
    const int64_t L = a.L;                                                                      \
    for (int64_t r = begin; r < end; ++r) {                                                     \
      const int64_t layer = r / a.rows_per_layer, within = r % a.rows_per_layer;                \
      const int64_t b = within / (a.H * L), q = within % L;                                     \
      const Acc* wk = a.mask ? a.mask + b * L : nullptr;                                        \
      const Acc c = a.mask ? a.scale * wk[q] : a.scale;                                         \
      const CODEC::T* s = a.s[layer] + within * L;                                              \
      const CODEC::T* t = a.t[layer] + within * L;                                              \
      CODEC::T* g = a.g ? a.g[layer] + within * L : nullptr;                                    \
      row_loss[r] = a.kind == ATTN_KL                                                           \
                        ? attn_kl_row<CODEC>(s, t, g, wk, L, a.inv_t, c, scratch, scratch + L)  \
                        : attn_mse_row<CODEC>(s, t, g, wk, L, a.kind == ATTN_TINYBERT_MSE, c);  \
    }                                                                                           \
  }
KDFAST_ATTN_ROWS(F32)
KDFAST_ATTN_ROWS(F64)
KDFAST_ATTN_ROWS(BF16)
KDFAST_ATTN_ROWS(F16)
#undef KDFAST_ATTN_ROWS

template <class C>
at::Tensor launch(const std::vector<at::Tensor>& s, const std::vector<at::Tensor>& t,
                  std::vector<at::Tensor>& g, const at::Tensor& mask, const at::Tensor& scale,
                  int64_t kind, double temperature) {
  using T = typename C::T;
  using Acc = typename C::Acc;
  const int64_t n = static_cast<int64_t>(s.size());
  const int64_t B = s[0].size(0), H = s[0].size(1), L = s[0].size(2);
  std::vector<const T*> sp(n), tp(n);
  std::vector<T*> gp(g.empty() ? 0 : n);
  for (int64_t l = 0; l < n; ++l) {
    sp[l] = reinterpret_cast<const T*>(s[l].const_data_ptr());
    tp[l] = reinterpret_cast<const T*>(t[l].const_data_ptr());
    if (!g.empty()) gp[l] = reinterpret_cast<T*>(g[l].mutable_data_ptr());
  }
  AttnArgs<C> args{sp.data(), tp.data(), g.empty() ? nullptr : gp.data(),
                   mask.defined() ? mask.const_data_ptr<Acc>() : nullptr,
                   scale.const_data_ptr<Acc>()[0], static_cast<Acc>(1.0 / temperature),
                   H, L, B * H * L, static_cast<int>(kind)};
  const int64_t total = n * B * H * L;
  at::Tensor row_loss = at::empty({n, B * H * L}, s[0].options().dtype(c10::CppTypeToScalarType<Acc>::value));
  Acc* out = row_loss.mutable_data_ptr<Acc>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1));
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    std::vector<Acc> scratch(kind == ATTN_KL ? 2 * L : 0);
    attn_rows(args, begin, end, out, scratch.data());
  });
  return row_loss.sum(1);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> attention_loss_cpu(
    at::TensorList student, at::TensorList teacher, const std::optional<at::Tensor>& mask,
    const at::Tensor& scale, int64_t kind, double temperature, bool compute_grad) {
  const auto acc_type = check_attention_loss_args(student, teacher, mask, scale, kind, temperature);
  const auto dtype = student[0].scalar_type();
  std::vector<at::Tensor> s, t, g;
  for (size_t l = 0; l < student.size(); ++l) {
    s.push_back(student[l].contiguous());  // no copy for the usual contiguous maps
    t.push_back(teacher[l].contiguous());
    // No madvise(MADV_HUGEPAGE) on these fresh [B, H, L, L] buffers: with THP defrag
    // "madvise" it stalled in direct compaction (4 x [32,12,128,128] fp32 fwd+bwd, 2 threads,
    // 40 calls interleaved with other allocations: p90 117 ms / max 213 ms with the advice,
    // 77 / 92 ms without, median 45 vs 47 ms).
    if (compute_grad) g.push_back(at::empty_like(s.back()));
  }
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  const auto sc = scale.contiguous();
  if (s[0].numel() == 0) {
    return {at::zeros({static_cast<int64_t>(s.size())}, s[0].options().dtype(acc_type)), g};
  }
  const auto loss = with_codec(dtype, "attention_loss", [&](auto codec) {
    return launch<decltype(codec)>(s, t, g, m, sc, kind, temperature);
  });
  return {loss, g};
}

}  // namespace
}  // namespace kdfast::cpu

TORCH_LIBRARY_FRAGMENT(kdfast, m) {
  m.def(
      "attention_loss(Tensor[] student, Tensor[] teacher, Tensor? mask, Tensor scale, int kind, "
      "float temperature, bool compute_grad) -> (Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("attention_loss", &kdfast::cpu::attention_loss_cpu); }
