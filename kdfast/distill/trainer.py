"""The training loop under every recipe: a plain PyTorch loop, usable as a library.

>>> d = Distiller(teacher, student, loss="mse", alpha=0.0, train_data=examples,
...               dev_data=dev_examples, out_dir="runs/x", epochs=3, batch_size=50)
>>> results = d.train()

Data are lists of example dicts (:mod:`kdfast.data.tokenize`); models expose
``forward_batch(batch)`` (kdfast's students and teachers do). ``loss`` is a name
(``ce``/``hard``: labels only; ``mse``/``kl``/``soft_ce``: ``alpha * CE + (1 - alpha) * soft``
against the teacher's logits -- cached ``t_logits`` in the examples, or a live teacher;
``sra-mse``/``sra-cosine``: match the teacher's sentence vector) or a callable
``loss(student_out, batch, teacher_out) -> scalar``.

What the loop does:
* one permutation per epoch from ``seed + epoch``; checkpoints (``out_dir/checkpoint/last.pt``)
  hold model, optimiser, scheduler, RNG states, step and the position in the epoch, so
  ``resume=True`` continues exactly where the last checkpoint left off;
* DDP under ``torchrun`` (gloo on CPU, nccl on GPU): each global batch of ``batch_size``
  examples is split across ranks and gradients are averaged with one flat all-reduce per
  step, each rank's loss weighted by its share, so 2 processes match 1 with the same global
  batch; every rank evaluates the whole dev set, so early-stopping decisions agree;
* bf16 autocast on a GPU (``amp="auto"``), none on a CPU;
* dev evaluation every ``eval_every`` steps (default: each epoch) with the task metric,
  early stopping after ``patience`` evaluations without improvement, the best student kept;
* outputs in ``out_dir``: ``student/`` (config + weights + tokenizer: ``load_student``),
  ``results.json``, ``report.md``, ``loss_curve.png``.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdfast.data import metrics as M
from kdfast.data.tokenize import collate, length_batches, to_device

LOSSES = ("ce", "hard", "mse", "kl", "soft_ce", "sra-mse", "sra-cosine")
OPTIMIZERS = ("adadelta", "adam", "adamw", "sgd")
SCHEDULERS = ("constant", "linear")


@dataclass
class TrainConfig:
    epochs: float = 3
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 50
    optimizer: str = "adadelta"
    lr: float = 1.0
    rho: float = 0.95  # AdaDelta (Tang et al.)
    weight_decay: float = 0.0
    scheduler: str = "constant"
    warmup: float = 0.0  # fraction of the steps
    grad_clip: float | None = None
    alpha: float = 0.0
    temperature: float = 1.0
    metric: str = "accuracy"
    eval_every: int | None = None  # steps; None: once per epoch
    eval_batch_size: int = 256
    patience: int | None = None
    checkpoint_every: int | None = None  # steps; the end of each epoch always checkpoints
    log_every: int = 10
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on GPU) | bf16 | off
    progress: bool = True
    device: str | None = None

    def validate(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0 (or give max_steps), got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.metric not in M.METRICS:
            raise ValueError(f"metric must be one of {M.METRICS}, got {self.metric!r}")


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_distributed(device_type: str = "cpu"):
    """Join the process group that ``torchrun`` describes in the environment (no-op without)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return _dist()


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


class EarlyStop(Exception):
    pass


