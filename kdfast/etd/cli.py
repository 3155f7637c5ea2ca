"""Helpers of ``kdfast extract`` (the command itself is in :mod:`kdfast.cli`).

``--teacher``: ``minilm-l6`` (the offline all-MiniLM-L6-v2 via kdfast.data.fetch), a local
directory, or a HuggingFace name (needs the hub). ``--data``: a local text file (one sentence
per line), ``movie-sentences`` or ``snli`` (offline sets via kdfast.data.fetch). The output
directory gets the student (``save_pretrained``), the teacher's tokenizer and, for
``--strategy impt``, the scores as ``importance.pt``.
"""
from __future__ import annotations

import json
import os

OFFLINE_TEACHERS = {"minilm-l6"}
OFFLINE_DATA = ("movie-sentences", "snli")


def load_teacher(name: str):
    """(model, tokenizer, path) for ``minilm-l6``, a local directory or a hub name."""
    import transformers

    path = name
    if name in OFFLINE_TEACHERS:
        from kdfast.data.fetch import fetch

        path = str(fetch(name))
    config = transformers.AutoConfig.from_pretrained(path)
    arch = (getattr(config, "architectures", None) or ["BertModel"])[0]
    cls = getattr(transformers, arch, None)
    if cls is None or not arch.startswith("Bert"):
        raise SystemExit(f"kdfast extract: {path} is a {arch}, not a BERT model")
    model = cls.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model, tokenizer, path


def load_sentences(spec: str, limit: int | None = None) -> list[str]:
    """Sentences from a local text file or an offline set (movie-sentences, snli)."""
    if spec in OFFLINE_DATA:
        from kdfast.data.fetch import fetch

        where = fetch(spec)
        if spec == "movie-sentences":
            with open(where, encoding="utf-8", errors="replace") as f:
                out = [line.rstrip("\n").split("\t", 2)[2] for line in f if line.count("\t") >= 2]
        else:
            out, seen = [], set()
            with open(os.path.join(where, "snli_1.0_train_subset.jsonl"), encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    for key in ("sentence1", "sentence2"):
                        s = row.get(key)
                        if s and s not in seen:
                            seen.add(s)
                            out.append(s)
                    if limit is not None and len(out) >= limit:
                        break
    elif os.path.isfile(spec):
        with open(spec, encoding="utf-8", errors="replace") as f:
            out = [line.strip() for line in f if line.strip()]
    else:
        raise SystemExit(f"kdfast extract: --data {spec!r} is neither a file nor one of "
                         f"{OFFLINE_DATA}")
    out = [s.strip() for s in out if s.strip()]
    return out[:limit] if limit is not None else out


def make_batches(tokenizer, sentences, batch_size: int, max_length: int):
    for i in range(0, len(sentences), batch_size):
        yield dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True,
                             max_length=max_length, return_tensors="pt"))
