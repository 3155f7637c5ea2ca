"""ETD importance-scoring throughput (``kdfast bench etd``).

Scores the real all-MiniLM-L6-v2 teacher (offline, via kdfast.data.fetch) on movie-review
sentences at a fixed batch size with four procedures, all on the same batches and loss:

* ``bertology``       -- ``headmask`` plus what run_bertology does by default: eager attention
                         and the entropy of every head's attention probabilities;
* ``headmask``        -- the bertology procedure (Michel et al.): a head-mask gate that requires
                         grad on every layer's context (transformers 5.x has no head_mask),
                         parameters requiring grad as in run_bertology, |dL/dxi| per batch;
                         heads only;
* ``headmask+taylor`` -- the reference (kdfast.etd.headmask): the same pass plus
                         autograd Taylor sums of the parameters for FFN neurons and hidden dims;
* ``kdfast``          -- kdfast.etd.importance: heads + FFN + hidden from activation x gradient
                         sums (frozen parameters, fused unit_taylor kernel), each batch's rows
                         run in groups of similar length (``unpad``, the default);
* ``kdfast-padded``   -- the same with ``unpad=False`` (the whole padded batch at once);
* ``kdfast-heads``    -- kdfast.etd.importance(heads only).

Two losses: ``proxy`` (BertModel, the label-free masked-input proxy, which includes a no-grad
clean forward in every procedure) and ``task`` (BertForSequenceClassification on the teacher
with a seeded random classifier and the sentiment labels). Reported: median ms per batch and
sentences/s; the notes give the speedups and the largest score difference between procedures.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from kdfast.bench import harness


def _headmask(model, batches, loss_fn=None, *, entropy=False):
    """Bertology-style head importance: a gate on each layer's context that requires grad,
    parameters requiring grad, |dL/dxi| per batch (grads zeroed between batches). With
    ``entropy=True`` it also does what run_bertology does by default: eager attention and the
    entropy of every head's attention probabilities."""
    from kdfast.etd import _bert
    from kdfast.etd.importance import _finish, _loss_chooser

    base = _bert.base_model(model)
    cfg = base.config
    n_heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    gates = [torch.ones(n_heads, requires_grad=True) for _ in base.encoder.layer]
    ent = torch.zeros(len(gates), n_heads)
    active = [False]
    mask = [None]

    def hook(i):
        def fn(module, args, output):
            if not active[0]:
                return output
            if entropy:
                p = output[1].detach()
                h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # [B, H, L]
                m = mask[0].unsqueeze(1).to(h.dtype)
                ent[i] += (h * m).sum((0, 2))
            return (output[0] * gates[i].repeat_interleave(d),) + tuple(output[1:])
        return fn

    handles = [layer.attention.self.register_forward_hook(hook(i))
               for i, layer in enumerate(base.encoder.layer)]
    choose = _loss_chooser(model, base, loss_fn)
    heads = torch.zeros(len(gates), n_heads)
    attn_impl = cfg._attn_implementation
    try:
        model.eval()
        if entropy:
            cfg._attn_implementation = "eager"
        for batch in batches:
            model.zero_grad(set_to_none=True)
            for g in gates:
                g.grad = None
            mask[0] = batch["attention_mask"]
            loss = _bert.batch_loss(model, batch, choose(batch),
                                    lambda: active.__setitem__(0, True))
            loss.backward()
            active[0] = False
            for i, g in enumerate(gates):
                heads[i] += g.grad.abs()
    finally:
        cfg._attn_implementation = attn_impl
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return _finish(heads, None, None, len(batches), 0)


