"""Tasks by name: the offline sets (``movie-sentences``, ``movie-fine``, ``snli``), local files
(``csv:PATH``, ``tsv:PATH``, ``jsonl:PATH``) and ``datasets`` hub names (``glue/sst2``).
Any of them followed by ``@N`` keeps a seeded sample of ``N`` training examples (dev and
test unchanged): ``snli@5000`` is the small-data regime of SNLI. ``load_task``'s ``seed``
fixes the carved splits and the sample; the recipes always load with the default, so a task
name means the same data whatever the training seed.

>>> task = load_task("movie-sentences")
>>> task.train.texts[0], task.train.labels[0], task.num_labels, task.metric

Every task has ``train``, ``dev`` and ``test`` splits. Where the source has fewer, kdfast
carves them deterministically (seeded shuffle) out of the training data: the offline
movie sentences are split 80/10/10 (``movie-sentences``: label = mean rating > 0, the
rating-0 lines dropped; ``movie-fine``: five classes like SST-5, equal-width bins of the mean
rating over [-4, 4], every line kept); SNLI keeps its official test set and takes 5% of the
training subset as dev; a local file without ``dev``/``test`` siblings is split 80/10/10.

Local files: ``csv:data/train.csv`` reads that file; if ``dev.csv``/``test.csv`` (same
extension) sit beside a file named ``train.*``, they are used as the other splits. Columns
are chosen with ``text_column``, ``text_b_column`` (pairs) and ``label_column``; by
default kdfast looks for ``sentence``/``text``/``sentence1``, ``sentence2`` and ``label``.
Labels that are all integers stay as they are (they must lie in ``[0, num_labels)``);
strings become class ids in sorted order; other numbers make a regression task (Pearson).
"""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from kdfast.data.metrics import METRICS


@dataclass
class Split:
    texts: list
    labels: list
    texts_b: list | None = None

    def __len__(self):
        return len(self.texts)

    def subset(self, idx) -> "Split":
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                     None if self.texts_b is None else [self.texts_b[i] for i in idx])


@dataclass
class Task:
    name: str
    train: Split
    dev: Split
    test: Split
    num_labels: int  # 1 for regression
    metric: str = "accuracy"
    label_names: list = field(default_factory=list)

    @property
    def is_pair(self) -> bool:
        return self.train.texts_b is not None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


# GLUE on the hub: (text column, text_b column, metric, dev split used as our test split)
GLUE = {
    "sst2": ("sentence", None, "accuracy", "validation"),
    "cola": ("sentence", None, "mcc", "validation"),
    "mrpc": ("sentence1", "sentence2", "f1", "validation"),
    "qqp": ("question1", "question2", "f1", "validation"),
    "stsb": ("sentence1", "sentence2", "pearson", "validation"),
    "mnli": ("premise", "hypothesis", "accuracy", "validation_matched"),
    "qnli": ("question", "sentence", "accuracy", "validation"),
    "rte": ("sentence1", "sentence2", "accuracy", "validation"),
    "wnli": ("sentence1", "sentence2", "accuracy", "validation"),
}
OFFLINE = ("movie-sentences", "movie-fine", "snli")
FINE_LABELS = ["very negative", "negative", "neutral", "positive", "very positive"]
SNLI_LABELS = ["contradiction", "entailment", "neutral"]


def _carve(split: Split, fractions, seed: int):
    """Deterministic shuffled split of ``split`` into len(fractions)+1 parts."""
    idx = list(range(len(split)))
    random.Random(seed).shuffle(idx)
    parts, start = [], 0
    for f in fractions:
        n = int(round(f * len(idx)))
        parts.append(idx[start:start + n])
        start += n
    parts.append(idx[start:])
    return [split.subset(sorted(p)) for p in parts]


def movie_rows() -> list[tuple[float, str]]:
    """The offline movie-review snippets as ``(rating, sentence)``, every line of the file
    (mean human ratings, about [-4, 4]; 0 = neither positive nor negative)."""
    from kdfast.data.fetch import fetch

    path = fetch("movie-sentences")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) == 3 and parts[2].strip():
                rows.append((float(parts[1]), parts[2].strip()))
    return rows


def _movie_sentences(seed: int) -> Task:
    rows = [(r, t) for r, t in movie_rows() if r != 0]  # rating 0: neither (DATA.md: drop)
    split = Split([t for _, t in rows], [int(r > 0) for r, _ in rows])
    test, dev, train = _carve(split, (0.1, 0.1), seed)
    return Task("movie-sentences", train, dev, test, 2, "accuracy", ["negative", "positive"])


