"""Attention losses from Q/K (no L x L map) vs the map kernels vs torch.compile, on the CPU.

``python -m kdfast bench relation`` (or ``python -m kdfast.bench.relation``). For each
sequence length L (B*H = 48 fixed, d = 32, float32, one batch element half padded) and each
loss (MiniLM attention KL, TinyBERT attention MSE) it times forward+backward of:

* ``qk-<backend>``: :func:`kdfast.losses.relation.attention_kl_qk` / ``attention_mse_qk``;
* ``maps-<backend>``: materialise ``Q K^T / sqrt(d) + additive mask`` (student with autograd,
  teacher under no_grad) then today's fused map kernel ``attention_kl`` / ``attention_mse``;
* ``compile``: torch.compile of the materialised formula in plain PyTorch.

Calls are interleaved (one call of each implementation per round, rotating the order), 20
rounds (5 at L = 4096, where one call takes seconds to tens of seconds), in one process: median and p90 in ms. Peak memory: the growth of the process's peak
RSS (VmHWM, reset through /proc/self/clear_refs) over its RSS before one forward+backward call,
measured in a fresh subprocess per (implementation, loss, L) after a warm-up call, with
``MALLOC_MMAP_THRESHOLD_`` fixed so that freed buffers go back to the OS.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from kdfast.bench import harness  # noqa: E402
from kdfast.ops import relation as _rel_ops  # noqa: E402

if os.environ.get("KDFAST_RELATION_DEV_SO"):  # a private build (op renamed relation_loss_dev)
    _rel_ops.use_dev_build(os.environ["KDFAST_RELATION_DEV_SO"])

BH = (4, 12)  # B, H: B*H = 48
D = 32
LENGTHS = (128, 512, 2048, 4096)  # 4096: the map path still fits in 24 GB (~9 GiB peak)
LONG_ROUNDS = {4096: 5}
LOSSES = ("kl", "tinybert")


def _inputs(length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, h = BH
    qs, ks, qt, kt = (torch.randn(b, h, length, D, generator=gen) for _ in range(4))
    mask = torch.ones(b, length)
    mask[-1, length // 2:] = 0
    return qs.requires_grad_(), ks.requires_grad_(), qt, kt, mask


def _additive(mask):
    return (1 - mask)[:, None, None, :] * -10000.0


def _materialised_kl(qs, ks, qt, kt, mask):
    """What a user writes: scores, log-softmax over keys (padded keys at -10000), KL per real row."""
    add = _additive(mask)
    s = qs @ ks.transpose(-1, -2) / D ** 0.5 + add
    with torch.no_grad():
        t = qt @ kt.transpose(-1, -2) / D ** 0.5 + add
        log_p = torch.log_softmax(t, -1)
        p = log_p.exp()
    rows = (p * (log_p - torch.log_softmax(s, -1))).sum(-1)  # [B, H, L]
    rows = rows * mask[:, None, :]
    return rows.sum() / (qs.shape[1] * mask.sum())


def _materialised_tinybert(qs, ks, qt, kt, mask):
    add = _additive(mask)
    s = qs @ ks.transpose(-1, -2) / D ** 0.5 + add
    with torch.no_grad():
        t = qt @ kt.transpose(-1, -2) / D ** 0.5 + add
        t = torch.where(t <= -100, torch.zeros_like(t), t)
    s = torch.where(s <= -100, torch.zeros_like(s), s)
    return torch.nn.functional.mse_loss(s, t)


def implementations(loss: str) -> dict:
    from kdfast.losses import attention_kl, attention_mse
    from kdfast.losses.relation import attention_kl_qk, attention_mse_qk
    from kdfast.ops import relation as rel_ops

    impls = {}
    backend = "cpu" if rel_ops.compiled_op() is not None else None
    if backend:
        if loss == "kl":
            impls[f"qk-{backend}"] = lambda qs, ks, qt, kt, m: attention_kl_qk(
                qs, ks, qt, kt, attention_mask=m, backend=backend)
        else:
            impls[f"qk-{backend}"] = lambda qs, ks, qt, kt, m: attention_mse_qk(
                qs, ks, qt, kt, attention_mask=m, mode="tinybert", backend=backend)

    def maps(qs, ks, qt, kt, m):
        add = _additive(m)
        s = qs @ ks.transpose(-1, -2) / D ** 0.5 + add
        with torch.no_grad():
            t = qt @ kt.transpose(-1, -2) / D ** 0.5 + add
        if loss == "kl":
            return attention_kl(s, t, attention_mask=m, backend="cpu")
        return attention_mse(s, t, mode="tinybert", backend="cpu")

    impls["maps-cpu"] = maps
    impls["compile"] = torch.compile(_materialised_kl if loss == "kl" else _materialised_tinybert,
                                     dynamic=False)
    return impls


def _step(fn, args):
    for x in args[:2]:
        x.grad = None
    fn(*args).backward()


def time_interleaved(loss, length, rounds):
    args = _inputs(length)
    impls = implementations(loss)
    for fn in impls.values():  # warm-up (compiles)
        _step(fn, args)
        _step(fn, args)
    names = list(impls)
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            _step(impls[n], args)
            times[n].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for n, ts in times.items():
        median, p90 = harness.median_p90(ts)
        out[n] = {"median_ms": median, "p90_ms": p90, "calls": len(ts)}
    return out


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def measure_memory(impl, loss, length):
    """Peak RSS growth (bytes) during one fwd+bwd call, after a warm-up call (this process)."""
    args = _inputs(length)
    fn = implementations(loss)[impl]
    _step(fn, args)
    for x in args[:2]:
        x.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    _step(fn, args)
    return _status("VmHWM") - before


def _memory_subprocess(impl, loss, length):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = ("import sys; from kdfast.bench.relation import measure_memory; "
            f"print('PEAK', measure_memory({impl!r}, {loss!r}, {length}))")
    try:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=1800)
        for line in res.stdout.splitlines():
            if line.startswith("PEAK"):
                return int(line.split()[1])
        print(res.stderr[-2000:], file=sys.stderr)
    except Exception as exc:  # report, don't die: memory is secondary to time here
        print(f"memory of {impl} {loss} L={length} failed: {exc}", file=sys.stderr)
    return None


def main(quick: bool = False, out_dir: str = "benchmarks/results") -> int:
    lengths = LENGTHS[:2] if quick else LENGTHS
    rows = []
    for length in lengths:
        rounds = 5 if quick else LONG_ROUNDS.get(length, 20)
        for loss in LOSSES:
            res = time_interleaved(loss, length, rounds)
            for impl, r in res.items():
                mem = _memory_subprocess(impl, loss, length)
                row = {"loss": loss, "L": length, "B*H": BH[0] * BH[1], "d": D, "impl": impl, **r,
                       "peak_extra_MiB": None if mem is None else round(mem / 2 ** 20, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = harness.machine()
    meta["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    write(rows, meta, out_dir, harness.result_name("relation-cpu", quick))
    return 0


def write(rows, meta, out_dir, name="relation-cpu"):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = ["# Attention losses from Q/K vs materialised maps (CPU, fwd+bwd)", "",
             "machine: " + ", ".join(f"{k}={v}" for k, v in meta.items()), "",
             f"B*H = {BH[0] * BH[1]} (B={BH[0]}, H={BH[1]}), d = {D}, float32, last batch element "
             "half padded. Median / p90 over interleaved calls in one process; peak = growth of "
             "peak RSS during one call (fresh subprocess per row).", "",
             "| loss | L | impl | median ms | p90 ms | calls | peak extra MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['L']} | {r['impl']} | {r['median_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['calls']} | {r['peak_extra_MiB']} |")
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
