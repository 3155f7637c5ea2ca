"""The recipes with their defaults on several real tasks (issue 16): one command line each.

For each task: the teacher is all-MiniLM-L6-v2 fine-tuned by ``kdfast finetune`` (its defaults;
its time is not counted), then every recipe runs through the command line with only
``--teacher``, ``--task``, ``--out``, ``--seed`` and the student's size given, timed as a whole
command (wall clock, including augmentation, teacher labelling and evaluation). Each finished
run is appended to ``NAME.json`` at once, so the script can be stopped and rerun: rows already
there are skipped. ``NAME.md`` is rewritten from the JSON after every run.

    python benchmarks/recipes_tasks.py --tasks movie-sentences movie-fine snli@8000 \\
        movie-fine@3000 --recipes etd-192 tang tang-hard --seeds 0 1 --out runs/recipes-tasks
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZE_192 = ["--num-layers", "3", "--hidden-size", "192", "--intermediate-size", "768"]
SIZE_384 = ["--num-layers", "3"]  # the teacher's width, heads and FFN
# recipe -> (what it is, baseline it is compared with, command after `kdfast`)
RECIPES = {
    "tang": ("Tang BiLSTM (logit MSE, augmented transfer set)", "tang-hard",
             ["distill", "tang"]),
    "tang-hard": ("the same BiLSTM on hard labels", None,
                  ["distill", "tang", "--loss", "ce", "--no-augment"]),
    "etd-192": ("ETD-Impt 3x192", "tinybert-192", ["distill", "etd"] + SIZE_192),
    "etd-384": ("ETD-Impt 3x384", "tinybert-384", ["distill", "etd"] + SIZE_384),
    "tinybert-192": ("TinyBERT task distillation, random init 3x192", None,
                     ["distill", "etd", "--strategy", "none"] + SIZE_192),
    "tinybert-384": ("TinyBERT task distillation, random init 3x384", None,
                     ["distill", "etd", "--strategy", "none"] + SIZE_384),
    "sra": ("SRA (stage 1 on the task's sentences, then hard labels)", "sra-base",
            ["distill", "sra"]),
    "sra-base": ("the same max-pool BiLSTM from its default init, hard labels", None,
                 ["distill", "tang", "--loss", "ce", "--no-augment", "--pooling", "max"]),
}


def test_metric(res: dict):
    """The test metric of a results.json (recipes nest it differently)."""
    for r in (res, res.get("results", {})):
        t = r.get("test")
        if isinstance(t, dict):
            return next(iter(t.values()))
    raise KeyError("no test metric in results.json")


def commit() -> str:
    """The checkout's commit a row was measured at (``+``: the library has uncommitted changes)."""
    git = ["git", "-C", str(Path(__file__).parent)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    library = ["--", "../kdfast", "../csrc", "../setup.py"]  # paths from benchmarks/
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", *library],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+" if dirty else "")


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): {shlex.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def teacher(task: str, out: Path) -> tuple[Path, dict]:
    d = out / f"teacher-{task.replace('@', '-')}"
    if not (d / "results.json").is_file():
        run(["kdfast", "finetune", "--teacher", "minilm-l6", "--task", task, "--out", str(d),
             "--overwrite", "--no-progress"], out / f"teacher-{task.replace('@', '-')}.log")
    return d / "teacher", json.loads((d / "results.json").read_text())


def table(rows: list[dict], machine: str, superseded: list[dict] = (), notes=(),
          name: str = "recipes-tasks") -> str:
    lines = ["# The recipes' defaults on real tasks (CPU)", "",
             f"Machine (of the latest row; each command below says when and on which CPU "
             f"ISA it ran, where recorded): {machine}. Written by `benchmarks/recipes_tasks.py` (rerun it to "
             f"reproduce; the exact commands are in `{name}.json` and below).", "",
             "Teacher: all-MiniLM-L6-v2 fine-tuned on each task by `kdfast finetune --teacher "
             "minilm-l6 --task TASK` (not counted in the wall times). Student rows: test "
             "accuracy of the student the recipe returns, per seed; wall time of the whole "
             "command on 2 cores.", "",
             "| task | recipe | seeds | test (per seed) | mean | % of teacher | baseline mean "
             "| vs baseline | wall s (per seed) |", "|---|---|---|---|---:|---:|---:|---:|---|"]
    by = {}
    for r in rows:
        if not r.get("extra"):  # exploration rows (--extra) stay out of the defaults' table
            by.setdefault((r["task"], r["recipe"]), []).append(r)
    teachers = {}  # a task's teacher can be fine-tuned again (another machine): each row
    for r in rows:  # is compared with the teacher it was distilled from
        teachers.setdefault(r["task"], set()).add(round(100 * r["teacher_test"], 2))
    for (task, recipe), rs in sorted(by.items()):
        rs.sort(key=lambda r: r["seed"])
        mean = statistics.mean(r["test"] for r in rs)
        of_teacher = statistics.mean(r["test"] / r["teacher_test"] for r in rs)
        base = RECIPES[recipe][1]
        bmean = statistics.mean(r["test"] for r in by[(task, base)]) if (task, base) in by \
            else None
        tests = " / ".join(f"{100 * r['test']:.2f}" for r in rs)
        walls = " / ".join(f"{r['wall_s']:.0f}" for r in rs)
        vs = "| |" if bmean is None else \
            f"| {100 * bmean:.2f} ({base}) | {100 * (mean - bmean):+.2f} |"
        lines.append(f"| {task} | {recipe} | {','.join(str(r['seed']) for r in rs)} | {tests} | "
                     f"{100 * mean:.2f} | {100 * of_teacher:.1f} {vs} {walls} |")
    lines += ["", "Teachers (test): " + ", ".join(f"{t} {' / '.join(f'{x:.2f}' for x in sorted(v))}"
                                                   for t, v in sorted(teachers.items()))
              + " (more than one value: the teacher was fine-tuned again; % of teacher is per row, "
              "against the row's own teacher, then averaged).", "",
              *(["## Notes", "", *(f"- {n}" for n in notes), ""] if notes else []),
              "## Commands", ""]
    for r in rows:
        if not r.get("extra"):
            at = r.get("commit", "990c837-99f634a: before rows recorded their commit")
            when = f", {r['measured']}" if "measured" in r else ""
            lines.append(f"- `{r['command']}` (at {at}{when})")
    if superseded:
        lines += ["", "## Superseded rows", "",
                  "Measured with earlier defaults and measured again since (same command):", ""]
        for r in superseded:
            lines.append(f"- {r['task']} {r['recipe']} seed {r['seed']}: test "
                         f"{100 * r['test']:.2f}, {r['wall_s']:.0f} s (at "
                         f"{r.get('commit', '990c837-99f634a')})")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["movie-sentences", "movie-fine", "snli@8000",
                                                  "movie-fine@3000"])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="runs/recipes-tasks")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--name", default="recipes-tasks")
    p.add_argument("--extra", default="", help="extra flags for every recipe (exploration)")
    p.add_argument("--rerun", action="store_true",
                   help="measure the selected rows again (after a change of defaults); the old "
                        "ones are kept in the JSON under 'superseded'")
    args = p.parse_args()

    from kdfast.bench.harness import machine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(args.results) / f"{args.name}.json"
    saved = json.loads(store.read_text()) if store.is_file() else {}
    rows, superseded = saved.get("rows", []), saved.get("superseded", [])
    notes = saved.get("notes", [])  # written by hand into the JSON: what the rows cannot say
    m = machine()
    desc = ", ".join(f"{k}={v}" for k, v in m.items())
    for seed in args.seeds:
        for task in args.tasks:
            t_dir, t_res = teacher(task, out)
            for recipe in args.recipes:
                key = (task, recipe, seed, args.extra)
                old = [r for r in rows
                       if (r["task"], r["recipe"], r["seed"], r.get("extra", "")) == key]
                if old and not args.rerun:
                    continue
                tag = "-x" + "".join(c if c.isalnum() else "_" for c in args.extra) \
                    if args.extra else ""
                run_dir = out / f"{task.replace('@', '-')}-{recipe}-s{seed}{tag}"
                cmd = ["kdfast", *RECIPES[recipe][2], "--teacher", str(t_dir), "--task", task,
                       "--out", str(run_dir), "--seed", str(seed), "--overwrite",
                       "--no-progress", *shlex.split(args.extra)]
                wall = run(cmd, run_dir.with_suffix(".log"))
                res = json.loads((run_dir / "results.json").read_text())
                superseded += old
                rows = [r for r in rows if r not in old]
                rows.append({"task": task, "recipe": recipe, "seed": seed, "extra": args.extra,
                             "test": test_metric(res), "teacher_test": test_metric(t_res),
                             "wall_s": wall, "command": shlex.join(cmd), "commit": commit(),
                             "measured": f"{m['date']}, {m['cpu_isa']}"})
                print(f"{task} {recipe} seed {seed}: test {100 * rows[-1]['test']:.2f} "
                      f"(teacher {100 * rows[-1]['teacher_test']:.2f}), {wall:.0f} s",
                      flush=True)
                store.write_text(json.dumps({"machine": m, "rows": rows, "superseded": superseded,
                                             "notes": notes}, indent=1))
                store.with_suffix(".md").write_text(table(rows, desc, superseded, notes, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
