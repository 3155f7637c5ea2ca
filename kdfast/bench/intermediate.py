"""Benchmark suite ``intermediate``: the fused TinyBERT attention loss (all mapped layers in
one launch, gradient fused into the forward) against the official eager formulation and
``torch.compile`` of it, forward + backward, on per-layer lists of raw scores.

Cases (from issue 3): 4 mapped layers of [32, 12, 128, 128] and 6 of [16, 12, 512, 512], in
float32 and bfloat16. Run: ``kdfast bench intermediate [--quick]``.
"""
from __future__ import annotations

import os

import torch

from kdfast import _ext
from kdfast.bench import harness
from kdfast.losses import attention_kl, attention_mse

SHAPES = [(4, (32, 12, 128, 128)), (6, (16, 12, 512, 512))]
DTYPES = [torch.float32, torch.bfloat16]


def eager_tinybert(s, t):
    """The official TinyBERT attention loss (general_distill.py / task_distill.py)."""
    loss_mse = torch.nn.MSELoss()
    att_loss = 0.0
    for student_att, teacher_att in zip(s, t):
        student_att = torch.where(student_att <= -1e2, torch.zeros_like(student_att), student_att)
        teacher_att = torch.where(teacher_att <= -1e2, torch.zeros_like(teacher_att), teacher_att)
        att_loss = att_loss + loss_mse(student_att, teacher_att)
    return att_loss


def _case(n_layers, shape, dtype, device="cpu"):
    bsz, heads, length, _ = shape

    def make():
        gen = torch.Generator().manual_seed(0)
        lens = torch.randint(length // 2, length + 1, (bsz,), generator=gen)
        add = torch.where(torch.arange(length)[None, :] < lens[:, None], 0.0, -10000.0)
        add = add[:, None, None, :]
        s = [(torch.randn(shape, generator=gen) + add).to(device, dtype).requires_grad_()
             for _ in range(n_layers)]
        t = [(torch.randn(shape, generator=gen) + add).to(device, dtype) for _ in range(n_layers)]
        return {"s": s, "t": t}

    elem = n_layers * bsz * heads * length * length * torch.finfo(dtype).bits // 8
    name = f"{n_layers}x[{bsz},{heads},{length},{length}] {str(dtype).replace('torch.', '')}"
    return harness.Case(name, make, floor_bytes={"fwd": 2 * elem, "fwd+bwd": 3 * elem})


def _clearing(fn):
    """Drops the previous step's .grad so every implementation pays for one fresh gradient
    (the harness only clears tensors, not lists of tensors)."""
    def run(s, t):
        for x in s:
            x.grad = None
        return fn(s, t)
    return run


def main(quick: bool = False, out_dir: str = "benchmarks/results") -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compiled = torch.compile(eager_tinybert)
    impls = {"eager": _clearing(eager_tinybert), "compile": _clearing(compiled)}
    ours = [b for b in (("cuda", "triton") if device == "cuda" else ("cpu",)) if _ext.has(b)]
    if not ours:
        raise SystemExit(f"no kdfast backend for {device}: cpu: {_ext.why_missing('cpu')}")
    for b in ours:
        impls[f"kdfast-{b}"] = _clearing(lambda s, t, b=b: attention_mse(s, t, backend=b))
        impls[f"kdfast-{b}-kl"] = _clearing(
            lambda s, t, b=b: attention_kl(s, t, attention_mask=None, backend=b))
    cases = [_case(n, shape, dt, device) for n, shape in SHAPES for dt in DTYPES]
    repeat, warmup = (3, 1) if quick else (10, 2)
    rows = harness.run(cases, impls, modes=("fwd+bwd",), device=device, warmup=warmup,
                       repeat=repeat, max_seconds=20.0)
    ours_name = f"kdfast-{ours[0]}"
    ups = harness.speedups(rows, ours_name)
    for r in ups:
        print(f"  {r['case']:30s} {r['mode']:8s} {ours_name}: "
              + ", ".join(f"{k} {v:.1f}x" for k, v in r.items() if k.startswith("vs_")))
    meta = harness.machine()
    meta["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)  # shared machines: context
    floor = ", ".join(f"{c.name}: {c.floor_bytes['fwd+bwd'] / 32e9 * 1e3:.1f} ms"
                      for c in cases)
    notes = (
        "TinyBERT attention loss (mode='tinybert', raw scores), forward+backward, on per-layer "
        "lists of maps; `eager` is the official formulation (where <= -100 -> 0, MSELoss, summed "
        "over layers), `compile` is torch.compile of it, `kdfast-cpu` the fused kernel (all "
        "layers in one call, gradient written in the forward), `kdfast-cpu-kl` the MiniLM "
        "attention KL (softmax fused) for scale. Every implementation starts each step with "
        "cleared .grad. "
        + (f"Floor = one read of student and teacher and one write of the gradient at ~32 GB/s: "
           f"{floor}. GPU: not measured (no GPU in this task)." if device == "cpu" else
           "GPU floor fractions use the measured device-to-device copy bandwidth.")
        + f"\n\nSpeedups of {ours_name}: " + "; ".join(
            f"{r['case']}: {r.get('vs_eager', float('nan')):.1f}x vs eager, "
            f"{r.get('vs_compile', float('nan')):.1f}x vs compile" for r in ups)
    )
    harness.write(rows, out_dir, harness.result_name(f"intermediate-{device}", quick), meta, notes)
    return 0
