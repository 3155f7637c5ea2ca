"""The ``kdfast`` command line: one table of options, one table of commands.

    kdfast info | demo | finetune | distill {tang,sra,tinybert,etd} | extract | eval | bench

``kdfast tinybert`` and ``kdfast etd-distill`` are aliases of ``kdfast distill tinybert`` and
``kdfast distill etd``; ``python -m kdfast`` is the same program.

The same flag means the same thing in every command (``--task``, ``--max-len``,
``--num-layers/--hidden-size/--num-heads/--intermediate-size`` for a BERT student,
``--lstm-hidden-size`` for a BiLSTM). Every option of a command may also come from
``--config FILE`` (YAML or JSON; keys are option names with ``_`` or ``-``): the command line
wins over the file, the file over the built-in default; a key that the command has no option
for is an error. Values from the file go through the same checks as the command line, and a
list option (``--unlabelled``) is a comma-separated string on the command line and a string
or a list in the file.

Exit status: 0 on success; 2 for a user error (a bad option, a missing or unreadable file, an
output directory that would be overwritten), printed as one line
``kdfast <command>: error: ...``; 130 when interrupted. ``--debug`` (or ``KDFAST_DEBUG=1``)
shows the traceback instead. Every option is checked, and the output directory too, before
anything is computed or written.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_LEN = 64  # tokens per example unless --max-len says otherwise

# ------------------------------------------------------------------------- value checks
# Each turns one command-line string (or a config-file value) into a value, or raises
# argparse.ArgumentTypeError saying what was expected.


def _number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    what = "an integer" if kind is int else "a number"
    if lo is not None:
        what += f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        what += f" and {'<' if hi_open else '<='} {hi}"

    def convert(value):
        if isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        try:
            x = kind(value) if kind is float or isinstance(value, int) else int(str(value), 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if kind is float and not math.isfinite(x):  # NaN, inf and 1e400 alike
            raise argparse.ArgumentTypeError(f"expected a finite {what[2:]}, got {value!r}")
        if (lo is not None and (x < lo or (lo_open and x == lo))) or \
                (hi is not None and (x > hi or (hi_open and x == hi))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return x

    convert.__name__ = what  # argparse names the type in its own messages
    return convert


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)  # zero allowed
POSITIVE = _number(float, 0, lo_open=True)
NON_NEGATIVE = _number(float, 0)
FRACTION = _number(float, 0, 1)
FRACTION_BELOW_1 = _number(float, 0, 1, hi_open=True)  # a warm-up or dropout of 1 trains nothing
SEED = _number(int, 0)


def TEXT(value):  # noqa: N802 (a type, like int)
    if not isinstance(value, str) or not value.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty string, got {value!r}")
    return value


def LIST(value):  # noqa: N802
    """A list of strings: 'a,b' on the command line, 'a,b' or [a, b] in a config file."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {value!r}")
    return items


def DEVICE(value):  # noqa: N802
    import torch

    if value not in ("cpu", "cuda") and not str(value).startswith("cuda:"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {value!r}")
    if value != "cpu" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value!r} requested but this torch has no usable "
                                         f"CUDA device (torch {torch.__version__})")
    return value


BOOL = "bool"  # a --flag / --no-flag pair


@dataclass(frozen=True)
class Opt:
    default: object
    type: object
    help: str
    choices: tuple = ()


