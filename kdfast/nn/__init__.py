"""Student networks: a fast bidirectional LSTM and the Tang/SRA students built on it."""
from kdfast.nn.bilstm import BiLSTM
from kdfast.nn.students import (
    BiLSTMClassifier,
    BiLSTMEncoder,
    SiameseBiLSTMClassifier,
    SRAEncoder,
    load_student,
)

__all__ = ["BiLSTM", "BiLSTMClassifier", "BiLSTMEncoder", "SiameseBiLSTMClassifier", "SRAEncoder",
           "load_student"]