class Distiller:
    """See the module docstring. ``teacher`` may be None (hard labels, or cached teacher
    outputs in the examples)."""

    def __init__(self, teacher, student, loss="mse", *, train_data, dev_data=None,
                 test_data=None, out_dir=None, tokenizer=None, overwrite: bool = False,
                 resume: bool = False, callbacks=(), name: str = "student",
                 config: TrainConfig | None = None, **options):
        cfg = config or TrainConfig()
        known = {f.name for f in fields(TrainConfig)}
        bad = sorted(set(options) - known)
        if bad:
            raise TypeError(f"unknown training option(s) {bad}; known: {sorted(known)}")
        cfg = TrainConfig(**{**asdict(cfg), **options})
        cfg.validate()
        if not callable(loss) and loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
        if not train_data:
            raise ValueError("train_data is empty")
        if not hasattr(student, "forward_batch"):
            raise TypeError("student must have forward_batch(batch) (kdfast students do)")
        self.cfg, self.loss_name, self.name = cfg, loss, name
        self.teacher, self.student = teacher, student
        self.train_data, self.dev_data, self.test_data = train_data, dev_data, test_data
        self.tokenizer, self.callbacks = tokenizer, list(callbacks)
        self._check_data()
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dist = init_distributed(self.device.type)
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        if self.device.type == "cuda" and self.dist:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.out_dir = Path(out_dir) if out_dir else None
        self._prepare_out_dir(overwrite, resume)
        self.resume = resume

    # ---------------------------------------------------------------- checks and setup
    def _check_data(self):
        first = self.train_data[0]
        needs_labels = self.loss_name in ("ce", "hard") or (
            self.loss_name in ("mse", "kl", "soft_ce") and self.cfg.alpha > 0)
        if needs_labels and "label" not in first:
            raise ValueError(f"loss {self.loss_name!r} with alpha={self.cfg.alpha} needs labels "
                             "in the training examples")
        if self.loss_name in ("mse", "kl", "soft_ce") and "t_logits" not in first and self.teacher is None:
            raise ValueError(f"loss {self.loss_name!r} needs teacher logits: pass a teacher or "
                             "examples with cached t_logits")
        if str(self.loss_name).startswith("sra") and "t_vec" not in first and self.teacher is None:
            raise ValueError("SRA needs the teacher's sentence vectors (t_vec) or a teacher")
        num_labels = getattr(self.student, "num_labels", None)
        for split, data in (("train", self.train_data), ("dev", self.dev_data), ("test", self.test_data)):
            if not data or "label" not in data[0] or not num_labels or num_labels < 2:
                continue
            for ex in data:
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

    def _prepare_out_dir(self, overwrite, resume):
        if self.out_dir is None or self.rank != 0:
            return
        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not (overwrite or resume):
            raise FileExistsError(f"output directory {self.out_dir} already exists and is not "
                                  "empty: pass overwrite=True (--overwrite) or resume=True (--resume)")
        if overwrite and not resume:
            for name in ("checkpoint", "student", "results.json", "report.md", "loss_curve.png"):
                p = self.out_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _steps_per_epoch(self):
        n = len(self.train_data) // self.cfg.batch_size
        rest = len(self.train_data) % self.cfg.batch_size
        return n + (1 if rest >= self.world else 0)  # a tail smaller than the world is dropped

    def _total_steps(self):
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        return max(1, math.ceil(self.cfg.epochs * self._steps_per_epoch()))

    def _make_optimizer(self):
        params = [p for p in self.student.parameters() if p.requires_grad]
        c = self.cfg
        if c.optimizer == "adadelta":
            return torch.optim.Adadelta(params, lr=c.lr, rho=c.rho, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
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

    # ---------------------------------------------------------------- the loss
    def _loss(self, out, batch):
        name, c = self.loss_name, self.cfg
        t_out = None
        if self.teacher is not None and (
                (name in ("mse", "kl", "soft_ce") and "t_logits" not in batch)
                or (str(name).startswith("sra") and "t_vec" not in batch) or callable(name)):
            with torch.no_grad():
                t_out = (self.teacher.sentence_vector(batch["t_input_ids"], batch["t_attention_mask"],
                                                      batch["t_token_type_ids"])
                         if str(name).startswith("sra") else self.teacher.forward_batch(batch))
        if callable(name):
            return name(out, batch, t_out)
        out = out.float()
        if name in ("ce", "hard"):
            y = batch["labels"]
            return F.mse_loss(out.squeeze(-1), y) if y.dtype.is_floating_point else F.cross_entropy(out, y)
        if name.startswith("sra"):
            target = (batch["t_vec"] if t_out is None else t_out).float()
            if name == "sra-mse":
                return F.mse_loss(out, target)
            return (1 - F.cosine_similarity(out, target, dim=-1)).mean()
        from kdfast.losses import distillation_loss

        target = (batch["t_logits"] if t_out is None else t_out).float()
        labels = batch.get("labels") if c.alpha > 0 else None
        return distillation_loss(out, target, labels, kind=name, alpha=c.alpha if labels is not None else 0.0,
                                 temperature=c.temperature)

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, data, model=None):
        model = model or self.student
        was = model.training
        model.eval()
        outs = [None] * len(data)
        for idx in length_batches(data, self.cfg.eval_batch_size, "s_ids" if "s_ids" in data[0] else "t_ids"):
            batch = to_device(collate([data[i] for i in idx]), self.device)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
                out = model.forward_batch(batch).float().cpu()
            for j, i in enumerate(idx):
                outs[i] = out[j]
        model.train(was)
        return torch.stack(outs)

    def evaluate(self, data, model=None) -> dict:
        out = self.predict(data, model)
        labels = [ex["label"] for ex in data]
        preds = out.squeeze(-1).tolist() if out.shape[-1] == 1 else out.argmax(-1).tolist()
        return M.compute(self.cfg.metric, preds, labels)

    # ---------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, state):
        if self.out_dir is None or self.rank != 0:
            return
        d = self.out_dir / "checkpoint"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "last.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, d / "last.pt")  # atomic: an interruption never leaves half a checkpoint

    def _save_student(self, model_state=None):
        if self.out_dir is None or self.rank != 0:
            return
        student = self.student
        if model_state is not None:
            cur = {k: v.clone() for k, v in student.state_dict().items()}
            student.load_state_dict(model_state)
        if hasattr(student, "save_pretrained"):
            student.save_pretrained(self.out_dir / self.name, tokenizer=self.tokenizer)
        else:
            torch.save(student.state_dict(), self.out_dir / f"{self.name}.pt")
        if model_state is not None:
            student.load_state_dict(cur)

    # ---------------------------------------------------------------- training
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

    def train(self) -> dict:
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
        total = self._total_steps()
        opt = self._make_optimizer()
        sched = self._make_scheduler(opt, total)
        st = {"step": 0, "epoch": 0, "pos": 0, "best": None, "best_step": None, "bad_evals": 0,
              "history": [], "evals": [], "train_time": 0.0, "examples": 0}
        best_state = None
        ckpt = self.out_dir / "checkpoint" / "last.pt" if self.out_dir else None
        if self.resume and ckpt is not None and ckpt.exists():
            saved = torch.load(ckpt, map_location="cpu", weights_only=False)
            self.student.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            st = saved["state"]
            best_state = saved.get("best_state")
            _set_rng_state(saved["rng"])
            if self.rank == 0:
                print(f"kdfast: resumed {self.name} at step {st['step']} (epoch {st['epoch']}, "
                      f"batch {st['pos']})")
        elif self.resume and self.rank == 0:
            print(f"kdfast: nothing to resume in {self.out_dir}; starting fresh")

        spe = self._steps_per_epoch()
        bar = None
        if c.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=st["step"], desc=self.name, unit="step", leave=False)
        stop = st["step"] >= total
        t0 = log_t = time.perf_counter()
        log_ex = st["examples"]
        try:
            while not stop:
                g = torch.Generator().manual_seed(c.seed * 1000003 + st["epoch"])
                perm = torch.randperm(len(self.train_data), generator=g).tolist()
                while st["pos"] < spe:
                    glob = perm[st["pos"] * c.batch_size:(st["pos"] + 1) * c.batch_size]
                    shard = np.array_split(np.asarray(glob), self.world)[self.rank].tolist()
                    batch = to_device(collate([self.train_data[i] for i in shard]), self.device)
                    with torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
                        out = self.student.forward_batch(batch)
                        loss = self._loss(out, batch)
                    scaled = loss * (len(shard) * self.world / len(glob)) if self.dist else loss
                    opt.zero_grad(set_to_none=True)
                    scaled.backward()
                    if self.dist:
                        self._sync_grads()
                    if c.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.student.parameters(), c.grad_clip)
                    opt.step()
                    sched.step()
                    st["step"] += 1
                    st["pos"] += 1
                    st["examples"] += len(glob)
                    # running sum on the device: no host sync except at log points
                    st["loss_sum"] = st.get("loss_sum", 0.0) + loss.detach().float()
                    st["loss_n"] = st.get("loss_n", 0) + 1
                    if st["step"] % c.log_every == 0 or st["step"] == total:  # mean since the last log
                        mean = float(st["loss_sum"]) / st["loss_n"]
                        st["history"].append((st["step"], mean))
                        st["loss_sum"], st["loss_n"] = 0.0, 0
                        if bar is not None:  # throughput over the logging window
                            now = time.perf_counter()
                            rate = (st["examples"] - log_ex) / max(1e-9, now - log_t)
                            bar.set_postfix(loss=f"{mean:.4f}", ex_s=f"{rate:.0f}")
                            log_t, log_ex = now, st["examples"]
                    if bar is not None:
                        bar.update(1)
                    epoch_end = st["pos"] >= spe
                    if epoch_end:
                        st["epoch"] += 1
                        st["pos"] = 0
                    done = st["step"] >= total
                    evaluate = self.dev_data and (
                        (c.eval_every and st["step"] % c.eval_every == 0)
                        or (not c.eval_every and epoch_end) or done)
                    if evaluate:
                        score = self.evaluate(self.dev_data)
                        key = score[c.metric]
                        st["evals"].append((st["step"], score))
                        if st["best"] is None or key > st["best"]:
                            st["best"], st["best_step"], st["bad_evals"] = key, st["step"], 0
                            best_state = {k: v.detach().cpu().clone()
                                          for k, v in self.student.state_dict().items()}
                        else:
                            st["bad_evals"] += 1
                        if c.patience is not None and st["bad_evals"] >= c.patience:
                            done = True
                    st["train_time"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    if (c.checkpoint_every and st["step"] % c.checkpoint_every == 0) or epoch_end or done:
                        self._save_checkpoint({
                            "model": self.student.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "state": st, "rng": _rng_state(),
                            "best_state": best_state, "config": asdict(c)})
                    for cb in self.callbacks:
                        cb(self, st["step"])
                    if done:
                        stop = True
                        break
                    if epoch_end:  # the next epoch draws its own shuffle order
                        break
        finally:
            if bar is not None:
                bar.close()
        if best_state is not None:  # the returned and saved student is the best on dev
            self.student.load_state_dict(best_state)
        self.state = st
        return self._finish(st)

    def _finish(self, st) -> dict:
        c = self.cfg
        res = {"name": self.name, "loss": self.loss_name if isinstance(self.loss_name, str) else "custom",
               "steps": st["step"], "epochs_done": st["epoch"] + st["pos"] / max(1, self._steps_per_epoch()),
               "train_time_s": st["train_time"], "world_size": self.world,
               "train_examples_per_s": st["examples"] / max(1e-9, st["train_time"]),
               "best_dev": st["best"], "best_step": st["best_step"], "dev_evals": st["evals"],
               "loss_history": st["history"], "config": asdict(c),
               "parameters": sum(p.numel() for p in self.student.parameters())}
        if self.test_data and "label" in self.test_data[0]:
            res["test"] = self.evaluate(self.test_data)
        if self.dev_data:
            res["dev"] = self.evaluate(self.dev_data)
        if self.out_dir is not None and self.rank == 0:
            self._save_student()
            from kdfast.distill.report import write_report

            write_report(self.out_dir, res)
        return res
