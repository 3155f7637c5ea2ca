// The pybind11 module kdfast._C. Importing it registers every CPU op (each op family's
// file holds its own TORCH_LIBRARY_FRAGMENT and TORCH_LIBRARY_IMPL); this file only adds
// the Python-side helpers.
#include <torch/extension.h>

static std::string cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 (baseline)";
#else
  return "generic";
#endif
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "kdfast C++ CPU kernels (ops are registered under torch.ops.kdfast)";
  m.def("cpu_isa", &cpu_isa, "the instruction set the CPU kernels run with on this machine");
}
