"""Intermediate-layer losses: every backend against the float64 reference, gradients,
custom-op registration, torch.compile, bad inputs, and the official TinyBERT number on a real
HuggingFace BERT forward."""
import glob
import os
import shutil
import subprocess

import pytest
import torch

from kdfast import _ext
from kdfast.losses import (
    HiddenMSELoss,
    Projection,
    attention_kl,
    attention_mse,
    hidden_mse,
    layer_map,
    pool,
    sentence_approx,
    value_relation_kl,
)
from kdfast.ops.attention import attention_loss_triton
from kdfast.reference.attention import value_relation_kl as vr_reference

HAS_CPU = _ext.has("cpu")
HAS_TRITON = _ext.has("triton")
BACKENDS = ["reference"] + (["cpu"] if HAS_CPU else []) + (["triton"] if HAS_TRITON else [])
FUSED = [b for b in BACKENDS if b != "reference"]
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _mask(bsz, length, gen, *, full_pad_row=True):
    """A padding mask with varied lengths (one sequence fully padded when asked)."""
    lens = torch.randint(1, length + 1, (bsz,), generator=gen)
    if full_pad_row and bsz > 1:
        lens[-1] = 0
    return torch.arange(length)[None, :] < lens[:, None]


def _maps(n_layers, bsz, heads, length, gen, *, dtype=torch.float64, mask=None, mask_value=-10000.0,
          big=False):
    """Per-layer student/teacher score maps with the additive mask applied on padded keys."""
    out = []
    for _ in range(2):
        layers = []
        for _ in range(n_layers):
            x = torch.randn(bsz, heads, length, length, generator=gen, dtype=torch.float64) * 3
            if big:
                x = x * 3000  # up to about +-1e4
            if mask is not None:
                x = x + torch.where(mask, 0.0, mask_value)[:, None, None, :]
            layers.append(x.to(dtype))
        out.append(layers)
    return out


def _official_tinybert(student_atts, teacher_atts):
    """The official TinyBERT general/task distillation attention loss, as written there."""
    loss_mse = torch.nn.MSELoss()
    att_loss = 0.0
    for student_att, teacher_att in zip(student_atts, teacher_atts):
        student_att = torch.where(student_att <= -1e2, torch.zeros_like(student_att), student_att)
        teacher_att = torch.where(teacher_att <= -1e2, torch.zeros_like(teacher_att), teacher_att)
        att_loss = att_loss + loss_mse(student_att, teacher_att)
    return att_loss


# ---------------------------------------------------------------- reference is the spec

def test_reference_tinybert_matches_official_formula():
    gen = torch.Generator().manual_seed(0)
    mask = _mask(3, 7, gen)
    s, t = _maps(3, 3, 2, 7, gen, mask=mask)
    got = attention_mse(s, t, mode="tinybert", backend="reference")
    torch.testing.assert_close(got, _official_tinybert(s, t), rtol=1e-12, atol=1e-12)


def test_reference_masked_and_kl_by_hand():
    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    s, t = _maps(1, 2, 3, 4, gen, mask=mask)
    mse = attention_mse(s, t, attention_mask=mask, mode="masked", backend="reference")
    want, count = 0.0, 0
    kl_want, rows = 0.0, 0
    for b, n in enumerate((3, 2)):
        for h in range(3):
            d = s[0][b, h, :n, :n] - t[0][b, h, :n, :n]
            want += (d * d).sum()
            count += n * n
            for q in range(n):
                p = t[0][b, h, q, :n].softmax(-1)
                kl_want += (p * (p.log() - s[0][b, h, q, :n].log_softmax(-1))).sum()
                rows += 1
    torch.testing.assert_close(mse, want / count)
    kl = attention_kl(s, t, attention_mask=mask, backend="reference")
    torch.testing.assert_close(kl, kl_want / rows)


# ---------------------------------------------------------------- backends vs reference