def _movie_fine(seed: int) -> Task:
    rows = movie_rows()
    bins = [min(4, int((r + 4.0) / 1.6)) for r, _ in rows]  # [-4, 4] in five equal bins
    split = Split([t for _, t in rows], bins)
    test, dev, train = _carve(split, (0.1, 0.1), seed)
    return Task("movie-fine", train, dev, test, 5, "accuracy", list(FINE_LABELS))


def _local_file_exists(spec: str) -> bool:
    """``csv:run@3`` names the file ``run@3`` when there is one (not a sample of ``run``)."""
    fmt, _, path = spec.partition(":")
    return fmt in ("csv", "tsv", "jsonl") and Path(path).expanduser().is_file()


def _sample_train(task: Task, spec: str, n: str, seed: int) -> Task:
    """``task`` with a seeded sample of ``n`` training examples (``spec@n``)."""
    if int(n) < 1:
        raise ValueError(f"task {spec!r}: after '@' give the number of training examples to "
                         f"keep (at least 1), got {n!r}")
    if int(n) > len(task.train):
        raise ValueError(f"task {spec!r} asks for {int(n)} training examples; "
                         f"{task.name!r} has {len(task.train)}")
    idx = list(range(len(task.train)))
    random.Random(seed).shuffle(idx)
    task.train = task.train.subset(sorted(idx[:int(n)]))
    task.name = spec
    return task


def _read_snli(path: Path) -> Split:
    a, b, y = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["gold_label"] not in SNLI_LABELS:  # "-": no annotator majority
                continue
            a.append(row["sentence1"])
            b.append(row["sentence2"])
            y.append(SNLI_LABELS.index(row["gold_label"]))
    return Split(a, y, b)


def _snli(seed: int) -> Task:
    from kdfast.data.fetch import fetch

    root = fetch("snli")
    dev, train = _carve(_read_snli(root / "snli_1.0_train_subset.jsonl"), (0.05,), seed)
    return Task("snli", train, dev, _read_snli(root / "snli_1.0_test.jsonl"), 3, "accuracy",
                list(SNLI_LABELS))


def _read_rows(fmt: str, path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    try:
        return _parse_rows(fmt, path)
    except UnicodeDecodeError as e:
        raise ValueError(f"task file {path} is not UTF-8 text (byte {e.start}: "
                         f"{e.object[e.start:e.start + 1]!r}); convert it to UTF-8") from None


def _parse_rows(fmt: str, path: Path) -> list[dict]:
    if fmt == "jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    else:
        try:
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="," if fmt == "csv" else "\t"))
        except csv.Error as e:
            raise ValueError(f"{path}: not a valid {fmt.upper()} file ({e})") from None
    if not rows:
        raise ValueError(f"task file {path} is empty (no data rows)")
    return rows


def _pick(rows, path, wanted, defaults, what, required=True):
    cols = list(rows[0].keys())
    if wanted is not None:
        if wanted not in cols:
            raise ValueError(f"{path}: {what} column {wanted!r} not found; columns are {cols}")
        return wanted
    for c in defaults:
        if c in cols:
            return c
    if required:
        raise ValueError(f"{path}: no {what} column (looked for {list(defaults)}); columns are "
                         f"{cols}; choose one with the {what.replace(' ', '_')}_column option")
    return None


def _rows_to_split(rows, path, text_col, text_b_col, label_col) -> Split:
    texts, texts_b, labels = [], [] if text_b_col else None, []
    for n, r in enumerate(rows):
        if r.get(text_col) is None or r.get(label_col) in (None, ""):
            raise ValueError(f"{path}: row {n + 1} has no value in column "
                             f"{text_col if r.get(text_col) is None else label_col!r}")
        texts.append(str(r[text_col]))
        if text_b_col:
            texts_b.append(str(r.get(text_b_col) or ""))
        labels.append(r[label_col])
    return Split(texts, labels, texts_b)


