"""Transformer (BERT) students and teacher taps for intermediate-layer distillation.

* :func:`base_bert` -- the BertModel-like encoder inside any of kdfast's wrappers;
* :func:`student_config` -- a BertConfig for a smaller student of a teacher;
* :func:`as_classifier` -- a BertForSequenceClassification around an encoder's weights;
* :func:`build_transformer` -- a student model from a config dict, a directory or a model;
* :class:`TransformerStudent` -- a transformers BERT plus TinyBERT's ``fit_dense``
  projection; in training it keeps its hidden states, attention (Q and K, or raw scores) and
  values (``taps``) for the loss;
* :class:`TeacherTaps` -- a teacher whose ``taps(batch, needs)`` returns logits, hidden
  states, attention and values from ONE forward;
* :func:`load_transformer_student` -- a saved student back.

Attention comes as each layer's Q and K after the projections
(:func:`kdfast.models.capture.capture_qkv`, forward hooks: the model keeps its SDPA / flash
attention; the ``qk`` tap, for the map-free losses of :mod:`kdfast.losses.relation`) or as
raw score maps (:func:`kdfast.models.capture.capture_attention_scores`, an eager attention
implementation registered with transformers for that forward; the ``scores`` tap); values
come from forward hooks on the value projections, hidden states from
``output_hidden_states=True``. Students
are plain transformers models saved with ``save_pretrained``; the projection is an extra file
(``kdfast_fit_dense.safetensors``) that transformers ignores.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from torch import nn

from kdfast.losses import Projection
from kdfast.models.capture import capture_attention_scores, capture_qkv
from kdfast.models.teachers import TeacherClassifier

FIT_DENSE_FILE = "kdfast_fit_dense.safetensors"
TAPS = ("logits", "hidden", "scores", "qk", "values")
ATTENTION = {"qk": capture_qkv, "scores": capture_attention_scores}  # how attention is recorded


def base_bert(model):
    """The BertModel-like encoder inside ``model`` (itself, ``model.bert``, ``model.encoder``
    of a TeacherClassifier, or ``model.model`` of a :class:`TransformerStudent`)."""
    if isinstance(model, TransformerStudent):
        model = model.model
    if isinstance(model, TeacherTaps):
        model = model.teacher
    if isinstance(model, TeacherClassifier):
        model = model.encoder
    base = getattr(model, "base_model", model)
    if not (hasattr(base, "embeddings") and hasattr(getattr(base, "encoder", None), "layer")):
        raise TypeError(f"expected a BERT-like transformers model (embeddings + encoder.layer), "
                        f"got {type(model).__name__}")
    return base


def student_sizes(teacher_config, *, num_layers: int, hidden_size: int | None = None,
                  num_heads: int | None = None, intermediate_size: int | None = None) -> dict:
    """A student's four sizes: those given, the teacher's width, heads and FFN for the rest."""
    t = teacher_config
    return dict(num_layers=num_layers, hidden_size=hidden_size or t.hidden_size,
                num_heads=num_heads or t.num_attention_heads,
                intermediate_size=intermediate_size or t.intermediate_size)


def student_config(teacher_config, *, num_layers: int, hidden_size: int, num_heads: int,
                   intermediate_size: int, num_labels: int | None = None):
    """A BertConfig for a student: the teacher's vocabulary, positions and types with the
    given depth and widths. Raises ValueError for sizes a BertModel cannot have."""
    from transformers import BertConfig

    for name, v in (("num_layers", num_layers), ("hidden_size", hidden_size),
                    ("num_heads", num_heads), ("intermediate_size", intermediate_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}: "
                         "a BertModel needs hidden_size = num_heads x head_dim")
    t = teacher_config
    cfg = BertConfig(vocab_size=t.vocab_size, hidden_size=hidden_size,
                     num_hidden_layers=num_layers, num_attention_heads=num_heads,
                     intermediate_size=intermediate_size,
                     max_position_embeddings=t.max_position_embeddings,
                     type_vocab_size=getattr(t, "type_vocab_size", 2),
                     pad_token_id=getattr(t, "pad_token_id", 0),
                     hidden_act=getattr(t, "hidden_act", "gelu"),
                     layer_norm_eps=getattr(t, "layer_norm_eps", 1e-12))
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def as_classifier(model, num_labels: int):
    """A BertForSequenceClassification holding ``model``'s encoder weights (``model`` itself
    when it already is one with ``num_labels`` labels); the classifier is new."""
    from transformers import BertForSequenceClassification

    if isinstance(model, BertForSequenceClassification):
        if model.config.num_labels != num_labels:
            raise ValueError(f"the student has {model.config.num_labels} labels but the task has "
                             f"{num_labels}")
        return model
    base = base_bert(model)
    cfg = copy.deepcopy(base.config)
    cfg.num_labels = num_labels
    cfg.architectures = None
    clf = BertForSequenceClassification(cfg)
    missing, unexpected = clf.bert.load_state_dict(base.state_dict(), strict=False)
    bad = [k for k in missing if not k.startswith("pooler.")] + list(unexpected)
    if bad:
        raise ValueError(f"cannot move the encoder into a classifier: mismatched weights {bad[:5]}")
    return clf.to(next(base.parameters()).device)


def build_transformer(student, teacher_config, num_labels: int | None = None, seed: int = 0):
    """A transformers model for a student: ``student`` is a config dict (num_layers,
    hidden_size, num_heads, intermediate_size), a directory, a model or a
    :class:`TransformerStudent`; a classifier when ``num_labels`` is given."""
    from transformers import AutoModel, BertForSequenceClassification, BertModel

    if isinstance(student, TransformerStudent):
        student = student.model
    if isinstance(student, dict):
        torch.manual_seed(seed)
        cfg = student_config(teacher_config, num_labels=num_labels, **student)
        return BertModel(cfg, add_pooling_layer=False) if num_labels is None \
            else BertForSequenceClassification(cfg)
    if isinstance(student, (str, Path)):
        student = AutoModel.from_pretrained(str(student))
    if isinstance(student, nn.Module):
        return student if num_labels is None else as_classifier(student, num_labels)
    raise TypeError("student must be a config dict (num_layers, hidden_size, num_heads, "
                    f"intermediate_size), a directory or a transformers model, got "
                    f"{type(student).__name__}")


def forward_with_taps(model, batch, *, attention=None, value_layers=()):
    """One forward of a transformers BERT on a collated batch: ``(model output, taps)``, taps
    = ``hidden`` (embedding output + every layer), the attention of every layer as
    ``attention="qk"`` (``queries`` and ``keys``, [B, H, L, d]), ``"scores"`` (raw
    ``scores``, [B, H, L, L]), both (a tuple) or none, and ``values``: the value projections'
    outputs of ``value_layers`` ([B, L, D])."""
    forms = {attention} if isinstance(attention, str) else set(attention or ())
    if forms - set(ATTENTION):
        raise ValueError(f"attention must be among {tuple(ATTENTION)}, got {attention!r}")
    base = base_bert(model)
    values, handles = {}, []
    for i in value_layers:
        def hook(mod, args, out, i=i):
            values[i] = out
        handles.append(base.encoder.layer[i].attention.self.value.register_forward_hook(hook))
    try:
        with contextlib.ExitStack() as stack:
            cap = {f: stack.enter_context(ATTENTION[f](model)) for f in forms}
            out = model(input_ids=batch["t_input_ids"], attention_mask=batch["t_attention_mask"],
                        token_type_ids=batch.get("t_token_type_ids"), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    taps = {"hidden": list(out.hidden_states), "values": [values[i] for i in value_layers]}
    if "scores" in cap:
        taps["scores"] = list(cap["scores"].scores)
    if "qk" in cap:
        taps["queries"], taps["keys"] = list(cap["qk"].queries), list(cap["qk"].keys)
    return out, taps


class TeacherTaps(nn.Module):
    """A teacher (a :class:`~kdfast.models.TeacherClassifier`, a BertModel or a BertFor*
    model) whose :meth:`taps` returns what a loss ``needs`` from ONE forward: ``logits``
    (None for a bare encoder), ``hidden`` (embedding output + every layer), ``qk`` (each
    layer's ``queries`` and ``keys``; the teacher keeps SDPA) or ``scores`` (raw attention
    score maps, eager attention) and ``values`` (of ``value_layers``)."""

    def __init__(self, teacher, *, value_layers=()):
        super().__init__()
        self.teacher = teacher
        self.value_layers = list(value_layers)
        self.base = base_bert(teacher)

    @property
    def config(self):
        return self.base.config

    def taps(self, batch, needs=TAPS, **_) -> dict:
        unknown = set(needs) - set(TAPS)
        if unknown:
            raise ValueError(f"TeacherTaps gives {TAPS}, not {sorted(unknown)}")
        t = self.teacher
        if set(needs) <= {"logits"} and isinstance(t, TeacherClassifier):
            return {"logits": t.forward_batch(batch)}
        enc = t.encoder if isinstance(t, TeacherClassifier) else t
        attention = [f for f in ATTENTION if f in needs]
        out, taps = forward_with_taps(enc, batch, attention=attention,
                                      value_layers=self.value_layers if "values" in needs else ())
        if isinstance(t, TeacherClassifier):
            logits = t.head_logits(out, batch["t_attention_mask"])
        else:
            logits = getattr(out, "logits", None)
        return {"logits": logits, **taps}

    def forward_batch(self, batch):
        """Every tap (the loss-callable protocol of :class:`kdfast.distill.Distiller`)."""
        return self.taps(batch)


class TransformerStudent(nn.Module):
    """A transformers BERT student plus TinyBERT's ``fit_dense`` projection.

    ``forward_batch`` returns the logits (a classifier) or the last hidden state (a bare
    encoder); in training mode with ``capture`` on it also keeps the student's hidden states,
    attention (``self.attention``: ``"qk"`` or ``"scores"``, see :func:`forward_with_taps`;
    an intermediate loss sets it to the form it reads) and values of ``value_layers`` in
    ``self.taps`` for the loss."""

    def __init__(self, model, teacher_hidden: int | None = None, *, projection: bool | None = None,
                 value_layers=()):
        super().__init__()
        self.model = model
        d_s = base_bert(model).config.hidden_size
        need = teacher_hidden is not None and teacher_hidden != d_s
        if projection is None:
            projection = need
        if need and not projection:
            raise ValueError(f"student width {d_s} != teacher width {teacher_hidden}: the hidden "
                             "loss needs the fit_dense projection")
        self.fit_dense = Projection(d_s, teacher_hidden or d_s) if projection else None
        self.capture = True
        self.attention = "scores"
        self.value_layers = list(value_layers)
        self.taps = None

    @property
    def config(self):
        return self.model.config

    @property
    def num_labels(self):
        return getattr(self.model.config, "num_labels", None) if hasattr(self.model, "classifier") \
            else None

    def forward_batch(self, batch):
        if self.training and self.capture:
            out, self.taps = forward_with_taps(self.model, batch, attention=self.attention,
                                               value_layers=self.value_layers)
        else:
            self.taps = None
            out = self.model(input_ids=batch["t_input_ids"], attention_mask=batch["t_attention_mask"],
                             token_type_ids=batch.get("t_token_type_ids"))
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out.last_hidden_state

    def save_pretrained(self, path, tokenizer=None):
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        if self.fit_dense is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.fit_dense.state_dict().items()},
                      str(path / FIT_DENSE_FILE))


def load_transformer_student(path, num_labels: int | None = None, teacher_hidden=None):
    """A :class:`TransformerStudent` from a directory written by a recipe (or any local BERT
    checkpoint): a classifier when the checkpoint is one or ``num_labels`` is given."""
    from transformers import AutoConfig, AutoModel, BertForSequenceClassification

    path = Path(path)
    cfg = AutoConfig.from_pretrained(str(path))
    archs = getattr(cfg, "architectures", None) or []
    if any("SequenceClassification" in a for a in archs) and (num_labels in (None, cfg.num_labels)):
        model = BertForSequenceClassification.from_pretrained(str(path))
    elif num_labels is not None:
        model = as_classifier(AutoModel.from_pretrained(str(path)), num_labels)
    else:
        model = AutoModel.from_pretrained(str(path))
    fd = path / FIT_DENSE_FILE
    student = TransformerStudent(model, teacher_hidden, projection=fd.is_file() or None)
    if fd.is_file():
        from safetensors.torch import load_file

        w = load_file(str(fd))
        if student.fit_dense is None or tuple(w["weight"].shape) != tuple(student.fit_dense.weight.shape):
            student.fit_dense = Projection(w["weight"].shape[1], w["weight"].shape[0])
        student.fit_dense.load_state_dict(w)
    return student
