"""Output safety of the library's recipes and the Distiller (nothing a user has is lost, every
option is checked before anything is written, atomic writes, checked loads) and the bad
values that used to be accepted silently."""
import hashlib
import importlib
import os
import stat

import _tiny
import pytest
import torch

from kdfast.data.tasks import load_task
from kdfast.distill import Distiller, etd, finetune, sra, tang, tinybert
from kdfast.distill import outputs
from kdfast.distill.objectives import HardLabelLoss, LogitLoss, SentenceVectorLoss, make_loss
from kdfast.nn.students import BiLSTMClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

FAST = dict(lstm_hidden_size=8, fc_size=8, progress=False, optimizer="adam", lr=5e-3,
            log_every=1, n_iter=1, max_steps=2)
SIZES = dict(num_layers=2, hidden_size=8, num_heads=2, intermediate_size=16)
tang_module = importlib.import_module("kdfast.distill.tang")
etd_module = importlib.import_module("kdfast.distill.etd")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("tiny")
    tok = _tiny.tokenizer(d)
    teacher = _tiny.teacher(tok)
    teacher.has_trained_head = True
    return tok, _tiny.task(40), teacher


def _bert_teacher(tok, layers=4):
    from transformers import BertConfig, BertModel

    from kdfast.models import TeacherClassifier

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    t = TeacherClassifier(BertModel(cfg), 2, pooling="mean")
    t.has_trained_head = True
    return t


def checksums(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def users_dir(tmp_path):
    d = tmp_path / "precious"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "sub" / "data.bin").write_bytes(os.urandom(64))
    return d


# ----------------------------------------------------------------------------- directories
@pytest.mark.parametrize("recipe", ["tang", "sra", "finetune", "tinybert", "etd"])
@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
def test_a_users_directory_is_refused_and_untouched(tiny, tmp_path, recipe, flags):
    tok, task, teacher = tiny
    d = users_dir(tmp_path)
    before = checksums(d)
    raw = _tiny.teacher(tok)
    calls = {
        "tang": lambda: tang(teacher, task, d, tokenizer=tok, **FAST, **flags),
        "sra": lambda: sra(teacher, task, d, tokenizer=tok, **{k: v for k, v in FAST.items()
                                                               if k != "n_iter"}, **flags),
        "finetune": lambda: finetune(raw, task, d, tokenizer=tok, max_steps=1, progress=False,
                                     **flags),
        "tinybert": lambda: tinybert(_bert_teacher(tok), task, d, tokenizer=tok, stage="all",
                                     student=SIZES, n_a=1, max_steps=1, progress=False, **flags),
        "etd": lambda: etd(_bert_teacher(tok), task, d, tokenizer=tok, strategy="rand",
                           max_steps=1, progress=False, **SIZES, **flags),
    }
    with pytest.raises((FileExistsError, FileNotFoundError)) as e:
        calls[recipe]()
    assert str(d) in str(e.value)
    assert checksums(d) == before


def test_resume_without_a_checkpoint_is_refused(tiny, tmp_path):
    tok, task, teacher = tiny
    out = tmp_path / "run"
    tang(teacher, task, out, tokenizer=tok, **FAST)
    for ckpt in out.rglob("last.pt"):
        ckpt.unlink()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        tang(teacher, task, out, tokenizer=tok, resume=True, **FAST)


def test_overwrite_replaces_a_kdfast_run_and_resume_continues_it(tiny, tmp_path):
    tok, task, teacher = tiny
    out = tmp_path / "run"
    tang(teacher, task, out, tokenizer=tok, **FAST)
    assert (out / outputs.MARKER).is_file() and (out / "transfer.pt").is_file()
    (out / "stale.txt").write_text("x")
    tang(teacher, task, out, tokenizer=tok, overwrite=True, **FAST)
    assert not (out / "stale.txt").exists()
    _, res = tang(teacher, task, out, tokenizer=tok, resume=True, **dict(FAST, max_steps=4))
    assert res["steps"] == 4


@pytest.mark.parametrize("bad", [dict(epochs=-2), dict(optimizer="lion"), dict(n_iter=-3),
                                 dict(lstm_hidden_size=0), dict(warmup=2.0), dict(p_mask=1.5),
                                 dict(learning_rate=1.0), dict(embeddings="/no/such/vectors.txt")])
