// The pybind11 module kdfast._cuda. Importing it registers every CUDA op implementation
// (each op family's *_cuda.cpp holds its TORCH_LIBRARY_IMPL(kdfast, CUDA, ...)); the schemas
// live in kdfast._C, which kdfast imports first.
#include <torch/extension.h>

#include <cuda_runtime.h>

static int cuda_runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "kdfast CUDA kernels (ops are registered under torch.ops.kdfast)";
  m.def("cuda_runtime_version", &cuda_runtime_version, "CUDA runtime version kdfast was built with");
}
