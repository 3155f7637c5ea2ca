"""Tang et al. 2019: distil a fine-tuned teacher into a (siamese) BiLSTM.

1. Transfer set: the training sentences plus ``n_iter`` augmented copies each (masking,
   POS-guided replacement, n-gram sampling), every example labelled with the teacher's
   logits (:func:`transfer_set`, cached in ``out_dir/transfer.pt``).
2. The student: word embeddings (the teacher's input embeddings, a word2vec/GloVe file or
   random) -> BiLSTM -> Linear -> ReLU -> Linear (:func:`build_student`).
3. Training: ``alpha * CE + (1 - alpha) * ||z_T - z_S||^2`` (``loss="mse"``; ``kl`` /
   ``soft_ce`` with a temperature), the CE label being the gold one for originals and the
   teacher's argmax for augmented copies; Adam by default (the paper: AdaDelta, see
   TANG_TRAIN); ``loss="ce"`` trains on the hard labels alone.

Word vectors (a documented choice): the student reads the teacher's WordPiece vocabulary and
its embeddings start from the teacher's input embeddings (``embeddings="teacher"``), unless a
word2vec/GloVe file is given (``embeddings=PATH``) or ``embeddings="random"``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdfast.data.tokenize import encode
from kdfast.distill import outputs, plumbing
from kdfast.distill.objectives import make_loss
from kdfast.distill.trainer import Distiller, TrainConfig
from kdfast.nn.students import (
    EMBEDDING_MODES,
    POOLINGS,
    BiLSTMClassifier,
    SiameseBiLSTMClassifier,
    SRAEncoder,
)

TANG_LOSSES = ("mse", "kl", "soft_ce", "ce")
# The paper trains with AdaDelta (lr 1.0, rho 0.95) on 20 augmented copies per sentence (10 for
# pairs): on a CPU that is 20 min for 5k sentences, mostly the teacher labelling 100k
# sentences. kdfast's defaults fit ~5 min there (benchmarks/results/recipes-tasks.md): a
# transfer set of about TRANSFER_BUDGET examples (never more copies than the paper's), Adam,
# and a schedule in steps with a floor for small data and early stopping on dev.
# `--n-aug 20 --optimizer adadelta --lr 1.0 --epochs 10 --patience 3` is the paper's
# (`--n-aug 10` for pairs).
TANG_TRAIN = dict(epochs=3, min_steps=600, batch_size=50, optimizer="adam", lr=1e-3, rho=0.95,
                  patience=2)
TRANSFER_BUDGET = 15_000
# The weight of the hard labels for classification (0 for regression) unless given: the paper's
# objective with alpha = 0.5. On the larger tasks the budget leaves one augmented copy per
# sentence, and the soft term alone gained only ~1.5 points over hard labels there; with both
# terms, +3.07 to +4.76 on all five tasks of benchmarks/results/recipes-tasks.md (two seeds
# each). `--alpha 0` is the paper's pure distillation.
TANG_ALPHA = 0.5


def default_fc_size(pair: bool) -> int:
    """The classifier's hidden layer: the paper's 200, 400 on a siamese pair's features."""
    return 400 if pair else 200


