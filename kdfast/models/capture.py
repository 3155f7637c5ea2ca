"""Capture the raw attention scores of a HuggingFace model during its forward pass.

TinyBERT's attention loss (and MiniLM's attention KL) needs the raw scores
``QK^T / sqrt(d) + additive mask`` of every layer, which transformers 5.x does not return
(``output_attentions=True`` gives post-softmax probabilities, eager attention only). This
module registers an attention implementation named ``"kdfast_capture"`` through
transformers' public ``AttentionInterface`` / ``AttentionMaskInterface`` registries -- it
computes exactly what the eager implementation computes and records the scores on the way
-- and switches a model to it for the duration of a ``with`` block::

    with capture_attention_scores(teacher) as t_cap, torch.no_grad():
        teacher(input_ids, attention_mask=mask)
    with capture_attention_scores(student) as s_cap:
        student(input_ids, attention_mask=mask)
    loss = kdfast.losses.attention_mse(s_cap.scores, [t_cap.scores[i] for i in idx])

``scores`` is the list of [B, H, L, L] tensors in call order (layer order for BERT-like
encoders); they stay in the autograd graph, so the student's can be differentiated. Padded
keys carry the model's additive mask value (``torch.finfo(dtype).min`` in transformers 5.x,
-10000 in older code): both are <= -100, so ``mode="tinybert"`` zeroes them as the official
code does. Works for any model whose attention goes through ``ALL_ATTENTION_FUNCTIONS``
(BERT, RoBERTa, ...); nothing in transformers is edited. Nesting the context on the same
model is not supported.
"""
from __future__ import annotations

import contextlib
import threading

import torch

IMPLEMENTATION = "kdfast_capture"
_local = threading.local()
_registered = False


class CapturedAttention:
    """What one ``capture_attention_scores`` block recorded."""

    def __init__(self):
        self.scores: list[torch.Tensor] = []  # raw scores per attention call, [B, H, L, L]
        self.modules: list[torch.nn.Module] = []  # the attention module of each call

    def clear(self) -> None:
        self.scores.clear()
        self.modules.clear()


def _capturing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         **kwargs):
    """transformers' eager attention, recording the scores before the softmax."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    for sink in getattr(_local, "sinks", ()):
        if module in sink[1]:
            sink[0].scores.append(scores)
            sink[0].modules.append(module)
    probs = torch.nn.functional.softmax(scores, dim=-1)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, _capturing_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)  # the eager additive mask
    _registered = True


def _configs(model):
    seen = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen[id(cfg)] = cfg
    return list(seen.values())


@contextlib.contextmanager
def capture_attention_scores(model):
    """Context manager: inside it, every forward of ``model`` records its raw attention scores
    (see the module docstring); yields a :class:`CapturedAttention`. The model's attention
    implementation is restored on exit."""
    _register()
    captured = CapturedAttention()
    configs = _configs(model)
    if not configs:
        raise ValueError("capture_attention_scores needs a HuggingFace model (no config with an attention implementation found)")
    saved = [cfg._attn_implementation for cfg in configs]
    sink = (captured, set(model.modules()))
    sinks = getattr(_local, "sinks", [])
    _local.sinks = sinks + [sink]
    try:
        for cfg in configs:
            cfg._attn_implementation = IMPLEMENTATION
        yield captured
    finally:
        for cfg, impl in zip(configs, saved):
            cfg._attn_implementation = impl
        _local.sinks = [s for s in _local.sinks if s is not sink]


class CapturedQKV:
    """What one ``capture_qkv`` block recorded: per self-attention call (layer order for
    BERT-like encoders), the projections after the Linear layers as [B, H, L, d_head] tensors
    (views of the Linear outputs: no copy, still in the autograd graph)."""

    def __init__(self):
        self.queries: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.modules: list[torch.nn.Module] = []  # the self-attention module of each call

    def clear(self) -> None:
        for lst in (self.queries, self.keys, self.values, self.modules):
            lst.clear()


def _self_attentions(model):
    """Modules with ``query``/``key``/``value`` Linear projections and a head size (BERT,
    RoBERTa, ELECTRA, ... ``*SelfAttention``)."""
    found = []
    for m in model.modules():
        if all(isinstance(getattr(m, n, None), torch.nn.Linear) for n in ("query", "key", "value")):
            size = getattr(m, "attention_head_size", None)
            if isinstance(size, int) and size > 0:
                found.append(m)
    return found


@contextlib.contextmanager
def capture_qkv(model):
    """Context manager: inside it, every forward of ``model`` records each self-attention
    layer's Q, K and V after the projections ([B, H, L, d_head]) through forward hooks on the
    ``attention.self.query/key/value`` Linear modules; yields a :class:`CapturedQKV`. The
    model keeps its attention implementation (SDPA, flash, eager): pair it with the map-free
    losses of :mod:`kdfast.losses.relation` (``attention_kl_qk``, ``attention_mse_qk``,
    ``relation_kl``). ``Q K^T / sqrt(d_head)`` are exactly the scores (before the additive mask)
    that :func:`capture_attention_scores` records. Hooks are removed on exit."""
    layers = _self_attentions(model)
    if not layers:
        raise ValueError("capture_qkv needs a BERT-family model: no self-attention module with "
                         "query/key/value Linear projections and attention_head_size found")
    captured = CapturedQKV()
    handles = []

    def hook(module, sink, record_module):
        size = module.attention_head_size

        def fn(_linear, _inputs, output):
            sink.append(output.view(*output.shape[:-1], -1, size).transpose(-3, -2))
            if record_module:
                captured.modules.append(module)
        return fn

    try:
        for m in layers:
            handles.append(m.query.register_forward_hook(hook(m, captured.queries, True)))
            handles.append(m.key.register_forward_hook(hook(m, captured.keys, False)))
            handles.append(m.value.register_forward_hook(hook(m, captured.values, False)))
        yield captured
    finally:
        for h in handles:
            h.remove()