def test_a_bad_tang_option_writes_nothing(tiny, tmp_path, bad, monkeypatch):
    tok, task, teacher = tiny
    monkeypatch.setattr(tang_module, "transfer_set",
                        lambda *a, **k: pytest.fail("work started before the options were checked"))
    out = tmp_path / "out"
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as e:
        tang(teacher, task, out, tokenizer=tok, **{**FAST, **bad})
    assert next(iter(bad)) in str(e.value)
    assert not out.exists()


@pytest.mark.parametrize("call,name", [
    (lambda t, tok, task, out: sra(t, task, out, tokenizer=tok, vector="median"), "vector"),
    (lambda t, tok, task, out: sra(t, task, out, tokenizer=tok, stage1={"epochs": 0}), "epochs"),
    (lambda t, tok, task, out: etd(_bert_teacher(tok), task, out, tokenizer=tok,
                                   importance_batches=0, **SIZES), "importance_batches"),
    (lambda t, tok, task, out: tinybert(_bert_teacher(tok), task, out, tokenizer=tok,
                                        stage="all", student=SIZES, general={"lr": -1}), "lr"),
    (lambda t, tok, task, out: tinybert(_bert_teacher(tok), task, out, tokenizer=tok,
                                        student=SIZES, n_a=-1), "n_a"),
    (lambda t, tok, task, out: tinybert(_bert_teacher(tok), task, out, tokenizer=tok,
                                        stage="general", student=SIZES, n_a=3), "n_a"),
    (lambda t, tok, task, out: tinybert(_bert_teacher(tok), task, out, tokenizer=tok,
                                        stage="general", student=SIZES, max_len=32),
     "max_len"),  # the general stage's length goes in general= (its default is 128)
    (lambda t, tok, task, out: tinybert(_bert_teacher(tok), task, out, tokenizer=tok,
                                        student=SIZES, unlabelled=["a b"]), "unlabelled"),
    (lambda t, tok, task, out: finetune(_tiny.teacher(tok), task, out, tokenizer=tok,
                                        batch_size=0), "batch_size"),
])
def test_bad_values_name_the_argument_and_write_nothing(tiny, tmp_path, call, name):
    tok, task, teacher = tiny
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=name):
        call(teacher, tok, task, out)
    assert not out.exists()


def test_etd_head_mismatch_fails_before_scoring(tmp_path, monkeypatch):
    tok = _tiny.tokenizer(tmp_path)
    monkeypatch.setattr(etd_module, "extract_student",
                        lambda *a, **k: pytest.fail("scored/extracted before checking the pair"))
    with pytest.raises(ValueError, match="4 heads but the teacher has 2"):
        etd(_bert_teacher(tok), _tiny.task(16), tmp_path / "o", tokenizer=tok, strategy="impt",
            **dict(SIZES, num_heads=4))
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- files
def test_truncated_checkpoint_and_caches_name_the_file(tiny, tmp_path):
    tok, task, teacher = tiny
    out = tmp_path / "run"
    tang(teacher, task, out, tokenizer=tok, **FAST)
    ckpt = out / "checkpoint" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(ValueError, match="last.pt"):
        tang(teacher, task, out, tokenizer=tok, resume=True, **FAST)
    cache = tmp_path / "transfer.pt"
    tang(teacher, task, tmp_path / "b", tokenizer=tok, transfer_cache=cache, **FAST)
    cache.write_bytes(cache.read_bytes()[:300])
    with pytest.raises(ValueError, match="transfer.pt"):
        tang(teacher, task, tmp_path / "c", tokenizer=tok, transfer_cache=cache, **FAST)


def test_truncated_augmentation_cache_names_the_file(tmp_path):
    from kdfast.data.tinybert_augment import augment

    tok = _tiny.tokenizer(tmp_path)
    emb = torch.randn(len(tok), 8)
    cache = tmp_path / "aug.jsonl"
    kw = dict(tokenizer=tok, embeddings=emb, n_a=3, p_t=0.5, k=2, seed=1, cache=cache)
    augment(["good movie", "bad plot"], **kw)
    text = cache.read_text()
    cache.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="aug.jsonl"):
        augment(["good movie", "bad plot"], **kw)


