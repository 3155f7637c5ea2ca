"""Teachers: a BERT-style encoder with a classification head that kdfast fine-tunes.

``load_teacher(name_or_path, num_labels=None)`` accepts ``minilm-l6`` (the offline
all-MiniLM-L6-v2, fetched by :mod:`kdfast.data.fetch`), a local directory or a HuggingFace
name (the normal hub path, for users who have one). A directory written by
:meth:`TeacherClassifier.save_pretrained` (``kdfast finetune``) carries its head
(``kdfast_head.json`` + ``kdfast_head.safetensors``), and a transformers
``BertForSequenceClassification`` checkpoint (a fine-tuned hub teacher) keeps its own head
(pooler + classifier, the same logits); any other model gets a fresh head with ``num_labels``
outputs and must be fine-tuned first.

Pooling for the head: ``mean`` over real tokens for sentence-transformers checkpoints (the
vector all-MiniLM-L6-v2 was trained to produce, read from its ``1_Pooling/config.json``),
``cls`` otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

POOLINGS = ("cls", "mean", "pooler")


def resolve_teacher_path(name_or_path: str) -> str:
    """``minilm-l6`` -> the fetched model; a ``kdfast finetune --out DIR`` directory -> the
    teacher saved in it (``DIR/teacher``); another existing path as it is; else a hub name."""
    if name_or_path == "minilm-l6":
        from kdfast.data.fetch import fetch

        return str(fetch("minilm-l6"))
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path
    if not (path / "config.json").exists() and (path / "teacher" / "config.json").is_file():
        return str(path / "teacher")
    return str(path)


def _default_pooling(path: str) -> str:
    cfg = Path(path) / "1_Pooling" / "config.json"
    if cfg.is_file():
        if json.loads(cfg.read_text()).get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


class TeacherClassifier(nn.Module):
    """``encoder`` (a transformers BertModel-like module) + dropout + Linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "cls",
                 dropout: float = 0.1, label_names=None, task: str | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.num_labels = num_labels
        self.label_names = list(label_names or [])
        self.task = task
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)
        self.has_trained_head = False

    @property
    def vocab_size(self) -> int:
        return self.encoder.config.vocab_size

    def input_embeddings(self) -> torch.Tensor:
        return self.encoder.get_input_embeddings().weight

    def outputs(self, input_ids, attention_mask, token_type_ids=None, vector: str | None = None):
        """``(logits, sentence vector of kind vector)`` from one encoder pass (vector=None: no vector)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids)
        return self.head_logits(out, attention_mask), (
            None if vector is None else self._pool(out, attention_mask, vector))

    def head_logits(self, encoder_out, attention_mask, *, detach_head: bool = False):
        """The task head on an encoder output (pooling, dropout, Linear). ``detach_head``: the
        head's weights take no gradient (importance scoring of the encoder)."""
        pooled = self._pool(encoder_out, attention_mask, self.pooling)
        if detach_head:
            return torch.nn.functional.linear(pooled, self.head.weight.detach(),
                                              self.head.bias.detach())
        return self.head(self.dropout(pooled))

    def taps(self, batch, needs, *, vector: str | None = None) -> dict:
        """What a distillation loss reads from this teacher (``needs`` within ``{"logits",
        "vector"}``), from one encoder pass over a collated batch."""
        unknown = set(needs) - {"logits", "vector"}
        if unknown:
            raise ValueError(f"a TeacherClassifier gives logits and a sentence vector, not "
                             f"{sorted(unknown)} (wrap it in kdfast.models.TeacherTaps)")
        mask = batch["t_attention_mask"]
        out = self.encoder(input_ids=batch["t_input_ids"], attention_mask=mask,
                           token_type_ids=batch.get("t_token_type_ids"))
        res = {}
        if "logits" in needs:
            res["logits"] = self.head_logits(out, mask)
        if "vector" in needs:
            res["vector"] = self._pool(out, mask, vector or self.pooling)
        return res

    @staticmethod
    def _pool(out, attention_mask, kind):
        if kind not in POOLINGS:
            raise ValueError(f"sentence vector must be one of {POOLINGS}, got {kind!r}")
        if kind == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise ValueError("this encoder has no pooler; use pooling 'cls' or 'mean'")
            return out.pooler_output
        h = out.last_hidden_state
        if kind == "cls":
            return h[:, 0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    def sentence_vector(self, input_ids, attention_mask, token_type_ids=None, kind=None):
        """The sentence representation: ``cls`` (last layer [CLS]), ``mean`` (last layer over
        real tokens) or ``pooler`` (BERT's pooler output)."""
        if kind is not None and kind not in POOLINGS:
            raise ValueError(f"sentence vector kind must be one of {POOLINGS}, got {kind!r}")
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids)
        return self._pool(out, attention_mask, kind or self.pooling)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.outputs(input_ids, attention_mask, token_type_ids)[0]

    def forward_batch(self, batch):
        return self(batch["t_input_ids"], batch["t_attention_mask"], batch["t_token_type_ids"])

    def save_pretrained(self, path, tokenizer=None):
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(str(path))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        meta = {"num_labels": self.num_labels, "pooling": self.pooling,
                "label_names": self.label_names, "task": self.task}
        (path / "kdfast_head.json").write_text(json.dumps(meta, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(path / "kdfast_head.safetensors"))


def load_teacher(name_or_path: str, num_labels: int | None = None, *, pooling: str | None = None,
                 dropout: float = 0.1) -> TeacherClassifier:
    """A :class:`TeacherClassifier` (see the module docstring)."""
    from transformers import AutoModel

    path = resolve_teacher_path(name_or_path)
    head_meta = Path(path) / "kdfast_head.json"
    try:
        encoder = AutoModel.from_pretrained(path)
    except OSError as e:
        raise ValueError(_cannot_load(name_or_path, e)) from None
    if head_meta.is_file():
        from safetensors.torch import load_file

        meta = json.loads(head_meta.read_text())
        if num_labels is not None and num_labels != meta["num_labels"]:
            raise ValueError(f"teacher {name_or_path} was fine-tuned with {meta['num_labels']} "
                             f"labels but the task has {num_labels}")
        t = TeacherClassifier(encoder, meta["num_labels"], meta["pooling"], dropout,
                              meta.get("label_names"), meta.get("task"))
        t.head.load_state_dict(load_file(str(Path(path) / "kdfast_head.safetensors")))
        t.has_trained_head = True
        return t
    if "BertForSequenceClassification" in (getattr(encoder.config, "architectures", None) or []):
        return _from_hf_classifier(path, name_or_path, num_labels, dropout)
    if num_labels is None:
        raise ValueError(f"teacher {name_or_path!r} has no task head yet: give num_labels and "
                         "fine-tune it first (kdfast finetune)")
    return TeacherClassifier(encoder, num_labels, pooling or _default_pooling(path), dropout)


def _from_hf_classifier(path, name, num_labels, dropout) -> TeacherClassifier:
    """A fine-tuned transformers BertForSequenceClassification as a TeacherClassifier with
    the same logits: its head is Linear(dropout(pooler output)), i.e. pooling ``pooler``."""
    from transformers import BertForSequenceClassification

    hf = BertForSequenceClassification.from_pretrained(path)
    n = hf.config.num_labels
    if num_labels is not None and num_labels != n:
        raise ValueError(f"teacher {name} is a classifier with {n} labels but the task has "
                         f"{num_labels}")
    id2label = getattr(hf.config, "id2label", None) or {}
    names = [id2label[i] for i in range(n)] if set(id2label) == set(range(n)) else None
    t = TeacherClassifier(hf.bert, n, "pooler", dropout, names)
    t.head.load_state_dict(hf.classifier.state_dict())
    t.has_trained_head = True
    return t


def _cannot_load(name, error) -> str:
    """One line: transformers' OSError spans several, and a mistyped local name reads as a
    hub name that the hub does not have."""
    first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    where = "" if Path(str(name)).exists() else "no local directory of that name; as a hub name: "
    return f"cannot load teacher {str(name)!r}: {where}{first.strip()}"


def teacher_tokenizer(name_or_path: str):
    """The tokenizer of a teacher: a local directory must hold its tokenizer files."""
    from transformers import AutoTokenizer

    from kdfast.data.tokenize import load_tokenizer

    path = resolve_teacher_path(name_or_path)
    if Path(path).is_dir():
        return load_tokenizer(path)
    return AutoTokenizer.from_pretrained(path)


def load_encoder(teacher, *, architecture: bool = False):
    """``(model, path or None)``: a pre-trained (not fine-tuned) encoder, for general /
    task-agnostic distillation and extraction. ``teacher``: ``minilm-l6``, a directory or hub
    name (a BertModel; ``architecture=True`` loads the checkpoint's own BERT class instead,
    e.g. BertForMaskedLM with its MLM head), a TeacherClassifier (its encoder) or a model."""
    import transformers

    if isinstance(teacher, TeacherClassifier):
        return teacher.encoder, None
    if isinstance(teacher, nn.Module):
        return teacher, None
    path = resolve_teacher_path(str(teacher))
    try:
        if not architecture:
            return transformers.AutoModel.from_pretrained(path), path
        config = transformers.AutoConfig.from_pretrained(path)
    except OSError as e:
        raise ValueError(_cannot_load(teacher, e)) from None
    arch = (getattr(config, "architectures", None) or ["BertModel"])[0]
    cls = getattr(transformers, arch, None)
    if cls is None or not arch.startswith("Bert"):
        raise ValueError(f"teacher {path} is a {arch}, not a BERT model")
    return cls.from_pretrained(path), path


def load_bert(name_or_path: str):
    """``(model, tokenizer, path)`` for a pre-trained BERT checkpoint (its own architecture):
    ``minilm-l6``, a local directory or a hub name."""
    model, path = load_encoder(name_or_path, architecture=True)
    return model, teacher_tokenizer(path), path
