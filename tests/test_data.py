"""kdfast.data: task loading, metrics, augmentation rules, word vectors, batching."""
import json
import random
import struct
from collections import Counter

import pytest
import torch

from kdfast.data import metrics
from kdfast.data.augment import Augmenter, rule_tag, words
from kdfast.data.tasks import load_task
from kdfast.data.tokenize import collate
from kdfast.data.vectors import load_word_vectors


# ----------------------------------------------------------------------------- metrics
def test_metrics_by_hand():
    p, y = [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    assert metrics.accuracy(p, y) == pytest.approx(4 / 6)
    # tp=2 fp=1 fn=1 -> F1 = 4/6; MCC = (2*2-1*1)/sqrt(3*3*3*3) = 1/3
    assert metrics.f1(p, y) == pytest.approx(2 / 3)
    assert metrics.mcc(p, y) == pytest.approx(1 / 3)
    assert metrics.pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]) == pytest.approx(4.5 / (2 * 10.1666667) ** 0.5)
    assert metrics.compute("f1", p, y).keys() == {"accuracy", "f1"}
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute("bleu", p, y)


# ----------------------------------------------------------------------------- tasks
def _write_csv(path, header, rows, delim=","):
    path.write_text(delim.join(header) + "\n" + "\n".join(delim.join(map(str, r)) for r in rows) + "\n")


def test_csv_task_is_split_deterministically(tmp_path):
    f = tmp_path / "data.csv"
    _write_csv(f, ["text", "label"], [(f"sentence {i}", i % 2) for i in range(50)])
    a, b = load_task(f"csv:{f}"), load_task(f"csv:{f}")
    assert (len(a.train), len(a.dev), len(a.test)) == (40, 5, 5)
    assert a.train.texts == b.train.texts and a.num_labels == 2 and not a.is_pair
    assert sorted(a.train.texts + a.dev.texts + a.test.texts) == sorted(f"sentence {i}" for i in range(50))
    c = load_task(f"csv:{f}", seed=1)
    assert c.test.texts != a.test.texts


def test_tsv_pairs_with_string_labels_and_sibling_splits(tmp_path):
    rows = [(f"premise {i}", f"hypothesis {i}", ["yes", "no", "maybe"][i % 3]) for i in range(12)]
    for name in ("train", "dev", "test"):
        _write_csv(tmp_path / f"{name}.tsv", ["s1", "s2", "gold"], rows, "\t")
    t = load_task(f"tsv:{tmp_path / 'train.tsv'}", text_column="s1", text_b_column="s2",
                  label_column="gold")
    assert t.is_pair and t.num_labels == 3 and t.label_names == ["maybe", "no", "yes"]
    assert len(t.train) == len(t.dev) == len(t.test) == 12
    assert t.train.labels[:3] == [2, 1, 0] and t.train.texts_b[0] == "hypothesis 0"


def test_jsonl_regression_task(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"sentence": f"s{i}", "label": i / 7}) for i in range(20)))
    t = load_task(f"jsonl:{f}")
    assert t.is_regression and t.metric == "pearson"


@pytest.mark.parametrize("content,match", [
    ("text,label\n", "empty"),
    ("words,label\nhello,1\n", "no text column"),
    ("text,target\nhello,1\n", "no label column"),
])
def test_bad_local_files(tmp_path, content, match):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_task(f"csv:{f}")


def test_bad_task_specs(tmp_path):
    f = tmp_path / "d.csv"
    _write_csv(f, ["text", "label"], [(f"s{i}", i % 5) for i in range(20)])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        load_task(f"csv:{f}", num_labels=3)
    with pytest.raises(ValueError, match="column 'nope' not found"):
        load_task(f"csv:{f}", label_column="nope")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("no-such-task")
    with pytest.raises(FileNotFoundError):
        load_task(f"csv:{tmp_path / 'missing.csv'}")
    g = tmp_path / "neg.csv"
    _write_csv(g, ["text", "label"], [(f"s{i}", i - 3) for i in range(20)])
    with pytest.raises(ValueError, match="must be >= 0"):
        load_task(f"csv:{g}")


