"""Importance scoring for Extract-then-Distill: heads, FFN neurons and hidden dimensions.

``importance(model, batches)`` runs ONE forward and ONE backward per batch and scores all
three unit kinds from that pass (ETD-Impt, Chen et al. 2021):

* head h of layer l:  |sum ctx_h * dL/dctx_h|  (= |dL/dxi_h| for a head-mask gate xi = 1,
  Michel et al. 2019), summed over the batch's tokens and the head's dims;
* FFN neuron n:       |sum W1[n,:] dW1[n,:] + b1[n] db1[n]| + |sum W2[:,n] dW2[:,n]|;
* hidden dimension d: sum over parameter groups (:func:`kdfast.etd._bert.hidden_groups`) of
  |sum of W * dW over the group's slice of d|.

Fast path: every parameter Taylor sum above equals a sum of activation x gradient at a
module boundary (for Y = X W^T + b:  sum_j W[n,j] dW[n,j] + b[n] db[n] = sum_t Y[t,n] dY[t,n]
and sum_o W[o,d] dW[o,d] = sum_t X[t,d] dX_W[t,d]; LayerNorm and Embedding likewise). So the
parameters are frozen during scoring (no weight-gradient GEMMs at all), forward hooks grab the
activations and tensor hooks their gradients, and the fused ``kdfast::unit_taylor`` kernel
(C++ on CPU, CUDA on GPU) reduces each pair in one read. Since every score is a sum over real
tokens, a padded batch can run as groups of rows of similar length, each trimmed to its own
longest row (``unpad``): far fewer padded tokens, the same scores. The reference
(:func:`kdfast.etd.headmask.importance_reference`) computes the same numbers from a
head-mask gate and autograd parameter gradients.

Aggregation and normalisation (documented contract):
* gradients are per batch (zeroed between batches); the absolute value is taken per batch and
  per group, then averaged over batches (``heads_raw``, ``ffn``, ``hidden``, ``attn``);
* ``heads`` is ``heads_raw`` L2-normalised per layer (each row has unit norm; an all-zero row
  stays zero), so heads compare across layers as in Michel et al.; FFN and hidden scores are
  not normalised (they are only ranked within a layer / globally).
* ``attn`` [n_layers, n_heads * head_dim] is |sum ctx * dctx| per attention dimension; it ranks
  the dims inside a head when extraction keeps fewer dims per head than the teacher.

Default loss: the model's task loss when it has a head and the batch has labels; otherwise the
label-free proxy :class:`MaskedProxyLoss`. ``loss_fn(outputs, batch) -> scalar`` may be any
callable on the model's outputs; an object with ``compute(model, batch, activate)`` takes over
the whole forward (like the proxy).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kdfast.etd import _bert
from kdfast.ops.importance import resolve, unit_taylor


@dataclass
class Importance:
    """Importance scores (float32 on CPU); see the module docstring for the normalisation."""

    heads: torch.Tensor | None  # [n_layers, n_heads], L2-normalised per layer
    ffn: torch.Tensor | None  # [n_layers, intermediate_size]
    hidden: torch.Tensor | None  # [hidden_size]
    heads_raw: torch.Tensor | None = None  # [n_layers, n_heads], before normalisation
    attn: torch.Tensor | None = None  # [n_layers, n_heads * head_dim]
    num_batches: int = 0
    num_sentences: int = 0
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def save(self, path) -> None:
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "Importance":
        return cls(**torch.load(path, weights_only=True))


class MaskedProxyLoss:
    """Label-free proxy loss for encoders without a task head (as MiniLM-style encoders are).

    MSE between the encoder's last hidden state on token-masked input and its own detached
    last hidden state on the clean input, over real (attention-mask) tokens. ``mask_prob`` of
    the real tokens after the first ([CLS]) are replaced by ``mask_token_id`` (default: 103,
    BERT's [MASK], or the last vocabulary id for a smaller vocabulary). Masks are drawn from a
    generator seeded with ``seed``, so two scorings of the same batches see the same masks.
    The clean pass runs under ``torch.no_grad``; it is the proxy's target, not part of scoring.
    """

    def __init__(self, mask_prob: float = 0.15, mask_token_id: int | None = None, seed: int = 0):
        if isinstance(mask_prob, bool) or not isinstance(mask_prob, (int, float)) \
                or not 0 < mask_prob <= 1:
            raise ValueError(f"mask_prob must be a number in (0, 1], got {mask_prob!r}")
        if mask_token_id is not None and (isinstance(mask_token_id, bool)
                                          or not isinstance(mask_token_id, int)
                                          or mask_token_id < 0):
            raise ValueError("mask_token_id must be a token id >= 0 or None, "
                             f"got {mask_token_id!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.mask_prob = float(mask_prob)
        self.mask_token_id = mask_token_id
        self.generator = torch.Generator().manual_seed(seed)

    def mask(self, input_ids, attention_mask, vocab_size):
        mask_id = self.mask_token_id
        if mask_id is None:
            mask_id = 103 if vocab_size > 103 else vocab_size - 1
        elif mask_id >= vocab_size:
            raise ValueError(f"mask_token_id={mask_id} is not in the model's vocabulary "
                             f"(vocab_size={vocab_size})")
        draw = torch.rand(input_ids.shape, generator=self.generator).to(input_ids.device)
        pick = (draw < self.mask_prob) & attention_mask.bool()
        pick[:, 0] = False
        return torch.where(pick, torch.full_like(input_ids, mask_id), input_ids)

    def compute(self, model, batch, activate, groups=None, lengths=None):
        """The proxy loss of ``batch``; ``groups`` (lists of row indices, see
        :func:`length_groups`) runs the rows group by group, each trimmed to its longest row:
        the same loss (the masks are drawn for the whole batch, the denominator counts the
        whole batch's tokens), with fewer padded tokens through the model. ``lengths`` (each
        row's real length, as given to :func:`length_groups`) saves re-reading them."""
        base = _bert.base_model(model)
        device = next(model.parameters()).device
        inputs = _bert.model_inputs(batch, device, labels=False)
        ids = inputs["input_ids"]
        attn = inputs.get("attention_mask")
        if attn is None:
            attn = torch.ones_like(ids)
        masked = dict(inputs, input_ids=self.mask(ids, attn, base.config.vocab_size))
        inputs["attention_mask"] = masked["attention_mask"] = attn
        parts = [(inputs, masked)] if groups is None else [
            (_bert.select_rows(inputs, g, n), _bert.select_rows(masked, g, n))
            for g, n in zip(groups, _group_lengths(groups, lengths))]
        with torch.no_grad():
            targets = [base(**clean).last_hidden_state for clean, _ in parts]
        activate()
        total = 0
        for (_, noisy), target in zip(parts, targets):
            out = base(**noisy).last_hidden_state
            w = noisy["attention_mask"].unsqueeze(-1).to(out.dtype)
            total = total + ((out - target) ** 2 * w).sum()
        return total / (attn.sum().to(total.dtype) * base.config.hidden_size).clamp_min(1)


def length_groups(lengths, overhead_tokens: int):
    """Rows grouped by length: the partition of the rows, sorted longest first, into runs
    that minimises the tokens computed when each run is padded to its own longest row, plus
    ``overhead_tokens`` per run (the fixed cost of one more, smaller forward)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):  # run order[i:j], padded to lengths[order[i]]
            cost = best[i] + (j - i) * lengths[order[i]] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _group_lengths(groups, lengths):
    """Each group's longest row length (None each when the lengths are not known)."""
    if lengths is None:
        return [None] * len(groups)
    return [max(lengths[i] for i in g) for g in groups]


def _grouped_loss(model, batch, loss_fn, activate, overhead_tokens):
    """The batch's loss computed over :func:`length_groups`, or None where kdfast cannot
    split the loss exactly: only the label-free proxy and the task loss of
    BertForSequenceClassification (a mean over rows) are split."""
    from transformers import BertForSequenceClassification

    lengths = _bert.row_lengths(batch)
    if lengths is None:
        return None
    groups = length_groups(lengths, overhead_tokens)
    if len(groups) == 1:
        return None
    if isinstance(loss_fn, MaskedProxyLoss):
        return loss_fn.compute(model, batch, activate, groups=groups, lengths=lengths)
    labels = batch.get("labels")
    if (loss_fn is not None or type(model) is not BertForSequenceClassification
            or labels is None or any(k in batch for k in _bert.LABEL_KEYS if k != "labels")
            or bool((labels == -100).any())):  # ignored rows would change the mean's count
        return None
    device = next(model.parameters()).device
    inputs = _bert.model_inputs(batch, device, labels=True)
    activate()
    n = len(lengths)
    return sum(model(**_bert.select_rows(inputs, g, m)).loss * (len(g) / n)
               for g, m in zip(groups, _group_lengths(groups, lengths)))


def check_loss_fn(loss_fn) -> None:
    if loss_fn is not None and not callable(loss_fn) and not hasattr(loss_fn, "compute"):
        raise TypeError("loss_fn must be None, a callable loss_fn(outputs, batch) -> scalar or "
                        f"an object with compute(model, batch, activate), got "
                        f"{type(loss_fn).__name__}")


def _loss_chooser(model, base, loss_fn):
    """batch -> the loss for it: ``loss_fn``, else the task loss when the model has a head and
    the batch has labels, else one :class:`MaskedProxyLoss` shared by all batches."""
    if loss_fn is not None:
        return lambda batch: loss_fn
    proxy = MaskedProxyLoss()
    return lambda batch: None if model is not base and _bert.has_labels(batch) else proxy


def _finish(heads_raw, ffn, hidden, count, sentences, attn=None) -> Importance:
    """Averages over batches, L2-normalises heads per layer, returns float32 scores."""
    if count == 0:
        raise ValueError("batches is empty: importance needs at least one batch")

    def avg(x):
        return None if x is None else (x / count).float().cpu()

    heads_raw, ffn, hidden, attn = avg(heads_raw), avg(ffn), avg(hidden), avg(attn)
    heads = None
    if heads_raw is not None:
        norm = heads_raw.norm(dim=-1, keepdim=True)
        heads = torch.where(norm > 0, heads_raw / norm.clamp_min(1e-30), heads_raw)
    return Importance(heads=heads, ffn=ffn, hidden=hidden, heads_raw=heads_raw, attn=attn,
                      num_batches=count, num_sentences=sentences)


class _Recorder:
    """Hooks that collect per-batch activation x gradient sums on a BertModel."""

    def __init__(self, base, *, heads, ffn, hidden, backend):
        cfg = base.config
        self.n_heads = cfg.num_attention_heads
        self.backend = backend
        self.active = False
        self.batch: dict = {}
        self.handles = []
        # Heads only: the graph can start at layer 0's context (nothing below it is scored),
        # which saves the backward through layer 0's Q/K/V and attention and the embeddings.
        self.context_leaf = heads and not (ffn or hidden)
        e = base.embeddings
        if not self.context_leaf:
            for name, emb in (("word", e.word_embeddings), ("pos", e.position_embeddings),
                              ("type", e.token_type_embeddings)):
                self.handles.append(emb.register_forward_hook(self._leaf(("h", name), hidden)))
        if hidden:
            self._out(e.LayerNorm, ("h", "emb_ln"))
        for i, layer in enumerate(base.encoder.layer):
            s = layer.attention.self
            if heads:
                self.handles.append(s.register_forward_hook(self._context(i)))
            if hidden:
                for name, lin in (("q", s.query), ("k", s.key), ("v", s.value),
                                  ("ffn_in", layer.intermediate.dense)):
                    self._in(lin, ("h", i, name))
                self._out(layer.attention.output.dense, ("h", i, "o"))
                self._out(layer.attention.output.LayerNorm, ("h", i, "attn_ln"))
                self._out(layer.output.dense, ("h", i, "ffn_out"))
                self._out(layer.output.LayerNorm, ("h", i, "out_ln"))
            if ffn:
                self._out(layer.intermediate.dense, ("f", i, "w1"))
                self._out(layer.intermediate, ("f", i, "w2"))
        if hidden and base.pooler is not None:
            self._in(base.pooler.dense, ("h", "pool_in"))
            self._out(base.pooler.dense, ("h", "pool_out"))

    def remove(self):
        for h in self.handles:
            h.remove()

    def _record(self, key, act, units=None):
        act = act.detach()

        def on_grad(grad):  # added up over the length groups of one batch
            v = unit_taylor(act, grad, units, backend=self.backend)
            self.batch[key] = self.batch[key] + v if key in self.batch else v

        return on_grad

    def _leaf(self, key, record):
        # Parameters are frozen, so the graph starts at the embedding outputs: make them
        # leaves that require grad. The word-embedding rows of padding_idx get no weight
        # gradient in nn.Embedding, so their tokens are left out of the sum.
        def hook(module, args, output):
            if not self.active:
                return output
            out = output.detach().requires_grad_(True)
            if record:
                pad = module.padding_idx
                fn = self._record(key, out)
                if pad is not None:
                    keep = (args[0] != pad).unsqueeze(-1).to(out.dtype)
                    out.register_hook(lambda g: fn(g * keep))
                else:
                    out.register_hook(fn)
            return out
        return hook

    def _out(self, module, key):
        def hook(mod, args, output):
            if self.active and output.requires_grad:
                output.register_hook(self._record(key, output))
        self.handles.append(module.register_forward_hook(hook))

    def _in(self, module, key):
        # An alias of the input gets exactly this module's share of the input gradient.
        def pre(mod, args):
            if not self.active or not args[0].requires_grad:
                return None
            x = args[0].view_as(args[0])
            x.register_hook(self._record(key, x))
            return (x,) + tuple(args[1:])
        self.handles.append(module.register_forward_pre_hook(pre))

    def _context(self, i):
        def hook(mod, args, output):
            if not self.active:
                return None
            ctx = output[0]
            if i == 0 and self.context_leaf:
                ctx = ctx.detach().requires_grad_(True)
            if ctx.requires_grad:
                ctx.register_hook(self._record(("a", i), ctx))
            return (ctx,) + tuple(output[1:])
        return hook


def importance(model, batches, *, loss_fn=None, num_batches: int | None = None,
               heads: bool = True, ffn: bool = True, hidden: bool = True,
               backend: str = "auto", unpad: bool = True,
               unpad_overhead_tokens: int | None = None, progress: bool = False) -> Importance:
    """Scores heads, FFN neurons and hidden dims of a BERT-family model on ``batches``.

    ``model``: a transformers ``BertModel`` or ``BertFor*`` (the all-MiniLM-L6-v2 teacher is a
    BertModel). ``batches``: an iterable of mappings with ``input_ids`` and optionally
    ``attention_mask``, ``token_type_ids`` and labels, or one such mapping (one batch);
    ``num_batches`` caps how many are used. Each batch is checked before the model runs
    (:func:`kdfast.etd._bert.check_batch`: ids in the vocabulary, B and L >= 1, shapes; labels
    in range for the task loss): ValueError/TypeError naming the key.
    ``loss_fn``: see the module docstring; a NaN loss gives NaN scores, which
    :func:`~kdfast.etd.extract` refuses. ``backend`` picks the reduction kernel
    (``auto``/``cpu``/``cuda``/``reference``; the shared rule of ``kdfast.ops._backend``). The model is scored in eval mode (no dropout)
    with its parameters frozen; both are restored afterwards, and no ``.grad`` is left behind.

    ``unpad``: run a padded batch's rows in groups of similar length, each trimmed to its own
    longest row (:func:`length_groups`, ``unpad_overhead_tokens`` per extra group; default 64
    on a CPU, the fastest of 0-512 on the dev machine at B=32, L<=64; 4096 on a GPU, where
    small forwards cost launches: a guess, not yet measured), so that padding costs
    little; every score is a sum over real tokens, so they do not change (up to rounding).
    Done for the losses kdfast can split exactly (the label-free proxy and the
    BertForSequenceClassification task loss); other losses see the whole batch.
    """
    base = _bert.base_model(model)
    _bert.check_encoder(base)
    for name, flag in (("heads", heads), ("ffn", ffn), ("hidden", hidden), ("unpad", unpad)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if not (heads or ffn or hidden):
        raise ValueError("at least one of heads, ffn, hidden must be True")
    check_loss_fn(loss_fn)
    if unpad_overhead_tokens is not None and (isinstance(unpad_overhead_tokens, bool) or
                                              not isinstance(unpad_overhead_tokens, int) or
                                              unpad_overhead_tokens < 0):
        raise ValueError("unpad_overhead_tokens must be an int >= 0 or None, "
                         f"got {unpad_overhead_tokens!r}")
    cfg = base.config
    n_layers, n_heads, head_dim = (cfg.num_hidden_layers, cfg.num_attention_heads,
                                   cfg.hidden_size // cfg.num_attention_heads)
    choose = _loss_chooser(model, base, loss_fn)
    p0 = next(model.parameters())
    resolve(backend, p0.device)  # a bad backend fails here, not inside a backward hook
    if unpad_overhead_tokens is None:
        unpad_overhead_tokens = 64 if p0.device.type == "cpu" else 4096
    # Totals live on the model's device: no host sync until the end (but unpad reads each
    # batch's row lengths on the host: a sync per batch when the batches are on a GPU).
    zeros = dict(dtype=torch.float64 if p0.dtype == torch.float64 else torch.float32,
                 device=p0.device)
    heads_tot = torch.zeros(n_layers, n_heads, **zeros) if heads else None
    attn_tot = torch.zeros(n_layers, n_heads * head_dim, **zeros) if heads else None
    ffn_tot = torch.zeros(n_layers, cfg.intermediate_size, **zeros) if ffn else None
    hidden_tot = torch.zeros(cfg.hidden_size, **zeros) if hidden else None

    it = _bert.take(batches, num_batches)  # TypeError for a non-iterable before any work
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=num_batches, desc="scoring", unit="batch")
    rec = _Recorder(base, heads=heads, ffn=ffn, hidden=hidden, backend=backend)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    count = sentences = 0
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():  # scoring also works inside a caller's torch.no_grad()
            for batch in it:
                _bert.check_batch(batch, cfg, multiple_choice=_bert.is_multiple_choice(model))
                rec.batch = {}
                activate = lambda: setattr(rec, "active", True)  # noqa: E731
                loss_fn_b = choose(batch)
                if loss_fn_b is None:  # the model's own task loss reads the labels
                    _bert.check_labels(model, batch)
                loss = (_grouped_loss(model, batch, loss_fn_b, activate, unpad_overhead_tokens)
                        if unpad else None)
                if loss is None:
                    loss = _bert.batch_loss(model, batch, loss_fn_b, activate)
                rec.active = False
                if not loss.requires_grad:
                    raise ValueError("the loss does not depend on the model's activations")
                loss.backward()
                _accumulate(rec.batch, n_heads, heads_tot, attn_tot, ffn_tot, hidden_tot)
                count += 1
                sentences += _bert.batch_size(batch)
    finally:
        rec.active = False
        rec.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return _finish(heads_tot, ffn_tot, hidden_tot, count, sentences, attn=attn_tot)


def _accumulate(sums, n_heads, heads_tot, attn_tot, ffn_tot, hidden_tot):
    for key, v in sums.items():
        v = v.detach()
        kind = key[0]
        if kind == "a":
            i = key[1]
            heads_tot[i] += v.to(heads_tot.dtype).reshape(n_heads, -1).sum(-1).abs()
            attn_tot[i] += v.to(attn_tot.dtype).abs()
        elif kind == "f":
            ffn_tot[key[1]] += v.to(ffn_tot.dtype).abs()
        else:
            hidden_tot += v.to(hidden_tot.dtype).abs()
