"""Student networks: a fast bidirectional LSTM."""
from kdfast.nn.bilstm import BiLSTM

__all__ = ["BiLSTM"]
