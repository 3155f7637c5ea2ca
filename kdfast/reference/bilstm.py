"""Reference for the bidirectional LSTM (``kdfast.ops.bilstm``): torch.nn.LSTM itself.

``bilstm(x, weights, lengths, hx, num_layers, bias, batch_first, dropout, training)`` returns
``(output, (h_n, c_n))`` exactly as ``nn.LSTM(bidirectional=True)`` with the flat parameter
list ``weights`` (``nn.LSTM._flat_weights`` order: per layer, per direction
``w_ih, w_hh[, b_ih, b_hh]``). With ``lengths`` ([B] ints) the input runs as a
PackedSequence: outputs at padded positions are zero, the reverse direction starts at each
row's own last token and h_n/c_n are each row's state at its own end; nothing at a padded
position reaches a result or a gradient. Unbatched ``x`` [T, I] (``hx`` [2 * num_layers, H])
runs as one row, as in nn.LSTM.
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def bilstm(x, weights, lengths=None, hx=None, num_layers=1, bias=True, batch_first=True,
           dropout=0.0, training=False):
    weights = list(weights)
    if x.dim() == 2:  # unbatched [T, I] (hx [2 * num_layers, H]): one row, as nn.LSTM
        hx = None if hx is None else tuple(s.unsqueeze(1) for s in hx)
        out, (h, c) = bilstm(x.unsqueeze(0), weights, None, hx, num_layers, bias, True,
                             dropout, training)
        return out.squeeze(0), (h.squeeze(1), c.squeeze(1))
    hidden = weights[1].shape[1]
    batch = x.shape[0] if batch_first else x.shape[1]
    if hx is None:
        zeros = x.new_zeros(2 * num_layers, batch, hidden)
        hx = (zeros, zeros)
    if lengths is None:
        # torch._VF.lstm is the kernel nn.LSTM.forward calls.
        out, h, c = torch._VF.lstm(x, tuple(hx), weights, bias, num_layers, float(dropout),
                                   training, True, batch_first)
        return out, (h, c)
    total = x.shape[1] if batch_first else x.shape[0]
    packed = pack_padded_sequence(x, torch.as_tensor(lengths).cpu(), batch_first=batch_first,
                                  enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    h0, c0 = (s.index_select(1, order) for s in hx)
    data, h, c = torch._VF.lstm(packed.data, packed.batch_sizes, (h0, c0), weights, bias,
                                num_layers, float(dropout), training, True)
    out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, unorder),
                                 batch_first=batch_first, total_length=total)
    return out, (h.index_select(1, unorder), c.index_select(1, unorder))
