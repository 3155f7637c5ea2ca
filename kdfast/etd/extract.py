"""Extraction: a smaller BERT whose weights are slices of the teacher's (ETD, Chen et al. 2021).

``extract(teacher, num_layers=, hidden_size=, num_heads=, intermediate_size=)`` picks

* layers: ``layer_selection="uniform"`` maps student layer i (1-based) to teacher layer
  round(i * N / M) (1-based; for N=6, M=3: teacher layers 2, 4, 6); ``"first"``/``"last"``
  take the first/last M layers; or pass the 0-based teacher indices yourself;
* hidden dims: one subset of the teacher's hidden dims, applied consistently to the
  embeddings (word, position, type), every Linear that reads or writes the hidden state,
  every LayerNorm, the pooler and the task head of a BertFor* teacher;
* heads per layer, and FFN neurons per layer;

by importance (``strategy="impt"``: the top scores of an :class:`~kdfast.etd.Importance`,
kept in the teacher's order) or uniformly at random (``strategy="rand"``, seeded by ``seed``;
``seed=None`` draws a fresh seed, recorded in ``student.config.etd["seed"]``). A NaN or inf
importance score (a diverged scoring run) raises ValueError rather than being ranked.

Head size. A HuggingFace BertModel has head_dim = hidden_size / num_heads, so the config
implies one of two rules (anything else raises ValueError):

* ``hidden_size == num_heads * teacher_head_dim``: whole heads are kept (e.g. MiniLM-L6,
  12 heads of 32: hidden 192 with 6 heads keeps 6 whole heads);
* ``hidden_size / num_heads < teacher_head_dim`` (an integer): every kept head keeps the same
  number of its dims, chosen per head (by the ``attn`` per-dim scores, or at random). The
  query weight and bias are scaled by sqrt(d_student / d_teacher) so that each kept head's
  attention logits are exactly the teacher's partial dot products over the kept dims, scaled
  by the teacher's 1/sqrt(d_teacher).

The result is a plain transformers model (``type(teacher)`` with the new config), so
``save_pretrained``/``from_pretrained`` work without kdfast. The selection is recorded in
``student.config.etd`` (0-based teacher indices).
"""
from __future__ import annotations

import copy
import math
import operator
import re

import torch

from kdfast.etd import _bert
from kdfast.losses.intermediate import layer_map

STRATEGIES = ("impt", "rand")


def _positive(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _layers(selection, n_teacher: int, m: int) -> list[int]:
    if isinstance(selection, str) and selection in ("uniform", "last"):
        return layer_map(n_teacher, m, selection)  # the layers TinyBERT's losses map to
    if isinstance(selection, str) and selection == "first":
        return list(range(m))
    what = (f"layer_selection must be 'uniform', 'first', 'last' or a list of {m} distinct, "
            f"increasing int teacher layer indices in [0, {n_teacher})")
    if isinstance(selection, (str, bytes)) or not hasattr(selection, "__iter__"):
        raise ValueError(f"{what}, got {selection!r}")
    layers = []
    for i in selection:  # ints only: 1.7 is not silently truncated to layer 1
        if isinstance(i, (bool, float)) or (isinstance(i, torch.Tensor) and
                                            (i.dim() or i.dtype.is_floating_point)):
            raise ValueError(f"{what}, got {list(selection)!r}")
        try:
            layers.append(operator.index(i))
        except TypeError:
            raise ValueError(f"{what}, got {list(selection)!r}") from None
    if len(layers) != m or any(not 0 <= i < n_teacher for i in layers) or \
            any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"{what}, got {layers}")
    return layers


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return order[:k].sort().values


def _rand(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen)[:k].sort().values