# ------------------------------------------------------------------------- the options
# One entry per option name, whatever command has it. Default None = the recipe's own.
OPTIONS = {
    # what to run on
    "teacher": Opt(None, TEXT, "teacher: minilm-l6 (offline all-MiniLM-L6-v2), a directory "
                               "(e.g. written by kdfast finetune) or a HuggingFace name"),
    "task": Opt(None, TEXT, "movie-sentences | movie-fine | snli | csv:PATH | tsv:PATH | "
                            "jsonl:PATH | a datasets hub name (e.g. glue/sst2); NAME@N keeps N "
                            "training examples"),
    "text_column": Opt(None, TEXT, "text column of a local file"),
    "text_b_column": Opt(None, TEXT, "second text column (sentence pairs)"),
    "label_column": Opt(None, TEXT, "label column of a local file"),
    "num_labels": Opt(None, POSITIVE_INT, "number of classes (checked against the labels)"),
    "metric": Opt(None, str, "task metric (task default)", ("accuracy", "f1", "mcc", "pearson")),
    "max_len": Opt(None, POSITIVE_INT, f"maximum tokens per example (BERT reads a pair's two "
                                       f"sentences within it) [{MAX_LEN}; tinybert's general "
                                       "stage: 128]"),
    "out": Opt(None, TEXT, "output directory"),
    "config": Opt(None, TEXT, "YAML or JSON file with any of this command's options"),
    # training
    "epochs": Opt(None, POSITIVE, "training epochs (recipe default)"),
    "max_steps": Opt(None, POSITIVE_INT, "stop after this many steps (overrides --epochs)"),
    "min_steps": Opt(None, POSITIVE_INT, "lengthen the schedule to at least N steps for small "
                                         "data (recipe default; early stopping may still end "
                                         "it sooner)"),
    "batch_size": Opt(None, POSITIVE_INT, "global batch size (split across torchrun processes)"),
    "group_by_length": Opt(True, BOOL, "training batches of similar length, in random order "
                                       "(about half the padding of random batches)"),
    "optimizer": Opt(None, str, "optimiser (recipe default)", ("adadelta", "adam", "adamw", "sgd")),
    "lr": Opt(None, POSITIVE, "learning rate (recipe default)"),
    "weight_decay": Opt(None, NON_NEGATIVE, "weight decay"),
    "scheduler": Opt(None, str, "learning-rate schedule", ("constant", "linear")),
    "warmup": Opt(None, FRACTION_BELOW_1, "warm-up fraction of the steps"),
    "grad_clip": Opt(None, POSITIVE, "clip the gradient norm"),
    "eval_every": Opt(None, POSITIVE_INT, "evaluate on dev every N steps (default: each epoch)"),
    "patience": Opt(None, COUNT, "early stopping: evaluations without improvement (0: never "
                                 "stop early) [tang and sra stage 2: 2; others: none]"),
    "checkpoint_every": Opt(None, POSITIVE_INT, "checkpoint every N steps (and at epoch ends)"),
    "seed": Opt(0, SEED, "random seed (data order, initialisation, augmentation; "
                         "never the task's splits)"),
    "amp": Opt(None, str, "mixed precision: auto = bf16 on a GPU (demo: and on a CPU that "
                          "computes bf16, AVX512-BF16 or AMX)", ("auto", "bf16", "off")),
    "device": Opt(None, DEVICE, "cpu | cuda (default: cuda when present)"),
    "report_to": Opt(None, str, "training scalars: tensorboard (in --out/tensorboard) | wandb | "
                                "none (default: tensorboard when installed)",
                     ("tensorboard", "wandb", "none")),
    "train_layers": Opt(None, COUNT, "fine-tune only the top N layers + head, embeddings frozen "
                                     "(default: all, embeddings too; demo: 6, the teacher's "
                                     "layers)"),
    # soft targets
    "loss": Opt(None, str, "the soft loss [mse], or ce = hard labels only (tang's baseline)",
                ("mse", "kl", "soft_ce", "ce")),
    "alpha": Opt(None, FRACTION, "weight of the hard-label CE term, 1 - alpha on the soft term "
                                 "[tang, sra --stage2 tang, tinybert and etd step 2: "
                                 "0.5, 0 for regression]"),
    "temperature": Opt(None, POSITIVE, "temperature of the kl / soft_ce term (default 1)"),
    # augmentation (Tang's rules, TinyBERT's word replacement)
    "augment": Opt(True, BOOL, "augment the transfer set (Tang's rules; TinyBERT's replacement)"),
    "n_aug": Opt(None, POSITIVE_INT, "augmented copies per training example (tang: about 15k "
                                     "examples in all, at most the paper's 20 single / 10 "
                                     "pairs; tinybert's N_a: 20; none: --no-augment)"),
    "p_mask": Opt(None, FRACTION, "tang augmentation: masking probability [0.1]"),
    "p_pos": Opt(None, FRACTION, "tang augmentation: POS-guided replacement probability [0.1]"),
    "p_ng": Opt(None, FRACTION, "tang augmentation: n-gram sampling probability [0.25]"),
    "p_t": Opt(None, FRACTION, "tinybert augmentation: replacement probability per word [0.4]"),
    "k": Opt(None, POSITIVE_INT, "tinybert augmentation: candidates per word [15]"),
    "glove": Opt(None, TEXT, "tinybert augmentation: GloVe file for the words the MLM does not "
                             "serve (every word without one)"),
    "mlm": Opt(None, TEXT, "tinybert augmentation: a BERT masked LM (directory or hub name) "
                           "for single-piece words [the teacher's checkpoint if it has an MLM "
                           "head, else the teacher's nearest input embeddings]"),
    "transfer_cache": Opt(None, TEXT, "where to cache the transfer set (default: in --out)"),
    # BiLSTM students (tang, sra)
    "embeddings": Opt("teacher", TEXT, "teacher (the teacher's input embeddings) | random | a "
                                       "word2vec/GloVe file"),
    "embedding_mode": Opt(None, str, "BiLSTM word vectors [non-static]",
                          ("random", "static", "non-static", "multichannel")),
    "lstm_hidden_size": Opt(None, POSITIVE_INT, "BiLSTM hidden size (150 single, 300 pairs)"),
    "fc_size": Opt(None, POSITIVE_INT, "ReLU layer size (200 single, 400 pairs)"),
    "pooling": Opt(None, str, "BiLSTM pooling (tang: last, sra: max)", ("last", "max", "mean")),
    "lstm_layers": Opt(None, POSITIVE_INT, "BiLSTM layers [1]"),
    "dropout": Opt(None, FRACTION_BELOW_1, "dropout before the output layer [0.1]"),
    # SRA
    "sra_teacher": Opt(None, TEXT, "sra: the encoder whose sentence vectors stage 1 imitates "
                                   "(default: --teacher)"),
    "unlabelled": Opt(None, LIST, "unlabelled sentence sources, comma-separated (task names, "
                                  "text files); default: the task's training sentences"),
    "vector": Opt(None, str, "sra: teacher sentence vector [mean]", ("mean", "cls", "pooler")),
    "stage1_loss": Opt(None, str, "sra: stage-1 loss [mse]", ("mse", "cosine")),
    "stage1_epochs": Opt(None, POSITIVE, "sra: stage-1 epochs [5]"),
    "stage2": Opt("hard", str, "sra stage 2: hard labels or tang distillation", ("hard", "tang")),
    # BERT students (tinybert, etd, extract)
    "num_layers": Opt(None, POSITIVE_INT, "BERT student layers (tinybert: 4, etd: 3; must "
                                          "divide the teacher's for tinybert)"),
    "hidden_size": Opt(None, POSITIVE_INT, "BERT student width (default: the teacher's)"),
    "num_heads": Opt(None, POSITIVE_INT, "BERT student heads (default: the teacher's)"),
    "intermediate_size": Opt(None, POSITIVE_INT, "BERT student FFN size (default: the teacher's)"),
    "mode": Opt(None, str, "masked (real tokens only; soft CE summed over classes) [default] | "
                           "exact (the official code's arithmetic)", ("exact", "masked")),
    "style": Opt("tinybert", str, "tinybert (attention + hidden MSE) | minilm (attention KL + "
                                  "value relation)", ("tinybert", "minilm")),
    "step1_epochs": Opt(None, POSITIVE, "step 1 (intermediate layers) epochs [4 epochs of the "
                                        "task's sentences, at least 600 steps; half for an "
                                        "etd student of the teacher's width]; given, they "
                                        "count over the augmented set (paper: 20)"),
    "step1_lr": Opt(None, POSITIVE, "step 1 learning rate [1e-4] (paper: 5e-5)"),
    "step2_epochs": Opt(None, POSITIVE, "step 2 (prediction layer) epochs [8 epochs of the "
                                        "task's sentences, at least 800 steps, on a "
                                        "teacher-labelled pool; half for an etd student of "
                                        "the teacher's width]; given, they count over the "
                                        "augmented set (paper: 3)"),
    "step2_lr": Opt(None, POSITIVE, "step 2 learning rate [3e-4 x 192 / student width, at "
                                    "most 3e-4] (paper: 3e-5)"),
    "stage": Opt("task", str, "general | task | all (general, then task)",
                 ("general", "task", "all")),
    "student": Opt(None, TEXT, "a student directory to start from (instead of the size options)"),
    "general_teacher": Opt(None, TEXT, "pre-trained (not fine-tuned) teacher for the general "
                                       "stage (default: --teacher)"),
    "strategy": Opt("impt", str, "impt (by importance) | rand (random units) | none (random "
                                 "init; etd only)", ("impt", "rand", "none")),
    "task_specific": Opt(True, BOOL, "etd: task-specific (else task-agnostic on --unlabelled)"),
    "importance_batches": Opt(None, POSITIVE_INT, "etd: batches for importance scoring [8]"),
    "num_sentences": Opt(1024, POSITIVE_INT, "extract: sentences scored for importance"),
    "layer_selection": Opt("uniform", str, "extract: which teacher layers",
                           ("uniform", "first", "last")),
    "backend": Opt("auto", str, "kernel backend", ("auto", "cpu", "cuda", "triton", "reference")),
    # demo
    "threads": Opt(None, POSITIVE_INT, "torch CPU threads (default: torch's choice)"),
    "teacher_epochs": Opt(2.0, POSITIVE, "demo: teacher fine-tuning epochs"),
    "teacher_lr": Opt(5e-5, POSITIVE, "demo: teacher fine-tuning learning rate"),
    "sra": Opt(False, BOOL, "demo: also run SRA (pre-trained vs default-init BiLSTM)"),
    "etd": Opt(True, BOOL, "demo: also distil an ETD-Impt 3-layer BERT student TinyBERT-style"),
    "fresh": Opt(False, BOOL, "demo: recompute everything (clears --out, which must be kdfast's)"),
    "quick": Opt(False, BOOL, "demo: a small smoke run (1,500 training sentences; numbers not "
                              "meaningful)"),
    # eval
    "model": Opt(None, TEXT, "a model directory saved by kdfast (teacher or student)"),
    "split": Opt("test", str, "which split to evaluate", ("train", "dev", "test")),
    # flags
    "overwrite": Opt(False, BOOL, "replace an existing kdfast output directory"),
    "resume": Opt(False, BOOL, "continue from the checkpoint in --out"),
    "progress": Opt(True, BOOL, "progress bars"),
}

