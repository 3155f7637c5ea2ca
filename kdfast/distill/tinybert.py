"""The ``tinybert`` recipe (Jiao et al., METHODS.md s.3): two-stage transformer distillation.

* :func:`general_distill` -- general distillation: attention + hidden-state (+ embedding
  output) losses on unlabelled text; the teacher is a pre-trained, not fine-tuned, encoder.
* :func:`task_distill` -- task distillation from a fine-tuned teacher
  (:class:`~kdfast.models.TeacherClassifier`): step 1 intermediate layers only (attention +
  hidden) on the augmented transfer set (:mod:`kdfast.data.tinybert_augment`), step 2 the
  prediction layer only (soft cross-entropy against the teacher's logits; MSE for regression).
* :func:`tinybert` runs ``stage="general"``, ``"task"`` or ``"all"`` (general then task).

Layer mapping is uniform (:func:`kdfast.losses.layer_map`): student attention m (1-based) to
teacher attention m*N/M, hidden state m to teacher hidden state m*N/M with the embedding
output as layer 0. One ``fit_dense`` (:class:`kdfast.losses.Projection`, d_S -> d_T) is shared
by all hidden layers; it trains with the student and is saved beside it.

Modes. ``mode="exact"`` is the official code's loss definitions: attention MSE on the raw
scores (QK^T/sqrt(d) + additive mask) with entries <= -100 zeroed, averaged over B*H*L*L
(padded query rows included); hidden MSE over B*L*d_T, padding included; prediction
``mean(-softmax(z_T/T) * log_softmax(z_S/T))`` over batch x classes, no T^2.
``mode="masked"`` (corrected): attention MSE over real query x real key pairs only, hidden MSE
over real tokens, prediction soft CE summed over classes and averaged over the batch.

``style="minilm"`` (used by the ``etd`` recipe) swaps the intermediate losses for MiniLM's:
last-layer attention KL (:func:`kdfast.losses.attention_kl`) + last-layer value-relation KL
(:func:`kdfast.losses.value_relation_kl`).

Teacher internals (raw scores, values, hidden states) come from ONE teacher forward per
batch: scores through :func:`kdfast.models.capture.capture_attention_scores` (an attention
implementation registered with transformers, nothing edited), values through forward hooks on
the value projections, hidden states through ``output_hidden_states=True``.

Students are plain transformers models (``BertModel`` for general distillation,
``BertForSequenceClassification`` for task distillation), built from a config
(:func:`student_config`), loaded from a directory, or given (e.g. ETD-extracted). They are
saved with ``save_pretrained`` and load and run in transformers alone; the projection is an
extra file (``kdfast_fit_dense.safetensors``) that transformers ignores.
"""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdfast.losses import (
    Projection,
    attention_kl,
    attention_mse,
    hidden_mse,
    layer_map,
    soft_cross_entropy,
    value_relation_kl,
)
from kdfast.models.capture import capture_attention_scores

MODES = ("exact", "masked")
STYLES = ("tinybert", "minilm")
STAGES = ("general", "task", "all")
FIT_DENSE_FILE = "kdfast_fit_dense.safetensors"

GENERAL_TRAIN = dict(epochs=3, batch_size=32, optimizer="adamw", lr=5e-5, scheduler="linear",
                     warmup=0.1, weight_decay=0.01)
STEP1_TRAIN = dict(epochs=20, batch_size=32, optimizer="adamw", lr=5e-5, scheduler="linear",
                   warmup=0.1, weight_decay=0.01)
STEP2_TRAIN = dict(epochs=3, batch_size=32, optimizer="adamw", lr=3e-5, scheduler="linear",
                   warmup=0.1, weight_decay=0.01)


