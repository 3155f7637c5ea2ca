"""Intermediate-layer distillation losses: TinyBERT attention and hidden-state losses, MiniLM
attention-distribution and value-relation transfer, and sentence-vector approximation (SRA).

Attention losses take the maps of already-mapped layer pairs (see :func:`layer_map`) either as
sequences of per-layer tensors [B, H, L, L] or as stacked tensors [n_layers, B, H, L, L]
(a single [B, H, L, L] tensor counts as one layer), in float32, bfloat16, float16 (or
float64). All layers run in ONE fused kernel launch that reads each layer in place, with
float32 accumulation; the loss is float32 (float64 for float64) and the student gradient,
computed in the forward pass, comes back in the input dtype.

``attention_mask`` is the usual [B, L] padding mask (1/True = real token) as bool, integer
or 0/1 floats. To capture the raw scores (QK^T/sqrt(d) + mask) of a HuggingFace model, see
:func:`kdfast.models.capture.capture_attention_scores`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kdfast.ops import _checks
from kdfast.ops.attention import KINDS, attention_loss

MODES = ("tinybert", "masked")
INPUTS = ("scores", "probs")


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_layers(name: str, value) -> list[torch.Tensor]:
    """A list of [B, H, L, L] tensors from a sequence, a stacked 5-D tensor or one 4-D map."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 5:
            return list(value.unbind(0))  # views: no copy
        if value.dim() == 4:
            return [value]
        raise ValueError(
            f"{name} must be [n_layers, B, H, L, L], [B, H, L, L] or a sequence of [B, H, L, L] "
            f"tensors, got a tensor of shape {tuple(value.shape)}"
        )
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a tensor or a sequence of tensors, got {type(value).__name__}")
    if len(value) == 0:
        raise ValueError(f"{name} must hold at least one layer, got an empty sequence")
    out = []
    for i, x in enumerate(value):
        _checks.tensor(f"{name}[{i}]", x)
        if x.dim() != 4:
            raise ValueError(f"{name}[{i}] must be [B, H, L, L], got shape {tuple(x.shape)}")
        out.append(x)
    return out


def _check_maps(s_name, student, t_name, teacher):
    s = _as_layers(s_name, student)
    t = _as_layers(t_name, teacher)
    if len(s) != len(t):
        raise ValueError(
            f"{s_name} has {len(s)} layers but {t_name} has {len(t)}: map the layers first "
            "(kdfast.losses.layer_map)"
        )
    ref = s[0]
    _checks.tensor(f"{s_name}[0]", ref)
    bsz, heads, length, keys = ref.shape
    if length != keys:
        raise ValueError(f"{s_name}[0] must be square in its last two dims [B, H, L, L], got {tuple(ref.shape)}")
    for i, (a, b) in enumerate(zip(s, t)):
        for nm, x in ((f"{s_name}[{i}]", a), (f"{t_name}[{i}]", b)):
            _checks.tensor(nm, x)
            _checks.same(f"{s_name}[0]", ref, nm, x, shape=False)
            if x.shape[1] != heads:
                raise ValueError(
                    f"{nm} has {x.shape[1]} heads but {s_name}[0] has {heads}: head counts must match "
                    f"(shapes {tuple(x.shape)} and {tuple(ref.shape)})"
                )
            if tuple(x.shape[2:]) != (length, length):
                raise ValueError(
                    f"{nm} has sequence length {tuple(x.shape[2:])} but {s_name}[0] has "
                    f"{(length, length)} (shapes {tuple(x.shape)} and {tuple(ref.shape)})"
                )
            if x.shape[0] != bsz:
                raise ValueError(f"{nm} has batch size {x.shape[0]} but {s_name}[0] has {bsz}")
    return s, t


def _mask(mask, bsz: int, length: int, like: torch.Tensor, *, required: bool = False,
          name: str = "attention_mask") -> torch.Tensor | None:
    """The [B, L] padding mask as 0/1 in the accumulation dtype (None stays None)."""
    if mask is None:
        if required:
            raise ValueError(f"{name} is required here (a [B, L] padding mask, 1 = real token)")
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, L], got {type(mask).__name__}")
    if tuple(mask.shape) != (bsz, length):
        raise ValueError(f"{name} must have shape {(bsz, length)} ([B, L]), got {tuple(mask.shape)}")
    if mask.device != like.device:
        raise ValueError(f"{name} is on {mask.device} but the inputs are on {like.device}")
    if mask.is_complex():
        raise TypeError(f"{name} must be bool, integer or float, got {mask.dtype}")
    return (mask != 0).to(_acc(like.dtype))


