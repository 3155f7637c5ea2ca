"""Distil a fine-tuned MiniLM-L6 teacher into a 3-layer BERT student with the transformers
Trainer (``kdfast.integrations.transformers.DistillationTrainer``) on ``movie-sentences``.

    python benchmarks/trainer_example.py --out runs/trainer-example            # CPU, small budget
    torchrun --nproc_per_node 2 benchmarks/trainer_example.py --teacher DIR ...  # DDP

1. the teacher: ``--teacher DIR`` (e.g. written by ``kdfast finetune --teacher minilm-l6
   --task movie-sentences --out runs/teacher`` -> ``runs/teacher/teacher``), or, without it,
   this script fine-tunes all-MiniLM-L6-v2 + a head for ``--teacher-steps`` steps itself
   (``kdfast.distill.finetune``, the same code as ``kdfast finetune``);
2. the student: a 3-layer BertForSequenceClassification of the teacher's widths, initialised
   from the teacher's embeddings and layers 1, 3, 5 (DistilBERT-style);
3. distillation with the Trainer: Hinton KL at T=2 with alpha=0.5 hard-label CE, plus
   TinyBERT's attention + hidden losses (masked mode, uniform layer map); TensorBoard logs in
   ``OUT/student/runs``; the student saved with save_pretrained in ``OUT/student/final``;
4. test accuracy of the teacher and the student, printed and written to ``OUT/result.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/trainer-example")
    p.add_argument("--teacher", default=None, help="a fine-tuned teacher directory (kdfast finetune)")
    p.add_argument("--teacher-steps", type=int, default=150)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--report-to", default="tensorboard")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from transformers import (BertConfig, BertForSequenceClassification, DataCollatorWithPadding,
                              TrainingArguments)

    from kdfast.data.tasks import load_task
    from kdfast.integrations.transformers import DistillationSpec, DistillationTrainer
    from kdfast.models import load_teacher, resolve_teacher_path
    from kdfast.models.teachers import teacher_tokenizer

    out = Path(a.out)
    task = load_task("movie-sentences", seed=0)
    t0 = time.perf_counter()
    if a.teacher is None:  # 1. fine-tune the offline teacher (kdfast finetune, small budget)
        from kdfast.distill import finetune

        teacher, _ = finetune("minilm-l6", task, out / "teacher", overwrite=True,
                              max_steps=a.teacher_steps, progress=False, report_to="none")
        teacher_dir = out / "teacher" / "teacher"
    else:
        teacher_dir = Path(a.teacher)
        teacher = load_teacher(str(teacher_dir))
    teacher_s = time.perf_counter() - t0
    tok = teacher_tokenizer(str(teacher_dir) if (teacher_dir / "tokenizer_config.json").is_file()
                            else resolve_teacher_path("minilm-l6"))

    # 2. a 3-layer student from the teacher's embeddings and layers 1, 3, 5
    enc = teacher.encoder
    cfg = BertConfig(**{**enc.config.to_dict(), "num_hidden_layers": 3, "num_labels": task.num_labels,
                        "architectures": None})
    student = BertForSequenceClassification(cfg)
    student.bert.embeddings.load_state_dict(enc.embeddings.state_dict())
    for i, j in enumerate((1, 3, 5)):
        student.bert.encoder.layer[i].load_state_dict(enc.encoder.layer[j].state_dict())

    def dataset(split):
        enc_ = tok(split.texts, truncation=True, max_length=a.max_len)
        return [{"input_ids": ids, "attention_mask": m, "labels": y}
                for ids, m, y in zip(enc_["input_ids"], enc_["attention_mask"], split.labels)]

    train, dev, test = dataset(task.train), dataset(task.dev), dataset(task.test)

    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    # 3. distillation with the Trainer
    args = TrainingArguments(
        str(out / "student"), per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=128,
        learning_rate=a.lr, max_steps=a.max_steps, warmup_steps=max(1, a.max_steps // 10),
        lr_scheduler_type="linear", logging_steps=max(1, a.max_steps // 10), eval_strategy="steps",
        eval_steps=max(1, a.max_steps // 2), save_strategy="no", report_to=a.report_to,
        seed=0, disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    spec = DistillationSpec(logit_loss="kl", temperature=2.0, alpha=0.5, intermediate="tinybert",
                            mode="masked")
    trainer = DistillationTrainer(model=student, args=args, teacher=teacher, distillation=spec,
                                  train_dataset=train, eval_dataset=dev, compute_metrics=accuracy,
                                  data_collator=DataCollatorWithPadding(tok), processing_class=tok)
    t1 = time.perf_counter()
    trainer.train()
    distil_s = time.perf_counter() - t1
    trainer.save_model(str(out / "student" / "final"))

    # 4. test accuracy: the student (reloaded with from_pretrained) and the teacher
    reloaded = BertForSequenceClassification.from_pretrained(str(out / "student" / "final"))
    trainer.model = reloaded.to(trainer.args.device)
    s_test = trainer.evaluate(test, metric_key_prefix="test")["test_accuracy"]

    teacher.eval()
    correct = 0
    coll = DataCollatorWithPadding(tok)
    with torch.no_grad():
        for i in range(0, len(test), 128):
            b = coll(test[i:i + 128])
            logits = teacher(b["input_ids"], b["attention_mask"])
            correct += int((logits.argmax(-1) == b["labels"]).sum())
    t_test = correct / len(test)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    res = {"teacher_test_accuracy": t_test, "student_test_accuracy": s_test,
           "student_layers": 3, "teacher_layers": enc.config.num_hidden_layers,
           "student_parameters": sum(p.numel() for p in reloaded.parameters()),
           "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
           "teacher_steps": None if a.teacher else a.teacher_steps, "distil_steps": a.max_steps,
           "batch_size": a.batch_size, "teacher_time_s": teacher_s, "distil_time_s": distil_s,
           "first_log": logs[0] if logs else None, "last_log": logs[-1] if logs else None,
           "threads": torch.get_num_threads(), "device": str(trainer.args.device),
           "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if trainer.is_world_process_zero():
        (out / "result.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