def test_a_transformers_sequence_classifier_is_a_ready_teacher(tmp_path):
    # a fine-tuned BertForSequenceClassification (the usual hub teacher) keeps its head
    from transformers import BertConfig, BertForSequenceClassification

    from kdfast.models.teachers import load_teacher

    tok = _tiny.tokenizer(tmp_path)
    torch.manual_seed(0)
    hf = BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=3)).eval()
    hf.save_pretrained(tmp_path / "hf")
    teacher = load_teacher(str(tmp_path / "hf")).eval()
    assert teacher.has_trained_head and teacher.num_labels == 3
    ids = torch.tensor([tok("a good film")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(teacher(ids, mask), hf(input_ids=ids, attention_mask=mask).logits)
    with pytest.raises(ValueError, match="3 labels but the task has 2"):
        load_teacher(str(tmp_path / "hf"), num_labels=2)


def test_atomic_outputs_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        outputs.atomic_write_text(tmp_path / "results.json", "{}")
        outputs.atomic_save_dir(tmp_path / "student", lambda d: (d / "config.json").write_text("{}"))
        os.umask(0o077)
        outputs.atomic_write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "results.json") == 0o644  # not mkstemp's 0600
    assert mode(tmp_path / "student") == 0o755  # not mkdtemp's 0700
    assert mode(tmp_path / "private.json") == 0o600  # a strict umask is kept


def test_a_writer_killed_midway_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    outputs.atomic_save({"v": 1}, path)

    def dying_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        outputs.atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_killed_student_save_keeps_the_previous_student(tmp_path):
    d = Distiller(None, _bilstm(), "ce", train_data=_examples(16), out_dir=tmp_path / "r",
                  max_steps=1, progress=False)
    d.train()
    before = checksums(tmp_path / "r" / "student")

    def dying(path, tokenizer=None):
        (path / "config.json").write_text("{")
        raise KeyboardInterrupt

    d.student.save_pretrained = dying
    with pytest.raises(KeyboardInterrupt):
        d.save_student()
    assert checksums(tmp_path / "r" / "student") == before


# ----------------------------------------------------------------------------- the Distiller
def _examples(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 30, (4,), generator=g).tolist()
        y = int(sum(ids) % 2)
        out.append({"s_ids": ids, "label": y, "t_logits": [1.0 - y, float(y)]})
    return out


def _bilstm():
    torch.manual_seed(0)
    return BiLSTMClassifier(30, 2, embed_dim=8, hidden_size=8, fc_size=8)


def test_distiller_step_evaluate_checkpoint_restore(tmp_path):
    from kdfast.data.tokenize import collate

    data = _examples(24)
    d = Distiller(None, _bilstm(), LogitLoss("mse"), train_data=data, dev_data=data,
                  out_dir=tmp_path / "r", optimizer="adam", lr=1e-2, progress=False)
    d.setup()
    w0 = [p.detach().clone() for p in d.student.parameters()]
    loss = d.step(collate(data[:8]))
    assert loss.shape == () and not loss.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(w0, d.student.parameters()))
    assert set(d.evaluate(data)) == {"accuracy"}
    d.state.step = 1
    assert d.evaluate_dev() is False and d.state.best_step == 1
    d.checkpoint()
    assert (tmp_path / "r" / "checkpoint" / "last.pt").is_file()
    again = Distiller(None, _bilstm(), LogitLoss("mse"), train_data=data,
                      out_dir=tmp_path / "r", resume=True, optimizer="adam", lr=1e-2,
                      progress=False)
    again.setup()
    assert again.restore() and again.state.step == 1
    for a, b in zip(d.student.state_dict().values(), again.student.state_dict().values()):
        assert torch.equal(a, b)


def test_loss_objects_and_the_name_mapping():
    assert isinstance(make_loss("ce"), HardLabelLoss) and make_loss("hard").needs == set()
    kl = make_loss("kl", alpha=0.5, temperature=2.0)
    assert isinstance(kl, LogitLoss) and kl.needs == {"logits"} and kl.needs_labels
    assert make_loss("sra-cosine").needs == {"vector"}
    assert isinstance(make_loss("sra-mse"), SentenceVectorLoss)
    with pytest.raises(ValueError, match="kind"):
        LogitLoss("hinge")
    # a live teacher is asked only for what the loss needs
    asked = []

    class Teacher(torch.nn.Module):
        def taps(self, batch, needs, vector=None):
            asked.append(set(needs))
            return {"logits": torch.zeros(len(batch["labels"]), 2)}

    data = [{k: v for k, v in ex.items() if k != "t_logits"} for ex in _examples(8)]
    Distiller(Teacher(), _bilstm(), LogitLoss("mse"), train_data=data, max_steps=1,
              progress=False).train()
    assert asked == [{"logits"}]
    cached = _examples(8)  # cached logits: the teacher is not called
    Distiller(Teacher(), _bilstm(), "mse", train_data=cached, max_steps=1, progress=False).train()
    assert asked == [{"logits"}]


