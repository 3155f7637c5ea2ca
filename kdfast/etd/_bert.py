"""BERT plumbing shared by importance scoring, its reference and extraction."""
from __future__ import annotations

import itertools
from collections.abc import Mapping

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
    """An iterator over at most ``num_batches`` of ``batches``: an iterable of mappings, or a
    single mapping (one batch, e.g. a tokenizer's BatchEncoding)."""
    if isinstance(num_batches, bool) or not (num_batches is None or isinstance(num_batches, int)) \
            or (num_batches is not None and num_batches < 1):
        raise ValueError(f"num_batches must be a positive int or None, got {num_batches!r}")
    if is_mapping(batches):
        batches = [batches]
    elif isinstance(batches, (str, bytes, torch.Tensor)) or not hasattr(batches, "__iter__"):
        raise TypeError("batches must be an iterable of mappings (dicts with 'input_ids' and "
                        "optionally 'attention_mask', 'token_type_ids', labels) or a single such "
                        f"mapping, got {type(batches).__name__}")
    it = iter(batches)
    return it if num_batches is None else itertools.islice(it, num_batches)


def is_mapping(value) -> bool:
    return isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")
                                          and not isinstance(value, torch.Tensor))


def _int_tensor(name, v, *, floats=False):
    """An index tensor (int32/int64, what an embedding lookup takes) or, with ``floats``, a
    mask of any real dtype."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"batch[{name!r}] must be a torch.Tensor, got {type(v).__name__}")
    if v.dtype.is_complex or (not floats and v.dtype not in (torch.int32, torch.int64)):
        raise TypeError(f"batch[{name!r}] must have dtype torch.int64 (or int32), got {v.dtype}")
    return v


def is_multiple_choice(model) -> bool:
    from transformers import BertForMultipleChoice

    return isinstance(model, BertForMultipleChoice)


def check_batch(batch, config, *, multiple_choice: bool = False) -> None:
    """Validates one batch's model inputs against the BERT ``config`` (ValueError/TypeError
    naming the key) before the model runs: ``input_ids`` a non-empty [B, L] (with
    ``multiple_choice``: [B, C, L]) int64/int32 tensor of ids in [0, vocab_size),
    L <= max_position_embeddings; ``attention_mask``,
    ``token_type_ids`` (in [0, type_vocab_size)) and ``position_ids`` of the same shape.
    One host sync for the value ranges."""
    if not is_mapping(batch) or "input_ids" not in batch:
        raise TypeError("each batch must be a mapping with at least 'input_ids' "
                        f"(and optionally {INPUT_KEYS[1:] + LABEL_KEYS}), "
                        f"got {type(batch).__name__}")
    ids = _int_tensor("input_ids", batch["input_ids"])
    if ids.dim() != (3 if multiple_choice else 2) or ids.numel() == 0:
        shape = "[B, C, L] (a multiple-choice model)" if multiple_choice else "[B, L]"
        raise ValueError(f"batch['input_ids'] must have shape {shape} with every size >= 1, "
                         f"got {tuple(ids.shape)}")
    L = ids.shape[-1]
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is not None and L > max_pos:
        raise ValueError(f"batch['input_ids'] has L={L} tokens per row, more than the model's "
                         f"max_position_embeddings={max_pos}")
    ranges = [("input_ids", ids, config.vocab_size)]
    for key, limit in (("attention_mask", None),
                       ("token_type_ids", getattr(config, "type_vocab_size", None)),
                       ("position_ids", max_pos)):
        v = batch[key] if key in batch else None
        if v is None:
            continue
        _int_tensor(key, v, floats=key == "attention_mask")
        ok = v.shape == ids.shape or (key == "position_ids" and tuple(v.shape) == (1, L))
        if not ok:
            raise ValueError(f"batch[{key!r}] must have the shape of input_ids "
                             f"{tuple(ids.shape)}, got {tuple(v.shape)}")
        if limit is not None:
            ranges.append((key, v, limit))
    bounds = torch.stack([torch.stack(v.to(torch.int64).aminmax()).to(ids.device)
                          for _, v, _ in ranges]).tolist()  # the tensors move to the model later
    for (key, _, limit), (lo, hi) in zip(ranges, bounds):
        if lo < 0 or hi >= limit:
            what = {"input_ids": "vocab_size", "token_type_ids": "type_vocab_size",
                    "position_ids": "max_position_embeddings"}[key]
            raise ValueError(f"batch[{key!r}] must lie in [0, {what}={limit}), got values in "
                             f"[{lo}, {hi}]")


def model_inputs(batch, device, *, labels: bool):
    if not is_mapping(batch) or "input_ids" not in batch:
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


def check_labels(model, batch) -> None:
    """The labels of a batch scored with the model's own task loss: tensors with one row per
    input row; integer class labels in range (an out-of-range target is an IndexError on the
    CPU and a device assert on CUDA). -100 (ignored) is allowed where the loss ignores it."""
    from transformers import (BertForMaskedLM, BertForMultipleChoice, BertForNextSentencePrediction,
                              BertForPreTraining, BertForSequenceClassification,
                              BertForTokenClassification, BertLMHeadModel)

    ids = batch["input_ids"]
    for key in LABEL_KEYS:
        v = batch[key] if key in batch else None
        if v is None:
            continue
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"batch[{key!r}] must be a torch.Tensor, got {type(v).__name__}")
        if v.dim() == 0 or v.shape[0] != ids.shape[0]:
            raise ValueError(f"batch[{key!r}] must have one row per input row "
                             f"(B={ids.shape[0]}), got shape {tuple(v.shape)}")
    cfg = model.config
    limits = {}
    if isinstance(model, (BertForMaskedLM, BertForPreTraining, BertLMHeadModel)):
        limits["labels"] = ("vocab_size", cfg.vocab_size)
    elif isinstance(model, BertForMultipleChoice) and ids.dim() == 3:
        limits["labels"] = ("the number of choices", ids.shape[1])
    elif isinstance(model, (BertForSequenceClassification, BertForTokenClassification)) and \
            cfg.num_labels > 1 and cfg.problem_type in (None, "single_label_classification"):
        limits["labels"] = ("num_labels", cfg.num_labels)
    if isinstance(model, (BertForPreTraining, BertForNextSentencePrediction)):
        limits["next_sentence_label"] = ("2 (is next / is not)", 2)
        if isinstance(model, BertForNextSentencePrediction):
            limits["labels"] = limits["next_sentence_label"]
    for key, (what, limit) in limits.items():
        v = batch[key] if key in batch else None
        if v is None or v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
            continue
        v = v.long()  # uint8/int8 labels would wrap -100 and the limit
        bad = ((v < 0) & (v != -100)) | (v >= limit)
        if bool(bad.any()):
            raise ValueError(f"batch[{key!r}] must lie in [0, {what}={limit}) (or be -100, "
                             f"ignored), got {v[bad].unique()[:5].tolist()}")


def select_rows(inputs: dict, rows, length: int | None = None) -> dict:
    """``inputs`` (model inputs and labels, batch-first) for the given rows, with the token
    axis of the 2-D inputs trimmed to ``length`` (these rows' longest real length; derived
    from the attention mask, a host sync, when not given)."""
    n = inputs["input_ids"].shape[0]
    idx = torch.as_tensor(rows, dtype=torch.long, device=inputs["input_ids"].device)
    attn = inputs.get("attention_mask")
    if length is None and attn is not None:
        length = max(row_lengths({"attention_mask": attn[idx]}))
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
