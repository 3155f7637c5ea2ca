"""Tang et al. (2019)'s data augmentation, which builds the transfer set for distillation.

For each word one uniform draw ``u`` decides: ``u < p_mask`` -> the word becomes ``[MASK]``;
``p_mask <= u < p_mask + p_pos`` -> it is replaced by a random word with the same
part-of-speech tag, drawn by unigram frequency within that tag (frequencies from the
corpus given to :class:`Augmenter`); otherwise it is kept. Then, with probability ``p_ng``,
n-gram sampling keeps only a random window of ``n ~ U{1..max_ngram}`` words. Each example
yields ``n_iter`` samples (20 for single sentences, 10 for pairs in the paper); duplicates
and copies of the original are dropped. For pairs, with probability 2/3 one sentence
(either, 50/50) is augmented, with 1/3 both.

Deterministic: example ``i`` uses ``random.Random(f"{seed}-{i}")``, so results do not depend
on the order or on what else is augmented.

POS tags: NLTK's averaged-perceptron tagger when NLTK and its tagger data are installed
(``tagger="nltk"``); otherwise -- and by default, since nothing here may download NLTK's
data -- a small offline rule-based tagger (:func:`rule_tag`): closed-class word lists
(determiners, pronouns, prepositions, conjunctions, auxiliaries, particles), numbers,
punctuation and suffix rules for adverbs, verbs and adjectives, with NOUN as the default.
It is coarse (universal tag set) but enough for "replace a word with another of its kind".
"""
from __future__ import annotations

import bisect
import random
import re
from collections import Counter, defaultdict

_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?|[^\sA-Za-z0-9]")

_CLOSED = {
    "DET": "a an the this that these those some any each every no another either neither all "
           "both such what which whose",
    "PRON": "i you he she it we they me him her us them my your his its our their mine yours "
            "hers ours theirs myself yourself himself herself itself ourselves themselves "
            "who whom someone anyone everyone nobody something anything everything nothing",
    "ADP": "of in on at by for with about against between into through during before after "
           "above below to from up down over under again further than among without within "
           "across behind beyond like near since toward towards upon despite",
    "CONJ": "and or but nor so yet because although though while if unless whereas",
    "AUX": "is are was were be been being am has have had do does did will would shall should "
           "can could may might must 's 're 've 'd 'll",
    "PRT": "not n't never to 's",
    "ADV": "very too also just only even still really quite rather almost often always "
           "sometimes here there now then well so much more most less least",
}
_CLOSED_TAG = {}
for _tag, _words in _CLOSED.items():
    for _w in _words.split():
        _CLOSED_TAG.setdefault(_w, _tag)
_SUFFIXES = [  # (suffix, tag), longest first
    ("ously", "ADV"), ("ably", "ADV"), ("ily", "ADV"), ("ly", "ADV"),
    ("ing", "VERB"), ("ed", "VERB"), ("ize", "VERB"), ("ise", "VERB"), ("ify", "VERB"),
    ("ous", "ADJ"), ("ful", "ADJ"), ("ive", "ADJ"), ("able", "ADJ"), ("ible", "ADJ"),
    ("less", "ADJ"), ("ish", "ADJ"), ("ical", "ADJ"), ("ic", "ADJ"), ("est", "ADJ"),
]


def words(text: str) -> list[str]:
    """Split ``text`` into words and punctuation marks (the augmentation's units)."""
    return _WORD_RE.findall(text)


def rule_tag(tokens: list[str]) -> list[str]:
    """The offline fallback POS tagger (universal tags); see the module docstring."""
    tags = []
    for tok in tokens:
        low = tok.lower()
        if low in _CLOSED_TAG:
            tags.append(_CLOSED_TAG[low])
        elif re.fullmatch(r"[0-9][0-9.,]*", low):
            tags.append("NUM")
        elif not any(c.isalnum() for c in low):
            tags.append("PUNCT")
        else:
            for suffix, tag in _SUFFIXES:
                if low.endswith(suffix) and len(low) > len(suffix) + 2:
                    tags.append(tag)
                    break
            else:
                tags.append("NOUN")
    return tags


def _nltk_tagger():
    try:
        import nltk

        nltk.pos_tag(["test"])  # raises LookupError if the tagger data is not installed
        return lambda toks: [t for _, t in nltk.pos_tag(toks)]
    except Exception:
        return None


