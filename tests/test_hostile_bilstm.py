"""Hostile inputs for kdfast.nn.BiLSTM / kdfast.ops.bilstm and the BiLSTM students.

The rule: positions past a row's length never touch a result or a gradient (NaN/inf there
change nothing), on every backend; NaN elsewhere propagates as in PyTorch; bad arguments raise
ValueError/TypeError naming the argument before any kernel runs. Everything is compared with
nn.LSTM on a PackedSequence (the definition), in float64.
"""
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from kdfast import _ext
from kdfast.nn import BiLSTM, BiLSTMClassifier, SiameseBiLSTMClassifier, SRAEncoder
from kdfast.ops.bilstm import bilstm

try:  # the generated suite needs hypothesis (the test extra); the rest runs without it
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = settings = st = None

BACKENDS = ["reference"] + (["cpu"] if _ext.has("cpu") else [])


def _pair(I, H, layers=1, bias=True, batch_first=True, dtype=torch.float64, seed=0):
    """(kdfast BiLSTM, nn.LSTM) with the same weights."""
    torch.manual_seed(seed)
    ref = nn.LSTM(I, H, num_layers=layers, bias=bias, batch_first=batch_first,
                  bidirectional=True).to(dtype)
    return BiLSTM.from_torch(ref), ref


def _expected(ref, x, lengths, hx):
    """nn.LSTM on a PackedSequence (no lengths: the plain call)."""
    if lengths is None:
        return ref(x, hx)
    T = x.shape[1] if ref.batch_first else x.shape[0]
    packed = pack_padded_sequence(x, lengths, batch_first=ref.batch_first, enforce_sorted=False)
    out, state = ref(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=ref.batch_first, total_length=T)
    return out, state


def _grads(module, x, hx, outputs, seed=1, pad=None):
    """Gradients of x, hx and every parameter for fixed random output weights; ``pad`` (a bool
    mask over the output's positions) puts NaN into the output gradient there."""
    out, (h, c) = outputs
    g = torch.Generator().manual_seed(seed)
    go = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out, h, c)]
    if pad is not None:
        go[0] = go[0].masked_fill(pad, float("nan"))
    inputs = [x] + ([] if hx is None else list(hx)) + list(module.parameters())
    return torch.autograd.grad([out, h, c], inputs, go)


def _assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, equal_nan=False)


# ------------------------------------------------------------------ the reproducers

