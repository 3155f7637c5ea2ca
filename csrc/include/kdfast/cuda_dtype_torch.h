// ScalarType -> kdfast::Dtype for the torch glue of the CUDA ops (one mapping for all of them).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "kdfast/cuda_dtype.h"

namespace kdfast {

// `op` names the operator in the error for a dtype no kernel is built for.
inline Dtype cuda_dtype(c10::ScalarType t, const char* op) {
  switch (t) {
    case c10::kFloat: return Dtype::kFloat32;
    case c10::kDouble: return Dtype::kFloat64;
    case c10::kBFloat16: return Dtype::kBFloat16;
    case c10::kHalf: return Dtype::kFloat16;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t);
  }
}

}  // namespace kdfast
