"""kdfast BiLSTM (kdfast.ops.bilstm, kdfast.nn.BiLSTM) against torch.nn.LSTM."""
import os
import shutil
import subprocess

import pytest
import torch
from torch import nn

from kdfast import _ext
from kdfast.nn import BiLSTM
from kdfast.ops.bilstm import bilstm
from kdfast.reference.bilstm import bilstm as reference

needs_cpu = pytest.mark.skipif(not _ext.has("cpu"), reason="kdfast._C is not built")


def _weights(I, H, layers, bias, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = []
    for layer in range(layers):
        for _ in range(2):
            isz = I if layer == 0 else 2 * H
            shapes = [(4 * H, isz), (4 * H, H)] + ([(4 * H,), (4 * H,)] if bias else [])
            ws += [(torch.rand(s, generator=g, dtype=dtype) - 0.5).to(device) for s in shapes]
    return [w.requires_grad_() for w in ws]


def _lengths(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0] = T
    if B > 1:
        lens[B // 2] = 1  # a length-1 row in the middle: unsorted on purpose
    return lens


def _run_and_grads(fn, x, ws, lengths, hx, **kw):
    inputs = [x] + ws + (list(hx) if hx is not None else [])
    out, (h, c) = fn(x, ws, lengths, hx, **kw)
    g = torch.Generator().manual_seed(7)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() \
        + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum() \
        + (c * torch.randn(c.shape, generator=g, dtype=c.dtype)).sum()
    grads = torch.autograd.grad(loss, inputs)
    return out, h, c, grads


CASES = [  # B, T, I, H, layers, lengths?, hx?, bias
    (1, 1, 5, 3, 1, False, False, True),
    (3, 7, 13, 11, 1, True, True, True),
    (3, 7, 13, 11, 2, True, False, True),
    (50, 64, 19, 21, 1, True, False, True),
    (50, 7, 9, 13, 2, False, True, False),
    (1, 64, 7, 5, 1, True, True, True),
    (3, 1, 6, 9, 2, True, True, True),
]


@needs_cpu
@pytest.mark.parametrize("B,T,I,H,layers,var,with_hx,bias", CASES)
def test_cpu_matches_nn_lstm_float64(B, T, I, H, layers, var, with_hx, bias):
    torch.manual_seed(B * 1000 + T)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    ws = _weights(I, H, layers, bias, seed=B + T)
    lengths = _lengths(B, T, seed=T) if var else None
    hx = None
    if with_hx:
        hx = tuple(torch.randn(2 * layers, B, H, dtype=torch.float64, requires_grad=True)
                   for _ in range(2))
    kw = {"num_layers": layers, "bias": bias}
    got = _run_and_grads(lambda *a, **k: bilstm(*a, backend="cpu", **k), x, ws, lengths, hx, **kw)
    want = _run_and_grads(reference, x, ws, lengths, hx, **kw)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for a, b in zip(got[3], want[3]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
    if var:  # zeros at padded positions
        pad = torch.arange(T)[None, :] >= lengths[:, None]
        assert (got[0][pad] == 0).all()


@needs_cpu
@pytest.mark.parametrize("used", ["out", "h", "c"])
def test_cpu_gradients_when_only_one_output_is_used(used):
    # Autograd hands the op None (not zeros) for the outputs the loss does not read.
    B, T, I, H = 4, 6, 5, 7
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    ws = _weights(I, H, 2, True, seed=3)
    lengths = _lengths(B, T, seed=5)
    grads = []
    for fn in (lambda *a, **k: bilstm(*a, backend="cpu", **k), reference):
        out, (h, c) = fn(x, ws, lengths, None, num_layers=2)
        y = {"out": out, "h": h, "c": c}[used]
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(),
                                                             dtype=y.dtype).view_as(y)).sum(),
                                         [x] + ws, allow_unused=True))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


