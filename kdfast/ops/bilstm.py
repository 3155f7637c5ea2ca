"""The bidirectional LSTM op family: registration, autograd, argument checks, backend choice.

``bilstm(x, weights, lengths=None, hx=None, *, num_layers=1, bias=True, batch_first=True,
dropout=0.0, training=False, backend="auto") -> (output, (h_n, c_n))`` has the semantics of
``torch.nn.LSTM(bidirectional=True)`` with the flat parameter list ``weights``
(``nn.LSTM._flat_weights`` order: per layer, per direction ``w_ih, w_hh[, b_ih, b_hh]``).
``lengths`` ([B] ints, on the CPU or x's device) gives variable-length rows without packing:
the numbers of nn.LSTM on a PackedSequence, zeros at padded positions.

The compiled op ``torch.ops.kdfast.bilstm_layer`` runs one layer (both directions); layers and
the dropout between them are composed here. Its autograd formula calls
``torch.ops.kdfast.bilstm_layer_backward``. bf16/fp16 run through fp32 on the CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdfast import _ext
from kdfast.ops import _backend, _checks
from kdfast.reference.bilstm import bilstm as _reference

# No Triton BiLSTM: the CUDA C++ kernel or the reference (which is cuDNN on a GPU).
_PREFERENCE = {"cuda": ("cuda", "reference"), "cpu": ("cpu", "reference")}


def _layer_fake(x, w_ih, w_hh, bias, lengths, h0, c0, train):
    B, T = x.shape[0], x.shape[1]
    H = w_hh.shape[-1]
    # Cell states are kept in fp32 for half inputs (the CUDA kernel's state precision).
    cdt = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    gates = x.new_empty(B, T, 8 * H) if train else x.new_empty(0)
    cells = x.new_empty(B, T, 2 * H, dtype=cdt) if train else x.new_empty(0, dtype=cdt)
    return x.new_empty(B, T, 2 * H), x.new_empty(2, B, H), x.new_empty(2, B, H), gates, cells


def _layer_backward_fake(grad_out, grad_hn, grad_cn, x, w_ih, w_hh, lengths, h0, c0, out, gates,
                         cells, need_dx, need_dbias):
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    db = w_ih.new_empty(2, w_ih.shape[1]) if need_dbias else x.new_empty(0)
    return (dx, torch.empty_like(w_ih), torch.empty_like(w_hh), db, torch.empty_like(h0),
            torch.empty_like(c0))


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, bias, lengths, h0, c0, _train = inputs
    out, _hn, _cn, gates, cells = output
    ctx.mark_non_differentiable(gates, cells)
    # Unused outputs get None, not zero tensors: autograd would otherwise fill a zero
    # gradient for gates and cells ([B, T, 10H], 5 % of a Tang-shape training step).
    ctx.set_materialize_grads(False)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, w_ih, w_hh, lengths, h0, c0, out, gates, cells)


def _valid(lengths, T, device):
    """[B, T, 1] bool: True at each row's real positions (t < lengths[b])."""
    return (torch.arange(T, device=device)[None, :] < lengths.to(device)[:, None]).unsqueeze(-1)


def _backward(ctx, g_out, g_hn, g_cn, _g_gates, _g_cells):
    if torch.is_grad_enabled():  # create_graph=True: the backward kernel is not differentiable
        raise RuntimeError("kdfast's BiLSTM kernels have no double backward (create_graph=True, "
                           "gradgradcheck): run the BiLSTM with backend='reference' for that")
    x, w_ih, w_hh, lengths, h0, c0, out, gates, cells = ctx.saved_tensors
    if g_out is None:
        g_out = torch.zeros_like(out)
    elif lengths is not None:
        # Outputs at padded positions are constant zeros: whatever gradient arrives there
        # (NaN included) must not reach the kernel's sums. torch.where, not a multiply.
        g_out = torch.where(_valid(lengths, out.shape[1], out.device), g_out, 0)
    g_hn = torch.zeros_like(h0) if g_hn is None else g_hn
    g_cn = torch.zeros_like(c0) if g_cn is None else g_cn
    need_dx = ctx.needs_input_grad[0]
    need_db = ctx.has_bias and ctx.needs_input_grad[3]
    dx, dw_ih, dw_hh, db, dh0, dc0 = torch.ops.kdfast.bilstm_layer_backward(
        g_out, g_hn, g_cn, x, w_ih, w_hh, lengths, h0, c0, out, gates, cells, need_dx, need_db)
    return (dx if need_dx else None, dw_ih, dw_hh, db if need_db else None, None, dh0, dc0, None)


