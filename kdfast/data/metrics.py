"""Task metrics: accuracy, F1 (binary, positive class 1), Matthews correlation, Pearson."""
from __future__ import annotations

import math

METRICS = ("accuracy", "f1", "mcc", "pearson")


def accuracy(preds, labels) -> float:
    if not labels:
        return float("nan")
    return sum(int(p == y) for p, y in zip(preds, labels)) / len(labels)


def f1(preds, labels, positive=1) -> float:
    tp = sum(1 for p, y in zip(preds, labels) if p == positive and y == positive)
    fp = sum(1 for p, y in zip(preds, labels) if p == positive and y != positive)
    fn = sum(1 for p, y in zip(preds, labels) if p != positive and y == positive)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def mcc(preds, labels) -> float:
    """Matthews correlation (binary); 0 when a row or column of the confusion matrix is empty."""
    tp = sum(1 for p, y in zip(preds, labels) if p == 1 and y == 1)
    tn = sum(1 for p, y in zip(preds, labels) if p != 1 and y != 1)
    fp = sum(1 for p, y in zip(preds, labels) if p == 1 and y != 1)
    fn = sum(1 for p, y in zip(preds, labels) if p != 1 and y == 1)
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else (tp * tn - fp * fn) / den


def pearson(preds, labels) -> float:
    n = len(labels)
    if n < 2:
        return float("nan")
    mp, my = sum(preds) / n, sum(labels) / n
    cov = sum((p - mp) * (y - my) for p, y in zip(preds, labels))
    vp = sum((p - mp) ** 2 for p in preds)
    vy = sum((y - my) ** 2 for y in labels)
    return 0.0 if vp == 0 or vy == 0 else cov / math.sqrt(vp * vy)


def predictions(outputs) -> list:
    """A model's predictions from its outputs [N, C]: the class with the largest logit, or the
    value itself for one output (regression)."""
    return outputs.squeeze(-1).tolist() if outputs.shape[-1] == 1 else outputs.argmax(-1).tolist()


def compute(metric: str, preds, labels) -> dict:
    """All metrics that make sense for ``metric``'s task type; ``metric`` itself is the key
    used for model selection."""
    preds, labels = list(preds), list(labels)
    if metric == "pearson":
        return {"pearson": pearson(preds, labels)}
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    out = {"accuracy": accuracy(preds, labels)}
    if metric == "f1":
        out["f1"] = f1(preds, labels)
    elif metric == "mcc":
        out["mcc"] = mcc(preds, labels)
    return out
