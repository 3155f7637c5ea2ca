"""TinyBERT's data augmentation (Jiao et al. 2020): word replacement by candidates.

For every word of a sentence (words and punctuation from :func:`kdfast.data.augment.words`;
punctuation and other non-alphanumeric units are never replaced) a candidate list of up to
``k`` words is built:

* the word is a single WordPiece and an MLM is given: the MLM's top-``k`` predictions for
  the word's position with the word masked in its sentence (special tokens, ``##`` pieces,
  non-alphanumeric tokens and the word itself excluded). All (sentence, word) pairs run
  through the MLM in padded batches of ``batch_size`` -- the official script runs one
  forward per word;
* otherwise: the top-``k`` GloVe neighbours (cosine) when ``glove`` is given (a word missing
  from GloVe gets no candidates, as in the official script), else the top-``k`` neighbours
  (cosine) of the word's mean input-embedding vector among the whole-word tokens of the
  vocabulary (``embeddings``, e.g. the teacher's input embeddings; a teacher with no MLM head,
  like all-MiniLM-L6-v2, takes this path).

Then ``n_a`` rounds, each replacing every word independently with probability ``p_t`` by a
uniformly drawn candidate (words without candidates stay). Each source sentence yields itself
followed by its ``n_a`` variants (duplicates kept, so every sentence has exactly ``n_a``; the
official script drops duplicates and never replaces stop words). Sentence ``i``
draws from ``random.Random(f"{seed}-{i}")``, so results do not depend on what else is
augmented. For pairs only ``text_a`` is augmented (``text_b`` is copied).

:func:`augment` with ``cache=PATH`` writes the result once (JSON lines, first line a header
with a fingerprint of the inputs and settings) and reads it back when everything matches.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch

from kdfast._io import atomic_write
from kdfast.data.augment import words as split_words
from kdfast.data.fetch import fingerprint

_ALNUM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9'’]*$")


def _replaceable(word: str) -> bool:
    return bool(_ALNUM.match(word))


def _vocab_candidates(tokenizer) -> tuple[torch.Tensor, list[str]]:
    """Ids and strings of the vocabulary's whole-word, alphanumeric, non-special tokens."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    ids, toks = [], []
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if i in special or tok.startswith(("##", "[")) or not _replaceable(tok):
            continue
        ids.append(i)
        toks.append(tok)
    return torch.tensor(ids, dtype=torch.long), toks


def _pieces(tokenizer, word: str) -> list[int]:
    return tokenizer(word, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _mlm_candidates(mlm, tokenizer, sentences, slots, k, batch_size, max_len, device):
    """{(sentence index, word index): [candidates]} for single-piece words, batched."""
    allowed_ids, _ = _vocab_candidates(tokenizer)
    allowed = None
    cls, sep, mask_id, pad = (tokenizer.cls_token_id, tokenizer.sep_token_id,
                              tokenizer.mask_token_id, tokenizer.pad_token_id or 0)
    if mask_id is None:
        raise ValueError("MLM augmentation needs a tokenizer with a mask token")
    rows = []  # (key, ids, position, own id)
    for si, ws in enumerate(sentences):
        piece_ids = [_pieces(tokenizer, w) for w in ws]
        for wi in slots[si]:
            if len(piece_ids[wi]) != 1:
                continue
            ids, pos = [cls], None
            for j, p in enumerate(piece_ids):
                if j == wi:
                    pos = len(ids)
                    ids.append(mask_id)
                else:
                    ids.extend(p)
            ids.append(sep)
            if pos >= max_len - 1:
                continue  # the word falls beyond the model's window
            if len(ids) > max_len:
                ids = ids[:max_len - 1] + [sep]
            rows.append(((si, wi), ids, pos, piece_ids[wi][0]))
    out = {}
    was = mlm.training
    mlm.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r[1]) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            att = torch.zeros_like(ids)
            for j, r in enumerate(chunk):
                ids[j, :len(r[1])] = torch.tensor(r[1])
                att[j, :len(r[1])] = 1
            res = mlm(input_ids=ids.to(device), attention_mask=att.to(device))
            logits = res.logits if hasattr(res, "logits") else res
            pos = torch.tensor([r[2] for r in chunk], device=logits.device)
            row_logits = logits[torch.arange(len(chunk), device=logits.device), pos].float()
            if allowed is None:
                allowed = torch.full((row_logits.shape[-1],), float("-inf"), device=row_logits.device)
                allowed[allowed_ids[allowed_ids < row_logits.shape[-1]].to(row_logits.device)] = 0.0
            row_logits = row_logits + allowed
            own = torch.tensor([r[3] for r in chunk], device=row_logits.device)
            row_logits[torch.arange(len(chunk)), own] = float("-inf")
            top = row_logits.topk(min(k, row_logits.shape[-1]), dim=-1)
            for j, r in enumerate(chunk):
                keep = torch.isfinite(top.values[j])
                out[r[0]] = tokenizer.convert_ids_to_tokens(top.indices[j][keep].tolist())
    finally:
        mlm.train(was)
    return out


