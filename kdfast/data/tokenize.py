"""Tokenisation and batching shared by teachers and students.

Students use the teacher's WordPiece tokenizer (no [CLS]/[SEP]), so that their word vectors
can start from the teacher's input embeddings. An example is a dict of plain lists:

* ``s_ids`` (and ``s_ids_b`` for pairs): student token ids, one list per sentence;
* ``t_ids``, ``t_types``: the teacher's input (with special tokens, pairs joined);
* ``label`` (int, or float for regression), optionally ``t_logits`` and ``t_vec`` (cached
  teacher outputs for distillation without a live teacher).

:func:`collate` pads a list of examples into tensors (``s_input``, ``s_lengths``, ...).
"""
from __future__ import annotations

from pathlib import Path

import torch


# A directory holds a tokenizer only with one of these: without them transformers builds a
# tokenizer of the 5 special tokens, which turns every word into [UNK] without a word.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def load_tokenizer(path):
    """A fast BERT-style tokenizer from a local directory (teacher or student directory)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer directory at {path}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
                                "save the tokenizer beside the model (tokenizer.save_pretrained)")
    return AutoTokenizer.from_pretrained(str(path))


def encode(tokenizer, texts, texts_b=None, labels=None, *, max_len: int = 64,
           student: bool = True, teacher: bool = True) -> list[dict]:
    """Tokenise a split into examples (see the module docstring)."""
    n = len(texts)
    if texts_b is not None and len(texts_b) != n:
        raise ValueError(f"texts_b has {len(texts_b)} entries but texts has {n}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries but texts has {n}")
    examples = [{} for _ in range(n)]
    if student:
        def ids(batch):
            enc = tokenizer(list(batch), add_special_tokens=False, truncation=True,
                            max_length=max_len)["input_ids"]
            unk = tokenizer.unk_token_id
            return [e if e else [unk] for e in enc]  # an empty sentence still has one token
        for ex, e in zip(examples, ids(texts)):
            ex["s_ids"] = e
        if texts_b is not None:
            for ex, e in zip(examples, ids(texts_b)):
                ex["s_ids_b"] = e
    if teacher:
        enc = tokenizer(list(texts), None if texts_b is None else list(texts_b),
                        truncation=True, max_length=max_len, return_token_type_ids=True)
        for ex, i, t in zip(examples, enc["input_ids"], enc["token_type_ids"]):
            ex["t_ids"], ex["t_types"] = i, t
    if labels is not None:
        for ex, y in zip(examples, labels):
            ex["label"] = y
    return examples


def _pad(seqs, value=0):
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(examples: list[dict]) -> dict:
    """Pad a list of examples into a batch of tensors."""
    first = examples[0]
    batch = {}
    if "s_ids" in first:
        batch["s_input"] = _pad([e["s_ids"] for e in examples])
        batch["s_lengths"] = torch.tensor([len(e["s_ids"]) for e in examples])
    if "s_ids_b" in first:
        batch["s_input_b"] = _pad([e["s_ids_b"] for e in examples])
        batch["s_lengths_b"] = torch.tensor([len(e["s_ids_b"]) for e in examples])
    if "t_ids" in first:
        ids = _pad([e["t_ids"] for e in examples])
        batch["t_input_ids"] = ids
        batch["t_token_type_ids"] = _pad([e["t_types"] for e in examples])
        mask = torch.zeros_like(ids)
        for i, e in enumerate(examples):
            mask[i, :len(e["t_ids"])] = 1
        batch["t_attention_mask"] = mask
    if "label" in first:
        y = [e["label"] for e in examples]
        batch["labels"] = torch.tensor(y, dtype=torch.float32 if isinstance(y[0], float) else torch.long)
    for key in ("t_logits", "t_vec"):
        if key in first:
            batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
    return batch


def to_device(batch: dict, device) -> dict:
    # lengths stay on the CPU: packing needs them there
    return {k: v if k.endswith("lengths") or k.endswith("lengths_b") else v.to(device)
            for k, v in batch.items()}


def example_length(example: dict) -> int:
    """Tokens of an example's longest sequence: what its batch is padded to."""
    return max(len(example.get(k) or ()) for k in ("t_ids", "s_ids", "s_ids_b"))


LENGTH_WINDOW = 16  # batches sorted together by length_grouped


def length_grouped(order: list, lengths, batch_size: int, generator, window: int = LENGTH_WINDOW):
    """``order`` (a shuffle) regrouped into batches of similar length, in random order: each run
    of ``window`` batches is sorted by length and cut into batches, then the batches are
    shuffled; a short last batch stays last. On movie sentences random batches of 32 are padded
    to 51 tokens for 27 real ones; these to 29, so a step does about half the work."""
    span = batch_size * window
    batches = []
    for s in range(0, len(order), span):
        chunk = sorted(order[s:s + span], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]
    return [i for b in shuffled + tail for i in b]


def length_batches(examples, batch_size: int):
    """Index batches of similar length (for fast inference; training uses length_grouped)."""
    order = sorted(range(len(examples)), key=lambda i: example_length(examples[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def inference_batches(examples, batch_size: int, device=None):
    """``(indices, collated batch)`` for batches of similar length (on ``device`` if given). Put
    the per-batch outputs back in the examples' order with :func:`in_example_order`."""
    for idx in length_batches(examples, batch_size):
        batch = collate([examples[i] for i in idx])
        yield idx, batch if device is None else to_device(batch, device)


def in_example_order(indices, outputs) -> torch.Tensor:
    """Per-batch output rows (batch k holds the examples ``indices[k]``) stacked in the
    examples' order."""
    rows = torch.cat(list(outputs))
    result = torch.empty_like(rows)
    result[torch.tensor([i for idx in indices for i in idx])] = rows
    return result


def make_batches(tokenizer, sentences, batch_size: int, max_length: int):
    """Padded transformers batches (``input_ids``, ``attention_mask``, ...) of ``sentences``,
    in order: the input of :func:`kdfast.etd.importance`."""
    for i in range(0, len(sentences), batch_size):
        yield dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True,
                             max_length=max_length, return_tensors="pt"))