def _labels_kind(values):
    def as_number(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    nums = [as_number(v) for v in values]
    if any(n is None for n in nums):
        return "string", None
    if all(float(n).is_integer() for n in nums):
        return "int", [int(n) for n in nums]
    return "float", [float(n) for n in nums]


def _local(fmt: str, spec: str, seed: int, text_column, text_b_column, label_column,
           num_labels, metric) -> Task:
    path = Path(spec).expanduser()
    rows = _read_rows(fmt, path)
    text_col = _pick(rows, path, text_column, ("sentence", "text", "sentence1"), "text")
    b_default = ("sentence2",) if text_col != "sentence2" else ()
    text_b_col = _pick(rows, path, text_b_column, b_default, "text b", required=False)
    label_col = _pick(rows, path, label_column, ("label",), "label")
    splits = {"train": _rows_to_split(rows, path, text_col, text_b_col, label_col)}
    if path.stem == "train":
        for name in ("dev", "test"):
            other = path.with_name(name + path.suffix)
            if other.exists():
                orows = _read_rows(fmt, other)
                for col in (text_col, text_b_col, label_col):
                    if col and col not in orows[0]:
                        raise ValueError(f"{other}: column {col!r} missing; columns are "
                                         f"{list(orows[0])}")
                splits[name] = _rows_to_split(orows, other, text_col, text_b_col, label_col)
    files = [k for k in ("dev", "test") if k in splits]
    if "test" not in splits and "dev" not in splits:
        splits["test"], splits["dev"], splits["train"] = _carve(splits["train"], (0.1, 0.1), seed)
    elif "test" not in splits or "dev" not in splits:
        missing = "test" if "test" not in splits else "dev"
        splits[missing], splits["train"] = _carve(splits["train"], (0.1,), seed)

    kinds = {k: _labels_kind(s.labels) for k, s in splits.items()}
    unseen = None  # a typo ("positive" for "pos") would otherwise become a new class
    if num_labels is None and not any(kind == "float" for kind, _ in kinds.values()):
        seen = {str(v) for k, s in splits.items() if k not in files for v in s.labels}
        for k in files:  # the dev/test files beside train.csv (carved splits share its rows)
            extra = sorted({str(v) for v in splits[k].labels} - seen)
            if extra and unseen is None:  # raised after the checks of the values themselves
                unseen = (f"{path.with_name(k + path.suffix)}: labels "
                          f"{', '.join(map(repr, extra[:5]))} never occur in {path.name} "
                          f"(its labels: {', '.join(map(repr, sorted(seen)[:10]))}); "
                          "give --num-labels if that is intended")
    label_names, regression = [], False
    if any(kind == "string" for kind, _ in kinds.values()):
        label_names = sorted({str(v) for s in splits.values() for v in s.labels})
        for s in splits.values():
            s.labels = [label_names.index(str(v)) for v in s.labels]
        n = len(label_names)
    elif regression := any(kind == "float" for kind, _ in kinds.values()):
        for k, s in splits.items():
            s.labels = [float(v) for v in kinds[k][1]]
        n, metric = 1, metric or "pearson"
    else:
        for k, s in splits.items():
            s.labels = kinds[k][1]
        n = max(max(s.labels) for s in splits.values()) + 1
    if not regression and len({v for s in splits.values() for v in s.labels}) < 2 \
            and (num_labels is None or n == 1):
        found = sorted({str(v) for s in splits.values() for v in s.labels})
        raise ValueError(f"{path}: the labels have a single class ({', '.join(found)}): a "
                         "classification task needs at least 2 classes (a regression task "
                         "needs non-integer values)")
    if num_labels is not None:
        for k, s in splits.items():
            bad = [v for v in s.labels if n > 1 and not 0 <= v < num_labels]
            if bad:
                raise ValueError(f"{path}: {k} labels must lie in [0, {num_labels}), found {bad[0]}")
        n = num_labels
    if n > 1:
        low = min(min(s.labels) for s in splits.values())
        if low < 0:
            raise ValueError(f"{path}: class labels must be >= 0, found {low}")
        if n < 2:
            raise ValueError(f"{path}: a classification task needs at least 2 classes")
    if unseen:
        raise ValueError(unseen)
    return Task(f"{fmt}:{spec}", splits["train"], splits["dev"], splits["test"], n,
                metric or "accuracy", label_names)


def _hub(spec: str, seed: int, text_column, text_b_column, label_column, metric) -> Task:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("hub tasks need the `datasets` package: pip install kdfast[data]") from e
    parts = spec.split("/")
    if len(parts) != 2:
        raise ValueError(f"a hub task is 'dataset/config' (e.g. glue/sst2), got {spec!r}")
    ds = datasets.load_dataset(parts[0], parts[1])
    glue = GLUE.get(parts[1]) if parts[0] == "glue" else None
    t_col = text_column or (glue[0] if glue else "sentence")
    b_col = text_b_column or (glue[1] if glue else None)
    l_col = label_column or "label"
    test_name = glue[3] if glue else ("test" if "test" in ds else "validation")

    def to_split(d):
        for c in (t_col, b_col, l_col):
            if c and c not in d.column_names:
                raise ValueError(f"{spec}: column {c!r} not found; columns are {d.column_names}")
        return Split(list(d[t_col]), list(d[l_col]), list(d[b_col]) if b_col else None)

    train = to_split(ds["train"])
    test = to_split(ds[test_name])  # GLUE test labels are hidden: its dev set is our test set
    dev, train = _carve(train, (0.05,), seed)
    feat = ds["train"].features[l_col]
    names = list(getattr(feat, "names", []) or [])
    n = len(names) if names else (1 if isinstance(train.labels[0], float) else max(train.labels) + 1)
    return Task(spec, train, dev, test, n, metric or (glue[2] if glue else "accuracy"), names)


def load_task(spec: str, *, seed: int = 0, text_column: str | None = None,
              text_b_column: str | None = None, label_column: str | None = None,
              num_labels: int | None = None, metric: str | None = None) -> Task:
    """Load a task by name; see the module docstring for the forms of ``spec``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"task must be a non-empty string, got {spec!r}")
    if metric is not None and metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    base, _, sample = spec.rpartition("@")
    if base and re.fullmatch(r"[0-9]+", sample) and not _local_file_exists(spec):
        return _sample_train(load_task(base, seed=seed, text_column=text_column,
                                       text_b_column=text_b_column, label_column=label_column,
                                       num_labels=num_labels, metric=metric),
                             spec, sample, seed)
    if spec == "movie-sentences":
        task = _movie_sentences(seed)
    elif spec == "movie-fine":
        task = _movie_fine(seed)
    elif spec == "snli":
        task = _snli(seed)
    elif spec.split(":", 1)[0] in ("csv", "tsv", "jsonl") and ":" in spec:
        fmt, path = spec.split(":", 1)
        task = _local(fmt, path, seed, text_column, text_b_column, label_column, num_labels, metric)
    elif "/" in spec and not Path(spec).exists():
        task = _hub(spec, seed, text_column, text_b_column, label_column, metric)
    else:
        raise ValueError(f"unknown task {spec!r}: use {' or '.join(OFFLINE)}, "
                         "csv:/tsv:/jsonl:PATH for a local file, or a datasets hub name such "
                         "as glue/sst2; add @N for a sample of N training examples")
    if metric is not None:
        task.metric = metric
    if (task.metric == "pearson") != (task.num_labels == 1) or \
            (task.metric in ("f1", "mcc") and task.num_labels != 2):
        kind = "a regression" if task.num_labels == 1 else f"{task.num_labels} classes"
        fits = "pearson" if task.num_labels == 1 else \
            "accuracy, f1 or mcc" if task.num_labels == 2 else "accuracy"
        raise ValueError(f"metric {task.metric!r} does not fit task {spec!r} ({kind}): use {fits}")
    for name in ("train", "dev", "test"):
        if len(getattr(task, name)) == 0:
            raise ValueError(f"task {spec!r}: the {name} split is empty")
    return task


def unlabelled_sentences(sources, *, limit: int | None = None, seed: int = 0) -> list[str]:
    """Sentences without labels for task-agnostic distillation (SRA stage 1).

    ``sources``: task names (their training sentences, both sides of pairs) or ``text:PATH``
    or the path of an existing file (any local text file, one sentence or document per line,
    read as a stream). Anything else is an error (an unknown task name), never a sentence.
    Duplicates are dropped; ``limit`` keeps a seeded random sample.
    """
    seen, out = set(), []

    def add(s):
        s = s.strip()
        if s and s not in seen:
            seen.add(s)
            out.append(s)

    for src in sources:
        if src.startswith("text:") or Path(src).expanduser().is_file():
            path = Path(src[5:] if src.startswith("text:") else src).expanduser()
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    add(line)
        else:
            task = load_task(src)
            for s in task.train.texts:
                add(s)
            for s in task.train.texts_b or []:
                add(s)
    if limit is not None and len(out) > limit:
        out = random.Random(seed).sample(out, limit)
    return out


def load_sentences(spec: str, limit: int | None = None) -> list[str]:
    """Sentences to score or distil on, as they are: a local text file (one per line), all
    ``movie-sentences`` snippets (neutral ones too: no labels here) or both sides of the
    ``snli`` training subset (each once); the first ``limit``."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if spec == "movie-sentences":
        out = [t for _, t in movie_rows()]
    elif spec == "snli":
        from kdfast.data.fetch import fetch

        out, seen = [], set()
        with open(fetch("snli") / "snli_1.0_train_subset.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for key in ("sentence1", "sentence2"):
                    s = (row.get(key) or "").strip()
                    if s and s not in seen:
                        seen.add(s)
                        out.append(s)
                if limit is not None and len(out) >= limit:
                    break
    elif Path(spec).expanduser().is_file():
        with open(Path(spec).expanduser(), encoding="utf-8", errors="replace") as f:
            out = [line.strip() for line in f if line.strip()]
    else:
        raise FileNotFoundError(f"sentences {spec!r}: neither a file nor one of {OFFLINE}")
    return out[:limit] if limit is not None else out
