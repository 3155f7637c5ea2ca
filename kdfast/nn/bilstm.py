"""kdfast.nn.BiLSTM -- interim version backed by torch.nn.LSTM (the reference).

The API is final: ``BiLSTM(input_size, hidden_size, num_layers=1, batch_first=True,
dropout=0.0, bias=True)`` and ``forward(x, lengths=None, hx=None) -> (output, (h_n, c_n))``
with the shapes, parameter names and semantics of ``nn.LSTM(bidirectional=True)``;
``lengths`` gives variable-length sequences without packing (zeros at padded positions).
The fused kernels replace the body of ``forward``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BiLSTM(nn.LSTM):
    def __init__(self, input_size, hidden_size, num_layers=1, batch_first=True, dropout=0.0,
                 bias=True):
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=True)

    @classmethod
    def from_torch(cls, lstm: nn.LSTM) -> "BiLSTM":
        out = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first,
                  lstm.dropout, lstm.bias)
        out.load_state_dict(lstm.state_dict())
        return out.to(next(lstm.parameters()).device)

    def forward(self, x, lengths=None, hx=None):
        if lengths is None:
            return super().forward(x, hx)
        total = x.shape[1] if self.batch_first else x.shape[0]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=self.batch_first,
                                      enforce_sorted=False)
        out, state = super().forward(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=total)
        return out, state
