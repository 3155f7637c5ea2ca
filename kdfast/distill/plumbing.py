"""What every recipe does the same way: the task, the teacher and its tokenizer (loaded once),
the task's training sentences, option checks, the output directory (checked once, before
anything is written; :mod:`kdfast.distill.outputs`) and the results (rank 0, atomically)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from kdfast.data.fetch import fingerprint
from kdfast.data.tasks import Task, load_task
from kdfast.data.tokenize import encode, in_example_order, inference_batches
from kdfast.distill import outputs
from kdfast.distill.checks import (check_choice, check_positive, check_positive_int,
                                   check_probability)
from kdfast.distill.trainer import TrainConfig, init_distributed, is_rank0, torch_device
from kdfast.models.teachers import TeacherClassifier, load_encoder, load_teacher, resolve_teacher_path

__all__ = ["as_task", "check_choice", "check_positive", "check_positive_int", "check_probability",
           "encode_split", "fingerprint", "labelled_logits", "load_teacher_and_tokenizer",
           "output_dir", "rank0_first", "sentences_from", "teacher_id", "teacher_outputs",
           "torch_device", "train_config", "training_sentences", "write_results"]


# ------------------------------------------------------------------------- options
def train_config(defaults: dict, *overrides) -> TrainConfig:
    """The recipe's training defaults updated by ``overrides`` (dicts; None values are
    skipped), validated: a bad option fails here, before the recipe writes anything. Epochs
    given without ``min_steps`` mean exactly those epochs (the default floor is dropped; a
    floor the user gave stays)."""
    merged, floor_given = dict(defaults), False
    for o in overrides:
        given = {k: v for k, v in (o or {}).items() if v is not None}
        floor_given = floor_given or "min_steps" in given
        if "epochs" in given and not floor_given:
            merged.pop("min_steps", None)
        merged.update(given)
    return TrainConfig.build(merged)


# ------------------------------------------------------------------------- task and teacher
def as_task(task) -> Task:
    """A :class:`~kdfast.data.tasks.Task` (given, or loaded by name). A name always means the
    same splits: the training seed never moves the test set (or a teacher's training data)."""
    return task if isinstance(task, Task) else load_task(task)


def training_sentences(task: Task) -> list[str]:
    """The task's training sentences, both sides of pairs, each once (first occurrence order):
    the default unlabelled text of SRA stage 1, general distillation and task-agnostic ETD."""
    return list(dict.fromkeys(task.train.texts + (task.train.texts_b or [])))


def sentences_from(unlabelled, task: Task | None = None, *, seed: int = 0) -> list[str]:
    """Unlabelled sentences: ``unlabelled`` is a list of sentences, or of sources for
    :func:`kdfast.data.tasks.unlabelled_sentences` (task names, text files); None gives
    the task's training sentences. Raises ValueError when there are none."""
    from kdfast.data.tasks import OFFLINE, unlabelled_sentences

    if unlabelled is None:
        if task is None:
            raise ValueError("give unlabelled sentences (unlabelled=) or a task")
        sentences = training_sentences(task)
    elif isinstance(unlabelled, str):
        raise TypeError("unlabelled must be a list of sentences or of sources, not a string")
    elif unlabelled and all(isinstance(s, str) and (
            s.startswith("text:") or s.split("@")[0] in OFFLINE
            or s.split(":", 1)[0] in ("csv", "tsv", "jsonl") or Path(s).expanduser().is_file())
            for s in unlabelled):
        sentences = unlabelled_sentences(list(unlabelled), seed=seed)
    else:
        sentences = [s for s in unlabelled if isinstance(s, str) and s.strip()]
    if not sentences:
        raise ValueError("unlabelled: no sentences were given")
    return sentences


def load_teacher_and_tokenizer(teacher, tokenizer=None, *, num_labels=None,
                               need_head: bool = False, encoder: bool = False, max_len=None):
    """``(model, tokenizer, path or None)``, loaded once per recipe.

    ``encoder=False``: a :class:`~kdfast.models.TeacherClassifier` (``need_head``: it must
    carry a fine-tuned head with ``num_labels`` labels). ``encoder=True``: a pre-trained
    encoder (general distillation, task-agnostic ETD). An in-memory teacher needs
    ``tokenizer=``. ``max_len``, when given, must fit the teacher's position embeddings."""
    if encoder:
        model, path = load_encoder(teacher)
        vocab = model.config.vocab_size
    elif isinstance(teacher, TeacherClassifier):
        model, path = teacher, None
        vocab = model.vocab_size
    else:
        path = resolve_teacher_path(str(teacher))
        model = load_teacher(path, None if need_head else num_labels)
        vocab = model.vocab_size
    if tokenizer is None:
        if path is None:
            raise ValueError("pass tokenizer= with an in-memory teacher")
        from kdfast.models.teachers import teacher_tokenizer

        tokenizer = teacher_tokenizer(path)
    if not encoder and need_head and not model.has_trained_head:
        raise ValueError("the teacher has no fine-tuned task head: run `kdfast finetune` first "
                         "(or pass the directory it wrote)")
    if not encoder and need_head and num_labels is not None and model.num_labels != num_labels:
        raise ValueError(f"the teacher has {model.num_labels} labels but the task has {num_labels}")
    if len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary "
                         f"has {vocab}: teacher/tokenizer vocabulary mismatch")
    positions = getattr((model if encoder else model.encoder).config, "max_position_embeddings",
                        None)
    check_max_len(max_len, positions, "the teacher")
    return model, tokenizer, path