@pytest.mark.real
def test_offline_movie_sentences():
    t = load_task("movie-sentences")
    n = len(t.train) + len(t.dev) + len(t.test)
    assert 10500 < n < 10605  # 10,605 minus the sentences rated exactly 0
    assert 0.45 < sum(t.train.labels) / len(t.train) < 0.55
    assert load_task("movie-sentences").test.texts == t.test.texts


# ----------------------------------------------------------------------------- augmentation
SENT = "the actor gave a wonderfully moving performance in this dull film ."
CORPUS = [SENT, "a great movie and a slowly boring plot", "the director shot a quietly sad scene"]


def test_rule_tagger_and_words():
    toks = words("The film's plot isn't moving, slowly.")
    assert toks[:3] == ["The", "film's", "plot"] and toks[-1] == "."
    tags = rule_tag(["the", "actor", "slowly", "moving", "beautiful", "of", ",", "42"])
    assert tags == ["DET", "NOUN", "ADV", "VERB", "ADJ", "ADP", "PUNCT", "NUM"]


def test_masking_rule():
    aug = Augmenter(CORPUS, p_mask=1.0, p_pos=0.0, p_ng=0.0, n_iter=1)
    assert aug.augment_words(words(SENT), random.Random(0)) == ["[MASK]"] * len(words(SENT))
    aug = Augmenter(CORPUS, p_mask=0.3, p_pos=0.0, p_ng=0.0)
    src = words(SENT) * 20
    out = aug.augment_words(src, random.Random(1))
    masked = sum(o == "[MASK]" for o in out)
    assert len(out) == len(src) and 0.2 < masked / len(src) < 0.4
    assert all(o == s for o, s in zip(out, src) if o != "[MASK]")


def test_pos_replacement_keeps_the_tag_and_follows_unigram_frequency():
    corpus = ["the film"] * 90 + ["the plot"] * 10 + ["quickly and slowly"] * 5
    aug = Augmenter(corpus, p_mask=0.0, p_pos=1.0, p_ng=0.0, tagger="rule")
    rng = random.Random(0)
    draws = Counter(aug.augment_words(["movie"], rng)[0] for _ in range(2000))
    assert set(draws) == {"film", "plot"}  # only corpus words with the same tag (NOUN)
    assert 0.85 < draws["film"] / 2000 < 0.95
    out = aug.augment_words(["the", "movie", "gently"], rng)
    assert out[0] == "the" and out[2] in ("quickly", "slowly")
    assert rule_tag(out) == rule_tag(["the", "movie", "gently"])


def test_ngram_sampling_keeps_a_window():
    aug = Augmenter(CORPUS, p_mask=0.0, p_pos=0.0, p_ng=1.0, max_ngram=5)
    src = words(SENT)
    text = " ".join(src)
    lengths = set()
    for seed in range(200):
        out = aug.augment_words(src, random.Random(seed))
        assert 1 <= len(out) <= 5 and " ".join(out) in text
        lengths.add(len(out))
    assert lengths == {1, 2, 3, 4, 5}


def test_augment_is_seeded_deduplicated_and_excludes_the_original():
    aug = Augmenter(CORPUS, n_iter=20, seed=3)
    a, b = aug.augment(CORPUS), Augmenter(CORPUS, n_iter=20, seed=3).augment(CORPUS)
    assert a == b
    assert Augmenter(CORPUS, n_iter=20, seed=4).augment(CORPUS) != a
    per = Counter(i for i, _, _ in a)
    assert all(1 <= per[i] <= 20 for i in range(3))
    assert len({(i, t) for i, t, _ in a}) == len(a)
    assert all(t != " ".join(words(CORPUS[i])) for i, t, _ in a)
    # example i's samples do not depend on the other examples
    assert [x[1:] for x in aug.augment(CORPUS[1:2], start_index=1)] == [x[1:] for x in a if x[0] == 1]