# ------------------------------------------------------------------------- models
def base_bert(model):
    """The BertModel-like encoder inside ``model`` (itself, ``model.bert``, ``model.encoder``
    of a TeacherClassifier, or ``model.model`` of a :class:`TransformerStudent`)."""
    if isinstance(model, TransformerStudent):
        model = model.model
    from kdfast.models.teachers import TeacherClassifier

    if isinstance(model, TeacherClassifier):
        model = model.encoder
    base = getattr(model, "base_model", model)
    if not (hasattr(base, "embeddings") and hasattr(getattr(base, "encoder", None), "layer")):
        raise TypeError(f"expected a BERT-like transformers model (embeddings + encoder.layer), "
                        f"got {type(model).__name__}")
    return base


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


def check_pair(teacher_config, student_config_, *, style: str = "tinybert",
               projection: bool | None = None):
    """Validates a teacher/student pair for the intermediate losses before any training;
    returns (attention layer map, hidden layer map). Clear ValueErrors for layer counts that
    do not divide, head-count mismatches and widths that break the projection."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    t, s = teacher_config, student_config_
    n, m = t.num_hidden_layers, s.num_hidden_layers
    if s.hidden_size % s.num_attention_heads:
        raise ValueError(f"student hidden_size={s.hidden_size} is not a multiple of its "
                         f"num_attention_heads={s.num_attention_heads}")
    if s.num_attention_heads != t.num_attention_heads:
        loss = "TinyBERT's attention MSE" if style == "tinybert" else "MiniLM's attention KL"
        raise ValueError(
            f"{loss} compares teacher and student attention maps head by head: the student has "
            f"{s.num_attention_heads} heads but the teacher has {t.num_attention_heads} "
            f"(give the student num_heads={t.num_attention_heads})")
    if s.vocab_size != t.vocab_size:
        raise ValueError(f"student vocab_size {s.vocab_size} != teacher vocab_size {t.vocab_size}: "
                         "they read the same token ids")
    if style == "minilm":
        if t.hidden_size % s.num_attention_heads:
            raise ValueError(f"value relation: teacher width {t.hidden_size} is not divisible by "
                             f"{s.num_attention_heads} relation heads")
        return [n - 1], None
    try:
        att = layer_map(n, m, "uniform")
    except ValueError as e:
        raise ValueError(f"TinyBERT's uniform layer mapping: teacher has {n} layers, student "
                         f"{m}: {e}") from None
    if projection is False and s.hidden_size != t.hidden_size:
        raise ValueError(f"student hidden_size {s.hidden_size} != teacher hidden_size "
                         f"{t.hidden_size}: the hidden loss needs the fit_dense projection "
                         "(projection=True)")
    return att, layer_map(n, m, "uniform", include_embeddings=True)


def _forward(model, base, batch, *, scores: bool, value_layers=()):
    """One forward with hidden states, optional raw scores and value outputs."""
    values = {}
    handles = []
    for i in value_layers:
        def hook(mod, args, out, i=i):
            values[i] = out
        handles.append(base.encoder.layer[i].attention.self.value.register_forward_hook(hook))
    ctx = capture_attention_scores(model) if scores else contextlib.nullcontext()
    try:
        with ctx as cap:
            out = model(input_ids=batch["t_input_ids"], attention_mask=batch["t_attention_mask"],
                        token_type_ids=batch.get("t_token_type_ids"), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, (list(cap.scores) if scores else None), [values[i] for i in value_layers]


class TeacherTaps(nn.Module):
    """Wraps a teacher so that ``forward_batch`` returns everything the losses need from ONE
    forward: ``{"logits", "hidden", "scores", "values"}`` (logits None for a bare encoder).
    ``capture=False`` gives logits only (prediction-layer distillation)."""

    def __init__(self, teacher, *, capture: bool = True, value_layers=()):
        super().__init__()
        self.teacher = teacher
        self.capture = capture
        self.value_layers = list(value_layers)
        self.base = base_bert(teacher)

    @property
    def config(self):
        return self.base.config

    def forward_batch(self, batch):
        from kdfast.models.teachers import TeacherClassifier

        t = self.teacher
        enc = t.encoder if isinstance(t, TeacherClassifier) else t
        if not self.capture and isinstance(t, TeacherClassifier):
            return {"logits": t.forward_batch(batch)}
        out, scores, values = _forward(enc, self.base, batch, scores=self.capture,
                                       value_layers=self.value_layers if self.capture else ())
        logits = None
        if isinstance(t, TeacherClassifier):
            pooled = t._pool(out, batch["t_attention_mask"], t.pooling)
            logits = t.head(t.dropout(pooled))
        elif getattr(out, "logits", None) is not None:
            logits = out.logits
        return {"logits": logits, "hidden": list(out.hidden_states), "scores": scores,
                "values": values}


class TransformerStudent(nn.Module):
    """A transformers BERT student plus TinyBERT's ``fit_dense`` projection.

    ``forward_batch`` returns the logits (a classifier) or the last hidden state (a bare
    encoder); in training mode with ``capture`` on it also keeps the student's hidden states,
    raw scores and values of ``value_layers`` in ``self.taps`` for the loss."""

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
        bert = base_bert(self.model)
        if self.training and self.capture:
            out, scores, values = _forward(self.model, bert, batch, scores=True,
                                           value_layers=self.value_layers)
            self.taps = {"hidden": list(out.hidden_states), "scores": scores, "values": values}
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


# ------------------------------------------------------------------------- the loss
class TinyBERTLoss:
    """``loss(student_out, batch, teacher_out)`` for the Distiller.

    ``stage="intermediate"``: TinyBERT attention + hidden losses (``style="tinybert"``) or
    MiniLM attention KL + value relation (``style="minilm"``) on the student's taps;
    ``stage="prediction"``: soft cross-entropy on logits (MSE for one output). The last
    components are kept in ``self.last`` (floats) for logging."""

    def __init__(self, student: TransformerStudent, teacher_config, *, stage="intermediate",
                 mode="exact", style="tinybert", temperature: float = 1.0, backend="auto"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if stage not in ("intermediate", "prediction"):
            raise ValueError(f"stage must be 'intermediate' or 'prediction', got {stage!r}")
        self.student, self.stage, self.mode, self.style = student, stage, mode, style
        self.temperature, self.backend = temperature, backend
        self.att_map, self.hid_map = (None, None)
        if stage == "intermediate":
            self.att_map, self.hid_map = check_pair(teacher_config, base_bert(student).config,
                                                    style=style,
                                                    projection=student.fit_dense is not None)
        self.last = {}

    def intermediate(self, s, t, mask):
        if self.style == "minilm":
            att = attention_kl([s["scores"][-1]], [t["scores"][self.att_map[0]]],
                               attention_mask=mask, backend=self.backend)
            heads = s["scores"][-1].shape[1]
            val = value_relation_kl(s["values"][-1], t["values"][-1], attention_mask=mask,
                                    num_relation_heads=heads, backend=self.backend)
            self.last = {"attention_kl": float(att.detach()), "value_relation": float(val.detach())}
            return att + val
        t_scores = [t["scores"][i] for i in self.att_map]
        t_hidden = [t["hidden"][i] for i in self.hid_map]
        s_scores, proj = s["scores"], self.student.fit_dense
        if self.mode == "exact":
            att = attention_mse(s_scores, t_scores, mode="tinybert", inputs="scores",
                                backend=self.backend)
            hid = hidden_mse(s["hidden"], t_hidden, projection=proj, tinybert_compat=True)
        else:
            keys = (mask == 0)[:, None, None, :]  # padded keys: 0 on both sides, no inf - inf
            s_scores = [x.masked_fill(keys, 0.0) for x in s_scores]
            t_scores = [x.masked_fill(keys, 0.0) for x in t_scores]
            att = attention_mse(s_scores, t_scores, mode="masked", attention_mask=mask,
                                backend=self.backend)
            hid = hidden_mse(s["hidden"], t_hidden, projection=proj, attention_mask=mask)
        self.last = {"attention": float(att.detach()), "hidden": float(hid.detach())}
        return att + hid

    def prediction(self, logits, t_logits):
        logits, t_logits = logits.float(), t_logits.float()
        if logits.shape[-1] == 1:
            return F.mse_loss(logits, t_logits)
        return soft_cross_entropy(logits, t_logits, temperature=self.temperature,
                                  tinybert_compat=self.mode == "exact",
                                  reduction="batchmean", backend=self.backend)

    def __call__(self, out, batch, t_out):
        if self.stage == "prediction":
            t_logits = batch["t_logits"] if t_out is None else t_out["logits"]
            loss = self.prediction(out, t_logits)
            self.last = {"prediction": float(loss.detach())}
            return loss
        if self.student.taps is None:
            raise RuntimeError("the student captured nothing: intermediate losses need "
                               "student.train() and student.capture = True")
        return self.intermediate(self.student.taps, t_out, batch["t_attention_mask"])


# ------------------------------------------------------------------------- recipes
def _train_opts(defaults, stage_opts, common):
    opts = {**defaults, **{k: v for k, v in common.items() if v is not None},
            **(stage_opts or {})}
    return opts


def _sentences_examples(tokenizer, sentences, max_len):
    from kdfast.data.tokenize import encode

    return encode(tokenizer, list(sentences), None, None, max_len=max_len, student=False)


def _load_encoder_teacher(teacher):
    """A pre-trained encoder for general distillation (a path/name, a BertModel, or a
    TeacherClassifier whose encoder is used)."""
    from transformers import AutoModel

    from kdfast.models.teachers import TeacherClassifier, resolve_teacher_path

    if isinstance(teacher, TeacherClassifier):
        return teacher.encoder, None
    if isinstance(teacher, nn.Module):
        return teacher, None
    path = resolve_teacher_path(str(teacher))
    return AutoModel.from_pretrained(path), path


def _build_student(student, teacher_cfg, num_labels, seed):
    """A transformers model from a config dict, a directory, or a model."""
    from transformers import AutoModel, BertModel

    if isinstance(student, TransformerStudent):
        return student.model
    if isinstance(student, dict):
        torch.manual_seed(seed)
        cfg = student_config(teacher_cfg, num_labels=num_labels, **student)
        if num_labels is None:
            return BertModel(cfg, add_pooling_layer=False)
        from transformers import BertForSequenceClassification

        return BertForSequenceClassification(cfg)
    if isinstance(student, (str, Path)):
        model = AutoModel.from_pretrained(str(student))
        return model if num_labels is None else as_classifier(model, num_labels)
    if isinstance(student, nn.Module):
        return student if num_labels is None else as_classifier(student, num_labels)
    raise TypeError("student must be a config dict (num_layers, hidden_size, num_heads, "
                    f"intermediate_size), a directory or a transformers model, got {type(student).__name__}")


def _check_out(out_dir, overwrite, resume):
    if out_dir is not None and Path(out_dir).exists() and any(Path(out_dir).iterdir()) \
            and not (overwrite or resume):
        raise FileExistsError(f"output directory {out_dir} already exists and is not empty: "
                              "pass overwrite=True (--overwrite) or resume=True (--resume)")


def general_distill(teacher, sentences, out_dir, *, student, tokenizer=None, mode="exact",
                    style="tinybert", max_len: int = 128, seed: int = 0, overwrite=False,
                    resume=False, progress=True, backend="auto", callbacks=(), **train):
    """General distillation on unlabelled ``sentences``: returns ``(TransformerStudent,
    results)``; the student (a BertModel) is saved to ``out_dir/general/student``."""
    from kdfast.distill.trainer import Distiller

    _check_out(out_dir, overwrite, resume)
    enc, path = _load_encoder_teacher(teacher)
    if tokenizer is None:
        if path is None:
            raise ValueError("pass tokenizer= with an in-memory teacher")
        from kdfast.data.tokenize import load_tokenizer

        tokenizer = load_tokenizer(path)
    t_cfg = base_bert(enc).config
    model = _build_student(student, t_cfg, None, seed)
    st = student if isinstance(student, TransformerStudent) else TransformerStudent(
        model, t_cfg.hidden_size, value_layers=[model.config.num_hidden_layers - 1]
        if style == "minilm" else ())
    loss = TinyBERTLoss(st, t_cfg, stage="intermediate", mode=mode, style=style, backend=backend)
    taps = TeacherTaps(enc, value_layers=[t_cfg.num_hidden_layers - 1] if style == "minilm" else ())
    data = _sentences_examples(tokenizer, sentences, max_len)
    if not data:
        raise ValueError("general distillation needs unlabelled sentences; none were given")
    opts = _train_opts(GENERAL_TRAIN, None, dict(train, seed=seed, progress=progress))
    d = Distiller(taps, st, loss, train_data=data, out_dir=Path(out_dir) / "general" if out_dir else None,
                  tokenizer=tokenizer, overwrite=overwrite or not resume, resume=resume,
                  callbacks=callbacks, **opts)
    res = d.train()
    return st, res


def transfer_examples(teacher, tokenizer, split, *, augment=True, n_a=20, p_t=0.4, k=15,
                      mlm="auto", glove=None, seed=0, max_len=64, cache=None, teacher_path=None):
    """The task-distillation transfer set: the training sentences and their TinyBERT
    augmentations, encoded for the teacher (no labels: the teacher supervises)."""
    from kdfast.data.tokenize import encode

    texts_a, texts_b = list(split.texts), None if split.texts_b is None else list(split.texts_b)
    if augment and n_a > 0:
        from kdfast.data.tinybert_augment import augment as tb_augment

        if mlm == "auto":
            mlm = find_mlm(teacher_path)
        emb = None if mlm is not None or glove is not None else \
            base_bert(teacher).get_input_embeddings().weight
        texts_a, texts_b, _ = tb_augment(texts_a, texts_b, tokenizer=tokenizer, mlm=mlm,
                                         embeddings=emb, glove=glove, n_a=n_a, p_t=p_t, k=k,
                                         seed=seed, cache=cache)
    return encode(tokenizer, texts_a, texts_b, None, max_len=max_len, student=False)


def find_mlm(path):
    """The teacher checkpoint's MLM (BertForMaskedLM) when it has trained MLM-head weights,
    else None (e.g. all-MiniLM-L6-v2, a sentence encoder)."""
    if path is None or not Path(path).is_dir():
        return None
    files = list(Path(path).glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as f:
        keys = f.keys()  # safe_open is not iterable
        if not any(k.startswith("cls.predictions") for k in keys):
            return None
    from transformers import BertForMaskedLM

    return BertForMaskedLM.from_pretrained(str(path))


def task_distill(teacher, task, out_dir, *, student, tokenizer=None, mode="exact",
                 style="tinybert", augment=True, n_a: int = 20, p_t: float = 0.4, k: int = 15,
                 mlm="auto", glove=None, transfer_cache=None, steps=("intermediate", "prediction"),
                 step1=None, step2=None, temperature: float = 1.0, max_len: int = 64,
                 seed: int = 0, overwrite=False, resume=False, progress=True, backend="auto",
                 callbacks=(), **train):
    """Task distillation from a fine-tuned teacher: step 1 (intermediate layers, augmented
    transfer set, ``step1`` training options) then step 2 (prediction layer, ``step2``
    options); ``train`` options apply to both. Returns ``(TransformerStudent, results)``;
    students in ``out_dir/step1/student`` and ``out_dir/step2/student``."""
    from kdfast.distill.recipes import _task, _teacher
    from kdfast.distill.trainer import Distiller

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    bad = set(steps) - {"intermediate", "prediction"}
    if bad or not steps:
        raise ValueError(f"steps must be a non-empty subset of ('intermediate', 'prediction'), got {steps!r}")
    _check_out(out_dir, overwrite, resume)
    task = _task(task, seed)
    t_model, tokenizer, t_path = _teacher(teacher, tokenizer, task.num_labels, need_head=True)
    t_cfg = base_bert(t_model).config
    model = _build_student(student, t_cfg, task.num_labels, seed)
    value_layers = [model.config.num_hidden_layers - 1] if style == "minilm" else ()
    st = student if isinstance(student, TransformerStudent) else TransformerStudent(
        model, t_cfg.hidden_size, value_layers=value_layers)
    if isinstance(student, TransformerStudent):
        st.model = model
    out_dir = Path(out_dir) if out_dir else None
    from kdfast.data.tokenize import encode

    dev = encode(tokenizer, task.dev.texts, task.dev.texts_b, task.dev.labels, max_len=max_len,
                 student=False)
    test = encode(tokenizer, task.test.texts, task.test.texts_b, task.test.labels,
                  max_len=max_len, student=False)
    results = {"mode": mode, "style": style}
    common = dict(train, seed=seed, progress=progress, metric=task.metric)
    if "intermediate" in steps:
        cache = transfer_cache or (out_dir / "augmented.jsonl" if out_dir else None)
        data = transfer_examples(t_model, tokenizer, task.train, augment=augment, n_a=n_a,
                                 p_t=p_t, k=k, mlm=mlm, glove=glove, seed=seed, max_len=max_len,
                                 cache=cache, teacher_path=t_path)
        results["transfer_examples"] = len(data)
        loss = TinyBERTLoss(st, t_cfg, stage="intermediate", mode=mode, style=style,
                            backend=backend)
        taps = TeacherTaps(t_model, value_layers=[t_cfg.num_hidden_layers - 1]
                           if style == "minilm" else ())
        st.capture = True
        d1 = Distiller(taps, st, loss, train_data=data, out_dir=out_dir / "step1" if out_dir else None,
                       tokenizer=tokenizer, overwrite=overwrite or not resume, resume=resume,
                       callbacks=callbacks, **_train_opts(STEP1_TRAIN, step1, common))
        results["step1"] = d1.train()
    else:
        data = encode(tokenizer, task.train.texts, task.train.texts_b, None, max_len=max_len,
                      student=False)
    if "prediction" in steps:
        st.capture = False
        taps = TeacherTaps(t_model, capture=False)
        loss = TinyBERTLoss(st, t_cfg, stage="prediction", mode=mode, temperature=temperature,
                            backend=backend)
        d2 = Distiller(taps, st, loss, train_data=data, dev_data=dev, test_data=test,
                       out_dir=out_dir / "step2" if out_dir else None, tokenizer=tokenizer,
                       overwrite=overwrite or not resume, resume=resume, callbacks=callbacks,
                       **_train_opts(STEP2_TRAIN, step2, common))
        results["step2"] = d2.train()
        results["test"], results["dev"] = results["step2"].get("test"), results["step2"].get("dev")
    st.capture = True
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return st, results


def tinybert(teacher, task, out_dir, *, stage="task", general_teacher=None, unlabelled=None,
             student=None, general=None, **kw):
    """Run TinyBERT: ``stage="general"`` (needs ``unlabelled`` sentences; teacher =
    ``general_teacher`` or ``teacher``), ``"task"`` or ``"all"`` (general, then task
    distillation starting from the general student). ``student``: a config dict, a directory
    or a model; ``general``: training options of the general stage."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if student is None:
        raise ValueError("give student= (a config dict with num_layers, hidden_size, num_heads, "
                         "intermediate_size; a directory; or a transformers model)")
    out_dir = Path(out_dir) if out_dir else None
    res = {}
    if stage in ("general", "all"):
        if unlabelled is None:
            raise ValueError("general distillation needs unlabelled sentences (unlabelled=)")
        common = {k: kw[k] for k in ("tokenizer", "mode", "style", "seed", "overwrite", "resume",
                                     "progress", "backend") if k in kw}
        st, res["general"] = general_distill(general_teacher or teacher, unlabelled,
                                             out_dir, student=student,
                                             **{**common, **(general or {})})
        student = st.model
        if stage == "general":
            return st, res
    st, r = task_distill(teacher, task, out_dir / "task" if out_dir and stage == "all" else out_dir,
                         student=student, **kw)
    res.update(r)
    return st, res