def _scalar(value, like):
    return torch.full((1,), value, dtype=_acc(like.dtype), device=like.device)


def _finish(losses: torch.Tensor, dtype) -> torch.Tensor:
    out = losses.sum()
    return out if dtype == torch.float64 else out.float()


def attention_mse(student_attentions, teacher_attentions, *, attention_mask=None, mode="tinybert",
                  inputs="scores", backend="auto"):
    """TinyBERT's attention loss, summed over the mapped layers.

    ``mode="tinybert"`` reproduces the official code exactly: with ``inputs="scores"`` (the raw
    QK^T/sqrt(d) + additive mask), entries <= -100 are set to 0 in both student and teacher,
    then MSE averaged over B*H*L*L per layer (padded query rows count, as in the official
    code; ``attention_mask`` is not needed and is ignored). ``mode="masked"`` averages only
    over real query x real key pairs given ``attention_mask`` (required), i.e. over
    H * sum_b n_b^2 entries per layer. ``inputs="probs"`` takes attention probabilities
    (``output_attentions=True``): no entry is zeroed.
    """
    _checks.choice("mode", mode, MODES)
    _checks.choice("inputs", inputs, INPUTS)
    s, t = _check_maps("student_attentions", student_attentions, "teacher_attentions",
                       teacher_attentions)
    bsz, heads, length, _ = s[0].shape
    if mode == "tinybert":
        kind = KINDS["tinybert"] if inputs == "scores" else KINDS["mse"]
        mask = None
        scale = _scalar(1.0 / max(1, bsz * heads * length * length), s[0])
    else:
        mask = _mask(attention_mask, bsz, length, s[0], required=True)
        n = mask.sum(1)
        scale = (1.0 / (heads * (n * n).sum()).clamp_min(1)).reshape(1)
        kind = KINDS["mse"]
    return _finish(attention_loss(s, t, mask, scale, kind, 1.0, backend), s[0].dtype)


def attention_kl(student_scores, teacher_scores, *, attention_mask, temperature=1.0, backend="auto"):
    """MiniLM self-attention distribution transfer from raw scores.

    ``KL(softmax(teacher_row / T) || softmax(student_row / T))`` per head and per real query
    row, the softmax fused in the kernel and taken over real keys only (``attention_mask``
    [B, L], or None for no padding; padded keys are excluded whatever their score).
    Averaged over heads and real query rows (H * sum_b n_b rows) per layer, summed over
    layers; no T^2 factor (MiniLM uses T = 1). Scores may already include the additive mask.
    """
    temperature = _checks.temperature(temperature)
    s, t = _check_maps("student_scores", student_scores, "teacher_scores", teacher_scores)
    bsz, heads, length, _ = s[0].shape
    mask = _mask(attention_mask, bsz, length, s[0])
    if mask is None:
        scale = _scalar(1.0 / max(1, bsz * heads * length), s[0])
    else:
        scale = (1.0 / (heads * mask.sum()).clamp_min(1)).reshape(1)
    return _finish(attention_loss(s, t, mask, scale, KINDS["kl"], temperature, backend), s[0].dtype)


def _values(name, v, heads):
    _checks.tensor(name, v)
    if v.dim() == 4:  # [B, H, L, d] per-head values -> [B, L, H*d] (a copy)
        merged = v.transpose(1, 2).reshape(v.shape[0], v.shape[2], -1)
        return merged, (v.shape[1] if heads is None else heads)
    if v.dim() == 3:
        if heads is None:
            raise ValueError(
                f"{name} is [B, L, D] {tuple(v.shape)}: pass num_relation_heads (or give [B, H, L, d] values)"
            )
        return v, heads
    raise ValueError(f"{name} must be [B, L, D] or [B, H, L, d], got shape {tuple(v.shape)}")


