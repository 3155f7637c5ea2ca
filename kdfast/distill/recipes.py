"""The recipes: teacher fine-tuning, Tang et al. (BiLSTM distillation) and SRA (Wu et al.).

Each takes a teacher (a name/path for :func:`kdfast.models.load_teacher`, or a
:class:`~kdfast.models.TeacherClassifier` with ``tokenizer=``), a task (a name for
:func:`kdfast.data.tasks.load_task`, or a :class:`~kdfast.data.tasks.Task`) and an output
directory, and returns ``(model, results)``; results are also written to the directory.

Word vectors (a documented choice): the student reads the teacher's WordPiece vocabulary and
its embeddings start from the teacher's input embeddings (``embeddings="teacher"``), unless a
word2vec/GloVe file is given (``embeddings=PATH``) or ``embeddings="random"``.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from kdfast.data.tasks import Task, load_task
from kdfast.data.tokenize import collate, encode, length_batches, to_device
from kdfast.distill.trainer import Distiller
from kdfast.models.teachers import TeacherClassifier, load_teacher, resolve_teacher_path
from kdfast.nn.students import BiLSTMClassifier, SiameseBiLSTMClassifier, SRAEncoder

RECIPES = ("tang", "sra")


def _task(task, seed=0) -> Task:
    return task if isinstance(task, Task) else load_task(task, seed=seed)


def _teacher(teacher, tokenizer, num_labels=None, need_head=False):
    """(TeacherClassifier, tokenizer, path or None)."""
    if isinstance(teacher, TeacherClassifier):
        if tokenizer is None:
            raise ValueError("pass tokenizer= with an in-memory teacher")
        model, path = teacher, None
    else:
        path = resolve_teacher_path(str(teacher))
        model = load_teacher(path, None if need_head else num_labels)
        if tokenizer is None:
            from kdfast.data.tokenize import load_tokenizer

            tokenizer = load_tokenizer(path)
    if need_head and not model.has_trained_head:
        raise ValueError("the teacher has no fine-tuned task head: run `kdfast finetune` first "
                         "(or pass the directory it wrote)")
    if need_head and num_labels is not None and model.num_labels != num_labels:
        raise ValueError(f"the teacher has {model.num_labels} labels but the task has {num_labels}")
    if len(tokenizer) > model.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary "
                         f"has {model.vocab_size}: teacher/tokenizer vocabulary mismatch")
    return model, tokenizer, path


def _rank0() -> bool:
    from kdfast.distill.trainer import init_distributed

    d = init_distributed(_device().type)
    return d is None or d.get_rank() == 0


def _device(device=None):
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _encode_split(tokenizer, split, max_len, student=True, teacher=True):
    return encode(tokenizer, split.texts, split.texts_b, split.labels, max_len=max_len,
                  student=student, teacher=teacher)


# ------------------------------------------------------------------------- fine-tuning
def freeze_teacher(model: TeacherClassifier, train_layers: int | None) -> None:
    """Train only the top ``train_layers`` transformer layers and the head (None: all;
    0: the head alone). The input embeddings are frozen whenever train_layers is given."""
    if train_layers is None:
        return
    layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError("train_layers needs a BERT-like encoder (encoder.encoder.layer)")
    if not 0 <= train_layers <= len(layers):
        raise ValueError(f"train_layers must lie in [0, {len(layers)}], got {train_layers}")
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[len(layers) - train_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)


def finetune(teacher, task, out_dir, *, tokenizer=None, max_len: int = 64, overwrite=False,
             resume=False, seed: int = 0, train_layers: int | None = None, **train):
    """Fine-tune a teacher encoder + fresh head on the task (AdamW, linear schedule).

    ``train_layers``: fine-tune only the top N layers and the head (a CPU-time saver; None
    = the whole encoder). The fine-tuned teacher lands in ``out_dir/teacher`` (a directory
    ``load_teacher`` reads).
    """
    task = _task(task, seed)
    model, tokenizer, _ = _teacher(teacher, tokenizer, task.num_labels)
    if model.has_trained_head:
        raise ValueError("this teacher already has a fine-tuned head")
    freeze_teacher(model, train_layers)
    model.task, model.label_names = task.name, task.label_names
    opts = dict(epochs=2, batch_size=32, optimizer="adamw", lr=5e-5, weight_decay=0.01,
                scheduler="linear", warmup=0.1, metric=task.metric, seed=seed)
    opts.update(train)
    data = {s: _encode_split(tokenizer, getattr(task, s), max_len, student=False)
            for s in ("train", "dev", "test")}
    d = Distiller(None, model, "ce", train_data=data["train"], dev_data=data["dev"],
                  test_data=data["test"], out_dir=out_dir, tokenizer=tokenizer,
                  overwrite=overwrite, resume=resume, name="teacher", **opts)
    res = d.train()
    model.has_trained_head = True
    return model, res


# ------------------------------------------------------------------------- teacher outputs
@torch.inference_mode()
def teacher_outputs(teacher: TeacherClassifier, examples, *, vector: str | None = None,
                    batch_size: int = 128, device=None, progress: bool = False, bf16=None):
    """Teacher logits [N, C] (and sentence vectors [N, H] if ``vector``) for examples.
    ``bf16``: autocast to bfloat16 (default: on a GPU only; True also on a CPU)."""
    device = _device(device)
    teacher.to(device).eval()
    logits = [None] * len(examples)
    vecs = [None] * len(examples)
    batches = length_batches(examples, batch_size, "t_ids")
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="teacher", unit="batch", leave=False)
    for idx in it:
        b = to_device(collate([examples[i] for i in idx]), device)
        with torch.autocast(device.type, torch.bfloat16,
                            enabled=device.type == "cuda" if bf16 is None else bool(bf16)):
            lg, v = teacher.outputs(b["t_input_ids"], b["t_attention_mask"], b["t_token_type_ids"],
                                    vector=vector)
        lg = lg.float().cpu()
        v = None if v is None else v.float().cpu()
        for j, i in enumerate(idx):
            logits[i] = lg[j]
            if v is not None:
                vecs[i] = v[j]
    return torch.stack(logits), (torch.stack(vecs) if vector else None)


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _teacher_id(teacher, path):
    if path is not None:
        files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
        # the weight files' names, sizes and times (not the path: a copied directory matches)
        return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files] or [str(path)]
    # an in-memory teacher: a cheap digest of its weights
    with torch.no_grad():
        return [float(sum(p.double().sum() for p in teacher.parameters()))]


def transfer_set(teacher, tokenizer, split, *, cache=None, device=None, **kw):
    """Tang et al.'s transfer set: the training sentences plus their augmentations, each with
    the teacher's logits (``t_logits``; and sentence vector ``t_vec`` if ``vector``) and a
    label (the gold label for originals, the teacher's argmax for augmented ones).

    Written to ``cache`` (a ``.pt`` file) and reused when the teacher, data and settings match.
    Under torchrun, rank 0 builds and caches it while the other ranks wait, then read it.
    """
    from kdfast.distill.trainer import init_distributed

    dist = init_distributed(_device(device).type)
    if dist is None or cache is None:
        return _transfer_set(teacher, tokenizer, split, cache=cache, device=device, **kw)
    if dist.get_rank() == 0:
        out = _transfer_set(teacher, tokenizer, split, cache=cache, device=device, **kw)
        dist.barrier()
        return out
    dist.barrier()
    return _transfer_set(teacher, tokenizer, split, cache=cache, device=device, **kw)


def _transfer_set(teacher, tokenizer, split, *, cache=None, augment: bool = True, n_iter=None,
                  p_mask=0.1, p_pos=0.1, p_ng=0.25, max_ngram=5, seed=0, max_len=64,
                  vector: str | None = None, teacher_path=None, device=None, progress=False,
                  bf16=None):
    from kdfast.data.augment import Augmenter

    pair = split.texts_b is not None
    n_iter = (10 if pair else 20) if n_iter is None else n_iter
    key = _fingerprint(_teacher_id(teacher, teacher_path), split.texts, split.texts_b, augment,
                       n_iter, p_mask, p_pos, p_ng, max_ngram, seed, max_len, vector, bf16)
    if cache is not None and Path(cache).is_file():
        saved = torch.load(cache, weights_only=False)
        if saved.get("key") == key:
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
    logits, vecs = teacher_outputs(teacher, ex, vector=vector, device=device, progress=progress,
                                   bf16=bf16)
    labels = [g if g is not None else int(a) for g, a in zip(gold, logits.argmax(-1).tolist())]
    if logits.shape[-1] == 1:  # regression: the label is the teacher's prediction
        labels = [g if g is not None else float(v) for g, v in zip(gold, logits[:, 0].tolist())]
    stats = {"originals": len(split), "augmented": n_aug, "augment_s": t_aug,
             "teacher_s": time.perf_counter() - t0 - t_aug, "n_iter": n_iter}
    saved = {"key": key, "texts_a": texts_a, "texts_b": texts_b, "labels": labels,
             "logits": logits, "vecs": vecs, "stats": stats}
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, cache)
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
                  hidden_size=None, fc_size=None, pooling=None, embedding_mode="non-static",
                  num_layers=1, dropout=0.1, pair=False, seed=0):
    """A Tang student (``kind="tang"``) or an SRA encoder (``kind="sra"``)."""
    torch.manual_seed(seed)
    w, dim = student_embeddings(embeddings, teacher, tokenizer, seed)
    dim = dim or embed_dim
    if embeddings == "random" and embedding_mode in ("static", "multichannel"):
        raise ValueError(f"embedding_mode {embedding_mode!r} needs pre-trained vectors, "
                         "not embeddings='random'")
    hidden = hidden_size or (300 if pair else 150)
    common = dict(vocab_size=teacher.vocab_size, embed_dim=dim, hidden_size=hidden,
                  num_layers=num_layers, embedding_mode=embedding_mode,
                  padding_idx=tokenizer.pad_token_id or 0)
    if kind == "sra":
        model = SRAEncoder(teacher_hidden=teacher.encoder.config.hidden_size,
                           pooling=pooling or "max", **common)
    else:
        cls = SiameseBiLSTMClassifier if pair else BiLSTMClassifier
        model = cls(num_labels=num_labels, fc_size=fc_size or (400 if pair else 200),
                    pooling=pooling or "last", dropout=dropout, **common)
    if w is not None:
        model.encoder.init_embeddings(w)
    return model


TANG_TRAIN = dict(epochs=10, batch_size=50, optimizer="adadelta", lr=1.0, rho=0.95, alpha=0.0,
                  patience=3)


def tang(teacher, task, out_dir, *, tokenizer=None, loss="mse", augment=True, n_iter=None,
         p_mask=0.1, p_pos=0.1, p_ng=0.25, transfer_cache=None, embeddings="teacher",
         embedding_mode="non-static", hidden_size=None, fc_size=None, pooling=None,
         num_layers=1, dropout=0.1, max_len=64, seed=0, overwrite=False, resume=False,
         student=None, progress=True, teacher_bf16=None, **train):
    """Tang et al.: distil a fine-tuned teacher into a (siamese) BiLSTM on the augmented
    transfer set with ``alpha * CE + (1 - alpha) * soft``, soft = ``loss`` (mse | kl | soft_ce),
    or train it on the hard labels alone with ``loss="ce"`` (the baseline; no augmentation)."""
    task = _task(task, seed)
    if loss not in ("mse", "kl", "soft_ce", "ce"):
        raise ValueError(f"tang loss must be mse, kl, soft_ce or ce, got {loss!r}")
    t_model, tokenizer, t_path = _teacher(teacher, tokenizer, task.num_labels,
                                          need_head=loss != "ce")
    if _rank0() and out_dir is not None and Path(out_dir).exists() \
            and any(Path(out_dir).iterdir()) and not (overwrite or resume):
        raise FileExistsError(f"output directory {out_dir} already exists and is not empty: "
                              "pass --overwrite or --resume")
    dev = _encode_split(tokenizer, task.dev, max_len, teacher=False)
    test = _encode_split(tokenizer, task.test, max_len, teacher=False)
    stats = None
    if loss == "ce":
        train_data = _encode_split(tokenizer, task.train, max_len, teacher=False)
    else:
        cache = transfer_cache or (Path(out_dir) / "transfer.pt" if out_dir else None)
        train_data, stats = transfer_set(t_model, tokenizer, task.train, cache=cache,
                                         augment=augment, n_iter=n_iter, p_mask=p_mask,
                                         p_pos=p_pos, p_ng=p_ng, seed=seed, max_len=max_len,
                                         teacher_path=t_path, progress=progress,
                                         bf16=teacher_bf16)
    model = student or build_student("tang", t_model, tokenizer, task.num_labels,
                                     embeddings=embeddings, embedding_mode=embedding_mode,
                                     hidden_size=hidden_size, fc_size=fc_size, pooling=pooling,
                                     num_layers=num_layers, dropout=dropout, pair=task.is_pair,
                                     seed=seed)
    opts = {**TANG_TRAIN, "batch_size": 256 if task.is_pair else 50, "metric": task.metric,
            "seed": seed, "progress": progress, **train}
    d = Distiller(None, model, loss, train_data=train_data, dev_data=dev, test_data=test,
                  out_dir=out_dir, tokenizer=tokenizer, overwrite=overwrite or not resume,
                  resume=resume, name="student", **opts)  # the directory was checked above
    res = d.train()
    res["transfer_set"] = stats
    if out_dir is not None:
        (Path(out_dir) / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return model, res


SRA_STAGE1 = dict(epochs=5, batch_size=50, optimizer="adam", lr=1e-3, patience=None)


def sra(teacher, task, out_dir, *, tokenizer=None, sra_teacher=None, unlabelled=None,
        vector="mean", stage1_loss="mse", stage1=None, stage2="hard", embeddings="teacher",
        embedding_mode="non-static", hidden_size=None, fc_size=None, pooling="max",
        num_layers=1, dropout=0.1, max_len=64, seed=0, overwrite=False, resume=False,
        progress=True, transfer_cache=None, teacher_bf16=None, **train):
    """SRA (Wu et al. 2020). Stage 1: a BiLSTM encoder learns to reproduce the teacher's
    sentence vector (``vector``: mean | cls | pooler; loss mse | cosine) on unlabelled
    sentences (``unlabelled``: a list of sentences, or of sources for
    :func:`kdfast.data.tasks.unlabelled_sentences`; default: the task's training sentences).
    ``sra_teacher`` gives the encoder for stage 1 (default: ``teacher``; the paper uses a
    pre-trained, not fine-tuned, BERT). Stage 2 fine-tunes a classifier on top of the
    encoder: ``stage2="hard"`` on labels, ``"tang"`` with Tang-style distillation from the
    fine-tuned ``teacher``. Outputs: ``out_dir/stage1`` and ``out_dir/stage2``."""
    from kdfast.data.tasks import unlabelled_sentences

    task = _task(task, seed)
    if stage1_loss not in ("mse", "cosine"):
        raise ValueError(f"stage1_loss must be mse or cosine, got {stage1_loss!r}")
    if stage2 not in ("hard", "tang"):
        raise ValueError(f"stage2 must be 'hard' or 'tang', got {stage2!r}")
    out_dir = Path(out_dir) if out_dir else None
    if _rank0() and out_dir is not None and out_dir.exists() and any(out_dir.iterdir()) \
            and not (overwrite or resume):
        raise FileExistsError(f"output directory {out_dir} already exists and is not empty: "
                              "pass --overwrite or --resume")
    s1_teacher, tokenizer, s1_path = _teacher(sra_teacher if sra_teacher is not None else teacher,
                                              tokenizer, task.num_labels)
    if unlabelled is None:
        sentences = list(dict.fromkeys(task.train.texts + (task.train.texts_b or [])))
    elif all(isinstance(s, str) and (s.startswith("text:") or s in ("movie-sentences", "snli")
                                     or s.split(":", 1)[0] in ("csv", "tsv", "jsonl"))
             for s in unlabelled):
        sentences = unlabelled_sentences(unlabelled, seed=seed)
    else:
        sentences = list(unlabelled)
    if not sentences:
        raise ValueError("SRA stage 1 needs unlabelled sentences; none were given")
    # stage 1: teacher sentence vectors, cached like a transfer set (no augmentation)
    from kdfast.data.tasks import Split

    cache = transfer_cache or (out_dir / "stage1_vectors.pt" if out_dir else None)
    data, _ = transfer_set(s1_teacher, tokenizer, Split(sentences, [0] * len(sentences)),
                           cache=cache, augment=False, vector=vector, seed=seed, max_len=max_len,
                           teacher_path=s1_path, progress=progress, bf16=teacher_bf16)
    enc = build_student("sra", s1_teacher, tokenizer, task.num_labels, embeddings=embeddings,
                        embedding_mode=embedding_mode, hidden_size=hidden_size, pooling=pooling,
                        num_layers=num_layers, seed=seed)
    o1 = {**SRA_STAGE1, "seed": seed, "progress": progress,
          **{k: train[k] for k in ("log_every", "device", "amp") if k in train}, **(stage1 or {})}
    o1["patience"] = None
    d1 = Distiller(None, enc, f"sra-{stage1_loss}", train_data=data, out_dir=out_dir / "stage1"
                   if out_dir else None, tokenizer=tokenizer, overwrite=overwrite or not resume,
                   resume=resume, name="encoder", **o1)
    res1 = d1.train()
    clf = enc.classifier(task.num_labels, fc_size=fc_size or (400 if task.is_pair else 200),
                         dropout=dropout, pair=task.is_pair)
    if stage2 == "tang":
        model, res2 = tang(teacher, task, out_dir / "stage2" if out_dir else None,
                           tokenizer=tokenizer, student=clf, seed=seed, max_len=max_len,
                           overwrite=overwrite, resume=resume, progress=progress, **train)
    else:
        model, res2 = tang(s1_teacher, task, out_dir / "stage2" if out_dir else None,
                           tokenizer=tokenizer, student=clf, loss="ce", seed=seed,
                           max_len=max_len, overwrite=overwrite, resume=resume,
                           progress=progress, **train)
    res = {"stage1": res1, "stage2": res2, "test": res2.get("test"), "dev": res2.get("dev"),
           "unlabelled_sentences": len(sentences)}
    if out_dir is not None:
        (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return model, res
