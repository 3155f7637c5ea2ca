"""Hostile inputs for the fused losses: every backend present against the float64 reference.
import warnings

Generated with hypothesis (derandomized, so CI is deterministic): shapes (1, odd, long rows,
empty), dtypes (fp64/fp32/bf16/fp16), non-contiguous views, NaN / +-inf / huge patterns,
masks, labels with ignore_index, temperatures. Then every reproducer of the reliability
issue as its own test: NaN rows, +inf teacher, |logits| ~ 3e38 at T = 0.5, T = 1e-30,
empty inputs, double backward, repeated backward, value_relation with B = 0, bad arguments.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdfast import _ext, losses
from kdfast.reference import kinds

BACKENDS = ["reference"] + [b for b in ("cpu", "triton") if _ext.has(b)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
HUGE = {torch.float64: 3e38, torch.float32: 3e38, torch.bfloat16: 3e38, torch.float16: 6e4}
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
INF, NAN = float("inf"), float("nan")
# the Triton interpreter (numpy) warns on the NaN/inf arithmetic this file is about
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- comparison helpers

def _run(fn, s, t, **kw):
    """(loss, student gradient) of fn; the gradient of loss.sum()."""
    s = s.detach().clone().requires_grad_()
    out = fn(s, t, **kw)
    if out.numel() == 0 or not out.requires_grad:
        return out.detach(), torch.zeros_like(s)
    (g,) = torch.autograd.grad(out.sum(), s, allow_unused=True)
    return out.detach(), torch.zeros_like(s) if g is None else g


def _close(got, want, rtol, atol, what):
    """got (backend) against want (float64 truth) cast to got's dtype, NaN/inf exactly."""
    want = want.to(got.dtype).double()
    got = got.double()
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _finite_max(*xs):
    m = 0.0
    for x in xs:
        x = x.detach().double()
        f = x[torch.isfinite(x)]
        if f.numel():
            m = max(m, f.abs().max().item())
    return m


def _check_backends(fn, s, t, scale_hint, g_scale, **kw):
    """Every backend against the reference evaluated in float64 on the upcast inputs."""
    truth, truth_g = _run(fn, s.double(), t.double(), backend="reference", **kw)
    eps = torch.finfo(_acc(s.dtype)).eps
    g_eps = max(eps, torch.finfo(s.dtype).eps)
    atol = 256 * eps * scale_hint
    # rounding of the gradient's dtype, plus cancellation at the scale of its terms (w / T)
    g_atol = 64 * (g_eps * _finite_max(truth_g) + eps * g_scale) + 1e-30
    if s.dtype == torch.float16:
        g_atol += 1e-7  # fp16 subnormals
    for backend in BACKENDS:
        got, got_g = _run(fn, s, t, backend=backend, **kw)
        assert got.dtype == (torch.float64 if s.dtype == torch.float64 else torch.float32)
        assert got_g.dtype == s.dtype
        _close(got, truth, 1e-4 if s.dtype != torch.float64 else 1e-7, atol, f"{backend} loss")
        _close(got_g, truth_g, 2e-2 if s.dtype in (torch.bfloat16, torch.float16) else 1e-4,
               g_atol, f"{backend} grad")


# ---------------------------------------------------------------- softmax family

