"""The training loop under every recipe: a plain PyTorch loop, usable as a library.

>>> d = Distiller(teacher, student, LogitLoss("mse"), train_data=examples,
...               dev_data=dev_examples, out_dir="runs/x", epochs=3, batch_size=50)
>>> results = d.train()

Data are lists of example dicts (:mod:`kdfast.data.tokenize`); models expose
``forward_batch(batch)`` (kdfast's students and teachers do). ``loss`` is a loss object from
:mod:`kdfast.distill.objectives` (it declares the teacher outputs it ``needs``; they come from
cached ``t_logits``/``t_vec`` in the examples or from one teacher forward per batch), one of
the names :func:`~kdfast.distill.objectives.make_loss` knows (``ce``, ``mse``, ``kl``,
``soft_ce`` with ``alpha``/``temperature`` from the config, ``sra-mse``, ``sra-cosine``), or
any callable ``loss(student_out, batch, teacher_out)`` (``teacher_out`` is then the
teacher's ``forward_batch(batch)``).

:meth:`Distiller.train` is :meth:`~Distiller.restore`, then per batch :meth:`~Distiller.step`,
:meth:`~Distiller.evaluate_dev` when due and :meth:`~Distiller.checkpoint` when due:
* one permutation per epoch, seeded by ``seed`` and the epoch, regrouped into batches of
  similar length (``group_by_length``, default on: about half the padding work of random
  batches); checkpoints (``out_dir/checkpoint/last.pt``,
  written atomically) hold model, optimiser, scheduler, RNG states, step and the position in
  the epoch, so ``resume=True`` continues exactly where the last checkpoint left off;
* DDP under ``torchrun`` (gloo on CPU, nccl on GPU): each global batch of ``batch_size``
  examples is split across ranks and gradients are averaged with one flat all-reduce per
  step, each rank's loss weighted by its share, so 2 processes match 1 with the same global
  batch; every rank evaluates the whole dev set, so early-stopping decisions agree;
* bf16 autocast on a GPU (``amp="auto"``), none on a CPU;
* dev evaluation every ``eval_every`` steps (default: each epoch) with the task metric,
  early stopping after ``patience`` evaluations without improvement, the best student kept;
* outputs in ``out_dir`` (rank 0, atomically): ``student/`` (config + weights + tokenizer:
  ``load_student``), ``results.json``, ``report.md``, ``loss_curve.png``;
* scalars while training (``report_to``: ``tensorboard`` | ``wandb`` | ``none``; default
  TensorBoard when installed, event files in ``out_dir/tensorboard``): every ``log_every``
  steps the mean loss and each loss component the loss object exposes in its
  ``components`` dict (TinyBERT: attention, hidden, prediction; hard CE where used), the
  learning rate and examples/s; the dev metric(s) at every evaluation. Losses and components
  are summed on the device and read at log points only: no host sync per step.

The output directory follows :mod:`kdfast.distill.outputs` (an existing one is refused
without ``overwrite``/``resume``; ``overwrite`` clears only a kdfast directory; ``resume``
needs a checkpoint). ``stage=True``: ``out_dir`` is a stage inside a recipe's directory that
the recipe already checked; it is used as it is (and, with ``resume``, continued from its
checkpoint if it has one).
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from kdfast.data import metrics as M
from kdfast.data.tokenize import (collate, example_length, in_example_order, inference_batches,
                                  length_grouped, to_device)
from kdfast.distill import outputs
from kdfast.distill.checks import (check_choice, check_positive, check_positive_int,
                                   check_probability)
from kdfast.distill.objectives import LOSSES, make_loss
from kdfast.integrations.logging import DeviceMeans, open_writer, resolve_report_to

OPTIMIZERS = ("adadelta", "adam", "adamw", "sgd")
SCHEDULERS = ("constant", "linear")
CACHED = {"logits": "t_logits", "vector": "t_vec"}  # teacher output -> cached example field

__all__ = ["Distiller", "LOSSES", "OPTIMIZERS", "SCHEDULERS", "TrainConfig", "TrainState",
           "init_distributed", "is_rank0", "torch_device"]


def torch_device(name=None) -> torch.device:
    """``name``'s device; by default the GPU when there is one (the one place that decides)."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