def default_n_iter(n: int, pair: bool) -> int:
    """Augmented copies per example: the paper's 20 (10 for pairs) for small sets, fewer so
    that the transfer set stays near TRANSFER_BUDGET examples, at least 1."""
    return max(1, min(10 if pair else 20, TRANSFER_BUDGET // max(1, n) - 1))


def transfer_set(teacher, tokenizer, split, *, cache=None, device=None, **kw):
    """Tang et al.'s transfer set: the training sentences plus their augmentations, each with
    the teacher's logits (``t_logits``; and sentence vector ``t_vec`` if ``vector``) and a
    label (the gold label for originals, the teacher's argmax for augmented ones).
    Returns ``(examples, stats)``.

    Written atomically to ``cache`` (a ``.pt`` file) and reused when the teacher, data and
    settings match; a truncated cache is a ValueError naming the file. Under torchrun, rank 0
    builds and caches it while the other ranks wait, then read it."""
    def build():
        return _transfer_set(teacher, tokenizer, split, cache=cache, device=device, **kw)

    return build() if cache is None else \
        plumbing.rank0_first(plumbing.torch_device(device).type, build)


def _transfer_set(teacher, tokenizer, split, *, cache=None, augment: bool = True, n_iter=None,
                  p_mask=0.1, p_pos=0.1, p_ng=0.25, max_ngram=5, seed=0, max_len=64,
                  vector: str | None = None, teacher_path=None, device=None, progress=False,
                  bf16=None):
    from kdfast.data.augment import Augmenter

    pair = split.texts_b is not None
    n_iter = default_n_iter(len(split), pair) if n_iter is None else n_iter
    key = plumbing.fingerprint(plumbing.teacher_id(teacher, teacher_path), split.texts, split.texts_b, augment,
                       n_iter, p_mask, p_pos, p_ng, max_ngram, seed, max_len, vector, bf16)
    if cache is not None and Path(cache).is_file():
        saved = outputs.load_checked(cache, what="transfer-set cache", weights_only=False)
        if not isinstance(saved, dict) or "key" not in saved:
            raise ValueError(f"cannot read the transfer-set cache {cache}: it is not a kdfast "
                             "transfer set; delete it or choose another cache path")
        if saved["key"] == key:
            return _transfer_examples(tokenizer, saved, max_len), saved["stats"]
    t0 = time.perf_counter()
    texts_a, texts_b, gold = list(split.texts), None if not pair else list(split.texts_b), list(split.labels)
    n_aug = 0
    if augment and n_iter > 0:
        aug = Augmenter(split.texts + (split.texts_b or []), p_mask=p_mask, p_pos=p_pos, p_ng=p_ng,
                        max_ngram=max_ngram, n_iter=n_iter, seed=seed)
        samples = aug.augment(split.texts, split.texts_b)
        n_aug = len(samples)
        texts_a += [s[1] for s in samples]
        if pair:
            texts_b += [s[2] for s in samples]
        gold += [None] * n_aug
    t_aug = time.perf_counter() - t0
    ex = encode(tokenizer, texts_a, texts_b, None, max_len=max_len, student=False)
    logits, vecs = plumbing.teacher_outputs(teacher, ex, vector=vector, device=device, progress=progress,
                                   bf16=bf16)
    labels = [g if g is not None else int(a) for g, a in zip(gold, logits.argmax(-1).tolist())]
    if logits.shape[-1] == 1:  # regression: the label is the teacher's prediction
        labels = [g if g is not None else float(v) for g, v in zip(gold, logits[:, 0].tolist())]
    stats = {"originals": len(split), "augmented": n_aug, "augment_s": t_aug,
             "teacher_s": time.perf_counter() - t0 - t_aug, "n_iter": n_iter}
    saved = {"key": key, "texts_a": texts_a, "texts_b": texts_b, "labels": labels,
             "logits": logits, "vecs": vecs, "stats": stats}
    if cache is not None:
        outputs.atomic_save(saved, cache)
    return _transfer_examples(tokenizer, saved, max_len), stats


def _transfer_examples(tokenizer, saved, max_len):
    ex = encode(tokenizer, saved["texts_a"], saved["texts_b"], saved["labels"], max_len=max_len,
                teacher=False)
    lg = saved["logits"].tolist()
    vecs = None if saved["vecs"] is None else saved["vecs"].tolist()
    for i, e in enumerate(ex):
        e["t_logits"] = lg[i]
        if vecs is not None:
            e["t_vec"] = vecs[i]
    return ex


# ------------------------------------------------------------------------- students
def check_student_options(*, embeddings="teacher", embedding_mode="non-static",
                          lstm_hidden_size=None, fc_size=None, pooling=None, num_layers=1,
                          dropout=0.1) -> None:
    """ValueErrors naming the argument, before any work."""
    plumbing.check_choice("embedding_mode", embedding_mode, EMBEDDING_MODES)
    if pooling is not None:
        plumbing.check_choice("pooling", pooling, POOLINGS)
    plumbing.check_positive_int("lstm_hidden_size", lstm_hidden_size, none_ok=True)
    plumbing.check_positive_int("fc_size", fc_size, none_ok=True)
    plumbing.check_positive_int("num_layers", num_layers)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    if not isinstance(embeddings, (str, Path)):
        raise ValueError(f"embeddings must be 'teacher', 'random' or a word-vector file, got "
                         f"{embeddings!r}")
    if embeddings not in ("teacher", "random") and not Path(embeddings).expanduser().is_file():
        raise FileNotFoundError(f"embeddings: no word-vector file {embeddings} (or give "
                                "'teacher' or 'random')")
    if embeddings == "random" and embedding_mode in ("static", "multichannel"):
        raise ValueError(f"embedding_mode {embedding_mode!r} needs pre-trained vectors, "
                         "not embeddings='random'")


def student_embeddings(embeddings, teacher, tokenizer, seed=0):
    """(weights or None, embed_dim) for ``embeddings`` = ``teacher`` | ``random`` | PATH."""
    if embeddings == "teacher":
        w = teacher.input_embeddings().detach().float().cpu().clone()
        return w, w.shape[1]
    if embeddings == "random":
        return None, None
    from kdfast.data.vectors import load_word_vectors

    w, found = load_word_vectors(embeddings, tokenizer.get_vocab(), seed=seed)
    if w.shape[0] < teacher.vocab_size:  # tokenizer smaller than the embedding table
        w = torch.cat([w, torch.zeros(teacher.vocab_size - w.shape[0], w.shape[1])])
    print(f"kdfast: {found} of {len(tokenizer)} vocabulary entries found in {embeddings}")
    return w, w.shape[1]


def build_student(kind, teacher, tokenizer, num_labels, *, embeddings="teacher", embed_dim=300,
                  lstm_hidden_size=None, fc_size=None, pooling=None, embedding_mode="non-static",
                  num_layers=1, dropout=0.1, pair=False, seed=0):
    """A Tang student (``kind="tang"``) or an SRA encoder (``kind="sra"``); BiLSTM width
    ``lstm_hidden_size`` (default 150 single, 300 pairs)."""
    check_student_options(embeddings=embeddings, embedding_mode=embedding_mode,
                          lstm_hidden_size=lstm_hidden_size, fc_size=fc_size, pooling=pooling,
                          num_layers=num_layers, dropout=dropout)
    torch.manual_seed(seed)
    w, dim = student_embeddings(embeddings, teacher, tokenizer, seed)
    dim = dim or embed_dim
    hidden = lstm_hidden_size if lstm_hidden_size is not None else (300 if pair else 150)
    common = dict(vocab_size=teacher.vocab_size, embed_dim=dim, hidden_size=hidden,
                  num_layers=num_layers, embedding_mode=embedding_mode,
                  padding_idx=tokenizer.pad_token_id or 0)
    if kind == "sra":
        model = SRAEncoder(teacher_hidden=teacher.encoder.config.hidden_size,
                           pooling=pooling or "max", **common)
    else:
        cls = SiameseBiLSTMClassifier if pair else BiLSTMClassifier
        model = cls(num_labels=num_labels, fc_size=fc_size or default_fc_size(pair),
                    pooling=pooling or "last", dropout=dropout, **common)
    if w is not None:
        model.encoder.init_embeddings(w)
    return model


# ------------------------------------------------------------------------- the recipe
@dataclass
class TangOptions:
    """Tang's options besides the training ones (see :func:`tang`); ``check`` validates."""
    loss: str = "mse"
    augment: bool = True
    n_iter: int | None = None
    p_mask: float = 0.1
    p_pos: float = 0.1
    p_ng: float = 0.25
    alpha: float | None = None  # None: TANG_ALPHA, 0 for regression (alpha_for)
    temperature: float = 1.0
    transfer_cache: object = None
    embeddings: object = "teacher"
    embedding_mode: str = "non-static"
    lstm_hidden_size: int | None = None
    fc_size: int | None = None
    pooling: str | None = None
    num_layers: int = 1
    dropout: float = 0.1
    max_len: int = 64
    teacher_bf16: bool | None = None

    @classmethod
    def split(cls, kwargs: dict):
        """``(TangOptions fields, the rest)`` of a keyword dict."""
        names = set(cls.__dataclass_fields__)
        return ({k: v for k, v in kwargs.items() if k in names},
                {k: v for k, v in kwargs.items() if k not in names})

    def check(self, *, student_given: bool = False) -> "TangOptions":
        plumbing.check_choice("tang loss", self.loss, TANG_LOSSES)
        plumbing.check_positive_int("n_iter", self.n_iter, none_ok=True)
        for name in ("p_mask", "p_pos", "p_ng"):
            plumbing.check_probability(name, getattr(self, name))
        if self.alpha is not None:
            plumbing.check_probability("alpha", self.alpha)
        if self.p_mask + self.p_pos > 1:
            raise ValueError(f"p_mask + p_pos must be <= 1, got {self.p_mask + self.p_pos}")
        plumbing.check_positive("temperature", self.temperature)
        plumbing.check_positive_int("max_len", self.max_len)
        if not student_given:
            check_student_options(embeddings=self.embeddings, embedding_mode=self.embedding_mode,
                                  lstm_hidden_size=self.lstm_hidden_size, fc_size=self.fc_size,
                                  pooling=self.pooling, num_layers=self.num_layers,
                                  dropout=self.dropout)
        return self

    def alpha_for(self, task) -> float | None:
        """The hard labels' weight on ``task``: as given, else TANG_ALPHA for classification
        and 0 for regression or ``loss="ce"`` (None while the task is not loaded)."""
        if task is not None and task.num_labels == 1 and self.alpha:
            raise ValueError(f"alpha={self.alpha}: a regression task has no hard labels to mix "
                             "in (alpha must be 0)")
        if self.alpha is not None or task is None:
            return self.alpha
        return 0.0 if task.num_labels == 1 or self.loss == "ce" else TANG_ALPHA

    def train_config(self, task, train: dict) -> TrainConfig:
        """The training options on ``task`` (None: checks them before the task is loaded)."""
        batch = {} if task is None else {"batch_size": 256 if task.is_pair else 50}
        return plumbing.train_config(TANG_TRAIN, batch, {"alpha": self.alpha_for(task),
                                                         "temperature": self.temperature}, train)


def _renamed(train: dict) -> None:
    if "hidden_size" in train:
        raise TypeError("hidden_size is a BERT student's width; the BiLSTM's is lstm_hidden_size")


def tang(teacher, task, out_dir, *, tokenizer=None, loss="mse", augment=True, n_iter=None,
         p_mask=0.1, p_pos=0.1, p_ng=0.25, alpha=None, temperature=1.0, transfer_cache=None,
         embeddings="teacher", embedding_mode="non-static", lstm_hidden_size=None, fc_size=None,
         pooling=None, num_layers=1, dropout=0.1, max_len=64, seed=0, overwrite=False,
         resume=False, student=None, progress=True, teacher_bf16=None, **train):
    """Tang et al.: distil a fine-tuned teacher into a (siamese) BiLSTM on the augmented
    transfer set with ``alpha * CE + (1 - alpha) * soft``, soft = ``loss`` (mse | kl | soft_ce),
    ``alpha`` default :data:`TANG_ALPHA` (0 for regression), or train it on the hard labels alone with ``loss="ce"`` (the baseline; no augmentation).
    Returns ``(student, results)``; ``out_dir`` gets ``student/``, ``results.json``,
    ``report.md`` and the cached ``transfer.pt``."""
    _renamed(train)
    opts = TangOptions(
        loss=loss, augment=augment, n_iter=n_iter, p_mask=p_mask, p_pos=p_pos, p_ng=p_ng,
        alpha=alpha, temperature=temperature, transfer_cache=transfer_cache,
        embeddings=embeddings, embedding_mode=embedding_mode, lstm_hidden_size=lstm_hidden_size,
        fc_size=fc_size, pooling=pooling, num_layers=num_layers, dropout=dropout,
        max_len=max_len, teacher_bf16=teacher_bf16).check(student_given=student is not None)
    opts.train_config(None, dict(train, seed=seed, progress=progress))  # fails early
    plumbing.check_out(out_dir, overwrite=overwrite, resume=resume)
    task = plumbing.as_task(task)
    cfg = opts.train_config(task, dict(train, seed=seed, progress=progress,
                                       metric=train.get("metric") or task.metric))
    t_model, tokenizer, t_path = plumbing.load_teacher_and_tokenizer(
        teacher, tokenizer, num_labels=task.num_labels, need_head=loss != "ce",
        max_len=opts.max_len)
    if student is None:
        student = build_student("tang", t_model, tokenizer, task.num_labels,
                                embeddings=embeddings, embedding_mode=embedding_mode,
                                lstm_hidden_size=lstm_hidden_size, fc_size=fc_size,
                                pooling=pooling, num_layers=num_layers, dropout=dropout,
                                pair=task.is_pair, seed=seed)
    out = plumbing.output_dir(out_dir, overwrite=overwrite, resume=resume)
    return run_tang(t_model, tokenizer, t_path, task, out, student, opts, cfg, seed=seed,
                    resume=resume, progress=progress)


def run_tang(t_model, tokenizer, t_path, task, out_dir, student, opts: TangOptions,
             cfg: TrainConfig, *, seed=0, resume=False, progress=True):
    """Tang's steps 1 and 3 into an output directory that the caller prepared."""
    dev = plumbing.encode_split(tokenizer, task.dev, opts.max_len, teacher=False)
    test = plumbing.encode_split(tokenizer, task.test, opts.max_len, teacher=False)
    stats = None
    if opts.loss == "ce":
        train_data = plumbing.encode_split(tokenizer, task.train, opts.max_len, teacher=False)
    else:
        cache = opts.transfer_cache or (Path(out_dir) / "transfer.pt" if out_dir else None)
        train_data, stats = transfer_set(t_model, tokenizer, task.train, cache=cache,
                                         augment=opts.augment, n_iter=opts.n_iter,
                                         p_mask=opts.p_mask, p_pos=opts.p_pos, p_ng=opts.p_ng,
                                         seed=seed, max_len=opts.max_len, teacher_path=t_path,
                                         progress=progress, bf16=opts.teacher_bf16)
    loss = make_loss(opts.loss, alpha=cfg.alpha, temperature=opts.temperature)
    d = Distiller(None, student, loss, train_data=train_data, dev_data=dev, test_data=test,
                  out_dir=out_dir, tokenizer=tokenizer, resume=resume, stage=True,
                  name="student", config=cfg, meta={"transfer_set": stats})
    return student, d.train()