def select_units(config, *, num_layers: int, hidden_size: int, num_heads: int,
                 intermediate_size: int, strategy: str = "impt", importance=None, seed: int = 0,
                 layer_selection="uniform") -> dict:
    """The teacher units a student keeps (0-based indices); raises ValueError for configs
    that cannot be extracted. Keys: layers, hidden, heads, head_dims, attn, ffn, query_scale,
    seed (the one used: ``seed=None`` draws one)."""
    for name, v in (("num_layers", num_layers), ("hidden_size", hidden_size),
                    ("num_heads", num_heads), ("intermediate_size", intermediate_size)):
        _positive(name, v)
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    seed = _seed(seed)
    fields = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
    if any(not isinstance(getattr(config, f, None), int) for f in fields):
        raise TypeError(f"config must be the teacher's BertConfig (with {', '.join(fields)}), "
                        f"got {type(config).__name__}")
    n_t, h_t, a_t, f_t = (config.num_hidden_layers, config.hidden_size,
                          config.num_attention_heads, config.intermediate_size)
    d_t = h_t // a_t
    for name, v, limit in (("num_layers", num_layers, n_t), ("hidden_size", hidden_size, h_t),
                           ("num_heads", num_heads, a_t),
                           ("intermediate_size", intermediate_size, f_t)):
        if v > limit:
            raise ValueError(f"{name}={v} is larger than the teacher's ({limit}): extraction "
                             "can only keep a subset")
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}: a BertModel "
            f"needs hidden_size = num_heads x head_dim (whole teacher heads: hidden_size = "
            f"num_heads x {d_t} = {num_heads * d_t})")
    d_s = hidden_size // num_heads
    if d_s > d_t:
        raise ValueError(
            f"hidden_size / num_heads = {d_s} is larger than the teacher's head_dim {d_t}: keep "
            f"whole heads (hidden_size = num_heads x {d_t} = {num_heads * d_t}) or keep fewer "
            f"dims per head (hidden_size / num_heads < {d_t}), or use more heads")
    if strategy == "impt":
        _check_importance(importance, n_t, a_t, d_t, f_t, h_t, need_attn=d_s < d_t)
    gen = torch.Generator().manual_seed(seed)
    layers = _layers(layer_selection, n_t, num_layers)
    hidden = _top(importance.hidden, hidden_size) if strategy == "impt" else \
        _rand(h_t, hidden_size, gen)
    heads, head_dims, attn, ffn = [], [], [], []
    for t in layers:
        kept = _top(importance.heads[t], num_heads) if strategy == "impt" else \
            _rand(a_t, num_heads, gen)
        dims = []
        for h in kept.tolist():
            if d_s == d_t:
                dims.append(torch.arange(d_t))
            elif strategy == "impt":
                dims.append(_top(importance.attn[t, h * d_t:(h + 1) * d_t], d_s))
            else:
                dims.append(_rand(d_t, d_s, gen))
        heads.append(kept)
        head_dims.append(dims)
        attn.append(torch.cat([h * d_t + d for h, d in zip(kept.tolist(), dims)]))
        ffn.append(_top(importance.ffn[t], intermediate_size) if strategy == "impt" else
                   _rand(f_t, intermediate_size, gen))
    return {"layers": layers, "hidden": hidden, "heads": heads, "head_dims": head_dims,
            "attn": attn, "ffn": ffn, "query_scale": math.sqrt(d_s / d_t), "seed": seed}


def _seed(seed) -> int:
    """An int seed; None draws a fresh one (recorded in the selection and the student config)."""
    if seed is None:
        return int(torch.Generator().seed() % 2**31)
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an int or None, got {seed!r}") from None
    if not -2**63 <= seed < 2**64:  # torch.Generator.manual_seed's range
        raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}")
    return seed


def _check_importance(imp, n, a, d, f, h, need_attn):
    if imp is None:
        raise ValueError("strategy='impt' needs importance= (from kdfast.etd.importance)")
    for name, shape in (("heads", (n, a)), ("ffn", (n, f)), ("hidden", (h,))):
        value = getattr(imp, name, None)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"importance.{name} must be a tensor of shape {shape} for this "
                             f"teacher, got {got}")
        _finite(name, value)
    if need_attn:
        value = getattr(imp, "attn", None)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n, a * d):
            raise ValueError("keeping fewer dims per head needs importance.attn of shape "
                             f"{(n, a * d)} (scored with heads=True)")
        _finite("attn", value)


def _finite(name, value):
    """A NaN or inf score means the scoring run diverged: never rank it (raise)."""
    if value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"importance.{name} must hold real scores, got dtype {value.dtype}")
    bad = ~torch.isfinite(value) if value.dtype.is_floating_point else None
    if bad is not None and bool(bad.any()):
        where = [tuple(i) if len(i) > 1 else i[0] for i in bad.nonzero().tolist()]
        raise ValueError(f"importance.{name} has {len(where)} non-finite score(s) (NaN/inf) at "
                         f"{where[:5]}{' ...' if len(where) > 5 else ''}: the scoring run "
                         "diverged (check the teacher and the batches); rescore before extracting")