TASK = ("task", "text_column", "text_b_column", "label_column", "num_labels", "metric", "max_len")
TRAIN = ("epochs", "max_steps", "min_steps", "batch_size", "group_by_length", "optimizer", "lr",
         "weight_decay", "scheduler", "warmup", "grad_clip", "eval_every", "patience",
         "checkpoint_every", "seed", "amp", "device", "report_to")
RUN = ("config", "out", "overwrite", "resume", "progress")
SOFT = ("alpha", "temperature")
TANG_AUG = ("augment", "n_aug", "p_mask", "p_pos", "p_ng", "transfer_cache")
BILSTM = ("embeddings", "embedding_mode", "lstm_hidden_size", "fc_size", "pooling", "lstm_layers",
          "dropout")
BERT_SIZE = ("num_layers", "hidden_size", "num_heads", "intermediate_size")
TRANSFORMER = ("mode", "style", "augment", "n_aug", "p_t", "k", "glove", "mlm", "step1_epochs",
               "step1_lr", "step2_epochs", "step2_lr", "alpha", "temperature", "unlabelled",
               "backend")
TINYBERT_AUG = ("n_aug", "p_t", "k", "glove", "mlm")
# TRANSFORMER's options that only task distillation uses (refused for a general stage)
TASK_ONLY = tuple(k for k in TRANSFORMER if k not in ("mode", "style", "augment", "unlabelled",
                                                      "backend"))
