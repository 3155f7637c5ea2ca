"""kdfast.distill.Distiller: training, exact resume, DDP equivalence, outputs, errors."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from kdfast.data.tokenize import collate, in_example_order, inference_batches, length_grouped
from kdfast.distill import Distiller, load_student
from kdfast.nn.students import BiLSTMClassifier, SRAEncoder

VOCAB = 40


def _examples(n, seed=0, classes=2):
    """Synthetic token sequences; the 'teacher' logits are a fixed function of the tokens."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(VOCAB, classes, generator=g) * 0.3  # a learnable rule: which half of the
    w[: VOCAB // 2, 0] += 1.0                              # vocabulary dominates the sentence
    w[VOCAB // 2:, 1] += 1.0
    out = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g)
        logits = w[ids].mean(0) * 3
        out.append({"s_ids": ids.tolist(), "label": int(logits.argmax()), "t_logits": logits.tolist(),
                    "t_vec": torch.cat([logits, logits.tanh()]).tolist()})
    return out


def _student(seed=0, dropout=0.2):
    torch.manual_seed(seed)
    return BiLSTMClassifier(VOCAB, 2, embed_dim=8, hidden_size=8, fc_size=8, dropout=dropout)


OPTS = dict(batch_size=8, optimizer="adam", lr=1e-2, progress=False, log_every=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_distillation_learns_saves_and_reloads(tmp_path):
    train, dev = _examples(160), _examples(40, seed=1)
    s = _student()
    res = Distiller(None, s, "mse", train_data=train, dev_data=dev, test_data=dev,
                    out_dir=tmp_path / "run", epochs=8, alpha=0.2, **OPTS).train()
    losses = [l for _, l in res["loss_history"]]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    assert res["dev"]["accuracy"] > 0.6 and res["best_step"] is not None
    for name in ("results.json", "report.md", "loss_curve.png", "student/config.json",
                 "student/model.safetensors", "checkpoint/last.pt"):
        assert (tmp_path / "run" / name).exists(), name
    again = load_student(tmp_path / "run" / "student")
    assert isinstance(again, BiLSTMClassifier) and not again.training
    s.eval()
    b = {"s_input": torch.tensor([[3, 4, 5]]), "s_lengths": torch.tensor([3])}
    torch.testing.assert_close(again.forward_batch(b), s.forward_batch(b), rtol=0, atol=0)


def test_sra_loss_and_hard_labels_train():
    data = _examples(64)
    enc = SRAEncoder(VOCAB, teacher_hidden=4, embed_dim=8, hidden_size=8)
    res = Distiller(None, enc, "sra-cosine", train_data=data, epochs=3, **OPTS).train()
    assert res["loss_history"][-1][1] < res["loss_history"][0][1]
    res = Distiller(None, _student(), "ce", train_data=data, epochs=5, **OPTS).train()
    first, last = res["loss_history"][:4], res["loss_history"][-4:]
    assert sum(l for _, l in last) < sum(l for _, l in first)


class _Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    train, dev = _examples(50), _examples(16, seed=1)
    kw = dict(train_data=train, dev_data=dev, epochs=3, checkpoint_every=4, **OPTS)
    full = _student()
    Distiller(None, full, "mse", out_dir=tmp_path / "a", **kw).train()

    def stop_at_10(d, step):  # dies two steps after the checkpoint at step 8 (mid-epoch)
        if step == 10:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        Distiller(None, _student(), "mse", out_dir=tmp_path / "b", callbacks=[stop_at_10], **kw).train()
    resumed = _student(seed=123)  # different init: everything must come from the checkpoint
    d = Distiller(None, resumed, "mse", out_dir=tmp_path / "b", resume=True, **kw)
    d.train()
    assert d.state.step == 21
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    s = _student(dropout=0.0)
    d = Distiller(None, s, "mse", train_data=_examples(29), epochs=2, device="cpu",
                  **{**OPTS, "optimizer": "sgd", "lr": 0.5})
    d.train()
    if rank == 0:
        torch.save(s.state_dict(), path)
    dist.barrier()  # tear gloo down together: a rank leaving early aborted its peer (SIGABRT)
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh Python processes importing torch: ~30 s on 2 busy cores
def test_ddp_two_processes_match_one_with_the_same_global_batch(tmp_path):
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    single = _student(dropout=0.0)
    Distiller(None, single, "mse", train_data=_examples(29), epochs=2, device="cpu",
              **{**OPTS, "optimizer": "sgd", "lr": 0.5}).train()
    ddp = torch.load(path)
    moved = 0.0
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)
        moved += float((v - _student(dropout=0.0).state_dict()[k]).abs().sum())
    assert moved > 0.1  # the comparison is not between two untrained models


def test_no_overwrite_without_permission(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        Distiller(None, _student(), "mse", train_data=_examples(8), out_dir=out, **OPTS)
    with pytest.raises(FileExistsError, match="not written by kdfast"):  # not kdfast's: kept
        Distiller(None, _student(), "mse", train_data=_examples(8), out_dir=out, overwrite=True,
                  **OPTS)
    assert [p.name for p in out.iterdir()] == ["something.txt"]
    kd = tmp_path / "kd"
    Distiller(None, _student(), "mse", train_data=_examples(8), out_dir=kd, max_steps=1,
              **OPTS).train()
    (kd / "old.txt").write_text("from the last run")
    Distiller(None, _student(), "mse", train_data=_examples(8), out_dir=kd, overwrite=True,
              max_steps=1, **OPTS).train()
    assert not (kd / "old.txt").exists() and (kd / "student").is_dir()  # kdfast's: cleared


def test_early_stopping_stops_and_keeps_the_best():
    train = _examples(40)
    d = Distiller(None, _student(), "mse", train_data=train, dev_data=_examples(16, seed=1),
                  epochs=50, eval_every=1, patience=2, **{**OPTS, "lr": 0.5, "optimizer": "sgd"})
    res = d.train()
    assert res["steps"] < 50 * 5
    assert res["dev"]["accuracy"] == res["best_dev"]
    # patience 0: no early stopping, every step runs
    d = Distiller(None, _student(), "mse", train_data=train, dev_data=_examples(16, seed=1),
                  epochs=4, eval_every=1, patience=0, **{**OPTS, "lr": 0.5, "optimizer": "sgd"})
    assert d.train()["steps"] == 4 * 5
    with pytest.raises(ValueError, match="patience must be an int >= 0"):
        Distiller(None, _student(), "mse", train_data=train, patience=-1)


def test_bad_configs_and_data_give_clear_errors():
    data = _examples(8)
    with pytest.raises(TypeError, match="unknown training option"):
        Distiller(None, _student(), "mse", train_data=data, learning_rate=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        Distiller(None, _student(), "mse", train_data=data, optimizer="lion")
    for bad in ("epochs", "lr", "weight_decay", "grad_clip", "temperature"):
        with pytest.raises(ValueError, match=f"{bad} must be a finite number"):
            Distiller(None, _student(), "mse", train_data=data, **{bad: float("inf")})
    with pytest.raises(ValueError, match="loss must be one of"):
        Distiller(None, _student(), "hinge", train_data=data)
    with pytest.raises(ValueError, match="train_data is empty"):
        Distiller(None, _student(), "mse", train_data=[])
    with pytest.raises(ValueError, match="out of range"):
        Distiller(None, _student(), "ce", train_data=[{**data[0], "label": 2}])
    with pytest.raises(ValueError, match="needs labels"):
        Distiller(None, _student(), "ce", train_data=[{"s_ids": [1, 2], "t_logits": [0.0, 1.0]}])
    with pytest.raises(ValueError, match="needs teacher logits"):
        Distiller(None, _student(), "kl", train_data=[{"s_ids": [1, 2], "label": 0}])
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        Distiller(None, _student(), "mse", train_data=[{**data[0], "s_ids": [1, VOCAB + 5]}])
    with pytest.raises(ValueError, match="3 classes"):
        Distiller(None, _student(), "mse", train_data=[{**data[0], "t_logits": [0.0, 1.0, 2.0]}])
    with pytest.raises(ValueError, match="alpha"):
        Distiller(None, _student(), "mse", train_data=data, alpha=1.5)
    with pytest.raises(TypeError, match="group_by_length must be a bool"):
        Distiller(None, _student(), "mse", train_data=data, group_by_length="yes")


@pytest.mark.parametrize("n,batch_size,window", [(0, 4, 2), (7, 8, 3), (50, 8, 2), (203, 16, 4),
                                                 (64, 4, 100)])
def test_length_grouped_batches_are_a_shuffle_of_similar_lengths(n, batch_size, window):
    g = torch.Generator().manual_seed(n)
    lengths = torch.randint(1, 60, (n,), generator=g).tolist()
    order = torch.randperm(n, generator=g).tolist()
    out = length_grouped(order, lengths, batch_size, torch.Generator().manual_seed(1), window)
    assert sorted(out) == list(range(n))  # every example once
    assert out == length_grouped(order, lengths, batch_size, torch.Generator().manual_seed(1),
                                 window)  # seeded: resume replays it
    batches = [out[k:k + batch_size] for k in range(0, n, batch_size)]
    span = batch_size * window
    windows = [sorted(order[s:s + span], key=lambda i: lengths[i]) for s in range(0, n, span)]
    cuts = [w[k:k + batch_size] for w in windows for k in range(0, len(w), batch_size)]
    assert sorted(map(sorted, batches)) == sorted(map(sorted, cuts))  # cut from sorted windows
    if n % batch_size:
        assert sorted(batches[-1]) == sorted(cuts[-1])  # the short batch stays last
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    random = sum(max(lengths[i] for i in order[k:k + batch_size]) * len(order[k:k + batch_size])
                 for k in range(0, n, batch_size))
    assert padded <= random


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_is_the_fused_kernel_with_the_same_update(optimizer):
    """The per-tensor loop took 5-10x longer on a CPU (benchmarks/results/optimizer-cpu-avx2.md)."""
    data = _examples(24)
    runs = []
    for fused in (True, False):
        d = Distiller(None, _student(dropout=0.0), "mse", train_data=data, max_steps=3,
                      **{**OPTS, "optimizer": optimizer, "weight_decay": 0.01})
        d.setup()
        assert bool(d.opt.defaults.get("fused")) and type(d.opt).__name__.lower() == optimizer
        if not fused:
            d.opt = type(d.opt)(d.student.parameters(), lr=1e-2, weight_decay=0.01,
                                foreach=False)
            d.sched = d._make_scheduler(d.opt, d.total)
        torch.manual_seed(0)
        for k in range(3):
            d.step(collate(data[8 * k:8 * k + 8]))
        runs.append(d.student.state_dict())
    for k, v in runs[0].items():
        torch.testing.assert_close(v, runs[1][k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n,batch_size", [(1, 4), (7, 3), (50, 8), (33, 64)])
def test_inference_batches_give_outputs_back_in_the_examples_order(n, batch_size):
    data = _examples(n, seed=n)
    indices, outs, longest = [], [], 0
    for idx, batch in inference_batches(data, batch_size):
        lengths = batch["s_lengths"].tolist()
        assert min(lengths) >= longest and len(idx) <= batch_size  # batches sorted by length
        longest = max(lengths)
        indices.append(idx)
        outs.append(batch["s_input"].sum(1, keepdim=True).double())  # a per-example output
    got = in_example_order(indices, outs)
    assert got.squeeze(1).tolist() == [float(sum(e["s_ids"])) for e in data]
    d = Distiller(None, _student(), "mse", train_data=data, **OPTS)
    d.cfg.eval_batch_size = batch_size
    one_by_one = torch.cat([d.student.eval().forward_batch(collate([e])) for e in data])
    torch.testing.assert_close(d.predict(data), one_by_one, atol=1e-5, rtol=1e-5)


def test_training_visits_every_example_once_per_epoch_in_length_groups():
    data = _examples(40)
    for e, n in zip(data, range(40)):
        e["s_ids"] = [1] * (1 + n % 9)  # lengths 1..9
    seen = []
    d = Distiller(None, _student(), "mse", train_data=data, epochs=2, **OPTS)
    step = d.step

    def recording_step(batch, share=1.0):
        seen.append(batch["s_lengths"].tolist())
        return step(batch, share)
    d.step = recording_step
    d.train()
    assert len(seen) == 10 and all(len(b) == 8 for b in seen)
    for epoch in (seen[:5], seen[5:]):
        assert sorted(x for b in epoch for x in b) == sorted(1 + n % 9 for n in range(40))
    assert sum(max(b) - min(b) for b in seen) <= 20  # similar lengths (random batches: ~70)


def test_asking_for_rank_0_never_joins_a_process_group(monkeypatch):
    """is_rank0 is asked before the Distiller knows its device (output checks): it must read
    torchrun's RANK, not join a group whose backend would follow the GPU, not --device."""
    from kdfast.distill.trainer import is_rank0

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_rank0() and not torch.distributed.is_initialized()
    monkeypatch.setenv("RANK", "0")
    assert is_rank0() and not torch.distributed.is_initialized()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert is_rank0()
