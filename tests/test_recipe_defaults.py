"""The recipes' default schedules (issue 16): step floors, schedules counted in the task's own
sentences, the step-2 hard-label mix, Tang's transfer-set size, and the task forms
``movie-fine`` / ``NAME@N``. Tiny models and synthetic data; the real-task numbers are in
benchmarks/results/recipes-tasks.md (benchmarks/recipes_tasks.py)."""
import csv
import importlib
import time

import _tiny
import pytest
import torch

from kdfast.data.tasks import load_task
from kdfast.distill import plumbing, task_distill
from kdfast.distill.objectives import TinyBERTLoss
from kdfast.distill.tang import TANG_ALPHA, TRANSFER_BUDGET, TangOptions, default_n_iter
from kdfast.distill.tinybert import (STEP1_TRAIN, STEP2_TRAIN, prediction_pool, sized_in_sentences,
                                     step2_lr, transfer_examples)
from kdfast.models import TransformerStudent
from kdfast.models.transformer import TeacherTaps

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_min_steps_is_a_floor_and_given_epochs_drop_it():
    cfg = plumbing.train_config({"epochs": 2, "min_steps": 50}, {"lr": 1e-3})
    assert cfg.min_steps == 50
    assert plumbing.train_config({"epochs": 2, "min_steps": 50}, {"epochs": 1}).min_steps is None
    both = plumbing.train_config({"epochs": 2, "min_steps": 50}, {"epochs": 1, "min_steps": 7})
    assert (both.epochs, both.min_steps) == (1, 7)
    with pytest.raises(ValueError, match="min_steps"):
        plumbing.train_config({"epochs": 2}, {"min_steps": 0})
    # a floor the user gave (e.g. --min-steps with --step1-epochs) is kept
    kept = plumbing.train_config({"epochs": 2, "min_steps": 50}, {"min_steps": 9}, {"epochs": 1})
    assert (kept.epochs, kept.min_steps) == (1, 9)


def test_trainer_runs_at_least_min_steps(tmp_path):
    from kdfast.distill import Distiller
    from kdfast.distill.objectives import HardLabelLoss

    tok = _tiny.tokenizer(tmp_path)
    teacher = _tiny.teacher(tok)
    data = plumbing.encode_split(tok, _tiny.task(20).train, 16, student=False)
    res = Distiller(None, teacher, HardLabelLoss(), train_data=data, epochs=1, min_steps=7,
                    batch_size=8, progress=False, report_to="none").train()
    assert res["steps"] == 7  # 1 epoch is 3 steps; the floor wins
    res = Distiller(None, teacher, HardLabelLoss(), train_data=data, epochs=4, min_steps=2,
                    batch_size=8, progress=False, report_to="none").train()
    assert res["steps"] == 12


