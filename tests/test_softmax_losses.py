"""kdfast.losses softmax family: every backend against the float64 reference."""

import pytest
import torch
import torch.nn.functional as F

from kdfast import _ext, losses
from kdfast.ops import _backend
from kdfast.ops import softmax_kd as ops

CPU_BACKENDS = [b for b in ("cpu", "triton") if _ext.has(b)]
ALL_BACKENDS = ["reference"] + CPU_BACKENDS
GPU_BACKENDS = ["cuda", "triton"]


def make(shape, dtype=torch.float64, scale=3.0, seed=None, device="cpu"):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    s = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)
    return s.requires_grad_(), t


def loss_and_grad(fn, s, t, **kw):
    s = s.detach().clone().requires_grad_()
    out = fn(s, t, **kw)
    (grad,) = torch.autograd.grad(out.sum(), s)
    return out.detach(), grad


def assert_matches(fn, s, t, backend, rtol=1e-9, atol=1e-11, **kw):
    want, want_g = loss_and_grad(fn, s, t, backend="reference", **kw)
    got, got_g = loss_and_grad(fn, s, t, backend=backend, **kw)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    torch.testing.assert_close(got_g, want_g, rtol=rtol, atol=atol)


# ---- the reference itself against textbook formulas -------------------------------------

def test_reference_matches_textbook_formulas():
    s, t = make((6, 11), seed=0)
    T = 2.0
    log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * T * T
    ce = -(log_p.exp() * log_q).sum(-1).mean()
    y = torch.tensor([0, 3, 5, 10, 2, 1])
    hinton = 0.3 * F.cross_entropy(s, y) + 0.7 * kl
    tang = 0.4 * F.cross_entropy(s, y) + 0.6 * F.mse_loss(s, t)
    for backend in ALL_BACKENDS:
        torch.testing.assert_close(losses.kl_div(s, t, temperature=T, backend=backend), kl)
        torch.testing.assert_close(losses.soft_cross_entropy(s, t, temperature=T, backend=backend), ce)
        torch.testing.assert_close(
            losses.distillation_loss(s, t, y, alpha=0.3, temperature=T, backend=backend), hinton)
        torch.testing.assert_close(
            losses.distillation_loss(s, t, y, kind="mse", alpha=0.4, backend=backend), tang)
        torch.testing.assert_close(losses.logits_mse(s, t, backend=backend), F.mse_loss(s, t))


def test_tinybert_compat_is_mean_over_batch_times_classes():
    s, t = make((4, 3), seed=1)
    official = (-F.softmax(t, -1) * F.log_softmax(s, -1)).mean()
    for backend in ALL_BACKENDS:
        got = losses.soft_cross_entropy(s, t, tinybert_compat=True, backend=backend)
        torch.testing.assert_close(got, official)


