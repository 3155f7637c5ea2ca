"""Training time of one epoch with length-grouped batches vs random batches
(``TrainConfig.group_by_length``, :func:`kdfast.data.tokenize.length_grouped`).

For each recipe's training step -- ETD / TinyBERT step 1 (teacher forward + student 3x192
forward, attention and hidden losses from Q/K, backward, AdamW), step 2 (student 3x192 against
cached teacher logits) and Tang's BiLSTM (cached teacher logits, MSE, AdaDelta) -- the same
epoch permutation of a task's training sentences is cut into batches both ways, and the two
lists are stepped through interleaved (random batch i, grouped batch i, alternating which goes
first) in one process, on one Distiller per order. Reported: the epoch's total step time each
way, median and p90 of the step times, and the mean padded length of a batch. Cached teacher
logits are random (a step's time does not depend on their values); the teacher is the offline
all-MiniLM-L6-v2.

    python benchmarks/group_by_length.py --task movie-fine@3000 --name group-by-length-cpu-avx2
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

RECIPES = ("etd-step1", "etd-step2", "tang")
STUDENT = dict(num_layers=3, hidden_size=192, num_heads=12, intermediate_size=768)


def distiller(recipe, teacher, tokenizer, task, examples, student=STUDENT, optimizer=None):
    """A Distiller for one recipe's step (``optimizer``: default adadelta for Tang, as measured
    here, adamw for ETD)."""
    from kdfast.distill.objectives import LogitLoss, TinyBERTLoss
    from kdfast.distill.tang import build_student
    from kdfast.distill.tinybert import teacher_taps, transformer_student
    from kdfast.distill.trainer import Distiller

    opts = dict(batch_size=32, progress=False, amp="off", max_steps=10 ** 6, report_to="none")
    if recipe == "tang":
        st = build_student("tang", teacher, tokenizer, task.num_labels)
        return Distiller(None, st, LogitLoss("mse"), train_data=examples,
                         optimizer=optimizer or "adadelta", **opts)
    cfg = teacher.encoder.config
    st = transformer_student(student, cfg, task.num_labels)
    stage = "intermediate" if recipe == "etd-step1" else "prediction"
    st.capture = stage == "intermediate"
    loss = TinyBERTLoss(st, cfg, stage=stage, mode="masked")
    return Distiller(teacher_taps(teacher), st, loss, train_data=examples,
                     optimizer=optimizer or "adamw", lr=1e-4, **opts)


def task_examples(spec):
    """(task, teacher, tokenizer, training examples with random cached "teacher logits" for
    step 2 and Tang: a step's time does not depend on their values)."""
    from kdfast.distill import plumbing

    task = plumbing.as_task(spec)
    teacher, tokenizer, _ = plumbing.load_teacher_and_tokenizer(
        "minilm-l6", num_labels=task.num_labels)
    examples = plumbing.encode_split(tokenizer, task.train, 64)
    g = torch.Generator().manual_seed(0)
    for e in examples:
        e["t_logits"] = torch.randn(task.num_labels, generator=g).tolist()
    return task, teacher, tokenizer, examples


def epoch_batches(examples, batch_size, seed=0):
    """(random, grouped): the batches of one epoch both ways, as the Distiller draws them."""
    from kdfast.data.tokenize import example_length, length_grouped

    g = torch.Generator().manual_seed(seed * 1000003)
    perm = torch.randperm(len(examples), generator=g).tolist()
    grouped = length_grouped(perm, [example_length(e) for e in examples], batch_size, g)
    cut = lambda order: [order[i:i + batch_size] for i in range(0, len(order), batch_size)]  # noqa: E731
    return cut(perm), cut(grouped)


def measure(recipe, teacher, tokenizer, task, examples):
    from kdfast.bench.harness import median_p90
    from kdfast.data.tokenize import collate

    random_b, grouped_b = epoch_batches(examples, 32)
    runs = {"random": (distiller(recipe, teacher, tokenizer, task, examples), random_b),
            "grouped": (distiller(recipe, teacher, tokenizer, task, examples), grouped_b)}
    for d, batches in runs.values():  # warm-up
        d.step(collate([examples[i] for i in batches[0]]))
    times = {k: [] for k in runs}
    for i in range(len(random_b)):
        for name in (("random", "grouped") if i % 2 == 0 else ("grouped", "random")):
            d, batches = runs[name]
            batch = collate([examples[j] for j in batches[i]])
            t0 = time.perf_counter()
            d.step(batch)
            times[name].append(time.perf_counter() - t0)
    out = {"recipe": recipe, "batches": len(random_b)}
    for name, (_, batches) in runs.items():
        med, p90 = median_p90(times[name])
        pad = sum(max(len(examples[j]["t_ids"]) for j in b) for b in batches) / len(batches)
        out[name] = {"epoch_s": sum(times[name]), "median_s": med, "p90_s": p90,
                     "padded_len": pad}
    out["speedup"] = out["random"]["epoch_s"] / out["grouped"]["epoch_s"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="movie-fine@3000")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--name", default="group-by-length-cpu")
    args = p.parse_args()

    from kdfast.bench.harness import write_report

    task, teacher, tokenizer, examples = task_examples(args.task)
    real = sum(len(e["t_ids"]) for e in examples) / len(examples)
    rows = []
    for recipe in args.recipes:
        rows.append(measure(recipe, teacher, tokenizer, task, examples))
        print(json.dumps(rows[-1]), flush=True)
    cells = [[r["recipe"], str(r["batches"]),
              f"{r['random']['padded_len']:.1f} / {r['grouped']['padded_len']:.1f}",
              f"{r['random']['epoch_s']:.1f}", f"{r['grouped']['epoch_s']:.1f}",
              f"{r['speedup']:.2f}x",
              f"{r['random']['median_s']:.3f} / {r['grouped']['median_s']:.3f}",
              f"{r['random']['p90_s']:.3f} / {r['grouped']['p90_s']:.3f}"] for r in rows]
    write_report(
        args.results, args.name,
        title="One epoch of training steps: length-grouped vs random batches (CPU)",
        about=f"Written by `benchmarks/group_by_length.py` (its docstring says what is timed). "
              f"Task {args.task}: {len(examples)} training sentences, {real:.1f} teacher tokens "
              "on average; batch 32; one epoch each way, steps interleaved in one process.",
        columns=["step", "batches", "padded tokens random / grouped", "epoch s random",
                 "epoch s grouped", "speed-up", "median s random / grouped",
                 "p90 s random / grouped"],
        align="lrrrrrrr", cells=cells,
        data={"task": args.task, "examples": len(examples), "mean_tokens": real, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
