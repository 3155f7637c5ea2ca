"""ETD (Chen et al. 2021): extract a student from the teacher, then distil it.

1. Importance (``strategy="impt"``): :func:`kdfast.etd.importance` on ``importance_batches``
   batches -- the task loss through the fine-tuned head for task-specific ETD, the label-free
   :class:`kdfast.etd.MaskedProxyLoss` on unlabelled text for task-agnostic ETD (a teacher like
   all-MiniLM-L6-v2 has no MLM head). ``strategy="rand"`` draws the units at random (seeded);
   ``strategy="none"`` is the baseline: a randomly initialised student of the same shape.
2. Extraction: :func:`kdfast.etd.extract` (uniform layers, the kept heads / FFN neurons /
   hidden dims); the student is a plain transformers BertModel.
3. Distillation, ``style="tinybert"`` (attention MSE + hidden MSE through fit_dense) or
   ``style="minilm"`` (last-layer attention KL + value relation), either task-specific
   (:func:`kdfast.distill.tinybert.task_distill`'s two steps) or task-agnostic (general
   distillation on unlabelled sentences).

When the student keeps a subset of the teacher's hidden dims, ``fit_dense`` starts as the
selection matrix (student dim j -> teacher dim ``hidden[j]``, zero bias), so the projected
extracted student already reproduces the teacher's kept coordinates (``init_projection``).
"""
from __future__ import annotations

import time

import torch

from kdfast.data.tokenize import collate, encode
from kdfast.distill import outputs, plumbing
from kdfast.distill.objectives import check_pair
from kdfast.distill.tinybert import STEP1_TRAIN, general_setup, task_setup, teacher_taps
from kdfast.distill.trainer import Distiller
from kdfast.models.teachers import TeacherClassifier
from kdfast.models.transformer import (TransformerStudent, as_classifier, base_bert,
                                      student_config, student_sizes)

STRATEGIES = ("impt", "rand", "none")
# A student extracted at the teacher's full width (heads, hidden, FFN: only layers dropped)
# starts from the teacher's own layers, and task distillation runs this share of its default
# schedule (both steps, epochs and floors). ETD's premise is that an extracted student needs
# far less distillation than a random one; at 3x384 on a 5k-sentence task the dev accuracy of
# the full schedule had levelled off by its half, and the full schedule (730 s on 2 cores)
# missed issue 16's 10-minute budget. Measurements: benchmarks/results/recipes-budget.md
# (the budget) and recipes-tasks.md (five tasks).
DEPTH_ONLY_SCHEDULE = 0.5


