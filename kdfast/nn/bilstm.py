"""kdfast.nn.BiLSTM: a bidirectional LSTM backed by kdfast's fused kernels.

``BiLSTM(input_size, hidden_size, num_layers=1, batch_first=True, dropout=0.0, bias=True)``
and ``forward(x, lengths=None, hx=None) -> (output, (h_n, c_n))`` (or nn.LSTM's
``forward(x, (h_0, c_0))``) with the shapes, parameter names and semantics of
``nn.LSTM(bidirectional=True)`` (it is a subclass, so state dicts load both ways).
``lengths`` ([B] ints) gives variable-length rows without packing: the numbers of nn.LSTM on a
PackedSequence, zeros at padded positions, and nothing at a padded position (NaN included)
reaches a result or a gradient. The work is done by
:func:`kdfast.ops.bilstm` (set ``module.backend`` to force a backend; default ``"auto"``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from kdfast.ops.bilstm import bilstm


class BiLSTM(nn.LSTM):
    def __init__(self, input_size, hidden_size, num_layers=1, batch_first=True, dropout=0.0,
                 bias=True):
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=True)
        self.backend = "auto"

    @classmethod
    def from_torch(cls, lstm: nn.LSTM) -> BiLSTM:
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"BiLSTM.from_torch needs an nn.LSTM, got {type(lstm).__name__}")
        if not lstm.bidirectional or getattr(lstm, "proj_size", 0):
            raise ValueError("BiLSTM.from_torch needs an nn.LSTM with bidirectional=True and no proj_size")
        out = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first,
                  lstm.dropout, lstm.bias)
        p = next(lstm.parameters())
        out = out.to(device=p.device, dtype=p.dtype)
        out.load_state_dict(lstm.state_dict())
        return out

    def forward(self, x, *args, lengths=None, hx=None):
        """``(output, (h_n, c_n))``. Call it as ``m(x, lengths)``, ``m(x, lengths, hx)``,
        ``m(x, lengths=..., hx=...)`` or nn.LSTM-style ``m(x, (h_0, c_0))`` (optionally with
        ``lengths=``): a pair of tensors in the second position is the initial state, never
        lengths (lengths are 1-D, h_0 and c_0 at least 2-D)."""
        if len(args) > 2:
            raise TypeError(f"BiLSTM.forward takes x, lengths and hx, got {1 + len(args)} "
                            "positional arguments")
        args = list(args)
        if args and _is_state(args[0]):  # nn.LSTM's forward(input, hx)
            if len(args) > 1:
                raise TypeError("BiLSTM.forward(x, (h_0, c_0), ...): pass lengths as lengths=")
            if hx is not None:
                raise TypeError("hx given twice: as the second positional argument and as hx=")
            hx = args.pop(0)
        else:
            if args:
                if lengths is not None:
                    raise TypeError("lengths given twice: positionally and as lengths=")
                lengths = args.pop(0)
            if args:
                if hx is not None:
                    raise TypeError("hx given twice: positionally and as hx=")
                hx = args.pop(0)
        if isinstance(x, PackedSequence):  # nn.LSTM's own packed path, for drop-in use
            if lengths is not None:
                raise ValueError("lengths cannot be combined with a PackedSequence input")
            return super().forward(x, hx)
        return bilstm(x, self._flat_weights, lengths, hx, num_layers=self.num_layers,
                      bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
                      training=self.training, backend=self.backend)


def _is_state(value) -> bool:
    """A (h_0, c_0) pair: two tensors of at least 2 dims (lengths are 1-D)."""
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, torch.Tensor) and v.dim() >= 2 for v in value))
