"""Extract-then-Distill (Chen et al. 2021): score a teacher's units, extract a smaller BERT.

>>> imp = kdfast.etd.importance(teacher, batches)          # one fwd+bwd per batch
>>> student = kdfast.etd.extract(teacher, num_layers=3, hidden_size=192, num_heads=6,
...                              intermediate_size=768, importance=imp)
"""
from kdfast.etd.extract import extract, select_units
from kdfast.etd.importance import Importance, MaskedProxyLoss, importance

__all__ = ["Importance", "MaskedProxyLoss", "extract", "importance", "select_units"]