def test_default_schedules_count_epochs_in_original_sentences():
    cfg = plumbing.train_config(STEP1_TRAIN)
    sized_in_sentences(cfg, 5000, given=set())
    assert cfg.max_steps == max(STEP1_TRAIN["min_steps"],
                                STEP1_TRAIN["epochs"] * -(-5000 // cfg.batch_size))
    small = plumbing.train_config(STEP2_TRAIN)
    sized_in_sentences(small, 100, given=set())
    assert small.max_steps == STEP2_TRAIN["min_steps"]  # the floor for small data
    user = plumbing.train_config(STEP1_TRAIN, {"epochs": 20})
    sized_in_sentences(user, 5000, given={"epochs"})
    assert user.max_steps is None  # the user's epochs count over the transfer set


def test_a_share_of_the_default_schedule_halves_epochs_and_floor_not_a_given_floor():
    half = plumbing.train_config(STEP1_TRAIN)
    sized_in_sentences(half, 5000, given=set(), share=0.5)  # 2 epochs of 157 batches
    assert half.max_steps == max(STEP1_TRAIN["min_steps"] // 2, 2 * -(-5000 // half.batch_size))
    small = plumbing.train_config(STEP2_TRAIN)
    sized_in_sentences(small, 100, given=set(), share=0.5)
    assert small.max_steps == STEP2_TRAIN["min_steps"] // 2
    floor = plumbing.train_config(STEP2_TRAIN, {"min_steps": 90})
    sized_in_sentences(floor, 100, given={"min_steps"}, share=0.5)
    assert floor.max_steps == 90  # the user's floor is theirs


def test_default_task_distillation_schedule_ignores_the_augmentation_factor(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    teacher = _tiny.teacher(tok)
    teacher.has_trained_head = True
    small = dict(num_layers=1, hidden_size=8, num_heads=2, intermediate_size=16)
    _, res = task_distill(teacher, _tiny.task(16), None, tokenizer=tok, student=small, n_a=3,
                          k=2, batch_size=8, progress=False, min_steps=3, report_to="none")
    assert res["transfer_examples"] == 16 * 4
    # 4 (step 1) and 8 (step 2) epochs of the 16 originals = 8 and 16 steps, not x4
    assert (res["step1"]["steps"], res["step2"]["steps"]) == (8, 16)
    # step 2 trains on a teacher-labelled pool: the originals and 2 of their 3 copies, each
    # seen about STEP2_REUSE times (16 steps x 8 / 3 = 43 -> 3 x 16 = 48)
    assert res["step2_pool"]["examples"] == 48 and res["step2_pool"]["copies"] == 2
    assert res["alpha"] == 0.5 and res["mode"] == "masked"
    assert "step 2: best dev" in res["selection"]
    assert res["step2_lr"] == step2_lr(8) == 3e-4  # narrow students: the cap
    _, res = task_distill(teacher, _tiny.task(16), None, tokenizer=tok, student=small, n_a=1,
                          k=2, batch_size=8, progress=False, min_steps=1, report_to="none",
                          step2={"lr": 1e-5}, steps=("prediction",))
    assert res["step2_lr"] == 1e-5  # the user's lr wins


def test_prediction_pool_keeps_every_original_and_the_first_copies():
    examples = [{"copy": c, "i": i} for i in range(10) for c in range(5)]
    pool = prediction_pool(examples, steps=20, batch_size=3, reuse=2)  # 30 -> 3 per original
    assert [e["copy"] for e in pool] == [0, 1, 2] * 10
    assert len(prediction_pool(examples, steps=1, batch_size=1)) == 10  # never below the originals
    assert len(prediction_pool(examples, steps=10**6, batch_size=32)) == 50  # nor above all


def _counted_teacher(tmp_path, monkeypatch):
    """A tokenizer, a tiny teacher with a trained head, and the sizes of the example lists
    plumbing.teacher_outputs labels from then on."""
    tok = _tiny.tokenizer(tmp_path)
    teacher = _tiny.teacher(tok)
    teacher.has_trained_head = True
    calls = []
    labelled = plumbing.teacher_outputs
    monkeypatch.setattr(plumbing, "teacher_outputs",
                        lambda t, ex, **k: calls.append(len(ex)) or labelled(t, ex, **k))
    return tok, teacher, calls


def test_step2_trains_on_cached_teacher_logits(tmp_path, monkeypatch):
    tok, teacher, calls = _counted_teacher(tmp_path, monkeypatch)
    monkeypatch.setattr(TeacherTaps, "taps", lambda *a, **k: pytest.fail("teacher forward"))
    small = dict(num_layers=1, hidden_size=8, num_heads=2, intermediate_size=16)
    _, res = task_distill(teacher, _tiny.task(16), None, tokenizer=tok, student=small, n_a=3,
                          k=2, batch_size=8, progress=False, steps=("prediction",),
                          step2={"max_steps": 5}, report_to="none")
    assert calls == [res["step2_pool"]["examples"]] and res["step2"]["steps"] == 5


def test_step2_pool_is_labelled_once_and_read_back_on_resume(tmp_path, monkeypatch):
    tok, teacher, calls = _counted_teacher(tmp_path, monkeypatch)
    small = dict(num_layers=1, hidden_size=8, num_heads=2, intermediate_size=16)
    run = dict(tokenizer=tok, student=small, n_a=3, k=2, batch_size=8, progress=False,
               steps=("prediction",), step2={"max_steps": 4}, report_to="none")
    out = tmp_path / "run"
    _, first = task_distill(teacher, _tiny.task(16), out, **run)
    cache = out / "step2_teacher_logits.pt"
    assert cache.is_file() and len(calls) == 1
    _, again = task_distill(teacher, _tiny.task(16), out, resume=True, **run)
    assert len(calls) == 1 and again["step2_pool"]["examples"] == first["step2_pool"]["examples"]
    with torch.no_grad():  # another teacher: the cache's key no longer matches
        next(teacher.parameters()).add_(1.0)
    task_distill(teacher, _tiny.task(16), out, resume=True, **run)
    assert len(calls) == 2


def _label_worker(rank, world, port, tmp):
    import os
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from kdfast.data.tokenize import encode

    tmp = Path(tmp)
    (tmp / f"tok{rank}").mkdir()
    tok = _tiny.tokenizer(tmp / f"tok{rank}")
    teacher = _tiny.teacher(tok)
    examples = encode(tok, _tiny.sentences(12)[0], None, None, max_len=16, student=False)
    calls = []
    labelled = plumbing.teacher_outputs
    plumbing.teacher_outputs = lambda t, ex, **k: calls.append(len(ex)) or labelled(t, ex, **k)
    logits = plumbing.labelled_logits(teacher, examples, tmp / "logits.pt")
    torch.save({"calls": calls, "logits": logits}, tmp / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh Python processes importing torch
def test_two_ranks_label_the_pool_once(tmp_path):
    """Under torchrun rank 0 labels the step-2 pool and writes the cache; rank 1 reads it."""
    import torch.multiprocessing as mp
    from test_trainer import _free_port

    mp.spawn(_label_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["calls"] == [12] and r1["calls"] == []
    assert torch.equal(r0["logits"], r1["logits"])


def _failing_rank0_worker(rank, world, port, tmp):
    import os
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    def build():
        if rank == 0:
            raise OSError("disk full")
        return "built"

    try:
        plumbing.rank0_first("cpu", build)
        outcome = "returned"
    except Exception as exc:  # noqa: BLE001 - what each rank saw is the test's result
        outcome = f"{type(exc).__name__}: {exc}"
    Path(tmp, f"rank{rank}.txt").write_text(outcome)
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh Python processes importing torch
def test_other_ranks_raise_when_rank0_fails(tmp_path):
    """Rank 0's error reaches the other ranks (before: they waited at the barrier forever)."""
    import torch.multiprocessing as mp
    from test_trainer import _free_port

    ctx = mp.spawn(_failing_rank0_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                   join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("rank 1 still waits for rank 0 after 120 s")
    assert (tmp_path / "rank0.txt").read_text() == "OSError: disk full"
    assert (tmp_path / "rank1.txt").read_text() == (
        "RuntimeError: rank 0 failed to prepare what every rank reads: OSError: disk full")


def test_step2_lr_shrinks_with_the_students_width():
    assert step2_lr(192) == pytest.approx(3e-4)
    assert step2_lr(384) == pytest.approx(1.5e-4)
    assert step2_lr(768) == pytest.approx(7.5e-5)


def test_transfer_examples_label_the_originals_only(tmp_path):
    tok = _tiny.tokenizer(tmp_path)
    teacher = _tiny.teacher(tok)
    split = _tiny.task(6).train
    ex = transfer_examples(teacher, tok, split, n_a=2, k=2, mlm=None)
    assert [e["label"] for e in ex[::3]] == list(split.labels)
    assert all(e["label"] == -100 for i, e in enumerate(ex) if i % 3)
    plain = transfer_examples(teacher, tok, split, augment=False)
    assert [e["label"] for e in plain] == list(split.labels)


def test_prediction_hard_label_mix_skips_unlabelled_examples():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16)
    st = TransformerStudent(BertForSequenceClassification(cfg), 8)
    torch.manual_seed(0)
    out, t = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    soft = TinyBERTLoss(st, cfg, stage="prediction", mode="masked")
    mix = TinyBERTLoss(st, cfg, stage="prediction", mode="masked", alpha=0.25)
    assert mix.needs_labels and not soft.needs_labels
    y = torch.tensor([1, -100, 0, -100])
    got = mix(out, {"labels": y}, {"logits": t})
    ce = torch.nn.functional.cross_entropy(out[[0, 2]].float(), y[[0, 2]])
    want = 0.25 * ce + 0.75 * soft(out, {}, {"logits": t})
    torch.testing.assert_close(got, want)
    none = mix(out, {"labels": torch.full((4,), -100)}, {"logits": t})  # no hard part, no NaN
    torch.testing.assert_close(none, 0.75 * soft(out, {}, {"logits": t}))
    nan = mix(out.clone().fill_(float("nan")), {"labels": y}, {"logits": t})
    assert torch.isnan(nan)  # NaN in gives NaN out
    with pytest.raises(ValueError, match="alpha"):
        TinyBERTLoss(st, cfg, stage="prediction", alpha=1.5)
    with pytest.raises(ValueError, match="prediction stage"):
        TinyBERTLoss(st, cfg, stage="intermediate", alpha=0.5)


def test_tang_mixes_the_hard_labels_in_by_default(tmp_path, monkeypatch):
    tok = _tiny.tokenizer(tmp_path)
    teacher = _tiny.teacher(tok)
    teacher.has_trained_head = True
    task = _tiny.task(16)
    tang_recipe = importlib.import_module("kdfast.distill.tang")  # the module, not the function
    objectives = importlib.import_module("kdfast.distill.objectives")
    used, real = [], objectives.LogitLoss
    monkeypatch.setattr(objectives, "LogitLoss",
                        lambda kind, alpha, t: used.append(alpha) or real(kind, alpha, t))
    fast = dict(tokenizer=tok, n_iter=1, epochs=1, lstm_hidden_size=8, fc_size=8,
                progress=False, report_to="none")
    for given, expected in ((None, TANG_ALPHA), (0.0, 0.0), (0.3, 0.3)):
        _, res = tang_recipe.tang(teacher, task, None, alpha=given, **fast)
        assert used[-1] == expected == res["config"]["alpha"]
    assert TANG_ALPHA == 0.5
    # the hard-label baseline and regression tasks: no mix unless given
    assert TangOptions(loss="ce").alpha_for(task) == 0.0
    regression = type("Regression", (), {"num_labels": 1})
    assert TangOptions().alpha_for(regression) == 0.0
    with pytest.raises(ValueError, match="regression"):  # no hard labels to mix in
        TangOptions(alpha=0.5).alpha_for(regression)
    assert TangOptions().alpha_for(None) is None  # before the task is loaded
    with pytest.raises(ValueError, match="alpha"):
        TangOptions(alpha=1.5).check()


def test_tang_transfer_set_size():
    assert default_n_iter(100, pair=False) == 20  # small data: the paper's copies
    assert default_n_iter(100, pair=True) == 10
    assert default_n_iter(5000, pair=False) == TRANSFER_BUDGET // 5000 - 1
    assert default_n_iter(10 ** 6, pair=False) == 1  # always some augmentation


def test_task_sample_suffix(tmp_path):
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        for i in range(50):
            w.writerow([f"sentence {i}", i % 2])
    full = load_task(f"csv:{path}", seed=3)
    part = load_task(f"csv:{path}@7", seed=3)
    assert len(part.train) == 7 and set(part.train.texts) <= set(full.train.texts)
    assert part.test.texts == full.test.texts and part.name == f"csv:{path}@7"
    assert load_task(f"csv:{path}@7", seed=3).train.texts == part.train.texts
    with pytest.raises(ValueError, match="at least 1"):
        load_task(f"csv:{path}@0")
    with pytest.raises(ValueError, match="asks for 99 training examples"):
        load_task(f"csv:{path}@99")
    named = tmp_path / "data@7"  # a file whose name ends in @digits is that file
    named.write_text(path.read_text())
    assert len(load_task(f"csv:{named}").train) == len(full.train)


def test_the_training_seed_never_moves_the_splits(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("sentence,label\n" + "".join(f"s {i},{i % 2}\n" for i in range(50)))
    a, b = plumbing.as_task(f"csv:{path}"), plumbing.as_task(f"csv:{path}@9")
    assert a.test.texts == load_task(f"csv:{path}", seed=0).test.texts
    assert b.test.texts == a.test.texts and b.dev.texts == a.dev.texts
    assert load_task(f"csv:{path}", seed=1).test.texts != a.test.texts  # an explicit split seed differs

