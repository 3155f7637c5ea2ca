"""Relation losses from the projections (kdfast.losses.relation): every backend against the
materialised float64 formula, equality with the map losses, gradients, dtypes, errors,
opcheck, torch.compile and capture_qkv. Sizes are tiny: the Triton kernels run on the CPU
interpreter here.

The C++ op (torch.ops.kdfast.relation_loss) is tested when kdfast._C has it; a private build
(op renamed relation_loss_dev, see kdfast.ops.relation.use_dev_build) is used instead with
KDFAST_RELATION_DEV_SO=/path/to/lib.so.
"""
from __future__ import annotations

import os

import pytest
import torch

import kdfast  # noqa: E402,F401
from kdfast import _ext  # noqa: E402
from kdfast.losses import attention_kl, attention_mse, value_relation_kl  # noqa: E402
from kdfast.losses.relation import attention_kl_qk, attention_mse_qk, relation_kl  # noqa: E402
from kdfast.ops import relation as rel_ops  # noqa: E402

if os.environ.get("KDFAST_RELATION_DEV_SO"):  # a private build (op renamed relation_loss_dev)
    rel_ops.use_dev_build(os.environ["KDFAST_RELATION_DEV_SO"])

HAS_CPU = rel_ops.compiled_op() is not None
HAS_TRITON = _ext.has("triton")
BACKENDS = (["reference"] + (["cpu"] if HAS_CPU else []) + (["triton"] if HAS_TRITON else []))
KERNELS = [b for b in BACKENDS if b != "reference"]
needs_kernel = pytest.mark.skipif(not KERNELS, reason="no relation kernel (C++ op or Triton) here")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _proj(gen, b, h, length, d, dtype=torch.float64, n=2):
    return [torch.randn(b, h, length, d, generator=gen, dtype=dtype) for _ in range(n)]