def test_pairs_augment_one_side_two_thirds_of_the_time():
    long_a = " ".join(f"w{i}" for i in range(40))
    long_b = " ".join(f"v{i}" for i in range(40))
    aug = Augmenter([long_a, long_b], p_mask=0.5, p_pos=0.0, p_ng=0.0, n_iter=600)
    out = aug.augment([long_a], [long_b])
    both = sum(a != long_a and b != long_b for _, a, b in out) / len(out)
    only_a = sum(a != long_a and b == long_b for _, a, b in out) / len(out)
    assert abs(both - 1 / 3) < 0.06 and abs(only_a - 1 / 3) < 0.06


def test_bad_augmenter_options():
    with pytest.raises(ValueError, match="p_mask"):
        Augmenter(CORPUS, p_mask=1.5)
    with pytest.raises(ValueError, match="p_mask \\+ p_pos"):
        Augmenter(CORPUS, p_mask=0.6, p_pos=0.6)
    with pytest.raises(ValueError, match="tagger"):
        Augmenter(CORPUS, tagger="spacy")


# ----------------------------------------------------------------------------- vectors, batches
def test_word_vectors_text_and_binary(tmp_path):
    vocab = {"[PAD]": 0, "film": 1, "good": 2, "##s": 3}
    glove = tmp_path / "v.txt"
    glove.write_text("film 1 2 3\nGood 4 5 6\nother 7 8 9\n")
    w, found = load_word_vectors(glove, vocab)
    assert found == 2 and w.shape == (4, 3)
    assert w[1].tolist() == [1, 2, 3] and w[2].tolist() == [4, 5, 6]
    w2v = tmp_path / "v.bin"
    with open(w2v, "wb") as f:
        f.write(b"2 3\n")
        for word, vec in (("film", [1.5, 2, 3]), ("good", [4, 5, 6.5])):
            f.write(word.encode() + b" " + struct.pack("3f", *vec) + b"\n")
    w, found = load_word_vectors(w2v, vocab)
    assert found == 2 and w[1].tolist() == [1.5, 2, 3] and w[2].tolist() == [4, 5, 6.5]
    bad = tmp_path / "bad.txt"
    bad.write_text("film 1 2 3\ngood 4 5\n")
    with pytest.raises(ValueError, match="expected 3"):
        load_word_vectors(bad, vocab)


def test_collate_pads_and_keeps_lengths():
    ex = [{"s_ids": [5, 6, 7], "t_ids": [1, 5, 6, 7, 2], "t_types": [0] * 5, "label": 1,
           "t_logits": [0.5, -0.5]},
          {"s_ids": [8], "t_ids": [1, 8, 2], "t_types": [0] * 3, "label": 0, "t_logits": [1.0, 2.0]}]
    b = collate(ex)
    assert b["s_input"].tolist() == [[5, 6, 7], [8, 0, 0]] and b["s_lengths"].tolist() == [3, 1]
    assert b["t_attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert b["labels"].dtype == torch.long and b["t_logits"].shape == (2, 2)


def test_unlabelled_sources_are_read_never_taken_as_sentences(tmp_path):
    from kdfast.data.tasks import unlabelled_sentences
    from kdfast.distill.plumbing import sentences_from

    text = tmp_path / "corpus.txt"
    text.write_text("one line\n\nanother line\none line\n")
    want = ["one line", "another line"]
    assert unlabelled_sentences([str(text)]) == unlabelled_sentences([f"text:{text}"]) == want
    assert sentences_from([str(text)]) == want  # a plain file path is a source
    assert sentences_from(["a sentence", "another"]) == ["a sentence", "another"]
    with pytest.raises(ValueError, match="unknown task"):
        unlabelled_sentences(["no-such-task"])
