"""Recipes and the training loop: :class:`Distiller` (a plain PyTorch loop usable as a
library), :func:`finetune` (teacher head), :func:`tang` (Tang et al. 2019) and :func:`sra`
(Wu et al. 2020); :func:`load_student` reloads a trained student in one call."""
from kdfast.distill.recipes import finetune, sra, tang, transfer_set
from kdfast.distill.trainer import Distiller, TrainConfig
from kdfast.nn.students import load_student

__all__ = ["Distiller", "TrainConfig", "finetune", "load_student", "sra", "tang", "transfer_set"]