@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_padding_gives_finite_weight_gradients(backend):
    m = BiLSTM(5, 4)
    m.backend = backend
    x = torch.randn(2, 6, 5)
    x[1, 3:] = float("nan")
    x.requires_grad_()
    out, (h, c) = m(x, torch.tensor([6, 3]))
    (out.sum() + h.sum() + c.sum()).backward()
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert torch.isfinite(out).all() and torch.isfinite(h).all() and torch.isfinite(c).all()
    assert torch.isfinite(x.grad).all() and (x.grad[1, 3:] == 0).all()
    assert (out[1, 3:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fill", [float("nan"), float("inf"), -float("inf"), 1e300])
def test_padding_never_reaches_results_or_gradients(backend, fill):
    m, ref = _pair(5, 4, layers=2)
    m.backend = backend
    lengths = torch.tensor([6, 3, 1])
    clean = torch.randn(3, 6, 5, dtype=torch.float64)
    pad = torch.arange(6)[None, :] >= lengths[:, None]
    x = clean.masked_fill(pad[..., None], fill).requires_grad_()
    xc = clean.clone().requires_grad_()
    got = m(x, lengths)
    want = _expected(ref, xc, lengths, None)
    out_pad = pad[..., None].expand(-1, -1, 8)
    for a, b in zip(_grads(m, x, None, got, pad=out_pad), _grads(ref, xc, None, want)):
        _assert_close(a, b)
    _assert_close(got[0], want[0])
    _assert_close(got[1][0], want[1][0])
    _assert_close(got[1][1], want[1][1])


def test_nan_outside_padding_propagates():
    m = BiLSTM(3, 2)
    x = torch.randn(2, 4, 3)
    x[0, 1, 0] = float("nan")
    out, (h, _) = m(x, torch.tensor([4, 2]))
    assert torch.isnan(out[0]).any() and torch.isnan(h[:, 0]).all()
    assert torch.isfinite(out[1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_nn_lstm_style_positional_hx(backend, batch_first):
    m, ref = _pair(5, 4, layers=2, batch_first=batch_first, dtype=torch.float32)
    m.backend = backend
    x = torch.randn(3, 6, 5) if batch_first else torch.randn(6, 3, 5)
    hx = (torch.randn(4, 3, 4), torch.randn(4, 3, 4))
    for got, want in zip(m(x, hx), ref(x, hx)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    lengths = torch.tensor([6, 2, 5])
    got = m(x, hx, lengths=lengths)
    want = _expected(ref, x, lengths, hx)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x, lengths, hx), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x, lengths=lengths, hx=hx), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x, list(hx)), ref(x, hx), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="hx given twice"):
        m(x, hx, hx=hx)
    with pytest.raises(TypeError, match="pass lengths as lengths="):
        m(x, hx, lengths)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_input_like_nn_lstm(backend):
    m, ref = _pair(5, 4, layers=2)
    m.backend = backend
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    hx = (torch.randn(4, 4, dtype=torch.float64, requires_grad=True),
          torch.randn(4, 4, dtype=torch.float64, requires_grad=True))
    for state in (None, hx):
        got, want = m(x, state), ref(x, state)
        assert got[0].shape == (7, 8) and got[1][0].shape == (4, 4)
        _assert_close(got[0], want[0])
        _assert_close(got[1][0], want[1][0])
        _assert_close(got[1][1], want[1][1])
        for a, b in zip(_grads(m, x, state, got), _grads(ref, x, state, want)):
            _assert_close(a, b)


def _bad_calls():
    x = torch.randn(2, 6, 5)
    h = torch.zeros(2, 2, 4)
    return [
        ("width", lambda m: m(torch.randn(2, 6, 4)), ValueError, "x must have input_size=5"),
        ("rank", lambda m: m(torch.randn(1, 2, 6, 5)), ValueError, "x must be 3-D"),
        ("x int", lambda m: m(x.long()), TypeError, "x must be a floating tensor"),
        ("x list", lambda m: m([[1.0] * 5]), TypeError, "x must be a torch.Tensor"),
        ("B=0", lambda m: m(torch.randn(0, 6, 5)), ValueError, "at least one row"),
        ("T=0", lambda m: m(torch.randn(2, 0, 5)), ValueError, "one timestep"),
        ("len > T", lambda m: m(x, torch.tensor([7, 3])), ValueError, r"lengths must lie in \[1, T=6\]"),
        ("len 0", lambda m: m(x, torch.tensor([0, 3])), ValueError, "lengths must lie in"),
        ("len < 0", lambda m: m(x, torch.tensor([-2, 3])), ValueError, "lengths must lie in"),
        ("len float", lambda m: m(x, torch.tensor([6.0, 3.0])), TypeError, "lengths must have an integer"),
        ("len bool", lambda m: m(x, torch.tensor([True, True])), TypeError, "lengths must have an integer"),
        ("len 2-D", lambda m: m(x, torch.tensor([[6, 3]])), ValueError, r"lengths must have shape \(2,\)"),
        ("len B+1", lambda m: m(x, torch.tensor([6, 3, 1])), ValueError, r"lengths must have shape \(2,\)"),
        ("len 0-d", lambda m: m(x, torch.tensor(6)), ValueError, r"lengths must have shape \(2,\)"),
        ("len str", lambda m: m(x, "63"), TypeError, "lengths must be"),
        ("len meta", lambda m: m(x, torch.tensor([6, 3], device="meta")), ValueError, "lengths is on meta"),
        ("len unbatched", lambda m: m(x[0], torch.tensor([6])), ValueError, "lengths needs batched"),
        ("hx dtype", lambda m: m(x, (h.double(), h.double())), TypeError, "h_0 has dtype torch.float64"),
        ("hx device", lambda m: m(x, hx=(h.to("meta"),) * 2), ValueError, "h_0 is on meta"),
        ("hx shape", lambda m: m(x, (torch.zeros(2, 3, 4),) * 2), ValueError, r"h_0 must have shape \(2, 2, 4\)"),
        ("hx c0 shape", lambda m: m(x, (h, torch.zeros(2, 2, 3))), ValueError, "c_0 must have shape"),
        ("hx tensor", lambda m: m(x, hx=h), TypeError, "hx must be a tuple"),
        ("hx triple", lambda m: m(x, hx=(h, h, h)), TypeError, "hx must be a tuple"),
        ("hx unbatched", lambda m: m(x[0], (h, h)), ValueError, r"h_0 must have shape \(2, 4\)"),
        ("packed + lengths", lambda m: m(pack_padded_sequence(x, [6, 3], batch_first=True),
                                         lengths=torch.tensor([6, 3])), ValueError, "PackedSequence"),
        ("backend", lambda m: (setattr(m, "backend", "gpu"), m(x)), ValueError, "backend must be one of"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_module_inputs(case):
    _, call, exc, match = case
    with pytest.raises(exc, match=match):
        call(BiLSTM(5, 4))


def test_bad_op_arguments():
    x = torch.randn(2, 3, 4)
    ws = list(BiLSTM(4, 2)._flat_weights)
    with pytest.raises(TypeError, match="weights must be a list"):
        bilstm(x, ws[0])
    with pytest.raises(TypeError, match="bias must be a bool"):
        bilstm(x, ws, bias=1)
    with pytest.raises(TypeError, match="batch_first must be a bool"):
        bilstm(x, ws, batch_first="yes")
    with pytest.raises(ValueError, match="dropout must be"):
        bilstm(x, ws, dropout=float("nan"))
    with pytest.raises(ValueError, match="num_layers must be"):
        bilstm(x, ws, num_layers=0)


# ------------------------------------------------------------------ generated: vs nn.LSTM

def _cases(draw):
    unbatched = draw(st.booleans())
    B = 1 if unbatched else draw(st.integers(1, 5))
    T = draw(st.integers(1, 7))
    case = dict(
        B=B, T=T, I=draw(st.integers(1, 6)), H=draw(st.integers(1, 5)),
        layers=draw(st.integers(1, 2)), bias=draw(st.booleans()),
        batch_first=draw(st.booleans()), unbatched=unbatched, with_hx=draw(st.booleans()),
        backend=draw(st.sampled_from(BACKENDS)), seed=draw(st.integers(0, 2**16)),
        fill=draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 3.0])),
        lengths=None)
    if not unbatched and draw(st.booleans()):
        lens = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        if draw(st.booleans()):  # both ends of the range in one batch
            lens[draw(st.integers(0, B - 1))] = 1
            lens[draw(st.integers(0, B - 1))] = T
        case["lengths"] = lens
    return case


