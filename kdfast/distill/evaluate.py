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


@torch.inference_mode()
def timed_outputs(forward, examples, *, batch_size: int = 32, device=None):
    """``(outputs of forward(batch) in the examples' order, examples per second)``. Batches are
    collated and moved to ``device`` beforehand, so tokenisation and copies are not timed; one
    warm-up batch of typical length runs first."""
    from kdfast.data.tokenize import in_example_order, inference_batches

    batches = list(inference_batches(examples, batch_size, device))
    forward(batches[len(batches) // 2][1])
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = [forward(batch).float().cpu() for _, batch in batches]  # .cpu() waits for the GPU
    seconds = time.perf_counter() - t0
    return in_example_order([idx for idx, _ in batches], outs), len(examples) / max(seconds, 1e-9)


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
        self.num_labels = model.config.num_labels

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
    from kdfast.distill.plumbing import check_max_len
    from kdfast.data.tasks import Task, load_task
    from kdfast.data.tokenize import encode, load_tokenizer
    from kdfast.distill.trainer import torch_device

    task = task if isinstance(task, Task) else load_task(task)
    if split not in ("train", "dev", "test"):
        raise ValueError(f"split must be train, dev or test, got {split!r}")
    model, kind = load_classifier(path)
    n = getattr(model, "num_labels", None)
    if isinstance(n, int) and n != task.num_labels:
        raise ValueError(f"{path} predicts {n} {'value' if n == 1 else 'classes'} but task "
                         f"{task.name} has {task.num_labels} "
                         f"{'(a regression)' if task.num_labels == 1 else 'classes'}")
    positions = next((m.config.max_position_embeddings for m in model.modules()
                      if hasattr(getattr(m, "config", None), "max_position_embeddings")), None)
    check_max_len(max_len, positions, str(path))
    device = torch_device(device)
    model.to(device).eval()
    data = getattr(task, split)
    examples = encode(load_tokenizer(str(path)), data.texts, data.texts_b, data.labels,
                      max_len=max_len)
    out, speed = timed_outputs(model.forward_batch, examples, batch_size=batch_size,
                               device=device)
    preds = M.predictions(out)
    return {"model": str(path), "kind": kind, "task": task.name, "split": split,
            "examples": len(examples), "metrics": M.compute(task.metric, preds, data.labels),
            "parameters": sum(p.numel() for p in model.parameters()),
            "examples_per_s": speed, "device": str(device),
            "threads": torch.get_num_threads()}
