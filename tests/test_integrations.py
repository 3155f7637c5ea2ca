"""kdfast.integrations: the transformers DistillationTrainer (learning, every loss component
logged, checkpoints without the teacher, resume with the fit_dense projection, from_pretrained,
gradient accumulation and 2 gloo processes matching one process) and report_to for the
Distiller (TensorBoard event files read back with EventAccumulator). Tiny BERTs on the CPU."""
import os
import socket

import _tiny
import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")

from kdfast.integrations.logging import DeviceMeans, resolve_report_to  # noqa: E402
from kdfast.integrations.transformers import (  # noqa: E402
    PROJECTION,
    DistillationSpec,
    DistillationTrainer,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SPEC = dict(logit_loss="kl", temperature=2.0, alpha=0.5, intermediate="tinybert")


def _teacher(tok, layers=4):
    from transformers import BertConfig, BertModel

    from kdfast.models import TeacherClassifier

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    t = TeacherClassifier(BertModel(cfg), 2, pooling="mean")
    with torch.no_grad():
        t.head.weight.mul_(30)  # confident logits: a soft loss with room to drop
    t.has_trained_head = True
    return t


def _student(tok, seed=1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def _data(tok, n, seed=0):
    texts, labels = _tiny.sentences(n, seed)
    return [dict(tok(t), labels=y) for t, y in zip(texts, labels)]


def _trainer(tok, out, *, teacher=None, student=None, train=None, spec=SPEC, eval_dataset=None,
             compute_metrics=None, **args):
    from transformers import DataCollatorWithPadding, TrainingArguments

    opts = dict(per_device_train_batch_size=8, learning_rate=5e-3, max_steps=4, report_to="none",
                use_cpu=True, seed=0, disable_tqdm=True, save_strategy="no", logging_steps=2,
                dataloader_num_workers=0)
    opts.update(args)
    return DistillationTrainer(
        model=student if student is not None else _student(tok), args=TrainingArguments(str(out), **opts),
        teacher=teacher if teacher is not None else _teacher(tok), distillation=spec,
        train_dataset=train if train is not None else _data(tok, 48),
        eval_dataset=eval_dataset, compute_metrics=compute_metrics,
        data_collator=DataCollatorWithPadding(tok))


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run_dir.rglob("events.out.tfevents*"))
    assert files, f"no event file under {run_dir}"
    out = {}
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _accuracy(pred):
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


# ----------------------------------------------------------------------------- the Trainer
def test_trainer_distils_logs_checkpoints_resumes_and_reloads(tmp_path):
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification

    from kdfast.models import load_transformer_student

    tok = _tiny.tokenizer(tmp_path)
    teacher = _teacher(tok)
    tr = _trainer(tok, tmp_path / "a", teacher=teacher, max_steps=12, logging_steps=3,
                  save_strategy="steps", save_steps=6, report_to="tensorboard",
                  eval_strategy="steps", eval_steps=6, eval_dataset=_data(tok, 16, seed=5),
                  compute_metrics=_accuracy)
    # the projection is the student's (trained, in DDP, in checkpoints); the teacher is not
    assert isinstance(getattr(tr.model, PROJECTION), torch.nn.Linear)
    tr.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    n_opt = sum(p.numel() for g in tr.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in tr.model.parameters())  # projection in, teacher out

    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 4
    for key in ("loss_soft", "loss_hard_ce", "loss_attention", "loss_hidden", "learning_rate",
                "examples_per_s"):
        assert all(key in h for h in logs), key
    assert logs[-1]["loss"] < 0.9 * logs[0]["loss"], logs
    for h in logs:  # the logged loss is the weighted sum of the logged components
        total = 0.5 * h["loss_soft"] + 0.5 * h["loss_hard_ce"] + h["loss_attention"] + h["loss_hidden"]
        assert h["loss"] == pytest.approx(total, rel=1e-4)
    tb = _scalars(tmp_path / "a" / "runs")
    for tag in ("train/loss", "train/loss_soft", "train/loss_hard_ce", "train/loss_attention",
                "train/loss_hidden", "train/learning_rate", "train/examples_per_s",
                "eval/accuracy", "eval/loss"):
        assert tag in tb, (tag, sorted(tb))
    assert [s for s, _ in tb["train/loss_hidden"]] == [3, 6, 9, 12]

    # checkpoints: the student (no projection in model.safetensors, no teacher), fit_dense beside
    ck = tmp_path / "a" / "checkpoint-6"
    keys = set(load_file(str(ck / "model.safetensors")))
    student_keys = {k for k in tr.model.state_dict() if not k.startswith(PROJECTION)}
    assert keys == student_keys
    assert set(load_file(str(ck / "kdfast_fit_dense.safetensors"))) == {"weight", "bias"}

    # resume from step 6 with a fresh student: the same weights (projection included) at 12
    b = _trainer(tok, tmp_path / "b", teacher=_teacher(tok), student=_student(tok, seed=7),
                 max_steps=12, logging_steps=3)
    b.train(resume_from_checkpoint=str(ck))
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)

    # the final student: save_pretrained / from_pretrained, and kdfast's loader
    tr.save_model(str(tmp_path / "student"))
    plain = BertForSequenceClassification.from_pretrained(str(tmp_path / "student")).eval()
    ids = torch.tensor([tok("a good movie")["input_ids"]])
    tr.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, tr.model(input_ids=ids).logits)
    again = load_transformer_student(tmp_path / "student")
    torch.testing.assert_close(again.fit_dense.weight, getattr(tr.model, PROJECTION).weight)


