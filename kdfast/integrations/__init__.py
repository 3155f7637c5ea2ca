"""kdfast and the rest of the ecosystem.

* :mod:`kdfast.integrations.transformers` -- ``DistillationTrainer``: a ``transformers.Trainer``
  that distils a teacher into the student it trains (logit loss with kdfast's fused kernels,
  optional TinyBERT / MiniLM intermediate transfer); needs ``kdfast[trainer]`` (accelerate);
* :mod:`kdfast.integrations.logging` -- ``report_to`` (TensorBoard | wandb | none) for the
  :class:`~kdfast.distill.Distiller` and on-device running sums of loss components.

Nothing is imported here, so ``import kdfast`` never needs transformers' Trainer, accelerate,
TensorBoard or wandb.
"""