@st.composite
def softmax_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.sampled_from([(), (0,), (1,), (3,), (2, 3), (5,)]))
    if lead == ():
        lead = (1,)
    V = draw(st.sampled_from([1, 2, 7, 33, 130, 4099]))
    if V == 4099:  # a long row: more than one Triton block
        lead = (1,)
    fn = draw(st.sampled_from(["kl_div", "soft_cross_entropy", "logits_mse", "distillation_loss"]))
    kind = draw(st.sampled_from(["kl", "soft_ce", "mse"]))
    temperature = draw(st.sampled_from([1.0, 2.0, 0.5, 0.05, 8.0, 1e-30]))
    scale = draw(st.sampled_from([1.0, 3.0, 30.0, 1e4, 1e30]))
    if dtype == torch.float16:
        scale = min(scale, 30.0)
    if scale >= 1e4 and temperature < 0.5:
        temperature = 0.5
    seed = draw(st.integers(0, 2**31 - 1))
    patterns = draw(st.lists(st.sampled_from(
        ["nan_one", "nan_row", "neginf_both", "neginf_row_s", "neginf_row_t", "neginf_row_both",
         "posinf_t", "posinf_s", "posinf_both", "neginf_s_only", "huge_same", "nan_t"]),
        max_size=3))
    masked = draw(st.booleans())
    reduction = draw(st.sampled_from(["batchmean", "sum", "mean", "none"]))
    noncontig = draw(st.sampled_from([None, "stride", "transpose"]))
    alpha = draw(st.sampled_from([0.0, 0.3, 1.0]))
    return dict(dtype=dtype, lead=lead, V=V, fn=fn, kind=kind, temperature=temperature,
                scale=scale, seed=seed, patterns=patterns, masked=masked, reduction=reduction,
                noncontig=noncontig, alpha=alpha)


def _apply_patterns(s, t, patterns, gen, huge):
    """Writes special values into some rows of s and t ([N, V] float64)."""
    n, v = s.shape
    if n == 0:
        return
    for p in patterns:
        r = int(torch.randint(0, n, (1,), generator=gen))
        j = int(torch.randint(0, v, (1,), generator=gen))
        cols = torch.rand(v, generator=gen) < 0.3
        if p == "nan_one":
            s[r, j] = NAN
        elif p == "nan_t":
            t[r, j] = NAN
        elif p == "nan_row":
            (s if j % 2 else t)[r] = NAN
        elif p == "neginf_both":
            s[r, cols] = -INF
            t[r, cols] = -INF
        elif p == "neginf_row_s":
            s[r] = -INF
        elif p == "neginf_row_t":
            t[r] = -INF
        elif p == "neginf_row_both":
            s[r] = -INF
            t[r] = -INF
        elif p == "posinf_t":
            t[r, cols] = INF
            t[r, j] = INF
        elif p == "posinf_s":
            s[r, j] = INF
        elif p == "posinf_both":
            s[r, j] = INF
            t[r, j] = INF
        elif p == "neginf_s_only":
            # the student rules out a class the teacher likes: +inf KL (the teacher's mass there
            # stays far from underflow in every precision)
            t[r, j] = t[r][~torch.isnan(t[r])].max() if (~torch.isnan(t[r])).any() else 0.0
            s[r, j] = -INF
        elif p == "huge_same":
            sign = torch.where(torch.rand(v, generator=gen) < 0.5, -1.0, 1.0).double()
            s[r, cols] = sign[cols] * huge
            t[r, cols] = sign[cols] * huge


@settings(max_examples=260, **SETTINGS)
@given(case=softmax_cases())
def test_softmax_family_hostile(case):
    dtype, lead, V = case["dtype"], case["lead"], case["V"]
    gen = torch.Generator().manual_seed(case["seed"])
    n = math.prod(lead)
    s = torch.randn(n, V, generator=gen, dtype=torch.float64) * case["scale"]
    t = torch.randn(n, V, generator=gen, dtype=torch.float64) * case["scale"]
    _apply_patterns(s, t, case["patterns"], gen, HUGE[dtype])
    s, t = s.reshape(*lead, V).to(dtype), t.reshape(*lead, V).to(dtype)
    if case["noncontig"] == "stride":
        s = torch.stack((s, torch.zeros_like(s)), -1).flatten(-2)[..., ::2]
        t = torch.stack((torch.zeros_like(t), t), -1).flatten(-2)[..., 1::2]
    elif case["noncontig"] == "transpose" and len(lead) == 2:
        s = s.transpose(0, 1).contiguous().transpose(0, 1)
        t = t.transpose(0, 1).contiguous().transpose(0, 1)
    mask = (torch.rand(lead, generator=gen) < 0.7) if case["masked"] else None
    T = case["temperature"]
    kw = {"mask": mask, "reduction": case["reduction"]}
    fn_name = case["fn"]
    if fn_name == "kl_div":
        fn = losses.kl_div
        kw.update(temperature=T, scale_by_temperature_squared=T >= 0.05)
    elif fn_name == "soft_cross_entropy":
        fn = losses.soft_cross_entropy
        kw.update(temperature=T)
    elif fn_name == "logits_mse":
        fn = losses.logits_mse
    else:
        fn = losses.distillation_loss
        if T < 0.05 and case["kind"] == "kl":
            T = 0.05
        labels = torch.randint(0, V, lead, generator=gen)
        labels[torch.rand(lead, generator=gen) < 0.2] = -100
        kw.update(labels=labels, kind=case["kind"], temperature=T, alpha=case["alpha"])
    finite = _finite_max(s, t)
    hint = (1.0 + 2 * finite / min(T, 1.0)) * (1 + finite) * max(1, n)
    coef = T * T if (fn_name == "kl_div" and kw.get("scale_by_temperature_squared")) else 1.0
    if fn_name == "distillation_loss" and case["kind"] == "kl":
        coef = T * T
    hint *= max(1.0, coef)
    _check_backends(fn, s, t, hint, coef * (1.0 / T + 1.0 + 2.0 * finite), **kw)


