"""SRA (Wu et al. 2020) on the real offline data, over several fine-tuning seeds.

Stage 1 once: a max-pooling BiLSTM encoder learns the *pre-trained* all-MiniLM-L6-v2's mean
sentence vector on unlabelled text (the task's training sentences plus a seeded sample of SNLI
training sentences; no dev/test text). Stage 2 for each seed: that encoder + a fresh (siamese,
for a pair task) classifier fine-tuned on the hard labels, against the same classifier from its
default init, with identical options and seeds. Writes benchmarks/results/NAME.{md,json}.

    python benchmarks/sra_seeds.py [--seeds 0 1 2] [--snli 30000] [--out runs/sra-seeds]
    python benchmarks/sra_seeds.py --task snli --train-size 20000 --snli 50000 --name sra-seeds-snli
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="movie-sentences", help="movie-sentences or snli")
    p.add_argument("--train-size", type=int, default=None,
                   help="labelled training examples for stage 2 (a seeded sample; default all)")
    p.add_argument("--hidden", type=int, default=150, help="BiLSTM hidden size (both sides)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--snli", type=int, default=30000, help="SNLI sentences added to stage 1")
    p.add_argument("--stage1-epochs", type=float, default=3.0)
    p.add_argument("--stage1-loss", choices=("mse", "cosine"), default="mse")
    p.add_argument("--epochs", type=float, default=8.0, help="stage-2 max epochs (early stop)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/sra-seeds")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--name", default="sra-seeds", help="results file name")
    args = p.parse_args()

    from kdfast.bench.harness import machine
    from kdfast.data.tasks import load_task, unlabelled_sentences
    from kdfast.data.tokenize import load_tokenizer
    from kdfast.distill import sra, tang
    from kdfast.models.teachers import resolve_teacher_path
    from kdfast.nn.students import load_student

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    task = load_task(args.task, seed=0)
    if args.train_size is not None and args.train_size < len(task.train):
        keep = random.Random(0).sample(range(len(task.train)), args.train_size)
        task.train = task.train.subset(sorted(keep))
    base = resolve_teacher_path("minilm-l6")
    tokenizer = load_tokenizer(base)
    # Both sides use the same students: the pre-trained teacher's vocabulary and frozen
    # input embeddings (the demo's "static" mode), max pooling, Adam 1e-3, early stopping.
    common = dict(tokenizer=tokenizer, overwrite=True, device="cpu", embedding_mode="static",
                  optimizer="adam", lr=1e-3, epochs=args.epochs, patience=2, progress=False,
                  lstm_hidden_size=args.hidden)
    fc_size = 400 if task.is_pair else 200
    # Stage 1 reads the labelled training sentences (without labels) and SNLI sentences.
    unlabelled = list(dict.fromkeys(task.train.texts + (task.train.texts_b or [])))
    if args.snli:
        unlabelled = list(dict.fromkeys(
            unlabelled + unlabelled_sentences(["snli"], limit=args.snli, seed=0)))
    t0 = time.perf_counter()
    # the first seed runs stage 1 (saved under sra-0) and its own stage 2
    _, r0 = sra(base, task, out / "sra-0", unlabelled=unlabelled, vector="mean", stage2="hard",
                stage1_loss=args.stage1_loss,
                stage1={"epochs": args.stage1_epochs}, seed=args.seeds[0], teacher_bf16=True,
                **common)
    stage1_s = time.perf_counter() - t0
    encoder = load_student(out / "sra-0" / "stage1" / "encoder")
    runs = {"sra": {args.seeds[0]: r0["test"]["accuracy"]}, "default": {}}
    dev = {"sra": {args.seeds[0]: r0["dev"]["accuracy"]}, "default": {}}
    for seed in args.seeds:
        if seed != args.seeds[0]:
            torch.manual_seed(seed)
            clf = encoder.classifier(task.num_labels, fc_size=fc_size, dropout=0.1,
                                     pair=task.is_pair)
            _, r = tang(base, task, out / f"sra-{seed}", student=clf, loss="ce", seed=seed,
                        **common)
            runs["sra"][seed], dev["sra"][seed] = r["test"]["accuracy"], r["dev"]["accuracy"]
        _, r = tang(base, task, out / f"default-{seed}", loss="ce", pooling="max", seed=seed,
                    fc_size=fc_size, **common)
        runs["default"][seed], dev["default"][seed] = r["test"]["accuracy"], r["dev"]["accuracy"]
        print(f"seed {seed}: SRA {100 * runs['sra'][seed]:.2f}, "
              f"default init {100 * runs['default'][seed]:.2f}", flush=True)
    total = time.perf_counter() - t0

    def stats(d):
        v = [100 * x for x in d.values()]
        return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

    wins = sum(runs["sra"][s] > runs["default"][s] for s in args.seeds)
    lines = [f"# SRA over fine-tuning seeds ({args.task}, CPU, real offline data)", "",
             "Machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()), "",
             f"Command: `python benchmarks/sra_seeds.py --task {args.task} --train-size "
             f"{args.train_size} --hidden {args.hidden} --seeds "
             f"{' '.join(map(str, args.seeds))} --snli {args.snli} --stage1-epochs "
             f"{args.stage1_epochs} --stage1-loss {args.stage1_loss} --name {args.name}`", "",
             f"Stage 1: {len(unlabelled)} unlabelled sentences ({args.task} training sentences "
             f"+ a sample of {args.snli} SNLI training sentences, duplicates dropped), "
             f"pre-trained all-MiniLM-L6-v2 mean vector, {args.stage1_loss} loss, "
             f"{args.stage1_epochs} epochs ({stage1_s:.0f} s including seed "
             f"{args.seeds[0]}'s stage 2). Stage 2: {len(task.train)} labelled training "
             f"examples, hard labels, early stopping on dev ({len(task.dev)}); test accuracy "
             f"({len(task.test)}) of the best-dev checkpoint. BiLSTM hidden size {args.hidden}. "
             f"Total {total / 60:.1f} min.", "",
             "| seed | SRA-pretrained (test) | default init (test) | SRA (dev) | default (dev) |",
             "|---|---:|---:|---:|---:|"]
    for s in args.seeds:
        lines.append(f"| {s} | {100 * runs['sra'][s]:.2f} | {100 * runs['default'][s]:.2f} | "
                     f"{100 * dev['sra'][s]:.2f} | {100 * dev['default'][s]:.2f} |")
    (m1, s1), (m2, s2) = stats(runs["sra"]), stats(runs["default"])
    lines += ["", f"Mean test accuracy: SRA-pretrained {m1:.2f} ± {s1:.2f}, default init "
                  f"{m2:.2f} ± {s2:.2f} (sample std); SRA better on {wins} of "
                  f"{len(args.seeds)} seeds."]
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (res_dir / f"{args.name}.json").write_text(json.dumps(
        {"test": runs, "dev": dev, "unlabelled": len(unlabelled), "total_s": total,
         "machine": machine(), "args": vars(args)}, indent=1, default=str) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
