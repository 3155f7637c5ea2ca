"""BERT plumbing shared by importance scoring, its reference and extraction."""
from __future__ import annotations

import itertools

import torch

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
LABEL_KEYS = ("labels", "start_positions", "end_positions", "next_sentence_label")


def base_model(model):
    """The BertModel inside ``model`` (itself, or ``model.bert`` for the BertFor* classes)."""
    from transformers import BertModel

    if isinstance(model, BertModel):
        return model
    base = getattr(model, "base_model", None)
    if isinstance(base, BertModel):
        return base
    raise TypeError(
        "model must be a transformers BertModel or a BertFor* model wrapping one, "
        f"got {type(model).__name__}"
    )


def check_encoder(base) -> None:
    cfg = base.config
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of "
                         f"num_attention_heads {cfg.num_attention_heads}")
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise ValueError("decoder / cross-attention BERT configs are not supported")


def take(batches, num_batches):
    if num_batches is None:
        return iter(batches)
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int or None, got {num_batches!r}")
    return itertools.islice(batches, num_batches)


def model_inputs(batch, device, *, labels: bool):
    if not hasattr(batch, "keys") or "input_ids" not in batch:
        raise TypeError("each batch must be a mapping with at least 'input_ids' "
                        f"(and optionally {INPUT_KEYS[1:] + LABEL_KEYS}), "
                        f"got {type(batch).__name__}")
    keys = INPUT_KEYS + (LABEL_KEYS if labels else ())
    return {k: batch[k].to(device) for k in keys if k in batch and batch[k] is not None}


def batch_size(batch) -> int:
    return int(batch["input_ids"].shape[0])


def row_lengths(batch) -> list[int] | None:
    """Each row's length up to its last attention-mask 1 (None without a 2-D mask)."""
    attn = batch.get("attention_mask")
    if not isinstance(attn, torch.Tensor) or attn.dim() != 2:
        return None
    pos = torch.arange(1, attn.shape[1] + 1, device=attn.device)
    return (attn.ne(0) * pos).amax(1).clamp_min(1).tolist()


def select_rows(inputs: dict, rows) -> dict:
    """``inputs`` (model inputs and labels, batch-first) for the given rows, with the token
    axis of the 2-D inputs trimmed to these rows' longest real length."""
    n = inputs["input_ids"].shape[0]
    idx = torch.as_tensor(rows, dtype=torch.long, device=inputs["input_ids"].device)
    attn = inputs.get("attention_mask")
    length = None if attn is None else max(row_lengths({"attention_mask": attn[idx]}))
    out = {}
    for k, v in inputs.items():
        if v.dim() >= 1 and v.shape[0] == n:
            v = v[idx]
        if k in INPUT_KEYS and v.dim() == 2 and length is not None:
            v = v[:, :length]
        out[k] = v
    return out


def has_labels(batch) -> bool:
    return any(k in batch and batch[k] is not None for k in LABEL_KEYS)


def batch_loss(model, batch, loss_fn, activate):
    """The scalar loss of one batch. ``activate()`` is called right before the forward pass
    whose graph is differentiated (a label-free proxy runs a clean no-grad pass first)."""
    device = next(model.parameters()).device
    if hasattr(loss_fn, "compute"):
        return loss_fn.compute(model, batch, activate)
    if loss_fn is None:  # the model's own task loss
        activate()
        out = model(**model_inputs(batch, device, labels=True))
        if getattr(out, "loss", None) is None:
            raise ValueError(f"{type(model).__name__} returned no loss for a batch with labels")
        return out.loss
    activate()
    out = model(**model_inputs(batch, device, labels=False))
    loss = loss_fn(out, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("loss_fn(outputs, batch) must return a scalar tensor")
    return loss.reshape(())


def hidden_groups(base):
    """Parameter groups whose Taylor sums make up the hidden-dimension score.

    Each group is a list of (parameter, axis summed) such that what remains is indexed by
    the hidden dimension; a group's sums are added before the absolute value is taken.
    One group per module and side: every Embedding (columns), every LayerNorm (weight and
    bias), every Linear that reads the hidden state (columns: Q, K, V, FFN in, pooler in)
    and every Linear that writes it (rows with the bias: attention out, FFN out, pooler out).
    The task head of a BertFor* model is not scored (it is still sliced by extraction).
    """
    e = base.embeddings
    groups = [[(e.word_embeddings.weight, 0)], [(e.position_embeddings.weight, 0)],
              [(e.token_type_embeddings.weight, 0)], _ln(e.LayerNorm)]
    for layer in base.encoder.layer:
        s = layer.attention.self
        groups += [[(s.query.weight, 0)], [(s.key.weight, 0)], [(s.value.weight, 0)],
                   _writes(layer.attention.output.dense), _ln(layer.attention.output.LayerNorm),
                   [(layer.intermediate.dense.weight, 0)], _writes(layer.output.dense),
                   _ln(layer.output.LayerNorm)]
    if base.pooler is not None:
        groups += [[(base.pooler.dense.weight, 0)], _writes(base.pooler.dense)]
    return groups


def _ln(ln):
    return [(ln.weight, None), (ln.bias, None)]


def _writes(linear):
    return [(linear.weight, 1), (linear.bias, None)]


def untie_output_embeddings(model):
    """Gives a tied MLM decoder its own weight copy while scoring (so the word-embedding
    Taylor sum counts the embedding lookup only, as the fast path does); returns an undo."""
    get = getattr(model, "get_output_embeddings", None)
    out = get() if get is not None else None
    word = base_model(model).embeddings.word_embeddings.weight
    if out is None or out.weight is not word:
        return lambda: None
    out.weight = torch.nn.Parameter(word.detach().clone())

    def undo():
        out.weight = word

    return undo
