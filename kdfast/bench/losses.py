"""Benchmark of the fused softmax-KD loss (Hinton KL) against what users write today.

Side by side in one run: kdfast's backends, torch eager (log_softmax + kl_div), torch.compile
of the same eager code and, when installed on a GPU, Liger-Kernel's KL loss (with the
log_softmax it needs). Forward and forward+backward; on a GPU also peak extra memory and the
fraction of the memory-traffic floor (one read of each input, plus one write of the gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdfast import _ext, losses
from kdfast.bench import harness

TEMPERATURE = 2.0


def eager_kl(student, teacher):
    log_q = F.log_softmax(student.float() / TEMPERATURE, dim=-1)
    log_p = F.log_softmax(teacher.float() / TEMPERATURE, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * TEMPERATURE**2


def _liger():
    try:
        from liger_kernel.transformers import LigerKLDIVLoss
    except Exception:
        return None
    loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def liger_kl(student, teacher):
        log_q = F.log_softmax(student / TEMPERATURE, dim=-1)
        log_p = F.log_softmax(teacher / TEMPERATURE, dim=-1)
        return loss(log_q, log_p) * TEMPERATURE**2

    return liger_kl


def implementations(device: str) -> dict:
    impls = {}
    backends = ["cpu"] if device == "cpu" else ["cuda", "triton"]
    for b in backends:
        if _ext.has(b):
            impls[f"kdfast-{b}"] = (lambda b: lambda student, teacher: losses.kl_div(
                student, teacher, temperature=TEMPERATURE, backend=b))(b)
    impls["eager"] = eager_kl
    impls["compile"] = torch.compile(eager_kl)
    if device == "cuda" and (liger := _liger()) is not None:
        impls["liger"] = liger
    return impls


def cases(device: str, quick: bool):
    if device == "cpu":
        shapes = [((256, 30522), torch.float32)] if quick else [((2048, 30522), torch.float32)]
    else:
        shapes = [((1024, 30522), torch.bfloat16)] if quick else [
            ((8192, 30522), torch.bfloat16), ((8192, 128256), torch.bfloat16)]
    out = []
    for (n, v), dtype in shapes:
        elt = torch.empty((), dtype=dtype).element_size()

        def make(n=n, v=v, dtype=dtype):
            g = torch.Generator(device=device).manual_seed(0)
            s = torch.randn(n, v, device=device, dtype=dtype, generator=g) * 3
            t = torch.randn(n, v, device=device, dtype=dtype, generator=g) * 3
            return {"student": s.requires_grad_(), "teacher": t}

        out.append(harness.Case(f"{n}x{v} {str(dtype).replace('torch.', '')}", make,
                                floor_bytes={"fwd": 2 * n * v * elt, "fwd+bwd": 3 * n * v * elt}))
    return out


def main(quick: bool = False, out_dir: str = "benchmarks/results") -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    impls = implementations(device)
    print(f"kdfast bench losses on {device}: {', '.join(impls)}")
    rows = harness.run(cases(device, quick), impls, device=device,
                       warmup=3, repeat=5 if quick else 15, max_seconds=30)
    ours = "kdfast-cpu" if device == "cpu" else "kdfast-cuda"
    ratios = harness.speedups(rows, ours)
    notes = "Hinton KL, T=2, batchmean. Speed-ups of {}: ".format(ours) + "; ".join(
        f"{r['case']} {r['mode']}: " + ", ".join(f"{k} {v:.1f}x" for k, v in r.items() if k.startswith("vs_"))
        for r in ratios)
    name = harness.result_name(f"losses-{device}", quick)
    path = harness.write(rows, out_dir, name, harness.machine(), notes=notes)
    print(notes)
    print(f"wrote {path}")
    return 0
