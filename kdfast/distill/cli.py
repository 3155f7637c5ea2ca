"""``kdfast finetune`` and ``kdfast distill {tang,sra}``: :func:`add_parsers` adds them to the
``kdfast`` command line.

Every option can also come from ``--config FILE`` (YAML or JSON, keys = option names with
``_`` or ``-``); an option given on the command line wins over the file, the file over the
built-in default. An existing, non-empty ``--out`` is refused unless ``--overwrite`` (start
again) or ``--resume`` (continue from the last checkpoint) is given. Multi-process training:
``torchrun --nproc_per_node N -m kdfast.cli distill ...`` (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdfast.distill.trainer import OPTIMIZERS, SCHEDULERS, TrainConfig

# option -> (built-in default, type, help); None default = the recipe's own default
TRAIN_OPTS = {
    "epochs": (None, float, "training epochs (recipe default)"),
    "max_steps": (None, int, "stop after this many steps (overrides --epochs)"),
    "batch_size": (None, int, "global batch size (split across torchrun processes)"),
    "optimizer": (None, str, f"one of {OPTIMIZERS} (recipe default)"),
    "lr": (None, float, "learning rate (recipe default)"),
    "weight_decay": (None, float, "weight decay"),
    "scheduler": (None, str, f"one of {SCHEDULERS}"),
    "warmup": (None, float, "warm-up fraction of the steps"),
    "grad_clip": (None, float, "clip the gradient norm"),
    "eval_every": (None, int, "evaluate on dev every N steps (default: each epoch)"),
    "patience": (None, int, "early stopping: evaluations without improvement"),
    "checkpoint_every": (None, int, "checkpoint every N steps (always at epoch ends)"),
    "seed": (0, int, "random seed (data order, init, augmentation)"),
    "amp": (None, str, "auto (bf16 on GPU) | bf16 | off"),
    "device": (None, str, "cpu | cuda (default: cuda if available)"),
}
TASK_OPTS = {
    "task": (None, str, "movie-sentences | snli | csv:PATH | tsv:PATH | jsonl:PATH | hub name "
                        "(e.g. glue/sst2)"),
    "text_column": (None, str, "text column of a local file"),
    "text_b_column": (None, str, "second text column (sentence pairs)"),
    "label_column": (None, str, "label column of a local file"),
    "num_labels": (None, int, "number of classes (checked against the labels)"),
    "metric": (None, str, "accuracy | f1 | mcc | pearson (task default)"),
    "max_len": (64, int, "maximum tokens per sentence"),
}
DISTILL_OPTS = {
    "loss": ("mse", str, "tang: mse | kl | soft_ce (distillation) or ce (hard labels only)"),
    "alpha": (0.0, float, "weight of the hard-label CE term (1 - alpha on the soft term)"),
    "temperature": (1.0, float, "temperature of the kl / soft_ce term"),
    "augment": (True, bool, "build the transfer set with Tang's augmentation"),
    "n_iter": (None, int, "augmented samples per example (20 single, 10 pairs)"),
    "p_mask": (0.1, float, "augmentation: masking probability"),
    "p_pos": (0.1, float, "augmentation: POS-guided replacement probability"),
    "p_ng": (0.25, float, "augmentation: n-gram sampling probability"),
    "transfer_cache": (None, str, "where to cache the transfer set (default OUT/transfer.pt)"),
    "embeddings": ("teacher", str, "teacher (the teacher's input embeddings) | random | a "
                                   "word2vec/GloVe file"),
    "embedding_mode": ("non-static", str, "random | static | non-static | multichannel"),
    "hidden_size": (None, int, "BiLSTM hidden size (150 single, 300 pairs)"),
    "fc_size": (None, int, "ReLU layer size (200 single, 400 pairs)"),
    "pooling": (None, str, "last | max | mean (tang: last, sra: max)"),
    "num_layers": (1, int, "BiLSTM layers"),
    "dropout": (0.1, float, "dropout before the output layer"),
    # sra only
    "sra_teacher": (None, str, "sra: the encoder whose sentence vectors stage 1 imitates "
                               "(default: --teacher)"),
    "unlabelled": (None, str, "sra: comma-separated sources of unlabelled sentences (task names "
                              "or text:PATH); default: the task's training sentences"),
    "vector": ("mean", str, "sra: teacher sentence vector: mean | cls | pooler"),
    "stage1_loss": ("mse", str, "sra: mse | cosine"),
    "stage1_epochs": (5.0, float, "sra: stage 1 epochs"),
    "stage2": ("hard", str, "sra: hard (labels) | tang (distillation) in stage 2"),
}
COMMON = {
    "teacher": (None, str, "teacher: minilm-l6, a directory or a HuggingFace name"),
    "out": (None, str, "output directory"),
}
FLAGS = {"overwrite": "replace an existing output directory",
         "resume": "continue from OUT/checkpoint/last.pt",
         "no_progress": "no progress bar"}


def _add(p, opts):
    for name, (default, typ, help_) in opts.items():
        flag = "--" + name.replace("_", "-")
        shown = "" if default is None else f" [default: {default}]"
        if typ is bool:
            p.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                           help=help_ + shown)
        else:
            p.add_argument(flag, dest=name, default=None, type=typ, help=help_ + shown)


def _common(p, extra):
    p.add_argument("--config", default=None, help="YAML or JSON file with any of the options")
    _add(p, COMMON)
    _add(p, TASK_OPTS)
    _add(p, extra)
    _add(p, TRAIN_OPTS)
    for name, help_ in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", default=None,
                       help=help_)


def load_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"kdfast: config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        cfg = yaml.safe_load(text) or {}
    else:
        cfg = json.loads(text)
    if not isinstance(cfg, dict):
        raise SystemExit(f"kdfast: config file {path} must hold a mapping of options")
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def resolve(args, option_sets) -> dict:
    """Built-in defaults < --config file < command line."""
    table = {}
    for opts in option_sets:
        table.update({k: v[0] for k, v in opts.items()})
    table.update({k: None for k in FLAGS})
    cfg = load_config(args.config) if getattr(args, "config", None) else {}
    unknown = sorted(set(cfg) - set(table) - {"recipe"})
    if unknown:
        raise SystemExit(f"kdfast: unknown option(s) in {args.config}: {unknown}")
    out = {}
    for k, default in table.items():
        cli = getattr(args, k, None)
        out[k] = cli if cli is not None else cfg.get(k, default)
    for k in ("task", "out"):
        if not out.get(k):
            raise SystemExit(f"kdfast: --{k} is required (on the command line or in --config)")
    return out


def _train_kwargs(o):
    keys = set(TRAIN_OPTS) & {f.name for f in __import__("dataclasses").fields(TrainConfig)}
    kw = {k: o[k] for k in keys if o.get(k) is not None}
    kw["progress"] = not o.get("no_progress")
    return kw


def _task_of(o):
    from kdfast.data.tasks import load_task

    return load_task(o["task"], seed=o["seed"], text_column=o["text_column"],
                     text_b_column=o["text_b_column"], label_column=o["label_column"],
                     num_labels=o["num_labels"], metric=o["metric"])


def _summary(res):
    test = res.get("test") or {}
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))


def cmd_finetune(args) -> int:
    from kdfast.distill.recipes import finetune

    o = resolve(args, (COMMON, TASK_OPTS, TRAIN_OPTS))
    task = _task_of(o)
    _, res = finetune(o["teacher"] or "minilm-l6", task, o["out"], max_len=o["max_len"],
                      overwrite=bool(o["overwrite"]), resume=bool(o["resume"]), **_train_kwargs(o))
    _summary(res)
    print(f"fine-tuned teacher: {Path(o['out']) / 'teacher'}")
    return 0


def cmd_distill(args) -> int:
    from kdfast.distill import recipes

    o = resolve(args, (COMMON, TASK_OPTS, DISTILL_OPTS, TRAIN_OPTS))
    if not o["teacher"]:
        raise SystemExit("kdfast: --teacher is required (a directory written by kdfast finetune)")
    task = _task_of(o)
    student = dict(embeddings=o["embeddings"], embedding_mode=o["embedding_mode"],
                   hidden_size=o["hidden_size"], fc_size=o["fc_size"], pooling=o["pooling"],
                   num_layers=o["num_layers"], dropout=o["dropout"], max_len=o["max_len"],
                   overwrite=bool(o["overwrite"]), resume=bool(o["resume"]),
                   transfer_cache=o["transfer_cache"])
    train = _train_kwargs(o)
    seed = train.pop("seed", 0)
    if args.recipe == "tang":
        _, res = recipes.tang(o["teacher"], task, o["out"], loss=o["loss"], augment=o["augment"],
                              n_iter=o["n_iter"], p_mask=o["p_mask"], p_pos=o["p_pos"],
                              p_ng=o["p_ng"], alpha=o["alpha"], temperature=o["temperature"],
                              seed=seed, **student, **train)
    else:
        unl = o["unlabelled"].split(",") if isinstance(o["unlabelled"], str) else o["unlabelled"]
        if student["pooling"] is None:
            student["pooling"] = "max"
        stage2 = {"alpha": o["alpha"], "temperature": o["temperature"]}
        if o["stage2"] == "tang":
            stage2["loss"] = o["loss"]
        _, res = recipes.sra(o["teacher"], task, o["out"], sra_teacher=o["sra_teacher"],
                             unlabelled=unl, vector=o["vector"], stage1_loss=o["stage1_loss"],
                             stage1={"epochs": o["stage1_epochs"], "progress": train["progress"]},
                             stage2=o["stage2"], seed=seed, **student, **stage2, **train)
    _summary(res)
    print(f"student: {Path(o['out']) / ('stage2' if args.recipe == 'sra' else '') / 'student'}"
          .replace("//", "/"))
    return 0


def add_parsers(subparsers) -> None:
    """Add ``finetune`` and ``distill`` to the ``kdfast`` subcommands."""
    p = subparsers.add_parser(
        "finetune", help="fine-tune a teacher (encoder + new task head) on a task",
        description="Fine-tune a teacher encoder with a new classification head. " + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, {})
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser(
        "distill", help="distil a fine-tuned teacher into a student (recipes: tang, sra)",
        description="Run a distillation recipe: tang (Tang et al. 2019, BiLSTM on an augmented "
                    "transfer set) or sra (Wu et al. 2020, sentence-representation approximation "
                    "then fine-tuning). " + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", choices=("tang", "sra"), help="which recipe")
    _common(p, DISTILL_OPTS)
    p.set_defaults(func=cmd_distill)
