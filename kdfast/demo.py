"""``kdfast demo``: until the recipes land, a short loss demo on CPU.

Distils a fixed random "teacher" linear classifier into a smaller student on synthetic
data with the fused KL loss and shows the loss falling and the agreement rising.
"""
from __future__ import annotations

import time

import torch

import kdfast
from kdfast import losses


def run_demo(args) -> int:
    torch.manual_seed(0)
    n_features, n_classes, batch = 64, 10, 256
    teacher = torch.nn.Sequential(torch.nn.Linear(n_features, 256), torch.nn.GELU(),
                                  torch.nn.Linear(256, n_classes))
    student = torch.nn.Linear(n_features, n_classes)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    kd = losses.KLDivLoss(temperature=2.0)
    print(f"kdfast {kdfast.__version__}: loss demo (backend auto -> cpu kernels "
          f"{'present' if kdfast.info()['backends']['cpu']['present'] else 'absent'})")
    start = time.perf_counter()
    for step in range(args.steps + 1):
        x = torch.randn(batch, n_features)
        with torch.no_grad():
            t_logits = teacher(x)
        loss = kd(student(x), t_logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 5) == 0:
            with torch.no_grad():
                xe = torch.randn(2048, n_features)
                agree = (student(xe).argmax(-1) == teacher(xe).argmax(-1)).float().mean()
            print(f"step {step:4d}  kd loss {loss.item():.4f}  agreement with teacher {agree:.3f}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