@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("length,heads,n_layers", [(1, 1, 1), (7, 12, 3), (129, 1, 2)])
@pytest.mark.parametrize("mode", ["tinybert", "tinybert-probs", "masked", "kl"])
def test_backend_matches_reference_float64(backend, length, heads, n_layers, mode):
    if backend == "triton" and length == 129 and mode != "kl":
        n_layers = 1  # the interpreter is slow; one layer of L = 129 covers the tail block
    gen = torch.Generator().manual_seed(hash((length, heads, n_layers, mode)) % 2**31)
    bsz = 3
    mask = _mask(bsz, length, gen)
    mask_value = float("-inf") if mode == "kl" else -10000.0
    s, t = _maps(n_layers, bsz, heads, length, gen, mask=mask, mask_value=mask_value)
    if mode == "tinybert-probs":
        s = [x.softmax(-1) for x in s]
        t = [x.softmax(-1) for x in t]

    def loss(maps, be):
        if mode == "kl":
            return attention_kl(maps, t, attention_mask=mask, temperature=2.0, backend=be)
        if mode == "masked":
            return attention_mse(maps, t, attention_mask=mask, mode="masked", backend=be)
        inputs = "probs" if mode == "tinybert-probs" else "scores"
        return attention_mse(maps, t, mode="tinybert", inputs=inputs, backend=be)

    s_ref = [x.clone().requires_grad_() for x in s]
    s_our = [x.clone().requires_grad_() for x in s]
    want, got = loss(s_ref, "reference"), loss(s_our, backend)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    (want * 1.7).backward()
    (got * 1.7).backward()
    for a, b in zip(s_our, s_ref):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["tinybert", "masked", "kl"])
def test_low_precision_inputs(backend, dtype, mode):
    gen = torch.Generator().manual_seed(7)
    mask = _mask(2, 33, gen)
    s, t = _maps(2, 2, 3, 33, gen, mask=mask, dtype=dtype)
    s = [x.requires_grad_() for x in s]
    if mode == "kl":
        got = attention_kl(s, t, attention_mask=mask, backend=backend)
    else:
        got = attention_mse(s, t, attention_mask=mask, mode=mode, backend=backend)
    assert got.dtype == torch.float32
    got.backward()
    s64 = [x.detach().double().requires_grad_() for x in s]
    t64 = [x.double() for x in t]
    if mode == "kl":
        want = attention_kl(s64, t64, attention_mask=mask, backend="reference")
    else:
        want = attention_mse(s64, t64, attention_mask=mask, mode=mode, backend="reference")
    want.backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    for a, b in zip(s, s64):
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=TOL[dtype], atol=TOL[dtype] * b.grad.abs().max().item())


@pytest.mark.parametrize("backend", FUSED)
def test_stacked_equals_list_and_many_layers(backend):
    gen = torch.Generator().manual_seed(3)
    n_layers = 12 if backend == "cpu" else 5
    s, t = _maps(n_layers, 2, 2, 5, gen)
    stacked_s = torch.stack(s).requires_grad_()
    got = attention_mse(stacked_s, torch.stack(t), backend=backend)
    want = attention_mse(s, t, backend="reference")
    torch.testing.assert_close(got, want)
    got.backward()
    assert stacked_s.grad.shape == stacked_s.shape


