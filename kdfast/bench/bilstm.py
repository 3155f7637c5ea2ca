"""BiLSTM suite: kdfast.nn.BiLSTM against torch.nn.LSTM(bidirectional=True).

Shapes from the issue: Tang SST-2 (B=50, T=50, I=300, H=150), pairs (B=256, T=32, I=300,
H=300) and B=64, T=64, I=300, H=300; fixed and variable lengths; inference (fwd) and
training (fwd+bwd, the input requires grad as embeddings do). Peers: nn.LSTM on the padded
batch ("torch") and, for variable lengths, nn.LSTM on a PackedSequence ("torch-packed").
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from kdfast import _ext
from kdfast.bench import harness
from kdfast.nn import BiLSTM

SHAPES = {"tang": (50, 50, 300, 150), "pairs": (256, 32, 300, 300), "b64t64": (64, 64, 300, 300)}


def _flops(B, T, I, H, fraction=1.0):
    fwd = 2 * (2 * B * T * I * 4 * H + 2 * B * T * H * 4 * H) * fraction
    return {"fwd": fwd, "fwd+bwd": 3 * fwd}


def _cases(device, shapes, variable):
    cases = []
    for name, (B, T, I, H) in shapes.items():
        for var in variable:
            def make(B=B, T=T, I=I, var=var):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(B, T, I, generator=g).to(device).requires_grad_()
                if var:  # uniform in [T/4, T], one full row
                    lens = torch.randint(max(1, T // 4), T + 1, (B,), generator=g)
                    lens[0] = T
                else:
                    lens = None
                return {"x": x, "lengths": lens}
            frac = 0.625 if var else 1.0  # mean length of the variable case is ~5/8 T
            cases.append(harness.Case(f"{name}{'-var' if var else ''} B{B} T{T} I{I} H{H}", make,
                                      flops=_flops(B, T, I, H, frac)))
    return cases


def _cpu_time_ratios(shapes, reps: int = 5) -> list[str]:
    """Single-thread process CPU time of fwd+bwd, torch vs kdfast, interleaved, min of reps.

    Wall-clock medians on a shared machine swing with the other tenants' load (OpenMP
    barriers suffer most); CPU time at one thread compares the work each implementation does.
    """
    import time

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lines = []
    try:
        for name, (B, T, I, H) in shapes.items():
            lstm = nn.LSTM(I, H, batch_first=True, bidirectional=True)
            ours = BiLSTM.from_torch(lstm)
            x = torch.randn(B, T, I, requires_grad=True)
            best = {}
            for it in range(reps + 1):
                for impl, m in (("torch", lstm), ("kdfast", ours)):
                    t0 = time.process_time()
                    m(x)[0].sum().backward()
                    dt = (time.process_time() - t0) * 1e3
                    if it > 0:  # the first round warms up
                        best[impl] = min(best.get(impl, float("inf")), dt)
            lines.append(f"- {name} B{B} T{T} I{I} H{H} fwd+bwd, 1 thread, CPU time: torch "
                         f"{best['torch']:.1f} ms, kdfast {best['kdfast']:.1f} ms, ratio "
                         f"{best['torch'] / best['kdfast']:.2f}x")
            print(lines[-1])
    finally:
        torch.set_num_threads(threads)
    return lines


def main(quick: bool = False, out_dir: str = "benchmarks/results") -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = {"tang": SHAPES["tang"]} if quick else SHAPES
    torch.manual_seed(0)
    modules = {}

    def get(I, H):
        if (I, H) not in modules:
            lstm = nn.LSTM(I, H, batch_first=True, bidirectional=True).to(device)
            modules[(I, H)] = (lstm, BiLSTM.from_torch(lstm))
        return modules[(I, H)]

    def ours(x, lengths):
        _, m = get(x.shape[-1], H_of[x.shape])
        return m(x, lengths)[0].sum()

    def torch_padded(x, lengths):
        lstm, _ = get(x.shape[-1], H_of[x.shape])
        return lstm(x)[0].sum()

    def torch_packed(x, lengths):
        if lengths is None:
            raise RuntimeError("fixed lengths: packing not needed")
        lstm, _ = get(x.shape[-1], H_of[x.shape])
        p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return lstm(p)[0].data.sum()

    H_of = {torch.Size((B, T, I)): H for (B, T, I, H) in shapes.values()}
    impls = {"kdfast": ours, "torch": torch_padded, "torch-packed": torch_packed}
    cases = _cases(device, shapes, (False, True))
    load_before = os.getloadavg()
    rows = harness.run(cases, impls, device=device, warmup=2 if quick else 3,
                       repeat=5 if quick else 10, max_seconds=4.0 if quick else 8.0)
    ups = harness.speedups(rows, "kdfast", baselines=("torch", "torch-packed"))
    for u in ups:
        print("  speedup", u)
    meta = harness.machine()
    meta["kdfast_backend"] = "cpu" if (device == "cpu" and _ext.has("cpu")) else device
    # The dev machine is shared: record how busy it was (1-minute load, before and after).
    meta["loadavg_1min"] = f"{load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    flops = {c.name: c.flops for c in cases}
    for r in rows:
        r["gflops"] = flops[r["case"]][r["mode"]] / (r["ms"] * 1e6)
    lines = ["Speedups (peer ms / kdfast ms):", ""]
    for u in ups:
        parts = [f"{k[3:]} {v:.2f}x" for k, v in u.items() if k.startswith("vs_")]
        lines.append(f"- {u['case']} {u['mode']}: " + ", ".join(parts))
    if device == "cpu":
        lines += ["", "Single-thread CPU-time comparison (robust to the shared machine's load):", ""]
        lines += _cpu_time_ratios(shapes)
    name = harness.result_name(f"bilstm-{device}", quick)
    path = harness.write(rows, out_dir, name, meta, notes="\n".join(lines))
    print(f"wrote {path}")
    return 0