def _generated(case):
    B, T, I, H, layers = case["B"], case["T"], case["I"], case["H"], case["layers"]
    m, ref = _pair(I, H, layers, case["bias"], case["batch_first"], seed=case["seed"])
    m.backend = case["backend"]
    g = torch.Generator().manual_seed(case["seed"])
    clean = torch.randn(B, T, I, generator=g, dtype=torch.float64)  # batch-first here
    lengths = None if case["lengths"] is None else torch.tensor(case["lengths"])
    pad = torch.zeros(B, T, dtype=torch.bool)
    if lengths is not None:
        pad = torch.arange(T)[None, :] >= lengths[:, None]
    dirty = clean.masked_fill(pad[..., None], case["fill"])
    out_pad = pad[..., None].expand(-1, -1, 2 * H)

    def layout(t):
        if case["unbatched"]:
            return t[0]
        return t if case["batch_first"] else t.transpose(0, 1)

    x, xc = layout(dirty).requires_grad_(), layout(clean).requires_grad_()
    hx = None
    if case["with_hx"]:
        shape = (2 * layers, H) if case["unbatched"] else (2 * layers, B, H)
        hx = tuple(torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
                   for _ in range(2))
    got = m(x, lengths, hx)
    want = _expected(ref, xc, lengths, hx)
    _assert_close(got[0], want[0])
    _assert_close(got[1][0], want[1][0])
    _assert_close(got[1][1], want[1][1])
    assert got[0].shape == want[0].shape
    gpad = None if lengths is None else layout(out_pad)
    for a, b in zip(_grads(m, x, hx, got, pad=gpad), _grads(ref, xc, hx, want)):
        _assert_close(a, b)


if st is not None:
    test_generated_hostile_shapes_match_packed_nn_lstm = settings(
        deadline=None, derandomize=True, max_examples=120)(given(st.composite(_cases)())(_generated))
else:  # pragma: no cover
    @pytest.mark.skip(reason="needs hypothesis (pip install hypothesis)")
    def test_generated_hostile_shapes_match_packed_nn_lstm():
        pass


# ------------------------------------------------------------------ the students

STUDENTS = [(BiLSTMClassifier, {"fc_size": 5}), (SiameseBiLSTMClassifier, {"fc_size": 5}),
            (SRAEncoder, {"teacher_hidden": 8})]


def _call(model, ids, lengths, ids_b=None, lengths_b=None):
    if isinstance(model, SiameseBiLSTMClassifier):
        return model(ids, lengths, ids if ids_b is None else ids_b,
                     lengths if lengths_b is None else lengths_b)
    return model(ids, lengths)


