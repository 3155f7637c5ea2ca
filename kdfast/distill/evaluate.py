"""``kdfast eval``: the task metric, size and throughput of any classifier kdfast saved.

Three kinds of directory are recognised: a fine-tuned teacher (``kdfast finetune``: an encoder
plus ``kdfast_head.json``), a BiLSTM student (``config.json`` naming a kdfast student class)
and a transformers sequence classifier (TinyBERT / ETD students, or any
``*ForSequenceClassification`` checkpoint), loaded with ``from_pretrained``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def load_classifier(path):
    """``(model with forward_batch, kind)`` for a directory of one of the three kinds."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} holds no model (config.json missing)")
    if (path / "kdfast_head.json").is_file():
        from kdfast.models import load_teacher

        return load_teacher(str(path)), "teacher"
    cfg = json.loads(cfg_file.read_text())
    if "class" in cfg:
        from kdfast.nn.students import load_student

        return load_student(path), f"BiLSTM student ({cfg['class']})"
    if any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or []):
        from transformers import AutoModelForSequenceClassification

        return _HFClassifier(AutoModelForSequenceClassification.from_pretrained(str(path))), \
            f"transformers {cfg['architectures'][0]}"
    raise ValueError(f"{path} is not a classifier kdfast can evaluate: a fine-tuned teacher, a "
                     "BiLSTM student or a *ForSequenceClassification model")


class _HFClassifier(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward_batch(self, batch):
        return self.model(input_ids=batch["t_input_ids"], attention_mask=batch["t_attention_mask"],
                          token_type_ids=batch.get("t_token_type_ids")).logits


@torch.inference_mode()
def evaluate_saved(path, task, *, split: str = "test", max_len: int = 64, batch_size: int = 32,
                   device=None) -> dict:
    """Metrics of the saved model at ``path`` on ``task``'s ``split``, its parameter count and
    its inference throughput (examples per second, tokenisation excluded, after one warm-up
    batch)."""
    from kdfast.data import metrics as M
    from kdfast.data.tasks import Task, load_task
    from kdfast.data.tokenize import collate, encode, length_batches, load_tokenizer, to_device
    from kdfast.distill.trainer import torch_device

    task = task if isinstance(task, Task) else load_task(task)
    if split not in ("train", "dev", "test"):
        raise ValueError(f"split must be train, dev or test, got {split!r}")
    model, kind = load_classifier(path)
    device = torch_device(device)
    model.to(device).eval()
    data = getattr(task, split)
    examples = encode(load_tokenizer(str(path)), data.texts, data.texts_b, data.labels,
                      max_len=max_len)
    order = length_batches(examples, batch_size)
    batches = [to_device(collate([examples[i] for i in idx]), device) for idx in order]
    model.forward_batch(batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = [model.forward_batch(b).float().cpu() for b in batches]
    seconds = time.perf_counter() - t0
    preds = [None] * len(examples)
    for out, idx in zip(outs, order):
        values = out.squeeze(-1).tolist() if out.shape[-1] == 1 else out.argmax(-1).tolist()
        for p, i in zip(values, idx):
            preds[i] = p
    return {"model": str(path), "kind": kind, "task": task.name, "split": split,
            "examples": len(examples), "metrics": M.compute(task.metric, preds, data.labels),
            "parameters": sum(p.numel() for p in model.parameters()),
            "examples_per_s": len(examples) / max(seconds, 1e-9), "device": str(device),
            "threads": torch.get_num_threads()}
