"""Recipes and the training loop: :class:`Distiller` (a plain PyTorch loop usable as a
library), :func:`finetune` (teacher head), :func:`tang` (Tang et al. 2019) and :func:`sra`
(Wu et al. 2020), :func:`tinybert` (general and task distillation) and :func:`etd`
(Extract-then-Distill); :func:`load_student` reloads a trained BiLSTM student in one call."""
from kdfast.distill.etd_recipe import etd
from kdfast.distill.recipes import finetune, sra, tang, transfer_set
from kdfast.distill.tinybert import general_distill, task_distill, tinybert
from kdfast.distill.trainer import Distiller, TrainConfig
from kdfast.nn.students import load_student

__all__ = ["Distiller", "TrainConfig", "etd", "finetune", "general_distill", "load_student", "sra",
           "tang", "task_distill", "tinybert", "transfer_set"]