def value_relation_kl(student_values, teacher_values, *, attention_mask, num_relation_heads=None,
                      backend="auto"):
    """MiniLM value-relation transfer: per relation head, ``KL(softmax(V_T V_T^T / sqrt(d_T)) ||
    softmax(V_S V_S^T / sqrt(d_S)))`` over real query rows and real keys, averaged over
    relation heads and real rows.

    Values are [B, L, D] (then ``num_relation_heads`` splits D, MiniLMv2 style) or per-head
    [B, H, L, d] (MiniLMv1: relation heads = attention heads unless ``num_relation_heads``
    re-splits them). Student and teacher widths may differ; the relation head counts must
    divide them. The fused CPU kernel never stores the L x L relation matrices.
    """
    from kdfast.ops.value_relation import value_relation

    if num_relation_heads is not None and (isinstance(num_relation_heads, bool)
                                           or not isinstance(num_relation_heads, int)
                                           or num_relation_heads < 1):
        raise ValueError(f"num_relation_heads must be a positive int or None, got {num_relation_heads!r}")
    vs, hs = _values("student_values", student_values, num_relation_heads)
    vt, ht = _values("teacher_values", teacher_values, num_relation_heads)
    _checks.same("student_values", vs, "teacher_values", vt, shape=False)
    if hs != ht:
        raise ValueError(
            f"student_values has {hs} heads but teacher_values has {ht}: pass num_relation_heads "
            "to use the same number of relation heads"
        )
    if vs.shape[:2] != vt.shape[:2]:
        raise ValueError(
            f"student_values and teacher_values must share [B, L], got {tuple(vs.shape[:2])} and "
            f"{tuple(vt.shape[:2])}"
        )
    for name, v in (("student_values", vs), ("teacher_values", vt)):
        if v.shape[-1] == 0:
            raise ValueError(f"{name} must have a width D >= 1, got shape {tuple(v.shape)}")
        if v.shape[-1] % hs:
            raise ValueError(f"{name} width {v.shape[-1]} is not divisible by {hs} relation heads")
    mask = _mask(attention_mask, vs.shape[0], vs.shape[1], vs)
    return value_relation(vs, vt, mask, hs, backend)


class Projection(nn.Linear):
    """TinyBERT's ``fit_dense``: one ``Linear(d_student, d_teacher)`` shared by every layer."""

    def __init__(self, student_dim: int, teacher_dim: int, bias: bool = True, **kwargs):
        super().__init__(student_dim, teacher_dim, bias=bias, **kwargs)


def _hidden_layers(name, value):
    if isinstance(value, torch.Tensor):
        return [value] if value.dim() == 3 else list(value.unbind(0)) if value.dim() == 4 else None
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        return list(value)
    raise ValueError(f"{name} must be [B, L, d], [n_layers, B, L, d] or a non-empty sequence of [B, L, d]")


def _project(projection, hs, i):
    """``projection(hs)``, with a clear error for a projection of the wrong input width."""
    want = getattr(projection, "in_features", None)
    if isinstance(want, int) and want != hs.shape[-1]:
        raise ValueError(
            f"projection takes width {want} but student_hidden[{i}] has width {hs.shape[-1]} "
            f"(shape {tuple(hs.shape)}): pass projection=Projection({hs.shape[-1]}, d_teacher)")
    if not callable(projection):
        raise TypeError(f"projection must be a module or callable, got {type(projection).__name__}")
    try:
        return projection(hs)
    except RuntimeError as exc:
        raise ValueError(f"projection failed on student_hidden[{i}] of shape {tuple(hs.shape)}: "
                         f"{exc}") from exc