@torch.no_grad()
def _neighbours(vectors: torch.Tensor, names: list[str], queries: dict[str, torch.Tensor], k: int,
                chunk: int = 1024) -> dict[str, list[str]]:
    """Top-k cosine neighbours in ``vectors`` (rows named ``names``) of each query vector,
    the query word itself excluded."""
    if not queries:
        return {}
    table = torch.nn.functional.normalize(vectors.float(), dim=-1)
    words = list(queries)
    q = torch.nn.functional.normalize(torch.stack([queries[w] for w in words]).float(), dim=-1)
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for s in range(0, len(words), chunk):
        sims = q[s:s + chunk] @ table.T
        for j, w in enumerate(words[s:s + chunk]):
            lw = w.lower()
            for name in (w, lw):
                if name in index:
                    sims[j, index[name]] = float("-inf")
        top = sims.topk(min(k, sims.shape[-1]), dim=-1).indices
        for j, w in enumerate(words[s:s + chunk]):
            out[w] = [names[i] for i in top[j].tolist()]
    return out


def load_glove(path, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """(vectors [V, d], words) from a GloVe/word2vec text file (a word2vec header is skipped)."""
    names, vecs = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            parts = line.rstrip().split(" ")
            if n == 0 and len(parts) == 2:
                continue
            if len(parts) < 3:
                continue
            names.append(parts[0])
            vecs.append([float(x) for x in parts[1:]])
            if limit is not None and len(names) >= limit:
                break
    if not names:
        raise ValueError(f"no word vectors in {path}")
    return torch.tensor(vecs), names


def candidates(sentences_words, tokenizer, *, mlm=None, embeddings=None, glove=None, k: int = 15,
               batch_size: int = 64, max_len: int = 128, device=None) -> list[list[list[str]]]:
    """Candidate lists per sentence and word (see the module docstring)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if mlm is None and embeddings is None and glove is None:
        raise ValueError("augmentation needs candidates: pass mlm=, embeddings= (e.g. the teacher's "
                         "input embeddings) or glove=")
    slots = [[i for i, w in enumerate(ws) if _replaceable(w)] for ws in sentences_words]
    if device is None:
        device = next(mlm.parameters()).device if mlm is not None else torch.device("cpu")
    mlm_out = {}
    if mlm is not None:
        mlm_out = _mlm_candidates(mlm, tokenizer, sentences_words, slots, k, batch_size, max_len,
                                  device)
    need = {ws[i] for si, ws in enumerate(sentences_words) for i in slots[si]
            if (si, i) not in mlm_out}
    static: dict[str, list[str]] = {}
    if need and glove is not None:
        vectors, names = load_glove(glove) if isinstance(glove, (str, Path)) else glove
        index = {n: i for i, n in enumerate(names)}
        queries = {}
        for w in need:
            i = index.get(w, index.get(w.lower()))
            if i is not None:
                queries[w] = vectors[i]
        static = _neighbours(vectors, names, queries, k)
    elif need and embeddings is not None:
        emb = embeddings.detach().float().cpu()
        ids, names = _vocab_candidates(tokenizer)
        ids_ok = ids < emb.shape[0]
        ids, names = ids[ids_ok], [n for n, ok in zip(names, ids_ok.tolist()) if ok]
        queries = {}
        for w in need:
            p = [i for i in _pieces(tokenizer, w) if i < emb.shape[0]]
            if p:
                queries[w] = emb[p].mean(0)
        static = _neighbours(emb[ids], names, queries, k)
    return [[mlm_out.get((si, i), static.get(w, [])) if i in set(slots[si]) else []
             for i, w in enumerate(ws)] for si, ws in enumerate(sentences_words)]


def _model_id(model):
    if model is None:
        return None
    with torch.no_grad():
        return [type(model).__name__, float(sum(p.double().sum() for p in model.parameters()))]


def augment(texts, texts_b=None, *, tokenizer, mlm=None, embeddings=None, glove=None,
            n_a: int = 20, p_t: float = 0.4, k: int = 15, seed: int = 0, cache=None,
            batch_size: int = 64, max_len: int = 128, device=None):
    """TinyBERT augmentation of a split. Returns ``(texts_a, texts_b or None, source)``:
    every source sentence followed by its ``n_a`` variants, ``source[j]`` the index of the
    sentence row ``j`` came from. See the module docstring for the candidates and the cache."""
    if not isinstance(n_a, int) or n_a < 0:
        raise ValueError(f"n_a must be a non-negative int, got {n_a!r}")
    if not 0.0 <= p_t <= 1.0:
        raise ValueError(f"p_t must lie in [0, 1], got {p_t}")
    if texts_b is not None and len(texts_b) != len(texts):
        raise ValueError(f"texts_b has {len(texts_b)} entries but texts has {len(texts)}")
    texts = list(texts)
    key = fingerprint(texts, None if texts_b is None else list(texts_b), _model_id(mlm),
                       None if embeddings is None else float(embeddings.detach().double().sum()),
                       str(glove) if isinstance(glove, (str, Path)) else glove is not None,
                       n_a, p_t, k, seed, max_len, len(tokenizer))
    if cache is not None and Path(cache).is_file():
        try:
            with open(cache, encoding="utf-8") as f:
                head = json.loads(f.readline())
                rows = [json.loads(line) for line in f] if head.get("key") == key else None
            if rows is not None and len(rows) != head.get("rows", len(rows)):
                raise ValueError(f"{len(rows)} rows, the header says {head['rows']}")
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            raise ValueError(f"cannot read the augmentation cache {cache}: it is truncated or "
                             f"not a kdfast file ({e}); delete it or start with --overwrite") from None
        if rows is not None:
            return ([r["a"] for r in rows], None if texts_b is None else [r["b"] for r in rows],
                    [r["src"] for r in rows])
    sents = [split_words(t) for t in texts]
    cands = candidates(sents, tokenizer, mlm=mlm, embeddings=embeddings, glove=glove, k=k,
                       batch_size=batch_size, max_len=max_len, device=device)
    out_a, out_b, src = [], [] if texts_b is not None else None, []
    for i, (t, ws, cs) in enumerate(zip(texts, sents, cands)):
        rng = random.Random(f"{seed}-{i}")
        variants = [t]
        for _ in range(n_a):
            variants.append(" ".join(rng.choice(c) if c and rng.random() < p_t else w
                                     for w, c in zip(ws, cs)))
        out_a += variants
        src += [i] * len(variants)
        if texts_b is not None:
            out_b += [texts_b[i]] * len(variants)
    if cache is not None:
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "n_a": n_a, "p_t": p_t, "k": k, "seed": seed,
                                    "rows": len(out_a)}) + "\n")
                for j, a in enumerate(out_a):
                    row = {"a": a, "src": src[j]}
                    if out_b is not None:
                        row["b"] = out_b[j]
                    f.write(json.dumps(row) + "\n")

        atomic_write(cache, write)  # never half a cache, and no temp name two runs share
    return out_a, out_b, src
