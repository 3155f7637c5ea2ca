"""Student networks on top of :class:`kdfast.nn.BiLSTM` (Tang et al. 2019; Wu et al. 2020).

* :class:`BiLSTMEncoder` -- word embeddings -> BiLSTM -> sentence vector. Embedding modes
  (Kim 2014 / Tang et al.): ``random`` and ``non-static`` (trainable), ``static`` (frozen),
  ``multichannel`` (a frozen and a trainable copy concatenated). Pooling: ``last`` (the
  last forward and last backward hidden states, Tang et al.), ``max`` or ``mean`` over time.
* :class:`BiLSTMClassifier` -- Tang's single-sentence student: encoder -> Linear -> ReLU ->
  dropout -> Linear.
* :class:`SiameseBiLSTMClassifier` -- Tang's pair student: one shared encoder, features
  ``[h1, h2, h1*h2, |h1-h2|]`` -> Linear -> ReLU -> dropout -> Linear.
* :class:`SRAEncoder` -- SRA stage 1: encoder -> Linear into the teacher's hidden size.

Every student keeps its constructor arguments in ``.config``; ``save_pretrained(dir)`` writes
``config.json`` + ``model.safetensors`` and :func:`load_student` rebuilds it in one call.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kdfast.nn.bilstm import BiLSTM
from kdfast.ops import _checks

EMBEDDING_MODES = ("random", "static", "non-static", "multichannel")
POOLINGS = ("last", "max", "mean")


class BiLSTMEncoder(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int = 300, hidden_size: int = 150,
                 num_layers: int = 1, pooling: str = "last", embedding_mode: str = "non-static",
                 dropout: float = 0.0, padding_idx: int = 0):
        super().__init__()
        if embedding_mode not in EMBEDDING_MODES:
            raise ValueError(f"embedding_mode must be one of {EMBEDDING_MODES}, got {embedding_mode!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        for name, v in (("vocab_size", vocab_size), ("embed_dim", embed_dim),
                        ("hidden_size", hidden_size), ("num_layers", num_layers)):
            _positive_int(name, v)
        _dropout(dropout)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, int):
                raise TypeError(f"padding_idx must be an int or None, got {padding_idx!r}")
            if not -vocab_size <= padding_idx < vocab_size:
                raise ValueError(f"padding_idx must lie in [-{vocab_size}, {vocab_size}) "
                                 f"(vocab_size={vocab_size}), got {padding_idx}")
        self.vocab_size, self.embed_dim = vocab_size, embed_dim
        self.pooling, self.embedding_mode = pooling, embedding_mode
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.static = None
        if embedding_mode == "multichannel":
            self.static = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
            self.static.weight.requires_grad_(False)
        if embedding_mode == "static":
            self.embedding.weight.requires_grad_(False)
        in_dim = embed_dim * (2 if self.static is not None else 1)
        self.lstm = BiLSTM(in_dim, hidden_size, num_layers=num_layers,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.output_size = 2 * hidden_size

    def init_embeddings(self, weights: torch.Tensor) -> None:
        """Copy ``weights`` [vocab, dim] into the word vectors (both channels)."""
        if not isinstance(weights, torch.Tensor) or not weights.dtype.is_floating_point:
            got = getattr(weights, "dtype", type(weights).__name__)
            raise TypeError("embedding weights must be a floating torch.Tensor "
                            f"[vocab_size, embed_dim], got {got}")
        if tuple(weights.shape) != (self.vocab_size, self.embed_dim):
            raise ValueError(f"embedding weights must have shape {(self.vocab_size, self.embed_dim)} "
                             f"(student vocab_size, embed_dim), got {tuple(weights.shape)}")
        with torch.no_grad():
            self.embedding.weight.copy_(weights)
            if self.static is not None:
                self.static.weight.copy_(weights)

    def forward(self, ids, lengths):
        _check_ids(ids, lengths, self.vocab_size)
        return self._encode(ids, lengths)

    def _encode(self, ids, lengths):  # arguments already checked
        x = self.embedding(ids)
        if self.static is not None:
            x = torch.cat([self.static(ids), x], dim=-1)
        out, (h_n, _) = self.lstm(x, lengths=lengths)
        if self.pooling == "last":  # last layer: forward state at the last real token, backward at the first
            return torch.cat([h_n[-2], h_n[-1]], dim=-1)
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :]
                < lengths.to(ids.device)[:, None]).unsqueeze(-1)
        if self.pooling == "max":
            return out.masked_fill(~mask, float("-inf")).amax(1)
        return (out * mask).sum(1) / lengths.to(out.device, out.dtype)[:, None].clamp_min(1)


def _positive_int(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be a positive int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _dropout(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"dropout must be a number in [0, 1], got {p!r}")
    return p


def _check_ids(ids, lengths, vocab_size, suffix=""):
    """ids [B, T] integer token ids in [0, vocab_size); lengths [B] ints in [1, T]. A host
    sync for the ranges: an out-of-range id would be a device assert on CUDA."""
    name = "ids" + suffix
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, T] of token ids, "
                        f"got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"{name} must have shape [B, T] with B, T >= 1, got {tuple(ids.shape)}")
    if lengths is None:
        raise ValueError(f"lengths{suffix} is required: a [B] int tensor of row lengths "
                         f"in [1, T={ids.shape[1]}]")
    lname = "lengths" + suffix
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{lname} must be a [B] int tensor, got {type(lengths).__name__}")
    _checks.row_lengths(lname, lengths, name, ids, ids.shape[1])
    lo, hi = ids.aminmax()
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} must lie in [0, vocab_size={vocab_size}), got values in "
                         f"[{lo}, {hi}]")


class _Student(nn.Module):
    """Config keeping, saving and the batch interface shared by the students."""

    def _keep_config(self, **kwargs):
        self.config = {"class": type(self).__name__, **kwargs}

    def save_pretrained(self, path, tokenizer=None, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.config)
        if extra:
            cfg["kdfast"] = extra
        (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(path / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))

    def num_parameters(self, embeddings: bool = True) -> int:
        skip = set()
        if not embeddings:
            skip = {id(p) for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


def _encoder_args(vocab_size, embed_dim, hidden_size, num_layers, pooling, embedding_mode,
                  dropout, padding_idx):
    return dict(vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size,
                num_layers=num_layers, pooling=pooling, embedding_mode=embedding_mode,
                dropout=dropout, padding_idx=padding_idx)


class BiLSTMClassifier(_Student):
    """Tang et al.'s single-sentence student (SST-2 sizes: hidden 150, fc 200)."""

    def __init__(self, vocab_size: int, num_labels: int = 2, embed_dim: int = 300,
                 hidden_size: int = 150, fc_size: int = 200, num_layers: int = 1,
                 pooling: str = "last", embedding_mode: str = "non-static", dropout: float = 0.1,
                 padding_idx: int = 0):
        super().__init__()
        _positive_int("num_labels", num_labels)
        _positive_int("fc_size", fc_size)
        _dropout(dropout)
        enc = _encoder_args(vocab_size, embed_dim, hidden_size, num_layers, pooling,
                            embedding_mode, 0.0, padding_idx)
        self._keep_config(num_labels=num_labels, fc_size=fc_size, dropout=dropout,
                          **{k: v for k, v in enc.items() if k != "dropout"})
        self.encoder = BiLSTMEncoder(**enc)
        self.head = nn.Sequential(nn.Linear(self.encoder.output_size, fc_size), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(fc_size, num_labels))
        self.num_labels = num_labels

    def forward(self, ids, lengths):
        return self.head(self.encoder(ids, lengths))

    def forward_batch(self, batch):
        return self(batch["s_input"], batch["s_lengths"])


