"""SRA (Wu et al. 2020): non-task-specific distillation of BERT into a BiLSTM
by sentence representation approximation.

1. Stage 1 (task-agnostic): on unlabelled sentences, a BiLSTM encoder learns to reproduce the
   teacher's sentence vector (``vector``: mean | cls | pooler) with MSE or cosine
   (:class:`~kdfast.distill.objectives.SentenceVectorLoss`); the teacher's vectors are
   computed once and cached (``out_dir/stage1_vectors.pt``).
2. Stage 2: a classifier on top of the encoder is fine-tuned on the task: on hard labels
   (``stage2="hard"``) or with Tang's distillation from the fine-tuned teacher
   (``stage2="tang"``, :func:`kdfast.distill.tang.run_tang`).
"""
from __future__ import annotations

from kdfast.data.tasks import Split
from kdfast.distill import plumbing
from kdfast.distill.objectives import VECTOR_KINDS, SentenceVectorLoss
from kdfast.distill.tang import (TangOptions, _renamed, build_student, check_student_options,
                                 default_fc_size, run_tang, transfer_set)
from kdfast.distill.trainer import Distiller
from kdfast.models.teachers import POOLINGS as VECTORS

SRA_STAGE1 = dict(epochs=5, batch_size=50, optimizer="adam", lr=1e-3, patience=None)
STAGE2 = ("hard", "tang")


def sra(teacher, task, out_dir, *, tokenizer=None, sra_teacher=None, unlabelled=None,
        vector="mean", stage1_loss="mse", stage1=None, stage2="hard", embeddings="teacher",
        embedding_mode="non-static", lstm_hidden_size=None, fc_size=None, pooling="max",
        num_layers=1, dropout=0.1, max_len=64, seed=0, overwrite=False, resume=False,
        progress=True, transfer_cache=None, teacher_bf16=None, **train):
    """SRA end to end; returns ``(classifier, results)``.

    ``unlabelled``: a list of sentences, or of sources for
    :func:`kdfast.data.tasks.unlabelled_sentences` (default: the task's training sentences).
    ``sra_teacher`` gives the encoder for stage 1 (default: ``teacher``; the paper uses a
    pre-trained, not fine-tuned, BERT). ``stage1``: training options of stage 1;
    ``train``: Tang options and training options of stage 2. ``transfer_cache``: where
    stage 1's teacher vectors are cached. Outputs: ``out_dir/stage1`` (the encoder),
    ``out_dir/stage2`` (the classifier) and ``out_dir/results.json``."""
    plumbing.check_choice("vector", vector, VECTORS)
    plumbing.check_choice("stage1_loss", stage1_loss, VECTOR_KINDS)
    plumbing.check_choice("stage2", stage2, STAGE2)
    plumbing.check_positive_int("max_len", max_len)
    _renamed(train)
    tang_kw, train = TangOptions.split(train)
    if stage2 == "hard":
        bad = sorted(set(tang_kw) - {"teacher_bf16"})
        if bad:
            raise TypeError(f"{bad}: Tang options apply to stage2='tang' only")
        tang_kw["loss"] = "ce"
    opts2 = TangOptions(**{**tang_kw, "max_len": max_len, "teacher_bf16": teacher_bf16,
                           "fc_size": fc_size, "dropout": dropout}).check(student_given=True)
    check_student_options(embeddings=embeddings, embedding_mode=embedding_mode,
                          lstm_hidden_size=lstm_hidden_size, fc_size=fc_size, pooling=pooling,
                          num_layers=num_layers, dropout=dropout)
    common = dict(seed=seed, progress=progress)
    shared = {k: train[k] for k in ("log_every", "device", "amp", "report_to") if k in train}
    cfg1 = plumbing.train_config(SRA_STAGE1, common, shared, stage1)
    cfg1.patience = None  # no dev set in stage 1
    opts2.train_config(None, dict(train, **common))  # stage 2's options fail here, early
    plumbing.check_out(out_dir, overwrite=overwrite, resume=resume)

    task = plumbing.as_task(task)
    cfg2 = opts2.train_config(task, dict(train, **common,
                                         metric=train.get("metric") or task.metric))
    s1_teacher, tokenizer, s1_path = plumbing.load_teacher_and_tokenizer(
        sra_teacher if sra_teacher is not None else teacher, tokenizer,
        num_labels=task.num_labels, max_len=max_len)
    if stage2 == "tang":
        t_model, _, t_path = plumbing.load_teacher_and_tokenizer(
            teacher, tokenizer, num_labels=task.num_labels, need_head=True, max_len=max_len) \
            if sra_teacher is not None else (s1_teacher, tokenizer, s1_path)
        if not t_model.has_trained_head:
            raise ValueError("stage2='tang' needs a fine-tuned teacher: run `kdfast finetune` "
                             "first (or pass the directory it wrote)")
    else:
        t_model, t_path = s1_teacher, s1_path
    sentences = plumbing.sentences_from(unlabelled, task, seed=seed)
    enc = build_student("sra", s1_teacher, tokenizer, task.num_labels, embeddings=embeddings,
                        embedding_mode=embedding_mode, lstm_hidden_size=lstm_hidden_size,
                        pooling=pooling, num_layers=num_layers, seed=seed)
    out = plumbing.output_dir(out_dir, overwrite=overwrite, resume=resume)

    # stage 1: the teacher's sentence vectors (cached like a transfer set, no augmentation)
    cache = transfer_cache or (out / "stage1_vectors.pt" if out else None)
    data, _ = transfer_set(s1_teacher, tokenizer, Split(sentences, [0] * len(sentences)),
                           cache=cache, augment=False, vector=vector, seed=seed, max_len=max_len,
                           teacher_path=s1_path, progress=progress, bf16=teacher_bf16)
    d1 = Distiller(None, enc, SentenceVectorLoss(stage1_loss, vector), train_data=data,
                   out_dir=out / "stage1" if out else None, tokenizer=tokenizer, resume=resume,
                   stage=True, name="encoder", config=cfg1)
    res1 = d1.train()

    # stage 2: a classifier on the encoder, on hard labels or distilled (Tang)
    clf = enc.classifier(task.num_labels, fc_size=fc_size or default_fc_size(task.is_pair),
                         dropout=dropout, pair=task.is_pair)
    model, res2 = run_tang(t_model, tokenizer, t_path, task, out / "stage2" if out else None,
                           clf, opts2, cfg2, seed=seed, resume=resume, progress=progress)
    res = {"stage1": res1, "stage2": res2, "test": res2.get("test"), "dev": res2.get("dev"),
           "unlabelled_sentences": len(sentences)}
    plumbing.write_results(out, res)
    return model, res
