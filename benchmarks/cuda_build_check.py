"""`make cuda-build`'s last step: in the side environment with a CUDA torch (no GPU needed),
check that the installed kdfast._cuda imports and list the CUDA kernels it registers.

Exit status 1 when kdfast._cuda is missing from the install, does not import, or registers
no CUDA kernel. Run from outside the source tree so that the installed kdfast is used.
"""
import importlib.util
import sys

import torch


def main() -> int:
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"GPU visible: {torch.cuda.is_available()}")
    if importlib.util.find_spec("kdfast._cuda") is None:
        print("FAIL: kdfast._cuda is not in the installed kdfast")
        return 1
    from kdfast import _build_info as b

    print(f"built against torch {b.TORCH_VERSION} (CUDA {b.TORCH_CUDA}), nvcc {b.NVCC}, "
          f"extensions {b.EXTENSIONS}")
    import kdfast._C  # noqa: F401  (defines the torch.ops.kdfast schemas)
    cuda = importlib.import_module("kdfast._cuda")
    print(f"imported {cuda.__file__}")
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("kdfast::"))
    with_cuda = [n for n in ops if torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
    print(f"{len(with_cuda)} of {len(ops)} kdfast ops have a CUDA kernel:")
    for n in ops:
        print(f"  {n:40s} {'CUDA' if n in with_cuda else '-'}")
    extras = [a for a in dir(cuda) if not a.startswith("_")]
    if extras:
        print(f"kdfast._cuda python functions: {', '.join(extras)}")
    if not with_cuda:
        print("FAIL: kdfast._cuda registered no CUDA kernel")
        return 1
    print("OK: kdfast._cuda built, loaded and registered its CUDA kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