class SiameseBiLSTMClassifier(_Student):
    """Tang et al.'s sentence-pair student (pair sizes: hidden 300, fc 400)."""

    def __init__(self, vocab_size: int, num_labels: int = 3, embed_dim: int = 300,
                 hidden_size: int = 300, fc_size: int = 400, num_layers: int = 1,
                 pooling: str = "last", embedding_mode: str = "non-static", dropout: float = 0.1,
                 padding_idx: int = 0):
        super().__init__()
        _positive_int("num_labels", num_labels)
        _positive_int("fc_size", fc_size)
        _dropout(dropout)
        enc = _encoder_args(vocab_size, embed_dim, hidden_size, num_layers, pooling,
                            embedding_mode, 0.0, padding_idx)
        self._keep_config(num_labels=num_labels, fc_size=fc_size, dropout=dropout,
                          **{k: v for k, v in enc.items() if k != "dropout"})
        self.encoder = BiLSTMEncoder(**enc)
        self.head = nn.Sequential(nn.Linear(4 * self.encoder.output_size, fc_size), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(fc_size, num_labels))
        self.num_labels = num_labels

    def forward(self, ids, lengths, ids_b, lengths_b):
        _check_ids(ids, lengths, self.encoder.vocab_size)
        _check_ids(ids_b, lengths_b, self.encoder.vocab_size, "_b")
        h1, h2 = self.encoder._encode(ids, lengths), self.encoder._encode(ids_b, lengths_b)
        return self.head(torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1))

    def forward_batch(self, batch):
        return self(batch["s_input"], batch["s_lengths"], batch["s_input_b"], batch["s_lengths_b"])


