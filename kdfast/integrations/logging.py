"""Scalars people read while training: TensorBoard, Weights & Biases, or nothing.

* :func:`resolve_report_to` -- ``report_to`` (``tensorboard`` | ``wandb`` | ``none``; ``None``
  or ``auto``: TensorBoard when it is installed, else nothing) checked before any work;
* :func:`open_writer` -- a writer with ``log(scalars, step)`` and ``close()``: TensorBoard
  event files under ``<out>/tensorboard``, a wandb run (imported only when asked for; never
  required), or a no-op;
* :class:`DeviceMeans` -- running sums of loss components kept ON the device: adding a value
  costs one device add and no host synchronisation; ``read()`` turns them into host floats
  with ONE transfer, at log points only.

The :class:`~kdfast.distill.Distiller` uses all three; the transformers
:class:`~kdfast.integrations.transformers.DistillationTrainer` uses :class:`DeviceMeans` and
leaves writing to the Trainer's own ``report_to`` callbacks.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REPORT_TO = ("tensorboard", "wandb", "none")
TENSORBOARD_DIR = "tensorboard"

__all__ = ["REPORT_TO", "TENSORBOARD_DIR", "DeviceMeans", "open_writer", "resolve_report_to",
           "tensorboard_available", "wandb_available"]


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


def resolve_report_to(report_to: str | None) -> str:
    """``tensorboard`` | ``wandb`` | ``none``; ``None``/``auto`` -> TensorBoard when installed.
    A backend that is asked for by name but not installed is a ValueError saying what to
    install."""
    if report_to is None or report_to == "auto":
        return "tensorboard" if tensorboard_available() else "none"
    if report_to not in REPORT_TO:
        raise ValueError(f"report_to must be one of {REPORT_TO} (or None/'auto'), got {report_to!r}")
    if report_to == "tensorboard" and not tensorboard_available():
        raise ValueError("report_to='tensorboard' but tensorboard is not installed "
                         "(pip install tensorboard, or kdfast[trainer])")
    if report_to == "wandb" and not wandb_available():
        raise ValueError("report_to='wandb' but wandb is not installed (pip install wandb)")
    return report_to


class _NullWriter:
    kind = "none"
    path = None

    def log(self, scalars: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class _TensorBoardWriter:
    kind = "tensorboard"

    def __init__(self, path: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(path)
        self.writer = SummaryWriter(log_dir=str(self.path))

    def log(self, scalars: dict, step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, float(v), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandbWriter:
    kind = "wandb"

    def __init__(self, out_dir, name, config):
        import wandb  # only here: wandb is never required

        self.path = Path(out_dir) if out_dir else None
        self.run = wandb.init(project="kdfast", name=name, config=config,
                              dir=str(out_dir) if out_dir else None, reinit=True)

    def log(self, scalars: dict, step: int) -> None:
        self.run.log({k: float(v) for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_writer(report_to: str | None, out_dir, *, name: str = "run", config: dict | None = None):
    """A writer for ``report_to`` (see :func:`resolve_report_to`): TensorBoard writes under
    ``out_dir/tensorboard`` (no ``out_dir``: nothing is written)."""
    kind = resolve_report_to(report_to)
    if kind == "tensorboard" and out_dir is not None:
        return _TensorBoardWriter(Path(out_dir) / TENSORBOARD_DIR)
    if kind == "wandb":
        return _WandbWriter(out_dir, name, config)
    return _NullWriter()


class DeviceMeans:
    """Running sums of named scalar tensors on their device (no host sync when adding);
    :meth:`totals` returns them as host floats, in one transfer, and resets."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, values: dict | None, count: bool = True) -> None:
        for k, v in (values or {}).items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        if count:
            self.n += 1

    def __bool__(self) -> bool:
        return bool(self.sums)

    def totals(self, reduce=None) -> dict[str, float]:
        """The raw sums as host floats (``reduce``: a function applied to the stacked sums on
        the device first, e.g. an all-reduce); resets."""
        if not self.sums:
            self.n = 0
            return {}
        keys = list(self.sums)
        stacked = torch.stack([self.sums[k].reshape(()).to(self.sums[keys[0]].device)
                               for k in keys])
        if reduce is not None:
            stacked = reduce(stacked)
        vals = stacked.tolist()  # the one host read
        self.sums, self.n = {}, 0
        return dict(zip(keys, vals))