def _importance_batches(examples, batch_size, num_batches, seed):
    """Seeded batches of kdfast examples in the form :func:`kdfast.etd.importance` takes
    (transformers' keys: input_ids, attention_mask, token_type_ids, labels)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=g).tolist()
    out = []
    for s in range(0, len(order), batch_size):
        b = collate([examples[i] for i in order[s:s + batch_size]])
        batch = {"input_ids": b["t_input_ids"], "attention_mask": b["t_attention_mask"],
                 "token_type_ids": b["t_token_type_ids"]}
        if "labels" in b:
            batch["labels"] = b["labels"]
        out.append(batch)
        if len(out) >= num_batches:
            break
    return out


def task_loss(teacher: TeacherClassifier):
    """``loss_fn(encoder_outputs, batch)`` for importance: the fine-tuned head's task loss
    (cross-entropy; MSE for one output). The head takes no gradient."""
    import torch.nn.functional as F

    def loss_fn(out, batch):
        mask = batch["attention_mask"].to(out.last_hidden_state.device)
        logits = teacher.head_logits(out, mask, detach_head=True)
        y = batch["labels"].to(logits.device)
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(-1), y.float())
        return F.cross_entropy(logits, y)
    return loss_fn


def extract_student(teacher, examples=None, *, strategy="impt", num_layers: int, hidden_size: int,
                    num_heads: int, intermediate_size: int, task_specific: bool = True,
                    importance_batches: int = 8, batch_size: int = 32, seed: int = 0,
                    progress: bool = False):
    """``(student BertModel, Importance or None)``: extracted from ``teacher``'s encoder
    (``impt``/``rand``) or randomly initialised with the same shape (``none``).
    ``examples`` (teacher-tokenised, with labels for task-specific scoring) feed importance."""
    from kdfast.etd import extract, importance

    plumbing.check_choice("strategy", strategy, STRATEGIES)
    plumbing.check_positive_int("importance_batches", importance_batches)
    plumbing.check_positive_int("importance_batch_size", batch_size)
    enc = base_bert(teacher)
    if strategy == "none":
        from transformers import BertModel

        torch.manual_seed(seed)
        cfg = student_config(enc.config, num_layers=num_layers, hidden_size=hidden_size,
                             num_heads=num_heads, intermediate_size=intermediate_size)
        return BertModel(cfg, add_pooling_layer=enc.pooler is not None), None
    imp = None
    if strategy == "impt":
        if not examples:
            raise ValueError("strategy='impt' needs examples to score importance on")
        batches = _importance_batches(examples, batch_size, importance_batches, seed)
        if task_specific:
            if not isinstance(teacher, TeacherClassifier) or "labels" not in batches[0]:
                raise ValueError("task-specific importance needs a fine-tuned TeacherClassifier "
                                 "and labelled examples")
            loss_fn = task_loss(teacher)
        else:
            from kdfast.etd import MaskedProxyLoss

            loss_fn = MaskedProxyLoss(seed=seed)
            batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
        imp = importance(enc, batches, loss_fn=loss_fn, progress=progress)
    student = extract(enc, num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                      intermediate_size=intermediate_size, strategy=strategy, importance=imp,
                      seed=seed)
    return student, imp


@torch.no_grad()
def init_projection(student: TransformerStudent, hidden_index) -> None:
    """fit_dense := the selection matrix of the extracted hidden dims (zero bias)."""
    if student.fit_dense is None:
        return
    w = student.fit_dense.weight
    w.zero_()
    w[torch.as_tensor(hidden_index), torch.arange(len(hidden_index))] = 1.0
    if student.fit_dense.bias is not None:
        student.fit_dense.bias.zero_()


def wrap_student(model, teacher_config, style, num_labels=None) -> TransformerStudent:
    """The extracted model as a TransformerStudent (a classifier with ``num_labels``), its
    projection initialised from the extraction."""
    if num_labels is not None:
        model = as_classifier(model, num_labels)
    st = TransformerStudent(model, teacher_config.hidden_size,
                            value_layers=[base_bert(model).config.num_hidden_layers - 1]
                            if style == "minilm" else ())
    etd_cfg = getattr(base_bert(model).config, "etd", None)
    if etd_cfg and "hidden" in etd_cfg:
        init_projection(st, etd_cfg["hidden"])
    return st


def schedule_share(teacher_config, sizes, strategy) -> float:
    """The share of task distillation's default schedule an extracted student runs:
    :data:`DEPTH_ONLY_SCHEDULE` when it keeps every head, hidden dim and FFN neuron, else 1."""
    full = (sizes["hidden_size"] == teacher_config.hidden_size
            and sizes["num_heads"] == teacher_config.num_attention_heads
            and sizes["intermediate_size"] == teacher_config.intermediate_size)
    return DEPTH_ONLY_SCHEDULE if full and strategy != "none" else 1.0


def _check_sizes(t_cfg, sizes, style, strategy):
    """Everything about the student's shape that can fail, before scoring or extraction."""
    from kdfast.etd import select_units

    s_cfg = student_config(t_cfg, **sizes)
    check_pair(t_cfg, s_cfg, style=style, projection=True)
    if strategy != "none":
        select_units(t_cfg, strategy="rand", seed=0, **sizes)


def etd(teacher, task, out_dir, *, strategy="impt", style="tinybert", task_specific=True,
        num_layers: int = 3, hidden_size: int | None = None, num_heads: int | None = None,
        intermediate_size: int | None = None, unlabelled=None, importance_batches: int = 8,
        importance_batch_size: int = 32, tokenizer=None, max_len: int = 64, seed: int = 0,
        overwrite=False, resume=False, progress=True, **distill):
    """ETD end to end; returns ``(TransformerStudent, results)``.

    Task-specific (default): ``teacher`` is fine-tuned (a directory from ``kdfast finetune``
    or a TeacherClassifier), importance uses its task loss on ``task``'s training set, and
    ``distill`` options go to task distillation (:func:`kdfast.distill.tinybert.task_distill`).
    Task-agnostic (``task_specific=False``): importance uses the masked proxy on ``unlabelled``
    sentences (default: the task's training sentences), then general distillation on them.
    Sizes default to the teacher's (heads, hidden, FFN) with ``num_layers`` layers. Outputs:
    the stages' directories, ``importance.pt`` and ``results.json`` in ``out_dir``."""
    plumbing.check_choice("strategy", strategy, STRATEGIES)
    plumbing.check_positive_int("importance_batches", importance_batches)
    plumbing.check_positive_int("importance_batch_size", importance_batch_size)
    plumbing.check_positive_int("num_layers", num_layers)
    for name, v in (("hidden_size", hidden_size), ("num_heads", num_heads),
                    ("intermediate_size", intermediate_size)):
        plumbing.check_positive_int(name, v, none_ok=True)
    callbacks = distill.pop("callbacks", ())
    common = dict(tokenizer=tokenizer, style=style, seed=seed, progress=progress,
                  max_len=max_len, **distill)
    task = plumbing.as_task(task) if task is not None else None
    if task_specific:
        if task is None:
            raise ValueError("task-specific ETD needs a task")
        run = task_setup(teacher, task, **common)  # checks every option, loads the teacher
    else:
        if unlabelled is None and task is None:
            raise ValueError("task-agnostic ETD needs unlabelled sentences (or a task)")
        sentences = plumbing.sentences_from(unlabelled, task, seed=seed)
        run = general_setup(teacher, sentences, **common)
    t_model, c = run.teacher, run.teacher_config
    sizes = student_sizes(c, num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                          intermediate_size=intermediate_size)
    _check_sizes(c, sizes, style, strategy)
    plumbing.check_out(out_dir, overwrite=overwrite, resume=resume)

    tokenizer = run.tokenizer
    if task_specific:
        examples = plumbing.encode_split(tokenizer, task.train, max_len, student=False)
    else:
        examples = encode(tokenizer, sentences, None, None, max_len=max_len, student=False)
    model, imp = extract_student(t_model, examples, strategy=strategy,
                                 task_specific=task_specific,
                                 importance_batches=importance_batches,
                                 batch_size=importance_batch_size, seed=seed, **sizes)
    st = wrap_student(model, c, style, task.num_labels if task_specific else None)
    out = plumbing.output_dir(out_dir, overwrite=overwrite, resume=resume)
    stage_dir = out if task_specific or out is None else out / "general"
    extra = {"schedule": schedule_share(c, sizes, strategy)} if task_specific else {}
    st, res = run(stage_dir, st, resume=resume, callbacks=callbacks, **extra)
    if imp is not None and out is not None and plumbing.is_rank0():
        outputs.atomic_save(imp.to_dict(), out / "importance.pt")
    res = {"strategy": strategy, "style": style, "task_specific": task_specific, "sizes": sizes,
           "results": res}
    plumbing.write_results(out, res)
    return st, res