if _ext.has_op("bilstm_layer"):
    torch.library.register_fake("kdfast::bilstm_layer")(_layer_fake)
    torch.library.register_fake("kdfast::bilstm_layer_backward")(_layer_backward_fake)
    torch.library.register_autograd("kdfast::bilstm_layer", _backward,
                                    setup_context=_setup_context)


def _check(x, weights, lengths, hx, num_layers, bias, batch_first, dropout):
    """Validates the user's arguments before any kernel runs.

    Returns (weights as a list, lengths as an int tensor or None, padded): ``padded`` is True
    when some row is shorter than T (its padded positions must then be masked)."""
    _checks.tensor("x", x)
    if x.dim() not in (2, 3):
        raise ValueError(
            f"x must be 3-D ({'[B, T, I]' if batch_first else '[T, B, I]'}) or 2-D unbatched "
            f"[T, I], got shape {tuple(x.shape)}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    for name, flag in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
    if isinstance(weights, torch.Tensor) or not hasattr(weights, "__iter__"):
        raise TypeError(f"weights must be a list of tensors, got {type(weights).__name__}")
    weights = list(weights)
    per_dir = 4 if bias else 2
    if len(weights) != 2 * num_layers * per_dir:
        raise ValueError(f"weights must hold {2 * num_layers * per_dir} tensors for "
                         f"num_layers={num_layers}, bias={bias}, got {len(weights)}")
    for k, w in enumerate(weights):
        _checks.tensor(f"weights[{k}]", w)
        _checks.same(f"weights[{k}]", w, "x", x, shape=False)
    if weights[0].dim() != 2 or weights[1].dim() != 2:
        raise ValueError(f"weights[0] and weights[1] must be 2-D (w_ih, w_hh), got shapes "
                         f"{tuple(weights[0].shape)} and {tuple(weights[1].shape)}")
    hidden = weights[1].shape[-1]
    in_size = weights[0].shape[-1]
    if x.shape[-1] != in_size:
        raise ValueError(f"x must have input_size={in_size} features in its last dim (the "
                         f"width of weights[0]), got shape {tuple(x.shape)}")
    if hidden < 1:
        raise ValueError("hidden size must be >= 1, got weights[1] of shape "
                         f"{tuple(weights[1].shape)}")
    for k, w in enumerate(weights):
        layer, kind = divmod(k, per_dir)
        layer //= 2
        want = {0: (4 * hidden, in_size if layer == 0 else 2 * hidden), 1: (4 * hidden, hidden),
                2: (4 * hidden,), 3: (4 * hidden,)}[kind]
        if tuple(w.shape) != want:
            raise ValueError(f"weights[{k}] must have shape {want}, got {tuple(w.shape)}")
    T = x.shape[0] if (x.dim() == 2 or not batch_first) else x.shape[1]
    B = 1 if x.dim() == 2 else (x.shape[0] if batch_first else x.shape[1])
    if B < 1 or T < 1:
        raise ValueError(f"x must have at least one row and one timestep, got {tuple(x.shape)}")
    padded = False
    if lengths is not None:
        if x.dim() == 2:
            raise ValueError("lengths needs batched (3-D) x; unbatched x [T, I] is one full row")
        if not isinstance(lengths, torch.Tensor):
            try:
                lengths = torch.as_tensor(lengths)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError("lengths must be an int tensor [B] (or a list of ints) or None, "
                                f"got {type(lengths).__name__}") from None
        # B is x's batch size whatever the layout: a [B]-shaped view of it stands in for x
        rows = x if batch_first else x.transpose(0, 1)
        padded = _checks.row_lengths("lengths", lengths, "x", rows, T) < T
    if hx is not None:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx must be a tuple (h_0, c_0) or None, got {type(hx).__name__}")
        want = (2 * num_layers, hidden) if x.dim() == 2 else (2 * num_layers, B, hidden)
        for name, s in zip(("h_0", "c_0"), hx):
            _checks.tensor(f"hx {name}", s)
            _checks.same(f"hx {name}", s, "x", x, shape=False)
            if tuple(s.shape) != want:
                raise ValueError(f"hx {name} must have shape {want}, got {tuple(s.shape)}")
    return weights, lengths, padded


def bilstm(x, weights, lengths=None, hx=None, *, num_layers: int = 1, bias: bool = True,
           batch_first: bool = True, dropout: float = 0.0, training: bool = False,
           backend: str = "auto"):
    """Bidirectional LSTM, ``(output, (h_n, c_n))`` as ``nn.LSTM(bidirectional=True)``."""
    weights, lengths, padded = _check(x, weights, lengths, hx, num_layers, bias, batch_first,
                                      dropout)
    # The shared rule: KDFAST_BACKEND=triton (no Triton BiLSTM) falls back to the auto pick.
    name = _backend.resolve(backend, x.device, _PREFERENCE, family="bilstm")
    if name == "reference":
        return _reference(x, weights, lengths, hx, num_layers, bias, batch_first, dropout,
                          training)
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(0)
        hx = None if hx is None else tuple(s.unsqueeze(1) for s in hx)
    elif not batch_first:
        x = x.transpose(0, 1)
    if padded:
        # Positions past a row's length never touch a result or a gradient: the kernels read
        # the whole [B, T, I] block (the input GEMM, and x^T dgates for dW_ih), where a NaN
        # or inf at a padded position would leak through 0 * NaN. torch.where (not a multiply)
        # also gives x a zero gradient there, as nn.LSTM on a PackedSequence does.
        x = torch.where(_valid(lengths, x.shape[1], x.device), x, 0)
    dtype = x.dtype
    # The CPU kernel computes in fp32 or fp64; half types go through fp32 there.
    work = torch.float32 if (x.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)) else dtype
    x = x.to(work).contiguous()
    weights = [w.to(work) for w in weights]
    B, H = x.shape[0], weights[1].shape[-1]
    if hx is None:
        zeros = x.new_zeros(2 * num_layers, B, H)
        hx = (zeros, zeros)
    h_all, c_all = (s.to(work) for s in hx)
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int64)
    per_dir = 4 if bias else 2
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or h_all.requires_grad or c_all.requires_grad
        or any(w.requires_grad for w in weights))
    inp, hs, cs = x, [], []
    for layer in range(num_layers):
        fw = weights[(2 * layer) * per_dir:(2 * layer + 1) * per_dir]
        bw = weights[(2 * layer + 1) * per_dir:(2 * layer + 2) * per_dir]
        w_ih = torch.stack((fw[0], bw[0]))
        w_hh = torch.stack((fw[1], bw[1]))
        b = torch.stack((fw[2] + fw[3], bw[2] + bw[3])) if bias else None
        sl = slice(2 * layer, 2 * layer + 2)
        out, hn, cn, _, _ = torch.ops.kdfast.bilstm_layer(
            inp, w_ih, w_hh, b, lengths, h_all[sl], c_all[sl], needs_grad)
        hs.append(hn)
        cs.append(cn)
        if dropout > 0 and training and layer < num_layers - 1:
            out = F.dropout(out, float(dropout), True)
        inp = out
    out = inp.to(dtype)
    h_n, c_n = torch.cat(hs).to(dtype), torch.cat(cs).to(dtype)
    if unbatched:
        return out.squeeze(0), (h_n.squeeze(1), c_n.squeeze(1))
    if not batch_first:
        out = out.transpose(0, 1)
    return out, (h_n, c_n)
