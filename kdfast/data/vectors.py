"""Word vectors for the student's embeddings: word2vec (text or binary) and GloVe (text) files.

Students read the teacher's WordPiece vocabulary, so a vectors file fills the rows of the
tokens it has (whole words, looked up as is and lower-cased); the other rows keep a small
random init. Without a vectors file kdfast initialises from the teacher's input embeddings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _iter_text(path: Path):
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().split()
        if len(first) == 2 and all(p.isdigit() for p in first):  # word2vec text header
            pass
        elif first:
            yield first[0], np.asarray(first[1:], dtype=np.float32)
        for line in f:
            parts = line.rstrip().split(" ")
            if len(parts) > 2:
                yield parts[0], np.asarray(parts[1:], dtype=np.float32)


def _iter_binary(path: Path):
    with open(path, "rb") as f:
        n, dim = map(int, f.readline().split())
        for _ in range(n):
            word = bytearray()
            while True:
                c = f.read(1)
                if c == b" " or not c:
                    break
                if c != b"\n":
                    word += c
            vec = np.frombuffer(f.read(4 * dim), dtype=np.float32)
            yield word.decode("utf-8", errors="replace"), vec


def load_word_vectors(path, vocab: dict, *, seed: int = 0, scale: float = 0.05):
    """``(weights [len(vocab), dim], found)`` for ``vocab`` (token -> id) from ``path``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"word vectors file {path} does not exist")
    with open(path, "rb") as f:
        head = f.readline()
    binary = path.suffix == ".bin"
    if not binary:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            binary = True
    vectors = _iter_binary(path) if binary else _iter_text(path)
    weights, found, dim = None, set(), None
    lower = {}
    for tok, i in vocab.items():
        lower.setdefault(tok.lower(), i)
    for word, vec in vectors:
        if dim is None:
            dim = len(vec)
            g = torch.Generator().manual_seed(seed)
            weights = (torch.rand(len(vocab), dim, generator=g) * 2 - 1) * scale
        if len(vec) != dim:
            raise ValueError(f"{path}: vector for {word!r} has {len(vec)} values, expected {dim}")
        i = vocab.get(word)
        if i is None:
            i = lower.get(word.lower())
        if i is not None and i not in found:
            weights[i] = torch.from_numpy(vec.copy())
            found.add(i)
    if weights is None:
        raise ValueError(f"{path}: no vectors found")
    return weights, len(found)
