"""Teacher fine-tuning: a pre-trained encoder + a fresh head on the task (the teacher that
Tang, SRA stage 2, TinyBERT task distillation and task-specific ETD distil)."""
from __future__ import annotations

from kdfast.distill import plumbing
from kdfast.distill.objectives import HardLabelLoss
from kdfast.distill.trainer import Distiller
from kdfast.models.teachers import TeacherClassifier

FINETUNE_TRAIN = dict(epochs=2, batch_size=32, optimizer="adamw", lr=5e-5, weight_decay=0.01,
                      scheduler="linear", warmup=0.1)


def freeze_teacher(model: TeacherClassifier, train_layers: int | None) -> None:
    """Train only the top ``train_layers`` transformer layers and the head (None: all;
    0: the head alone). The input embeddings are frozen whenever train_layers is given."""
    if train_layers is None:
        return
    layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError("train_layers needs a BERT-like encoder (encoder.encoder.layer)")
    if isinstance(train_layers, bool) or not isinstance(train_layers, int) \
            or not 0 <= train_layers <= len(layers):
        raise ValueError(f"train_layers must lie in [0, {len(layers)}], got {train_layers!r}")
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[len(layers) - train_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)


def finetune(teacher, task, out_dir, *, tokenizer=None, max_len: int = 64, overwrite=False,
             resume=False, seed: int = 0, train_layers: int | None = None, **train):
    """Fine-tune a teacher encoder + fresh head on the task (AdamW, linear schedule); returns
    ``(TeacherClassifier, results)``.

    ``train_layers``: fine-tune only the top N layers and the head (a CPU-time saver; None
    = the whole encoder). The fine-tuned teacher lands in ``out_dir/teacher`` (a directory
    ``load_teacher`` reads)."""
    plumbing.check_positive_int("max_len", max_len)
    cfg = plumbing.train_config(FINETUNE_TRAIN, {"seed": seed}, train)
    plumbing.check_out(out_dir, overwrite=overwrite, resume=resume)
    task = plumbing.as_task(task)
    cfg.metric = train.get("metric") or task.metric
    model, tokenizer, _ = plumbing.load_teacher_and_tokenizer(
        teacher, tokenizer, num_labels=task.num_labels, max_len=max_len)
    if model.has_trained_head:
        raise ValueError("this teacher already has a fine-tuned head")
    freeze_teacher(model, train_layers)
    model.task, model.label_names = task.name, task.label_names
    data = {s: plumbing.encode_split(tokenizer, getattr(task, s), max_len, student=False)
            for s in ("train", "dev", "test")}
    d = Distiller(None, model, HardLabelLoss(), train_data=data["train"], dev_data=data["dev"],
                  test_data=data["test"], out_dir=out_dir, tokenizer=tokenizer,
                  overwrite=overwrite, resume=resume, name="teacher", config=cfg)
    res = d.train()
    model.has_trained_head = True
    return model, res