class SRAEncoder(_Student):
    """SRA stage 1: BiLSTM sentence vector mapped linearly into the teacher's hidden size."""

    def __init__(self, vocab_size: int, teacher_hidden: int, embed_dim: int = 300,
                 hidden_size: int = 150, num_layers: int = 1, pooling: str = "max",
                 embedding_mode: str = "non-static", padding_idx: int = 0):
        super().__init__()
        _positive_int("teacher_hidden", teacher_hidden)
        enc = _encoder_args(vocab_size, embed_dim, hidden_size, num_layers, pooling,
                            embedding_mode, 0.0, padding_idx)
        self._keep_config(teacher_hidden=teacher_hidden,
                          **{k: v for k, v in enc.items() if k != "dropout"})
        self.encoder = BiLSTMEncoder(**enc)
        self.proj = nn.Linear(self.encoder.output_size, teacher_hidden)

    def forward(self, ids, lengths):
        return self.proj(self.encoder(ids, lengths))

    def forward_batch(self, batch):
        return self(batch["s_input"], batch["s_lengths"])

    def classifier(self, num_labels: int, fc_size: int = 200, dropout: float = 0.1,
                   pair: bool = False) -> _Student:
        """SRA stage 2: a (siamese) classifier whose encoder starts from this one's weights."""
        c = {k: v for k, v in self.config.items() if k not in ("class", "teacher_hidden")}
        cls = SiameseBiLSTMClassifier if pair else BiLSTMClassifier
        model = cls(num_labels=num_labels, fc_size=fc_size, dropout=dropout, **c)
        model.encoder.load_state_dict(self.encoder.state_dict())
        return model


STUDENTS = {c.__name__: c for c in (BiLSTMClassifier, SiameseBiLSTMClassifier, SRAEncoder)}


def load_student(path, device="cpu") -> _Student:
    """Rebuild a saved student (``save_pretrained``) with its weights, in eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no student at {path} (config.json missing)")
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("kdfast", None)
    name = cfg.pop("class", None)
    if name not in STUDENTS:
        raise ValueError(f"{cfg_file}: unknown student class {name!r}; known: {sorted(STUDENTS)}")
    model = STUDENTS[name](**cfg)
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
    return model.to(device).eval()
