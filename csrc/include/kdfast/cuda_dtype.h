// The storage dtype of the tensors handed to a CUDA kernel: one code for every op family (no
// torch or CUDA headers). The torch glue maps a ScalarType to it with cuda_dtype()
// (cuda_dtype_torch.h); each .cu file switches on it to pick its template instance.
// Accumulation is float, double for kFloat64.
#pragma once

namespace kdfast {

enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

}  // namespace kdfast
