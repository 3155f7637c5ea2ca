"""Where a training step's time goes on a CPU: torch.profiler over ETD / TinyBERT step 1
(teacher forward + student forward, attention and hidden losses, backward, AdamW) and step 2
(student against cached teacher logits) at the 3x192 and the 3x384 student, and Tang's
BiLSTM step, on the length-grouped batches of one epoch of a task's training sentences
(after a few warm-up steps). Each step's time is split into the matrix products
(``aten::mm``/``addmm``/``bmm``, with their FLOP rate from the profiler's FLOP counts), the
random masks of dropout (``aten::bernoulli_``), the dense gradient of the embedding tables
(``aten::embedding_dense_backward``), the optimizer step and the rest. Cached teacher logits
are random (a step's time does not depend on their values); the teacher is the offline
all-MiniLM-L6-v2.

    python benchmarks/step_profile.py --task movie-sentences --name step-profile-cpu-avx2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from group_by_length import distiller, epoch_batches, task_examples  # noqa: E402
from optimizer_cpu import SIZES  # noqa: E402

CASES = [("tang", None)] + [(step, size) for size in SIZES for step in ("etd-step1", "etd-step2")]
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")
PARTS = {"dropout masks": ("aten::bernoulli_",), "embedding gradient":
         ("aten::embedding_dense_backward",), "optimizer": ("Optimizer.step#",)}


def profile(recipe, size, teacher, tokenizer, task, examples, batches, warmup):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from kdfast.data.tokenize import collate

    torch.manual_seed(0)
    d = distiller(recipe, teacher, tokenizer, task, examples, SIZES.get(size),
                  "adam" if recipe == "tang" else "adamw")
    d.setup()
    data = [collate([examples[j] for j in idx]) for idx in batches]
    for b in data[:warmup]:
        d.step(b)
    with torch_profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        t0 = time.perf_counter()
        for b in data[warmup:]:
            d.step(b)
        wall = time.perf_counter() - t0
    n = len(data) - warmup
    events = prof.key_averages()
    # self time for leaf kernels; total time for the parts that call other ops
    mm_s = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / 1e6 / n
    mm_flop = sum(e.flops for e in events if e.key in MATMULS) / n
    row = {"step": recipe, "student": size or "BiLSTM", "steps": n, "step_s": wall / n,
           "matmul_s": mm_s, "matmul_gflops": mm_flop / mm_s / 1e9 if mm_s else None}
    for part, keys in PARTS.items():
        row[part] = sum(e.cpu_time_total for e in events
                        if any(e.key.startswith(k) for k in keys)) / 1e6 / n
    row["other_s"] = row["step_s"] - mm_s - sum(row[p] for p in PARTS)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="movie-sentences")
    p.add_argument("--batches", type=int, default=25, help="profiled batches per case")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--name", default="step-profile-cpu")
    args = p.parse_args()

    from kdfast.bench.harness import write_report

    task, teacher, tokenizer, examples = task_examples(args.task)
    batches = epoch_batches(examples, 32)[1][:args.warmup + args.batches]
    rows = []
    for recipe, size in CASES:
        rows.append(profile(recipe, size, teacher, tokenizer, task, examples, batches,
                            args.warmup))
        print(json.dumps(rows[-1]), flush=True)

    def ms(r, k):
        return f"{1e3 * r[k]:.0f} ({100 * r[k] / r['step_s']:.0f} %)"
    cells = [[r["step"], r["student"], f"{1e3 * r['step_s']:.0f}", ms(r, "matmul_s"),
              f"{r['matmul_gflops']:.0f}", *(ms(r, part) for part in PARTS), ms(r, "other_s")]
             for r in rows]
    write_report(
        args.results, args.name, title="Where a training step's time goes (CPU, torch.profiler)",
        about=f"Written by `benchmarks/step_profile.py` (its docstring says what is timed). Task "
              f"{args.task}: {args.batches} length-grouped batches of 32 after {args.warmup} "
              f"warm-up steps, {torch.get_num_threads()} threads. Mean ms a step (share of the "
              f"step); the matrix products' GFLOP/s from the profiler's FLOP counts.",
        columns=["step", "student", "step ms", "matrix products", "their GFLOP/s",
                 *PARTS, "rest"],
        align="llrrrrrrr", cells=cells, data={"task": args.task, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
