"""ETD: the unit_taylor op, importance scoring (fast path vs head-mask/autograd reference),
extraction, and the `kdfast extract` command."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import (BertConfig, BertForMaskedLM, BertForQuestionAnswering,
                          BertForSequenceClassification, BertModel)

import kdfast.etd as etd
from kdfast import _ext
from kdfast.ops.importance import unit_taylor
from kdfast.etd.headmask import importance_reference
from kdfast.reference.importance import unit_taylor as unit_taylor_ref

BACKENDS = ["reference"] + [b for b in ("cpu",) if _ext.has(b)]
FAST = "cpu" if _ext.has("cpu") else "reference"


def tiny_config(**kw):
    base = dict(vocab_size=97, hidden_size=24, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=40, num_labels=3)
    base.update(kw)
    return BertConfig(**base)


def make_batches(n=3, B=4, L=9, labels=False, seed=1, vocab=97):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (B, L), generator=g)
        am = torch.ones(B, L, dtype=torch.long)
        am[0, L - 3:] = 0
        ids[0, L - 3:] = 0  # padding tokens (padding_idx 0)
        b = {"input_ids": ids, "attention_mask": am,
             "token_type_ids": torch.randint(0, 2, (B, L), generator=g)}
        if labels == "cls":
            b["labels"] = torch.randint(0, 3, (B,), generator=g)
        elif labels == "qa":
            b["start_positions"] = torch.randint(0, L, (B,), generator=g)
            b["end_positions"] = torch.randint(0, L, (B,), generator=g)
        elif labels == "mlm":
            b["labels"] = torch.where(torch.rand(B, L, generator=g) < 0.3, ids,
                                      torch.full_like(ids, -100))
        out.append(b)
    return out


# ---------------------------------------------------------------- the unit_taylor op

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,units", [((7, 13), 13), ((3, 5, 12), 4), ((1, 30), 1),
                                         ((300, 37), 37), ((2, 0, 6), 3)])
def test_unit_taylor_matches_reference(backend, shape, units):
    g = torch.Generator().manual_seed(sum(shape) + units)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    out = unit_taylor(a, b, units, backend=backend)
    want = (a * b).reshape(-1, shape[-1]).sum(0).reshape(units, -1).sum(-1)
    assert out.dtype == torch.float64 and out.shape == (units,)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_unit_taylor_low_precision_accumulates_in_fp32(backend, dtype):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(517, 48, generator=g).to(dtype)
    b = torch.randn(517, 48, generator=g).to(dtype)
    out = unit_taylor(a, b, 6, backend=backend)
    assert out.dtype == torch.float32
    want = unit_taylor_ref(a.double(), b.double(), 6)
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-3)


def test_unit_taylor_non_contiguous_and_default_units():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(9, 11, generator=g, dtype=torch.float64).t()
    b = torch.randn(11, 9, generator=g, dtype=torch.float64)
    torch.testing.assert_close(unit_taylor(a, b, backend=FAST), (a * b).sum(0))


def test_unit_taylor_gradcheck_and_opcheck():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    for backend in BACKENDS:
        def fn(x, y, backend=backend):
            return unit_taylor(x, y, 3, backend=backend)

        assert torch.autograd.gradcheck(fn, (a, b))
    if not _ext.has("cpu"):
        pytest.skip("C++ extension not built")
    torch.library.opcheck(torch.ops.kdfast.unit_taylor.default, (a.detach(), b.detach(), 3))
    torch.library.opcheck(torch.ops.kdfast.unit_taylor.default, (a, b, 2))


def test_unit_taylor_bad_inputs():
    a = torch.randn(4, 6)
    with pytest.raises(ValueError, match="same shape"):
        unit_taylor(a, torch.randn(4, 5), 1)
    with pytest.raises(TypeError, match="dtype"):
        unit_taylor(a, a.double(), 6)
    with pytest.raises(ValueError, match="units"):
        unit_taylor(a, a, 4)
    with pytest.raises(TypeError, match="units must be an int"):
        unit_taylor(a, a, 2.0)
    with pytest.raises(TypeError, match="act must be a torch.Tensor"):
        unit_taylor([1.0], a, 1)
    with pytest.raises(TypeError, match="floating"):
        unit_taylor(a.long(), a.long(), 1)
    for backend in ("reference", "auto"):  # every backend refuses K = 0 the same way
        with pytest.raises(ValueError, match="K >= 1"):
            unit_taylor(torch.randn(3, 0), torch.randn(3, 0), 2, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_unit_taylor_cuda_matches_reference(dtype):
    if not _ext.has("cuda"):
        pytest.skip(f"CUDA extension absent: {_ext.why_missing('cuda')}")
    g = torch.Generator().manual_seed(6)
    for shape, units in (((1000, 384), 12), ((3, 7, 1536), 1536), ((0, 8), 4)):
        a = torch.randn(shape, generator=g).to(dtype)
        b = torch.randn(shape, generator=g).to(dtype)
        out = unit_taylor(a.cuda(), b.cuda(), units, backend="cuda").cpu()
        want = unit_taylor_ref(a.double(), b.double(), units)
        tol = 1e-10 if dtype == torch.float64 else 1e-3
        torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol * 10)
    a = torch.randn(5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.kdfast.unit_taylor.default, (a, a.detach() * 2, 3))


@pytest.mark.gpu
def test_importance_cuda_equals_reference():
    if not _ext.has("cuda"):
        pytest.skip(f"CUDA extension absent: {_ext.why_missing('cuda')}")
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config()).double().cuda()
    fast = etd.importance(model, make_batches(labels="cls"), backend="cuda")
    ref = importance_reference(model, make_batches(labels="cls"))
    _assert_same_scores(fast, ref)


# ---------------------------------------------------------------- importance scoring

def _assert_same_scores(a, b, rtol=1e-6):
    for key in ("heads", "heads_raw", "attn", "ffn", "hidden"):
        x, y = getattr(a, key), getattr(b, key)
        assert x.shape == y.shape and x.dtype == torch.float32, key
        assert y.abs().max() > 0, key  # the reference is not trivially zero
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * float(y.abs().max()), msg=key)


@pytest.mark.parametrize("cls,labels", [(BertModel, False), (BertForSequenceClassification, "cls"),
                                        (BertForSequenceClassification, False),
                                        (BertForMaskedLM, "mlm"), (BertForQuestionAnswering, "qa")])
def test_importance_fused_equals_reference(cls, labels):
    torch.manual_seed(0)
    model = cls(tiny_config(num_labels=2 if labels == "qa" else 3)).double()
    with torch.no_grad():  # random init zeroes the [PAD] row; a trained model's is not zero
        etd._bert.base_model(model).embeddings.word_embeddings.weight[0].normal_()
    fast = etd.importance(model, make_batches(labels=labels), backend=FAST)
    ref = importance_reference(model, make_batches(labels=labels))
    _assert_same_scores(fast, ref)
    assert fast.num_batches == 3 and fast.num_sentences == 12
    assert fast.heads.shape == (3, 4) and fast.ffn.shape == (3, 37) and fast.hidden.shape == (24,)
    torch.testing.assert_close(fast.heads.norm(dim=-1), torch.ones(3))


def ragged_batches(labels, n=2, B=7, L=13, seed=4):
    """Batches whose rows have very different lengths (right-padded), labels per row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lens = torch.tensor([L, 2, 5, L - 1, 3, 9, 1][:B])
        am = (torch.arange(L) < lens[:, None]).long()
        ids = torch.randint(1, 97, (B, L), generator=g) * am
        b = {"input_ids": ids, "attention_mask": am, "token_type_ids": torch.zeros_like(ids)}
        if labels:
            b["labels"] = torch.randint(0, 3, (B,), generator=g)
        out.append(b)
    return out


