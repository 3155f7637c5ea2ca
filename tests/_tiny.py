"""Tiny in-memory teacher, tokenizer and synthetic tasks for the recipe/trainer tests."""
from __future__ import annotations

import random

import torch

POS = ["good", "great", "fine", "nice", "superb"]
NEG = ["bad", "awful", "poor", "dull", "weak"]
FILL = ["the", "a", "movie", "film", "plot", "actor", "is", "was", "very", "quite", "and", "story",
        "runs", "looked", "slowly", "."]
WORDS = POS + NEG + FILL


def tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast.from_pretrained(str(tmp_path))


def teacher(tok, num_labels=2, seed=0):
    from transformers import BertConfig, BertModel

    from kdfast.models import TeacherClassifier

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    return TeacherClassifier(BertModel(cfg), num_labels, pooling="mean")


def sentences(n, seed=0):
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        y = rng.random() < 0.5
        words = [rng.choice(FILL) for _ in range(rng.randint(2, 7))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if y else NEG))
        texts.append(" ".join(words))
        labels.append(int(y))
    return texts, labels


def task(n=120, pair=False, seed=0):
    from kdfast.data.tasks import Split, Task

    def split(m, s):
        a, y = sentences(m, s)
        if not pair:
            return Split(a, y)
        b, y2 = sentences(m, s + 100)
        return Split(a, [int(u == v) for u, v in zip(y, y2)], b)

    return Task("synthetic", split(n, seed), split(n // 4, seed + 1), split(n // 4, seed + 2), 2)
