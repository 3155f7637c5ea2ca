"""A small benchmark harness shared by every kdfast suite.

Each suite gives cases (a shape/dtype and a function making fresh inputs) and
implementations (name -> callable returning a loss or output). The harness times every
implementation on every case in the same run, forward and forward+backward, and reports the
median time, the peak extra memory and, on a GPU, the fraction of the memory-traffic floor.
Results are written as JSON (the data), markdown (the table) and PNG (the plot).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Case:
    name: str
    make_inputs: Callable[[], dict]  # fresh tensors; those needing grad have requires_grad set
    floor_bytes: dict = field(default_factory=dict)  # mode -> bytes moved at minimum
    flops: dict = field(default_factory=dict)  # mode -> useful flops (optional)


def machine() -> dict:
    meta = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),  # AVX2 / AVX512: kernels differ
        "threads": torch.get_num_threads(),
        # torch's CPU allocator uses transparent huge pages when this is 1: fewer page faults
        # on fresh [N, V] buffers, for every implementation alike
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:
        meta["triton"] = None
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
        meta["cuda"] = torch.version.cuda
    return meta


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_p90(times) -> tuple[float, float]:
    """The median and the 90th percentile (nearest rank) of a list of timings."""
    ts = sorted(times)
    return statistics.median(ts), ts[min(len(ts) - 1, int(0.9 * len(ts)))]


def time_call(fn: Callable[[], object], device: str, *, warmup: int, repeat: int,
              max_seconds: float = 10.0):
    """Median milliseconds of ``fn`` and the peak extra bytes it allocated (GPU only)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    start_all = time.perf_counter()
    for _ in range(repeat):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start_all > max_seconds:
            break
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else None
    return statistics.median(times), peak


def bandwidth_ceiling(device: str) -> float | None:
    """Measured device-to-device copy bandwidth in bytes/s (read + write), GPU only."""
    if device != "cuda":
        return None
    x = torch.empty(512 * 1024 * 1024 // 4, device="cuda")
    y = torch.empty_like(x)
    ms, _ = time_call(lambda: y.copy_(x), "cuda", warmup=3, repeat=20)
    return 2 * x.numel() * 4 / (ms * 1e-3)


def run(cases, impls: dict, *, modes=("fwd", "fwd+bwd"), device: str, warmup=3, repeat=20,
        max_seconds=10.0, log=print) -> list[dict]:
    """Times every implementation on every case; returns one row per (case, mode, impl)."""
    ceiling = bandwidth_ceiling(device)
    rows = []
    for case in cases:
        inputs = case.make_inputs()
        for mode in modes:
            for impl_name, impl in impls.items():
                def step():
                    for t in inputs.values():  # time the loss, not gradient accumulation
                        if isinstance(t, torch.Tensor):
                            t.grad = None
                    out = impl(**inputs)
                    if mode == "fwd+bwd":
                        out.backward()
                    return out

                def fwd_only():
                    with torch.no_grad():
                        return impl(**inputs)

                fn = step if mode == "fwd+bwd" else fwd_only
                try:
                    ms, peak = time_call(fn, device, warmup=warmup, repeat=repeat,
                                         max_seconds=max_seconds)
                except Exception as exc:  # a peer missing a feature is reported, not fatal
                    log(f"  {case.name} {mode} {impl_name}: skipped ({type(exc).__name__}: {exc})")
                    continue
                for t in inputs.values():
                    if isinstance(t, torch.Tensor):
                        t.grad = None
                row = {"case": case.name, "mode": mode, "impl": impl_name, "ms": ms,
                       "peak_extra_mb": None if peak is None else peak / 2**20}
                floor = case.floor_bytes.get(mode)
                if ceiling and floor:
                    row["floor_fraction"] = (floor / ceiling * 1e3) / ms
                rows.append(row)
                log(f"  {case.name:28s} {mode:8s} {impl_name:16s} {ms:9.3f} ms")
    return rows


def speedups(rows: list[dict], ours: str, baselines=("eager", "compile")) -> list[dict]:
    """Ratios baseline_time / ours_time per (case, mode)."""
    out = []
    keyed = {(r["case"], r["mode"], r["impl"]): r["ms"] for r in rows}
    for case, mode in dict.fromkeys((r["case"], r["mode"]) for r in rows):
        if (case, mode, ours) not in keyed:
            continue
        entry = {"case": case, "mode": mode, "impl": ours}
        for b in baselines:
            if (case, mode, b) in keyed:
                entry[f"vs_{b}"] = keyed[(case, mode, b)] / keyed[(case, mode, ours)]
        out.append(entry)
    return out


def result_name(name: str, quick: bool) -> str:
    """A --quick run's files never take the name of the full run's (committed) results."""
    return name + "-quick" if quick else name


def write(rows: list[dict], out_dir: str, name: str, meta: dict, notes: str = "") -> str:
    """Writes name.json, name.md and name.png under out_dir; returns the markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"machine": meta, "rows": rows}, f, indent=1)
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    keys = list(dict.fromkeys((r["case"], r["mode"]) for r in rows))
    table = {(r["case"], r["mode"], r["impl"]): r for r in rows}
    lines = [f"# {name}", "", "Machine: " + ", ".join(f"{k}={v}" for k, v in meta.items()), ""]
    if notes:
        lines += [notes, ""]
    lines.append("| case | mode | " + " | ".join(f"{i} (ms)" for i in impls) + " |")
    lines.append("|---|---|" + "---|" * len(impls))
    for case, mode in keys:
        cells = []
        for i in impls:
            r = table.get((case, mode, i))
            if r is None:
                cells.append("—")
            else:
                cell = f"{r['ms']:.3f}"
                if r.get("floor_fraction"):
                    cell += f" ({100 * r['floor_fraction']:.0f}% of floor)"
                cells.append(cell)
        lines.append(f"| {case} | {mode} | " + " | ".join(cells) + " |")
    path = os.path.join(out_dir, f"{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(rows, impls, keys, os.path.join(out_dir, f"{name}.png"), name)
    return path


def write_report(out_dir, name: str, *, title: str, about: str, columns: list[str],
                 align: str, cells: list[list[str]], data: dict) -> Path:
    """A measurement that is not an op-vs-op table: ``name.json`` (``data`` plus the machine)
    and ``name.md`` (title, machine line, ``about``, one table; ``align`` has one ``l`` or
    ``r`` per column) under ``out_dir``. Returns the markdown path."""
    m = machine()
    m["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"machine": m, **data}, indent=1))
    rule = {"l": "---", "r": "---:"}
    lines = [f"# {title}", "", "Machine: " + ", ".join(f"{k}={v}" for k, v in m.items()) + ".",
             "", about, "", "| " + " | ".join(columns) + " |",
             "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot(rows, impls, keys, path, title) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return
    table = {(r["case"], r["mode"], r["impl"]): r["ms"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)), 4))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        xs = [k + j * width for k in range(len(keys))]
        ys = [table.get((c, m, impl), float("nan")) for c, m in keys]
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))])
    ax.set_xticklabels([f"{c}\n{m}" for c, m in keys], fontsize=7)
    ax.set_ylabel("median time (ms, log)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
