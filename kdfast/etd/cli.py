"""``kdfast extract``: score a teacher on sentences and save an extracted student.

    kdfast extract --teacher minilm-l6 --layers 3 --hidden 192 --heads 6 --ffn 768 \\
        --strategy impt --data movie-sentences --out students/etd-l3-h192

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


def add_extract_parser(subparsers):
    p = subparsers.add_parser("extract", help="extract a smaller BERT from a teacher (ETD)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True,
                   help="minilm-l6 (offline all-MiniLM-L6-v2), a local model directory "
                        "or a hub name")
    p.add_argument("--layers", type=int, required=True, help="student layers")
    p.add_argument("--hidden", type=int, required=True, help="student hidden size")
    p.add_argument("--heads", type=int, required=True, help="student attention heads")
    p.add_argument("--ffn", type=int, required=True, help="student FFN intermediate size")
    p.add_argument("--strategy", choices=("impt", "rand"), default="impt",
                   help="impt: by importance on --data; rand: uniformly at random (seeded)")
    p.add_argument("--data", default=None,
                   help="text file (one sentence per line), movie-sentences or snli (impt only)")
    p.add_argument("--num-sentences", type=int, default=1024, help="sentences scored (impt)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--layer-selection", choices=("uniform", "first", "last"), default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="reduction kernel: auto, cpu, cuda, reference")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run_extract)
    return p


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


def run_extract(args) -> int:
    import torch

    from kdfast.etd import extract, importance

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher, tokenizer, _ = load_teacher(args.teacher)
    teacher.to(device)
    imp = None
    if args.strategy == "impt":
        if not args.data:
            raise SystemExit("kdfast extract: --strategy impt needs --data")
        sentences = load_sentences(args.data, args.num_sentences)
        if not sentences:
            raise SystemExit(f"kdfast extract: no sentences in {args.data}")
        n_batches = (len(sentences) + args.batch_size - 1) // args.batch_size
        imp = importance(teacher, make_batches(tokenizer, sentences, args.batch_size,
                                               args.max_length),
                         num_batches=n_batches, backend=args.backend, progress=True)
    try:
        student = extract(teacher, num_layers=args.layers, hidden_size=args.hidden,
                          num_heads=args.heads, intermediate_size=args.ffn,
                          strategy=args.strategy, importance=imp, seed=args.seed,
                          layer_selection=args.layer_selection)
    except ValueError as exc:
        raise SystemExit(f"kdfast extract: {exc}") from None
    os.makedirs(args.out, exist_ok=True)
    student.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    if imp is not None:
        imp.save(os.path.join(args.out, "importance.pt"))
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    print(f"kdfast extract: {args.strategy} student ({args.layers} layers, hidden {args.hidden}, "
          f"{args.heads} heads, FFN {args.ffn}; {n_s / 1e6:.1f}M params vs teacher "
          f"{n_t / 1e6:.1f}M) from teacher layers {student.config.etd['teacher_layers']} "
          f"saved to {args.out}")
    return 0