def _one_step(tok, tmp, spec, **args):
    tr = _trainer(tok, tmp, train=_data(tok, 8, seed=3), spec=spec, optim="sgd", learning_rate=1.0,
                  max_steps=1, **args)
    tr.train()
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


@pytest.mark.parametrize("spec", [SPEC, dict(logit_loss="mse", alpha=0.3, intermediate="minilm")],
                         ids=["kl+tinybert", "mse+minilm"])
def test_gradient_accumulation_1x8_equals_4x2(tmp_path, spec):
    tok = _tiny.tokenizer(tmp_path)
    start = _student(tok).state_dict()
    one = _one_step(tok, tmp_path / "1x8", spec, per_device_train_batch_size=8)
    acc = _one_step(tok, tmp_path / "4x2", spec, per_device_train_batch_size=2,
                    gradient_accumulation_steps=4)
    moved = 0.0
    for k, v in one.items():
        torch.testing.assert_close(acc[k], v, rtol=1e-5, atol=1e-6, msg=k)
        if k in start:
            moved += float((v - start[k]).abs().sum())
    assert moved > 1e-3


def test_loss_is_the_global_batch_mean(tmp_path):
    """One 8-example batch: the Trainer's loss equals kdfast's distillation_loss on it."""
    from transformers import DataCollatorWithPadding

    from kdfast.losses import distillation_loss

    tok = _tiny.tokenizer(tmp_path)
    spec = dict(logit_loss="kl", temperature=2.0, alpha=0.5)
    tr = _trainer(tok, tmp_path / "o", spec=spec)
    batch = DataCollatorWithPadding(tok)(_data(tok, 8, seed=3))
    tr.model.eval()
    with torch.no_grad():
        loss = tr.compute_loss(tr.model, dict(batch))
        s = tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = tr.teacher(batch["input_ids"], batch["attention_mask"])
    want = distillation_loss(s, t, batch["labels"], kind="kl", alpha=0.5, temperature=2.0)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", [
    dict(SPEC, mode="masked"), dict(SPEC, mode="exact"),
    dict(logit_loss="mse", alpha=0.3, intermediate="minilm")], ids=["masked", "exact", "minilm"])