REQUIRED = {"teacher", "task", "out"}


# ------------------------------------------------------------------------- the commands
def cmd_info(o) -> int:
    import kdfast

    info = kdfast.info()
    if o["json"]:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key != "backends":
            print(f"{key:12s} {value}")
    print("backends:")
    for name, b in info["backends"].items():
        state = "present" if b["present"] else f"absent ({b['why_absent']})"
        print(f"  {name:10s} {state}")
    return 0


def _task(o):
    from kdfast.data.tasks import load_task

    return load_task(o["task"], text_column=o["text_column"],
                     text_b_column=o["text_b_column"], label_column=o["label_column"],
                     num_labels=o["num_labels"], metric=o["metric"])


def _given(o, names, rename=None):
    """The options among ``names`` that were given (not None), renamed for the library."""
    rename = rename or {}
    return {rename.get(k, k): o[k] for k in names if o.get(k) is not None}


def _train(o):
    return {**_given(o, TRAIN), "progress": o["progress"]}


def _max_len(o):
    return o["max_len"] or MAX_LEN


def _run(o):
    return dict(overwrite=o["overwrite"], resume=o["resume"])


def _summary(res, where):
    test = (res or {}).get("test") or {}
    if test:
        print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    print(where)


def cmd_finetune(o) -> int:
    from kdfast.distill import finetune

    _, res = finetune(o["teacher"] or "minilm-l6", _task(o), o["out"], max_len=_max_len(o),
                      train_layers=o["train_layers"], **_run(o), **_train(o))
    _summary(res, f"fine-tuned teacher: {Path(o['out']) / 'teacher'}")
    return 0


def _bilstm(o):
    return _given(o, BILSTM, {"lstm_layers": "num_layers"})


def cmd_tang(o) -> int:
    from kdfast.distill import tang

    loss = o["loss"] or "mse"
    if loss == "ce":
        _refuse(o, SOFT + TANG_AUG[1:], "--loss ce trains on the hard labels alone (no soft term, "
                "no augmentation)")
    elif loss == "mse":
        _refuse(o, ("temperature",), "applies to --loss kl or soft_ce only")
    if not o["augment"]:
        _refuse(o, ("n_aug", "p_mask", "p_pos", "p_ng"), "augmentation options, but "
                "--no-augment is given")
    aug = _given(o, TANG_AUG, {"n_aug": "n_iter"})
    _, res = tang(o["teacher"], _task(o), o["out"], max_len=_max_len(o),
                  **_given(o, ("loss",) + SOFT), **aug, **_bilstm(o), **_run(o), **_train(o))
    _summary(res, f"student: {Path(o['out']) / 'student'}")
    return 0


