"""Builds kdfast's compiled extensions with torch.utils.cpp_extension.

* ``kdfast._C``    -- C++ CPU kernels (OpenMP, vectorised per ISA at run time); always built.
* ``kdfast._cuda`` -- CUDA kernels; built when torch has CUDA and a usable CUDA toolkit is found.

Source layout (one op family per file per device, picked up by glob so that adding a
family needs no edit here):
  csrc/cpu/*.cpp           CPU kernels + ``TORCH_LIBRARY_FRAGMENT(kdfast)`` schemas + CPU impls
  csrc/cuda/*.cu           CUDA kernels with plain-pointer launchers (no torch headers)
  csrc/cuda/*.cpp          torch glue: checks, allocation, stream, ``TORCH_LIBRARY_IMPL(kdfast, CUDA)``
  csrc/include/kdfast/     shared numerics headers

Environment: ``KDFAST_NO_CUDA=1`` skips the CUDA extension; ``KDFAST_REQUIRE_CUDA=1`` makes a
missing toolkit/header an error instead of a warning; ``CUDA_HOME`` is used when its
``include/`` holds ``cuda_runtime_api.h`` (else other candidates are tried and it says so);
``TORCH_CUDA_ARCH_LIST`` is respected (default "8.0;9.0"); ``MAX_JOBS`` limits parallel jobs.

The build records the torch it was built against in ``kdfast/_build_info.py`` (generated,
gitignored); ``kdfast/_ext.py`` compares it with the running torch before loading a ``.so``.
"""
import glob
import os
import re
import shutil
import site
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = [os.path.join(ROOT, "csrc", "include")]


def warn(msg):
    print(f"\n*** kdfast setup.py: {msg}\n", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- CUDA toolkit discovery
# torch.utils.cpp_extension fixes CUDA_HOME when it is imported (from $CUDA_HOME, else from
# `which nvcc`/.. -- /usr/local for /usr/local/bin/nvcc, which has no CUDA headers). So find a
# toolkit whose include/ really holds cuda_runtime_api.h first, and export it before the import.
def _has_toolkit(home):
    return bool(home) and os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h"))


def _toolkit_candidates():
    seen = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            seen.append((f"${var}", os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        seen.append(("nvcc on PATH", os.path.dirname(os.path.dirname(nvcc))))
        seen.append(("nvcc on PATH (resolved)", os.path.dirname(os.path.dirname(real))))
    seen.append(("default", "/usr/local/cuda"))
    seen += [("found", p) for p in sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    seen.append(("default", "/opt/cuda"))
    return seen


def find_cuda_home():
    """(home or None, what was tried) -- the first candidate with include/cuda_runtime_api.h
    and bin/nvcc."""
    tried = []
    for why, home in _toolkit_candidates():
        home = os.path.abspath(home)
        ok = _has_toolkit(home) and os.path.isfile(os.path.join(home, "bin", "nvcc"))
        tried.append(f"{home} ({why}): " + ("ok" if ok else "no include/cuda_runtime_api.h or bin/nvcc"))
        if ok:
            return home, tried
    return None, tried


want_cuda = os.environ.get("KDFAST_NO_CUDA", "0") != "1"
require_cuda = os.environ.get("KDFAST_REQUIRE_CUDA", "0") == "1"
cuda_home, cuda_tried = find_cuda_home() if want_cuda else (None, [])
if cuda_home is not None:
    given = os.environ.get("CUDA_HOME")
    if given and os.path.abspath(given) != cuda_home:
        warn(f"CUDA_HOME={given} has no include/cuda_runtime_api.h; using {cuda_home}")
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
import torch.utils.cpp_extension as cpp_ext  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if cuda_home is not None:
    cpp_ext.CUDA_HOME = cuda_home  # in case torch's guess was made before our export


def _site_dirs():
    dirs = []
    for d in [os.path.dirname(os.path.dirname(torch.__file__))] + site.getsitepackages():
        if d not in dirs and os.path.isdir(d):
            dirs.append(d)
    return dirs


# Headers that ATen/cuda/CUDAContext.h includes and a bare toolkit may lack (cuBLAS, cuSPARSE,
# cuSOLVER). The pip nvidia packages that a CUDA torch depends on ship them, under
# site-packages/nvidia/cu13/include (CUDA 13) or site-packages/nvidia/<lib>/include (CUDA 12).
LIB_HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


def find_lib_headers(home):
    """(extra include dirs, headers still missing, dirs searched)."""
    extra, missing = [], []
    searched = [os.path.join(home, "include")]
    for sp in _site_dirs():
        searched += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "include")))
    for header in LIB_HEADERS:
        hit = next((d for d in searched if os.path.isfile(os.path.join(d, header))), None)
        if hit is None:
            missing.append(header)
        elif hit != searched[0] and hit not in extra:
            extra.append(hit)
    return extra, missing, searched


def nvcc_version(home):
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def cuda_plan():
    """(extra include dirs, nvcc version) when kdfast._cuda can be built, else (None, why not)."""
    if not want_cuda:
        return None, "KDFAST_NO_CUDA=1"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} was built without CUDA"
    if cuda_home is None:
        return None, ("no CUDA toolkit with include/cuda_runtime_api.h and bin/nvcc found; tried:\n  "
                      + "\n  ".join(cuda_tried) + "\nset CUDA_HOME to the toolkit's root")
    nv = nvcc_version(cuda_home)
    if nv is None:
        return None, f"{cuda_home}/bin/nvcc --version did not report a release"
    if nv.split(".")[0] != torch.version.cuda.split(".")[0]:
        return None, (f"nvcc {nv} ({cuda_home}) and torch {torch.__version__} (CUDA "
                      f"{torch.version.cuda}) differ in CUDA major version; install a toolkit of "
                      f"CUDA {torch.version.cuda.split('.')[0]}.x or the matching torch")
    extra, missing, searched = find_lib_headers(cuda_home)
    if missing:
        return None, (f"{', '.join(missing)} not found (needed by ATen/cuda/CUDAContext.h); "
                      "searched:\n  " + "\n  ".join(searched) + "\ninstall the toolkit's cuBLAS/"
                      "cuSPARSE/cuSOLVER dev headers, or the pip packages nvidia-cublas, "
                      "nvidia-cusparse, nvidia-cusolver that a CUDA torch depends on")
    return (extra, nv), None


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# No -march=native: the wheel must run on any x86-64. Hot loops are compiled per ISA with
# target_clones and picked at load time (KDFAST_CPU_CLONES in csrc/include/kdfast/cpu_math.h).
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