def test_attention_from_qk_matches_the_score_maps(tmp_path, spec):
    """attention="qk" (capture_qkv, no L x L map) and "scores" (eager score maps) give the same
    loss, components and student gradients in float64 on a padded batch."""
    from transformers import DataCollatorWithPadding

    tok = _tiny.tokenizer(tmp_path)
    batch = DataCollatorWithPadding(tok)(_data(tok, 8, seed=3))
    assert (batch["attention_mask"] == 0).any()  # ragged: padded keys and query rows
    got = {}
    for attention in ("qk", "scores"):
        tr = _trainer(tok, tmp_path / attention, spec=dict(spec, attention=attention))
        tr.model.double().train()
        tr.teacher.double()
        counts = {"counts": tr._counts(batch, torch.device("cpu"))}  # as get_batch_samples
        loss = tr.compute_loss(tr.model, dict(batch), num_items_in_batch=counts)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in tr.model.named_parameters() if p.grad is not None}
        got[attention] = loss.detach(), grads, tr._components.totals()
    (lq, gq, cq), (ls, gs, cs) = got["qk"], got["scores"]
    torch.testing.assert_close(lq, ls, rtol=1e-10, atol=1e-12)
    assert set(cq) == set(cs) and ("attention" in cq or "attention_kl" in cq)
    for k in cq:
        assert cq[k] == pytest.approx(cs[k], rel=1e-6), k  # logged in float32
    assert gq.keys() == gs.keys() and any("attention.self.query" in k for k in gq)
    for k in gq:
        torch.testing.assert_close(gq[k], gs[k], rtol=1e-9, atol=1e-12, msg=k)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from pathlib import Path

    tmp = Path(tmp)
    tok = _tiny.tokenizer(tmp / f"tok{rank}")
    tr = _trainer(tok, tmp / "ddp", train=_data(tok, 8, seed=3), optim="sgd", learning_rate=1.0,
                  max_steps=2, per_device_train_batch_size=4, logging_steps=1)
    assert tr.accelerator.num_processes == world
    tr.train()
    assert tr.teacher is not tr.model_wrapped and not isinstance(
        tr.teacher, torch.nn.parallel.DistributedDataParallel)
    if rank == 0:
        torch.save({"state": tr.model.state_dict(),
                    "logs": [h for h in tr.state.log_history if "loss" in h]}, tmp / "ddp.pt")
    tr.accelerator.wait_for_everyone()