def main(quick: bool, out_dir: str) -> int:
    from transformers import BertForSequenceClassification

    from kdfast.data.tasks import movie_rows
    from kdfast.data.tokenize import make_batches
    from kdfast.etd import importance
    from kdfast.models.teachers import load_bert
    from kdfast.etd.headmask import importance_reference

    # One thread: this suite's CPU numbers come from a 2-core machine shared with other jobs,
    # where two threads were 3-4x slower than one and far noisier. Set KDFAST_BENCH_THREADS
    # to override.
    torch.set_num_threads(int(os.environ.get("KDFAST_BENCH_THREADS", "1")))
    batch_size, max_length, n_batches, repeats = (16, 48, 1, 2) if quick else (32, 64, 2, 5)
    teacher, tok, path = load_bert("minilm-l6")
    rows = movie_rows()
    rows_all, ratings = [t for _, t in rows], [r for r, _ in rows]
    sentences = rows_all[: batch_size * n_batches]
    batches = list(make_batches(tok, sentences, batch_size, max_length))
    labelled = []
    for i, b in enumerate(batches):
        r = ratings[i * batch_size: i * batch_size + b["input_ids"].shape[0]]
        labelled.append(dict(b, labels=torch.tensor([int(x > 0) for x in r])))
    torch.manual_seed(0)
    clf = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    models = {"proxy": (teacher, batches), "task": (clf, labelled)}
    meta = harness.machine()
    rows, notes = [], []
    for loss_name, (model, data) in models.items():
        procs = {
            "bertology": lambda m=model, d=data: _headmask(m, d, entropy=True),
            "headmask": lambda m=model, d=data: _headmask(m, d),
            "headmask+taylor": lambda m=model, d=data: importance_reference(m, d),
            "kdfast": lambda m=model, d=data: importance(m, d),
            "kdfast-padded": lambda m=model, d=data: importance(m, d, unpad=False),
            "kdfast-heads": lambda m=model, d=data: importance(m, d, ffn=False, hidden=False),
        }
        scores = {name: fn() for name, fn in procs.items()}  # also the warm-up
        ref = scores["headmask+taylor"]
        diffs = {k: float((getattr(scores["kdfast"], k) - getattr(ref, k)).abs().max() /
                          getattr(ref, k).abs().max()) for k in ("heads", "ffn", "hidden")}
        for other in ("headmask", "bertology"):
            diffs[other] = float((scores["kdfast"].heads - scores[other].heads).abs().max())
        case = f"minilm-l6 {loss_name} B={batch_size} L<={max_length}"
        # Round-robin repeats, so that load from other jobs on a shared machine hits every
        # procedure alike; the median pass is reported.
        samples = {name: [] for name in procs}
        for _ in range(repeats):
            for name, fn in procs.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3 / len(data))
        times = {name: statistics.median(v) for name, v in samples.items()}
        for name, ms in times.items():
            sps = batch_size / (ms * 1e-3)
            rows.append({"case": case, "mode": "score", "impl": name, "ms": ms,
                         "sentences_per_s": sps, "peak_extra_mb": None})
            print(f"  {case:40s} {name:16s} {ms:9.1f} ms/batch {sps:8.1f} sentences/s")
        notes.append(
            f"- {case}: kdfast (heads+FFN+hidden) is "
            f"{times['headmask+taylor'] / times['kdfast']:.2f}x "
            f"headmask+taylor (all three), {times['headmask'] / times['kdfast']:.2f}x headmask "
            f"(heads only) and {times['bertology'] / times['kdfast']:.2f}x bertology (without "
            f"unpadding: {times['headmask+taylor'] / times['kdfast-padded']:.2f}x "
            f"headmask+taylor); kdfast-heads "
            f"is {times['headmask'] / times['kdfast-heads']:.2f}x headmask and "
            f"{times['bertology'] / times['kdfast-heads']:.2f}x bertology. Max relative score "
            f"difference kdfast vs headmask+taylor: heads {diffs['heads']:.1e}, ffn "
            f"{diffs['ffn']:.1e}, hidden {diffs['hidden']:.1e}; normalised head scores, max abs "
            f"difference kdfast vs headmask {diffs['headmask']:.1e}, vs bertology "
            f"{diffs['bertology']:.1e}.")
    for r in rows:
        r["ms_per_batch"] = r["ms"]
    text = ("Scoring throughput, sentences/s = batch size / (ms per batch); ms per batch is the "
            f"median of {repeats} round-robin passes over {n_batches} batches, "
            f"{torch.get_num_threads()} thread(s). See kdfast/bench/etd.py for the procedures. "
            "CPU only: no GPU in this task, GPU numbers not measured.\n\n" + "\n".join(notes)
            + "\n\n| case | impl | sentences/s |\n|---|---|---|\n"
            + "\n".join(f"| {r['case']} | {r['impl']} | {r['sentences_per_s']:.1f} |"
                        for r in rows))
    name = harness.result_name(f"etd-{'cuda' if torch.cuda.is_available() else 'cpu'}", quick)
    path_md = harness.write(rows, out_dir, name, meta, notes=text)
    print(f"wrote {path_md}")
    return 0