def init_comparison(teacher, task, *, strategies=("none", "impt", "rand"), steps: int = 200,
                    num_layers: int = 3, hidden_size: int | None = None, num_heads: int | None = None,
                    intermediate_size: int | None = None, mode="exact", style="tinybert",
                    batch_size: int = 32, lr: float = 1e-4, max_len: int = 64, window: int = 10,
                    importance_batches: int = 8, tokenizer=None, seed: int = 0, progress=False):
    """How fast each initialisation reaches the randomly initialised student's final
    intermediate-layer distillation loss (TinyBERT step 1 on the task's training sentences,
    no augmentation, identical data order and schedule for every strategy).

    Returns ``{strategy: {"history": [...], "final": mean of the last window losses,
    "steps_to_random_final": first step whose trailing mean <= random's final (None if
    never)}}`` plus ``"setup"``. The baseline ``"none"`` must be among the strategies."""
    from kdfast.distill.objectives import TinyBERTLoss

    if "none" not in strategies:
        raise ValueError("init_comparison needs the 'none' (random init) baseline")
    task = plumbing.as_task(task)
    t_model, tokenizer, _ = plumbing.load_teacher_and_tokenizer(
        teacher, tokenizer, num_labels=task.num_labels, need_head=True, max_len=max_len)
    c = t_model.encoder.config
    sizes = student_sizes(c, num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                          intermediate_size=intermediate_size)
    _check_sizes(c, sizes, style, "rand")
    train = plumbing.encode_split(tokenizer, task.train, max_len, student=False)
    out = {"setup": {"steps": steps, "batch_size": batch_size, "lr": lr, "mode": mode,
                     "style": style, "sizes": sizes, "train_sentences": len(train),
                     "window": window}}
    for strategy in strategies:
        t0 = time.perf_counter()
        model, _ = extract_student(t_model, train, strategy=strategy, task_specific=True,
                                   importance_batches=importance_batches, batch_size=batch_size,
                                   seed=seed, **sizes)
        t_extract = time.perf_counter() - t0
        st = wrap_student(model, c, style)
        loss = TinyBERTLoss(st, c, mode=mode, style=style)
        opts = {**STEP1_TRAIN, "max_steps": steps, "batch_size": batch_size, "lr": lr,
                "log_every": 1, "seed": seed, "progress": progress, "amp": "off"}
        res = Distiller(teacher_taps(t_model, style), st, loss, train_data=train, **opts).train()
        hist = [v for _, v in res["loss_history"]]
        out[strategy] = {"history": hist, "final": sum(hist[-window:]) / len(hist[-window:]),
                         "extract_s": t_extract, "train_s": res["train_time_s"]}
    target = out["none"]["final"]
    for strategy in strategies:
        hist = out[strategy]["history"]
        hit = None
        for i in range(len(hist)):
            w = hist[max(0, i + 1 - window):i + 1]
            if i + 1 >= window and sum(w) / len(w) <= target:
                hit = i + 1
                break
        out[strategy]["steps_to_random_final"] = hit
    return out