@pytest.mark.parametrize("backend", FUSED)
def test_extreme_values_and_all_padded(backend):
    gen = torch.Generator().manual_seed(4)
    mask = torch.zeros(2, 6, dtype=torch.bool)  # every sequence fully padded
    s, t = _maps(2, 2, 3, 6, gen, mask=mask, mask_value=float("-inf"))
    s = [x.requires_grad_() for x in s]
    for loss in (attention_kl(s, t, attention_mask=mask, backend=backend),
                 attention_mse(s, t, attention_mask=mask, mode="masked", backend=backend)):
        assert loss.item() == 0.0
        loss.backward()
        assert all(torch.equal(x.grad, torch.zeros_like(x)) for x in s)
        for x in s:
            x.grad = None
    # scores up to +-1e4 with -10000 masks (TinyBERT mode) stay finite and exact
    mask = _mask(2, 9, gen)
    s, t = _maps(2, 2, 3, 9, gen, mask=mask, big=True)
    got = attention_mse(s, t, backend=backend)
    torch.testing.assert_close(got, attention_mse(s, t, backend="reference"), rtol=1e-9, atol=0)
    got = attention_kl(s, t, attention_mask=mask, backend=backend)
    torch.testing.assert_close(got, attention_kl(s, t, attention_mask=mask, backend="reference"),
                               rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- autograd and registration

def test_gradcheck_reference_and_cpu():
    gen = torch.Generator().manual_seed(5)
    mask = _mask(2, 4, gen)
    s, t = _maps(2, 2, 2, 4, gen, mask=mask)
    for be in ["reference"] + (["cpu"] if HAS_CPU else []):
        def f(a, b, be=be):
            return (attention_mse([a, b], t, attention_mask=mask, mode="masked", backend=be)
                    + attention_kl([a, b], t, attention_mask=mask, temperature=1.5, backend=be)
                    + attention_mse([a, b], t, backend=be))
        inputs = [x.clone().requires_grad_() for x in s]
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAS_CPU, reason="needs the CPU extension")
@pytest.mark.parametrize("compute_grad", [True, False])
def test_opcheck_cpu(compute_grad):
    gen = torch.Generator().manual_seed(6)
    s, t = _maps(2, 2, 3, 5, gen, dtype=torch.float32)
    mask = _mask(2, 5, gen).float()
    scale = torch.tensor([0.1])
    for kind, m in ((0, None), (1, mask), (2, mask)):
        args = ([x.requires_grad_() for x in s], t, m, scale, kind, 1.0, compute_grad)
        # without compute_grad the op has no gradient to offer, so autograd checks do not apply
        kwargs = {} if compute_grad else {"test_utils": ("test_schema", "test_faketensor")}
        torch.library.opcheck(torch.ops.kdfast.attention_loss.default, args, **kwargs)


@pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")
def test_opcheck_triton():
    gen = torch.Generator().manual_seed(6)
    s, t = _maps(2, 2, 3, 5, gen, dtype=torch.float32)
    mask = _mask(2, 5, gen).float()
    args = ([x.requires_grad_() for x in s], t, mask, torch.tensor([0.1]), 2, 1.0, True)
    torch.library.opcheck(attention_loss_triton, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.skipif(not HAS_CPU, reason="needs the CPU extension")
def test_torch_compile_no_graph_break():
    gen = torch.Generator().manual_seed(8)
    mask = _mask(2, 6, gen)
    s, t = _maps(2, 2, 3, 6, gen, dtype=torch.float32, mask=mask)

    def f(a, b, tt, m):
        return attention_mse([a, b], tt, backend="cpu") + attention_kl([a, b], tt, attention_mask=m, backend="cpu")

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    ins = [x.clone().requires_grad_() for x in s]
    got = compiled(*ins, t, mask)
    got.backward()
    ref_ins = [x.clone().requires_grad_() for x in s]
    want = f(*ref_ins, t, mask)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(ins[0].grad, ref_ins[0].grad)


def test_teacher_requiring_grad_uses_reference():
    gen = torch.Generator().manual_seed(9)
    s, t = _maps(1, 2, 2, 5, gen)
    t = [x.requires_grad_() for x in t]
    attention_mse(s, t).backward()
    assert t[0].grad is not None


# ---------------------------------------------------------------- bad inputs

def test_errors():
    gen = torch.Generator().manual_seed(10)
    s, t = _maps(2, 2, 4, 5, gen)
    with pytest.raises(ValueError, match="layers"):
        attention_mse(s, t[:1])
    with pytest.raises(ValueError, match="heads"):
        attention_mse(s, [x[:, :2] for x in t])
    with pytest.raises(ValueError, match="sequence length"):
        attention_mse(s, [x[:, :, :3, :3] for x in t])
    with pytest.raises(ValueError, match="attention_mask"):
        attention_mse(s, t, attention_mask=torch.ones(2, 4), mode="masked")
    with pytest.raises(ValueError, match="required"):
        attention_mse(s, t, mode="masked")
    with pytest.raises(ValueError, match="attention_mask"):
        attention_kl(s, t, attention_mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match="mode"):
        attention_mse(s, t, mode="exact")
    with pytest.raises(ValueError, match="inputs"):
        attention_mse(s, t, inputs="logits")
    with pytest.raises(TypeError, match="dtype"):
        attention_mse(s, [x.float() for x in t])
    with pytest.raises(ValueError, match="B, H, L, L"):
        attention_mse([x[0] for x in s], t)
    with pytest.raises(ValueError, match="temperature"):
        attention_kl(s, t, attention_mask=None, temperature=0.0)
    with pytest.raises(ValueError, match="heads"):
        value_relation_kl(torch.randn(2, 5, 8), torch.randn(2, 5, 12), attention_mask=None,
                          num_relation_heads=None)
    with pytest.raises(ValueError, match="divisible"):
        value_relation_kl(torch.randn(2, 5, 8), torch.randn(2, 5, 12), attention_mask=None,
                          num_relation_heads=3)
    with pytest.raises(ValueError, match="Projection"):
        hidden_mse([torch.randn(2, 5, 8)], [torch.randn(2, 5, 12)])
    with pytest.raises(ValueError, match="explicit"):
        layer_map(12, 2, [3, 12])


# ---------------------------------------------------------------- value relation

@pytest.mark.parametrize("backend", ["reference"] + (["cpu"] if HAS_CPU else []))
def test_value_relation(backend):
    gen = torch.Generator().manual_seed(11)
    mask = _mask(3, 7, gen)
    vs = torch.randn(3, 7, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    vt = torch.randn(3, 7, 24, generator=gen, dtype=torch.float64)
    got = value_relation_kl(vs, vt, attention_mask=mask, num_relation_heads=4, backend=backend)
    # by hand: materialised relations, KL per real row, mean over heads x real rows
    want, rows = 0.0, 0
    for b in range(3):
        n = int(mask[b].sum())
        for a in range(4):
            s_a = vs[b, :n, a * 3:(a + 1) * 3]
            t_a = vt[b, :n, a * 6:(a + 1) * 6]
            log_q = (s_a @ s_a.T / 3 ** 0.5).log_softmax(-1)
            log_p = (t_a @ t_a.T / 6 ** 0.5).log_softmax(-1)
            want = want + (log_p.exp() * (log_p - log_q)).sum()
            rows += n
    torch.testing.assert_close(got, want / rows)
    if backend == "cpu":
        got.backward()
        g = vs.grad.clone()
        vs.grad = None
        vr_reference(vs, vt, mask, 4).backward()
        torch.testing.assert_close(g, vs.grad)
        f = lambda x: value_relation_kl(x, vt, attention_mask=mask, num_relation_heads=4, backend="cpu")
        assert torch.autograd.gradcheck(f, (vs.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-6)
        for dtype in (torch.float32, torch.bfloat16):
            low = value_relation_kl(vs.detach().to(dtype), vt.to(dtype), attention_mask=mask,
                                    num_relation_heads=4, backend="cpu")
            want_low = vr_reference(vs.detach().to(dtype), vt.to(dtype), mask, 4)
            torch.testing.assert_close(low, want_low, rtol=1e-3, atol=1e-4)
    # per-head [B, H, L, d] input means one relation head per attention head
    per_head = value_relation_kl(vs.detach().reshape(3, 7, 4, 3).transpose(1, 2),
                                 vt.reshape(3, 7, 4, 6).transpose(1, 2), attention_mask=mask,
                                 backend=backend)
    torch.testing.assert_close(per_head, got.detach())


@pytest.mark.skipif(not HAS_CPU, reason="needs the CPU extension")
def test_opcheck_value_relation():
    gen = torch.Generator().manual_seed(12)
    vs = torch.randn(2, 5, 8, generator=gen, requires_grad=True)
    vt = torch.randn(2, 5, 16, generator=gen)
    mask = _mask(2, 5, gen).float()
    torch.library.opcheck(torch.ops.kdfast.value_relation.default,
                          (vs, vt, mask, torch.tensor([0.05]), 4, True))


# ---------------------------------------------------------------- hidden, pooling, mapping

def test_hidden_mse_and_projection():
    gen = torch.Generator().manual_seed(13)
    mask = _mask(2, 5, gen, full_pad_row=False)
    hs = [torch.randn(2, 5, 8, generator=gen) for _ in range(3)]
    ht = [torch.randn(2, 5, 16, generator=gen) for _ in range(3)]
    proj = Projection(8, 16)
    got = hidden_mse(hs, ht, projection=proj, tinybert_compat=True)
    mse = torch.nn.MSELoss()
    want = sum(mse(proj(a), b) for a, b in zip(hs, ht))  # the official code
    torch.testing.assert_close(got, want)
    masked = HiddenMSELoss(8, 16)(hs, ht, attention_mask=mask)
    m = mask.float()
    p = HiddenMSELoss(8, 16)
    p.projection = proj
    want = sum((((proj(a) - b) ** 2).sum(-1) * m).sum() / (m.sum() * 16) for a, b in zip(hs, ht))
    torch.testing.assert_close(p(hs, ht, attention_mask=mask), want)
    assert masked.requires_grad


def test_pool_and_sentence_approx():
    h = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(pool(h, mask, "cls"), h[:, 0])
    torch.testing.assert_close(pool(h, mask, "mean")[0], h[0, :2].mean(0))
    assert torch.equal(pool(h, mask, "mean")[1], torch.zeros(4))
    torch.testing.assert_close(pool(h, mask, "max")[0], h[0, 1])
    assert torch.equal(pool(h, mask, "max")[1], torch.zeros(4))
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(sentence_approx(a, b), torch.nn.functional.mse_loss(a, b))
    torch.testing.assert_close(sentence_approx(a, b, kind="cosine"),
                               (1 - torch.nn.functional.cosine_similarity(a, b)).mean())


def test_layer_map():
    assert layer_map(12, 4) == [2, 5, 8, 11]
    assert layer_map(12, 4, include_embeddings=True) == [0, 3, 6, 9, 12]
    assert layer_map(6, 2, "last") == [4, 5]
    assert layer_map(6, 2, [1, 3]) == [1, 3]
    assert layer_map(6, 2, [1, 3], include_embeddings=True) == [0, 2, 4]
    # M not dividing N: m*N/M rounded half up, the layers ETD's uniform extraction keeps
    assert layer_map(4, 3) == [0, 2, 3] and layer_map(12, 5) == [1, 4, 6, 9, 11]
    assert layer_map(4, 3, include_embeddings=True) == [0, 1, 3, 4]
    from kdfast.etd.extract import _layers
    for n, m in ((12, 5), (6, 4), (12, 4), (4, 3)):
        assert _layers("uniform", n, m) == layer_map(n, m)


# ---------------------------------------------------------------- a real HuggingFace forward

def _tiny_bert(layers, seed):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    return BertModel(cfg).eval()


def test_tinybert_official_number_on_hf_bert():
    from kdfast.models.capture import capture_attention_scores

    teacher, student = _tiny_bert(4, 0), _tiny_bert(2, 1)
    gen = torch.Generator().manual_seed(14)
    ids = torch.randint(0, 100, (3, 11), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    with torch.no_grad(), capture_attention_scores(teacher) as t_cap:
        t_out = teacher(ids, attention_mask=mask, output_hidden_states=True)
    with capture_attention_scores(student) as s_cap:
        s_out = student(ids, attention_mask=mask, output_hidden_states=True)
    assert len(t_cap.scores) == 4 and len(s_cap.scores) == 2
    assert teacher.config._attn_implementation == "eager"  # restored
    # the official mapping: new_teacher_atts = [teacher_atts[i * k + k - 1] for i in range(M)]
    k = 2
    official_t = [t_cap.scores[i * k + k - 1] for i in range(2)]
    want = _official_tinybert(s_cap.scores, official_t)
    idx = layer_map(4, 2)
    for backend in BACKENDS:
        got = attention_mse(s_cap.scores, [t_cap.scores[i] for i in idx], backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    got.backward()  # the student's scores stay in the graph
    assert student.embeddings.word_embeddings.weight.grad is not None
    # scores really are the pre-softmax maps: softmax gives output_attentions' probabilities
    probs = teacher(ids, attention_mask=mask, output_attentions=True).attentions
    torch.testing.assert_close(t_cap.scores[3].softmax(-1), probs[3])
    # hidden states: official reps mapping teacher_reps[i * k] with the embedding output
    h_idx = layer_map(4, 2, include_embeddings=True)
    assert h_idx == [0, 2, 4]
    hl = hidden_mse(list(s_out.hidden_states), [t_out.hidden_states[i] for i in h_idx], tinybert_compat=True)
    assert torch.isfinite(hl)


@pytest.mark.real
def test_minilm_teacher_scores_capture():
    from transformers import BertModel

    from kdfast.data.fetch import fetch
    from kdfast.models.capture import capture_attention_scores

    model = BertModel.from_pretrained(fetch("minilm-l6"), attn_implementation="eager").eval()
    ids = torch.randint(1000, 2000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad(), capture_attention_scores(model) as cap:
        model(ids, attention_mask=mask)
    assert len(cap.scores) == model.config.num_hidden_layers
    s = [x + 0.01 for x in cap.scores]
    for backend in BACKENDS:
        got = attention_mse(s, cap.scores, backend=backend)
        torch.testing.assert_close(got, _official_tinybert(s, cap.scores), rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- CUDA sources compile

@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_nvcc_compiles_cuda_sources(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for cu in sorted(glob.glob(os.path.join(root, "csrc", "cuda", "attention*.cu"))):
        cmd = ["nvcc", "-c", "-std=c++17", "-arch=sm_90", "-I", os.path.join(root, "csrc", "include"),
               cu, "-o", str(tmp_path / "x.o")]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_backends(backend, dtype):
    if not _ext.has(backend):
        pytest.skip(f"{backend} unavailable: {_ext.why_missing(backend)}")
    gen = torch.Generator().manual_seed(15)
    mask = _mask(3, 129, gen)
    s, t = _maps(3, 3, 12, 129, gen, mask=mask, dtype=dtype)
    s_gpu = [x.cuda().requires_grad_() for x in s]
    t_gpu, m_gpu = [x.cuda() for x in t], mask.cuda()
    t64 = [x.double() for x in t]
    calls = (lambda a, tt, m, be: attention_mse(a, tt, backend=be),
             lambda a, tt, m, be: attention_mse(a, tt, attention_mask=m, mode="masked", backend=be),
             lambda a, tt, m, be: attention_kl(a, tt, attention_mask=m, backend=be))
    for fn in calls:
        got = fn(s_gpu, t_gpu, m_gpu, backend)
        got.backward()
        s_ref = [x.detach().double().requires_grad_() for x in s]
        want = fn(s_ref, t64, mask, "reference")
        want.backward()
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-6)
        for a, b in zip(s_gpu, s_ref):
            torch.testing.assert_close(a.grad.cpu().double(), b.grad, rtol=TOL[dtype],
                                       atol=TOL[dtype] * b.grad.abs().max().item())
            a.grad = None