@needs_cpu
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_every_register_block(tmp_path):
    # The library runs only the register blocks of the CPU it is on (AVX-512, AVX2 or the
    # baseline ones); this builds the kernel headers alone and checks all of them here: the
    # BiLSTM's step GEMM and the relation losses' score tile.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = tmp_path / "register_blocks"
    subprocess.run(["g++", "-std=c++17", "-O2", "-Wno-psabi", "-I", os.path.join(root, "csrc", "include"),
                    os.path.join(root, "tests", "cpp", "register_blocks.cpp"), "-o", str(exe)],
                   check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout


def test_cpu_float32_close_to_nn_lstm():
    torch.manual_seed(1)
    B, T, I, H = 5, 9, 17, 23
    lstm = nn.LSTM(I, H, 2, batch_first=True, bidirectional=True)
    ours = BiLSTM.from_torch(lstm)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([9, 3, 1, 9, 5])
    out, (h, c) = ours(x, lengths)
    ref_out, (ref_h, ref_c) = reference(x, lstm._flat_weights, lengths, None, 2)
    for a, b in zip((out, h, c), (ref_out, ref_h, ref_c)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


@needs_cpu
def test_batch_first_false_and_unbatched():
    torch.manual_seed(2)
    T, B, I, H = 6, 4, 5, 7
    lstm = nn.LSTM(I, H, 1, batch_first=False, bidirectional=True).double()
    ours = BiLSTM.from_torch(lstm)
    assert ours.batch_first is False
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4, 1])
    out, (h, c) = ours(x, lengths)
    ref_out, (ref_h, ref_c) = reference(x, lstm._flat_weights, lengths, None, 1, batch_first=False)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h, ref_h)
    torch.testing.assert_close(c, ref_c)
    x1 = torch.randn(T, I, dtype=torch.float64)
    out1, (h1, c1) = ours(x1)
    ref1, (rh1, rc1) = lstm(x1)
    torch.testing.assert_close(out1, ref1)
    torch.testing.assert_close(h1, rh1)
    torch.testing.assert_close(c1, rc1)


@needs_cpu
def test_gradcheck_tiny():
    torch.manual_seed(3)
    B, T, I, H = 2, 3, 3, 2
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    ws = _weights(I, H, 1, True, seed=3)
    h0 = torch.randn(2, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, B, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 1])

    def f(x, h0, c0, *ws):
        out, (h, c) = bilstm(x, list(ws), lengths, (h0, c0), backend="cpu")
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *ws))


@needs_cpu
def test_double_backward_is_refused_with_a_message():
    m = BiLSTM(4, 3).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="no double backward.*backend='reference'"):
        torch.autograd.grad(m(x)[0].square().sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(m(x)[0].square().sum(), x)  # first order is unaffected
    assert torch.isfinite(g).all()


@needs_cpu
@pytest.mark.parametrize("var", [False, True])
def test_opcheck(var):
    B, T, I, H = 3, 4, 5, 3
    args = (torch.randn(B, T, I), torch.randn(2, 4 * H, I, requires_grad=True),
            torch.randn(2, 4 * H, H, requires_grad=True), torch.randn(2, 4 * H),
            torch.tensor([4, 1, 3]) if var else None, torch.randn(2, B, H), torch.randn(2, B, H),
            True)
    torch.library.opcheck(torch.ops.kdfast.bilstm_layer.default, args)


@needs_cpu
def test_state_dict_round_trip():
    torch.manual_seed(4)
    lstm = nn.LSTM(11, 6, 2, batch_first=True, bidirectional=True, dropout=0.2)
    ours = BiLSTM(11, 6, num_layers=2, dropout=0.2)
    ours.load_state_dict(lstm.state_dict())
    assert list(ours.state_dict()) == list(lstm.state_dict())
    back = nn.LSTM(11, 6, 2, batch_first=True, bidirectional=True, dropout=0.2)
    back.load_state_dict(BiLSTM.from_torch(lstm).state_dict())
    ours.eval(), lstm.eval(), back.eval()
    x = torch.randn(3, 5, 11)
    torch.testing.assert_close(ours(x)[0], lstm(x)[0], rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(back(x)[0], lstm(x)[0])


@needs_cpu
def test_dropout_between_layers():
    torch.manual_seed(5)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    ws = _weights(5, 3, 2, True)
    lengths = torch.tensor([4, 2, 3])
    # p = 1 zeroes the second layer's input: deterministic, comparable with nn.LSTM.
    got = bilstm(x, ws, lengths, num_layers=2, dropout=1.0, training=True, backend="cpu")
    want = reference(x, ws, lengths, None, 2, dropout=1.0, training=True)
    torch.testing.assert_close(got[0], want[0])
    # In eval mode dropout does nothing; in training it changes the output.
    ev = bilstm(x, ws, lengths, num_layers=2, dropout=0.5, training=False, backend="cpu")[0]
    torch.testing.assert_close(ev, reference(x, ws, lengths, None, 2)[0])
    tr = bilstm(x, ws, lengths, num_layers=2, dropout=0.5, training=True, backend="cpu")[0]
    assert not torch.allclose(tr, ev)


@needs_cpu
def test_bf16_runs_through_fp32():
    torch.manual_seed(6)
    x = torch.randn(2, 5, 8)
    ws = [w.detach().float() for w in _weights(8, 4, 1, True)]
    out32 = bilstm(x, ws, backend="cpu")[0]
    out16 = bilstm(x.bfloat16(), [w.bfloat16() for w in ws], backend="cpu")[0]
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, rtol=0.05, atol=0.03)


@needs_cpu
def test_torch_compile():
    torch.manual_seed(8)
    x = torch.randn(3, 4, 5, requires_grad=True)
    ws = [w.detach().float().requires_grad_() for w in _weights(5, 3, 1, True)]

    def f(x, *ws):
        return bilstm(x, list(ws), backend="cpu")[0].sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, *ws), f(x, *ws))
    g1 = torch.autograd.grad(compiled(x, *ws), [x, *ws])
    g2 = torch.autograd.grad(f(x, *ws), [x, *ws])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_reference_backend_is_nn_lstm():
    torch.manual_seed(9)
    lstm = nn.LSTM(4, 3, batch_first=True, bidirectional=True)
    m = BiLSTM.from_torch(lstm)
    m.backend = "reference"
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(m(x)[0], lstm(x)[0])