def test_length_groups():
    from kdfast.etd.importance import length_groups

    assert length_groups([5, 5, 5], 0) == [[0, 1, 2]]
    assert length_groups([2, 9, 2, 9], 0) == [[1, 3], [0, 2]]
    assert length_groups([2, 9, 2, 9], 100) == [[1, 3, 0, 2]]  # one more group costs too much
    groups = length_groups([7, 1, 30, 4, 30, 2, 16], 8)
    assert sorted(i for grp in groups for i in grp) == list(range(7))


@pytest.mark.parametrize("cls,labels", [(BertModel, False), (BertForSequenceClassification, True)])
def test_importance_unpadded_groups_equal_reference(cls, labels):
    # unpad_overhead_tokens=0 splits every batch into groups by length; the scores must be
    # those of the whole padded batch (the proxy's masks and mean are the batch's).
    torch.manual_seed(5)
    model = cls(tiny_config()).double()
    with torch.no_grad():
        etd._bert.base_model(model).embeddings.word_embeddings.weight[0].normal_()
    batches = ragged_batches(labels)
    split = etd.importance(model, batches, backend=FAST, unpad_overhead_tokens=0)
    whole = etd.importance(model, batches, backend=FAST, unpad=False)
    ref = importance_reference(model, ragged_batches(labels))
    _assert_same_scores(split, ref)
    _assert_same_scores(whole, ref)