def cmd_sra(o) -> int:
    from kdfast.distill import sra

    stage1 = {"progress": o["progress"], **_given(o, ("stage1_epochs",), {"stage1_epochs": "epochs"})}
    stage2 = _given(o, ("loss",) + SOFT)
    if stage2 and o["stage2"] != "tang":
        raise ValueError(", ".join(_flag(k) for k in stage2) + " apply to --stage2 tang only")
    _, res = sra(o["teacher"], _task(o), o["out"], max_len=_max_len(o), stage2=o["stage2"],
                 stage1=stage1, unlabelled=_unlabelled(o),
                 **_given(o, ("sra_teacher", "vector", "stage1_loss", "transfer_cache")),
                 **stage2, **_bilstm(o), **_run(o), **_train(o))
    _summary(res, f"student: {Path(o['out']) / 'stage2' / 'student'}")
    return 0


def _transformer(o):
    """Options shared by tinybert and etd, in the library's words."""
    if not o["augment"]:
        _refuse(o, TINYBERT_AUG, "augmentation options, but --no-augment is given")
    kw = _given(o, ("mode", "style", "augment", "p_t", "k", "glove", "mlm", "alpha", "temperature",
                    "backend"))
    if o.get("n_aug") is not None:
        kw["n_a"] = o["n_aug"]
    step1 = _given(o, ("step1_epochs", "step1_lr"), {"step1_epochs": "epochs", "step1_lr": "lr"})
    step2 = _given(o, ("step2_epochs", "step2_lr"), {"step2_epochs": "epochs", "step2_lr": "lr"})
    if step1:
        kw["step1"] = step1
    if step2:
        kw["step2"] = step2
    return kw