class Augmenter:
    """``Augmenter(corpus).augment(texts)`` -> list of augmented sentences (see module doc)."""

    def __init__(self, corpus, *, p_mask: float = 0.1, p_pos: float = 0.1, p_ng: float = 0.25,
                 max_ngram: int = 5, n_iter: int = 20, mask_token: str = "[MASK]",
                 tagger: str = "auto", seed: int = 0, lowercase: bool = False):
        for name, p in (("p_mask", p_mask), ("p_pos", p_pos), ("p_ng", p_ng)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        if p_mask + p_pos > 1.0:
            raise ValueError(f"p_mask + p_pos must be <= 1, got {p_mask + p_pos}")
        if max_ngram < 1 or n_iter < 0:
            raise ValueError(f"max_ngram must be >= 1 and n_iter >= 0, got {max_ngram}, {n_iter}")
        if tagger not in ("auto", "nltk", "rule"):
            raise ValueError(f"tagger must be 'auto', 'nltk' or 'rule', got {tagger!r}")
        self.p_mask, self.p_pos, self.p_ng = p_mask, p_pos, p_ng
        self.max_ngram, self.n_iter, self.mask_token = max_ngram, n_iter, mask_token
        self.seed, self.lowercase = seed, lowercase
        nltk_tag = _nltk_tagger() if tagger in ("auto", "nltk") else None
        if tagger == "nltk" and nltk_tag is None:
            raise RuntimeError("tagger='nltk' needs nltk and its averaged_perceptron_tagger data")
        self.tagger_name = "nltk" if nltk_tag else "rule"
        self.tag = nltk_tag or rule_tag
        counts = defaultdict(Counter)  # tag -> word -> count
        for text in corpus:
            toks = self._words(text)
            for w, t in zip(toks, self.tag(toks)):
                counts[t][w] += 1
        self._vocab = {}  # tag -> (words, cumulative counts)
        for t, c in counts.items():
            ws = sorted(c)
            cum, total = [], 0
            for w in ws:
                total += c[w]
                cum.append(total)
            self._vocab[t] = (ws, cum)

    def _words(self, text):
        toks = words(text)
        return [t.lower() for t in toks] if self.lowercase else toks

    def _same_pos(self, tag, rng) -> str | None:
        entry = self._vocab.get(tag)
        if not entry:
            return None
        ws, cum = entry
        return ws[bisect.bisect_right(cum, rng.random() * cum[-1])] if len(ws) > 1 else ws[0]

    def augment_words(self, toks: list[str], rng: random.Random) -> list[str]:
        """One augmented sample of the word list ``toks``."""
        tags = self.tag(toks) if self.p_pos > 0 else [None] * len(toks)
        out = []
        for w, t in zip(toks, tags):
            u = rng.random()
            if u < self.p_mask:
                out.append(self.mask_token)
            elif u < self.p_mask + self.p_pos:
                out.append(self._same_pos(t, rng) or w)
            else:
                out.append(w)
        if out and rng.random() < self.p_ng:
            n = rng.randint(1, self.max_ngram)
            if n < len(out):
                start = rng.randrange(len(out) - n + 1)
                out = out[start:start + n]
        return out

    def augment(self, texts, texts_b=None, start_index: int = 0):
        """Augmented samples for each example: a list of ``(index, text, text_b)`` with
        ``n_iter`` tries per example, duplicates and unchanged copies dropped. ``index``
        points back to the source example."""
        out = []
        for i, text in enumerate(texts):
            rng = random.Random(f"{self.seed}-{start_index + i}")
            a = self._words(text)
            b = None if texts_b is None else self._words(texts_b[i])
            seen = {(" ".join(a), None if b is None else " ".join(b))}
            for _ in range(self.n_iter):
                if b is None:
                    key = (" ".join(self.augment_words(a, rng)), None)
                else:
                    r = rng.random()
                    if r < 2 / 3:  # one side only, either with equal chance
                        if rng.random() < 0.5:
                            na, nb = self.augment_words(a, rng), b
                        else:
                            na, nb = a, self.augment_words(b, rng)
                    else:
                        na, nb = self.augment_words(a, rng), self.augment_words(b, rng)
                    key = (" ".join(na), " ".join(nb))
                if key[0] and key not in seen:
                    seen.add(key)
                    out.append((i, key[0], key[1]))
        return out