def test_importance_float32_and_custom_loss():
    torch.manual_seed(1)
    model = BertModel(tiny_config())

    def loss_fn(outputs, batch):
        return outputs.last_hidden_state[:, 0].pow(2).sum() + outputs.pooler_output.sum()

    fast = etd.importance(model, make_batches(), loss_fn=loss_fn, backend=FAST)
    ref = importance_reference(model, make_batches(), loss_fn=loss_fn)
    _assert_same_scores(fast, ref, rtol=2e-4)


def test_importance_gradients_are_per_batch_and_state_is_restored():
    torch.manual_seed(2)
    model = BertForSequenceClassification(tiny_config()).double().train()
    model.classifier.weight.requires_grad_(False)
    batches = make_batches(n=2, labels="cls")
    both = etd.importance(model, batches, backend=FAST)
    one = [etd.importance(model, [b], backend=FAST) for b in batches]
    for key in ("heads_raw", "ffn", "hidden"):
        mean = (getattr(one[0], key) + getattr(one[1], key)) / 2
        torch.testing.assert_close(getattr(both, key), mean)
    assert model.training
    assert not model.classifier.weight.requires_grad
    assert model.bert.pooler.dense.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # scoring turns gradients on for itself
        only_heads = etd.importance(model, batches, num_batches=1, ffn=False, hidden=False,
                                    backend=FAST)
    assert only_heads.ffn is None and only_heads.hidden is None and only_heads.num_batches == 1
    torch.testing.assert_close(only_heads.heads, one[0].heads)


def test_importance_errors():
    model = BertModel(tiny_config())
    with pytest.raises(ValueError, match="empty"):
        etd.importance(model, [], backend=FAST)
    with pytest.raises(TypeError, match="BertModel"):
        etd.importance(torch.nn.Linear(2, 2), make_batches())
    with pytest.raises(TypeError, match="input_ids"):
        etd.importance(model, [{"ids": torch.zeros(1, 3, dtype=torch.long)}])
    with pytest.raises(ValueError, match="num_batches"):
        etd.importance(model, make_batches(), num_batches=0)
    with pytest.raises(ValueError, match="at least one"):
        etd.importance(model, make_batches(), heads=False, ffn=False, hidden=False)


# ---------------------------------------------------------------- extraction

def _scores(seed=0, cfg=None):
    torch.manual_seed(seed)
    model = BertModel(cfg or tiny_config()).eval()
    return model, etd.importance(model, make_batches(), backend=FAST)


@pytest.mark.parametrize("cls", [BertModel, BertForSequenceClassification])
def test_full_size_extraction_reproduces_teacher(cls):
    torch.manual_seed(0)
    teacher = cls(tiny_config()).eval()
    imp = etd.importance(teacher, make_batches(), backend=FAST)
    cfg = teacher.config
    for strategy in ("impt", "rand"):
        student = etd.extract(teacher, num_layers=3, hidden_size=24, num_heads=4,
                              intermediate_size=37, strategy=strategy, importance=imp).eval()
        assert type(student) is cls and student.config.hidden_size == cfg.hidden_size
        batch = make_batches(n=1)[0]
        with torch.no_grad():
            out_s, out_t = student(**batch), teacher(**batch)
        key = "last_hidden_state" if cls is BertModel else "logits"
        assert torch.equal(out_s[key], out_t[key])