def hidden_mse(student_hidden, teacher_hidden, *, projection=None, attention_mask=None,
               tinybert_compat=False):
    """MSE of ``projection(student)`` against the teacher over mapped layers, summed over layers.

    Layers are sequences of [B, L, d] (embedding output included when mapped so). Default:
    averaged over real tokens x d_T per layer (``attention_mask``; all tokens without one).
    ``tinybert_compat=True`` is the official code: plain ``MSELoss`` over B*L*d_T, padding
    included (``attention_mask`` ignored). ``projection`` is any module (e.g.
    :class:`Projection`), applied to every student layer. An empty batch (B = 0 or L = 0)
    gives 0 with a zero gradient, like an all-padded one; padded positions never contribute,
    whatever they hold (NaN included); a width of 0 raises ValueError.
    """
    _checks.flag("tinybert_compat", tinybert_compat)
    s = _hidden_layers("student_hidden", student_hidden)
    t = _hidden_layers("teacher_hidden", teacher_hidden)
    if s is None or t is None:
        raise ValueError("student_hidden/teacher_hidden must be [B, L, d] tensors or sequences of them")
    if len(s) != len(t):
        raise ValueError(f"student_hidden has {len(s)} layers but teacher_hidden has {len(t)}")
    total = None
    for i, (hs, ht) in enumerate(zip(s, t)):
        _checks.tensor(f"student_hidden[{i}]", hs)
        _checks.tensor(f"teacher_hidden[{i}]", ht)
        if hs.device != ht.device:
            raise ValueError(f"student_hidden[{i}] is on {hs.device} but teacher_hidden[{i}] is "
                             f"on {ht.device}")
        if hs.dim() != 3 or ht.dim() != 3 or hs.shape[:2] != ht.shape[:2]:
            raise ValueError(
                f"student_hidden[{i}] {tuple(hs.shape)} and teacher_hidden[{i}] {tuple(ht.shape)} "
                "must be [B, L, d] with the same B and L"
            )
        if ht.shape[-1] == 0 or hs.shape[-1] == 0:
            raise ValueError(f"student_hidden[{i}] {tuple(hs.shape)} and teacher_hidden[{i}] "
                             f"{tuple(ht.shape)} must have a width d >= 1")
        m = None if tinybert_compat else _mask(attention_mask, hs.shape[0], hs.shape[1], ht)
        if m is not None:  # padding zeroed on both sides: a NaN there reaches no gradient
            real = m.unsqueeze(-1) != 0
            hs, ht = (torch.where(real, x, torch.zeros((), dtype=x.dtype, device=x.device))
                      for x in (hs, ht))
        p = _project(projection, hs, i) if projection is not None else hs
        if p.shape[-1] != ht.shape[-1]:
            raise ValueError(
                f"student_hidden[{i}] has width {p.shape[-1]} (after projection) but teacher_hidden[{i}] "
                f"has {ht.shape[-1]}: pass projection=Projection({hs.shape[-1]}, {ht.shape[-1]})"
            )
        acc = _acc(p.dtype)
        diff = p.to(acc) - ht.to(acc)
        if m is None:
            layer = diff.pow(2).sum() / max(1, diff.numel())  # an empty batch (B or L = 0) gives 0
        else:  # the projection's bias makes padded rows nonzero: they are dropped again here
            diff = torch.where(real, diff, torch.zeros((), dtype=acc, device=diff.device))
            layer = diff.pow(2).sum() / (m.sum() * ht.shape[-1]).clamp_min(1)
        total = layer if total is None else total + layer
    return total if total.dtype == torch.float64 else total.float()


POOLS = ("cls", "mean", "max")


def pool(hidden, attention_mask=None, how="mean"):
    """Sentence vectors [B, d] from token states [B, L, d]: the ``cls`` (first) token, the
    ``mean`` over real tokens, or the ``max`` over real tokens (a row with no real token
    gives 0). Padded positions never contribute, whatever they hold (NaN included). ``hidden``
    with no token at all (L = 0) raises ValueError."""
    _checks.choice("how", how, POOLS)
    _checks.tensor("hidden", hidden)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, L, d], got shape {tuple(hidden.shape)}")
    if hidden.shape[1] == 0:
        raise ValueError(f"hidden must hold at least one token (L >= 1) to pool, got shape "
                         f"{tuple(hidden.shape)}")
    if how == "cls":
        return hidden[:, 0]
    m = _mask(attention_mask, hidden.shape[0], hidden.shape[1], hidden)
    if how == "mean":
        if m is None:
            return hidden.mean(1)
        w = m.to(hidden.dtype).unsqueeze(-1)
        kept = torch.where(w != 0, hidden * w, torch.zeros_like(hidden))
        return kept.sum(1) / w.sum(1).clamp_min(1)
    if m is None:
        return hidden.amax(1)
    real = (m != 0).unsqueeze(-1)
    out = hidden.masked_fill(~real, float("-inf")).amax(1)
    return torch.where(real.any(1), out, torch.zeros_like(out))


def sentence_approx(student_vectors, teacher_vectors, *, kind="mse"):
    """SRA: ``mse`` (mean over B x d, as ``nn.MSELoss``) or ``cosine`` (mean of 1 - cos) between
    student and teacher sentence vectors [B, d]; float32 result. B = 0 gives 0 (zero
    gradient); d = 0 raises ValueError."""
    _checks.choice("kind", kind, ("mse", "cosine"))
    _checks.tensor("student_vectors", student_vectors)
    _checks.tensor("teacher_vectors", teacher_vectors)
    _checks.same("student_vectors", student_vectors, "teacher_vectors", teacher_vectors)
    if student_vectors.dim() != 2 or student_vectors.shape[-1] == 0:
        raise ValueError(f"student_vectors must be [B, d] with d >= 1, got shape "
                         f"{tuple(student_vectors.shape)}")
    acc = _acc(student_vectors.dtype)
    s, t = student_vectors.to(acc), teacher_vectors.to(acc)
    # an empty batch (B = 0) gives 0 with a zero gradient, like an all-masked one
    if kind == "mse":
        sq = (s - t).pow(2)
        out = sq.sum() / max(1, sq.numel())
    else:
        per_row = 1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)
        out = per_row.sum() / max(1, per_row.numel())
    return out if acc == torch.float64 else out.float()