# ---------------------------------------------------------------- attention and value relations

@st.composite
def attention_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n_layers = draw(st.sampled_from([1, 2, 3]))
    B = draw(st.sampled_from([0, 1, 2, 3]))
    H = draw(st.sampled_from([1, 2]))
    L = draw(st.sampled_from([0, 1, 2, 5, 17]))
    fn = draw(st.sampled_from(["tinybert", "tinybert-probs", "masked", "kl", "kl-nomask"]))
    temperature = draw(st.sampled_from([1.0, 0.5, 2.0, 1e-30]))
    patterns = draw(st.lists(st.sampled_from(
        ["nan_one", "nan_row", "neginf_row_s", "neginf_row_both", "posinf_t", "posinf_s",
         "minus_10000", "huge_same", "nan_padded"]), max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    noncontig = draw(st.booleans())
    return dict(dtype=dtype, n_layers=n_layers, B=B, H=H, L=L, fn=fn, temperature=temperature,
                patterns=patterns, seed=seed, noncontig=noncontig)


@settings(max_examples=180, **SETTINGS)
@given(case=attention_cases())
def test_attention_family_hostile(case):
    dtype, B, H, L, n_layers = case["dtype"], case["B"], case["H"], case["L"], case["n_layers"]
    gen = torch.Generator().manual_seed(case["seed"])
    lens = torch.randint(0, L + 1, (B,), generator=gen)
    mask = torch.arange(L)[None, :] < lens[:, None]
    s = torch.randn(n_layers, B, H, L, L, generator=gen, dtype=torch.float64) * 3
    t = torch.randn(n_layers, B, H, L, L, generator=gen, dtype=torch.float64) * 3
    if B and L:
        flat_s, flat_t = s.view(-1, L), t.view(-1, L)
        for p in case["patterns"]:
            r = int(torch.randint(0, flat_s.shape[0], (1,), generator=gen))
            j = int(torch.randint(0, L, (1,), generator=gen))
            if p == "nan_one":
                flat_s[r, j] = NAN
            elif p == "nan_row":
                (flat_s if j % 2 else flat_t)[r] = NAN
            elif p == "neginf_row_s":
                flat_s[r] = -INF
            elif p == "neginf_row_both":
                flat_s[r] = -INF
                flat_t[r] = -INF
            elif p == "posinf_t":
                flat_t[r, j] = INF
            elif p == "posinf_s":
                flat_s[r, j] = INF
            elif p == "minus_10000":
                s.masked_fill_(~mask[None, :, None, None, :], -10000.0)
                t.masked_fill_(~mask[None, :, None, None, :], -10000.0)
            elif p == "huge_same":
                flat_s[r, j] = flat_t[r, j] = HUGE[dtype]
            elif p == "nan_padded":  # padding holds NaN: the mask must mask it
                s.masked_fill_(~mask[None, :, None, None, :], NAN)
    s, t = s.to(dtype), t.to(dtype)
    if case["noncontig"]:
        s = s.transpose(-1, -2).contiguous().transpose(-1, -2)
    fn_name, T = case["fn"], case["temperature"]
    if fn_name.startswith("tinybert"):
        inputs = "probs" if fn_name.endswith("probs") else "scores"
        fn = lambda a, b, **kw: losses.attention_mse(list(a.unbind(0)), list(b.unbind(0)), inputs=inputs, **kw)
    elif fn_name == "masked":
        fn = lambda a, b, **kw: losses.attention_mse(list(a.unbind(0)), list(b.unbind(0)), mode="masked",
                                                     attention_mask=mask, **kw)
    else:
        m = mask if fn_name == "kl" else None
        fn = lambda a, b, **kw: losses.attention_kl(list(a.unbind(0)), list(b.unbind(0)), attention_mask=m,
                                                    temperature=T, **kw)
    finite = _finite_max(s, t)
    hint = (1.0 + 2 * finite / min(T, 1.0)) * (1 + finite) * n_layers
    _check_backends(fn, s, t, hint, (1.0 / T + 2.0 * finite) * n_layers)


@st.composite
def value_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    B = draw(st.sampled_from([0, 1, 2, 3]))
    L = draw(st.sampled_from([0, 1, 3, 6]))
    heads = draw(st.sampled_from([1, 2, 3]))
    ds = heads * draw(st.sampled_from([1, 2, 4]))
    dt = heads * draw(st.sampled_from([1, 3]))
    masked = draw(st.booleans())
    patterns = draw(st.lists(st.sampled_from(["nan_one", "nan_padded", "inf_one", "big"]), max_size=2))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(dtype=dtype, B=B, L=L, heads=heads, ds=ds, dt=dt, masked=masked,
                patterns=patterns, seed=seed)


@settings(max_examples=100, **SETTINGS)
@given(case=value_cases())
def test_value_relation_hostile(case):
    dtype, B, L = case["dtype"], case["B"], case["L"]
    gen = torch.Generator().manual_seed(case["seed"])
    vs = torch.randn(B, L, case["ds"], generator=gen, dtype=torch.float64)
    vt = torch.randn(B, L, case["dt"], generator=gen, dtype=torch.float64)
    lens = torch.randint(0, L + 1, (B,), generator=gen)
    mask = torch.arange(L)[None, :] < lens[:, None]
    if B and L:
        for p in case["patterns"]:
            b = int(torch.randint(0, B, (1,), generator=gen))
            i = int(torch.randint(0, L, (1,), generator=gen))
            if p == "nan_one":
                vs[b, i, 0] = NAN
            elif p == "nan_padded":
                vs.masked_fill_(~mask[..., None], NAN)
            elif p == "inf_one":
                vt[b, i, -1] = INF
            elif p == "big":
                vs *= 8
    vs, vt = vs.to(dtype), vt.to(dtype)
    m = mask if case["masked"] else None
    fn = lambda a, b, **kw: losses.value_relation_kl(a, b, attention_mask=m,
                                                     num_relation_heads=case["heads"], **kw)
    finite = _finite_max(vs, vt)
    hint = (1 + finite * finite * case["ds"]) * 4
    for backend in [b for b in BACKENDS if b != "triton"]:  # no Triton kernel for this family
        truth, truth_g = _run(fn, vs.double(), vt.double(), backend="reference")
        got, got_g = _run(fn, vs, vt, backend=backend)
        eps = torch.finfo(_acc(dtype)).eps
        low = dtype in (torch.bfloat16, torch.float16)
        _close(got, truth, 1e-2 if low else 1e-4 if dtype == torch.float32 else 1e-7,
               256 * eps * hint, f"{backend} loss")
        _close(got_g, truth_g, 5e-2 if low else 1e-3 if dtype == torch.float32 else 1e-7,
               (1e-2 if low else 64 * eps) * (1 + _finite_max(truth_g)), f"{backend} grad")


# ---------------------------------------------------------------- the reproducers

def _rows(seed=0, n=3, v=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(n, v, generator=g, dtype=torch.float64).to(dtype))


SOFTMAX_FNS = {
    "kl_div": lambda s, t, **kw: losses.kl_div(s, t, **kw),
    "soft_cross_entropy": lambda s, t, **kw: losses.soft_cross_entropy(s, t, **kw),
    "logits_mse": lambda s, t, **kw: losses.logits_mse(s, t, **kw),
    "distillation_loss": lambda s, t, **kw: losses.distillation_loss(s, t, torch.tensor([0, 1, 2]), **kw),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(SOFTMAX_FNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_row_gives_nan(backend, name, dtype):
    for where in ("student", "teacher"):
        s, t = _rows(1, dtype=dtype)
        (s if where == "student" else t)[1] = NAN
        out, g = _run(SOFTMAX_FNS[name], s, t, backend=backend)
        assert torch.isnan(out), (where, out)
        if where == "student" or name != "logits_mse":
            assert torch.isnan(g[1]).all()
        # the other rows' gradients stay finite, and masking the NaN row removes it
        assert torch.isfinite(g[0]).all() and torch.isfinite(g[2]).all()
        if name != "distillation_loss":
            mask = torch.tensor([True, False, True])
            out, g = _run(SOFTMAX_FNS[name], s, t, backend=backend, mask=mask)
            assert torch.isfinite(out) and torch.isfinite(g).all() and not g[1].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_attention_gives_nan(backend):
    s, t = torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.randn(1, 2, 4, 4, dtype=torch.float64)
    s[0, 1, 2] = NAN
    assert torch.isnan(losses.attention_mse([s], [t], backend=backend))  # tinybert mode
    assert torch.isnan(losses.attention_kl([s], [t], attention_mask=None, backend=backend))
    # a padded query row or key masks its NaN
    mask = torch.tensor([[True, True, False, True]])
    assert torch.isfinite(losses.attention_kl([s], [t], attention_mask=mask, backend=backend))
    assert torch.isfinite(losses.attention_mse([s], [t], attention_mask=mask, mode="masked",
                                               backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_positive_inf_teacher_takes_the_mass(backend):
    s, t = _rows(2)
    t[0, 1] = t[0, 3] = INF
    out, g = _run(losses.kl_div, s, t, backend=backend, reduction="none")
    p = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    log_q = torch.log_softmax(s[0], -1)
    want = (p[[1, 3]] * (p[[1, 3]].log() - log_q[[1, 3]])).sum()
    torch.testing.assert_close(out[0], want)
    torch.testing.assert_close(g[0], torch.softmax(s[0], -1) - p)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_huge_logits_low_temperature_are_finite(backend, dtype):
    big = (torch.randn(4, 9, generator=torch.Generator().manual_seed(3)).sign() * 3e38).to(dtype)
    out, g = _run(losses.kl_div, big, big.clone(), backend=backend, temperature=0.5)
    assert abs(out.item()) < 1e-6 and torch.isfinite(g).all()
    assert g.abs().max() < 1e-6  # the same distributions: zero up to rounding
    out = losses.soft_cross_entropy(big, big, temperature=0.5, backend=backend)
    assert torch.isfinite(out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_temperature(backend):
    s, t = _rows(4, dtype=torch.float32)
    got, got_g = _run(losses.soft_cross_entropy, s, t, backend=backend, temperature=1e-30)
    want, want_g = _run(losses.soft_cross_entropy, s.double(), t.double(), backend="reference",
                        temperature=1e-30)
    assert torch.isfinite(got) and torch.isfinite(got_g).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    torch.testing.assert_close(got_g.double(), want_g, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        losses.kl_div(s, t, temperature=1e-40)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_minus_inf_student_mse_agrees(backend):
    s, t = _rows(5)
    s[1] = -INF
    out, g = _run(losses.logits_mse, s, t, backend=backend)
    want, want_g = _run(losses.logits_mse, s, t, backend="reference")
    assert torch.isfinite(out)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(g, want_g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs_are_zero(backend):
    s, t = _rows(6, n=0)
    for name, fn in SOFTMAX_FNS.items():
        if name == "distillation_loss":
            fn = lambda a, b, **kw: losses.distillation_loss(a, b, torch.zeros(0, dtype=torch.long), **kw)
        out, g = _run(fn, s, t, backend=backend)
        assert out.item() == 0.0 and g.shape == s.shape
    for B, L in ((0, 4), (2, 0)):
        maps = [torch.randn(B, 2, L, L, dtype=torch.float64, requires_grad=True)]
        tmaps = [torch.randn(B, 2, L, L, dtype=torch.float64)]
        for loss in (losses.attention_mse(maps, tmaps, backend=backend),
                     losses.attention_kl(maps, tmaps, attention_mask=None, backend=backend)):
            assert loss.item() == 0.0
            loss.backward()
        if backend != "triton":
            vs = torch.randn(B, L, 6, dtype=torch.float64, requires_grad=True)
            loss = losses.value_relation_kl(vs, torch.randn(B, L, 4, dtype=torch.float64),
                                            attention_mask=None, num_relation_heads=2, backend=backend)
            loss.backward()  # B = 0 used to fail here with a misleading message
            assert loss.item() == 0.0 and not vs.grad.any()


def test_empty_intermediate_helpers():
    for B, L in ((0, 4), (2, 0)):
        hs = torch.randn(B, L, 8, requires_grad=True)
        out = losses.hidden_mse([hs], [torch.randn(B, L, 8)])
        out.backward()
        assert out.item() == 0.0 and not hs.grad.any()
        out = losses.hidden_mse([hs], [torch.randn(B, L, 8)], attention_mask=torch.ones(B, L))
        assert out.item() == 0.0
    v = torch.randn(0, 6, requires_grad=True)
    for kind in ("mse", "cosine"):
        out = losses.sentence_approx(v, torch.randn(0, 6), kind=kind)
        out.backward()
        assert out.item() == 0.0
    assert losses.pool(torch.randn(0, 3, 4), how="mean").shape == (0, 4)
    for how in ("cls", "mean", "max"):
        with pytest.raises(ValueError, match="hidden"):
            losses.pool(torch.randn(2, 0, 4), how=how)
    # padding never contributes, NaN included
    h = torch.randn(2, 3, 4)
    h[1, 2] = NAN
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    for how in ("mean", "max"):
        assert torch.isfinite(losses.pool(h, m, how=how)).all()
    assert torch.isfinite(losses.hidden_mse([h], [torch.randn(2, 3, 4)], attention_mask=m))


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_hidden_mse_padding_reaches_no_gradient(side):
    # NaN or any value at a padded position: the loss and every gradient (student, projection)
    # are those of the same batch with harmless values there
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    hs, ht = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)

    def run(fill):
        s, t = hs.clone(), ht.clone()
        (s if side == "student" else t)[1, 3:] = fill
        s.requires_grad_()
        proj = losses.Projection(4, 6).double()
        torch.nn.init.constant_(proj.weight, 0.1)
        torch.nn.init.constant_(proj.bias, -0.2)
        out = losses.hidden_mse([s], [t], projection=proj, attention_mask=m)
        out.backward()
        return out.detach(), s.grad, proj.weight.grad, proj.bias.grad

    for got, want in zip(run(NAN), run(0.5)):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- autograd

def _gradgrad_fns(backend):
    t = _rows(7)[1]
    y = torch.tensor([1, -100, 4])
    mask = torch.tensor([True, True, False])
    gen = torch.Generator().manual_seed(10)
    maps_t = [torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen) for _ in range(2)]
    amask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    fns = {
        "kl_div": (lambda x: losses.kl_div(x, t, temperature=1.7, mask=mask, backend=backend), (3, 5)),
        "soft_ce": (lambda x: 0.5 * losses.soft_cross_entropy(x, t, reduction="none", backend=backend), (3, 5)),
        "distill_kl": (lambda x: losses.distillation_loss(x, t, y, kind="kl", alpha=0.3, temperature=2.0,
                                                          backend=backend), (3, 5)),
        "distill_mse": (lambda x: losses.distillation_loss(x, t, y, kind="mse", alpha=0.3, backend=backend),
                        (3, 5)),
        "attention_kl": (lambda x: losses.attention_kl([x, x * 0.5], maps_t, attention_mask=amask,
                                                       temperature=1.3, backend=backend), (2, 2, 4, 4)),
        "attention_mse": (lambda x: 0.5 * losses.attention_mse([x, x * 2], maps_t, backend=backend)
                          + losses.attention_mse([x, x], maps_t, attention_mask=amask, mode="masked",
                                                 backend=backend), (2, 2, 4, 4)),
    }
    if backend != "triton":
        vt = torch.randn(2, 4, 9, dtype=torch.float64, generator=gen)
        fns["value_relation"] = (lambda x: losses.value_relation_kl(x, vt, attention_mask=amask,
                                                                    num_relation_heads=3, backend=backend),
                                 (2, 4, 6))
    return fns


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_matches_reference(backend):
    for name, (fn, shape) in _gradgrad_fns(backend).items():
        x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8),
                        requires_grad=True)
        # numerical checks for every fused family on cpu; the interpreter and plain autograd once
        if backend == "cpu" or name in ("kl_div", "attention_kl"):
            assert torch.autograd.gradcheck(fn, (x,)), name
            assert torch.autograd.gradgradcheck(fn, (x,)), name
        # the reproducer: second-order term of a fused loss against the reference
        (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), x)
        ref = _gradgrad_fns("reference")[name][0]
        (g_ref,) = torch.autograd.grad(ref(x).sum(), x, create_graph=True)
        (h_ref,) = torch.autograd.grad((g_ref * g_ref).sum(), x)
        torch.testing.assert_close(h, h_ref, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_backward_with_retain_graph(backend):
    for name, (fn, shape) in _gradgrad_fns(backend).items():
        x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9),
                        requires_grad=True)
        loss = fn(x).sum()
        loss.backward(retain_graph=True)
        once = x.grad.clone()
        loss.backward(retain_graph=True)
        loss.backward(retain_graph=True)
        loss.backward()
        torch.testing.assert_close(x.grad, 4 * once, msg=name)
        for scale in (1.0, 0.5):  # the loss scaled, and through a non-leaf
            x.grad = None
            y = x * 1.0
            loss = scale * fn(y).sum()
            for _ in range(3):
                loss.backward(retain_graph=True)
            torch.testing.assert_close(x.grad, 3 * scale * once, msg=name)


# ---------------------------------------------------------------- one contract

def test_kind_codes_agree_between_python_and_cpp():
    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "csrc" / "include" / "kdfast"
    kd = (root / "softmax_kd_row.h").read_text()
    attn = (root / "attention_loss_row.h").read_text()
    for name, value in (("KD_KL", kinds.KD_KL), ("KD_SOFT_CE", kinds.KD_SOFT_CE), ("KD_MSE", kinds.KD_MSE)):
        assert f"{name} = {value}" in kd, name
    for name, value in (("ATTN_TINYBERT_MSE", kinds.ATTN_TINYBERT_MSE), ("ATTN_MSE", kinds.ATTN_MSE),
                        ("ATTN_KL", kinds.ATTN_KL)):
        assert f"{name} = {value}" in attn, name
    from kdfast.ops import attention, softmax_kd
    assert softmax_kd.KINDS == kinds.KD_KINDS and attention.KINDS == kinds.ATTN_KINDS


def test_import_kdfast_registers_every_family():
    import subprocess
    import sys
    code = ("import torch, kdfast\n"
            "from torch._library.simple_registry import singleton\n"
            "for op in ('kd_loss', 'attention_loss', 'value_relation', 'bilstm_layer', 'unit_taylor'):\n"
            "    if hasattr(torch.ops.kdfast, op):\n"
            "        e = singleton.find('kdfast::' + op)\n"
            "        fake = getattr(e, 'fake_impl', None) or e.abstract_impl  # torch 2.4: abstract\n"
            "        assert fake.kernel is not None, op\n"
            "        assert torch._C._dispatch_has_kernel_for_dispatch_key('kdfast::' + op, 'Autograd') or "
            "torch._C._dispatch_has_kernel_for_dispatch_key('kdfast::' + op, 'AutogradCPU'), op\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_backend_rule(monkeypatch):
    from kdfast.ops import _backend, value_relation
    cpu = torch.device("cpu")
    # an explicit backend the family lacks raises, naming it
    with pytest.raises(ValueError, match="value_relation_kl has no 'triton' backend"):
        _backend.resolve("triton", cpu, value_relation.PREFERENCE, family="value_relation_kl")
    vs = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="triton"):
        losses.value_relation_kl(vs, vs, attention_mask=None, num_relation_heads=2, backend="triton")
    # a forced backend the family lacks falls back to its auto order
    monkeypatch.setenv("KDFAST_BACKEND", "triton")
    want = "cpu" if _ext.has("cpu") else "reference"
    assert _backend.resolve("auto", cpu, value_relation.PREFERENCE) == want
    assert torch.isfinite(losses.value_relation_kl(vs, vs, attention_mask=None, num_relation_heads=2))
    monkeypatch.setenv("KDFAST_BACKEND", "cuda")  # absent here: the auto order
    assert _backend.resolve("auto", cpu) == want


# ---------------------------------------------------------------- bad arguments

BAD = [
    (lambda: losses.soft_cross_entropy(*_rows(), tinybert_compat="no"), TypeError,
     "tinybert_compat"),
    (lambda: losses.kl_div(*_rows(), scale_by_temperature_squared=1), TypeError,
     "scale_by_temperature_squared"),
    (lambda: losses.hidden_mse([torch.randn(2, 3, 4)], [torch.randn(2, 3, 4)],
                               tinybert_compat="yes"), TypeError, "tinybert_compat"),
    (lambda: losses.distillation_loss(*_rows(), torch.tensor([0, 1, 2]), ignore_index=None),
     TypeError, "ignore_index"),
    (lambda: losses.distillation_loss(*_rows(), torch.tensor([0, 1, 2]), ignore_index=1.5),
     TypeError, "ignore_index"),
    (lambda: losses.layer_map(6, 3, None), TypeError, "strategy"),
    (lambda: losses.layer_map(6, 3, 7), TypeError, "strategy"),
    (lambda: losses.hidden_mse([torch.randn(2, 5, 8)], [torch.randn(2, 5, 16)],
                               projection=losses.Projection(4, 16)), ValueError, "projection"),
    (lambda: losses.hidden_mse([torch.randn(2, 5, 0)], [torch.randn(2, 5, 0)]), ValueError, "width"),
    (lambda: losses.pool(torch.randn(2, 0, 4), how="max"), ValueError, "hidden"),
    (lambda: losses.sentence_approx(torch.randn(3, 0), torch.randn(3, 0)), ValueError, "student_vectors"),
    (lambda: losses.value_relation_kl(torch.randn(2, 3, 0), torch.randn(2, 3, 0), attention_mask=None,
                                      num_relation_heads=1), ValueError, "width"),
    (lambda: losses.kl_div(*_rows(), temperature=1e20), ValueError, "temperature"),
    (lambda: losses.attention_kl([torch.randn(1, 1, 2, 2)], [torch.randn(1, 1, 2, 2)],
                                 attention_mask=None, temperature=0.0), ValueError, "temperature"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments_name_the_argument(case):
    fn, exc, words = BAD[case]
    with pytest.raises(exc, match=words):
        fn()


def test_double_backward_with_a_layer_that_needs_no_gradient():
    """create_graph through a list input where one student layer does not require grad."""
    torch.manual_seed(0)
    s1 = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    s2 = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    t1, t2 = torch.randn_like(s1), torch.randn_like(s1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    for backend in ("reference",) + (("cpu",) if _ext.has("cpu") else ()):
        loss = losses.attention_mse([s1, s2], [t1, t2], mode="masked", attention_mask=mask,
                                    backend=backend)
        (g,) = torch.autograd.grad(loss, s1, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), s1)
        ref = losses.attention_mse([s1, s2], [t1, t2], mode="masked", attention_mask=mask,
                                   backend="reference")
        (g_ref,) = torch.autograd.grad(ref, s1, create_graph=True)
        (gg_ref,) = torch.autograd.grad(g_ref.square().sum(), s1)
        torch.testing.assert_close(g, g_ref)
        torch.testing.assert_close(gg, gg_ref)