def hand_sliced(teacher, sel, cfg):
    """An independent slicing of a BertModel teacher, written out weight by weight."""
    st = BertModel(cfg).eval()
    h = torch.tensor(sel["hidden"])
    d_t = teacher.config.hidden_size // teacher.config.num_attention_heads
    d_s = cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            src = getattr(teacher.embeddings, name).weight
            getattr(st.embeddings, name).weight.copy_(src[:, h])
        st.embeddings.LayerNorm.weight.copy_(teacher.embeddings.LayerNorm.weight[h])
        st.embeddings.LayerNorm.bias.copy_(teacher.embeddings.LayerNorm.bias[h])
        for i, t_i in enumerate(sel["teacher_layers"]):
            S, T = st.encoder.layer[i], teacher.encoder.layer[t_i]
            a = torch.tensor([head * d_t + j for head, dims in zip(sel["heads"][i], sel["dims"][i])
                              for j in dims])
            for proj in ("query", "key", "value"):
                scale = math.sqrt(d_s / d_t) if proj == "query" else 1.0
                getattr(S.attention.self, proj).weight.copy_(
                    getattr(T.attention.self, proj).weight[a][:, h] * scale)
                getattr(S.attention.self, proj).bias.copy_(
                    getattr(T.attention.self, proj).bias[a] * scale)
            S.attention.output.dense.weight.copy_(T.attention.output.dense.weight[h][:, a])
            S.attention.output.dense.bias.copy_(T.attention.output.dense.bias[h])
            f = torch.tensor(sel["ffn"][i])
            S.intermediate.dense.weight.copy_(T.intermediate.dense.weight[f][:, h])
            S.intermediate.dense.bias.copy_(T.intermediate.dense.bias[f])
            S.output.dense.weight.copy_(T.output.dense.weight[h][:, f])
            S.output.dense.bias.copy_(T.output.dense.bias[h])
            for ln in (("attention", "output", "LayerNorm"), ("output", "LayerNorm")):
                s_ln, t_ln = S, T
                for part in ln:
                    s_ln, t_ln = getattr(s_ln, part), getattr(t_ln, part)
                s_ln.weight.copy_(t_ln.weight[h])
                s_ln.bias.copy_(t_ln.bias[h])
        st.pooler.dense.weight.copy_(teacher.pooler.dense.weight[h][:, h])
        st.pooler.dense.bias.copy_(teacher.pooler.dense.bias[h])
    return st


@pytest.mark.parametrize("heads,hidden,strategy", [(2, 12, "impt"), (4, 12, "impt"),
                                                   (3, 18, "rand")])
def test_smaller_extraction_round_trips_and_equals_hand_sliced(tmp_path, heads, hidden, strategy):
    teacher, imp = _scores()
    student = etd.extract(teacher, num_layers=2, hidden_size=hidden, num_heads=heads,
                          intermediate_size=20, strategy=strategy, importance=imp, seed=3).eval()
    sel = etd.select_units(teacher.config, num_layers=2, hidden_size=hidden, num_heads=heads,
                           intermediate_size=20, strategy=strategy, importance=imp, seed=3)
    d_s = hidden // heads
    plain = {"teacher_layers": sel["layers"], "hidden": sel["hidden"].tolist(),
             "heads": [x.tolist() for x in sel["heads"]],
             "dims": [[d.tolist() for d in dims] for dims in sel["head_dims"]],
             "ffn": [x.tolist() for x in sel["ffn"]]}
    assert plain["teacher_layers"] == [1, 2]  # uniform: round(i * 3 / 2), 1-based
    assert all(len(d) == d_s for dims in plain["dims"] for d in dims)
    if strategy == "impt":  # the top-scored units, kept in the teacher's order
        top_hidden = torch.argsort(imp.hidden, descending=True)[:hidden]
        top_heads = torch.argsort(imp.heads[1], descending=True)[:heads]
        assert plain["hidden"] == sorted(top_hidden.tolist())
        assert plain["heads"][0] == sorted(top_heads.tolist())
    cfg = BertConfig(**{**teacher.config.to_dict(), "num_hidden_layers": 2, "hidden_size": hidden,
                        "num_attention_heads": heads, "intermediate_size": 20})
    ref = hand_sliced(teacher, plain, cfg)
    student.save_pretrained(tmp_path)
    loaded = BertModel.from_pretrained(tmp_path).eval()  # plain transformers
    assert loaded.config.etd["teacher_layers"] == [1, 2]
    batch = make_batches(n=1)[0]
    with torch.no_grad():
        a, b, c = student(**batch), loaded(**batch), ref(**batch)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    torch.testing.assert_close(a.last_hidden_state, c.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.pooler_output, c.pooler_output, rtol=1e-5, atol=1e-5)


