"""A ``transformers.Trainer`` that distils: :class:`DistillationTrainer`.

>>> from kdfast.integrations.transformers import DistillationSpec, DistillationTrainer
>>> trainer = DistillationTrainer(
...     model=student,                      # e.g. a 3-layer BertForSequenceClassification
...     args=TrainingArguments("runs/x", per_device_train_batch_size=32, report_to="tensorboard"),
...     teacher="runs/teacher/teacher",     # a model, or a path (kdfast finetune's, or any HF one)
...     distillation=DistillationSpec(logit_loss="kl", temperature=2.0, alpha=0.5,
...                                   intermediate="tinybert"),
...     train_dataset=train, eval_dataset=dev, data_collator=DataCollatorWithPadding(tok))
>>> trainer.train()
>>> trainer.save_model("runs/x/student")    # save_pretrained: BertForSequenceClassification.from_pretrained

The loss (:class:`DistillationSpec`) on the Trainer's global batch (every micro-batch of a
gradient-accumulation step on every process):

    logit_weight * (alpha * CE(student, labels) + (1 - alpha) * soft(student, teacher))
    + intermediate_weight * (TinyBERT: attention MSE + hidden MSE through fit_dense
                             | MiniLM: last-layer attention KL + value-relation KL)

``soft`` is kdfast's fused ``kl`` (T^2-scaled), ``soft_ce`` or ``mse`` (:mod:`kdfast.losses`);
without labels in the batch it is the soft term alone (as :func:`kdfast.losses.distillation_loss`).
Attention is compared from each layer's Q and K (``attention="qk"``, the default:
:func:`kdfast.models.capture.capture_qkv`, both models keep SDPA, no L x L map) or from raw
score maps (``"scores"``: :func:`kdfast.models.capture.capture_attention_scores`, eager);
the teacher's taps come from :class:`kdfast.models.TeacherTaps`, the layer maps from
:func:`kdfast.distill.objectives.check_pair` (TinyBERT's uniform map unless ``layer_map``).

Normalisation: every term is a sum over its items divided by the number of items in the
whole global batch -- examples (or real tokens for [B, L, C] logits) for the soft term,
labelled examples for CE, real tokens / real query x key pairs for the masked intermediate
losses (``mode="masked"``; ``mode="exact"`` is the official TinyBERT code's mean over padded
entries, normalised by the padded entries of the global batch). The counts are taken once
per optimiser step in :meth:`~DistillationTrainer.get_batch_samples` (and summed across
processes, one all-reduce), which is the Trainer's ``num_items_in_batch`` contract: so
1 x 8, 4 x 2 (gradient accumulation) and 2 processes x 4 give the same update, with dynamic
padding. ``loss_is_scaled_for_ga = True``.

The teacher: loaded from a path when given one (a ``kdfast finetune`` directory -> its
:class:`~kdfast.models.TeacherClassifier`; a ``*ForSequenceClassification`` checkpoint; else a
bare encoder, for intermediate-only transfer), moved to the student's device, put in eval
mode with ``requires_grad_(False)``, run under ``torch.no_grad`` in the Trainer's mixed
precision (``accelerator.autocast()``, like the student's forward and the loss). It is an
attribute of the Trainer, not a submodule of the student: never wrapped by DDP/FSDP, never in
the optimiser, never in a checkpoint. TinyBERT's ``fit_dense`` projection (needed when the
widths differ, or ``projection=True``) IS a submodule of the student (``kdfast_fit_dense``):
the optimiser trains it, DDP averages its gradient, checkpoints hold it and ``resume`` restores
it; ``save_pretrained`` leaves it out of ``model.safetensors`` (so ``from_pretrained`` loads
the student cleanly) and it is written beside it as ``kdfast_fit_dense.safetensors``
(:func:`kdfast.models.load_transformer_student` reads it back).

Logging: the Trainer's own ``report_to`` (TensorBoard under ``output_dir/runs``, wandb, ...)
receives, at each logging step, ``loss`` and ``learning_rate`` (the Trainer's) plus
``loss_<component>`` for every term (``hard_ce``, ``soft``, ``attention``, ``hidden``,
``attention_kl``, ``value_relation``; unweighted, each the mean over its items) and
``examples_per_s`` over the interval. Components are summed on the device and read (one
all-reduce, one host transfer) at logging steps only.

Tested (tests/test_integrations.py, CPU): one process; gradient accumulation; DDP with two
gloo processes (torch.multiprocessing, the environment ``torchrun`` sets). FSDP and DeepSpeed
are NOT tested; ``torch.nn.DataParallel`` (several GPUs in one process) is refused.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer

from kdfast.distill.objectives import (
    ATTENTION,
    LOGIT_KINDS,
    MODES,
    STYLES,
    check_pair,
    last_attention_kl,
    tinybert_attention_mse,
)
from kdfast.integrations.logging import DeviceMeans
from kdfast.losses import Projection, distillation_loss, hidden_mse, value_relation_kl
from kdfast.models.teachers import TeacherClassifier
from kdfast.models.transformer import ATTENTION as CAPTURE
from kdfast.models.transformer import FIT_DENSE_FILE, TeacherTaps, base_bert
from kdfast.ops import _backend, _checks

INTERMEDIATE = STYLES  # the intermediate transfer styles: TinyBERT's or MiniLM's
PROJECTION = "kdfast_fit_dense"  # the student's submodule holding TinyBERT's fit_dense
# per-micro-batch item counts, in this order
COUNTS = ("examples", "labelled", "tokens", "pairs", "padded_tokens", "padded_pairs")

__all__ = ["DistillationSpec", "DistillationTrainer", "load_teacher_model"]


@dataclass
class DistillationSpec:
    """What to distil. ``logit_loss``: ``kl`` | ``soft_ce`` | ``mse`` | None (intermediate
    only); ``alpha``: weight of the hard-label CE (0 = soft targets only); ``intermediate``:
    None | ``tinybert`` | ``minilm``; ``mode``: ``masked`` (real tokens only) | ``exact``
    (the official TinyBERT arithmetic, padding included); ``layer_map``: teacher layer
    (0-based) for each student layer, TinyBERT only (default: uniform); ``projection``:
    TinyBERT's ``fit_dense`` (None: when the widths differ); ``attention``: ``qk`` (the
    attention losses from each layer's Q and K, no L x L map; both models keep SDPA) or
    ``scores`` (from the raw score maps, eager attention) -- equal to rounding."""

    logit_loss: str | None = "kl"
    temperature: float = 1.0
    alpha: float = 0.0
    intermediate: str | None = None
    mode: str = "masked"
    layer_map: list | None = None
    projection: bool | None = None
    logit_weight: float = 1.0
    intermediate_weight: float = 1.0
    backend: str = "auto"
    attention: str = "qk"

    def validate(self) -> "DistillationSpec":
        if self.logit_loss not in (None,) + LOGIT_KINDS:
            raise ValueError(f"logit_loss must be one of {LOGIT_KINDS} or None, got {self.logit_loss!r}")
        if self.intermediate not in (None,) + INTERMEDIATE:
            raise ValueError(f"intermediate must be one of {INTERMEDIATE} or None, got "
                             f"{self.intermediate!r}")
        if self.logit_loss is None and self.intermediate is None:
            raise ValueError("nothing to distil: give logit_loss and/or intermediate")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {a!r}")
        _checks.temperature(self.temperature)  # the losses' own range, checked up front
        for name in ("logit_weight", "intermediate_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        _checks.choice("backend", self.backend, _backend.BACKENDS)
        if self.projection is not None:
            _checks.flag("projection", self.projection)
        if self.layer_map is not None:
            if self.intermediate != "tinybert":
                raise ValueError("layer_map applies to intermediate='tinybert' only")
            if not isinstance(self.layer_map, (list, tuple)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in self.layer_map):
                raise TypeError(f"layer_map must be a list of teacher layer numbers (ints), "
                                f"got {self.layer_map!r}")
        return self


def load_teacher_model(teacher):
    """A teacher module from a module or a path/name: a ``kdfast finetune`` directory gives its
    :class:`~kdfast.models.TeacherClassifier`, a ``*ForSequenceClassification`` checkpoint that
    class, anything else its bare encoder (intermediate transfer only)."""
    if isinstance(teacher, torch.nn.Module):
        return teacher
    if not isinstance(teacher, (str, Path)):
        raise TypeError(f"teacher must be a torch module or a path/name, got {type(teacher).__name__}")
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from kdfast.models.teachers import load_teacher, resolve_teacher_path

    path = resolve_teacher_path(str(teacher))
    if (Path(path) / "kdfast_head.json").is_file():
        return load_teacher(path)
    try:
        cfg = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise ValueError(f"cannot load teacher {teacher!r}: {e}") from None
    if any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or [])):
        return AutoModelForSequenceClassification.from_pretrained(path)
    return AutoModel.from_pretrained(path)


def _layer_count(model) -> int:
    return base_bert(model).config.num_hidden_layers


class DistillationTrainer(Trainer):
    """``transformers.Trainer`` + ``teacher=`` + ``distillation=`` (a :class:`DistillationSpec`
    or a dict of its fields); everything else as for the Trainer. See the module docstring."""

    loss_is_scaled_for_ga = True  # compute_loss normalises over the whole accumulated batch

    def __init__(self, model=None, args=None, *trainer_args, teacher=None, distillation=None,
                 **trainer_kwargs):
        if teacher is None:
            raise ValueError("DistillationTrainer needs teacher= (a model or a path)")
        if model is None:
            raise ValueError("DistillationTrainer needs the student as model= (model_init is "
                             "not supported)")
        spec = distillation if isinstance(distillation, DistillationSpec) \
            else DistillationSpec(**(distillation or {}))
        self.distillation = spec.validate()
        teacher = load_teacher_model(teacher)
        if teacher is model:
            raise ValueError("the teacher and the student are the same module")
        if isinstance(teacher, TeacherClassifier) and not teacher.has_trained_head \
                and spec.logit_loss is not None:
            raise ValueError("the teacher's classification head is untrained: fine-tune it first "
                             "(kdfast finetune)")
        self._att_map = self._hid_map = self._heads = None
        if spec.intermediate is not None:
            self._prepare_intermediate(teacher, model, spec)
        if args is not None and getattr(args, "ddp_find_unused_parameters", False) is None:
            # intermediate only: the student's head gets no gradient; else every parameter does
            args.ddp_find_unused_parameters = spec.logit_loss is None
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("DistillationTrainer does not support torch.nn.DataParallel (several "
                             "GPUs in one process): launch one process per GPU with torchrun or "
                             "accelerate launch")
        self.model_accepts_loss_kwargs = False  # the student's own loss is never used
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        values = [_layer_count(teacher) - 1] if spec.intermediate == "minilm" else []
        self._teacher_taps = TeacherTaps(teacher, value_layers=values) \
            if spec.intermediate is not None else None
        self._needs = set()
        if spec.logit_loss is not None:
            self._needs.add("logits")
        if spec.intermediate == "tinybert":
            self._needs |= {spec.attention, "hidden"}
        elif spec.intermediate == "minilm":
            self._needs |= {spec.attention, "values"}
        self._components = DeviceMeans()
        self._components_step = 0
        self._window_t, self._window_examples = time.perf_counter(), 0

    # ------------------------------------------------------------------ set-up
    def _prepare_intermediate(self, teacher, student, spec):
        t_cfg, s_cfg = base_bert(teacher).config, base_bert(student).config
        att, hid = check_pair(t_cfg, s_cfg, style=spec.intermediate, projection=spec.projection)
        if spec.layer_map is not None:
            m = list(spec.layer_map)
            if len(m) != s_cfg.num_hidden_layers or not all(
                    isinstance(j, int) and 0 <= j < t_cfg.num_hidden_layers for j in m):
                raise ValueError(f"layer_map must give a teacher layer in [0, "
                                 f"{t_cfg.num_hidden_layers}) for each of the student's "
                                 f"{s_cfg.num_hidden_layers} layers, got {spec.layer_map!r}")
            att, hid = m, [0] + [j + 1 for j in m]
        self._att_map, self._hid_map = att, hid
        self._heads = s_cfg.num_attention_heads
        if spec.intermediate != "tinybert":
            return
        d_s, d_t = s_cfg.hidden_size, t_cfg.hidden_size
        want = spec.projection if spec.projection is not None else d_s != d_t
        proj = getattr(student, PROJECTION, None)
        if want and proj is None:
            dev = next(student.parameters()).device
            student.add_module(PROJECTION, Projection(d_s, d_t).to(dev))
        elif want and (proj.in_features, proj.out_features) != (d_s, d_t):
            raise ValueError(f"the student's {PROJECTION} maps {proj.in_features} -> "
                             f"{proj.out_features}, the pair needs {d_s} -> {d_t}")
        if want:  # kept out of model.safetensors; written beside it (see _save)
            keys = {f"{PROJECTION}.{k}" for k in getattr(student, PROJECTION).state_dict()}
            student._keys_to_ignore_on_save = set(student._keys_to_ignore_on_save or ()) | keys

    @property
    def projection(self):
        """TinyBERT's ``fit_dense`` (a submodule of the student), or None."""
        return getattr(self.accelerator.unwrap_model(self.model), PROJECTION, None)

    # ------------------------------------------------------------------ item counts
    @staticmethod
    def _counts(batch, device) -> torch.Tensor:
        """The items of one micro-batch (:data:`COUNTS`), as an int64 tensor on ``device``;
        no host sync (shapes are host-known, the rest is computed on the device)."""
        ids = batch["input_ids"]
        bsz, length = ids.shape[0], ids.shape[-1]
        mask = batch.get("attention_mask")
        full = lambda v: torch.full((), v, dtype=torch.long, device=device)  # noqa: E731
        if mask is None:
            tokens, pairs = full(bsz * length), full(bsz * length * length)
        else:
            n = (mask.to(device) != 0).long().sum(-1)
            tokens, pairs = n.sum(), (n * n).sum()
        labels = batch.get("labels")
        if labels is None:
            labelled = full(0)
        elif labels.dtype.is_floating_point:
            labelled = full(labels.numel())
        else:
            labelled = (labels.to(device).long() != -100).long().sum()  # uint8 would wrap
        return torch.stack([full(bsz), labelled, tokens, pairs, full(bsz * length),
                            full(bsz * length * length)])

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimiser step and, as ``num_items_in_batch``, their item
        counts summed over the micro-batches and over every process (one all-reduce)."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        counts = sum(self._counts(b, device) for b in batches)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._window_examples += sum(b["input_ids"].shape[0] for b in batches)
        return batches, {"counts": counts}

    # ------------------------------------------------------------------ forward passes
    def _teacher_outputs(self, inputs) -> dict:
        batch = {"t_input_ids": inputs["input_ids"], "t_attention_mask": inputs["_mask"],
                 "t_token_type_ids": inputs.get("token_type_ids")}
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            if self._teacher_taps is not None:
                return self._teacher_taps.taps(batch, self._needs)
            if isinstance(self.teacher, TeacherClassifier):
                return {"logits": self.teacher.forward_batch(batch)}
            out = self.teacher(input_ids=batch["t_input_ids"], attention_mask=batch["t_attention_mask"],
                               token_type_ids=batch["t_token_type_ids"])
            return {"logits": getattr(out, "logits", None)}

    def _student_outputs(self, model, inputs):
        """The student's forward THROUGH ``model`` (the DDP wrapper, when there is one), with
        hidden states, attention (Q and K, or raw scores: ``spec.attention``) and last-layer
        values when the spec needs them. The
        fit_dense projection runs inside that forward (a forward hook on the student) and its
        outputs REPLACE the student's ``hidden_states`` in the forward's output: DDP must see every
        parameter it syncs in the graph of the forward it wraps (with
        ``find_unused_parameters=True`` it would otherwise mark the projection unused and then
        see its gradient arrive)."""
        kw = {k: v for k, v in inputs.items() if k != "_mask"}
        if self.distillation.intermediate is None:
            return model(**kw), None
        unwrapped = self.accelerator.unwrap_model(model)
        values, handles = {}, []
        if self.distillation.intermediate == "minilm":
            layer = base_bert(unwrapped).encoder.layer[-1].attention.self.value
            handles.append(layer.register_forward_hook(lambda m, a, o: values.__setitem__(0, o)))
        proj = getattr(unwrapped, PROJECTION, None)
        if proj is not None:
            def project(module, args, out):
                out.hidden_states = tuple(proj(h) for h in out.hidden_states)
                return out

            handles.append(unwrapped.register_forward_hook(project))
        try:
            with CAPTURE[self.distillation.attention](unwrapped) as cap:
                out = model(**kw, output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()
        taps = {"values": [values[0]] if values else [],
                "hidden": list(out.hidden_states)}  # through fit_dense when there is one
        if self.distillation.attention == "qk":
            taps["queries"], taps["keys"] = list(cap.queries), list(cap.keys)
        else:
            taps["scores"] = list(cap.scores)
        return out, taps

    # ------------------------------------------------------------------ the loss
    def _terms(self, s_out, s_taps, t, inputs, labels):
        """{name: (sum over this micro-batch's items, count key)} of every loss term."""
        spec, mask, terms = self.distillation, inputs["_mask"], {}
        if spec.logit_loss is not None:
            s_logits, t_logits = s_out.logits, t.get("logits")
            if t_logits is None:
                raise ValueError("the teacher gives no logits (a bare encoder): use "
                                 "logit_loss=None or a teacher with a classification head")
            t_logits = t_logits.to(s_logits.dtype)
            token_level = s_logits.dim() == 3
            rows = mask.bool() if token_level else None
            soft = distillation_loss(s_logits, t_logits, None, kind=spec.logit_loss,
                                     temperature=spec.temperature, reduction="none", mask=rows,
                                     backend=spec.backend).sum()
            if spec.logit_loss == "mse":  # per element, as distillation_loss's default
                soft = soft / s_logits.shape[-1]
            terms["soft"] = (soft, "tokens" if token_level else "examples")
            if spec.alpha > 0 and labels is not None:
                if s_logits.shape[-1] == 1 or labels.dtype.is_floating_point:
                    hard = F.mse_loss(s_logits.float().reshape(labels.shape), labels.float(),
                                      reduction="sum")
                else:
                    hard = F.cross_entropy(s_logits.float().reshape(-1, s_logits.shape[-1]),
                                           labels.reshape(-1), ignore_index=-100, reduction="sum")
                terms["hard_ce"] = (hard, "labelled")
        if spec.intermediate is not None:
            local = self._counts({"input_ids": inputs["input_ids"], "attention_mask": mask},
                                 mask.device)
            n = dict(zip(COUNTS, local))
            if spec.intermediate == "minilm":
                att = last_attention_kl(s_taps, t, self._att_map[0], mask,
                                        attention=spec.attention, backend=spec.backend)
                val = value_relation_kl(s_taps["values"][-1], t["values"][-1], attention_mask=mask,
                                        num_relation_heads=self._heads, backend=spec.backend)
                terms["attention_kl"] = (att * n["tokens"], "tokens")
                terms["value_relation"] = (val * n["tokens"], "tokens")
            else:
                t_hidden = [t["hidden"][j] for j in self._hid_map]
                att = tinybert_attention_mse(s_taps, t, self._att_map, mask, mode=spec.mode,
                                             attention=spec.attention, backend=spec.backend)
                if spec.mode == "exact":  # s_taps["hidden"]: already through fit_dense
                    hid = hidden_mse(s_taps["hidden"], t_hidden, tinybert_compat=True)
                    terms["attention"] = (att * n["padded_pairs"], "padded_pairs")
                    terms["hidden"] = (hid * n["padded_tokens"], "padded_tokens")
                else:
                    hid = hidden_mse(s_taps["hidden"], t_hidden, attention_mask=mask)
                    terms["attention"] = (att * n["pairs"], "pairs")
                    terms["hidden"] = (hid * n["tokens"], "tokens")
        return terms

    def _weights(self, terms) -> dict:
        spec = self.distillation
        soft_w = (1 - spec.alpha) if "hard_ce" in terms else 1.0
        w = {"soft": spec.logit_weight * soft_w, "hard_ce": spec.logit_weight * spec.alpha}
        for k in ("attention", "hidden", "attention_kl", "value_relation"):
            w[k] = spec.intermediate_weight
        return w

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The distillation loss of one micro-batch, normalised over the global batch when
        ``num_items_in_batch`` holds the counts from :meth:`get_batch_samples` (training), over
        this batch otherwise (evaluation)."""
        inputs = dict(inputs)
        label_names = set(self.label_names or ()) | {"labels"}
        labels = inputs.get("labels")
        local = self._counts(inputs, inputs["input_ids"].device)
        for k in label_names:
            inputs.pop(k, None)
        mask = inputs.get("attention_mask")
        inputs["_mask"] = mask if mask is not None else torch.ones_like(inputs["input_ids"])
        with self.accelerator.autocast():  # the teacher and the loss in the Trainer's precision
            t = self._teacher_outputs(inputs)
            s_out, s_taps = self._student_outputs(model, inputs)
            terms = self._terms(s_out, s_taps, t, inputs, labels)
        glob = num_items_in_batch.get("counts") if isinstance(num_items_in_batch, dict) else None
        denom = glob if glob is not None else local
        scale = self.accelerator.num_processes if glob is not None else 1  # DDP averages grads
        weights = self._weights(terms)
        loss, parts = 0.0, {}
        for name, (total, key) in terms.items():
            value = total.float() / denom[COUNTS.index(key)].clamp_min(1) * scale
            parts[name] = value.detach()
            loss = loss + weights[name] * value
        if model.training and glob is not None:
            self._components.add(parts, count=False)
        if return_outputs:
            return loss, type(s_out)(logits=s_out.logits)
        return loss

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict, start_time=None) -> None:
        """Adds ``loss_<component>`` (means over the logging interval, all processes) and
        ``examples_per_s`` to the Trainer's training logs."""
        if "loss" in logs:  # a training log: every process is here (the Trainer gathered the loss)
            steps = max(1, self.state.global_step - self._components_step)
            world = self.accelerator.num_processes
            reduce = (lambda x: self.accelerator.gather(x[None]).mean(0)) if world > 1 else None
            for k, v in self._components.totals(reduce).items():
                logs[f"loss_{k}"] = v / steps
            now = time.perf_counter()
            logs["examples_per_s"] = self._window_examples * world / max(1e-9, now - self._window_t)
            self._window_t, self._window_examples = now, 0
            self._components_step = self.state.global_step
        if start_time is None:  # transformers < 4.47's Trainer.log takes no start_time
            super().log(logs)
        else:
            super().log(logs, start_time)

    # ------------------------------------------------------------------ saving and resuming
    def _save(self, output_dir=None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        proj = self.projection
        if proj is not None and self.args.should_save:
            from safetensors.torch import save_file

            out = Path(output_dir if output_dir is not None else self.args.output_dir)
            save_file({k: v.detach().cpu().contiguous() for k, v in proj.state_dict().items()},
                      str(out / FIT_DENSE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        proj = getattr(model if model is not None else self.model, PROJECTION, None)
        path = Path(resume_from_checkpoint) / FIT_DENSE_FILE
        if proj is not None:
            if not path.is_file():
                raise ValueError(f"the checkpoint {resume_from_checkpoint} has no {FIT_DENSE_FILE} "
                                 "for the student's fit_dense projection")
            from safetensors.torch import load_file

            proj.load_state_dict(load_file(str(path)))

    def distillation_config(self) -> dict:
        return asdict(self.distillation)

