"""Compile-only check of every CUDA source with nvcc (the kernels run only on a GPU).

The .cu files include only CUDA and kdfast headers by design (see DESIGN.md), so a plain
``nvcc -c`` builds them here in seconds. The torch glue (*_cuda.cpp) is built for real only
where torch has CUDA; on a CPU-only torch it is type-checked with ``g++ -fsyntax-only``
against torch's headers and the CUDA runtime headers, with empty stand-ins for the CUDA
library headers (cuBLAS, cuSPARSE, cuSOLVER) that the toolkit here does not ship.
"""
import glob
import os
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                if os.environ.get("CUDA_HOME") else None)


def test_there_are_cuda_sources():
    assert SOURCES, "no csrc/cuda/*.cu found"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_nvcc_compiles(source, tmp_path):
    cmd = [NVCC, "-c", "-std=c++17", "-O1", "-arch=sm_90", "-I", os.path.join(ROOT, "csrc", "include"),
           source, "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


GLUE = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*_cuda.cpp")))
# Only the types torch's CUDA headers name; nothing here is linked or run.
_STUBS = {
    "cublas_v2.h": "#include <cuda_runtime_api.h>\ntypedef struct cublasContext* cublasHandle_t;\n"
                   "typedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n"
                  "const char* cusparseGetErrorString(cusparseStatus_t);\n",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "cusolver_common.h": "typedef int cusolverStatus_t;\n",
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


def _cuda_include():
    roots = [os.environ.get("CUDA_HOME")] + sorted(glob.glob("/usr/local/cuda*"))
    if NVCC:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(NVCC))))
    for root in filter(None, roots):
        if os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h")):
            return os.path.join(root, "include")
    return None


@pytest.mark.skipif(torch.version.cuda is not None, reason="the real CUDA build compiles the glue")
@pytest.mark.skipif(shutil.which("g++") is None or _cuda_include() is None,
                    reason="g++ or the CUDA runtime headers not found")
@pytest.mark.parametrize("source", GLUE, ids=os.path.basename)
def test_cuda_glue_type_checks(source, tmp_path):
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    for name, text in _STUBS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("#pragma once\n" + text)
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-DTORCH_EXTENSION_NAME=_cuda",
           "-I", os.path.join(ROOT, "csrc", "include"), "-I", _cuda_include(), "-I", str(tmp_path),
           "-I", sysconfig.get_paths()["include"]]
    for inc in include_paths():
        cmd += ["-I", inc]
    proc = subprocess.run(cmd + [source], capture_output=True, text=True)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr[-4000:]