@pytest.mark.parametrize("cls,kw", STUDENTS, ids=lambda v: getattr(v, "__name__", ""))
def test_student_constructor_arguments(cls, kw):
    bad = [({"vocab_size": 0}, ValueError, "vocab_size"), ({"vocab_size": 10.0}, TypeError, "vocab_size"),
           ({"embed_dim": True}, TypeError, "embed_dim"), ({"hidden_size": -1}, ValueError, "hidden_size"),
           ({"num_layers": 0}, ValueError, "num_layers"), ({"padding_idx": 10}, ValueError, "padding_idx"),
           ({"padding_idx": 1.0}, TypeError, "padding_idx"), ({"pooling": "avg"}, ValueError, "pooling"),
           ({"embedding_mode": "x"}, ValueError, "embedding_mode")]
    if cls is SRAEncoder:
        bad += [({"teacher_hidden": 0}, ValueError, "teacher_hidden")]
    else:
        bad += [({"num_labels": 0}, ValueError, "num_labels"), ({"fc_size": 0}, ValueError, "fc_size"),
                ({"dropout": 1.5}, ValueError, "dropout"), ({"dropout": float("nan")}, ValueError, "dropout")]
    for change, exc, match in bad:
        args = {"vocab_size": 10, **kw, **change}
        with pytest.raises(exc, match=match):
            cls(**args)


@pytest.mark.parametrize("cls,kw", STUDENTS, ids=lambda v: getattr(v, "__name__", ""))
def test_student_forward_bad_inputs(cls, kw):
    torch.manual_seed(0)
    model = cls(10, embed_dim=6, hidden_size=4, **kw)
    ids, lengths = torch.randint(0, 10, (2, 5)), torch.tensor([5, 2])
    assert torch.isfinite(_call(model, ids, lengths)).all()
    bad = [((ids + 10, lengths), ValueError, r"ids must lie in \[0, vocab_size=10\)"),
           ((ids - 11, lengths), ValueError, "ids must lie in"),
           ((ids.float(), lengths), TypeError, "ids must have an integer dtype"),
           ((ids[0], lengths), ValueError, r"ids must have shape \[B, T\]"),
           ((ids[:0], lengths[:0]), ValueError, r"ids must have shape \[B, T\]"),
           ((ids.tolist(), lengths), TypeError, "ids must be a torch.Tensor"),
           ((ids, None), ValueError, "lengths is required"),
           ((ids, lengths + 4), ValueError, r"lengths must lie in \[1, T=5\]"),
           ((ids, lengths - 2), ValueError, "lengths must lie in"),
           ((ids, lengths.float()), TypeError, "lengths must have an integer dtype"),
           ((ids, lengths[:1]), ValueError, r"lengths must have shape \(2,\)"),
           ((ids, [5, 2]), TypeError, "lengths must be a"),
           ((ids, lengths.to("meta")), ValueError, "lengths is on meta")]
    if cls is SiameseBiLSTMClassifier:
        bad += [((ids, lengths, ids + 10, lengths), ValueError, "ids_b must lie in"),
                ((ids, lengths, ids, lengths + 9), ValueError, "lengths_b must lie in")]
    for args, exc, match in bad:
        with pytest.raises(exc, match=match):
            _call(model, *args)


@pytest.mark.parametrize("pooling", ["last", "max", "mean"])
def test_student_padding_tokens_do_not_matter(pooling):
    """Whatever ids sit past a row's length, the student's output and gradients are the same."""
    torch.manual_seed(0)
    model = BiLSTMClassifier(12, embed_dim=6, hidden_size=4, fc_size=5, pooling=pooling,
                             dropout=0.0).double()
    ids, lengths = torch.randint(1, 11, (3, 6)), torch.tensor([6, 2, 4])
    pad = torch.arange(6)[None, :] >= lengths[:, None]
    other = ids.masked_fill(pad, 11)
    with torch.no_grad():  # a NaN word vector that only padded positions look up
        model.encoder.embedding.weight[11] = float("nan")
    out_a = model(ids.masked_fill(pad, 0), lengths)
    out_b = model(other, lengths)
    _assert_close(out_a, out_b)
    out_b.sum().backward()
    for name, p in model.named_parameters():
        if name != "encoder.embedding.weight":
            assert torch.isfinite(p.grad).all(), name
    assert not math.isnan(out_b.sum().item())


def test_other_student_entry_points():
    with pytest.raises(TypeError, match="from_torch needs an nn.LSTM"):
        BiLSTM.from_torch(nn.GRU(3, 2, bidirectional=True))
    with pytest.raises(ValueError, match="bidirectional=True"):
        BiLSTM.from_torch(nn.LSTM(3, 2))
    model = BiLSTMClassifier(10, embed_dim=6, hidden_size=4, fc_size=5)
    with pytest.raises(TypeError, match="embedding weights must be a floating torch.Tensor"):
        model.encoder.init_embeddings([[0.0] * 6] * 10)
    with pytest.raises(ValueError, match=r"must have shape \(10, 6\)"):
        model.encoder.init_embeddings(torch.zeros(10, 5))
    with pytest.raises(ValueError, match="num_labels"):
        SRAEncoder(10, teacher_hidden=8, embed_dim=6, hidden_size=4).classifier(0)
