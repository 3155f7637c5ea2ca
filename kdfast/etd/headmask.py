"""The head-mask + Taylor procedure: ETD importance scores computed the textbook way, which
the fast path of :func:`kdfast.etd.importance` must reproduce (tests) and is measured against
(``kdfast bench etd``, ``headmask+taylor``).

- heads: a head-mask gate xi (ones, requires grad) multiplies each head's context (the
  transformers 5.x replacement of the removed ``head_mask``: context is linear in a mask on
  the attention probabilities, so the gradient is the same); score = |dL/dxi_h|;
- FFN neuron n: |sum_j W1[n,j] dW1[n,j] + b1[n] db1[n]| + |sum_j W2[j,n] dW2[j,n]|
  from plain autograd parameter gradients;
- hidden dim d: sum over the parameter groups of |sum of W * dW over the slice of d|
  (groups listed in :func:`kdfast.etd._bert.hidden_groups`).

Gradients are zeroed between batches; per-batch absolute values are averaged over batches;
head scores are then L2-normalised per layer, exactly as the fast path finishes (it shares
:func:`kdfast.etd.importance._finish` and the loss choice with it).
"""
from __future__ import annotations

import torch

from kdfast.etd import _bert
from kdfast.etd.importance import _finish, _loss_chooser


def importance_reference(model, batches, *, loss_fn=None, num_batches=None):
    """Head-mask gradients + autograd Taylor sums; returns a kdfast.etd.Importance."""
    base = _bert.base_model(model)
    cfg = base.config
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = cfg.hidden_size // n_heads
    dtype = next(model.parameters()).dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    dev = next(model.parameters()).device
    # One gate per attention dim: dL/dxi_h of a head gate is the sum of its dims' gradients
    # (and the per-dim gradients give the ``attn`` scores).
    gates = [torch.ones(n_heads * head_dim, dtype=dtype, device=dev, requires_grad=True)
             for _ in range(n_layers)]
    active = [False]

    def gate_hook(i):
        def hook(module, args, output):
            if not active[0]:
                return output
            ctx = output[0]
            return (ctx * gates[i],) + tuple(output[1:])
        return hook

    handles = [layer.attention.self.register_forward_hook(gate_hook(i))
               for i, layer in enumerate(base.encoder.layer)]
    heads = torch.zeros(n_layers, n_heads, dtype=acc)
    attn = torch.zeros(n_layers, n_heads * head_dim, dtype=acc)
    ffn = torch.zeros(n_layers, cfg.intermediate_size, dtype=acc)
    hidden = torch.zeros(cfg.hidden_size, dtype=acc)
    groups = _bert.hidden_groups(base)
    choose = _loss_chooser(model, base, loss_fn)
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    untie = _bert.untie_output_embeddings(model)
    count = sentences = 0
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(True)
        for batch in _bert.take(batches, num_batches):
            _bert.check_batch(batch, cfg, multiple_choice=_bert.is_multiple_choice(model))
            if choose(batch) is None:
                _bert.check_labels(model, batch)
            model.zero_grad(set_to_none=True)
            for g in gates:
                g.grad = None
            loss = _bert.batch_loss(model, batch, choose(batch),
                                    lambda: active.__setitem__(0, True))
            loss.backward()
            active[0] = False
            for i, g in enumerate(gates):
                if g.grad is not None:
                    grad = g.grad.detach().to(acc).cpu()
                    heads[i] += grad.reshape(n_heads, head_dim).sum(-1).abs()
                    attn[i] += grad.abs()
            for i, layer in enumerate(base.encoder.layer):
                w1, w2 = layer.intermediate.dense, layer.output.dense
                ffn[i] += (_taylor(w1.weight, 1) + _taylor(w1.bias, None)).abs().cpu()
                ffn[i] += _taylor(w2.weight, 0).abs().cpu()
            for params in groups:
                hidden += sum(_taylor(p, axis) for p, axis in params).abs().cpu()
            count += 1
            sentences += _bert.batch_size(batch)
    finally:
        active[0] = False
        for h in handles:
            h.remove()
        untie()
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    return _finish(heads, ffn, hidden, count, sentences, attn=attn)


def _taylor(p: torch.Tensor, reduce_dim):
    """sum of p * dL/dp, keeping the unit axis: reduce_dim is the axis summed (None: 1-D)."""
    acc = torch.float64 if p.dtype == torch.float64 else torch.float32
    if p.grad is None:
        n = p.shape[0] if reduce_dim in (None, 1) else p.shape[1]
        return torch.zeros(n, dtype=acc, device=p.device)
    prod = p.detach().to(acc) * p.grad.detach().to(acc)
    return prod if reduce_dim is None else prod.sum(reduce_dim)