@pytest.mark.slow  # two fresh processes importing torch + transformers
def test_two_gloo_processes_match_one_with_the_same_global_batch(tmp_path):
    (tmp_path / "tok0").mkdir()
    (tmp_path / "tok1").mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    tok = _tiny.tokenizer(tmp_path)
    one = _trainer(tok, tmp_path / "one", train=_data(tok, 8, seed=3), optim="sgd",
                   learning_rate=1.0, max_steps=2, per_device_train_batch_size=8, logging_steps=1)
    one.train()
    ddp = torch.load(tmp_path / "ddp.pt")
    start = _student(tok).state_dict()
    moved = 0.0
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(ddp["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        moved += float((v - start[k]).abs().sum()) if k in start else 0.0
    assert moved > 1e-3
    logs = [h for h in one.state.log_history if "loss" in h]
    for a, b in zip(ddp["logs"], logs):  # logged loss and components: global-batch values
        for key in ("loss", "loss_soft", "loss_hard_ce", "loss_attention", "loss_hidden"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_spec_and_teacher_errors(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    with pytest.raises(ValueError, match="logit_loss"):
        _trainer(tok, tmp_path / "x", spec=dict(logit_loss="hinge"))
    with pytest.raises(ValueError, match="nothing to distil"):
        _trainer(tok, tmp_path / "x", spec=dict(logit_loss=None))
    with pytest.raises(ValueError, match="alpha"):
        _trainer(tok, tmp_path / "x", spec=dict(alpha=2.0))
    with pytest.raises(ValueError, match="attention must be one of"):
        _trainer(tok, tmp_path / "x", spec=dict(SPEC, attention="probs"))
    with pytest.raises(ValueError, match="layer_map"):
        _trainer(tok, tmp_path / "x", spec=dict(intermediate="tinybert", layer_map=[0, 9]))
    with pytest.raises(ValueError, match="teacher="):
        DistillationTrainer(model=_student(tok))
    untrained = _teacher(tok)
    untrained.has_trained_head = False
    with pytest.raises(ValueError, match="untrained"):
        _trainer(tok, tmp_path / "x", teacher=untrained)
    assert DistillationSpec(**SPEC).validate().mode == "masked"
    for bad, exc, name in ((dict(temperature=float("inf")), ValueError, "temperature"),
                           (dict(temperature=1e20), ValueError, "temperature"),
                           (dict(backend="gpu"), ValueError, "backend"),
                           (dict(logit_weight=float("inf")), ValueError, "logit_weight"),
                           (dict(projection="yes"), TypeError, "projection"),
                           (dict(intermediate="tinybert", layer_map=[True]), TypeError,
                            "layer_map")):
        with pytest.raises(exc, match=name):
            DistillationSpec(**{**SPEC, **bad}).validate()


def test_teacher_from_a_kdfast_directory_and_intermediate_only(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    _teacher(tok).save_pretrained(tmp_path / "teacher", tokenizer=tok)
    tr = _trainer(tok, tmp_path / "o", teacher=str(tmp_path / "teacher"),
                  spec=dict(logit_loss=None, intermediate="tinybert", layer_map=[1, 3]), max_steps=2)
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert logs and all("loss_attention" in h and "loss_soft" not in h for h in logs)


# ----------------------------------------------------------------------------- report_to
def test_report_to_resolution():
    assert resolve_report_to(None) == "tensorboard" == resolve_report_to("auto")
    assert resolve_report_to("none") == "none"
    with pytest.raises(ValueError, match="report_to"):
        resolve_report_to("comet")
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ValueError, match="wandb is not installed"):
            resolve_report_to("wandb")


def test_device_means_read_once():
    m = DeviceMeans()
    for v in (1.0, 2.0, 3.0):
        m.add({"a": torch.tensor(v), "b": torch.tensor(2 * v)})
    assert m.n == 3
    assert m.totals() == {"a": 6.0, "b": 12.0} and not m and m.n == 0  # read once, reset


def test_distiller_writes_tensorboard_with_every_component(tmp_path, monkeypatch):
    from test_trainer import OPTS, _examples, _student as _bilstm

    from kdfast.distill import Distiller
    from kdfast.integrations import logging as L

    reads = []
    real = L.DeviceMeans.totals
    monkeypatch.setattr(L.DeviceMeans, "totals", lambda self, *a: reads.append(1) or real(self, *a))
    out = tmp_path / "run"
    Distiller(None, _bilstm(), "kl", train_data=_examples(80), dev_data=_examples(16, seed=1),
              out_dir=out, alpha=0.5, temperature=2.0, max_steps=10, eval_every=5,
              **{**OPTS, "log_every": 5}).train()
    assert len(reads) == 2  # one host read per log point, none per step
    tb = _scalars(out / "tensorboard")
    for tag in ("train/loss", "train/loss_hard_ce", "train/loss_soft", "train/lr",
                "train/examples_per_s", "dev/accuracy"):
        assert [s for s, _ in tb[tag]] == [5, 10], (tag, tb.get(tag))
    (loss5, lh, ls) = (dict(tb[k])[5] for k in ("train/loss", "train/loss_hard_ce", "train/loss_soft"))
    assert loss5 == pytest.approx(0.5 * lh + 0.5 * ls, rel=1e-4)
    for name in ("report.md", "loss_curve.png", "results.json"):  # the report stays
        assert (out / name).is_file()
    quiet = tmp_path / "quiet"
    Distiller(None, _bilstm(), "mse", train_data=_examples(16), out_dir=quiet, max_steps=2,
              report_to="none", **OPTS).train()
    assert not (quiet / "tensorboard").exists()
    with pytest.raises(ValueError, match="report_to"):
        Distiller(None, _bilstm(), "mse", train_data=_examples(16), report_to="comet", **OPTS)


def test_tinybert_recipe_logs_attention_hidden_prediction(tmp_path):
    from test_tinybert import FAST, SMALL

    from kdfast.distill import task_distill

    tok = _tiny.tokenizer(tmp_path)
    task_distill(_teacher(tok), _tiny.task(16), tmp_path / "out", tokenizer=tok, student=SMALL,
                 augment=False, step1=dict(max_steps=4), step2=dict(max_steps=2),
                 **{**FAST, "log_every": 2})
    s1 = _scalars(tmp_path / "out" / "step1" / "tensorboard")
    s2 = _scalars(tmp_path / "out" / "step2" / "tensorboard")
    assert {"train/loss_attention", "train/loss_hidden", "train/lr"} <= set(s1)
    assert {"train/loss_prediction", "dev/accuracy"} <= set(s2)