def _refuse(o, keys, why):
    """A user error naming every option of ``keys`` given on the command line."""
    given = [_flag(k) for k in keys if o.get(k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: {why}")


def _unlabelled(o):
    if not o.get("unlabelled"):
        return None
    from kdfast.data.tasks import unlabelled_sentences

    return unlabelled_sentences(o["unlabelled"], seed=o["seed"])


def cmd_tinybert(o) -> int:
    from kdfast.distill import tinybert

    if o["stage"] == "general":
        _refuse(o, TASK_ONLY, "task distillation only (--stage task or all)")
    if o["stage"] == "task":
        _refuse(o, ("unlabelled", "general_teacher"), "general distillation only (--stage "
                "general or all)")
    if o["student"]:
        _refuse(o, BERT_SIZE, f"--student {o['student']} is the student; drop the size options")
    task = _task(o)
    student = o["student"] or _bert_size(o, default_layers=4)
    unl = _unlabelled(o)  # None: the task's training sentences (general stage)
    train = _train(o)
    seed = train.pop("seed", 0)
    shared = _given(o, ("mode", "style", "backend"))
    task_kw = {**_transformer(o), **train, "max_len": _max_len(o)} if o["stage"] != "general" \
        else shared
    general = {**train, **_given(o, ("max_len",))}  # its own default: 128 (the paper's)
    _, res = tinybert(o["teacher"], task, o["out"], stage=o["stage"],
                      general_teacher=o["general_teacher"], unlabelled=unl, student=student,
                      general=general if o["stage"] != "task" else None, seed=seed,
                      **_run(o), **task_kw)
    step2 = Path("step2") / "student"
    where = {"task": step2, "all": Path("task") / step2, "general": Path("general") / "student"}
    _summary(res, f"student: {Path(o['out']) / where[o['stage']]}")
    return 0


def _bert_size(o, default_layers):
    from transformers import AutoConfig

    from kdfast.models.teachers import resolve_teacher_path
    from kdfast.models.transformer import student_sizes

    given = _given(o, BERT_SIZE)
    if len(given) < 4:
        t = AutoConfig.from_pretrained(resolve_teacher_path(o["teacher"]))
        given = student_sizes(t, **{"num_layers": default_layers, **given})
    return given


def cmd_etd(o) -> int:
    from kdfast.distill import etd

    if o["strategy"] != "impt":
        _refuse(o, ("importance_batches",), "applies to --strategy impt only")
    train = _train(o)
    seed = train.pop("seed", 0)
    if o["task_specific"]:
        distill = _transformer(o)
    else:  # general distillation: no augmentation, steps or prediction layer
        _refuse(o, TASK_ONLY, "task-specific ETD only (drop --no-task-specific)")
        distill = _given(o, ("mode", "backend"))
    style = distill.pop("style", o["style"])
    _, res = etd(o["teacher"], _task(o), o["out"], strategy=o["strategy"], style=style,
                 task_specific=o["task_specific"], num_layers=o["num_layers"] or 3,
                 **_given(o, BERT_SIZE[1:]), unlabelled=_unlabelled(o),
                 **_given(o, ("importance_batches",)), max_len=_max_len(o), seed=seed,
                 **_run(o), **distill, **train)
    where = Path("step2" if o["task_specific"] else "general") / "student"
    _summary(res.get("results"), f"student: {Path(o['out']) / where}")
    return 0


def cmd_extract(o) -> int:
    from kdfast.distill.outputs import MARKER, atomic_save_dir
    from kdfast.distill.plumbing import check_max_len
    from kdfast.distill.trainer import torch_device
    from kdfast.etd import extract, importance, select_units
    from kdfast.data.tokenize import make_batches
    from kdfast.models.teachers import load_bert

    if o["strategy"] == "none":
        raise ValueError("--strategy none (a random init) is an etd option, not an extraction")
    sizes = _given(o, BERT_SIZE)
    missing = [k for k in BERT_SIZE if k not in sizes]
    if missing:
        raise ValueError("give the student's size: " + ", ".join(_flag(k) for k in missing))
    if o["strategy"] == "impt" and not o["task"]:
        raise ValueError("--strategy impt needs --task (the sentences to score importance on)")
    device = torch_device(o["device"])
    teacher, tokenizer, _ = load_bert(o["teacher"])
    select_units(teacher.config, strategy="rand", seed=0, **sizes)  # sizes fail before scoring
    if o["strategy"] == "impt":  # the scoring batches must fit the teacher's positions
        check_max_len(_max_len(o), teacher.config.max_position_embeddings, "the teacher")
    teacher.to(device)
    imp = None
    if o["strategy"] == "impt":
        sentences = _sentences(o["task"], o["num_sentences"], o["seed"])
        bs = o["batch_size"] or 32
        imp = importance(teacher, make_batches(tokenizer, sentences, bs, _max_len(o)),
                         num_batches=-(-len(sentences) // bs), backend=o["backend"],
                         progress=o["progress"])
    student = extract(teacher, strategy=o["strategy"], importance=imp, seed=o["seed"],
                      layer_selection=o["layer_selection"], **sizes)

    def write(tmp):  # --out is the model directory itself: from_pretrained(out) works
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if imp is not None:
            imp.save(Path(tmp) / "importance.pt")
        (Path(tmp) / MARKER).write_text("written by kdfast extract\n")

    atomic_save_dir(o["out"], write)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    print(f"{o['strategy']} student ({sizes['num_layers']} layers, hidden {sizes['hidden_size']}, "
          f"{sizes['num_heads']} heads, FFN {sizes['intermediate_size']}; {n_s / 1e6:.1f}M "
          f"parameters, teacher {n_t / 1e6:.1f}M) from teacher layers "
          f"{student.config.etd['teacher_layers']}: {o['out']}")
    return 0


def _sentences(spec, limit, seed):
    """Sentences to score: a task's training sentences, text:PATH, or a plain text file."""
    from kdfast.data.tasks import unlabelled_sentences

    sentences = unlabelled_sentences([spec], seed=seed)[:limit]
    if not sentences:
        raise ValueError(f"--task {spec}: no sentences to score")
    return sentences


def cmd_eval(o) -> int:
    from kdfast.distill.evaluate import evaluate_saved

    res = evaluate_saved(o["model"], _task(o), split=o["split"], max_len=_max_len(o),
                         batch_size=o["batch_size"] or 32, device=o["device"])
    print(json.dumps(res, indent=2) if o["json"] else
          f"{res['model']} ({res['kind']}, {res['parameters'] / 1e6:.2f}M parameters) on "
          f"{res['task']} {res['split']} ({res['examples']} examples): "
          + ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items())
          + f"; {res['examples_per_s']:.0f} examples/s on {res['device']}")
    return 0


def cmd_demo(o) -> int:
    from kdfast.demo import run_demo

    return run_demo({name: o[name] for name in COMMANDS["demo"].options})


def cmd_bench(o) -> int:
    from kdfast.bench import run_bench

    return run_bench(argparse.Namespace(**o))


@dataclass(frozen=True)
class Command:
    run: object
    help: str
    options: tuple = ()
    required: frozenset = frozenset()


DISTILL_HELP = ("distil a fine-tuned teacher into a student: tang (Tang et al. 2019, BiLSTM), "
                "sra (Wu et al. 2020), tinybert (Jiao et al.), etd (Extract-then-Distill)")
COMMANDS = {
    "info": Command(cmd_info, "versions and the kernel backends present"),
    "demo": Command(cmd_demo, "kdfast's main job on a CPU: fine-tune the offline teacher, distil "
                              "students, print accuracy / size / speed (minutes). --out (default "
                              "runs/demo) caches the steps; --fresh recomputes them",
                    ("out", "threads", "train_layers", "teacher_epochs", "teacher_lr", "amp",
                     "sra", "etd", "fresh", "quick", "report_to", "config")),
    "finetune": Command(cmd_finetune, "fine-tune a teacher (encoder + new task head) on a task",
                        ("teacher",) + TASK + ("train_layers",) + TRAIN + RUN,
                        frozenset({"task", "out"})),
    "distill tang": Command(cmd_tang, "Tang et al. 2019: a (siamese) BiLSTM on the augmented "
                                      "transfer set, logit MSE (or --loss ce: hard labels)",
                            ("teacher", "loss") + TASK + SOFT + TANG_AUG + BILSTM + TRAIN + RUN,
                            frozenset(REQUIRED)),
    "distill sra": Command(cmd_sra, "Wu et al. 2020: a BiLSTM learns the teacher's sentence "
                                    "vector on unlabelled text, then is fine-tuned",
                           ("teacher", "sra_teacher", "unlabelled", "vector", "stage1_loss",
                            "stage1_epochs", "stage2", "loss", "transfer_cache") + TASK + SOFT
                           + BILSTM + TRAIN + RUN, frozenset(REQUIRED)),
    "distill tinybert": Command(cmd_tinybert, "TinyBERT: general and/or task distillation into "
                                              "a smaller BERT",
                                ("teacher", "stage", "student", "general_teacher") + TASK
                                + BERT_SIZE + TRANSFORMER + TRAIN + RUN, frozenset(REQUIRED)),
    "distill etd": Command(cmd_etd, "Extract-then-Distill: extract a student from the teacher's "
                                    "weights, then distil it",
                           ("teacher", "strategy", "task_specific", "importance_batches") + TASK
                           + BERT_SIZE + TRANSFORMER + TRAIN + RUN, frozenset(REQUIRED)),
    "extract": Command(cmd_extract, "extract a smaller BERT from a teacher (ETD-Impt / ETD-Rand)",
                       ("teacher", "task", "strategy") + BERT_SIZE
                       + ("num_sentences", "batch_size", "max_len", "layer_selection", "seed",
                          "backend", "device") + ("config", "out", "overwrite", "progress"),
                       frozenset({"teacher", "out"})),
    "eval": Command(cmd_eval, "test metric, parameters and throughput of a saved model",
                    ("model",) + TASK + ("split", "batch_size", "device", "config"),
                    frozenset({"model", "task"})),
    "bench": Command(cmd_bench, "run a kernel microbenchmark suite"),
}
ALIASES = {"tinybert": ("distill", "tinybert"), "etd-distill": ("distill", "etd")}


# ------------------------------------------------------------------------- the parser
class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``kdfast <command>: error: ...``, exit status 2."""

    def error(self, message):
        raise UsageError(self.prog, message)


class UsageError(Exception):
    def __init__(self, prog, message):
        super().__init__(message)
        self.prog = prog


def _flag(name):
    return "--" + name.replace("_", "-")


def _add_option(p, name):
    opt = OPTIONS[name]
    shown = "" if opt.default in (None, False) or opt.type is BOOL else f" [default: {opt.default}]"
    if opt.type is BOOL:
        p.add_argument(_flag(name), dest=name, default=None,
                       action=argparse.BooleanOptionalAction,
                       help=f"{opt.help} [default: {'on' if opt.default else 'off'}]")
    else:
        p.add_argument(_flag(name), dest=name, default=None, type=opt.type,
                       choices=opt.choices or None, metavar=name.upper(),
                       help=opt.help + (f" ({' | '.join(opt.choices)})" if opt.choices else "")
                       + shown)


def _add_extra(path, p):
    """The few arguments outside the table: info/eval --json, bench SUITE."""
    if path in ("info", "eval"):
        p.add_argument("--json", action="store_true", help="print JSON")
    elif path == "bench":
        from kdfast.bench import SUITES

        p.add_argument("suite", choices=sorted(SUITES), help="which suite")
        p.add_argument("--quick", action="store_true", help="small shapes, few repeats")
        p.add_argument("--out", default="benchmarks/results", help="where results go")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdfast", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also KDFAST_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    groups = {}
    for path, cmd in COMMANDS.items():
        words = path.split()
        if len(words) == 2:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=DISTILL_HELP, description=DISTILL_HELP)
                groups[words[0]] = g.add_subparsers(dest="recipe", required=True,
                                                    metavar="RECIPE", parser_class=_Parser)
            p = groups[words[0]].add_parser(words[1], help=cmd.help, description=cmd.help)
        else:
            p = sub.add_parser(path, help=cmd.help, description=cmd.help)
        for name in cmd.options:
            _add_option(p, name)
        _add_extra(path, p)
        p.set_defaults(path=path)
    return parser


# ------------------------------------------------------------------------- options
def read_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            cfg = yaml.safe_load(text)
        else:
            cfg = json.loads(text)
    except UnicodeDecodeError:
        raise ValueError(f"--config {path} is not UTF-8 text") from None
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"--config {path} is not valid {'YAML' if path.suffix != '.json' else 'JSON'}: "
                         f"{first}") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def _from_config(name, value, path):
    """A config-file value through the same check as the command line."""
    opt = OPTIONS[name]
    if opt.type is BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"--config {path}: {name} must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    if opt.type is str and not isinstance(value, str):
        raise ValueError(f"--config {path}: {name} must be a string, got {value!r}")
    try:
        x = opt.type(value)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"--config {path}: {name}: {e}") from None
    if opt.choices and x not in opt.choices:
        raise ValueError(f"--config {path}: {name} must be one of {', '.join(opt.choices)}, "
                         f"got {value!r}")
    return x


def resolve_options(args) -> dict:
    """Built-in defaults < --config file < command line, every value checked."""
    cmd = COMMANDS[args.path]
    o = {name: OPTIONS[name].default for name in cmd.options}
    if getattr(args, "config", None):
        cfg = read_config(args.config)
        unknown = sorted(set(cfg) - set(cmd.options) - {"config"})
        if unknown:
            raise ValueError(f"--config {args.config}: kdfast {args.path} has no option "
                             + ", ".join(_flag(k) for k in unknown))
        o.update({k: _from_config(k, v, args.config) for k, v in cfg.items() if k != "config"})
    o.update({k: v for k, v in vars(args).items() if v is not None})
    missing = sorted(k for k in cmd.required if not o.get(k))
    if missing:
        raise ValueError("missing " + ", ".join(_flag(k) for k in missing)
                         + " (on the command line or in --config)")
    return o


def check_before_running(o) -> None:
    """What can be checked without work: files named by options, the output directory."""
    from kdfast.distill.outputs import check_output_dir

    specs = [("task", o.get("task"))] + [("unlabelled", s) for s in o.get("unlabelled") or ()]
    for flag, spec in specs:
        fmt, _, rest = (spec or "").partition(":")
        rest = rest.rsplit("@", 1)[0] if rest.rsplit("@", 1)[-1].isdigit() else rest  # PATH@N
        if fmt in ("csv", "tsv", "jsonl", "text") and rest and not Path(rest).expanduser().exists():
            raise FileNotFoundError(f"--{flag} {spec}: no such file {rest}")
    if o.get("transfer_cache") and Path(o["transfer_cache"]).expanduser().is_dir():
        raise IsADirectoryError(f"--transfer-cache {o['transfer_cache']}: a directory, not a file")
    if o.get("glove") and not Path(o["glove"]).expanduser().is_file():
        raise FileNotFoundError(f"--glove {o['glove']}: no such file")
    if o.get("report_to"):  # a backend that is not installed
        from kdfast.integrations.logging import resolve_report_to

        resolve_report_to(o["report_to"])
    out = Path(o["out"]).expanduser().resolve() if o.get("out") else None
    for name in ("teacher", "model", "student", "sra_teacher", "general_teacher", "mlm"):
        value = o.get(name)
        if value and (os.sep in value or value.startswith(".")) and not Path(value).exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {value}: no such directory")
        given = Path(value).expanduser().resolve() if value and Path(value).exists() else None
        if out and given and (out == given or out in given.parents):
            # --out is or holds a model being read: --overwrite would delete it
            raise ValueError(f"--out {o['out']} and --{name.replace('_', '-')} {value} overlap: "
                             "write the output somewhere else")
    if "out" in o and o["out"] is not None and "overwrite" in o:  # not demo's/bench's work dirs
        check_output_dir(o["out"], overwrite=bool(o.get("overwrite")),
                         resume=bool(o.get("resume")))


USER_ERRORS = (ValueError, OSError, UnicodeError, UsageError)


def _as_flags(message: str) -> str:
    """A library message in the command line's words: ``max_len`` -> ``--max-len`` (options
    of two or more words only: they cannot be mistaken for ordinary words)."""
    names = "|".join(sorted((re.escape(n) for n in OPTIONS if "_" in n), key=len, reverse=True))
    return re.sub(rf"(?<![\w/.-])({names})(?![\w/])", lambda m: _flag(m.group(1)), message)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("KDFAST_DEBUG", "") not in ("", "0") or "--debug" in argv
    if "--debug" in argv:
        argv.remove("--debug")
    if argv and argv[0] in ALIASES:
        argv = list(ALIASES[argv[0]]) + argv[1:]
    words = [w for w in argv[:2] if not w.startswith("-")]
    prog = "kdfast " + " ".join(words[:2] if " ".join(words[:2]) in COMMANDS else words[:1])
    try:
        args = build_parser().parse_args(argv)
        prog = f"kdfast {args.path}"
        o = resolve_options(args)
        check_before_running(o)
        if o.get("progress") is False:  # transformers' own bars too ("Loading weights")
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        return int(COMMANDS[args.path].run(o) or 0)
    except USER_ERRORS as e:
        if debug:
            raise
        where = e.prog if isinstance(e, UsageError) and e.prog != "kdfast" else prog.strip()
        message = str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
            message = f"{e.filename}: {e.strerror or message}"
        print(f"{where}: error: {_as_flags(' '.join(message.split()))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