plan, cuda_skip = cuda_plan()
nvcc_release = None
if plan is not None:
    extra_includes, nvcc_release = plan
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    ext = CUDAExtension(
        "kdfast._cuda",
        sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
        include_dirs=INCLUDE,
        extra_compile_args={
            "cxx": ["-O3", "-std=c++20"],
            "nvcc": ["-O3", "-std=c++17", "-lineinfo"],
        },
    )
    # after torch's and the toolkit's own include dirs, so they never shadow the toolkit
    ext.include_dirs += extra_includes
    extensions.append(ext)
    print(f"kdfast setup.py: building kdfast._cuda with CUDA_HOME={cuda_home} (nvcc "
          f"{nvcc_release}), TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"
          + (f", extra include dirs {extra_includes}" if extra_includes else ""), flush=True)
elif require_cuda:
    sys.exit(f"kdfast setup.py: KDFAST_REQUIRE_CUDA=1 but kdfast._cuda cannot be built: {cuda_skip}")
elif want_cuda and torch.version.cuda is not None:
    warn(f"skipping kdfast._cuda (torch has CUDA {torch.version.cuda}): {cuda_skip}")


def build_info_source():
    """kdfast/_build_info.py: the torch the extensions are built against."""
    values = {
        "TORCH_VERSION": torch.__version__,
        "TORCH_CUDA": torch.version.cuda,
        "CXX11_ABI": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "NVCC": nvcc_release,
        "EXTENSIONS": [e.name for e in extensions],
        "CUDA_SKIPPED": cuda_skip,
    }
    lines = ['"""Generated by setup.py at build time (not in git): the torch that kdfast\'s',
             'compiled extensions were built against; kdfast/_ext.py checks it before loading."""']
    lines += [f"{k} = {v!r}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


class BuildExt(BuildExtension):
    """build_ext that also writes kdfast/_build_info.py next to the built modules (the wheel's
    build dir, or the source tree for an in-place/editable build)."""

    def run(self):
        super().run()
        text = build_info_source()
        targets = [os.path.join(self.build_lib, "kdfast", "_build_info.py")]
        if self.inplace:
            targets.append(os.path.join(ROOT, "kdfast", "_build_info.py"))
        for path in targets:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)

    def get_outputs(self):
        return super().get_outputs() + [os.path.join(self.build_lib, "kdfast", "_build_info.py")]


setup(
    packages=find_packages(include=["kdfast", "kdfast.*"]),
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
