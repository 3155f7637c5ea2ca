"""Training steps with the fused Adam/AdamW (the Distiller's default since it was measured
here) against torch's default per-tensor loop on a CPU.

For Tang's BiLSTM (cached teacher logits, MSE, Adam: its default) and ETD / TinyBERT step 1
(teacher forward + student forward, attention and hidden losses from Q/K, backward, AdamW) and
step 2 (student against cached teacher logits), at the 3x192 and the 3x384 student, two
Distillers from the same seed step through the same length-grouped batches of a task's
training sentences, interleaved in one process (alternating which goes first); one of them has
its optimizer replaced by the same class with ``foreach=False``. Reported:
median and p90 of the whole step and of ``optimizer.step()`` alone (the two compute the same
update up to rounding; the students differ by their dropout draws). Cached
teacher logits are random (a step's time does not depend on their values); the teacher is the
offline all-MiniLM-L6-v2.

    python benchmarks/optimizer_cpu.py --task movie-sentences --name optimizer-cpu-avx2
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

SIZES = {"3x192": dict(num_layers=3, hidden_size=192, num_heads=12, intermediate_size=768),
         "3x384": dict(num_layers=3, hidden_size=384, num_heads=12, intermediate_size=1536)}
CASES = [("tang", "BiLSTM")] + [(step, size) for size in SIZES
                                 for step in ("etd-step1", "etd-step2")]


def timed_optimizer_steps(d):
    """The times of ``d.opt.step`` (from its pre- and post-step hooks), as they happen."""
    times, start = [], []
    d.opt.register_step_pre_hook(lambda *_: start.append(time.perf_counter()))
    d.opt.register_step_post_hook(lambda *_: times.append(time.perf_counter() - start.pop()))
    return times


def measure(recipe, size, teacher, tokenizer, task, examples, batches):
    from kdfast.bench.harness import median_p90
    from kdfast.data.tokenize import collate

    runs = {}
    for name in ("fused", "per-tensor"):
        torch.manual_seed(0)
        d = distiller(recipe, teacher, tokenizer, task, examples, SIZES.get(size),
                      "adam" if recipe == "tang" else "adamw")
        d.setup()
        if name == "per-tensor":
            params = [p for p in d.student.parameters() if p.requires_grad]
            d.opt = type(d.opt)(params, lr=d.cfg.lr, weight_decay=d.cfg.weight_decay,
                                foreach=False)
            d.sched = d._make_scheduler(d.opt, d.total)
        else:
            assert d.opt.defaults.get("fused"), "the Distiller's Adam is not the fused one"
        runs[name] = (d, timed_optimizer_steps(d), [])
    for i, idx in enumerate(batches):
        batch = collate([examples[j] for j in idx])
        for name in (("fused", "per-tensor") if i % 2 == 0 else ("per-tensor", "fused")):
            d, _, step_times = runs[name]
            t0 = time.perf_counter()
            d.step(batch)
            step_times.append(time.perf_counter() - t0)
    out = {"step": recipe, "student": size, "batches": len(batches),
           "parameters": sum(p.numel() for p in runs["fused"][0].student.parameters())}
    for name, (_, opt_times, step_times) in runs.items():
        out[name] = dict(zip(("step_median_s", "step_p90_s"), median_p90(step_times[1:])))
        out[name].update(zip(("opt_median_s", "opt_p90_s"), median_p90(opt_times[1:])))
    out["speedup"] = out["per-tensor"]["step_median_s"] / out["fused"]["step_median_s"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="movie-sentences")
    p.add_argument("--batches", type=int, default=40, help="batches per case (after one warm-up)")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--name", default="optimizer-cpu")
    args = p.parse_args()

    from kdfast.bench.harness import write_report

    task, teacher, tokenizer, examples = task_examples(args.task)
    batches = epoch_batches(examples, 32)[1][:args.batches + 1]
    rows = []
    for recipe, size in CASES:
        rows.append(measure(recipe, size, teacher, tokenizer, task, examples, batches))
        print(json.dumps(rows[-1]), flush=True)
    ms = lambda r, k: f"{1e3 * r['per-tensor'][k]:.0f} / {1e3 * r['fused'][k]:.0f}"  # noqa: E731
    cells = [[r["step"], r["student"], f"{r['parameters'] / 1e6:.1f}M",
              ms(r, "step_median_s"), ms(r, "step_p90_s"), f"{r['speedup']:.2f}x",
              ms(r, "opt_median_s"), ms(r, "opt_p90_s")]
             for r in rows]
    write_report(
        args.results, args.name,
        title="Training steps: fused Adam/AdamW vs the per-tensor loop (CPU)",
        about=f"Written by `benchmarks/optimizer_cpu.py` (its docstring says what is timed). "
              f"Task {args.task}: the first {args.batches} length-grouped batches of 32 of one "
              f"epoch, after one warm-up step, both optimizers interleaved in one process, "
              f"{torch.get_num_threads()} threads. Times in ms, per-tensor / fused.",
        columns=["step", "student", "parameters", "step median", "step p90",
                 "speed-up (median)", "optimizer.step median", "optimizer.step p90"],
        align="llrrrrrr", cells=cells,
        data={"task": args.task, "batches": args.batches, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