# ----------------------------------------------------------------------------- data
def test_csv_bad_inputs(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("text,label\n" + "\n".join(f"s{i},1" for i in range(20)) + "\n")
    with pytest.raises(ValueError, match="single class"):
        load_task(f"csv:{one}")
    strings = tmp_path / "strings.csv"
    strings.write_text("text,label\n" + "\n".join(f"s{i},yes" for i in range(20)) + "\n")
    with pytest.raises(ValueError, match="single class"):
        load_task(f"csv:{strings}")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\n".encode() + "caf\xe9,1\nbad,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv.*UTF-8"):
        load_task(f"csv:{latin}")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_task(f"csv:{tmp_path / 'missing.csv'}")
    reg = tmp_path / "reg.csv"  # a regression task is still one
    reg.write_text("text,label\n" + "\n".join(f"s{i},{i / 7}" for i in range(20)) + "\n")
    assert load_task(f"csv:{reg}").is_regression
    with pytest.raises(ValueError, match=r"metric 'accuracy' does not fit .*\(a regression\)"):
        load_task(f"csv:{reg}", metric="accuracy")
    with pytest.raises(ValueError, match="metric 'pearson' does not fit"):
        load_task("movie-sentences", metric="pearson")
    assert load_task("movie-sentences", metric="mcc").metric == "mcc"
    # a dev/test label that train never has is a typo, not a new class
    for name, dev_label, needle in (("s", "positive", "'positive' never occur in train.csv"),
                                    ("i", "2", "'2' never occur in train.csv")):
        d = tmp_path / name
        d.mkdir()
        good, other = ("pos", "neg") if name == "s" else ("1", "0")
        (d / "train.csv").write_text("text,label\n" + "\n".join(
            f"s{i},{good if i % 2 else other}" for i in range(20)) + "\n")
        (d / "dev.csv").write_text(f"text,label\na,{good}\nb,{dev_label}\n")
        with pytest.raises(ValueError, match=needle):
            load_task(f"csv:{d / 'train.csv'}")
        assert load_task(f"csv:{d / 'train.csv'}", num_labels=3).num_labels == 3
    # a model directory without tokenizer files is refused, not read as [UNK] everywhere
    from kdfast.data.tokenize import load_tokenizer
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        load_tokenizer(tmp_path / "model")


# ----------------------------------------------------------------------------- demo
def test_demo_cache_is_reused_only_with_the_same_settings(tmp_path, capsys):
    from kdfast.demo import _work_dir

    out = tmp_path / "demo"
    a, b = {"quick": True, "teacher_epochs": 1.0}, {"quick": False, "teacher_epochs": 1.0}
    _work_dir(out, False, a)
    (out / "teacher").mkdir()
    _work_dir(out, False, a)
    assert (out / "teacher").is_dir()  # same settings: the cache stays
    _work_dir(out, False, b)
    assert not (out / "teacher").exists() and "other settings" in capsys.readouterr().out


def test_demo_checks_options_and_refuses_a_users_directory(tmp_path, capsys):
    from kdfast.cli import main

    d = users_dir(tmp_path)
    before = checksums(d)
    for bad, says in ((["--amp", "fp8"], "--amp"), (["--teacher-epochs", "-1"], "--teacher-epochs"),
                      (["--train-layers", "9"], "--train-layers"), (["--n-aug", "3"], "--n-aug"),
                      (["--out", str(d)], "not written by kdfast"),
                      (["--out", str(d), "--fresh"], "not written by kdfast")):
        assert main(["demo", *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("kdfast demo: error:") and says in err, (bad, err)
    assert checksums(d) == before


def test_the_bilstm_width_is_lstm_hidden_size(tiny, tmp_path):
    tok, task, teacher = tiny
    with pytest.raises(TypeError, match="lstm_hidden_size"):
        tang(teacher, task, tmp_path / "o", tokenizer=tok, hidden_size=8)
    with pytest.raises(TypeError, match="lstm_hidden_size"):
        sra(teacher, task, tmp_path / "o", tokenizer=tok, hidden_size=8)
    assert not (tmp_path / "o").exists()


def test_demo_uses_bf16_only_where_the_cpu_computes_it(monkeypatch):
    """Emulated bf16 made the demo's teacher fine-tuning ~20x slower than fp32 on an AVX2 CPU."""
    import kdfast.demo as demo

    from kdfast.cli import COMMANDS, OPTIONS

    assert "amp" in COMMANDS["demo"].options and OPTIONS["amp"].default is None  # auto
    for avx512_bf16, amx, want in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v,
                            raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert demo._native_bf16() is want
