"""The ``etd`` recipe (Chen et al. 2021, METHODS.md s.4): extract a student from the teacher,
then distil it.

1. Importance (``strategy="impt"``): :func:`kdfast.etd.importance` on ``importance_batches``
   batches -- the task loss through the fine-tuned head for task-specific ETD, the label-free
   :class:`kdfast.etd.MaskedProxyLoss` on unlabelled text for task-agnostic ETD (a teacher like
   all-MiniLM-L6-v2 has no MLM head). ``strategy="rand"`` draws the units at random (seeded);
   ``strategy="none"`` is the baseline: a randomly initialised student of the same shape.
2. Extraction: :func:`kdfast.etd.extract` (uniform layers, the kept heads / FFN neurons /
   hidden dims); the student is a plain transformers BertModel.
3. Distillation, ``style="tinybert"`` (attention MSE + hidden MSE through fit_dense) or
   ``style="minilm"`` (last-layer attention KL + value relation), either task-specific
   (:func:`kdfast.distill.tinybert.task_distill`: step 1 on the augmented transfer set, step 2
   the prediction layer) or task-agnostic (:func:`kdfast.distill.tinybert.general_distill` on
   unlabelled sentences).

When the student keeps a subset of the teacher's hidden dims, ``fit_dense`` starts as the
selection matrix (student dim j -> teacher dim ``hidden[j]``, zero bias), so the projected
extracted student already reproduces the teacher's kept coordinates (``init_projection``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from kdfast.distill.tinybert import (
    TransformerStudent,
    base_bert,
    general_distill,
    student_config,
    task_distill,
)

STRATEGIES = ("impt", "rand", "none")


def _importance_batches(examples, batch_size, num_batches, seed):
    from kdfast.data.tokenize import collate

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=g).tolist()
    out = []
    for s in range(0, len(order), batch_size):
        b = collate([examples[i] for i in order[s:s + batch_size]])
        batch = {"input_ids": b["t_input_ids"], "attention_mask": b["t_attention_mask"],
                 "token_type_ids": b["t_token_type_ids"]}
        if "labels" in b:
            batch["y"] = b["labels"]  # not a transformers label key: our loss_fn reads it
        out.append(batch)
        if len(out) >= num_batches:
            break
    return out


def task_loss(teacher):
    """``loss_fn(encoder_outputs, batch)`` for importance: the fine-tuned head's task loss
    (cross-entropy; MSE for one output). The head's weights are used detached, so scoring
    leaves no gradient on them."""
    def loss_fn(out, batch):
        mask = batch["attention_mask"].to(out.last_hidden_state.device)
        pooled = teacher._pool(out, mask, teacher.pooling)
        logits = F.linear(pooled, teacher.head.weight.detach(), teacher.head.bias.detach())
        y = batch["y"].to(logits.device)
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
    from kdfast.models.teachers import TeacherClassifier

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    enc = teacher.encoder if isinstance(teacher, TeacherClassifier) else base_bert(teacher)
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
        loss_fn = None
        if task_specific:
            if not isinstance(teacher, TeacherClassifier) or "y" not in batches[0]:
                raise ValueError("task-specific importance needs a fine-tuned TeacherClassifier "
                                 "and labelled examples")
            loss_fn = task_loss(teacher)
        else:
            from kdfast.etd import MaskedProxyLoss

            loss_fn = MaskedProxyLoss(seed=seed)
            batches = [{k: v for k, v in b.items() if k != "y"} for b in batches]
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


def _wrap(model, teacher_enc, style, classifier_labels=None):
    from kdfast.distill.tinybert import as_classifier

    if classifier_labels is not None:
        model = as_classifier(model, classifier_labels)
    st = TransformerStudent(model, teacher_enc.config.hidden_size,
                            value_layers=[base_bert(model).config.num_hidden_layers - 1]
                            if style == "minilm" else ())
    etd = getattr(base_bert(model).config, "etd", None)
    if etd and "hidden" in etd:
        init_projection(st, etd["hidden"])
    return st


def etd(teacher, task, out_dir, *, strategy="impt", style="tinybert", task_specific=True,
        num_layers: int = 3, hidden_size: int | None = None, num_heads: int | None = None,
        intermediate_size: int | None = None, unlabelled=None, importance_batches: int = 8,
        importance_batch_size: int = 32, tokenizer=None, max_len: int = 64, seed: int = 0,
        overwrite=False, resume=False, progress=True, **distill):
    """ETD end to end; returns ``(TransformerStudent, results)``.

    Task-specific (default): ``teacher`` is fine-tuned (a directory from ``kdfast finetune``
    or a TeacherClassifier), importance uses its task loss on ``task``'s training set, and
    ``distill`` options go to :func:`~kdfast.distill.tinybert.task_distill`. Task-agnostic
    (``task_specific=False``): importance uses the masked proxy on ``unlabelled`` sentences
    (default: the task's training sentences), then general distillation on them; ``distill``
    options go to :func:`~kdfast.distill.tinybert.general_distill`. Sizes default to the
    teacher's (heads, hidden, FFN) with ``num_layers`` layers."""
    from kdfast.data.tokenize import encode
    from kdfast.distill.recipes import _task, _teacher

    task = _task(task, seed) if task is not None else None
    if task_specific:
        if task is None:
            raise ValueError("task-specific ETD needs a task")
        t_model, tokenizer, _ = _teacher(teacher, tokenizer, task.num_labels, need_head=True)
        enc = t_model.encoder
    else:
        from kdfast.distill.tinybert import _load_encoder_teacher

        enc, path = _load_encoder_teacher(teacher)
        t_model = enc
        if tokenizer is None:
            if path is None:
                raise ValueError("pass tokenizer= with an in-memory teacher")
            from kdfast.data.tokenize import load_tokenizer

            tokenizer = load_tokenizer(path)
        if unlabelled is None and task is None:
            raise ValueError("task-agnostic ETD needs unlabelled sentences (or a task)")
    c = enc.config
    sizes = dict(num_layers=num_layers, hidden_size=hidden_size or c.hidden_size,
                 num_heads=num_heads or c.num_attention_heads,
                 intermediate_size=intermediate_size or c.intermediate_size)
    if task_specific:
        examples = encode(tokenizer, task.train.texts, task.train.texts_b, task.train.labels,
                          max_len=max_len, student=False)
    else:
        sentences = list(unlabelled) if unlabelled is not None else \
            list(dict.fromkeys(task.train.texts + (task.train.texts_b or [])))
        examples = encode(tokenizer, sentences, None, None, max_len=max_len, student=False)
    model, imp = extract_student(t_model, examples, strategy=strategy, task_specific=task_specific,
                                 importance_batches=importance_batches,
                                 batch_size=importance_batch_size, seed=seed, **sizes)
    out_dir = Path(out_dir) if out_dir else None
    common = dict(tokenizer=tokenizer, style=style, seed=seed, overwrite=overwrite, resume=resume,
                  progress=progress)
    if task_specific:
        st = _wrap(model, enc, style, task.num_labels)
        st, res = task_distill(t_model, task, out_dir, student=st, max_len=max_len, **common,
                               **distill)
    else:
        st = _wrap(model, enc, style)
        st, res = general_distill(enc, sentences, out_dir, student=st, max_len=max_len, **common,
                                  **distill)
    if imp is not None and out_dir is not None:
        imp.save(out_dir / "importance.pt")
    res = {"strategy": strategy, "style": style, "task_specific": task_specific, "sizes": sizes,
           "results": res}
    if out_dir is not None:
        (out_dir / "etd.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
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
    import time

    from kdfast.data.tokenize import encode
    from kdfast.distill.recipes import _task, _teacher
    from kdfast.distill.tinybert import STEP1_TRAIN, TeacherTaps, TinyBERTLoss
    from kdfast.distill.trainer import Distiller

    if "none" not in strategies:
        raise ValueError("init_comparison needs the 'none' (random init) baseline")
    task = _task(task, seed)
    t_model, tokenizer, _ = _teacher(teacher, tokenizer, task.num_labels, need_head=True)
    c = t_model.encoder.config
    sizes = dict(num_layers=num_layers, hidden_size=hidden_size or c.hidden_size,
                 num_heads=num_heads or c.num_attention_heads,
                 intermediate_size=intermediate_size or c.intermediate_size)
    train = encode(tokenizer, task.train.texts, task.train.texts_b, task.train.labels,
                   max_len=max_len, student=False)
    out = {"setup": {"steps": steps, "batch_size": batch_size, "lr": lr, "mode": mode,
                     "style": style, "sizes": sizes, "train_sentences": len(train),
                     "window": window}}
    for strategy in strategies:
        t0 = time.perf_counter()
        model, _ = extract_student(t_model, train, strategy=strategy, task_specific=True,
                                   importance_batches=importance_batches, batch_size=batch_size,
                                   seed=seed, **sizes)
        t_extract = time.perf_counter() - t0
        st = _wrap(model, t_model.encoder, style)
        loss = TinyBERTLoss(st, c, mode=mode, style=style)
        taps = TeacherTaps(t_model, value_layers=[c.num_hidden_layers - 1] if style == "minilm" else ())
        opts = {**STEP1_TRAIN, "max_steps": steps, "batch_size": batch_size, "lr": lr,
                "log_every": 1, "seed": seed, "progress": progress, "amp": "off"}
        res = Distiller(taps, st, loss, train_data=train, **opts).train()
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
