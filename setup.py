"""Builds kdfast's compiled extensions with torch.utils.cpp_extension.

* ``kdfast._C``    -- C++ CPU kernels (OpenMP, vectorised per ISA at run time); always built.
* ``kdfast._cuda`` -- CUDA kernels; built when torch has CUDA and nvcc is found.

Source layout (one op family per file per device, picked up by glob so that adding a
family needs no edit here):
  csrc/cpu/*.cpp           CPU kernels + ``TORCH_LIBRARY_FRAGMENT(kdfast)`` schemas + CPU impls
  csrc/cuda/*.cu           CUDA kernels with plain-pointer launchers (no torch headers)
  csrc/cuda/*.cpp          torch glue: checks, allocation, stream, ``TORCH_LIBRARY_IMPL(kdfast, CUDA)``
  csrc/include/kdfast/     shared numerics headers

Environment: ``KDFAST_NO_CUDA=1`` skips the CUDA extension; ``TORCH_CUDA_ARCH_LIST`` is
respected (default "8.0;9.0"); ``MAX_JOBS`` limits parallel compile jobs.
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = [os.path.join(ROOT, "csrc", "include")]


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# No -march=native: the wheel must run on any x86-64. Hot loops are compiled per ISA with
# target_clones and picked at load time (see csrc/include/kdfast/cpu_dispatch.h).
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
extensions = [
    CppExtension(
        "kdfast._C",
        sources("csrc/cpu/*.cpp"),
        include_dirs=INCLUDE,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
]

want_cuda = os.environ.get("KDFAST_NO_CUDA", "0") != "1"
if want_cuda and torch.version.cuda is not None and CUDA_HOME is not None:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    extensions.append(
        CUDAExtension(
            "kdfast._cuda",
            sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
            include_dirs=INCLUDE,
            extra_compile_args={
                "cxx": ["-O3", "-std=c++20"],
                "nvcc": ["-O3", "-std=c++17", "-lineinfo"],
            },
        )
    )

setup(
    packages=find_packages(include=["kdfast", "kdfast.*"]),
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
