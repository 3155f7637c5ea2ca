// ScalarType -> storage codec (cpu_math.h) for the CPU ops: the one dtype dispatch they share.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "kdfast/cpu_math.h"

namespace kdfast::cpu {

// Calls f(Codec{}) with the codec of `dtype` and returns what it returns; `op` names the
// operator in the error for a dtype no kernel is built for. A family's per-codec entry points
// are overloads of one name, so a generic f reaches them all.
template <class F>
decltype(auto) with_codec(c10::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case c10::kFloat: return f(F32{});
    case c10::kDouble: return f(F64{});
    case c10::kBFloat16: return f(BF16{});
    case c10::kHalf: return f(F16{});
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dtype);
  }
}

}  // namespace kdfast::cpu
