"""Distillation losses as objects: each says which teacher outputs it reads (``needs``) and is
called as ``loss(student_out, batch, teacher_out)`` by :class:`kdfast.distill.Distiller`.

``teacher_out`` is a dict holding the ``needs`` keys: ``logits`` [B, C], ``vector`` [B, H]
(a sentence vector), ``hidden`` / ``qk`` (``queries`` and ``keys``) / ``scores`` / ``values``
(per layer, from :class:`kdfast.models.TeacherTaps`). The Distiller fills it from cached
outputs in the examples (``t_logits``, ``t_vec``) or from ONE teacher forward per batch.

* :class:`HardLabelLoss` -- cross-entropy on the labels (MSE for one output); needs nothing;
* :class:`LogitLoss` -- Tang et al. / Hinton: ``alpha * CE + (1 - alpha) * soft``, soft =
  ``mse`` on logits, temperature ``kl`` or ``soft_ce``;
* :class:`SentenceVectorLoss` -- SRA stage 1 (Wu et al.): MSE or cosine distance between the
  student's and the teacher's sentence vectors;
* :class:`TinyBERTLoss` -- TinyBERT's attention + hidden losses (``stage="intermediate"``) or
  prediction-layer soft cross-entropy (``stage="prediction"``); :class:`MiniLMLoss` swaps the
  intermediate losses for MiniLM's attention KL + value relation;
* :func:`tinybert_attention_mse`, :func:`last_attention_kl` -- their attention terms on taps
  dicts, from Q and K or from score maps (shared with
  :class:`kdfast.integrations.transformers.DistillationTrainer`).

:func:`make_loss` maps the old string names (``ce``, ``hard``, ``mse``, ``kl``, ``soft_ce``,
``sra-mse``, ``sra-cosine``) to these objects -- the one place that knows them.

A loss whose value is a sum of parts exposes them after each call in ``components``: a dict
of DETACHED tensors on the loss's device (no host sync; the Distiller sums them on the device
and reads them at log points): ``LogitLoss`` with hard labels ``hard_ce`` and ``soft``,
``TinyBERTLoss`` ``attention``/``hidden`` (``attention_kl``/``value_relation`` for MiniLM)
or ``prediction``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdfast.distill.checks import check_choice, check_positive, check_probability
from kdfast.losses import (
    attention_kl,
    attention_kl_qk,
    attention_mse,
    attention_mse_qk,
    hidden_mse,
    layer_map,
    soft_cross_entropy,
    value_relation_kl,
)
from kdfast.models.transformer import base_bert

LOSSES = ("ce", "hard", "mse", "kl", "soft_ce", "sra-mse", "sra-cosine")
LOGIT_KINDS = ("mse", "kl", "soft_ce")
VECTOR_KINDS = ("mse", "cosine")
MODES = ("exact", "masked")
STYLES = ("tinybert", "minilm")
ATTENTION = ("qk", "scores")  # attention losses from Q and K (no L x L map) or from score maps


class HardLabelLoss:
    """Cross-entropy on ``batch["labels"]`` (MSE for a one-output regression student)."""

    name = "ce"
    needs = frozenset()
    needs_labels = True

    def __call__(self, out, batch, teacher_out=None):
        out, y = out.float(), batch["labels"]
        if y.dtype.is_floating_point:
            return F.mse_loss(out.squeeze(-1), y)
        return F.cross_entropy(out, y)


class LogitLoss:
    """``alpha * CE(z_S, y) + (1 - alpha) * soft(z_S, z_T)``; ``kind``: ``mse`` (Tang et al.),
    ``kl`` (Hinton, T^2-scaled) or ``soft_ce``, at ``temperature``."""

    needs = frozenset({"logits"})
    components: dict = {}

    def __init__(self, kind: str = "mse", alpha: float = 0.0, temperature: float = 1.0):
        check_choice("kind", kind, LOGIT_KINDS)
        check_probability("alpha", alpha)
        check_positive("temperature", temperature)
        self.kind, self.alpha, self.temperature = kind, alpha, temperature
        self.name = kind

    @property
    def needs_labels(self) -> bool:
        return self.alpha > 0

    def __call__(self, out, batch, teacher_out):
        from kdfast.losses import distillation_loss

        labels = batch.get("labels") if self.alpha > 0 else None
        loss = distillation_loss(out.float(), teacher_out["logits"].float(), labels,
                                 kind=self.kind, alpha=self.alpha if labels is not None else 0.0,
                                 temperature=self.temperature)
        self.components = {}
        if labels is not None and not labels.dtype.is_floating_point and out.dim() == 2:
            with torch.no_grad():  # for logging only: detached, no host sync
                valid = labels != -100
                ce = F.cross_entropy(out.detach().float(), labels, ignore_index=-100,
                                     reduction="sum") / valid.sum().clamp_min(1)
                soft = (loss.detach() - self.alpha * ce) / (1 - self.alpha) \
                    if self.alpha < 1 else torch.zeros_like(ce)
            self.components = {"hard_ce": ce, "soft": soft}
        return loss


class SentenceVectorLoss:
    """SRA: the student's sentence vector against the teacher's (``kind``: ``mse`` or
    ``cosine``); ``vector`` names the teacher vector (cls | mean | pooler; None: the teacher's
    own pooling) when it is computed live."""

    needs = frozenset({"vector"})
    needs_labels = False

    def __init__(self, kind: str = "mse", vector: str | None = None):
        if kind not in VECTOR_KINDS:
            raise ValueError(f"kind must be one of {VECTOR_KINDS}, got {kind!r}")
        self.kind, self.vector = kind, vector
        self.name = f"sra-{kind}"

    def __call__(self, out, batch, teacher_out):
        out, target = out.float(), teacher_out["vector"].float()
        if self.kind == "mse":
            return F.mse_loss(out, target)
        return (1 - F.cosine_similarity(out, target, dim=-1)).mean()


def make_loss(loss, *, alpha: float = 0.0, temperature: float = 1.0):
    """A loss object for a name in :data:`LOSSES` (``alpha``/``temperature`` for the logit
    losses); an object or callable is returned as it is."""
    if callable(loss):
        return loss
    if loss in ("ce", "hard"):
        return HardLabelLoss()
    if loss in LOGIT_KINDS:
        return LogitLoss(loss, alpha, temperature)
    if loss in ("sra-mse", "sra-cosine"):
        return SentenceVectorLoss(loss[4:])
    raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")


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


def last_attention_kl(s, t, layer, mask, *, attention="qk", backend="auto"):
    """MiniLM's attention KL between the student's last layer and the teacher's ``layer``, from
    taps dicts (``queries``/``keys`` for ``attention="qk"``, ``scores`` for ``"scores"``)."""
    if attention == "qk":
        sq, sk = s["queries"][-1], s["keys"][-1]
        return attention_kl_qk(sq, sk, t["queries"][layer].to(sq.dtype),
                               t["keys"][layer].to(sk.dtype), attention_mask=mask,
                               backend=backend)
    scores = s["scores"][-1]
    return attention_kl([scores], [t["scores"][layer].to(scores.dtype)], attention_mask=mask,
                        backend=backend)


def tinybert_attention_mse(s, t, att_map, mask, *, mode="exact", attention="qk",
                           backend="auto"):
    """TinyBERT's attention MSE summed over the student's layers (``att_map``: the teacher
    layer of each), from taps dicts as :func:`last_attention_kl`. Padded keys count 0 on both
    sides; ``mode="exact"``: the official arithmetic (every query row, mean over B*H*L*L);
    ``"masked"``: mean over real query x real key pairs."""
    if attention == "qk":
        kind = "tinybert" if mode == "exact" else "masked"
        return sum(attention_mse_qk(sq, sk, t["queries"][i].to(sq.dtype),
                                    t["keys"][i].to(sk.dtype), attention_mask=mask, mode=kind,
                                    backend=backend)
                   for sq, sk, i in zip(s["queries"], s["keys"], att_map))
    s_scores = s["scores"]
    t_scores = [t["scores"][i].to(s_scores[0].dtype) for i in att_map]
    if mode == "exact":
        return attention_mse(s_scores, t_scores, mode="tinybert", inputs="scores",
                             backend=backend)
    keys = (mask == 0)[:, None, None, :]  # padded keys: 0 on both sides, no inf - inf
    return attention_mse([x.masked_fill(keys, 0.0) for x in s_scores],
                         [x.masked_fill(keys, 0.0) for x in t_scores], mode="masked",
                         attention_mask=mask, backend=backend)


class TinyBERTLoss:
    """TinyBERT (Jiao et al. 2020) on a :class:`~kdfast.models.TransformerStudent`.

    ``stage="intermediate"``: attention MSE on raw scores + hidden MSE through ``fit_dense``
    (uniform layer map, embedding output as layer 0; ``style="minilm"``: last-layer attention
    KL + value relation instead), read from the student's ``taps``. ``attention="qk"``
    computes the attention losses from each layer's Q and K (:mod:`kdfast.losses.relation`:
    no L x L map, both models keep SDPA); ``"scores"`` from the materialised score maps (eager
    attention); the two agree to rounding, and the loss sets ``student.attention`` to the form
    it reads. ``stage="prediction"``:
    soft cross-entropy on logits (MSE for one output).

    ``mode="exact"``: the official code's definitions (scores <= -100 zeroed, means over
    B*H*L*L and B*L*d with padding, prediction ``mean(-p_T * log p_S)`` over batch x classes,
    so its scale falls with the class count, no T^2); ``mode="masked"``: real tokens only,
    soft CE summed over classes (a scale that does not depend on the class count).
    ``alpha`` (prediction stage): ``alpha * CE(labels) + (1 - alpha) * soft``; examples
    labelled -100 (augmented sentences) count in the soft part only. The last call's
    components are in ``self.components`` (detached device tensors, no host sync;
    ``self.last``: the same as floats, a host read)."""

    def __init__(self, student, teacher_config, *, stage="intermediate", mode="exact",
                 style="tinybert", temperature: float = 1.0, alpha: float = 0.0,
                 attention="qk", backend="auto"):
        check_probability("alpha", alpha)
        if alpha and stage != "prediction":
            raise ValueError("alpha (hard labels) applies to the prediction stage only")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if stage not in ("intermediate", "prediction"):
            raise ValueError(f"stage must be 'intermediate' or 'prediction', got {stage!r}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        self.student, self.stage, self.mode, self.style = student, stage, mode, style
        self.attention = attention
        self.temperature, self.alpha, self.backend = temperature, alpha, backend
        self.needs_labels = alpha > 0
        self.att_map, self.hid_map = (None, None)
        if stage == "intermediate":
            self.att_map, self.hid_map = check_pair(teacher_config, base_bert(student).config,
                                                    style=style,
                                                    projection=student.fit_dense is not None)
            self.needs = frozenset({attention, "values" if style == "minilm" else "hidden"})
            student.attention = attention
        else:
            self.needs = frozenset({"logits"})
        self.name = f"{'minilm' if style == 'minilm' else 'tinybert'}-{stage}-{mode}"
        self.components = {}

    @property
    def last(self) -> dict:
        """The last components as floats (a host sync: for inspection, not per step)."""
        return {k: float(v) for k, v in self.components.items()}

    def intermediate(self, s, t, mask):
        if self.style == "minilm":
            att = last_attention_kl(s, t, self.att_map[0], mask, attention=self.attention,
                                    backend=self.backend)
            heads = base_bert(self.student).config.num_attention_heads
            val = value_relation_kl(s["values"][-1], t["values"][-1], attention_mask=mask,
                                    num_relation_heads=heads, backend=self.backend)
            self.components = {"attention_kl": att.detach(), "value_relation": val.detach()}
            return att + val
        att = tinybert_attention_mse(s, t, self.att_map, mask, mode=self.mode,
                                     attention=self.attention, backend=self.backend)
        t_hidden = [t["hidden"][i] for i in self.hid_map]
        proj = self.student.fit_dense
        if self.mode == "exact":
            hid = hidden_mse(s["hidden"], t_hidden, projection=proj, tinybert_compat=True)
        else:
            hid = hidden_mse(s["hidden"], t_hidden, projection=proj, attention_mask=mask)
        self.components = {"attention": att.detach(), "hidden": hid.detach()}
        return att + hid

    def prediction(self, logits, t_logits):
        logits, t_logits = logits.float(), t_logits.float()
        if logits.shape[-1] == 1:
            return F.mse_loss(logits, t_logits)
        return soft_cross_entropy(logits, t_logits, temperature=self.temperature,
                                  tinybert_compat=self.mode == "exact",
                                  reduction="batchmean", backend=self.backend)

    def __call__(self, out, batch, teacher_out):
        if self.stage == "prediction":
            soft = self.prediction(out, teacher_out["logits"])
            self.components = {"prediction": soft.detach()}
            if not self.alpha:
                return soft
            y = batch["labels"]
            if y.dtype.is_floating_point:
                hard = F.mse_loss(out.float().squeeze(-1), y)
            else:  # a batch of augmented sentences only has no hard part
                hard = F.cross_entropy(out.float(), y, ignore_index=-100, reduction="sum") \
                    / (y != -100).sum().clamp_min(1)
            self.components["hard_ce"] = hard.detach()
            return self.alpha * hard + (1 - self.alpha) * soft
        if self.student.taps is None:
            raise RuntimeError("the student captured nothing: intermediate losses need "
                               "student.train() and student.capture = True")
        return self.intermediate(self.student.taps, teacher_out, batch["t_attention_mask"])


class MiniLMLoss(TinyBERTLoss):
    """MiniLM (Wang et al. 2020): last-layer attention KL + value-relation KL
    (``TinyBERTLoss(style="minilm")``)."""

    def __init__(self, student, teacher_config, *, mode="exact", attention="qk",
                 backend="auto"):
        super().__init__(student, teacher_config, stage="intermediate", mode=mode,
                         style="minilm", attention=attention, backend=backend)