def test_sub_head_extraction_keeps_teacher_attention_logits():
    """Keeping d_s < d_t dims per head: the student's q.k/sqrt(d_s) equals the teacher's
    partial dot product over the kept dims divided by sqrt(d_t)."""
    teacher, imp = _scores()
    student = etd.extract(teacher, num_layers=3, hidden_size=12, num_heads=4,
                          intermediate_size=37, importance=imp)
    x = torch.randn(5, 24)
    h = torch.tensor(student.config.etd["hidden"])
    t_self = teacher.encoder.layer[0].attention.self
    s_self = student.encoder.layer[0].attention.self
    x_s = x.clone()
    x_s[:, [i for i in range(24) if i not in h.tolist()]] = 0  # the student sees only kept dims
    with torch.no_grad():
        q_t, k_t = t_self.query(x_s).view(5, 4, 6), t_self.key(x_s).view(5, 4, 6)
        q_s, k_s = s_self.query(x[:, h]).view(5, 4, 3), s_self.key(x[:, h]).view(5, 4, 3)
    sel = etd.select_units(teacher.config, num_layers=3, hidden_size=12, num_heads=4,
                           intermediate_size=37, importance=imp)
    for j, (head, dims) in enumerate(zip(sel["heads"][0].tolist(), sel["head_dims"][0])):
        want = torch.einsum("id,jd->ij", q_t[:, head, dims], k_t[:, head, dims]) / math.sqrt(6)
        got = torch.einsum("id,jd->ij", q_s[:, j], k_s[:, j]) / math.sqrt(3)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_head_models_extract_with_sliced_heads(tmp_path):
    torch.manual_seed(0)
    for cls, labels in ((BertForSequenceClassification, "cls"), (BertForMaskedLM, "mlm")):
        teacher = cls(tiny_config()).eval()
        imp = etd.importance(teacher, make_batches(labels=labels), backend=FAST)
        student = etd.extract(teacher, num_layers=1, hidden_size=12, num_heads=2,
                              intermediate_size=10, importance=imp)
        h = torch.tensor(student.config.etd["hidden"])
        if cls is BertForMaskedLM:
            dec = student.cls.predictions.decoder.weight
            assert dec.data_ptr() == student.bert.embeddings.word_embeddings.weight.data_ptr()
            torch.testing.assert_close(student.cls.predictions.transform.dense.weight,
                                       teacher.cls.predictions.transform.dense.weight[h][:, h])
        else:
            torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight[:, h])
        student.save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__).eval()
        batch = make_batches(n=1, labels=labels)[0]
        with torch.no_grad():
            assert torch.equal(student.eval()(**batch).logits, loaded(**batch).logits)


def test_rand_is_seeded():
    teacher = BertModel(tiny_config())
    kw = dict(num_layers=2, hidden_size=12, num_heads=2, intermediate_size=20, strategy="rand")
    a, b = etd.extract(teacher, seed=7, **kw), etd.extract(teacher, seed=7, **kw)
    c = etd.extract(teacher, seed=8, **kw)
    assert a.config.etd == b.config.etd and a.config.etd["hidden"] != c.config.etd["hidden"]
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