def layer_map(teacher_layers: int, student_layers: int, strategy="uniform", *,
              include_embeddings: bool = False) -> list[int]:
    """0-based teacher layer index for each student layer.

    ``uniform`` (TinyBERT): student layer m (1-based) takes teacher layer m*N/M, i.e. index
    m*N/M - 1 of a list of per-layer outputs (attentions); where M does not divide N, m*N/M
    rounded half up (the layers ETD's uniform extraction keeps: 4 -> 3 gives 1, 3, 4). ``last``: the last M
    teacher layers. An explicit list of M teacher indices is checked and returned.
    ``include_embeddings=True`` maps hidden states where index 0 is the embedding output:
    the result has M + 1 entries, starting with 0 (TinyBERT's ``teacher_reps[i * k]``).
    """
    for name, v in (("teacher_layers", teacher_layers), ("student_layers", student_layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n, m = teacher_layers, student_layers
    if m > n:
        raise ValueError(f"student_layers ({m}) cannot exceed teacher_layers ({n})")
    if isinstance(strategy, str):
        _checks.choice("strategy", strategy, ("uniform", "last"))
        if strategy == "uniform":  # exactly m*N/M - 1 where M divides N
            idx = [math.floor((i + 1) * n / m + 0.5) - 1 for i in range(m)]
        else:
            idx = list(range(n - m, n))
    else:
        if not isinstance(strategy, (list, tuple)):
            raise TypeError(f"strategy must be 'uniform', 'last' or a list of {m} teacher layer "
                            f"indices, got {type(strategy).__name__} {strategy!r}")
        idx = list(strategy)
        if len(idx) != m or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n
                                for i in idx):
            raise ValueError(
                f"an explicit layer map must be {m} ints in [0, {n}), got {strategy!r}"
            )
    return [0] + [i + 1 for i in idx] if include_embeddings else idx


class _LossModule(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.options = options

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class AttentionMSELoss(_LossModule):
    """Module form of :func:`attention_mse`: ``AttentionMSELoss(mode="masked")(s, t, attention_mask=m)``."""

    def forward(self, student_attentions, teacher_attentions, attention_mask=None):
        return attention_mse(student_attentions, teacher_attentions, attention_mask=attention_mask,
                             **self.options)


class AttentionKLLoss(_LossModule):
    """Module form of :func:`attention_kl`."""

    def forward(self, student_scores, teacher_scores, attention_mask=None):
        return attention_kl(student_scores, teacher_scores, attention_mask=attention_mask, **self.options)


class ValueRelationKLLoss(_LossModule):
    """Module form of :func:`value_relation_kl`."""

    def forward(self, student_values, teacher_values, attention_mask=None):
        return value_relation_kl(student_values, teacher_values, attention_mask=attention_mask,
                                 **self.options)


class HiddenMSELoss(nn.Module):
    """Module form of :func:`hidden_mse` that owns its projection (a :class:`Projection` when
    ``student_dim != teacher_dim``), so the projection trains with the student."""

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None, *,
                 projection: nn.Module | None = None, tinybert_compat: bool = False):
        super().__init__()
        if projection is None and student_dim is not None and teacher_dim is not None \
                and student_dim != teacher_dim:
            projection = Projection(student_dim, teacher_dim)
        self.projection = projection
        self.tinybert_compat = tinybert_compat

    def forward(self, student_hidden, teacher_hidden, attention_mask=None):
        return hidden_mse(student_hidden, teacher_hidden, projection=self.projection,
                          attention_mask=attention_mask, tinybert_compat=self.tinybert_compat)


class SentenceApproxLoss(_LossModule):
    """Module form of :func:`sentence_approx`."""

    def forward(self, student_vectors, teacher_vectors):
        return sentence_approx(student_vectors, teacher_vectors, **self.options)