@pytest.mark.parametrize("make,exc,match", [
    (lambda x, ws: bilstm(x[0, 0], ws), ValueError, "x must be 3-D"),
    (lambda x, ws: bilstm(x[None], ws), ValueError, "x must be 3-D"),
    (lambda x, ws: bilstm(x, ws, torch.tensor([4, 5, 1])), ValueError, r"lengths must lie in \[1, T=4\]"),
    (lambda x, ws: bilstm(x, ws, torch.tensor([4, 0, 1])), ValueError, r"lengths must lie"),
    (lambda x, ws: bilstm(x, ws, torch.tensor([4.0, 2.0, 1.0])), TypeError, "integer dtype"),
    (lambda x, ws: bilstm(x, ws, torch.tensor([4, 2])), ValueError, r"shape \(3,\)"),
    (lambda x, ws: bilstm(x.long(), ws), TypeError, "x must be a floating tensor"),
    (lambda x, ws: bilstm(x.float(), ws), TypeError, "dtype"),
    (lambda x, ws: bilstm(x, ws, torch.tensor([4, 2, 1], device="meta")), ValueError, "lengths is on meta"),
    (lambda x, ws: bilstm(x, ws, hx=(torch.zeros(2, 3, 3, dtype=torch.float64, device="meta"),) * 2),
     ValueError, "is on meta"),
    (lambda x, ws: bilstm(x, ws[:3]), ValueError, "weights must hold 8"),
    (lambda x, ws: bilstm(x, ws, hx=(torch.zeros(2, 2, 3, dtype=torch.float64),) * 2), ValueError,
     r"h_0 must have shape \(2, 3, 3\)"),
    (lambda x, ws: bilstm(x[..., :4], ws), ValueError, r"x must have input_size=5"),
    (lambda x, ws: bilstm(x, ws, backend="fast"), ValueError, "backend must be one of"),
])
def test_bad_input(make, exc, match):
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    ws = [w.detach() for w in _weights(5, 3, 1, True)]
    with pytest.raises(exc, match=match):
        make(x, ws)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_nn_lstm(dtype):
    torch.manual_seed(10)
    B, T, I, H = 7, 13, 19, 37
    x = torch.randn(B, T, I, device="cuda", dtype=torch.float32, requires_grad=True)
    ws = [w.detach().float().cuda().requires_grad_() for w in _weights(I, H, 2, True)]
    lengths = _lengths(B, T, seed=1)
    hx = tuple(torch.randn(4, B, H, device="cuda") for _ in range(2))
    got = _run_and_grads(lambda *a, **k: bilstm(*a, backend="cuda", **k), x, ws, lengths, hx,
                         num_layers=2)
    want = _run_and_grads(reference, x, ws, lengths, hx, num_layers=2)
    tol = {"rtol": 1e-3, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 5e-2, "atol": 5e-2}
    if dtype == torch.float32:
        for a, b in zip(got[:3] + got[3], want[:3] + want[3]):
            torch.testing.assert_close(a, b, **tol)
    else:
        out = bilstm(x.to(dtype), [w.to(dtype) for w in ws], lengths, num_layers=2, backend="cuda")[0]
        torch.testing.assert_close(out.float(), want[0], **tol)
