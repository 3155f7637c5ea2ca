"""One TinyBERT task-distillation step (step 1: attention + hidden losses), two ways (issue 13):

* ``qk``: both models keep their SDPA attention; each layer's Q and K are captured
  (:func:`kdfast.models.capture.capture_qkv`) and the attention loss is computed from them
  without an L x L map (:mod:`kdfast.losses.relation`) -- the recipes' default;
* ``scores``: both models run eager attention for the forward that records the raw score
  maps (:func:`kdfast.models.capture.capture_attention_scores`), and the fused map loss.

Teacher all-MiniLM-L6-v2 (offline, cached fetch), student 3 layers x 192, 12 heads, FFN 768
(TinyBERT's uniform layer map, fit_dense), batch 32 of movie sentences packed to about L
tokens (ragged rows), AdamW. The step = teacher forward (no grad) + student forward + loss +
backward + optimiser step. Times: median and p90 of interleaved steps in one process; peak
memory: growth of the peak RSS over a few steps in a fresh process per row.

    python benchmarks/tinybert_step.py --lengths 64 128 256 --steps 12
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

FORMS = ("qk", "scores")
STUDENT = dict(num_layers=3, hidden_size=192, num_heads=12, intermediate_size=768)


def setup(length: int, seed: int = 0):
    from kdfast.data.tasks import load_task
    from kdfast.distill.objectives import TinyBERTLoss
    from kdfast.distill.plumbing import load_teacher_and_tokenizer
    from kdfast.distill.tinybert import teacher_taps, transformer_student

    teacher, tok, _ = load_teacher_and_tokenizer("minilm-l6", num_labels=2)
    teacher.eval()
    texts = load_task("movie-sentences").train.texts
    rng = random.Random(seed)
    rows = []
    for _ in range(32):  # sentences joined up to a random share of L tokens: ragged rows
        goal, row = rng.randint(length // 3, length), ""
        while len(tok(row)["input_ids"]) < goal:
            row += " " + rng.choice(texts)
        rows.append(row)
    enc = tok(rows, padding=True, truncation=True, max_length=length, return_tensors="pt")
    batch = {"t_input_ids": enc["input_ids"], "t_attention_mask": enc["attention_mask"],
             "t_token_type_ids": torch.zeros_like(enc["input_ids"])}
    base = transformer_student(STUDENT, teacher.encoder.config, 2, seed=seed).train()
    runs = {}
    for form in FORMS:
        st = copy.deepcopy(base)
        loss = TinyBERTLoss(st, teacher.encoder.config, mode="masked", attention=form)
        runs[form] = (st, loss, torch.optim.AdamW(st.parameters(), lr=1e-4))
    return teacher_taps(teacher, "tinybert"), batch, runs


def step(taps, batch, run):
    st, loss_fn, opt = run
    with torch.no_grad():
        t_out = taps.taps(batch, loss_fn.needs)
    loss = loss_fn(st.forward_batch(batch), batch, t_out)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_growth(length: int, form: str, steps: int = 3) -> float:
    """MiB the peak RSS rises above the RSS between steps, over ``steps`` steps of one form
    (a fresh process, run with large buffers mmap'd so that a freed one leaves the RSS)."""
    taps, batch, runs = setup(length)
    step(taps, batch, runs[form])  # optimiser state allocated
    del runs[FORMS[1 - FORMS.index(form)]]
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the RSS now
    before = _status_kib("VmRSS")
    for _ in range(steps):
        step(taps, batch, runs[form])
    return (_status_kib("VmHWM") - before) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--steps", type=int, default=12, help="timed steps per form and length")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--name", default="tinybert-step-qk-cpu", help="stem of the .json / .md written")
    p.add_argument("--memory-child", nargs=2, metavar=("L", "FORM"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        print(json.dumps(peak_rss_growth(int(args.memory_child[0]), args.memory_child[1])))
        return 0

    from kdfast.bench.harness import median_p90, write_report

    rows = []
    for length in args.lengths:
        taps, batch, runs = setup(length)
        for form in FORMS:  # warm-up
            step(taps, batch, runs[form])
        times = {f: [] for f in FORMS}
        for i in range(args.steps):
            for form in (FORMS if i % 2 == 0 else FORMS[::-1]):  # interleaved, alternating
                t0 = time.perf_counter()
                step(taps, batch, runs[form])
                times[form].append(time.perf_counter() - t0)
        for form in FORMS:
            child = subprocess.run([sys.executable, __file__, "--memory-child", str(length), form],
                                   capture_output=True, text=True, check=True,
                                   env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
            median, p90 = median_p90(times[form])
            rows.append({"L": length, "L_real": int(batch["t_attention_mask"].shape[1]),
                         "form": form, "median_s": median, "p90_s": p90,
                         "peak_rss_growth_mib": json.loads(child.stdout.strip().splitlines()[-1]),
                         "steps": len(times[form])})
            print(rows[-1], flush=True)
    qk = {r["L"]: r["median_s"] for r in rows if r["form"] == "qk"}
    cells = [[str(r["L_real"]), r["form"], f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}",
              str(r["steps"]), f"{r['peak_rss_growth_mib']:.0f}",
              f"{r['median_s'] / qk[r['L']] if r['form'] == 'scores' else 1.0:.2f}x"]
             for r in rows]
    write_report(
        args.results, args.name,
        title="One TinyBERT task-distillation step: SDPA + Q/K losses vs eager + score maps (CPU)",
        about="Written by `benchmarks/tinybert_step.py` (its docstring says what a step is). "
              "Batch 32, student 3x192 (12 heads, FFN 768), teacher all-MiniLM-L6-v2, mode "
              "masked. Median / p90 over interleaved steps; peak = how far the RSS peaks above "
              "its level between steps, over 3 steps in a fresh process.",
        columns=["L (padded)", "form", "median s", "p90 s", "steps", "peak extra MiB",
                 "scores / qk (median)"],
        align="rlrrrrr", cells=cells, data={"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