@pytest.mark.parametrize("kw,match", [
    (dict(hidden_size=20, num_heads=3), "not a multiple of num_heads"),
    (dict(hidden_size=24, num_heads=2), "larger than the teacher's head_dim"),
    (dict(num_layers=4), "num_layers=4 is larger"),
    (dict(hidden_size=30, num_heads=5), "hidden_size=30 is larger"),
    (dict(num_heads=5, hidden_size=20), "num_heads=5 is larger"),
    (dict(intermediate_size=38), "intermediate_size=38 is larger"),
    (dict(num_layers=0), "num_layers must be >= 1"),
    (dict(strategy="magnitude"), "strategy must be one of"),
    (dict(importance=None), "needs importance="),
    (dict(layer_selection="middle"), "layer_selection"),
    (dict(layer_selection=[2, 1]), "increasing"),
])
def test_bad_configs_raise(kw, match):
    teacher, imp = _scores()
    args = dict(num_layers=2, hidden_size=12, num_heads=2, intermediate_size=20,
                strategy="impt", importance=imp)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        etd.extract(teacher, **args)


def test_importance_of_another_model_is_rejected():
    teacher = BertModel(tiny_config())
    _, other = _scores(cfg=tiny_config(num_hidden_layers=2))
    with pytest.raises(ValueError, match="importance.heads must be a tensor of shape"):
        etd.extract(teacher, num_layers=2, hidden_size=12, num_heads=2, intermediate_size=20,
                    importance=other)


# ---------------------------------------------------------------- real teacher and sentences

@pytest.mark.real
def test_real_minilm_impt_student_is_closest_to_teacher():
    """3-layer / 6-head / hidden-192 students of all-MiniLM-L6-v2. Their mean-pooled sentence
    embeddings are compared with the teacher's on the student's kept hidden dims (the teacher
    embedding restricted to those dims; the random-init student uses the ETD-Impt dims)."""
    import torch.nn.functional as F

    from kdfast.data.tasks import load_sentences
    from kdfast.data.tokenize import make_batches as batches_of
    from kdfast.models.teachers import load_bert as load_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core CI box runs this 3-4x faster on one thread
    try:
        _real_check(F, load_sentences, load_teacher, batches_of)
    finally:
        torch.set_num_threads(threads)


def _real_check(F, load_sentences, load_teacher, batches_of):
    torch.manual_seed(0)
    teacher, tok, _ = load_teacher("minilm-l6")
    teacher.eval()
    sentences = load_sentences("movie-sentences")
    imp = etd.importance(teacher, batches_of(tok, sentences[:64], 32, 64))
    enc = tok(sentences[2000:2096], padding=True, truncation=True, max_length=64,
              return_tensors="pt")
    w = enc["attention_mask"].unsqueeze(-1).float()

    def embed(model):
        with torch.no_grad():
            return (model.eval()(**enc).last_hidden_state * w).sum(1) / w.sum(1)

    def closeness(student, dims):
        return F.cosine_similarity(embed(student), t_emb[:, dims], dim=-1).mean().item()

    t_emb = embed(teacher)
    kw = dict(num_layers=3, hidden_size=192, num_heads=6, intermediate_size=768)
    impt = etd.extract(teacher, importance=imp, **kw)
    rand = etd.extract(teacher, strategy="rand", seed=0, **kw)
    init = BertModel(BertConfig(**{**teacher.config.to_dict(), "num_hidden_layers": 3,
                                   "hidden_size": 192, "num_attention_heads": 6,
                                   "intermediate_size": 768}))
    c_impt = closeness(impt, impt.config.etd["hidden"])
    c_rand = closeness(rand, rand.config.etd["hidden"])
    c_init = closeness(init, impt.config.etd["hidden"])
    print(f"mean cosine to teacher: impt {c_impt:.3f}  rand {c_rand:.3f}  random init {c_init:.3f}")
    assert c_impt > c_rand + 0.02
    assert c_impt > c_init + 0.15