def check_max_len(max_len, positions, owner: str) -> None:
    """``max_len`` tokens must fit ``owner``'s position embeddings (None: nothing to check)."""
    if max_len is not None and positions is not None and max_len > positions:
        raise ValueError(f"max_len={max_len} but {owner} has {positions} positions "
                         f"(max_position_embeddings): use a max_len <= {positions}")


@torch.inference_mode()
def teacher_outputs(teacher: TeacherClassifier, examples, *, vector: str | None = None,
                    batch_size: int = 128, device=None, progress: bool = False, bf16=None):
    """Teacher logits [N, C] (and sentence vectors [N, H] if ``vector``) for examples.
    ``bf16``: autocast to bfloat16 (default: on a GPU only; True also on a CPU)."""
    device = torch_device(device)
    teacher.to(device).eval()
    batches = inference_batches(examples, batch_size, device)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="teacher", unit="batch", leave=False,
                       total=-(-len(examples) // batch_size))
    needs = ("logits", "vector") if vector else ("logits",)
    indices, logits, vecs = [], [], []
    for idx, b in batches:
        with torch.autocast(device.type, torch.bfloat16,
                            enabled=device.type == "cuda" if bf16 is None else bool(bf16)):
            out = teacher.taps(b, needs, vector=vector)
        indices.append(idx)
        logits.append(out["logits"].float().cpu())
        if vector:
            vecs.append(out["vector"].float().cpu())
    return (in_example_order(indices, logits),
            in_example_order(indices, vecs) if vector else None)


def teacher_id(teacher, path=None):
    """What identifies a teacher's outputs in a cache key: its weight files' names, sizes and
    times (not the path: a copied directory matches), or a digest of an in-memory teacher's
    weights."""
    if path is not None:
        files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
        return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files] or [str(path)]
    with torch.no_grad():
        return [float(sum(p.double().sum() for p in teacher.parameters()))]


def rank0_first(device_type: str, build):
    """``build()``, which reads a cache file or builds and writes it: under torchrun rank 0 runs
    it first and the other ranks after it (so they read what rank 0 wrote); a plain call
    otherwise. When rank 0's build raises, the other ranks raise too instead of waiting for it
    forever."""
    dist = init_distributed(device_type)
    if dist is None:
        return build()
    # NCCL sends from this rank's own GPU (LOCAL_RANK, as the Trainer uses), gloo from the CPU.
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
              if dist.get_backend() == "nccl" else None)
    status = ["ok"]
    if dist.get_rank() == 0:
        try:
            return build()
        except BaseException as exc:
            status[0] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            dist.broadcast_object_list(status, src=0, device=device)
    dist.broadcast_object_list(status, src=0, device=device)
    if status[0] != "ok":
        raise RuntimeError(f"rank 0 failed to prepare what every rank reads: {status[0]}")
    return build()


def labelled_logits(teacher, examples, cache=None, *, teacher_path=None, device=None,
                    progress=False):
    """The teacher's logits [N, C] for ``examples`` (computed on ``device``); with ``cache`` (a
    ``.pt`` path) computed once and kept there (atomically, by rank 0): ``--resume`` and the
    other ranks read them back when the teacher and the examples' token ids match."""
    kind = torch_device(device).type  # bf16 on a GPU: part of the key

    def build():
        key = fingerprint(teacher_id(teacher, teacher_path), kind,
                          [e["t_ids"] for e in examples], [e.get("t_types") for e in examples])
        if cache is not None and Path(cache).is_file():
            saved = outputs.load_checked(cache, what="teacher-logits cache")
            if isinstance(saved, dict) and saved.get("key") == key:
                return saved["logits"]
        logits, _ = teacher_outputs(teacher, examples, device=device, progress=progress)
        if cache is not None and is_rank0():
            outputs.atomic_save({"key": key, "logits": logits}, cache)
        return logits

    return build() if cache is None else rank0_first(kind, build)


def encode_split(tokenizer, split, max_len: int, *, student: bool = True, teacher: bool = True,
                 labels: bool = True):
    return encode(tokenizer, split.texts, split.texts_b, split.labels if labels else None,
                  max_len=max_len, student=student, teacher=teacher)


# ------------------------------------------------------------------------- outputs
def check_out(out_dir, *, overwrite: bool = False, resume: bool = False) -> None:
    """Looks at the output directory under the rules of :mod:`kdfast.distill.outputs`
    (writes nothing): call it with the option checks, before any work."""
    if out_dir is not None and is_rank0():
        outputs.check_output_dir(out_dir, overwrite=overwrite, resume=resume)


def output_dir(out_dir, *, overwrite: bool = False, resume: bool = False) -> Path | None:
    """The recipe's top-level output directory, checked once and created (rank 0); stages
    write into subdirectories of it."""
    if out_dir is None:
        return None
    if is_rank0():
        return outputs.prepare_output_dir(out_dir, overwrite=overwrite, resume=resume)
    return Path(out_dir)


def write_results(out_dir, res: dict, name: str = "results.json") -> None:
    """``out_dir/name`` as JSON, atomically, on rank 0 only."""
    if out_dir is not None and is_rank0():
        outputs.atomic_write_json(Path(out_dir) / name, res)
