"""TinyBERT (Jiao et al. 2020): two-stage transformer distillation.

* :func:`general_distill` -- general distillation: attention + hidden-state (+ embedding
  output) losses on unlabelled text; the teacher is a pre-trained, not fine-tuned, encoder.
* :func:`task_distill` -- task distillation from a fine-tuned teacher: step 1 the
  intermediate layers (attention + hidden) on the augmented transfer set
  (:mod:`kdfast.data.tinybert_augment`), step 2 the prediction layer (soft cross-entropy
  against the teacher's logits, mixed with the gold labels of the original sentences;
  MSE for regression) on a pool of the transfer set that the teacher labels once
  (:func:`prediction_pool`).
* :func:`tinybert` runs ``stage="general"``, ``"task"`` or ``"all"`` (general, then task).

The losses are :class:`~kdfast.distill.objectives.TinyBERTLoss` (``mode="exact"``: the
official definitions and averaging; ``"masked"``, the default: real tokens only;
``style="minilm"``: MiniLM's attention KL + value relation). Students are
:class:`~kdfast.models.TransformerStudent` (a plain transformers BERT + the ``fit_dense``
projection); the teacher's internals come from ONE forward per batch
(:class:`~kdfast.models.TeacherTaps`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from kdfast.data.tokenize import encode
from kdfast.distill import plumbing
from kdfast.distill.objectives import MODES, STYLES, TinyBERTLoss, check_pair
from kdfast.distill.trainer import Distiller
from kdfast.models.transformer import (
    FIT_DENSE_FILE,
    TeacherTaps,
    TransformerStudent,
    base_bert,
    build_transformer,
    load_transformer_student,
    student_config,
)

STAGES = ("general", "task", "all")
STEPS = ("intermediate", "prediction")
GENERAL_TRAIN = dict(epochs=3, batch_size=32, optimizer="adamw", lr=5e-5, scheduler="linear",
                     warmup=0.1, weight_decay=0.01)
# Task distillation. The paper's schedules (step 1: 20 epochs at 5e-5, step 2: 3 epochs at
# 3e-5, in epochs of a 20x augmented set, mode "exact", no hard labels) assume a
# BERT-base-sized student and a large transfer set; on a few thousand sentences and a small
# student they leave it near chance (issue 16). kdfast's defaults are sized in steps with a
# floor for small data and a learning rate for small students; `--mode exact --alpha 0
# --step1-epochs 20 --step1-lr 5e-5 --step2-epochs 3 --step2-lr 3e-5` is the paper's recipe
# (given epochs count over the augmented set and drop the floors). Step 2 needs only the
# teacher's logits: they are computed once for a pool of the transfer set, and the time a
# teacher forward per batch would cost goes into more steps (8 epochs of sentences instead of
# 3: dev accuracy was still rising at the end of 3 on all four tasks). Measurements:
# benchmarks/results/recipes-tasks.md.
STEP1_TRAIN = dict(epochs=4, min_steps=600, batch_size=32, optimizer="adamw", lr=1e-4,
                   scheduler="linear", warmup=0.1, weight_decay=0.01)
# step 2's lr unless given: step2_lr(the student's width)
STEP2_TRAIN = dict(epochs=8, min_steps=800, batch_size=32, optimizer="adamw", lr=3e-4,
                   scheduler="linear", warmup=0.1, weight_decay=0.01)
STEP2_REUSE = 3  # step 2 sees each teacher-labelled example about this often (prediction_pool)
DEFAULT_MODE = "masked"  # its prediction loss does not shrink with the class count
STEP2_ALPHA = 0.5  # weight of the hard labels in step 2 (originals only)


def step2_lr(hidden_size: int) -> float:
    """Step 2's default learning rate: 3e-4 at width 192 (it beat 1e-4 by 1.6 points on
    movie-fine@3000), shrinking like 1/width as Adam's step on a hidden matrix should
    (1.5e-4 at 384, 7.5e-5 at 768), never above 3e-4."""
    return min(3e-4, 3e-4 * 192 / hidden_size)


# ------------------------------------------------------------------------- pieces
def transformer_student(student, teacher_config, num_labels=None, *, style="tinybert", seed=0):
    """A :class:`TransformerStudent` (with ``fit_dense`` when the widths differ) from a config
    dict, a directory, a model or a TransformerStudent. A TransformerStudent, or a directory a
    recipe wrote, keeps its trained ``fit_dense`` (as TinyBERT's task distillation reloads the
    general stage's) where it still maps the student's width to this teacher's."""
    if isinstance(student, (str, Path)) and (Path(student) / FIT_DENSE_FILE).is_file():
        student = load_transformer_student(student)
    model = build_transformer(student, teacher_config, num_labels, seed)
    value_layers = [model.config.num_hidden_layers - 1] if style == "minilm" else ()
    fresh = TransformerStudent(model, teacher_config.hidden_size, value_layers=value_layers)
    if isinstance(student, TransformerStudent) and student.fit_dense is not None \
            and fresh.fit_dense is not None \
            and student.fit_dense.weight.shape == fresh.fit_dense.weight.shape:
        fresh.fit_dense = student.fit_dense
    return fresh


def teacher_taps(teacher, style="tinybert") -> TeacherTaps:
    n = base_bert(teacher).config.num_hidden_layers
    return TeacherTaps(teacher, value_layers=[n - 1] if style == "minilm" else ())


def find_mlm(path):
    """The teacher checkpoint's MLM (BertForMaskedLM) when it has trained MLM-head weights,
    else None (e.g. all-MiniLM-L6-v2, a sentence encoder)."""
    if path is None or not Path(path).is_dir():
        return None
    files = list(Path(path).glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as f:
        keys = f.keys()  # safe_open is not iterable
        if not any(k.startswith("cls.predictions") for k in keys):
            return None
    from transformers import BertForMaskedLM

    return BertForMaskedLM.from_pretrained(str(path))


def load_mlm(name, tokenizer):
    """A BERT masked LM (directory or hub name) for TinyBERT's single-piece candidates: it
    must have trained MLM-head weights and the teacher tokenizer's vocabulary."""
    from transformers import BertForMaskedLM

    try:
        model, info = BertForMaskedLM.from_pretrained(str(name), output_loading_info=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"mlm {name}: cannot load a BERT masked LM ({first})") from None
    if any(k.startswith("cls.predictions") for k in info["missing_keys"]):
        raise ValueError(f"mlm {name}: the checkpoint has no trained MLM head "
                         "(cls.predictions.*): give a BERT masked LM, e.g. bert-base-uncased")
    if model.config.vocab_size != len(tokenizer):
        raise ValueError(f"mlm {name} has a vocabulary of {model.config.vocab_size} tokens but "
                         f"the teacher's tokenizer has {len(tokenizer)}: they must match")
    return model.eval()


def transfer_examples(teacher, tokenizer, split, *, augment=True, n_a=20, p_t=0.4, k=15,
                      mlm="auto", glove=None, seed=0, max_len=64, cache=None, teacher_path=None):
    """The task-distillation transfer set: the training sentences and their TinyBERT
    augmentations, encoded for the teacher. The original sentences keep their labels (for a
    hard-label mix in step 2); augmented ones are labelled -100 (the teacher supervises them)
    -- labels only for classification. Each example's ``copy`` is 0 for an original sentence
    and 1..n_a for its augmented copies."""
    texts_a, texts_b = list(split.texts), None if split.texts_b is None else list(split.texts_b)
    labels = list(split.labels)
    if augment and n_a > 0:
        from kdfast.data.tinybert_augment import augment as tb_augment

        if mlm == "auto":
            mlm = find_mlm(teacher_path)
        emb = None if mlm is not None or glove is not None else \
            base_bert(teacher).get_input_embeddings().weight
        texts_a, texts_b, src = tb_augment(texts_a, texts_b, tokenizer=tokenizer, mlm=mlm,
                                           embeddings=emb, glove=glove, n_a=n_a, p_t=p_t, k=k,
                                           seed=seed, cache=cache)
        copy = []
        for j, i in enumerate(src):
            copy.append(0 if j == 0 or src[j - 1] != i else copy[-1] + 1)
        labels = [labels[i] if c == 0 else -100 for i, c in zip(src, copy)]
    else:
        copy = [0] * len(texts_a)
    regression = bool(labels) and isinstance(labels[0], float)
    examples = encode(tokenizer, texts_a, texts_b, None if regression else labels,
                      max_len=max_len, student=False)
    for e, c in zip(examples, copy):
        e["copy"] = c
    return examples


def prediction_pool(examples, steps: int, batch_size: int, reuse: float = STEP2_REUSE):
    """Step 2's training examples: every original sentence and its first ``k`` augmented
    copies, ``k`` such that the ``steps`` batches see each example about ``reuse`` times. The
    teacher labels this pool once, so step 2 runs without a teacher forward per batch (a
    3x192 student's step costs 0.14 s instead of 0.32 s with the MiniLM-L6 teacher on
    2 cores) and spends the time on more steps."""
    n = sum(1 for e in examples if e["copy"] == 0)
    k = max(0, round(steps * batch_size / reuse / max(1, n)) - 1)
    return [e for e in examples if e["copy"] <= k]


def sized_in_sentences(cfg, n_sentences: int, given, share: float = 1.0) -> None:
    """A default schedule counts its epochs in the task's own sentences: augmented copies
    widen the pool the batches are drawn from, not the number of steps (``max_steps`` :=
    ``max(min_steps, epochs * batches of the training set)``, dev evaluated after each
    such epoch, at most ten times, and checkpointed there so that ``--resume`` loses little).
    ``share`` scales the default epochs and floor (not a floor the user gave).
    Epochs or steps the user gave (``given``) count over the whole transfer set, as in the
    paper."""
    if {"epochs", "max_steps"} & set(given):
        return
    per_epoch = math.ceil(n_sentences / cfg.batch_size)
    floor = (cfg.min_steps or 1) if "min_steps" in given else \
        math.ceil(share * (cfg.min_steps or 1))
    cfg.max_steps = max(floor, math.ceil(share * cfg.epochs * per_epoch))
    every = min(max(per_epoch, cfg.max_steps // 10), cfg.max_steps)
    if cfg.eval_every is None:  # dev model selection once per epoch of sentences
        cfg.eval_every = every
    if cfg.checkpoint_every is None:  # one pass over the augmented set may never end
        cfg.checkpoint_every = every


def _check_common(mode, style, max_len, *, none_ok=False):
    plumbing.check_choice("mode", mode, MODES)
    plumbing.check_choice("style", style, STYLES)
    plumbing.check_positive_int("max_len", max_len, none_ok=none_ok)


def check_student(student, teacher_config, style="tinybert") -> None:
    """Checks a student (config dict, directory or model) against the teacher for the
    intermediate losses, before any work (:func:`~kdfast.distill.objectives.check_pair`)."""
    if isinstance(student, dict):
        cfg = student_config(teacher_config, **student)
    elif isinstance(student, (str, Path)):
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(student))
    else:
        cfg = base_bert(student).config
    check_pair(teacher_config, cfg, style=style, projection=True)


# ------------------------------------------------------------------------- general distillation
def general_distill(teacher, sentences, out_dir, *, student, tokenizer=None, mode=DEFAULT_MODE,
                    style="tinybert", max_len: int | None = None, seed: int = 0, overwrite=False,
                    resume=False, progress=True, backend="auto", callbacks=(), **train):
    """General distillation on unlabelled ``sentences``: returns ``(TransformerStudent,
    results)``; the student (a BertModel) is saved to ``out_dir/general/student``.
    ``max_len``: see :func:`general_setup`."""
    run = general_setup(teacher, sentences, tokenizer=tokenizer, mode=mode, style=style,
                        max_len=max_len, seed=seed, progress=progress, backend=backend, **train)
    check_student(student, run.teacher_config, style)
    plumbing.check_out(out_dir, overwrite=overwrite, resume=resume)
    out = plumbing.output_dir(out_dir, overwrite=overwrite, resume=resume)
    return run(out / "general" if out else None, student, resume=resume, callbacks=callbacks)


def general_setup(teacher, sentences, *, tokenizer=None, mode=DEFAULT_MODE, style="tinybert",
                  max_len=None, seed=0, progress=True, backend="auto", **train):
    """Checks the options and loads what general distillation needs (writes nothing);
    returns ``run(out_dir, student, *, resume, callbacks) -> (student, results)``.
    ``max_len`` default: 128 tokens, or the teacher's positions if it has fewer."""
    _check_common(mode, style, max_len, none_ok=True)
    cfg = plumbing.train_config(GENERAL_TRAIN, dict(train, seed=seed, progress=progress))
    enc, tokenizer, _ = plumbing.load_teacher_and_tokenizer(teacher, tokenizer, encoder=True,
                                                            max_len=max_len)
    t_cfg = base_bert(enc).config
    if max_len is None:
        max_len = min(128, t_cfg.max_position_embeddings)
    data = encode(tokenizer, list(sentences), None, None, max_len=max_len, student=False)
    if not data:
        raise ValueError("general distillation needs unlabelled sentences; none were given")

    def run(out_dir, student, *, resume=False, callbacks=()):
        st = transformer_student(student, t_cfg, None, style=style, seed=seed)
        loss = TinyBERTLoss(st, t_cfg, stage="intermediate", mode=mode, style=style,
                            backend=backend)
        d = Distiller(teacher_taps(enc, style), st, loss, train_data=data, out_dir=out_dir,
                      tokenizer=tokenizer, resume=resume, stage=True, callbacks=callbacks,
                      config=cfg)
        return st, d.train()

    run.teacher, run.teacher_config, run.tokenizer = enc, t_cfg, tokenizer
    return run


# ------------------------------------------------------------------------- task distillation
def task_distill(teacher, task, out_dir, *, student, tokenizer=None, mode=DEFAULT_MODE,
                 style="tinybert", augment=True, n_a: int = 20, p_t: float = 0.4, k: int = 15,
                 mlm="auto", glove=None, transfer_cache=None, steps=STEPS, step1=None,
                 step2=None, temperature: float = 1.0, alpha: float | None = None,
                 max_len: int = 64, seed: int = 0, overwrite=False, resume=False, progress=True,
                 backend="auto", callbacks=(), **train):
    """Task distillation from a fine-tuned teacher: step 1 (intermediate layers, augmented
    transfer set, ``step1`` training options) then step 2 (prediction layer, ``step2``
    options); ``train`` options apply to both. ``alpha``: the hard labels' weight in step 2
    (default :data:`STEP2_ALPHA` for classification, 0 for regression). Returns
    ``(TransformerStudent, results)``; students in ``out_dir/step1/student`` and ``out_dir/step2/student``, the augmented
    sentences in ``out_dir/augmented.jsonl``, the summary in ``out_dir/results.json``."""
    run = task_setup(teacher, task, tokenizer=tokenizer, mode=mode, style=style, augment=augment,
                     n_a=n_a, p_t=p_t, k=k, mlm=mlm, glove=glove, transfer_cache=transfer_cache,
                     steps=steps, step1=step1, step2=step2, temperature=temperature,
                     alpha=alpha, max_len=max_len, seed=seed, progress=progress,
                     backend=backend, **train)
    check_student(student, run.teacher_config, style)
    plumbing.check_out(out_dir, overwrite=overwrite, resume=resume)
    out = plumbing.output_dir(out_dir, overwrite=overwrite, resume=resume)
    st, res = run(out, student, resume=resume, callbacks=callbacks)
    plumbing.write_results(out, res)
    return st, res


def task_setup(teacher, task, *, tokenizer=None, mode=DEFAULT_MODE, style="tinybert", augment=True,
               n_a=20, p_t=0.4, k=15, mlm="auto", glove=None, transfer_cache=None, steps=STEPS,
               step1=None, step2=None, temperature=1.0, alpha=None, max_len=64, seed=0,
               progress=True, backend="auto", **train):
    """Checks the options and loads what task distillation needs (writes nothing); returns
    ``run(out_dir, student, *, resume, callbacks) -> (student, results)``."""
    _check_common(mode, style, max_len)
    bad = set(steps) - set(STEPS)
    if bad or not steps:
        raise ValueError(f"steps must be a non-empty subset of {STEPS}, got {steps!r}")
    plumbing.check_positive_int("n_a", n_a)
    plumbing.check_probability("p_t", p_t)
    plumbing.check_positive_int("k", k)
    plumbing.check_positive("temperature", temperature)
    common = dict(train, seed=seed, progress=progress)
    cfg1 = plumbing.train_config(STEP1_TRAIN, common, step1)
    cfg2 = plumbing.train_config(STEP2_TRAIN, common, step2)
    given1 = {k for d in (train, step1 or {}) for k, v in d.items() if v is not None}
    given2 = {k for d in (train, step2 or {}) for k, v in d.items() if v is not None}
    task = plumbing.as_task(task)
    cfg1.metric, cfg2.metric = cfg1.metric or task.metric, cfg2.metric or task.metric
    if alpha is None:
        alpha = 0.0 if task.num_labels == 1 else STEP2_ALPHA
    elif alpha and task.num_labels == 1:
        raise ValueError("alpha (hard labels in step 2) needs a classification task; this one "
                         "is a regression")
    plumbing.check_probability("alpha", alpha)
    cfg2.alpha, cfg2.temperature = alpha, temperature  # what step 2's report and results say
    t_model, tokenizer, t_path = plumbing.load_teacher_and_tokenizer(
        teacher, tokenizer, num_labels=task.num_labels, need_head=True, max_len=max_len)
    if isinstance(mlm, (str, Path)) and mlm != "auto":
        mlm = load_mlm(mlm, tokenizer) if augment else None
    elif not (mlm in ("auto", None) or isinstance(mlm, torch.nn.Module)):
        raise TypeError(f"mlm must be 'auto', None, a path or hub name, or a BertForMaskedLM, "
                        f"got {type(mlm).__name__}")
    t_cfg = base_bert(t_model).config
    dev, test = (plumbing.encode_split(tokenizer, getattr(task, s), max_len, student=False)
                 for s in ("dev", "test"))

    def run(out_dir, student, *, resume=False, callbacks=(), schedule: float = 1.0):
        """``schedule``: the share of both steps' default schedules to run (ETD, depth only)."""
        st = transformer_student(student, t_cfg, task.num_labels, style=style, seed=seed)
        taps = teacher_taps(t_model, style)
        results = {"mode": mode, "style": style, "alpha": alpha, "schedule": schedule,
                   "selection": "step 1: last weights (no task metric); step 2: best dev "
                                f"{cfg2.metric}"}
        stage = dict(tokenizer=tokenizer, resume=resume, stage=True, callbacks=callbacks)
        cache = transfer_cache or (out_dir / "augmented.jsonl" if out_dir else None)
        data = transfer_examples(t_model, tokenizer, task.train, augment=augment, n_a=n_a,
                                 p_t=p_t, k=k, mlm=mlm, glove=glove, seed=seed,
                                 max_len=max_len, cache=cache, teacher_path=t_path)
        results["transfer_examples"] = len(data)
        sized_in_sentences(cfg1, len(task.train), given1, schedule)
        sized_in_sentences(cfg2, len(task.train), given2, schedule)
        if "intermediate" in steps:
            loss = TinyBERTLoss(st, t_cfg, stage="intermediate", mode=mode, style=style,
                                backend=backend)
            st.capture = True
            d1 = Distiller(taps, st, loss, train_data=data, config=cfg1,
                           out_dir=out_dir / "step1" if out_dir else None, **stage)
            results["step1"] = d1.train()
        if "prediction" in steps:
            loss = TinyBERTLoss(st, t_cfg, stage="prediction", mode=mode,
                                temperature=temperature, alpha=alpha, backend=backend)
            st.capture = False
            if "lr" not in given2:
                cfg2.lr = step2_lr(st.model.config.hidden_size)
            results["step2_lr"] = cfg2.lr
            # given epochs count over the whole transfer set; a step budget gets a pool
            pool = data if cfg2.max_steps is None else \
                prediction_pool(data, cfg2.max_steps, cfg2.batch_size)
            t0 = time.perf_counter()  # labelled once: --resume and other ranks read the cache
            logits = plumbing.labelled_logits(
                t_model, pool, out_dir / "step2_teacher_logits.pt" if out_dir else None,
                teacher_path=t_path, device=cfg2.device, progress=progress)
            pool = [dict(e, t_logits=row) for e, row in zip(pool, logits.tolist())]
            results["step2_pool"] = {"examples": len(pool),
                                     "copies": max(e["copy"] for e in pool),
                                     "teacher_s": time.perf_counter() - t0}
            d2 = Distiller(taps, st, loss, train_data=pool, dev_data=dev, test_data=test,
                           config=cfg2, out_dir=out_dir / "step2" if out_dir else None, **stage)
            results["step2"] = d2.train()
            results["test"] = results["step2"].get("test")
            results["dev"] = results["step2"].get("dev")
        st.capture = True
        return st, results

    run.teacher, run.teacher_config, run.tokenizer = t_model, t_cfg, tokenizer
    return run


# ------------------------------------------------------------------------- both stages
# task-distillation options that the general stage shares (not max_len: the general stage
# has its own default, 128 tokens as in the paper; give it in general=)
GENERAL_SHARED = ("tokenizer", "mode", "style", "seed", "progress", "backend")


def tinybert(teacher, task, out_dir, *, stage="task", general_teacher=None, unlabelled=None,
             student=None, general=None, overwrite=False, resume=False, callbacks=(), **kw):
    """Run TinyBERT: ``stage="general"`` (on ``unlabelled`` sentences, default the task's
    training sentences; teacher = ``general_teacher`` or ``teacher``), ``"task"`` or
    ``"all"`` (general distillation into ``out_dir/general``, then task distillation of that
    student into ``out_dir/task``). ``student``: a config dict, a directory or a model;
    ``general``: options of the general stage (:func:`general_setup`'s; its ``max_len``
    defaults to 128 tokens, the paper's, whatever task distillation's is); ``kw``:
    :func:`task_distill`'s."""
    plumbing.check_choice("stage", stage, STAGES)
    if student is None:
        raise ValueError("give student= (a config dict with num_layers, hidden_size, num_heads, "
                         "intermediate_size; a directory; or a transformers model)")
    if stage == "task" and (general_teacher, unlabelled, general) != (None, None, None):
        raise ValueError("general_teacher, unlabelled and general are general-stage options: "
                         "use stage='general' or 'all'")
    if stage == "general" and set(kw) - set(GENERAL_SHARED):
        raise ValueError(f"{', '.join(sorted(set(kw) - set(GENERAL_SHARED)))}: task distillation "
                         "options, unused by stage='general' (its training options go in general=)")
    if stage == "task":
        return task_distill(teacher, task, out_dir, student=student, overwrite=overwrite,
                            resume=resume, callbacks=callbacks, **kw)
    seed = kw.get("seed", 0)
    task_setup_run = task_setup(teacher, task, **kw) if stage == "all" else None
    task_obj = plumbing.as_task(task) if task is not None else None
    sentences = plumbing.sentences_from(unlabelled, task_obj, seed=seed)
    shared = {k: kw[k] for k in GENERAL_SHARED if k in kw}
    general_run = general_setup(general_teacher or teacher, sentences,
                                **{**shared, **(general or {})})  # general's own options win
    check_student(student, general_run.teacher_config, kw.get("style", "tinybert"))
    plumbing.check_out(out_dir, overwrite=overwrite, resume=resume)
    out = plumbing.output_dir(out_dir, overwrite=overwrite, resume=resume)
    st, res_general = general_run(out / "general" if out else None, student, resume=resume,
                                  callbacks=callbacks)
    res = {"general": res_general}
    if stage == "all":
        st, r = task_setup_run(out / "task" if out else None, st, resume=resume,
                               callbacks=callbacks)
        res.update(r)
    plumbing.write_results(out, res)
    return st, res
