"""``kdfast demo``: kdfast's main job, on a CPU, with the offline teacher and data.

1. fine-tunes the teacher (all-MiniLM-L6-v2 + a new classification head; all 6 layers, two
   epochs) on ``movie-sentences``;
2. builds Tang et al.'s transfer set (the training sentences + augmented copies), labelled
   with the teacher's logits and cached on disk;
3. distils a Tang BiLSTM student on it (logit MSE with the hard labels mixed in, alpha 0.5);
4. trains the same BiLSTM on the hard labels alone;
5. (``--sra``) SRA: stage 1 on the training sentences with the *pre-trained* teacher's mean
   sentence vector, stage 2 on hard labels, against the same max-pooling BiLSTM from its
   default init;
6. (``--etd``, on by default) extracts a 3-layer BERT student from the fine-tuned teacher by
   importance (ETD-Impt) and distils it TinyBERT-style (intermediate layers, then prediction);

Every recipe runs with its own defaults (the ones ``kdfast distill`` uses), and prints one
table: held-out (test split) accuracy, parameters, and CPU inference speed
(sentences/s, measured here on the test split, batches of 32) against the teacher.

Word vectors: the students read the teacher's WordPiece vocabulary and their embeddings
start from the teacher's input embeddings (384-d). Intermediate results are cached in
``--out`` (default ``runs/demo``) so a second run is quick; ``--fresh`` recomputes all.
Run it as ``kdfast demo`` or ``python -m kdfast demo`` (``--help`` lists the options).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch


SETTINGS_FILE = "demo-settings.json"


def _work_dir(out: Path, fresh: bool, settings: dict) -> Path:
    """``--out``: kdfast's own work directory (its cache is reused unless ``fresh``, or unless
    it was computed with other ``settings``); an existing non-empty directory that kdfast did
    not write is refused and left alone."""
    from kdfast.distill import outputs

    outputs.check_output_dir(out, overwrite=True)  # refuses a non-kdfast directory
    cached = out / SETTINGS_FILE
    if not fresh and cached.is_file() and json.loads(cached.read_text()) != settings:
        print(f"kdfast demo: {out} was computed with other settings "
              f"({json.loads(cached.read_text())}): recomputing")
        fresh = True
    if fresh:
        outputs.prepare_output_dir(out, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / outputs.MARKER).exists():
        outputs.atomic_write_text(out / outputs.MARKER, "written by kdfast demo; --fresh may "
                                                        "clear this directory\n")
    outputs.atomic_write_json(cached, settings)
    return out


def _native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX). Without it torch emulates
    bf16, and the teacher's fine-tuning ran about 20x slower than in fp32 (11-14 s a step
    against 0.5-0.6 s on an AVX2-only EPYC)."""
    return any(getattr(torch.cpu, name, lambda: False)()
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def _measure(fn, examples):
    """(sentences per second of ``fn(batch)`` over ``examples``, accuracy of its argmax).
    Tokenisation is done beforehand, for both models alike."""
    from kdfast.distill.evaluate import timed_outputs

    out, speed = timed_outputs(fn, examples)
    correct = sum(int(p == ex["label"]) for p, ex in zip(out.argmax(-1).tolist(), examples))
    return speed, correct / len(examples)


def _params(model, embeddings=True):
    skip = set()
    if not embeddings:
        skip = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _cached(out_dir, fresh, run, student_dir="student"):
    """(model, results) from a finished earlier run in ``out_dir``, else from ``run()``."""
    from kdfast.nn.students import load_student

    res_file, model_dir = out_dir / "results.json", out_dir / student_dir
    if not fresh and res_file.is_file() and (model_dir / "config.json").is_file():
        print(f"      (cached in {out_dir})")
        return load_student(model_dir), json.loads(res_file.read_text())
    return run()


DEMO_TEACHER_LAYERS = 6  # all of all-MiniLM-L6-v2's layers; its input embeddings stay frozen


def run_demo(o: dict) -> int:
    """The demo with the options of ``kdfast demo`` (``o``: every option, None = default)."""
    from kdfast.data.tasks import load_task
    from kdfast.data.tokenize import encode, load_tokenizer
    from kdfast.distill import etd, finetune, sra, tang
    from kdfast.distill.outputs import atomic_write_json, atomic_write_text
    from kdfast.models.teachers import load_teacher, resolve_teacher_path

    t_start = time.perf_counter()
    fresh, quick = bool(o["fresh"]), bool(o["quick"])
    bf16 = _native_bf16() if o["amp"] in (None, "auto") else o["amp"] == "bf16"
    train_layers = DEMO_TEACHER_LAYERS if o["train_layers"] is None else o["train_layers"]
    if train_layers > DEMO_TEACHER_LAYERS:
        raise ValueError(f"--train-layers: the demo's teacher has {DEMO_TEACHER_LAYERS} layers, "
                         f"got {train_layers}")
    # what the cached steps depend on: a cache computed otherwise is recomputed
    settings = {"quick": quick, "train_layers": train_layers, "bf16": bf16,
                **{k: o[k] for k in ("teacher_epochs", "teacher_lr")}}
    out = _work_dir(Path(o["out"] or "runs/demo"), fresh, settings)
    if o["threads"]:
        torch.set_num_threads(o["threads"])
    print(f"kdfast demo: CPU, {torch.get_num_threads()} threads; work directory {out}")
    times = {}
    report = {"report_to": o["report_to"]} if o["report_to"] else {}

    task = load_task("movie-sentences", seed=0)
    if quick:
        import random

        task.train = task.train.subset(sorted(random.Random(0).sample(range(len(task.train)), 1500)))
    print(f"task movie-sentences: {len(task.train)} train / {len(task.dev)} dev / "
          f"{len(task.test)} test sentences (label: rating > 0)")
    base = resolve_teacher_path("minilm-l6")
    tokenizer = load_tokenizer(base)

    # 1. teacher
    t0 = time.perf_counter()
    t_dir = out / "teacher" / "teacher"
    if (t_dir / "kdfast_head.json").is_file() and not fresh:
        print(f"[1/4] teacher: using the fine-tuned teacher cached in {t_dir}")
        teacher = load_teacher(str(t_dir))
    else:
        print(f"[1/4] fine-tuning the teacher (top {train_layers} layers + head, "
              f"{o['teacher_epochs']} epoch(s), {'bf16' if bf16 else 'fp32'})")
        teacher, _ = finetune(base, task, out / "teacher", overwrite=True,
                              train_layers=train_layers, epochs=o["teacher_epochs"],
                              lr=o["teacher_lr"],
                              amp="bf16" if bf16 else "off", device="cpu", **report)
    times["teacher fine-tuning"] = time.perf_counter() - t0
    teacher.cpu().eval()
    test_ex = encode(tokenizer, task.test.texts, None, task.test.labels, max_len=64)

    # 2-3. transfer set + distilled student: every recipe with its defaults
    t0 = time.perf_counter()
    print("[2/4] transfer set and Tang distillation, the recipe's defaults")
    common = dict(tokenizer=tokenizer, overwrite=True, device="cpu", seed=0, **report)
    distilled, r_kd = _cached(out / "tang", fresh, lambda: tang(
        str(t_dir), task, out / "tang", transfer_cache=out / "transfer.pt", **common))
    ts = r_kd["transfer_set"]
    times["transfer set + distillation"] = time.perf_counter() - t0
    print(f"      transfer set: {ts['originals']} sentences + {ts['augmented']} augmented")

    # 4. hard labels
    t0 = time.perf_counter()
    print("[3/4] the same BiLSTM on hard labels only")
    hard, r_hard = _cached(out / "hard", fresh, lambda: tang(
        str(t_dir), task, out / "hard", loss="ce", augment=False, **common))
    times["hard-label student"] = time.perf_counter() - t0

    rows = []
    if o["sra"]:
        t0 = time.perf_counter()
        print("[SRA] stage 1 (pre-trained teacher's mean sentence vector) + stage 2 (hard labels)")
        s_model, r_sra = _cached(out / "sra", fresh, lambda: sra(
            base, task, out / "sra", **common), "stage2/student")
        m_rand, r_rand = _cached(out / "maxpool-hard", fresh, lambda: tang(
            str(t_dir), task, out / "maxpool-hard", loss="ce", augment=False, pooling="max",
            **common))
        times["SRA + baseline"] = time.perf_counter() - t0
        rows += [("BiLSTM max-pool, SRA-pretrained, hard labels", s_model, r_sra["test"]["accuracy"]),
                 ("BiLSTM max-pool, default init, hard labels", m_rand, r_rand["test"]["accuracy"])]

    if o["etd"]:
        t0 = time.perf_counter()
        print("[ETD] ETD-Impt student (3 layers, hidden 192, 12 heads, FFN 768) extracted from "
              "the fine-tuned teacher, TinyBERT task distillation (intermediate, then prediction)")
        e_model, r_etd = etd(str(t_dir), task, out / "etd", num_layers=3, hidden_size=192,
                             intermediate_size=768, **common)
        times["ETD student"] = time.perf_counter() - t0
        etd_row = ("BERT 3-layer, ETD-Impt + TinyBERT distillation", e_model,
                   r_etd["results"]["test"]["accuracy"])

    # table: accuracy, parameters, CPU inference speed
    print("[4/4] measuring CPU inference speed on the test split")
    student_ex = encode(tokenizer, task.test.texts, None, task.test.labels, max_len=64, teacher=False)
    t_speed, t_acc = _measure(teacher.forward_batch, test_ex)
    table = [("teacher: all-MiniLM-L6-v2 + head (fine-tuned)", teacher, t_acc, t_speed)]
    students = [("BiLSTM, distilled (Tang et al.)", distilled, r_kd["test"]["accuracy"]),
                ("BiLSTM, hard labels only", hard, r_hard["test"]["accuracy"])] + rows
    if o["etd"]:
        students.append(etd_row)
    for name, model, acc in students:
        model.cpu().eval()
        bert = name.startswith("BERT")  # transformer students read the teacher's tokens
        speed, acc2 = _measure(model.forward_batch, test_ex if bert else student_ex)
        assert abs(acc2 - acc) < 1e-6, (name, acc, acc2)  # the same model as the trainer's
        table.append((name, model, acc, speed))
    lines = ["| model | test accuracy | parameters | without embeddings | CPU sentences/s | speed-up |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, model, acc, speed in table:
        lines.append(f"| {name} | {100 * acc:.2f} | {_params(model) / 1e6:.2f}M | "
                     f"{_params(model, False) / 1e6:.2f}M | {speed:,.0f} | {speed / t_speed:.1f}x |")
    total = time.perf_counter() - t_start
    print()
    print("\n".join(lines))
    print(f"\n{len(task.test)} held-out sentences; speed: batches of 32, "
          f"{torch.get_num_threads()} CPU thread(s), float32. Total time {total / 60:.1f} min "
          + "(" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + ").")
    result = {"table": [{"model": n, "test_accuracy": a, "parameters": _params(m),
                         "parameters_without_embeddings": _params(m, False),
                         "cpu_sentences_per_s": s} for n, m, a, s in table],
              "threads": torch.get_num_threads(), "total_s": total, "times_s": times,
              "transfer_set": ts, "options": o,
              "train_sizes": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)}}
    atomic_write_json(out / "demo_results.json", result)
    curves = {"distilled": r_kd, "hard labels": r_hard}
    if o["sra"]:
        curves.update({"SRA stage 2": r_sra["stage2"], "max-pool default init": r_rand})
    _plot(out / "demo.png", curves, t_acc)
    atomic_write_text(out / "demo.md", "\n".join(lines) + "\n")
    return 0


def _plot(path, runs: dict, teacher_acc: float) -> None:
    """Training loss and dev accuracy of each student run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in runs.items():
        h = r.get("loss_history") or []
        a.plot([x[0] for x in h], [x[1] for x in h], label=name)
        ev = r.get("dev_evals") or []
        b.plot([x[0] for x in ev], [100 * x[1]["accuracy"] for x in ev], marker="o", label=name)
    b.axhline(100 * teacher_acc, color="gray", ls="--", label="teacher (test)")
    a.set(xlabel="step", ylabel="training loss (MSE or CE)", yscale="log", title="training loss")
    b.set(xlabel="step", ylabel="dev accuracy (%)", title="dev accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