# ---- every backend against the reference, float64, odd shapes ----------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 8.0])
def test_kl_and_soft_ce_match_reference(backend, reduction, temperature):
    s, t = make((37, 127))
    mask = torch.rand(37) > 0.3
    for kw in ({}, {"mask": mask}):
        assert_matches(losses.kl_div, s, t, backend, temperature=temperature, reduction=reduction, **kw)
        assert_matches(losses.soft_cross_entropy, s, t, backend, temperature=temperature,
                       reduction=reduction, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
@pytest.mark.parametrize("reduction", ["batchmean", "mean", "none"])
def test_distillation_loss_matches_reference(backend, kind, reduction):
    s, t = make((3, 13, 61))
    labels = torch.randint(0, 61, (3, 13))
    labels[0, :4] = -100
    mask = torch.rand(3, 13) > 0.2
    for temperature in (1.0, 3.0):
        assert_matches(losses.distillation_loss, s, t, backend, labels=labels, kind=kind,
                       alpha=0.3, temperature=temperature, reduction=reduction, mask=mask)
    assert_matches(losses.logits_mse, s, t, backend, reduction=reduction, mask=mask)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_large_vocab_shapes(backend):
    for shape in ((37, 1271), (3, 41, 30522)):
        s, t = make(shape)
        assert_matches(losses.kl_div, s, t, backend, temperature=2.0)
    labels = torch.randint(0, 30522, (3, 41))
    assert_matches(losses.distillation_loss, s, t, backend, labels=labels, temperature=2.0)


def test_vocab_256k_cpu():
    s, t = make((2, 262144), dtype=torch.float32, seed=3)
    for backend in CPU_BACKENDS[:1]:
        assert_matches(losses.kl_div, s, t, backend, rtol=1e-4, atol=1e-6)


# ---- edge cases: -inf, all-masked, extreme logits ----------------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_masked_vocabulary_minus_inf_is_finite(backend):
    s, t = make((9, 50))
    banned = torch.rand(50) < 0.3
    s = s.detach().masked_fill(banned, float("-inf")).requires_grad_()
    t = t.masked_fill(banned, float("-inf"))
    for fn, kw in ((losses.kl_div, {"temperature": 2.0}), (losses.soft_cross_entropy, {}),
                   (losses.logits_mse, {}), (losses.distillation_loss,
                                             {"labels": torch.randint(0, 10, (9,)) * 0 + int((~banned).nonzero()[0])})):
        out, grad = loss_and_grad(fn, s, t, backend=backend, **kw)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        assert (grad[:, banned] == 0).all()
    # Equal to the loss over the allowed classes only.
    allowed = ~banned
    want = losses.kl_div(s[:, allowed], t[:, allowed], temperature=2.0, backend="reference")
    torch.testing.assert_close(losses.kl_div(s, t, temperature=2.0, backend=backend), want)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_teacher_only_minus_inf(backend):
    s, t = make((5, 20))
    t = t.clone()
    t[:, :7] = float("-inf")  # the teacher rules some classes out; the student does not
    assert_matches(losses.kl_div, s, t, backend)
    assert_matches(losses.soft_cross_entropy, s, t, backend, temperature=2.0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_all_masked_gives_zero_loss_and_grad(backend):
    s, t = make((4, 6, 33))
    mask = torch.zeros(4, 6, dtype=torch.bool)
    labels = torch.full((4, 6), -100)
    for fn, kw in ((losses.kl_div, {"mask": mask}), (losses.logits_mse, {"mask": mask}),
                   (losses.soft_cross_entropy, {"mask": mask, "reduction": "mean"}),
                   (losses.distillation_loss, {"labels": labels, "mask": mask})):
        out, grad = loss_and_grad(fn, s, t, backend=backend, **kw)
        assert out.item() == 0.0 and not grad.any()
    # rows whose logits are all -inf (padding) count as masked
    s2 = s.detach().clone()
    s2[0] = float("-inf")
    t2 = t.clone()
    t2[0] = float("-inf")
    out, grad = loss_and_grad(losses.kl_div, s2, t2, backend=backend, reduction="none")
    assert (out[0] == 0).all() and not grad[0].any() and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits(backend, dtype):
    s, t = make((7, 300), dtype=dtype, scale=1.0)
    s = (s.detach().sign() * 1e4).requires_grad_()
    t = t.sign() * 1e4
    tol = {"rtol": 1e-4, "atol": 1e-3} if dtype == torch.float32 else {}
    for temperature in (0.5, 1.0, 8.0):
        got, got_g = loss_and_grad(losses.kl_div, s, t, temperature=temperature, backend=backend)
        want, want_g = loss_and_grad(losses.kl_div, s.double(), t.double(), temperature=temperature,
                                     backend="reference")
        assert torch.isfinite(got) and torch.isfinite(got_g).all()
        torch.testing.assert_close(got.double(), want, **tol)
        torch.testing.assert_close(got_g.double(), want_g, **tol)


# ---- low precision: no worse than torch at the same dtype against a float64 truth -----------

def torch_at_dtype(s, t, temperature):
    log_q = F.log_softmax(s / temperature, -1)
    log_p = F.log_softmax(t / temperature, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_no_worse_than_torch(backend, dtype):
    s, t = make((33, 1031), dtype=dtype)
    s64, t64 = s.detach().double().requires_grad_(), t.double()
    truth, truth_g = loss_and_grad(torch_at_dtype, s64, t64, temperature=2.0)
    base, base_g = loss_and_grad(torch_at_dtype, s, t, temperature=2.0)
    got, got_g = loss_and_grad(losses.kl_div, s, t, temperature=2.0, backend=backend)
    assert got.dtype == torch.float32 and got_g.dtype == dtype
    # fp32 results differ from torch's by rounding noise either way: allow a few fp32 ulps.
    eps = torch.finfo(torch.float32).eps
    err = (got.double() - truth).abs().item()
    base_err = (base.double() - truth).abs().item()
    assert err <= max(1.5 * base_err, 8 * eps * truth.abs().item()), (err, base_err)
    g_err = (got_g.double() - truth_g).abs().max().item()
    base_g_err = (base_g.double() - truth_g).abs().max().item()
    assert g_err <= max(1.5 * base_g_err, 8 * eps * truth_g.abs().max().item()), (g_err, base_g_err)


# ---- autograd, custom-op and compiler checks ------------------------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck(backend):
    s, t = make((3, 5), seed=11)
    y = torch.tensor([1, -100, 4])
    mask = torch.tensor([True, True, False])
    for kind in ("kl", "soft_ce", "mse"):
        fn = lambda x: losses.distillation_loss(x, t, y, kind=kind, alpha=0.25, temperature=1.7,
                                                mask=mask, backend=backend)
        assert torch.autograd.gradcheck(fn, (s,))
        fn_none = lambda x: losses.kl_div(x, t, reduction="none", temperature=0.7, backend=backend)
        assert torch.autograd.gradcheck(fn_none, (s,))


def test_gradcheck_teacher_gradient_falls_back_to_reference():
    s, t = make((3, 5), seed=12)
    t = t.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: losses.kl_div(a, b, temperature=2.0), (s, t))


def _op_args(dtype=torch.float32, compute_grad=True, hard=True):
    s, t = make((5, 17), dtype=dtype, seed=4)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    labels = torch.randint(0, 17, (5,)) if hard else None
    hw = torch.full((5,), 0.1, dtype=acc) if hard else None
    return (s.detach().requires_grad_(compute_grad), t, labels, torch.full((5,), 0.2, dtype=acc), hw,
            0, 2.0, compute_grad)


@pytest.mark.skipif(not _ext.has("cpu"), reason="kdfast._C not built")
@pytest.mark.parametrize("compute_grad", [True, False])
@pytest.mark.parametrize("hard", [True, False])
def test_opcheck_cpu(compute_grad, hard):
    torch.library.opcheck(torch.ops.kdfast.kd_loss.default, _op_args(compute_grad=compute_grad, hard=hard))


@pytest.mark.skipif(not _ext.has("triton"), reason="triton not runnable here")
def test_opcheck_triton():
    torch.library.opcheck(ops.kd_loss_triton, _op_args(),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.skipif(not _ext.has("cpu"), reason="kdfast._C not built")
def test_torch_compile_fullgraph():
    s, t = make((8, 3, 29), dtype=torch.float32, seed=5)
    mask = torch.rand(8, 3) > 0.3

    def step(student, teacher):
        return losses.kl_div(student, teacher, temperature=2.0, mask=mask, backend="cpu")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    want, want_g = loss_and_grad(step, s, t)
    got, got_g = loss_and_grad(compiled, s, t)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_g, want_g)


@pytest.mark.skipif(not _ext.has("cpu"), reason="kdfast._C not built")
def test_torch_compile_fullgraph_with_labels():
    # the label range check runs on the device under compile: no data-dependent branch
    s, t = make((6, 11), dtype=torch.float32, seed=6)
    labels = torch.tensor([0, 3, -100, 10, 2, 5])

    def step(student, teacher, y):
        return losses.distillation_loss(student, teacher, y, alpha=0.3, backend="cpu")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    want, want_g = loss_and_grad(step, s, t, y=labels)
    got, got_g = loss_and_grad(compiled, s, t, y=labels)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_g, want_g)
    with pytest.raises(RuntimeError, match="labels must lie in"):
        compiled(s, t, torch.tensor([0, 3, -100, 11, 2, 5]))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_narrow_integer_labels_are_not_wrapped(backend, dtype):
    # compared in int64: -100 or 300 in uint8/int8 would wrap onto real classes
    s, t = make((5, 300), seed=7)
    labels = torch.tensor([120, 3, 4, 0, 126], dtype=dtype)
    got = losses.distillation_loss(s, t, labels, alpha=1.0, backend=backend)
    torch.testing.assert_close(got, F.cross_entropy(s.detach(), labels.long()))
    ignore = 255 if dtype == torch.uint8 else 120  # a real label value, not a wrapped one
    got = losses.distillation_loss(s, t, labels, alpha=1.0, ignore_index=ignore, backend=backend)
    torch.testing.assert_close(got, F.cross_entropy(s.detach(), labels.long(), ignore_index=ignore))


def test_backend_env_forces_choice(monkeypatch):
    monkeypatch.setenv("KDFAST_BACKEND", "reference")
    assert _backend.resolve("auto", torch.device("cpu")) == "reference"
    monkeypatch.setenv("KDFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="KDFAST_BACKEND"):
        _backend.resolve("auto", torch.device("cpu"))
    monkeypatch.delenv("KDFAST_BACKEND")
    assert _backend.resolve("auto", torch.device("cpu")) == ("cpu" if _ext.has("cpu") else "reference")


def test_forward_only_writes_no_gradient():
    s, t = make((4, 9), dtype=torch.float32, seed=6)
    with torch.no_grad():
        out = losses.kl_div(s, t)
    assert out.grad_fn is None and torch.isfinite(out)


def test_module_forms():
    s, t = make((2, 5, 7), seed=7)
    y = torch.randint(0, 7, (2, 5))
    torch.testing.assert_close(losses.KLDivLoss(temperature=3.0)(s, t), losses.kl_div(s, t, temperature=3.0))
    torch.testing.assert_close(losses.SoftCrossEntropyLoss()(s, t), losses.soft_cross_entropy(s, t))
    torch.testing.assert_close(losses.LogitsMSELoss()(s, t), losses.logits_mse(s, t))
    torch.testing.assert_close(losses.DistillationLoss(kind="mse", alpha=0.1)(s, t, y),
                               losses.distillation_loss(s, t, y, kind="mse", alpha=0.1))
    assert "temperature=3.0" in repr(losses.KLDivLoss(temperature=3.0))


# ---- bad input: clear errors naming the argument, before any kernel ------------------------

BAD = [
    (lambda s, t: losses.kl_div(s, t[:, :-1]), ValueError, "same shape"),
    (lambda s, t: losses.kl_div(s, t.float()), TypeError, "dtype"),
    (lambda s, t: losses.kl_div(s.long(), t.long()), TypeError, "student_logits"),
    (lambda s, t: losses.kl_div(s, [1, 2]), TypeError, "teacher_logits"),
    (lambda s, t: losses.kl_div(s, t.to("meta")), ValueError, "teacher_logits is on meta"),
    (lambda s, t: losses.kl_div(s, t, temperature=0.0), ValueError, "temperature"),
    (lambda s, t: losses.kl_div(s, t, temperature=float("nan")), ValueError, "temperature"),
    (lambda s, t: losses.kl_div(s, t, temperature=-1), ValueError, "temperature"),
    (lambda s, t: losses.kl_div(s, t, reduction="avg"), ValueError, "reduction"),
    (lambda s, t: losses.kl_div(s, t, backend="gpu"), ValueError, "backend"),
    (lambda s, t: losses.kl_div(s, t, mask=torch.ones(3, dtype=torch.bool)), ValueError, "mask"),
    (lambda s, t: losses.kl_div(s, t, mask=torch.ones(4)), TypeError, "mask"),
    (lambda s, t: losses.kl_div(s[:, :0], t[:, :0]), ValueError, "class"),
    (lambda s, t: losses.distillation_loss(s, t, torch.zeros(4)), TypeError, "labels"),
    (lambda s, t: losses.distillation_loss(s, t, torch.zeros(3, dtype=torch.long)), ValueError, "labels"),
    (lambda s, t: losses.distillation_loss(s, t, torch.tensor([0, 1, 2, 99])), ValueError, "labels"),
    (lambda s, t: losses.distillation_loss(s, t, kind="js"), ValueError, "kind"),
    (lambda s, t: losses.distillation_loss(s, t, alpha=1.5), ValueError, "alpha"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(case):
    fn, exc, words = BAD[case]
    s, t = make((4, 6), seed=8)
    with pytest.raises(exc, match=words):
        fn(s, t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_rejected():
    s, t = make((4, 6))
    with pytest.raises(ValueError, match="teacher_logits"):
        losses.kl_div(s, t.cuda())


# ---- GPU (skipped without CUDA) --------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
def test_gpu_backends_match_reference(backend, kind):
    for shape in ((37, 1271), (3, 41, 30522)):
        s, t = make(shape, device="cuda")
        labels = torch.randint(0, shape[-1], shape[:-1], device="cuda")
        assert_matches(losses.distillation_loss, s, t, backend, labels=labels, kind=kind,
                       temperature=2.0, alpha=0.2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_low_precision_no_worse_than_torch(backend, dtype):
    s, t = make((64, 30522), dtype=dtype, device="cuda")
    truth, truth_g = loss_and_grad(torch_at_dtype, s.detach().double().requires_grad_(), t.double(), temperature=2.0)
    base, base_g = loss_and_grad(torch_at_dtype, s, t, temperature=2.0)
    got, got_g = loss_and_grad(losses.kl_div, s, t, temperature=2.0, backend=backend)
    eps = torch.finfo(torch.float32).eps
    assert (got.double() - truth).abs() <= max(1.5 * (base.double() - truth).abs().item(), 8 * eps * truth.abs().item())
    assert (got_g.double() - truth_g).abs().max() <= max(1.5 * (base_g.double() - truth_g).abs().max().item(),
                                                         8 * eps * truth_g.abs().max().item())


@pytest.mark.gpu
def test_gpu_opcheck_and_compile():
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in _op_args())
    args[0].requires_grad_()
    torch.library.opcheck(torch.ops.kdfast.kd_loss.default, args)
    s, t = make((16, 30522), dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(lambda a, b: losses.kl_div(a, b, temperature=2.0), fullgraph=True)
    torch.testing.assert_close(compiled(s, t), losses.kl_div(s, t, temperature=2.0))