@dataclass
class TrainConfig:
    epochs: float = 3
    max_steps: int | None = None  # overrides epochs (and min_steps)
    min_steps: int | None = None  # a floor on the steps that epochs give: small data still trains
    batch_size: int = 50
    group_by_length: bool = True  # batches of similar length (less padding; length_grouped)
    optimizer: str = "adadelta"
    lr: float = 1.0
    rho: float = 0.95  # AdaDelta (Tang et al.)
    weight_decay: float = 0.0
    scheduler: str = "constant"
    warmup: float = 0.0  # fraction of the steps
    grad_clip: float | None = None
    alpha: float = 0.0  # for the loss names mse / kl / soft_ce
    temperature: float = 1.0  # likewise
    metric: str | None = None  # None: the task's (recipes), else accuracy
    eval_every: int | None = None  # steps; None: once per epoch
    eval_batch_size: int = 256
    patience: int | None = None
    checkpoint_every: int | None = None  # steps; the end of each epoch always checkpoints
    log_every: int = 10
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on GPU) | bf16 | off
    progress: bool = True
    device: str | None = None
    report_to: str | None = None  # tensorboard | wandb | none; None/auto: tensorboard if installed

    @classmethod
    def build(cls, *option_dicts, base: "TrainConfig | None" = None) -> "TrainConfig":
        """A validated config from ``base`` (default: the defaults) updated by each dict in
        turn; unknown keys are a TypeError naming them."""
        known = {f.name for f in fields(cls)}
        merged = asdict(base) if base is not None else {}
        for opts in option_dicts:
            bad = sorted(set(opts or {}) - known)
            if bad:
                raise TypeError(f"unknown training option(s) {bad}; known: {sorted(known)}")
            merged.update(opts or {})
        cfg = cls(**merged)
        cfg.validate()
        return cfg

    def validate(self):
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        if not isinstance(self.group_by_length, bool):
            raise TypeError(f"group_by_length must be a bool, got {self.group_by_length!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("eval_batch_size", self.eval_batch_size)
        check_positive_int("log_every", self.log_every)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) \
                or not 0 < self.epochs < math.inf:
            raise ValueError(f"epochs must be a finite number > 0 (max_steps, when given, stops "
                             f"earlier), got {self.epochs!r}")
        check_positive_int("max_steps", self.max_steps, none_ok=True)
        check_positive_int("min_steps", self.min_steps, none_ok=True)
        check_positive_int("eval_every", self.eval_every, none_ok=True)
        if self.patience is not None and (isinstance(self.patience, bool) or
                                          not isinstance(self.patience, int) or self.patience < 0):
            raise ValueError(f"patience must be an int >= 0 (0: no early stopping) or None, got "
                             f"{self.patience!r}")
        check_positive_int("checkpoint_every", self.checkpoint_every, none_ok=True)
        check_probability("alpha", self.alpha)
        check_positive("temperature", self.temperature)
        check_positive("lr", self.lr)
        if not 0.0 < self.rho <= 1.0:
            raise ValueError(f"rho must lie in (0, 1], got {self.rho}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must lie in [0, 1) (a fraction of the steps), got {self.warmup}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ValueError(f"grad_clip must be a finite number > 0, got {self.grad_clip}")
        if self.metric is not None and self.metric not in M.METRICS:
            raise ValueError(f"metric must be one of {M.METRICS}, got {self.metric!r}")
        resolve_report_to(self.report_to)  # a named backend that is not installed: error now
        if self.device is not None and str(self.device).split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        return self


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""
    step: int = 0
    epoch: int = 0
    pos: int = 0  # batches done in the current epoch
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    history: list = field(default_factory=list)  # (step, mean loss since the last log)
    evals: list = field(default_factory=list)  # (step, dev scores)
    train_time: float = 0.0
    examples: int = 0
    loss_sum: object = 0.0  # running sum on the device: no host sync between log points
    loss_n: int = 0


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_distributed(device_type: str = "cpu"):
    """Join the process group that ``torchrun`` describes in the environment (no-op without)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return _dist()


def is_rank0() -> bool:
    """Whether this process writes outputs: rank 0 of the process group, or, before the group
    is joined, of the one torchrun describes (``RANK``); True without torchrun. Asking never
    joins a group, so its backend follows the device that trains (``--device cpu`` on a GPU
    host: gloo)."""
    d = _dist()
    return int(os.environ.get("RANK", "0")) == 0 if d is None else d.get_rank() == 0


def _rng_state():
    s = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class Distiller:
    """See the module docstring. ``teacher`` may be None (hard labels, or cached teacher
    outputs in the examples). ``meta``: extra entries for ``results.json``."""

    def __init__(self, teacher, student, loss="mse", *, train_data, dev_data=None,
                 test_data=None, out_dir=None, tokenizer=None, overwrite: bool = False,
                 resume: bool = False, stage: bool = False, callbacks=(), name: str = "student",
                 config: TrainConfig | None = None, meta: dict | None = None, **options):
        self.cfg = cfg = TrainConfig.build(options, base=config)
        self.loss = make_loss(loss, alpha=cfg.alpha, temperature=cfg.temperature)
        if not train_data:
            raise ValueError("train_data is empty")
        if not hasattr(student, "forward_batch"):
            raise TypeError("student must have forward_batch(batch) (kdfast students do)")
        self.name, self.meta = name, dict(meta or {})
        self.teacher, self.student = teacher, student
        self.train_data, self.dev_data, self.test_data = train_data, dev_data, test_data
        self._lengths = None  # example lengths for group_by_length, computed once
        self.tokenizer, self.callbacks = tokenizer, list(callbacks)
        self._check_data()
        self.device = torch_device(cfg.device)
        self.dist = init_distributed(self.device.type)
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        if self.device.type == "cuda" and self.dist:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.out_dir = Path(out_dir) if out_dir else None
        self.resume = resume
        if self.out_dir is not None and self.rank == 0:
            if stage:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            else:
                outputs.prepare_output_dir(self.out_dir, overwrite=overwrite, resume=resume)
        self.report_to = resolve_report_to(cfg.report_to)
        self.writer = None  # opened by train() on rank 0
        self._components = DeviceMeans()
        self.state = TrainState()
        self.best_state = None
        self.opt = self.sched = None

    @property
    def metric(self) -> str:
        return self.cfg.metric or "accuracy"

    @property
    def loss_name(self) -> str:
        return getattr(self.loss, "name", None) or "custom"

    # ---------------------------------------------------------------- checks and setup
    def _check_data(self):
        first = self.train_data[0]
        needs = getattr(self.loss, "needs", None)
        if getattr(self.loss, "needs_labels", False) and "label" not in first:
            extra = f" with alpha={self.loss.alpha}" if hasattr(self.loss, "alpha") else ""
            raise ValueError(f"loss {self.loss_name!r}{extra} needs labels in the training "
                             "examples")
        for need in sorted(needs or ()):
            if self.teacher is None and CACHED.get(need) not in first:
                what = {"logits": "teacher logits", "vector": "the teacher's sentence vectors"}
                raise ValueError(f"loss {self.loss_name!r} needs {what.get(need, need)}: pass a "
                                 f"teacher" + (f" or examples with cached {CACHED[need]}"
                                               if need in CACHED else ""))
        num_labels = getattr(self.student, "num_labels", None)
        for split, data in (("train", self.train_data), ("dev", self.dev_data), ("test", self.test_data)):
            if not data or "label" not in data[0] or not num_labels or num_labels < 2:
                continue
            for ex in data:
                if split == "train" and ex["label"] == -100:  # no label: the teacher's alone
                    continue
                if not 0 <= ex["label"] < num_labels:
                    raise ValueError(f"{split} label {ex['label']} out of range [0, {num_labels})")
        vocab = getattr(getattr(self.student, "encoder", None), "vocab_size", None)
        if vocab is not None:
            top = max(max(ex["s_ids"]) for ex in self.train_data if "s_ids" in ex)
            if top >= vocab:
                raise ValueError(f"token id {top} in the training data is outside the student's "
                                 f"vocabulary ({vocab}): teacher/student vocabulary mismatch")
        if "t_logits" in first and num_labels and len(first["t_logits"]) != num_labels:
            raise ValueError(f"teacher logits have {len(first['t_logits'])} classes but the "
                             f"student has {num_labels}")

    def _steps_per_epoch(self):
        n = len(self.train_data) // self.cfg.batch_size
        rest = len(self.train_data) % self.cfg.batch_size
        return n + (1 if rest >= self.world else 0)  # a tail smaller than the world is dropped

    def _total_steps(self):
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        return max(1, math.ceil(self.cfg.epochs * self._steps_per_epoch()), self.cfg.min_steps or 0)

    def _make_optimizer(self):
        params = [p for p in self.student.parameters() if p.requires_grad]
        c = self.cfg
        if c.optimizer == "adadelta":
            return torch.optim.Adadelta(params, lr=c.lr, rho=c.rho, weight_decay=c.weight_decay)
        if c.optimizer in ("adam", "adamw"):
            # The fused kernel: the same update, one pass over the parameters. The default
            # per-tensor loop took 5-10x longer on a CPU (benchmarks/results/optimizer-cpu-avx2.md).
            fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
            adam = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
            return adam(params, lr=c.lr, weight_decay=c.weight_decay, fused=fused or None)
        return torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay)

    def _make_scheduler(self, opt, total):
        warm = int(self.cfg.warmup * total)

        def factor(step):
            if self.cfg.scheduler == "constant":
                return min(1.0, (step + 1) / warm) if warm else 1.0
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def setup(self) -> None:
        """Seeds, devices, optimiser and scheduler for a fresh run (``train`` calls it)."""
        c = self.cfg
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed)
        self.student.to(self.device).train()
        if self.teacher is not None:
            self.teacher.to(self.device).eval()
        if self.dist:  # every rank starts from rank 0's weights
            for p in self.student.state_dict().values():
                self.dist.broadcast(p, 0)
        self.total = self._total_steps()
        self.opt = self._make_optimizer()
        self.sched = self._make_scheduler(self.opt, self.total)
        self.state, self.best_state = TrainState(), None

    # ---------------------------------------------------------------- the loss
    def teacher_outputs(self, batch):
        """What the loss needs from the teacher for ``batch``: cached fields of the examples
        first, the rest from one teacher forward (no gradient)."""
        needs = getattr(self.loss, "needs", None)
        if needs is None:  # a plain callable: the teacher's forward_batch, if there is a teacher
            if self.teacher is None:
                return None
            with torch.no_grad():
                return self.teacher.forward_batch(batch)
        out = {k: batch[CACHED[k]] for k in needs if CACHED.get(k) in batch}
        missing = set(needs) - set(out)
        if missing:
            with torch.no_grad():
                if hasattr(self.teacher, "taps"):
                    out.update(self.teacher.taps(batch, missing,
                                                 vector=getattr(self.loss, "vector", None)))
                elif missing == {"logits"}:
                    out["logits"] = self.teacher.forward_batch(batch)
                else:
                    raise TypeError(f"the teacher gives logits only (forward_batch); the loss "
                                    f"needs {sorted(missing)}")
        return out

    def compute_loss(self, batch):
        """The training loss on one (device) batch, with the student in its current mode."""
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
            out = self.student.forward_batch(batch)
            return self.loss(out, batch, self.teacher_outputs(batch))

    def _sync_grads(self):
        grads = [p.grad for p in self.student.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for g in grads:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()

    def step(self, batch, share: float = 1.0):
        """One optimisation step on a collated batch (``share``: this rank's fraction of the
        global batch under DDP). Returns the detached loss."""
        if self.opt is None:
            self.setup()
        batch = to_device(batch, self.device)
        loss = self.compute_loss(batch)
        self.opt.zero_grad(set_to_none=True)
        (loss * (share * self.world) if self.dist else loss).backward()
        if self.dist:
            self._sync_grads()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        return loss.detach()

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, data, model=None):
        model = model or self.student
        was = model.training
        model.eval()
        indices, outs = [], []
        for idx, batch in inference_batches(data, self.cfg.eval_batch_size, self.device):
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
                outs.append(model.forward_batch(batch).float().cpu())
            indices.append(idx)
        model.train(was)
        return in_example_order(indices, outs)

    def evaluate(self, data, model=None) -> dict:
        """The task metric(s) of the student (or ``model``) on labelled examples."""
        out = self.predict(data, model)
        labels = [ex["label"] for ex in data]
        preds = M.predictions(out)
        return M.compute(self.metric, preds, labels)

    def evaluate_dev(self) -> bool:
        """Evaluates on dev, keeps the best student; True when early stopping says stop."""
        st, c = self.state, self.cfg
        score = self.evaluate(self.dev_data)
        key = score[self.metric]
        st.evals.append((st.step, score))
        if self.writer is not None:
            self.writer.log({f"dev/{k}": v for k, v in score.items()
                             if isinstance(v, (int, float))}, st.step)
        if st.best is None or key > st.best:
            st.best, st.best_step, st.bad_evals = key, st.step, 0
            self.best_state = {k: v.detach().cpu().clone()
                               for k, v in self.student.state_dict().items()}
        else:
            st.bad_evals += 1
        return bool(c.patience) and st.bad_evals >= c.patience  # None or 0: never

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / outputs.CHECKPOINT if self.out_dir else None

    def checkpoint(self) -> None:
        """Saves everything ``restore`` needs, atomically (rank 0)."""
        if self.out_dir is None or self.rank != 0:
            return
        outputs.atomic_save({
            "model": self.student.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "state": asdict(self.state),
            "rng": _rng_state(), "best_state": self.best_state, "config": asdict(self.cfg)},
            self.checkpoint_path)

    def restore(self) -> bool:
        """With ``resume``, loads the checkpoint in ``out_dir`` if there is one; True if it did.
        A truncated or foreign checkpoint is a ValueError naming the file."""
        path = self.checkpoint_path
        if not self.resume or path is None or not path.is_file():
            if self.resume and self.rank == 0:
                print(f"kdfast: no checkpoint for {self.name} in {self.out_dir}; starting fresh")
            return False
        if self.opt is None:
            self.setup()
        saved = outputs.load_checked(path, what="checkpoint", map_location="cpu",
                                     weights_only=False)
        if not isinstance(saved, dict) or not {"model", "optimizer", "state"} <= saved.keys():
            raise ValueError(f"cannot read the checkpoint {path}: it is not a kdfast checkpoint")
        try:
            self.student.load_state_dict(saved["model"])
        except RuntimeError as e:
            raise ValueError(f"the checkpoint {path} holds another model: "
                             f"{str(e).splitlines()[0]}") from None
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.state = TrainState(**saved["state"])
        self.best_state = saved.get("best_state")
        _set_rng_state(saved["rng"])
        if self.rank == 0:
            st = self.state
            print(f"kdfast: resumed {self.name} at step {st.step} (epoch {st.epoch}, "
                  f"batch {st.pos})")
        return True

    def save_student(self, model_state=None) -> None:
        """The student (or ``model_state`` loaded into it) into ``out_dir/<name>``, atomically."""
        if self.out_dir is None or self.rank != 0:
            return
        student = self.student
        if model_state is not None:
            cur = {k: v.clone() for k, v in student.state_dict().items()}
            student.load_state_dict(model_state)
        try:
            if hasattr(student, "save_pretrained"):
                outputs.atomic_save_dir(self.out_dir / self.name, lambda d: student.save_pretrained(
                    d, tokenizer=self.tokenizer))
            else:
                outputs.atomic_save(student.state_dict(), self.out_dir / f"{self.name}.pt")
        finally:
            if model_state is not None:
                student.load_state_dict(cur)

    # ---------------------------------------------------------------- training
    def _log(self, loss, bar):
        st, c = self.state, self.cfg
        st.loss_sum = st.loss_sum + loss.float()
        st.loss_n += 1
        # the loss object's components (detached device tensors): summed on the device too
        self._components.add(getattr(self.loss, "components", None))
        if st.step % c.log_every == 0 or st.step == self.total:  # mean since the last log
            n_comp = self._components.n
            self._components.add({"loss": st.loss_sum}, count=False)
            sums = self._components.totals()  # ONE host read per log point
            mean = sums.pop("loss") / st.loss_n
            st.history.append((st.step, mean))
            st.loss_sum, st.loss_n = 0.0, 0
            now = time.perf_counter()  # throughput over the logging window
            rate = (st.examples - self._log_ex) / max(1e-9, now - self._log_t)
            self._log_t, self._log_ex = now, st.examples
            if self.writer is not None:
                scalars = {"train/loss": mean, "train/examples_per_s": rate}
                scalars.update({f"train/loss_{k}": v / max(1, n_comp) for k, v in sums.items()})
                if self.sched is not None:
                    scalars["train/lr"] = self.sched.get_last_lr()[0]
                self.writer.log(scalars, st.step)
            if bar is not None:
                bar.set_postfix(loss=f"{mean:.4f}", ex_s=f"{rate:.0f}")
        if bar is not None:
            bar.update(1)

    def _epoch(self, bar) -> bool:
        """Runs the rest of the current epoch; True when training is over."""
        st, c = self.state, self.cfg
        spe = self._steps_per_epoch()
        g = torch.Generator().manual_seed(c.seed * 1000003 + st.epoch)
        perm = torch.randperm(len(self.train_data), generator=g).tolist()
        if c.group_by_length:
            if self._lengths is None:
                self._lengths = [example_length(e) for e in self.train_data]
            perm = length_grouped(perm, self._lengths, c.batch_size, g)
        while st.pos < spe:
            t0 = time.perf_counter()
            glob = perm[st.pos * c.batch_size:(st.pos + 1) * c.batch_size]
            shard = np.array_split(np.asarray(glob), self.world)[self.rank].tolist()
            loss = self.step(collate([self.train_data[i] for i in shard]),
                             share=len(shard) / len(glob))
            st.step, st.pos, st.examples = st.step + 1, st.pos + 1, st.examples + len(glob)
            self._log(loss, bar)
            epoch_end = st.pos >= spe
            if epoch_end:
                st.epoch, st.pos = st.epoch + 1, 0
            done = st.step >= self.total
            if self.dev_data and ((c.eval_every and st.step % c.eval_every == 0)
                                  or (not c.eval_every and epoch_end) or done):
                done = self.evaluate_dev() or done
            st.train_time += time.perf_counter() - t0
            if (c.checkpoint_every and st.step % c.checkpoint_every == 0) or epoch_end or done:
                self.checkpoint()
            for cb in self.callbacks:
                cb(self, st.step)
            if done:
                return True
            if epoch_end:  # the next epoch draws its own shuffle order
                return False
        return False

    def train(self) -> dict:
        """Trains to the end (restoring a checkpoint with ``resume``); returns the results
        and, with ``out_dir``, writes the student, results.json and report.md."""
        self.setup()
        self.restore()
        bar = None
        if self.cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total, initial=self.state.step, desc=self.name, unit="step",
                       leave=False)
        self._log_t, self._log_ex = time.perf_counter(), self.state.examples
        self._components = DeviceMeans()
        if self.rank == 0:
            self.writer = open_writer(self.report_to, self.out_dir, name=self.name,
                                      config=asdict(self.cfg))
        try:
            try:
                done = self.state.step >= self.total
                while not done:
                    done = self._epoch(bar)
            finally:
                if bar is not None:
                    bar.close()
            if self.best_state is not None:  # the returned and saved student is the best on dev
                self.student.load_state_dict(self.best_state)
            return self.finish()
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    def finish(self) -> dict:
        """Final evaluation, results and (rank 0) the files in ``out_dir``."""
        c, st = self.cfg, self.state
        res = {"name": self.name, "loss": self.loss_name, "steps": st.step,
               "epochs_done": st.epoch + st.pos / max(1, self._steps_per_epoch()),
               "train_time_s": st.train_time, "world_size": self.world,
               "train_examples_per_s": st.examples / max(1e-9, st.train_time),
               "best_dev": st.best, "best_step": st.best_step, "dev_evals": st.evals,
               "loss_history": st.history, "config": asdict(c),
               "parameters": sum(p.numel() for p in self.student.parameters())}
        if self.test_data and "label" in self.test_data[0]:
            res["test"] = self.evaluate(self.test_data)
        if self.dev_data:
            res["dev"] = self.evaluate(self.dev_data)
        res.update(self.meta)
        if self.out_dir is not None and self.rank == 0:
            self.save_student()
            from kdfast.distill.report import write_report

            write_report(self.out_dir, res)
        return res
