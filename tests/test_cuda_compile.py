"""Compile-only check of every CUDA source with nvcc (the kernels run only on a GPU).

The .cu files include only CUDA and kdfast headers by design (see DESIGN.md), so a plain
``nvcc -c`` builds them here in seconds. The torch glue (*_cuda.cpp) is compiled by the real
CUDA build on a GPU machine.
"""
import glob
import os
import shutil
import subprocess

import pytest

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
