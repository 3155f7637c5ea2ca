"""Distillation: losses as objects, one training loop, one recipe per paper.

* :mod:`kdfast.distill.objectives` -- the losses; each declares the teacher outputs it needs
* :mod:`kdfast.distill.trainer`    -- :class:`Distiller` (restore / step / evaluate /
  checkpoint) and :class:`TrainConfig`
* :mod:`kdfast.distill.finetune`   -- :func:`finetune`: the teacher's task head
* :mod:`kdfast.distill.tang`       -- :func:`tang` (Tang et al. 2019): BERT -> BiLSTM
* :mod:`kdfast.distill.sra`        -- :func:`sra` (Wu et al. 2020): sentence-vector pre-training
* :mod:`kdfast.distill.tinybert`   -- :func:`tinybert`, :func:`general_distill`,
  :func:`task_distill` (Jiao et al.)
* :mod:`kdfast.distill.etd`        -- :func:`etd` (Chen et al. 2021): extract, then distil
* :mod:`kdfast.distill.plumbing`   -- what the recipes share (task, teacher, sentences, results)
* :mod:`kdfast.distill.outputs`    -- output-directory rules, atomic writes, checked loads
* :mod:`kdfast.distill.report`     -- results.json, report.md, loss_curve.png

The recipe modules share their main function's name, which this package re-exports: import
their other members with ``from kdfast.distill.tang import transfer_set`` (the attribute
``kdfast.distill.tang`` is the function).
"""
from kdfast.distill.etd import etd
from kdfast.distill.finetune import finetune
from kdfast.distill.objectives import (
    HardLabelLoss,
    LogitLoss,
    MiniLMLoss,
    SentenceVectorLoss,
    TinyBERTLoss,
)
from kdfast.distill.sra import sra
from kdfast.distill.tang import tang, transfer_set
from kdfast.distill.tinybert import general_distill, task_distill, tinybert
from kdfast.distill.trainer import Distiller, TrainConfig
from kdfast.nn.students import load_student

__all__ = ["Distiller", "HardLabelLoss", "LogitLoss", "MiniLMLoss", "SentenceVectorLoss",
           "TinyBERTLoss", "TrainConfig", "etd", "finetune", "general_distill", "load_student",
           "sra", "tang", "task_distill", "tinybert", "transfer_set"]