def _ragged_mask(b, length):
    """Ragged: a full row, a half row, a row with one real key, an all-padding row."""
    m = torch.ones(b, length, dtype=torch.long)
    if b > 1:
        m[1, length // 2 + 1:] = 0
    if b > 2:
        m[2, 1:] = 0
    if b > 3:
        m[3, :] = 0
    return m


def _scores(q, k, mask, value=-10000.0):
    """What BERT's eager attention computes: Q K^T / sqrt(d) + the additive mask."""
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s + (1 - mask.to(s.dtype))[:, None, None, :] * value
    return s


def _loss_and_grads(fn, student, teacher, **kw):
    s = [x.clone().requires_grad_() for x in student]
    loss = fn(*s, *teacher, **kw)
    grads = torch.autograd.grad(loss, s)
    return loss.detach(), grads


def _close(a, b, **kw):
    torch.testing.assert_close(a, b, **kw)


def _qk_loss(which):
    """The Q/K loss and its keywords for "kl", "tinybert" or "masked"."""
    return (attention_kl_qk, {}) if which == "kl" else (attention_mse_qk, {"mode": which})


def _float64_vs_reference(which, student, teacher, mask, backend, grad_atol=1e-14):
    """Loss and student gradients of ``backend`` against the reference, in float64."""
    fn, kw = _qk_loss(which)
    want, want_g = _loss_and_grads(fn, student, teacher, attention_mask=mask, backend="reference", **kw)
    got, got_g = _loss_and_grads(fn, student, teacher, attention_mask=mask, backend=backend, **kw)
    assert got.dtype == torch.float64
    _close(got, want, rtol=1e-12, atol=1e-14)
    for g, w in zip(got_g, want_g):
        _close(g, w, rtol=1e-10, atol=grad_atol)


# ------------------------------------------------------------ backends vs the materialised reference
@needs_kernel
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("which", ["kl", "tinybert", "masked"])
def test_backend_matches_reference_float64(backend, which):
    gen = _gen(1)
    # L = 19: not a tile multiple; d_s != d_t; a row with one real key and an all-padding row
    qs, ks = _proj(gen, 4, 2, 19, 5)
    qt, kt = _proj(gen, 4, 2, 19, 7)
    _float64_vs_reference(which, [qs, ks], [qt, kt], _ragged_mask(4, 19), backend)


@pytest.mark.skipif(not HAS_CPU, reason="no C++ relation op in this kdfast._C")
@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("which", ["kl", "tinybert", "masked"])
def test_cpu_gradient_by_plane_and_by_key_block(threads, which):
    # 4 planes: one thread takes the gradient plane by plane (loop 1 accumulates dB too), four
    # threads take loop 1 and then loop 2 over key blocks. L = 70 spans two key tiles and three
    # query blocks; d_s = 33 leaves a column remainder in every register block.
    gen = _gen(11)
    qs, ks = _proj(gen, 4, 1, 70, 33)
    qt, kt = _proj(gen, 4, 1, 70, 12)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _float64_vs_reference(which, [qs, ks], [qt, kt], _ragged_mask(4, 70), "cpu", grad_atol=1e-13)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_equals_attention_kl_on_materialised_scores(backend):
    gen = _gen(2)
    qs, ks = _proj(gen, 3, 2, 9, 4)
    qt, kt = _proj(gen, 3, 2, 9, 6)
    mask = _ragged_mask(3, 9)
    for m in (mask, None):
        got, got_g = _loss_and_grads(attention_kl_qk, [qs, ks], [qt, kt], attention_mask=m,
                                     backend=backend)
        want, want_g = _loss_and_grads(
            lambda a, b, c, d: attention_kl(_scores(a, b, m), _scores(c, d, m), attention_mask=m),
            [qs, ks], [qt, kt])
        _close(got, want, rtol=1e-12, atol=1e-14)
        for g, w in zip(got_g, want_g):
            _close(g, w, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["tinybert", "masked"])
@pytest.mark.parametrize("mask_value", [-10000.0, torch.finfo(torch.float64).min])
def test_mse_equals_attention_mse_on_materialised_scores(backend, mode, mask_value):
    gen = _gen(3)
    qs, ks = _proj(gen, 3, 2, 9, 4)
    qt, kt = _proj(gen, 3, 2, 9, 6)
    qs = qs * 8  # some real scores <= -100: TinyBERT zeroes those too
    mask = _ragged_mask(3, 9)
    got, got_g = _loss_and_grads(attention_mse_qk, [qs, ks], [qt, kt], attention_mask=mask,
                                 mode=mode, backend=backend)
    want, want_g = _loss_and_grads(
        lambda a, b, c, d: attention_mse(_scores(a, b, mask, mask_value), _scores(c, d, mask, mask_value),
                                         attention_mask=mask, mode=mode),
        [qs, ks], [qt, kt])
    _close(got, want, rtol=1e-12, atol=1e-14)
    for g, w in zip(got_g, want_g):
        _close(g, w, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relation_heads_differ_in_heads_and_width(backend):
    gen = _gen(4)
    # student 2 heads x 6, teacher 3 heads x 8 -> 4 relation heads of 3 / 6
    a_s, b_s = _proj(gen, 3, 2, 7, 6)
    a_t, b_t = _proj(gen, 3, 3, 7, 8)
    mask = _ragged_mask(3, 7)

    def merged(x):
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

    got, got_g = _loss_and_grads(relation_kl, [a_s, b_s], [a_t, b_t], attention_mask=mask,
                                 num_relation_heads=4, backend=backend)
    flat, flat_g = _loss_and_grads(relation_kl, [merged(a_s), merged(b_s)], [merged(a_t), merged(b_t)],
                                   attention_mask=mask, num_relation_heads=4, backend="reference")

    def split(x):  # the materialised definition, written out
        return x.reshape(x.shape[0], x.shape[1], 4, -1).transpose(1, 2)

    def by_hand(a, b, c, d):
        return attention_kl(_scores(split(merged(a)), split(merged(b)), None),
                            _scores(split(merged(c)), split(merged(d)), None), attention_mask=mask)

    want, want_g = _loss_and_grads(by_hand, [a_s, b_s], [a_t, b_t])
    _close(got, want, rtol=1e-12, atol=1e-14)
    _close(flat, want, rtol=1e-12, atol=1e-14)
    for g, w in zip(got_g, want_g):
        _close(g, w, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="num_relation_heads"):
        relation_kl(a_s, b_s, a_t, b_t, attention_mask=mask, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_relation_same_as_value_relation_kl(backend):
    gen = _gen(5)
    vs = torch.randn(3, 9, 8, generator=gen, dtype=torch.float64)
    vt = torch.randn(3, 9, 12, generator=gen, dtype=torch.float64)
    mask = _ragged_mask(3, 9)
    vs[1, -1] = float("nan")  # a padded position: masked whatever it holds
    a = vs.clone().requires_grad_()
    got = relation_kl(a, a, vt, vt, attention_mask=mask, num_relation_heads=4, backend=backend)
    (got_g,) = torch.autograd.grad(got, a)
    b = vs.clone().requires_grad_()
    want = value_relation_kl(b, vt, attention_mask=mask, num_relation_heads=4, backend="reference")
    (want_g,) = torch.autograd.grad(want, b)
    _close(got, want, rtol=1e-12, atol=1e-14)
    _close(got_g, want_g, rtol=1e-10, atol=1e-14)
    assert torch.isfinite(got_g).all()


# ------------------------------------------------------------------------------ gradients
@needs_kernel
@pytest.mark.parametrize("backend", KERNELS)
def test_gradcheck(backend):
    gen = _gen(6)
    qs, ks = _proj(gen, 2, 1, 5, 3)
    qt, kt = _proj(gen, 2, 1, 5, 4)
    mask = _ragged_mask(2, 5)
    fast = backend == "triton"  # the interpreter: a few evaluations, not one per element
    for fn, kw in ((attention_kl_qk, {}), (attention_mse_qk, {"mode": "tinybert"}),
                   (attention_mse_qk, {"mode": "masked"})):
        a, b = qs.clone().requires_grad_(), ks.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x, y: fn(x, y, qt, kt, attention_mask=mask, backend=backend, **kw), (a, b),
            fast_mode=fast)
    v = qs.clone().requires_grad_()  # shared A = B
    assert torch.autograd.gradcheck(
        lambda x: relation_kl(x, x, qt, qt, attention_mask=mask, backend=backend), (v,),
        fast_mode=fast)


@needs_kernel
def test_teacher_gets_no_gradient_and_double_backward():
    backend = KERNELS[0]
    gen = _gen(7)
    qs, ks = _proj(gen, 2, 2, 5, 3)
    qt, kt = _proj(gen, 2, 2, 5, 3)
    a, k = qs.clone().requires_grad_(), ks.clone().requires_grad_()
    t = qt.clone()  # a teacher that does not require grad gets none
    loss = attention_kl_qk(a, k, t, kt, attention_mask=None, backend=backend)
    (g,) = torch.autograd.grad(loss, a, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), a)
    b, k2 = qs.clone().requires_grad_(), ks.clone().requires_grad_()
    ref = attention_kl_qk(b, k2, qt, kt, attention_mask=None, backend="reference")
    (rg,) = torch.autograd.grad(ref, b, create_graph=True)
    (rgg,) = torch.autograd.grad(rg.sum(), b)
    _close(g, rg)
    _close(gg, rgg)
    assert t.grad is None


# ------------------------------------------------------------------------ dtypes, NaN, edges
@needs_kernel
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs_accumulate_in_fp32(backend, dtype):
    gen = _gen(8)
    qs, ks = _proj(gen, 2, 2, 11, 8, dtype=dtype)
    qt, kt = _proj(gen, 2, 2, 11, 4, dtype=dtype)
    mask = _ragged_mask(2, 11)
    up = [x.double() for x in (qs, ks, qt, kt)]
    for fn, kw in ((attention_kl_qk, {}), (attention_mse_qk, {"mode": "tinybert"})):
        got, got_g = _loss_and_grads(fn, [qs, ks], [qt, kt], attention_mask=mask, backend=backend, **kw)
        want, want_g = _loss_and_grads(fn, up[:2], up[2:], attention_mask=mask, backend="reference", **kw)
        assert got.dtype == torch.float32
        assert all(g.dtype == dtype for g in got_g)
        _close(got.double(), want, rtol=1e-5, atol=1e-6)  # fp32 accumulation of exact inputs
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
        for g, w in zip(got_g, want_g):
            _close(g.double(), w, rtol=tol, atol=tol * w.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_real_position_gives_nan_padding_never_leaks(backend):
    gen = _gen(9)
    qs, ks = _proj(gen, 2, 2, 6, 3, dtype=torch.float32)
    qt, kt = _proj(gen, 2, 2, 6, 3, dtype=torch.float32)
    mask = _ragged_mask(2, 6)  # row 1: positions 4, 5 padded
    for side in ("student keys", "teacher keys", "teacher queries"):  # NaN on either side
        x = {"student keys": ks, "teacher keys": kt, "teacher queries": qt}[side]
        bad_pad = x.clone()
        bad_pad[1, :, 5] = float("nan")
        bad_real = x.clone()
        bad_real[0, 0, 2] = float("nan")

        def args(v):
            return {"student keys": (qs, v, qt, kt), "teacher keys": (qs, ks, qt, v),
                    "teacher queries": (qs, ks, v, kt)}[side]

        for fn, kw in ((attention_kl_qk, {}), (attention_mse_qk, {"mode": "masked"}),
                       (attention_mse_qk, {"mode": "tinybert"})):
            if not (side == "teacher queries" and kw.get("mode") == "tinybert"):  # it counts
                # padded query rows, as the official code does: NaN there is NaN out
                assert torch.isfinite(fn(*args(bad_pad), attention_mask=mask, backend=backend,
                                         **kw))
            assert torch.isnan(fn(*args(bad_real), attention_mask=mask, backend=backend, **kw)), \
                (side, fn.__name__, kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_padding_batch_gives_zero(backend):
    gen = _gen(10)
    qs, ks = _proj(gen, 2, 2, 4, 3, dtype=torch.float32)
    qt, kt = _proj(gen, 2, 2, 4, 3, dtype=torch.float32)
    mask = torch.zeros(2, 4)
    a = qs.clone().requires_grad_()
    loss = attention_kl_qk(a, ks, qt, kt, attention_mask=mask, backend=backend)
    loss.backward()
    assert loss.item() == 0 and (a.grad == 0).all()


# ---------------------------------------------------------------------------------- errors
def test_bad_inputs_name_the_argument():
    gen = _gen(11)
    q, k = _proj(gen, 2, 2, 4, 3, dtype=torch.float32)
    t, u = _proj(gen, 2, 2, 4, 3, dtype=torch.float32)
    with pytest.raises(TypeError, match="student_q"):
        attention_kl_qk(q.numpy(), k, t, u, attention_mask=None)
    with pytest.raises(TypeError, match="teacher_k"):
        attention_kl_qk(q, k, t, u.long(), attention_mask=None)
    with pytest.raises(TypeError, match="teacher_q"):
        attention_kl_qk(q, k, t.double(), u.double(), attention_mask=None)
    with pytest.raises(ValueError, match="student_q and student_k"):
        attention_kl_qk(q, k[..., :2], t, u, attention_mask=None)
    with pytest.raises(ValueError, match="heads"):
        attention_mse_qk(q, k, t[:, :1], u[:, :1], attention_mask=None)
    with pytest.raises(ValueError, match="B and L"):
        attention_kl_qk(q, k, t[:, :, :3], u[:, :, :3], attention_mask=None)
    with pytest.raises(ValueError, match="attention_mask"):
        attention_kl_qk(q, k, t, u, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        attention_mse_qk(q, k, t, u, attention_mask=None, mode="masked")
    with pytest.raises(ValueError, match="mode"):
        attention_mse_qk(q, k, t, u, attention_mask=None, mode="exact")
    with pytest.raises(ValueError, match="backend"):
        attention_kl_qk(q, k, t, u, attention_mask=None, backend="gpu")
    with pytest.raises(ValueError, match="num_relation_heads"):
        relation_kl(q, k, t, u, attention_mask=None, num_relation_heads=4)
    with pytest.raises(TypeError, match="num_relation_heads"):
        relation_kl(q, k, t, u, attention_mask=None, num_relation_heads=2.0)
    with pytest.raises(ValueError, match="num_relation_heads"):
        relation_kl(q[:, 0], k[:, 0], t[:, 0], u[:, 0], attention_mask=None)
    big = torch.zeros(1, 1, 2, 257)
    with pytest.raises(ValueError, match="head dim"):
        attention_kl_qk(big, big, big, big, attention_mask=None)
    with pytest.raises(ValueError, match=r"\[B, H, L, d\]"):
        attention_kl_qk(q[0, 0], k[0, 0], t[0, 0], u[0, 0], attention_mask=None)


def test_explicit_cpu_backend_without_the_op_raises(monkeypatch):
    monkeypatch.setattr(rel_ops, "compiled_op", lambda: None)
    q = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="relation_loss"):
        attention_kl_qk(q, q, q, q, attention_mask=None, backend="cpu")
    assert rel_ops.resolve("auto", q.device) in ("reference", "triton")


# ------------------------------------------------------------------------ opcheck, compile
def _op_args(compute_grad, kind, shared=False):
    gen = _gen(12)
    a, b = _proj(gen, 2, 2, 5, 3, dtype=torch.float32)
    c, d = _proj(gen, 2, 2, 5, 4, dtype=torch.float32)
    student = [a.requires_grad_(), a if shared else b.requires_grad_()]
    mask = _ragged_mask(2, 5).float()
    return (student, [c, d], mask if kind else None, torch.tensor([0.1]), kind, compute_grad)


@pytest.mark.skipif(not HAS_CPU, reason="kdfast._C has no relation_loss op")
@pytest.mark.parametrize("compute_grad", [True, False])
def test_opcheck_cpu(compute_grad):
    kwargs = {} if compute_grad else {"test_utils": ("test_schema", "test_faketensor")}
    for kind in (0, 1, 2):
        torch.library.opcheck(rel_ops.compiled_op().default, _op_args(compute_grad, kind),
                              **kwargs)


@pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")
def test_opcheck_triton():
    torch.library.opcheck(rel_ops.relation_loss_triton, _op_args(True, 2),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@needs_kernel
def test_torch_compile_fullgraph():
    backend = "cpu" if HAS_CPU else "triton"
    gen = _gen(13)
    qs, ks = _proj(gen, 2, 2, 6, 3, dtype=torch.float32)
    qt, kt = _proj(gen, 2, 2, 6, 4, dtype=torch.float32)
    mask = _ragged_mask(2, 6)

    def f(a, b):
        return (attention_kl_qk(a, b, qt, kt, attention_mask=mask, backend=backend)
                + attention_mse_qk(a, b, qt, kt, attention_mask=mask, backend=backend))

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    ins = [x.clone().requires_grad_() for x in (qs, ks)]
    got = compiled(*ins)
    got.backward()
    ref = [x.clone().requires_grad_() for x in (qs, ks)]
    want = f(*ref)
    want.backward()
    _close(got, want)
    _close(ins[0].grad, ref[0].grad)
    _close(ins[1].grad, ref[1].grad)


# ------------------------------------------------------------------------------ capture_qkv
def test_capture_qkv_gives_the_captured_scores():
    from transformers import BertConfig, BertModel

    from kdfast.models.capture import capture_attention_scores, capture_qkv

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=32, max_position_embeddings=16, attn_implementation="sdpa")
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 50, (3, 7))
    mask = _ragged_mask(3, 7)
    with torch.no_grad(), capture_qkv(model) as cap:
        out = model(ids, attention_mask=mask).last_hidden_state
    assert model.config._attn_implementation == "sdpa"
    assert len(cap.queries) == len(cap.keys) == len(cap.values) == 2
    assert cap.queries[0].shape == (3, 3, 7, 8)
    with torch.no_grad(), capture_attention_scores(model) as sc:
        out2 = model(ids, attention_mask=mask).last_hidden_state
    _close(out, out2, rtol=1e-5, atol=1e-5)
    for q, k, s in zip(cap.queries, cap.keys, sc.scores):
        real = mask.bool()[:, None, None, :].expand_as(s)
        mine = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        _close(mine[real], s[real], rtol=1e-6, atol=1e-6)
        assert (s[~real] <= -100).all()
    # hooks are gone
    with torch.no_grad():
        model(ids, attention_mask=mask)
    assert len(cap.queries) == 2
    # the loss from the projections equals the map loss on the captured scores
    got = attention_kl_qk(cap.queries[0], cap.keys[0], cap.queries[1], cap.keys[1], attention_mask=mask)
    want = attention_kl(sc.scores[0], sc.scores[1], attention_mask=mask)
    _close(got, want, rtol=1e-5, atol=1e-6)
    got = attention_mse_qk(cap.queries[0], cap.keys[0], cap.queries[1], cap.keys[1], attention_mask=mask)
    want = attention_mse(sc.scores[0], sc.scores[1])
    _close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="BERT-family"):
        with capture_qkv(torch.nn.Linear(2, 2)):
            pass


# ------------------------------------------------------------------ GPU (skipped without CUDA)
GPU_BACKENDS = ["cuda", "triton"]


def _gpu_backend(backend):
    if not _ext.has(backend):
        pytest.skip(f"{backend} unavailable: {_ext.why_missing(backend)}")
    return backend


def _cuda(xs):
    return [x.cuda() for x in xs]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("which", ["kl", "tinybert", "masked"])
@pytest.mark.parametrize("shape", [(4, 2, 19, 5, 7), (4, 1, 70, 33, 12), (2, 3, 130, 64, 256),
                                   (1, 1, 1, 1, 1)])
def test_gpu_backend_matches_reference_float64(backend, which, shape):
    # shape (B, H, L, d_s, d_t): L off every tile, d_s != d_t, a head dim at the 256 limit
    b, h, length, ds, dt = shape
    gen = _gen(31)
    student, teacher = _cuda(_proj(gen, b, h, length, ds)), _cuda(_proj(gen, b, h, length, dt))
    _float64_vs_reference(which, student, teacher, _ragged_mask(b, length).cuda(),
                          _gpu_backend(backend), grad_atol=1e-13)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_low_precision_inputs_accumulate_in_fp32(backend, dtype):
    gen = _gen(32)
    qs, ks = _cuda(_proj(gen, 2, 2, 75, 32, dtype=dtype))
    qt, kt = _cuda(_proj(gen, 2, 2, 75, 64, dtype=dtype))
    mask = _ragged_mask(2, 75).cuda()
    up = [x.double() for x in (qs, ks, qt, kt)]
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    for fn, kw in ((attention_kl_qk, {}), (attention_mse_qk, {"mode": "tinybert"})):
        got, got_g = _loss_and_grads(fn, [qs, ks], [qt, kt], attention_mask=mask,
                                     backend=_gpu_backend(backend), **kw)
        want, want_g = _loss_and_grads(fn, up[:2], up[2:], attention_mask=mask, backend="reference",
                                       **kw)
        assert got.dtype == torch.float32 and all(g.dtype == dtype for g in got_g)
        _close(got.double(), want, rtol=1e-5, atol=1e-6)
        for g, w in zip(got_g, want_g):
            _close(g.double(), w, rtol=tol, atol=tol * w.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_nan_padding_and_all_padding(backend):
    backend = _gpu_backend(backend)
    gen = _gen(33)
    qs, ks, qt, kt = _cuda(_proj(gen, 2, 2, 40, 16, dtype=torch.float32, n=4))
    mask = _ragged_mask(2, 40).cuda()  # row 1: positions 21.. padded
    bad_pad, bad_real = ks.clone(), ks.clone()
    bad_pad[1, :, 30] = float("nan")
    bad_real[0, 0, 2] = float("nan")
    for fn, kw in ((attention_kl_qk, {}), (attention_mse_qk, {"mode": "masked"}),
                   (attention_mse_qk, {"mode": "tinybert"})):
        assert torch.isfinite(fn(qs, bad_pad, qt, kt, attention_mask=mask, backend=backend, **kw))
        assert torch.isnan(fn(qs, bad_real, qt, kt, attention_mask=mask, backend=backend, **kw))
    a = qs.clone().requires_grad_()
    loss = attention_kl_qk(a, ks, qt, kt, attention_mask=torch.zeros(2, 40, device="cuda"),
                           backend=backend)
    loss.backward()
    assert loss.item() == 0 and (a.grad == 0).all()


@pytest.mark.gpu
def test_gpu_opcheck_and_compile():
    if not _ext.has("cuda"):
        pytest.skip(f"cuda unavailable: {_ext.why_missing('cuda')}")
    for kind in (0, 1, 2):
        args = _op_args(True, kind)
        args = ([x.detach().cuda().requires_grad_() for x in args[0]], _cuda(args[1]),
                None if args[2] is None else args[2].cuda(), args[3].cuda(), kind, True)
        torch.library.opcheck(rel_ops.compiled_op().default, args)
    gen = _gen(34)
    qs, ks, qt, kt = _cuda(_proj(gen, 2, 2, 33, 8, dtype=torch.float32, n=4))
    mask = _ragged_mask(2, 33).cuda()
    for backend in GPU_BACKENDS:
        f = lambda a, b, be=backend: attention_kl_qk(a, b, qt, kt, attention_mask=mask, backend=be)  # noqa: E731
        torch._dynamo.reset()
        _close(torch.compile(f, fullgraph=True)(qs, ks), f(qs, ks))