_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def extract(teacher, *, num_layers: int, hidden_size: int, num_heads: int,
            intermediate_size: int, strategy: str = "impt", importance=None, seed: int = 0,
            layer_selection="uniform"):
    """A ``type(teacher)`` model with the given sizes whose weights are slices of the
    teacher's (see the module docstring for the rules). The teacher is not modified."""
    base_t = _bert.base_model(teacher)
    _bert.check_encoder(base_t)
    sel = select_units(base_t.config, num_layers=num_layers, hidden_size=hidden_size,
                       num_heads=num_heads, intermediate_size=intermediate_size,
                       strategy=strategy, importance=importance, seed=seed,
                       layer_selection=layer_selection)
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers, cfg.hidden_size = num_layers, hidden_size
    cfg.num_attention_heads, cfg.intermediate_size = num_heads, intermediate_size
    cfg.etd = {"strategy": strategy, "seed": sel["seed"], "teacher_layers": sel["layers"],
               "hidden": sel["hidden"].tolist(), "heads": [x.tolist() for x in sel["heads"]],
               "ffn_sizes_from": base_t.config.intermediate_size}
    if base_t is teacher:
        student = type(teacher)(cfg, add_pooling_layer=teacher.pooler is not None)
    else:
        student = type(teacher)(cfg)
    prefix = "" if base_t is teacher else teacher.base_model_prefix + "."
    t_state = teacher.state_dict()
    new_state = {}
    for name, s_value in student.state_dict().items():
        if name.startswith(prefix):
            value = _base_slice(name[len(prefix):], prefix, t_state, sel)
        else:
            value = _head_slice(name, t_state[name], s_value, base_t.config.hidden_size,
                                sel["hidden"])
        if tuple(value.shape) != tuple(s_value.shape):
            raise RuntimeError(f"internal: {name} sliced to {tuple(value.shape)}, "
                               f"student has {tuple(s_value.shape)}")
        new_state[name] = value.clone()
    student.load_state_dict(new_state, strict=True)
    p = next(teacher.parameters())
    return student.to(device=p.device, dtype=p.dtype).train(teacher.training)


def _base_slice(name, prefix, t_state, sel):
    h = sel["hidden"]
    m = _LAYER.match(name)
    if m is None:
        t = t_state[prefix + name]
        if name.startswith("embeddings.") and name.endswith("_embeddings.weight"):
            return t[:, h]
        if name.startswith("embeddings.LayerNorm."):
            return t[h]
        if name == "pooler.dense.weight":
            return t[h][:, h]
        if name == "pooler.dense.bias":
            return t[h]
        return t  # buffers (position_ids, token_type_ids)
    i, rest = int(m.group(1)), m.group(2)
    t = t_state[f"{prefix}encoder.layer.{sel['layers'][i]}.{rest}"]
    a, f = sel["attn"][i], sel["ffn"][i]
    scale = sel["query_scale"] if rest.startswith("attention.self.query.") else 1.0
    rules = {
        "attention.self.query.weight": lambda: t[a][:, h] * scale,
        "attention.self.query.bias": lambda: t[a] * scale,
        "attention.self.key.weight": lambda: t[a][:, h],
        "attention.self.key.bias": lambda: t[a],
        "attention.self.value.weight": lambda: t[a][:, h],
        "attention.self.value.bias": lambda: t[a],
        "attention.output.dense.weight": lambda: t[h][:, a],
        "intermediate.dense.weight": lambda: t[f][:, h],
        "intermediate.dense.bias": lambda: t[f],
        "output.dense.weight": lambda: t[h][:, f],
    }
    if rest in rules:
        return rules[rest]()
    if rest in ("attention.output.dense.bias", "output.dense.bias") or "LayerNorm" in rest:
        return t[h]
    raise ValueError(f"extract: unexpected BERT parameter {prefix + name!r}")


def _head_slice(name, t, s_value, h_teacher, hidden):
    """Task-head tensors: every axis of the teacher's hidden size is sliced to the student's."""
    for axis in range(t.dim()):
        if t.shape[axis] == s_value.shape[axis]:
            continue
        if t.shape[axis] != h_teacher or s_value.shape[axis] != hidden.numel():
            raise ValueError(f"extract: cannot map head tensor {name!r} of shape "
                             f"{tuple(t.shape)} to {tuple(s_value.shape)}")
        t = t.index_select(axis, hidden.to(t.device))
    return t
